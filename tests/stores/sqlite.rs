//! SQLite: one database file per test process under the temp directory; each test
//! uses tables of its own.

use crate::conformance::{self, Harness};
use outboxer::store::{Lease, SqliteStore, Store};
use outboxer::{Error, Message};
use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

const DB_PREFIX: &str = "outboxer-stores-";

fn db_path() -> PathBuf {
    static SWEEP: std::sync::Once = std::sync::Once::new();
    SWEEP.call_once(remove_stale_files);
    // A claimer child process (see below) uses its parent's file.
    std::env::var_os("OUTBOXER_SQLITE_TEST_DB")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::temp_dir().join(format!("{DB_PREFIX}{}.db", std::process::id()))
        })
}

/// Files of earlier test processes that have exited (libtest has no teardown hook).
fn remove_stale_files() {
    let Ok(dir) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid = name
            .strip_prefix(DB_PREFIX)
            .and_then(|rest| rest.split('.').next())
            .and_then(|pid| pid.parse::<u32>().ok());
        if let Some(pid) = pid {
            let alive = std::path::Path::new(&format!("/proc/{pid}")).exists();
            if cfg!(target_os = "linux") && !alive {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

fn conn() -> rusqlite::Connection {
    let c = rusqlite::Connection::open(db_path()).expect("open the test database");
    c.busy_timeout(Duration::from_secs(10))
        .expect("busy timeout");
    c
}

pub struct Sqlite;

impl Harness for Sqlite {
    type S = SqliteStore;
    const ROW_LOCKS: bool = false;
    fn try_store(table: &str) -> Result<SqliteStore, Error> {
        SqliteStore::builder(db_path()).table(table).build()
    }
    fn unreachable() -> Result<SqliteStore, Error> {
        let dir = std::env::temp_dir().join(format!("outboxer-missing-dir-{}", std::process::id()));
        SqliteStore::open(dir.join("outbox.db"))
    }
    fn exec(statements: &[String]) {
        let c = conn();
        for s in statements {
            c.execute_batch(s).expect("exec");
        }
    }
    fn go_table(t: &str) -> Vec<String> {
        // Go outboxer's MySQL shape, in SQLite's types.
        vec![
            format!(
                "CREATE TABLE \"{t}\" (id INTEGER PRIMARY KEY AUTOINCREMENT, dispatched BOOLEAN NOT NULL DEFAULT 0, \
                 dispatched_at DATETIME, payload BLOB NOT NULL, options TEXT, headers TEXT)"
            ),
            format!("CREATE INDEX \"{t}_dispatched_index\" ON \"{t}\" (dispatched)"),
            format!(
                "INSERT INTO \"{t}\" (payload, dispatched, dispatched_at) VALUES (CAST('old' AS BLOB), 1, datetime('now'))"
            ),
            format!(
                "INSERT INTO \"{t}\" (payload, options, headers) VALUES (CAST('from go' AS BLOB), '{{}}', '{{\"n\": 1}}')"
            ),
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
        // SQLite has no defaults for the times: a writer sets them (unix ms).
        format!(
            "INSERT INTO \"{t}\" (message_id, payload, headers, options, ordering_key, created_at, available_at) \
             VALUES (randomblob(16), CAST({} AS BLOB), {}, {}, {}, \
                     CAST(unixepoch('subsec') * 1000 AS INTEGER), CAST(unixepoch('subsec') * 1000 AS INTEGER))",
            conformance::lit(payload),
            conformance::lit_or_null(headers),
            conformance::lit_or_null(options),
            conformance::lit_or_null(key)
        )
    }
    fn delayed_insert_sql(t: &str, payload: &str, secs: u32) -> String {
        // As docs/stores.md shows: unix milliseconds, now plus the delay.
        format!(
            "INSERT INTO \"{t}\" (message_id, payload, created_at, available_at) \
             VALUES (randomblob(16), CAST({} AS BLOB), \
                     CAST(unixepoch('subsec') * 1000 AS INTEGER), \
                     CAST(unixepoch('subsec') * 1000 AS INTEGER) + {secs} * 1000)",
            conformance::lit(payload)
        )
    }
}

store_conformance!(Sqlite);

/// Two stores opened separately on one file share nothing in memory (no pool, no
/// lock), exactly like two processes: only SQLite's file locking keeps them apart.
#[test]
fn two_stores_on_one_file_never_claim_a_row_twice() {
    let t = conformance::unique("sq_two");
    let a = conformance::store::<Sqlite>(&t);
    let b = Sqlite::try_store(&t).expect("second store");
    b.migrate().expect("migrate from the second store");
    let msgs: Vec<Message> = (0..1000)
        .map(|i| Message::new(format!("m{i}").into_bytes()))
        .collect();
    // Both stores enqueue while the others claim.
    let (first, second) = msgs.split_at(500);
    let claimed: Vec<i64> = std::thread::scope(|sc| {
        sc.spawn(|| a.enqueue(first).expect("enqueue a"));
        sc.spawn(|| {
            for chunk in second.chunks(50) {
                b.enqueue(chunk).expect("enqueue b");
            }
        });
        let claimers: Vec<_> = [&a, &b, &a, &b]
            .into_iter()
            .map(|s| {
                sc.spawn(move || {
                    let mut mine = Vec::new();
                    let mut idle = 0;
                    // Keep going until the table stays empty for a while (enqueues race us).
                    while idle < 20 {
                        let l = Lease::new(Duration::from_secs(60));
                        let got = s.claim(&l, 13.into()).expect("claim").messages;
                        if got.is_empty() {
                            idle += 1;
                            std::thread::sleep(Duration::from_millis(10));
                            continue;
                        }
                        idle = 0;
                        let ids: Vec<i64> = got.iter().map(|m| m.id).collect();
                        assert_eq!(s.mark_dispatched(&l, &ids).expect("mark").len(), ids.len());
                        mine.extend(ids);
                    }
                    mine
                })
            })
            .collect();
        claimers
            .into_iter()
            .flat_map(|h| h.join().expect("claimer"))
            .collect()
    });
    let distinct: HashSet<i64> = claimed.iter().copied().collect();
    assert_eq!(distinct.len(), claimed.len(), "no row claimed twice");
    assert_eq!(claimed.len(), 1000, "every row claimed");
    let st = a.stats().expect("stats");
    assert_eq!((st.pending, st.dispatched), (0, 1000), "{st:?}");
    Sqlite::drop_table(&t);
}

/// Many connections opening a brand-new file at once all get it in WAL mode.
#[test]
fn concurrent_opens_of_a_fresh_file() {
    let path = std::env::temp_dir().join(format!("{}.db", conformance::unique("outboxer-fresh")));
    std::thread::scope(|sc| {
        let hs: Vec<_> = (0..6)
            .map(|_| {
                let p = path.clone();
                sc.spawn(move || SqliteStore::open(&p)?.migrate())
            })
            .collect();
        for h in hs {
            h.join().expect("thread").expect("open and migrate");
        }
    });
    let mode: String = rusqlite::Connection::open(&path)
        .and_then(|c| c.query_row("PRAGMA journal_mode", [], |r| r.get(0)))
        .expect("journal mode");
    assert_eq!(mode, "wal");
    for ext in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{ext}", path.display()));
    }
}

#[test]
fn memory_databases_and_bad_urls_are_refused() {
    for url in [":memory:", "sqlite::memory:", "sqlite://:memory:", ""] {
        assert!(
            matches!(
                SqliteStore::connect(url),
                Err(Error::Config { field: "path", .. })
            ),
            "{url:?}"
        );
    }
    assert!(matches!(
        SqliteStore::connect("sqlite://x.db?mode=memory"),
        Err(Error::InvalidUrl { .. })
    ));
    let url = format!("sqlite://{}", db_path().display());
    let s = SqliteStore::connect(&url).expect("sqlite:// URL");
    assert_eq!(s.path(), db_path());
}

/// A table that is not an outbox (no rowid `id`) is refused, not mangled.
#[test]
fn foreign_tables_are_not_upgraded() {
    let t = conformance::unique("sq_foreign");
    Sqlite::exec(&[format!(
        "CREATE TABLE \"{t}\" (id TEXT PRIMARY KEY, payload BLOB)"
    )]);
    let s = Sqlite::try_store(&t).expect("store");
    assert!(matches!(
        s.migrate(),
        Err(Error::Config { field: "table", .. })
    ));
    Sqlite::drop_table(&t);
}

/// The Go table's dispatched row keeps its time (as integer milliseconds, so cleanup
/// finds it) and its rows get message ids.
#[test]
fn go_rows_are_carried_over() {
    let g = conformance::unique("sq_go");
    Sqlite::exec(&Sqlite::go_table(&g));
    let s = conformance::store::<Sqlite>(&g);
    let (kind, len): (String, i64) = conn()
        .query_row(
            &format!("SELECT typeof(dispatched_at), (SELECT count(*) FROM \"{g}\" WHERE length(message_id) = 16) FROM \"{g}\" WHERE status = 'dispatched'"),
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("upgraded row");
    assert_eq!((kind.as_str(), len), ("integer", 2));
    let st = s.stats().expect("stats");
    assert!(st.oldest_pending_age < Duration::from_secs(60), "{st:?}");
    assert_eq!(
        s.cleanup(Duration::from_secs(3600), 10).expect("cleanup"),
        0,
        "kept its time"
    );
    assert_eq!(s.cleanup(Duration::ZERO, 10).expect("cleanup"), 1);
    Sqlite::drop_table(&g);
}

const CHILD_TABLE: &str = "OUTBOXER_SQLITE_CHILD_TABLE";
const CHILD_OUT: &str = "OUTBOXER_SQLITE_CHILD_OUT";
const CHILD_START: &str = "OUTBOXER_SQLITE_CHILD_START";

fn unix_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

/// Real processes: this test binary runs itself twice as claimers on one table.
#[test]
fn two_processes_on_one_file_never_claim_a_row_twice() {
    let t = conformance::unique("sq_proc");
    let s = conformance::store::<Sqlite>(&t);
    let msgs: Vec<Message> = (0..1000)
        .map(|i| Message::new(format!("m{i}").into_bytes()))
        .collect();
    s.enqueue(&msgs).expect("enqueue");
    let exe = std::env::current_exe().expect("test binary");
    let outs: Vec<PathBuf> = (0..2)
        .map(|i| std::env::temp_dir().join(format!("{t}_{i}.ids")))
        .collect();
    // Both children start claiming at the same instant, whenever each got started.
    let start = unix_ms() + 700;
    let children: Vec<_> = outs
        .iter()
        .map(|out| {
            std::process::Command::new(&exe)
                .args([
                    "--exact",
                    "sqlite::claimer_process",
                    "--ignored",
                    "--test-threads=1",
                ])
                .env(CHILD_TABLE, &t)
                .env(CHILD_OUT, out)
                .env(CHILD_START, start.to_string())
                // The child must use this process's database file.
                .env("OUTBOXER_SQLITE_TEST_DB", db_path())
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("spawn a claimer process")
        })
        .collect();
    for mut c in children {
        assert!(c.wait().expect("claimer process").success());
    }
    let mut all = Vec::new();
    let mut per_process = Vec::new();
    for out in &outs {
        let text = std::fs::read_to_string(out).expect("claimed ids");
        let ids: Vec<i64> = text.lines().map(|l| l.parse().expect("id")).collect();
        per_process.push(ids.len());
        all.extend(ids);
        let _ = std::fs::remove_file(out);
    }
    eprintln!("rows claimed per process: {per_process:?}");
    let distinct: HashSet<i64> = all.iter().copied().collect();
    assert_eq!(distinct.len(), all.len(), "no row claimed twice");
    assert_eq!(all.len(), 1000, "every row claimed once: {per_process:?}");
    Sqlite::drop_table(&t);
}

/// One claimer process of the test above; does nothing when run on its own.
#[test]
#[ignore = "a child process of two_processes_on_one_file_never_claim_a_row_twice"]
fn claimer_process() {
    let (Ok(table), Ok(out)) = (std::env::var(CHILD_TABLE), std::env::var(CHILD_OUT)) else {
        return;
    };
    let s = Sqlite::try_store(&table).expect("store");
    let start: u128 = std::env::var(CHILD_START)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let wait = start.saturating_sub(unix_ms());
    std::thread::sleep(Duration::from_millis(u64::try_from(wait).unwrap_or(0)));
    let mut mine = Vec::new();
    loop {
        let l = Lease::new(Duration::from_secs(60));
        let got = s.claim(&l, 11.into()).expect("claim").messages;
        if got.is_empty() {
            break;
        }
        let ids: Vec<i64> = got.iter().map(|m| m.id).collect();
        assert_eq!(s.mark_dispatched(&l, &ids).expect("mark").len(), ids.len());
        mine.extend(ids);
        // A relay publishes between claims: leave the other process a gap to claim in.
        std::thread::sleep(Duration::from_millis(1));
    }
    let text: String = mine.iter().map(|id| format!("{id}\n")).collect();
    std::fs::write(out, text).expect("write claimed ids");
}

/// SQLite keeps whatever a writer puts in a column: invalid JSON, a message id or a
/// payload of the wrong type. Each such row is returned apart, with the column
/// named, and the claim goes on.
#[test]
fn loosely_typed_bad_rows_are_claimed_apart() {
    let t = conformance::unique("sq_loose");
    let s = conformance::store::<Sqlite>(&t);
    let now = "CAST(unixepoch('subsec') * 1000 AS INTEGER)";
    let row = |message_id: &str, payload: &str, headers: &str| {
        format!(
            "INSERT INTO \"{t}\" (message_id, payload, headers, created_at, available_at) \
             VALUES ({message_id}, {payload}, {headers}, {now}, {now})"
        )
    };
    Sqlite::exec(&[
        row("randomblob(16)", "CAST('g1' AS BLOB)", "NULL"),
        row("randomblob(16)", "CAST('x' AS BLOB)", "'{not json'"),
        row("42", "CAST('x' AS BLOB)", "NULL"),
        row("randomblob(3)", "CAST('x' AS BLOB)", "NULL"),
        row("randomblob(16)", "1.5", "NULL"),
        row("randomblob(16)", "CAST('x' AS BLOB)", "7"),
        // Text forms another tool may write are read, not refused.
        row(
            "'0190a8c0-0000-7000-8000-000000000001'",
            "'g2'",
            "'{\"a\": \"b\"}'",
        ),
    ]);
    let claim = s
        .claim(&Lease::new(Duration::from_secs(30)), 100.into())
        .expect("a bad row never fails the claim");
    let payloads: Vec<&[u8]> = claim
        .messages
        .iter()
        .map(|m| m.payload.as_slice())
        .collect();
    assert_eq!(payloads, [&b"g1"[..], b"g2"]);
    let reasons: Vec<&str> = claim
        .undecodable
        .iter()
        .map(|u| u.reason.as_str())
        .collect();
    assert_eq!(reasons.len(), 5, "{reasons:?}");
    for (reason, column) in
        reasons
            .iter()
            .zip(["headers", "message_id", "message_id", "payload", "headers"])
    {
        assert!(reason.contains(column), "{reason:?} names {column}");
    }
    Sqlite::drop_table(&t);
}
