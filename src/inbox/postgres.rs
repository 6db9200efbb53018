//! The inbox in PostgreSQL, on the `postgres` driver.

use super::{process_with, Outcome, Steps};
use crate::core::ident::TableName;
use crate::core::sql::inbox::{self as q, PostgresInboxSql};
use crate::message::MessageId;
use crate::{Error, Result};
use postgres::{GenericClient, Transaction};
use std::sync::Arc;
use std::time::Duration;

/// Processed message ids in a PostgreSQL table, recorded in the consumer's
/// `postgres::Transaction` (see the [module docs](crate::inbox)).
///
/// Run the consumer's transactions at READ COMMITTED (PostgreSQL's default): at
/// REPEATABLE READ or SERIALIZABLE, a consumer that waited for a concurrent one to
/// commit the same id gets a serialization failure ([`Error::Database`], SQLSTATE
/// 40001) instead of [`Outcome::AlreadyProcessed`]; roll back and retry it.
///
/// ```no_run
/// # fn main() -> Result<(), outboxer::Error> {
/// use outboxer::inbox::PostgresInbox;
/// use std::time::Duration;
///
/// use outboxer::store::postgres::{Client, NoTls};
/// let mut db = Client::connect("postgres://postgres@127.0.0.1/test", NoTls)?;
/// let inbox = PostgresInbox::with_table("billing.inbox")?;
/// inbox.migrate(&mut db)?;
/// // Retention: ids older than 14 days, 1000 per statement.
/// while inbox.cleanup(&mut db, Duration::from_secs(14 * 24 * 3600), 1000)? == 1000 {}
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct PostgresInbox {
    table: TableName,
    pub(crate) sql: Arc<PostgresInboxSql>,
}

impl Default for PostgresInbox {
    /// The table [`DEFAULT_TABLE`](super::DEFAULT_TABLE), `outboxer_inbox`.
    fn default() -> Self {
        Self::on(TableName::parse(q::DEFAULT_TABLE).unwrap_or_default())
    }
}

impl PostgresInbox {
    /// The inbox in table `outboxer_inbox`.
    pub fn new() -> Self {
        Self::default()
    }

    /// The inbox in `table` (`name` or `schema.name`, plain identifiers of at most
    /// 40 bytes); [`Error::InvalidIdentifier`] otherwise.
    pub fn with_table(table: &str) -> Result<Self> {
        TableName::parse(table).map(Self::on)
    }

    fn on(table: TableName) -> Self {
        PostgresInbox {
            sql: Arc::new(PostgresInboxSql::new(&table)),
            table,
        }
    }

    /// The table, as written (`schema.table` or `table`).
    pub fn table_name(&self) -> String {
        self.table.plain()
    }

    /// Creates the table and its index if missing, in a transaction of its own
    /// (a savepoint when `client` is a transaction), under an advisory lock, so
    /// that concurrent consumers may all call it at start-up.
    pub fn migrate(&self, client: &mut impl GenericClient) -> Result<()> {
        let mut tx = client
            .transaction()
            .map_err(|e| Error::db("beginning the inbox migrate", e))?;
        tx.execute(self.sql.migrate_lock, &[&self.sql.migrate_resource])
            .map_err(|e| Error::db("locking for the inbox migrate", e))?;
        for stmt in &self.sql.migrate {
            tx.batch_execute(stmt)
                .map_err(|e| Error::db("creating the inbox table", e))?;
        }
        tx.commit()
            .map_err(|e| Error::db("committing the inbox migrate", e))
    }

    /// Runs `handler` once per message id, in the caller's transaction `tx`.
    ///
    /// Inserts `id` first (waiting while a concurrent transaction holds the same
    /// id), then, for a new id, runs `handler(tx)` and returns
    /// [`Outcome::Processed`] with its result; for a recorded id runs nothing and
    /// returns [`Outcome::AlreadyProcessed`]. Nothing is final until the caller
    /// commits `tx`. On `Err` (the handler's, or a database error) the id and the
    /// handler's writes are rolled back to a savepoint and `tx` stays usable; should
    /// that rollback fail (logged), roll `tx` back.
    pub fn process<'t, R, E, F>(
        &self,
        tx: &mut Transaction<'t>,
        id: MessageId,
        handler: F,
    ) -> std::result::Result<Outcome<R>, E>
    where
        F: FnOnce(&mut Transaction<'t>) -> std::result::Result<R, E>,
        E: From<Error>,
    {
        process_with(self, tx, id, handler)
    }

    /// Whether `id` is recorded (as committed data sees it).
    pub fn contains(&self, client: &mut impl GenericClient, id: MessageId) -> Result<bool> {
        let rows = client
            .query(&self.sql.contains, &[id.as_uuid()])
            .map_err(|e| Error::db("reading the inbox", e))?;
        Ok(!rows.is_empty())
    }

    /// Deletes up to `limit` ids recorded more than `older_than` ago (by the
    /// database clock); returns how many. Call it until it returns less than
    /// `limit` to delete all of them in short statements.
    pub fn cleanup(
        &self,
        client: &mut impl GenericClient,
        older_than: Duration,
        limit: usize,
    ) -> Result<u64> {
        let ms = older_than.as_secs_f64() * 1000.0;
        client
            .execute(&self.sql.cleanup, &[&ms, &q::limit(limit)])
            .map_err(|e| Error::db("cleaning up the inbox", e))
    }
}

impl Steps<Transaction<'_>> for PostgresInbox {
    fn savepoint(&self, tx: &mut Transaction<'_>) -> Result<()> {
        tx.batch_execute(q::SAVEPOINT)
            .map_err(|e| Error::db("taking the inbox savepoint", e))
    }

    fn insert(&self, tx: &mut Transaction<'_>, id: MessageId) -> Result<bool> {
        let n = tx
            .execute(&self.sql.insert, &[id.as_uuid()])
            .map_err(|e| Error::db("recording a message id in the inbox", e))?;
        Ok(n == 1)
    }

    fn release(&self, tx: &mut Transaction<'_>) -> Result<()> {
        tx.batch_execute(q::RELEASE)
            .map_err(|e| Error::db("releasing the inbox savepoint", e))
    }

    fn rollback_to(&self, tx: &mut Transaction<'_>) -> Result<()> {
        tx.batch_execute(q::ROLLBACK_TO)
            .map_err(|e| Error::db("rolling back to the inbox savepoint", e))
    }
}
