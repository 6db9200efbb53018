//! The TLS parameters of a `mysql://` URL in MySQL's own client spelling
//! (`ssl-mode`, `ssl-ca`, `ssl-cert`, `ssl-key`), read into a [`Tls`] and removed
//! from the URL before the driver parses it (the `mysql` crate refuses unknown
//! parameters). Shared by the blocking and async MySQL stores.

use crate::core::redact::redact_url;
use crate::tls::Tls;
use crate::{Error, Result};

/// A URL without its TLS parameters, and the TLS they asked for (`None`: the URL
/// has no `ssl-mode`, the driver's own settings apply).
#[derive(Debug, PartialEq)]
pub struct MysqlUrl {
    /// The URL the driver parses.
    pub url: String,
    /// What `ssl-mode` and its companions asked for.
    pub tls: Option<Tls>,
}

/// The driver's own TLS parameters: refused next to `ssl-mode`, so that one URL
/// does not say two things.
const DRIVER_TLS_KEYS: &[&str] = &[
    "require_ssl",
    "verify_ca",
    "verify_identity",
    "root_cert_path",
    "danger_skip_domain_validation",
    "cert_chain_path",
    "priv_key_path",
    "built_in_roots",
];

/// Splits `ssl-mode` (or `ssl_mode`; DISABLED, PREFERRED, REQUIRED, VERIFY_CA,
/// VERIFY_IDENTITY in any case), `ssl-ca`, `ssl-cert`, `ssl-key` and
/// `danger_accept_invalid_certs` off a MySQL URL.
///
/// REQUIRED verifies like VERIFY_IDENTITY (MySQL's does not verify at all);
/// PREFERRED is refused because it may fall back to plaintext.
pub fn split(url: &str) -> Result<MysqlUrl> {
    let invalid = |reason: String| Error::InvalidUrl {
        url: redact_url(url),
        reason,
    };
    let Ok(mut parsed) = url::Url::parse(url) else {
        // The driver says what is wrong with it.
        return Ok(MysqlUrl {
            url: url.to_string(),
            tls: None,
        });
    };
    let (mut mode, mut ca, mut cert, mut key, mut danger) = (None, None, None, None, None);
    let mut kept = Vec::new();
    let mut driver_tls = None;
    for (k, v) in parsed.query_pairs() {
        let (k, v) = (k.into_owned(), v.into_owned());
        match k.replace('_', "-").as_str() {
            "ssl-mode" => mode = Some(v),
            "ssl-ca" => ca = Some(v),
            "ssl-cert" => cert = Some(v),
            "ssl-key" => key = Some(v),
            "danger-accept-invalid-certs" => danger = Some(v),
            _ => {
                if DRIVER_TLS_KEYS.contains(&k.as_str()) {
                    driver_tls = Some(k.clone());
                }
                kept.push((k, v));
            }
        }
    }
    let any_ours = mode.is_some() || ca.is_some() || cert.is_some() || key.is_some();
    if !any_ours && danger.is_none() {
        return Ok(MysqlUrl {
            url: url.to_string(),
            tls: None,
        });
    }
    if let Some(k) = driver_tls {
        return Err(invalid(format!(
            "`{k}` and `ssl-mode`/`ssl-ca` both set TLS: use ssl-mode, ssl-ca, ssl-cert, ssl-key"
        )));
    }
    let mut tls =
        match mode.as_deref().map(str::to_ascii_uppercase).as_deref() {
            None | Some("DISABLED") => Tls::disabled(),
            Some("REQUIRED") | Some("VERIFY_IDENTITY") => Tls::verify_full(),
            Some("VERIFY_CA") => Tls::verify_ca(),
            Some("PREFERRED") => return Err(invalid(
                "ssl-mode=PREFERRED may fall back to plaintext: use VERIFY_IDENTITY (or DISABLED)"
                    .into(),
            )),
            Some(other) => {
                return Err(invalid(format!(
                    "ssl-mode={other}: expected DISABLED, REQUIRED, VERIFY_CA or VERIFY_IDENTITY"
                )))
            }
        };
    if danger.as_deref() == Some("true") && !tls.enabled() {
        return Err(invalid(
            "danger_accept_invalid_certs needs ssl-mode=VERIFY_CA or VERIFY_IDENTITY".into(),
        ));
    }
    if let Some(ca) = ca {
        tls = tls.ca_file(ca);
    }
    match (cert, key) {
        (Some(c), Some(k)) => tls = tls.client_cert(c, k),
        (None, None) => {}
        _ => return Err(invalid("ssl-cert and ssl-key go together".into())),
    }
    match danger.as_deref() {
        None | Some("false") => {}
        Some("true") => tls = tls.danger_accept_invalid_certificates(true),
        Some(other) => {
            return Err(invalid(format!(
                "danger_accept_invalid_certs={other}: expected true or false"
            )))
        }
    }
    if kept.is_empty() {
        parsed.set_query(None);
    } else {
        parsed.query_pairs_mut().clear().extend_pairs(kept);
    }
    Ok(MysqlUrl {
        url: parsed.to_string(),
        tls: Some(tls),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::TlsMode;

    #[test]
    fn reads_mysql_spellings_and_strips_them() {
        let u = split("mysql://u:p@db:3306/app?ssl-mode=verify_identity&ssl-ca=/ca.pem&pool_max=4")
            .expect("valid");
        assert_eq!(u.url, "mysql://u:p@db:3306/app?pool_max=4");
        let tls = u.tls.expect("tls");
        assert_eq!(tls.mode(), TlsMode::VerifyFull);
        assert_eq!(tls.ca_path(), Some(std::path::Path::new("/ca.pem")));

        let u =
            split("mysql://db/app?ssl_mode=VERIFY_CA&ssl_cert=c.pem&ssl_key=k.pem").expect("ok");
        assert_eq!(u.url, "mysql://db/app");
        let tls = u.tls.expect("tls");
        assert_eq!(tls.mode(), TlsMode::VerifyCa);
        assert!(tls.client_cert_paths().is_some());

        // MySQL's REQUIRED does not verify; outboxer's does.
        let u = split("mysql://db/app?ssl-mode=REQUIRED").expect("ok");
        assert_eq!(u.tls.map(|t| t.mode()), Some(TlsMode::VerifyFull));
        let u = split("mysql://db/app?ssl-mode=DISABLED").expect("ok");
        assert_eq!(u.tls.map(|t| t.mode()), Some(TlsMode::Disabled));
        let u = split("mysql://db/app?ssl-mode=VERIFY_IDENTITY&danger_accept_invalid_certs=true")
            .expect("ok");
        assert!(u.tls.is_some_and(|t| t.accepts_invalid_certificates()));
    }

    #[test]
    fn leaves_plain_urls_alone() {
        let url = "mysql://root@127.0.0.1:3306/test?pool_max=2";
        assert_eq!(
            split(url).expect("ok"),
            MysqlUrl {
                url: url.into(),
                tls: None
            }
        );
    }

    #[test]
    fn refuses_what_could_downgrade_or_contradict() {
        for url in [
            "mysql://db/app?ssl-mode=PREFERRED",
            "mysql://db/app?ssl-mode=sometimes",
            "mysql://db/app?ssl-mode=VERIFY_CA&ssl-cert=c.pem",
            "mysql://db/app?ssl-mode=VERIFY_CA&root_cert_path=ca.pem",
            "mysql://u:secret@db/app?ssl-mode=VERIFY_CA&danger_accept_invalid_certs=yes",
            "mysql://db/app?danger_accept_invalid_certs=true",
        ] {
            match split(url) {
                Err(Error::InvalidUrl { url: shown, .. }) => assert!(!shown.contains("secret")),
                other => panic!("{url}: {other:?}"),
            }
        }
    }
}
