//! MySQL 8 / MariaDB 10.6+ store on the `mysql` crate: claims held by row locks
//! in an open transaction (see `held`), or leases with `FOR UPDATE SKIP LOCKED`
//! in a two-step claim (MariaDB has no `UPDATE .. RETURNING`); per-key enqueue
//! locks on a small lock table, polling plus the in-process wake.

use super::{run_in, Finish};
use super::{
    BatchLimit, Claim, Decoded, FailedAttempt, HeldKey, Lease, LockedClaim, ParkedMessage,
    Purgeable, Requeue, Stats, Store, TxStore, Undecodable,
};
use crate::core::ident::TableName;
use crate::core::redact::redact_url;
use crate::core::rows;
use crate::core::sql::mysql::{failed_status, IdleLimit, MysqlSql, EXTRA_COLUMNS};
use crate::message::{Message, MessageId, StoredMessage};
use crate::tls::{Tls, TlsMode};
use crate::{Error, Result};
use mysql::prelude::Queryable;
use mysql::{
    ClientIdentity, IsolationLevel, Opts, OptsBuilder, Pool, PoolConstraints, PoolOpts, Row,
    SslOpts, TxOpts, Value,
};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, UNIX_EPOCH};

#[path = "mysql/held.rs"]
mod held;

// The enqueue path shared with the async store (compiled here without `.await`).
use maybe_async::must_be_sync as maybe;
#[path = "../../enqueue/mysql.rs"]
mod enqueue;

/// The outbox table in MySQL 8.0.13+ or MariaDB 10.6+ (both have `SKIP LOCKED` and
/// expression defaults).
///
/// Cheap to clone: clones share one connection pool.
///
/// Times are stored in UTC (`DATETIME(6)`, defaults and clock reads
/// `UTC_TIMESTAMP(6)`): sessions in any `time_zone` agree on leases, backoff and
/// cleanup. Session settings of your own go in `mysql::OptsBuilder::init` with
/// [`MysqlStore::from_opts`]. `migrate` upgrades tables of earlier versions, which
/// held the server's local time: their undelivered rows are moved to UTC by the
/// offset of the migrating session's zone; run it before starting new relays.
///
/// TLS: the URL's `ssl-mode=VERIFY_IDENTITY|VERIFY_CA|REQUIRED|DISABLED` with
/// `ssl-ca`, `ssl-cert`, `ssl-key` (MySQL's client spelling), or
/// [`MysqlStoreBuilder::tls`]. Whenever TLS is on, the certificate and the host
/// name are verified (also for `REQUIRED`, which MySQL's own client does not
/// verify); `VERIFY_CA` skips the name; `PREFERRED` is refused (it may fall back
/// to plaintext). A TLS failure at [`build`](MysqlStoreBuilder::build) is
/// [`Error::Tls`] naming its cause.
///
/// ```no_run
/// # fn main() -> Result<(), outboxer::Error> {
/// use outboxer::store::MysqlStore;
/// let store = MysqlStore::builder("mysql://root@127.0.0.1:3306/test").table("event_store").build()?;
/// store.migrate()?;
/// let over_tls = MysqlStore::connect(
///     "mysql://app@db.internal/app?ssl-mode=VERIFY_IDENTITY&ssl-ca=/etc/ssl/certs/db-ca.pem",
/// )?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct MysqlStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    table: TableName,
    sql: Arc<MysqlSql>,
    /// The server's bound on idle transactions, known after the first held claim.
    idle_limit: OnceLock<IdleLimit>,
}

/// Settings of a [`MysqlStore`].
pub struct MysqlStoreBuilder {
    opts: Result<Opts>,
    tls: Option<Tls>,
    table: Result<TableName>,
    max_connections: usize,
}

impl std::fmt::Debug for MysqlStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MysqlStore")
            .field("table", &self.inner.table.plain())
            .finish_non_exhaustive()
    }
}

impl MysqlStore {
    /// A lease-mode dispatched mark (or delete): the ids that still held the lease.
    fn lease_mark(&self, lease: &Lease, ids: &[i64], delete: bool) -> Result<Vec<i64>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let ctx = "marking messages dispatched";
        let db = |e| Error::db(ctx, e);
        let token = lease.token.as_bytes();
        let sql = &self.inner.sql;
        let mark = |ids: &[i64]| match delete {
            true => sql.delete_dispatched(ids, token),
            false => sql.mark_dispatched(ids, token),
        };
        let mut tx = self.tx(ctx)?;
        tx.query_drop(mark(ids)).map_err(db)?;
        if tx.affected_rows() == ids.len() as u64 {
            tx.commit().map_err(db)?;
            return Ok(ids.to_vec());
        }
        // Some leases were lost (rare): no RETURNING here, so undo and mark exactly
        // the rows still held, locked first, to say which ones were ours.
        tx.rollback().map_err(db)?;
        let mut tx = self.tx(ctx)?;
        let held: Vec<i64> = tx.query(sql.held(ids, token)).map_err(db)?;
        if !held.is_empty() {
            tx.query_drop(mark(&held)).map_err(db)?;
        }
        tx.commit().map_err(db)?;
        Ok(held)
    }

    /// Connects with a URL (`mysql://user[:password]@host[:port]/db`) to the table `event_store`.
    pub fn connect(url: &str) -> Result<Self> {
        Self::builder(url).build()
    }

    /// A builder for table name, pool size and TLS. The URL's `ssl-mode`, `ssl-ca`,
    /// `ssl-cert`, `ssl-key` and `danger_accept_invalid_certs` are read here (see
    /// [`MysqlStore`]); every other parameter is the `mysql` crate's.
    pub fn builder(url: &str) -> MysqlStoreBuilder {
        let (opts, tls) = match crate::core::mysql_url::split(url) {
            Ok(u) => (
                Opts::from_url(&u.url).map_err(|e| Error::InvalidUrl {
                    url: redact_url(url),
                    reason: e.to_string(),
                }),
                u.tls,
            ),
            Err(e) => (Err(e), None),
        };
        MysqlStoreBuilder {
            opts,
            tls,
            table: Ok(TableName::default()),
            max_connections: 16,
        }
    }

    /// A builder from ready `mysql::Opts` (TLS and other settings are the caller's,
    /// unless [`MysqlStoreBuilder::tls`] replaces them).
    pub fn from_opts(opts: Opts) -> MysqlStoreBuilder {
        MysqlStoreBuilder {
            opts: Ok(opts),
            tls: None,
            table: Ok(TableName::default()),
            max_connections: 16,
        }
    }

    /// Creates or upgrades the table (same as [`Store::migrate`], without importing the trait).
    pub fn migrate(&self) -> Result<()> {
        Store::migrate(self)
    }

    /// The table this store uses.
    pub fn table(&self) -> &TableName {
        &self.inner.table
    }

    /// The store's own transactions run READ COMMITTED: no gap locks, so relays
    /// and enqueuers (also in the caller's REPEATABLE READ transactions) do not
    /// deadlock on the index ranges they touch.
    fn tx(&self, context: &'static str) -> Result<mysql::Transaction<'static>> {
        self.inner
            .pool
            .start_transaction(
                TxOpts::default().set_isolation_level(Some(IsolationLevel::ReadCommitted)),
            )
            .map_err(|e| connect_error(context, e))
    }

    /// Runs one statement in its own READ COMMITTED transaction; returns affected rows.
    fn write(&self, context: &'static str, stmt: String) -> Result<u64> {
        let mut tx = self.tx(context)?;
        tx.query_drop(stmt).map_err(|e| Error::db(context, e))?;
        let n = tx.affected_rows();
        tx.commit().map_err(|e| Error::db(context, e))?;
        Ok(n)
    }

    fn conn(&self) -> Result<mysql::PooledConn> {
        self.inner
            .pool
            .get_conn()
            .map_err(|e| connect_error("connecting to MySQL", e))
    }

    fn insert(&self, q: &mut impl Queryable, messages: &[Message]) -> Result<()> {
        enqueue::insert(q, &self.inner.sql, messages)
    }

    fn migrate_in(&self, conn: &mut mysql::PooledConn) -> Result<()> {
        let sql = &self.inner.sql;
        let t = &self.inner.table;
        let db = |e| Error::db("migrating the table", e);
        conn.query_drop(&sql.create).map_err(db)?;
        conn.query_drop(&sql.create_keys).map_err(db)?;
        conn.query_drop(sql.fill_keys()).map_err(db)?;
        let existing: Vec<String> = conn
            .exec(
                "SELECT column_name FROM information_schema.columns
                 WHERE table_schema = COALESCE(?, DATABASE()) AND table_name = ?",
                (t.schema(), t.table()),
            )
            .map_err(db)?;
        let has = |c: &str| existing.iter().any(|e| e.eq_ignore_ascii_case(c));
        let missing: Vec<String> = EXTRA_COLUMNS
            .iter()
            .filter(|(c, _)| !has(c))
            .map(|(c, def)| format!("ADD COLUMN {c} {def}"))
            .collect();
        if !missing.is_empty() {
            let go_rows = !has("status");
            conn.query_drop(format!("ALTER TABLE {} {}", sql.table, missing.join(", ")))
                .map_err(db)?;
            conn.query_drop(&sql.widen).map_err(db)?;
            if go_rows {
                conn.query_drop(&sql.upgrade_go_rows).map_err(db)?;
            }
        }
        self.utc_defaults(conn)?;
        let indexes: Vec<String> = conn
            .exec(
                "SELECT DISTINCT index_name FROM information_schema.statistics
                 WHERE table_schema = COALESCE(?, DATABASE()) AND table_name = ?",
                (t.schema(), t.table()),
            )
            .map_err(db)?;
        for (name, cols) in &sql.indexes {
            if !indexes.iter().any(|i| i.eq_ignore_ascii_case(name)) {
                conn.query_drop(format!("CREATE INDEX `{name}` ON {} ({cols})", sql.table))
                    .map_err(db)?;
            }
        }
        Ok(())
    }
}

impl MysqlStore {
    /// Tables of earlier versions: the time columns defaulted to the session's local
    /// time and rows were written with `NOW(6)`. Undelivered rows move to UTC (so
    /// that none waits hours for its backoff or lease after the upgrade), then the
    /// defaults become `UTC_TIMESTAMP(6)`. Dispatched rows keep their times: their
    /// cleanup may run a few hours early or late, once.
    fn utc_defaults(&self, conn: &mut mysql::PooledConn) -> Result<()> {
        let sql = &self.inner.sql;
        let t = &self.inner.table;
        let db = |e| Error::db("moving the table's times to UTC", e);
        let defaults: Vec<(String, String)> = conn
            .exec(sql.time_defaults, (t.schema(), t.table()))
            .map_err(db)?;
        if defaults.iter().all(|(_, d)| d.contains("utc_timestamp")) {
            return Ok(());
        }
        let offset_us: Option<i64> = conn
            .query_first(
                "SELECT CAST(TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), NOW(6)) AS SIGNED)",
            )
            .map_err(db)?;
        // Whole seconds: the two clock reads above may differ by a few microseconds.
        let offset_us = (offset_us.unwrap_or(0) + 500_000).div_euclid(1_000_000) * 1_000_000;
        if offset_us != 0 {
            conn.exec_drop(&sql.undelivered_to_utc, (offset_us, offset_us, offset_us))
                .map_err(db)?;
            log::info!(
                "outboxer: moved the undelivered rows of {} from local time (UTC{:+} s) to UTC",
                t.plain(),
                offset_us / 1_000_000
            );
        }
        conn.query_drop(&sql.utc_defaults).map_err(db)?;
        Ok(())
    }
}

impl MysqlStoreBuilder {
    /// The table (`name` or `schema.name`, plain identifiers); default `event_store`.
    pub fn table(mut self, name: &str) -> Self {
        self.table = TableName::parse(name);
        self
    }

    /// Most pooled connections (default 16).
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n;
        self
    }

    /// TLS for every connection, in place of the URL's `ssl-mode` settings (or the
    /// `Opts`' own): [`Tls::verify_full`] verifies the certificate and the host
    /// name, [`Tls::verify_ca`] the certificate only.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), outboxer::Error> {
    /// use outboxer::store::MysqlStore;
    /// use outboxer::tls::Tls;
    /// let store = MysqlStore::builder("mysql://app@db.internal:3306/app")
    ///     .tls(Tls::verify_full().ca_file("/etc/ssl/certs/db-ca.pem"))
    ///     .build()?;
    /// # Ok(()) }
    /// ```
    pub fn tls(mut self, tls: Tls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Validates the settings and opens one connection to check the server (and
    /// its TLS: a failure is [`Error::Tls`] naming the cause).
    pub fn build(self) -> Result<MysqlStore> {
        let table = self.table?;
        let constraints = PoolConstraints::new(0, self.max_connections.max(1))
            .ok_or_else(|| Error::config("max_connections", "must be at least 1"))?;
        let mut opts = OptsBuilder::from_opts(self.opts?)
            .tcp_connect_timeout(Some(Duration::from_secs(10)))
            // No reset when a connection goes back to the pool (a round trip, and
            // it drops the statement cache: every enqueue prepared its INSERT
            // again): the store's own statements leave no session state behind;
            // connections of callers' transactions and of claims in an unknown
            // state are reset (see `with_transaction` and `held`).
            .pool_opts(
                PoolOpts::default()
                    .with_constraints(constraints)
                    .with_reset_connection(false),
            );
        if let Some(tls) = &self.tls {
            tls.check_files("tls")?;
            opts = opts.ssl_opts(ssl_opts(tls));
        }
        crate::core::tls::ensure_default_provider();
        let opts = Opts::from(opts);
        let plaintext = opts.get_ssl_opts().is_none();
        let pool = Pool::new(opts).map_err(|e| Error::db("connecting to MySQL", e))?;
        let store = MysqlStore {
            inner: Arc::new(Inner {
                sql: Arc::new(MysqlSql::new(&table)),
                table,
                pool,
                idle_limit: OnceLock::new(),
            }),
        };
        match store.inner.pool.get_conn() {
            Ok(conn) => drop(conn),
            // MariaDB and MySQL deny an account that requires TLS like a wrong
            // password: the words cannot tell, so the context says it.
            Err(mysql::Error::MySqlError(e)) if plaintext && e.code == ACCESS_DENIED => {
                return Err(Error::db(
                    "connecting to MySQL in plaintext (access denied: a wrong \
                     password, or an account that requires TLS: see ssl-mode)",
                    mysql::Error::MySqlError(e),
                ))
            }
            Err(e) => return Err(connect_error("connecting to MySQL", e)),
        }
        Ok(store)
    }
}

/// ER_ACCESS_DENIED_ERROR.
const ACCESS_DENIED: u16 = 1045;

/// The driver's TLS settings for `tls` (`None`: plaintext).
fn ssl_opts(tls: &Tls) -> Option<SslOpts> {
    if !tls.enabled() {
        return None;
    }
    let mut ssl = SslOpts::default()
        .with_danger_skip_domain_validation(tls.mode() == TlsMode::VerifyCa)
        .with_danger_accept_invalid_certs(tls.accepts_invalid_certificates());
    if let Some(ca) = tls.ca_path() {
        ssl = ssl.with_root_cert_path(Some(ca.to_path_buf()));
    }
    if let Some((cert, key)) = tls.client_cert_paths() {
        let identity = ClientIdentity::new(cert.to_path_buf(), key.to_path_buf());
        ssl = ssl.with_client_identity(Some(identity));
    }
    Some(ssl)
}

/// A failure to connect: [`Error::Tls`] when it is about TLS (a setting to fix,
/// which `Outbox::start` and `build` refuse on), a database error otherwise.
pub(crate) fn connect_error(
    context: &'static str,
    e: impl std::error::Error + Send + Sync + 'static,
) -> Error {
    Error::tls_from("mysql", &e).unwrap_or_else(|| Error::db(context, e))
}

/// A claimed row; only an unreadable id fails (the row cannot even be named).
fn decode(mut row: Row) -> Result<Decoded> {
    let id: i64 = row
        .take_opt(0)
        .and_then(|r| r.ok())
        .ok_or_else(|| Error::db("decoding a claimed row", "no id"))?;
    Ok(decode_columns(id, &mut row).map_err(|reason| Undecodable { id, reason }))
}

fn decode_columns(id: i64, row: &mut Row) -> std::result::Result<StoredMessage, String> {
    fn col<T: mysql::prelude::FromValue>(
        row: &mut Row,
        i: usize,
        name: &str,
    ) -> std::result::Result<T, String> {
        row.take_opt::<T, usize>(i)
            .ok_or_else(|| format!("{name}: missing"))?
            .map_err(|e| format!("{name}: {e}"))
    }
    let uuid: Option<Vec<u8>> = col(row, 1, "message_id")?;
    let uuid = uuid
        .and_then(|b| uuid::Uuid::from_slice(&b).ok())
        .ok_or("message_id: not 16 bytes")?;
    // JSON arrives as text bytes (MariaDB stores it as LONGTEXT).
    let json = |name: &str, b: Option<Vec<u8>>| {
        b.map(|b| serde_json::from_slice(&b).map_err(|e| format!("{name}: invalid JSON: {e}")))
            .transpose()
    };
    let headers = json("headers", col(row, 3, "headers")?)?;
    let options = json("options", col(row, 4, "options")?)?;
    let attempts: i64 = col(row, 6, "attempts")?;
    let micros: i64 = col(row, 7, "created_at")?;
    Ok(StoredMessage {
        id,
        message_id: MessageId::from_uuid(uuid),
        payload: col(row, 2, "payload")?,
        headers: rows::headers_from_json(headers)?,
        options: rows::options_from_json(options)?,
        ordering_key: col(row, 5, "ordering_key")?,
        attempts: u32::try_from(attempts).unwrap_or(0),
        created_at: UNIX_EPOCH + Duration::from_micros(u64::try_from(micros).unwrap_or(0)),
    })
}

/// The ids of `(id, payload size)` rows, in order, up to `cap` bytes in all; the
/// first always fits.
fn within_bytes(rows: &[(i64, i64)], cap: usize) -> Vec<i64> {
    let cap = u64::try_from(cap).unwrap_or(u64::MAX);
    let mut total = 0u64;
    let mut ids = Vec::with_capacity(rows.len());
    for &(id, size) in rows {
        total = total.saturating_add(u64::try_from(size).unwrap_or(0));
        if total > cap && !ids.is_empty() {
            break;
        }
        ids.push(id);
    }
    ids
}

/// Text columns arrive as bytes.
fn lossy(b: Vec<u8>) -> String {
    String::from_utf8_lossy(&b).into_owned()
}

fn message_id_of(b: Option<Vec<u8>>) -> Option<MessageId> {
    b.and_then(|b| uuid::Uuid::from_slice(&b).ok())
        .map(MessageId::from_uuid)
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl Store for MysqlStore {
    fn migrate(&self) -> Result<()> {
        let mut conn = self.conn()?;
        // A session lock and DDL: reset the session when it goes back.
        conn.reset_connection(true);
        // One migrator at a time per table, across processes (DDL commits implicitly,
        // so a session lock, released below, not a transaction).
        // MySQL 8 refuses lock names over 64 characters.
        let mut name = format!("outboxer:{}", self.inner.table.plain());
        if name.len() > 64 {
            name = format!("outboxer:{:08x}", self.inner.table.lock_space() as u32);
        }
        let got: Option<i64> = conn
            .exec_first("SELECT GET_LOCK(?, 60)", (&name,))
            .map_err(|e| Error::db("locking for migrate", e))?;
        if got != Some(1) {
            return Err(Error::db(
                "locking for migrate",
                "GET_LOCK timed out after 60 s",
            ));
        }
        let r = self.migrate_in(&mut conn);
        let _ = conn.exec_drop("DO RELEASE_LOCK(?)", (&name,));
        r
    }

    fn enqueue(&self, messages: &[Message]) -> Result<()> {
        let mut tx = self.tx("beginning a transaction")?;
        self.insert(&mut tx, messages)?;
        tx.commit().map_err(|e| Error::db("committing messages", e))
    }

    fn claim(&self, lease: &Lease, limit: BatchLimit) -> Result<Claim> {
        let sql = &self.inner.sql;
        let db = |e| Error::db("claiming messages", e);
        let mut tx = self.tx("claiming messages")?;
        // 1. Candidates by a consistent read: the key check sees every pending row,
        //    also those other relays hold locks on, so SKIP LOCKED cannot reorder a key.
        let candidates: Vec<i64> = tx
            .exec(
                &sql.claim_candidates,
                (u64::try_from(limit.rows).unwrap_or(u64::MAX),),
            )
            .map_err(db)?;
        if candidates.is_empty() {
            tx.commit().map_err(db)?;
            return Ok(Claim::default());
        }
        // 2. Lock those still free; rows another relay is claiming are skipped. Past
        //    the byte cap the rest stay locked until COMMIT but are not leased.
        let locked: Vec<(i64, i64)> = tx.query(sql.claim_lock(&candidates)).map_err(db)?;
        let ids = within_bytes(&locked, limit.bytes);
        if ids.is_empty() {
            tx.commit().map_err(db)?;
            return Ok(Claim::default());
        }
        // 3. Lease, 4. read.
        let token = lease.token.as_bytes();
        tx.query_drop(sql.claim_update(&ids, token, micros(lease.duration)))
            .map_err(db)?;
        let rows: Vec<Row> = tx.query(sql.claim_read(&ids)).map_err(db)?;
        tx.commit().map_err(db)?;
        let decoded = rows.into_iter().map(decode).collect::<Result<Vec<_>>>()?;
        Ok(Claim::from_rows(decoded))
    }

    fn claim_locked(&self, lease: &Lease, limit: BatchLimit) -> Result<Option<LockedClaim>> {
        self.claim_held(lease, limit.rows, limit.bytes)
    }

    fn mark_dispatched(&self, lease: &Lease, ids: &[i64]) -> Result<Vec<i64>> {
        self.lease_mark(lease, ids, false)
    }

    fn delete_dispatched(&self, lease: &Lease, ids: &[i64]) -> Result<Vec<i64>> {
        self.lease_mark(lease, ids, true)
    }

    fn mark_failed(&self, lease: &Lease, failures: &[FailedAttempt]) -> Result<usize> {
        if failures.is_empty() {
            return Ok(0);
        }
        let db = |e| Error::db("recording failed attempts", e);
        let mut tx = self.tx("recording failed attempts")?;
        let mut n = 0;
        for f in failures {
            let stmt = self.inner.sql.mark_failed(
                f.id,
                lease.token.as_bytes(),
                micros(f.retry_in),
                failed_status(f.park, f.hold_key),
            );
            tx.exec_drop(stmt, (&f.error,)).map_err(db)?;
            n += tx.affected_rows() as usize;
        }
        tx.commit().map_err(db)?;
        Ok(n)
    }

    fn release(&self, lease: &Lease, ids: &[i64], retry_in: Duration) -> Result<usize> {
        if ids.is_empty() {
            return Ok(0);
        }
        let stmt = self
            .inner
            .sql
            .release(ids, lease.token.as_bytes(), micros(retry_in));
        Ok(self.write("releasing messages", stmt)? as usize)
    }

    fn cleanup(&self, older_than: Duration, limit: usize) -> Result<u64> {
        let context = "cleaning up dispatched messages";
        let mut tx = self.tx(context)?;
        tx.exec_drop(&self.inner.sql.cleanup, (micros(older_than), limit as u64))
            .map_err(|e| Error::db(context, e))?;
        let n = tx.affected_rows();
        tx.commit().map_err(|e| Error::db(context, e))?;
        Ok(n)
    }

    fn requeue(&self, which: &Requeue) -> Result<u64> {
        let stmt = match which {
            Requeue::AllParked => self.inner.sql.requeue(None),
            Requeue::Ids(ids) if ids.is_empty() => return Ok(0),
            Requeue::Ids(ids) => self.inner.sql.requeue(Some(ids)),
            Requeue::Matching(f) => {
                let context = "requeueing parked messages";
                let age = f.older_than.map(micros);
                let text = f.error_text();
                let mut tx = self.tx(context)?;
                tx.exec_drop(self.inner.sql.requeue_matching(), (age, age, text, text))
                    .map_err(|e| Error::db(context, e))?;
                let n = tx.affected_rows();
                tx.commit().map_err(|e| Error::db(context, e))?;
                return Ok(n);
            }
        };
        self.write("requeueing parked messages", stmt)
    }

    fn purge_parked(&self, older_than: Duration, limit: usize) -> Result<u64> {
        let context = "purging parked messages";
        let mut tx = self.tx(context)?;
        tx.exec_drop(
            &self.inner.sql.purge_parked,
            (micros(older_than), limit as u64),
        )
        .map_err(|e| Error::db(context, e))?;
        let n = tx.affected_rows();
        tx.commit().map_err(|e| Error::db(context, e))?;
        Ok(n)
    }

    fn missing_indexes(&self) -> Result<Option<Vec<String>>> {
        let t = &self.inner.table;
        let present: Vec<String> = self
            .conn()?
            .exec(
                "SELECT DISTINCT index_name FROM information_schema.statistics
                 WHERE table_schema = COALESCE(?, DATABASE()) AND table_name = ?",
                (t.schema(), t.table()),
            )
            .map_err(|e| Error::db("listing the table's indexes", e))?;
        let expected = self
            .inner
            .sql
            .indexes
            .iter()
            .map(|(n, _)| n.clone())
            .collect();
        Ok(Some(super::not_present(expected, &present)))
    }

    fn purgeable(&self, older_than: Duration) -> Result<Purgeable> {
        let age = micros(older_than);
        let row: Option<(i64, i64)> = self
            .conn()?
            .exec_first(&self.inner.sql.purgeable, (age, age))
            .map_err(|e| Error::db("counting purgeable messages", e))?;
        let (dispatched, parked) = row.unwrap_or_default();
        Ok(Purgeable {
            dispatched: u64::try_from(dispatched).unwrap_or(0),
            parked: u64::try_from(parked).unwrap_or(0),
        })
    }

    fn attempts_histogram(&self) -> Result<Vec<(u32, u64)>> {
        let rows: Vec<(i64, i64)> = self
            .conn()?
            .query(&self.inner.sql.attempts_histogram)
            .map_err(|e| Error::db("reading the attempts histogram", e))?;
        Ok(rows
            .into_iter()
            .map(|(a, n)| (u32::try_from(a).unwrap_or(0), u64::try_from(n).unwrap_or(0)))
            .collect())
    }

    fn parked(&self, limit: usize) -> Result<Vec<ParkedMessage>> {
        type Row = (
            i64,
            Option<Vec<u8>>,
            i64,
            Option<Vec<u8>>,
            Option<Vec<u8>>,
            i64,
        );
        let rows: Vec<Row> = self
            .conn()?
            .exec(&self.inner.sql.parked, (limit as u64,))
            .map_err(|e| Error::db("listing parked messages", e))?;
        Ok(rows
            .into_iter()
            .map(
                |(id, message_id, attempts, last_error, ordering_key, holds)| ParkedMessage {
                    id,
                    message_id: message_id_of(message_id),
                    attempts: u32::try_from(attempts).unwrap_or(0),
                    last_error: last_error.map(lossy),
                    ordering_key: ordering_key.map(lossy),
                    holds_key: holds == 1,
                },
            )
            .collect())
    }

    fn skip(&self, ids: &[i64]) -> Result<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        self.write("skipping parked messages", self.inner.sql.skip(ids))
    }

    fn held_keys(&self, limit: usize) -> Result<Vec<HeldKey>> {
        type Row = (Vec<u8>, i64, Option<Vec<u8>>, Option<Vec<u8>>, i64);
        let rows: Vec<Row> = self
            .conn()?
            .exec(&self.inner.sql.held_keys, (limit as u64,))
            .map_err(|e| Error::db("listing held keys", e))?;
        Ok(rows
            .into_iter()
            .map(
                |(ordering_key, parked_id, message_id, last_error, waiting)| HeldKey {
                    ordering_key: lossy(ordering_key),
                    parked_id,
                    message_id: message_id_of(message_id),
                    last_error: last_error.map(lossy),
                    waiting: u64::try_from(waiting).unwrap_or(0),
                },
            )
            .collect())
    }

    fn table_name(&self) -> String {
        self.table().plain()
    }

    fn stats(&self) -> Result<Stats> {
        type Row = (i64, i64, i64, i64, i64, i64, i64, Option<i64>);
        let row: Option<Row> = self
            .conn()?
            .query_first(&self.inner.sql.stats)
            .map_err(|e| Error::db("reading stats", e))?;
        let (pending, dispatched, parked, leased, age_us, held, scheduled, due_us) =
            row.unwrap_or_default();
        let count = |v: i64| u64::try_from(v).unwrap_or(0);
        Ok(Stats {
            pending: count(pending),
            dispatched: count(dispatched),
            parked: count(parked),
            leased: count(leased),
            oldest_pending_age: Duration::from_micros(count(age_us)),
            held_keys: count(held),
            scheduled: count(scheduled),
            next_due_in: due_us.map(|us| Duration::from_micros(count(us))),
        })
    }

    fn next_due(&self) -> Result<Option<Duration>> {
        let due_us: Option<Option<i64>> = self
            .conn()?
            .query_first(&self.inner.sql.next_due)
            .map_err(|e| Error::db("reading the next due time", e))?;
        Ok(due_us
            .flatten()
            .map(|us| Duration::from_micros(u64::try_from(us).unwrap_or(0))))
    }
}

impl TxStore for MysqlStore {
    type Tx<'a> = mysql::Transaction<'a>;

    fn enqueue_in_tx(&self, tx: &mut mysql::Transaction<'_>, messages: &[Message]) -> Result<()> {
        self.insert(tx, messages)
    }

    fn with_transaction<R, E, F>(&self, f: F) -> std::result::Result<R, E>
    where
        F: FnOnce(&mut mysql::Transaction<'_>) -> std::result::Result<R, E>,
        E: From<Error>,
    {
        let mut conn = self.conn()?;
        // The caller may change the session: reset it when it goes back.
        conn.reset_connection(true);
        let tx = conn
            .start_transaction(TxOpts::default())
            .map_err(|e| connect_error("beginning a transaction", e))?;
        run_in(tx, f)
    }
}

impl Finish for mysql::Transaction<'_> {
    fn commit(self) -> Result<()> {
        mysql::Transaction::commit(self).map_err(|e| Error::db("committing", e))
    }
    fn rollback(self) -> Result<()> {
        mysql::Transaction::rollback(self).map_err(|e| Error::db("rolling back", e))
    }
}
