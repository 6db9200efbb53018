//! The caller's transaction (`BEGIN TRAN` .. `COMMIT` on one pooled connection):
//! it tracks its state so that nothing runs in a transaction the server rolled back.

use super::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum TxState {
    Open,
    /// A statement failed: SQL Server (`XACT_ABORT`) has rolled the transaction back,
    /// so nothing more may run in it as if it were still open.
    Failed,
    Done,
}

/// A transaction on one of the store's connections (`BEGIN TRAN` .. `COMMIT`): the
/// caller's statements and [`TxStore::enqueue_in_tx`] messages commit together.
///
/// Statements run blocking, through the store's private runtime. Parameters are
/// `@P1`, `@P2`, ... and any `tiberius::ToSql` value (`&42i64`, `&"text"`, ...).
/// After a failed statement the transaction is rolled back (`XACT_ABORT ON`) and
/// every further call, including `commit`, returns an error. Dropped without
/// `commit`, it rolls back. The connection's session settings (isolation level,
/// `XACT_ABORT`, `NOCOUNT`) are restored when it ends; other session state the
/// caller creates (temporary tables, other `SET` options) stays on the pooled
/// connection.
///
/// ```no_run
/// # fn main() -> Result<(), outboxer::Error> {
/// use outboxer::store::SqlServerStore;
/// use outboxer::{Message, Store, TxStore};
///
/// let store = SqlServerStore::connect("server=tcp:127.0.0.1,1433;user=sa;password=secret")?;
/// let mut tx = store.begin()?;
/// let rows = tx.query("SELECT balance FROM dbo.accounts WHERE id = @P1", &[&7i32])?;
/// let balance: Option<i64> = rows.first().and_then(|r| r.get(0));
/// tx.execute("UPDATE dbo.accounts SET balance = balance - 10 WHERE id = @P1", &[&7i32])?;
/// store.enqueue_in_tx(&mut tx, &[Message::new(format!("{balance:?}").into_bytes())])?;
/// tx.commit()?;
/// # Ok(()) }
/// ```
pub struct SqlServerTx<'a> {
    pub(super) conn: Conn<'a>,
    pub(super) state: TxState,
}

impl std::fmt::Debug for SqlServerTx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlServerTx")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl SqlServerTx<'_> {
    fn check(&self) -> Result<()> {
        match self.state {
            TxState::Open => Ok(()),
            TxState::Failed => Err(Error::db(
                "using a transaction",
                "an earlier statement failed and SQL Server rolled this transaction back",
            )),
            TxState::Done => Err(Error::db("using a transaction", "it has ended")),
        }
    }

    fn track<T>(&mut self, r: Result<T>) -> Result<T> {
        if r.is_err() {
            self.state = TxState::Failed;
        }
        r
    }

    /// Runs a statement with parameters `@P1..`; returns the rows it changed (all
    /// statements of the batch added up).
    pub fn execute(&mut self, sql: &str, params: &[&dyn ToSql]) -> Result<u64> {
        self.check()?;
        let r = self.conn.exec_dyn("running a statement", sql, params);
        self.track(r)
    }

    /// Runs a query with parameters `@P1..`; returns the rows of its first result set.
    pub fn query(&mut self, sql: &str, params: &[&dyn ToSql]) -> Result<Vec<Row>> {
        self.check()?;
        let r = self.conn.rows_dyn("running a query", sql, params);
        self.track(r)
    }

    /// Commits the transaction.
    pub fn commit(mut self) -> Result<()> {
        self.check()?;
        let r = self.conn.batch("committing", batch::COMMIT);
        if r.is_ok() {
            self.state = TxState::Done;
        }
        r
    }

    /// Rolls the transaction back.
    pub fn rollback(mut self) -> Result<()> {
        self.end()
    }

    fn end(&mut self) -> Result<()> {
        if self.state == TxState::Done {
            return Ok(());
        }
        self.state = TxState::Done;
        if self.conn.broken {
            // The connection is closed on drop: the server rolls back what is open.
            return Ok(());
        }
        let r = self.conn.batch("rolling back", batch::ROLLBACK);
        // Whatever failed, this connection must not go back to the pool.
        self.conn.broken |= r.is_err();
        r
    }

    pub(super) fn insert(&mut self, store: &SqlServerStore, messages: &[Message]) -> Result<()> {
        self.check()?;
        let r = store.insert(&mut self.conn, messages, false);
        self.track(r)
    }
}

impl Drop for SqlServerTx<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.end() {
            log::warn!("outboxer: rolling back a dropped SQL Server transaction failed: {e}");
        }
    }
}

impl Finish for SqlServerTx<'_> {
    fn commit(self) -> Result<()> {
        SqlServerTx::commit(self)
    }
    fn rollback(self) -> Result<()> {
        SqlServerTx::rollback(self)
    }
}
