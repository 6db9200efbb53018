//! SQLite from async code. SQLite is embedded and `rusqlite` is synchronous, so every
//! statement runs on tokio's blocking pool (`spawn_blocking`), never on a worker
//! thread; the relay uses the blocking [`crate::store::SqliteStore`] on its threads.

use super::{run_in, Finish, Store};
use crate::async_impl::unblock;
use crate::message::Message;
use crate::{Error, Result};
use rusqlite::Connection;
use std::path::Path;

/// The outbox table in SQLite, for async code: the blocking store's statements, run
/// on tokio's blocking pool. Sends copy the messages to move them there.
///
/// ```no_run
/// # async fn demo() -> Result<(), outboxer::Error> {
/// use outboxer::async_impl::store::SqliteStore;
/// let store = SqliteStore::open("/var/lib/app/outbox.db").await?;
/// store.migrate().await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct SqliteStore {
    blocking: crate::store::SqliteStore,
}

/// A transaction of the async SQLite store (`BEGIN IMMEDIATE` on a connection of its
/// own): statements run on tokio's blocking pool through [`SqliteTx::with_conn`].
/// Dropped without commit (or with its future cancelled mid-statement), the
/// connection closes and SQLite rolls the transaction back.
pub struct SqliteTx {
    conn: Option<Connection>,
}

impl SqliteStore {
    /// Opens the database file (see [`crate::store::SqliteStore::open`]), table
    /// `event_store`, on the blocking pool.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let blocking = unblock("opening the SQLite database", move || {
            crate::store::SqliteStore::open(path)
        })
        .await?;
        Ok(Self::new(blocking))
    }

    /// The async face of a blocking store built with [`crate::store::SqliteStore::builder`]
    /// (table, busy timeout, pool and sync settings).
    pub fn new(blocking: crate::store::SqliteStore) -> Self {
        SqliteStore { blocking }
    }

    /// Creates or upgrades the table (see [`crate::Store::migrate`]).
    pub async fn migrate(&self) -> Result<()> {
        let store = self.blocking.clone();
        unblock("migrating the table", move || store.migrate()).await
    }
}

impl SqliteTx {
    /// Runs `f` on the transaction's connection, on tokio's blocking pool.
    ///
    /// ```no_run
    /// # async fn demo(tx: &mut outboxer::async_impl::store::SqliteTx) -> Result<(), outboxer::Error> {
    /// let n = tx
    ///     .with_conn(|c| {
    ///         c.execute("UPDATE orders SET state = 'paid' WHERE id = 42", [])
    ///             .map_err(|e| outboxer::Error::Rejected(e.to_string()))
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn with_conn<T, F>(&mut self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let conn = self
            .conn
            .take()
            .ok_or_else(|| Error::db("using a transaction", "its connection was lost"))?;
        let (conn, r) = unblock("running a statement", move || {
            let r = f(&conn);
            Ok((conn, r))
        })
        .await?;
        self.conn = Some(conn);
        r
    }

    async fn end(mut self, sql: &'static str, context: &'static str) -> Result<()> {
        self.with_conn(move |c| c.execute_batch(sql).map_err(|e| Error::db(context, e)))
            .await
    }
}

impl Finish for SqliteTx {
    async fn commit(self) -> Result<()> {
        self.end("COMMIT", "committing").await
    }
    async fn rollback(self) -> Result<()> {
        self.end("ROLLBACK", "rolling back").await
    }
}

impl Store for SqliteStore {
    type Blocking = crate::store::SqliteStore;
    type Tx<'a> = SqliteTx;

    fn blocking(&self) -> &crate::store::SqliteStore {
        &self.blocking
    }

    async fn enqueue(&self, messages: &[Message]) -> Result<()> {
        let store = self.blocking.clone();
        let messages = messages.to_vec();
        unblock("inserting messages", move || {
            crate::Store::enqueue(&store, &messages)
        })
        .await
    }

    async fn enqueue_in_tx(&self, tx: &mut Self::Tx<'_>, messages: &[Message]) -> Result<()> {
        let store = self.blocking.clone();
        let messages = messages.to_vec();
        tx.with_conn(move |c| store.insert(c, &messages)).await
    }

    async fn with_transaction<R, E, F>(&self, f: F) -> std::result::Result<R, E>
    where
        F: AsyncFnOnce(&mut SqliteTx) -> std::result::Result<R, E>,
        E: From<Error>,
    {
        let store = self.blocking.clone();
        let conn = unblock("beginning a transaction", move || {
            let c = store.connection()?;
            c.execute_batch("BEGIN IMMEDIATE")
                .map_err(|e| Error::db("beginning a transaction", e))?;
            Ok(c)
        })
        .await?;
        run_in(SqliteTx { conn: Some(conn) }, f).await
    }
}
