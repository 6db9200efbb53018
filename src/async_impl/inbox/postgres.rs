//! The inbox in PostgreSQL, on `tokio-postgres`.

use super::{process_with, HandlerFuture, Outcome, Steps};
use crate::core::sql::inbox as q;
use crate::message::MessageId;
use crate::{Error, Result};
use std::time::Duration;
use tokio_postgres::{GenericClient, Transaction};

/// Processed message ids in a PostgreSQL table, recorded in the consumer's
/// `tokio_postgres::Transaction`: the async face of
/// [`crate::inbox::PostgresInbox`] (same table, statements and notes).
///
/// ```no_run
/// # async fn demo(db: &mut outboxer::async_impl::store::tokio_postgres::Client) -> outboxer::Result<()> {
/// use outboxer::async_impl::inbox::PostgresInbox;
/// use std::time::Duration;
///
/// let inbox = PostgresInbox::new();
/// inbox.migrate(db).await?;
/// while inbox.cleanup(db, Duration::from_secs(14 * 24 * 3600), 1000).await? == 1000 {}
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Default)]
pub struct PostgresInbox {
    inner: crate::inbox::PostgresInbox,
}

impl From<crate::inbox::PostgresInbox> for PostgresInbox {
    fn from(inner: crate::inbox::PostgresInbox) -> Self {
        PostgresInbox { inner }
    }
}

impl PostgresInbox {
    /// The inbox in table `outboxer_inbox`.
    pub fn new() -> Self {
        Self::default()
    }

    /// The inbox in `table` (see [`crate::inbox::PostgresInbox::with_table`]).
    pub fn with_table(table: &str) -> Result<Self> {
        crate::inbox::PostgresInbox::with_table(table).map(Self::from)
    }

    /// The table, as written (`schema.table` or `table`).
    pub fn table_name(&self) -> String {
        self.inner.table_name()
    }

    /// Creates the table and its index if missing, in a transaction of its own (a
    /// savepoint when `client` is a transaction), under an advisory lock.
    pub async fn migrate(&self, client: &mut impl GenericClient) -> Result<()> {
        let sql = &self.inner.sql;
        let tx = client
            .transaction()
            .await
            .map_err(|e| Error::db("beginning the inbox migrate", e))?;
        tx.execute(sql.migrate_lock, &[&sql.migrate_resource])
            .await
            .map_err(|e| Error::db("locking for the inbox migrate", e))?;
        for stmt in &sql.migrate {
            tx.batch_execute(stmt)
                .await
                .map_err(|e| Error::db("creating the inbox table", e))?;
        }
        tx.commit()
            .await
            .map_err(|e| Error::db("committing the inbox migrate", e))
    }

    /// Runs `handler` once per message id, in the caller's transaction `tx` (see
    /// [`crate::inbox::PostgresInbox::process`]).
    pub async fn process<'t, R, E, F>(
        &self,
        tx: &mut Transaction<'t>,
        id: MessageId,
        handler: F,
    ) -> std::result::Result<Outcome<R>, E>
    where
        F: for<'c> FnOnce(&'c mut Transaction<'t>) -> HandlerFuture<'c, R, E>,
        E: From<Error>,
    {
        process_with(self, tx, id, handler).await
    }

    /// Whether `id` is recorded (as committed data sees it).
    pub async fn contains(&self, client: &impl GenericClient, id: MessageId) -> Result<bool> {
        let rows = client
            .query(&self.inner.sql.contains, &[id.as_uuid()])
            .await
            .map_err(|e| Error::db("reading the inbox", e))?;
        Ok(!rows.is_empty())
    }

    /// Deletes up to `limit` ids recorded more than `older_than` ago (by the
    /// database clock); returns how many.
    pub async fn cleanup(
        &self,
        client: &impl GenericClient,
        older_than: Duration,
        limit: usize,
    ) -> Result<u64> {
        let ms = older_than.as_secs_f64() * 1000.0;
        client
            .execute(&self.inner.sql.cleanup, &[&ms, &q::limit(limit)])
            .await
            .map_err(|e| Error::db("cleaning up the inbox", e))
    }
}

impl Steps<Transaction<'_>> for PostgresInbox {
    async fn savepoint(&self, tx: &mut Transaction<'_>) -> Result<()> {
        tx.batch_execute(q::SAVEPOINT)
            .await
            .map_err(|e| Error::db("taking the inbox savepoint", e))
    }

    async fn insert(&self, tx: &mut Transaction<'_>, id: MessageId) -> Result<bool> {
        let n = tx
            .execute(&self.inner.sql.insert, &[id.as_uuid()])
            .await
            .map_err(|e| Error::db("recording a message id in the inbox", e))?;
        Ok(n == 1)
    }

    async fn release(&self, tx: &mut Transaction<'_>) -> Result<()> {
        tx.batch_execute(q::RELEASE)
            .await
            .map_err(|e| Error::db("releasing the inbox savepoint", e))
    }

    async fn rollback_to(&self, tx: &mut Transaction<'_>) -> Result<()> {
        tx.batch_execute(q::ROLLBACK_TO)
            .await
            .map_err(|e| Error::db("rolling back to the inbox savepoint", e))
    }
}
