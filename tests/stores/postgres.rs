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
}

store_conformance!(Pg);

/// An upgraded table loses the pending-only key index of earlier versions, and the
/// claim's key check (now over pending and parked rows) reads the new one with
/// index scans only.
#[test]
fn claim_uses_the_undelivered_key_index_after_upgrade() {
    use crate::conformance::{store, unique};
    use outboxer::core::ident::TableName;
    use outboxer::core::sql_pg::PgSql;
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
    let sql = PgSql::new(&TableName::parse(&t).expect("name"));
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
