//! The consumer inbox (`outboxer::inbox`, `outboxer::async_impl::inbox`) against
//! the real servers: PostgreSQL and MariaDB on 127.0.0.1, SQLite files. The same
//! cases run on every store compiled in (one `Backend` per store):
//!
//! - a duplicate returns `AlreadyProcessed` and does not repeat the side effect;
//! - a failing handler leaves nothing recorded (the caller's own writes stay), a
//!   rolled-back transaction neither, and the id is processed on retry;
//! - threads racing on the same ids, one id at a time behind a barrier, with the
//!   first handler holding its uncommitted id: each effect once, and the second
//!   consumer waits for the first one's commit instead of running the handler;
//! - a waiter takes over when the first consumer's handler fails;
//! - two processes (this binary re-run as `inbox_child_consumer`) racing on the
//!   same ids: each effect once;
//! - retention deletes only old ids, in batches;
//! - a bad table name is a typed error.
//!
//! SQL Server: no server here; its inbox SQL is unit-tested in the library.

use outboxer::inbox::Outcome;
use outboxer::MessageId;
use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[cfg(feature = "async")]
mod async_api;
#[cfg(feature = "mysql")]
mod mysql;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;

/// A name unique to this run, for tables and files.
pub fn unique(prefix: &str) -> String {
    let n = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{prefix}_{}_{}", std::process::id(), n % 1_000_000_000_000)
}

/// Where the inbox lives: enough for a child process to open it too. The side
/// effects go to the table `{table}_fx` (no unique key: a repeated effect shows).
#[derive(Clone, Debug)]
pub struct Place {
    pub kind: &'static str,
    /// A URL, or the SQLite file path.
    pub location: String,
    pub table: String,
}

impl Place {
    pub fn effects(&self) -> String {
        format!("{}_fx", self.table)
    }
}

/// How one delivery is handled.
#[derive(Clone, Copy, Debug, Default)]
pub struct How {
    /// The handler sleeps this long after its write, holding the uncommitted id.
    pub hold: Duration,
    /// The handler fails after its write.
    pub fail: bool,
    /// The caller rolls its transaction back after `process`.
    pub abort: bool,
}

/// Why `apply` failed.
#[derive(Debug)]
pub enum Fail {
    Deliberate,
    Db(outboxer::Error),
}

impl From<outboxer::Error> for Fail {
    fn from(e: outboxer::Error) -> Self {
        Fail::Db(e)
    }
}

/// One store's consumer: a connection of its own, the inbox, the effects table.
pub trait Backend: Sized + Send + 'static {
    fn connect(place: &Place) -> Self;
    /// Migrates the inbox and creates the effects table.
    fn setup(&mut self);
    /// Drops both tables (or removes the file).
    fn teardown(place: &Place);
    /// One transaction: `process` with a handler that writes the effect row
    /// (`worker`), then commit (or roll back with `how.abort`, or after an `Err`).
    fn apply(&mut self, id: MessageId, worker: &str, how: How) -> Result<Outcome<()>, Fail>;
    /// Effect rows by message id (text): the workers that wrote them.
    fn effects(&mut self) -> BTreeMap<String, Vec<String>>;
    fn recorded(&mut self, id: MessageId) -> bool;
    /// Moves the id's `processed_at` this far into the past.
    fn backdate(&mut self, id: MessageId, by: Duration);
    fn cleanup(&mut self, older_than: Duration, limit: usize) -> u64;
    fn inbox_rows(&mut self) -> u64;
}

/// Drops the tables when the test ends, also on failure.
pub struct Cleanup<B: Backend>(pub Place, std::marker::PhantomData<B>);

impl<B: Backend> Cleanup<B> {
    pub fn new(place: &Place) -> Self {
        Cleanup(place.clone(), std::marker::PhantomData)
    }
}

impl<B: Backend> Drop for Cleanup<B> {
    fn drop(&mut self) {
        B::teardown(&self.0);
    }
}

fn ids(n: usize) -> Vec<MessageId> {
    (0..n).map(|_| MessageId::new()).collect()
}

fn ok(r: Result<Outcome<()>, Fail>) -> Outcome<()> {
    r.unwrap_or_else(|e| panic!("apply failed: {e:?}"))
}

// ---------------------------------------------------------------------------
// The cases, generic over the store.

pub fn duplicates_are_already_processed<B: Backend>(place: Place) {
    let _c = Cleanup::<B>::new(&place);
    let mut db = B::connect(&place);
    db.setup();
    db.setup(); // migrate is idempotent
    let (a, b) = (MessageId::new(), MessageId::new());
    assert_eq!(
        ok(db.apply(a, "w1", How::default())),
        Outcome::Processed(())
    );
    assert_eq!(
        ok(db.apply(b, "w1", How::default())),
        Outcome::Processed(())
    );
    for _ in 0..3 {
        assert_eq!(
            ok(db.apply(a, "w2", How::default())),
            Outcome::AlreadyProcessed
        );
    }
    let fx = db.effects();
    assert_eq!(fx[&a.to_string()], vec!["w1".to_string()], "{fx:?}");
    assert_eq!(fx[&b.to_string()], vec!["w1".to_string()], "{fx:?}");
    assert!(db.recorded(a) && db.recorded(b));
    assert_eq!(db.inbox_rows(), 2);
}

pub fn failing_handler_leaves_nothing_recorded<B: Backend>(place: Place) {
    let _c = Cleanup::<B>::new(&place);
    let mut db = B::connect(&place);
    db.setup();
    let id = MessageId::new();
    let failing = How {
        fail: true,
        ..How::default()
    };
    assert!(matches!(db.apply(id, "w1", failing), Err(Fail::Deliberate)));
    assert!(!db.recorded(id), "a failed handler's id is recorded");
    let aborted = How {
        abort: true,
        ..How::default()
    };
    assert_eq!(ok(db.apply(id, "w2", aborted)), Outcome::Processed(()));
    assert!(
        !db.recorded(id),
        "a rolled-back transaction's id is recorded"
    );
    assert!(
        db.effects().is_empty(),
        "effects of a failed handler or a rolled-back transaction: {:?}",
        db.effects()
    );
    // The retry runs the handler, once.
    assert_eq!(
        ok(db.apply(id, "w3", How::default())),
        Outcome::Processed(())
    );
    assert_eq!(
        ok(db.apply(id, "w4", How::default())),
        Outcome::AlreadyProcessed
    );
    assert_eq!(db.effects()[&id.to_string()], vec!["w3".to_string()]);
}

/// `apply` variant that keeps the caller's transaction after the handler fails
/// and commits it: the caller's own row stays, the handler's effect and the id go.
pub fn caller_writes_survive_a_failing_handler<B: Backend + CallerRow>(place: Place) {
    let _c = Cleanup::<B>::new(&place);
    let mut db = B::connect(&place);
    db.setup();
    let id = MessageId::new();
    let outcome = db.fail_then_commit(id);
    assert!(matches!(outcome, Err(Fail::Deliberate)), "{outcome:?}");
    assert!(!db.recorded(id));
    let fx = db.effects();
    assert_eq!(
        fx.get(&id.to_string()),
        Some(&vec!["caller".to_string()]),
        "only the caller's own row commits: {fx:?}"
    );
}

/// The caller's transaction stays usable after a failing handler.
pub trait CallerRow {
    /// Creates the effects table only (no inbox table).
    fn create_effects_only(&mut self);
    /// Writes a row as `caller`, runs a failing handler that writes an effect,
    /// commits anyway; returns the handler's error.
    fn fail_then_commit(&mut self, id: MessageId) -> Result<Outcome<()>, Fail>;
}

/// Two threads, one id at a time behind a barrier. For every id exactly one of
/// them runs the handler. On every 4th id the first handler holds its
/// uncommitted id for `HOLD`: the other one's `process` must wait for the commit
/// and return `AlreadyProcessed` (it cannot have finished before the holder
/// committed).
pub fn two_threads_race_on_the_same_ids<B: Backend>(place: Place) {
    const HOLD: Duration = Duration::from_millis(300);
    const HEAD_START: Duration = Duration::from_millis(80);
    let _c = Cleanup::<B>::new(&place);
    B::connect(&place).setup();
    let all = Arc::new(ids(40));
    let barrier = Arc::new(Barrier::new(2));
    let workers: Vec<_> = (0..2)
        .map(|w| {
            let (place, all, barrier) = (place.clone(), Arc::clone(&all), Arc::clone(&barrier));
            std::thread::spawn(move || {
                let mut db = B::connect(&place);
                let mut out = Vec::new();
                for (i, id) in all.iter().enumerate() {
                    barrier.wait();
                    // Worker 0 goes first on held ids: its handler holds the id.
                    let held = i % 4 == 0;
                    if held && w == 1 {
                        std::thread::sleep(HEAD_START);
                    }
                    let how = How {
                        hold: if held && w == 0 { HOLD } else { Duration::ZERO },
                        ..How::default()
                    };
                    let began = Instant::now();
                    let r = ok(db.apply(*id, &format!("w{w}"), how));
                    out.push((r, began.elapsed()));
                }
                out
            })
        })
        .collect();
    let results: Vec<Vec<(Outcome<()>, Duration)>> = workers
        .into_iter()
        .map(|h| h.join().expect("worker"))
        .collect();
    let mut db = B::connect(&place);
    let fx = db.effects();
    let mut waited = Vec::new();
    for (i, id) in all.iter().enumerate() {
        let (a, b) = (&results[0][i], &results[1][i]);
        assert_eq!(
            a.0.is_processed() as u8 + b.0.is_processed() as u8,
            1,
            "id {i}: {a:?} {b:?}"
        );
        assert_eq!(
            fx.get(&id.to_string()).map(Vec::len),
            Some(1),
            "id {i}: {fx:?}"
        );
        if i % 4 == 0 {
            assert!(a.0.is_processed(), "id {i}: the holder runs it: {a:?}");
            assert!(b.0.is_duplicate(), "id {i}: {b:?}");
            // Started HEAD_START after the holder, returned after its commit.
            assert!(
                b.1 >= HOLD - HEAD_START - Duration::from_millis(20),
                "id {i}: the duplicate returned after {:?}, before the holder committed",
                b.1
            );
            waited.push(b.1);
        }
    }
    assert_eq!(db.inbox_rows(), all.len() as u64);
    println!("INBOX race store={} waits={waited:?}", place.kind);
}

/// The first consumer's handler fails while the second waits on its id: the
/// second runs the handler (its effect is the only one), nothing is lost.
pub fn a_waiter_takes_over_when_the_handler_fails<B: Backend>(place: Place) {
    const HOLD: Duration = Duration::from_millis(300);
    let _c = Cleanup::<B>::new(&place);
    B::connect(&place).setup();
    let id = MessageId::new();
    let barrier = Arc::new(Barrier::new(2));
    let first = {
        let (place, barrier) = (place.clone(), Arc::clone(&barrier));
        std::thread::spawn(move || {
            let mut db = B::connect(&place);
            barrier.wait();
            let how = How {
                hold: HOLD,
                fail: true,
                ..How::default()
            };
            db.apply(id, "first", how)
        })
    };
    let mut db = B::connect(&place);
    barrier.wait();
    std::thread::sleep(Duration::from_millis(80));
    let began = Instant::now();
    let second = db.apply(id, "second", How::default());
    let waited = began.elapsed();
    let first = first.join().expect("first");
    assert!(matches!(first, Err(Fail::Deliberate)), "{first:?}");
    assert_eq!(ok(second), Outcome::Processed(()));
    assert!(
        waited >= Duration::from_millis(150),
        "did not wait for the first: {waited:?}"
    );
    assert_eq!(db.effects()[&id.to_string()], vec!["second".to_string()]);
    assert_eq!(
        ok(db.apply(id, "third", How::default())),
        Outcome::AlreadyProcessed
    );
}

/// Three consumers of one id, the first one's handler failing while the other
/// two wait: exactly one of them runs the handler. The third either sees the
/// duplicate or, on InnoDB, may be chosen as a deadlock victim (a typed database
/// error: the delivery is retried); never a second effect.
pub fn two_waiters_on_a_failing_handler<B: Backend>(place: Place) {
    const HOLD: Duration = Duration::from_millis(300);
    let _c = Cleanup::<B>::new(&place);
    B::connect(&place).setup();
    let id = MessageId::new();
    let barrier = Arc::new(Barrier::new(3));
    let workers: Vec<_> = (0..3)
        .map(|w| {
            let (place, barrier) = (place.clone(), Arc::clone(&barrier));
            std::thread::spawn(move || {
                let mut db = B::connect(&place);
                barrier.wait();
                let how = if w == 0 {
                    How {
                        hold: HOLD,
                        fail: true,
                        ..How::default()
                    }
                } else {
                    std::thread::sleep(Duration::from_millis(80));
                    How::default()
                };
                db.apply(id, &format!("w{w}"), how)
            })
        })
        .collect();
    let results: Vec<_> = workers
        .into_iter()
        .map(|h| h.join().expect("worker"))
        .collect();
    assert!(matches!(results[0], Err(Fail::Deliberate)), "{results:?}");
    let processed = results[1..]
        .iter()
        .filter(|r| matches!(r, Ok(Outcome::Processed(()))))
        .count();
    let others_ok = results[1..]
        .iter()
        .all(|r| matches!(r, Ok(_) | Err(Fail::Db(outboxer::Error::Database { .. }))));
    assert!(others_ok, "{results:?}");
    let mut db = B::connect(&place);
    let fx = db.effects();
    assert_eq!(
        fx.get(&id.to_string()).map(Vec::len),
        Some(1),
        "{fx:?} {results:?}"
    );
    assert!(processed <= 1, "{results:?}");
    if processed == 0 {
        // Both waiters failed (deadlock victims): the redelivery processes it.
        assert_eq!(
            ok(db.apply(id, "retry", How::default())),
            Outcome::Processed(())
        );
    }
    println!(
        "INBOX two waiters store={} outcomes={results:?}",
        place.kind
    );
}

/// Before `migrate`, `process` is a typed database error and the caller's
/// transaction stays usable.
pub fn unmigrated_table_is_a_database_error<B: Backend + CallerRow>(place: Place) {
    let _c = Cleanup::<B>::new(&place);
    let mut db = B::connect(&place);
    db.create_effects_only();
    let id = MessageId::new();
    let r = db.apply(id, "w", How::default());
    assert!(
        matches!(r, Err(Fail::Db(outboxer::Error::Database { .. }))),
        "{r:?}"
    );
    assert!(
        db.effects().is_empty(),
        "the handler ran: {:?}",
        db.effects()
    );
}

/// Sequential consumption, one transaction per message: new ids, then the same
/// ids again (duplicates). Prints messages per second (`--ignored --nocapture`).
pub fn throughput<B: Backend>(place: Place) {
    const N: usize = 500;
    let _c = Cleanup::<B>::new(&place);
    let mut db = B::connect(&place);
    db.setup();
    let all = ids(N);
    let t = Instant::now();
    for id in &all {
        assert!(ok(db.apply(*id, "w", How::default())).is_processed());
    }
    let new = t.elapsed();
    let t = Instant::now();
    for id in &all {
        assert!(ok(db.apply(*id, "w", How::default())).is_duplicate());
    }
    let dup = t.elapsed();
    println!(
        "INBOX throughput store={} new={:.0}/s duplicates={:.0}/s",
        place.kind,
        N as f64 / new.as_secs_f64(),
        N as f64 / dup.as_secs_f64()
    );
}

pub fn retention_deletes_old_ids_in_batches<B: Backend>(place: Place) {
    let _c = Cleanup::<B>::new(&place);
    let mut db = B::connect(&place);
    db.setup();
    let day = Duration::from_secs(24 * 3600);
    let old = ids(7);
    let new = ids(3);
    for id in old.iter().chain(&new) {
        assert!(ok(db.apply(*id, "w", How::default())).is_processed());
    }
    for id in &old {
        db.backdate(*id, 2 * day);
    }
    let mut batches = Vec::new();
    loop {
        let n = db.cleanup(day, 3);
        batches.push(n);
        if n < 3 {
            break;
        }
    }
    assert_eq!(batches, vec![3, 3, 1], "batches of at most 3");
    assert!(old.iter().all(|id| !db.recorded(*id)));
    assert!(new.iter().all(|id| db.recorded(*id)));
    assert_eq!(db.inbox_rows(), 3);
    // A limit of 0 still makes progress (at least one row per call).
    db.backdate(new[0], 2 * day);
    assert_eq!(db.cleanup(day, 0), 1);
    // A deleted id is processed again: retention must outlast redeliveries.
    assert!(ok(db.apply(old[0], "again", How::default())).is_processed());
}

// ---------------------------------------------------------------------------
// Two processes.

const ENV_KIND: &str = "OUTBOXER_INBOX_KIND";
const ENV_LOCATION: &str = "OUTBOXER_INBOX_LOCATION";
const ENV_TABLE: &str = "OUTBOXER_INBOX_TABLE";
const ENV_IDS: &str = "OUTBOXER_INBOX_IDS";
const ENV_START: &str = "OUTBOXER_INBOX_START_MS";
const ENV_WORKER: &str = "OUTBOXER_INBOX_WORKER";

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

/// Not a test: a consumer process that the two_processes_* tests spawn. It
/// processes the ids it is given, in order, from a common start time, and prints
/// its outcomes.
#[test]
#[ignore = "helper process, spawned by the two_processes_* tests"]
fn inbox_child_consumer() {
    let var =
        |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k}: only run by the inbox tests"));
    let place = Place {
        kind: match var(ENV_KIND).as_str() {
            "postgres" => "postgres",
            "mysql" => "mysql",
            "sqlite" => "sqlite",
            other => panic!("unknown kind {other}"),
        },
        location: var(ENV_LOCATION),
        table: var(ENV_TABLE),
    };
    let ids: Vec<MessageId> = var(ENV_IDS)
        .split(',')
        .map(|s| s.parse().expect("a message id"))
        .collect();
    let start: u128 = var(ENV_START).parse().expect("start ms");
    let worker = var(ENV_WORKER);
    let (processed, duplicates) = match place.kind {
        #[cfg(feature = "postgres")]
        "postgres" => child_run::<postgres::Pg>(&place, &ids, start, &worker),
        #[cfg(feature = "mysql")]
        "mysql" => child_run::<mysql::Maria>(&place, &ids, start, &worker),
        #[cfg(feature = "sqlite")]
        "sqlite" => child_run::<sqlite::Lite>(&place, &ids, start, &worker),
        other => panic!("{other} not compiled in"),
    };
    println!("INBOX_CHILD processed={processed} duplicates={duplicates}");
}

fn child_run<B: Backend>(
    place: &Place,
    ids: &[MessageId],
    start: u128,
    worker: &str,
) -> (usize, usize) {
    let mut db = B::connect(place);
    while now_ms() < start {
        std::thread::sleep(Duration::from_millis(2));
    }
    let (mut processed, mut duplicates) = (0, 0);
    for (i, id) in ids.iter().enumerate() {
        // Every 8th handler holds its id a moment, so the other process meets it.
        let how = How {
            hold: if i % 8 == 0 {
                Duration::from_millis(5)
            } else {
                Duration::ZERO
            },
            ..How::default()
        };
        match ok(db.apply(*id, worker, how)) {
            Outcome::Processed(()) => processed += 1,
            Outcome::AlreadyProcessed => duplicates += 1,
        }
    }
    (processed, duplicates)
}

/// Two consumer processes (and the same ids twice over) racing: every effect
/// exactly once.
pub fn two_processes_race_on_the_same_ids<B: Backend>(place: Place) {
    let _c = Cleanup::<B>::new(&place);
    B::connect(&place).setup();
    let all = ids(300);
    let list = all
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let exe = std::env::current_exe().expect("test binary");
    // Far enough ahead for both processes to start and connect.
    let start = now_ms() + 1500;
    let children: Vec<_> = (0..2)
        .map(|w| {
            Command::new(&exe)
                .args([
                    "--exact",
                    "inbox_child_consumer",
                    "--ignored",
                    "--nocapture",
                    "--quiet",
                    "--test-threads=1",
                ])
                .env(ENV_KIND, place.kind)
                .env(ENV_LOCATION, &place.location)
                .env(ENV_TABLE, &place.table)
                .env(ENV_IDS, &list)
                .env(ENV_START, start.to_string())
                .env(ENV_WORKER, format!("p{w}"))
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn a consumer process")
        })
        .collect();
    let mut totals = (0, 0);
    let mut splits = Vec::new();
    for c in children {
        let out = c.wait_with_output().expect("consumer process");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "consumer failed: {}\n{}\n{}",
            out.status,
            text,
            String::from_utf8_lossy(&out.stderr)
        );
        let line = text
            .lines()
            .find(|l| l.starts_with("INBOX_CHILD"))
            .unwrap_or_else(|| panic!("no outcome line in {text}"));
        let num = |k: &str| -> usize {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(k))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{k} in {line}"))
        };
        let (p, d) = (num("processed="), num("duplicates="));
        totals.0 += p;
        totals.1 += d;
        splits.push((p, d));
    }
    let mut db = B::connect(&place);
    let fx = db.effects();
    let repeated: Vec<_> = fx.iter().filter(|(_, w)| w.len() != 1).collect();
    assert!(
        repeated.is_empty(),
        "effects applied more than once: {repeated:?}"
    );
    assert_eq!(fx.len(), all.len(), "ids without an effect");
    assert_eq!(
        totals,
        (all.len(), all.len()),
        "processed and duplicates over both"
    );
    assert_eq!(db.inbox_rows(), all.len() as u64);
    println!(
        "INBOX processes store={} (processed, duplicates) per process={splits:?}",
        place.kind
    );
}

/// A table name that is not a plain identifier is refused with a typed error.
#[test]
fn bad_table_names_are_typed_errors() {
    for bad in ["", "a.b.c", "x; DROP TABLE y", "in\"box", &"a".repeat(41)] {
        #[cfg(feature = "postgres")]
        assert!(matches!(
            outboxer::inbox::PostgresInbox::with_table(bad),
            Err(outboxer::Error::InvalidIdentifier { .. })
        ));
        #[cfg(feature = "mysql")]
        assert!(matches!(
            outboxer::inbox::MysqlInbox::with_table(bad),
            Err(outboxer::Error::InvalidIdentifier { .. })
        ));
        #[cfg(feature = "sqlite")]
        assert!(matches!(
            outboxer::inbox::SqliteInbox::with_table(bad),
            Err(outboxer::Error::InvalidIdentifier { .. })
        ));
        #[cfg(feature = "sqlserver")]
        assert!(matches!(
            outboxer::inbox::SqlServerInbox::with_table(bad),
            Err(outboxer::Error::InvalidIdentifier { .. })
        ));
    }
    #[cfg(feature = "sqlite")]
    assert!(matches!(
        outboxer::inbox::SqliteInbox::with_table("other.inbox"),
        Err(outboxer::Error::InvalidIdentifier { .. })
    ));
}

/// One `#[test]` per case for a store.
#[macro_export]
macro_rules! inbox_cases {
    ($backend:ty, $place:expr) => {
        #[test]
        fn duplicates_are_already_processed() {
            $crate::duplicates_are_already_processed::<$backend>($place);
        }
        #[test]
        fn failing_handler_leaves_nothing_recorded() {
            $crate::failing_handler_leaves_nothing_recorded::<$backend>($place);
        }
        #[test]
        fn caller_writes_survive_a_failing_handler() {
            $crate::caller_writes_survive_a_failing_handler::<$backend>($place);
        }
        #[test]
        fn two_threads_race_on_the_same_ids() {
            $crate::two_threads_race_on_the_same_ids::<$backend>($place);
        }
        #[test]
        fn a_waiter_takes_over_when_the_handler_fails() {
            $crate::a_waiter_takes_over_when_the_handler_fails::<$backend>($place);
        }
        #[test]
        fn two_processes_race_on_the_same_ids() {
            $crate::two_processes_race_on_the_same_ids::<$backend>($place);
        }
        #[test]
        fn two_waiters_on_a_failing_handler() {
            $crate::two_waiters_on_a_failing_handler::<$backend>($place);
        }
        #[test]
        fn unmigrated_table_is_a_database_error() {
            $crate::unmigrated_table_is_a_database_error::<$backend>($place);
        }
        #[test]
        #[ignore = "a measurement: run with --ignored --nocapture"]
        fn throughput() {
            $crate::throughput::<$backend>($place);
        }
        #[test]
        fn retention_deletes_old_ids_in_batches() {
            $crate::retention_deletes_old_ids_in_batches::<$backend>($place);
        }
    };
}
