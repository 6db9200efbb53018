//! The message model: what the application enqueues and what the relay publishes.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// String headers, sent as broker headers or attributes.
pub type Headers = BTreeMap<String, String>;

/// Per-stream routing options, keyed by the Go outboxer's option names
/// (`exchange.name`, `routing_key`, `topic`, ...). Values are JSON so that
/// rows written by the Go original (booleans, strings) keep working.
pub type Options = BTreeMap<String, serde_json::Value>;

/// The header (or attribute) under which every stream sends the message id, so that
/// consumers can de-duplicate: delivery is at least once.
pub const MESSAGE_ID_HEADER: &str = "outboxer-message-id";

/// The header naming the payload's media type. [`Message::json`] sets it to
/// [`JSON_CONTENT_TYPE`]; the AMQP stream also sends it as the `content_type`
/// property.
pub const CONTENT_TYPE_HEADER: &str = "content-type";

/// The media type [`Message::json`] writes in [`CONTENT_TYPE_HEADER`].
pub const JSON_CONTENT_TYPE: &str = "application/json";

/// The header holding a message's W3C `traceparent` (see [`Message::trace_context`]).
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// The header holding a message's W3C `tracestate` (see [`Message::trace_context`]).
pub const TRACESTATE_HEADER: &str = "tracestate";

/// A W3C Trace Context (<https://www.w3.org/TR/trace-context/>): the `traceparent`
/// and optional `tracestate` a message carries from the transaction that enqueued
/// it to the consumer.
///
/// Stored with the message as the headers [`TRACEPARENT_HEADER`] and
/// [`TRACESTATE_HEADER`], and sent by every stream where that broker's consumers
/// look for it. Consumers read it back with [`TraceContext::from_headers`].
///
/// ```
/// use outboxer::{Headers, TraceContext};
///
/// let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
/// let ctx = TraceContext::new(tp, Some("congo=t61rcWkgMzE"))?;
/// assert_eq!(ctx.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
/// assert_eq!(ctx.parent_id(), "00f067aa0ba902b7");
/// assert!(ctx.sampled());
///
/// let headers = Headers::from([("traceparent".to_string(), tp.to_string())]);
/// assert_eq!(TraceContext::from_headers(&headers).map(|c| c.traceparent().to_string()),
///            Some(tp.to_string()));
/// assert!(TraceContext::new("00-xyz", None).is_err());
/// # Ok::<(), outboxer::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TraceContext {
    traceparent: String,
    tracestate: Option<String>,
}

impl TraceContext {
    /// Checks both values: `traceparent` must be
    /// `00-<32 lowercase hex>-<16 lowercase hex>-<2 lowercase hex>` with a trace id
    /// and a parent id that are not all zeros; `tracestate` printable ASCII.
    /// Either failing is [`Error::InvalidHeader`](crate::Error::InvalidHeader).
    pub fn new(traceparent: impl Into<String>, tracestate: Option<&str>) -> crate::Result<Self> {
        let traceparent = traceparent.into();
        check_traceparent(&traceparent)?;
        if let Some(ts) = tracestate {
            check_tracestate(ts)?;
        }
        Ok(TraceContext {
            traceparent,
            tracestate: tracestate.map(str::to_string),
        })
    }

    /// The context carried by these headers (a received message's headers or
    /// attributes), or `None` when there is no valid `traceparent`; a `tracestate`
    /// that is not printable ASCII is left out (W3C: restart the trace state).
    pub fn from_headers(headers: &Headers) -> Option<Self> {
        let tp = headers.get(TRACEPARENT_HEADER)?;
        check_traceparent(tp).ok()?;
        let ts = headers
            .get(TRACESTATE_HEADER)
            .filter(|ts| check_tracestate(ts).is_ok());
        Some(TraceContext {
            traceparent: tp.clone(),
            tracestate: ts.cloned(),
        })
    }

    /// The `traceparent` value, exactly as stored.
    pub fn traceparent(&self) -> &str {
        &self.traceparent
    }
    /// The `tracestate` value, exactly as stored.
    pub fn tracestate(&self) -> Option<&str> {
        self.tracestate.as_deref()
    }
    /// The trace id (32 hex digits).
    pub fn trace_id(&self) -> &str {
        &self.traceparent[3..35]
    }
    /// The parent span id (16 hex digits).
    pub fn parent_id(&self) -> &str {
        &self.traceparent[36..52]
    }
    /// True when the `sampled` flag is set.
    pub fn sampled(&self) -> bool {
        u8::from_str_radix(&self.traceparent[53..55], 16).is_ok_and(|f| f & 1 == 1)
    }
}

fn bad_trace(name: &str, reason: &str) -> crate::Error {
    crate::Error::InvalidHeader {
        name: name.to_string(),
        reason: reason.to_string(),
    }
}

/// W3C traceparent, version 00: `00-<trace id>-<parent id>-<flags>`.
fn check_traceparent(v: &str) -> crate::Result<()> {
    let b = v.as_bytes();
    let hex = |s: &[u8]| s.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    let shape = b.len() == 55
        && b.starts_with(b"00-")
        && b[35] == b'-'
        && b[52] == b'-'
        && hex(&b[3..35])
        && hex(&b[36..52])
        && hex(&b[53..55]);
    if !shape {
        return Err(bad_trace(
            TRACEPARENT_HEADER,
            "expected 00-<32 lowercase hex>-<16 lowercase hex>-<2 lowercase hex> \
             (W3C Trace Context, version 00)",
        ));
    }
    if b[3..35].iter().all(|&c| c == b'0') || b[36..52].iter().all(|&c| c == b'0') {
        return Err(bad_trace(
            TRACEPARENT_HEADER,
            "an all-zero trace id or parent id is invalid (W3C Trace Context)",
        ));
    }
    Ok(())
}

/// W3C tracestate: a list of `key=value` in printable ASCII; only the characters
/// are checked, so that every broker can carry it unchanged.
fn check_tracestate(v: &str) -> crate::Result<()> {
    if !v.bytes().all(|c| (0x20..=0x7e).contains(&c)) {
        return Err(bad_trace(
            TRACESTATE_HEADER,
            "must be printable ASCII (W3C Trace Context)",
        ));
    }
    Ok(())
}

/// Checked at `send`: trace headers set by [`Message::trace_context`] or by hand
/// must be well formed, so that a malformed value is refused, never stored.
pub(crate) fn check_trace_headers(headers: &Headers) -> crate::Result<()> {
    if let Some(tp) = headers.get(TRACEPARENT_HEADER) {
        check_traceparent(tp)?;
    }
    if let Some(ts) = headers.get(TRACESTATE_HEADER) {
        check_tracestate(ts)?;
    }
    Ok(())
}

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
    pub(crate) deliver: Option<Deliver>,
}

/// When a message becomes publishable, as [`Message::delay`] and
/// [`Message::deliver_at`] set it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Deliver {
    /// This long after the insert, by the database clock.
    After(Duration),
    /// At this instant of the application's clock, turned into a delay at `send`.
    At(SystemTime),
}

/// The furthest ahead a message can be scheduled ([`Message::delay`],
/// [`Message::deliver_at`]): ten years (3653 days). Every store's time column holds
/// it; later is refused as absurd with
/// [`Error::InvalidSchedule`](crate::Error::InvalidSchedule).
pub const MAX_DELAY: Duration = Duration::from_secs(3653 * 24 * 3600);

fn bad_schedule(reason: impl Into<String>) -> crate::Error {
    crate::Error::InvalidSchedule {
        reason: reason.into(),
    }
}

impl Deliver {
    /// The delay from `now` (the application's clock at `send`): zero for a time in
    /// the past, an error past [`MAX_DELAY`] or before the Unix epoch.
    fn delay_from(self, now: SystemTime) -> crate::Result<Duration> {
        let d = match self {
            Deliver::After(d) => d,
            Deliver::At(t) => {
                if t < UNIX_EPOCH {
                    return Err(bad_schedule("deliver_at is before the Unix epoch"));
                }
                t.duration_since(now).unwrap_or(Duration::ZERO)
            }
        };
        if d > MAX_DELAY {
            return Err(bad_schedule(format!(
                "{d:?} ahead is further than the limit of {} days",
                MAX_DELAY.as_secs() / 86_400
            )));
        }
        Ok(d)
    }
}

/// Each message's delay before it may be published, measured from now on the
/// application's clock; the stores add it to the database clock's now() at the
/// insert. All are checked before anything is written, so a refused schedule
/// stores nothing.
pub(crate) fn delays(messages: &[Message]) -> crate::Result<Vec<Duration>> {
    let now = SystemTime::now();
    messages.iter().map(|m| m.delay_from(now)).collect()
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
            deliver: None,
        }
    }

    /// A message whose payload is `value` serialized as JSON (serde), with the
    /// header `content-type: application/json`. Consumers read it back with
    /// [`crate::decode`] (one entry point per stream) and
    /// [`Incoming::json`](crate::decode::Incoming::json).
    ///
    /// A value that does not serialize (a map with non-string keys, a `Serialize`
    /// impl that fails) is [`Error::Serialize`](crate::Error::Serialize), returned
    /// here: there is no message to send, so nothing reaches the table.
    ///
    /// ```
    /// use outboxer::{Error, Message, stream::amqp};
    /// use std::collections::BTreeMap;
    ///
    /// #[derive(serde::Serialize)]
    /// struct OrderPaid { order: u64, amount_cents: i64 }
    ///
    /// let msg = Message::json(&OrderPaid { order: 42, amount_cents: 1999 })?
    ///     .route(amqp::topic("orders", "orders.paid"));
    /// assert_eq!(msg.payload(), br#"{"order":42,"amount_cents":1999}"#);
    /// assert_eq!(msg.headers()["content-type"], "application/json");
    ///
    /// // JSON object keys must be strings: refused before anything is stored.
    /// let by_pair = BTreeMap::from([((1, 2), "x")]);
    /// assert!(matches!(Message::json(&by_pair), Err(Error::Serialize { .. })));
    /// # Ok::<(), outboxer::Error>(())
    /// ```
    pub fn json<T: serde::Serialize + ?Sized>(value: &T) -> crate::Result<Self> {
        let payload = serde_json::to_vec(value).map_err(|e| crate::Error::Serialize {
            reason: e.to_string(),
        })?;
        Ok(Message::new(payload).header(CONTENT_TYPE_HEADER, JSON_CONTENT_TYPE))
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

    /// Carries a W3C Trace Context from the enqueueing code to the consumer: stored
    /// as the headers `traceparent` and (when given) `tracestate`, and sent by every
    /// stream where its consumers look for it (AMQP headers, Kafka record headers,
    /// SQS message attributes, Pub/Sub attributes, the Kinesis envelope's headers).
    /// A malformed `traceparent` is refused at `send` with
    /// [`Error::InvalidHeader`](crate::Error::InvalidHeader), and nothing is stored.
    ///
    /// ```
    /// use outboxer::{Message, stream::amqp};
    ///
    /// let msg = Message::new(b"paid".to_vec())
    ///     .route(amqp::topic("orders", "orders.paid"))
    ///     .trace_context("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", Some("congo=t61rcWkgMzE"));
    /// assert_eq!(msg.headers()["traceparent"], "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    /// assert_eq!(msg.trace().map(|t| t.trace_id().to_string()),
    ///            Some("4bf92f3577b34da6a3ce929d0e0e4736".to_string()));
    /// ```
    ///
    /// Filled from the current OpenTelemetry span (the `opentelemetry` API crate,
    /// no SDK needed), in the form its W3C propagator writes:
    ///
    /// ```
    /// use opentelemetry::trace::{TraceContextExt, TraceState};
    /// use opentelemetry::Context;
    /// use outboxer::Message;
    ///
    /// fn with_current_trace(msg: Message) -> Message {
    ///     let cx = Context::current();
    ///     let span = cx.span();
    ///     let sc = span.span_context();
    ///     if !sc.is_valid() {
    ///         return msg; // no span: nothing to carry
    ///     }
    ///     let traceparent = format!(
    ///         "00-{}-{}-{:02x}",
    ///         sc.trace_id(),
    ///         sc.span_id(),
    ///         sc.trace_flags().to_u8()
    ///     );
    ///     let tracestate = sc.trace_state().header();
    ///     let tracestate = (sc.trace_state() != &TraceState::default()).then_some(tracestate);
    ///     msg.trace_context(traceparent, tracestate.as_deref())
    /// }
    /// # assert!(with_current_trace(Message::new(b"x".to_vec())).trace().is_none());
    /// # use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId};
    /// # let sc = SpanContext::new(
    /// #     TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
    /// #     SpanId::from_hex("00f067aa0ba902b7").unwrap(),
    /// #     TraceFlags::SAMPLED,
    /// #     true,
    /// #     TraceState::from_key_value([("congo", "t61rcWkgMzE")]).unwrap(),
    /// # );
    /// # let _attached = Context::new().with_remote_span_context(sc).attach();
    /// let msg = with_current_trace(Message::new(b"paid".to_vec()));
    /// assert_eq!(msg.headers()["traceparent"], "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    /// assert_eq!(msg.headers()["tracestate"], "congo=t61rcWkgMzE");
    /// ```
    pub fn trace_context(
        mut self,
        traceparent: impl Into<String>,
        tracestate: Option<&str>,
    ) -> Self {
        self.headers
            .insert(TRACEPARENT_HEADER.to_string(), traceparent.into());
        match tracestate {
            Some(ts) => {
                self.headers
                    .insert(TRACESTATE_HEADER.to_string(), ts.to_string());
            }
            None => {
                self.headers.remove(TRACESTATE_HEADER);
            }
        }
        self
    }

    /// The message's trace context, when its `traceparent` header is well formed.
    pub fn trace(&self) -> Option<TraceContext> {
        TraceContext::from_headers(&self.headers)
    }

    /// Publishes the message no earlier than `delay` after it is inserted, by the
    /// database's clock (`available_at = now() + delay` on the server), so that a
    /// skew between the application's and the database's clocks does not shift it.
    /// The relay publishes it within its polling interval after it is due (an idle
    /// relay sleeps until then). Until it is sent it holds the later messages of its
    /// ordering key. More than [`MAX_DELAY`] is refused at `send` with
    /// [`Error::InvalidSchedule`](crate::Error::InvalidSchedule); nothing is stored.
    /// Replaces an earlier [`Message::deliver_at`].
    ///
    /// ```
    /// use outboxer::Message;
    /// use std::time::Duration;
    ///
    /// let reminder = Message::new(b"cart still full?".to_vec()).delay(Duration::from_secs(3600));
    /// assert_eq!(reminder.scheduled_delay(), Some(Duration::from_secs(3600)));
    /// ```
    pub fn delay(mut self, delay: Duration) -> Self {
        self.deliver = Some(Deliver::After(delay));
        self
    }

    /// Publishes the message no earlier than `at`. `at` is read on the application's
    /// clock: at `send` it becomes the delay `at - SystemTime::now()` (zero when `at`
    /// has passed), which the store adds to the database's clock, as for
    /// [`Message::delay`]. A time before the Unix epoch or more than [`MAX_DELAY`]
    /// ahead is refused at `send` with
    /// [`Error::InvalidSchedule`](crate::Error::InvalidSchedule); nothing is stored.
    /// Replaces an earlier [`Message::delay`].
    ///
    /// ```
    /// use outboxer::Message;
    /// use std::time::{Duration, SystemTime};
    ///
    /// let at = SystemTime::now() + Duration::from_secs(24 * 3600);
    /// let msg = Message::new(b"invoice due".to_vec()).deliver_at(at);
    /// assert!(msg.scheduled_delay().is_some_and(|d| d <= Duration::from_secs(24 * 3600)));
    /// ```
    pub fn deliver_at(mut self, at: SystemTime) -> Self {
        self.deliver = Some(Deliver::At(at));
        self
    }

    /// The delay [`Message::delay`] or [`Message::deliver_at`] asks for, measured
    /// from now (zero when the time has passed); `None` when the message is not
    /// scheduled or its time is refused (see [`MAX_DELAY`]).
    pub fn scheduled_delay(&self) -> Option<Duration> {
        self.deliver
            .and_then(|d| d.delay_from(SystemTime::now()).ok())
    }

    /// The delay before this message may be published, from `now`.
    pub(crate) fn delay_from(&self, now: SystemTime) -> crate::Result<Duration> {
        self.deliver
            .map_or(Ok(Duration::ZERO), |d| d.delay_from(now))
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

    #[test]
    fn schedules_become_delays_from_now_within_limits() {
        let now = SystemTime::now();
        let m = |d: Deliver| Message {
            deliver: Some(d),
            ..Message::new(b"x".to_vec())
        };
        let d = Duration::from_millis(1500);
        assert_eq!(m(Deliver::After(d)).delay_from(now).ok(), Some(d));
        assert_eq!(m(Deliver::At(now + d)).delay_from(now).ok(), Some(d));
        let past = now - Duration::from_secs(60);
        assert_eq!(
            m(Deliver::At(past)).delay_from(now).ok(),
            Some(Duration::ZERO)
        );
        assert_eq!(
            Message::new(b"x".to_vec()).delay_from(now).ok(),
            Some(Duration::ZERO)
        );
        assert!(m(Deliver::After(MAX_DELAY)).delay_from(now).is_ok());
        for bad in [
            Deliver::After(MAX_DELAY + Duration::from_nanos(1)),
            Deliver::After(Duration::MAX),
            Deliver::At(now + MAX_DELAY + Duration::from_secs(1)),
            Deliver::At(UNIX_EPOCH - Duration::from_secs(1)),
        ] {
            assert!(
                matches!(
                    m(bad).delay_from(now),
                    Err(crate::Error::InvalidSchedule { .. })
                ),
                "{bad:?}"
            );
        }
        // The later setter wins; a refused one is no scheduled delay.
        let both = Message::new(b"x".to_vec()).deliver_at(now).delay(d);
        assert_eq!(both.scheduled_delay(), Some(d));
        assert_eq!(
            Message::new(b"x".to_vec())
                .delay(Duration::MAX)
                .scheduled_delay(),
            None
        );
        let batch = [m(Deliver::After(d)), m(Deliver::After(Duration::MAX))];
        assert!(delays(&batch).is_err(), "one refused: the batch is refused");
    }

    #[test]
    fn traceparent_format() {
        let ok = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert!(check_traceparent(ok).is_ok());
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 ",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x",
        ] {
            assert!(
                matches!(
                    check_traceparent(bad),
                    Err(crate::Error::InvalidHeader { .. })
                ),
                "{bad:?}"
            );
        }
        assert!(check_tracestate("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE").is_ok());
        assert!(check_tracestate("a=b\nc=d").is_err());
        let h = Headers::from([
            (TRACEPARENT_HEADER.to_string(), ok.to_string()),
            (TRACESTATE_HEADER.to_string(), "bad\u{1}".to_string()),
        ]);
        let ctx = TraceContext::from_headers(&h).expect("valid traceparent");
        assert_eq!((ctx.traceparent(), ctx.tracestate()), (ok, None));
        assert!(check_trace_headers(&h).is_err());
        let m = Message::new(b"x".to_vec())
            .trace_context(ok, Some("a=b"))
            .trace_context(ok, None);
        assert!(!m.headers().contains_key(TRACESTATE_HEADER));
    }
}
