//! PostgreSQL (OUTBOXER_PG_URL, default the local server).

use crate::conformance::{lit, Harness};
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
        let or_null = |v: Option<&str>| v.map_or("NULL".to_string(), lit);
        format!(
            "INSERT INTO \"{t}\" (payload, headers, options, ordering_key) \
             VALUES (convert_to({}, 'UTF8'), {}, {}, {})",
            lit(payload),
            or_null(headers),
            or_null(options),
            or_null(key)
        )
    }
}

store_conformance!(Pg);
