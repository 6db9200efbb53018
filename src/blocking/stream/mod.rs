//! The stream seam: where the relay publishes. Each broker is behind its own
//! cargo feature; option builders and validation are always available.

use crate::message::{Headers, Options, StoredMessage};
use crate::Result;
use std::sync::Arc;

pub mod amqp;
#[cfg(feature = "amqp")]
pub use amqp::AmqpStream;
pub mod kafka;
#[cfg(feature = "kafka")]
pub use kafka::KafkaStream;
pub mod aws;
pub mod pubsub;
#[cfg(feature = "pubsub")]
pub use pubsub::PubSubStream;
#[cfg(feature = "_http")]
pub(crate) mod http;
pub mod kinesis;
#[cfg(feature = "kinesis")]
pub use kinesis::KinesisStream;
pub mod sqs;
#[cfg(feature = "sqs")]
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
pub trait Stream: Send + 'static {
    /// The validator used by `Outbox::send` (cheap, shared with the sending threads).
    fn validator(&self) -> Arc<dyn Validate>;

    /// Publishes a batch and waits for the broker's per-message outcome.
    fn publish(&mut self, batch: &[StoredMessage]) -> Vec<Result<()>>;

    /// Flushes and closes connections (called when the relay stops).
    fn close(&mut self) {}
}

impl<S: Stream + ?Sized> Stream for Box<S> {
    fn validator(&self) -> Arc<dyn Validate> {
        (**self).validator()
    }
    fn publish(&mut self, batch: &[StoredMessage]) -> Vec<Result<()>> {
        (**self).publish(batch)
    }
    fn close(&mut self) {
        (**self).close()
    }
}
