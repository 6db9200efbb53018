//! The stream's URL: where and how to connect.

use crate::core::redact::redact_url;
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
    pub(super) redacted: String,
}

pub(super) fn parse_target(raw: &str) -> Result<Target, String> {
    let url = url::Url::parse(raw).map_err(|e| e.to_string())?;
    match url.scheme() {
        "amqp" => {}
        "amqps" => {
            return Err("amqps (TLS) is not supported by this build; use amqp:// on a trusted network or a TLS tunnel".into())
        }
        other => return Err(format!("scheme {other:?} is not amqp")),
    }
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
    for (k, v) in url.query_pairs() {
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
            other => {
                return Err(format!(
                    "unknown query parameter {other:?} (known: heartbeat, connection_timeout)"
                ))
            }
        }
    }
    Ok(Target {
        host,
        port: url.port().unwrap_or(5672),
        user,
        password,
        vhost,
        heartbeat,
        connect_timeout,
        redacted: redact_url(raw),
    })
}
