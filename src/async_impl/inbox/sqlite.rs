//! The inbox in SQLite from async code: on the async SQLite store's transaction
//! ([`SqliteTx`]), whose statements run on tokio's blocking pool.

use super::{process_with, HandlerFuture, Outcome, Steps};
use crate::async_impl::store::SqliteTx;
use crate::core::sql::inbox as q;
use crate::inbox::sqlite::exec;
use crate::message::MessageId;
use crate::{Error, Result};
use rusqlite::OptionalExtension;
use std::time::Duration;

/// Processed message ids in a SQLite table, recorded in a transaction of the
/// async [`SqliteStore`](crate::async_impl::store::SqliteStore) (its
/// `with_transaction`): the async face of [`crate::inbox::SqliteInbox`] (same
/// table, statements and notes).
///
/// ```no_run
/// # async fn demo() -> Result<(), outboxer::BoxError> {
/// use outboxer::async_impl::inbox::SqliteInbox;
/// use outboxer::async_impl::store::{SqliteStore, SqliteTx};
/// use outboxer::async_impl::Store;
/// use outboxer::MessageId;
///
/// let db = SqliteStore::open("consumer.db").await?;
/// let inbox = SqliteInbox::new();
/// db.with_transaction(async |tx: &mut SqliteTx| inbox.migrate(tx).await).await?;
/// let id = MessageId::new(); // from the delivery
/// let outcome = db
///     .with_transaction(async |tx: &mut SqliteTx| {
///         inbox
///             .process(tx, id, |tx| {
///                 Box::pin(async move {
///                     tx.with_conn(|c| {
///                         c.execute("UPDATE orders SET paid = 1 WHERE id = 42", [])
///                             .map_err(|e| outboxer::Error::Rejected(e.to_string()))
///                     })
///                     .await
///                 })
///             })
///             .await
///     })
///     .await?;
/// println!("{outcome:?}");
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Default)]
pub struct SqliteInbox {
    inner: crate::inbox::SqliteInbox,
}

impl From<crate::inbox::SqliteInbox> for SqliteInbox {
    fn from(inner: crate::inbox::SqliteInbox) -> Self {
        SqliteInbox { inner }
    }
}

impl SqliteInbox {
    /// The inbox in table `outboxer_inbox`.
    pub fn new() -> Self {
        Self::default()
    }

    /// The inbox in `table` (see [`crate::inbox::SqliteInbox::with_table`]).
    pub fn with_table(table: &str) -> Result<Self> {
        crate::inbox::SqliteInbox::with_table(table).map(Self::from)
    }

    /// The table, as written.
    pub fn table_name(&self) -> String {
        self.inner.table_name()
    }

    /// Creates the table and its index if missing, in `tx`.
    pub async fn migrate(&self, tx: &mut SqliteTx) -> Result<()> {
        let inner = self.inner.clone();
        tx.with_conn(move |c| inner.migrate(c)).await
    }

    /// Runs `handler` once per message id, in the caller's transaction `tx` (see
    /// [`crate::inbox::SqliteInbox::process`]).
    pub async fn process<R, E, F>(
        &self,
        tx: &mut SqliteTx,
        id: MessageId,
        handler: F,
    ) -> std::result::Result<Outcome<R>, E>
    where
        F: for<'c> FnOnce(&'c mut SqliteTx) -> HandlerFuture<'c, R, E>,
        E: From<Error>,
    {
        process_with(self, tx, id, handler).await
    }

    /// Whether `id` is recorded.
    pub async fn contains(&self, tx: &mut SqliteTx, id: MessageId) -> Result<bool> {
        let inner = self.inner.clone();
        tx.with_conn(move |c| {
            c.query_row(
                &inner.sql.contains,
                [id.as_uuid().as_bytes().as_slice()],
                |_| Ok(()),
            )
            .optional()
            .map(|found| found.is_some())
            .map_err(|e| Error::db("reading the inbox", e))
        })
        .await
    }

    /// Deletes up to `limit` ids recorded more than `older_than` ago; returns how
    /// many. Commit `tx` after each call to keep the write lock short.
    pub async fn cleanup(
        &self,
        tx: &mut SqliteTx,
        older_than: Duration,
        limit: usize,
    ) -> Result<u64> {
        let inner = self.inner.clone();
        tx.with_conn(move |c| inner.cleanup(c, older_than, limit))
            .await
    }
}

impl Steps<SqliteTx> for SqliteInbox {
    async fn savepoint(&self, tx: &mut SqliteTx) -> Result<()> {
        tx.with_conn(|c| exec(c, q::SAVEPOINT, "taking the inbox savepoint"))
            .await
    }

    async fn insert(&self, tx: &mut SqliteTx, id: MessageId) -> Result<bool> {
        let inner = self.inner.clone();
        tx.with_conn(move |c| inner.insert_on(c, id)).await
    }

    async fn release(&self, tx: &mut SqliteTx) -> Result<()> {
        tx.with_conn(|c| exec(c, q::RELEASE, "releasing the inbox savepoint"))
            .await
    }

    async fn rollback_to(&self, tx: &mut SqliteTx) -> Result<()> {
        tx.with_conn(|c| exec(c, q::ROLLBACK_TO, "rolling back to the inbox savepoint"))
            .await
    }
}
