//! AMQP 0-9-1 (RabbitMQ) stream on `amiquip`: publisher confirms, persistent
//! delivery, `mandatory` publishes, exchanges declared once and cached.
//!
//! The routing builders ([`topic`], [`direct`], ...) are available without the
//! `amqp` feature, for services that only enqueue.
//!
//! With the `amqp` feature, `open_connection`, `open_confirm_channel` and
//! `message_properties` give code that talks to RabbitMQ next to the stream
//! (declaring queues, a test's consumer, a benchmark's raw-publish ceiling) the
//! stream's own connection setup and wire format.

pub use crate::core::amqp::{
    direct, fanout, queue, topic, AmqpRoute, ExchangeKind, EXCHANGE_AUTO_DELETE, EXCHANGE_DURABLE,
    EXCHANGE_INTERNAL, EXCHANGE_NAME, EXCHANGE_NO_WAIT, EXCHANGE_TYPE, ROUTING_KEY,
};

use super::Validate;
use crate::core::rows::wire_size;
use crate::message::{Headers, Options};
use crate::{Error, Result};

/// RabbitMQ 3.x refuses messages above `max_message_size`, 128 MiB by default.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 128 * 1024 * 1024;

/// Headers travel in the content header frame, which must fit one frame
/// (amiquip negotiates 128 KiB); keep well below it for the other properties.
pub const MAX_HEADERS_SIZE: usize = 64 * 1024;

/// Checks AMQP options and size at `send`.
#[derive(Clone, Debug)]
pub struct AmqpValidator {
    /// Largest payload plus headers accepted, in bytes.
    pub max_message_size: usize,
}

impl Validate for AmqpValidator {
    fn validate(&self, payload: &[u8], headers: &Headers, options: &Options) -> Result<()> {
        AmqpRoute::parse(options)?;
        // A header the broker cannot take would fail every publish and, counted as a
        // connection failure, be retried forever: refuse it here, as a permanent error.
        if let Some(name) = headers.keys().find(|k| k.len() > 255) {
            return Err(Error::InvalidHeader {
                name: name.chars().take(64).collect(),
                reason: "AMQP header names are at most 255 bytes".into(),
            });
        }
        let headers_size: usize = headers.iter().map(|(k, v)| k.len() + v.len() + 6).sum();
        if headers_size > MAX_HEADERS_SIZE {
            return Err(Error::InvalidHeader {
                name: String::new(),
                reason: format!(
                    "headers take {headers_size} bytes, AMQP allows {MAX_HEADERS_SIZE} (one frame)"
                ),
            });
        }
        let size = wire_size(payload, headers);
        if size > self.max_message_size {
            return Err(Error::PayloadTooLarge {
                size,
                limit: self.max_message_size,
            });
        }
        Ok(())
    }
}

// The driver, by topic: `target` (the URL), `connection` (socket, handshake,
// watchdog, session), `stream` (settings, `publish` round by round, close),
// `publish` (one chunk and its confirms and returns), `refusals` (channel closes
// and exchange declarations).
#[cfg(feature = "amqp")]
mod connection;
#[cfg(feature = "amqp")]
mod publish;
#[cfg(feature = "amqp")]
mod refusals;
#[cfg(feature = "amqp")]
mod stream;
#[cfg(feature = "amqp")]
mod target;

#[cfg(feature = "amqp")]
#[cfg_attr(docsrs, doc(cfg(feature = "amqp")))]
pub use self::connection::{open_confirm_channel, open_connection};
#[cfg(feature = "amqp")]
#[cfg_attr(docsrs, doc(cfg(feature = "amqp")))]
pub use self::publish::message_properties;
#[cfg(feature = "amqp")]
#[cfg_attr(docsrs, doc(cfg(feature = "amqp")))]
pub use self::stream::{AmqpStream, AmqpStreamBuilder};
