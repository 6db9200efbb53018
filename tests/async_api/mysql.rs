//! MySQL / MariaDB through the async API (mysql_async for sends).

use crate::common::unique;
use crate::conformance::{off, AsyncHarness};
use outboxer::async_impl::store::{mysql_async, MysqlStore};
use outboxer::async_impl::{Outbox, Store};
use outboxer::store::{Lease, Store as BlockingStore};
use outboxer::{Error, Message};
use std::time::Duration;

fn url() -> String {
    std::env::var("OUTBOXER_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into())
}

pub struct My;

impl AsyncHarness for My {
    type S = MysqlStore;
    async fn store(table: &str) -> MysqlStore {
        let s = MysqlStore::with_table(&url(), table).await.expect("store");
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

async_store_conformance!(My);

/// The caller's own mysql_async transaction: business row and message commit
/// together, or roll back together.
#[tokio::test]
async fn send_within_the_callers_transaction() {
    use mysql_async::prelude::Queryable;
    let t = unique("a_my_tx");
    let store = My::store(&t).await;
    let outbox = Outbox::builder()
        .store(store.clone())
        .build()
        .expect("outbox");
    let pool = mysql_async::Pool::new(url().as_str());
    let side = format!("{t}_orders");
    let mut conn = pool.get_conn().await.expect("connect");
    conn.query_drop(format!("CREATE TABLE `{side}` (id BIGINT)"))
        .await
        .expect("create");
    drop(conn);

    let mut tx = pool
        .start_transaction(Default::default())
        .await
        .expect("begin");
    tx.query_drop(format!("INSERT INTO `{side}` VALUES (1)"))
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

    let mut tx = pool
        .start_transaction(Default::default())
        .await
        .expect("begin");
    tx.query_drop(format!("INSERT INTO `{side}` VALUES (2)"))
        .await
        .expect("insert");
    let kept = outbox
        .send_within_tx(
            &mut tx,
            Message::new(b"committed".to_vec()).ordering_key("o"),
        )
        .await
        .expect("send");
    tx.commit().await.expect("commit");

    let mut conn = pool.get_conn().await.expect("connect");
    let rows: Vec<i64> = conn
        .query(format!("SELECT id FROM `{side}`"))
        .await
        .expect("select");
    assert_eq!(rows, vec![2]);
    conn.query_drop(format!("DROP TABLE `{side}`"))
        .await
        .expect("drop");
    drop(conn);
    pool.disconnect().await.expect("disconnect");
    let b = store.blocking().clone();
    let got = off(move || b.claim(&Lease::new(Duration::from_secs(60)), 10.into()))
        .await
        .expect("claim")
        .messages;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].message_id, kept);
    assert_eq!(got[0].payload, b"committed");
    My::drop_table(&t);
}

#[tokio::test]
async fn bad_settings_are_typed_errors() {
    match MysqlStore::with_table(&url(), "x; DROP TABLE y").await {
        Err(Error::InvalidIdentifier { .. }) => {}
        other => panic!("{other:?}"),
    }
    match MysqlStore::connect("mysql://root:secret@127.0.0.1:1/test").await {
        Err(e @ Error::Database { .. }) => assert!(!format!("{e:?}").contains("secret")),
        other => panic!("{other:?}"),
    }
    match MysqlStore::connect("mysql://[bad").await {
        Err(Error::InvalidUrl { .. }) => {}
        other => panic!("{other:?}"),
    }
}
