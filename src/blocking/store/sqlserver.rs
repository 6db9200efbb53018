//! SQL Server (2017+) store on `tiberius`: leases with `UPDLOCK, ROWLOCK, READPAST`,
//! `sp_getapplock` for migrate and per-key commit order, a small connection pool,
//! all driven from the blocking API by a private current-thread tokio runtime.
//!
//! SQL text lives in [`crate::core::sql::sqlserver`], which also documents the schema.

use super::{run_in, Finish};
use super::{
    BatchLimit, Claim, Decoded, FailedAttempt, HeldKey, Lease, ParkedMessage, Requeue, Stats,
    Store, TxStore, Undecodable,
};
use crate::core::ident::TableName;
use crate::core::rows;
use crate::core::sql::sqlserver::{self as q, batch, SqlServerSql};
use crate::message::{Message, MessageId, StoredMessage};
use crate::{Error, Result};
use parking_lot::Mutex;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};
use tiberius::{ColumnData, Query, Row, ToSql};
use tokio::net::TcpStream;
use tokio_util::compat::{Compat, TokioAsyncWriteCompatExt};

pub(crate) type Client = tiberius::Client<Compat<TcpStream>>;
type TdsResult<T> = std::result::Result<T, tiberius::error::Error>;

// The enqueue path shared with the async store (compiled here without `.await`).
use maybe_async::must_be_sync as maybe;
#[path = "../../enqueue/sqlserver.rs"]
mod enqueue;

/// The outbox table in SQL Server 2017 or later (Azure SQL too).
///
/// Cheap to clone: clones share one pool of connections and one private
/// current-thread tokio runtime that drives them. The API is blocking; no runtime
/// is needed (or visible) in the caller's code. Calls made from a thread that is
/// inside a tokio runtime (an async task or `spawn_blocking`) still work: they are
/// run on a short-lived thread of their own, since a runtime cannot be blocked on
/// from inside another one. From async code prefer `spawn_blocking`.
///
/// Connections run with `SET XACT_ABORT ON`: an error in any statement of a
/// transaction rolls the whole transaction back.
///
/// ```no_run
/// # fn main() -> Result<(), outboxer::Error> {
/// use outboxer::store::SqlServerStore;
/// use outboxer::{Message, Store, TxStore};
///
/// let store = SqlServerStore::builder(
///     "server=tcp:127.0.0.1,1433;user=sa;password=secret;TrustServerCertificate=true",
/// )
/// .table("dbo.event_store")
/// .build()?;
/// store.migrate()?;
/// // Business rows and the message commit together, or not at all.
/// store.with_transaction(|tx| {
///     tx.execute("UPDATE dbo.orders SET paid = 1 WHERE id = @P1", &[&42i64])?;
///     store.enqueue_in_tx(tx, &[Message::new(b"order 42 paid".to_vec())])
/// })?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct SqlServerStore {
    inner: Arc<Inner>,
}

struct Inner {
    table: TableName,
    sql: SqlServerSql,
    config: tiberius::Config,
    connect_timeout: Duration,
    idle: Mutex<Vec<Client>>,
    max_idle: usize,
    /// `Some` until the store is dropped.
    runtime: Option<tokio::runtime::Runtime>,
}

/// Settings of a [`SqlServerStore`].
pub struct SqlServerStoreBuilder {
    config: Result<tiberius::Config>,
    table: Result<TableName>,
    max_idle: usize,
    connect_timeout: Duration,
    command_timeout: Option<Option<Duration>>,
}

impl std::fmt::Debug for SqlServerStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlServerStore")
            .field("table", &self.inner.table.plain())
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for SqlServerStoreBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlServerStoreBuilder")
            .field("table", &self.table.as_ref().map(TableName::plain).ok())
            .field("max_idle", &self.max_idle)
            .field("connect_timeout", &self.connect_timeout)
            .finish_non_exhaustive()
    }
}

impl SqlServerStore {
    /// Connects with an ADO.NET connection string
    /// (`server=tcp:host,1433;user=..;password=..;database=..;TrustServerCertificate=true`)
    /// or a JDBC one (`jdbc:sqlserver://host:1433;user=..;password=..`), to the table
    /// `event_store`. TLS (rustls) is used unless the string says `encrypt=false`; the
    /// server's certificate is checked unless `TrustServerCertificate=true`. Give the
    /// port: named instances through SQL Browser are not supported.
    /// One connection is opened to check the server is there.
    pub fn connect(conn_str: &str) -> Result<Self> {
        Self::builder(conn_str).build()
    }

    /// A builder for table name and pool settings.
    pub fn builder(conn_str: &str) -> SqlServerStoreBuilder {
        let jdbc = conn_str
            .trim_start()
            .get(..5)
            .is_some_and(|p| p.eq_ignore_ascii_case("jdbc:"));
        let parsed = if jdbc {
            tiberius::Config::from_jdbc_string(conn_str)
        } else {
            tiberius::Config::from_ado_string(conn_str)
        };
        SqlServerStoreBuilder::new(parsed.map_err(|e| Error::InvalidUrl {
            url: crate::core::redact::redact_connection_string(conn_str),
            reason: e.to_string(),
        }))
    }

    /// A builder from a ready `tiberius::Config` (authentication, TLS trust, ...).
    pub fn from_config(config: tiberius::Config) -> SqlServerStoreBuilder {
        SqlServerStoreBuilder::new(Ok(config))
    }

    /// Creates or upgrades the table (same as [`Store::migrate`], without importing the trait).
    pub fn migrate(&self) -> Result<()> {
        Store::migrate(self)
    }

    /// The table this store uses.
    pub fn table(&self) -> &TableName {
        &self.inner.table
    }

    /// Begins a transaction on a pooled connection. Run your statements with
    /// [`SqlServerTx::execute`] / [`SqlServerTx::query`], add messages with
    /// [`TxStore::enqueue_in_tx`], then [`SqlServerTx::commit`]. Dropped without a
    /// commit, it rolls back. [`TxStore::with_transaction`] does all of this around a closure.
    pub fn begin(&self) -> Result<SqlServerTx<'_>> {
        let mut conn = self.conn()?;
        conn.batch("beginning a transaction", batch::BEGIN)?;
        Ok(SqlServerTx {
            conn,
            state: TxState::Open,
        })
    }

    fn conn(&self) -> Result<Conn<'_>> {
        let pooled = self.inner.idle.lock().pop();
        let client = match pooled {
            Some(c) => c,
            None => self.inner.open(self.inner.config.clone())?,
        };
        Ok(Conn {
            inner: &self.inner,
            client: Some(client),
            broken: false,
            pooled: true,
        })
    }

    fn insert(&self, conn: &mut Conn<'_>, messages: &[Message], own_tx: bool) -> Result<()> {
        enqueue::insert(conn, &self.inner.sql, messages, own_tx)
    }

    /// The connection settings (the async store opens its own connections).
    #[cfg(feature = "async")]
    pub(crate) fn config(&self) -> (tiberius::Config, Duration) {
        (self.inner.config.clone(), self.inner.connect_timeout)
    }

    /// Runs `stmt(n)` over `ids` in padded chunks, then the lease token and the
    /// delay in milliseconds when given; sums the rows changed.
    fn by_ids(
        &self,
        ctx: &'static str,
        ids: &[i64],
        token: Option<uuid::Uuid>,
        delay_ms: Option<i64>,
        stmt: impl Fn(&SqlServerSql, usize) -> String,
    ) -> Result<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        let mut conn = self.conn()?;
        let mut total = 0;
        for chunk in ids.chunks(q::MAX_IDS) {
            let padded = q::pad_ids(chunk);
            let mut query = Query::new(stmt(&self.inner.sql, padded.len()));
            for id in &padded {
                query.bind(*id);
            }
            if let Some(t) = token {
                query.bind(t);
            }
            if let Some(d) = delay_ms {
                query.bind(d);
            }
            total += conn.exec(ctx, query)?;
        }
        Ok(total)
    }

    fn migrate_in(&self, conn: &mut Conn<'_>) -> Result<()> {
        let sql = &self.inner.sql;
        let table = sql.table();
        let one = |s: &str| {
            let mut query = Query::new(s.to_string());
            query.bind(table);
            query
        };

        let mut lock = Query::new(sql.migrate_lock.as_str());
        lock.bind(sql.migrate_resource.as_str());
        lock.bind(q::MIGRATE_LOCK_TIMEOUT_MS);
        let status = conn
            .rows("locking for migrate", lock)?
            .first()
            .and_then(|r| r.get::<i32, _>(0))
            .unwrap_or(-999);
        if status < 0 {
            return Err(Error::db(
                "locking for migrate",
                format!(
                    "sp_getapplock returned {status} (-1: another migrate held the lock for {} s)",
                    q::MIGRATE_LOCK_TIMEOUT_MS / 1000
                ),
            ));
        }

        let rows = conn.rows("inspecting the table", one(&sql.inspect))?;
        let row = rows
            .first()
            .ok_or_else(|| Error::db("inspecting the table", "no row"))?;
        let flag = |i: usize| row.get::<i32, _>(i).unwrap_or(0) == 1;
        let text = |i: usize| row.get::<&str, _>(i).unwrap_or("").to_ascii_lowercase();
        let (exists, has_status, has_dispatched) = (flag(0), flag(1), flag(2));
        let (id_type, dispatched_at_type) = (text(3), text(4));
        let go = exists && has_dispatched;

        conn.exec("creating the table", one(&sql.create_table))?;
        if go && id_type == "int" {
            // A Go outboxer table: widen its INT id, keeping its rows and identity.
            conn.exec("upgrading the Go outboxer table", one(&sql.widen_id[0]))?;
            for stmt in &sql.widen_id[1..] {
                conn.exec("upgrading the Go outboxer table", Query::new(stmt.as_str()))?;
            }
        }
        if exists && dispatched_at_type == "datetime" {
            conn.exec(
                "upgrading the Go outboxer table",
                Query::new(sql.widen_dispatched_at.as_str()),
            )?;
        }
        conn.exec("adding columns", one(&sql.add_columns))?;
        if go && !has_status {
            conn.exec(
                "upgrading Go outboxer rows",
                Query::new(sql.upgrade_go_rows.as_str()),
            )?;
        }
        for (name, stmt) in &sql.indexes {
            let mut query = one(stmt);
            query.bind(name.as_str());
            conn.exec("creating indexes", query)?;
        }
        for (name, stmt) in &sql.drop_indexes {
            let mut query = one(stmt);
            query.bind(name.as_str());
            conn.exec("dropping old indexes", query)?;
        }
        if go {
            log::info!(
                "outboxer: upgraded Go outboxer table {}",
                self.inner.table.plain()
            );
        }
        Ok(())
    }
}

impl SqlServerStoreBuilder {
    fn new(config: Result<tiberius::Config>) -> Self {
        SqlServerStoreBuilder {
            config,
            table: Ok(TableName::default()),
            max_idle: 8,
            connect_timeout: Duration::from_secs(10),
            command_timeout: None,
        }
    }

    /// The table (`name` or `schema.name`, plain identifiers); default `event_store`
    /// in the login's default schema.
    pub fn table(mut self, name: &str) -> Self {
        self.table = TableName::parse(name);
        self
    }

    /// Connections kept open between uses (default 8).
    pub fn max_idle(mut self, n: usize) -> Self {
        self.max_idle = n;
        self
    }

    /// Limit for opening a connection: TCP, TLS and login (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Limit for each server response (tiberius' command timeout; default 30 s,
    /// ADO.NET's). `None` waits forever. This also bounds how long an enqueue waits
    /// for another transaction that holds the same ordering key. `migrate` runs on a
    /// connection of its own without this limit.
    pub fn command_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.command_timeout = Some(timeout);
        self
    }

    /// Validates the settings (before any connection) and opens one connection to
    /// check the server.
    pub fn build(self) -> Result<SqlServerStore> {
        let table = self.table?;
        let mut config = self.config?;
        if self.connect_timeout.is_zero() {
            return Err(Error::config(
                "connect_timeout",
                "must be greater than zero",
            ));
        }
        if let Some(t) = self.command_timeout {
            if t.is_some_and(|d| d.is_zero()) {
                return Err(Error::config(
                    "command_timeout",
                    "must be greater than zero (None waits forever)",
                ));
            }
            config.command_timeout(t);
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name("outboxer-sqlserver")
            .build()
            .map_err(|e| Error::db("starting the SQL Server driver runtime", e))?;
        let store = SqlServerStore {
            inner: Arc::new(Inner {
                sql: SqlServerSql::new(&table),
                table,
                config,
                connect_timeout: self.connect_timeout,
                idle: Mutex::new(Vec::new()),
                max_idle: self.max_idle,
                runtime: Some(runtime),
            }),
        };
        drop(store.conn()?);
        Ok(store)
    }
}

impl Inner {
    /// Runs `f` to completion on the store's runtime.
    ///
    /// A current-thread runtime's `block_on` may be called from several threads at
    /// once (tokio documents it: the first caller drives the I/O and timer drivers,
    /// the others are woken by it and take the drivers over when it returns), so one
    /// runtime serves every thread that shares the store. `block_on` panics on a
    /// thread that is inside a runtime already; such calls run on a scoped thread.
    fn block_on<F>(&self, f: F) -> Result<F::Output>
    where
        F: Future + Send,
        F::Output: Send,
    {
        let Some(rt) = self.runtime.as_ref() else {
            return Err(Error::db(
                "running a statement",
                "the store is shutting down",
            ));
        };
        if tokio::runtime::Handle::try_current().is_err() {
            return Ok(rt.block_on(f));
        }
        std::thread::scope(|s| {
            let handle = std::thread::Builder::new()
                .name("outboxer-sqlserver-call".into())
                .spawn_scoped(s, || rt.block_on(f))
                .map_err(|e| Error::db("starting a driver thread", e))?;
            handle
                .join()
                .map_err(|_| Error::db("running a statement", "the SQL Server driver panicked"))
        })
    }

    /// Opens a connection (following an Azure SQL redirect) and sets the session up.
    fn open(&self, config: tiberius::Config) -> Result<Client> {
        let timeout = self.connect_timeout;
        let setup = self.sql.session_setup;
        let r = self.block_on(async move {
            tokio::time::timeout(timeout, async move {
                let mut client = open_client(config).await?;
                client.simple_query(setup).await?.into_results().await?;
                Ok::<_, tiberius::error::Error>(client)
            })
            .await
        })?;
        match r {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(e)) => Err(Error::db("connecting to SQL Server", e)),
            Err(_) => Err(Error::db(
                "connecting to SQL Server",
                format!("no connection within {timeout:?} (connect_timeout)"),
            )),
        }
    }
}

async fn tcp(addr: String) -> TdsResult<Compat<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    Ok(tcp.compat_write())
}

pub(crate) async fn open_client(config: tiberius::Config) -> TdsResult<Client> {
    let stream = tcp(config.get_addr()).await?;
    match Client::connect(config.clone(), stream).await {
        // Azure SQL's gateway may send the client to another node.
        Err(tiberius::error::Error::Routing { host, port }) => {
            let mut config = config;
            config.host(&host);
            config.port(port);
            let stream = tcp(config.get_addr()).await?;
            Client::connect(config, stream).await
        }
        other => other,
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Connections first (they are registered with the runtime's I/O driver), then
        // the runtime, without waiting: `shutdown_background` never blocks, so a store
        // can be dropped anywhere, even inside an async task.
        self.idle.get_mut().clear();
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// A connection taken from the pool; back to it on drop unless a request on it
/// failed (after an error the connection may be mid-response or inside a
/// transaction: closing it makes the server roll back whatever was open).
struct Conn<'a> {
    inner: &'a Inner,
    client: Option<Client>,
    broken: bool,
    pooled: bool,
}

impl Conn<'_> {
    fn client(&mut self, ctx: &'static str) -> Result<&mut Client> {
        self.client
            .as_mut()
            .ok_or_else(|| Error::db(ctx, "the connection was closed"))
    }

    fn finish<T>(&mut self, ctx: &'static str, r: Result<TdsResult<T>>) -> Result<T> {
        match r {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                self.broken = true;
                Err(Error::db(ctx, e))
            }
            Err(e) => {
                self.broken = true;
                Err(e)
            }
        }
    }

    /// A plain SQL batch (no parameters, not wrapped in `sp_executesql`).
    fn batch(&mut self, ctx: &'static str, sql: &'static str) -> Result<()> {
        let inner = self.inner;
        let client = self.client(ctx)?;
        let r = inner.block_on(async move {
            client.simple_query(sql).await?.into_results().await?;
            Ok(())
        });
        self.finish(ctx, r)
    }

    /// A parameterised request; rows changed.
    fn exec(&mut self, ctx: &'static str, query: Query<'_>) -> Result<u64> {
        let inner = self.inner;
        let client = self.client(ctx)?;
        let r = inner.block_on(async move { Ok(query.execute(client).await?.total()) });
        self.finish(ctx, r)
    }

    /// A parameterised request; the rows of its first result set.
    fn rows(&mut self, ctx: &'static str, query: Query<'_>) -> Result<Vec<Row>> {
        let inner = self.inner;
        let client = self.client(ctx)?;
        let r = inner.block_on(async move { query.query(client).await?.into_first_result().await });
        self.finish(ctx, r)
    }

    fn exec_dyn(&mut self, ctx: &'static str, sql: &str, params: &[&dyn ToSql]) -> Result<u64> {
        let inner = self.inner;
        let client = self.client(ctx)?;
        let r = inner.block_on(async move { Ok(client.execute(sql, params).await?.total()) });
        self.finish(ctx, r)
    }

    fn rows_dyn(
        &mut self,
        ctx: &'static str,
        sql: &str,
        params: &[&dyn ToSql],
    ) -> Result<Vec<Row>> {
        let inner = self.inner;
        let client = self.client(ctx)?;
        let r = inner
            .block_on(async move { client.query(sql, params).await?.into_first_result().await });
        self.finish(ctx, r)
    }
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.client.take() {
            if self.pooled && !self.broken {
                let mut idle = self.inner.idle.lock();
                if idle.len() < self.inner.max_idle {
                    idle.push(c);
                }
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TxState {
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
    conn: Conn<'a>,
    state: TxState,
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

    fn insert(&mut self, store: &SqlServerStore, messages: &[Message]) -> Result<()> {
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

/// A claimed row; only an unreadable id fails (the row cannot even be named).
fn decode(row: &Row) -> Result<Decoded> {
    let id: i64 = row
        .try_get::<i64, _>(0)
        .map_err(|e| Error::db("decoding a claimed row", e))?
        .ok_or_else(|| Error::db("decoding a claimed row", "NULL id"))?;
    Ok(decode_columns(id, row).map_err(|reason| Undecodable { id, reason }))
}

fn decode_columns(id: i64, row: &Row) -> std::result::Result<StoredMessage, String> {
    fn col<'a, T: tiberius::FromSql<'a>>(
        row: &'a Row,
        i: usize,
        name: &str,
    ) -> std::result::Result<Option<T>, String> {
        row.try_get(i).map_err(|e| format!("{name}: {e}"))
    }
    let message_id: uuid::Uuid = col(row, 1, "message_id")?.ok_or("message_id: NULL")?;
    let payload: &[u8] = col(row, 2, "payload")?.ok_or("payload: NULL")?;
    let ordering_key: Option<&str> = col(row, 5, "ordering_key")?;
    let attempts: i32 = col(row, 6, "attempts")?.unwrap_or(0);
    let micros: i64 = col(row, 7, "created_at")?.unwrap_or(0);
    let json = |i: usize, name: &str| json_cell(row, i).map_err(|e| format!("{name}: {e}"));
    Ok(StoredMessage {
        id,
        message_id: MessageId::from_uuid(message_id),
        payload: payload.to_vec(),
        headers: rows::headers_from_json(json(3, "headers")?)?,
        options: rows::options_from_json(json(4, "options")?)?,
        ordering_key: ordering_key.map(str::to_string),
        attempts: u32::try_from(attempts).unwrap_or(0),
        created_at: UNIX_EPOCH + Duration::from_micros(u64::try_from(micros).unwrap_or(0)),
    })
}

/// A JSON column: UTF-8 bytes (ours and the Go outboxer's `VARBINARY`), or text if
/// someone changed the column to `NVARCHAR`.
fn json_cell(row: &Row, idx: usize) -> std::result::Result<Option<serde_json::Value>, String> {
    let parsed = match row.get_column_data(idx).map_err(|e| e.to_string())? {
        ColumnData::Binary(Some(b)) => serde_json::from_slice(b),
        ColumnData::String(Some(s)) => serde_json::from_str(s),
        ColumnData::Binary(None) | ColumnData::String(None) => return Ok(None),
        other => return Err(format!("holds {other:?}, expected JSON")),
    };
    parsed.map(Some).map_err(|e| format!("invalid JSON: {e}"))
}

impl Store for SqlServerStore {
    fn migrate(&self) -> Result<()> {
        // A connection of its own, without a command timeout: widening a large Go
        // table's id may take long. One transaction, under an exclusive app lock on
        // the table's name, so concurrent migrators run one after the other.
        let mut config = self.inner.config.clone();
        config.command_timeout(None);
        let mut conn = Conn {
            inner: &self.inner,
            client: Some(self.inner.open(config)?),
            broken: false,
            pooled: false,
        };
        conn.batch("beginning migrate", batch::BEGIN)?;
        self.migrate_in(&mut conn)?;
        conn.batch("committing migrate", batch::COMMIT)
    }

    fn enqueue(&self, messages: &[Message]) -> Result<()> {
        if messages.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn()?;
        self.insert(&mut conn, messages, true)
    }

    fn claim(&self, lease: &Lease, limit: BatchLimit) -> Result<Claim> {
        let mut out: Vec<Decoded> = Vec::new();
        if limit.rows == 0 {
            return Ok(Claim::default());
        }
        let mut conn = self.conn()?;
        let mut remaining = limit.rows;
        let mut bytes_left = i64::try_from(limit.bytes).unwrap_or(i64::MAX);
        // Several statements for big batches: one statement locking more than a few
        // thousand rows would escalate to a table lock.
        while remaining > 0 {
            let n = remaining.min(q::MAX_CLAIM_ROWS);
            let mut query = Query::new(self.inner.sql.claim.as_str());
            query.bind(i64::try_from(n).unwrap_or(i64::MAX));
            query.bind(lease.token);
            query.bind(q::delay_ms(lease.duration));
            query.bind(bytes_left);
            // Only the claim's first statement takes a first row larger than the cap.
            query.bind(i32::from(out.is_empty()));
            let rows = conn.rows("claiming messages", query)?;
            let got = rows.len();
            for row in &rows {
                out.push(decode(row)?);
                let size: Option<i64> = row.try_get(8).unwrap_or(None);
                bytes_left = bytes_left.saturating_sub(size.unwrap_or(0));
            }
            if got < n || bytes_left <= 0 {
                break;
            }
            remaining -= n;
        }
        Ok(Claim::from_rows(out))
    }

    fn mark_dispatched(&self, lease: &Lease, ids: &[i64]) -> Result<Vec<i64>> {
        let ctx = "marking messages dispatched";
        let mut marked = Vec::with_capacity(ids.len());
        if ids.is_empty() {
            return Ok(marked);
        }
        let mut conn = self.conn()?;
        for chunk in ids.chunks(q::MAX_IDS) {
            let padded = q::pad_ids(chunk);
            let mut query = Query::new(self.inner.sql.mark_dispatched(padded.len()));
            for id in &padded {
                query.bind(*id);
            }
            query.bind(lease.token);
            // OUTPUT inserted.id: the rows that still held the lease.
            for row in conn.rows(ctx, query)? {
                let id: Option<i64> = row.try_get(0).map_err(|e| Error::db(ctx, e))?;
                marked.extend(id);
            }
        }
        Ok(marked)
    }

    fn mark_failed(&self, lease: &Lease, failures: &[FailedAttempt]) -> Result<usize> {
        if failures.is_empty() {
            return Ok(0);
        }
        let mut conn = self.conn()?;
        let mut total = 0;
        for chunk in failures.chunks(q::MAX_FAILED_ROWS) {
            let mut query = Query::new(self.inner.sql.mark_failed(chunk.len()));
            for f in chunk {
                query.bind(f.id);
                query.bind(f.error.as_str());
                query.bind(q::delay_ms(f.retry_in));
                query.bind(f.park);
                query.bind(f.hold_key);
            }
            query.bind(lease.token);
            total += conn.exec("recording failed attempts", query)?;
        }
        Ok(usize::try_from(total).unwrap_or(usize::MAX))
    }

    fn release(&self, lease: &Lease, ids: &[i64], retry_in: Duration) -> Result<usize> {
        let n = self.by_ids(
            "releasing messages",
            ids,
            Some(lease.token),
            Some(q::delay_ms(retry_in)),
            SqlServerSql::release,
        )?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    fn cleanup(&self, older_than: Duration, limit: usize) -> Result<u64> {
        if limit == 0 {
            return Ok(0);
        }
        let mut conn = self.conn()?;
        let mut total = 0u64;
        let mut remaining = limit;
        while remaining > 0 {
            let n = remaining.min(q::MAX_DELETE_ROWS);
            let mut query = Query::new(self.inner.sql.cleanup.as_str());
            query.bind(q::delay_ms(older_than));
            query.bind(i64::try_from(n).unwrap_or(i64::MAX));
            let deleted = conn.exec("cleaning up dispatched messages", query)?;
            total += deleted;
            if deleted < n as u64 {
                break;
            }
            remaining -= n;
        }
        Ok(total)
    }

    fn requeue(&self, which: &Requeue) -> Result<u64> {
        let ctx = "requeueing parked messages";
        match which {
            Requeue::AllParked => self
                .conn()?
                .exec(ctx, Query::new(self.inner.sql.requeue_all.as_str())),
            Requeue::Ids(ids) => self.by_ids(ctx, ids, None, None, SqlServerSql::requeue_ids),
        }
    }

    fn purge_parked(&self, older_than: Duration, limit: usize) -> Result<u64> {
        let mut conn = self.conn()?;
        let mut total = 0u64;
        let mut remaining = limit;
        while remaining > 0 {
            let n = remaining.min(q::MAX_DELETE_ROWS);
            let mut query = Query::new(self.inner.sql.purge_parked.as_str());
            query.bind(q::delay_ms(older_than));
            query.bind(i64::try_from(n).unwrap_or(i64::MAX));
            let deleted = conn.exec("purging parked messages", query)?;
            total += deleted;
            if deleted < n as u64 {
                break;
            }
            remaining -= n;
        }
        Ok(total)
    }

    fn attempts_histogram(&self) -> Result<Vec<(u32, u64)>> {
        let ctx = "reading the attempts histogram";
        let rows = self
            .conn()?
            .rows(ctx, Query::new(self.inner.sql.attempts_histogram.as_str()))?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let attempts: i32 = row.try_get(0).map_err(|e| Error::db(ctx, e))?.unwrap_or(0);
            let n: i64 = row.try_get(1).map_err(|e| Error::db(ctx, e))?.unwrap_or(0);
            out.push((
                u32::try_from(attempts).unwrap_or(0),
                u64::try_from(n).unwrap_or(0),
            ));
        }
        Ok(out)
    }

    fn parked(&self, limit: usize) -> Result<Vec<ParkedMessage>> {
        let ctx = "listing parked messages";
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .conn()?
            .rows_dyn(ctx, &self.inner.sql.parked, &[&limit])?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let e = |e: tiberius::error::Error| Error::db(ctx, e);
            let id: i64 = row.try_get(0).map_err(e)?.unwrap_or(0);
            let message_id: Option<uuid::Uuid> = row.try_get(1).map_err(e)?;
            let attempts: i32 = row.try_get(2).map_err(e)?.unwrap_or(0);
            let last_error: Option<&str> = row.try_get(3).map_err(e)?;
            let ordering_key: Option<&str> = row.try_get(4).map_err(e)?;
            let holds: i32 = row.try_get(5).map_err(e)?.unwrap_or(0);
            out.push(ParkedMessage {
                id,
                message_id: message_id.map(MessageId::from_uuid),
                attempts: u32::try_from(attempts).unwrap_or(0),
                last_error: last_error.map(str::to_string),
                ordering_key: ordering_key.map(str::to_string),
                holds_key: holds == 1,
            });
        }
        Ok(out)
    }

    fn skip(&self, ids: &[i64]) -> Result<u64> {
        self.by_ids(
            "skipping parked messages",
            ids,
            None,
            None,
            SqlServerSql::skip,
        )
    }

    fn held_keys(&self, limit: usize) -> Result<Vec<HeldKey>> {
        let ctx = "listing held keys";
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .conn()?
            .rows_dyn(ctx, &self.inner.sql.held_keys, &[&limit])?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let e = |e: tiberius::error::Error| Error::db(ctx, e);
            let ordering_key: Option<&str> = row.try_get(0).map_err(e)?;
            let parked_id: i64 = row.try_get(1).map_err(e)?.unwrap_or(0);
            let message_id: Option<uuid::Uuid> = row.try_get(2).map_err(e)?;
            let last_error: Option<&str> = row.try_get(3).map_err(e)?;
            let waiting: i64 = row.try_get(4).map_err(e)?.unwrap_or(0);
            out.push(HeldKey {
                ordering_key: ordering_key.unwrap_or_default().to_string(),
                parked_id,
                message_id: message_id.map(MessageId::from_uuid),
                last_error: last_error.map(str::to_string),
                waiting: u64::try_from(waiting).unwrap_or(0),
            });
        }
        Ok(out)
    }

    fn stats(&self) -> Result<Stats> {
        let rows = self
            .conn()?
            .rows("reading stats", Query::new(self.inner.sql.stats.as_str()))?;
        let row = rows
            .first()
            .ok_or_else(|| Error::db("reading stats", "no row"))?;
        let num = |i: usize| -> Result<u64> {
            let v: Option<i64> = row.try_get(i).map_err(|e| Error::db("reading stats", e))?;
            Ok(u64::try_from(v.unwrap_or(0)).unwrap_or(0))
        };
        Ok(Stats {
            pending: num(0)?,
            dispatched: num(1)?,
            parked: num(2)?,
            leased: num(3)?,
            oldest_pending_age: Duration::from_micros(num(4)?),
            held_keys: num(5)?,
        })
    }
}

impl TxStore for SqlServerStore {
    type Tx<'a> = SqlServerTx<'a>;

    fn enqueue_in_tx(&self, tx: &mut SqlServerTx<'_>, messages: &[Message]) -> Result<()> {
        // The transaction's own connection and runtime, whichever store it came from.
        tx.insert(self, messages)
    }

    fn with_transaction<R, E, F>(&self, f: F) -> std::result::Result<R, E>
    where
        F: FnOnce(&mut SqlServerTx<'_>) -> std::result::Result<R, E>,
        E: From<Error>,
    {
        run_in(self.begin()?, f)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_and_transaction_are_thread_safe() {
        fn send_sync<T: Send + Sync + 'static>() {}
        fn send<T: Send>() {}
        send_sync::<SqlServerStore>();
        send::<SqlServerTx<'static>>();
    }

    #[test]
    fn connection_strings_are_redacted() {
        for raw in [
            "server=tcp:h,1;user=sa;password=s3cret;encrypt=maybe",
            "sqlserver://sa:s3cret@h:1433/db",
            "jdbc:sqlserver://h:1;password={s3;cret}",
        ] {
            let r = crate::core::redact::redact_connection_string(raw);
            assert!(!r.contains("s3"), "{r}");
        }
        match SqlServerStore::builder("server=tcp:h,1;user=sa;password=s3cret;encrypt=maybe")
            .build()
        {
            Err(Error::InvalidUrl { url, .. }) => {
                assert!(
                    !url.contains("s3cret") && url.contains("password=***"),
                    "{url}"
                );
            }
            other => panic!("{other:?}"),
        }
        match SqlServerStore::connect("sqlserver://sa:s3cret@h:1433") {
            Err(e @ Error::InvalidUrl { .. }) => assert!(!e.to_string().contains("s3cret"), "{e}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn settings_are_checked_before_connecting() {
        let url = "server=tcp:127.0.0.1,1;user=sa;password=x";
        let e = SqlServerStore::builder(url).table("a;b").build();
        assert!(matches!(e, Err(Error::InvalidIdentifier { .. })), "{e:?}");
        let e = SqlServerStore::builder(url)
            .connect_timeout(Duration::ZERO)
            .build();
        assert!(
            matches!(
                e,
                Err(Error::Config {
                    field: "connect_timeout",
                    ..
                })
            ),
            "{e:?}"
        );
        let e = SqlServerStore::builder(url)
            .command_timeout(Some(Duration::ZERO))
            .build();
        assert!(
            matches!(
                e,
                Err(Error::Config {
                    field: "command_timeout",
                    ..
                })
            ),
            "{e:?}"
        );
    }

    #[test]
    fn works_from_inside_an_async_runtime() {
        // Runtime::block_on panics inside another runtime; the store must not.
        let outer = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("test runtime");
        let r = outer.block_on(async {
            SqlServerStore::builder("server=tcp:127.0.0.1,1;user=sa;password=x")
                .connect_timeout(Duration::from_secs(2))
                .build()
        });
        assert!(matches!(r, Err(Error::Database { .. })), "{r:?}");
    }

    #[test]
    fn json_cells_decode_bytes_text_and_null() {
        let row = |data: ColumnData<'static>| {
            Row::builder()
                .column("h", tiberius::ColumnType::BigVarBin, data)
                .build()
        };
        let r = row(ColumnData::Binary(Some(b"{\"n\": 1}".to_vec().into())));
        assert_eq!(json_cell(&r, 0), Ok(Some(serde_json::json!({"n": 1}))));
        let r = row(ColumnData::String(Some("{}".into())));
        assert_eq!(json_cell(&r, 0), Ok(Some(serde_json::json!({}))));
        assert_eq!(json_cell(&row(ColumnData::Binary(None)), 0), Ok(None));
        assert!(json_cell(&row(ColumnData::Binary(Some(b"{".to_vec().into()))), 0).is_err());
        assert!(json_cell(&row(ColumnData::I32(Some(1))), 0).is_err());
    }

    /// A claimed row as the claim's OUTPUT returns it, with these headers and options.
    fn claimed_row(id: i64, headers: &'static [u8], options: Option<&'static [u8]>) -> Row {
        use tiberius::ColumnType as T;
        Row::builder()
            .column("id", T::Int8, ColumnData::I64(Some(id)))
            .column(
                "message_id",
                T::Guid,
                ColumnData::Guid(Some(uuid::Uuid::nil())),
            )
            .column(
                "payload",
                T::BigVarBin,
                ColumnData::Binary(Some(b"p".to_vec().into())),
            )
            .column(
                "headers",
                T::BigVarBin,
                ColumnData::Binary(Some(headers.into())),
            )
            .column(
                "options",
                T::BigVarBin,
                ColumnData::Binary(options.map(Into::into)),
            )
            .column("ordering_key", T::NVarchar, ColumnData::String(None))
            .column("attempts", T::Int4, ColumnData::I32(Some(0)))
            .column("created_at", T::Int8, ColumnData::I64(Some(0)))
            .build()
    }

    #[test]
    fn bad_json_rows_are_undecodable_not_errors() {
        let good = decode(&claimed_row(1, b"{\"a\": \"b\"}", None)).expect("id");
        assert_eq!(good.map(|m| m.headers["a"].clone()), Ok("b".to_string()));
        for (headers, options, column) in [
            (&b"[]"[..], None, "headers: must be a JSON object"),
            (b"\"x\"", None, "headers: must be a JSON object"),
            (b"1", None, "headers: must be a JSON object"),
            (b"{bad", None, "headers: invalid JSON"),
            (b"{}", Some(&b"[]"[..]), "options: must be a JSON object"),
        ] {
            match decode(&claimed_row(7, headers, options)) {
                Ok(Err(Undecodable { id: 7, reason })) => {
                    assert!(reason.starts_with(column), "{reason}")
                }
                other => panic!("{headers:?}: {other:?}"),
            }
        }
    }
}
