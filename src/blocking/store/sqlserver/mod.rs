//! SQL Server (2017+) store on `tiberius`: leases with `UPDLOCK, ROWLOCK, READPAST`,
//! `sp_getapplock` for migrate and per-key commit order, a small connection pool,
//! all driven from the blocking API by a private current-thread tokio runtime.
//!
//! SQL text lives in [`crate::core::sql::sqlserver`], which also documents the schema.

use super::{run_in, Finish};
use super::{
    BatchLimit, Claim, Decoded, FailedAttempt, HeldKey, Lease, ParkedMessage, Purgeable, Requeue,
    Stats, Store, TxStore, Undecodable,
};
use crate::core::ident::TableName;
use crate::core::rows;
use crate::core::sql::sqlserver::{self as q, batch, SqlServerSql};
use crate::message::{Message, MessageId, StoredMessage};
use crate::tls::{Tls, TlsMode};
use crate::{Error, Result};
use parking_lot::Mutex;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};
use tiberius::{ColumnData, Query, Row, ToSql};
use tokio::net::TcpStream;
use tokio_util::compat::{Compat, TokioAsyncWriteCompatExt};

mod connection;
mod decode;
mod queries;
mod schema;
#[cfg(test)]
mod tests;
mod tx;

#[cfg(feature = "async")]
pub(crate) use self::connection::open_client;
use self::connection::Conn;
pub use self::tx::SqlServerTx;
use self::tx::TxState;

pub(crate) type Client = tiberius::Client<Compat<TcpStream>>;
type TdsResult<T> = std::result::Result<T, tiberius::error::Error>;

// The enqueue path shared with the async store (compiled here without `.await`).
use maybe_async::must_be_sync as maybe;
#[path = "../../../enqueue/sqlserver.rs"]
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
///     "server=tcp:127.0.0.1,1433;user=sa;password=secret;encrypt=true;\
///      TrustServerCertificateCA=/etc/ssl/certs/db-ca.pem",
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
    tls: Option<Tls>,
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
    /// (`server=tcp:host,1433;user=..;password=..;database=..;encrypt=true;TrustServerCertificateCA=/path/ca.pem`)
    /// or a JDBC one (`jdbc:sqlserver://host:1433;user=..;password=..`), to the table
    /// `event_store`. TLS (rustls) is used unless the string says `encrypt=false`; the
    /// server's certificate and name are checked against the system's CAs plus
    /// `TrustServerCertificateCA` (`TrustServerCertificate=true` turns checking off:
    /// test servers only). Or [`SqlServerStoreBuilder::tls`]. Give the
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
}

/// Sets `tls` on a tiberius `Config` (see [`SqlServerStoreBuilder::tls`]), without
/// ever reaching tiberius' panics on mixing `trust_cert` with `trust_cert_ca`.
fn apply_tls(config: &mut tiberius::Config, tls: &Tls) -> Result<()> {
    use tiberius::EncryptionLevel;
    tls.check_files("tls")?;
    // tiberius keeps its trust settings private; its Debug form shows them (the
    // text stays here, it holds the password).
    let shown = format!("{config:?}");
    if shown.contains("bypass: true") || !shown.contains("extra_cas: []") {
        return Err(Error::config(
            "tls",
            "the connection string (or Config) already sets TrustServerCertificate or \
             TrustServerCertificateCA: set TLS in one place",
        ));
    }
    match tls.mode() {
        TlsMode::Disabled => {
            config.encryption(EncryptionLevel::NotSupported);
            return Ok(());
        }
        TlsMode::VerifyCa if !tls.accepts_invalid_certificates() => {
            return Err(Error::config(
                "tls",
                "SQL Server (tiberius) cannot verify the certificate chain without the \
                 host name: use Tls::verify_full (from_config with \
                 Config::hostname_in_certificate names the expected host)",
            ))
        }
        _ => config.encryption(EncryptionLevel::Required),
    }
    if tls.accepts_invalid_certificates() {
        config.trust_cert();
    } else if let Some(ca) = tls.ca_path() {
        config.trust_cert_ca(ca.display());
    }
    if let Some((cert, key)) = tls.client_cert_paths() {
        config.client_certificate(cert, key);
    }
    Ok(())
}

impl SqlServerStoreBuilder {
    fn new(config: Result<tiberius::Config>) -> Self {
        SqlServerStoreBuilder {
            config,
            tls: None,
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

    /// TLS in outboxer's one shape: [`Tls::verify_full`] is tiberius'
    /// `EncryptionLevel::Required` with the certificate and host name verified
    /// against the system's CAs plus [`Tls::ca_file`] (`trust_cert_ca`),
    /// [`Tls::client_cert`] its client certificate, and
    /// [`Tls::danger_accept_invalid_certificates`] its `trust_cert()` (no checks at
    /// all). [`Tls::disabled`] is `EncryptionLevel::NotSupported` (plaintext, the
    /// login too). [`Tls::verify_ca`] is refused: tiberius cannot check the chain
    /// without the name (its `hostname_in_certificate`, on a
    /// [`from_config`](SqlServerStore::from_config) `Config`, names the expected
    /// host instead). Refused too when the connection string or `Config` already
    /// sets `TrustServerCertificate`/`TrustServerCertificateCA`: one place says it.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), outboxer::Error> {
    /// use outboxer::store::SqlServerStore;
    /// use outboxer::tls::Tls;
    /// let store = SqlServerStore::builder("server=tcp:db.internal,1433;user=app;password=..")
    ///     .tls(Tls::verify_full().ca_file("/etc/ssl/certs/db-ca.pem"))
    ///     .build()?;
    /// # Ok(()) }
    /// ```
    pub fn tls(mut self, tls: Tls) -> Self {
        self.tls = Some(tls);
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
        if let Some(tls) = &self.tls {
            apply_tls(&mut config, tls)?;
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
