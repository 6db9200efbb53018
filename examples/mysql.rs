//! MySQL / MariaDB store with the RabbitMQ stream, messages enqueued inside the
//! caller's `mysql::Transaction`.
//!
//! ```sh
//! cargo run --example mysql --features mysql,amqp
//! ```
//! URLs: OUTBOXER_MYSQL_URL (default `mysql://root@127.0.0.1:3306/test`) and
//! OUTBOXER_AMQP_URL (default the local RabbitMQ).

use mysql::prelude::Queryable;
use outboxer::store::MysqlStore;
use outboxer::stream::{amqp, AmqpStream};
use outboxer::{Message, Outbox};
use std::time::Duration;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("OUTBOXER_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into());
    let amqp_url = std::env::var("OUTBOXER_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());

    let store = MysqlStore::builder(&url).table("event_store").build()?;
    store.migrate()?;
    let outbox = Outbox::builder()
        .store(store)
        // Not mandatory here: no queue is bound in this example, and an unroutable
        // mandatory message would be retried and finally parked.
        .stream(AmqpStream::builder(&amqp_url).mandatory(false).build()?)
        .check_interval(Duration::from_millis(200))
        .build()?;
    let relay = outbox.start()?;

    // The business row and the message commit together.
    let pool = mysql::Pool::new(url.as_str())?;
    let mut conn = pool.get_conn()?;
    conn.query_drop(
        "CREATE TABLE IF NOT EXISTS example_orders (id BIGINT PRIMARY KEY, state VARCHAR(16))",
    )?;
    let mut tx = conn.start_transaction(mysql::TxOpts::default())?;
    tx.query_drop("REPLACE INTO example_orders VALUES (42, 'paid')")?;
    let id = outbox.send_within_tx(
        &mut tx,
        Message::new(br#"{"order":42}"#.to_vec())
            .route(amqp::topic("orders", "orders.paid"))
            .ordering_key("order-42"),
    )?;
    tx.commit()?;
    println!("enqueued {id}");

    // MySQL has no LISTEN/NOTIFY: the relay finds it at the next poll.
    let delivered = relay.ok().recv_timeout(Duration::from_secs(30))?;
    println!("published {} (row {})", delivered.message_id, delivered.id);
    relay.stop()?;
    Ok(())
}
