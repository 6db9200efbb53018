//! Secrets never reach errors or logs: passwords in URLs and connection strings
//! are replaced. The one place that decides what a secret is ([`is_secret_key`])
//! and how each kind of connection text is shown: URLs the `url` crate parses
//! ([`redact_url`]), URLs it cannot (several hosts, a raw secret:
//! [`redact_raw_url`], for `kafka://` and the AWS streams), ADO.NET and JDBC
//! strings (SQL Server), and driver settings ([`redact_value`]).
//!
//! [`redact_url`] and [`redact_connection_string`] are public at the crate root.

/// Whether a setting, query parameter or connection-string key names a secret:
/// `pwd`, or any key containing `password`, `secret`, `token`, `key` (API keys,
/// `ssl.key.pem`), `jaas` (Kafka's SASL config) or `private`. Case and whitespace
/// do not matter (`Access Token`).
pub fn is_secret_key(key: &str) -> bool {
    let k: String = key
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_lowercase();
    k == "pwd"
        || ["password", "secret", "token", "key", "jaas", "private"]
            .iter()
            .any(|w| k.contains(w))
}

/// A setting's value as errors, logs and `Debug` show it: `***` when its key names a
/// secret ([`is_secret_key`]).
pub fn redact_value(key: &str, value: &str) -> String {
    if is_secret_key(key) {
        "***".into()
    } else {
        value.into()
    }
}

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
                    let v = redact_value(&k, &v);
                    (k.into_owned(), v)
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
///     "server=tcp:db,1433;user=sa;password=s3cret;TrustServerCertificateCA=/ca.pem",
/// );
/// assert!(!shown.contains("s3cret"), "{shown}");
/// ```
pub fn redact_connection_string(conn_str: &str) -> String {
    let lower = conn_str.trim_start().to_ascii_lowercase();
    if conn_str.contains("://") && !lower.starts_with("jdbc:") {
        redact_url(conn_str)
    } else {
        redact_ado(conn_str)
    }
}

/// A `scheme://[user[:secret]@]hosts[?query]` URL that the `url` crate would refuse
/// or alter (several comma-separated hosts, an unescaped `@` or `/` in a secret),
/// shown as `scheme://user:***@hosts?query` with the query's secret values replaced
/// and any `#fragment` dropped. Without `://` it is shown as [`redact_url`] shows it.
pub fn redact_raw_url(raw: &str) -> String {
    let Some((scheme, rest)) = raw.split_once("://") else {
        return redact_url(raw);
    };
    let (authority, query) = match rest.split_once('?') {
        Some((a, q)) => (a, Some(q)),
        None => (rest, None),
    };
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            format!("{user}:***@{hosts}")
        }
        None => authority.to_string(),
    };
    match query {
        Some(q) => format!("{scheme}://{authority}?{}", redact_query(q)),
        None => format!("{scheme}://{authority}"),
    }
}

/// A query string (without `?`) with the values of secret keys replaced by `***`,
/// re-encoded as a form (as [`redact_url`] does). A `#` ends it: a fragment is never
/// shown, it may be the tail of a secret.
fn redact_query(q: &str) -> String {
    let q = q.split_once('#').map_or(q, |(q, _)| q);
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(url::form_urlencoded::parse(q.as_bytes()).map(|(k, v)| {
            let v = redact_value(&k, &v);
            (k, v)
        }))
        .finish()
}

/// An ADO.NET (or JDBC) connection string with the values of secret keys
/// ([`is_secret_key`]) replaced by `***`. Quoted values
/// (`'..'`, `".."`, `{..}`) are understood, so a quoted `;` inside a password does not
/// leak its tail; anything after an unterminated quote is dropped.
fn redact_ado(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        // One `key=value` pair (or a segment without `=`, e.g. `jdbc:sqlserver://h:1`).
        let key_end = s[i..].find(['=', ';']).map_or(b.len(), |p| i + p);
        if key_end == b.len() || b[key_end] == b';' {
            out.push_str(&s[i..key_end]);
            if key_end < b.len() {
                out.push(';');
            }
            i = key_end + 1;
            continue;
        }
        let key = &s[i..key_end];
        out.push_str(key);
        out.push('=');
        let secret = is_secret_key(key);
        // The value: up to the next `;`, or a quoted run.
        let mut j = key_end + 1;
        while j < b.len() && b[j].is_ascii_whitespace() && b[j] != b';' {
            j += 1;
        }
        let value_end = match b.get(j) {
            Some(&q @ (b'\'' | b'"')) => {
                // Doubled quotes are an escaped quote.
                let mut k = j + 1;
                loop {
                    match b.get(k) {
                        None => break None,
                        Some(&c) if c == q && b.get(k + 1) == Some(&q) => k += 2,
                        Some(&c) if c == q => break Some(k + 1),
                        Some(_) => k += 1,
                    }
                }
            }
            Some(b'{') => s[j..].find('}').map(|p| j + p + 1),
            _ => Some(s[j..].find(';').map_or(b.len(), |p| j + p)),
        };
        let Some(value_end) = value_end else {
            // Unterminated quote: the rest cannot be told apart from the value.
            out.push_str("***");
            break;
        };
        // Skip to the pair's end (`;`).
        let pair_end = s[value_end..].find(';').map_or(b.len(), |p| value_end + p);
        if secret {
            out.push_str("***");
        } else {
            out.push_str(&s[key_end + 1..pair_end]);
        }
        if pair_end < b.len() {
            out.push(';');
        }
        i = pair_end + 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn ado_passwords_are_redacted() {
        let cases = [
            (
                "server=tcp:h,1433;user=sa;password=s3cret;TrustServerCertificate=true",
                "server=tcp:h,1433;user=sa;password=***;TrustServerCertificate=true",
            ),
            ("Server=h;PWD=s3cret", "Server=h;PWD=***"),
            (
                "server=h;Password='s3;cret''x';database=d",
                "server=h;Password=***;database=d",
            ),
            (
                "server=h;password=\"s3;cret\";database=d",
                "server=h;password=***;database=d",
            ),
            (
                "server=h;password={s3;cret};database=d",
                "server=h;password=***;database=d",
            ),
            ("server=h;password='s3;cret", "server=h;password=***"),
            (
                "jdbc:sqlserver://h:1433;user=sa;password=s3cret",
                "jdbc:sqlserver://h:1433;user=sa;password=***",
            ),
            (
                "server=h;Access Token=s3cret;",
                "server=h;Access Token=***;",
            ),
            ("no secrets here", "no secrets here"),
            ("", ""),
        ];
        for (raw, want) in cases {
            let got = redact_ado(raw);
            assert_eq!(got, want, "{raw}");
            assert!(!got.contains("s3"), "{got}");
        }
    }

    #[test]
    fn raw_urls_hide_userinfo_secrets_and_secret_query_values() {
        // AWS streams: the access key id stays, the secret goes; the query is
        // re-encoded as a form.
        assert_eq!(
            redact_raw_url("sqs://AKID:hunter2@us-east-1?endpoint=http://h:1"),
            "sqs://AKID:***@us-east-1?endpoint=http%3A%2F%2Fh%3A1"
        );
        assert!(!redact_raw_url("sqs://AKID:hun@ter2@r").contains("ter2"));
        // Kafka: several hosts, secret properties in the query.
        assert_eq!(
            redact_raw_url("kafka://me:secret@h:1,h2:2?sasl.password=x&linger.ms=5"),
            "kafka://me:***@h:1,h2:2?sasl.password=***&linger.ms=5"
        );
        // A percent-encoded secret key is still a secret key.
        let r = redact_raw_url("kafka://h?sasl%2Epassword=s3cret");
        assert!(!r.contains("s3cret"), "{r}");
        // A fragment may be a secret's tail.
        let r = redact_raw_url("kafka://h?linger.ms=5#s3cret");
        assert!(!r.contains("s3cret"), "{r}");
        // Without `://`: as `redact_url` shows it.
        assert_eq!(redact_raw_url("kafka:u:s3cret@h"), "kafka:<redacted>");
        assert_eq!(redact_raw_url("s3cret"), "<unparsable url>");
    }

    #[test]
    fn one_list_of_secret_keys() {
        for k in [
            "password",
            "sasl.password",
            "PWD",
            "Access Token",
            "client_secret",
            "ssl.key.pem",
            "sasl.oauthbearer.config.jaas",
            "private_key",
            "api_key",
        ] {
            assert!(is_secret_key(k), "{k}");
            assert_eq!(redact_value(k, "s3cret"), "***");
        }
        for k in ["user", "linger.ms", "endpoint", "Server", "pwd_hint"] {
            assert!(!is_secret_key(k), "{k}");
        }
        assert_eq!(redact_value("linger.ms", "5"), "5");
        // `?pwd=` and `?jaas=` in a URL are secrets too.
        let r = redact_url("mysql://u@h/db?pwd=s3cret&x.jaas=s3cret2");
        assert!(!r.contains("s3cret"), "{r}");
    }
}
