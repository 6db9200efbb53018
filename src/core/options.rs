//! Reading the Go-compatible option map of a message: the checks every
//! stream's route parser shares (unknown keys, string values, required keys).

use crate::message::Options;
use crate::{Error, Result};
use serde_json::Value;

/// Refuses any key not in `known`, naming the stream and the keys it knows.
pub(crate) fn reject_unknown(options: &Options, known: &[&str], stream: &str) -> Result<()> {
    match options.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(Error::option(
            k.as_str(),
            format!("unknown {stream} option (known: {})", known.join(", ")),
        )),
        None => Ok(()),
    }
}

/// An optional string option (absent and JSON `null` are `None`).
pub(crate) fn string(options: &Options, key: &str) -> Result<Option<String>> {
    match options.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(Error::option(
            key,
            format!("expected a string, got {other}"),
        )),
    }
}

/// A string option that must be present.
pub(crate) fn required_string(options: &Options, key: &str) -> Result<String> {
    string(options, key)?.ok_or_else(|| Error::option(key, "required"))
}
