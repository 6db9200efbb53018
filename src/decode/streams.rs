//! The per-stream entry points of [`crate::decode`], each behind its stream's feature.

#[allow(unused_imports)] // which ones are used depends on the streams compiled in
use super::{undecodable, DecodeCause, Incoming};
#[allow(unused_imports)]
use crate::message::{Headers, CONTENT_TYPE_HEADER, MESSAGE_ID_HEADER};
#[allow(unused_imports)]
use crate::Result;

/// Reads an AMQP delivery (amiquip's) published by
/// [`AmqpStream`](crate::stream::AmqpStream): the message id from the
/// `message_id` property (else the `outboxer-message-id` header), the headers
/// from the header table. See [`amqp_parts`] for what is read and how.
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use amiquip::{Connection, ConsumerMessage, ConsumerOptions, QueueDeclareOptions};
///
/// #[derive(serde::Deserialize)]
/// struct OrderPaid { order: u64 }
///
/// let mut conn = Connection::insecure_open("amqp://guest:guest@127.0.0.1:5672/%2f")?;
/// let channel = conn.open_channel(None)?;
/// let queue = channel.queue_declare("billing", QueueDeclareOptions::default())?;
/// let consumer = queue.consume(ConsumerOptions::default())?;
/// for m in consumer.receiver().iter() {
///     let ConsumerMessage::Delivery(delivery) = m else { break };
///     let paid = outboxer::decode::amqp(&delivery)?.json::<OrderPaid>()?;
///     println!("message {}: order {}", paid.message_id, paid.value.order);
///     consumer.ack(delivery)?;
/// }
/// # Ok(()) }
/// ```
#[cfg(feature = "amqp")]
#[cfg_attr(docsrs, doc(cfg(feature = "amqp")))]
pub fn amqp(delivery: &amiquip::Delivery) -> Result<Incoming> {
    amqp_parts(&delivery.properties, &delivery.body)
}

/// [`amqp`] from a delivery's properties and body. String header values
/// (long and short strings) are returned as they are; booleans and numbers as
/// their decimal text; tables, arrays, byte arrays, decimals, timestamps and
/// void values are left out. The `content_type` property is returned as the
/// `content-type` header when the table has none.
///
/// ```
/// use amiquip::{AmqpProperties, AmqpValue, FieldTable};
/// use outboxer::decode::{amqp_parts, DecodeCause};
///
/// let id = "0192f0c1-7a8b-7c3d-9e4f-0123456789ab";
/// let props = AmqpProperties::default()
///     .with_message_id(id.to_string())
///     .with_content_type("application/json".to_string())
///     .with_headers(FieldTable::from([("tenant".to_string(), AmqpValue::LongString("acme".into()))]));
/// let incoming = amqp_parts(&props, br#"[1,2]"#)?;
/// assert_eq!(incoming.message_id.to_string(), id);
/// assert_eq!(incoming.headers["tenant"], "acme");
/// assert_eq!(incoming.json::<Vec<u32>>()?.value, vec![1, 2]);
///
/// // Published by something else: no outboxer message id.
/// let foreign = amqp_parts(&AmqpProperties::default(), b"hello");
/// assert!(matches!(foreign, Err(outboxer::Error::Undecodable { cause: DecodeCause::MessageId, .. })));
/// # Ok::<(), outboxer::Error>(())
/// ```
#[cfg(feature = "amqp")]
#[cfg_attr(docsrs, doc(cfg(feature = "amqp")))]
pub fn amqp_parts(properties: &amiquip::AmqpProperties, body: &[u8]) -> Result<Incoming> {
    use amiquip::AmqpValue as V;
    let mut headers = Headers::new();
    for (k, v) in properties.headers().iter().flatten() {
        let text = match v {
            V::LongString(s) => s.clone(),
            V::Boolean(b) => b.to_string(),
            V::ShortShortInt(n) => n.to_string(),
            V::ShortShortUInt(n) => n.to_string(),
            V::ShortInt(n) => n.to_string(),
            V::ShortUInt(n) => n.to_string(),
            V::LongInt(n) => n.to_string(),
            V::LongUInt(n) => n.to_string(),
            V::LongLongInt(n) => n.to_string(),
            V::Float(n) => n.to_string(),
            V::Double(n) => n.to_string(),
            _ => continue,
        };
        headers.insert(k.clone(), text);
    }
    if let Some(ct) = properties.content_type() {
        if !headers
            .keys()
            .any(|k| k.eq_ignore_ascii_case(CONTENT_TYPE_HEADER))
        {
            headers.insert(CONTENT_TYPE_HEADER.to_string(), ct.clone());
        }
    }
    // The property is what the stream sets first; the header is its copy for
    // consumers that only see headers.
    if let Some(id) = properties.message_id() {
        headers.insert(MESSAGE_ID_HEADER.to_string(), id.clone());
    }
    Incoming::from_headers("amqp", headers, body.to_vec())
}

/// Reads a Kafka record (rdkafka's `BorrowedMessage` from a consumer's poll, or
/// an `OwnedMessage`) published by [`KafkaStream`](crate::stream::KafkaStream):
/// the message id and the headers from the record headers, the payload from the
/// value (none is an empty payload). Header values that are null or not UTF-8
/// (another producer's binary headers) are left out.
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use rdkafka::consumer::{BaseConsumer, Consumer};
/// use rdkafka::ClientConfig;
/// use std::time::Duration;
///
/// #[derive(serde::Deserialize)]
/// struct OrderPaid { order: u64 }
///
/// let consumer: BaseConsumer = ClientConfig::new()
///     .set("bootstrap.servers", "127.0.0.1:9092")
///     .set("group.id", "billing")
///     .create()?;
/// consumer.subscribe(&["orders"])?;
/// while let Some(record) = consumer.poll(Duration::from_secs(1)) {
///     let paid = outboxer::decode::kafka(&record?)?.json::<OrderPaid>()?;
///     println!("message {}: order {}", paid.message_id, paid.value.order);
/// }
/// # Ok(()) }
/// ```
#[cfg(feature = "kafka")]
#[cfg_attr(docsrs, doc(cfg(feature = "kafka")))]
pub fn kafka<M: rdkafka::Message>(record: &M) -> Result<Incoming> {
    use rdkafka::message::Headers as _;
    let mut headers = Headers::new();
    if let Some(hs) = record.headers() {
        for h in hs.iter() {
            if let Some(v) = h.value.and_then(|v| std::str::from_utf8(v).ok()) {
                headers.insert(h.key.to_string(), v.to_string());
            } else if h.key == MESSAGE_ID_HEADER {
                return Err(undecodable(
                    "kafka",
                    DecodeCause::MessageId,
                    format!("{MESSAGE_ID_HEADER} is null or not UTF-8"),
                ));
            }
        }
    }
    let payload = record.payload().unwrap_or_default().to_vec();
    Incoming::from_headers("kafka", headers, payload)
}

/// Reads an SQS message published by [`SqsStream`](crate::stream::SqsStream):
/// its body and its string message attributes (e.g. from `ReceiveMessage` with
/// `MessageAttributeNames=["All"]`: each attribute's `StringValue`). Builds on
/// [`sqs::decode`](crate::stream::sqs::decode): a base64 body is decoded, headers
/// that travelled in the `outboxer-headers` attribute are put back.
///
/// ```
/// use outboxer::decode::{sqs, DecodeCause};
/// use std::collections::BTreeMap;
///
/// let attributes = BTreeMap::from([
///     ("outboxer-message-id".to_string(), "0192f0c1-7a8b-7c3d-9e4f-0123456789ab".to_string()),
///     ("content-type".to_string(), "application/json".to_string()),
/// ]);
/// let incoming = sqs(r#"{"order":42}"#, &attributes)?;
/// assert_eq!(incoming.json::<serde_json::Value>()?.value["order"], 42);
/// assert!(matches!(sqs("hi", &BTreeMap::new()),
///                  Err(outboxer::Error::Undecodable { cause: DecodeCause::MessageId, .. })));
/// # Ok::<(), outboxer::Error>(())
/// ```
#[cfg(feature = "sqs")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqs")))]
pub fn sqs(
    body: &str,
    attributes: &std::collections::BTreeMap<String, String>,
) -> Result<Incoming> {
    let d = crate::core::sqs::decode(body, attributes).map_err(|e| match e {
        crate::Error::Decode { reason, .. } => undecodable("sqs", DecodeCause::Encoding, reason),
        other => other,
    })?;
    let mut headers = d.headers;
    if let Some(id) = d.message_id {
        headers.insert(MESSAGE_ID_HEADER.to_string(), id);
    }
    Incoming::from_headers("sqs", headers, d.payload)
}

/// Reads a Pub/Sub message published by
/// [`PubSubStream`](crate::stream::PubSubStream), as JSON: a pulled
/// `ReceivedMessage` (`{"ackId":..,"message":{..}}`), a push request's body
/// (`{"message":{..},"subscription":..}`) or the `PubsubMessage` itself
/// (`{"data":"<base64>","attributes":{..},..}`). The payload is `data`
/// (standard base64; none is an empty payload), the headers the attributes, the
/// message id the `outboxer-message-id` attribute (not Pub/Sub's own
/// `messageId`, which differs on every publish of the same message). Push
/// subscriptions with payload unwrapping (no JSON wrapper) are not read here.
///
/// ```
/// use outboxer::decode::pubsub;
/// let push_body = serde_json::json!({
///     "message": {
///         "data": "eyJvcmRlciI6NDJ9", // {"order":42}
///         "attributes": {"outboxer-message-id": "0192f0c1-7a8b-7c3d-9e4f-0123456789ab"},
///         "messageId": "1234"
///     },
///     "subscription": "projects/p/subscriptions/billing"
/// });
/// let incoming = pubsub(&push_body)?;
/// assert_eq!(incoming.payload, br#"{"order":42}"#);
/// # Ok::<(), outboxer::Error>(())
/// ```
#[cfg(feature = "pubsub")]
#[cfg_attr(docsrs, doc(cfg(feature = "pubsub")))]
pub fn pubsub(message: &serde_json::Value) -> Result<Incoming> {
    use base64::Engine as _;
    use serde_json::Value;
    let bad = |reason: &str| undecodable("pubsub", DecodeCause::Encoding, reason);
    let m = match message.get("message") {
        Some(inner @ Value::Object(_)) => inner,
        _ => message,
    };
    if !m.is_object() {
        return Err(bad("not a Pub/Sub message object"));
    }
    let payload = match m.get("data") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(|_| bad("data is not base64"))?,
        Some(_) => return Err(bad("data is not a string")),
    };
    let headers = match m.get("attributes") {
        None | Some(Value::Null) => Headers::new(),
        Some(Value::Object(a)) => a
            .iter()
            .map(|(k, v)| {
                v.as_str()
                    .map(|s| (k.clone(), s.to_string()))
                    .ok_or_else(|| bad("an attribute value is not a string"))
            })
            .collect::<Result<_>>()?,
        Some(_) => return Err(bad("attributes is not an object")),
    };
    Incoming::from_headers("pubsub", headers, payload)
}

/// Reads the data of a Kinesis record written by
/// [`KinesisStream`](crate::stream::KinesisStream) (the bytes a consumer gets,
/// already base64-decoded by the SDK; see the envelope in
/// [`stream::kinesis`](crate::stream::kinesis)). Builds on
/// [`decode_record`](crate::stream::kinesis::decode_record). Data that is not an
/// outboxer envelope (another producer's record) is [`DecodeCause::MessageId`];
/// a broken envelope or one of an unknown version is [`DecodeCause::Encoding`].
///
/// ```
/// use outboxer::decode::{kinesis, DecodeCause};
/// let data = br#"{"v":1,"id":"0192f0c1-7a8b-7c3d-9e4f-0123456789ab","headers":{"tenant":"acme"},"payload":"[1]"}"#;
/// let incoming = kinesis(data)?;
/// assert_eq!((incoming.headers["tenant"].as_str(), incoming.payload.as_slice()), ("acme", &b"[1]"[..]));
/// assert!(matches!(kinesis(br#"{"order":42}"#),
///                  Err(outboxer::Error::Undecodable { cause: DecodeCause::MessageId, .. })));
/// # Ok::<(), outboxer::Error>(())
/// ```
#[cfg(feature = "kinesis")]
#[cfg_attr(docsrs, doc(cfg(feature = "kinesis")))]
pub fn kinesis(data: &[u8]) -> Result<Incoming> {
    use crate::core::kinesis::{parse_record, BadRecord};
    let r = parse_record(data).map_err(|(kind, reason)| {
        let cause = match kind {
            BadRecord::Foreign => DecodeCause::MessageId,
            BadRecord::Broken => DecodeCause::Encoding,
        };
        undecodable("kinesis", cause, reason)
    })?;
    let mut headers = r.headers;
    headers.insert(MESSAGE_ID_HEADER.to_string(), r.message_id);
    Incoming::from_headers("kinesis", headers, r.payload)
}
