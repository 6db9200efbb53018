//! The embedded setup: no database server, one SQLite file, messages enqueued in
//! the caller's `rusqlite::Transaction`, relayed to RabbitMQ.
//!
//! ```sh
//! cargo run --example sqlite --features sqlite,amqp
//! ```
//! OUTBOXER_SQLITE_PATH (default `outboxer-example.db` in the temp folder) and
//! OUTBOXER_AMQP_URL (default the local RabbitMQ).

use outboxer::store::rusqlite::{Connection, TransactionBehavior};
use outboxer::store::SqliteStore;
use outboxer::stream::{amqp, AmqpStream};
use outboxer::{Message, Outbox};
use std::time::Duration;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::var("OUTBOXER_SQLITE_PATH").unwrap_or_else(|_| {
        std::env::temp_dir()
            .join("outboxer-example.db")
            .to_string_lossy()
            .into_owned()
    });
    let amqp_url = std::env::var("OUTBOXER_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());

    let store = SqliteStore::open(&path)?;
    store.migrate()?;
    let outbox = Outbox::builder()
        .store(store)
        // Not mandatory: no queue is bound in this example.
        .stream(AmqpStream::builder(&amqp_url).mandatory(false).build()?)
        .check_interval(Duration::from_millis(200))
        .build()?;
    let relay = outbox.start()?;

    // The application's own connection: the business row and the message commit together.
    let mut conn = Connection::open(&path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS example_orders (id INTEGER PRIMARY KEY, state TEXT)",
    )?;
    // IMMEDIATE: take the write lock up front, as every SQLite writer should.
    let mut tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute(
        "INSERT OR REPLACE INTO example_orders VALUES (42, 'paid')",
        [],
    )?;
    let id = outbox.send_within_tx(
        &mut tx,
        Message::new(br#"{"order":42}"#.to_vec())
            .route(amqp::topic("orders", "orders.paid"))
            .ordering_key("order-42"),
    )?;
    tx.commit()?;
    println!("enqueued {id} in {path}");

    let delivered = relay.ok().recv_timeout(Duration::from_secs(30))?;
    println!("published {} (row {})", delivered.message_id, delivered.id);
    relay.stop()?;
    Ok(())
}
