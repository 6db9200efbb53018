//! Kafka stream on `rdkafka` (librdkafka, bundled): an idempotent producer
//! (`enable.idempotence=true`, `acks=all`), one delivery report per message,
//! record headers, compression, batching through librdkafka's linger/batch
//! settings, flush on close.
//!
//! The routing builders ([`topic`]) and the validator are available without the
//! `kafka` feature, for services that only enqueue.

pub use crate::core::kafka::{
    topic, Compression, KafkaRoute, KafkaUrl, KEY, MANAGED_SETTINGS, PARTITION, TOPIC,
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
pub use self::driver::{KafkaStream, KafkaStreamBuilder};

#[cfg(feature = "kafka")]
mod driver {
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

    impl KafkaStreamBuilder {
        /// Sets a librdkafka producer property (SASL, TLS, `client.id`, ...). The
        /// properties that carry the stream's guarantees (`enable.idempotence`,
        /// `acks`, `max.in.flight.requests.per.connection` > 5, brokers) are refused
        /// at `build()`. TLS needs librdkafka built with SSL: enable rdkafka's `ssl`
        /// (or `ssl-vendored`) feature in your own Cargo.toml.
        pub fn set(mut self, key: &str, value: &str) -> Self {
            if let Err(e) = check_setting(key, value) {
                self.bad_setting.get_or_insert(e);
            }
            self.settings.push((key.to_string(), value.to_string()));
            self
        }
        /// How long librdkafka may try to deliver one message (`message.timeout.ms`,
        /// default 15 s). Keep it well below the relay's lease.
        pub fn delivery_timeout(mut self, d: Duration) -> Self {
            self.delivery_timeout = d;
            self
        }
        /// How long to wait for topic metadata (default 5 s).
        pub fn metadata_timeout(mut self, d: Duration) -> Self {
            self.metadata_timeout = d;
            self
        }
        /// `linger.ms`: how long librdkafka waits to fill a batch (librdkafka default 5 ms).
        pub fn linger(mut self, d: Duration) -> Self {
            self.linger = Some(d);
            self
        }
        /// `batch.size`: largest record batch in bytes.
        pub fn batch_size(mut self, bytes: usize) -> Self {
            self.batch_size = Some(bytes);
            self
        }
        /// `batch.num.messages`: most records in one batch.
        pub fn batch_num_messages(mut self, n: usize) -> Self {
            self.batch_num_messages = Some(n);
            self
        }
        /// `compression.type`.
        pub fn compression(mut self, c: Compression) -> Self {
            self.compression = Some(c);
            self
        }
        /// Largest message accepted at `send` (default 1 MB, Kafka's
        /// `message.max.bytes`); also sets librdkafka's `message.max.bytes`.
        pub fn max_message_size(mut self, bytes: usize) -> Self {
            self.max_message_size = bytes;
            self
        }

        /// Validates the settings and creates the producer; does not wait for a broker.
        pub fn build(self) -> Result<KafkaStream> {
            let url = self.url.map_err(|reason| Error::InvalidUrl {
                url: self.redacted.clone(),
                reason,
            })?;
            if let Some(reason) = self.bad_setting {
                return Err(Error::config("set", reason));
            }
            let ms = |field: &'static str, d: Duration, max: Duration| -> Result<String> {
                if d < Duration::from_millis(1) || d > max {
                    return Err(Error::config(
                        field,
                        format!("must be within 1ms..={max:?}"),
                    ));
                }
                Ok(d.as_millis().to_string())
            };
            let hour = Duration::from_secs(3600);
            let mut config = ClientConfig::new();
            config
                .set("bootstrap.servers", url.brokers.join(","))
                .set("enable.idempotence", "true")
                .set("acks", "all")
                .set("max.in.flight.requests.per.connection", "5")
                .set(
                    "message.timeout.ms",
                    ms("delivery_timeout", self.delivery_timeout, hour)?,
                )
                // A message to a missing topic fails instead of creating it (a
                // producer's metadata request would, on brokers that allow it).
                // Override with `set("allow.auto.create.topics", "true")`.
                .set("allow.auto.create.topics", "false")
                .set("client.id", "outboxer");
            if let Some(d) = self.linger {
                if d > Duration::from_secs(900) {
                    return Err(Error::config("linger", "must be at most 900 s"));
                }
                config.set("linger.ms", d.as_millis().to_string());
            }
            if let Some(b) = self.batch_size {
                if !(1..=2_147_483_647).contains(&b) {
                    return Err(Error::config("batch_size", "must be within 1..=2^31-1"));
                }
                config.set("batch.size", b.to_string());
            }
            if let Some(n) = self.batch_num_messages {
                if !(1..=1_000_000).contains(&n) {
                    return Err(Error::config(
                        "batch_num_messages",
                        "must be within 1..=1000000",
                    ));
                }
                config.set("batch.num.messages", n.to_string());
            }
            if let Some(c) = self.compression {
                config.set("compression.type", c.as_str());
            }
            if !(1000..=1_000_000_000).contains(&self.max_message_size) {
                return Err(Error::config(
                    "max_message_size",
                    "must be within 1000..=1000000000",
                ));
            }
            config.set(
                "message.max.bytes",
                (self.max_message_size + RECORD_OVERHEAD).to_string(),
            );
            for (k, v) in url.settings.iter().chain(self.settings.iter()) {
                config.set(k, v);
            }
            let metadata_timeout = ms("metadata_timeout", self.metadata_timeout, hour)
                .map(|_| self.metadata_timeout)?;
            let mut stream = KafkaStream {
                config,
                redacted: self.redacted,
                delivery_timeout: self.delivery_timeout,
                metadata_timeout,
                max_message_size: self.max_message_size,
                producer: None,
                topics: HashMap::new(),
                next_seq: 0,
            };
            // Refuses unknown or ill-typed properties now rather than at the first publish.
            stream.producer()?;
            Ok(stream)
        }
    }

    /// Maps a librdkafka error to outboxer's (see [`map_code`]); an error without a
    /// code is the message's own failure.
    fn map_error(e: &KafkaError) -> Error {
        match e.rdkafka_error_code() {
            Some(code) => map_code(code, e),
            None => Error::Rejected(e.to_string()),
        }
    }

    /// The table: timeouts are `Timeout`; refused authentication or authorization
    /// `Unauthorized`; no connection, no leader, too few replicas, throttling or a
    /// producer to replace `Unavailable` (all outages, never counted); a missing
    /// topic or partition, an oversized or invalid record and the rest `Rejected`
    /// (the message's own failure).
    fn map_code(code: RDKafkaErrorCode, e: &dyn std::fmt::Display) -> Error {
        use RDKafkaErrorCode as C;
        match code {
            C::MessageTimedOut | C::RequestTimedOut | C::OperationTimedOut | C::TimedOutQueue => {
                Error::Timeout(format!("Kafka delivery: {e}"))
            }
            C::TopicAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::TransactionalIdAuthorizationFailed
            | C::GroupAuthorizationFailed
            | C::DelegationTokenAuthorizationFailed
            | C::DelegationTokenExpired
            | C::SaslAuthenticationFailed
            | C::UnsupportedSASLMechanism
            | C::IllegalSASLState
            | C::UnacceptableCredential
            | C::Authentication => Error::unauthorized("kafka", e),
            C::BrokerTransportFailure
            | C::AllBrokersDown
            | C::Resolve
            | C::SSL
            | C::NetworkException
            | C::BrokerNotAvailable
            | C::LeaderNotAvailable
            | C::NotLeaderForPartition
            | C::PreferredLeaderNotAvailable
            | C::EligibleLeadersNotAvailable
            | C::ReplicaNotAvailable
            | C::FencedLeaderEpoch
            | C::UnknownLeaderEpoch
            | C::NotEnoughReplicas
            | C::NotEnoughReplicasAfterAppend
            | C::ISRInsufficient
            | C::KafkaStorageError
            | C::ThrottlingQuotaExceeded
            | C::QueueFull
            | C::PurgeQueue
            | C::PurgeInflight
            | C::Fatal
            | C::Retry
            | C::RebootstrapRequired
            | C::ProducerFenced
            | C::OutOfOrderSequenceNumber
            | C::UnknownProducerId
            | C::InvalidProducerEpoch
            | C::BrokerDestroy
            | C::DestroyBroker => Error::unavailable("kafka", e),
            C::UnknownTopicOrPartition
            | C::UnknownTopic
            | C::UnknownPartition
            | C::UnknownTopicId => Error::Rejected(format!("no such topic or partition: {e}")),
            _ => Error::Rejected(e.to_string()),
        }
    }

    /// A copy of a connection-level error for each affected message (always transient).
    fn same_transient(e: &Error) -> Error {
        if e.is_transient() {
            e.duplicate("kafka")
        } else {
            Error::unavailable("kafka", e)
        }
    }

    /// Moves the delivery reports received so far into `out`: (any delivered, any
    /// transient failure). A message purged from librdkafka's queue at the deadline
    /// was never sent: a transient `Timeout`.
    fn take_reports(
        producer: &Producer_,
        pending: &mut HashMap<usize, usize>,
        batch: &[StoredMessage],
        out: &mut [Option<Result<()>>],
    ) -> (bool, bool) {
        let (mut delivered, mut transient) = (false, false);
        let done = std::mem::take(&mut *producer.context().done.lock());
        for (seq, err) in done {
            // Reports of an earlier, abandoned batch are ignored.
            let Some(i) = pending.remove(&seq) else {
                continue;
            };
            out[i] = Some(match err {
                None => {
                    delivered = true;
                    Ok(())
                }
                Some(e) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::PurgeQueue) => {
                    transient = true;
                    Err(Error::Timeout(format!(
                        "message {} not sent by the batch's deadline (purged from the producer's queue)",
                        batch[i].message_id
                    )))
                }
                Some(e) => {
                    let e = map_error(&e);
                    transient |= e.is_transient();
                    Err(e)
                }
            });
        }
        (delivered, transient)
    }

    fn record_headers(m: &StoredMessage) -> OwnedHeaders {
        let id = m.message_id.to_string();
        let mut h = OwnedHeaders::new_with_capacity(m.headers.len() + 1);
        for (k, v) in &m.headers {
            h = h.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            });
        }
        h.insert(Header {
            key: MESSAGE_ID_HEADER,
            value: Some(id.as_bytes()),
        })
    }

    impl Stream for KafkaStream {
        fn validator(&self) -> Arc<dyn Validate> {
            Arc::new(KafkaValidator {
                max_message_size: self.max_message_size,
            })
        }

        fn publish(&mut self, batch: &[StoredMessage], deadline: &Deadline) -> Vec<Result<()>> {
            let mut out: Vec<Option<Result<()>>> = (0..batch.len()).map(|_| None).collect();
            if deadline.expired() {
                return batch.iter().map(|_| Err(not_sent())).collect();
            }
            let validator = KafkaValidator {
                max_message_size: self.max_message_size,
            };
            let mut routes: Vec<Option<KafkaRoute>> = Vec::with_capacity(batch.len());
            for (i, m) in batch.iter().enumerate() {
                match validator
                    .validate(&m.payload, &m.headers, &m.options)
                    .and_then(|()| KafkaRoute::parse(&m.options))
                {
                    Ok(r) => routes.push(Some(r)),
                    Err(e) => {
                        out[i] = Some(Err(e));
                        routes.push(None);
                    }
                }
            }
            // Topics and partitions must exist: Kafka would otherwise hold the records
            // until the delivery timeout. This is also where an absent broker shows.
            let mut checked: HashMap<String, TopicState> = HashMap::new();
            for i in 0..batch.len() {
                let Some(route) = routes[i].as_ref().filter(|_| out[i].is_none()) else {
                    continue;
                };
                if !checked.contains_key(&route.topic) {
                    match self.partitions(&route.topic, deadline) {
                        Ok(state) => {
                            checked.insert(route.topic.clone(), state);
                        }
                        Err(e) => {
                            for o in out.iter_mut().filter(|o| o.is_none()) {
                                *o = Some(Err(same_transient(&e)));
                            }
                            break;
                        }
                    }
                }
                out[i] = match (checked.get(&route.topic), route.partition) {
                    (Some(TopicState::Missing) | None, _) => Some(Err(Error::Rejected(format!(
                        "topic {:?} does not exist",
                        route.topic
                    )))),
                    (Some(TopicState::Outage(e)), _) => Some(Err(e.duplicate("kafka"))),
                    (Some(TopicState::Partitions(n)), Some(p)) if p as usize >= *n => {
                        Some(Err(Error::Rejected(format!(
                            "topic {:?} has {n} partitions, no partition {p}",
                            route.topic
                        ))))
                    }
                    _ => None,
                };
            }
            if let Err(e) = self.send_in_waves(batch, &routes, &mut out, deadline) {
                let why = e.to_string();
                self.drop_producer(&why);
                for o in out.iter_mut().filter(|o| o.is_none()) {
                    *o = Some(Err(same_transient(&e)));
                }
            }
            out.into_iter()
                .map(|o| o.unwrap_or_else(|| Err(Error::unavailable("kafka", "not published"))))
                .collect()
        }

        fn close(&mut self) {
            if let Some(p) = self.producer.take() {
                if let Err(e) = p.flush(self.delivery_timeout) {
                    log::warn!("outboxer: flushing Kafka producer {}: {e}", self.redacted);
                }
            }
        }
    }

    impl KafkaStream {
        /// Sends the routable messages and waits for their delivery reports. Wave `k`
        /// holds the k-th message of each ordering key (and wave 0 all keyless ones),
        /// so a later message of a key is sent only after the earlier one was
        /// delivered. An `Err` means the producer is unusable: every message without
        /// an outcome yet gets that (transient) error.
        fn send_in_waves(
            &mut self,
            batch: &[StoredMessage],
            routes: &[Option<KafkaRoute>],
            out: &mut [Option<Result<()>>],
            deadline: &Deadline,
        ) -> Result<()> {
            let waves = waves(batch.iter().map(|m| m.ordering_key.as_deref()));
            // Reports are awaited until the batch's deadline, and never longer than
            // librdkafka's own delivery timeout (plus a margin for its report).
            let until = (Instant::now() + self.delivery_timeout + Duration::from_secs(2))
                .min(deadline.instant());
            let mut failed_keys: HashSet<&str> = HashSet::new();
            for wave in waves {
                if deadline.expired() {
                    // No new wave: the batch's time is up (or the relay stops).
                    for &i in &wave {
                        if out[i].is_none() && routes[i].is_some() {
                            out[i] = Some(Err(not_sent()));
                        }
                    }
                    continue;
                }
                let mut pending: HashMap<usize, usize> = HashMap::new();
                for &i in &wave {
                    let m = &batch[i];
                    if out[i].is_some() {
                        // Refused before sending; it still holds back its key.
                        continue;
                    }
                    if let Some(k) = m.ordering_key.as_deref() {
                        if failed_keys.contains(k) {
                            out[i] = Some(Err(held_back("kafka", k)));
                            continue;
                        }
                    }
                    let Some(route) = routes[i].as_ref() else {
                        continue;
                    };
                    let seq = self.next_seq;
                    self.next_seq = self.next_seq.wrapping_add(1);
                    let key = route.key.as_deref().or(m.ordering_key.as_deref());
                    let ts = m
                        .created_at
                        .duration_since(UNIX_EPOCH)
                        .map(|d| d.as_millis() as i64)
                        .unwrap_or(0);
                    let producer = self.producer()?;
                    let mut record: BaseRecord<'_, str, [u8], usize> =
                        BaseRecord::with_opaque_to(&route.topic, seq)
                            .payload(m.payload.as_slice())
                            .headers(record_headers(m))
                            .timestamp(ts);
                    if let Some(k) = key {
                        record = record.key(k);
                    }
                    if let Some(p) = route.partition {
                        record = record.partition(p);
                    }
                    loop {
                        match producer.send(record) {
                            Ok(()) => {
                                pending.insert(seq, i);
                                break;
                            }
                            Err((
                                KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull),
                                r,
                            )) if Instant::now() < until && !deadline.stopping() => {
                                record = r;
                                producer.poll(Duration::from_millis(50));
                            }
                            Err((e, _)) => {
                                out[i] = Some(Err(map_error(&e)));
                                break;
                            }
                        }
                    }
                }
                self.await_reports(&mut pending, batch, out, until, deadline)?;
                for &i in &wave {
                    if let (Some(Err(_)), Some(k)) = (&out[i], batch[i].ordering_key.as_deref()) {
                        failed_keys.insert(k);
                    }
                }
            }
            Ok(())
        }

        /// Waits for the reports of `pending` until `until` (or, once the relay stops,
        /// [`STOP_GRACE`]). At that point the messages still queued in librdkafka are
        /// purged, so that they cannot be delivered after the relay released them
        /// (and sent them again, out of order); they and the ones in flight get a
        /// transient `Timeout`, and `Err` has the producer replaced.
        fn await_reports(
            &mut self,
            pending: &mut HashMap<usize, usize>,
            batch: &[StoredMessage],
            out: &mut [Option<Result<()>>],
            until: Instant,
            deadline: &Deadline,
        ) -> Result<()> {
            let producer = self.producer()?;
            let (mut delivered, mut transient) = (pending.is_empty(), false);
            let mut until = until;
            let mut stop_seen = false;
            while !pending.is_empty() {
                if !stop_seen && deadline.stopping() {
                    stop_seen = true;
                    until = until.min(Instant::now() + STOP_GRACE);
                }
                if Instant::now() >= until {
                    producer.purge(PurgeConfig::default().queue());
                    let collect_until = Instant::now() + PURGE_REPORTS_WAIT;
                    while !pending.is_empty() && Instant::now() < collect_until {
                        producer.poll(Duration::from_millis(1));
                        take_reports(producer, pending, batch, out);
                    }
                    for (_, i) in pending.drain() {
                        out[i] = Some(Err(Error::Timeout(format!(
                            "no delivery report for message {} by the batch's deadline",
                            batch[i].message_id
                        ))));
                    }
                    // Late reports and retries of what was in flight are the old producer's.
                    return Err(Error::Timeout(
                        "Kafka delivery reports by the batch's deadline".into(),
                    ));
                }
                // rdkafka 0.39's poll blocks for its whole timeout even after the
                // reports arrived: short polls (measured: 100 ms polls capped a
                // relay at batch_size x 10 msg/s and a p50 of 350 ms).
                producer.poll(Duration::from_millis(1));
                let (d, t) = take_reports(producer, pending, batch, out);
                delivered |= d;
                transient |= t;
            }
            if transient && !delivered {
                // Nothing got through: start over with a new producer (and producer id)
                // rather than trust one that may be stuck, e.g. on a broker that lost
                // its producer state.
                return Err(Error::unavailable(
                    "kafka",
                    "no message of the batch was delivered",
                ));
            }
            if let Some((code, reason)) = producer.client().fatal_error() {
                return Err(Error::unavailable(
                    "kafka",
                    format!("fatal producer error {code:?}: {reason}"),
                ));
            }
            Ok(())
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use rdkafka::error::RDKafkaErrorCode as C;

        fn delivery(code: C) -> Error {
            map_error(&KafkaError::MessageProduction(code))
        }

        /// Authorization and authentication failures are outages (`Unauthorized`), and
        /// a partition without a leader is `Unavailable`: neither counts an attempt.
        #[test]
        fn authorization_and_leaderless_partitions_are_outages() {
            for code in [
                C::TopicAuthorizationFailed,
                C::ClusterAuthorizationFailed,
                C::TransactionalIdAuthorizationFailed,
                C::SaslAuthenticationFailed,
                C::Authentication,
                C::UnsupportedSASLMechanism,
                C::IllegalSASLState,
                C::DelegationTokenExpired,
            ] {
                let e = delivery(code);
                assert!(matches!(e, Error::Unauthorized { .. }), "{code:?}: {e:?}");
            }
            for code in [
                C::LeaderNotAvailable,
                C::NotLeaderForPartition,
                C::PreferredLeaderNotAvailable,
                C::EligibleLeadersNotAvailable,
                C::BrokerNotAvailable,
                C::ReplicaNotAvailable,
                C::FencedLeaderEpoch,
                C::UnknownLeaderEpoch,
                C::NotEnoughReplicas,
                C::AllBrokersDown,
                C::ThrottlingQuotaExceeded,
            ] {
                let e = delivery(code);
                assert!(matches!(e, Error::Unavailable { .. }), "{code:?}: {e:?}");
            }
        }

        /// A missing topic or an oversized record stays the message's own failure.
        #[test]
        fn wrong_routes_and_oversized_records_are_message_failures() {
            for code in [
                C::UnknownTopicOrPartition,
                C::UnknownTopic,
                C::UnknownPartition,
                C::MessageSizeTooLarge,
                C::InvalidRecord,
            ] {
                let e = delivery(code);
                assert!(
                    matches!(e, Error::Rejected(_)) && !e.is_transient(),
                    "{code:?}: {e:?}"
                );
            }
        }
    }
}

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
