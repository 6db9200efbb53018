//! Enqueueing through the application's own sqlx pool and transactions (features
//! `sqlx-postgres`, `sqlx-mysql`, or `sqlx` for both): [`SqlxStore`] is an async
//! [`Store`] whose transaction type is `sqlx::Transaction`, so
//! [`Outbox::send_within_tx`](crate::async_impl::Outbox::send_within_tx) and
//! [`Outbox::transaction`](crate::async_impl::Outbox::transaction) join sqlx
//! transactions. The rows are the crate's store's rows, written with its SQL text
//! and its per-key locks; the relay runs the crate's blocking store.

use super::{run_in, Finish, Store};
use crate::async_impl::{unblock, BlockingDrop};
use crate::message::Message;
use crate::{Error, Result};
use std::future::Future;
use std::sync::Arc;

#[cfg(feature = "sqlx-mysql")]
mod mysql;
#[cfg(feature = "sqlx-postgres")]
mod postgres;

/// A database that [`SqlxStore`] can write the outbox table of: `sqlx::Postgres`
/// (feature `sqlx-postgres`), `sqlx::MySql` (feature `sqlx-mysql`). Sealed:
/// implemented here only.
pub trait SqlxDatabase: sqlx::Database + sealed::Sealed {
    /// The crate's blocking store of this database, which the relay runs.
    type Blocking: crate::Store + Clone;

    /// The statements of one table, built once per store.
    #[doc(hidden)]
    type Target: Send + Sync + 'static;

    #[doc(hidden)]
    fn target(store: &Self::Blocking) -> Self::Target;

    /// Inserts `messages` on `conn` (inside a transaction), taking the store's
    /// per-key locks first.
    #[doc(hidden)]
    fn insert<'c>(
        conn: &'c mut Self::Connection,
        target: &'c Self::Target,
        messages: &'c [Message],
    ) -> impl Future<Output = Result<()>> + Send + 'c;
}

mod sealed {
    pub trait Sealed {}
}

/// The outbox table, written through a sqlx pool (sends) and the application's
/// sqlx transactions (`send_within_tx`, `transaction`), read by the relay through
/// the crate's blocking store on the same table.
///
/// Cheap to clone. The pool and the blocking store must point at the same
/// database; the table is the blocking store's.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use outboxer::async_impl::store::{sqlx, SqlxStore};
/// use outboxer::async_impl::Outbox;
/// use outboxer::Message;
///
/// let url = "postgres://postgres@127.0.0.1/test";
/// let pool = sqlx::PgPool::connect(url).await?;
/// let store = SqlxStore::open(pool.clone(), move || {
///     outboxer::store::PostgresStore::builder(url).table("event_store").build()
/// })
/// .await?;
/// store.migrate().await?;
/// let outbox = Outbox::builder().store(store).build()?;
///
/// let mut tx = pool.begin().await?;
/// sqlx::query("UPDATE orders SET state = 'paid' WHERE id = $1")
///     .bind(42_i64)
///     .execute(&mut *tx)
///     .await?;
/// outbox.send_within_tx(&mut tx, Message::new(br#"{"order":42}"#.to_vec())).await?;
/// tx.commit().await?; // the message is relayed only if this commits
/// # Ok(()) }
/// ```
pub struct SqlxStore<DB: SqlxDatabase> {
    pool: sqlx::Pool<DB>,
    inner: Arc<Inner<DB>>,
}

struct Inner<DB: SqlxDatabase> {
    // Dropped off the runtime: a blocking store's drop may block (its connections
    // close on a private runtime).
    blocking: BlockingDrop<DB::Blocking>,
    target: DB::Target,
}

impl<DB: SqlxDatabase> Clone for SqlxStore<DB> {
    fn clone(&self) -> Self {
        SqlxStore {
            pool: self.pool.clone(),
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<DB: SqlxDatabase> std::fmt::Debug for SqlxStore<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlxStore").finish_non_exhaustive()
    }
}

impl<DB: SqlxDatabase> SqlxStore<DB> {
    /// Sends through `pool`; the relay runs `blocking`, whose table (and, for
    /// PostgreSQL, `notify` setting) the sends use. Inside a tokio runtime, build
    /// the blocking store with [`SqlxStore::open`] (it must not connect on a
    /// runtime thread).
    pub fn new(pool: sqlx::Pool<DB>, blocking: DB::Blocking) -> Self {
        let target = DB::target(&blocking);
        SqlxStore {
            pool,
            inner: Arc::new(Inner {
                blocking: BlockingDrop::new(blocking),
                target,
            }),
        }
    }

    /// Builds the relay's blocking store with `make` on tokio's blocking pool, then
    /// as [`SqlxStore::new`].
    pub async fn open<F>(pool: sqlx::Pool<DB>, make: F) -> Result<Self>
    where
        F: FnOnce() -> Result<DB::Blocking> + Send + 'static,
    {
        let blocking = unblock("opening the relay's store", make).await?;
        Ok(Self::new(pool, blocking))
    }

    /// The pool the sends use.
    pub fn pool(&self) -> &sqlx::Pool<DB> {
        &self.pool
    }

    /// Creates or upgrades the table (see [`crate::Store::migrate`]), through the
    /// blocking store, on the blocking pool.
    pub async fn migrate(&self) -> Result<()> {
        let store = self.inner.blocking.clone();
        unblock("migrating the table", move || crate::Store::migrate(&store)).await
    }
}

impl<DB> Store for SqlxStore<DB>
where
    DB: SqlxDatabase,
    for<'c> sqlx::Transaction<'c, DB>: Finish,
{
    type Blocking = DB::Blocking;
    type Tx<'a> = sqlx::Transaction<'a, DB>;

    fn blocking(&self) -> &Self::Blocking {
        &self.inner.blocking
    }

    async fn enqueue(&self, messages: &[Message]) -> Result<()> {
        self.with_transaction(async |tx| self.enqueue_in_tx(tx, messages).await)
            .await
    }

    async fn enqueue_in_tx(&self, tx: &mut Self::Tx<'_>, messages: &[Message]) -> Result<()> {
        DB::insert(&mut **tx, &self.inner.target, messages).await
    }

    async fn with_transaction<R, E, F>(&self, f: F) -> std::result::Result<R, E>
    where
        F: AsyncFnOnce(&mut Self::Tx<'_>) -> std::result::Result<R, E>,
        E: From<Error>,
    {
        let tx = self
            .pool
            .begin()
            .await
            .map_err(|e| Error::db("beginning a transaction", e))?;
        run_in(tx, f).await
    }
}
