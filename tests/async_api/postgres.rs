//! PostgreSQL through the async API (tokio-postgres for sends).

use crate::common::{drop_table, pg_url, unique};
use crate::conformance::{off, AsyncHarness};
use outboxer::async_impl::store::{tokio_postgres, PostgresStore};
use outboxer::async_impl::{Outbox, Store};
use outboxer::store::{Lease, Store as BlockingStore};
use outboxer::{Error, Message};
use std::time::Duration;

pub struct Pg;

impl AsyncHarness for Pg {
    type S = PostgresStore;
    async fn store(table: &str) -> PostgresStore {
        let s = PostgresStore::builder(&pg_url())
            .table(table)
            .build()
            .await
            .expect("store");
        s.migrate().await.expect("migrate");
        s
    }
    /// On a thread of its own: the blocking `postgres` client cannot run on a
    /// runtime thread.
    fn drop_table(table: &str) {
        let t = table.to_string();
        std::thread::spawn(move || drop_table(&t))
            .join()
            .expect("drop table");
    }
}

async_store_conformance!(Pg);

/// The caller's own tokio-postgres transaction: business row and message commit
/// together, or roll back together.
#[tokio::test]
async fn send_within_the_callers_transaction() {
    let t = unique("a_tx");
    let store = Pg::store(&t).await;
    let outbox = Outbox::builder()
        .store(store.clone())
        .build()
        .expect("outbox");
    let (mut client, conn) = tokio_postgres::connect(&pg_url(), tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    let side = format!("{t}_orders");
    client
        .batch_execute(&format!("CREATE TABLE \"{side}\" (id BIGINT)"))
        .await
        .expect("create");

    let mut tx = client.transaction().await.expect("begin");
    tx.execute(&format!("INSERT INTO \"{side}\" VALUES (1)"), &[])
        .await
        .expect("insert");
    outbox
        .send_within_tx(&mut tx, Message::new(b"rolled back".to_vec()))
        .await
        .expect("send");
    tx.rollback().await.expect("rollback");

    let mut tx = client.transaction().await.expect("begin");
    tx.execute(&format!("INSERT INTO \"{side}\" VALUES (2)"), &[])
        .await
        .expect("insert");
    let kept = outbox
        .send_within_tx(
            &mut tx,
            Message::new(b"committed".to_vec()).ordering_key("o-2"),
        )
        .await
        .expect("send");
    // Not visible to others before commit.
    let b = store.blocking().clone();
    let early = off(move || b.claim(&Lease::new(Duration::from_secs(60)), 10.into())).await;
    assert!(
        early.expect("claim").messages.is_empty(),
        "uncommitted rows are not claimed"
    );
    tx.commit().await.expect("commit");

    let rows = client
        .query(&format!("SELECT id FROM \"{side}\""), &[])
        .await
        .expect("select");
    assert_eq!(rows.len(), 1);
    let b = store.blocking().clone();
    let got = off(move || b.claim(&Lease::new(Duration::from_secs(60)), 10.into()))
        .await
        .expect("claim")
        .messages;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].message_id, kept);
    assert_eq!(got[0].payload, b"committed");
    client
        .batch_execute(&format!("DROP TABLE \"{side}\""))
        .await
        .expect("drop");
    Pg::drop_table(&t);
}

#[tokio::test]
async fn bad_settings_are_typed_errors() {
    match PostgresStore::builder(&pg_url())
        .table("x; DROP TABLE y")
        .build()
        .await
    {
        Err(Error::InvalidIdentifier { .. }) => {}
        other => panic!("{other:?}"),
    }
    match PostgresStore::connect("postgres://postgres:secret@127.0.0.1:1/test").await {
        Err(e @ Error::Database { .. }) => assert!(!format!("{e:?}").contains("secret")),
        other => panic!("{other:?}"),
    }
    match PostgresStore::connect("postgres://[bad").await {
        Err(Error::InvalidUrl { .. }) => {}
        other => panic!("{other:?}"),
    }
    let t = unique("a_cfg");
    let store = Pg::store(&t).await;
    let r = Outbox::builder()
        .store(store.clone())
        .check_interval(Duration::ZERO)
        .build();
    assert!(matches!(r, Err(Error::Config { .. })));
    // No stream: start() is refused, not a panic.
    let o = Outbox::builder().store(store).build().expect("outbox");
    assert!(matches!(o.start().await, Err(Error::Config { .. })));
    Pg::drop_table(&t);
}

/// Outside a tokio runtime the async API answers with an error, not a panic.
#[test]
fn outside_a_runtime_is_an_error() {
    let url = pg_url();
    let r = futures_lite_block_on(PostgresStore::connect(&url));
    assert!(matches!(r, Err(Error::Config { .. })), "{r:?}");
}

/// A minimal executor that is not tokio.
fn futures_lite_block_on<F: std::future::Future>(f: F) -> F::Output {
    use std::task::{Context, Poll, Wake, Waker};
    struct W(std::thread::Thread);
    impl Wake for W {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(std::sync::Arc::new(W(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        match f.as_mut().poll(&mut cx) {
            Poll::Ready(v) => return v,
            Poll::Pending => std::thread::park_timeout(Duration::from_millis(10)),
        }
    }
}

/// The outbox's futures are `Send`: they run in spawned tasks, closure form included.
#[tokio::test]
async fn futures_run_in_spawned_tasks() {
    let t = unique("a_spawn");
    let outbox = Outbox::builder()
        .store(Pg::store(&t).await)
        .build()
        .expect("outbox");
    let o = outbox.clone();
    let ids = tokio::spawn(async move {
        let a = o.send(Message::new(b"a".to_vec())).await?;
        let b = o
            .transaction(async |tx| {
                tx.execute("SELECT 1", &[])
                    .await
                    .map_err(|e| Error::Rejected(e.to_string()))?;
                tx.send(Message::new(b"b".to_vec())).await
            })
            .await?;
        Ok::<_, Error>(vec![a, b])
    })
    .await
    .expect("task")
    .expect("sends");
    let b = outbox.store().blocking().clone();
    let got = off(move || b.claim(&Lease::new(Duration::from_secs(60)), 10.into()))
        .await
        .expect("claim")
        .messages;
    assert_eq!(got.iter().map(|m| m.message_id).collect::<Vec<_>>(), ids);
    Pg::drop_table(&t);
}

/// Typed payloads through the async API: `Message::json` builds the same message,
/// sent with `.await`; a value that does not serialize is `Error::Serialize`, and
/// in the closure form `?` on it rolls back the business row with nothing stored.
#[tokio::test]
async fn json_messages_and_values_that_do_not_serialize() {
    use std::collections::BTreeMap;
    let t = unique("a_json");
    let outbox = Outbox::builder()
        .store(Pg::store(&t).await)
        .build()
        .expect("outbox");
    let side = format!("{t}_orders");
    outbox
        .transaction(async |tx| {
            tx.batch_execute(&format!("CREATE TABLE \"{side}\" (id BIGINT)"))
                .await
                .map_err(|e| Error::Rejected(e.to_string()))
        })
        .await
        .expect("create");
    let by_pair = BTreeMap::from([((1, 2), "a map with non-string keys")]);
    let r = outbox
        .transaction(async |tx| {
            tx.execute(&format!("INSERT INTO \"{side}\" VALUES (1)"), &[])
                .await
                .map_err(|e| Error::Rejected(e.to_string()))?;
            tx.send(Message::json(&by_pair)?).await
        })
        .await;
    assert!(matches!(r, Err(Error::Serialize { .. })), "{r:?}");
    let sent = outbox
        .send(Message::json(&BTreeMap::from([("order", 42)])).expect("serializes"))
        .await
        .expect("send");
    let rows = outbox
        .transaction(async |tx| {
            tx.query_one(&format!("SELECT count(*) FROM \"{side}\""), &[])
                .await
                .map(|r| r.get::<_, i64>(0))
                .map_err(|e| Error::Rejected(e.to_string()))
        })
        .await
        .expect("count");
    assert_eq!(rows, 0, "the business row rolled back");
    let b = outbox.store().blocking().clone();
    let got = off(move || b.claim(&Lease::new(Duration::from_secs(60)), 10.into()))
        .await
        .expect("claim")
        .messages;
    assert_eq!(got.len(), 1, "only the message that serialized");
    assert_eq!(got[0].message_id, sent);
    assert_eq!(got[0].payload, br#"{"order":42}"#);
    assert_eq!(
        got[0]
            .headers
            .get(outboxer::CONTENT_TYPE_HEADER)
            .map(String::as_str),
        Some(outboxer::JSON_CONTENT_TYPE)
    );
    let s = side.clone();
    std::thread::spawn(move || crate::common::drop_table(&s))
        .join()
        .expect("drop table");
    Pg::drop_table(&t);
}
