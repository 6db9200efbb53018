//! The stream on rdkafka: the producer, its delivery-report context, and the
//! topic metadata it checks routes against.

use super::*;
use crate::blocking::stream::{Deadline, Stream};
use crate::core::kafka::check_setting;
use crate::core::waves::{held_back, waves};
use crate::message::StoredMessage;
use parking_lot::Mutex;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{
    BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext, PurgeConfig,
};
use rdkafka::ClientContext;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

mod builder;
mod errors;
mod publish;

use self::errors::map_code;

/// Collects delivery reports while the stream polls.
struct Reports {
    done: Mutex<Vec<(usize, Option<KafkaError>)>>,
}

impl ClientContext for Reports {}

impl ProducerContext for Reports {
    type DeliveryOpaque = usize;
    fn delivery(&self, result: &DeliveryResult<'_>, seq: usize) {
        let err = match result {
            Ok(_) => None,
            Err((e, _)) => Some(e.clone()),
        };
        self.done.lock().push((seq, err));
    }
}

type Producer_ = BaseProducer<Reports>;

/// Room for a record's framing on top of the validated size, in `message.max.bytes`.
const RECORD_OVERHEAD: usize = 128;

/// Settings of a [`KafkaStream`].
#[derive(Clone)]
pub struct KafkaStreamBuilder {
    url: std::result::Result<KafkaUrl, String>,
    redacted: String,
    settings: Vec<(String, String)>,
    bad_setting: Option<String>,
    delivery_timeout: Duration,
    metadata_timeout: Duration,
    linger: Option<Duration>,
    batch_size: Option<usize>,
    batch_num_messages: Option<usize>,
    compression: Option<Compression>,
    max_message_size: usize,
}

/// Publishes to Kafka with an idempotent producer and per-message delivery reports.
///
/// Every record carries the message's headers plus `outboxer-message-id`; its
/// key is the `key` option, else the ordering key, so one ordering key maps to
/// one partition. Messages of one ordering key within a batch are sent one after
/// the other; if one fails, the later ones of that key are not sent.
///
/// Refused authentication or authorization (SASL, topic or cluster ACLs) is
/// [`Error::Unauthorized`]; a partition without a leader, too few in-sync
/// replicas, throttling or an unreachable broker [`Error::Unavailable`]: outages,
/// released without counting an attempt. A topic or partition that does not
/// exist and an oversized record stay the message's own failure.
///
/// Bounds: topic metadata is awaited at most the
/// [`metadata_timeout`](KafkaStreamBuilder::metadata_timeout) and never past the
/// relay's deadline; delivery reports until the deadline (and at most the
/// [`delivery_timeout`](KafkaStreamBuilder::delivery_timeout) plus 2 s). At the
/// deadline the messages still queued in librdkafka are purged, so that they
/// cannot be delivered after the relay released them, and get a transient
/// [`Error::Timeout`], as do those in flight, and the producer is replaced. When
/// the relay stops, no new message is handed to librdkafka and the reports of
/// those in flight are awaited at most 2 s; `stop()` waits at most that, or a
/// metadata request in flight (`metadata_timeout`, default 5 s), plus the
/// producer's teardown (about 0.5 s).
///
/// ```no_run
/// # fn main() -> Result<(), outboxer::Error> {
/// use outboxer::stream::KafkaStream;
/// let stream = KafkaStream::connect("kafka://127.0.0.1:9092?linger.ms=5")?;
/// # Ok(()) }
/// ```
pub struct KafkaStream {
    config: ClientConfig,
    redacted: String,
    delivery_timeout: Duration,
    metadata_timeout: Duration,
    max_message_size: usize,
    producer: Option<Producer_>,
    /// Partition counts of known topics and when they were read.
    topics: HashMap<String, (usize, Instant)>,
    next_seq: usize,
}

impl std::fmt::Debug for KafkaStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaStream")
            .field("url", &self.redacted)
            .field("producer", &self.producer.is_some())
            .finish()
    }
}

/// How long a topic's partition count is trusted before it is read again.
const METADATA_MAX_AGE: Duration = Duration::from_secs(30);

/// When the relay stops, the delivery reports of messages in flight are waited
/// for at most this long; then the batch ends as at its deadline.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// How long the reports of purged messages are collected (they are ready at once).
const PURGE_REPORTS_WAIT: Duration = Duration::from_millis(200);

/// What the broker's metadata says about one topic.
enum TopicState {
    Partitions(usize),
    /// No such topic (or not visible): the message's own failure.
    Missing,
    /// Not writable now (authorization, no leader, ...): an outage of this topic.
    Outage(Error),
}

/// The error of a message not handed to librdkafka before the deadline.
fn not_sent() -> Error {
    Error::Timeout("kafka: not sent, the batch's deadline passed".into())
}

impl KafkaStream {
    /// Parses the URL and checks that a broker answers, so that a wrong URL or an
    /// absent broker is reported at start-up. Use [`KafkaStream::builder`] for
    /// settings or a lazy connect.
    pub fn connect(url: &str) -> Result<Self> {
        let mut s = Self::builder(url).build()?;
        let timeout = s.metadata_timeout;
        let producer = s.producer()?;
        producer
            .client()
            .fetch_metadata(None, timeout)
            .map_err(|e| Error::unavailable("kafka", format!("{}: {e}", s.redacted)))?;
        Ok(s)
    }

    /// A builder; `build()` creates the producer but does not wait for a broker.
    pub fn builder(url: &str) -> KafkaStreamBuilder {
        KafkaStreamBuilder {
            url: KafkaUrl::parse(url),
            redacted: KafkaUrl::redact(url),
            settings: Vec::new(),
            bad_setting: None,
            delivery_timeout: Duration::from_secs(15),
            metadata_timeout: Duration::from_secs(5),
            linger: None,
            batch_size: None,
            batch_num_messages: None,
            compression: None,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
        }
    }

    fn producer(&mut self) -> Result<&Producer_> {
        if self.producer.is_none() {
            let p: Producer_ = self
                .config
                .create_with_context(Reports {
                    done: Mutex::new(Vec::new()),
                })
                .map_err(|e| match e {
                    // The value may be a secret: name the property only.
                    KafkaError::ClientConfig(_, desc, key, _) => {
                        Error::config("kafka", format!("property {key:?}: {desc}"))
                    }
                    e => Error::config("kafka", e),
                })?;
            self.producer = Some(p);
        }
        self.producer
            .as_ref()
            .ok_or_else(|| Error::unavailable("kafka", "no producer"))
    }

    fn drop_producer(&mut self, why: &str) {
        if let Some(p) = self.producer.take() {
            log::warn!(
                "outboxer: recreating the Kafka producer for {}: {why}",
                self.redacted
            );
            drop(p);
        }
        self.topics.clear();
    }

    /// What the broker says about `topic`, from the cache or the broker, within
    /// the metadata timeout and the deadline. `Err`: no answer (every topic).
    fn partitions(&mut self, topic: &str, deadline: &Deadline) -> Result<TopicState> {
        if let Some((n, at)) = self.topics.get(topic) {
            if at.elapsed() < METADATA_MAX_AGE {
                return Ok(TopicState::Partitions(*n));
            }
        }
        let timeout = self.metadata_timeout.min(deadline.remaining());
        if deadline.expired() || timeout < Duration::from_millis(10) {
            return Err(not_sent());
        }
        let redacted = self.redacted.clone();
        let md = self
            .producer()?
            .client()
            .fetch_metadata(Some(topic), timeout)
            .map_err(|e| match e {
                KafkaError::MetadataFetch(RDKafkaErrorCode::OperationTimedOut) => {
                    Error::Timeout(format!("Kafka metadata from {redacted} within {timeout:?}"))
                }
                e => Error::unavailable("kafka", format!("{redacted}: {e}")),
            })?;
        let Some(t) = md.topics().iter().find(|t| t.name() == topic) else {
            return Ok(TopicState::Missing);
        };
        if let Some(err) = t.error() {
            let code = RDKafkaErrorCode::from(err);
            return Ok(match map_code(code, &format!("topic {topic:?}: {code}")) {
                // A topic that is not there (or not visible) is the message's route.
                Error::Rejected(_) => TopicState::Missing,
                // Authorization, a leader election, ...: an outage of this topic.
                outage => TopicState::Outage(outage),
            });
        }
        match t.partitions().len() {
            0 => Ok(TopicState::Missing),
            n => {
                self.topics.insert(topic.to_string(), (n, Instant::now()));
                Ok(TopicState::Partitions(n))
            }
        }
    }
}
