//! The inbox in SQL Server 2017+, on the store's transaction ([`SqlServerTx`]).
//!
//! Not run against a server here: no SQL Server can be installed on the test
//! machines (see the README); compiled, and its SQL text is unit-tested in core.

use super::{process_with, Outcome, Steps};
use crate::core::ident::TableName;
use crate::core::sql::inbox::{self as q, SqlServerInboxSql};
use crate::core::sql::sqlserver::{delay_ms, MIGRATE_LOCK_TIMEOUT_MS};
use crate::message::MessageId;
use crate::store::SqlServerTx;
use crate::{Error, Result};
use std::sync::Arc;
use std::time::Duration;

/// Processed message ids in a SQL Server table, recorded in the consumer's
/// transaction, a [`SqlServerTx`] of a [`crate::store::SqlServerStore`] (see the
/// [module docs](crate::inbox)).
///
/// The store's sessions run with `XACT_ABORT ON`: a handler whose statement
/// fails has rolled the whole transaction back (the transaction then refuses
/// every call), not only the savepoint. An `Err` of the handler's own (no failed
/// statement) rolls back to the savepoint, as on the other databases.
///
/// ```no_run
/// # fn main() -> Result<(), outboxer::Error> {
/// use outboxer::inbox::SqlServerInbox;
/// use outboxer::store::SqlServerStore;
/// use outboxer::MessageId;
///
/// let store = SqlServerStore::connect("server=tcp:127.0.0.1,1433;user=sa;password=secret")?;
/// let inbox = SqlServerInbox::with_table("dbo.orders_inbox")?;
/// let mut tx = store.begin()?;
/// inbox.migrate(&mut tx)?;
/// tx.commit()?;
///
/// let id = MessageId::new(); // from the delivery
/// let mut tx = store.begin()?;
/// let outcome = inbox.process(&mut tx, id, |tx| {
///     tx.execute("UPDATE dbo.orders SET paid = 1 WHERE id = @P1", &[&42i32])?;
///     Ok::<_, outboxer::Error>(())
/// })?;
/// tx.commit()?;
/// println!("{outcome:?}");
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct SqlServerInbox {
    table: TableName,
    pub(crate) sql: Arc<SqlServerInboxSql>,
}

impl Default for SqlServerInbox {
    /// The table [`DEFAULT_TABLE`](super::DEFAULT_TABLE), `outboxer_inbox`.
    fn default() -> Self {
        Self::on(TableName::parse(q::DEFAULT_TABLE).unwrap_or_default())
    }
}

impl SqlServerInbox {
    /// The inbox in table `outboxer_inbox` (the login's default schema).
    pub fn new() -> Self {
        Self::default()
    }

    /// The inbox in `table` (`name` or `schema.name`, plain identifiers of at most
    /// 40 bytes); [`Error::InvalidIdentifier`] otherwise.
    pub fn with_table(table: &str) -> Result<Self> {
        TableName::parse(table).map(Self::on)
    }

    fn on(table: TableName) -> Self {
        SqlServerInbox {
            sql: Arc::new(SqlServerInboxSql::new(&table)),
            table,
        }
    }

    /// The table, as written (`schema.table` or `table`).
    pub fn table_name(&self) -> String {
        self.table.plain()
    }

    /// Creates the table and its indexes if missing, in `tx`, under an
    /// `sp_getapplock` held until `tx` ends (concurrent callers wait); commit `tx`.
    pub fn migrate(&self, tx: &mut SqlServerTx<'_>) -> Result<()> {
        let rows = tx.query(
            self.sql.migrate_lock,
            &[
                &self.sql.migrate_resource.as_str(),
                &MIGRATE_LOCK_TIMEOUT_MS,
            ],
        )?;
        let status: Option<i32> = rows.first().and_then(|r| r.try_get(0).ok().flatten());
        match status {
            Some(s) if s >= 0 => {}
            other => {
                return Err(Error::db(
                    "locking for the inbox migrate",
                    format!("sp_getapplock returned {other:?}"),
                ))
            }
        }
        tx.execute(&self.sql.migrate, &[&self.sql.table.as_str()])?;
        Ok(())
    }

    /// Runs `handler` once per message id, in the caller's transaction `tx`.
    ///
    /// Checks and inserts `id` under a key-range update lock (a concurrent
    /// transaction on the same id waits), then, for a new id, runs `handler(tx)` and
    /// returns [`Outcome::Processed`] with its result; for a recorded id runs
    /// nothing and returns [`Outcome::AlreadyProcessed`]. Nothing is final until the
    /// caller commits `tx`. On an `Err` of the handler's own, the id and the
    /// handler's writes are rolled back to a savepoint; after a failed statement
    /// the whole transaction is rolled back (`XACT_ABORT`).
    pub fn process<'t, R, E, F>(
        &self,
        tx: &mut SqlServerTx<'t>,
        id: MessageId,
        handler: F,
    ) -> std::result::Result<Outcome<R>, E>
    where
        F: FnOnce(&mut SqlServerTx<'t>) -> std::result::Result<R, E>,
        E: From<Error>,
    {
        process_with(self, tx, id, handler)
    }

    /// Whether `id` is recorded.
    pub fn contains(&self, tx: &mut SqlServerTx<'_>, id: MessageId) -> Result<bool> {
        Ok(!tx.query(&self.sql.contains, &[id.as_uuid()])?.is_empty())
    }

    /// Deletes up to `limit` ids recorded more than `older_than` ago (by the
    /// database clock, UTC; at most about 68 years); returns how many. Commit `tx`
    /// after each call to keep the locks short.
    pub fn cleanup(
        &self,
        tx: &mut SqlServerTx<'_>,
        older_than: Duration,
        limit: usize,
    ) -> Result<u64> {
        tx.execute(
            &self.sql.cleanup,
            &[&delay_ms(older_than), &q::limit(limit)],
        )
    }
}

impl Steps<SqlServerTx<'_>> for SqlServerInbox {
    fn savepoint(&self, tx: &mut SqlServerTx<'_>) -> Result<()> {
        tx.execute(self.sql.savepoint, &[]).map(drop)
    }

    fn insert(&self, tx: &mut SqlServerTx<'_>, id: MessageId) -> Result<bool> {
        Ok(tx.execute(&self.sql.insert, &[id.as_uuid()])? == 1)
    }

    /// T-SQL has no release: the savepoint's name is simply reused.
    fn release(&self, _tx: &mut SqlServerTx<'_>) -> Result<()> {
        Ok(())
    }

    fn rollback_to(&self, tx: &mut SqlServerTx<'_>) -> Result<()> {
        tx.execute(self.sql.rollback_to, &[]).map(drop)
    }
}
