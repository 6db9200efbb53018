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
use std::time::{Duration, SystemTime, UNIX_EPOCH};

mod cases;
mod processes;
pub use cases::*;
pub use processes::two_processes_race_on_the_same_ids;

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

pub fn ids(n: usize) -> Vec<MessageId> {
    (0..n).map(|_| MessageId::new()).collect()
}

pub fn ok(r: Result<Outcome<()>, Fail>) -> Outcome<()> {
    r.unwrap_or_else(|e| panic!("apply failed: {e:?}"))
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
