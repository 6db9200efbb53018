//! Secrets never reach errors or logs: passwords in URLs and connection strings
//! are replaced. The functions are public at the crate root
//! ([`crate::redact_url`], [`crate::redact_connection_string`]).

/// Returns `url` with any password (and `password=` query values) replaced by `***`.
/// Input that does not parse as a URL is reduced to its scheme, which is never secret.
///
/// This is what the library's own errors and logs show of a URL.
///
/// ```
/// assert_eq!(
///     outboxer::redact_url("amqp://guest:s3cret@127.0.0.1:5672/%2f"),
///     "amqp://guest:***@127.0.0.1:5672/%2f"
/// );
/// ```
pub fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        // Without `//` (e.g. `amqp:user:pw@host`) the url crate sees an opaque path
        // that may hold anything: keep only the scheme.
        Ok(url) if url.cannot_be_a_base() || url.host().is_none() => {
            format!("{}:<redacted>", url.scheme())
        }
        Ok(mut url) => {
            // A `#` inside a password starts a "fragment": never show one.
            url.set_fragment(None);
            if url.password().is_some() {
                let _ = url.set_password(Some("***"));
            }
            let pairs: Vec<(String, String)> = url
                .query_pairs()
                .map(|(k, v)| {
                    let secret = ["password", "secret", "token", "key"]
                        .iter()
                        .any(|s| k.to_ascii_lowercase().contains(s));
                    (
                        k.into_owned(),
                        if secret {
                            "***".to_string()
                        } else {
                            v.into_owned()
                        },
                    )
                })
                .collect();
            if !pairs.is_empty() {
                url.query_pairs_mut().clear().extend_pairs(pairs);
            }
            url.to_string()
        }
        Err(_) => match raw.split_once("://") {
            Some((scheme, _))
                if scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '+') =>
            {
                format!("{scheme}://<unparsable>")
            }
            _ => "<unparsable url>".to_string(),
        },
    }
}

/// Returns a store URL or connection string with its secrets replaced by `***`:
/// URL-style strings (`postgres://`, `mysql://`, `sqlserver://`, ...) as
/// [`redact_url`] does, ADO.NET and JDBC `key=value` strings (SQL Server) with
/// their password, secret, token and key values replaced.
///
/// ```
/// let shown = outboxer::redact_connection_string(
///     "server=tcp:db,1433;user=sa;password=s3cret;TrustServerCertificate=true",
/// );
/// assert!(!shown.contains("s3cret"), "{shown}");
/// ```
pub fn redact_connection_string(conn_str: &str) -> String {
    let lower = conn_str.trim_start().to_ascii_lowercase();
    if conn_str.contains("://") && !lower.starts_with("jdbc:") {
        redact_url(conn_str)
    } else {
        crate::core::sql::sqlserver::redact_ado(conn_str)
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn hides_passwords() {
        let r = redact_url("amqp://guest:s3cret@host:5672/%2f");
        assert!(!r.contains("s3cret"), "{r}");
        assert!(r.contains("guest:***@host"), "{r}");
        let r = redact_url("postgres://u@h/db?password=s3cret&sslmode=disable");
        assert!(
            !r.contains("s3cret") && r.contains("sslmode=disable"),
            "{r}"
        );
        let r = redact_url("postgres://u:s3cret@[bad");
        assert!(!r.contains("s3cret"), "{r}");
        assert!(!redact_url("user=u password=s3cret").contains("s3cret"));
        for raw in [
            "amqp:guest:s3cret@h/%2f",
            "amqp://guest:1234#s3cret@h/",
            "localhost:5432 password=s3cret",
        ] {
            assert!(!redact_url(raw).contains("s3cret"), "{raw}");
        }
    }
}
