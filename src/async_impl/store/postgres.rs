//! PostgreSQL from async code: messages are enqueued with `tokio-postgres` on a small
//! pool of its own; the relay uses the blocking [`crate::store::PostgresStore`] on the
//! same table. The enqueue statements are the blocking store's, compiled for async.

use super::{run_in, Finish, Store};
use crate::async_impl::{runtime, unblock, BlockingDrop};
use crate::core::ident::TableName;
use crate::core::redact::redact_url;
use crate::core::sql::postgres::PostgresSql;
use crate::message::Message;
use crate::tls::Tls;
use crate::{Error, Result};
use parking_lot::Mutex;
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{Client, NoTls, Socket};

// The enqueue path shared with the blocking store (compiled here with `.await`).
use maybe_async::must_be_async as maybe;
/// `tokio_postgres::GenericClient` whose futures are `Send`.
pub(crate) trait PostgresClient: tokio_postgres::GenericClient + Send + Sync {}
impl<T: tokio_postgres::GenericClient + Send + Sync> PostgresClient for T {}
// Compiled twice on purpose: once blocking, once async (maybe-async).
#[allow(clippy::duplicate_mod)]
#[path = "../../enqueue/postgres.rs"]
mod enqueue;

/// The outbox table in PostgreSQL, for async code.
///
/// Cheap to clone: clones share one pool. Connections are tasks on the runtime
/// that opened them; a connection whose runtime has gone is replaced.
///
/// TLS as in the blocking [`crate::store::PostgresStore`]: the URL's `sslmode`,
/// `sslrootcert`, `sslcert`, `sslkey`, or [`PostgresStoreBuilder::tls`]; the
/// relay's blocking store and the async sends use the same settings.
///
/// ```no_run
/// # async fn demo() -> Result<(), outboxer::Error> {
/// use outboxer::async_impl::store::PostgresStore;
/// let store = PostgresStore::builder("postgres://postgres@127.0.0.1/test")
///     .table("app.event_store")
///     .build()
///     .await?;
/// store.migrate().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

/// Opens one async connection (its connection task spawned on the runtime).
type Connector = dyn Fn(tokio_postgres::Config) -> Pin<Box<dyn Future<Output = Result<Client>> + Send>>
    + Send
    + Sync;

/// Gives the relay's blocking store builder the same custom TLS connector.
type BlockingTls = Box<
    dyn FnOnce(crate::store::PostgresStoreBuilder) -> crate::store::PostgresStoreBuilder + Send,
>;

struct Inner {
    blocking: BlockingDrop<crate::store::PostgresStore>,
    config: tokio_postgres::Config,
    connect: Arc<Connector>,
    sql: PostgresSql,
    lock_space: i32,
    notify: bool,
    idle: Mutex<Vec<Client>>,
    max_idle: usize,
}

/// Settings of an async [`PostgresStore`].
pub struct PostgresStoreBuilder {
    config: Result<tokio_postgres::Config>,
    tls: Result<Tls>,
    connector: Option<(Arc<Connector>, BlockingTls)>,
    table: String,
    max_idle: usize,
    notify: bool,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("table", &self.table().plain())
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects with a URL (`postgres://user[:password]@host[:port]/db?...`) or a
    /// `key=value` string to the default table `event_store`, with TLS if the URL's
    /// `sslmode` asks for it.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::builder(url).build().await
    }

    /// A builder for table name and pool settings.
    pub fn builder(url: &str) -> PostgresStoreBuilder {
        let invalid = |reason: String| Error::InvalidUrl {
            url: redact_url(url),
            reason,
        };
        let (config, tls) = match crate::core::pg_tls::split(url) {
            Ok((rest, tls)) => (
                tokio_postgres::Config::from_str(&rest).map_err(|e| invalid(e.to_string())),
                Ok(tls),
            ),
            Err(reason) => (Err(invalid(reason.clone())), Err(invalid(reason))),
        };
        PostgresStoreBuilder {
            config,
            tls,
            connector: None,
            table: TableName::default().plain(),
            max_idle: 8,
            notify: true,
        }
    }

    /// Creates or upgrades the table (see [`crate::Store::migrate`]), on the blocking pool.
    pub async fn migrate(&self) -> Result<()> {
        let store = self.blocking().clone();
        unblock("migrating the table", move || store.migrate()).await
    }

    /// The table this store uses.
    pub fn table(&self) -> &TableName {
        self.inner.blocking.table()
    }

    async fn conn(&self) -> Result<Conn<'_>> {
        let pooled = self.inner.idle.lock().pop();
        let client = match pooled {
            Some(c) if !c.is_closed() => c,
            _ => (self.inner.connect)(self.inner.config.clone()).await?,
        };
        Ok(Conn {
            inner: &self.inner,
            client: Some(client),
        })
    }

    fn target(&self) -> enqueue::Target<'_> {
        enqueue::Target {
            sql: &self.inner.sql,
            lock_space: self.inner.lock_space,
            notify: self.inner.notify,
        }
    }
}

/// A [`Connector`] through `tls`.
fn connector<T>(tls: T) -> Arc<Connector>
where
    T: MakeTlsConnect<Socket> + Clone + Send + Sync + 'static,
    T::Stream: Send + 'static,
    T::TlsConnect: Send,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    Arc::new(move |config: tokio_postgres::Config| {
        let tls = tls.clone();
        Box::pin(async move {
            let rt = runtime()?;
            let (client, connection) = config
                .connect(tls)
                .await
                .map_err(crate::core::pg_tls::connect_error)?;
            rt.spawn(async move {
                if let Err(e) = connection.await {
                    log::warn!("outboxer: PostgreSQL connection closed: {e}");
                }
            });
            Ok(client)
        })
    })
}

impl PostgresStoreBuilder {
    /// The table (`name` or `schema.name`, plain identifiers); default `event_store`.
    pub fn table(self, name: &str) -> Self {
        let table = name.to_string();
        Self { table, ..self }
    }

    /// Connections kept open between uses, for sends (default 8; the relay's
    /// blocking store keeps as many of its own).
    pub fn max_idle(self, n: usize) -> Self {
        Self {
            max_idle: n,
            ..self
        }
    }

    /// Send `NOTIFY` on enqueue so relays in other processes wake at once (default true).
    pub fn notify(self, on: bool) -> Self {
        Self { notify: on, ..self }
    }

    /// TLS settings, in place of the URL's `sslmode`/`sslrootcert`/`sslcert`/`sslkey`.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), outboxer::Error> {
    /// use outboxer::async_impl::store::PostgresStore;
    /// use outboxer::tls::Tls;
    /// let store = PostgresStore::builder("postgres://app@db.internal/app")
    ///     .tls(Tls::verify_full().ca_file("/etc/ssl/certs/db-ca.pem"))
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn tls(self, tls: Tls) -> Self {
        Self {
            tls: Ok(tls),
            ..self
        }
    }

    /// Connect through your own TLS connector (for both the async sends and the
    /// relay's blocking store) instead of outboxer's rustls one. The connection is
    /// then always TLS (`sslmode=require`; the connector decides what is verified),
    /// and the [`tls`](Self::tls) settings are not used.
    pub fn tls_connector<T>(self, tls: T) -> Self
    where
        T: MakeTlsConnect<Socket> + Clone + Send + Sync + 'static,
        T::Stream: Send + 'static,
        T::TlsConnect: Send,
        <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
    {
        let for_blocking = tls.clone();
        let blocking: BlockingTls = Box::new(move |b| b.tls_connector(for_blocking));
        Self {
            connector: Some((connector(tls), blocking)),
            ..self
        }
    }

    /// Validates the settings, builds the relay's blocking store (on the blocking
    /// pool: `postgres` cannot connect on a runtime thread) and opens one async
    /// connection to check the server.
    pub async fn build(self) -> Result<PostgresStore> {
        let mut config = self.config?;
        let tls = self.tls?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        if config.get_application_name().is_none() {
            config.application_name("outboxer");
        }
        let (connect, blocking_tls): (Arc<Connector>, BlockingTls) = match self.connector {
            Some((connect, blocking)) => {
                config.ssl_mode(tokio_postgres::config::SslMode::Require);
                (connect, blocking)
            }
            None if tls.enabled() => {
                // Never `Prefer`: a failed handshake must not become plaintext.
                config.ssl_mode(tokio_postgres::config::SslMode::Require);
                let for_blocking = tls.clone();
                (
                    connector(crate::core::pg_tls::connector(&tls)?),
                    Box::new(move |b| b.tls(for_blocking)),
                )
            }
            None => {
                config.ssl_mode(tokio_postgres::config::SslMode::Disable);
                let for_blocking = tls.clone();
                (connector(NoTls), Box::new(move |b| b.tls(for_blocking)))
            }
        };
        let (table, max_idle, notify) = (self.table, self.max_idle, self.notify);
        let blocking_config = postgres::Config::from(config.clone());
        let blocking = unblock("connecting to PostgreSQL", move || {
            blocking_tls(crate::store::PostgresStore::from_config(blocking_config))
                .table(&table)
                .max_idle(max_idle)
                .notify(notify)
                .build()
        })
        .await?;
        let table = blocking.table().clone();
        let store = PostgresStore {
            inner: Arc::new(Inner {
                blocking: BlockingDrop::new(blocking),
                sql: PostgresSql::new(&table),
                lock_space: table.lock_space(),
                config,
                connect,
                notify,
                idle: Mutex::new(Vec::new()),
                max_idle,
            }),
        };
        drop(store.conn().await?);
        Ok(store)
    }
}

/// A pooled connection; goes back to the pool on drop unless it broke.
struct Conn<'a> {
    inner: &'a Inner,
    client: Option<Client>,
}

impl Conn<'_> {
    fn client(&mut self) -> Result<&mut Client> {
        self.client
            .as_mut()
            .ok_or_else(|| Error::db("using a pooled connection", "connection gone"))
    }
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        let mut idle = self.inner.idle.lock();
        let room = idle.len() < self.inner.max_idle;
        match self.client.take() {
            Some(c) if room && !c.is_closed() => idle.push(c),
            _ => {}
        }
    }
}

impl Store for PostgresStore {
    type Blocking = crate::store::PostgresStore;
    type Tx<'a> = tokio_postgres::Transaction<'a>;

    fn blocking(&self) -> &crate::store::PostgresStore {
        &self.inner.blocking
    }

    async fn enqueue(&self, messages: &[Message]) -> Result<()> {
        let target = self.target();
        self.with_transaction(async |tx| enqueue::insert(tx, &target, messages).await)
            .await
    }

    async fn enqueue_in_tx(&self, tx: &mut Self::Tx<'_>, messages: &[Message]) -> Result<()> {
        enqueue::insert(tx, &self.target(), messages).await
    }

    async fn with_transaction<R, E, F>(&self, f: F) -> std::result::Result<R, E>
    where
        F: AsyncFnOnce(&mut tokio_postgres::Transaction<'_>) -> std::result::Result<R, E>,
        E: From<Error>,
    {
        let mut conn = self.conn().await?;
        let tx = conn
            .client()?
            .transaction()
            .await
            .map_err(|e| Error::db("beginning a transaction", e))?;
        run_in(tx, f).await
    }
}

impl Finish for tokio_postgres::Transaction<'_> {
    async fn commit(self) -> Result<()> {
        let r = tokio_postgres::Transaction::commit(self).await;
        r.map_err(|e| Error::db("committing", e))
    }
    async fn rollback(self) -> Result<()> {
        let r = tokio_postgres::Transaction::rollback(self).await;
        r.map_err(|e| Error::db("rolling back", e))
    }
}
