//! The inbox in MySQL 8 / MariaDB 10.6+ (InnoDB), on the `mysql` driver.

use super::{process_with, Outcome, Steps};
use crate::core::ident::TableName;
use crate::core::sql::inbox::{self as q, MysqlInboxSql};
use crate::message::MessageId;
use crate::{Error, Result};
use mysql::prelude::Queryable;
use mysql::Transaction;
use std::sync::Arc;
use std::time::Duration;

/// Processed message ids in a MySQL or MariaDB table (InnoDB), recorded in the
/// consumer's `mysql::Transaction` (see the [module docs](crate::inbox)).
///
/// A concurrent consumer of the same id waits on the first one's row lock. Two
/// notes on InnoDB: a `ROLLBACK TO SAVEPOINT` (a failing handler) keeps the row
/// locks taken after the savepoint, so such a waiter waits until the whole
/// transaction ends; and when three or more consumers wait for one id whose
/// insert is rolled back, InnoDB may pick one of them as a deadlock victim
/// ([`Error::Database`], error 1213): roll back and retry (the message is
/// redelivered anyway when not acknowledged).
///
/// ```no_run
/// # fn main() -> Result<(), outboxer::BoxError> {
/// use outboxer::inbox::MysqlInbox;
/// use outboxer::store::mysql::{prelude::Queryable, Pool, TxOpts};
/// use outboxer::MessageId;
///
/// let pool = Pool::new("mysql://root@127.0.0.1:3306/test")?;
/// let inbox = MysqlInbox::with_table("orders_inbox")?;
/// inbox.migrate(&mut pool.get_conn()?)?;
/// let id = MessageId::new(); // from the delivery
/// let mut conn = pool.get_conn()?;
/// let mut tx = conn.start_transaction(TxOpts::default())?;
/// let outcome = inbox.process(&mut tx, id, |tx| -> Result<(), outboxer::BoxError> {
///     tx.exec_drop("UPDATE orders SET paid = 1 WHERE id = ?", (42,))?;
///     Ok(())
/// })?;
/// tx.commit()?;
/// println!("{outcome:?}");
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct MysqlInbox {
    table: TableName,
    pub(crate) sql: Arc<MysqlInboxSql>,
}

impl Default for MysqlInbox {
    /// The table [`DEFAULT_TABLE`](super::DEFAULT_TABLE), `outboxer_inbox`.
    fn default() -> Self {
        Self::on(TableName::parse(q::DEFAULT_TABLE).unwrap_or_default())
    }
}

impl MysqlInbox {
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
        MysqlInbox {
            sql: Arc::new(MysqlInboxSql::new(&table)),
            table,
        }
    }

    /// The table, as written (`schema.table` or `table`).
    pub fn table_name(&self) -> String {
        self.table.plain()
    }

    /// Creates the table and its index if missing (`CREATE TABLE IF NOT EXISTS`,
    /// safe under concurrent callers). DDL commits implicitly in MySQL: run it on
    /// a connection, not inside a transaction.
    pub fn migrate(&self, conn: &mut impl Queryable) -> Result<()> {
        conn.query_drop(&self.sql.create)
            .map_err(|e| Error::db("creating the inbox table", e))
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

    /// Whether `id` is recorded (as the connection's snapshot sees it).
    pub fn contains(&self, conn: &mut impl Queryable, id: MessageId) -> Result<bool> {
        let row: Option<i64> = conn
            .exec_first(&self.sql.contains, (id_bytes(id),))
            .map_err(|e| Error::db("reading the inbox", e))?;
        Ok(row.is_some())
    }

    /// Deletes up to `limit` ids recorded more than `older_than` ago (by the
    /// database clock, UTC); returns how many. Call it until it returns less than
    /// `limit` to delete all of them in short statements.
    pub fn cleanup(
        &self,
        conn: &mut impl Queryable,
        older_than: Duration,
        limit: usize,
    ) -> Result<u64> {
        let micros = i64::try_from(older_than.as_micros()).unwrap_or(i64::MAX);
        let done = conn
            .exec_iter(&self.sql.cleanup, (micros, q::limit(limit)))
            .map(|r| r.affected_rows());
        done.map_err(|e| Error::db("cleaning up the inbox", e))
    }
}

fn id_bytes(id: MessageId) -> Vec<u8> {
    id.as_uuid().as_bytes().to_vec()
}

impl Steps<Transaction<'_>> for MysqlInbox {
    fn savepoint(&self, tx: &mut Transaction<'_>) -> Result<()> {
        tx.query_drop(q::SAVEPOINT)
            .map_err(|e| Error::db("taking the inbox savepoint", e))
    }

    fn insert(&self, tx: &mut Transaction<'_>, id: MessageId) -> Result<bool> {
        tx.exec_drop(&self.sql.insert, (id_bytes(id),))
            .map_err(|e| Error::db("recording a message id in the inbox", e))?;
        Ok(tx.affected_rows() == 1)
    }

    fn release(&self, tx: &mut Transaction<'_>) -> Result<()> {
        tx.query_drop(q::RELEASE)
            .map_err(|e| Error::db("releasing the inbox savepoint", e))
    }

    fn rollback_to(&self, tx: &mut Transaction<'_>) -> Result<()> {
        tx.query_drop(q::ROLLBACK_TO)
            .map_err(|e| Error::db("rolling back to the inbox savepoint", e))
    }
}
