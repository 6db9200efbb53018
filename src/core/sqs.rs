//! SQS routing options (Go-compatible keys), the typed builder, and how a
//! message becomes an SQS body plus message attributes. No I/O.
//!
//! The wire format is documented in the public stream module.

use crate::core::aws::xml_char;
use crate::core::options::{reject_unknown, required_string, string};
use crate::message::{Headers, Options, MESSAGE_ID_HEADER, TRACEPARENT_HEADER, TRACESTATE_HEADER};
use crate::{Error, Result};
use base64::Engine as _;
use serde_json::Value;
use std::collections::BTreeMap;

/// Go key: the queue name or queue URL (required).
pub const QUEUE_NAME: &str = "queue_name";
/// Go key: delivery delay in seconds, 0..=900 (standard queues only).
pub const DELAY_SECONDS: &str = "delay_seconds";
/// Go key: the FIFO message group; absent = the ordering key.
pub const MESSAGE_GROUP_ID: &str = "message_group_id";
/// Go key: the FIFO deduplication id; absent = the message id.
pub const MESSAGE_DEDUP_ID: &str = "message_dedup_id";

const KEYS: [&str; 4] = [
    QUEUE_NAME,
    DELAY_SECONDS,
    MESSAGE_GROUP_ID,
    MESSAGE_DEDUP_ID,
];

/// Attribute marking a base64 body.
pub const BODY_ENCODING_ATTRIBUTE: &str = "outboxer-body-encoding";
/// Attribute carrying the headers that cannot be attributes of their own.
pub const HEADERS_ATTRIBUTE: &str = "outboxer-headers";
/// Headers sent as attributes of their own (10 minus id, encoding, headers);
/// `traceparent` and `tracestate` are always among them.
pub const MAX_HEADER_ATTRIBUTES: usize = 7;
/// SQS's classic message size limit (body plus attributes), 256 KiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 256 * 1024;
/// Entries per `SendMessageBatch` call.
pub const MAX_BATCH_ENTRIES: usize = 10;

/// Where an SQS message goes and how.
///
/// ```
/// use outboxer::stream::sqs;
/// let o: outboxer::Options = sqs::queue("orders.fifo").group("customer-7").into();
/// assert_eq!(o["queue_name"], "orders.fifo");
/// assert!(sqs::SqsRoute::parse(&o).is_ok());
/// assert!(sqs::SqsRoute::parse(&sqs::queue("q").delay_seconds(901).into()).is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SqsRoute {
    /// Queue name or URL.
    pub queue: String,
    /// Delivery delay, seconds.
    pub delay_seconds: Option<u32>,
    /// FIFO message group (default: the ordering key).
    pub group: Option<String>,
    /// FIFO deduplication id (default: the message id).
    pub dedup_id: Option<String>,
}

/// A route to a queue (name or URL).
pub fn queue(name_or_url: &str) -> SqsRoute {
    SqsRoute {
        queue: name_or_url.to_string(),
        delay_seconds: None,
        group: None,
        dedup_id: None,
    }
}

/// 1..=128 characters of SQS's group/dedup alphabet (printable ASCII).
fn check_fifo_id(key: &str, v: &str) -> Result<()> {
    if v.is_empty() || v.len() > 128 || !v.chars().all(|c| c.is_ascii_graphic()) {
        return Err(Error::option(
            key,
            "must be 1..=128 printable ASCII characters without spaces",
        ));
    }
    Ok(())
}

impl SqsRoute {
    /// Sets the delivery delay in seconds (0..=900, checked at `send`).
    pub fn delay_seconds(mut self, s: u32) -> Self {
        self.delay_seconds = Some(s);
        self
    }
    /// Sets the FIFO message group (instead of the ordering key).
    pub fn group(mut self, g: impl Into<String>) -> Self {
        self.group = Some(g.into());
        self
    }
    /// Sets the FIFO deduplication id (instead of the message id).
    pub fn dedup_id(mut self, d: impl Into<String>) -> Self {
        self.dedup_id = Some(d.into());
        self
    }

    /// True for FIFO queues (names or URLs ending in `.fifo`).
    pub fn is_fifo(&self) -> bool {
        self.queue.ends_with(".fifo")
    }

    /// The queue name (the last path segment of a URL).
    pub fn queue_name(&self) -> &str {
        self.queue.rsplit('/').next().unwrap_or(&self.queue)
    }

    /// Reads and validates the Go-compatible options of a message.
    pub fn parse(options: &Options) -> Result<Self> {
        reject_unknown(options, &KEYS, "SQS")?;
        let queue = required_string(options, QUEUE_NAME)?;
        let delay_seconds = match options.get(DELAY_SECONDS) {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => Some(n.as_u64()),
            // Go rows written by hand often carry numbers as strings.
            Some(Value::String(s)) => Some(s.trim().parse::<u64>().ok()),
            Some(other) => {
                return Err(Error::option(
                    DELAY_SECONDS,
                    format!("expected an integer 0..=900, got {other}"),
                ))
            }
        };
        let delay_seconds = match delay_seconds {
            None => None,
            Some(Some(s)) if s <= 900 => Some(s as u32),
            Some(_) => return Err(Error::option(DELAY_SECONDS, "expected an integer 0..=900")),
        };
        let route = SqsRoute {
            queue,
            delay_seconds,
            group: string(options, MESSAGE_GROUP_ID)?,
            dedup_id: string(options, MESSAGE_DEDUP_ID)?,
        };
        route.check()?;
        Ok(route)
    }

    fn check(&self) -> Result<()> {
        let name = self.queue_name();
        let url = self.queue.starts_with("http://") || self.queue.starts_with("https://");
        if self.queue.contains('/') && !url {
            return Err(Error::option(
                QUEUE_NAME,
                "a queue name or an http(s) queue URL",
            ));
        }
        if name.is_empty()
            || name.len() > 80
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            return Err(Error::option(
                QUEUE_NAME,
                "queue names are 1..=80 of A-Za-z0-9, '-', '_' (and a '.fifo' suffix)",
            ));
        }
        if self.is_fifo() {
            if self.delay_seconds.is_some_and(|d| d > 0) {
                return Err(Error::option(
                    DELAY_SECONDS,
                    "FIFO queues have no per-message delay",
                ));
            }
            if let Some(g) = &self.group {
                check_fifo_id(MESSAGE_GROUP_ID, g)?;
            }
            if let Some(d) = &self.dedup_id {
                check_fifo_id(MESSAGE_DEDUP_ID, d)?;
            }
        } else {
            for (key, v) in [
                (MESSAGE_GROUP_ID, &self.group),
                (MESSAGE_DEDUP_ID, &self.dedup_id),
            ] {
                if v.is_some() {
                    return Err(Error::option(
                        key,
                        "only for FIFO queues (names ending in .fifo)",
                    ));
                }
            }
        }
        Ok(())
    }
}

impl From<SqsRoute> for Options {
    fn from(r: SqsRoute) -> Options {
        let mut o = Options::new();
        o.insert(QUEUE_NAME.into(), Value::from(r.queue));
        if let Some(d) = r.delay_seconds {
            o.insert(DELAY_SECONDS.into(), Value::from(d));
        }
        if let Some(g) = r.group {
            o.insert(MESSAGE_GROUP_ID.into(), Value::from(g));
        }
        if let Some(d) = r.dedup_id {
            o.insert(MESSAGE_DEDUP_ID.into(), Value::from(d));
        }
        o
    }
}

/// The FIFO message group for an ordering key: the key itself when SQS accepts
/// it, else a stable hash of it (two keys may then share a group, which only
/// orders more, never less).
pub fn group_for_key(key: &str) -> String {
    if check_fifo_id(MESSAGE_GROUP_ID, key).is_ok() {
        return key.to_string();
    }
    // FNV-1a 64: stable across processes and versions.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("outboxer-key-{h:016x}")
}

/// A valid SQS attribute name.
fn attribute_name_ok(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    !name.is_empty()
        && name.len() <= 256
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
        && !lower.starts_with("aws.")
        && !lower.starts_with("amazon.")
        && !name.starts_with('.')
        && !name.ends_with('.')
        && !name.contains("..")
}

/// An SQS message ready to send: body and string attributes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encoded {
    /// The body text.
    pub body: String,
    /// String attributes, name to value.
    pub attributes: BTreeMap<String, String>,
}

impl Encoded {
    /// The size SQS counts: body plus each attribute's name, type and value.
    pub fn size(&self) -> usize {
        self.body.len()
            + self
                .attributes
                .iter()
                .map(|(k, v)| k.len() + "String".len() + v.len())
                .sum::<usize>()
    }
}

/// Encodes a message for SQS (see [`outboxer::stream::sqs`](crate::stream::sqs)). Refuses headers that use the
/// reserved names or contain characters SQS cannot carry.
pub fn encode(message_id: &str, payload: &[u8], headers: &Headers) -> Result<Encoded> {
    let mut attributes = BTreeMap::new();
    attributes.insert(MESSAGE_ID_HEADER.to_string(), message_id.to_string());
    let body = match std::str::from_utf8(payload) {
        Ok(s) if s.chars().all(xml_char) => s.to_string(),
        _ => {
            attributes.insert(BODY_ENCODING_ATTRIBUTE.into(), "base64".into());
            base64::engine::general_purpose::STANDARD.encode(payload)
        }
    };
    let mut rest = serde_json::Map::new();
    let mut own = 0;
    // The trace context takes the first attribute slots: SQS consumers (and
    // OpenTelemetry's SQS instrumentations) read it from attributes of its own.
    let trace = [TRACEPARENT_HEADER, TRACESTATE_HEADER];
    let ordered = trace
        .iter()
        .filter_map(|k| headers.get_key_value(*k))
        .chain(headers.iter().filter(|(k, _)| !trace.contains(&k.as_str())));
    for (k, v) in ordered {
        if [
            MESSAGE_ID_HEADER,
            BODY_ENCODING_ATTRIBUTE,
            HEADERS_ATTRIBUTE,
        ]
        .contains(&k.as_str())
        {
            return Err(Error::InvalidHeader {
                name: k.clone(),
                reason: "reserved by outboxer on SQS".into(),
            });
        }
        if !k
            .chars()
            .chain(v.chars())
            .all(|c| c != '\u{FFFE}' && c != '\u{FFFF}')
        {
            return Err(Error::InvalidHeader {
                name: k.chars().take(64).collect(),
                reason: "U+FFFE/U+FFFF cannot travel in SQS".into(),
            });
        }
        if own < MAX_HEADER_ATTRIBUTES
            && attribute_name_ok(k)
            && !v.is_empty()
            && v.chars().all(xml_char)
        {
            attributes.insert(k.clone(), v.clone());
            own += 1;
        } else {
            rest.insert(k.clone(), Value::String(v.clone()));
        }
    }
    if !rest.is_empty() {
        // serde_json escapes control characters, so the text is valid for SQS.
        attributes.insert(HEADERS_ATTRIBUTE.into(), Value::Object(rest).to_string());
    }
    Ok(Encoded { body, attributes })
}

/// What a consumer gets back from [`decode`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decoded {
    /// The message id, if the message carried one.
    pub message_id: Option<String>,
    /// The payload bytes, exactly as enqueued.
    pub payload: Vec<u8>,
    /// The headers, exactly as enqueued.
    pub headers: Headers,
}

impl Decoded {
    /// The W3C trace context the message carries (its `traceparent` and
    /// `tracestate` attributes), if its `traceparent` is well formed.
    pub fn trace_context(&self) -> Option<crate::message::TraceContext> {
        crate::message::TraceContext::from_headers(&self.headers)
    }
}

/// Decodes a received SQS message (its body and string attributes, e.g. from
/// `ReceiveMessage` with `MessageAttributeNames=["All"]`) into payload and headers.
/// Attributes that are not outboxer's are returned as headers.
pub fn decode(body: &str, attributes: &BTreeMap<String, String>) -> Result<Decoded> {
    let bad = |reason: String| Error::Decode { id: 0, reason };
    let payload = match attributes.get(BODY_ENCODING_ATTRIBUTE).map(String::as_str) {
        None => body.as_bytes().to_vec(),
        Some("base64") => base64::engine::general_purpose::STANDARD
            .decode(body)
            .map_err(|e| bad(format!("base64 body: {e}")))?,
        Some(other) => return Err(bad(format!("unknown body encoding {other:?}"))),
    };
    let mut headers = Headers::new();
    for (k, v) in attributes {
        match k.as_str() {
            BODY_ENCODING_ATTRIBUTE | MESSAGE_ID_HEADER => {}
            HEADERS_ATTRIBUTE => {
                let m: BTreeMap<String, String> = serde_json::from_str(v)
                    .map_err(|e| bad(format!("{HEADERS_ATTRIBUTE}: {e}")))?;
                headers.extend(m);
            }
            _ => {
                headers.insert(k.clone(), v.clone());
            }
        }
    }
    Ok(Decoded {
        message_id: attributes.get(MESSAGE_ID_HEADER).cloned(),
        payload,
        headers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn opts(v: Value) -> Options {
        serde_json::from_value(v).expect("object")
    }

    #[test]
    fn go_keys_and_builder() {
        let r = queue("q.fifo").group("g").dedup_id("d");
        assert_eq!(SqsRoute::parse(&r.clone().into()).ok(), Some(r));
        let go = opts(json!({"queue_name": "http://h:1/123/q", "delay_seconds": "5"}));
        let r = SqsRoute::parse(&go).expect("valid");
        assert_eq!((r.queue_name(), r.delay_seconds), ("q", Some(5)));
    }

    #[test]
    fn bad_options_are_typed_errors() {
        for (v, key) in [
            (json!({}), "queue_name"),
            (json!({"queue_name": 1}), "queue_name"),
            (json!({"queue_name": "a b"}), "queue_name"),
            (
                json!({"queue_name": "q", "delay_seconds": 901}),
                "delay_seconds",
            ),
            (
                json!({"queue_name": "q", "delay_seconds": -1}),
                "delay_seconds",
            ),
            (
                json!({"queue_name": "q", "delay_seconds": true}),
                "delay_seconds",
            ),
            (
                json!({"queue_name": "q", "message_group_id": "g"}),
                "message_group_id",
            ),
            (
                json!({"queue_name": "q.fifo", "message_group_id": "a b"}),
                "message_group_id",
            ),
            (
                json!({"queue_name": "q.fifo", "delay_seconds": 3}),
                "delay_seconds",
            ),
            (json!({"queue_name": "q", "queue": "x"}), "queue"),
        ] {
            match SqsRoute::parse(&opts(v.clone())) {
                Err(Error::InvalidOption { key: k, .. }) => assert_eq!(k, key, "{v}"),
                other => panic!("{v}: {other:?}"),
            }
        }
    }

    #[test]
    fn encoding_round_trips() {
        let mut h = Headers::new();
        h.insert("ключ".into(), "значение 🎉".into());
        h.insert("tenant".into(), "acme".into());
        h.insert("empty".into(), String::new());
        h.insert("ctl".into(), "a\u{1}b".into());
        for payload in [
            b"plain text".to_vec(),
            vec![0, 159, 146, 150, 255],
            b"a\x01b".to_vec(),
        ] {
            let e = encode("id-1", &payload, &h).expect("encodes");
            assert!(e.body.chars().all(xml_char));
            assert!(e.attributes.values().all(|v| v.chars().all(xml_char)));
            assert!(e.attributes.keys().all(|k| attribute_name_ok(k)));
            let d = decode(&e.body, &e.attributes).expect("decodes");
            assert_eq!(d.payload, payload);
            assert_eq!(d.headers, h);
            assert_eq!(d.message_id.as_deref(), Some("id-1"));
        }
        let many: Headers = (0..20)
            .map(|i| (format!("h{i:02}"), "v".to_string()))
            .collect();
        let e = encode("id", b"x", &many).expect("encodes");
        assert!(e.attributes.len() <= 10);
        assert_eq!(
            decode(&e.body, &e.attributes).expect("decodes").headers,
            many
        );
        let reserved: Headers = [(HEADERS_ATTRIBUTE.to_string(), "x".to_string())].into();
        assert!(matches!(
            encode("id", b"x", &reserved),
            Err(Error::InvalidHeader { .. })
        ));
    }

    #[test]
    fn trace_context_travels_as_attributes_of_its_own() {
        // More headers than attribute slots: the trace context must still be real
        // attributes, where SQS consumers (and OpenTelemetry instrumentations) look.
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut h: Headers = (0..12)
            .map(|i| (format!("a{i:02}"), "v".to_string()))
            .collect();
        h.insert("traceparent".into(), tp.into());
        h.insert("tracestate".into(), "congo=t61rcWkgMzE".into());
        let e = encode("id", b"x", &h).expect("encodes");
        assert!(e.attributes.len() <= 10);
        assert_eq!(
            e.attributes.get("traceparent").map(String::as_str),
            Some(tp)
        );
        assert_eq!(
            e.attributes.get("tracestate").map(String::as_str),
            Some("congo=t61rcWkgMzE")
        );
        let d = decode(&e.body, &e.attributes).expect("decodes");
        assert_eq!(d.headers, h);
        let ctx = d.trace_context().expect("trace context");
        assert_eq!(ctx.traceparent(), tp);
    }

    #[test]
    fn groups_for_keys() {
        assert_eq!(group_for_key("order-42"), "order-42");
        let g = group_for_key("ключ с пробелом");
        assert!(check_fifo_id("g", &g).is_ok());
        assert_eq!(g, group_for_key("ключ с пробелом"));
    }
}
