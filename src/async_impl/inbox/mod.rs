//! The consumer inbox from async code: the same tables, statements and guarantees
//! as the blocking [`crate::inbox`] (read its docs), on each database's async
//! driver: tokio-postgres, `mysql_async` (feature `async-mysql`), the async SQLite
//! store's transaction ([`SqliteTx`](crate::async_impl::store::SqliteTx), statements on
//! tokio's blocking pool) and tiberius. A handler is a closure given the
//! transaction that returns a boxed future ([`HandlerFuture`]):
//! `move |tx| Box::pin(async move { .. })`, so that `process` can be awaited
//! inside `tokio::spawn`. It captures what it uses by value (clone a `String`,
//! an `Arc`), as the boxed future may not borrow from the caller's stack.
//!
//! ```no_run
//! # fn main() {}
//! # #[cfg(feature = "postgres")]
//! # async fn demo() -> Result<(), outboxer::BoxError> {
//! use outboxer::async_impl::inbox::{Outcome, PostgresInbox};
//! use outboxer::async_impl::store::tokio_postgres::{self, NoTls};
//! use outboxer::MessageId;
//!
//! let (mut db, conn) = tokio_postgres::connect("postgres://postgres@127.0.0.1/test", NoTls).await?;
//! tokio::spawn(conn);
//! let inbox = PostgresInbox::with_table("orders_inbox")?;
//! inbox.migrate(&mut db).await?;
//! let id = MessageId::new(); // from the delivery
//! let mut tx = db.transaction().await?;
//! let outcome = inbox
//!     .process(&mut tx, id, |tx| {
//!         Box::pin(async move {
//!             tx.execute("UPDATE orders SET paid = true WHERE id = $1", &[&42i64]).await?;
//!             Ok::<_, outboxer::BoxError>(())
//!         })
//!     })
//!     .await?;
//! tx.commit().await?;
//! if outcome == Outcome::AlreadyProcessed {
//!     println!("duplicate of {id}");
//! }
//! # Ok(()) }
//! ```

pub use crate::inbox::{Outcome, DEFAULT_TABLE};

use crate::message::MessageId;
use crate::Result;
use std::future::Future;
use std::pin::Pin;

/// What a handler returns: its future, boxed and `Send` (as sqlx's
/// `Connection::transaction` takes it). Write the handler as
/// `|tx| Box::pin(async move { .. })`. A boxed future of a named type is what lets
/// the compiler prove `process(..)` `Send`, so that it runs inside
/// `tokio::spawn`: with an `async` closure, rustc (1.85 to at least 1.9x) reports
/// "implementation of `AsyncFnOnce` is not general enough" there.
pub type HandlerFuture<'a, R, E> =
    Pin<Box<dyn Future<Output = std::result::Result<R, E>> + Send + 'a>>;

#[cfg(feature = "async-mysql")]
mod mysql;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;
#[cfg(feature = "sqlserver")]
mod sqlserver;

#[cfg(feature = "async-mysql")]
#[cfg_attr(docsrs, doc(cfg(feature = "async-mysql")))]
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

/// One store's statements around a handler, on its transaction type `T` (the
/// async twin of the blocking inbox's steps).
#[allow(dead_code)] // with no store feature on, nothing implements it
pub(crate) trait Steps<T> {
    async fn savepoint(&self, tx: &mut T) -> Result<()>;
    async fn insert(&self, tx: &mut T, id: MessageId) -> Result<bool>;
    async fn release(&self, tx: &mut T) -> Result<()>;
    async fn rollback_to(&self, tx: &mut T) -> Result<()>;
}

/// `process` of every async inbox (see `crate::inbox::process_with`).
#[allow(dead_code)]
pub(crate) async fn process_with<T, S, R, E, F>(
    steps: &S,
    tx: &mut T,
    id: MessageId,
    f: F,
) -> std::result::Result<Outcome<R>, E>
where
    S: Steps<T>,
    F: for<'c> FnOnce(&'c mut T) -> HandlerFuture<'c, R, E>,
    E: From<crate::Error>,
{
    steps.savepoint(tx).await?;
    let inserted = match steps.insert(tx, id).await {
        Ok(inserted) => inserted,
        Err(e) => {
            undo(steps, tx).await;
            return Err(e.into());
        }
    };
    if !inserted {
        steps.release(tx).await?;
        return Ok(Outcome::AlreadyProcessed);
    }
    match f(tx).await {
        Ok(r) => match steps.release(tx).await {
            Ok(()) => Ok(Outcome::Processed(r)),
            Err(e) => {
                // Nothing half-done stays behind an error: undo id and writes.
                undo(steps, tx).await;
                Err(e.into())
            }
        },
        Err(e) => {
            undo(steps, tx).await;
            Err(e)
        }
    }
}

#[allow(dead_code)]
async fn undo<T, S: Steps<T>>(steps: &S, tx: &mut T) {
    if let Err(e) = steps.rollback_to(tx).await {
        log::warn!("outboxer: inbox: rolling back to the savepoint failed: {e}");
    }
}
