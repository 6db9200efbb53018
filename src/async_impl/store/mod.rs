//! The async store seam: where messages are enqueued, through each database's
//! async driver. Claims, marks and cleanup belong to the relay, which runs the
//! matching blocking store ([`Store::Blocking`]) on threads of its own.

use crate::message::Message;
use crate::{Error, Result};
use std::future::Future;

// The async driver crates, re-exported so that callers join transactions with the
// exact version the store was built against.
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use ::tokio_postgres;

#[cfg(feature = "postgres")]
#[path = "postgres.rs"]
mod postgres_store;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use self::postgres_store::{PostgresStore, PostgresStoreBuilder};

#[cfg(feature = "async-mysql")]
#[cfg_attr(docsrs, doc(cfg(feature = "async-mysql")))]
pub use ::mysql_async;
#[cfg(feature = "async-mysql")]
#[path = "mysql.rs"]
mod mysql_store;
#[cfg(feature = "async-mysql")]
#[cfg_attr(docsrs, doc(cfg(feature = "async-mysql")))]
pub use self::mysql_store::{MysqlStore, MysqlStoreBuilder};

#[cfg(feature = "sqlserver")]
#[path = "sqlserver.rs"]
mod sqlserver_store;
#[cfg(feature = "sqlserver")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlserver")))]
pub use self::sqlserver_store::{SqlServerClient, SqlServerStore};

#[cfg(feature = "sqlite")]
#[path = "sqlite.rs"]
mod sqlite_store;
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub use self::sqlite_store::{SqliteStore, SqliteTx};

#[cfg(feature = "_sqlx")]
#[cfg_attr(
    docsrs,
    doc(cfg(any(feature = "sqlx-postgres", feature = "sqlx-mysql")))
)]
pub use ::sqlx;
#[cfg(feature = "_sqlx")]
#[path = "sqlx/mod.rs"]
mod sqlx_store;
#[cfg(feature = "_sqlx")]
#[cfg_attr(
    docsrs,
    doc(cfg(any(feature = "sqlx-postgres", feature = "sqlx-mysql")))
)]
pub use self::sqlx_store::{SqlxDatabase, SqlxStore};

/// A database that holds the outbox table, seen from async code.
pub trait Store: Send + Sync + 'static {
    /// The blocking store on the same table and server; the relay runs it on its
    /// own threads.
    type Blocking: crate::Store + Clone;

    /// The caller's transaction type that messages can join
    /// (e.g. `tokio_postgres::Transaction`).
    type Tx<'a>: Send;

    /// The blocking store the relay uses.
    fn blocking(&self) -> &Self::Blocking;

    /// Inserts messages in one transaction of the store's own.
    fn enqueue(&self, messages: &[Message]) -> impl Future<Output = Result<()>> + Send;

    /// Inserts messages inside the caller's transaction: they commit or roll back with it.
    fn enqueue_in_tx(
        &self,
        tx: &mut Self::Tx<'_>,
        messages: &[Message],
    ) -> impl Future<Output = Result<()>> + Send;

    /// Begins a transaction, runs `f`, commits on `Ok`, rolls back on `Err`.
    /// (The future is `Send` when `f`'s future is.)
    fn with_transaction<R, E, F>(&self, f: F) -> impl Future<Output = std::result::Result<R, E>>
    where
        F: AsyncFnOnce(&mut Self::Tx<'_>) -> std::result::Result<R, E>,
        E: From<Error>;
}

/// A driver's transaction, as the closure form ends it.
pub(crate) trait Finish: Sized + Send {
    fn commit(self) -> impl Future<Output = Result<()>> + Send;
    fn rollback(self) -> impl Future<Output = Result<()>> + Send;
}

/// Runs `f` with `tx`, then commits on `Ok` and rolls back on `Err` (a failed
/// rollback is logged: the server rolls back when the connection ends anyway).
pub(crate) async fn run_in<T, R, E, F>(mut tx: T, f: F) -> std::result::Result<R, E>
where
    T: Finish,
    F: AsyncFnOnce(&mut T) -> std::result::Result<R, E>,
    E: From<Error>,
{
    match f(&mut tx).await {
        Ok(r) => {
            tx.commit().await?;
            Ok(r)
        }
        Err(e) => {
            if let Err(re) = tx.rollback().await {
                log::warn!("outboxer: rollback failed: {re}");
            }
            Err(e)
        }
    }
}
