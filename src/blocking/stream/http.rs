//! The one blocking HTTP stack of the cloud streams (SQS, Kinesis, Pub/Sub):
//! a `ureq` agent with timeouts, and retries of throttling, 5xx and connection
//! failures with backoff. Requests are rebuilt for every try, so that signed
//! requests (SigV4, OAuth tokens) are signed again with a fresh timestamp.

use crate::blocking::stream::Deadline;
use crate::core::retry::Backoff;
use crate::tls::{Tls, TlsCause, TlsMode};
use crate::{Error, Result};
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One request, built by the stream for every try.
#[derive(Clone, Debug)]
pub(crate) struct HttpRequest {
    pub method: &'static str,
    pub url: String,
    /// Header values may carry secrets (Authorization): never log them.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// A response of any status (the stream reads service errors from the body).
#[derive(Clone, Debug)]
pub(crate) struct HttpResponse {
    pub status: u16,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// True for statuses worth retrying: throttling and server errors.
    pub fn is_retryable(&self) -> bool {
        retryable_status(self.status)
    }

    /// The body as lossy text, shortened, for error messages.
    pub fn body_text(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        let mut s: String = text.chars().take(300).collect();
        if text.chars().count() > 300 {
            s.push('…');
        }
        s
    }
}

/// 408, 429 and 5xx: the request may succeed later.
pub(crate) use crate::core::retry::retryable_http_status as retryable_status;

/// How often and how long to retry one call.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RetryPolicy {
    /// Tries in all (>= 1).
    pub attempts: u32,
    pub backoff: Backoff,
    /// No retry starts after this much time since the first try.
    pub deadline: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 4,
            backoff: Backoff::new(Duration::from_millis(50), Duration::from_secs(2))
                .unwrap_or_else(|_| unreachable!("constant backoff is valid")),
            deadline: Duration::from_secs(20),
        }
    }
}

/// A blocking HTTP client shared by the requests of one stream.
#[derive(Clone)]
pub(crate) struct HttpClient {
    agent: ureq::Agent,
    what: &'static str,
    /// Timeout of one request (cut to what is left of the caller's deadline).
    timeout: Duration,
    retry: RetryPolicy,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient")
            .field("what", &self.what)
            .field("timeout", &self.timeout)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

/// Headers whose values are credentials.
const SECRET_HEADERS: [&str; 3] = [
    "authorization",
    "proxy-authorization",
    "x-amz-security-token",
];

/// Largest response body read (service responses are small JSON documents;
/// Pub/Sub pulls in tests stay well below).
const MAX_RESPONSE: u64 = 64 * 1024 * 1024;

/// Less time than this left before the deadline: no request is started.
const MIN_REQUEST_TIME: Duration = Duration::from_millis(10);

/// Connections are opened within this, or the request's timeout if shorter.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The TLS of `https://` requests, read from a [`Tls`] at build time (so that a
/// missing or unusable file is a configuration error then, not a failure of the
/// first request). The default is ureq's: the webpki roots, chain and host name
/// verified.
#[derive(Clone, Debug, Default)]
pub(crate) struct HttpTls {
    config: Option<ureq::tls::TlsConfig>,
    /// True when settings were given (not the defaults): they are refused for an
    /// `http://` endpoint rather than silently not used.
    explicit: bool,
}

impl HttpTls {
    /// The defaults (built-in roots, full verification).
    pub fn none() -> HttpTls {
        HttpTls::default()
    }

    /// From the stream's settings. `Tls::disabled()` without files means the
    /// defaults (the endpoint's scheme decides whether TLS is used). A CA file
    /// replaces the built-in roots, like curl's `--cacert`. Chain-only
    /// verification (`TlsMode::VerifyCa`) is not offered: ureq always checks the
    /// host name.
    pub fn from_settings(tls: &Tls, field: &'static str) -> Result<HttpTls> {
        tls.check_files(field)?;
        if !tls.enabled() && !tls.accepts_invalid_certificates() {
            return Ok(HttpTls::none());
        }
        if tls.mode() == TlsMode::VerifyCa && !tls.accepts_invalid_certificates() {
            return Err(Error::config(
                field,
                "verify-ca (chain without host name) is not offered by the HTTP streams: \
                 use Tls::verify_full(), and a host name the certificate names",
            ));
        }
        let mut b = ureq::tls::TlsConfig::builder()
            .provider(ureq::tls::TlsProvider::Rustls)
            .disable_verification(tls.accepts_invalid_certificates());
        if let Some(ca) = tls.ca_path() {
            let certs = pem_certificates(field, ca)?;
            b = b.root_certs(ureq::tls::RootCerts::new_with_certs(&certs));
        }
        if let Some((cert, key)) = tls.client_cert_paths() {
            let chain = pem_certificates(field, cert)?;
            let key_pem = read_file(field, key)?;
            let key = ureq::tls::PrivateKey::from_pem(&key_pem).map_err(|e| {
                Error::config(field, format!("{}: not a usable key: {e}", key.display()))
            })?;
            check_client_cert(field, &chain, &key_pem)?;
            b = b.client_cert(Some(ureq::tls::ClientCert::new_with_certs(&chain, key)));
        }
        Ok(HttpTls {
            config: Some(b.build()),
            explicit: true,
        })
    }

    /// The CA bundle named by an environment variable (AWS SDKs'
    /// `AWS_CA_BUNDLE`, Google's `GRPC_DEFAULT_SSL_ROOTS_FILE_PATH`) for an
    /// `https://` URL. Ambient: an `http://` URL (a local emulator) does not read
    /// it, so a stale variable cannot break it.
    pub fn from_env_ca(var: &'static str, url: &str) -> Result<HttpTls> {
        if !url.starts_with("https://") {
            return Ok(HttpTls::none());
        }
        match std::env::var_os(var).filter(|v| !v.is_empty()) {
            None => Ok(HttpTls::none()),
            Some(path) => {
                let mut t = HttpTls::from_settings(&Tls::verify_full().ca_file(path), var)?;
                // Ambient: an http:// endpoint (a local emulator) just does not use it.
                t.explicit = false;
                Ok(t)
            }
        }
    }

    /// Refuses explicit TLS settings for an `http://` URL: the settings would not
    /// be used, and the traffic would go in plaintext where TLS was asked for.
    pub fn check_scheme(&self, field: &'static str, url: &str) -> Result<()> {
        if self.explicit && !url.starts_with("https://") {
            return Err(Error::config(
                field,
                format!(
                    "TLS settings were given but {} is not an https:// URL",
                    crate::core::redact::redact_url(url)
                ),
            ));
        }
        Ok(())
    }
}

fn read_file(field: &'static str, path: &std::path::Path) -> Result<Vec<u8>> {
    std::fs::read(path)
        .map_err(|e| Error::config(field, format!("cannot read {}: {e}", path.display())))
}

/// The certificates of a PEM file (at least one).
fn pem_certificates(
    field: &'static str,
    path: &std::path::Path,
) -> Result<Vec<ureq::tls::Certificate<'static>>> {
    let pem = read_file(field, path)?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => certs.push(c),
            Ok(_) => {}
            Err(e) => {
                return Err(Error::config(
                    field,
                    format!("{}: not PEM: {e}", path.display()),
                ))
            }
        }
    }
    if certs.is_empty() {
        return Err(Error::config(
            field,
            format!("{} holds no PEM certificate", path.display()),
        ));
    }
    Ok(certs)
}

/// ureq panics on a client certificate rustls refuses (key not matching the
/// certificate, unsupported key type): the same check here, as an error.
fn check_client_cert(
    field: &'static str,
    chain: &[ureq::tls::Certificate<'static>],
    key_pem: &[u8],
) -> Result<()> {
    use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| Error::config(field, format!("not a usable private key: {e}")))?;
    let chain = chain
        .iter()
        .map(|c| CertificateDer::from(c.der().to_vec()))
        .collect();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::sign::CertifiedKey::from_der(chain, key, &provider)
        .map(|_| ())
        .map_err(|e| Error::config(field, format!("unusable client certificate and key: {e}")))
}

/// True when the server at `addr` answers a TLS ClientHello with TLS (a
/// handshake or an alert record): the server of an `http://` URL that did not
/// answer HTTP requires TLS. Servers that answer a plaintext request with a TLS
/// alert, or (like OpenSSL's) by closing the connection, are told apart from a
/// server that is down this way.
fn speaks_tls(host: &str, port: u16, timeout: Duration) -> bool {
    let Some(addr) = (host, port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
    else {
        return false;
    };
    let name = match rustls::pki_types::ServerName::try_from(host.to_string()) {
        Ok(n) => n,
        Err(_) => return false,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let Ok(config) = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map(|b| {
            b.with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth()
        })
    else {
        return false;
    };
    let Ok(mut conn) = rustls::ClientConnection::new(Arc::new(config), name) else {
        return false;
    };
    let mut hello = Vec::new();
    if conn.write_tls(&mut hello).is_err() {
        return false;
    }
    let Ok(mut tcp) = TcpStream::connect_timeout(&addr, timeout) else {
        return false;
    };
    let _ = tcp.set_read_timeout(Some(timeout));
    let _ = tcp.set_write_timeout(Some(timeout));
    let mut head = [0u8; 2];
    tcp.write_all(&hello).is_ok()
        && tcp.read_exact(&mut head).is_ok()
        // A handshake (22) or alert (21) record of TLS 1.x.
        && matches!(head, [22 | 21, 3])
}

impl HttpClient {
    /// `what` names the service in errors (`sqs`, `kinesis`, `pubsub`).
    pub fn new(what: &'static str, timeout: Duration, retry: RetryPolicy, tls: &HttpTls) -> Self {
        let mut config = ureq::Agent::config_builder();
        if let Some(t) = &tls.config {
            config = config.tls_config(t.clone());
        }
        let agent: ureq::Agent = config
            .http_status_as_error(false)
            .timeout_connect(Some(timeout.min(CONNECT_TIMEOUT)))
            .timeout_global(Some(timeout))
            .max_idle_connections_per_host(8)
            .user_agent(concat!("outboxer/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        HttpClient {
            agent,
            what,
            timeout,
            retry,
        }
    }

    /// Sends once, within `timeout` (connect, send and read the whole answer).
    /// Transport failures are `Unavailable` / `Timeout` (transient); every HTTP
    /// status is returned as a response.
    pub fn send_once(&self, req: &HttpRequest, timeout: Duration) -> Result<HttpResponse> {
        let mut builder = ureq::http::Request::builder()
            .method(req.method)
            .uri(req.url.as_str());
        for (k, v) in &req.headers {
            let mut value =
                ureq::http::HeaderValue::from_str(v).map_err(|_| Error::InvalidUrl {
                    url: crate::core::redact::redact_url(&req.url),
                    reason: format!("header {k:?} has a value that is not valid in HTTP"),
                })?;
            // Any `Debug` of the request (ureq logs its state) shows a sensitive value
            // as `Sensitive`. ureq's trace level still dumps raw wire bytes (README).
            if SECRET_HEADERS.iter().any(|h| k.eq_ignore_ascii_case(h)) {
                value.set_sensitive(true);
            }
            builder = builder.header(k.as_str(), value);
        }
        let request = builder
            .body(req.body.clone())
            .map_err(|e| Error::InvalidUrl {
                url: crate::core::redact::redact_url(&req.url),
                reason: e.to_string(),
            })?;
        let request = self
            .agent
            .configure_request(request)
            .timeout_global(Some(timeout))
            .timeout_connect(Some(timeout.min(CONNECT_TIMEOUT)))
            .build();
        let mut resp = self
            .agent
            .run(request)
            .map_err(|e| transport_error(self.what, e))?;
        let status = resp.status().as_u16();
        let body = resp
            .body_mut()
            .with_config()
            .limit(MAX_RESPONSE)
            .read_to_vec()
            .map_err(|e| transport_error(self.what, e))?;
        Ok(HttpResponse { status, body })
    }

    /// One unauthenticated `GET url` at start (`Stream::connect`): a TLS mistake
    /// is an [`Error::Tls`] naming its cause. Any HTTP answer is a success (the
    /// service's own refusal of an unsigned request included), unless it is a
    /// server's "plain HTTP sent to an HTTPS port". A server that is down is the
    /// transport error (transient: the relay starts and retries).
    pub fn probe(&self, url: &str) -> Result<()> {
        let req = HttpRequest {
            method: "GET",
            url: url.to_string(),
            headers: Vec::new(),
            body: Vec::new(),
        };
        let timeout = self.timeout.min(CONNECT_TIMEOUT);
        let plaintext = url.starts_with("http://");
        match self.send_once(&req, timeout) {
            Ok(resp) => {
                if plaintext
                    && resp.status >= 400
                    && crate::core::tls::classify(&resp.body_text())
                        == Some(TlsCause::ServerRequiresTls)
                {
                    return Err(self.requires_tls(url, format!("HTTP {}", resp.status)));
                }
                Ok(())
            }
            Err(e @ Error::Tls { .. }) => Err(e),
            Err(e) if plaintext => {
                let target = url::Url::parse(url)
                    .ok()
                    .and_then(|u| Some((u.host_str()?.to_string(), u.port_or_known_default()?)));
                match target {
                    Some((host, port))
                        if speaks_tls(host.trim_matches(['[', ']']), port, timeout) =>
                    {
                        Err(self.requires_tls(url, e.to_string()))
                    }
                    _ => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    fn requires_tls(&self, url: &str, seen: String) -> Error {
        Error::Tls {
            what: self.what,
            cause: TlsCause::ServerRequiresTls,
            reason: format!(
                "{} is http:// but the server answers TLS only ({seen}): use https://",
                crate::core::redact::redact_url(url)
            ),
        }
    }

    /// Sends, retrying transport failures and retryable statuses with backoff.
    /// `build` is called for every try. After the last try, a transport failure
    /// is returned as its error and a retryable status as its response.
    #[cfg_attr(not(feature = "pubsub"), allow(dead_code))] // the AWS streams use send_with
    pub fn send(
        &self,
        build: impl FnMut() -> Result<HttpRequest>,
        deadline: &Deadline,
    ) -> Result<HttpResponse> {
        self.send_with(build, HttpResponse::is_retryable, deadline)
    }

    /// As [`HttpClient::send`], with the service's own notion of a retryable
    /// response (AWS reports throttling as HTTP 400 with an error code).
    ///
    /// Bounded by `deadline`: no try starts once it has expired (or the relay is
    /// stopping), no retry whose backoff would end past it, and each try's timeout
    /// is cut to what is left of it. So the call returns by the deadline, and when
    /// the relay stops, within the one request in flight.
    pub fn send_with(
        &self,
        mut build: impl FnMut() -> Result<HttpRequest>,
        retryable: impl Fn(&HttpResponse) -> bool,
        deadline: &Deadline,
    ) -> Result<HttpResponse> {
        let started = Instant::now();
        let mut attempt = 1;
        loop {
            let left = deadline.remaining();
            if deadline.expired() || left < MIN_REQUEST_TIME {
                return Err(Error::Timeout(format!(
                    "{}: the batch's deadline passed before the request was sent",
                    self.what
                )));
            }
            let req = build()?;
            let outcome = self.send_once(&req, self.timeout.min(left));
            let retry = match &outcome {
                Ok(r) => retryable(r),
                // A TLS mistake is not retried: it fails the same way every time.
                Err(e) => e.is_transient() && !matches!(e, Error::Tls { .. }),
            };
            let delay = self.retry.backoff.delay(attempt);
            if !retry
                || attempt >= self.retry.attempts
                || started.elapsed() + delay > self.retry.deadline
                || delay + MIN_REQUEST_TIME >= deadline.remaining()
            {
                return outcome;
            }
            match &outcome {
                Ok(r) => log::debug!(
                    "{}: HTTP {} on try {attempt}, retrying in {delay:?}",
                    self.what,
                    r.status
                ),
                Err(e) => log::debug!("{}: {e} on try {attempt}, retrying in {delay:?}", self.what),
            }
            if !deadline.wait(delay) {
                // The relay is stopping: no new try.
                return outcome;
            }
            attempt += 1;
        }
    }
}

fn transport_error(what: &'static str, e: ureq::Error) -> Error {
    match e {
        ureq::Error::Timeout(t) => Error::Timeout(format!("{what}: {t}")),
        // The error text of ureq names the host, never credentials (those are headers).
        other => Error::tls_from(what, &other).unwrap_or_else(|| Error::unavailable(what, other)),
    }
}

/// The error for a non-2xx response the stream does not handle itself:
/// retryable statuses are transient (`Unavailable`), others are `Rejected`.
#[cfg_attr(not(feature = "pubsub"), allow(dead_code))] // AWS reads its own error bodies
pub(crate) fn status_error(what: &'static str, resp: &HttpResponse) -> Error {
    if resp.is_retryable() {
        Error::unavailable(what, format!("HTTP {}: {}", resp.status, resp.body_text()))
    } else {
        Error::Rejected(format!(
            "{what}: HTTP {}: {}",
            resp.status,
            resp.body_text()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttling_and_server_errors_are_retryable() {
        for s in [408, 429, 500, 502, 503, 504] {
            assert!(retryable_status(s), "{s}");
        }
        for s in [200, 400, 401, 403, 404, 413] {
            assert!(!retryable_status(s), "{s}");
        }
    }

    #[test]
    fn status_errors_are_classified() {
        let busy = HttpResponse {
            status: 503,
            body: b"slow down".to_vec(),
        };
        assert!(status_error("sqs", &busy).is_transient());
        let denied = HttpResponse {
            status: 403,
            body: b"denied".to_vec(),
        };
        let e = status_error("sqs", &denied);
        assert!(!e.is_transient() && matches!(e, Error::Rejected(_)), "{e}");
    }

    /// Sends to port 9 (discard, not served on loopback here), counting the tries.
    fn counting_send(client: &HttpClient, deadline: &Deadline) -> (usize, Result<HttpResponse>) {
        let mut tries = 0;
        let out = client.send(
            || {
                tries += 1;
                Ok(HttpRequest {
                    method: "POST",
                    url: "http://127.0.0.1:9/".into(),
                    headers: vec![],
                    body: vec![],
                })
            },
            deadline,
        );
        (tries, out)
    }

    #[test]
    fn nothing_is_sent_past_the_deadline_or_once_the_relay_stops() {
        let client = HttpClient::new(
            "test",
            Duration::from_secs(2),
            RetryPolicy::default(),
            &HttpTls::none(),
        );
        let past = Deadline::at(Instant::now());
        let (tries, out) = counting_send(&client, &past);
        assert_eq!(tries, 0);
        assert!(matches!(out, Err(Error::Timeout(_))), "{out:?}");
        let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
        drop(stop_tx);
        let stopping = Deadline::with_stop(Instant::now() + Duration::from_secs(60), stop_rx);
        let (tries, out) = counting_send(&client, &stopping);
        assert_eq!(tries, 0);
        assert!(matches!(out, Err(Error::Timeout(_))), "{out:?}");
        // A retry whose backoff would end past the deadline is not made.
        let client = HttpClient::new(
            "test",
            Duration::from_secs(2),
            RetryPolicy {
                attempts: 5,
                backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(1))
                    .expect("backoff"),
                deadline: Duration::from_secs(60),
            },
            &HttpTls::none(),
        );
        let (tries, out) = counting_send(&client, &Deadline::after(Duration::from_millis(300)));
        assert_eq!(tries, 1);
        assert!(matches!(out, Err(e) if e.is_transient()));
    }

    #[test]
    fn connection_refused_is_transient_after_retries() {
        let client = HttpClient::new(
            "test",
            Duration::from_secs(2),
            RetryPolicy {
                attempts: 2,
                backoff: Backoff::new(Duration::from_millis(1), Duration::from_millis(2))
                    .expect("backoff"),
                deadline: Duration::from_secs(5),
            },
            &HttpTls::none(),
        );
        let (tries, out) = counting_send(&client, &Deadline::after(Duration::from_secs(60)));
        assert_eq!(tries, 2);
        assert!(matches!(out, Err(e) if e.is_transient()));
    }
}
