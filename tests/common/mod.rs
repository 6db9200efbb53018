//! Shared helpers for the integration tests: real PostgreSQL and RabbitMQ on
//! 127.0.0.1 (URLs overridable with OUTBOXER_PG_URL / OUTBOXER_AMQP_URL).
#![allow(dead_code)]

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
            let mut conn = Connection::insecure_open(&amqp_url()).expect("consumer connection");
            let ch = conn.open_channel(None).expect("channel");
            ch.exchange_declare(
                ExchangeType::Topic,
                ex.clone(),
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
            )
            .expect("exchange");
            let queue = ch
                .queue_declare(
                    q.clone(),
                    QueueDeclareOptions {
                        durable: true,
                        ..Default::default()
                    },
                )
                .expect("queue");
            ch.queue_bind(q.clone(), ex.clone(), b, FieldTable::new())
                .expect("bind");
            let consumer = queue
                .consume(ConsumerOptions {
                    no_ack: true,
                    ..Default::default()
                })
                .expect("consume");
            let _ = ready_tx.send(());
            for m in consumer.receiver().iter() {
                match m {
                    ConsumerMessage::Delivery(d) => {
                        let headers = d
                            .properties
                            .headers()
                            .as_ref()
                            .map(|h| {
                                h.iter()
                                    .filter_map(|(k, v)| match v {
                                        amiquip::AmqpValue::LongString(s) => {
                                            Some((k.clone(), s.clone()))
                                        }
                                        _ => None,
                                    })
                                    .collect()
                            })
                            .unwrap_or_default();
                        let got = Got {
                            body: d.body,
                            routing_key: d.routing_key,
                            message_id: d.properties.message_id().clone(),
                            headers,
                        };
                        if tx.send(got).is_err() {
                            break;
                        }
                    }
                    _ => break,
                }
            }
            let _ = ch.queue_delete(q, Default::default());
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
        let deadline = Instant::now() + within;
        let mut got = Vec::new();
        let mut ids = std::collections::HashSet::new();
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
        got
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
