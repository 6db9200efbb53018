//! SQL Server from async code, on tiberius natively: the caller's transaction is
//! their own `tiberius::Client` inside `BEGIN TRAN` (tiberius has no transaction
//! type). The relay uses the blocking [`crate::store::SqlServerStore`]. The
//! enqueue statements are the blocking store's, compiled for async.
//!
//! Not run against a server here: no SQL Server can be installed on the test
//! machines (see the README); compiled, and its SQL text is unit-tested in core.

use super::{run_in, Finish, Store};
use crate::async_impl::unblock;
use crate::blocking::store::{open_client, TdsClient};
use crate::core::sql::sqlserver::{batch, SqlServerSql};
use crate::message::Message;
use crate::{Error, Result};
use tiberius::Query;

// The enqueue path shared with the blocking store (compiled here with `.await`).
use maybe_async::must_be_async as maybe;
// Compiled twice on purpose: once blocking, once async (maybe-async).
#[allow(clippy::duplicate_mod)]
#[path = "../../enqueue/sqlserver.rs"]
mod enqueue;

/// A request target for the shared enqueue path: the caller's client.
struct Conn<'a> {
    client: &'a mut TdsClient,
}

impl Conn<'_> {
    async fn exec(&mut self, ctx: &'static str, query: Query<'_>) -> Result<u64> {
        let r = query.execute(&mut *self.client).await;
        r.map(|done| done.total()).map_err(|e| Error::db(ctx, e))
    }

    async fn batch(&mut self, ctx: &'static str, sql: &'static str) -> Result<()> {
        let stream = self.client.simple_query(sql).await;
        let done = match stream {
            Ok(s) => s.into_results().await.map(drop),
            Err(e) => Err(e),
        };
        done.map_err(|e| Error::db(ctx, e))
    }
}

/// The outbox table in SQL Server 2017+, for async code. Its own sends and
/// transactions open a connection each (tiberius has no pool); the caller's
/// transactions are their own clients.
///
/// ```no_run
/// # async fn demo() -> Result<(), outboxer::Error> {
/// use outboxer::async_impl::store::SqlServerStore;
/// let store = SqlServerStore::connect("server=tcp:127.0.0.1,1433;user=sa;password=secret").await?;
/// store.migrate().await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct SqlServerStore {
    blocking: crate::store::SqlServerStore,
    sql: SqlServerSql,
}

/// The caller's tiberius client: inside `BEGIN TRAN` when passed to
/// `send_within_tx`.
pub type SqlServerClient = TdsClient;

impl SqlServerStore {
    /// Connects with an ADO.NET connection string (see
    /// [`crate::store::SqlServerStore::connect`]), table `event_store`; the
    /// blocking store for the relay is built on the blocking pool.
    pub async fn connect(conn_str: &str) -> Result<Self> {
        let conn_str = conn_str.to_string();
        let blocking = unblock("connecting to SQL Server", move || {
            crate::store::SqlServerStore::connect(&conn_str)
        })
        .await?;
        Ok(Self::new(blocking))
    }

    /// The async face of a blocking store built with
    /// [`crate::store::SqlServerStore::builder`].
    pub fn new(blocking: crate::store::SqlServerStore) -> Self {
        SqlServerStore {
            sql: SqlServerSql::new(blocking.table()),
            blocking,
        }
    }

    /// Creates or upgrades the table (see [`crate::Store::migrate`]).
    pub async fn migrate(&self) -> Result<()> {
        let store = self.blocking.clone();
        unblock("migrating the table", move || store.migrate()).await
    }

    /// Opens a connection with the store's settings and session setup.
    pub async fn client(&self) -> Result<SqlServerClient> {
        let (config, timeout) = self.blocking.config();
        let setup = self.sql.session_setup;
        let opened = tokio::time::timeout(timeout, async move {
            let mut client = open_client(config).await?;
            client.simple_query(setup).await?.into_results().await?;
            Ok::<_, tiberius::error::Error>(client)
        })
        .await;
        match opened {
            Ok(r) => r.map_err(|e| Error::db("connecting to SQL Server", e)),
            Err(_) => Err(Error::db(
                "connecting to SQL Server",
                format!("no connection within {timeout:?} (connect_timeout)"),
            )),
        }
    }
}

impl Store for SqlServerStore {
    type Blocking = crate::store::SqlServerStore;
    type Tx<'a> = SqlServerClient;

    fn blocking(&self) -> &crate::store::SqlServerStore {
        &self.blocking
    }

    async fn enqueue(&self, messages: &[Message]) -> Result<()> {
        if messages.is_empty() {
            return Ok(());
        }
        let mut client = self.client().await?;
        let mut conn = Conn {
            client: &mut client,
        };
        enqueue::insert(&mut conn, &self.sql, messages, true).await
    }

    async fn enqueue_in_tx(&self, tx: &mut Self::Tx<'_>, messages: &[Message]) -> Result<()> {
        let mut conn = Conn { client: tx };
        enqueue::insert(&mut conn, &self.sql, messages, false).await
    }

    async fn with_transaction<R, E, F>(&self, f: F) -> std::result::Result<R, E>
    where
        F: AsyncFnOnce(&mut SqlServerClient) -> std::result::Result<R, E>,
        E: From<Error>,
    {
        let mut client = self.client().await?;
        Conn {
            client: &mut client,
        }
        .batch("beginning a transaction", batch::BEGIN)
        .await?;
        run_in(client, f).await
    }
}

impl Finish for SqlServerClient {
    async fn commit(mut self) -> Result<()> {
        let mut conn = Conn { client: &mut self };
        conn.batch("committing", batch::COMMIT).await
    }
    async fn rollback(mut self) -> Result<()> {
        let mut conn = Conn { client: &mut self };
        conn.batch("rolling back", batch::ROLLBACK).await
    }
}
