//! The Go outboxer README's example, in Rust: PostgreSQL store, RabbitMQ stream.
//!
//! ```sh
//! cargo run --example quickstart --features postgres,amqp
//! ```
//! URLs come from OUTBOXER_PG_URL and OUTBOXER_AMQP_URL (defaults: the local servers).

use amiquip::{Connection, ExchangeDeclareOptions, ExchangeType, FieldTable, QueueDeclareOptions};
use outboxer::store::PostgresStore;
use outboxer::stream::{amqp, AmqpStream};
use outboxer::{Message, Outbox};
use std::time::Duration;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pg_url = std::env::var("OUTBOXER_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let amqp_url = std::env::var("OUTBOXER_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());

    // A consumer's queue, bound to the exchange we publish to: messages are published
    // `mandatory`, so a message no queue would receive is a failure, not a silent drop.
    let mut consumer = Connection::insecure_open(&amqp_url)?;
    let channel = consumer.open_channel(None)?;
    let exchange = channel.exchange_declare(
        ExchangeType::Topic,
        "test",
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
    )?;
    let queue = channel.queue_declare(
        "outboxer-quickstart",
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
    )?;
    queue.bind(&exchange, "test.#", FieldTable::new())?;
    queue.purge()?; // leftovers of an earlier run

    // The data store: creates the `event_store` table (idempotent, concurrent-safe).
    let store = PostgresStore::connect(&pg_url)?;
    store.migrate()?;
    // The event stream.
    let stream = AmqpStream::connect(&amqp_url)?;

    let outbox = Outbox::builder()
        .store(store)
        .stream(stream)
        .check_interval(Duration::from_secs(1))
        .cleanup_interval(Duration::from_secs(5))
        .cleanup_before(Duration::from_secs(5 * 24 * 3600))
        .build()?;
    // The relay and cleanup threads; stop() (or drop) joins them.
    let relay = outbox.start()?;

    // A message alone, in its own transaction.
    outbox.send(
        Message::new(b"test payload".to_vec())
            .route(amqp::topic("test", "test.send"))
            .header("tenant", "acme"),
    )?;

    // A message in the caller's transaction: it commits with the business row.
    let mut client = postgres::Client::connect(&pg_url, postgres::NoTls)?;
    client.batch_execute(
        "CREATE TABLE IF NOT EXISTS quickstart_orders (id BIGINT PRIMARY KEY, state TEXT NOT NULL)",
    )?;
    let mut tx = client.transaction()?;
    tx.execute(
        "INSERT INTO quickstart_orders VALUES (42, 'paid') ON CONFLICT (id) DO UPDATE SET state = 'paid'",
        &[],
    )?;
    outbox.send_within_tx(
        &mut tx,
        Message::new(br#"{"order":42}"#.to_vec())
            .route(amqp::topic("test", "test.orders.paid"))
            .ordering_key("order-42"),
    )?;
    tx.commit()?;

    // Outcomes, like Go's OkChan/ErrChan; an unread channel never blocks the relay.
    let mut published = 0;
    while published < 2 {
        crossbeam_channel::select! {
            recv(relay.ok()) -> ok => {
                let ok = ok?;
                println!("published message {} (row {})", ok.message_id, ok.id);
                published += 1;
            }
            recv(relay.err()) -> err => eprintln!("could not publish: {:?}", err?),
            default(Duration::from_secs(30)) => return Err("no outcome within 30 s".into()),
        }
    }
    relay.stop()?;

    // What a consumer receives: payload, headers and the message id.
    for _ in 0..2 {
        match queue.get(true)? {
            Some(get) => println!(
                "consumed {:?} with message id {:?}",
                String::from_utf8_lossy(&get.delivery.body),
                get.delivery.properties.message_id()
            ),
            None => return Err("message not in the queue".into()),
        }
    }
    let stats = outbox.stats()?;
    println!(
        "stats: pending={} dispatched={} parked={}",
        stats.pending, stats.dispatched, stats.parked
    );
    consumer.close()?;
    Ok(())
}
