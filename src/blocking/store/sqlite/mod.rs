//! SQLite store on `rusqlite` with its bundled SQLite: WAL mode, `BEGIN IMMEDIATE`
//! writes, leases claimed with `UPDATE .. RETURNING`, a small pool of connections.

use super::{run_in, Finish};
use super::{
    BatchLimit, Claim, Decoded, FailedAttempt, HeldKey, Lease, ParkedMessage, Purgeable, Requeue,
    Stats, Store, TxStore, Undecodable,
};
use crate::core::ident::TableName;
use crate::core::rows;
use crate::core::sql::sqlite::{millis, millis_up, sqlite_table, SqliteSql};
use crate::message::{Message, MessageId, StoredMessage};
use crate::{Error, Result};
use parking_lot::{Mutex, ReentrantMutex, ReentrantMutexGuard};
use rusqlite::types::ValueRef;
use rusqlite::{params, Connection, ErrorCode, OpenFlags, Transaction, TransactionBehavior};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

mod connection;
mod decode;
mod queries;
mod schema;

use self::connection::database_path;

/// The outbox table in an SQLite database file (the bundled SQLite, 3.35+ for
/// `RETURNING`): the embedded store, no server needed.
///
/// Several relay threads and processes may share one file: claims are leases taken
/// in `BEGIN IMMEDIATE` transactions, which SQLite runs one at a time, and marks
/// check the lease token. The file must be on a local disk (WAL mode needs shared
/// memory, which network file systems do not provide).
///
/// Cheap to clone: clones share one pool of connections. Columns hold timestamps as
/// INTEGER unix milliseconds and `message_id` as a 16-byte BLOB (`hex(message_id)` in
/// the `sqlite3` shell).
///
/// `send_within_tx` takes a `rusqlite::Transaction` on any connection to the same file
/// (rusqlite 0.37). Give your own connections a busy timeout and begin with
/// `TransactionBehavior::Immediate`, as `with_transaction` does: a deferred transaction
/// that reads and then writes fails at once with SQLITE_BUSY when another connection
/// wrote in between. There are no cross-process wake-ups: a relay in another process
/// sees new messages at its next poll (`check_interval`).
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// use outboxer::store::{Lease, SqliteStore};
/// use outboxer::{Message, Store, TxStore};
/// use std::time::Duration;
///
/// let path = std::env::temp_dir().join(format!("outboxer-doc-{}.db", std::process::id()));
/// let store = SqliteStore::builder(&path)
///     .table("event_store")
///     .busy_timeout(Duration::from_secs(5))
///     .build()?;
/// store.migrate()?;
///
/// // The message commits or rolls back with the business rows.
/// store.with_transaction(|tx| -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
///     tx.execute("CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, total INTEGER)", [])?;
///     tx.execute("INSERT INTO orders (total) VALUES (?1)", [42])?;
///     store.enqueue_in_tx(tx, &[Message::new(b"order placed".to_vec())])?;
///     Ok(())
/// })?;
///
/// let lease = Lease::new(Duration::from_secs(30));
/// let claimed = store.claim(&lease, 10.into())?;
/// let ids: Vec<i64> = claimed.messages.iter().map(|m| m.id).collect();
/// assert_eq!(store.mark_dispatched(&lease, &ids)?, ids);
/// # drop(store);
/// # for ext in ["", "-wal", "-shm"] {
/// #     let _ = std::fs::remove_file(format!("{}{ext}", path.display()));
/// # }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    table: TableName,
    sql: SqliteSql,
    busy_timeout: Duration,
    full_sync: bool,
    idle: Mutex<Vec<Connection>>,
    max_idle: usize,
    /// Write transactions of this process queue here: see [`SqliteStore::turn`].
    writer: ReentrantMutex<()>,
}

/// Settings of a [`SqliteStore`].
#[derive(Debug)]
pub struct SqliteStoreBuilder {
    path: Result<PathBuf>,
    table: Result<TableName>,
    busy_timeout: Duration,
    max_idle: usize,
    full_sync: bool,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .field("table", &self.inner.table.plain())
            .finish_non_exhaustive()
    }
}

/// The longest busy timeout accepted: anything longer is a stuck writer, not contention.
const MAX_BUSY_TIMEOUT: Duration = Duration::from_secs(3600);

impl SqliteStore {
    /// Opens (creating if needed) the database file at `path`, table `event_store`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::builder(path).build()
    }

    /// Opens a `sqlite://path`, `sqlite:path` URL or a plain path (`sqlite:///abs/x.db`
    /// is `/abs/x.db`, `sqlite://x.db` is `x.db` relative to the working directory),
    /// table `event_store`. In-memory databases are refused: every pooled connection
    /// would see a database of its own.
    pub fn connect(url: &str) -> Result<Self> {
        Self::builder(url).build()
    }

    /// A builder for table name, busy timeout and pool settings; `path` may also be a
    /// `sqlite:` URL as [`SqliteStore::connect`] takes.
    pub fn builder(path: impl AsRef<Path>) -> SqliteStoreBuilder {
        SqliteStoreBuilder {
            path: database_path(path.as_ref()),
            table: Ok(TableName::default()),
            busy_timeout: Duration::from_secs(5),
            max_idle: 4,
            full_sync: false,
        }
    }

    /// Creates or upgrades the table (same as [`Store::migrate`], without importing the trait).
    pub fn migrate(&self) -> Result<()> {
        Store::migrate(self)
    }

    /// The table this store uses.
    pub fn table(&self) -> &TableName {
        &self.inner.table
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }
}

impl SqliteStoreBuilder {
    /// The table (`name` or `main.name`, a plain identifier); default `event_store`.
    pub fn table(mut self, name: &str) -> Self {
        self.table = TableName::parse(name).and_then(|t| sqlite_table(&t));
        self
    }

    /// How long a statement waits for another connection's write lock before failing
    /// with a database error (default 5 s, at most 1 hour).
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }

    /// Connections kept open between uses (default 4).
    pub fn max_idle(mut self, n: usize) -> Self {
        self.max_idle = n;
        self
    }

    /// `PRAGMA synchronous = FULL` instead of `NORMAL` (default false): every commit
    /// is fsynced, so it survives a power loss too, at the price of one fsync per
    /// commit. See [`SqliteStoreBuilder::build`].
    pub fn full_sync(mut self, on: bool) -> Self {
        self.full_sync = on;
        self
    }

    /// Validates the settings and opens one connection, creating the file if needed
    /// and switching it to WAL mode.
    ///
    /// Every connection runs `journal_mode = WAL` (readers and the one writer do not
    /// block each other, and a commit appends to the log instead of rewriting pages),
    /// the busy timeout, and `synchronous = NORMAL`: in WAL mode that syncs at
    /// checkpoints rather than at every commit. Commits stay atomic and survive a crash
    /// of the process; a power loss may undo the latest commits, business rows and
    /// their messages together, so the outbox never disagrees with the data. Use
    /// [`full_sync`](SqliteStoreBuilder::full_sync) where a message may already have
    /// been relayed before such a loss and that matters.
    pub fn build(self) -> Result<SqliteStore> {
        let path = self.path?;
        let table = self.table?;
        if self.busy_timeout.is_zero() || self.busy_timeout > MAX_BUSY_TIMEOUT {
            return Err(Error::config(
                "busy_timeout",
                format!(
                    "must be between 1 ms and 1 hour, got {:?}",
                    self.busy_timeout
                ),
            ));
        }
        let store = SqliteStore {
            inner: Arc::new(Inner {
                sql: SqliteSql::new(&table),
                table,
                path,
                busy_timeout: self.busy_timeout,
                full_sync: self.full_sync,
                idle: Mutex::new(Vec::new()),
                max_idle: self.max_idle,
                writer: ReentrantMutex::new(()),
            }),
        };
        store.with_conn(|_| Ok::<(), Error>(()))?;
        Ok(store)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_paths() {
        let p = |s: &str| database_path(Path::new(s));
        assert_eq!(
            p("sqlite:///tmp/x.db").ok(),
            Some(PathBuf::from("/tmp/x.db"))
        );
        assert_eq!(p("sqlite://x.db").ok(), Some(PathBuf::from("x.db")));
        assert_eq!(p("sqlite:data/x.db").ok(), Some(PathBuf::from("data/x.db")));
        assert_eq!(
            p("/var/lib/app.db").ok(),
            Some(PathBuf::from("/var/lib/app.db"))
        );
        for memory in [
            ":memory:",
            "sqlite::memory:",
            "sqlite://:memory:",
            "",
            "sqlite://",
        ] {
            assert!(
                matches!(p(memory), Err(Error::Config { field: "path", .. })),
                "{memory:?}"
            );
        }
        assert!(matches!(
            p("sqlite://x.db?mode=rwc"),
            Err(Error::InvalidUrl { .. })
        ));
    }

    #[test]
    fn bad_settings_are_typed_errors() {
        let dir = std::env::temp_dir();
        let b = || SqliteStore::builder(dir.join("never-opened.db"));
        for t in [Duration::ZERO, Duration::from_secs(7200), Duration::MAX] {
            assert!(matches!(
                b().busy_timeout(t).build(),
                Err(Error::Config {
                    field: "busy_timeout",
                    ..
                })
            ));
        }
        assert!(matches!(
            b().table("app.events").build(),
            Err(Error::InvalidIdentifier { .. })
        ));
    }
}
