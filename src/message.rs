//! The message model: what the application enqueues and what the relay publishes.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::SystemTime;

/// String headers, sent as broker headers or attributes.
pub type Headers = BTreeMap<String, String>;

/// Per-stream routing options, keyed by the Go outboxer's option names
/// (`exchange.name`, `routing_key`, `topic`, ...). Values are JSON so that
/// rows written by the Go original (booleans, strings) keep working.
pub type Options = BTreeMap<String, serde_json::Value>;

/// The header (or attribute) under which every stream sends the message id, so that
/// consumers can de-duplicate: delivery is at least once.
pub const MESSAGE_ID_HEADER: &str = "outboxer-message-id";

/// A message's stable identity: a UUIDv7, time ordered, assigned when the
/// message is created and sent on the wire with every delivery attempt.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(uuid::Uuid);

impl MessageId {
    /// A new, time-ordered id (UUIDv7).
    pub fn new() -> Self {
        MessageId(uuid::Uuid::now_v7())
    }

    /// Wraps an existing UUID (for example one read back from the table).
    pub fn from_uuid(uuid: uuid::Uuid) -> Self {
        MessageId(uuid)
    }

    /// The UUID.
    pub fn as_uuid(&self) -> &uuid::Uuid {
        &self.0
    }
}

impl Default for MessageId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({})", self.0.hyphenated())
    }
}

impl FromStr for MessageId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        uuid::Uuid::parse_str(s).map(MessageId)
    }
}

/// A message to enqueue.
///
/// ```
/// use outboxer::{Message, stream::amqp};
///
/// let msg = Message::new(b"hello".to_vec())
///     .route(amqp::topic("orders", "orders.paid"))
///     .header("tenant", "acme")
///     .ordering_key("order-42");
/// assert_eq!(msg.options()["exchange.name"], "orders");
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    pub(crate) message_id: MessageId,
    pub(crate) payload: Vec<u8>,
    pub(crate) headers: Headers,
    pub(crate) options: Options,
    pub(crate) ordering_key: Option<String>,
}

impl Message {
    /// A message with this payload and a fresh [`MessageId`].
    pub fn new(payload: impl Into<Vec<u8>>) -> Self {
        Message {
            message_id: MessageId::new(),
            payload: payload.into(),
            headers: Headers::new(),
            options: Options::new(),
            ordering_key: None,
        }
    }

    /// Adds a header (sent as a broker header or attribute).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// Sets one raw option (Go-compatible key).
    pub fn option(mut self, key: impl Into<String>, value: impl Into<serde_json::Value>) -> Self {
        self.options.insert(key.into(), value.into());
        self
    }

    /// Merges routing options built by a stream module, e.g. [`crate::stream::amqp::topic`].
    pub fn route(mut self, route: impl Into<Options>) -> Self {
        self.options.extend(route.into());
        self
    }

    /// Messages with the same ordering key are published in enqueue (commit) order,
    /// one at a time; messages without a key are never held up by them.
    pub fn ordering_key(mut self, key: impl Into<String>) -> Self {
        self.ordering_key = Some(key.into());
        self
    }

    /// Replaces the generated id, e.g. to make an enqueue idempotent upstream.
    pub fn with_message_id(mut self, id: MessageId) -> Self {
        self.message_id = id;
        self
    }

    /// The message id sent on the wire.
    pub fn message_id(&self) -> MessageId {
        self.message_id
    }
    /// The payload bytes.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }
    /// The headers.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }
    /// The routing options.
    pub fn options(&self) -> &Options {
        &self.options
    }
    /// The ordering key, if any.
    pub fn key(&self) -> Option<&str> {
        self.ordering_key.as_deref()
    }
}

/// A committed message as the relay reads it back from the store.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredMessage {
    /// The store's sequence number: the relay's order.
    pub id: i64,
    /// The id sent on the wire.
    pub message_id: MessageId,
    /// The payload bytes.
    pub payload: Vec<u8>,
    /// The headers.
    pub headers: Headers,
    /// The routing options.
    pub options: Options,
    /// The ordering key, if any.
    pub ordering_key: Option<String>,
    /// Failed attempts so far.
    pub attempts: u32,
    /// When the message was enqueued (database clock).
    pub created_at: SystemTime,
}

/// Where and how a message ended up: sent on the relay's `ok()` channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivered {
    /// The store's row id.
    pub id: i64,
    /// The id sent on the wire.
    pub message_id: MessageId,
    /// Failed attempts before this successful one.
    pub attempts: u32,
}

/// A failed publish or relay operation: sent on the relay's `err()` channel.
#[derive(Debug)]
pub struct Failure {
    /// The row id, when the failure concerns one message.
    pub id: Option<i64>,
    /// The message id, when the failure concerns one message.
    pub message_id: Option<MessageId>,
    /// What went wrong.
    pub error: crate::Error,
    /// What the relay did about it.
    pub action: FailureAction,
}

/// What the relay did with a failed message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailureAction {
    /// Scheduled for another attempt after a backoff.
    Retry,
    /// Moved to status `parked` (max attempts reached or a permanent error); see `requeue`.
    Parked,
    /// Released without counting an attempt (broker or database unavailable).
    Released,
    /// Not about one message (a claim, mark or cleanup failed, an outage summary);
    /// the relay keeps going.
    None,
    /// Published, but the dispatched mark did not land (the lease was lost to
    /// another relay, or the database was unreachable until the lease ended): the
    /// message is published again, a duplicate that consumers drop by message id.
    NotMarked,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_are_v7_and_ordered() {
        let a = MessageId::new();
        let b = MessageId::new();
        assert_eq!(a.as_uuid().get_version_num(), 7);
        assert!(a < b);
        assert_eq!(a.to_string().parse::<MessageId>().ok(), Some(a));
    }
}
