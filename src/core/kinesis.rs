//! Kinesis routing options (Go-compatible keys), the typed builder, and the
//! record envelope. No I/O.
//!
//! The wire format is documented in the public stream module.

use crate::core::options::{reject_unknown, required_string, string};
use crate::message::{Headers, Options};
use crate::{Error, Result};
use base64::Engine as _;
use serde_json::{Map, Value};

/// Go key: the stream name (required).
pub const STREAM_NAME: &str = "stream_name";
/// Go key: the partition key; absent = the ordering key, else the message id.
pub const PARTITION_KEY: &str = "partition_key";
/// Go key: an explicit hash key (decimal, 0..2^128) that picks the shard.
pub const EXPLICIT_HASH_KEY: &str = "explicit_hash_key";

const KEYS: [&str; 3] = [STREAM_NAME, PARTITION_KEY, EXPLICIT_HASH_KEY];

/// Kinesis's limit on one record: data plus partition key, 1 MiB.
pub const MAX_RECORD_SIZE: usize = 1024 * 1024;
/// Records per `PutRecords` call.
pub const MAX_BATCH_RECORDS: usize = 500;
/// Bytes per `PutRecords` call (data plus partition keys).
pub const MAX_BATCH_BYTES: usize = 5 * 1024 * 1024;

/// Where a Kinesis record goes.
///
/// ```
/// use outboxer::stream::kinesis;
/// let o: outboxer::Options = kinesis::stream("events").partition_key("user-7").into();
/// assert_eq!(o["stream_name"], "events");
/// assert!(kinesis::KinesisRoute::parse(&o).is_ok());
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KinesisRoute {
    /// Stream name.
    pub stream: String,
    /// Partition key (default: the ordering key, else the message id).
    pub partition_key: Option<String>,
    /// Explicit hash key.
    pub explicit_hash_key: Option<String>,
}

/// A route to a stream.
pub fn stream(name: &str) -> KinesisRoute {
    KinesisRoute {
        stream: name.to_string(),
        partition_key: None,
        explicit_hash_key: None,
    }
}

impl KinesisRoute {
    /// Sets the partition key.
    pub fn partition_key(mut self, k: impl Into<String>) -> Self {
        self.partition_key = Some(k.into());
        self
    }
    /// Sets the explicit hash key (a decimal number below 2^128).
    pub fn explicit_hash_key(mut self, k: impl Into<String>) -> Self {
        self.explicit_hash_key = Some(k.into());
        self
    }

    /// Reads and validates the Go-compatible options of a message.
    pub fn parse(options: &Options) -> Result<Self> {
        reject_unknown(options, &KEYS, "Kinesis")?;
        let stream = required_string(options, STREAM_NAME)?;
        if stream.is_empty()
            || stream.len() > 128
            || !stream
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        {
            return Err(Error::option(
                STREAM_NAME,
                "stream names are 1..=128 of A-Za-z0-9, '_', '.', '-'",
            ));
        }
        let partition_key = string(options, PARTITION_KEY)?;
        if let Some(k) = &partition_key {
            if k.is_empty() || k.chars().count() > 256 {
                return Err(Error::option(PARTITION_KEY, "must be 1..=256 characters"));
            }
        }
        let explicit_hash_key = string(options, EXPLICIT_HASH_KEY)?;
        if let Some(k) = &explicit_hash_key {
            if k.is_empty() || !k.chars().all(|c| c.is_ascii_digit()) || k.parse::<u128>().is_err()
            {
                return Err(Error::option(
                    EXPLICIT_HASH_KEY,
                    "must be a decimal number in 0..2^128",
                ));
            }
        }
        Ok(KinesisRoute {
            stream,
            partition_key,
            explicit_hash_key,
        })
    }
}

impl From<KinesisRoute> for Options {
    fn from(r: KinesisRoute) -> Options {
        let mut o = Options::new();
        o.insert(STREAM_NAME.into(), Value::from(r.stream));
        if let Some(k) = r.partition_key {
            o.insert(PARTITION_KEY.into(), Value::from(k));
        }
        if let Some(k) = r.explicit_hash_key {
            o.insert(EXPLICIT_HASH_KEY.into(), Value::from(k));
        }
        o
    }
}

/// The partition key of a record: the option, else the ordering key, else the
/// message id. Ordering keys longer than Kinesis's 256 characters are replaced
/// by a stable hash (one key still maps to one shard).
pub fn partition_key(route: &KinesisRoute, ordering_key: Option<&str>, message_id: &str) -> String {
    if let Some(k) = &route.partition_key {
        return k.clone();
    }
    match ordering_key {
        Some(k) if !k.is_empty() && k.chars().count() <= 256 => k.to_string(),
        Some(k) => {
            let mut h: u64 = 0xcbf2_9ce4_8422_2325;
            for b in k.as_bytes() {
                h ^= u64::from(*b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
            format!("outboxer-key-{h:016x}")
        }
        None => message_id.to_string(),
    }
}

/// Builds the record data (envelope version 1, see [`outboxer::stream::kinesis`](crate::stream::kinesis)).
pub fn encode_record(message_id: &str, payload: &[u8], headers: &Headers) -> Vec<u8> {
    let mut m = Map::new();
    m.insert("v".into(), Value::from(1));
    m.insert("id".into(), Value::from(message_id));
    m.insert(
        "headers".into(),
        Value::Object(
            headers
                .iter()
                .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
                .collect(),
        ),
    );
    match std::str::from_utf8(payload) {
        Ok(s) => m.insert("payload".into(), Value::from(s)),
        Err(_) => m.insert(
            "payload_b64".into(),
            Value::from(base64::engine::general_purpose::STANDARD.encode(payload)),
        ),
    };
    Value::Object(m).to_string().into_bytes()
}

/// A record read back by [`decode_record`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KinesisRecord {
    /// The outboxer message id (for de-duplication: delivery is at least once).
    pub message_id: String,
    /// The headers.
    pub headers: Headers,
    /// The payload bytes, exactly as enqueued.
    pub payload: Vec<u8>,
}

impl KinesisRecord {
    /// The W3C trace context the record carries (the envelope's `traceparent` and
    /// `tracestate` headers), if its `traceparent` is well formed.
    ///
    /// ```
    /// use outboxer::stream::kinesis::decode_record;
    /// let r = decode_record(br#"{"v":1,"id":"x","headers":{"traceparent":
    ///     "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},"payload":""}"#)?;
    /// assert_eq!(r.trace_context().map(|t| t.parent_id().to_string()),
    ///            Some("00f067aa0ba902b7".to_string()));
    /// # Ok::<(), outboxer::Error>(())
    /// ```
    pub fn trace_context(&self) -> Option<crate::message::TraceContext> {
        crate::message::TraceContext::from_headers(&self.headers)
    }
}

/// Decodes the data of a record written by the Kinesis stream.
///
/// ```
/// use outboxer::stream::kinesis::decode_record;
/// let r = decode_record(br#"{"v":1,"id":"x","headers":{"a":"b"},"payload":"hi"}"#).unwrap();
/// assert_eq!(r.payload, b"hi");
/// ```
pub fn decode_record(data: &[u8]) -> Result<KinesisRecord> {
    parse_record(data).map_err(|(_, reason)| Error::Decode {
        id: 0,
        reason: format!("Kinesis record: {reason}"),
    })
}

/// What is wrong with record data that is not a readable envelope.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BadRecord {
    /// Not an outboxer envelope at all (not JSON, no version, no id): another
    /// producer's record.
    Foreign,
    /// An envelope, broken or of an unknown version.
    Broken,
}

/// [`decode_record`] with the kind of failure, for [`crate::decode::kinesis`].
pub(crate) fn parse_record(
    data: &[u8],
) -> std::result::Result<KinesisRecord, (BadRecord, &'static str)> {
    use BadRecord::{Broken, Foreign};
    let v: Value =
        serde_json::from_slice(data).map_err(|_| (Foreign, "not an outboxer envelope"))?;
    match v.get("v") {
        None => return Err((Foreign, "not an outboxer envelope")),
        Some(n) if n.as_u64() != Some(1) => return Err((Broken, "unknown envelope version")),
        Some(_) => {}
    }
    let message_id = v
        .get("id")
        .and_then(Value::as_str)
        .ok_or((Foreign, "no id"))?
        .to_string();
    let headers = match v.get("headers") {
        None | Some(Value::Null) => Headers::new(),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| {
                v.as_str()
                    .map(|s| (k.clone(), s.to_string()))
                    .ok_or((Broken, "a header value is not a string"))
            })
            .collect::<std::result::Result<_, _>>()?,
        Some(_) => return Err((Broken, "headers is not an object")),
    };
    let payload = match (v.get("payload"), v.get("payload_b64")) {
        (Some(Value::String(s)), None) => s.as_bytes().to_vec(),
        (None, Some(Value::String(b))) => base64::engine::general_purpose::STANDARD
            .decode(b)
            .map_err(|_| (Broken, "payload_b64 is not base64"))?,
        _ => return Err((Broken, "exactly one of payload / payload_b64 expected")),
    };
    Ok(KinesisRecord {
        message_id,
        headers,
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn options() {
        let r = stream("s").partition_key("p").explicit_hash_key("123");
        assert_eq!(KinesisRoute::parse(&r.clone().into()).ok(), Some(r));
        for (v, key) in [
            (json!({}), "stream_name"),
            (json!({"stream_name": 1}), "stream_name"),
            (json!({"stream_name": "a/b"}), "stream_name"),
            (
                json!({"stream_name": "s", "partition_key": ""}),
                "partition_key",
            ),
            (
                json!({"stream_name": "s", "explicit_hash_key": "-1"}),
                "explicit_hash_key",
            ),
            (
                json!({"stream_name": "s", "explicit_hash_key": "9".repeat(40)}),
                "explicit_hash_key",
            ),
            (json!({"stream_name": "s", "stream": "x"}), "stream"),
        ] {
            let o: Options = serde_json::from_value(v.clone()).expect("object");
            match KinesisRoute::parse(&o) {
                Err(Error::InvalidOption { key: k, .. }) => assert_eq!(k, key, "{v}"),
                other => panic!("{v}: {other:?}"),
            }
        }
    }

    #[test]
    fn envelope_round_trips() {
        let mut h = Headers::new();
        h.insert("ключ".into(), "значение 🎉".into());
        for p in [b"text".to_vec(), vec![0, 159, 146, 150, 255], Vec::new()] {
            let d = encode_record("id-1", &p, &h);
            let r = decode_record(&d).expect("decodes");
            assert_eq!(
                (r.payload, r.headers, r.message_id.as_str()),
                (p, h.clone(), "id-1")
            );
        }
        assert!(decode_record(br#"{"v":2,"id":"x","payload":""}"#).is_err());
        assert!(decode_record(b"raw").is_err());
    }

    #[test]
    fn partition_keys() {
        let r = stream("s");
        assert_eq!(partition_key(&r, Some("k"), "id"), "k");
        assert_eq!(partition_key(&r, None, "id"), "id");
        assert!(partition_key(&r, Some(&"x".repeat(300)), "id").len() <= 256);
        assert_eq!(partition_key(&r.partition_key("p"), Some("k"), "id"), "p");
    }
}
