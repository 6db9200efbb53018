//! PostgreSQL through the application's sqlx pool and transactions
//! (`SqlxStore<sqlx::Postgres>`, feature `sqlx-postgres`): the async store suite,
//! then what only a caller's sqlx transaction shows (rollback, per-key commit
//! order across transactions, rows equal to the store's, typed errors).

use crate::common::{drop_table, pg_url, unique, Sink};
use crate::conformance::{off, AsyncHarness};
use outboxer::async_impl::store::sqlx::{self, PgPool, Row};
use outboxer::async_impl::store::SqlxStore;
use outboxer::async_impl::{Outbox, Store};
use outboxer::store::{Lease, PostgresStore, Store as BlockingStore};
use outboxer::stream::{amqp, AmqpStream};
use outboxer::{Error, Message, MessageId};
use std::time::Duration;

pub struct SqlxPg;

async fn pool() -> PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&pg_url())
        .await
        .expect("PostgreSQL on 127.0.0.1:5432 (see README)")
}

impl AsyncHarness for SqlxPg {
    type S = SqlxStore<sqlx::Postgres>;
    async fn store(table: &str) -> SqlxStore<sqlx::Postgres> {
        let (url, t) = (pg_url(), table.to_string());
        let s = SqlxStore::open(pool().await, move || {
            PostgresStore::builder(&url).table(&t).build()
        })
        .await
        .expect("store");
        s.migrate().await.expect("migrate");
        s
    }
    fn drop_table(table: &str) {
        let t = table.to_string();
        std::thread::spawn(move || drop_table(&t))
            .join()
            .expect("drop table");
    }
}

async_store_conformance!(SqlxPg);

async fn claim(s: &SqlxStore<sqlx::Postgres>) -> Vec<MessageId> {
    let b = s.blocking().clone();
    off(move || b.claim(&Lease::new(Duration::from_secs(60)), 100.into()))
        .await
        .expect("claim")
        .messages
        .iter()
        .map(|m| m.message_id)
        .collect()
}

/// A store on table `t`, its sqlx pool, and an outbox (no stream) over it.
async fn setup(
    t: &str,
) -> (
    SqlxStore<sqlx::Postgres>,
    PgPool,
    Outbox<SqlxStore<sqlx::Postgres>>,
) {
    let store = SqlxPg::store(t).await;
    let pool = store.pool().clone();
    let outbox = Outbox::builder()
        .store(store.clone())
        .build()
        .expect("outbox");
    (store, pool, outbox)
}

async fn count(pool: &PgPool, table: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM \"{table}\""))
        .fetch_one(pool)
        .await
        .expect("count")
}

/// The caller's sqlx transaction: its business row and the message roll back
/// together and commit together, by hand and in the closure form.
#[tokio::test]
async fn joins_the_callers_sqlx_transaction() {
    let t = unique("sqlx_tx");
    let (store, pool, outbox) = setup(&t).await;
    let side = format!("{t}_orders");
    sqlx::query(&format!("CREATE TABLE \"{side}\" (id BIGINT)"))
        .execute(&pool)
        .await
        .expect("create");
    let insert = format!("INSERT INTO \"{side}\" VALUES ($1)");

    let mut tx = pool.begin().await.expect("begin");
    sqlx::query(&insert)
        .bind(1_i64)
        .execute(&mut *tx)
        .await
        .expect("insert");
    outbox
        .send_within_tx(
            &mut tx,
            Message::new(b"rolled back".to_vec()).ordering_key("o"),
        )
        .await
        .expect("send");
    tx.rollback().await.expect("rollback");
    // Dropped without commit: sqlx rolls back.
    let mut tx = pool.begin().await.expect("begin");
    outbox
        .send_within_tx(&mut tx, Message::new(b"dropped".to_vec()))
        .await
        .expect("send");
    drop(tx);
    let r: Result<(), Error> = outbox
        .transaction(async |tx| {
            sqlx::query(&insert).bind(3_i64).execute(&mut ***tx).await?;
            tx.send(Message::new(b"closure rolled back".to_vec()))
                .await?;
            Err(Error::Rejected("the handler failed".into()))
        })
        .await;
    assert!(matches!(r, Err(Error::Rejected(_))), "{r:?}");
    assert_eq!(count(&pool, &t).await, 0, "nothing stored");
    assert!(claim(&store).await.is_empty(), "nothing to relay");

    let mut tx = pool.begin().await.expect("begin");
    sqlx::query(&insert)
        .bind(2_i64)
        .execute(&mut *tx)
        .await
        .expect("insert");
    let kept = outbox
        .send_within_tx(
            &mut tx,
            Message::new(b"committed".to_vec()).ordering_key("o"),
        )
        .await
        .expect("send");
    assert!(
        claim(&store).await.is_empty(),
        "uncommitted rows are not claimed"
    );
    tx.commit().await.expect("commit");
    let in_closure = outbox
        .transaction(async |tx| {
            sqlx::query(&insert).bind(4_i64).execute(&mut ***tx).await?;
            tx.send(Message::new(b"closure committed".to_vec())).await
        })
        .await
        .expect("closure commits");

    let ids: Vec<i64> = sqlx::query_scalar(&format!("SELECT id FROM \"{side}\" ORDER BY id"))
        .fetch_all(&pool)
        .await
        .expect("select");
    assert_eq!(
        ids,
        vec![2, 4],
        "business rows of the committed transactions only"
    );
    assert_eq!(claim(&store).await, vec![kept, in_closure]);
    sqlx::query(&format!("DROP TABLE \"{side}\""))
        .execute(&pool)
        .await
        .expect("drop");
    SqlxPg::drop_table(&t);
}

/// Per-key commit order: a second sqlx transaction enqueueing the same key waits
/// for the first to end (the store's advisory lock on the key's hash), so ids
/// follow commit order; other keys do not wait.
#[tokio::test]
async fn per_key_commit_order_across_sqlx_transactions() {
    let t = unique("sqlx_order");
    let (store, pool, outbox) = setup(&t).await;

    let mut first = pool.begin().await.expect("begin");
    let a = outbox
        .send_within_tx(&mut first, Message::new(b"a".to_vec()).ordering_key("k"))
        .await
        .expect("send a");

    let (o, p) = (outbox.clone(), pool.clone());
    let second = tokio::spawn(async move {
        let mut tx = p.begin().await.expect("begin");
        let b = o
            .send_within_tx(&mut tx, Message::new(b"b".to_vec()).ordering_key("k"))
            .await
            .expect("send b");
        tx.commit().await.expect("commit b");
        b
    });
    // Another key is not held up by the first transaction.
    let mut other = pool.begin().await.expect("begin");
    let c = tokio::time::timeout(
        Duration::from_secs(5),
        outbox.send_within_tx(&mut other, Message::new(b"c".to_vec()).ordering_key("j")),
    )
    .await
    .expect("another key does not wait")
    .expect("send c");
    other.commit().await.expect("commit c");

    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !second.is_finished(),
        "the same key waits for the first transaction"
    );
    assert_eq!(claim(&store).await, vec![c], "only c is committed");

    first.commit().await.expect("commit a");
    let b = tokio::time::timeout(Duration::from_secs(10), second)
        .await
        .expect("b goes on once a commits")
        .expect("task");
    let rows: Vec<(i64, uuid::Uuid)> = sqlx::query_as(&format!(
        "SELECT id, message_id FROM \"{t}\" WHERE ordering_key = 'k' ORDER BY id"
    ))
    .fetch_all(&pool)
    .await
    .expect("rows");
    let order: Vec<MessageId> = rows.iter().map(|r| MessageId::from_uuid(r.1)).collect();
    assert_eq!(order, vec![a, b], "ids follow commit order");
    SqlxPg::drop_table(&t);
}

/// A message that `send` refuses (a malformed trace header) is a typed error on
/// every path, and nothing of it is stored even when the transaction commits.
#[tokio::test]
async fn a_bad_message_is_a_typed_error_with_nothing_stored() {
    let t = unique("sqlx_bad");
    let (_store, pool, outbox) = setup(&t).await;
    let bad = || Message::new(b"x".to_vec()).header("traceparent", "not a traceparent");

    let mut tx = pool.begin().await.expect("begin");
    let r = outbox.send_within_tx(&mut tx, bad()).await;
    assert!(matches!(r, Err(Error::InvalidHeader { .. })), "{r:?}");
    tx.commit().await.expect("the transaction is still usable");
    let r = outbox.send(bad()).await;
    assert!(matches!(r, Err(Error::InvalidHeader { .. })), "{r:?}");
    let r = outbox
        .send_batch(&[Message::new(b"ok".to_vec()), bad()])
        .await;
    assert!(matches!(r, Err(Error::InvalidHeader { .. })), "{r:?}");
    let r = outbox.transaction(async |tx| tx.send(bad()).await).await;
    assert!(matches!(r, Err(Error::InvalidHeader { .. })), "{r:?}");
    assert_eq!(count(&pool, &t).await, 0, "nothing stored");
    SqlxPg::drop_table(&t);
}

/// A row written through sqlx is the row the crate's store writes for the same
/// message: every column but the identities and timestamps, one row and batches.
#[tokio::test]
async fn rows_equal_the_stores_rows() {
    let t = unique("sqlx_rows");
    let (store, pool, outbox) = setup(&t).await;
    let msgs = vec![
        Message::new(vec![0u8, 159, 146, 255])
            .header("ключ", "значение 🎉")
            .option("exchange.name", "orders")
            .option("exchange.durable", true)
            .ordering_key("k1"),
        Message::new(b"plain".to_vec()),
        Message::new(Vec::new()).header("h", "").ordering_key(""),
    ];
    // Through sqlx: one by one (insert_one) and as a batch (unnest).
    let mut tx = pool.begin().await.expect("begin");
    for m in &msgs {
        outbox
            .send_within_tx(&mut tx, m.clone())
            .await
            .expect("send");
    }
    tx.commit().await.expect("commit");
    outbox.send_batch(&msgs).await.expect("batch");
    // Through the crate's blocking store, the same messages twice.
    let b = store.blocking().clone();
    let again = msgs.clone();
    off(move || {
        for m in &again {
            b.enqueue(std::slice::from_ref(m)).expect("enqueue");
        }
        b.enqueue(&again).expect("enqueue batch")
    })
    .await;

    let columns = "payload, headers::text, options::text, ordering_key, status, attempts::text, \
                   last_error, locked_by::text, locked_until::text, dispatched_at::text, \
                   (available_at = created_at)::text";
    let rows = sqlx::query(&format!("SELECT {columns} FROM \"{t}\" ORDER BY id"))
        .fetch_all(&pool)
        .await
        .expect("rows");
    let n = msgs.len();
    assert_eq!(rows.len(), 4 * n);
    let text = |r: &sqlx::postgres::PgRow| -> Vec<Option<String>> {
        (1..11).map(|i| r.get::<Option<String>, _>(i)).collect()
    };
    for i in 0..2 * n {
        let (ours, theirs) = (&rows[i], &rows[i + 2 * n]);
        assert_eq!(
            ours.get::<Vec<u8>, _>(0),
            theirs.get::<Vec<u8>, _>(0),
            "payload of row {i}"
        );
        assert_eq!(ours.get::<Vec<u8>, _>(0), msgs[i % n].payload());
        assert_eq!(text(ours), text(theirs), "row {i}");
    }
    SqlxPg::drop_table(&t);
}

/// `send_within_tx` wakes relays at commit (the store's NOTIFY, sent in the
/// caller's transaction): delivered long before the 30 s polling fallback.
#[tokio::test]
async fn commit_wakes_the_relay() {
    let t = unique("sqlx_wake");
    let ex = unique("sqlx_ex");
    let sink = {
        let ex = ex.clone();
        off(move || Sink::new(&ex, "#")).await
    };
    let store = SqlxPg::store(&t).await;
    let pool = store.pool().clone();
    let stream = off(|| AmqpStream::connect(&crate::common::amqp_url()).expect("RabbitMQ")).await;
    let outbox = Outbox::builder()
        .store(store)
        .stream(stream)
        .check_interval(Duration::from_secs(30))
        .build()
        .expect("outbox");
    let relay = outbox.start().await.expect("start");
    // Past the relay's first claim, so that only a wake-up brings the next one.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let mut tx = pool.begin().await.expect("begin");
    let id = outbox
        .send_within_tx(
            &mut tx,
            Message::new(b"woken".to_vec()).route(amqp::topic(&ex, "sqlx.wake")),
        )
        .await
        .expect("send");
    let committed = std::time::Instant::now();
    tx.commit().await.expect("commit");
    let got = off(move || sink.collect(1, Duration::from_secs(10))).await;
    assert_eq!(got.len(), 1, "delivered");
    assert_eq!(got[0].message_id, Some(id.to_string()));
    assert_eq!(got[0].body, b"woken");
    assert!(
        committed.elapsed() < Duration::from_secs(10),
        "woken, not polled: {:?}",
        committed.elapsed()
    );
    relay.stop().await.expect("stop");
    SqlxPg::drop_table(&t);
}
