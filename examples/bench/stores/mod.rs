//! The databases.

#[cfg(feature = "mysql")]
pub mod mysql;
// Always built: the example requires the `postgres` feature.
pub mod postgres;
#[cfg(feature = "sqlite")]
pub mod sqlite;
#[cfg(feature = "sqlserver")]
pub mod sqlserver;

use crate::BoxResult;
use outboxer::{Message, Store};
use std::collections::HashSet;
use std::time::Duration;

/// One database: what the phases need beyond the [`Store`] trait.
pub trait Backend {
    type S: Store;
    /// How phase 1 inserts, for its output line.
    const INSERT_HOW: &'static str;

    /// The server and its version, for the first line.
    fn version(&self) -> BoxResult<String>;
    /// Phase 1's timed part: (re)creates the plain table `table` (only a primary key,
    /// the outbox table's column types) and inserts `messages`, [`CHUNK`] rows per
    /// transaction, statements prepared before the clock starts.
    fn plain_insert(&self, table: &str, messages: &[Message]) -> BoxResult<Duration>;
    /// Rows in `table`.
    fn count(&self, table: &str) -> BoxResult<u64>;
    /// A store on `table`, migrated.
    fn store(&self, table: &str) -> BoxResult<Self::S>;
    /// Drops `table` and whatever the store created with it.
    fn drop_table(&self, table: &str) -> BoxResult<()>;
    /// Drops every table whose name starts with `prefix` (all phases, also after an error).
    fn drop_tables_like(&self, prefix: &str) -> BoxResult<()>;
    /// Starts measuring what the database writes (WAL, redo) during a relay run.
    fn log_meter(&self) -> BoxResult<Option<Box<dyn LogMeter>>> {
        Ok(None)
    }
    /// The names (`/proc/<pid>/comm`) of the database server's processes, for its
    /// CPU time; none when the database runs in the relay's process.
    const SERVER_PROCESSES: &'static [&'static str] = &[];
    /// The server threads (OS ids) serving connections of other clients: those
    /// whose client port is not one of `mine` (this process's own sockets).
    fn foreign_tasks(&self, mine: &HashSet<u16>) -> BoxResult<HashSet<u32>> {
        let _ = mine;
        Ok(HashSet::new())
    }
    /// Last cleanup once the tables are gone (a database file of our own, say).
    fn finish(&self) {}
}

/// What the database wrote between [`Backend::log_meter`] and `report`.
pub trait LogMeter {
    fn report(self: Box<Self>, messages: u64) -> BoxResult<Logged>;
}

/// A [`LogMeter`]'s report: a line for people, the log bytes per message.
pub struct Logged {
    pub text: String,
    pub bytes_per_msg: Option<f64>,
}

/// `bench\_123\_%`: a LIKE pattern (backslash escapes) for names starting with `prefix`.
pub fn like_prefix(prefix: &str) -> String {
    format!("{}%", prefix.replace('_', "\\_"))
}
