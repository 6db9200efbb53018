//! Row <-> message mapping that does not depend on a driver.

use crate::message::{Headers, Options};
use serde_json::Value;

/// Headers as stored (a JSON object of strings).
pub fn headers_to_json(headers: &Headers) -> Value {
    Value::Object(
        headers
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
    )
}

/// Options as stored (a JSON object).
pub fn options_to_json(options: &Options) -> Value {
    Value::Object(
        options
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    )
}

/// Reads stored headers. Go rows may hold non-string values or NULL: non-strings
/// are sent as their JSON text, NULL is no headers.
pub fn headers_from_json(v: Option<Value>) -> Result<Headers, String> {
    match v {
        None | Some(Value::Null) => Ok(Headers::new()),
        Some(Value::Object(m)) => Ok(m
            .into_iter()
            .map(|(k, v)| match v {
                Value::String(s) => (k, s),
                other => (k, other.to_string()),
            })
            .collect()),
        Some(other) => Err(format!(
            "headers: must be a JSON object, found {}",
            kind(&other)
        )),
    }
}

/// Reads stored options; NULL is no options.
pub fn options_from_json(v: Option<Value>) -> Result<Options, String> {
    match v {
        None | Some(Value::Null) => Ok(Options::new()),
        Some(Value::Object(m)) => Ok(m.into_iter().collect()),
        Some(other) => Err(format!(
            "options: must be a JSON object, found {}",
            kind(&other)
        )),
    }
}

/// What a JSON value is, with its text cut short (it ends up in `last_error`).
fn kind(v: &Value) -> String {
    let what = match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    };
    let text = v.to_string();
    let short: String = text.chars().take(40).collect();
    let more = if short.len() < text.len() { "…" } else { "" };
    format!("{what} ({short}{more})")
}

/// Bytes a message occupies on the wire, for size limits: payload plus headers.
pub fn wire_size(payload: &[u8], headers: &Headers) -> usize {
    payload.len()
        + headers
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn go_rows_decode() {
        let h = headers_from_json(Some(json!({"a": "x", "n": 5, "b": true}))).expect("object");
        assert_eq!(h["a"], "x");
        assert_eq!(h["n"], "5");
        assert_eq!(h["b"], "true");
        assert!(headers_from_json(None).expect("null").is_empty());
        assert!(headers_from_json(Some(json!([1]))).is_err());
        assert_eq!(
            options_from_json(Some(json!("x"))),
            Err("options: must be a JSON object, found a string (\"x\")".into())
        );
        let long = headers_from_json(Some(json!(vec![0; 100]))).expect_err("array");
        assert!(long.starts_with("headers: must be a JSON object, found an array ([0,0,"));
        assert!(long.ends_with("…)") && long.len() < 100, "{long}");
        let mut hs = Headers::new();
        hs.insert("ключ".into(), "значение 🎉".into());
        assert_eq!(headers_from_json(Some(headers_to_json(&hs))).ok(), Some(hs));
    }
}
