//! examples/quickstart.rs on tokio: the async API (`outboxer::async_impl`) with a
//! PostgreSQL store (tokio-postgres for sends) and a RabbitMQ stream.
//!
//! ```sh
//! cargo run --example async_quickstart --features async,postgres,amqp
//! ```
//! URLs come from OUTBOXER_PG_URL and OUTBOXER_AMQP_URL (defaults: the local servers).

use amiquip::{Connection, ExchangeDeclareOptions, ExchangeType, FieldTable, QueueDeclareOptions};
use outboxer::async_impl::store::{tokio_postgres, PostgresStore};
use outboxer::async_impl::Outbox;
use outboxer::stream::{amqp, AmqpStream};
use outboxer::Message;
use std::time::Duration;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const QUEUE: &str = "outboxer-async-quickstart";

/// A consumer's queue bound to the exchange we publish to (blocking amiquip, so it
/// runs on tokio's blocking pool, like every blocking call in a tokio app should).
fn declare_queue(amqp_url: &str) -> Result<(), BoxError> {
    let mut consumer = Connection::insecure_open(amqp_url)?;
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
        QUEUE,
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
    )?;
    queue.bind(&exchange, "test.#", FieldTable::new())?;
    queue.purge()?; // leftovers of an earlier run
    consumer.close()?;
    Ok(())
}

/// What a consumer receives: payload and message id.
fn consume(amqp_url: &str, n: usize) -> Result<(), BoxError> {
    let mut consumer = Connection::insecure_open(amqp_url)?;
    let channel = consumer.open_channel(None)?;
    let queue = channel.queue_declare_passive(QUEUE)?;
    for _ in 0..n {
        match queue.get(true)? {
            Some(get) => println!(
                "consumed {:?} with message id {:?}",
                String::from_utf8_lossy(&get.delivery.body),
                get.delivery.properties.message_id()
            ),
            None => return Err("message not in the queue".into()),
        }
    }
    consumer.close()?;
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    let pg_url = std::env::var("OUTBOXER_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let amqp_url = std::env::var("OUTBOXER_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let url = amqp_url.clone();
    tokio::task::spawn_blocking(move || declare_queue(&url)).await??;

    // The data store: creates the `event_store` table (idempotent, concurrent-safe).
    let store = PostgresStore::connect(&pg_url).await?;
    store.migrate().await?;
    // The event stream: a blocking stream, used by the relay on its own thread
    // (connecting blocks, so it runs on the blocking pool).
    let url = amqp_url.clone();
    let stream = tokio::task::spawn_blocking(move || AmqpStream::connect(&url)).await??;

    let outbox = Outbox::builder()
        .store(store)
        .stream(stream)
        .check_interval(Duration::from_secs(1))
        .cleanup_interval(Duration::from_secs(5))
        .cleanup_before(Duration::from_secs(5 * 24 * 3600))
        .build()?;
    // The relay's threads; stop().await (or drop) ends them.
    let relay = outbox.start().await?;

    // A message alone, in its own transaction.
    outbox
        .send(
            Message::new(b"test payload".to_vec())
                .route(amqp::topic("test", "test.send"))
                .header("tenant", "acme"),
        )
        .await?;

    // A message in the caller's tokio-postgres transaction: it commits with the business row.
    let (mut client, connection) = tokio_postgres::connect(&pg_url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS quickstart_orders (id BIGINT PRIMARY KEY, state TEXT NOT NULL)",
        )
        .await?;
    let mut tx = client.transaction().await?;
    tx.execute(
        "INSERT INTO quickstart_orders VALUES (42, 'paid') ON CONFLICT (id) DO UPDATE SET state = 'paid'",
        &[],
    )
    .await?;
    outbox
        .send_within_tx(
            &mut tx,
            Message::new(br#"{"order":42}"#.to_vec())
                .route(amqp::topic("test", "test.orders.paid"))
                .ordering_key("order-42"),
        )
        .await?;
    tx.commit().await?;

    // The closure form: begins, runs, commits (or rolls back on Err). A failed
    // statement is a database error: `?` turns tokio-postgres' error into
    // `outboxer::Error::Database` (the closure may also return an error type of
    // your own that implements `From<outboxer::Error>`).
    outbox
        .transaction(async |tx| {
            tx.execute(
                "UPDATE quickstart_orders SET state = 'shipped' WHERE id = 42",
                &[],
            )
            .await?;
            tx.send(
                Message::new(br#"{"order":42,"state":"shipped"}"#.to_vec())
                    .route(amqp::topic("test", "test.orders.shipped"))
                    .ordering_key("order-42"),
            )
            .await
        })
        .await?;

    // Outcomes, like Go's OkChan/ErrChan; an unread channel never blocks the relay.
    let mut published = 0;
    while published < 3 {
        tokio::select! {
            ok = relay.ok().recv() => {
                let ok = ok?;
                println!("published message {} (row {})", ok.message_id, ok.id);
                published += 1;
            }
            err = relay.err().recv() => eprintln!("could not publish: {:?}", err?),
            _ = tokio::time::sleep(Duration::from_secs(30)) => {
                return Err("no outcome within 30 s".into());
            }
        }
    }
    relay.stop().await?;

    tokio::task::spawn_blocking(move || consume(&amqp_url, 3)).await??;
    let stats = outbox.stats().await?;
    println!(
        "stats: pending={} dispatched={} parked={}",
        stats.pending, stats.dispatched, stats.parked
    );
    Ok(())
}
