//! The async inbox (`outboxer::async_impl::inbox`): duplicates, a failing handler
//! and two concurrent consumers of one id, on PostgreSQL (tokio-postgres),
//! MariaDB (mysql_async, feature async-mysql) and SQLite (the async store's
//! transaction).

use crate::Fail;
use outboxer::async_impl::inbox::Outcome;
use outboxer::MessageId;
use std::time::{Duration, Instant};

fn runtime() -> tokio::runtime::Runtime {
    // One thread: the concurrent consumers below are tasks that must interleave
    // while one of them waits on a lock.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

const HOLD: Duration = Duration::from_millis(300);

#[cfg(feature = "postgres")]
mod postgres {
    use super::*;
    use outboxer::async_impl::inbox::PostgresInbox;
    use outboxer::async_impl::store::tokio_postgres::{self, Client, NoTls};

    async fn client() -> Client {
        let (c, conn) = tokio_postgres::connect(&crate::postgres::url(), NoTls)
            .await
            .expect("PostgreSQL on 127.0.0.1:5432 (see README)");
        tokio::spawn(conn);
        c
    }

    /// One transaction: the handler writes the effect, holds `hold`, fails with `fail`.
    async fn apply(
        c: &mut Client,
        inbox: &PostgresInbox,
        fx: &str,
        id: MessageId,
        worker: &str,
        hold: Duration,
        fail: bool,
    ) -> Result<Outcome<()>, Fail> {
        let mut tx = c.transaction().await.map_err(|e| Fail::Db(e.into()))?;
        let sql = format!("INSERT INTO \"{fx}\" (message_id, worker) VALUES ($1, $2)");
        let worker = worker.to_string();
        let r = inbox
            .process(&mut tx, id, move |tx| {
                Box::pin(async move {
                    tx.execute(&sql, &[&id.to_string(), &worker])
                        .await
                        .map_err(|e| Fail::Db(e.into()))?;
                    tokio::time::sleep(hold).await;
                    if fail {
                        return Err(Fail::Deliberate);
                    }
                    Ok(())
                })
            })
            .await;
        tx.commit().await.map_err(|e| Fail::Db(e.into()))?;
        r
    }

    async fn effects(c: &Client, fx: &str, id: MessageId) -> Vec<String> {
        c.query(
            &format!("SELECT worker FROM \"{fx}\" WHERE message_id = $1"),
            &[&id.to_string()],
        )
        .await
        .expect("effects")
        .iter()
        .map(|r| r.get(0))
        .collect()
    }

    #[test]
    fn async_postgres_inbox() {
        let table = crate::unique("inbox_apg");
        let place = crate::Place {
            kind: "postgres",
            location: crate::postgres::url(),
            table: table.clone(),
        };
        let _c = crate::Cleanup::<crate::postgres::Pg>::new(&place);
        let fx = place.effects();
        runtime().block_on(async {
            let mut c = client().await;
            let inbox = PostgresInbox::with_table(&table).expect("table");
            inbox.migrate(&mut c).await.expect("migrate");
            inbox.migrate(&mut c).await.expect("migrate again");
            c.batch_execute(&format!(
                "CREATE TABLE \"{fx}\" (message_id TEXT, worker TEXT)"
            ))
            .await
            .expect("effects table");

            // A duplicate does nothing.
            let id = MessageId::new();
            let r = apply(&mut c, &inbox, &fx, id, "w1", Duration::ZERO, false).await;
            assert_eq!(r.expect("first"), Outcome::Processed(()));
            let r = apply(&mut c, &inbox, &fx, id, "w2", Duration::ZERO, false).await;
            assert_eq!(r.expect("duplicate"), Outcome::AlreadyProcessed);
            assert_eq!(effects(&c, &fx, id).await, vec!["w1".to_string()]);

            // A failing handler leaves nothing (the caller commits anyway), then the
            // retry runs.
            let id = MessageId::new();
            let r = apply(&mut c, &inbox, &fx, id, "w1", Duration::ZERO, true).await;
            assert!(matches!(r, Err(Fail::Deliberate)), "{r:?}");
            assert!(!inbox.contains(&c, id).await.expect("contains"));
            assert!(effects(&c, &fx, id).await.is_empty());

            // Two consumers on two connections: the second waits for the first's
            // commit and sees the duplicate.
            let id = MessageId::new();
            let (inbox2, fx2) = (inbox.clone(), fx.clone());
            let first = tokio::spawn(async move {
                let mut c = client().await;
                apply(&mut c, &inbox2, &fx2, id, "first", HOLD, false).await
            });
            tokio::time::sleep(Duration::from_millis(100)).await;
            let began = Instant::now();
            let second = apply(&mut c, &inbox, &fx, id, "second", Duration::ZERO, false).await;
            let waited = began.elapsed();
            assert_eq!(
                first.await.expect("task").expect("first"),
                Outcome::Processed(())
            );
            assert_eq!(second.expect("second"), Outcome::AlreadyProcessed);
            assert!(waited >= Duration::from_millis(150), "no wait: {waited:?}");
            assert_eq!(effects(&c, &fx, id).await, vec!["first".to_string()]);

            // Retention.
            c.execute(
                &format!("UPDATE \"{table}\" SET processed_at = processed_at - interval '2 days'"),
                &[],
            )
            .await
            .expect("backdate");
            let n = inbox
                .cleanup(&c, Duration::from_secs(24 * 3600), 1)
                .await
                .expect("cleanup");
            assert_eq!(n, 1);
            let n = inbox
                .cleanup(&c, Duration::from_secs(24 * 3600), 10)
                .await
                .expect("cleanup");
            assert_eq!(n, 1, "two ids recorded, one deleted per batch of 1");
        });
    }
}

#[cfg(feature = "async-mysql")]
mod mysql {
    use super::*;
    use outboxer::async_impl::inbox::MysqlInbox;
    use outboxer::async_impl::store::mysql_async::prelude::Queryable;
    use outboxer::async_impl::store::mysql_async::{Conn, Opts, TxOpts};

    async fn conn() -> Conn {
        let opts = Opts::from_url(&crate::mysql::url()).expect("url");
        Conn::new(opts)
            .await
            .expect("MariaDB on 127.0.0.1:3306 (see README)")
    }

    fn db(e: impl std::fmt::Display) -> Fail {
        Fail::Db(outboxer::Error::Rejected(e.to_string()))
    }

    async fn apply(
        c: &mut Conn,
        inbox: &MysqlInbox,
        fx: &str,
        id: MessageId,
        worker: &str,
        hold: Duration,
        fail: bool,
    ) -> Result<Outcome<()>, Fail> {
        let mut tx = c.start_transaction(TxOpts::default()).await.map_err(db)?;
        let sql = format!("INSERT INTO `{fx}` (message_id, worker) VALUES (?, ?)");
        let worker = worker.to_string();
        let r = inbox
            .process(&mut tx, id, move |tx| {
                Box::pin(async move {
                    tx.exec_drop(&sql, (id.to_string(), worker))
                        .await
                        .map_err(db)?;
                    tokio::time::sleep(hold).await;
                    if fail {
                        return Err(Fail::Deliberate);
                    }
                    Ok(())
                })
            })
            .await;
        tx.commit().await.map_err(db)?;
        r
    }

    async fn effects(c: &mut Conn, fx: &str, id: MessageId) -> Vec<String> {
        c.exec(
            format!("SELECT worker FROM `{fx}` WHERE message_id = ?"),
            (id.to_string(),),
        )
        .await
        .expect("effects")
    }

    #[test]
    fn async_mysql_inbox() {
        let table = crate::unique("inbox_amy");
        let place = crate::Place {
            kind: "mysql",
            location: crate::mysql::url(),
            table: table.clone(),
        };
        let _c = crate::Cleanup::<crate::mysql::Maria>::new(&place);
        let fx = place.effects();
        runtime().block_on(async {
            let mut c = conn().await;
            let inbox = MysqlInbox::with_table(&table).expect("table");
            inbox.migrate(&mut c).await.expect("migrate");
            c.query_drop(format!(
                "CREATE TABLE `{fx}` (message_id VARCHAR(36), worker VARCHAR(32))"
            ))
            .await
            .expect("effects table");

            let id = MessageId::new();
            let r = apply(&mut c, &inbox, &fx, id, "w1", Duration::ZERO, false).await;
            assert_eq!(r.expect("first"), Outcome::Processed(()));
            let r = apply(&mut c, &inbox, &fx, id, "w2", Duration::ZERO, false).await;
            assert_eq!(r.expect("duplicate"), Outcome::AlreadyProcessed);
            assert_eq!(effects(&mut c, &fx, id).await, vec!["w1".to_string()]);

            let id = MessageId::new();
            let r = apply(&mut c, &inbox, &fx, id, "w1", Duration::ZERO, true).await;
            assert!(matches!(r, Err(Fail::Deliberate)), "{r:?}");
            assert!(!inbox.contains(&mut c, id).await.expect("contains"));
            assert!(effects(&mut c, &fx, id).await.is_empty());

            let id = MessageId::new();
            let (inbox2, fx2) = (inbox.clone(), fx.clone());
            let first = tokio::spawn(async move {
                let mut c = conn().await;
                apply(&mut c, &inbox2, &fx2, id, "first", HOLD, false).await
            });
            tokio::time::sleep(Duration::from_millis(100)).await;
            let began = Instant::now();
            let second = apply(&mut c, &inbox, &fx, id, "second", Duration::ZERO, false).await;
            let waited = began.elapsed();
            assert_eq!(
                first.await.expect("task").expect("first"),
                Outcome::Processed(())
            );
            assert_eq!(second.expect("second"), Outcome::AlreadyProcessed);
            assert!(waited >= Duration::from_millis(150), "no wait: {waited:?}");
            assert_eq!(effects(&mut c, &fx, id).await, vec!["first".to_string()]);

            c.query_drop(format!(
                "UPDATE `{table}` SET processed_at = processed_at - INTERVAL 2 DAY"
            ))
            .await
            .expect("backdate");
            let n = inbox
                .cleanup(&mut c, Duration::from_secs(24 * 3600), 1)
                .await
                .expect("cleanup");
            assert_eq!(n, 1);
            let n = inbox
                .cleanup(&mut c, Duration::from_secs(24 * 3600), 10)
                .await
                .expect("cleanup");
            assert_eq!(n, 1);
        });
    }
}

#[cfg(feature = "sqlite")]
mod sqlite {
    use super::*;
    use outboxer::async_impl::inbox::SqliteInbox;
    use outboxer::async_impl::store::{SqliteStore, SqliteTx};
    use outboxer::async_impl::Store;

    async fn apply(
        store: &SqliteStore,
        inbox: &SqliteInbox,
        fx: &str,
        id: MessageId,
        worker: &str,
        hold: Duration,
        fail: bool,
    ) -> Result<Outcome<()>, Fail> {
        let sql = format!("INSERT INTO \"{fx}\" (message_id, worker) VALUES (?1, ?2)");
        let worker = worker.to_string();
        // The closure form commits on Ok; a failing handler's Err rolls back.
        store
            .with_transaction(async |tx: &mut SqliteTx| {
                inbox
                    .process(tx, id, move |tx| {
                        Box::pin(async move {
                            tx.with_conn(move |c| {
                                c.execute(&sql, (id.to_string(), worker))
                                    .map(drop)
                                    .map_err(|e| outboxer::Error::Rejected(e.to_string()))
                            })
                            .await?;
                            tokio::time::sleep(hold).await;
                            if fail {
                                return Err(Fail::Deliberate);
                            }
                            Ok(())
                        })
                    })
                    .await
            })
            .await
    }

    async fn effects(store: &SqliteStore, fx: &str, id: MessageId) -> Vec<String> {
        let sql = format!("SELECT worker FROM \"{fx}\" WHERE message_id = ?1");
        store
            .with_transaction(async |tx: &mut SqliteTx| {
                tx.with_conn(move |c| {
                    let mut stmt = c
                        .prepare(&sql)
                        .map_err(|e| outboxer::Error::Rejected(e.to_string()))?;
                    let rows = stmt
                        .query_map([id.to_string()], |r| r.get::<_, String>(0))
                        .and_then(|rows| rows.collect::<Result<Vec<_>, _>>());
                    rows.map_err(|e| outboxer::Error::Rejected(e.to_string()))
                })
                .await
            })
            .await
            .expect("effects")
    }

    #[test]
    fn async_sqlite_inbox() {
        let place = crate::sqlite::place();
        let _c = crate::Cleanup::<crate::sqlite::Lite>::new(&place);
        let fx = place.effects();
        runtime().block_on(async {
            let blocking = outboxer::store::SqliteStore::builder(&place.location)
                .busy_timeout(Duration::from_secs(20))
                .build()
                .expect("store");
            let store = SqliteStore::new(blocking);
            let inbox = SqliteInbox::with_table(&place.table).expect("table");
            let create = format!("CREATE TABLE \"{fx}\" (message_id TEXT, worker TEXT)");
            store
                .with_transaction(async |tx: &mut SqliteTx| {
                    inbox.migrate(tx).await?;
                    tx.with_conn(move |c| {
                        c.execute_batch(&create)
                            .map_err(|e| outboxer::Error::Rejected(e.to_string()))
                    })
                    .await
                })
                .await
                .expect("migrate");

            let id = MessageId::new();
            let r = apply(&store, &inbox, &fx, id, "w1", Duration::ZERO, false).await;
            assert_eq!(r.expect("first"), Outcome::Processed(()));
            let r = apply(&store, &inbox, &fx, id, "w2", Duration::ZERO, false).await;
            assert_eq!(r.expect("duplicate"), Outcome::AlreadyProcessed);
            assert_eq!(effects(&store, &fx, id).await, vec!["w1".to_string()]);

            let id = MessageId::new();
            let r = apply(&store, &inbox, &fx, id, "w1", Duration::ZERO, true).await;
            assert!(matches!(r, Err(Fail::Deliberate)), "{r:?}");
            assert!(effects(&store, &fx, id).await.is_empty());
            let recorded = store
                .with_transaction(async |tx: &mut SqliteTx| inbox.contains(tx, id).await)
                .await
                .expect("contains");
            assert!(!recorded);

            // Two transactions at once: SQLite's write lock makes the second wait.
            let id = MessageId::new();
            let (s2, i2, fx2) = (store.clone(), inbox.clone(), fx.clone());
            let first =
                tokio::spawn(async move { apply(&s2, &i2, &fx2, id, "first", HOLD, false).await });
            tokio::time::sleep(Duration::from_millis(100)).await;
            let second = apply(&store, &inbox, &fx, id, "second", Duration::ZERO, false).await;
            assert_eq!(
                first.await.expect("task").expect("first"),
                Outcome::Processed(())
            );
            assert_eq!(second.expect("second"), Outcome::AlreadyProcessed);
            assert_eq!(effects(&store, &fx, id).await, vec!["first".to_string()]);

            let deleted = store
                .with_transaction(async |tx: &mut SqliteTx| {
                    inbox.cleanup(tx, Duration::ZERO, 100).await
                })
                .await
                .expect("cleanup");
            assert_eq!(deleted, 2, "every id is older than zero");
        });
    }
}
