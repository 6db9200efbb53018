//! Secrets never reach errors or logs: passwords in URLs are replaced.

/// Returns `url` with any password (and `password=` query values) replaced by `***`.
/// Input that does not parse as a URL is reduced to its scheme, which is never secret.
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
