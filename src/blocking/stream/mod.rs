//! The stream seam: where the relay publishes. Each broker is behind its own
//! cargo feature; option builders and validation are always available.

use crate::message::{Headers, Options, StoredMessage};
use crate::Result;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub mod amqp;
pub mod aws;
#[cfg(feature = "_http")]
pub(crate) mod http;
pub mod kafka;
pub mod kinesis;
pub mod pubsub;
pub mod sqs;

// The stream types, also here for `use outboxer::stream::AmqpStream`; each is
// documented once, in its stream's module (with its builder and routes).
#[cfg(feature = "amqp")]
#[cfg_attr(docsrs, doc(cfg(feature = "amqp")))]
#[doc(no_inline)]
pub use amqp::AmqpStream;
#[cfg(feature = "kafka")]
#[cfg_attr(docsrs, doc(cfg(feature = "kafka")))]
#[doc(no_inline)]
pub use kafka::KafkaStream;
#[cfg(feature = "kinesis")]
#[cfg_attr(docsrs, doc(cfg(feature = "kinesis")))]
#[doc(no_inline)]
pub use kinesis::KinesisStream;
#[cfg(feature = "pubsub")]
#[cfg_attr(docsrs, doc(cfg(feature = "pubsub")))]
#[doc(no_inline)]
pub use pubsub::PubSubStream;
#[cfg(feature = "sqs")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqs")))]
#[doc(no_inline)]
pub use sqs::SqsStream;

/// Checks a message against a stream's rules at `send`, so that bad options or
/// oversized payloads are refused before they reach the table.
pub trait Validate: Send + Sync {
    /// `Ok` when the stream can publish a message with these parts.
    fn validate(&self, payload: &[u8], headers: &Headers, options: &Options) -> Result<()>;
}

/// A broker the relay publishes to.
///
/// `publish` returns one outcome per message, in order: the broker's confirm,
/// not fire-and-forget. Connection failures are returned as transient errors
/// ([`crate::Error::is_transient`]) for every affected message; the stream
/// reconnects on a later call.
///
/// `publish` returns by its [`Deadline`] (the relay passes the end of the batch's
/// lease, less a margin for recording the outcomes): retries stop early enough,
/// and a message without an outcome by then gets a transient
/// [`crate::Error::Timeout`]. When the relay is stopping the deadline expires at
/// once: no new attempt starts, and what is in flight is waited for at most one
/// request or confirm timeout.
pub trait Stream: Send + 'static {
    /// The validator used by `Outbox::send` (cheap, shared with the sending threads).
    fn validator(&self) -> Arc<dyn Validate>;

    /// Publishes a batch and waits, at most until `deadline`, for the broker's
    /// per-message outcome.
    fn publish(&mut self, batch: &[StoredMessage], deadline: &Deadline) -> Vec<Result<()>>;

    /// Connects before the relay starts. `Outbox::start` calls it once and refuses
    /// to start on a setting that can never work ([`crate::Error::Tls`],
    /// [`crate::Error::Config`], [`crate::Error::InvalidUrl`]); any other error
    /// (the broker is down) lets the relay start and retry it as an outage.
    /// The default checks nothing.
    fn connect(&mut self) -> Result<()> {
        Ok(())
    }

    /// Flushes and closes connections (called when the relay stops).
    fn close(&mut self) {}

    /// Checks, cheaply and without publishing, that the broker answers; the relay
    /// calls it while idle (every 5 s, or the check interval if longer), so that
    /// its health notices a broker outage before the next message. `Some(Err)`
    /// with a transient error counts as an outage (reported like one), `Some(Ok)`
    /// ends one; `None` (the default) means the stream cannot check, and only
    /// publishing tells. Returns by `deadline`.
    fn check(&mut self, deadline: &Deadline) -> Option<Result<()>> {
        let _ = deadline;
        None
    }

    /// The stream's kind, the `stream` label of the relay's metrics (`amqp`,
    /// `kafka`, `sqs`, `kinesis`, `pubsub`); the default is `custom`.
    fn name(&self) -> &str {
        "custom"
    }

    /// The low-cardinality `route` label of a message's metrics (an exchange, a
    /// topic, a queue or stream name), read from its routing options; `None` (the
    /// default) leaves the label empty. Never a routing key or a message key.
    ///
    /// ```
    /// use outboxer::stream::Stream;
    /// # use outboxer::{Options, StoredMessage, stream::{Deadline, Validate}};
    /// # struct Mine;
    /// # impl Validate for Mine { fn validate(&self, _: &[u8], _: &outboxer::Headers, _: &Options) -> outboxer::Result<()> { Ok(()) } }
    /// impl Stream for Mine {
    /// #   fn validator(&self) -> std::sync::Arc<dyn Validate> { std::sync::Arc::new(Mine) }
    /// #   fn publish(&mut self, b: &[StoredMessage], _: &Deadline) -> Vec<outboxer::Result<()>> { b.iter().map(|_| Ok(())).collect() }
    ///     fn name(&self) -> &str {
    ///         "webhook"
    ///     }
    ///     fn route_label<'a>(&self, options: &'a Options) -> Option<&'a str> {
    ///         options.get("endpoint").and_then(|v| v.as_str())
    ///     }
    /// }
    /// ```
    fn route_label<'a>(&self, options: &'a Options) -> Option<&'a str> {
        let _ = options;
        None
    }
}

impl<S: Stream + ?Sized> Stream for Box<S> {
    fn validator(&self) -> Arc<dyn Validate> {
        (**self).validator()
    }
    fn publish(&mut self, batch: &[StoredMessage], deadline: &Deadline) -> Vec<Result<()>> {
        (**self).publish(batch, deadline)
    }
    fn connect(&mut self) -> Result<()> {
        (**self).connect()
    }
    fn close(&mut self) {
        (**self).close()
    }
    fn check(&mut self, deadline: &Deadline) -> Option<Result<()>> {
        (**self).check(deadline)
    }
    fn name(&self) -> &str {
        (**self).name()
    }
    fn route_label<'a>(&self, options: &'a Options) -> Option<&'a str> {
        (**self).route_label(options)
    }
}

/// The string value of a routing option, its last `/` segment (queue URLs and
/// `projects/p/topics/t` names give the queue or topic name): the route label.
#[cfg_attr(
    not(any(
        feature = "amqp",
        feature = "kafka",
        feature = "sqs",
        feature = "kinesis",
        feature = "pubsub"
    )),
    allow(dead_code)
)]
pub(crate) fn route_option<'a>(options: &'a Options, key: &str) -> Option<&'a str> {
    let v = options.get(key)?.as_str()?;
    Some(v.rsplit('/').next().unwrap_or(v))
}

/// When a [`Stream::publish`] call must be over: the end of the batch's lease,
/// less a margin, or at once when the relay is stopping.
///
/// A stream starts no new attempt (retry, reconnect, next request) once
/// [`Deadline::expired`] is true, and bounds every wait by [`Deadline::remaining`]
/// as well as by its own timeouts.
///
/// ```
/// use outboxer::stream::Deadline;
/// use std::time::Duration;
/// let d = Deadline::after(Duration::from_secs(10));
/// assert!(!d.expired());
/// assert!(d.remaining() <= Duration::from_secs(10));
/// ```
#[derive(Clone, Debug)]
pub struct Deadline {
    at: Instant,
    /// Disconnected when the relay stops.
    stop: Option<crossbeam_channel::Receiver<()>>,
}

impl Deadline {
    /// A deadline at `at`.
    pub fn at(at: Instant) -> Self {
        Deadline { at, stop: None }
    }

    /// A deadline `d` from now.
    pub fn after(d: Duration) -> Self {
        Self::at(Instant::now() + d)
    }

    /// A deadline at `at` that also expires when `stop` disconnects.
    pub(crate) fn with_stop(at: Instant, stop: crossbeam_channel::Receiver<()>) -> Self {
        Deadline {
            at,
            stop: Some(stop),
        }
    }

    /// The instant it is over, stop aside.
    pub fn instant(&self) -> Instant {
        self.at
    }

    /// True when the relay is stopping.
    pub fn stopping(&self) -> bool {
        self.stop.as_ref().is_some_and(|s| {
            matches!(
                s.try_recv(),
                Err(crossbeam_channel::TryRecvError::Disconnected)
            )
        })
    }

    /// True once the deadline has passed or the relay is stopping: start nothing new.
    pub fn expired(&self) -> bool {
        Instant::now() >= self.at || self.stopping()
    }

    /// Time left until the deadline (zero once passed; the stop signal aside, so that
    /// what is already in flight can still be waited for).
    pub fn remaining(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }

    /// Waits `d` (a backoff), or less when the relay stops meanwhile. True when the
    /// wait ran its course; false when the relay is stopping (start nothing new).
    pub fn wait(&self, d: Duration) -> bool {
        match &self.stop {
            Some(stop) => !matches!(
                stop.recv_timeout(d),
                Err(crossbeam_channel::RecvTimeoutError::Disconnected)
            ),
            None => {
                std::thread::sleep(d);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::route_option;
    use serde_json::json;

    #[test]
    fn route_labels_are_the_name_not_the_path() {
        let opts = |v: serde_json::Value| -> crate::message::Options {
            serde_json::from_value(v).unwrap_or_default()
        };
        let sqs = opts(json!({"queue_name": "http://127.0.0.1:4566/000000000000/orders"}));
        assert_eq!(route_option(&sqs, "queue_name"), Some("orders"));
        let ps = opts(json!({"topic_name": "projects/p/topics/events"}));
        assert_eq!(route_option(&ps, "topic_name"), Some("events"));
        let amqp = opts(json!({"exchange.name": "orders", "routing_key": "a.b"}));
        assert_eq!(route_option(&amqp, "exchange.name"), Some("orders"));
        assert_eq!(route_option(&amqp, "topic"), None);
        assert_eq!(route_option(&opts(json!({"topic": 5})), "topic"), None);
    }
}
