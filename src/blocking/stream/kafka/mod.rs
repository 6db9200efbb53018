//! Kafka stream on `rdkafka` (librdkafka, bundled): an idempotent producer
//! (`enable.idempotence=true`, `acks=all`), one delivery report per message,
//! record headers, compression, batching through librdkafka's linger/batch
//! settings, flush on close.
//!
//! The routing builders ([`topic`]) and the validator are available without the
//! `kafka` feature, for services that only enqueue.

pub use crate::core::kafka::{
    topic, Compression, KafkaRoute, KafkaUrl, SaslMechanism, DANGER_ACCEPT_INVALID_CERTS, KEY,
    MANAGED_SETTINGS, PARTITION, TOPIC,
};

use super::Validate;
use crate::core::rows::wire_size;
use crate::message::{Headers, Options, MESSAGE_ID_HEADER};
use crate::{Error, Result};

/// librdkafka's and Kafka's default `message.max.bytes`: 1 MB.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 1_000_000;

/// Checks Kafka options and size at `send`.
#[derive(Clone, Debug)]
pub struct KafkaValidator {
    /// Largest payload plus headers (and key) accepted, in bytes.
    pub max_message_size: usize,
}

impl KafkaValidator {
    fn size(payload: &[u8], headers: &Headers, route: &KafkaRoute) -> usize {
        wire_size(payload, headers)
            + route.key.as_ref().map_or(0, String::len)
            + MESSAGE_ID_HEADER.len()
            + 36
    }
}

impl Validate for KafkaValidator {
    fn validate(&self, payload: &[u8], headers: &Headers, options: &Options) -> Result<()> {
        let route = KafkaRoute::parse(options)?;
        let size = Self::size(payload, headers, &route);
        if size > self.max_message_size {
            return Err(Error::PayloadTooLarge {
                size,
                limit: self.max_message_size,
            });
        }
        Ok(())
    }
}

#[cfg(feature = "kafka")]
#[cfg_attr(docsrs, doc(cfg(feature = "kafka")))]
pub use self::driver::{KafkaStream, KafkaStreamBuilder};

#[cfg(feature = "kafka")]
mod driver;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validator_counts_payload_headers_and_key() {
        let v = KafkaValidator {
            max_message_size: 1000,
        };
        let route: Options = topic("t").key("k".repeat(100)).into();
        let mut headers = Headers::new();
        headers.insert("h".into(), "v".repeat(100));
        assert!(v.validate(&[0; 700], &headers, &route).is_ok());
        assert!(matches!(
            v.validate(&[0; 800], &headers, &route),
            Err(Error::PayloadTooLarge { limit: 1000, .. })
        ));
        assert!(matches!(
            v.validate(b"x", &headers, &Options::new()),
            Err(Error::InvalidOption { .. })
        ));
    }
}
