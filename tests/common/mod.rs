//! Shared helpers for the integration tests: real PostgreSQL and RabbitMQ on
//! 127.0.0.1 (URLs overridable with OUTBOXER_PG_URL / OUTBOXER_AMQP_URL).
#![allow(dead_code)]

pub mod amqp_faults;
pub mod prom;
pub mod stream_harness;
pub mod tls;

use amiquip::{
    Connection, ConsumerMessage, ConsumerOptions, ExchangeDeclareOptions, ExchangeType, FieldTable,
    QueueDeclareOptions,
};
use outboxer::store::PostgresStore;
use outboxer::stream::AmqpStream;
use outboxer::{MessageId, Outbox};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

pub fn pg_url() -> String {
    std::env::var("OUTBOXER_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

pub fn amqp_url() -> String {
    std::env::var("OUTBOXER_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A publish deadline far enough away that a test's batch never meets it.
pub fn deadline() -> outboxer::stream::Deadline {
    outboxer::stream::Deadline::after(Duration::from_secs(120))
}

/// A name unique to this test run, for tables, exchanges and queues.
pub fn unique(prefix: &str) -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{prefix}_{}_{}", std::process::id(), n % 1_000_000_000_000)
}

pub fn pg() -> postgres::Client {
    postgres::Client::connect(&pg_url(), postgres::NoTls)
        .expect("PostgreSQL on 127.0.0.1:5432 (see README)")
}

/// A migrated store on a fresh table.
pub fn store(table: &str) -> PostgresStore {
    let s = PostgresStore::builder(&pg_url())
        .table(table)
        .build()
        .expect("store");
    s.migrate().expect("migrate");
    s
}

pub fn stream() -> AmqpStream {
    AmqpStream::connect(&amqp_url()).expect("RabbitMQ on 127.0.0.1:5672 (see README)")
}

pub fn outbox(table: &str) -> Outbox<PostgresStore> {
    Outbox::builder()
        .store(store(table))
        .stream(stream())
        .check_interval(Duration::from_millis(50))
        .lease(Duration::from_secs(5))
        .build()
        .expect("outbox")
}

/// A message as a consumer received it.
#[derive(Clone, Debug)]
pub struct Got {
    pub body: Vec<u8>,
    pub routing_key: String,
    pub message_id: Option<String>,
    pub headers: BTreeMap<String, String>,
    /// The delivery itself, for `outboxer::decode::amqp`.
    pub delivery: amiquip::Delivery,
}

/// A durable queue bound to a durable topic exchange, consumed on a thread of its own.
pub struct Sink {
    pub exchange: String,
    pub queue: String,
    rx: crossbeam_channel::Receiver<Got>,
}

impl Sink {
    pub fn new(exchange: &str, binding: &str) -> Sink {
        let queue = unique("q");
        let (tx, rx) = crossbeam_channel::unbounded();
        let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
        let (ex, q, b) = (exchange.to_string(), queue.clone(), binding.to_string());
        std::thread::spawn(move || {
            // Reconnects after a broker restart; acks after receipt so that nothing is
            // lost on the consumer side (a redelivery shows up as a duplicate instead).
            let mut ready = Some(ready_tx);
            loop {
                match consume(&ex, &q, &b, &tx, &mut ready) {
                    Ok(()) => break, // the test dropped its receiver
                    Err(_) => std::thread::sleep(Duration::from_millis(300)),
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("consumer ready");
        Sink {
            exchange: exchange.to_string(),
            queue,
            rx,
        }
    }

    /// Receives until `n` distinct message ids arrived or `within` passed; returns all deliveries.
    pub fn collect(&self, n: usize, within: Duration) -> Vec<Got> {
        let mut got = Vec::new();
        self.collect_into(&mut got, n, within);
        got
    }

    /// Adds deliveries to `got` until it holds `n` distinct message ids or `within` passed.
    pub fn collect_into(&self, got: &mut Vec<Got>, n: usize, within: Duration) {
        let deadline = Instant::now() + within;
        let mut ids: std::collections::HashSet<_> =
            got.iter().map(|g| g.message_id.clone()).collect();
        while ids.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(g) => {
                    ids.insert(g.message_id.clone());
                    got.push(g);
                }
                Err(_) => break,
            }
        }
    }

    /// Whatever arrives within `d`.
    pub fn drain(&self, d: Duration) -> Vec<Got> {
        let deadline = Instant::now() + d;
        let mut got = Vec::new();
        while let Ok(g) = self
            .rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            got.push(g);
        }
        got
    }
}

/// Counts deliveries per message id.
pub fn counts(got: &[Got]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for g in got {
        *m.entry(g.message_id.clone().unwrap_or_default())
            .or_insert(0) += 1;
    }
    m
}

pub fn ids_of(ids: &[MessageId]) -> std::collections::BTreeSet<String> {
    ids.iter().map(|i| i.to_string()).collect()
}

pub fn drop_table(table: &str) {
    let _ = pg().batch_execute(&format!("DROP TABLE IF EXISTS \"{table}\""));
}

/// A durable queue `q` (expiring 5 minutes after its last use) bound with
/// `binding` to the durable topic exchange `ex` (both declared), with a prefetch
/// window for acked consumption.
pub fn bound_queue<'a>(
    ch: &'a amiquip::Channel,
    ex: &str,
    q: &str,
    binding: &str,
) -> amiquip::Result<amiquip::Queue<'a>> {
    ch.exchange_declare(
        ExchangeType::Topic,
        ex,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
    )?;
    // Durable, so that it outlives a broker restart in the fault tests; it expires
    // once unused for 5 minutes, so that test runs leave no queues behind (a broker
    // recovering a thousand of them at start-up runs out of file handles).
    let mut arguments = FieldTable::new();
    arguments.insert("x-expires".into(), amiquip::AmqpValue::LongInt(300_000));
    let queue = ch.queue_declare(
        q,
        QueueDeclareOptions {
            durable: true,
            arguments,
            ..Default::default()
        },
    )?;
    ch.queue_bind(q, ex, binding, FieldTable::new())?;
    ch.qos(0, 500, false)?;
    Ok(queue)
}

fn consume(
    ex: &str,
    q: &str,
    binding: &str,
    tx: &crossbeam_channel::Sender<Got>,
    ready: &mut Option<crossbeam_channel::Sender<()>>,
) -> amiquip::Result<()> {
    let mut conn = Connection::insecure_open(&amqp_url())?;
    let ch = conn.open_channel(None)?;
    let queue = bound_queue(&ch, ex, q, binding)?;
    let consumer = queue.consume(ConsumerOptions::default())?;
    if let Some(r) = ready.take() {
        let _ = r.send(());
    }
    for m in consumer.receiver().iter() {
        let ConsumerMessage::Delivery(d) = m else {
            return Err(amiquip::Error::ClientClosedChannel);
        };
        let headers = d
            .properties
            .headers()
            .as_ref()
            .map(|h| {
                h.iter()
                    .filter_map(|(k, v)| match v {
                        amiquip::AmqpValue::LongString(s) => Some((k.clone(), s.clone())),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let got = Got {
            body: d.body.clone(),
            routing_key: d.routing_key.clone(),
            message_id: d.properties.message_id().clone(),
            headers,
            delivery: d.clone(),
        };
        consumer.ack(d)?;
        if tx.send(got).is_err() {
            let _ = ch.queue_delete(q, Default::default());
            return Ok(());
        }
    }
    Err(amiquip::Error::ClientClosedChannel)
}

/// Runs `cmd` to completion with its output captured; a process still running
/// after `within` is killed and fails the test (a one-shot command must never
/// turn into a running relay). The pipes are drained by `wait_with_output` on
/// its own thread, so a chatty command cannot block on a full pipe.
pub fn run_to_end(mut cmd: std::process::Command, within: Duration) -> std::process::Output {
    use std::process::Stdio;
    let what = format!("{cmd:?}");
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the command");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(within) {
        Ok(out) => out.expect("output"),
        Err(_) => {
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status();
            panic!("{what} still running after {within:?} (killed)");
        }
    }
}
