//! SQL Server (OUTBOXER_MSSQL_URL, an ADO.NET connection string such as
//! `server=tcp:127.0.0.1,1433;user=sa;password=..;TrustServerCertificate=true`).
//!
//! No SQL Server (TDS) server can be installed on this machine: Debian, PyPI and npm
//! carry only clients. The conformance suite is therefore expanded as ignored tests,
//! so that cargo reports them as ignored, never as passed; run them against a real
//! server with `OUTBOXER_MSSQL_URL=.. cargo test --features sqlserver --test stores
//! sqlserver -- --include-ignored`. The tests below this suite need no server.

use crate::conformance::{lit, Harness};
use outboxer::redact_connection_string as redact_ado;
use outboxer::store::SqlServerStore;
use outboxer::{Error, Store, TxStore};
use std::time::{Duration, Instant};

fn url() -> String {
    match std::env::var("OUTBOXER_MSSQL_URL") {
        Ok(u) if !u.trim().is_empty() => u,
        _ => panic!(
            "OUTBOXER_MSSQL_URL is not set: the SQL Server conformance tests need a SQL Server \
             2017+, e.g. OUTBOXER_MSSQL_URL='server=tcp:127.0.0.1,1433;user=sa;password=..;\
             TrustServerCertificate=true' (none can be installed on this machine)"
        ),
    }
}

/// A server that is not there: nothing listens on port 1.
const UNREACHABLE: &str =
    "server=tcp:127.0.0.1,1;user=sa;password=s3cret-pw;TrustServerCertificate=true";

pub struct Mssql;

impl Harness for Mssql {
    type S = SqlServerStore;
    const ROW_LOCKS: bool = false;
    fn try_store(table: &str) -> Result<SqlServerStore, Error> {
        SqlServerStore::builder(&url()).table(table).build()
    }
    fn unreachable() -> Result<SqlServerStore, Error> {
        SqlServerStore::builder(UNREACHABLE)
            .connect_timeout(Duration::from_secs(5))
            .build()
    }
    fn exec(statements: &[String]) {
        // Through the store's own transaction API: no second driver needed.
        let s = SqlServerStore::connect(&url()).expect("connect");
        for st in statements {
            let r: Result<u64, Error> = s.with_transaction(|tx| tx.execute(st, &[]));
            r.unwrap_or_else(|e| panic!("{st}: {e}"));
        }
    }
    fn go_table(t: &str) -> Vec<String> {
        // The Go outboxer's storage/sqlserver CREATE TABLE; dispatched rows have their
        // options and headers set to NULL by Go's SetAsDispatched.
        vec![
            format!(
                "CREATE TABLE [{t}] (id int IDENTITY(1,1) NOT NULL PRIMARY KEY, \
                 dispatched BIT NOT NULL DEFAULT 0, dispatched_at DATETIME, \
                 payload VARBINARY(MAX) NOT NULL, options VARBINARY(MAX), headers VARBINARY(MAX))"
            ),
            format!(
                "INSERT INTO [{t}] (payload, dispatched, dispatched_at) \
                 VALUES (CAST('old' AS VARBINARY(MAX)), 1, GETDATE())"
            ),
            format!(
                "INSERT INTO [{t}] (payload, options, headers) VALUES (CAST('from go' AS VARBINARY(MAX)), \
                 CAST('{{}}' AS VARBINARY(MAX)), CAST('{{\"n\": 1}}' AS VARBINARY(MAX)))"
            ),
        ]
    }
    fn index_ref(table: &str, index: &str) -> String {
        format!("[{index}] ON [{table}]")
    }
    fn drop_table(t: &str) {
        Self::exec(&[format!("DROP TABLE IF EXISTS [{t}]")]);
    }
    fn insert_sql(
        t: &str,
        payload: &str,
        headers: Option<&str>,
        options: Option<&str>,
        key: Option<&str>,
    ) -> String {
        let bytes = |v: Option<&str>| {
            v.map_or("NULL".to_string(), |v| {
                format!("CAST({} AS VARBINARY(MAX))", lit(v))
            })
        };
        format!(
            "INSERT INTO [{t}] (payload, headers, options, ordering_key) VALUES ({}, {}, {}, {})",
            bytes(Some(payload)),
            bytes(headers),
            bytes(options),
            key.map_or("NULL".to_string(), |k| format!("N{}", lit(k)))
        )
    }
    fn delayed_insert_sql(t: &str, payload: &str, secs: u32) -> String {
        // As docs/stores.md shows: UTC, like every time column of the table.
        format!(
            "INSERT INTO [{t}] (payload, available_at) \
             VALUES (CAST({} AS VARBINARY(MAX)), DATEADD(SECOND, {secs}, SYSUTCDATETIME()))",
            lit(payload)
        )
    }
}

store_conformance!(Mssql, #[ignore = "needs a SQL Server: set OUTBOXER_MSSQL_URL and pass --include-ignored (none can be installed on this machine)"]);

// ---- No server needed below. ----

#[test]
fn ado_passwords_never_reach_errors() {
    for raw in [
        "server=tcp:127.0.0.1,1;user=sa;password=s3cret-pw;encrypt=maybe",
        "server=tcp:127.0.0.1,1;user=sa;PWD='s3cret-pw;x';encrypt=maybe",
        "server=tcp:127.0.0.1,1;user=sa;password={s3cret-pw",
        "sqlserver://sa:s3cret-pw@127.0.0.1:1/db",
    ] {
        match SqlServerStore::connect(raw) {
            Err(e @ Error::InvalidUrl { .. }) => {
                let shown = format!("{e} {e:?}");
                assert!(!shown.contains("s3cret"), "{shown}");
            }
            other => panic!("{raw}: {other:?}"),
        }
    }
    match SqlServerStore::connect("server=tcp:h,1;user=sa;password=s3cret-pw;encrypt=maybe") {
        Err(Error::InvalidUrl { url, .. }) => {
            assert_eq!(url, "server=tcp:h,1;user=sa;password=***;encrypt=maybe")
        }
        other => panic!("{other:?}"),
    }
    // A connection failure does not show the password either.
    let e = Mssql::unreachable().expect_err("nothing listens on port 1");
    let shown = format!("{e} {e:?}");
    assert!(!shown.contains("s3cret"), "{shown}");
    assert_eq!(
        redact_ado("Server=h;User Id=sa;Password=\"a;b\";Database=d"),
        "Server=h;User Id=sa;Password=***;Database=d"
    );
}

#[test]
fn bad_table_names_fail_before_connecting() {
    for bad in [
        "x; DROP TABLE users",
        "a]b",
        "a\"b",
        "",
        "1x",
        "a.b.c",
        "a-b",
        "[x]",
    ] {
        let started = Instant::now();
        match SqlServerStore::builder(UNREACHABLE).table(bad).build() {
            Err(Error::InvalidIdentifier { .. }) => {}
            other => panic!("{bad:?}: {other:?}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{bad:?} tried to connect"
        );
    }
}

#[test]
fn unreachable_server_is_a_typed_error_quickly() {
    let started = Instant::now();
    match Mssql::unreachable() {
        Err(Error::Database { .. }) => {}
        other => panic!("{other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // JDBC strings are accepted too (the error is the connection, not the string).
    match SqlServerStore::connect("jdbc:sqlserver://127.0.0.1:1;user=sa;password=x") {
        Err(Error::Database { .. }) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn silent_server_hits_the_connect_timeout() {
    // Accepts TCP and never answers the TDS pre-login.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let holder = std::thread::spawn(move || {
        let conn = listener.accept();
        std::thread::sleep(Duration::from_secs(1));
        drop(conn);
    });
    let started = Instant::now();
    let r = SqlServerStore::builder(&format!(
        "server=tcp:127.0.0.1,{port};user=sa;password=x;TrustServerCertificate=true"
    ))
    .connect_timeout(Duration::from_millis(300))
    .build();
    let took = started.elapsed();
    match r {
        Err(e @ Error::Database { .. }) => {
            assert!(e.to_string().contains("connect_timeout"), "{e}")
        }
        other => panic!("{other:?}"),
    }
    assert!(took < Duration::from_secs(2), "{took:?}");
    holder.join().expect("listener thread");
}

#[test]
fn store_is_shareable_across_threads() {
    fn shareable<T: Store + Clone + Send + Sync + 'static>() {}
    shareable::<SqlServerStore>();
}
