//! `--stream kafka`: the topic, the raw rdkafka ceiling and the high-watermark check.

use crate::cpu::CpuSample;
use crate::{BoxResult, Env, CHUNK, ROUTING_KEY};
use outboxer::stream::kafka::KafkaUrl;
use outboxer::MESSAGE_ID_HEADER;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientContext;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Partitions of the bench topic.
const PARTITIONS: i32 = 1;

/// The client settings of `url`: brokers plus its properties (SASL and the like).
fn client_config(url: &str) -> BoxResult<ClientConfig> {
    let parsed = KafkaUrl::parse(url).map_err(|e| format!("OUTBOXER_KAFKA_URL: {e}"))?;
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", parsed.brokers.join(","));
    for (k, v) in &parsed.settings {
        config.set(k, v);
    }
    Ok(config)
}

/// Runs an admin future to completion on this thread (rdkafka's admin client
/// completes it from its own thread).
fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        match future.as_mut().poll(&mut cx) {
            Poll::Ready(v) => return v,
            Poll::Pending => std::thread::park(),
        }
    }
}

/// The bench topic.
pub struct KafkaBroker {
    admin: AdminClient<DefaultClientContext>,
    topic: String,
    /// Records delivered so far (for the closing note).
    expected: AtomicU64,
}

impl KafkaBroker {
    pub fn setup(env: &Env) -> BoxResult<KafkaBroker> {
        let admin: AdminClient<DefaultClientContext> = client_config(&env.kafka_url)?
            .create()
            .map_err(|e| format!("Kafka admin client: {e}"))?;
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let new = NewTopic::new(&env.topic, PARTITIONS, TopicReplication::Fixed(1));
        let results = block_on(admin.create_topics([&new], &options))
            .map_err(|e| format!("creating Kafka topic {}: {e}", env.topic))?;
        for r in results {
            if let Err((topic, code)) = r {
                return Err(format!("creating Kafka topic {topic}: {code:?}").into());
            }
        }
        let broker = KafkaBroker {
            admin,
            topic: env.topic.clone(),
            expected: AtomicU64::new(0),
        };
        // The topic must be visible before the first phase.
        let deadline = Instant::now() + Duration::from_secs(20);
        while broker.high_watermark().is_err() {
            if Instant::now() > deadline {
                return Err(format!("Kafka topic {} did not appear", env.topic).into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        println!(
            "bench: Kafka at {} (no consumer-side check: the ceiling and the relays count \
             delivery reports, acks=all)",
            KafkaUrl::redact(&env.kafka_url)
        );
        Ok(broker)
    }

    /// Records in the topic: the sum of its partitions' high watermarks.
    fn high_watermark(&self) -> BoxResult<u64> {
        let mut sum = 0i64;
        for p in 0..PARTITIONS {
            let (_, high) =
                self.admin
                    .inner()
                    .fetch_watermarks(&self.topic, p, Duration::from_secs(5))?;
            sum += high;
        }
        Ok(u64::try_from(sum).unwrap_or(0))
    }

    /// No end-to-end check with Kafka (no consumer): the relay phases count
    /// delivery reports (acks=all), the ceiling too. Only tallies what was published.
    pub fn settle(&self, published: u64) -> BoxResult<()> {
        self.expected.fetch_add(published, Ordering::Relaxed);
        Ok(())
    }

    pub fn teardown(self) -> BoxResult<()> {
        // For information only: Tansu's high watermark is not a record count (it
        // lags by the size of the last record batch).
        if let Ok(high) = self.high_watermark() {
            println!(
                "bench: Kafka topic high watermark {high} after {} delivered records \
                 (not checked)",
                self.expected.load(Ordering::Relaxed)
            );
        }
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let results = block_on(self.admin.delete_topics(&[&self.topic], &options))?;
        for r in results {
            if let Err((topic, code)) = r {
                return Err(format!("deleting Kafka topic {topic}: {code:?}").into());
            }
        }
        Ok(())
    }

    /// Phase 3 with Kafka: raw rdkafka, the producer settings of `KafkaStream`.
    pub fn ceiling(&self, env: &Env) -> BoxResult<Duration> {
        let mut config = client_config(&env.kafka_url)?;
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("max.in.flight.requests.per.connection", "5")
            .set("message.timeout.ms", "15000")
            .set("allow.auto.create.topics", "false")
            .set("client.id", "outboxer-bench");
        let producer: BaseProducer<Counting> = config
            .create_with_context(Counting::default())
            .map_err(|e| format!("Kafka producer: {e}"))?;
        // Connected, with the topic's metadata, before the clock starts.
        producer
            .client()
            .fetch_metadata(Some(&self.topic), Duration::from_secs(10))?;
        let messages = env.make_messages(env.messages);
        let cpu = env.breakdown.then(CpuSample::take).flatten();
        let mut sent = 0u64;
        let start = Instant::now();
        for window in messages.chunks(CHUNK) {
            for m in window {
                let id = m.message_id().to_string();
                let headers = OwnedHeaders::new_with_capacity(1).insert(Header {
                    key: MESSAGE_ID_HEADER,
                    value: Some(id.as_bytes()),
                });
                let ts = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_millis() as i64)
                    .unwrap_or(0);
                let mut record: BaseRecord<'_, str, [u8], ()> = BaseRecord::to(&self.topic)
                    .payload(m.payload())
                    .key(ROUTING_KEY)
                    .headers(headers)
                    .timestamp(ts);
                loop {
                    match producer.send(record) {
                        Ok(()) => break,
                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                            record = r;
                            producer.poll(Duration::from_millis(10));
                        }
                        Err((e, _)) => return Err(format!("ceiling: send: {e}").into()),
                    }
                }
                sent += 1;
            }
            let deadline = Instant::now() + Duration::from_secs(30);
            while producer.context().delivered.load(Ordering::Relaxed) < sent {
                if let Some(e) = producer
                    .context()
                    .failed
                    .lock()
                    .map_err(|_| "poisoned")?
                    .take()
                {
                    return Err(format!("ceiling: delivery failed: {e}").into());
                }
                if Instant::now() > deadline {
                    return Err("ceiling: no delivery reports within 30 s".into());
                }
                // rdkafka 0.39's `poll` (and `flush`) blocks for its whole timeout
                // (flush: 100 ms steps) even once the reports are in: short steps.
                producer.poll(Duration::from_millis(1));
            }
        }
        let took = start.elapsed();
        if env.breakdown {
            println!(
                "    {} during the ceiling run",
                CpuSample::since(&cpu, sent)
            );
        }
        Ok(took)
    }
}

/// Counts delivery reports (the ceiling's confirms).
#[derive(Default)]
struct Counting {
    delivered: AtomicU64,
    failed: Mutex<Option<String>>,
}

impl ClientContext for Counting {}

impl ProducerContext for Counting {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, _)) => {
                if let Ok(mut f) = self.failed.lock() {
                    f.get_or_insert_with(|| e.to_string());
                }
            }
        }
    }
}
