//! The stream on rdkafka: the producer, its delivery-report context, and the
//! topic metadata it checks routes against.

use super::*;
use crate::blocking::stream::{Deadline, Stream};
use crate::core::kafka::{check_setting, security, Sasl};
use crate::core::waves::{held_back, waves};
use crate::message::StoredMessage;
use crate::tls::{Tls, TlsCause};
use parking_lot::Mutex;
use rdkafka::config::ClientConfig;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{
    BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext, PurgeConfig,
};
use rdkafka::ClientContext;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

mod builder;
mod errors;
mod publish;

use self::errors::map_code;

/// Collects delivery reports while the stream polls, and librdkafka's latest
/// errors and warnings: a failed TLS handshake or SASL login is told there only
/// (a metadata request just times out), so the connection check reads them.
struct Reports {
    done: Mutex<Vec<(usize, Option<KafkaError>)>>,
    events: Mutex<VecDeque<String>>,
    /// Keep debug lines too (the host name probe reads "certificate verified").
    keep_debug: bool,
}

/// How many of librdkafka's latest errors and warnings are kept.
const EVENTS_KEPT: usize = 32;

impl Reports {
    fn new() -> Reports {
        Reports {
            done: Mutex::new(Vec::new()),
            events: Mutex::new(VecDeque::new()),
            keep_debug: false,
        }
    }

    fn remember(&self, text: String) {
        let mut events = self.events.lock();
        if events.len() == EVENTS_KEPT {
            events.pop_front();
        }
        events.push_back(text);
    }
}

impl ClientContext for Reports {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        use RDKafkaLogLevel as L;
        match level {
            L::Emerg | L::Alert | L::Critical | L::Error => {
                log::error!(target: "librdkafka", "librdkafka: {fac} {log_message}")
            }
            L::Warning => log::warn!(target: "librdkafka", "librdkafka: {fac} {log_message}"),
            L::Notice | L::Info => {
                log::info!(target: "librdkafka", "librdkafka: {fac} {log_message}")
            }
            L::Debug => log::debug!(target: "librdkafka", "librdkafka: {fac} {log_message}"),
        }
        // A disconnect is told at Info level ("Disconnected: connection reset by
        // peer (after 5ms in state APIVERSION_QUERY)").
        if self.keep_debug || !matches!(level, L::Debug) {
            self.remember(format!("{fac} {log_message}"));
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        log::error!(target: "librdkafka", "librdkafka: {error}: {reason}");
        self.remember(format!("{error}: {reason}"));
    }
}

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
    tls: Option<Tls>,
    sasl: Option<Sasl>,
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
    /// `security.protocol` is `ssl` or `sasl_ssl`.
    tls: bool,
    /// TLS with the host name checked (`ssl.endpoint.identification.algorithm=https`).
    verify_host: bool,
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
        s.check_connection()?;
        Ok(s)
    }

    /// Asks a broker for the cluster's metadata within the metadata timeout, so
    /// that a TLS or SASL mistake shows now: [`Error::Tls`] naming the cause
    /// (certificate not trusted, host name mismatch, TLS to a plaintext listener
    /// or plaintext to a TLS one), [`Error::Unauthorized`] for a refused SASL
    /// login, else [`Error::Timeout`] or [`Error::Unavailable`].
    fn check_connection(&mut self) -> Result<()> {
        // With TLS, a listener that never answers the handshake is told by
        // librdkafka's connection setup timeout (the metadata timeout, see
        // build()), which it checks once a second: a little longer to hear it.
        let grace = if self.tls {
            Duration::from_millis(1500)
        } else {
            Duration::ZERO
        };
        let until = Instant::now() + self.metadata_timeout + grace;
        self.producer()?;
        let Some(producer) = self.producer.as_ref() else {
            return Err(Error::unavailable("kafka", "no producer"));
        };
        // librdkafka tells errors and logs through the queue that poll() serves:
        // short metadata requests with polls between them, so that a failed
        // handshake or login ends the wait at once.
        producer.poll(Duration::ZERO);
        producer.context().events.lock().clear();
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let step = left.min(Duration::from_millis(250));
            match producer.client().fetch_metadata(None, step) {
                Ok(_) => return Ok(()),
                Err(e) => {
                    let named = self.named_failure(true);
                    if left <= step || named.is_some() {
                        return Err(named.unwrap_or_else(|| self.connection_error(&e, false)));
                    }
                }
            }
        }
    }

    /// librdkafka's latest errors and warnings (served from its queue first).
    fn events(&self) -> Vec<String> {
        self.producer
            .as_ref()
            .map(|p| {
                p.poll(Duration::ZERO);
                p.context().events.lock().iter().cloned().collect()
            })
            .unwrap_or_default()
    }

    /// What a failed metadata request means, read from librdkafka's latest
    /// errors and warnings (where a handshake or login failure is told).
    fn connection_error(&self, e: &KafkaError, probe: bool) -> Error {
        if let Some(named) = self.named_failure(probe) {
            return named;
        }
        let events = self.events();
        let last = events.last().map(|t| format!(" ({t})")).unwrap_or_default();
        match e {
            KafkaError::MetadataFetch(RDKafkaErrorCode::OperationTimedOut) => {
                Error::Timeout(format!(
                    "Kafka metadata from {} within {:?}{last}",
                    self.redacted, self.metadata_timeout
                ))
            }
            e => Error::unavailable("kafka", format!("{}: {e}{last}", self.redacted)),
        }
    }

    /// A TLS failure ([`Error::Tls`]) or a refused SASL login
    /// ([`Error::Unauthorized`]) among librdkafka's latest errors and warnings.
    /// `probe`: tell a wrong host name from an untrusted chain by a second
    /// handshake (at start only; a running relay reports an untrusted certificate).
    fn named_failure(&self, probe: bool) -> Option<Error> {
        let events = self.events();
        for text in &events {
            // "SASL .. mechanism handshake failed" is about the login, not TLS.
            if text.to_ascii_lowercase().contains("sasl") {
                continue;
            }
            if let Some(cause) = crate::core::tls::classify(text) {
                // "connecting to a SSL listener?" is also what a TLS client reads
                // when a broker drops it; only a plaintext client can be refused
                // for want of TLS, and only a TLS client fails a handshake.
                let possible = match cause {
                    TlsCause::ServerRequiresTls => !self.tls,
                    _ => self.tls,
                };
                if possible {
                    // OpenSSL words an untrusted chain and a wrong host name alike.
                    let cause =
                        if probe && cause == TlsCause::CertificateNotTrusted && self.verify_host {
                            self.probe_host_name()
                        } else {
                            cause
                        };
                    return Some(Error::Tls {
                        what: "kafka",
                        cause,
                        reason: format!("{}: {text}", self.redacted),
                    });
                }
            }
        }
        events
            .iter()
            .find(|t| sasl_refused(t))
            .map(|text| Error::unauthorized("kafka", format!("{}: {text}", self.redacted)))
    }

    /// Tells a wrong host name from an untrusted chain: librdkafka reports both as
    /// OpenSSL's "certificate verify failed". A second client, with the chain
    /// checked and the name not, connects once: if its handshake passes, the name
    /// is what is wrong. It sends no credentials (SASL is left out) and no data.
    fn probe_host_name(&self) -> TlsCause {
        let mut config = self.config.clone();
        for key in [
            "sasl.mechanisms",
            "sasl.mechanism",
            "sasl.username",
            "sasl.password",
        ] {
            config.remove(key);
        }
        config
            .set("security.protocol", "ssl")
            .set("ssl.endpoint.identification.algorithm", "none")
            .set("debug", "security")
            .set_log_level(RDKafkaLogLevel::Debug);
        let ctx = Reports {
            keep_debug: true,
            ..Reports::new()
        };
        let Ok(probe) = config.create_with_context::<_, Producer_>(ctx) else {
            return TlsCause::CertificateNotTrusted;
        };
        let until = Instant::now() + self.metadata_timeout.min(Duration::from_secs(3));
        while Instant::now() < until {
            let _ = probe
                .client()
                .fetch_metadata(None, Duration::from_millis(100));
            probe.poll(Duration::ZERO);
            let events = probe.context().events.lock();
            for t in events.iter() {
                let t = t.to_ascii_lowercase();
                if t.contains("certificate verified") {
                    return TlsCause::HostnameMismatch;
                }
                if t.contains("certificate verify failed") {
                    return TlsCause::CertificateNotTrusted;
                }
            }
        }
        TlsCause::CertificateNotTrusted
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
            tls: None,
            sasl: None,
        }
    }

    fn producer(&mut self) -> Result<&Producer_> {
        if self.producer.is_none() {
            let p: Producer_ =
                self.config
                    .create_with_context(Reports::new())
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
        let producer = self.producer()?;
        // Only this request's failures are read (delivery reports the poll serves
        // stay in the context for the batch).
        producer.poll(Duration::ZERO);
        producer.context().events.lock().clear();
        let md = match producer.client().fetch_metadata(Some(topic), timeout) {
            Ok(md) => md,
            // A TLS or SASL failure is named (an outage all the same: all transient).
            Err(e) => return Err(self.connection_error(&e, false)),
        };
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

/// Whether a librdkafka error or warning says the broker refused the SASL login.
fn sasl_refused(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    t.contains("sasl authentication")
        || t.contains("authentication failed")
        || (t.contains("sasl") && t.contains("fail"))
}
