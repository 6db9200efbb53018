//! Recognising TLS failures in drivers' errors, so that each store and stream
//! reports the same [`TlsCause`] whatever its TLS library (rustls, OpenSSL through
//! native-tls or librdkafka) says.

use crate::tls::TlsCause;

/// The cause of a TLS failure told by an error's text (the whole source chain,
/// as the driver printed it), or `None` when the text is not about TLS.
/// Host name checks come first: OpenSSL reports a name mismatch as a failed
/// verification too.
#[allow(dead_code)] // used by the drivers behind features
pub(crate) fn classify(text: &str) -> Option<TlsCause> {
    let t = text.to_ascii_lowercase();
    let any = |needles: &[&str]| needles.iter().any(|n| t.contains(n));
    if any(&[
        "notvalidforname",
        "not valid for name",
        "hostname mismatch",
        "ip address mismatch",
        "certificate is not valid for",
        "does not match hostname",
        "domain validation",
    ]) {
        return Some(TlsCause::HostnameMismatch);
    }
    if any(&[
        "unknownissuer",
        "unknown issuer",
        "unknown ca",
        "unknown_ca",
        "certificate verify failed",
        "self-signed certificate",
        "self signed certificate",
        "unable to get local issuer",
        "badsignature",
        "invalidcertificate",
        "invalid peer certificate",
        "certificate has expired",
        "certificate expired",
    ]) {
        return Some(TlsCause::CertificateNotTrusted);
    }
    // MySQL 8's refusal of plaintext under require_secure_transport (MariaDB
    // answers "access denied" instead, like a wrong password), and a server's
    // answer to plaintext on its TLS port (nginx, Go, Apache wordings).
    if any(&[
        "insecure transport are prohibited",
        "plain http request was sent to https port",
        "client sent an http request to an https server",
        "speaking plain http to an ssl-enabled server port",
    ]) {
        return Some(TlsCause::ServerRequiresTls);
    }
    if any(&[
        "server does not support tls",
        "server does not support ssl",
        "does not have this capability",
        "ssl connection is required",
        "wrong version number",
        "invalidcontenttype",
        "corrupt message",
        "packet length too long",
        "http request",
        // librdkafka, when the handshake meets a plaintext listener that hangs
        // up, or one that never answers it (its connection setup timeout).
        "connecting to a plaintext broker listener",
        "timed out in state ssl_handshake",
    ]) {
        return Some(TlsCause::ServerWithoutTls);
    }
    // PostgreSQL's pg_hba refusal of a plaintext connection ("..., no encryption"),
    // and librdkafka's when a TLS listener cuts off its first (plaintext) request.
    if any(&[
        "no encryption",
        "connecting to a ssl listener",
        "connecting to a tls listener",
        "in state apiversion_query",
    ]) {
        return Some(TlsCause::ServerRequiresTls);
    }
    // rustls: "received fatal alert: CertificateRequired" (no client certificate).
    if any(&[
        "handshake",
        "tls alert",
        "ssl alert",
        "alert received",
        "received fatal alert",
    ]) {
        return Some(TlsCause::Handshake);
    }
    None
}

/// Makes ring rustls's process-wide default provider unless one is installed: the
/// MySQL drivers build their TLS settings on the default provider, which rustls
/// cannot pick by itself when the build also enables aws-lc-rs (it panics).
#[cfg(feature = "mysql")]
pub(crate) fn ensure_default_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Another thread may install one first; either way one is installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// The error's text with its whole source chain, for [`classify`].
#[allow(dead_code)]
pub(crate) fn chain_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        text.push_str(": ");
        text.push_str(&s.to_string());
        next = s.source();
    }
    // Debug forms carry the enum names rustls uses (NotValidForName, UnknownIssuer).
    text.push_str(&format!(" {e:?}"));
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_cause_in_rustls_and_openssl_wording() {
        let cases = [
            (
                "invalid peer certificate: NotValidForName",
                TlsCause::HostnameMismatch,
            ),
            (
                "error:0A000086:SSL routines::certificate verify failed: Hostname mismatch",
                TlsCause::HostnameMismatch,
            ),
            (
                // native-tls (OpenSSL) connecting to an address the certificate lacks.
                "TLS handshake failed: error:0A000086:SSL routines:tls_post_process_server_certificate:\
                 certificate verify failed:../ssl/statem/statem_clnt.c:1889: (IP address mismatch)",
                TlsCause::HostnameMismatch,
            ),
            (
                "invalid peer certificate: UnknownIssuer",
                TlsCause::CertificateNotTrusted,
            ),
            (
                "certificate verify failed: self-signed certificate in certificate chain",
                TlsCause::CertificateNotTrusted,
            ),
            (
                "error performing TLS handshake: server does not support TLS",
                TlsCause::ServerWithoutTls,
            ),
            (
                "DriverError { Client requires secure connection but server does not have this capability }",
                TlsCause::ServerWithoutTls,
            ),
            (
                "ERROR 3159 (HY000): Connections using insecure transport are prohibited while --require_secure_transport=ON.",
                TlsCause::ServerRequiresTls,
            ),
            (
                "SSL routines::wrong version number",
                TlsCause::ServerWithoutTls,
            ),
            (
                "FATAL: pg_hba.conf rejects connection for host \"127.0.0.1\", user \"u\", database \"test\", no encryption",
                TlsCause::ServerRequiresTls,
            ),
            (
                "io: received corrupt message of type InvalidContentType",
                TlsCause::ServerWithoutTls,
            ),
            (
                "<center>The plain HTTP request was sent to HTTPS port</center>",
                TlsCause::ServerRequiresTls,
            ),
            (
                "Client sent an HTTP request to an HTTPS server.",
                TlsCause::ServerRequiresTls,
            ),
            (
                "io: received fatal alert: CertificateRequired",
                TlsCause::Handshake,
            ),
            (
                "received fatal alert: HandshakeFailure",
                TlsCause::Handshake,
            ),
            (
                "ssl://127.0.0.1:9092/bootstrap: SSL handshake failed: Disconnected: connecting to a PLAINTEXT broker listener? (after 3ms in state SSL_HANDSHAKE)",
                TlsCause::ServerWithoutTls,
            ),
            (
                "ssl://127.0.0.1:9092/bootstrap: Connection setup timed out in state SSL_HANDSHAKE (after 5004ms in state SSL_HANDSHAKE)",
                TlsCause::ServerWithoutTls,
            ),
            (
                "FAIL 127.0.0.1:9093/bootstrap: Disconnected: connection reset by peer (after 5ms in state APIVERSION_QUERY)",
                TlsCause::ServerRequiresTls,
            ),
            (
                "127.0.0.1:9093/bootstrap: Disconnected while requesting ApiVersion: might be caused by incorrect security.protocol configuration (connecting to a SSL listener?) or broker version is < 0.10 (see api.version.request)",
                TlsCause::ServerRequiresTls,
            ),
        ];
        for (text, cause) in cases {
            assert_eq!(classify(text), Some(cause), "{text}");
        }
        assert_eq!(classify("connection refused"), None);
        assert_eq!(classify("password authentication failed"), None);
    }
}
