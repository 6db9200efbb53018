//! MySQL / MariaDB (OUTBOXER_MYSQL_URL, default the local MariaDB).

use crate::conformance::{lit, lit_or_null, Harness};
use mysql::prelude::Queryable;
use outboxer::store::MysqlStore;
use outboxer::Error;

pub fn url() -> String {
    std::env::var("OUTBOXER_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into())
}

pub struct My;

impl Harness for My {
    type S = MysqlStore;
    const ROW_LOCKS: bool = true;
    fn try_store(table: &str) -> Result<MysqlStore, Error> {
        MysqlStore::builder(&url())
            .table(table)
            .max_connections(4)
            .build()
    }
    fn unreachable() -> Result<MysqlStore, Error> {
        MysqlStore::connect("mysql://root:secret@127.0.0.1:1/test")
    }
    fn exec(statements: &[String]) {
        let pool = mysql::Pool::new(url().as_str()).expect("pool");
        let mut c = pool.get_conn().expect("connect");
        for s in statements {
            c.query_drop(s).expect("exec");
        }
    }
    fn go_table(t: &str) -> Vec<String> {
        // The Go outboxer's MySQL schema and rows as Go writes them.
        vec![
            format!(
                "CREATE TABLE {t} (id BIGINT AUTO_INCREMENT not null primary key, dispatched BOOL not null default false,
                 dispatched_at DATETIME, payload BLOB not null, options json, headers json) ENGINE=InnoDB DEFAULT CHARSET=utf8"
            ),
            format!("INSERT INTO {t} (payload, dispatched, dispatched_at) VALUES ('old', true, NOW())"),
            format!("INSERT INTO {t} (payload, options, headers) VALUES ('from go', '{{}}', '{{\"n\": 1}}')"),
        ]
    }
    fn index_ref(table: &str, index: &str) -> String {
        format!("`{index}` ON `{table}`")
    }
    fn drop_table(t: &str) {
        Self::exec(&[
            format!("DROP TABLE IF EXISTS `{t}`"),
            format!("DROP TABLE IF EXISTS `{t}_keys`"),
        ]);
    }
    fn insert_sql(
        t: &str,
        payload: &str,
        headers: Option<&str>,
        options: Option<&str>,
        key: Option<&str>,
    ) -> String {
        format!(
            "INSERT INTO `{t}` (message_id, payload, headers, options, ordering_key) \
             VALUES (UNHEX(REPLACE(UUID(), '-', '')), {}, {}, {}, {})",
            lit(payload),
            lit_or_null(headers),
            lit_or_null(options),
            lit_or_null(key)
        )
    }
    fn delayed_insert_sql(t: &str, payload: &str, secs: u32) -> String {
        // As docs/stores.md shows: UTC, like every time column of the table.
        format!(
            "INSERT INTO `{t}` (message_id, payload, available_at) \
             VALUES (UNHEX(REPLACE(UUID(), '-', '')), {}, UTC_TIMESTAMP(6) + INTERVAL {secs} SECOND)",
            lit(payload)
        )
    }
}

store_conformance!(My);

/// The claim, key-check and cleanup queries use the indexes `migrate` creates
/// (the Go original's MySQL table had none and its cleanup scanned everything).
#[test]
fn claim_and_cleanup_use_indexes() {
    use crate::conformance::{store, unique};
    use outboxer::__private::sql::mysql::MysqlSql;
    use outboxer::__private::TableName;
    use outboxer::store::Store;
    use outboxer::Message;
    let t = unique("c_explain");
    let s = store::<My>(&t);
    let msgs: Vec<Message> = (0..3000)
        .map(|i| {
            let m = Message::new(vec![1u8; 16]);
            if i % 3 == 0 {
                m.ordering_key(format!("k{}", i % 50))
            } else {
                m
            }
        })
        .collect();
    s.enqueue(&msgs).expect("enqueue");
    let pool = mysql::Pool::new(url().as_str()).expect("pool");
    let mut c = pool.get_conn().expect("conn");
    c.query_drop(format!(
        "UPDATE `{t}` SET status = 'dispatched', dispatched_at = NOW(6) WHERE id <= 2500"
    ))
    .expect("dispatch most");
    c.query_drop(format!("ANALYZE TABLE `{t}`"))
        .expect("analyze");
    let sql = MysqlSql::new(&TableName::parse(&t).expect("name"));
    let keys_used = |c: &mut mysql::PooledConn, q: String| -> Vec<String> {
        let rows: Vec<mysql::Row> = c.query(format!("EXPLAIN {q}")).expect("explain");
        rows.into_iter()
            .filter_map(|mut r| r.take::<Option<String>, _>("key").flatten())
            .collect()
    };
    let claim = keys_used(&mut c, sql.claim_candidates.replace('?', "100"));
    assert!(
        claim.iter().any(|k| k.ends_with("_status_idx")),
        "claim scan: {claim:?}"
    );
    assert!(
        claim.iter().any(|k| k.ends_with("_key_idx")),
        "key check: {claim:?}"
    );
    let cleanup = keys_used(
        &mut c,
        format!("SELECT id FROM `{t}` WHERE status = 'dispatched' AND dispatched_at < NOW(6) - INTERVAL 1 SECOND ORDER BY dispatched_at LIMIT 100"),
    );
    assert!(
        cleanup.iter().any(|k| k.ends_with("_dispatched_idx")),
        "cleanup: {cleanup:?}"
    );
    My::drop_table(&t);
}

/// Times are UTC whatever a session's `time_zone`: a row written by plain SQL from a
/// +10:00 session is claimable at once, and leases, backoff, release delays, cleanup
/// and purge cutoffs and stats ages mean the same from a +10:00 session as from the
/// server's own zone (this server runs in UTC).
#[test]
fn session_time_zones_move_no_clock() {
    use crate::conformance::{store, unique};
    use outboxer::store::{FailedAttempt, Lease, Store};
    use outboxer::Message;
    use std::time::Duration;
    let t = unique("c_tz");
    let utc = store::<My>(&t);
    let plus10 = |t: &str| -> MysqlStore {
        let opts = mysql::OptsBuilder::from_opts(mysql::Opts::from_url(&url()).expect("url"))
            .init(vec!["SET time_zone = '+10:00'"]);
        MysqlStore::from_opts(opts.into())
            .table(t)
            .max_connections(2)
            .build()
            .expect("store with +10:00 sessions")
    };
    let ten = plus10(&t);
    let lease = |secs| Lease::new(Duration::from_secs(secs));

    // A writer in +10:00 inserts with the columns' defaults.
    let pool = mysql::Pool::new(url().as_str()).expect("pool");
    let mut w = pool.get_conn().expect("conn");
    w.query_drop("SET time_zone = '+10:00'").expect("tz");
    w.query_drop(format!(
        "INSERT INTO `{t}` (message_id, payload) VALUES (UNHEX(REPLACE(UUID(), '-', '')), 'plain')"
    ))
    .expect("plain SQL insert");
    let l = lease(60);
    let got = utc.claim(&l, 10.into()).expect("claim").messages;
    assert_eq!(got.len(), 1, "a row written in +10:00 is claimable at once");
    let r1 = got[0].id;
    assert!(
        ten.claim(&lease(60), 10.into()).expect("claim").is_empty(),
        "a 60 s lease taken in UTC still holds for a +10:00 session"
    );
    let backoff = [FailedAttempt {
        id: r1,
        error: "nack".into(),
        retry_in: Duration::from_secs(3600),
        park: false,
        hold_key: true,
    }];
    assert_eq!(utc.mark_failed(&l, &backoff).expect("fail"), 1);
    assert!(
        ten.claim(&lease(60), 10.into()).expect("claim").is_empty(),
        "a 1 h backoff still holds for a +10:00 session"
    );

    // Released with a delay by a +10:00 session: not claimable from UTC before it.
    ten.enqueue(&[Message::new(b"r2".to_vec()), Message::new(b"r3".to_vec())])
        .expect("enqueue");
    let l10 = lease(60);
    let got = ten.claim(&l10, 10.into()).expect("claim").messages;
    assert_eq!(got.len(), 2);
    assert_eq!(
        ten.release(&l10, &[got[0].id], Duration::from_secs(3600))
            .expect("release"),
        1
    );
    assert_eq!(
        ten.mark_dispatched(&l10, &[got[1].id]).expect("mark").len(),
        1
    );
    assert!(
        utc.claim(&lease(60), 10.into()).expect("claim").is_empty(),
        "a 1 h release delay from +10:00 holds in UTC"
    );
    let st = utc.stats().expect("stats");
    assert!(st.oldest_pending_age < Duration::from_secs(60), "{st:?}");
    let st = ten.stats().expect("stats");
    assert!(st.oldest_pending_age < Duration::from_secs(60), "{st:?}");

    // Cutoffs: a row dispatched (or parked) just now is not an hour old anywhere.
    utc.enqueue(&[Message::new(b"r4".to_vec())])
        .expect("enqueue");
    let l = lease(60);
    let got = utc.claim(&l, 10.into()).expect("claim").messages;
    let park = [FailedAttempt {
        id: got[0].id,
        error: "poison".into(),
        retry_in: Duration::ZERO,
        park: true,
        hold_key: true,
    }];
    assert_eq!(utc.mark_failed(&l, &park).expect("park"), 1);
    assert_eq!(
        ten.cleanup(Duration::from_secs(3600), 100)
            .expect("cleanup"),
        0
    );
    assert_eq!(
        ten.purge_parked(Duration::from_secs(3600), 100)
            .expect("purge"),
        0
    );
    assert_eq!(
        utc.cleanup(Duration::from_secs(3600), 100)
            .expect("cleanup"),
        0
    );
    assert_eq!(utc.cleanup(Duration::ZERO, 100).expect("cleanup"), 1);
    My::drop_table(&t);
}

/// A table of an earlier version (time columns defaulting to the session's local
/// time) holds local times; migrate from a +10:00 session moves its undelivered
/// rows to UTC once, so that they are claimable at once and not 10 h late.
#[test]
fn migrate_moves_local_times_to_utc_once() {
    use crate::conformance::{store, unique};
    use outboxer::store::{Lease, Store};
    use std::time::Duration;
    let t = unique("c_tzup");
    let utc = store::<My>(&t);
    let pool = mysql::Pool::new(url().as_str()).expect("pool");
    let mut w = pool.get_conn().expect("conn");
    w.query_drop(format!(
        "ALTER TABLE `{t}` MODIFY created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6), \
         MODIFY available_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)"
    ))
    .expect("the earlier shape");
    w.query_drop("SET time_zone = '+10:00'").expect("tz");
    w.query_drop(format!(
        "INSERT INTO `{t}` (message_id, payload) VALUES (UNHEX(REPLACE(UUID(), '-', '')), 'old')"
    ))
    .expect("a row written as before");
    assert!(
        utc.claim(&Lease::new(Duration::from_secs(1)), 10.into())
            .expect("claim")
            .is_empty(),
        "10 h in the future before the upgrade"
    );
    let opts = mysql::OptsBuilder::from_opts(mysql::Opts::from_url(&url()).expect("url"))
        .init(vec!["SET time_zone = '+10:00'"]);
    let ten = MysqlStore::from_opts(opts.into())
        .table(&t)
        .build()
        .expect("store");
    ten.migrate().expect("upgrade");
    ten.migrate().expect("again: no second move");
    let st = utc.stats().expect("stats");
    assert!(st.oldest_pending_age < Duration::from_secs(60), "{st:?}");
    let got = utc
        .claim(&Lease::new(Duration::from_secs(30)), 10.into())
        .expect("claim")
        .messages;
    assert_eq!(got.len(), 1, "claimable at once after the upgrade");
    let defaults: Vec<String> = w
        .exec(
            "SELECT LOWER(column_default) FROM information_schema.columns \
             WHERE table_schema = DATABASE() AND table_name = ? AND column_name IN ('created_at', 'available_at')",
            (&t,),
        )
        .expect("defaults");
    assert_eq!(defaults, ["utc_timestamp(6)", "utc_timestamp(6)"]);
    My::drop_table(&t);
}
