//! The inbox in MySQL 8 / MariaDB 10.6+, on `mysql_async`.

use super::{process_with, HandlerFuture, Outcome, Steps};
use crate::core::sql::inbox as q;
use crate::message::MessageId;
use crate::{Error, Result};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Transaction};
use std::time::Duration;

/// Processed message ids in a MySQL or MariaDB table, recorded in the consumer's
/// `mysql_async::Transaction`: the async face of [`crate::inbox::MysqlInbox`]
/// (same table, statements and notes).
///
/// ```no_run
/// # async fn demo(pool: &outboxer::async_impl::store::mysql_async::Pool) -> Result<(), outboxer::BoxError> {
/// use outboxer::async_impl::inbox::MysqlInbox;
/// use outboxer::async_impl::store::mysql_async::{prelude::Queryable, TxOpts};
/// use outboxer::MessageId;
///
/// let inbox = MysqlInbox::new();
/// inbox.migrate(&mut pool.get_conn().await?).await?;
/// let mut conn = pool.get_conn().await?;
/// let mut tx = conn.start_transaction(TxOpts::default()).await?;
/// let outcome = inbox
///     .process(&mut tx, MessageId::new(), |tx| {
///         Box::pin(async move {
///             tx.exec_drop("UPDATE orders SET paid = 1 WHERE id = ?", (42,)).await?;
///             Ok::<_, outboxer::BoxError>(())
///         })
///     })
///     .await?;
/// tx.commit().await?;
/// println!("{outcome:?}");
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Default)]
pub struct MysqlInbox {
    inner: crate::inbox::MysqlInbox,
}

impl From<crate::inbox::MysqlInbox> for MysqlInbox {
    fn from(inner: crate::inbox::MysqlInbox) -> Self {
        MysqlInbox { inner }
    }
}

fn id_bytes(id: MessageId) -> Vec<u8> {
    id.as_uuid().as_bytes().to_vec()
}

impl MysqlInbox {
    /// The inbox in table `outboxer_inbox`.
    pub fn new() -> Self {
        Self::default()
    }

    /// The inbox in `table` (see [`crate::inbox::MysqlInbox::with_table`]).
    pub fn with_table(table: &str) -> Result<Self> {
        crate::inbox::MysqlInbox::with_table(table).map(Self::from)
    }

    /// The table, as written (`schema.table` or `table`).
    pub fn table_name(&self) -> String {
        self.inner.table_name()
    }

    /// Creates the table and its index if missing (`CREATE TABLE IF NOT EXISTS`;
    /// DDL commits implicitly: run it on a connection, not in a transaction).
    pub async fn migrate(&self, conn: &mut Conn) -> Result<()> {
        conn.query_drop(&self.inner.sql.create)
            .await
            .map_err(|e| Error::db("creating the inbox table", e))
    }

    /// Runs `handler` once per message id, in the caller's transaction `tx` (see
    /// [`crate::inbox::MysqlInbox::process`]).
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

    /// Whether `id` is recorded (as the connection's snapshot sees it).
    pub async fn contains(&self, conn: &mut Conn, id: MessageId) -> Result<bool> {
        let row: Option<i64> = conn
            .exec_first(&self.inner.sql.contains, (id_bytes(id),))
            .await
            .map_err(|e| Error::db("reading the inbox", e))?;
        Ok(row.is_some())
    }

    /// Deletes up to `limit` ids recorded more than `older_than` ago (by the
    /// database clock, UTC); returns how many.
    pub async fn cleanup(
        &self,
        conn: &mut Conn,
        older_than: Duration,
        limit: usize,
    ) -> Result<u64> {
        let micros = i64::try_from(older_than.as_micros()).unwrap_or(i64::MAX);
        conn.exec_drop(&self.inner.sql.cleanup, (micros, q::limit(limit)))
            .await
            .map_err(|e| Error::db("cleaning up the inbox", e))?;
        Ok(conn.affected_rows())
    }
}

impl Steps<Transaction<'_>> for MysqlInbox {
    async fn savepoint(&self, tx: &mut Transaction<'_>) -> Result<()> {
        tx.query_drop(q::SAVEPOINT)
            .await
            .map_err(|e| Error::db("taking the inbox savepoint", e))
    }

    async fn insert(&self, tx: &mut Transaction<'_>, id: MessageId) -> Result<bool> {
        tx.exec_drop(&self.inner.sql.insert, (id_bytes(id),))
            .await
            .map_err(|e| Error::db("recording a message id in the inbox", e))?;
        Ok(tx.affected_rows() == 1)
    }

    async fn release(&self, tx: &mut Transaction<'_>) -> Result<()> {
        tx.query_drop(q::RELEASE)
            .await
            .map_err(|e| Error::db("releasing the inbox savepoint", e))
    }

    async fn rollback_to(&self, tx: &mut Transaction<'_>) -> Result<()> {
        tx.query_drop(q::ROLLBACK_TO)
            .await
            .map_err(|e| Error::db("rolling back to the inbox savepoint", e))
    }
}
