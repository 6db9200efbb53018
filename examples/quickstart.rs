use outboxer::store::PostgresStore;
use outboxer::stream::{amqp, AmqpStream};
use outboxer::{Message, Outbox};
use std::time::Duration;

const DATABASE: &str = "postgres://postgres@127.0.0.1:5432/test";
const BROKER: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const QUEUE: &str = "quickstart";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The consumer's queue. Publishes are `mandatory`: a message that no queue
    // receives is a failure, not a silent drop. (Exclusive: it goes when we close.)
    let mut rabbit = amiquip::Connection::insecure_open(BROKER)?;
    let channel = rabbit.open_channel(None)?;
    let options = amiquip::QueueDeclareOptions {
        exclusive: true,
        ..Default::default()
    };
    let queue = channel.queue_declare(QUEUE, options)?;

    // The store creates its table, `event_store` (idempotent, safe when run concurrently).
    let store = PostgresStore::connect(DATABASE)?;
    store.migrate()?;
    let outbox = Outbox::builder()
        .store(store)
        .stream(AmqpStream::connect(BROKER)?)
        .build()?;
    let relay = outbox.start()?; // the relay's threads; stop() (or drop) joins them

    // A message on its own, in its own transaction...
    let first = outbox.send(Message::new("hello").route(amqp::queue(QUEUE)))?;

    // ...and one inside your transaction: published only if the transaction commits.
    let mut db = postgres::Client::connect(DATABASE, postgres::NoTls)?;
    db.batch_execute(
        "CREATE TABLE IF NOT EXISTS quickstart_orders (id BIGINT PRIMARY KEY, state TEXT)",
    )?;
    let mut tx = db.transaction()?;
    tx.execute(
        "INSERT INTO quickstart_orders VALUES (42, 'paid') ON CONFLICT (id) DO UPDATE SET state = 'paid'",
        &[],
    )?;
    let order = Message::new(r#"{"order":42,"state":"paid"}"#).route(amqp::queue(QUEUE));
    let second = outbox.send_within_tx(&mut tx, order)?;
    tx.commit()?;

    // Outcomes, like Go's OkChan / ErrChan: a message is reported once the broker
    // confirmed it and the relay marked it dispatched.
    let mut waiting = vec![first, second];
    while !waiting.is_empty() {
        match relay.ok().recv_timeout(Duration::from_secs(10)) {
            Ok(delivered) => {
                waiting.retain(|id| *id != delivered.message_id);
                println!("published {}", delivered.message_id);
            }
            Err(_) => {
                let failure = relay.err().try_recv();
                return Err(format!("not published within 10 s: {failure:?}").into());
            }
        }
    }
    relay.stop()?;

    // What the consumer receives: the payload, and the message id to de-duplicate by.
    for _ in 0..2 {
        let got = queue.get(true)?.ok_or("the queue is empty")?;
        let body = String::from_utf8_lossy(&got.delivery.body);
        let id = got.delivery.properties.message_id().as_deref();
        println!("consumed {body} (message id {})", id.unwrap_or("-"));
    }
    rabbit.close()?;
    Ok(())
}
