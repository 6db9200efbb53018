//! The one percent-decoder of the crate, for the parts of connection URLs that the
//! drivers parse themselves (userinfo, vhost, query values).
//!
//! Strict on purpose: a `%` must be followed by two hex digits and the result must
//! be UTF-8, so a mistyped secret is refused at `connect` instead of reaching the
//! server altered (the `percent-encoding` crate passes a bad escape through as it
//! is). Errors name the byte offset, never the text: the text may be a password.

/// Decodes `%XX` escapes; every other byte, `+` included, stands for itself
/// (RFC 3986: userinfo, paths).
pub fn decode(s: &str) -> std::result::Result<String, String> {
    decode_with(s, false)
}

/// Decodes a query component the way HTML forms encode it
/// (`application/x-www-form-urlencoded`): `%XX` escapes, and `+` is a space.
pub fn decode_form(s: &str) -> std::result::Result<String, String> {
    decode_with(s, true)
}

fn decode_with(s: &str, plus_is_space: bool) -> std::result::Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = match bytes.get(i + 1..i + 3) {
                    Some(&[h, l]) => hex_digit(h).zip(hex_digit(l)).map(|(h, l)| h << 4 | l),
                    _ => None,
                };
                out.push(hex.ok_or_else(|| format!("bad percent-escape at byte {i}"))?);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| "percent-escapes are not UTF-8".to_string())
}

/// One hex digit; unlike `u8::from_str_radix`, no sign is accepted (`%+1`).
fn hex_digit(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::{decode, decode_form};

    #[test]
    fn escapes_decode_in_either_case() {
        // AMQP vhost `/`, AWS secrets with `/` (both callers document `%2F`).
        assert_eq!(decode("%2f").as_deref(), Ok("/"));
        assert_eq!(decode("se%2Fcr%2fet").as_deref(), Ok("se/cr/et"));
        assert_eq!(decode("p%40ss").as_deref(), Ok("p@ss"));
        assert_eq!(decode("").as_deref(), Ok(""));
        assert_eq!(decode("%C3%A9t%C3%A9").as_deref(), Ok("été"));
        assert_eq!(decode("plain-text_1.2~").as_deref(), Ok("plain-text_1.2~"));
    }

    #[test]
    fn plus_is_literal_except_in_form_queries() {
        // An AWS secret, a Kafka or AMQP password: `+` is part of it.
        assert_eq!(decode("se+cret").as_deref(), Ok("se+cret"));
        // Kafka query values: `+` is a space, `%2B` a plus.
        assert_eq!(decode_form("a+b%2Bc").as_deref(), Ok("a b+c"));
    }

    #[test]
    fn bad_escapes_are_refused_without_the_text() {
        for bad in ["%", "%2", "x%zz", "%+1", "%-1", "% 1", "%2%2f", "s3cret%g0"] {
            let e = decode(bad).expect_err(bad);
            assert!(e.starts_with("bad percent-escape at byte"), "{bad}: {e}");
            assert!(!e.contains("s3cret"), "{e}");
            assert!(decode_form(bad).is_err(), "{bad}");
        }
        assert_eq!(
            decode("ab%").expect_err("truncated"),
            "bad percent-escape at byte 2"
        );
        // A multi-byte character right after `%` is not a char boundary problem.
        assert!(decode("%é").is_err());
    }

    #[test]
    fn results_must_be_utf8() {
        assert_eq!(
            decode("%ff%fe").expect_err("not UTF-8"),
            "percent-escapes are not UTF-8"
        );
    }
}
