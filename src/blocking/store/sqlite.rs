//! SQLite store on `rusqlite` with its bundled SQLite: WAL mode, `BEGIN IMMEDIATE`
//! writes, leases claimed with `UPDATE .. RETURNING`, a small pool of connections.

use super::{run_in, Finish};
use super::{
    BatchLimit, Claim, Decoded, FailedAttempt, HeldKey, Lease, ParkedMessage, Requeue, Stats,
    Store, TxStore, Undecodable,
};
use crate::core::ident::TableName;
use crate::core::rows;
use crate::core::sql::sqlite::{millis, sqlite_table, SqliteSql};
use crate::message::{Message, MessageId, StoredMessage};
use crate::{Error, Result};
use parking_lot::{Mutex, ReentrantMutex, ReentrantMutexGuard};
use rusqlite::types::ValueRef;
use rusqlite::{params, Connection, ErrorCode, OpenFlags, Transaction, TransactionBehavior};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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

    /// Runs `f` on a pooled connection; the connection goes back to the pool unless it
    /// was left inside a transaction (a failed COMMIT or ROLLBACK).
    fn with_conn<T, E, F>(&self, f: F) -> std::result::Result<T, E>
    where
        F: FnOnce(&mut Connection) -> std::result::Result<T, E>,
        E: From<Error>,
    {
        let pooled = self.inner.idle.lock().pop();
        let mut conn = match pooled {
            Some(c) => c,
            None => self.inner.open()?,
        };
        let r = f(&mut conn);
        if conn.is_autocommit() {
            let mut idle = self.inner.idle.lock();
            if idle.len() < self.inner.max_idle {
                idle.push(conn);
            }
        }
        r
    }

    /// This process's turn to write. Without it, threads wait in SQLite's busy handler,
    /// which polls in growing sleeps (up to 100 ms) while a busy writer takes the lock
    /// again and again: measured with 6 writer threads, the slowest enqueue took
    /// 230 ms; queued here, 17 ms. Writers in other processes still meet in the busy
    /// handler. Reentrant, and given up after the busy timeout, so that a write nested
    /// in `with_transaction` (on any thread) fails with SQLITE_BUSY, as it would
    /// without this queue, instead of hanging.
    fn turn(&self) -> Option<ReentrantMutexGuard<'_, ()>> {
        self.inner.writer.try_lock_for(self.inner.busy_timeout)
    }

    /// One write transaction of our own. `BEGIN IMMEDIATE` takes the write lock up
    /// front, waiting under the busy timeout: a deferred transaction that reads first
    /// and then writes gets SQLITE_BUSY at once when another writer committed in
    /// between, without waiting.
    fn write<T>(
        &self,
        context: &'static str,
        f: impl FnOnce(&Transaction<'_>, i64) -> Result<T>,
    ) -> Result<T> {
        self.with_conn(|c| {
            let _turn = self.turn();
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db(context))?;
            // Read the clock once we hold the lock: time spent waiting must not age it.
            let r = f(&tx, now_ms())?;
            tx.commit().map_err(db(context))?;
            Ok(r)
        })
    }

    /// A connection with the store's settings, outside the pool (the async API's
    /// transactions own one each).
    #[cfg(feature = "async")]
    pub(crate) fn connection(&self) -> Result<Connection> {
        self.inner.open()
    }

    pub(crate) fn insert(&self, conn: &Connection, messages: &[Message]) -> Result<()> {
        if messages.is_empty() {
            return Ok(());
        }
        // Per-key order is commit order without any key lock: SQLite has one writer at
        // a time per file, and the writer holds the lock from its first INSERT to its
        // COMMIT, so ids are handed out in commit order.
        let ctx = "inserting messages";
        let now = now_ms();
        let mut stmt = conn
            .prepare_cached(&self.inner.sql.insert)
            .map_err(db(ctx))?;
        for m in messages {
            stmt.execute(params![
                m.message_id.as_uuid().as_bytes().as_slice(),
                m.payload,
                rows::headers_to_json(&m.headers).to_string(),
                rows::options_to_json(&m.options).to_string(),
                m.ordering_key,
                now,
            ])
            .map_err(db(ctx))?;
        }
        Ok(())
    }

    fn migrate_in(&self, tx: &Transaction<'_>, now: i64) -> Result<()> {
        let sql = &self.inner.sql;
        let ctx = "migrating the table";
        let cols = tx
            .prepare(&sql.inspect)
            .and_then(|mut s| {
                s.query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?.to_ascii_lowercase(),
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()
            })
            .map_err(db("inspecting the table"))?;
        let has = |name: &str| cols.iter().any(|(c, _, _)| c == name);
        if !cols.is_empty() {
            self.check_shape(&cols)?;
        }
        tx.execute_batch(&sql.create_table).map_err(db(ctx))?;
        let mut added = Vec::new();
        if !cols.is_empty() {
            for (col, stmt) in &sql.add_columns {
                if !has(col) {
                    tx.execute_batch(stmt).map_err(db(ctx))?;
                    added.push(*col);
                }
            }
        }
        if added.contains(&"status") && has("dispatched") {
            // A Go outboxer table: its dispatched rows stay dispatched.
            tx.execute(&sql.upgrade_go_rows, [now])
                .map_err(db("upgrading Go outboxer rows"))?;
        }
        if added.contains(&"created_at") {
            tx.execute(&sql.backfill_created_at, [now])
                .map_err(db("upgrading Go outboxer rows"))?;
        }
        if added.contains(&"message_id") {
            // SQLite cannot make a UUID; old rows get a random (v4) one here.
            let ids = tx
                .prepare(&sql.missing_message_ids)
                .and_then(|mut s| {
                    s.query_map([], |r| r.get::<_, i64>(0))?
                        .collect::<rusqlite::Result<Vec<_>>>()
                })
                .map_err(db("upgrading Go outboxer rows"))?;
            let mut set = tx
                .prepare(&sql.set_message_id)
                .map_err(db("upgrading Go outboxer rows"))?;
            for id in ids {
                set.execute(params![id, uuid::Uuid::new_v4().as_bytes().as_slice()])
                    .map_err(db("upgrading Go outboxer rows"))?;
            }
        }
        for stmt in &sql.indexes {
            tx.execute_batch(stmt).map_err(db("creating indexes"))?;
        }
        if !added.is_empty() {
            log::info!(
                "outboxer: upgraded table {} in {} (added {})",
                self.inner.table.plain(),
                self.inner.path.display(),
                added.join(", ")
            );
        }
        Ok(())
    }

    /// An existing table must be one we can upgrade: its `id` must be the rowid (so
    /// inserts number rows in order) and it must have a payload.
    fn check_shape(&self, cols: &[(String, String, i64)]) -> Result<()> {
        let keys: Vec<&(String, String, i64)> = cols.iter().filter(|c| c.2 > 0).collect();
        let rowid_id =
            matches!(keys.as_slice(), [(name, ty, _)] if name == "id" && ty == "INTEGER");
        if !rowid_id || !cols.iter().any(|c| c.0 == "payload") {
            return Err(Error::config(
                "table",
                format!(
                    "{} exists but is not an outbox table: it needs `id INTEGER PRIMARY KEY` and `payload`",
                    self.inner.table.plain()
                ),
            ));
        }
        Ok(())
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

impl Inner {
    fn open(&self) -> Result<Connection> {
        let ctx = "opening the SQLite database";
        // No SQLITE_OPEN_URI: the path is a file name, never reinterpreted.
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let c = Connection::open_with_flags(&self.path, flags).map_err(db(ctx))?;
        c.busy_timeout(self.busy_timeout).map_err(db(ctx))?;
        self.set_wal(&c)?;
        // NORMAL: in WAL mode, fsync at checkpoints instead of at every commit; what a
        // power loss can undo is explained on `build`.
        let sync = if self.full_sync { "FULL" } else { "NORMAL" };
        c.pragma_update(None, "synchronous", sync)
            .map_err(db(ctx))?;
        c.set_prepared_statement_cache_capacity(32);
        Ok(c)
    }

    /// WAL is a property of the file, set by the first connection. Switching takes an
    /// exclusive lock without calling the busy handler, so connections racing to open
    /// a fresh file can see SQLITE_BUSY: retry until the busy timeout.
    fn set_wal(&self, c: &Connection) -> Result<()> {
        let deadline = Instant::now() + self.busy_timeout;
        loop {
            match c.query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0)) {
                Ok(mode) => {
                    if !mode.eq_ignore_ascii_case("wal") {
                        log::warn!(
                            "outboxer: {} stays in journal mode {mode}, not WAL",
                            self.path.display()
                        );
                    }
                    return Ok(());
                }
                Err(e) if is_busy(&e) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(Error::db("switching the database to WAL", e)),
            }
        }
    }
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

/// Where a path or `sqlite:` URL points; in-memory databases are refused.
fn database_path(raw: &Path) -> Result<PathBuf> {
    let text = raw.to_str();
    let path = match text.and_then(|s| s.strip_prefix("sqlite:")) {
        Some(rest) => {
            let rest = rest.strip_prefix("//").unwrap_or(rest);
            if rest.contains('?') {
                return Err(Error::InvalidUrl {
                    url: text.unwrap_or_default().to_string(),
                    reason: "query parameters are not supported; use the builder's settings".into(),
                });
            }
            PathBuf::from(rest)
        }
        None => raw.to_path_buf(),
    };
    let s = path.to_str().unwrap_or("-");
    if s.is_empty() || s == ":memory:" {
        return Err(Error::config(
            "path",
            "an in-memory or temporary database is private to one connection, so the \
             relay would never see the messages: use a file",
        ));
    }
    Ok(path)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(millis)
        .unwrap_or(0)
}

fn db(context: &'static str) -> impl Fn(rusqlite::Error) -> Error {
    move |e| Error::db(context, e)
}

/// A 16-byte blob as the store writes it, or UUID text from a hand-written row.
fn message_id_of(v: ValueRef<'_>) -> Option<MessageId> {
    let uuid = match v {
        ValueRef::Blob(b) => uuid::Uuid::from_slice(b).ok(),
        ValueRef::Text(t) => std::str::from_utf8(t)
            .ok()
            .and_then(|s| uuid::Uuid::parse_str(s).ok()),
        _ => None,
    };
    uuid.map(MessageId::from_uuid)
}

/// A column shown to an operator, whatever type a writer gave it.
fn text_of(v: ValueRef<'_>) -> Option<String> {
    match v {
        ValueRef::Null => None,
        ValueRef::Integer(i) => Some(i.to_string()),
        ValueRef::Real(f) => Some(f.to_string()),
        ValueRef::Text(b) | ValueRef::Blob(b) => Some(String::from_utf8_lossy(b).into_owned()),
    }
}

/// JSON stored as TEXT (or as a BLOB by other writers); NULL is none.
fn json(v: ValueRef<'_>) -> std::result::Result<Option<serde_json::Value>, String> {
    match v {
        ValueRef::Null => Ok(None),
        ValueRef::Text(b) | ValueRef::Blob(b) => serde_json::from_slice(b)
            .map(Some)
            .map_err(|e| format!("invalid JSON: {e}")),
        other => Err(format!("expected JSON text, found {}", other.data_type())),
    }
}

/// A claimed row; only an unreadable id fails (the row cannot even be named).
/// SQLite keeps any type in any column, so every other column is checked here.
fn decode(row: &rusqlite::Row<'_>) -> Result<Decoded> {
    let id: i64 = row.get(0).map_err(db("decoding a claimed row"))?;
    Ok(decode_columns(id, row).map_err(|reason| Undecodable { id, reason }))
}

fn decode_columns(id: i64, row: &rusqlite::Row<'_>) -> std::result::Result<StoredMessage, String> {
    let cell = |i: usize, name: &str| row.get_ref(i).map_err(|e| format!("{name}: {e}"));
    let get = |i: usize, name: &str| row.get::<_, i64>(i).map_err(|e| format!("{name}: {e}"));
    let message_id = match cell(1, "message_id")? {
        ValueRef::Blob(b) => uuid::Uuid::from_slice(b).map_err(|e| format!("message_id: {e}"))?,
        // Rows written by hand or by other tools may hold the hyphenated text form.
        ValueRef::Text(t) => std::str::from_utf8(t)
            .ok()
            .and_then(|s| uuid::Uuid::parse_str(s).ok())
            .ok_or("message_id: not a UUID")?,
        other => return Err(format!("message_id: {}, not a UUID", other.data_type())),
    };
    let payload = match cell(2, "payload")? {
        ValueRef::Blob(b) | ValueRef::Text(b) => b.to_vec(),
        other => return Err(format!("payload: {}, not bytes", other.data_type())),
    };
    let headers = json(cell(3, "headers")?).map_err(|e| format!("headers: {e}"))?;
    let options = json(cell(4, "options")?).map_err(|e| format!("options: {e}"))?;
    let attempts = get(6, "attempts")?;
    let created_ms = get(7, "created_at")?;
    Ok(StoredMessage {
        id,
        message_id: MessageId::from_uuid(message_id),
        payload,
        headers: rows::headers_from_json(headers)?,
        options: rows::options_from_json(options)?,
        ordering_key: row.get(5).map_err(|e| format!("ordering_key: {e}"))?,
        attempts: u32::try_from(attempts.max(0)).unwrap_or(u32::MAX),
        created_at: UNIX_EPOCH + Duration::from_millis(u64::try_from(created_ms).unwrap_or(0)),
    })
}

impl Store for SqliteStore {
    fn migrate(&self) -> Result<()> {
        // BEGIN IMMEDIATE makes concurrent migrators, in any process, run one at a
        // time; the later ones find the columns present and change nothing.
        self.write("migrating the table", |tx, now| self.migrate_in(tx, now))
    }

    fn enqueue(&self, messages: &[Message]) -> Result<()> {
        if messages.is_empty() {
            return Ok(());
        }
        self.write("inserting messages", |tx, _| self.insert(tx, messages))
    }

    fn claim(&self, lease: &Lease, limit: BatchLimit) -> Result<Claim> {
        let (max_rows, max_bytes) = (
            i64::try_from(limit.rows).unwrap_or(i64::MAX),
            i64::try_from(limit.bytes).unwrap_or(i64::MAX),
        );
        let token = lease.token.as_bytes().as_slice();
        let ctx = "claiming messages";
        // A row that cannot be decoded is leased like the others and returned apart,
        // so the relay parks it instead of the claim failing.
        let rows = self.write(ctx, |tx, now| {
            let until = now.saturating_add(millis(lease.duration));
            let mut stmt = tx.prepare_cached(&self.inner.sql.claim).map_err(db(ctx))?;
            let rows = stmt
                .query_map(params![max_rows, token, until, now, max_bytes], |r| {
                    Ok(decode(r))
                })
                .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
                .map_err(db(ctx))?;
            Ok(rows)
        })?;
        // RETURNING gives rows in no promised order: from_rows sorts them.
        let decoded = rows.into_iter().collect::<Result<Vec<_>>>()?;
        Ok(Claim::from_rows(decoded))
    }

    fn mark_dispatched(&self, lease: &Lease, ids: &[i64]) -> Result<Vec<i64>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let ctx = "marking messages dispatched";
        let token = lease.token.as_bytes().as_slice();
        self.write(ctx, |tx, now| {
            let mut stmt = tx
                .prepare_cached(&self.inner.sql.mark_dispatched)
                .map_err(db(ctx))?;
            let mut marked = Vec::with_capacity(ids.len());
            for id in ids {
                if stmt.execute(params![id, token, now]).map_err(db(ctx))? > 0 {
                    marked.push(*id);
                }
            }
            Ok(marked)
        })
    }

    fn mark_failed(&self, lease: &Lease, failures: &[FailedAttempt]) -> Result<usize> {
        if failures.is_empty() {
            return Ok(0);
        }
        let ctx = "recording failed attempts";
        let token = lease.token.as_bytes().as_slice();
        self.write(ctx, |tx, now| {
            let mut stmt = tx
                .prepare_cached(&self.inner.sql.mark_failed)
                .map_err(db(ctx))?;
            let mut n = 0;
            for f in failures {
                let at = now.saturating_add(millis(f.retry_in));
                n += stmt
                    .execute(params![f.id, f.error, at, f.park, token, f.hold_key])
                    .map_err(db(ctx))?;
            }
            Ok(n)
        })
    }

    fn release(&self, lease: &Lease, ids: &[i64], retry_in: Duration) -> Result<usize> {
        if ids.is_empty() {
            return Ok(0);
        }
        let ctx = "releasing messages";
        let token = lease.token.as_bytes().as_slice();
        self.write(ctx, |tx, now| {
            let at = now.saturating_add(millis(retry_in));
            let mut stmt = tx
                .prepare_cached(&self.inner.sql.release)
                .map_err(db(ctx))?;
            let mut n = 0;
            for id in ids {
                n += stmt.execute(params![id, token, at]).map_err(db(ctx))?;
            }
            Ok(n)
        })
    }

    fn cleanup(&self, older_than: Duration, limit: usize) -> Result<u64> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let ctx = "cleaning up dispatched messages";
        self.write(ctx, |tx, now| {
            let cutoff = now.saturating_sub(millis(older_than));
            let n = tx
                .prepare_cached(&self.inner.sql.cleanup)
                .and_then(|mut s| s.execute(params![cutoff, limit]))
                .map_err(db(ctx))?;
            Ok(n as u64)
        })
    }

    fn requeue(&self, which: &Requeue) -> Result<u64> {
        let ctx = "requeueing parked messages";
        self.write(ctx, |tx, now| {
            let n = match which {
                Requeue::AllParked => tx
                    .execute(&self.inner.sql.requeue_all, [now])
                    .map_err(db(ctx))?,
                Requeue::Ids(ids) => {
                    let mut stmt = tx
                        .prepare_cached(&self.inner.sql.requeue_one)
                        .map_err(db(ctx))?;
                    let mut n = 0;
                    for id in ids {
                        n += stmt.execute(params![id, now]).map_err(db(ctx))?;
                    }
                    n
                }
            };
            Ok(n as u64)
        })
    }

    fn purge_parked(&self, older_than: Duration, limit: usize) -> Result<u64> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let ctx = "purging parked messages";
        self.write(ctx, |tx, now| {
            let cutoff = now.saturating_sub(millis(older_than));
            let n = tx
                .prepare_cached(&self.inner.sql.purge_parked)
                .and_then(|mut s| s.execute(params![cutoff, limit]))
                .map_err(db(ctx))?;
            Ok(n as u64)
        })
    }

    fn attempts_histogram(&self) -> Result<Vec<(u32, u64)>> {
        let ctx = "reading the attempts histogram";
        self.with_conn(|c| {
            let mut stmt = c
                .prepare_cached(&self.inner.sql.attempts_histogram)
                .map_err(db(ctx))?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))
                .map_err(db(ctx))?;
            let mut out = Vec::new();
            for row in rows {
                let (a, n) = row.map_err(db(ctx))?;
                out.push((u32::try_from(a).unwrap_or(0), u64::try_from(n).unwrap_or(0)));
            }
            Ok(out)
        })
    }

    fn parked(&self, limit: usize) -> Result<Vec<ParkedMessage>> {
        let ctx = "listing parked messages";
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with_conn(|c| {
            let mut stmt = c.prepare_cached(&self.inner.sql.parked).map_err(db(ctx))?;
            let rows = stmt
                .query_map([limit], |r| {
                    Ok(ParkedMessage {
                        id: r.get(0)?,
                        message_id: message_id_of(r.get_ref(1)?),
                        attempts: u32::try_from(r.get::<_, i64>(2)?).unwrap_or(0),
                        last_error: text_of(r.get_ref(3)?),
                        ordering_key: text_of(r.get_ref(4)?),
                        holds_key: r.get::<_, i64>(5)? == 1,
                    })
                })
                .map_err(db(ctx))?;
            let mut out = Vec::new();
            for row in rows {
                out.push(row.map_err(db(ctx))?);
            }
            Ok(out)
        })
    }

    fn skip(&self, ids: &[i64]) -> Result<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        let ctx = "skipping parked messages";
        self.write(ctx, |tx, _| {
            let mut stmt = tx
                .prepare_cached(&self.inner.sql.skip_one)
                .map_err(db(ctx))?;
            let mut n = 0;
            for id in ids {
                n += stmt.execute([id]).map_err(db(ctx))?;
            }
            Ok(n as u64)
        })
    }

    fn held_keys(&self, limit: usize) -> Result<Vec<HeldKey>> {
        let ctx = "listing held keys";
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with_conn(|c| {
            let mut stmt = c
                .prepare_cached(&self.inner.sql.held_keys)
                .map_err(db(ctx))?;
            let rows = stmt
                .query_map([limit], |r| {
                    Ok(HeldKey {
                        ordering_key: text_of(r.get_ref(0)?).unwrap_or_default(),
                        parked_id: r.get(1)?,
                        message_id: message_id_of(r.get_ref(2)?),
                        last_error: text_of(r.get_ref(3)?),
                        waiting: u64::try_from(r.get::<_, i64>(4)?).unwrap_or(0),
                    })
                })
                .map_err(db(ctx))?;
            let mut out = Vec::new();
            for row in rows {
                out.push(row.map_err(db(ctx))?);
            }
            Ok(out)
        })
    }

    fn stats(&self) -> Result<Stats> {
        let ctx = "reading stats";
        // One statement is one consistent snapshot; reads need no write lock.
        let (pending, dispatched, parked, leased, oldest, held, now) = self.with_conn(|c| {
            let now = now_ms();
            c.prepare_cached(&self.inner.sql.stats)
                .and_then(|mut s| {
                    s.query_row([now], |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, i64>(1)?,
                            r.get::<_, i64>(2)?,
                            r.get::<_, i64>(3)?,
                            r.get::<_, Option<i64>>(4)?,
                            r.get::<_, i64>(5)?,
                            now,
                        ))
                    })
                })
                .map_err(db(ctx))
        })?;
        let count = |n: i64| u64::try_from(n).unwrap_or(0);
        let age = oldest.map_or(0, |t| now.saturating_sub(t).max(0));
        Ok(Stats {
            pending: count(pending),
            leased: count(leased),
            dispatched: count(dispatched),
            parked: count(parked),
            oldest_pending_age: Duration::from_millis(count(age)),
            held_keys: count(held),
        })
    }
}

impl TxStore for SqliteStore {
    type Tx<'a> = Transaction<'a>;

    fn enqueue_in_tx(&self, tx: &mut Transaction<'_>, messages: &[Message]) -> Result<()> {
        self.insert(tx, messages)
    }

    /// The transaction is `BEGIN IMMEDIATE` on a pooled connection.
    fn with_transaction<R, E, F>(&self, f: F) -> std::result::Result<R, E>
    where
        F: FnOnce(&mut Transaction<'_>) -> std::result::Result<R, E>,
        E: From<Error>,
    {
        self.with_conn(|c| {
            let _turn = self.turn();
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db("beginning a transaction"))?;
            run_in(tx, f)
        })
    }
}

impl Finish for Transaction<'_> {
    fn commit(self) -> Result<()> {
        Transaction::commit(self).map_err(db("committing"))
    }
    fn rollback(self) -> Result<()> {
        Transaction::rollback(self).map_err(db("rolling back"))
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
