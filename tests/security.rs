// Over 800 lines on purpose: one module per store below, each compiled with its store's feature and read on its own.
//! Security: table names and message contents never reach SQL unescaped, and
//! credentials are never printed.
//!
//! Injection attempts run against the real local servers (PostgreSQL
//! `OUTBOXER_PG_URL`, MariaDB `OUTBOXER_MYSQL_URL`, SQLite in the temp directory);
//! SQL Server only where no server is needed (builders fail before connecting).
//! Each part is compiled with its store's cargo feature.
#![allow(dead_code)]

use outboxer::store::{Lease, Store};
use outboxer::{Error, Message};
use std::time::Duration;

const SECRET: &str = "S3cr3tPw";

/// Table names that must never be accepted: SQL breakouts for each quoting style,
/// comments, whitespace, control characters, and Unicode look-alikes.
const BAD_TABLES: &[&str] = &[
    "x\"; DROP TABLE y; --",
    "x`; DROP TABLE y; --",
    "x]; DROP TABLE y; --",
    "x'; DROP TABLE y; --",
    "x; DROP TABLE y",
    "x--",
    "x/*",
    "x y",
    " x",
    "x ",
    "x\n",
    "x\0",
    "x\u{200b}",     // zero-width space
    "ｅvent_store",  // fullwidth e
    "evеnt_store",   // Cyrillic e
    "event_storе",   // Cyrillic e at the end
    "event\u{301}",  // combining accent
    "\u{feff}event", // BOM
    "event.store.x",
    "\"event_store\"",
    "`event_store`",
    "[event_store]",
    "public.\"x\"",
    "x$1",
    "x?",
    "x%s",
    "",
    ".",
];

/// Text that breaks naive SQL or JSON building.
fn nasty_texts() -> Vec<String> {
    let mut v: Vec<String> = [
        "'; DROP TABLE {victim}; --",
        "\"; DROP TABLE {victim}; --",
        "`; DROP TABLE {victim}; --",
        "]; DROP TABLE {victim}; --",
        "' OR '1'='1",
        "\\",
        "\\'",
        "\\\"",
        "\\\\'; --",
        "$1",
        "$2::text",
        "@P1",
        "?",
        "??",
        ":name",
        "%s",
        "%%",
        "%d%n",
        "{\"a\": 1}",
        "[1, 2]",
        "null",
        "true",
        "\"quoted\"",
        "\\u0000",
        "/* comment */",
        "-- comment",
        "\r\n\t",
        "  padded  ",
        "ключ 🎉 漢字",
        "\u{202e}rtl",
        "x\u{7f}\u{1}",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.push("q".repeat(200));
    v
}

fn unique(prefix: &str) -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{prefix}_{}_{}", std::process::id(), n % 1_000_000_000_000)
}

fn is_invalid_identifier(r: Result<impl std::fmt::Debug, Error>, name: &str) {
    match r {
        Err(Error::InvalidIdentifier { name: n, .. }) => assert_eq!(n, name),
        other => panic!("{name:?}: expected InvalidIdentifier, got {other:?}"),
    }
}

/// Messages whose every part carries one nasty text. Ordering keys are made
/// distinct (a claim returns one message per key).
fn nasty_messages(texts: &[String], victim: &str) -> Vec<Message> {
    texts
        .iter()
        .enumerate()
        .map(|(i, raw)| {
            let t = raw.replace("{victim}", victim);
            let mut payload = t.clone().into_bytes();
            payload.extend_from_slice(&[0, 0xff, b'\'', b'"', b'\\']);
            Message::new(payload)
                .header(t.clone(), t.clone())
                .header(format!("h{i}"), t.clone())
                .option(t.clone(), t.clone())
                .option("routing_key", t.clone())
                .option(
                    "json",
                    serde_json::json!({ "nested": t.clone(), "list": [t.clone()] }),
                )
                .ordering_key(format!("{t}#{i}"))
        })
        .collect()
}

/// Enqueues (one by one and as one batch), claims everything back and compares
/// byte for byte; then checks the outbox and the victim tables still exist.
fn round_trip<S: Store>(s: &S, msgs: &[Message]) {
    let (first, rest) = msgs.split_at(msgs.len() / 2);
    for m in first {
        s.enqueue(std::slice::from_ref(m))
            .unwrap_or_else(|e| panic!("enqueue {:?}: {e}", m.key()));
    }
    s.enqueue(rest).expect("enqueue batch");
    let lease = Lease::new(Duration::from_secs(60));
    let mut got = Vec::new();
    for _ in 0..10 {
        let batch = s.claim(&lease, 1000.into()).expect("claim").messages;
        if batch.is_empty() {
            break;
        }
        got.extend(batch);
    }
    assert_eq!(got.len(), msgs.len(), "every message claimed");
    for m in msgs {
        let g = got
            .iter()
            .find(|g| g.message_id == m.message_id())
            .unwrap_or_else(|| panic!("{:?} not claimed", m.key()));
        assert_eq!(g.payload, m.payload(), "payload of {:?}", m.key());
        assert_eq!(&g.headers, m.headers(), "headers of {:?}", m.key());
        assert_eq!(&g.options, m.options(), "options of {:?}", m.key());
        assert_eq!(g.ordering_key.as_deref(), m.key(), "ordering key");
    }
    let ids: Vec<i64> = got.iter().map(|g| g.id).collect();
    assert_eq!(
        s.mark_dispatched(&lease, &ids).expect("mark").len(),
        msgs.len()
    );
    let st = s.stats().expect("the table is still there");
    assert_eq!(
        (st.pending, st.dispatched),
        (0, msgs.len() as u64),
        "{st:?}"
    );
}

/// NUL in one text field at a time (payload NUL bytes are in every nasty message):
/// stored exactly, or refused with a typed error and nothing stored. Returns the
/// refused fields.
fn nul_round_trip<S: Store>(s: &S, victim: &str) -> Vec<String> {
    let drop = format!("'\0'; DROP TABLE {victim}; --");
    let cases = [
        (
            "header value",
            Message::new(b"p".to_vec()).header("h", drop.clone()),
        ),
        (
            "header name",
            Message::new(b"p".to_vec()).header(drop.clone(), "v"),
        ),
        (
            "option value",
            Message::new(b"p".to_vec()).option("routing_key", drop.clone()),
        ),
        (
            "option key",
            Message::new(b"p".to_vec()).option(drop.clone(), true),
        ),
        (
            "ordering key",
            Message::new(b"p".to_vec()).ordering_key(drop.clone()),
        ),
        ("payload", Message::new(drop.clone().into_bytes())),
    ];
    let mut refused = Vec::new();
    for (what, m) in cases {
        match s.enqueue(std::slice::from_ref(&m)) {
            Ok(()) => round_trip_claimed(s, &m),
            Err(e @ Error::Database { .. }) => {
                let mut chain = e.to_string();
                if let Some(src) = std::error::Error::source(&e) {
                    chain = format!("{chain} ({src:?})");
                }
                refused.push(format!("{what}: {chain}"));
                assert_eq!(s.stats().expect("stats").pending, 0, "nothing stored");
            }
            Err(other) => panic!("{what}: {other:?}"),
        }
    }
    refused
}

fn round_trip_claimed<S: Store>(s: &S, m: &Message) {
    let lease = Lease::new(Duration::from_secs(60));
    let got = s.claim(&lease, 10.into()).expect("claim").messages;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].payload, m.payload());
    assert_eq!(&got[0].headers, m.headers());
    assert_eq!(&got[0].options, m.options());
    assert_eq!(got[0].ordering_key.as_deref(), m.key());
    assert_eq!(
        s.mark_dispatched(&lease, &[got[0].id]).expect("mark").len(),
        1
    );
}

/// Every formatting of an error, including its source chain.
fn error_texts(e: &Error) -> Vec<String> {
    let mut out = vec![e.to_string(), format!("{e:?}"), format!("{e:#?}")];
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        out.push(s.to_string());
        out.push(format!("{s:?}"));
        src = s.source();
    }
    out
}

fn assert_no_secret(what: &str, texts: &[String]) {
    for t in texts {
        assert!(!t.contains(SECRET), "{what}: password printed in {t}");
    }
}

#[test]
fn core_table_names_refuse_injection() {
    use outboxer::__private::TableName;
    for bad in BAD_TABLES {
        is_invalid_identifier(TableName::parse(bad), bad);
    }
}

#[cfg(feature = "postgres")]
mod postgres_store {
    use super::*;
    use outboxer::store::PostgresStore;

    fn url() -> String {
        std::env::var("OUTBOXER_PG_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
    }

    fn client() -> postgres::Client {
        postgres::Client::connect(&url(), postgres::NoTls).expect("PostgreSQL on 127.0.0.1:5432")
    }

    fn exists(c: &mut postgres::Client, table: &str) -> bool {
        let row = c
            .query_one(
                "SELECT to_regclass($1) IS NOT NULL",
                &[&format!("\"{table}\"")],
            )
            .expect("to_regclass");
        row.get(0)
    }

    #[test]
    fn bad_table_names_are_refused() {
        for bad in BAD_TABLES {
            is_invalid_identifier(PostgresStore::builder(&url()).table(bad).build(), bad);
            // Refused before any connection is tried.
            is_invalid_identifier(
                PostgresStore::builder("postgres://u@127.0.0.1:1/db")
                    .table(bad)
                    .build(),
                bad,
            );
        }
    }

    #[test]
    fn nasty_contents_round_trip() {
        let t = unique("sec_pg");
        let victim = unique("sec_pg_victim");
        let mut c = client();
        c.batch_execute(&format!("CREATE TABLE \"{victim}\" (id int)"))
            .expect("victim");
        let s = PostgresStore::builder(&url())
            .table(&t)
            .build()
            .expect("store");
        s.migrate().expect("migrate");
        round_trip(&s, &nasty_messages(&nasty_texts(), &victim));
        let refused = nul_round_trip(&s, &victim);
        eprintln!("PostgreSQL refused NUL texts: {refused:#?}");
        // PostgreSQL text and jsonb cannot hold U+0000; bytea can.
        assert!(
            refused.iter().all(|r| !r.starts_with("payload")),
            "{refused:#?}"
        );
        assert!(exists(&mut c, &t) && exists(&mut c, &victim));
        c.batch_execute(&format!("DROP TABLE \"{t}\"; DROP TABLE \"{victim}\""))
            .expect("drop");
    }

    /// The longest names `TableName` accepts (40-byte schema and table) work:
    /// migrate and enqueue with its NOTIFY. Fails today: the channel
    /// `outboxer_<schema>_<table>` (90 bytes) passes PostgreSQL's 63-byte limit and
    /// `pg_notify` refuses it, so every enqueue fails.
    #[test]
    fn longest_accepted_names_work() {
        longest_names(true);
    }

    /// The same without NOTIFY works.
    #[test]
    fn longest_accepted_names_work_without_notify() {
        longest_names(false);
    }

    fn longest_names(notify: bool) {
        let schema = format!("s{}", "x".repeat(39));
        let table = format!("t{}", unique("").replace('_', "y"))
            .chars()
            .take(40)
            .collect::<String>();
        let table = format!("{table:z<40}");
        let name = format!("{schema}.{table}");
        let mut c = client();
        c.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""))
            .expect("schema");
        let s = PostgresStore::builder(&url())
            .table(&name)
            .notify(notify)
            .build()
            .expect("store");
        let r = s
            .migrate()
            .and_then(|()| s.enqueue(&[Message::new(b"x".to_vec())]));
        c.batch_execute(&format!("DROP TABLE IF EXISTS \"{schema}\".\"{table}\""))
            .expect("drop");
        r.expect("migrate and enqueue with the longest accepted name");
    }

    /// The local server has `ssl = on` with a certificate of the test CA, which the
    /// built-in roots do not trust: `sslmode=require` verifies, so it must fail
    /// closed with the cause named, never fall back to plaintext.
    #[test]
    fn tls_required_with_an_untrusted_certificate_fails_closed() {
        let sep = if url().contains('?') { '&' } else { '?' };
        let e = PostgresStore::connect(&format!("{}{sep}sslmode=require", url()))
            .expect_err("the test CA is not among the built-in roots");
        assert!(
            matches!(
                e,
                Error::Tls {
                    cause: outboxer::tls::TlsCause::CertificateNotTrusted,
                    ..
                }
            ),
            "{e:?}"
        );
        PostgresStore::connect(&format!("{}{sep}sslmode=disable", url())).expect("plaintext");
    }

    #[test]
    fn credentials_never_printed() {
        let e = PostgresStore::connect(&format!("postgres://u:{SECRET}@127.0.0.1:1/db"))
            .expect_err("nothing listens on port 1");
        assert!(matches!(e, Error::Database { .. }), "{e:?}");
        assert_no_secret("pg unreachable", &error_texts(&e));
        for bad in [
            format!("postgres://u:{SECRET}@127.0.0.1:1/db?sslmode=bogus"),
            format!("postgres://u:{SECRET}@127.0.0.1:99999/db"),
            format!("host=127.0.0.1 port=1 user=u password={SECRET} sslmode=bogus"),
            format!("postgres://u@127.0.0.1:1/db?password={SECRET}&bogus=1"),
        ] {
            let e = PostgresStore::builder(&bad).build().expect_err("bad url");
            assert!(matches!(e, Error::InvalidUrl { .. }), "{e:?}");
            assert_no_secret(&bad, &error_texts(&e));
        }
        // A store built with a password in its URL (the local server trusts it).
        let with_pw = url().replacen("postgres@", &format!("postgres:{SECRET}@"), 1);
        if let Ok(s) = PostgresStore::connect(&with_pw) {
            assert_no_secret("pg store", &[format!("{s:?}"), format!("{s:#?}")]);
        }
    }
}

#[cfg(feature = "mysql")]
mod mysql_store {
    use super::*;
    use mysql::prelude::Queryable;
    use outboxer::store::MysqlStore;

    fn url() -> String {
        std::env::var("OUTBOXER_MYSQL_URL")
            .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into())
    }

    fn exists(c: &mut mysql::PooledConn, table: &str) -> bool {
        let n: Option<i64> = c
            .exec_first(
                "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = ?",
                (table,),
            )
            .expect("information_schema");
        n == Some(1)
    }

    #[test]
    fn bad_table_names_are_refused() {
        for bad in BAD_TABLES {
            is_invalid_identifier(MysqlStore::builder(&url()).table(bad).build(), bad);
            is_invalid_identifier(
                MysqlStore::builder("mysql://u@127.0.0.1:1/db")
                    .table(bad)
                    .build(),
                bad,
            );
        }
    }

    #[test]
    fn nasty_contents_round_trip() {
        let t = unique("sec_my");
        let victim = unique("sec_my_victim");
        let pool = mysql::Pool::new(url().as_str()).expect("pool");
        let mut c = pool.get_conn().expect("MariaDB on 127.0.0.1:3306");
        c.query_drop(format!("CREATE TABLE `{victim}` (id int)"))
            .expect("victim");
        let s = MysqlStore::builder(&url())
            .table(&t)
            .max_connections(2)
            .build()
            .expect("store");
        s.migrate().expect("migrate");
        round_trip(&s, &nasty_messages(&nasty_texts(), &victim));
        let refused = nul_round_trip(&s, &victim);
        assert!(
            refused.is_empty(),
            "MariaDB refused NUL texts: {refused:#?}"
        );
        assert!(exists(&mut c, &t) && exists(&mut c, &victim));
        c.query_drop(format!("DROP TABLE `{t}`, `{t}_keys`, `{victim}`"))
            .expect("drop");
    }

    /// The longest names `TableName` accepts (40-byte schema and table) work.
    #[test]
    fn longest_accepted_names_work() {
        let schema = format!("s{}", "x".repeat(39));
        let table = format!("t{}", unique("").replace('_', "y"))
            .chars()
            .take(40)
            .collect::<String>();
        let table = format!("{table:z<40}");
        let name = format!("{schema}.{table}");
        let pool = mysql::Pool::new(url().as_str()).expect("pool");
        let mut c = pool.get_conn().expect("MariaDB on 127.0.0.1:3306");
        c.query_drop(format!("CREATE DATABASE IF NOT EXISTS `{schema}`"))
            .expect("schema");
        let s = MysqlStore::builder(&url())
            .table(&name)
            .max_connections(2)
            .build()
            .expect("store");
        let r = s.migrate().and_then(|()| {
            s.enqueue(&[Message::new(b"x".to_vec()).ordering_key("k")])?;
            s.claim(&Lease::new(Duration::from_secs(5)), 10.into())
        });
        c.query_drop(format!("DROP DATABASE `{schema}`"))
            .expect("drop");
        assert_eq!(r.expect("migrate, enqueue, claim").len(), 1);
    }

    /// `danger_accept_invalid_certs` alone names no TLS mode: refused, never a
    /// silent plaintext or unverified connection (TLS itself: tests/tls/mysql.rs).
    #[test]
    fn the_danger_switch_without_ssl_mode_is_refused() {
        let sep = if url().contains('?') { '&' } else { '?' };
        let e = MysqlStore::connect(&format!("{}{sep}danger_accept_invalid_certs=true", url()))
            .expect_err("no ssl-mode");
        assert!(matches!(e, Error::InvalidUrl { .. }), "{e:?}");
        assert!(e.to_string().contains("ssl-mode"), "{e}");
    }

    #[test]
    fn credentials_never_printed() {
        let e = MysqlStore::connect(&format!("mysql://u:{SECRET}@127.0.0.1:1/db"))
            .expect_err("nothing listens on port 1");
        assert!(matches!(e, Error::Database { .. }), "{e:?}");
        assert_no_secret("mysql unreachable", &error_texts(&e));
        for bad in [
            format!("mysql://u:{SECRET}@127.0.0.1:1/db?bogus=1"),
            format!("mysql://u:{SECRET}@127.0.0.1:99999/db"),
            format!("mysql://u:{SECRET}@127.0.0.1:1/db?prefer_socket=maybe"),
        ] {
            let e = MysqlStore::builder(&bad).build().expect_err("bad url");
            assert!(matches!(e, Error::InvalidUrl { .. }), "{e:?}");
            assert_no_secret(&bad, &error_texts(&e));
        }
        // A wrong password against the real server: the access-denied error.
        let wrong = url().replacen("root@", &format!("root:{SECRET}@"), 1);
        match MysqlStore::connect(&wrong) {
            Ok(s) => assert_no_secret("mysql store", &[format!("{s:?}")]),
            Err(e) => assert_no_secret("mysql access denied", &error_texts(&e)),
        }
    }
}

#[cfg(feature = "sqlite")]
mod sqlite_store {
    use super::*;
    use outboxer::store::SqliteStore;
    use std::path::PathBuf;

    fn db_path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("{}.db", unique(name)))
    }

    fn remove(path: &std::path::Path) {
        for ext in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{ext}", path.display()));
        }
    }

    fn exists(c: &rusqlite::Connection, table: &str) -> bool {
        c.query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
            [table],
            |r| r.get::<_, i64>(0),
        )
        .expect("sqlite_master")
            == 1
    }

    #[test]
    fn bad_table_names_are_refused() {
        let p = db_path("outboxer-sec-names");
        for bad in BAD_TABLES {
            is_invalid_identifier(SqliteStore::builder(&p).table(bad).build(), bad);
        }
        assert!(!p.exists(), "no file created for refused settings");
        remove(&p);
    }

    #[test]
    fn nasty_contents_round_trip() {
        let p = db_path("outboxer-sec");
        let t = unique("sec_sq");
        let victim = unique("sec_sq_victim");
        let c = rusqlite::Connection::open(&p).expect("open");
        c.execute_batch(&format!("CREATE TABLE \"{victim}\" (id int)"))
            .expect("victim");
        let s = SqliteStore::builder(&p).table(&t).build().expect("store");
        s.migrate().expect("migrate");
        round_trip(&s, &nasty_messages(&nasty_texts(), &victim));
        let refused = nul_round_trip(&s, &victim);
        assert!(refused.is_empty(), "SQLite refused NUL texts: {refused:#?}");
        assert!(exists(&c, &t) && exists(&c, &victim));
        drop(s);
        drop(c);
        remove(&p);
    }
}

/// At `send`, the stream's limits are typed errors and nothing reaches the table.
#[cfg(all(feature = "sqlite", feature = "amqp"))]
#[test]
fn send_refuses_oversized_and_bad_options() {
    use outboxer::stream::{amqp, AmqpStream};
    use outboxer::Outbox;
    let p = std::env::temp_dir().join(format!("{}.db", unique("outboxer-sec-send")));
    let store = outboxer::store::SqliteStore::open(&p).expect("store");
    store.migrate().expect("migrate");
    let stream = AmqpStream::builder(&format!("amqp://u:{SECRET}@127.0.0.1:1/%2f"))
        .max_message_size(100)
        .build()
        .expect("lazy stream");
    let outbox = Outbox::builder()
        .store(store)
        .stream(stream)
        .build()
        .expect("outbox");
    let route = amqp::topic("orders", "k");
    let fits = Message::new(vec![1u8; 90])
        .route(route.clone())
        .header("ab", "cdefghij");
    outbox.send(fits).expect("exactly 100 bytes");
    for (m, want) in [
        (Message::new(vec![1u8; 101]).route(route.clone()), "size"),
        (
            Message::new(vec![1u8; 90])
                .route(route.clone())
                .header("ab", "cdefghijk"),
            "size",
        ),
        (
            Message::new(vec![1u8]).option("exchange.name", "x'; DROP TABLE y; --"),
            "exchange.name",
        ),
        (
            Message::new(vec![1u8]).option("exchange.type", "'; --"),
            "exchange.type",
        ),
        (
            Message::new(vec![1u8]).option("routing_key", "k".repeat(256)),
            "routing_key",
        ),
        (
            Message::new(vec![1u8]).option("exchange.durable", "yes"),
            "exchange.durable",
        ),
        (
            Message::new(vec![1u8]).option("x'; DROP TABLE y; --", true),
            "x'; DROP TABLE y; --",
        ),
    ] {
        match (outbox.send(m), want) {
            (Err(Error::PayloadTooLarge { limit: 100, size }), "size") => assert!(size > 100),
            (Err(Error::InvalidOption { key, .. }), k) => assert_eq!(key, k),
            (other, k) => panic!("{k}: {other:?}"),
        }
    }
    assert_eq!(
        outbox.stats().expect("stats").pending,
        1,
        "only the fitting one stored"
    );
    drop(outbox);
    for ext in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{ext}", p.display()));
    }
}

#[cfg(feature = "sqlserver")]
mod sqlserver_store {
    use super::*;
    use outboxer::store::SqlServerStore;

    /// Nothing listens on port 1.
    fn unreachable() -> String {
        format!("server=tcp:127.0.0.1,1;user=sa;password={SECRET};TrustServerCertificate=true")
    }

    #[test]
    fn bad_table_names_are_refused_before_connecting() {
        for bad in BAD_TABLES {
            let started = std::time::Instant::now();
            is_invalid_identifier(
                SqlServerStore::builder(&unreachable()).table(bad).build(),
                bad,
            );
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "no connection tried"
            );
        }
    }

    /// Every TLS setting of the connection string is accepted or refused with a
    /// typed error (no panic, even for the mutually exclusive trust settings), and
    /// none prints the password. Nothing listens on port 1, so accepted ones end in
    /// a connection error.
    #[test]
    fn tls_settings_are_typed() {
        for tls in [
            "encrypt=true",
            "encrypt=false",
            "encrypt=yes;TrustServerCertificate=yes",
            "encrypt=DANGER_PLAINTEXT",
            "encrypt=strict",
            "TrustServerCertificateCA=/nonexistent/ca.pem",
            "TrustServerCertificate=true;TrustServerCertificateCA=/nonexistent/ca.pem",
            "HostNameInCertificate=db.example.com",
            "encrypt=perhaps",
        ] {
            let conn = format!("server=tcp:127.0.0.1,1;user=sa;password={SECRET};{tls}");
            let r = std::panic::catch_unwind(|| {
                SqlServerStore::builder(&conn)
                    .connect_timeout(Duration::from_secs(3))
                    .build()
            });
            let r = r.unwrap_or_else(|_| panic!("{tls}: panicked"));
            let e = r.expect_err("nothing listens on port 1");
            assert!(
                matches!(e, Error::InvalidUrl { .. } | Error::Database { .. }),
                "{tls}: {e:?}"
            );
            assert_no_secret(tls, &error_texts(&e));
            eprintln!("{tls}: {e}");
        }
    }

    #[test]
    fn credentials_never_printed() {
        let b = SqlServerStore::builder(&unreachable()).connect_timeout(Duration::from_secs(3));
        assert_no_secret("builder", &[format!("{b:?}"), format!("{b:#?}")]);
        let e = b.build().expect_err("nothing listens on port 1");
        assert!(matches!(e, Error::Database { .. }), "{e:?}");
        assert_no_secret("sqlserver unreachable", &error_texts(&e));
        for bad in [
            format!("server=tcp:127.0.0.1,1;user=sa;password={SECRET};encrypt=bogus"),
            format!("server=tcp:127.0.0.1,1;user=sa;password='{SECRET};x';encrypt=bogus"),
            format!("server=tcp:127.0.0.1,1;user=sa;pwd={{{SECRET}}};encrypt=bogus"),
            format!("jdbc:sqlserver://127.0.0.1:1;user=sa;password={SECRET};encrypt=bogus"),
            format!("sqlserver://sa:{SECRET}@127.0.0.1:1/db"),
        ] {
            let b = SqlServerStore::builder(&bad);
            assert_no_secret(&bad, &[format!("{b:?}")]);
            let e = b.build().expect_err("bad connection string");
            assert!(matches!(e, Error::InvalidUrl { .. }), "{e:?}");
            assert_no_secret(&bad, &error_texts(&e));
        }
    }
}

#[cfg(feature = "amqp")]
mod amqp_stream {
    use super::*;
    use outboxer::stream::AmqpStream;

    #[test]
    fn credentials_never_printed() {
        let url = format!("amqp://u:{SECRET}@127.0.0.1:1/%2f");
        let s = AmqpStream::builder(&url)
            .build()
            .expect("build does not connect");
        assert_no_secret("stream", &[format!("{s:?}"), format!("{s:#?}")]);
        let e = AmqpStream::connect(&format!("{url}?connection_timeout=2000"))
            .expect_err("nothing listens on port 1");
        assert!(matches!(e, Error::Unavailable { .. }), "{e:?}");
        assert_no_secret("amqp unreachable", &error_texts(&e));
        for bad in [
            format!("amqps://u:{SECRET}@127.0.0.1:1/%2f?verify=verify_none"),
            format!("amqp://u:{SECRET}@127.0.0.1:1/%2f?cacertfile=/ca.pem"),
            format!("amqp://u:{SECRET}@127.0.0.1:1/%2f?heartbeat=x"),
            format!("amqp://u:{SECRET}@127.0.0.1:1/%2f?bogus=1"),
            format!("amqp://u:{SECRET}@127.0.0.1:99999/%2f"),
            format!("amqp://u:{SECRET}%zz@127.0.0.1:1/%2f"),
            format!("http://u:{SECRET}@127.0.0.1:1/"),
        ] {
            let e = AmqpStream::builder(&bad).build().expect_err("bad url");
            assert!(matches!(e, Error::InvalidUrl { .. }), "{e:?}");
            assert_no_secret(&bad, &error_texts(&e));
        }
        // Verification is never turned off by RabbitMQ's `verify_none`: the error
        // points to the loudly named setting.
        match AmqpStream::builder("amqps://guest:guest@127.0.0.1/%2f?verify=verify_none").build() {
            Err(Error::InvalidUrl { reason, .. }) => {
                assert!(reason.contains("danger_accept_invalid_certs"), "{reason}")
            }
            other => panic!("verify_none must be refused: {other:?}"),
        }
    }
}

/// URLs missing the `//` after the scheme are "cannot-be-a-base" URLs to the `url`
/// crate: `redact_url` returns them unchanged, password included, and the builders
/// put that text into `Error::InvalidUrl`.
#[test]
fn urls_without_slashes_are_redacted() {
    use outboxer::redact_url;
    for raw in [
        format!("amqp:guest:{SECRET}@127.0.0.1/%2f"),
        format!("postgres:u:{SECRET}@h/db"),
        format!("mysql:u:{SECRET}@h/db"),
        format!("amqp://guest:1234#{SECRET}@h/"),
    ] {
        let r = redact_url(&raw);
        assert!(!r.contains(SECRET), "{raw} -> {r}");
    }
}

/// AMQP encodes header names as short strings (at most 255 bytes) and the content
/// header must fit one frame (amiquip's frame_max, 128 KiB). `AmqpValidator`
/// checks neither, so such a message is accepted at `send`, then every publish
/// kills the connection and comes back as a transient `Unavailable`: the relay
/// releases it without counting an attempt and retries it forever, failing its
/// whole batch each time. Needs RabbitMQ (OUTBOXER_AMQP_URL).
#[cfg(feature = "amqp")]
#[test]
fn amqp_header_limits_are_checked_at_send() {
    use outboxer::stream::{amqp, AmqpStream, Stream};
    use outboxer::{Headers, MessageId, StoredMessage};
    let url = std::env::var("OUTBOXER_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let mut s = AmqpStream::connect(&url).expect("RabbitMQ on 127.0.0.1:5672");
    let cases: [(&str, Headers); 2] = [
        (
            "256-byte header name",
            [("h".repeat(256), "v".into())].into(),
        ),
        (
            "300 KiB of headers",
            [("h".into(), "v".repeat(300 * 1024))].into(),
        ),
    ];
    for (what, headers) in cases {
        let m = StoredMessage {
            id: 1,
            message_id: MessageId::new(),
            payload: b"x".to_vec(),
            headers,
            options: amqp::queue("outboxer-no-such-queue").into(),
            ordering_key: None,
            attempts: 0,
            created_at: std::time::SystemTime::now(),
        };
        let published = s.publish(
            std::slice::from_ref(&m),
            &outboxer::stream::Deadline::after(Duration::from_secs(120)),
        );
        assert!(
            !published[0].as_ref().is_err_and(|e| e.is_transient()),
            "{what}: publish fails as transient, retried forever: {published:?}"
        );
        let checked = s.validator().validate(&m.payload, &m.headers, &m.options);
        assert!(
            checked.as_ref().is_err_and(|e| e.is_permanent()),
            "{what}: accepted at send: {checked:?}"
        );
    }
}
