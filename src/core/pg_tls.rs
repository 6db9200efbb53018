//! PostgreSQL's TLS settings in a connection string (libpq's `sslmode`,
//! `sslrootcert`, `sslcert`, `sslkey`, plus outboxer's loud
//! `danger_accept_invalid_certs`), read into a [`Tls`] and removed from the text
//! handed to `postgres`/`tokio-postgres`, whose parser knows only
//! `disable|prefer|require` and would refuse `verify-full`.

use crate::tls::Tls;
use crate::{Error, Result};

/// The parameters outboxer reads itself.
const OURS: [&str; 5] = [
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "danger_accept_invalid_certs",
];

/// Splits `url` (a `postgres://` URL or a libpq `key=value` string) into the text
/// the driver parses and the TLS settings. The error is the reason, for
/// `Error::InvalidUrl` (it never quotes a value).
pub fn split(url: &str) -> Result<(String, Tls), String> {
    let lower = url.get(..13).unwrap_or(url).to_ascii_lowercase();
    let (rest, params) = if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
        split_url(url)?
    } else {
        split_key_values(url)?
    };
    Ok((rest, tls_from(&params)?))
}

fn is_ours(key: &str) -> bool {
    OURS.contains(&key)
}

/// `postgres://...?a=b&sslmode=verify-full`: the query's own parameters are
/// taken out, the others kept byte for byte (their percent-escapes too).
fn split_url(url: &str) -> Result<(String, Vec<(String, String)>), String> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_string(), Vec::new()));
    };
    let mut kept = Vec::new();
    let mut ours = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let key = crate::core::percent::decode(k).map_err(|e| format!("query: {e}"))?;
        if is_ours(&key) {
            let value = crate::core::percent::decode(v).map_err(|e| format!("{key}: {e}"))?;
            ours.push((key, value));
        } else {
            kept.push(pair);
        }
    }
    let rest = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((rest, ours))
}

/// libpq's `key=value` form: spaces between pairs (and around `=`), values in
/// single quotes with `\'` and `\\` escapes. Kept pairs are written back quoted.
fn split_key_values(s: &str) -> Result<(String, Vec<(String, String)>), String> {
    let mut kept = Vec::new();
    let mut ours = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(format!("`{key}` has no `=value`"));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\\') => value.push(chars.next().ok_or("unterminated quoted value")?),
                    Some('\'') => break,
                    Some(c) => value.push(c),
                    None => return Err(format!("`{key}`: unterminated quoted value")),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.push(chars.next().ok_or("value ends with `\\`")?);
                } else {
                    value.push(c);
                }
            }
        }
        if is_ours(&key) {
            ours.push((key, value));
        } else {
            let quoted = value.replace('\\', "\\\\").replace('\'', "\\'");
            kept.push(format!("{key}='{quoted}'"));
        }
    }
    Ok((kept.join(" "), ours))
}

/// The [`Tls`] the parameters ask for. libpq's `require` does not verify the
/// certificate; outboxer's does (like `verify-full`) unless
/// `danger_accept_invalid_certs=true`. `prefer` and `allow` are refused: they fall
/// back to plaintext when TLS fails, which is a silent downgrade.
fn tls_from(params: &[(String, String)]) -> Result<Tls, String> {
    let get = |k: &str| {
        params
            .iter()
            .rev()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    let mut tls = match get("sslmode") {
        None | Some("disable") => Tls::disabled(),
        Some("require") | Some("verify-full") => Tls::verify_full(),
        Some("verify-ca") => Tls::verify_ca(),
        Some(m @ ("prefer" | "allow")) => {
            return Err(format!(
                "sslmode={m} falls back to plaintext when TLS fails (or is not even tried): \
                 use sslmode=verify-full (or require, verified in outboxer) or disable"
            ))
        }
        Some(other) => {
            return Err(format!(
                "unknown sslmode `{other}`: use disable, require, verify-ca or verify-full"
            ))
        }
    };
    // libpq 16: `sslrootcert=system` means the system's roots (here: webpki's).
    if let Some(ca) = get("sslrootcert").filter(|c| *c != "system") {
        tls = tls.ca_file(ca);
    }
    match (get("sslcert"), get("sslkey")) {
        (Some(cert), Some(key)) => tls = tls.client_cert(cert, key),
        (None, None) => {}
        _ => return Err("sslcert and sslkey go together".into()),
    }
    match get("danger_accept_invalid_certs") {
        None | Some("false") => {}
        Some("true") => tls = tls.danger_accept_invalid_certificates(true),
        Some(_) => return Err("danger_accept_invalid_certs is true or false".into()),
    }
    Ok(tls)
}

/// The rustls connector (ring) for `tls`, the same for `postgres` and
/// `tokio-postgres`.
pub fn connector(tls: &Tls) -> Result<tokio_postgres_rustls::MakeRustlsConnect> {
    let config = crate::core::tls_rustls::client_config(tls, "tls")?;
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// A failed connect: [`Error::Tls`] naming the cause when it is about TLS
/// (certificate, host name, a server without TLS, a server that refuses
/// plaintext), else [`Error::Database`].
pub fn connect_error(e: tokio_postgres::Error) -> Error {
    let text = crate::core::tls::chain_text(&e);
    match crate::core::tls::classify(&text) {
        Some(cause) => {
            // The driver's words with their sources ("error performing TLS
            // handshake: invalid peer certificate: UnknownIssuer"); no secrets in them.
            let mut reason = e.to_string();
            let mut next = std::error::Error::source(&e);
            while let Some(s) = next {
                reason.push_str(": ");
                reason.push_str(&s.to_string());
                next = s.source();
            }
            Error::Tls {
                what: "postgres",
                cause,
                reason,
            }
        }
        None => Error::db("connecting to PostgreSQL", e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::TlsMode;

    #[test]
    fn url_parameters_are_read_and_removed() {
        let (rest, tls) = split(
            "postgres://u:p%40ss@db:5432/app?application_name=x&sslmode=verify-full&sslrootcert=%2Fca.pem",
        )
        .expect("valid");
        assert_eq!(rest, "postgres://u:p%40ss@db:5432/app?application_name=x");
        assert_eq!(tls.mode(), TlsMode::VerifyFull);
        assert_eq!(tls.ca_path(), Some(std::path::Path::new("/ca.pem")));

        let (rest, tls) = split("postgresql://db/app?sslmode=verify-ca").expect("valid");
        assert_eq!(rest, "postgresql://db/app");
        assert_eq!(tls.mode(), TlsMode::VerifyCa);

        let (rest, tls) = split("postgres://db/app").expect("valid");
        assert_eq!(rest, "postgres://db/app");
        assert_eq!(tls.mode(), TlsMode::Disabled);
    }

    #[test]
    fn require_verifies_and_only_the_loud_setting_does_not() {
        let (_, tls) = split("postgres://db/app?sslmode=require").expect("valid");
        assert_eq!(tls.mode(), TlsMode::VerifyFull);
        assert!(!tls.accepts_invalid_certificates());
        let (_, tls) = split("postgres://db/app?sslmode=require&danger_accept_invalid_certs=true")
            .expect("valid");
        assert!(tls.accepts_invalid_certificates());
    }

    #[test]
    fn fallbacks_to_plaintext_and_unknown_modes_are_refused() {
        for m in ["prefer", "allow"] {
            let e = split(&format!("postgres://db/app?sslmode={m}")).expect_err(m);
            assert!(e.contains("plaintext"), "{e}");
        }
        assert!(split("postgres://db/app?sslmode=verify_full").is_err());
        assert!(split("postgres://db/app?sslmode=require&sslcert=/c.pem").is_err());
    }

    #[test]
    fn key_value_strings() {
        let (rest, tls) = split(
            "host=db user = 'o\\'brien' password='a b' sslmode=verify-full sslcert=/c.pem sslkey=/k.pem",
        )
        .expect("valid");
        assert_eq!(rest, "host='db' user='o\\'brien' password='a b'");
        assert_eq!(tls.mode(), TlsMode::VerifyFull);
        assert!(tls.client_cert_paths().is_some());
        let config: tokio_postgres::Config = rest.parse().expect("the driver reads it back");
        assert_eq!(config.get_user(), Some("o'brien"));
        assert!(split("host=db sslmode").is_err());
        assert!(split("host='db").is_err());
    }
}
