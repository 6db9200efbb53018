//! Consumer-side helpers: what a stream delivered, read back into the message id,
//! the headers and the payload ([`Incoming`]), and a JSON payload into your type
//! ([`Incoming::json`] → [`Decoded`]).
//!
//! One entry point per stream, each behind its stream's feature, taking what that
//! broker's client hands a consumer:
//!
//! | stream | entry point | reads the message id from |
//! |--------|-------------|---------------------------|
//! | AMQP | [`amqp`]`(&amiquip::Delivery)`, [`amqp_parts`]`(&properties, &body)` | the `message_id` property, else the `outboxer-message-id` header |
//! | Kafka | [`kafka`]`(&record)` (any `rdkafka::Message`: borrowed or owned) | the `outboxer-message-id` record header |
//! | SQS | [`sqs`]`(body, &attributes)` (string message attributes) | the `outboxer-message-id` attribute |
//! | Pub/Sub | [`pubsub`]`(&json)` (a pulled `ReceivedMessage`, a push body or a `PubsubMessage`) | the `outboxer-message-id` attribute |
//! | Kinesis | [`kinesis`]`(&data)` (the record's data) | the envelope's `id` |
//!
//! The headers come back exactly as enqueued (outboxer's own wire fields removed).
//! What cannot be read is [`Error::Undecodable`] with a [`DecodeCause`], never a
//! panic: a delivery without an outboxer message id (another producer's),
//! a broken wire format, a `content-type` that is not JSON, a payload that is not
//! the expected JSON.
//!
//! ```
//! use outboxer::decode::{self, DecodeCause};
//! use outboxer::{Error, Headers};
//!
//! #[derive(serde::Deserialize, Debug, PartialEq)]
//! struct OrderPaid { order: u64 }
//!
//! // What any stream's entry point returns (here built from parts, as a client
//! // library other than the ones above would hand them over).
//! let headers = Headers::from([
//!     ("outboxer-message-id".to_string(), "0192f0c1-7a8b-7c3d-9e4f-0123456789ab".to_string()),
//!     ("content-type".to_string(), "application/json".to_string()),
//! ]);
//! let incoming = decode::Incoming::from_parts(headers, br#"{"order":42}"#.to_vec())?;
//! let paid = incoming.json::<OrderPaid>()?;
//! assert_eq!(paid.value, OrderPaid { order: 42 });
//! assert_eq!(paid.message_id.to_string(), "0192f0c1-7a8b-7c3d-9e4f-0123456789ab");
//!
//! // No outboxer message id: not sent through outboxer.
//! let foreign = decode::Incoming::from_parts(Headers::new(), b"{}".to_vec());
//! assert!(matches!(foreign, Err(Error::Undecodable { cause: DecodeCause::MessageId, .. })));
//! # Ok::<(), outboxer::Error>(())
//! ```

use crate::message::{Headers, MessageId, CONTENT_TYPE_HEADER, MESSAGE_ID_HEADER};
use crate::{Error, Result};
use std::fmt;

#[cfg(any(
    feature = "amqp",
    feature = "kafka",
    feature = "sqs",
    feature = "pubsub",
    feature = "kinesis"
))]
mod streams;
#[cfg(any(
    feature = "amqp",
    feature = "kafka",
    feature = "sqs",
    feature = "pubsub",
    feature = "kinesis"
))]
pub use streams::*;

/// Why a delivery could not be decoded (in [`Error::Undecodable`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DecodeCause {
    /// No outboxer message id, or one that is not a UUID: the delivery was not
    /// sent through outboxer (another producer's, or a Kinesis record that is not
    /// an outboxer envelope).
    MessageId,
    /// The stream's wire format is broken: bad base64, attributes that are not
    /// strings, an envelope of an unknown version.
    Encoding,
    /// The `content-type` header names something other than JSON.
    ContentType,
    /// The payload is not JSON, or not JSON of the requested type.
    Payload,
}

impl fmt::Display for DecodeCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DecodeCause::MessageId => "no outboxer message id",
            DecodeCause::Encoding => "broken wire format",
            DecodeCause::ContentType => "not JSON by its content type",
            DecodeCause::Payload => "payload does not decode",
        })
    }
}

pub(crate) fn undecodable(
    stream: &'static str,
    cause: DecodeCause,
    reason: impl Into<String>,
) -> Error {
    Error::Undecodable {
        stream,
        cause,
        reason: reason.into(),
    }
}

/// A delivery read back by a stream's entry point: the message id (for
/// de-duplication, e.g. by an inbox), the headers as enqueued and the payload
/// bytes as enqueued.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Incoming {
    /// The id the message was enqueued with.
    pub message_id: MessageId,
    /// The headers, exactly as enqueued (without outboxer's wire fields).
    pub headers: Headers,
    /// The payload bytes, exactly as enqueued.
    pub payload: Vec<u8>,
    /// The stream it came from, named in errors.
    stream: &'static str,
}

/// A JSON payload decoded into `T`, with the message's id and headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decoded<T> {
    /// The id the message was enqueued with.
    pub message_id: MessageId,
    /// The headers, exactly as enqueued (`content-type` among them).
    pub headers: Headers,
    /// The payload.
    pub value: T,
}

impl Incoming {
    /// Reads the message id out of `headers` (the [`MESSAGE_ID_HEADER`] entry,
    /// which is removed): for a client library the entry points do not take,
    /// whose deliveries carry outboxer's headers or attributes as a string map.
    /// No id, or one that is not a UUID, is [`DecodeCause::MessageId`].
    pub fn from_parts(headers: Headers, payload: Vec<u8>) -> Result<Self> {
        Self::from_headers("custom", headers, payload)
    }

    pub(crate) fn from_headers(
        stream: &'static str,
        mut headers: Headers,
        payload: Vec<u8>,
    ) -> Result<Self> {
        let id = headers.remove(MESSAGE_ID_HEADER);
        Ok(Incoming {
            message_id: parse_id(stream, id.as_deref())?,
            headers,
            payload,
            stream,
        })
    }

    /// The `content-type` header (its name matched case-insensitively), if any.
    pub fn content_type(&self) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(CONTENT_TYPE_HEADER))
            .map(|(_, v)| v.as_str())
    }

    /// The W3C trace context the message carries, if its `traceparent` is well formed.
    pub fn trace_context(&self) -> Option<crate::message::TraceContext> {
        crate::message::TraceContext::from_headers(&self.headers)
    }

    /// Decodes the payload as JSON into `T`. A `content-type` other than
    /// `application/json` or a `+json` type (parameters such as `charset` aside)
    /// is [`DecodeCause::ContentType`]; no `content-type` at all is accepted, so
    /// that JSON written by plain SQL or by the Go outboxer decodes too. A payload
    /// that is not JSON of type `T` is [`DecodeCause::Payload`].
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<Decoded<T>> {
        if let Some(ct) = self.content_type() {
            if !is_json(ct) {
                return Err(undecodable(
                    self.stream,
                    DecodeCause::ContentType,
                    format!("content-type {:?} is not JSON", shorten(ct)),
                ));
            }
        }
        let value = serde_json::from_slice(&self.payload).map_err(|e| {
            undecodable(
                self.stream,
                DecodeCause::Payload,
                format!("message {}: {e}", self.message_id),
            )
        })?;
        Ok(Decoded {
            message_id: self.message_id,
            headers: self.headers.clone(),
            value,
        })
    }
}

fn parse_id(stream: &'static str, id: Option<&str>) -> Result<MessageId> {
    let id = id.ok_or_else(|| {
        undecodable(
            stream,
            DecodeCause::MessageId,
            format!("no {MESSAGE_ID_HEADER}: not sent through outboxer"),
        )
    })?;
    id.parse().map_err(|_| {
        undecodable(
            stream,
            DecodeCause::MessageId,
            format!("{MESSAGE_ID_HEADER} {:?} is not a UUID", shorten(id)),
        )
    })
}

/// `application/json` or `<type>/<subtype>+json`, case-insensitive, parameters aside.
fn is_json(content_type: &str) -> bool {
    let media = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    media == "application/json" || (media.contains('/') && media.ends_with("+json"))
}

/// A foreign value quoted in an error, cut to a readable length.
fn shorten(s: &str) -> String {
    s.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn incoming(ct: Option<&str>, payload: &[u8]) -> Incoming {
        let mut h = Headers::from([(MESSAGE_ID_HEADER.to_string(), MessageId::new().to_string())]);
        if let Some(ct) = ct {
            h.insert("Content-Type".to_string(), ct.to_string());
        }
        Incoming::from_headers("test", h, payload.to_vec()).expect("id")
    }

    fn cause<T>(r: Result<T>) -> Option<DecodeCause> {
        match r {
            Err(Error::Undecodable { cause, .. }) => Some(cause),
            _ => None,
        }
    }

    #[test]
    fn content_types() {
        for ok in [
            None,
            Some("application/json"),
            Some("Application/JSON; charset=utf-8"),
            Some("application/cloudevents+json"),
        ] {
            assert!(incoming(ok, b"[1]").json::<Vec<u8>>().is_ok(), "{ok:?}");
        }
        for bad in ["text/plain", "application/jsonx", "+json", ""] {
            assert_eq!(
                cause(incoming(Some(bad), b"[1]").json::<Vec<u8>>()),
                Some(DecodeCause::ContentType),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn payload_and_id_errors() {
        assert_eq!(
            cause(incoming(None, b"{").json::<Vec<u8>>()),
            Some(DecodeCause::Payload)
        );
        assert_eq!(
            cause(incoming(None, br#"{"a":1}"#).json::<Vec<u8>>()),
            Some(DecodeCause::Payload)
        );
        assert_eq!(
            cause(Incoming::from_parts(Headers::new(), Vec::new())),
            Some(DecodeCause::MessageId)
        );
        let bad_id = Headers::from([(MESSAGE_ID_HEADER.to_string(), "x".repeat(1000))]);
        match Incoming::from_parts(bad_id, Vec::new()) {
            Err(e @ Error::Undecodable { .. }) => assert!(e.to_string().len() < 200, "{e}"),
            other => panic!("{other:?}"),
        }
    }
}
