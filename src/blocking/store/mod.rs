//! The store seam: where messages are enqueued and claimed. Each database is
//! behind its own cargo feature.

use crate::message::Message;
use crate::Result;
use std::time::Duration;

// The driver crates, re-exported so that callers join transactions with the
// exact version the store was built against.
#[cfg(feature = "mysql")]
#[cfg_attr(docsrs, doc(cfg(feature = "mysql")))]
pub use ::mysql;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use ::postgres;
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub use ::rusqlite;
#[cfg(feature = "sqlserver")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlserver")))]
pub use ::tiberius;

#[cfg(feature = "postgres")]
#[path = "postgres.rs"]
mod postgres_store;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use self::postgres_store::{PostgresStore, PostgresStoreBuilder};

#[cfg(feature = "mysql")]
#[path = "mysql.rs"]
mod mysql_store;
#[cfg(feature = "mysql")]
#[cfg_attr(docsrs, doc(cfg(feature = "mysql")))]
pub use self::mysql_store::{MysqlStore, MysqlStoreBuilder};

#[cfg(feature = "sqlite")]
#[path = "sqlite/mod.rs"]
mod sqlite_store;
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub use self::sqlite_store::{SqliteStore, SqliteStoreBuilder};

#[cfg(feature = "sqlserver")]
#[path = "sqlserver/mod.rs"]
mod sqlserver_store;
#[cfg(all(feature = "sqlserver", feature = "async"))]
pub(crate) use self::sqlserver_store::{open_client, Client as TdsClient};
#[cfg(feature = "sqlserver")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlserver")))]
pub use self::sqlserver_store::{SqlServerStore, SqlServerStoreBuilder, SqlServerTx};

/// A claim's ownership token: rows are marked only with the token that claimed them,
/// so a relay whose lease expired cannot overwrite a newer claim.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    /// Unique per claim.
    pub token: uuid::Uuid,
    /// How long the claim is owned.
    pub duration: Duration,
}

impl Lease {
    /// A fresh token for a claim of `duration`.
    pub fn new(duration: Duration) -> Self {
        Lease {
            token: uuid::Uuid::new_v4(),
            duration,
        }
    }
}

/// How much one claim may take: at most `rows` messages and, past the first
/// message, at most `bytes` of payload, so that a backlog of large messages cannot
/// fill the relay's memory. A single message larger than `bytes` is still claimed,
/// alone.
///
/// ```
/// use outboxer::store::BatchLimit;
/// let limit = BatchLimit::from(100);
/// assert_eq!(limit.rows, 100);
/// assert_eq!(limit.bytes, BatchLimit::DEFAULT_BYTES);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchLimit {
    /// Most messages in one claim.
    pub rows: usize,
    /// Most payload bytes in one claim (the first message always fits).
    pub bytes: usize,
}

impl BatchLimit {
    /// The relay's default byte cap per batch: 16 MiB.
    pub const DEFAULT_BYTES: usize = 16 * 1024 * 1024;
}

impl From<usize> for BatchLimit {
    /// `rows` messages, [`BatchLimit::DEFAULT_BYTES`] bytes.
    fn from(rows: usize) -> Self {
        BatchLimit {
            rows,
            bytes: Self::DEFAULT_BYTES,
        }
    }
}

/// A claimed row that cannot be turned into a message (a hand-written row whose
/// `headers` is `'[]'`, say). The relay records it as a failed attempt with a
/// permanent error, so it parks, while the rest of the claim is published.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Undecodable {
    /// Row id.
    pub id: i64,
    /// Which column is wrong and why.
    pub reason: String,
}

/// What one claim leased: the messages to publish, in id order, and the rows of
/// the claim that could not be decoded.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Claim {
    /// Decoded messages, in id order.
    pub messages: Vec<crate::message::StoredMessage>,
    /// Leased rows that could not be decoded.
    pub undecodable: Vec<Undecodable>,
}

impl Claim {
    /// True when the claim leased nothing.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty() && self.undecodable.is_empty()
    }

    /// Rows leased (decoded or not).
    pub fn len(&self) -> usize {
        self.messages.len() + self.undecodable.len()
    }

    /// A claim from rows decoded one by one, each list in id order.
    #[cfg(any(
        feature = "postgres",
        feature = "mysql",
        feature = "sqlite",
        feature = "sqlserver"
    ))]
    pub(crate) fn from_rows(rows: impl IntoIterator<Item = Decoded>) -> Claim {
        let mut claim = Claim::default();
        for row in rows {
            match row {
                Ok(m) => claim.messages.push(m),
                Err(u) => claim.undecodable.push(u),
            }
        }
        claim.messages.sort_by_key(|m| m.id);
        claim.undecodable.sort_by_key(|u| u.id);
        claim
    }
}

/// One claimed row: a message, or why it cannot be one.
#[cfg(any(
    feature = "postgres",
    feature = "mysql",
    feature = "sqlite",
    feature = "sqlserver"
))]
pub(crate) type Decoded = std::result::Result<crate::message::StoredMessage, Undecodable>;

/// A failed attempt to record.
#[derive(Clone, Debug, PartialEq)]
pub struct FailedAttempt {
    /// Row id.
    pub id: i64,
    /// The error text (stored in `last_error`).
    pub error: String,
    /// When to try again (ignored when parked).
    pub retry_in: Duration,
    /// Move to status `parked`.
    pub park: bool,
    /// When parked: keep holding the ordering key, so that the key's later messages
    /// wait ([`crate::OnPark::HoldKey`]); false releases the key at once.
    pub hold_key: bool,
}

/// Which parked messages `requeue` brings back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Requeue {
    /// Every parked message.
    AllParked,
    /// These row ids (only those that are parked).
    Ids(Vec<i64>),
    /// The parked messages that meet every condition of the filter (an empty
    /// filter: every parked message).
    Matching(ParkedFilter),
}

/// Which parked messages [`Requeue::Matching`] selects; every condition given must
/// hold.
///
/// ```no_run
/// # fn demo(store: &impl outboxer::Store) -> outboxer::Result<()> {
/// use outboxer::store::{ParkedFilter, Requeue};
/// use std::time::Duration;
///
/// // Parked more than an hour ago by a refusal that has been fixed since.
/// let which = ParkedFilter::new()
///     .older_than(Duration::from_secs(3600))
///     .error_contains("NOT_FOUND - no exchange");
/// let moved = store.requeue(&Requeue::Matching(which))?;
/// println!("requeued {moved} parked message(s)");
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ParkedFilter {
    /// Enqueued (`created_at`) more than this long ago, by the database clock.
    pub older_than: Option<Duration>,
    /// `last_error` contains this text, ignoring the case of ASCII letters
    /// (of every letter on PostgreSQL and MySQL). Empty: no condition.
    pub error_contains: Option<String>,
}

impl ParkedFilter {
    /// A filter without conditions (every parked message).
    pub fn new() -> Self {
        Self::default()
    }

    /// Only messages enqueued more than `age` ago (by the database clock).
    pub fn older_than(mut self, age: Duration) -> Self {
        self.older_than = Some(age);
        self
    }

    /// Only messages whose `last_error` contains `text` (case-insensitive).
    pub fn error_contains(mut self, text: impl Into<String>) -> Self {
        self.error_contains = Some(text.into());
        self
    }

    /// The error text to look for, `None` when there is no such condition.
    pub(crate) fn error_text(&self) -> Option<&str> {
        self.error_contains.as_deref().filter(|t| !t.is_empty())
    }
}

/// What [`Store::purgeable`] counts: rows older than a cutoff that a purge
/// would delete.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Purgeable {
    /// Dispatched before the cutoff (`dispatched_at`), as [`Store::cleanup`] deletes.
    pub dispatched: u64,
    /// Parked or skipped, enqueued before the cutoff (`created_at`), as
    /// [`Store::purge_parked`] deletes.
    pub parked: u64,
}

/// A snapshot of the table.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats {
    /// Waiting to be published (includes leased and backing-off rows).
    pub pending: u64,
    /// Of the pending ones, currently leased by a relay. Rows held by row-lock
    /// claims ([`ClaimMode::RowLocks`](crate::ClaimMode::RowLocks)) are not
    /// counted: their locks are invisible to other sessions.
    pub leased: u64,
    /// Published and not yet cleaned up.
    pub dispatched: u64,
    /// Given up after `max_attempts` or a permanent error (holding their key or
    /// skipped).
    pub parked: u64,
    /// Age of the oldest pending message (zero when none).
    pub oldest_pending_age: Duration,
    /// Ordering keys held by a parked head: their later messages wait until the
    /// head is requeued or skipped (see [`Store::held_keys`]).
    pub held_keys: u64,
    /// Of the pending ones, not publishable yet: scheduled for later
    /// ([`Message::delay`](crate::Message::delay),
    /// [`Message::deliver_at`](crate::Message::deliver_at)), or backing off after a
    /// failed attempt or an outage (`available_at` in the future).
    pub scheduled: u64,
    /// How long until the earliest of the [`scheduled`](Stats::scheduled) ones is
    /// due, by the database clock; `None` when none is scheduled.
    pub next_due_in: Option<Duration>,
}

/// A parked message, as listed by [`Store::parked`]: what an operator needs to
/// decide whether to requeue it.
///
/// ```
/// use outboxer::store::ParkedMessage;
/// let p = ParkedMessage {
///     id: 7,
///     message_id: None,
///     attempts: 10,
///     last_error: Some("nack".into()),
///     ordering_key: Some("order-42".into()),
///     holds_key: true,
/// };
/// assert!(p.holds_key, "order-42's later messages wait for it");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParkedMessage {
    /// Row id (what `requeue` takes).
    pub id: i64,
    /// The id sent on the wire (`None` only for rows without one, e.g. hand-written
    /// rows on a store whose column allows NULL).
    pub message_id: Option<crate::MessageId>,
    /// Failed attempts.
    pub attempts: u32,
    /// The error of the last attempt.
    pub last_error: Option<String>,
    /// Its ordering key, if any.
    pub ordering_key: Option<String>,
    /// True when it holds its ordering key: it has one and was parked holding it
    /// (the default), so the key's later messages wait for it. False for messages
    /// without a key and for skipped ones ([`Store::skip`], `OnPark::ReleaseKey`).
    pub holds_key: bool,
}

/// An ordering key held by its parked head, as listed by [`Store::held_keys`].
///
/// ```
/// use outboxer::store::HeldKey;
/// let k = HeldKey {
///     ordering_key: "order-42".into(),
///     parked_id: 7,
///     message_id: None,
///     last_error: Some("exchange not found".into()),
///     waiting: 3,
/// };
/// assert_eq!(k.waiting, 3);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldKey {
    /// The key.
    pub ordering_key: String,
    /// Row id of the parked head (what `requeue` and `skip` take).
    pub parked_id: i64,
    /// The head's message id (`None` only for hand-written rows without one).
    pub message_id: Option<crate::MessageId>,
    /// The head's last error.
    pub last_error: Option<String>,
    /// Later messages of the key waiting behind it (pending).
    pub waiting: u64,
}

/// A claim held by its rows' locks in an open transaction
/// ([`ClaimMode::RowLocks`](crate::ClaimMode::RowLocks)): the outcomes are
/// written in that transaction, and [`HeldClaim::commit`] makes them visible at
/// once. Dropping it without a commit rolls back: every row is claimable again
/// at once, no attempt counted (what a dead relay's closed connection does too).
///
/// Statements run in order on one connection; after a failed one the
/// transaction is lost (drop it).
pub trait HeldClaim: Send {
    /// Records failed attempts (backoff or park) of held rows.
    fn mark_failed(&mut self, failures: &[FailedAttempt]) -> Result<usize>;

    /// Gives held rows back after `retry_in` without counting an attempt (zero:
    /// nothing to write, the commit unlocks them).
    fn release(&mut self, ids: &[i64], retry_in: Duration) -> Result<usize>;

    /// Marks the published rows dispatched (or deletes them when `delete`),
    /// then commits; returns the ids marked. Before the commit returns, none of
    /// the transaction's writes is visible.
    fn commit(self: Box<Self>, dispatched: &[i64], delete: bool) -> Result<Vec<i64>>;
}

/// What [`Store::claim_locked`] returns: the claim and the transaction that holds
/// its rows.
pub struct LockedClaim {
    /// The rows, as [`Store::claim`] returns them.
    pub claim: Claim,
    /// The open transaction holding them.
    pub held: Box<dyn HeldClaim>,
}

impl std::fmt::Debug for LockedClaim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockedClaim")
            .field("claim", &self.claim)
            .finish_non_exhaustive()
    }
}

/// Wake-ups from other processes (PostgreSQL LISTEN/NOTIFY). A hint only:
/// the table stays the source of truth.
pub trait WakeListener: Send {
    /// Waits up to `timeout`; `Ok(true)` when a notification arrived.
    fn wait(&mut self, timeout: Duration) -> Result<bool>;
}

/// A database that holds the outbox table: everything the relay and the
/// `outboxer` command need (enqueue in the store's own transaction, claim, mark,
/// release, cleanup, stats and the operator's actions).
///
/// Object safe: `Box<dyn Store>` and `Arc<dyn Store>` are stores too, so a program
/// that picks its database at run time holds one type (the command does).
/// Joining the caller's transaction needs the transaction's type: that is
/// [`TxStore`].
///
/// Implementations must be safe to use from several threads and processes at once:
/// claims are leases, and marks check the lease token.
///
/// ```no_run
/// # fn main() -> outboxer::Result<()> {
/// use outboxer::store::{PostgresStore, SqliteStore, Store};
///
/// let url = std::env::var("OUTBOX_DB").unwrap_or_default();
/// let store: Box<dyn Store> = if url.starts_with("postgres://") {
///     Box::new(PostgresStore::connect(&url)?)
/// } else {
///     Box::new(SqliteStore::open("outbox.db")?)
/// };
/// store.migrate()?;
/// let outbox = outboxer::Outbox::builder().store(store).build()?;
/// println!("{:?}", outbox.stats()?);
/// # Ok(()) }
/// ```
pub trait Store: Send + Sync + 'static {
    /// Creates or upgrades the table and its indexes; idempotent and safe under
    /// concurrent callers.
    fn migrate(&self) -> Result<()>;

    /// Inserts messages in one transaction of the store's own.
    fn enqueue(&self, messages: &[Message]) -> Result<()>;

    /// Claims up to `limit` publishable messages under `lease`, in id order, at most
    /// one per ordering key (the earliest pending one). A row that cannot be decoded
    /// is leased too and returned in [`Claim::undecodable`]; it never fails the claim.
    fn claim(&self, lease: &Lease, limit: BatchLimit) -> Result<Claim>;

    /// Claims like [`Store::claim`], but holds the rows by their locks in a
    /// transaction left open until the [`HeldClaim`] commits or is dropped; the
    /// server ends the transaction when it stays idle longer than
    /// `lease.duration` (the relay finishes well before). `Ok(None)`: this
    /// store cannot hold claims so, and the relay leases instead (the default).
    fn claim_locked(&self, lease: &Lease, limit: BatchLimit) -> Result<Option<LockedClaim>> {
        let _ = (lease, limit);
        Ok(None)
    }

    /// Marks claimed messages dispatched; returns the ids that still held the lease
    /// (the others were taken over by another relay after the lease expired).
    fn mark_dispatched(&self, lease: &Lease, ids: &[i64]) -> Result<Vec<i64>>;

    /// Like [`Store::mark_dispatched`], but deletes the rows instead of keeping
    /// them as dispatched (a retention of zero). The default keeps them (for the
    /// cleanup to delete): stores override it with a `DELETE`.
    fn delete_dispatched(&self, lease: &Lease, ids: &[i64]) -> Result<Vec<i64>> {
        self.mark_dispatched(lease, ids)
    }

    /// Records failed attempts (backoff or park); returns rows that still held the lease.
    fn mark_failed(&self, lease: &Lease, failures: &[FailedAttempt]) -> Result<usize>;

    /// Gives claimed messages back without counting an attempt; they can be
    /// claimed again after `retry_in` (zero: at once).
    fn release(&self, lease: &Lease, ids: &[i64], retry_in: Duration) -> Result<usize>;

    /// Deletes up to `limit` dispatched messages older than `older_than` (cutoff taken
    /// from the database clock at each call); returns how many were deleted.
    fn cleanup(&self, older_than: Duration, limit: usize) -> Result<u64>;

    /// Moves parked messages back to pending with a fresh attempt budget. A
    /// requeued key head has its key's lowest id, so it is claimed before the
    /// key's later messages: key order is kept.
    fn requeue(&self, which: &Requeue) -> Result<u64>;

    /// Gives parked key heads up: they stay parked (status `skipped`: listed,
    /// counted, requeueable and purgeable like any parked message) but no longer
    /// hold their keys, so the keys' later messages flow. Only rows that are parked
    /// and not skipped yet move; returns how many did.
    ///
    /// ```no_run
    /// # fn demo(store: &impl outboxer::Store) -> outboxer::Result<()> {
    /// for held in store.held_keys(100)? {
    ///     println!("key {} waits for row {}: {:?}", held.ordering_key, held.parked_id, held.last_error);
    /// }
    /// let heads: Vec<i64> = store.held_keys(100)?.iter().map(|k| k.parked_id).collect();
    /// store.skip(&heads)?;
    /// # Ok(()) }
    /// ```
    fn skip(&self, ids: &[i64]) -> Result<u64>;

    /// Up to `limit` ordering keys whose earliest undelivered message is parked and
    /// holds the key, oldest head first, with how many later messages wait.
    fn held_keys(&self, limit: usize) -> Result<Vec<HeldKey>>;

    /// Deletes up to `limit` parked messages enqueued (`created_at`) more than
    /// `older_than` ago, by the database clock; returns how many were deleted.
    /// Pending and dispatched rows are never touched. For operators who have read
    /// the parked messages' errors and decided not to requeue them.
    ///
    /// ```no_run
    /// # fn demo(store: &impl outboxer::Store) -> outboxer::Result<()> {
    /// use std::time::Duration;
    /// let deleted = store.purge_parked(Duration::from_secs(30 * 24 * 3600), 1000)?;
    /// println!("deleted {deleted} parked message(s) older than 30 days");
    /// # Ok(()) }
    /// ```
    fn purge_parked(&self, older_than: Duration, limit: usize) -> Result<u64>;

    /// How many rows [`Store::cleanup`] and [`Store::purge_parked`] with this age
    /// would delete now (by the database clock), deleting nothing: what a dry run
    /// of a purge shows.
    ///
    /// ```no_run
    /// # fn demo(store: &impl outboxer::Store) -> outboxer::Result<()> {
    /// use std::time::Duration;
    /// let p = store.purgeable(Duration::from_secs(7 * 24 * 3600))?;
    /// println!("{} dispatched and {} parked message(s) are older than 7 days", p.dispatched, p.parked);
    /// # Ok(()) }
    /// ```
    fn purgeable(&self, older_than: Duration) -> Result<Purgeable>;

    /// Counts by status and the age of the oldest pending message.
    fn stats(&self) -> Result<Stats>;

    /// How many undelivered (pending or parked) messages have made how many failed
    /// attempts: `(attempts, count)` pairs in ascending order of attempts, only
    /// non-zero counts.
    ///
    /// ```no_run
    /// # fn demo(store: &impl outboxer::Store) -> outboxer::Result<()> {
    /// for (attempts, count) in store.attempts_histogram()? {
    ///     println!("{count} message(s) failed {attempts} time(s)");
    /// }
    /// # Ok(()) }
    /// ```
    fn attempts_histogram(&self) -> Result<Vec<(u32, u64)>>;

    /// Up to `limit` parked messages (skipped ones too), oldest (lowest id) first,
    /// with their last error.
    ///
    /// ```no_run
    /// # fn demo(store: &impl outboxer::Store) -> outboxer::Result<()> {
    /// use outboxer::store::Requeue;
    /// let parked = store.parked(20)?;
    /// for p in &parked {
    ///     println!("row {} after {} attempts: {:?}", p.id, p.attempts, p.last_error);
    /// }
    /// store.requeue(&Requeue::Ids(parked.iter().map(|p| p.id).collect()))?;
    /// # Ok(()) }
    /// ```
    fn parked(&self, limit: usize) -> Result<Vec<ParkedMessage>>;

    /// How long until the earliest pending message that is not publishable yet
    /// (`available_at` in the future: scheduled, or backing off) becomes due, by the
    /// database clock; `None` when there is none. An idle relay asks after an empty
    /// claim, and sleeps until then rather than for its whole check interval.
    /// The default, `None`, makes such a relay poll at its check interval only.
    ///
    /// ```no_run
    /// # fn demo(store: &impl outboxer::Store) -> outboxer::Result<()> {
    /// if let Some(due) = store.next_due()? {
    ///     println!("the next scheduled message is due in {due:?}");
    /// }
    /// # Ok(()) }
    /// ```
    fn next_due(&self) -> Result<Option<Duration>> {
        Ok(None)
    }

    /// A listener for wake-ups sent by other processes, if the database has them.
    fn wake_listener(&self) -> Result<Option<Box<dyn WakeListener>>> {
        Ok(None)
    }

    /// The indexes [`Store::migrate`] creates that the table lacks, by name (empty:
    /// all there); `None` when this store cannot tell. `outboxer check` reports
    /// them: a table without them works, slowly.
    ///
    /// ```no_run
    /// # fn demo(store: &impl outboxer::Store) -> outboxer::Result<()> {
    /// if let Some(missing) = store.missing_indexes()? {
    ///     if !missing.is_empty() {
    ///         println!("run migrate: indexes missing: {}", missing.join(", "));
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    fn missing_indexes(&self) -> Result<Option<Vec<String>>> {
        Ok(None)
    }

    /// The outbox table's name as written (`schema.table` or `table`): the
    /// `table` label of the relay's metrics. The default is `outbox`.
    fn table_name(&self) -> String {
        "outbox".into()
    }
}

/// A time until due, in seconds as a database computed it, as a duration (a
/// negative or NaN value is zero).
#[cfg(any(
    feature = "postgres",
    feature = "mysql",
    feature = "sqlite",
    feature = "sqlserver"
))]
pub(crate) fn due_in(secs: f64) -> Duration {
    Duration::try_from_secs_f64(secs.max(0.0)).unwrap_or(Duration::ZERO)
}

/// Which of `expected` index names are not among `present` (ASCII case ignored).
#[cfg(any(
    feature = "postgres",
    feature = "mysql",
    feature = "sqlite",
    feature = "sqlserver"
))]
pub(crate) fn not_present(expected: Vec<String>, present: &[String]) -> Vec<String> {
    expected
        .into_iter()
        .filter(|e| !present.iter().any(|p| p.eq_ignore_ascii_case(e)))
        .collect()
}

/// A [`Store`] whose messages can join the caller's transaction: the part of the
/// store seam that names the driver's transaction type (so it is not object
/// safe). [`Outbox::send_within_tx`](crate::Outbox::send_within_tx) and
/// [`Outbox::transaction`](crate::Outbox::transaction) need it; everything else
/// needs only [`Store`].
pub trait TxStore: Store {
    /// The caller's transaction type that messages can join
    /// (e.g. `postgres::Transaction`).
    type Tx<'a>;

    /// Inserts messages inside the caller's transaction: they commit or roll back with it.
    fn enqueue_in_tx(&self, tx: &mut Self::Tx<'_>, messages: &[Message]) -> Result<()>;

    /// Begins a transaction, runs `f`, commits on `Ok`, rolls back on `Err`.
    fn with_transaction<R, E, F>(&self, f: F) -> std::result::Result<R, E>
    where
        F: FnOnce(&mut Self::Tx<'_>) -> std::result::Result<R, E>,
        E: From<crate::Error>;
}

/// A driver's transaction, as the closure form ends it (the blocking twin of
/// `async_impl::store::Finish`).
#[cfg(any(
    feature = "postgres",
    feature = "mysql",
    feature = "sqlite",
    feature = "sqlserver"
))]
pub(crate) trait Finish: Sized {
    fn commit(self) -> Result<()>;
    fn rollback(self) -> Result<()>;
}

/// The closure form of every store's [`TxStore::with_transaction`]: runs `f` with
/// `tx`, then commits on `Ok` and rolls back on `Err` (a failed rollback is
/// logged: the server rolls back when the connection ends anyway). The async
/// stores' `run_in` has the same shape.
#[cfg(any(
    feature = "postgres",
    feature = "mysql",
    feature = "sqlite",
    feature = "sqlserver"
))]
pub(crate) fn run_in<T, R, E, F>(mut tx: T, f: F) -> std::result::Result<R, E>
where
    T: Finish,
    F: FnOnce(&mut T) -> std::result::Result<R, E>,
    E: From<crate::Error>,
{
    match f(&mut tx) {
        Ok(r) => {
            tx.commit()?;
            Ok(r)
        }
        Err(e) => {
            if let Err(re) = tx.rollback() {
                log::warn!("outboxer: rollback failed: {re}");
            }
            Err(e)
        }
    }
}

/// Forwards every [`Store`] method to the store behind a pointer, so that
/// `Box<dyn Store>` and `Arc<dyn Store>` (and boxes of concrete stores) are stores.
macro_rules! forward_store {
    ($($ptr:ident)::+) => {
        impl<S: Store + ?Sized> Store for $($ptr)::+<S> {
            fn migrate(&self) -> Result<()> {
                (**self).migrate()
            }
            fn enqueue(&self, messages: &[Message]) -> Result<()> {
                (**self).enqueue(messages)
            }
            fn claim(&self, lease: &Lease, limit: BatchLimit) -> Result<Claim> {
                (**self).claim(lease, limit)
            }
            fn claim_locked(&self, lease: &Lease, limit: BatchLimit) -> Result<Option<LockedClaim>> {
                (**self).claim_locked(lease, limit)
            }
            fn mark_dispatched(&self, lease: &Lease, ids: &[i64]) -> Result<Vec<i64>> {
                (**self).mark_dispatched(lease, ids)
            }
            fn delete_dispatched(&self, lease: &Lease, ids: &[i64]) -> Result<Vec<i64>> {
                (**self).delete_dispatched(lease, ids)
            }
            fn mark_failed(&self, lease: &Lease, failures: &[FailedAttempt]) -> Result<usize> {
                (**self).mark_failed(lease, failures)
            }
            fn release(&self, lease: &Lease, ids: &[i64], retry_in: Duration) -> Result<usize> {
                (**self).release(lease, ids, retry_in)
            }
            fn cleanup(&self, older_than: Duration, limit: usize) -> Result<u64> {
                (**self).cleanup(older_than, limit)
            }
            fn requeue(&self, which: &Requeue) -> Result<u64> {
                (**self).requeue(which)
            }
            fn skip(&self, ids: &[i64]) -> Result<u64> {
                (**self).skip(ids)
            }
            fn held_keys(&self, limit: usize) -> Result<Vec<HeldKey>> {
                (**self).held_keys(limit)
            }
            fn purge_parked(&self, older_than: Duration, limit: usize) -> Result<u64> {
                (**self).purge_parked(older_than, limit)
            }
            fn purgeable(&self, older_than: Duration) -> Result<Purgeable> {
                (**self).purgeable(older_than)
            }
            fn stats(&self) -> Result<Stats> {
                (**self).stats()
            }
            fn attempts_histogram(&self) -> Result<Vec<(u32, u64)>> {
                (**self).attempts_histogram()
            }
            fn parked(&self, limit: usize) -> Result<Vec<ParkedMessage>> {
                (**self).parked(limit)
            }
            fn next_due(&self) -> Result<Option<Duration>> {
                (**self).next_due()
            }
            fn wake_listener(&self) -> Result<Option<Box<dyn WakeListener>>> {
                (**self).wake_listener()
            }
            fn missing_indexes(&self) -> Result<Option<Vec<String>>> {
                (**self).missing_indexes()
            }
            fn table_name(&self) -> String {
                (**self).table_name()
            }
        }
    };
}
forward_store!(Box);
forward_store!(std::sync::Arc);
