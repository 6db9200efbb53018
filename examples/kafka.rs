//! PostgreSQL store with the Kafka stream: per-key order maps to one partition.
//!
//! ```sh
//! bash scripts/kafka-broker start && bash scripts/kafka-broker topic orders 3
//! cargo run --example kafka --features postgres,kafka
//! ```
//! URLs: OUTBOXER_PG_URL (default the local PostgreSQL) and OUTBOXER_KAFKA_URL
//! (default `kafka://127.0.0.1:9092`). The topic must exist (no auto-creation).

use outboxer::store::PostgresStore;
use outboxer::stream::{kafka, KafkaStream};
use outboxer::{Message, Outbox};
use std::time::Duration;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pg_url = std::env::var("OUTBOXER_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let kafka_url =
        std::env::var("OUTBOXER_KAFKA_URL").unwrap_or_else(|_| "kafka://127.0.0.1:9092".into());

    let store = PostgresStore::builder(&pg_url)
        .table("kafka_example_outbox")
        .build()?;
    store.migrate()?;
    let outbox = Outbox::builder()
        .store(store)
        // Idempotent, acks=all producer; batching through librdkafka's linger.
        .stream(
            KafkaStream::builder(&kafka_url)
                .linger(Duration::from_millis(5))
                .build()?,
        )
        .build()?;
    let relay = outbox.start()?;

    for i in 0..3 {
        outbox.send(
            Message::new(format!(r#"{{"order":42,"step":{i}}}"#).into_bytes())
                .route(kafka::topic("orders"))
                .header("tenant", "acme")
                .ordering_key("order-42"), // the record key: one partition, in order
        )?;
    }
    for _ in 0..3 {
        crossbeam_channel::select! {
            recv(relay.ok()) -> ok => println!("published {}", ok?.message_id),
            recv(relay.err()) -> err => eprintln!("could not publish: {}", err?.error),
            default(Duration::from_secs(30)) => return Err("no outcome within 30 s".into()),
        }
    }
    relay.stop()?;
    Ok(())
}
