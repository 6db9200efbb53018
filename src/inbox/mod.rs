//! The consumer inbox: effectively-once processing of at-least-once deliveries.
//!
//! A relay delivers every message at least once, so a consumer sees duplicates
//! (after a relay crash, a lost broker ack, a consumer restart). Every delivery
//! carries the message's [`MessageId`]. An inbox records the ids a consumer has
//! processed in a table of the consumer's own database, **in the consumer's own
//! transaction**: [`PostgresInbox::process`] inserts the id, runs the handler with
//! the same transaction and returns [`Outcome::Processed`]; for an id that is
//! already recorded it runs nothing and returns [`Outcome::AlreadyProcessed`]. The
//! id and the handler's writes commit together, or not at all.
//!
//! - **Failing handler**: an `Err` from the handler rolls its writes and the id
//!   back to a savepoint taken before the insert; the caller's transaction stays
//!   usable and the message can be retried (redelivered).
//! - **Concurrent consumers** (threads or processes) of one id never both run the
//!   handler: the id is inserted *before* the handler runs, so the second
//!   consumer's insert waits on the first one's row (or key, or database) lock
//!   until that transaction ends, then sees the id (duplicate) or, if it rolled
//!   back, takes its turn.
//! - **Order**: acknowledge the delivery to the broker only after the commit. A
//!   crash between commit and ack redelivers the message; the inbox turns that
//!   into [`Outcome::AlreadyProcessed`].
//! - **Retention**: `cleanup` deletes ids recorded more than an age ago, in
//!   batches. Keep them longer than a duplicate can arrive (the relay's lease and
//!   backoff, the broker's redelivery, a consumer's downtime): a duplicate of a
//!   deleted id is processed again.
//!
//! One type per database, each behind its store's feature: [`PostgresInbox`]
//! (`postgres::Transaction`), [`MysqlInbox`] (`mysql::Transaction`), [`SqliteInbox`]
//! (`rusqlite::Transaction`), [`SqlServerInbox`] ([`crate::store::SqlServerTx`]).
//! The async API has the same in [`crate::async_impl::inbox`] (feature `async`).
//! The inbox holds only its table's name and SQL: every call takes the connection
//! or transaction, so it works with any pool, and with or without an outbox.
//!
//! ```no_run
//! # #[cfg(not(feature = "postgres"))] fn main() {}
//! # #[cfg(feature = "postgres")]
//! # fn main() -> Result<(), outboxer::Error> {
//! use outboxer::inbox::{Outcome, PostgresInbox};
//! use outboxer::store::postgres::{Client, NoTls};
//! use outboxer::MessageId;
//!
//! let mut db = Client::connect("postgres://postgres@127.0.0.1/test", NoTls)?;
//! let inbox = PostgresInbox::with_table("orders_inbox")?;
//! inbox.migrate(&mut db)?;
//!
//! // For each delivery: its message id (AMQP `message_id` property, the
//! // `message-id` header or attribute of the other streams).
//! let id: MessageId = "01890a5d-ac96-774b-bcce-b302099a8057".parse().expect("a UUID");
//! let mut tx = db.transaction()?;
//! let outcome = inbox.process(&mut tx, id, |tx| {
//!     tx.execute("UPDATE orders SET paid = true WHERE id = $1", &[&42i64])?;
//!     Ok::<_, outboxer::Error>(())
//! })?;
//! tx.commit()?;
//! // Only now acknowledge the delivery to the broker.
//! if let Outcome::AlreadyProcessed = outcome {
//!     println!("duplicate of {id}: nothing done");
//! }
//! # Ok(()) }
//! ```

use crate::message::MessageId;
use crate::Result;

#[cfg(feature = "mysql")]
pub(crate) mod mysql;
#[cfg(feature = "postgres")]
pub(crate) mod postgres;
#[cfg(feature = "sqlite")]
pub(crate) mod sqlite;
#[cfg(feature = "sqlserver")]
pub(crate) mod sqlserver;

#[cfg(feature = "mysql")]
#[cfg_attr(docsrs, doc(cfg(feature = "mysql")))]
pub use self::mysql::MysqlInbox;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use self::postgres::PostgresInbox;
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub use self::sqlite::SqliteInbox;
#[cfg(feature = "sqlserver")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlserver")))]
pub use self::sqlserver::SqlServerInbox;

/// The inbox table's default name.
pub const DEFAULT_TABLE: &str = crate::core::sql::inbox::DEFAULT_TABLE;

/// What `process` did with a message id.
///
/// ```
/// use outboxer::inbox::Outcome;
/// let first: Outcome<u32> = Outcome::Processed(7);
/// assert_eq!(first.processed(), Some(7));
/// assert!(Outcome::<u32>::AlreadyProcessed.is_duplicate());
/// ```
#[must_use = "a duplicate must still be acknowledged to the broker"]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome<R> {
    /// The id was new: the handler ran and returned this. The id and the handler's
    /// writes commit (or roll back) with the caller's transaction.
    Processed(R),
    /// The id was recorded already (by an earlier delivery, or a concurrent
    /// consumer that committed first): the handler did not run.
    AlreadyProcessed,
}

impl<R> Outcome<R> {
    /// True when the handler ran.
    pub fn is_processed(&self) -> bool {
        matches!(self, Outcome::Processed(_))
    }

    /// True for a duplicate (the handler did not run).
    pub fn is_duplicate(&self) -> bool {
        matches!(self, Outcome::AlreadyProcessed)
    }

    /// The handler's result, `None` for a duplicate.
    pub fn processed(self) -> Option<R> {
        match self {
            Outcome::Processed(r) => Some(r),
            Outcome::AlreadyProcessed => None,
        }
    }
}

/// One store's statements around a handler, on its transaction type `T`.
#[allow(dead_code)] // with no store feature on, nothing implements it
pub(crate) trait Steps<T> {
    /// Marks where a failing handler is rolled back to.
    fn savepoint(&self, tx: &mut T) -> Result<()>;
    /// Records `id`; false when it was recorded already.
    fn insert(&self, tx: &mut T, id: MessageId) -> Result<bool>;
    /// Keeps what happened since the savepoint.
    fn release(&self, tx: &mut T) -> Result<()>;
    /// Undoes what happened since the savepoint.
    fn rollback_to(&self, tx: &mut T) -> Result<()>;
}

/// `process` of every blocking inbox: savepoint, insert the id (waiting for a
/// concurrent insert of it), run `f` only for a new id, release or roll back.
#[allow(dead_code)]
pub(crate) fn process_with<T, S, R, E, F>(
    steps: &S,
    tx: &mut T,
    id: MessageId,
    f: F,
) -> std::result::Result<Outcome<R>, E>
where
    S: Steps<T>,
    F: FnOnce(&mut T) -> std::result::Result<R, E>,
    E: From<crate::Error>,
{
    steps.savepoint(tx)?;
    let inserted = match steps.insert(tx, id) {
        Ok(inserted) => inserted,
        Err(e) => {
            // A failed statement aborts a PostgreSQL transaction until this rollback.
            undo(steps, tx);
            return Err(e.into());
        }
    };
    if !inserted {
        steps.release(tx)?;
        return Ok(Outcome::AlreadyProcessed);
    }
    match f(tx) {
        Ok(r) => match steps.release(tx) {
            Ok(()) => Ok(Outcome::Processed(r)),
            Err(e) => {
                // Nothing half-done stays behind an error: undo id and writes.
                undo(steps, tx);
                Err(e.into())
            }
        },
        Err(e) => {
            undo(steps, tx);
            Err(e)
        }
    }
}

#[allow(dead_code)]
fn undo<T, S: Steps<T>>(steps: &S, tx: &mut T) {
    if let Err(e) = steps.rollback_to(tx) {
        // The caller gets the first error and must roll the transaction back.
        log::warn!("outboxer: inbox: rolling back to the savepoint failed: {e}");
    }
}
