//! The inbox in SQLite, on `rusqlite`.

use super::{process_with, Outcome, Steps};
use crate::core::ident::TableName;
use crate::core::sql::inbox::{self as q, SqliteInboxSql};
use crate::core::sql::sqlite::sqlite_table;
use crate::message::MessageId;
use crate::{Error, Result};
use rusqlite::{Connection, OptionalExtension, Transaction};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Processed message ids in a SQLite table, recorded in the consumer's
/// `rusqlite::Transaction` (see the [module docs](crate::inbox)).
///
/// SQLite has one writer at a time: concurrent consumers (threads with their own
/// connections, or processes) wait for each other under the connection's busy
/// timeout. Begin the consumer's transactions with
/// `TransactionBehavior::Immediate`: a deferred transaction that reads before it
/// writes gets `SQLITE_BUSY` at once when another writer committed in between.
/// `processed_at` is Unix milliseconds by this machine's clock.
///
/// ```no_run
/// # fn main() -> Result<(), outboxer::BoxError> {
/// use outboxer::inbox::SqliteInbox;
/// use outboxer::store::rusqlite::{Connection, TransactionBehavior};
/// use outboxer::MessageId;
///
/// let mut db = Connection::open("consumer.db")?;
/// db.busy_timeout(std::time::Duration::from_secs(10))?;
/// let inbox = SqliteInbox::new();
/// inbox.migrate(&db)?;
/// let id = MessageId::new(); // from the delivery
/// let mut tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
/// let outcome = inbox.process(&mut tx, id, |tx| -> Result<(), outboxer::BoxError> {
///     tx.execute("UPDATE orders SET paid = 1 WHERE id = ?1", [42])?;
///     Ok(())
/// })?;
/// tx.commit()?;
/// println!("{outcome:?}");
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct SqliteInbox {
    table: TableName,
    pub(crate) sql: Arc<SqliteInboxSql>,
}

impl Default for SqliteInbox {
    /// The table [`DEFAULT_TABLE`](super::DEFAULT_TABLE), `outboxer_inbox`.
    fn default() -> Self {
        Self::on(TableName::parse(q::DEFAULT_TABLE).unwrap_or_default())
    }
}

impl SqliteInbox {
    /// The inbox in table `outboxer_inbox`.
    pub fn new() -> Self {
        Self::default()
    }

    /// The inbox in `table` (`name` or `main.name`, a plain identifier of at most
    /// 40 bytes); [`Error::InvalidIdentifier`] otherwise.
    pub fn with_table(table: &str) -> Result<Self> {
        let table = sqlite_table(&TableName::parse(table)?)?;
        Ok(Self::on(table))
    }

    /// `table` has no schema (or went through [`sqlite_table`]).
    fn on(table: TableName) -> Self {
        SqliteInbox {
            sql: Arc::new(SqliteInboxSql::new(&table)),
            table,
        }
    }

    /// The table, as written (`main.table` or `table`).
    pub fn table_name(&self) -> String {
        self.table.plain()
    }

    /// Creates the table and its index if missing (idempotent; SQLite runs one
    /// writer at a time).
    pub fn migrate(&self, conn: &Connection) -> Result<()> {
        conn.execute_batch(&self.sql.migrate)
            .map_err(|e| Error::db("creating the inbox table", e))
    }

    /// Runs `handler` once per message id, in the caller's transaction `tx`.
    ///
    /// Inserts `id` first, then, for a new id, runs `handler(tx)` and returns
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

    /// Whether `id` is recorded.
    pub fn contains(&self, conn: &Connection, id: MessageId) -> Result<bool> {
        let found = conn
            .query_row(
                &self.sql.contains,
                [id.as_uuid().as_bytes().as_slice()],
                |_| Ok(()),
            )
            .optional()
            .map_err(|e| Error::db("reading the inbox", e))?;
        Ok(found.is_some())
    }

    /// Deletes up to `limit` ids recorded more than `older_than` ago; returns how
    /// many. Call it until it returns less than `limit` to delete all of them in
    /// short write transactions.
    pub fn cleanup(&self, conn: &Connection, older_than: Duration, limit: usize) -> Result<u64> {
        let cutoff = now_ms().saturating_sub(q::millis(older_than));
        let n = conn
            .execute(&self.sql.cleanup, (cutoff, q::limit(limit)))
            .map_err(|e| Error::db("cleaning up the inbox", e))?;
        Ok(u64::try_from(n).unwrap_or(u64::MAX))
    }

    /// Records `id` on `conn` (the blocking and the async inbox's insert).
    pub(crate) fn insert_on(&self, conn: &Connection, id: MessageId) -> Result<bool> {
        let n = conn
            .execute(
                &self.sql.insert,
                (id.as_uuid().as_bytes().as_slice(), now_ms()),
            )
            .map_err(|e| Error::db("recording a message id in the inbox", e))?;
        Ok(n == 1)
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(q::millis)
        .unwrap_or(0)
}

pub(crate) fn exec(conn: &Connection, sql: &str, context: &'static str) -> Result<()> {
    conn.execute_batch(sql).map_err(|e| Error::db(context, e))
}

impl Steps<Transaction<'_>> for SqliteInbox {
    fn savepoint(&self, tx: &mut Transaction<'_>) -> Result<()> {
        exec(tx, q::SAVEPOINT, "taking the inbox savepoint")
    }

    fn insert(&self, tx: &mut Transaction<'_>, id: MessageId) -> Result<bool> {
        self.insert_on(tx, id)
    }

    fn release(&self, tx: &mut Transaction<'_>) -> Result<()> {
        exec(tx, q::RELEASE, "releasing the inbox savepoint")
    }

    fn rollback_to(&self, tx: &mut Transaction<'_>) -> Result<()> {
        exec(tx, q::ROLLBACK_TO, "rolling back to the inbox savepoint")
    }
}
