//! The stream's URL: where and how to connect.

use crate::core::redact::redact_url;
use crate::tls::Tls;
use std::time::Duration;

/// Where and how to connect, parsed from the URL.
#[derive(Clone)]
pub(super) struct Target {
    pub(super) host: String,
    pub(super) port: u16,
    pub(super) user: String,
    pub(super) password: String,
    pub(super) vhost: String,
    pub(super) heartbeat: u16,
    pub(super) connect_timeout: Duration,
    /// TLS settings: enabled for `amqps://`, disabled for `amqp://`.
    pub(super) tls: Tls,
    /// The name the server's certificate must carry, when not the URL's host
    /// (`server_name_indication`).
    pub(super) server_name: Option<String>,
    pub(super) redacted: String,
}

/// RabbitMQ's TLS query parameters (its URI spec) and ours: refused on `amqp://`.
const TLS_PARAMS: [&str; 6] = [
    "cacertfile",
    "certfile",
    "keyfile",
    "server_name_indication",
    "verify",
    "danger_accept_invalid_certs",
];

pub(super) fn parse_target(raw: &str) -> Result<Target, String> {
    let url = url::Url::parse(raw).map_err(|e| e.to_string())?;
    let secure = match url.scheme() {
        "amqp" => false,
        "amqps" => true,
        other => return Err(format!("scheme {other:?} is not amqp or amqps")),
    };
    let host = url.host_str().ok_or("no host")?.to_string();
    let user = match url.username() {
        "" => "guest".to_string(),
        u => crate::core::percent::decode(u)?,
    };
    let password = match url.password() {
        None => "guest".to_string(),
        Some(p) => crate::core::percent::decode(p)?,
    };
    let vhost = match url.path() {
        "" | "/" => "/".to_string(),
        p => crate::core::percent::decode(&p[1..])?,
    };
    let mut heartbeat = 60u16;
    let mut connect_timeout = Duration::from_secs(10);
    let (mut ca, mut cert, mut key, mut server_name) = (None, None, None, None);
    let mut accept_invalid = false;
    for (k, v) in url.query_pairs() {
        if !secure && TLS_PARAMS.contains(&k.as_ref()) {
            // A TLS setting on a plaintext URL: never connect in plaintext anyway.
            return Err(format!(
                "{k} is a TLS parameter but the scheme is amqp:// (plaintext); use amqps://"
            ));
        }
        match k.as_ref() {
            "heartbeat" => {
                heartbeat = v
                    .parse()
                    .map_err(|_| format!("heartbeat {v:?} is not 0..=65535"))?
            }
            "connection_timeout" => {
                let ms: u64 = v
                    .parse()
                    .map_err(|_| format!("connection_timeout {v:?} is not milliseconds"))?;
                if ms == 0 {
                    return Err("connection_timeout must be > 0".into());
                }
                connect_timeout = Duration::from_millis(ms);
            }
            "cacertfile" => ca = Some(v.into_owned()),
            "certfile" => cert = Some(v.into_owned()),
            "keyfile" => key = Some(v.into_owned()),
            "server_name_indication" => {
                if v.is_empty() {
                    return Err("server_name_indication is empty".into());
                }
                server_name = Some(v.into_owned())
            }
            "verify" => match v.as_ref() {
                "verify_peer" => {}
                "verify_none" => {
                    return Err("verify=verify_none turns certificate verification off; \
                         if you really mean it, say danger_accept_invalid_certs=true \
                         (Tls::danger_accept_invalid_certificates(true) in code)"
                        .into())
                }
                other => return Err(format!("verify {other:?} is not verify_peer")),
            },
            "danger_accept_invalid_certs" => {
                accept_invalid = match v.as_ref() {
                    "true" => true,
                    "false" => false,
                    other => {
                        return Err(format!(
                            "danger_accept_invalid_certs {other:?} is not true or false"
                        ))
                    }
                }
            }
            other => {
                return Err(format!(
                    "unknown query parameter {other:?} (known: heartbeat, connection_timeout, \
                     and with amqps: cacertfile, certfile, keyfile, server_name_indication, \
                     verify, danger_accept_invalid_certs)"
                ))
            }
        }
    }
    let tls = if secure {
        let mut tls = Tls::verify_full().danger_accept_invalid_certificates(accept_invalid);
        if let Some(ca) = ca {
            tls = tls.ca_file(ca);
        }
        match (cert, key) {
            (Some(cert), Some(key)) => tls = tls.client_cert(cert, key),
            (None, None) => {}
            _ => return Err("certfile and keyfile go together (mutual TLS)".into()),
        }
        tls
    } else {
        Tls::disabled()
    };
    Ok(Target {
        host,
        port: url.port().unwrap_or(if secure { 5671 } else { 5672 }),
        user,
        password,
        vhost,
        heartbeat,
        connect_timeout,
        tls,
        server_name,
        redacted: redact_url(raw),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::TlsMode;

    #[test]
    fn amqps_verifies_by_default_on_port_5671() {
        let t = parse_target("amqps://u:p@broker.internal/%2f").expect("valid");
        assert_eq!(t.port, 5671);
        assert_eq!(t.tls.mode(), TlsMode::VerifyFull);
        assert!(!t.tls.accepts_invalid_certificates());
        let t = parse_target(
            "amqps://h/v?cacertfile=/ca.pem&certfile=/c.pem&keyfile=/c.key\
             &server_name_indication=broker&verify=verify_peer",
        )
        .expect("valid");
        assert_eq!(t.tls.ca_path(), Some(std::path::Path::new("/ca.pem")));
        assert!(t.tls.client_cert_paths().is_some());
        assert_eq!(t.server_name.as_deref(), Some("broker"));
        assert_eq!(parse_target("amqp://h").map(|t| t.port), Ok(5672));
        let t = parse_target("amqps://h?danger_accept_invalid_certs=true").expect("valid");
        assert!(t.tls.accepts_invalid_certificates());
    }

    #[test]
    fn no_silent_plaintext_nor_silent_verify_none() {
        for (url, says) in [
            ("amqp://h?cacertfile=/ca.pem", "amqps://"),
            ("amqp://h?server_name_indication=x", "amqps://"),
            (
                "amqps://h?verify=verify_none",
                "danger_accept_invalid_certs=true",
            ),
            ("amqps://h?danger_accept_invalid_certs=yes", "true or false"),
            ("amqps://h?certfile=/c.pem", "together"),
            ("amqps://h?sni=x", "unknown query parameter"),
        ] {
            match parse_target(url) {
                Err(e) => assert!(e.contains(says), "{url}: {e}"),
                Ok(_) => panic!("{url} accepted"),
            }
        }
    }
}
