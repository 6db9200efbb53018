//! The TLS query parameters of the HTTP streams' URLs (`sqs://`, `kinesis://`,
//! `pubsub://`): `ca_file=<path>` (a PEM CA bundle that replaces the built-in
//! roots), `client_cert=<path>` and `client_key=<path>` (mutual TLS), and
//! `danger_accept_invalid_certs=true` (no verification at all; tests only).

use crate::tls::Tls;

/// The parameter names, for "unknown query parameter" errors.
pub const TLS_PARAMS: &str = "ca_file, client_cert, client_key, danger_accept_invalid_certs";

/// Collects the TLS parameters of one URL.
#[derive(Clone, Debug, Default)]
pub struct TlsParams {
    ca_file: Option<String>,
    client_cert: Option<String>,
    client_key: Option<String>,
    danger: bool,
}

impl TlsParams {
    /// Takes `key=value` if it is a TLS parameter (`Ok(true)`), else `Ok(false)`.
    pub fn take(&mut self, key: &str, value: &str) -> std::result::Result<bool, String> {
        let path = |v: &str| {
            if v.is_empty() {
                Err(format!("{key} needs a file path"))
            } else {
                Ok(Some(v.to_string()))
            }
        };
        match key {
            "ca_file" => self.ca_file = path(value)?,
            "client_cert" => self.client_cert = path(value)?,
            "client_key" => self.client_key = path(value)?,
            "danger_accept_invalid_certs" => {
                self.danger = match value {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => return Err(format!("{key} must be true or false")),
                }
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// The settings, `None` when the URL has none.
    pub fn finish(self) -> std::result::Result<Option<Tls>, String> {
        if self.ca_file.is_none()
            && self.client_cert.is_none()
            && self.client_key.is_none()
            && !self.danger
        {
            return Ok(None);
        }
        let mut tls = Tls::verify_full().danger_accept_invalid_certificates(self.danger);
        if let Some(ca) = self.ca_file {
            tls = tls.ca_file(ca);
        }
        match (self.client_cert, self.client_key) {
            (Some(c), Some(k)) => tls = tls.client_cert(c, k),
            (None, None) => {}
            _ => return Err("client_cert and client_key go together".into()),
        }
        Ok(Some(tls))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_make_verified_tls() {
        let mut p = TlsParams::default();
        assert_eq!(p.take("ca_file", "/ca.pem"), Ok(true));
        assert_eq!(p.take("endpoint", "x"), Ok(false));
        let tls = p.finish().expect("valid").expect("some");
        assert_eq!(tls.mode(), crate::tls::TlsMode::VerifyFull);
        assert!(!tls.accepts_invalid_certificates());
        assert_eq!(tls.ca_path(), Some(std::path::Path::new("/ca.pem")));
        assert_eq!(TlsParams::default().finish(), Ok(None));
        let mut p = TlsParams::default();
        assert!(p.take("danger_accept_invalid_certs", "yes").is_err());
        assert!(p.take("ca_file", "").is_err());
        p.take("client_cert", "/c.pem").expect("taken");
        assert!(p.finish().is_err());
    }
}
