//! Google Pub/Sub stream over the REST API (`projects/P/topics/T:publish`) on the
//! shared blocking HTTP stack: headers as attributes plus `outboxer-message-id`,
//! the payload byte-exact in `data`, batches within Pub/Sub's 1000 messages /
//! 10 MB, ordering keys published in sequence, and OAuth tokens from a
//! service-account key, a static token or the GCE metadata server (none for an
//! emulator).
//!
//! The routing builders ([`topic`]) and the validator are available without the
//! `pubsub` feature, for services that only enqueue.

pub use crate::core::pubsub::{
    topic, PubSubRoute, PubSubUrl, CREDENTIALS_ENV, EMULATOR_ENV, MAX_MESSAGE_SIZE,
    METADATA_BASE_URL, METADATA_TOKEN_PATH, ORDERING_KEY, PUBSUB_ENDPOINT, PUBSUB_SCOPE,
    TOPIC_NAME,
};

use super::Validate;
use crate::message::{Headers, Options};
use crate::Result;

/// Checks Pub/Sub options, attributes and size at `send`.
///
/// The message's own ordering key is not known here; it is checked (length) and
/// counted (size) again at publish.
#[derive(Clone, Debug)]
pub struct PubSubValidator {
    /// Largest data plus attributes (and ordering key) accepted, in bytes.
    pub max_message_size: usize,
}

impl Default for PubSubValidator {
    fn default() -> Self {
        PubSubValidator {
            max_message_size: MAX_MESSAGE_SIZE,
        }
    }
}

impl Validate for PubSubValidator {
    fn validate(&self, payload: &[u8], headers: &Headers, options: &Options) -> Result<()> {
        crate::core::pubsub::validate(payload, headers, options, None, self.max_message_size)
            .map(|_| ())
    }
}

#[cfg(feature = "pubsub")]
#[cfg_attr(docsrs, doc(cfg(feature = "pubsub")))]
pub use self::driver::{
    AccessToken, MetadataServer, PubSubStream, PubSubStreamBuilder, ServiceAccount, StaticToken,
    TokenProvider, CA_BUNDLE_ENV,
};

#[cfg(feature = "pubsub")]
mod driver;
