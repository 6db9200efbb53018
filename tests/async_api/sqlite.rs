//! SQLite through the async API (rusqlite on tokio's blocking pool).

use crate::common::unique;
use crate::conformance::{off, AsyncHarness};
use outboxer::async_impl::store::SqliteStore;
use outboxer::async_impl::{Outbox, Store};
use outboxer::store::{Lease, Store as BlockingStore};
use outboxer::{Error, Message};
use std::path::PathBuf;
use std::time::Duration;

fn path(table: &str) -> PathBuf {
    std::env::temp_dir().join(format!("outboxer_{table}.db"))
}

pub struct Lite;

impl AsyncHarness for Lite {
    type S = SqliteStore;
    async fn store(table: &str) -> SqliteStore {
        let (p, t) = (path(table), table.to_string());
        let blocking = off(move || {
            outboxer::store::SqliteStore::builder(p)
                .table(&t)
                .build()
                .expect("store")
        })
        .await;
        let s = SqliteStore::new(blocking);
        s.migrate().await.expect("migrate");
        s
    }
    fn drop_table(table: &str) {
        for ext in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{ext}", path(table).display()));
        }
    }
}

async_store_conformance!(Lite);

/// The closure form's transaction carries the caller's rows too: both commit, or
/// neither.
#[tokio::test]
async fn business_rows_and_messages_commit_together() {
    let t = unique("a_lite_tx");
    let store = Lite::store(&t).await;
    let outbox = Outbox::builder()
        .store(store.clone())
        .build()
        .expect("outbox");
    let r: Result<(), Error> = outbox
        .transaction(async |tx| {
            tx.tx()
                .with_conn(|c| {
                    c.execute_batch(
                        "CREATE TABLE orders (id INTEGER); INSERT INTO orders VALUES (1)",
                    )
                    .map_err(|e| Error::Rejected(e.to_string()))
                })
                .await?;
            tx.send(Message::new(b"rolled back".to_vec())).await?;
            Err(Error::Rejected("user error".into()))
        })
        .await;
    assert!(matches!(r, Err(Error::Rejected(_))));
    let kept = outbox
        .transaction(async |tx| {
            tx.tx()
                .with_conn(|c| {
                    c.execute_batch(
                        "CREATE TABLE orders (id INTEGER); INSERT INTO orders VALUES (2)",
                    )
                    .map_err(|e| Error::Rejected(e.to_string()))
                })
                .await?;
            tx.send(Message::new(b"committed".to_vec())).await
        })
        .await
        .expect("commit");
    let b = store.blocking().clone();
    let got = off(move || b.claim(&Lease::new(Duration::from_secs(60)), 10.into()))
        .await
        .expect("claim")
        .messages;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].message_id, kept);
    let p = path(&t);
    let ids: Vec<i64> = off(move || {
        let c = outboxer::store::rusqlite::Connection::open(p).expect("open");
        let mut st = c.prepare("SELECT id FROM orders").expect("prepare");
        let rows = st.query_map([], |r| r.get(0)).expect("query");
        rows.collect::<Result<Vec<i64>, _>>().expect("rows")
    })
    .await;
    assert_eq!(ids, vec![2], "only the committed business row");
    Lite::drop_table(&t);
}
