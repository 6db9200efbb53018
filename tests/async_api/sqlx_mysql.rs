//! MySQL / MariaDB through the application's sqlx pool and transactions
//! (`SqlxStore<sqlx::MySql>`, feature `sqlx-mysql`): the async store suite, then
//! what only a caller's sqlx transaction shows (rollback, per-key commit order
//! across transactions, rows equal to the store's, typed errors).

use crate::common::unique;
use crate::conformance::{off, AsyncHarness};
use outboxer::async_impl::store::sqlx::{self, MySqlPool, Row};
use outboxer::async_impl::store::SqlxStore;
use outboxer::async_impl::{Outbox, Store};
use outboxer::store::{Lease, MysqlStore, Store as BlockingStore};
use outboxer::{Error, Message, MessageId};
use std::time::Duration;

fn url() -> String {
    std::env::var("OUTBOXER_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into())
}

pub struct SqlxMy;

async fn pool() -> MySqlPool {
    sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&url())
        .await
        .expect("MariaDB on 127.0.0.1:3306 (see README)")
}

impl AsyncHarness for SqlxMy {
    type S = SqlxStore<sqlx::MySql>;
    async fn store(table: &str) -> SqlxStore<sqlx::MySql> {
        let t = table.to_string();
        let s = SqlxStore::open(pool().await, move || {
            MysqlStore::builder(&url()).table(&t).build()
        })
        .await
        .expect("store");
        s.migrate().await.expect("migrate");
        s
    }
    fn drop_table(table: &str) {
        let t = table.to_string();
        std::thread::spawn(move || {
            use mysql::prelude::Queryable;
            let pool = mysql::Pool::new(url().as_str()).expect("pool");
            let mut c = pool.get_conn().expect("connect");
            c.query_drop(format!("DROP TABLE IF EXISTS `{t}`, `{t}_keys`"))
                .expect("drop");
        })
        .join()
        .expect("drop table");
    }
}

async_store_conformance!(SqlxMy);

async fn claim(s: &SqlxStore<sqlx::MySql>) -> Vec<MessageId> {
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
    SqlxStore<sqlx::MySql>,
    MySqlPool,
    Outbox<SqlxStore<sqlx::MySql>>,
) {
    let store = SqlxMy::store(t).await;
    let pool = store.pool().clone();
    let outbox = Outbox::builder()
        .store(store.clone())
        .build()
        .expect("outbox");
    (store, pool, outbox)
}

async fn count(pool: &MySqlPool, table: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM `{table}`"))
        .fetch_one(pool)
        .await
        .expect("count")
}

/// The caller's sqlx transaction: its business row and the message roll back
/// together and commit together, by hand and in the closure form.
#[tokio::test]
async fn joins_the_callers_sqlx_transaction() {
    let t = unique("sqlx_my_tx");
    let (store, pool, outbox) = setup(&t).await;
    let side = format!("{t}_orders");
    sqlx::query(&format!("CREATE TABLE `{side}` (id BIGINT) ENGINE=InnoDB"))
        .execute(&pool)
        .await
        .expect("create");
    let insert = format!("INSERT INTO `{side}` VALUES (?)");

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

    let ids: Vec<i64> = sqlx::query_scalar(&format!("SELECT id FROM `{side}` ORDER BY id"))
        .fetch_all(&pool)
        .await
        .expect("select");
    assert_eq!(
        ids,
        vec![2, 4],
        "business rows of the committed transactions only"
    );
    assert_eq!(claim(&store).await, vec![kept, in_closure]);
    sqlx::query(&format!("DROP TABLE `{side}`"))
        .execute(&pool)
        .await
        .expect("drop");
    SqlxMy::drop_table(&t);
}

/// Per-key commit order: a second sqlx transaction enqueueing the same key waits
/// for the first to end (the store's key-bucket row lock), so ids follow commit
/// order; a key of another bucket does not wait.
#[tokio::test]
async fn per_key_commit_order_across_sqlx_transactions() {
    let t = unique("sqlx_my_order");
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
    let rows: Vec<Vec<u8>> = sqlx::query_scalar(&format!(
        "SELECT message_id FROM `{t}` WHERE ordering_key = 'k' ORDER BY id"
    ))
    .fetch_all(&pool)
    .await
    .expect("rows");
    let order: Vec<MessageId> = rows
        .iter()
        .map(|r| MessageId::from_uuid(uuid::Uuid::from_slice(r).expect("16 bytes")))
        .collect();
    assert_eq!(order, vec![a, b], "ids follow commit order");
    SqlxMy::drop_table(&t);
}

/// A message that `send` refuses (a malformed trace header) is a typed error on
/// every path, and nothing of it is stored even when the transaction commits.
#[tokio::test]
async fn a_bad_message_is_a_typed_error_with_nothing_stored() {
    let t = unique("sqlx_my_bad");
    let (_store, pool, outbox) = setup(&t).await;
    let bad = || Message::new(b"x".to_vec()).header("traceparent", "not a traceparent");

    let mut tx = pool.begin().await.expect("begin");
    let r = outbox.send_within_tx(&mut tx, bad()).await;
    assert!(matches!(r, Err(Error::InvalidHeader { .. })), "{r:?}");
    tx.commit().await.expect("the transaction is still usable");
    let r = outbox.send(bad()).await;
    assert!(matches!(r, Err(Error::InvalidHeader { .. })), "{r:?}");
    let r = outbox.transaction(async |tx| tx.send(bad()).await).await;
    assert!(matches!(r, Err(Error::InvalidHeader { .. })), "{r:?}");
    assert_eq!(count(&pool, &t).await, 0, "nothing stored");
    SqlxMy::drop_table(&t);
}

/// A row written through sqlx is the row the crate's store writes for the same
/// message: every column but the identities and timestamps, one row and batches.
#[tokio::test]
async fn rows_equal_the_stores_rows() {
    let t = unique("sqlx_my_rows");
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
    let mut tx = pool.begin().await.expect("begin");
    for m in &msgs {
        outbox
            .send_within_tx(&mut tx, m.clone())
            .await
            .expect("send");
    }
    tx.commit().await.expect("commit");
    outbox.send_batch(&msgs).await.expect("batch");
    let b = store.blocking().clone();
    let again = msgs.clone();
    off(move || {
        for m in &again {
            b.enqueue(std::slice::from_ref(m)).expect("enqueue");
        }
        b.enqueue(&again).expect("enqueue batch")
    })
    .await;

    let columns = "payload, CAST(headers AS CHAR), CAST(options AS CHAR), ordering_key, \
                   CAST(status AS CHAR), CAST(attempts AS CHAR), last_error, HEX(locked_by), \
                   CAST(locked_until AS CHAR), CAST(dispatched_at AS CHAR), \
                   CAST(dispatched AS CHAR), CAST(available_at = created_at AS CHAR)";
    let rows = sqlx::query(&format!("SELECT {columns} FROM `{t}` ORDER BY id"))
        .fetch_all(&pool)
        .await
        .expect("rows");
    let n = msgs.len();
    assert_eq!(rows.len(), 4 * n);
    let text = |r: &sqlx::mysql::MySqlRow| -> Vec<Option<String>> {
        (1..12).map(|i| r.get::<Option<String>, _>(i)).collect()
    };
    for i in 0..2 * n {
        let (ours, theirs) = (&rows[i], &rows[i + 2 * n]);
        assert_eq!(ours.get::<Vec<u8>, _>(0), msgs[i % n].payload());
        assert_eq!(ours.get::<Vec<u8>, _>(0), theirs.get::<Vec<u8>, _>(0));
        assert_eq!(text(ours), text(theirs), "row {i}");
    }
    SqlxMy::drop_table(&t);
}
