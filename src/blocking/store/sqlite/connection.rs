//! Connections: the pool, this process's write queue, opening a file with the
//! store's pragmas (WAL, busy timeout, sync), and where a path or URL points.

use super::*;

impl SqliteStore {
    /// Runs `f` on a pooled connection; the connection goes back to the pool unless it
    /// was left inside a transaction (a failed COMMIT or ROLLBACK).
    pub(super) fn with_conn<T, E, F>(&self, f: F) -> std::result::Result<T, E>
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
    pub(super) fn turn(&self) -> Option<ReentrantMutexGuard<'_, ()>> {
        self.inner.writer.try_lock_for(self.inner.busy_timeout)
    }

    /// One write transaction of our own. `BEGIN IMMEDIATE` takes the write lock up
    /// front, waiting under the busy timeout: a deferred transaction that reads first
    /// and then writes gets SQLITE_BUSY at once when another writer committed in
    /// between, without waiting.
    pub(super) fn write<T>(
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
}

impl Inner {
    pub(super) fn open(&self) -> Result<Connection> {
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
pub(super) fn database_path(raw: &Path) -> Result<PathBuf> {
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

pub(super) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(millis)
        .unwrap_or(0)
}

pub(super) fn db(context: &'static str) -> impl Fn(rusqlite::Error) -> Error {
    move |e| Error::db(context, e)
}
