//! PostgreSQL (OUTBOXER_PG_URL, default the local server).

use crate::conformance::{lit, lit_or_null, Harness};
use outboxer::store::PostgresStore;
use outboxer::Error;

fn url() -> String {
    std::env::var("OUTBOXER_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

pub struct Pg;

impl Harness for Pg {
    type S = PostgresStore;
    const ROW_LOCKS: bool = true;
    fn try_store(table: &str) -> Result<PostgresStore, Error> {
        PostgresStore::builder(&url()).table(table).build()
    }
    fn unreachable() -> Result<PostgresStore, Error> {
        PostgresStore::connect("postgres://postgres:secret@127.0.0.1:1/test")
    }
    fn exec(statements: &[String]) {
        let mut c = postgres::Client::connect(&url(), postgres::NoTls).expect("connect");
        for s in statements {
            c.batch_execute(s).expect("exec");
        }
    }
    fn go_table(t: &str) -> Vec<String> {
        vec![
            format!("CREATE TABLE {t} (id SERIAL not null primary key, dispatched boolean not null default false, dispatched_at timestamp, payload bytea not null, options jsonb, headers jsonb)"),
            format!("INSERT INTO {t} (payload, dispatched, dispatched_at) VALUES ('old', true, now())"),
            format!("INSERT INTO {t} (payload, options, headers) VALUES ('from go', '{{}}', '{{\"n\": 1}}')"),
        ]
    }
    fn index_ref(_table: &str, index: &str) -> String {
        format!("\"{index}\"")
    }
    fn drop_table(t: &str) {
        Self::exec(&[format!("DROP TABLE IF EXISTS \"{t}\"")]);
    }
    fn insert_sql(
        t: &str,
        payload: &str,
        headers: Option<&str>,
        options: Option<&str>,
        key: Option<&str>,
    ) -> String {
        format!(
            "INSERT INTO \"{t}\" (payload, headers, options, ordering_key) \
             VALUES (convert_to({}, 'UTF8'), {}, {}, {})",
            lit(payload),
            lit_or_null(headers),
            lit_or_null(options),
            lit_or_null(key)
        )
    }
    fn delayed_insert_sql(t: &str, payload: &str, secs: u32) -> String {
        // As docs/stores.md shows: the database clock plus the delay.
        format!(
            "INSERT INTO \"{t}\" (payload, available_at) \
             VALUES (convert_to({}, 'UTF8'), now() + interval '{secs} seconds')",
            lit(payload)
        )
    }
}

store_conformance!(Pg);

/// An upgraded table loses the pending-only key index of earlier versions, and the
/// claim's key check (now over pending and parked rows) reads the new one with
/// index scans only.
#[test]
fn claim_uses_the_undelivered_key_index_after_upgrade() {
    use crate::conformance::{store, unique};
    use outboxer::__private::sql::postgres::PostgresSql;
    use outboxer::__private::TableName;
    let t = unique("c_pgexplain");
    let s = store::<Pg>(&t);
    Pg::exec(&[
        format!("CREATE INDEX \"{t}_pending_key_idx\" ON \"{t}\" (ordering_key, id) WHERE status = 'pending' AND ordering_key IS NOT NULL"),
        format!(
            "INSERT INTO \"{t}\" (payload, ordering_key, status) \
             SELECT '\\x00', CASE WHEN g % 3 = 0 THEN 'k' || (g % 50) END, \
                    CASE WHEN g <= 20000 THEN 'dispatched' WHEN g % 100 = 7 THEN 'parked' ELSE 'pending' END \
             FROM generate_series(1, 30000) g"
        ),
        format!("ANALYZE \"{t}\""),
    ]);
    s.migrate().expect("migrate again");
    let mut c = postgres::Client::connect(&url(), postgres::NoTls).expect("connect");
    let names: Vec<String> = c
        .query(
            "SELECT indexname::text FROM pg_indexes WHERE tablename = $1",
            &[&t],
        )
        .expect("indexes")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        !names.iter().any(|n| n.ends_with("_pending_key_idx")),
        "{names:?}"
    );
    assert!(
        names.iter().any(|n| n.ends_with("_undelivered_key_idx")),
        "{names:?}"
    );
    let sql = PostgresSql::new(&TableName::parse(&t).expect("name"));
    let mut tx = c.transaction().expect("tx");
    tx.batch_execute("SET LOCAL enable_sort = off")
        .expect("set");
    let plan: Vec<String> = tx
        .query(
            &format!("EXPLAIN {}", sql.claim),
            &[&100i64, &uuid::Uuid::nil(), &30000.0f64, &i64::MAX],
        )
        .expect("explain")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let plan = plan.join("\n");
    assert!(plan.contains("_pending_idx on"), "{plan}");
    assert!(
        plan.contains("Index Only Scan using") && plan.contains("_undelivered_key_idx"),
        "{plan}"
    );
    assert!(!plan.contains("Seq Scan"), "{plan}");
    drop(tx);
    Pg::drop_table(&t);
}

/// The pool opens at most `max_connections` connections: a caller beyond them
/// waits for one to come back, and after `pool_timeout` gets `Error::Timeout`.
#[test]
fn pool_caps_open_connections() {
    use crate::conformance::unique;
    use outboxer::{Store, TxStore};
    use std::sync::mpsc;
    use std::time::{Duration, Instant};
    let t = unique("c_pool");
    let app = unique("outboxer_pool");
    let build = |wait: Duration| {
        PostgresStore::builder(&format!("{}?application_name={app}", url()))
            .table(&t)
            .max_connections(2)
            .pool_timeout(wait)
            .build()
            .expect("store")
    };
    let s = build(Duration::from_secs(30));
    s.migrate().expect("migrate");
    let mut watcher = postgres::Client::connect(&url(), postgres::NoTls).expect("connect");
    let mut open = || -> i64 {
        watcher
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                &[&app],
            )
            .expect("pg_stat_activity")
            .get(0)
    };
    std::thread::scope(|sc| {
        // Two transactions held open: both connections are in use.
        let mut release = Vec::new();
        let (ready_tx, ready_rx) = mpsc::channel();
        for _ in 0..2 {
            let (go_tx, go_rx) = mpsc::channel::<()>();
            release.push(go_tx);
            let (s, ready) = (&s, ready_tx.clone());
            sc.spawn(move || {
                let r: Result<(), outboxer::Error> = s.with_transaction(|_tx| {
                    ready.send(()).expect("ready");
                    go_rx.recv().expect("released");
                    Ok(())
                });
                r.expect("transaction");
            });
        }
        for _ in 0..2 {
            ready_rx
                .recv_timeout(Duration::from_secs(10))
                .expect("holding");
        }
        assert_eq!(open(), 2);
        // A third caller waits for one of them.
        let (done_tx, done_rx) = mpsc::channel();
        let s3 = &s;
        sc.spawn(move || {
            let started = Instant::now();
            let r = s3.stats().map(|_| started.elapsed());
            done_tx.send(r).expect("done");
        });
        std::thread::sleep(Duration::from_millis(600));
        assert!(done_rx.try_recv().is_err(), "the third caller waits");
        assert_eq!(open(), 2, "never more than max_connections");
        release.remove(0).send(()).expect("release one");
        let waited = done_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the third caller gets the connection")
            .expect("stats");
        assert!(waited >= Duration::from_millis(500), "{waited:?}");
        assert!(open() <= 2);
        release.remove(0).send(()).expect("release the other");
    });

    // With both held past pool_timeout, a typed error.
    let quick = build(Duration::from_millis(300));
    let a = quick.with_transaction(|_a| {
        quick.with_transaction(|_b| {
            let started = Instant::now();
            let r = quick.stats();
            let took = started.elapsed();
            assert!(matches!(r, Err(outboxer::Error::Timeout(_))), "{r:?}");
            assert!(
                took >= Duration::from_millis(250) && took < Duration::from_secs(3),
                "{took:?}"
            );
            Ok::<_, outboxer::Error>(())
        })
    });
    a.expect("the held transactions commit");
    let r = PostgresStore::builder(&url()).max_connections(0).build();
    assert!(
        matches!(
            r,
            Err(outboxer::Error::Config {
                field: "max_connections",
                ..
            })
        ),
        "{r:?}"
    );
    let r = PostgresStore::builder(&url())
        .pool_timeout(Duration::ZERO)
        .build();
    assert!(
        matches!(
            r,
            Err(outboxer::Error::Config {
                field: "pool_timeout",
                ..
            })
        ),
        "{r:?}"
    );
    Pg::drop_table(&t);
}

/// The row-lock claim runs as a statement prepared once per connection with its
/// generic plan: that plan still walks the pending index in id order (no
/// sequential scan, no sort of the backlog) on a table with a large backlog.
#[test]
fn row_lock_claim_generic_plan_walks_the_pending_index() {
    use crate::conformance::{store, unique};
    use outboxer::__private::sql::postgres::PostgresSql;
    use outboxer::__private::TableName;
    let t = unique("c_pggeneric");
    let _s = store::<Pg>(&t);
    Pg::exec(&[
        format!(
            "INSERT INTO \"{t}\" (payload, ordering_key, status) \
             SELECT '\\x00', CASE WHEN g % 3 = 0 THEN 'k' || (g % 50) END, \
                    CASE WHEN g <= 20000 THEN 'dispatched' ELSE 'pending' END \
             FROM generate_series(1, 60000) g"
        ),
        format!("ANALYZE \"{t}\""),
    ]);
    let sql = PostgresSql::new(&TableName::parse(&t).expect("name"));
    let mut c = postgres::Client::connect(&url(), postgres::NoTls).expect("connect");
    c.batch_execute(&PostgresSql::begin_held(30_000))
        .expect("begin");
    c.batch_execute(&format!(
        "PREPARE claim(bigint, bigint) AS {}",
        sql.claim_locked
    ))
    .expect("prepare");
    let plan: Vec<String> = c
        .query("EXPLAIN EXECUTE claim(500, 16777216)", &[])
        .expect("explain")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let plan = plan.join("\n");
    c.batch_execute("ROLLBACK").expect("rollback");
    assert!(plan.contains("_pending_idx on"), "{plan}");
    assert!(!plan.contains("Seq Scan"), "{plan}");
    Pg::drop_table(&t);
}

/// A connection keeps its prepared row-lock claim; a table dropped and created
/// again under the same name does not leave claims failing.
#[test]
fn row_lock_claims_survive_a_recreated_table() {
    use crate::conformance::{store, unique};
    use outboxer::store::Lease;
    use outboxer::{Message, Store};
    use std::time::Duration;
    let t = unique("c_pgrecreate");
    let s = store::<Pg>(&t);
    let lease = || Lease::new(Duration::from_secs(30));
    s.enqueue(&[Message::new(b"a".to_vec())]).expect("enqueue");
    let held = s
        .claim_locked(&lease(), 10.into())
        .expect("claim")
        .expect("row locks");
    let ids: Vec<i64> = held.claim.messages.iter().map(|m| m.id).collect();
    held.held.commit(&ids, true).expect("commit");
    Pg::drop_table(&t);
    s.migrate().expect("migrate again");
    s.enqueue(&[Message::new(b"b".to_vec())]).expect("enqueue");
    let mut errors = Vec::new();
    let got = loop {
        match s.claim_locked(&lease(), 10.into()) {
            Ok(Some(l)) => break l,
            Ok(None) => panic!("row locks"),
            Err(e) if errors.len() < 2 => errors.push(e),
            Err(e) => panic!("claims keep failing: {e} after {errors:?}"),
        }
    };
    assert_eq!(got.claim.messages.len(), 1, "after {errors:?}");
    assert_eq!(got.claim.messages[0].payload, b"b");
    drop(got);
    Pg::drop_table(&t);
}
