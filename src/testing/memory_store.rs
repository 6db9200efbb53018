//! An outbox table in memory, with the semantics of the real stores and faults
//! that a test can inject.

use crate::blocking::store::{
    BatchLimit, Claim, FailedAttempt, HeldKey, Lease, ParkedMessage, Purgeable, Requeue, Stats,
    Store, TxStore, Undecodable,
};
use crate::message::{Headers, Message, MessageId, Options, StoredMessage};
use crate::{Error, Result};
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// Where a row is in its life, as the `status` column says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RowStatus {
    /// Waiting to be published (also while leased or backing off).
    Pending,
    /// Published.
    Dispatched,
    /// Given up; holds its ordering key.
    Parked,
    /// Given up; its key was released (`skip`, or `OnPark::ReleaseKey`).
    Skipped,
}

/// A store operation whose next calls can be made to fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StoreOp {
    /// `enqueue`, `enqueue_in_tx` commits and `with_transaction` commits.
    Enqueue,
    /// `claim`.
    Claim,
    /// `mark_dispatched`: fails after the broker accepted the messages, as a
    /// relay that crashes between publish and mark would.
    MarkDispatched,
    /// `mark_failed`.
    MarkFailed,
    /// `release`.
    Release,
    /// `cleanup`.
    Cleanup,
}

/// One row of the table, as a test reads it back.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// Row id: the relay's order.
    pub id: i64,
    /// The id sent on the wire.
    pub message_id: MessageId,
    /// The payload.
    pub payload: Vec<u8>,
    /// The headers.
    pub headers: Headers,
    /// The routing options.
    pub options: Options,
    /// The ordering key.
    pub ordering_key: Option<String>,
    /// Where the row is.
    pub status: RowStatus,
    /// Failed attempts.
    pub attempts: u32,
    /// The error of the last failed attempt.
    pub last_error: Option<String>,
    /// True while a relay holds a lease on it.
    pub leased: bool,
}

#[derive(Clone)]
struct Entry {
    row: Row,
    created_at: SystemTime,
    created: Instant,
    available_at: Instant,
    locked_by: Option<uuid::Uuid>,
    locked_until: Option<Instant>,
    dispatched_at: Option<Instant>,
    /// Set by [`MemoryStore::corrupt`]: the row cannot be decoded.
    corrupt: Option<String>,
}

#[derive(Default)]
struct State {
    rows: BTreeMap<i64, Entry>,
    next_id: i64,
    faults: HashMap<StoreOp, u32>,
}

impl State {
    fn fault(&mut self, op: StoreOp) -> Result<()> {
        match self.faults.get_mut(&op) {
            Some(n) if *n > 0 => {
                *n -= 1;
                Err(Error::db(
                    "running a statement",
                    format!("injected {op:?} failure"),
                ))
            }
            _ => Ok(()),
        }
    }

    /// Inserts the messages, or none of them when a schedule is refused.
    fn insert(&mut self, messages: Vec<Message>) -> Result<()> {
        let delays = crate::message::delays(&messages)?;
        let now = Instant::now();
        for (m, delay) in messages.into_iter().zip(delays) {
            self.next_id += 1;
            let id = self.next_id;
            self.rows.insert(
                id,
                Entry {
                    row: Row {
                        id,
                        message_id: m.message_id,
                        payload: m.payload,
                        headers: m.headers,
                        options: m.options,
                        ordering_key: m.ordering_key,
                        status: RowStatus::Pending,
                        attempts: 0,
                        last_error: None,
                        leased: false,
                    },
                    created_at: SystemTime::now(),
                    created: now,
                    available_at: now.checked_add(delay).unwrap_or(now),
                    locked_by: None,
                    locked_until: None,
                    dispatched_at: None,
                    corrupt: None,
                },
            );
        }
        Ok(())
    }

    /// Deletes up to `limit` rows that match, lowest ids first; returns how many.
    fn remove_where(&mut self, limit: usize, matches: impl Fn(&Entry) -> bool) -> u64 {
        let ids: Vec<i64> = self
            .rows
            .values()
            .filter(|e| matches(e))
            .map(|e| e.row.id)
            .take(limit)
            .collect();
        for id in &ids {
            self.rows.remove(id);
        }
        ids.len() as u64
    }

    /// The earliest row of each key that still holds it (pending or parked).
    fn key_heads(&self) -> HashMap<&str, i64> {
        let mut heads = HashMap::new();
        for e in self.rows.values() {
            if let (Some(k), RowStatus::Pending | RowStatus::Parked) =
                (e.row.ordering_key.as_deref(), e.row.status)
            {
                heads.entry(k).or_insert(e.row.id);
            }
        }
        heads
    }

    fn held_by(&mut self, lease: &Lease, id: i64) -> Option<&mut Entry> {
        self.rows
            .get_mut(&id)
            .filter(|e| e.row.status == RowStatus::Pending && e.locked_by == Some(lease.token))
    }
}

fn unlock(e: &mut Entry) {
    e.locked_by = None;
    e.locked_until = None;
    e.row.leased = false;
}

/// An outbox table in memory: the semantics of the real stores (leases with
/// tokens, per-key order with parked heads holding their keys, backoff through an
/// availability time, byte-capped claims), no server, and faults on demand.
///
/// Cheap to clone: clones share the table. Transactions ([`MemoryTx`]) insert at
/// commit, so row ids follow commit order.
///
/// ```
/// use outboxer::testing::{MemoryStore, ScriptedStream};
/// use outboxer::{Message, Outbox};
/// use std::time::Duration;
///
/// # fn main() -> outboxer::Result<()> {
/// let store = MemoryStore::new();
/// let stream = ScriptedStream::new();
/// let outbox = Outbox::builder()
///     .store(store.clone())
///     .stream(stream.clone())
///     .check_interval(Duration::from_millis(10))
///     .build()?;
/// let relay = outbox.start()?;
/// outbox.send(Message::new(b"hello".to_vec()))?;
/// let got = stream.wait_for(1, Duration::from_secs(5));
/// assert_eq!(got[0].payload, b"hello");
/// relay.stop()?;
/// // Dispatched rows are deleted by default (a retention of zero).
/// assert!(store.rows().is_empty());
/// # Ok(()) }
/// ```
#[derive(Clone, Default)]
pub struct MemoryStore {
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("rows", &self.state.lock().rows.len())
            .finish()
    }
}

/// A transaction of a [`MemoryStore`]: its messages are inserted at
/// [`MemoryTx::commit`]; dropped without a commit, it rolls back.
#[derive(Debug)]
pub struct MemoryTx {
    store: MemoryStore,
    messages: Vec<Message>,
}

impl MemoryTx {
    /// Inserts the transaction's messages (ids in commit order).
    pub fn commit(self) -> Result<()> {
        let MemoryTx { store, messages } = self;
        let mut s = store.state.lock();
        s.fault(StoreOp::Enqueue)?;
        s.insert(messages)
    }

    /// Drops the transaction's messages.
    pub fn rollback(self) {}
}

impl MemoryStore {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Begins a transaction that [`Outbox::send_within_tx`](crate::Outbox::send_within_tx)
    /// can join.
    pub fn begin(&self) -> MemoryTx {
        MemoryTx {
            store: self.clone(),
            messages: Vec::new(),
        }
    }

    /// Makes the next `times` calls of `op` fail with a transient
    /// [`Error::Database`], as a database that goes away would.
    pub fn fail_next(&self, op: StoreOp, times: u32) {
        *self.state.lock().faults.entry(op).or_insert(0) += times;
    }

    /// Ends every lease now, as if the relays holding them had stalled past their
    /// lease: another claim takes the rows, and the late relay's marks find them
    /// gone (a duplicate follows).
    pub fn expire_leases(&self) {
        let now = Instant::now();
        for e in self.state.lock().rows.values_mut() {
            if e.locked_until.is_some() {
                e.locked_until = Some(now);
            }
        }
    }

    /// Makes row `id` undecodable (as a row with `headers = '[]'` written by another
    /// program is): claims return it in [`Claim::undecodable`] with `reason`.
    pub fn corrupt(&self, id: i64, reason: &str) {
        if let Some(e) = self.state.lock().rows.get_mut(&id) {
            e.corrupt = Some(reason.to_string());
        }
    }

    /// Every row, in id order.
    pub fn rows(&self) -> Vec<Row> {
        self.state
            .lock()
            .rows
            .values()
            .map(|e| e.row.clone())
            .collect()
    }

    /// The rows in `status`, in id order.
    pub fn rows_in(&self, status: RowStatus) -> Vec<Row> {
        self.rows()
            .into_iter()
            .filter(|r| r.status == status)
            .collect()
    }
}

fn stored(e: &Entry) -> StoredMessage {
    let r = &e.row;
    StoredMessage {
        id: r.id,
        message_id: r.message_id,
        payload: r.payload.clone(),
        headers: r.headers.clone(),
        options: r.options.clone(),
        ordering_key: r.ordering_key.clone(),
        attempts: r.attempts,
        created_at: e.created_at,
    }
}

impl TxStore for MemoryStore {
    type Tx<'a> = MemoryTx;

    fn enqueue_in_tx(&self, tx: &mut MemoryTx, messages: &[Message]) -> Result<()> {
        // Refused here, like the databases' inserts; the delay runs from the commit.
        crate::message::delays(messages)?;
        tx.messages.extend_from_slice(messages);
        Ok(())
    }

    fn with_transaction<R, E, F>(&self, f: F) -> std::result::Result<R, E>
    where
        F: FnOnce(&mut MemoryTx) -> std::result::Result<R, E>,
        E: From<Error>,
    {
        let mut tx = self.begin();
        let r = f(&mut tx)?;
        tx.commit()?;
        Ok(r)
    }
}

impl Store for MemoryStore {
    fn migrate(&self) -> Result<()> {
        Ok(())
    }

    fn enqueue(&self, messages: &[Message]) -> Result<()> {
        let mut s = self.state.lock();
        s.fault(StoreOp::Enqueue)?;
        s.insert(messages.to_vec())
    }

    fn claim(&self, lease: &Lease, limit: BatchLimit) -> Result<Claim> {
        let mut s = self.state.lock();
        s.fault(StoreOp::Claim)?;
        let now = Instant::now();
        let heads: HashMap<String, i64> = s
            .key_heads()
            .into_iter()
            .map(|(k, id)| (k.to_string(), id))
            .collect();
        let mut taken = Vec::new();
        let mut bytes = 0usize;
        for e in s.rows.values() {
            if taken.len() >= limit.rows {
                break;
            }
            let r = &e.row;
            let free = e.locked_until.is_none_or(|u| u <= now);
            let head = r
                .ordering_key
                .as_ref()
                .is_none_or(|k| heads.get(k) == Some(&r.id));
            if r.status != RowStatus::Pending || e.available_at > now || !free || !head {
                continue;
            }
            if !taken.is_empty() && bytes + r.payload.len() > limit.bytes {
                break;
            }
            bytes += r.payload.len();
            taken.push(r.id);
        }
        let mut claim = Claim::default();
        for id in taken {
            let Some(e) = s.rows.get_mut(&id) else {
                continue;
            };
            e.locked_by = Some(lease.token);
            e.locked_until = Some(now + lease.duration);
            e.row.leased = true;
            match &e.corrupt {
                Some(reason) => claim.undecodable.push(Undecodable {
                    id,
                    reason: reason.clone(),
                }),
                None => claim.messages.push(stored(e)),
            }
        }
        Ok(claim)
    }

    fn mark_dispatched(&self, lease: &Lease, ids: &[i64]) -> Result<Vec<i64>> {
        let mut s = self.state.lock();
        s.fault(StoreOp::MarkDispatched)?;
        let now = Instant::now();
        let mut marked = Vec::new();
        for &id in ids {
            if let Some(e) = s.held_by(lease, id) {
                e.row.status = RowStatus::Dispatched;
                e.dispatched_at = Some(now);
                unlock(e);
                marked.push(id);
            }
        }
        Ok(marked)
    }

    fn delete_dispatched(&self, lease: &Lease, ids: &[i64]) -> Result<Vec<i64>> {
        let mut s = self.state.lock();
        s.fault(StoreOp::MarkDispatched)?;
        let mut marked = Vec::new();
        for &id in ids {
            if s.held_by(lease, id).is_some() {
                s.rows.remove(&id);
                marked.push(id);
            }
        }
        Ok(marked)
    }

    fn mark_failed(&self, lease: &Lease, failures: &[FailedAttempt]) -> Result<usize> {
        let mut s = self.state.lock();
        s.fault(StoreOp::MarkFailed)?;
        let now = Instant::now();
        let mut n = 0;
        for f in failures {
            if let Some(e) = s.held_by(lease, f.id) {
                e.row.attempts = e.row.attempts.saturating_add(1);
                e.row.last_error = Some(f.error.clone());
                e.available_at = now + f.retry_in;
                e.row.status = match (f.park, f.hold_key) {
                    (false, _) => RowStatus::Pending,
                    (true, true) => RowStatus::Parked,
                    (true, false) => RowStatus::Skipped,
                };
                unlock(e);
                n += 1;
            }
        }
        Ok(n)
    }

    fn release(&self, lease: &Lease, ids: &[i64], retry_in: Duration) -> Result<usize> {
        let mut s = self.state.lock();
        s.fault(StoreOp::Release)?;
        let now = Instant::now();
        let mut n = 0;
        for &id in ids {
            if let Some(e) = s.held_by(lease, id) {
                e.available_at = now + retry_in;
                unlock(e);
                n += 1;
            }
        }
        Ok(n)
    }

    fn cleanup(&self, older_than: Duration, limit: usize) -> Result<u64> {
        let mut s = self.state.lock();
        s.fault(StoreOp::Cleanup)?;
        Ok(s.remove_where(limit, |e| {
            e.dispatched_at.is_some_and(|d| d.elapsed() > older_than)
        }))
    }

    fn requeue(&self, which: &Requeue) -> Result<u64> {
        let mut s = self.state.lock();
        let now = Instant::now();
        let wanted: Option<HashSet<i64>> = match which {
            Requeue::Ids(ids) => Some(ids.iter().copied().collect()),
            _ => None,
        };
        let matches = |e: &Entry| match which {
            Requeue::Matching(f) => {
                let old = f.older_than.is_none_or(|age| e.created.elapsed() > age);
                let text = f.error_text().map(str::to_lowercase);
                let error = e.row.last_error.as_deref().map(str::to_lowercase);
                old && text.is_none_or(|t| error.is_some_and(|e| e.contains(&t)))
            }
            _ => true,
        };
        let mut n = 0;
        for e in s.rows.values_mut() {
            let parked = matches!(e.row.status, RowStatus::Parked | RowStatus::Skipped);
            if parked && wanted.as_ref().is_none_or(|w| w.contains(&e.row.id)) && matches(e) {
                e.row.status = RowStatus::Pending;
                e.row.attempts = 0;
                e.available_at = now;
                unlock(e);
                n += 1;
            }
        }
        Ok(n)
    }

    fn skip(&self, ids: &[i64]) -> Result<u64> {
        let mut s = self.state.lock();
        let mut n = 0;
        for id in ids {
            if let Some(e) = s.rows.get_mut(id) {
                if e.row.status == RowStatus::Parked {
                    e.row.status = RowStatus::Skipped;
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    fn held_keys(&self, limit: usize) -> Result<Vec<HeldKey>> {
        let s = self.state.lock();
        let mut held: Vec<HeldKey> = s
            .key_heads()
            .into_iter()
            .filter_map(|(key, id)| {
                let e = s.rows.get(&id)?;
                (e.row.status == RowStatus::Parked).then(|| HeldKey {
                    ordering_key: key.to_string(),
                    parked_id: id,
                    message_id: Some(e.row.message_id),
                    last_error: e.row.last_error.clone(),
                    waiting: s
                        .rows
                        .range(id + 1..)
                        .filter(|(_, l)| {
                            l.row.status == RowStatus::Pending
                                && l.row.ordering_key.as_deref() == Some(key)
                        })
                        .count() as u64,
                })
            })
            .collect();
        held.sort_by_key(|h| h.parked_id);
        held.truncate(limit);
        Ok(held)
    }

    fn purge_parked(&self, older_than: Duration, limit: usize) -> Result<u64> {
        let mut s = self.state.lock();
        Ok(s.remove_where(limit, |e| {
            matches!(e.row.status, RowStatus::Parked | RowStatus::Skipped)
                && e.created.elapsed() > older_than
        }))
    }

    fn missing_indexes(&self) -> Result<Option<Vec<String>>> {
        Ok(Some(Vec::new())) // no indexes to miss
    }

    fn purgeable(&self, older_than: Duration) -> Result<Purgeable> {
        let s = self.state.lock();
        let mut p = Purgeable::default();
        for e in s.rows.values() {
            match e.row.status {
                RowStatus::Dispatched
                    if e.dispatched_at.is_some_and(|d| d.elapsed() > older_than) =>
                {
                    p.dispatched += 1
                }
                RowStatus::Parked | RowStatus::Skipped if e.created.elapsed() > older_than => {
                    p.parked += 1
                }
                _ => {}
            }
        }
        Ok(p)
    }

    fn stats(&self) -> Result<Stats> {
        let s = self.state.lock();
        let now = Instant::now();
        let mut st = Stats::default();
        for e in s.rows.values() {
            match e.row.status {
                RowStatus::Pending => {
                    st.pending += 1;
                    if e.locked_until.is_some_and(|u| u > now) {
                        st.leased += 1;
                    }
                    st.oldest_pending_age = st.oldest_pending_age.max(e.created.elapsed());
                    if e.available_at > now {
                        st.scheduled += 1;
                        let due = e.available_at - now;
                        st.next_due_in = Some(st.next_due_in.map_or(due, |d| d.min(due)));
                    }
                }
                RowStatus::Dispatched => st.dispatched += 1,
                RowStatus::Parked | RowStatus::Skipped => st.parked += 1,
            }
        }
        st.held_keys = s
            .key_heads()
            .values()
            .filter(|id| {
                s.rows
                    .get(id)
                    .is_some_and(|e| e.row.status == RowStatus::Parked)
            })
            .count() as u64;
        Ok(st)
    }

    fn next_due(&self) -> Result<Option<Duration>> {
        let s = self.state.lock();
        let now = Instant::now();
        Ok(s.rows
            .values()
            .filter(|e| e.row.status == RowStatus::Pending && e.available_at > now)
            .map(|e| e.available_at - now)
            .min())
    }

    fn attempts_histogram(&self) -> Result<Vec<(u32, u64)>> {
        let s = self.state.lock();
        let mut h: BTreeMap<u32, u64> = BTreeMap::new();
        for e in s.rows.values() {
            if e.row.status != RowStatus::Dispatched {
                *h.entry(e.row.attempts).or_insert(0) += 1;
            }
        }
        Ok(h.into_iter().collect())
    }

    fn parked(&self, limit: usize) -> Result<Vec<ParkedMessage>> {
        let s = self.state.lock();
        Ok(s.rows
            .values()
            .filter(|e| matches!(e.row.status, RowStatus::Parked | RowStatus::Skipped))
            .take(limit)
            .map(|e| ParkedMessage {
                id: e.row.id,
                message_id: Some(e.row.message_id),
                attempts: e.row.attempts,
                last_error: e.row.last_error.clone(),
                ordering_key: e.row.ordering_key.clone(),
                holds_key: e.row.status == RowStatus::Parked && e.row.ordering_key.is_some(),
            })
            .collect())
    }
}
