//! Kafka (OUTBOXER_KAFKA_URL, default the local Tansu broker that
//! `scripts/test-services up` starts; see `scripts/kafka-broker`).
//!
//! Tansu keeps everything in memory and creates no topics by itself: every
//! destination creates its topic, and `cut_connections` (a broker restart)
//! creates them again.

use crate::conformance::{read, stored, unique, Consumer, Received, StreamHarness};
use outboxer::stream::kafka::{self, KafkaStream, DEFAULT_MAX_MESSAGE_SIZE};
use outboxer::{Error, Options, StoredMessage, Stream, MESSAGE_ID_HEADER};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::{Headers as _, Message as _};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

const PARTITIONS: i32 = 3;

fn kafka_url() -> String {
    std::env::var("OUTBOXER_KAFKA_URL").unwrap_or_else(|_| "kafka://127.0.0.1:9092".into())
}

fn brokers() -> String {
    kafka_url()
        .trim_start_matches("kafka://")
        .split(['?', '/'])
        .next()
        .unwrap_or_default()
        .to_string()
}

fn broker_script() -> String {
    format!("{}/scripts/kafka-broker", env!("CARGO_MANIFEST_DIR"))
}

/// Creates a topic (retrying while the broker restarts under another test).
fn create_topic(name: &str, partitions: i32) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = Command::new("bash")
            .args([&broker_script(), "topic", name, &partitions.to_string()])
            .output();
        match out {
            Ok(o) if o.status.success() => return,
            other if Instant::now() > deadline => panic!("creating topic {name}: {other:?}"),
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Topics and consumers alive in this process, for `cut_connections`.
struct Registered {
    topic: String,
    state: Weak<SinkState>,
}
static REGISTRY: Mutex<Vec<Registered>> = Mutex::new(Vec::new());
/// Odd while the broker restarts: consumers then drop their client (librdkafka
/// 2.12 crashes on the metadata of a topic that vanished) and create a new one,
/// reading from the start, once the count is even again.
static GENERATION: AtomicU64 = AtomicU64::new(0);

#[derive(Default)]
struct SinkState {
    received: AtomicUsize,
    /// The odd generation at which this sink dropped its client.
    parked: AtomicU64,
}

/// What a test consumer got, with Kafka's own fields.
#[derive(Debug)]
pub struct Record {
    pub partition: i32,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: BTreeMap<String, String>,
    /// `outboxer::decode::kafka` of the `BorrowedMessage` the consumer's poll returned.
    pub decoded: outboxer::Result<outboxer::decode::Incoming>,
}

/// Reads every partition of one topic from the start, in a background thread.
pub struct Sink {
    rx: crossbeam_channel::Receiver<Record>,
    stop: Arc<AtomicBool>,
    _state: Arc<SinkState>,
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn consumer() -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", unique("outboxer_test"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .create()
        .expect("kafka consumer")
}

fn assign_from_start(c: &BaseConsumer, topic: &str) {
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("partition");
    }
    c.assign(&tpl).expect("assign");
}

impl Sink {
    fn new(topic: &str) -> Sink {
        let (tx, rx) = crossbeam_channel::unbounded();
        let stop = Arc::new(AtomicBool::new(false));
        let state = Arc::new(SinkState::default());
        REGISTRY
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Registered {
                topic: topic.to_string(),
                state: Arc::downgrade(&state),
            });
        let (topic, stop2, st) = (topic.to_string(), stop.clone(), state.clone());
        std::thread::spawn(move || {
            let mut client: Option<BaseConsumer> = None;
            while !stop2.load(Ordering::Relaxed) {
                let generation = GENERATION.load(Ordering::SeqCst);
                if generation % 2 == 1 {
                    client = None;
                    st.parked.store(generation, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
                let c = client.get_or_insert_with(|| {
                    let c = consumer();
                    assign_from_start(&c, &topic);
                    c
                });
                let Some(Ok(m)) = c.poll(Duration::from_millis(100)) else {
                    continue;
                };
                let mut headers = BTreeMap::new();
                if let Some(hs) = m.headers() {
                    for h in hs.iter() {
                        let v = h.value.map(|v| String::from_utf8_lossy(v).into_owned());
                        headers.insert(h.key.to_string(), v.unwrap_or_default());
                    }
                }
                st.received.fetch_add(1, Ordering::SeqCst);
                let r = Record {
                    partition: m.partition(),
                    key: m.key().map(<[u8]>::to_vec),
                    payload: m.payload().unwrap_or_default().to_vec(),
                    headers,
                    decoded: outboxer::decode::kafka(&m),
                };
                if tx.send(r).is_err() {
                    break;
                }
            }
        });
        Sink {
            rx,
            stop,
            _state: state,
        }
    }

    /// Receives until `n` records arrived or `within` passed.
    pub fn records(&self, n: usize, within: Duration) -> Vec<Record> {
        let deadline = Instant::now() + within;
        let mut got = Vec::new();
        while got.len() < n {
            match self
                .rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(r) => got.push(r),
                Err(_) => break,
            }
        }
        got
    }
}

impl Consumer for Sink {
    fn receive(&self, n: usize, within: Duration) -> Vec<Received> {
        self.records(n, within)
            .into_iter()
            .map(|r| Received {
                decoded: r.decoded,
                payload: r.payload,
                headers: r.headers,
                key: r.key.map(|k| String::from_utf8_lossy(&k).into_owned()),
            })
            .collect()
    }
}

pub struct Kafka;

impl StreamHarness for Kafka {
    type S = KafkaStream;
    type C = Sink;
    fn stream() -> KafkaStream {
        // A short delivery timeout: after a restart Tansu has lost the producer's
        // state, and the stream recovers with a new producer after one timeout.
        KafkaStream::builder(&kafka_url())
            .delivery_timeout(Duration::from_secs(5))
            .build()
            .expect("Kafka (Tansu) on 127.0.0.1:9092")
    }
    fn unreachable() -> KafkaStream {
        KafkaStream::builder("kafka://user:secret@127.0.0.1:1")
            .metadata_timeout(Duration::from_secs(2))
            .build()
            .expect("valid URL")
    }
    fn destination(name: &str) -> (Options, Sink) {
        create_topic(name, PARTITIONS);
        let sink = Sink::new(name);
        (kafka::topic(name).into(), sink)
    }
    fn refused_destination(name: &str) -> Options {
        // Never created: the broker knows no such topic.
        kafka::topic(name).into()
    }
    fn invalid_options() -> Options {
        Options::from([
            ("topic".to_string(), serde_json::json!("t")),
            ("topik".to_string(), serde_json::json!("typo")),
        ])
    }
    fn max_message_size() -> usize {
        DEFAULT_MAX_MESSAGE_SIZE
    }
    fn publish_foreign(dest: &Options, payload: &[u8]) {
        use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _};
        let topic = dest["topic"].as_str().expect("topic");
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", brokers())
            .create()
            .expect("kafka producer");
        producer
            .send(BaseRecord::<(), [u8]>::to(topic).payload(payload))
            .map_err(|(e, _)| e)
            .expect("send");
        producer.flush(Duration::from_secs(20)).expect("flush");
    }
    fn cut_connections() {
        let alive: Vec<(String, Arc<SinkState>)> = REGISTRY
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter_map(|r| r.state.upgrade().map(|c| (r.topic.clone(), c)))
            .collect();
        // The broker forgets everything on restart: let the consumers read what is there first.
        let probe = consumer();
        for (topic, state) in &alive {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let high: i64 = (0..PARTITIONS)
                    .map(|p| {
                        probe
                            .fetch_watermarks(topic, p, Duration::from_secs(5))
                            .map(|(_, h)| h)
                            .unwrap_or(0)
                    })
                    .sum();
                if state.received.load(Ordering::SeqCst) as i64 >= high || Instant::now() > deadline
                {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        drop(probe);
        let parked = GENERATION.fetch_add(1, Ordering::SeqCst) + 1;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline
            && alive
                .iter()
                .any(|(_, s)| Arc::strong_count(s) > 1 && s.parked.load(Ordering::SeqCst) != parked)
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        let restarted = Command::new("bash")
            .args([&broker_script(), "restart"])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !restarted {
            // Whatever happened, the broker must be up again for the other tests.
            let _ = Command::new("bash")
                .args([&broker_script(), "start"])
                .status();
        }
        for (topic, _) in &alive {
            create_topic(topic, PARTITIONS);
        }
        GENERATION.fetch_add(1, Ordering::SeqCst);
        assert!(restarted, "scripts/kafka-broker restart");
    }
}

stream_conformance!(Kafka);

// Kafka-specific cases.

#[test]
fn key_maps_to_one_partition_and_options_route() {
    let _g = read();
    let name = unique("k_part");
    let (dest, sink) = Kafka::destination(&name);
    let mut s = Kafka::stream();
    let mut batch: Vec<StoredMessage> = (0..30)
        .map(|i| {
            let key = format!("key-{}", i % 5);
            stored(i, format!("{key}:{i}").as_bytes(), &dest, Some(&key))
        })
        .collect();
    let explicit: Options = kafka::topic(&name).partition(2).key("record-key").into();
    batch.push(stored(100, b"explicit", &explicit, Some("key-0")));
    let out = s.publish(&batch, &crate::common::deadline());
    assert!(out.iter().all(Result::is_ok), "{out:?}");
    let got = sink.records(31, Duration::from_secs(20));
    assert_eq!(got.len(), 31);
    let mut partition_of: HashMap<Vec<u8>, i32> = HashMap::new();
    for r in &got {
        if r.payload == b"explicit" {
            assert_eq!(r.partition, 2);
            assert_eq!(r.key.as_deref(), Some(b"record-key".as_slice()));
            continue;
        }
        let key = r.key.clone().expect("the ordering key is the record key");
        let body = String::from_utf8_lossy(&r.payload).into_owned();
        assert!(body.starts_with(&*String::from_utf8_lossy(&key)), "{body}");
        let p = *partition_of.entry(key).or_insert(r.partition);
        assert_eq!(p, r.partition, "one key, one partition");
    }
    assert_eq!(partition_of.len(), 5);
    s.close();
}

#[test]
fn no_duplicates_in_normal_operation() {
    let _g = read();
    let (dest, sink) = Kafka::destination(&unique("k_dup"));
    let mut s = KafkaStream::connect(&kafka_url()).expect("Kafka (Tansu) on 127.0.0.1:9092");
    let mut ids = HashSet::new();
    for round in 0..4 {
        let batch: Vec<StoredMessage> = (0..250)
            .map(|i| {
                stored(
                    round * 250 + i,
                    format!("{round}/{i}").as_bytes(),
                    &dest,
                    None,
                )
            })
            .collect();
        ids.extend(batch.iter().map(|m| m.message_id.to_string()));
        let out = s.publish(&batch, &crate::common::deadline());
        assert!(out.iter().all(Result::is_ok), "{out:?}");
    }
    s.close();
    let got = sink.records(1000, Duration::from_secs(30));
    // Anything beyond 1000 would be a duplicate: wait a little for one to show up.
    let extra = sink.records(1, Duration::from_secs(1));
    assert!(extra.is_empty(), "duplicate: {extra:?}");
    let seen: HashSet<String> = got
        .iter()
        .map(|r| r.headers[MESSAGE_ID_HEADER].clone())
        .collect();
    assert_eq!(got.len(), 1000);
    assert_eq!(seen, ids);
}

#[test]
fn a_failed_message_holds_back_the_rest_of_its_key() {
    let _g = read();
    let (dest, sink) = Kafka::destination(&unique("k_hold"));
    let missing = Kafka::refused_destination(&unique("k_missing"));
    let mut s = Kafka::stream();
    let batch = vec![
        stored(1, b"a1", &dest, Some("a")),
        stored(2, b"b1", &missing, Some("b")),
        stored(3, b"a2", &dest, Some("a")),
        stored(4, b"b2", &dest, Some("b")),
        stored(5, b"free", &dest, None),
    ];
    let out = s.publish(&batch, &crate::common::deadline());
    assert!(
        out[0].is_ok() && out[2].is_ok() && out[4].is_ok(),
        "{out:?}"
    );
    assert!(
        matches!(&out[1], Err(e) if !e.is_transient()),
        "{:?}",
        out[1]
    );
    assert!(
        matches!(&out[3], Err(e) if e.is_transient()),
        "b2 must not overtake b1: {:?}",
        out[3]
    );
    let got = sink.records(3, Duration::from_secs(20));
    let mut bodies: Vec<Vec<u8>> = got.into_iter().map(|r| r.payload).collect();
    bodies.sort();
    assert_eq!(
        bodies,
        vec![b"a1".to_vec(), b"a2".to_vec(), b"free".to_vec()]
    );
    assert!(sink.records(1, Duration::from_millis(500)).is_empty());
    s.close();
}

#[test]
fn bad_settings_and_urls_are_typed_errors() {
    for url in ["kafka://", "amqp://h", "kafka://h?acks=1", "kafka://h:0"] {
        assert!(
            matches!(
                KafkaStream::builder(url).build(),
                Err(Error::InvalidUrl { .. })
            ),
            "{url}"
        );
    }
    let err = KafkaStream::builder("kafka://u:hunter2@h?sasl.password=hunter2&x=1")
        .build()
        .expect_err("bad property");
    assert!(!err.to_string().contains("hunter2"), "{err}");
    assert!(matches!(
        KafkaStream::builder("kafka://h")
            .set("enable.idempotence", "false")
            .build(),
        Err(Error::Config { .. })
    ));
    assert!(matches!(
        KafkaStream::builder("kafka://h")
            .set("no.such.property", "1")
            .build(),
        Err(Error::Config { .. })
    ));
    assert!(KafkaStream::builder("kafka://h")
        .linger(Duration::from_millis(2))
        .batch_num_messages(500)
        .compression(kafka::Compression::Gzip)
        .set("client.id", "me")
        .build()
        .is_ok());
}

#[test]
fn compressed_batches_round_trip() {
    let _g = read();
    let (dest, sink) = Kafka::destination(&unique("k_gzip"));
    let mut s = KafkaStream::builder(&kafka_url())
        .compression(kafka::Compression::Gzip)
        .linger(Duration::from_millis(20))
        .build()
        .expect("stream");
    let batch: Vec<StoredMessage> = (0..50)
        .map(|i| stored(i, vec![b'x'; 1000 + i as usize], &dest, None))
        .collect();
    assert!(s
        .publish(&batch, &crate::common::deadline())
        .iter()
        .all(Result::is_ok));
    let got = sink.records(50, Duration::from_secs(20));
    assert_eq!(got.len(), 50);
    s.close();
}

/// Issue 12, item 7: with a broker that refuses connections or never answers, a
/// publish returns by its deadline (not after the metadata or delivery timeout).
#[test]
fn an_unreachable_or_silent_broker_holds_a_publish_no_longer_than_its_deadline() {
    let silent = crate::fault_proxy::SilentServer::start();
    for url in [
        "kafka://127.0.0.1:1".to_string(),
        format!("kafka://{}", silent.host()),
    ] {
        let s = KafkaStream::builder(&url)
            .metadata_timeout(Duration::from_secs(20))
            .delivery_timeout(Duration::from_secs(30))
            .build()
            .expect("valid URL");
        crate::conformance::publish_returns_by_the_deadline(
            s,
            &kafka::topic("t_unreachable").into(),
            Duration::from_secs(2),
            Duration::from_millis(500),
        );
    }
}

/// Messages still queued in librdkafka at the deadline are purged: they get a
/// transient Timeout and are never delivered later (the relay sends them again,
/// in order). A linger of 5 s keeps them queued past a 1.5 s deadline.
#[test]
fn messages_queued_at_the_deadline_are_purged_and_never_delivered() {
    let _g = read();
    let name = unique("k_purge");
    let (dest, sink) = Kafka::destination(&name);
    let mut s = KafkaStream::builder(&kafka_url())
        .linger(Duration::from_secs(5))
        .delivery_timeout(Duration::from_secs(30))
        .build()
        .expect("stream");
    let batch: Vec<StoredMessage> = (0..3)
        .map(|i| stored(i, format!("late {i}").as_bytes(), &dest, Some("k")))
        .chain([stored(9, b"late free", &dest, None)])
        .collect();
    let started = Instant::now();
    let out = s.publish(
        &batch,
        &outboxer::stream::Deadline::after(Duration::from_millis(1500)),
    );
    let took = started.elapsed();
    assert!(took < Duration::from_millis(2500), "{took:?}");
    for o in &out {
        assert!(matches!(o, Err(e) if e.is_transient()), "{o:?}");
    }
    assert!(
        matches!(&out[0], Err(Error::Timeout(_))),
        "queued at the deadline: {:?}",
        out[0]
    );
    // Past the linger: nothing of the purged batch shows up.
    let got = sink.records(1, Duration::from_secs(7));
    assert!(got.is_empty(), "purged messages were delivered: {got:?}");
    s.close();
}
