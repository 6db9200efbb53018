//! MySQL 8 / MariaDB 10.6+ from async code: messages are enqueued with `mysql_async`
//! (rustls/ring TLS, pure-Rust deflate); the relay uses the blocking
//! [`crate::store::MysqlStore`] on the same table. The enqueue statements are the
//! blocking store's, compiled for async.

use super::{run_in, Finish, Store};
use crate::async_impl::unblock;
use crate::core::redact::redact_url;
use crate::core::sql::mysql::MysqlSql;
use crate::message::Message;
use crate::tls::{Tls, TlsMode};
use crate::{Error, Result};
use mysql_async::{ClientIdentity, IsolationLevel, Opts, OptsBuilder, Pool, SslOpts, TxOpts};
use std::sync::Arc;

// The enqueue path shared with the blocking store (compiled here with `.await`).
use maybe_async::must_be_async as maybe;
use mysql_async::prelude::Queryable;
use mysql_async::Value;
// Compiled twice on purpose: once blocking, once async (maybe-async).
#[allow(clippy::duplicate_mod)]
#[path = "../../enqueue/mysql.rs"]
mod enqueue;

/// The outbox table in MySQL 8 or MariaDB 10.6+, for async code.
///
/// Cheap to clone: clones share one `mysql_async` pool, whose connections belong
/// to the runtime that opened them (use one store per runtime).
///
/// TLS as the blocking [`crate::store::MysqlStore`]: the URL's `ssl-mode`,
/// `ssl-ca`, `ssl-cert`, `ssl-key`, or [`MysqlStoreBuilder::tls`]; both the
/// async pool and the relay's blocking pool use it. Except `VERIFY_CA`, refused
/// with [`Error::Config`]: `mysql_async` 0.37.1 cannot skip the host name check.
///
/// ```no_run
/// # async fn demo() -> Result<(), outboxer::Error> {
/// use outboxer::async_impl::store::MysqlStore;
/// use outboxer::tls::Tls;
/// let store = MysqlStore::connect("mysql://root@127.0.0.1:3306/test").await?;
/// store.migrate().await?;
/// let over_tls = MysqlStore::builder("mysql://app@db.internal:3306/app")
///     .tls(Tls::verify_full().ca_file("/etc/ssl/certs/db-ca.pem"))
///     .build()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct MysqlStore {
    inner: Arc<Inner>,
}

struct Inner {
    blocking: crate::store::MysqlStore,
    pool: Pool,
    sql: MysqlSql,
}

impl std::fmt::Debug for MysqlStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MysqlStore")
            .field("table", &self.inner.blocking.table().plain())
            .finish_non_exhaustive()
    }
}

impl MysqlStore {
    /// Connects with a URL (`mysql://user[:password]@host[:port]/db`) to the table
    /// `event_store`.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::with_table(url, "event_store").await
    }

    /// Connects to `table` (`name` or `schema.name`, plain identifiers). The relay's
    /// blocking store is built on the blocking pool; one async connection checks
    /// the server.
    pub async fn with_table(url: &str, table: &str) -> Result<Self> {
        Self::builder(url).table(table).build().await
    }

    /// A builder for the table and TLS.
    pub fn builder(url: &str) -> MysqlStoreBuilder {
        MysqlStoreBuilder {
            url: url.to_string(),
            table: "event_store".into(),
            tls: None,
        }
    }
    /// Creates or upgrades the table (see [`crate::Store::migrate`]), on the blocking pool.
    pub async fn migrate(&self) -> Result<()> {
        let store = self.inner.blocking.clone();
        unblock("migrating the table", move || store.migrate()).await
    }

    /// Runs `f` in a transaction of `options`: commit on `Ok`, rollback on `Err`.
    async fn in_tx<R, E, F>(&self, options: TxOpts, f: F) -> std::result::Result<R, E>
    where
        F: AsyncFnOnce(&mut mysql_async::Transaction<'_>) -> std::result::Result<R, E>,
        E: From<Error>,
    {
        let tx = self.inner.pool.start_transaction(options).await;
        let tx = tx.map_err(|e| connect_error("beginning a transaction", e))?;
        run_in(tx, f).await
    }
}

/// Settings of an async [`MysqlStore`].
#[derive(Debug)]
pub struct MysqlStoreBuilder {
    url: String,
    table: String,
    tls: Option<Tls>,
}

impl MysqlStoreBuilder {
    /// The table (`name` or `schema.name`, plain identifiers); default `event_store`.
    pub fn table(mut self, name: &str) -> Self {
        self.table = name.to_string();
        self
    }

    /// TLS for every connection, in place of the URL's `ssl-mode` settings (see
    /// [`crate::store::MysqlStoreBuilder::tls`]).
    pub fn tls(mut self, tls: Tls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Builds the relay's blocking store, then checks the server with one async
    /// connection; a TLS failure is [`Error::Tls`] naming the cause.
    pub async fn build(self) -> Result<MysqlStore> {
        let split = crate::core::mysql_url::split(&self.url)?;
        let opts = Opts::from_url(&split.url).map_err(|e| Error::InvalidUrl {
            url: redact_url(&self.url),
            reason: e.to_string(),
        })?;
        let tls = self.tls.or(split.tls);
        let mut opts = OptsBuilder::from_opts(opts);
        if let Some(tls) = &tls {
            tls.check_files("tls")?;
            if tls.mode() == TlsMode::VerifyCa && !tls.accepts_invalid_certificates() {
                // Its skip-domain check looks for the text "NotValidForName", which
                // rustls 0.23 no longer prints: the name would be checked anyway.
                return Err(Error::config(
                    "tls",
                    "VERIFY_CA (chain only) is not available on the async MySQL store: \
                     mysql_async 0.37.1 checks the host name anyway \
                     (blackbeam/mysql_async#404); use VERIFY_IDENTITY with a host name \
                     the certificate carries, or the blocking store",
                ));
            }
            opts = opts.ssl_opts(ssl_opts(tls));
        }
        crate::core::tls::ensure_default_provider();
        let (url, name) = (self.url, self.table);
        let blocking = unblock("connecting to MySQL", move || {
            let builder = crate::store::MysqlStore::builder(&url).table(&name);
            match tls {
                Some(tls) => builder.tls(tls),
                None => builder,
            }
            .build()
        })
        .await?;
        let store = MysqlStore {
            inner: Arc::new(Inner {
                sql: MysqlSql::new(blocking.table()),
                blocking,
                pool: Pool::new(opts),
            }),
        };
        let conn = store.inner.pool.get_conn().await;
        drop(conn.map_err(|e| connect_error("connecting to MySQL", e))?);
        Ok(store)
    }
}

/// `mysql_async`'s TLS settings for `tls` (`None`: plaintext).
fn ssl_opts(tls: &Tls) -> Option<SslOpts> {
    if !tls.enabled() {
        return None;
    }
    let mut ssl =
        SslOpts::default().with_danger_accept_invalid_certs(tls.accepts_invalid_certificates());
    if let Some(ca) = tls.ca_path() {
        ssl = ssl.with_root_certs(vec![ca.to_path_buf().into()]);
    }
    if let Some((cert, key)) = tls.client_cert_paths() {
        let identity = ClientIdentity::new(cert.to_path_buf().into(), key.to_path_buf().into());
        ssl = ssl.with_client_identity(Some(identity));
    }
    Some(ssl)
}

/// [`Error::Tls`] when a connect failure is about TLS, a database error otherwise.
fn connect_error(context: &'static str, e: mysql_async::Error) -> Error {
    Error::tls_from("mysql", &e).unwrap_or_else(|| Error::db(context, e))
}

impl Store for MysqlStore {
    type Blocking = crate::store::MysqlStore;
    type Tx<'a> = mysql_async::Transaction<'a>;

    fn blocking(&self) -> &crate::store::MysqlStore {
        &self.inner.blocking
    }

    /// READ COMMITTED, as the blocking store's own transactions (no gap locks).
    async fn enqueue(&self, messages: &[Message]) -> Result<()> {
        let mut options = TxOpts::default();
        options.with_isolation_level(IsolationLevel::ReadCommitted);
        let sql = &self.inner.sql;
        self.in_tx(options, async |tx| enqueue::insert(tx, sql, messages).await)
            .await
    }

    async fn enqueue_in_tx(&self, tx: &mut Self::Tx<'_>, messages: &[Message]) -> Result<()> {
        enqueue::insert(tx, &self.inner.sql, messages).await
    }

    async fn with_transaction<R, E, F>(&self, f: F) -> std::result::Result<R, E>
    where
        F: AsyncFnOnce(&mut mysql_async::Transaction<'_>) -> std::result::Result<R, E>,
        E: From<Error>,
    {
        self.in_tx(TxOpts::default(), f).await
    }
}

impl Finish for mysql_async::Transaction<'_> {
    async fn commit(self) -> Result<()> {
        let r = mysql_async::Transaction::commit(self).await;
        r.map_err(|e| Error::db("committing", e))
    }
    async fn rollback(self) -> Result<()> {
        let r = mysql_async::Transaction::rollback(self).await;
        r.map_err(|e| Error::db("rolling back", e))
    }
}
