//! MySQL / MariaDB (OUTBOXER_MYSQL_URL, default the local MariaDB).

use crate::conformance::{lit, lit_or_null, Harness};
use mysql::prelude::Queryable;
use outboxer::store::MysqlStore;
use outboxer::Error;

fn url() -> String {
    std::env::var("OUTBOXER_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into())
}

pub struct My;

impl Harness for My {
    type S = MysqlStore;
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
}

store_conformance!(My);

/// The claim, key-check and cleanup queries use the indexes `migrate` creates
/// (the Go original's MySQL table had none and its cleanup scanned everything).
#[test]
fn claim_and_cleanup_use_indexes() {
    use crate::conformance::{store, unique};
    use outboxer::core::ident::TableName;
    use outboxer::core::sql_mysql::MysqlSql;
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
