//! The inbox in SQL Server from async code, on the caller's tiberius client
//! inside `BEGIN TRAN`.
//!
//! Not run against a server here: no SQL Server can be installed on the test
//! machines (see the README); compiled, and its SQL text is unit-tested in core.

use super::{process_with, HandlerFuture, Outcome, Steps};
use crate::async_impl::store::SqlServerClient;
use crate::core::sql::inbox as q;
use crate::core::sql::sqlserver::{delay_ms, MIGRATE_LOCK_TIMEOUT_MS};
use crate::message::MessageId;
use crate::{Error, Result};
use std::time::Duration;
use tiberius::Query;

/// Processed message ids in a SQL Server table, recorded in the consumer's
/// transaction: a tiberius client inside `BEGIN TRAN` (the async
/// [`SqlServerStore`](crate::async_impl::store::SqlServerStore)'s
/// `with_transaction` gives one). The async face of
/// [`crate::inbox::SqlServerInbox`] (same table, statements and notes).
///
/// ```no_run
/// # async fn demo() -> Result<(), outboxer::BoxError> {
/// use outboxer::async_impl::inbox::SqlServerInbox;
/// use outboxer::async_impl::store::{SqlServerClient, SqlServerStore};
/// use outboxer::async_impl::Store;
/// use outboxer::MessageId;
///
/// let db = SqlServerStore::connect("server=tcp:127.0.0.1,1433;user=sa;password=secret").await?;
/// let inbox = SqlServerInbox::new();
/// db.with_transaction(async |c: &mut SqlServerClient| inbox.migrate(c).await).await?;
/// let outcome = db
///     .with_transaction(async |c: &mut SqlServerClient| {
///         inbox
///             .process(c, MessageId::new(), |c| {
///                 Box::pin(async move {
///                     c.execute("UPDATE dbo.orders SET paid = 1 WHERE id = @P1", &[&42i32]).await?;
///                     Ok::<_, outboxer::BoxError>(())
///                 })
///             })
///             .await
///     })
///     .await?;
/// println!("{outcome:?}");
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Default)]
pub struct SqlServerInbox {
    inner: crate::inbox::SqlServerInbox,
}

impl From<crate::inbox::SqlServerInbox> for SqlServerInbox {
    fn from(inner: crate::inbox::SqlServerInbox) -> Self {
        SqlServerInbox { inner }
    }
}

async fn exec(client: &mut SqlServerClient, ctx: &'static str, query: Query<'_>) -> Result<u64> {
    let r = query.execute(client).await;
    r.map(|done| done.total()).map_err(|e| Error::db(ctx, e))
}

impl SqlServerInbox {
    /// The inbox in table `outboxer_inbox`.
    pub fn new() -> Self {
        Self::default()
    }

    /// The inbox in `table` (see [`crate::inbox::SqlServerInbox::with_table`]).
    pub fn with_table(table: &str) -> Result<Self> {
        crate::inbox::SqlServerInbox::with_table(table).map(Self::from)
    }

    /// The table, as written (`schema.table` or `table`).
    pub fn table_name(&self) -> String {
        self.inner.table_name()
    }

    /// Creates the table and its indexes if missing, on `client` inside `BEGIN
    /// TRAN`, under an `sp_getapplock` held until that transaction ends.
    pub async fn migrate(&self, client: &mut SqlServerClient) -> Result<()> {
        let sql = &self.inner.sql;
        let ctx = "locking for the inbox migrate";
        let mut lock = Query::new(sql.migrate_lock);
        lock.bind(sql.migrate_resource.as_str());
        lock.bind(MIGRATE_LOCK_TIMEOUT_MS);
        let row = lock
            .query(client)
            .await
            .map_err(|e| Error::db(ctx, e))?
            .into_row()
            .await
            .map_err(|e| Error::db(ctx, e))?;
        let status: Option<i32> = row.and_then(|r| r.try_get(0).ok().flatten());
        match status {
            Some(s) if s >= 0 => {}
            other => return Err(Error::db(ctx, format!("sp_getapplock returned {other:?}"))),
        }
        let mut create = Query::new(sql.migrate.as_str());
        create.bind(sql.table.as_str());
        exec(client, "creating the inbox table", create)
            .await
            .map(drop)
    }

    /// Runs `handler` once per message id, on `client` inside `BEGIN TRAN` (see
    /// [`crate::inbox::SqlServerInbox::process`]).
    pub async fn process<R, E, F>(
        &self,
        client: &mut SqlServerClient,
        id: MessageId,
        handler: F,
    ) -> std::result::Result<Outcome<R>, E>
    where
        F: for<'c> FnOnce(&'c mut SqlServerClient) -> HandlerFuture<'c, R, E>,
        E: From<Error>,
    {
        process_with(self, client, id, handler).await
    }

    /// Whether `id` is recorded.
    pub async fn contains(&self, client: &mut SqlServerClient, id: MessageId) -> Result<bool> {
        let ctx = "reading the inbox";
        let mut query = Query::new(self.inner.sql.contains.as_str());
        query.bind(*id.as_uuid());
        let row = query
            .query(client)
            .await
            .map_err(|e| Error::db(ctx, e))?
            .into_row()
            .await
            .map_err(|e| Error::db(ctx, e))?;
        Ok(row.is_some())
    }

    /// Deletes up to `limit` ids recorded more than `older_than` ago (by the
    /// database clock, UTC); returns how many.
    pub async fn cleanup(
        &self,
        client: &mut SqlServerClient,
        older_than: Duration,
        limit: usize,
    ) -> Result<u64> {
        let mut query = Query::new(self.inner.sql.cleanup.as_str());
        query.bind(delay_ms(older_than));
        query.bind(q::limit(limit));
        exec(client, "cleaning up the inbox", query).await
    }
}

impl Steps<SqlServerClient> for SqlServerInbox {
    async fn savepoint(&self, client: &mut SqlServerClient) -> Result<()> {
        let query = Query::new(self.inner.sql.savepoint);
        exec(client, "taking the inbox savepoint", query)
            .await
            .map(drop)
    }

    async fn insert(&self, client: &mut SqlServerClient, id: MessageId) -> Result<bool> {
        let mut query = Query::new(self.inner.sql.insert.as_str());
        query.bind(*id.as_uuid());
        Ok(exec(client, "recording a message id in the inbox", query).await? == 1)
    }

    /// T-SQL has no release.
    async fn release(&self, _client: &mut SqlServerClient) -> Result<()> {
        Ok(())
    }

    async fn rollback_to(&self, client: &mut SqlServerClient) -> Result<()> {
        let query = Query::new(self.inner.sql.rollback_to);
        exec(client, "rolling back to the inbox savepoint", query)
            .await
            .map(drop)
    }
}
