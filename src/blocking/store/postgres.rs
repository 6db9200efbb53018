//! PostgreSQL store on the `postgres` crate: claims by row locks held in an open
//! transaction (or leases), both with `FOR UPDATE SKIP LOCKED`; LISTEN/NOTIFY
//! wake-ups; a small connection pool of its own.

use super::{due_in, run_in, Finish};
use super::{
    BatchLimit, Claim, Decoded, FailedAttempt, HeldClaim, HeldKey, Lease, LockedClaim,
    ParkedMessage, Purgeable, Requeue, Stats, Store, TxStore, Undecodable, WakeListener,
};
use crate::core::ident::TableName;
use crate::core::redact::redact_url;
use crate::core::rows;
use crate::core::sql::postgres::PostgresSql;
use crate::message::{Message, MessageId, StoredMessage};
use crate::tls::Tls;
use crate::{Error, Result};
use parking_lot::{Condvar, Mutex};
use postgres::fallible_iterator::FallibleIterator;
use postgres::tls::{MakeTlsConnect, TlsConnect};
use postgres::{Client, GenericClient, Socket, Statement};
use std::ops::{Deref, DerefMut};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

// The enqueue path shared with the async store (compiled here without `.await`).
use maybe_async::must_be_sync as maybe;
use postgres::GenericClient as PostgresClient;
#[path = "../../enqueue/postgres.rs"]
mod enqueue;

type Connector = dyn Fn() -> std::result::Result<Client, postgres::Error> + Send + Sync;

/// The outbox table in PostgreSQL (9.5+ for SKIP LOCKED; 13+ for `gen_random_uuid()`).
///
/// Cheap to clone: clones share one pool of connections.
///
/// TLS comes from the URL's `sslmode` (`disable`, the default when absent;
/// `require` and `verify-full`: the certificate and the host name are verified;
/// `verify-ca`: the certificate only; `prefer` and `allow` are refused, they may
/// fall back to plaintext), `sslrootcert` (the CA file; without it the webpki
/// roots) and `sslcert`/`sslkey` (a client certificate), or from
/// [`PostgresStoreBuilder::tls`]. A TLS failure at connect is
/// [`Error::Tls`] naming its [`TlsCause`](crate::tls::TlsCause).
///
/// ```no_run
/// # fn main() -> Result<(), outboxer::Error> {
/// use outboxer::store::PostgresStore;
/// let store = PostgresStore::builder("postgres://postgres@127.0.0.1/test")
///     .table("app.event_store")
///     .build()?;
/// store.migrate()?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

struct Inner {
    table: TableName,
    sql: PostgresSql,
    connect: Box<Connector>,
    pool: Mutex<Pool>,
    /// Signalled when a connection goes back to the pool or is closed.
    freed: Condvar,
    max_idle: usize,
    max_connections: usize,
    pool_timeout: Duration,
    notify: bool,
}

/// The pool's connections: idle ones, and how many are open (idle or in use).
struct Pool {
    /// With each its prepared row-lock claim, once it has claimed.
    idle: Vec<(Client, Option<Statement>)>,
    open: usize,
}

/// Settings of a [`PostgresStore`].
pub struct PostgresStoreBuilder {
    config: std::result::Result<postgres::Config, Error>,
    tls: std::result::Result<Tls, Error>,
    table: std::result::Result<TableName, Error>,
    max_idle: usize,
    max_connections: usize,
    pool_timeout: Duration,
    notify: bool,
    connector: Option<Box<dyn FnOnce(postgres::Config) -> Box<Connector>>>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("table", &self.inner.table.plain())
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects with a URL (`postgres://user[:password]@host[:port]/db?...`) or a
    /// `key=value` string to the default table `event_store`, with TLS if the URL's
    /// `sslmode` asks for it. One connection is opened to check the server is there.
    pub fn connect(url: &str) -> Result<Self> {
        Self::builder(url).build()
    }

    /// A builder for table name, TLS and pool settings.
    pub fn builder(url: &str) -> PostgresStoreBuilder {
        let invalid = |reason: String| Error::InvalidUrl {
            url: redact_url(url),
            reason,
        };
        match crate::core::pg_tls::split(url) {
            Ok((rest, tls)) => {
                let config = postgres::Config::from_str(&rest).map_err(|e| invalid(e.to_string()));
                PostgresStoreBuilder::new(config, Ok(tls))
            }
            Err(reason) => {
                PostgresStoreBuilder::new(Err(invalid(reason.clone())), Err(invalid(reason)))
            }
        }
    }

    /// A builder from a ready `postgres::Config`. Its `ssl_mode` `Require` is
    /// verified TLS with the webpki roots (set a CA with
    /// [`tls`](PostgresStoreBuilder::tls)); `Prefer` (its default) and `Disable`
    /// are plaintext.
    pub fn from_config(config: postgres::Config) -> PostgresStoreBuilder {
        let tls = match config.get_ssl_mode() {
            postgres::config::SslMode::Require => Tls::verify_full(),
            _ => Tls::disabled(),
        };
        PostgresStoreBuilder::new(Ok(config), Ok(tls))
    }

    /// Creates or upgrades the table (same as [`Store::migrate`], without importing the trait).
    pub fn migrate(&self) -> Result<()> {
        Store::migrate(self)
    }

    /// The table this store uses.
    pub fn table(&self) -> &TableName {
        &self.inner.table
    }

    /// Whether enqueues send `NOTIFY` (other enqueue paths on this table follow it).
    #[cfg(feature = "_sqlx")]
    pub(crate) fn notifies(&self) -> bool {
        self.inner.notify
    }

    /// A connection from the pool: an idle one, a new one while fewer than
    /// `max_connections` are open, or else the next one given back, waiting up to
    /// `pool_timeout` for it.
    fn conn(&self) -> Result<Conn> {
        let inner = &*self.inner;
        let deadline = Instant::now() + inner.pool_timeout;
        let mut pool = inner.pool.lock();
        loop {
            while let Some((c, claim)) = pool.idle.pop() {
                if !c.is_closed() {
                    return Ok(Conn {
                        inner: Arc::clone(&self.inner),
                        client: Some(c),
                        claim,
                        discard: false,
                    });
                }
                pool.open = pool.open.saturating_sub(1);
            }
            if pool.open < inner.max_connections {
                pool.open += 1;
                drop(pool);
                return match (inner.connect)() {
                    Ok(c) => Ok(Conn {
                        inner: Arc::clone(&self.inner),
                        client: Some(c),
                        claim: None,
                        discard: false,
                    }),
                    Err(e) => {
                        let mut pool = inner.pool.lock();
                        pool.open = pool.open.saturating_sub(1);
                        drop(pool);
                        inner.freed.notify_one();
                        Err(crate::core::pg_tls::connect_error(e))
                    }
                };
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout(format!(
                    "no PostgreSQL connection came free within {:?} (pool_timeout): all {} \
                     (max_connections) are in use",
                    inner.pool_timeout, inner.max_connections
                )));
            }
            inner.freed.wait_until(&mut pool, deadline);
        }
    }

    fn insert(&self, client: &mut impl GenericClient, messages: &[Message]) -> Result<()> {
        let target = enqueue::Target {
            sql: &self.inner.sql,
            lock_space: self.inner.table.lock_space(),
            notify: self.inner.notify,
        };
        enqueue::insert(client, &target, messages)
    }

    /// A lease-mode dispatched mark (`sql` updates or deletes): the ids that
    /// still held the lease.
    fn lease_mark(&self, sql: &str, lease: &Lease, ids: &[i64]) -> Result<Vec<i64>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let db = |e| Error::db("marking messages dispatched", e);
        let rows = self.conn()?.query(sql, &[&ids, &lease.token]).map_err(db)?;
        rows.iter().map(|r| r.try_get(0).map_err(db)).collect()
    }

    fn migrate_in(&self, tx: &mut postgres::Transaction<'_>) -> Result<()> {
        let sql = &self.inner.sql;
        let table = &self.inner.table;
        let row = tx
            .query_one(&sql.inspect, &[&table.schema(), &table.table()])
            .map_err(|e| Error::db("inspecting the table", e))?;
        let (exists, has_status, has_dispatched, id_type): (bool, bool, bool, String) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        for stmt in &sql.migrate {
            tx.batch_execute(stmt)
                .map_err(|e| Error::db("creating the table", e))?;
        }
        if exists && has_dispatched {
            // A Go outboxer table: keep its rows, widen its types, carry its state over.
            if !has_status {
                tx.batch_execute(&sql.upgrade_go_rows)
                    .map_err(|e| Error::db("upgrading Go outboxer rows", e))?;
            }
            if id_type == "integer" {
                for stmt in &sql.widen_id {
                    tx.batch_execute(stmt)
                        .map_err(|e| Error::db("upgrading the Go outboxer table", e))?;
                }
            }
            log::info!("outboxer: upgraded Go outboxer table {}", table.plain());
        }
        Ok(())
    }
}

impl PostgresStoreBuilder {
    fn new(
        config: std::result::Result<postgres::Config, Error>,
        tls: std::result::Result<Tls, Error>,
    ) -> Self {
        PostgresStoreBuilder {
            config,
            tls,
            table: Ok(TableName::default()),
            max_idle: 8,
            max_connections: 16,
            pool_timeout: Duration::from_secs(30),
            notify: true,
            connector: None,
        }
    }

    /// The table (`name` or `schema.name`, plain identifiers); default `event_store`.
    pub fn table(mut self, name: &str) -> Self {
        self.table = TableName::parse(name);
        self
    }

    /// Connections kept open between uses (default 8).
    pub fn max_idle(mut self, n: usize) -> Self {
        self.max_idle = n;
        self
    }

    /// Most connections the pool opens at once, idle or in use (default 16; at
    /// least 1). A caller beyond them waits for one to be given back, up to
    /// [`pool_timeout`](Self::pool_timeout). Not counted: the one LISTEN
    /// connection of each running relay (with [`notify`](Self::notify) on).
    /// A [`TxStore::with_transaction`] closure holds one connection while it runs:
    /// store calls made inside it need another.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n;
        self
    }

    /// How long a caller waits for a connection when `max_connections` are in use
    /// (default 30 s); then it gets [`Error::Timeout`].
    pub fn pool_timeout(mut self, wait: Duration) -> Self {
        self.pool_timeout = wait;
        self
    }

    /// Send `NOTIFY` on enqueue so relays in other processes wake at once (default true).
    pub fn notify(mut self, on: bool) -> Self {
        self.notify = on;
        self
    }

    /// TLS settings, in place of the URL's `sslmode`/`sslrootcert`/`sslcert`/`sslkey`.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), outboxer::Error> {
    /// use outboxer::store::PostgresStore;
    /// use outboxer::tls::Tls;
    /// let store = PostgresStore::builder("postgres://app@db.internal/app")
    ///     .tls(Tls::verify_full().ca_file("/etc/ssl/certs/db-ca.pem"))
    ///     .build()?;
    /// # Ok(()) }
    /// ```
    pub fn tls(mut self, tls: Tls) -> Self {
        self.tls = Ok(tls);
        self
    }

    /// Connect through your own `postgres` TLS connector (`postgres-native-tls`,
    /// `postgres-openssl`, a `tokio-postgres-rustls` connector of your own
    /// configuration) instead of outboxer's rustls one. The connection is then
    /// always TLS (`sslmode=require` to the server; the connector decides what is
    /// verified), and the [`tls`](Self::tls) settings are not used.
    pub fn tls_connector<T>(mut self, tls: T) -> Self
    where
        T: MakeTlsConnect<Socket> + Clone + Send + Sync + 'static,
        T::Stream: Send,
        T::TlsConnect: Send,
        <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
    {
        self.connector = Some(Box::new(
            move |mut config: postgres::Config| -> Box<Connector> {
                config.ssl_mode(postgres::config::SslMode::Require);
                Box::new(move || config.connect(tls.clone()))
            },
        ));
        self
    }

    /// Validates the settings and opens one connection to check the server.
    pub fn build(self) -> Result<PostgresStore> {
        let mut config = self.config?;
        let tls = self.tls?;
        let table = self.table?;
        if self.max_connections == 0 {
            return Err(Error::config("max_connections", "must be at least 1"));
        }
        if self.pool_timeout.is_zero() {
            return Err(Error::config("pool_timeout", "must be greater than zero"));
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        if config.get_application_name().is_none() {
            config.application_name("outboxer");
        }
        let connect: Box<Connector> = match self.connector {
            Some(make) => make(config),
            None if tls.enabled() => {
                let connector = crate::core::pg_tls::connector(&tls)?;
                // Never `Prefer`: a failed handshake must not become plaintext.
                config.ssl_mode(postgres::config::SslMode::Require);
                Box::new(move || config.connect(connector.clone()))
            }
            None => {
                if tls.ca_path().is_some() || tls.client_cert_paths().is_some() {
                    tls.check_files("tls")?;
                }
                config.ssl_mode(postgres::config::SslMode::Disable);
                Box::new(move || config.connect(postgres::NoTls))
            }
        };
        let store = PostgresStore {
            inner: Arc::new(Inner {
                sql: PostgresSql::new(&table),
                table,
                connect,
                pool: Mutex::new(Pool {
                    idle: Vec::new(),
                    open: 0,
                }),
                freed: Condvar::new(),
                max_idle: self.max_idle,
                max_connections: self.max_connections,
                pool_timeout: self.pool_timeout,
                notify: self.notify,
            }),
        };
        drop(store.conn()?);
        Ok(store)
    }
}

/// A pooled connection; goes back to the pool on drop unless it broke (or its
/// state is unknown: `discard`).
struct Conn {
    inner: Arc<Inner>,
    client: Option<Client>,
    /// The row-lock claim, prepared on this connection (planned once: see
    /// `begin_held`).
    claim: Option<Statement>,
    discard: bool,
}

impl Deref for Conn {
    type Target = Client;
    fn deref(&self) -> &Client {
        self.client.as_ref().expect("present until drop")
    }
}

impl DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut Client {
        self.client.as_mut().expect("present until drop")
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        let Some(c) = self.client.take() else {
            return;
        };
        let mut pool = self.inner.pool.lock();
        let closing = if !self.discard && !c.is_closed() && pool.idle.len() < self.inner.max_idle {
            pool.idle.push((c, self.claim.take()));
            None
        } else {
            pool.open = pool.open.saturating_sub(1);
            Some(c)
        };
        drop(pool);
        self.inner.freed.notify_one();
        // Closed outside the lock: closing sends a Terminate to the server.
        drop(closing);
    }
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A claimed row; only an unreadable id fails (the row cannot even be named).
fn decode(row: &postgres::Row) -> Result<Decoded> {
    let id: i64 = row
        .try_get(0)
        .map_err(|e| Error::db("decoding a claimed row", e))?;
    Ok(decode_columns(id, row).map_err(|reason| Undecodable { id, reason }))
}

fn decode_columns(id: i64, row: &postgres::Row) -> std::result::Result<StoredMessage, String> {
    fn col<'a, T: postgres::types::FromSql<'a>>(
        row: &'a postgres::Row,
        i: usize,
        name: &str,
    ) -> std::result::Result<T, String> {
        row.try_get(i).map_err(|e| format!("{name}: {e}"))
    }
    let micros: i64 = col(row, 7, "created_at")?;
    let attempts: i32 = col(row, 6, "attempts")?;
    Ok(StoredMessage {
        id,
        message_id: MessageId::from_uuid(col(row, 1, "message_id")?),
        payload: col(row, 2, "payload")?,
        headers: rows::headers_from_json(col(row, 3, "headers")?)?,
        options: rows::options_from_json(col(row, 4, "options")?)?,
        ordering_key: col(row, 5, "ordering_key")?,
        attempts: u32::try_from(attempts).unwrap_or(0),
        created_at: UNIX_EPOCH + Duration::from_micros(u64::try_from(micros).unwrap_or(0)),
    })
}

/// A row-lock claim's open transaction on its own pooled connection.
struct PostgresHeld {
    conn: Conn,
    table: TableName,
    done: bool,
}

impl HeldClaim for PostgresHeld {
    fn mark_failed(&mut self, failures: &[FailedAttempt]) -> Result<usize> {
        if failures.is_empty() {
            return Ok(0);
        }
        let f = Failures::new(failures);
        let inner = Arc::clone(&self.conn.inner);
        let n = self
            .conn
            .execute(
                &inner.sql.held_mark_failed,
                &[&f.ids, &f.errors, &f.delays, &f.park, &f.hold],
            )
            .map_err(|e| Error::db("recording failed attempts", e))?;
        Ok(n as usize)
    }

    fn release(&mut self, ids: &[i64], retry_in: Duration) -> Result<usize> {
        // Unlocked by the commit, claimable at once: nothing to write.
        if ids.is_empty() || retry_in.is_zero() {
            return Ok(ids.len());
        }
        let inner = Arc::clone(&self.conn.inner);
        let n = self
            .conn
            .execute(&inner.sql.held_release, &[&ids, &millis(retry_in)])
            .map_err(|e| Error::db("releasing messages", e))?;
        Ok(n as usize)
    }

    fn commit(mut self: Box<Self>, dispatched: &[i64], delete: bool) -> Result<Vec<i64>> {
        let sql = PostgresSql::commit_held(&self.table, dispatched, delete);
        // Whatever happens now, no ROLLBACK on drop: after a failed COMMIT the
        // connection is closed (its state is unknown).
        self.done = true;
        if let Err(e) = self.conn.batch_execute(&sql) {
            self.conn.discard = true;
            return Err(Error::db("committing a batch's outcomes", e));
        }
        // Locked by this transaction since the claim: every row is still ours.
        Ok(dispatched.to_vec())
    }
}

impl Drop for PostgresHeld {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if self.conn.batch_execute("ROLLBACK").is_err() {
            self.conn.discard = true;
        }
    }
}

/// Failed attempts as the statements' array parameters.
struct Failures<'a> {
    ids: Vec<i64>,
    errors: Vec<&'a str>,
    delays: Vec<f64>,
    park: Vec<bool>,
    hold: Vec<bool>,
}

impl<'a> Failures<'a> {
    fn new(failures: &'a [FailedAttempt]) -> Self {
        Failures {
            ids: failures.iter().map(|f| f.id).collect(),
            errors: failures.iter().map(|f| f.error.as_str()).collect(),
            delays: failures.iter().map(|f| millis(f.retry_in)).collect(),
            park: failures.iter().map(|f| f.park).collect(),
            hold: failures.iter().map(|f| f.hold_key).collect(),
        }
    }
}

impl Store for PostgresStore {
    fn migrate(&self) -> Result<()> {
        let mut conn = self.conn()?;
        let mut tx = conn
            .transaction()
            .map_err(|e| Error::db("beginning migrate", e))?;
        // One migrator at a time per table, across processes; released at commit.
        tx.execute(
            "SELECT pg_advisory_xact_lock($1, 0)",
            &[&self.inner.table.lock_space()],
        )
        .map_err(|e| Error::db("locking for migrate", e))?;
        self.migrate_in(&mut tx)?;
        tx.commit().map_err(|e| Error::db("committing migrate", e))
    }

    fn enqueue(&self, messages: &[Message]) -> Result<()> {
        let mut conn = self.conn()?;
        let mut tx = conn
            .transaction()
            .map_err(|e| Error::db("beginning a transaction", e))?;
        self.insert(&mut tx, messages)?;
        tx.commit().map_err(|e| Error::db("committing messages", e))
    }

    fn claim(&self, lease: &Lease, limit: BatchLimit) -> Result<Claim> {
        let mut conn = self.conn()?;
        let (max_rows, max_bytes) = (
            i64::try_from(limit.rows).unwrap_or(i64::MAX),
            i64::try_from(limit.bytes).unwrap_or(i64::MAX),
        );
        let mut tx = conn
            .transaction()
            .map_err(|e| Error::db("beginning a claim", e))?;
        // A claim must walk the pending index in id order and stop at `limit`. Before
        // ANALYZE has seen a backlog the planner prefers to sort every pending row
        // (measured: 197 ms instead of 23 ms for 1000 of 200k rows).
        // The byte cap's window sorts the (at most `rows`) locked candidates: with
        // enable_sort off that sort's penalty cost crosses the JIT thresholds, and JIT
        // compilation took ~300 ms per claim (measured, PostgreSQL 15).
        tx.batch_execute("SET LOCAL enable_sort = off; SET LOCAL jit = off")
            .map_err(|e| Error::db("claiming messages", e))?;
        let rows = tx
            .query(
                &self.inner.sql.claim,
                &[&max_rows, &lease.token, &millis(lease.duration), &max_bytes],
            )
            .map_err(|e| Error::db("claiming messages", e))?;
        tx.commit()
            .map_err(|e| Error::db("committing a claim", e))?;
        let decoded = rows.iter().map(decode).collect::<Result<Vec<_>>>()?;
        Ok(Claim::from_rows(decoded))
    }

    fn claim_locked(&self, lease: &Lease, limit: BatchLimit) -> Result<Option<LockedClaim>> {
        let mut conn = self.conn()?;
        let (max_rows, max_bytes) = (
            i64::try_from(limit.rows).unwrap_or(i64::MAX),
            i64::try_from(limit.bytes).unwrap_or(i64::MAX),
        );
        let lease_ms = u64::try_from(lease.duration.as_millis()).unwrap_or(u64::MAX);
        // The planner settings of `claim` (see there), and the lease as the
        // server's limit on the transaction's idle time.
        if let Err(e) = conn.batch_execute(&PostgresSql::begin_held(lease_ms)) {
            conn.discard = true;
            return Err(Error::db("claiming messages", e));
        }
        let table = self.inner.table.clone();
        let mut held = PostgresHeld {
            conn,
            table,
            done: false,
        };
        let claim = match held.conn.claim.clone() {
            Some(c) => c,
            None => {
                let c = held
                    .conn
                    .prepare(&self.inner.sql.claim_locked)
                    .map_err(|e| Error::db("claiming messages", e))?;
                held.conn.claim = Some(c.clone());
                c
            }
        };
        let rows = match held.conn.query(&claim, &[&max_rows, &max_bytes]) {
            Ok(rows) => rows,
            Err(e) => {
                // Prepared again next time (say the table was altered or
                // recreated since: the prepared statement cannot run any more).
                held.conn.claim = None;
                return Err(Error::db("claiming messages", e));
            }
        };
        let decoded = rows.iter().map(decode).collect::<Result<Vec<_>>>()?;
        Ok(Some(LockedClaim {
            claim: Claim::from_rows(decoded),
            held: Box::new(held),
        }))
    }

    fn mark_dispatched(&self, lease: &Lease, ids: &[i64]) -> Result<Vec<i64>> {
        self.lease_mark(&self.inner.sql.mark_dispatched, lease, ids)
    }

    fn delete_dispatched(&self, lease: &Lease, ids: &[i64]) -> Result<Vec<i64>> {
        self.lease_mark(&self.inner.sql.delete_dispatched, lease, ids)
    }

    fn mark_failed(&self, lease: &Lease, failures: &[FailedAttempt]) -> Result<usize> {
        if failures.is_empty() {
            return Ok(0);
        }
        let f = Failures::new(failures);
        let n = self
            .conn()?
            .execute(
                &self.inner.sql.mark_failed,
                &[&f.ids, &f.errors, &f.delays, &f.park, &lease.token, &f.hold],
            )
            .map_err(|e| Error::db("recording failed attempts", e))?;
        Ok(n as usize)
    }

    fn release(&self, lease: &Lease, ids: &[i64], retry_in: Duration) -> Result<usize> {
        if ids.is_empty() {
            return Ok(0);
        }
        let n = self
            .conn()?
            .execute(
                &self.inner.sql.release,
                &[&ids, &lease.token, &millis(retry_in)],
            )
            .map_err(|e| Error::db("releasing messages", e))?;
        Ok(n as usize)
    }

    fn cleanup(&self, older_than: Duration, limit: usize) -> Result<u64> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.conn()?
            .execute(&self.inner.sql.cleanup, &[&millis(older_than), &limit])
            .map_err(|e| Error::db("cleaning up dispatched messages", e))
    }

    fn requeue(&self, which: &Requeue) -> Result<u64> {
        let mut conn = self.conn()?;
        let r = match which {
            Requeue::AllParked => conn.execute(&self.inner.sql.requeue_all, &[]),
            Requeue::Ids(ids) => conn.execute(&self.inner.sql.requeue_ids, &[ids]),
            Requeue::Matching(f) => conn.execute(
                &self.inner.sql.requeue_matching,
                &[&f.older_than.map(millis), &f.error_text()],
            ),
        };
        r.map_err(|e| Error::db("requeueing parked messages", e))
    }

    fn table_name(&self) -> String {
        self.table().plain()
    }

    fn stats(&self) -> Result<Stats> {
        let row = self
            .conn()?
            .query_one(&self.inner.sql.stats, &[])
            .map_err(|e| Error::db("reading stats", e))?;
        let count = |i: usize| -> u64 { u64::try_from(row.get::<_, i64>(i)).unwrap_or(0) };
        let age: f64 = row.get(4);
        Ok(Stats {
            pending: count(0),
            dispatched: count(1),
            parked: count(2),
            leased: count(3),
            oldest_pending_age: Duration::try_from_secs_f64(age.max(0.0)).unwrap_or_default(),
            held_keys: count(5),
            scheduled: count(6),
            next_due_in: row.get::<_, Option<f64>>(7).map(due_in),
        })
    }

    fn next_due(&self) -> Result<Option<Duration>> {
        let row = self
            .conn()?
            .query_one(&self.inner.sql.next_due, &[])
            .map_err(|e| Error::db("reading the next due time", e))?;
        Ok(row.get::<_, Option<f64>>(0).map(due_in))
    }

    fn skip(&self, ids: &[i64]) -> Result<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        self.conn()?
            .execute(&self.inner.sql.skip, &[&ids])
            .map_err(|e| Error::db("skipping parked messages", e))
    }

    fn held_keys(&self, limit: usize) -> Result<Vec<HeldKey>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .conn()?
            .query(&self.inner.sql.held_keys, &[&limit])
            .map_err(|e| Error::db("listing held keys", e))?;
        Ok(rows
            .iter()
            .map(|r| {
                let message_id: Option<uuid::Uuid> = r.get(2);
                let waiting: i64 = r.get(4);
                HeldKey {
                    ordering_key: r.get(0),
                    parked_id: r.get(1),
                    message_id: message_id.map(MessageId::from_uuid),
                    last_error: r.get(3),
                    waiting: u64::try_from(waiting).unwrap_or(0),
                }
            })
            .collect())
    }

    fn purge_parked(&self, older_than: Duration, limit: usize) -> Result<u64> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.conn()?
            .execute(&self.inner.sql.purge_parked, &[&millis(older_than), &limit])
            .map_err(|e| Error::db("purging parked messages", e))
    }

    fn missing_indexes(&self) -> Result<Option<Vec<String>>> {
        let table = &self.inner.table;
        let present: Vec<String> = self
            .conn()?
            .query(
                "SELECT indexname::text FROM pg_indexes \
                 WHERE schemaname = coalesce($1, current_schema()) AND tablename = $2",
                &[&table.schema(), &table.table()],
            )
            .map_err(|e| Error::db("listing the table's indexes", e))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let expected = crate::core::sql::postgres::INDEXES
            .iter()
            .map(|s| crate::core::sql::postgres::index_name(table.table(), s))
            .collect();
        Ok(Some(super::not_present(expected, &present)))
    }

    fn purgeable(&self, older_than: Duration) -> Result<Purgeable> {
        let row = self
            .conn()?
            .query_one(&self.inner.sql.purgeable, &[&millis(older_than)])
            .map_err(|e| Error::db("counting purgeable messages", e))?;
        let count = |i: usize| -> u64 { u64::try_from(row.get::<_, i64>(i)).unwrap_or(0) };
        Ok(Purgeable {
            dispatched: count(0),
            parked: count(1),
        })
    }

    fn attempts_histogram(&self) -> Result<Vec<(u32, u64)>> {
        let rows = self
            .conn()?
            .query(&self.inner.sql.attempts_histogram, &[])
            .map_err(|e| Error::db("reading the attempts histogram", e))?;
        Ok(rows
            .iter()
            .map(|r| {
                let attempts: i32 = r.get(0);
                let n: i64 = r.get(1);
                (
                    u32::try_from(attempts).unwrap_or(0),
                    u64::try_from(n).unwrap_or(0),
                )
            })
            .collect())
    }

    fn parked(&self, limit: usize) -> Result<Vec<ParkedMessage>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .conn()?
            .query(&self.inner.sql.parked, &[&limit])
            .map_err(|e| Error::db("listing parked messages", e))?;
        Ok(rows
            .iter()
            .map(|r| {
                let message_id: Option<uuid::Uuid> = r.get(1);
                let attempts: i32 = r.get(2);
                ParkedMessage {
                    id: r.get(0),
                    message_id: message_id.map(MessageId::from_uuid),
                    attempts: u32::try_from(attempts).unwrap_or(0),
                    last_error: r.get(3),
                    ordering_key: r.get(4),
                    holds_key: r.get(5),
                }
            })
            .collect())
    }

    fn wake_listener(&self) -> Result<Option<Box<dyn WakeListener>>> {
        if !self.inner.notify {
            return Ok(None);
        }
        Ok(Some(Box::new(PostgresListener {
            store: self.clone(),
            client: None,
        })))
    }
}

impl TxStore for PostgresStore {
    type Tx<'a> = postgres::Transaction<'a>;

    fn enqueue_in_tx(
        &self,
        tx: &mut postgres::Transaction<'_>,
        messages: &[Message],
    ) -> Result<()> {
        self.insert(tx, messages)
    }

    fn with_transaction<R, E, F>(&self, f: F) -> std::result::Result<R, E>
    where
        F: FnOnce(&mut postgres::Transaction<'_>) -> std::result::Result<R, E>,
        E: From<Error>,
    {
        let mut conn = self.conn()?;
        let tx = conn
            .transaction()
            .map_err(|e| Error::db("beginning a transaction", e))?;
        run_in(tx, f)
    }
}

impl Finish for postgres::Transaction<'_> {
    fn commit(self) -> Result<()> {
        postgres::Transaction::commit(self).map_err(|e| Error::db("committing", e))
    }
    fn rollback(self) -> Result<()> {
        postgres::Transaction::rollback(self).map_err(|e| Error::db("rolling back", e))
    }
}

/// LISTENs on the table's channel on a connection of its own.
struct PostgresListener {
    store: PostgresStore,
    client: Option<Client>,
}

impl WakeListener for PostgresListener {
    fn wait(&mut self, timeout: Duration) -> Result<bool> {
        if self.client.is_none() {
            let mut c =
                (self.store.inner.connect)().map_err(
                    |e| match crate::core::pg_tls::connect_error(e) {
                        Error::Database { source, .. } => Error::Database {
                            context: "connecting the LISTEN connection",
                            source,
                        },
                        other => other,
                    },
                )?;
            // The channel name is derived from a validated identifier.
            c.batch_execute(&format!("LISTEN \"{}\"", self.store.inner.sql.channel))
                .map_err(|e| Error::db("LISTEN", e))?;
            self.client = Some(c);
        }
        let Some(client) = self.client.as_mut() else {
            return Ok(false);
        };
        let got = wait_notification(client, timeout);
        if got.is_err() {
            self.client = None;
        }
        got.map_err(|e| Error::db("waiting for notifications", e))
    }
}

fn wait_notification(
    client: &mut Client,
    timeout: Duration,
) -> std::result::Result<bool, postgres::Error> {
    let mut notes = client.notifications();
    let first = notes.timeout_iter(timeout).next()?.is_some();
    if first {
        // Collapse whatever else is queued into this one wake-up.
        while notes.iter().next()?.is_some() {}
    }
    Ok(first)
}
