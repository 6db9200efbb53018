//! `--breakdown`: timing decorators of the store and stream.
//!
//! The timing store forwards every `Store` method the relay uses, row-lock claims
//! (`claim_locked`, its held claim timed through to the commit) and
//! `delete_dispatched` included: a decorator that left `claim_locked` to the trait's
//! default would make the relay fall back to leases without a word, so the claims
//! of each kind are counted and the bench checks the mode that ran.

use outboxer::store::{
    BatchLimit, Claim, FailedAttempt, HeldClaim, Lease, LockedClaim, Requeue, Stats, WakeListener,
};
use outboxer::stream::{Deadline, Validate};
use outboxer::{Message, Store, StoredMessage, Stream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A store that times the claims and the dispatched marks (`--breakdown`).
pub struct TimedStore<S> {
    pub inner: S,
    pub timings: Arc<Timings>,
}

/// A row-lock claim's transaction, its commit (the dispatched mark and COMMIT)
/// timed as the mark.
struct TimedHeld {
    inner: Box<dyn HeldClaim>,
    timings: Arc<Timings>,
}

impl HeldClaim for TimedHeld {
    fn mark_failed(&mut self, failures: &[FailedAttempt]) -> outboxer::Result<usize> {
        self.inner.mark_failed(failures)
    }
    fn release(&mut self, ids: &[i64], retry_in: Duration) -> outboxer::Result<usize> {
        self.inner.release(ids, retry_in)
    }
    fn commit(self: Box<Self>, dispatched: &[i64], delete: bool) -> outboxer::Result<Vec<i64>> {
        let TimedHeld { inner, timings } = *self;
        timings.mark.time(|| inner.commit(dispatched, delete))
    }
}

impl<S: Store> Store for TimedStore<S> {
    fn migrate(&self) -> outboxer::Result<()> {
        self.inner.migrate()
    }
    fn enqueue(&self, messages: &[Message]) -> outboxer::Result<()> {
        self.inner.enqueue(messages)
    }
    fn claim(&self, lease: &Lease, limit: BatchLimit) -> outboxer::Result<Claim> {
        self.timings.leased.fetch_add(1, Ordering::Relaxed);
        self.timings.claim.time(|| self.inner.claim(lease, limit))
    }
    fn claim_locked(
        &self,
        lease: &Lease,
        limit: BatchLimit,
    ) -> outboxer::Result<Option<LockedClaim>> {
        let claimed = self
            .timings
            .claim
            .time(|| self.inner.claim_locked(lease, limit))?;
        let Some(LockedClaim { claim, held }) = claimed else {
            return Ok(None);
        };
        self.timings.locked.fetch_add(1, Ordering::Relaxed);
        let held = Box::new(TimedHeld {
            inner: held,
            timings: Arc::clone(&self.timings),
        });
        Ok(Some(LockedClaim { claim, held }))
    }
    fn mark_dispatched(&self, lease: &Lease, ids: &[i64]) -> outboxer::Result<Vec<i64>> {
        self.timings
            .mark
            .time(|| self.inner.mark_dispatched(lease, ids))
    }
    fn delete_dispatched(&self, lease: &Lease, ids: &[i64]) -> outboxer::Result<Vec<i64>> {
        self.timings
            .mark
            .time(|| self.inner.delete_dispatched(lease, ids))
    }
    fn mark_failed(&self, lease: &Lease, failures: &[FailedAttempt]) -> outboxer::Result<usize> {
        self.inner.mark_failed(lease, failures)
    }
    fn release(&self, lease: &Lease, ids: &[i64], retry_in: Duration) -> outboxer::Result<usize> {
        self.inner.release(lease, ids, retry_in)
    }
    fn cleanup(&self, older_than: Duration, limit: usize) -> outboxer::Result<u64> {
        self.inner.cleanup(older_than, limit)
    }
    fn requeue(&self, which: &Requeue) -> outboxer::Result<u64> {
        self.inner.requeue(which)
    }
    fn skip(&self, ids: &[i64]) -> outboxer::Result<u64> {
        self.inner.skip(ids)
    }
    fn held_keys(&self, limit: usize) -> outboxer::Result<Vec<outboxer::store::HeldKey>> {
        self.inner.held_keys(limit)
    }
    fn stats(&self) -> outboxer::Result<Stats> {
        self.inner.stats()
    }
    fn purge_parked(&self, older_than: Duration, limit: usize) -> outboxer::Result<u64> {
        self.inner.purge_parked(older_than, limit)
    }
    fn purgeable(&self, older_than: Duration) -> outboxer::Result<outboxer::store::Purgeable> {
        self.inner.purgeable(older_than)
    }
    fn attempts_histogram(&self) -> outboxer::Result<Vec<(u32, u64)>> {
        self.inner.attempts_histogram()
    }
    fn parked(&self, limit: usize) -> outboxer::Result<Vec<outboxer::store::ParkedMessage>> {
        self.inner.parked(limit)
    }
    fn wake_listener(&self) -> outboxer::Result<Option<Box<dyn WakeListener>>> {
        self.inner.wake_listener()
    }
    fn missing_indexes(&self) -> outboxer::Result<Option<Vec<String>>> {
        self.inner.missing_indexes()
    }
    fn table_name(&self) -> String {
        self.inner.table_name()
    }
}

/// A stream that times `publish` (publishes plus waiting for confirms).
pub struct TimedStream {
    pub inner: Box<dyn Stream>,
    pub timings: Arc<Timings>,
}

impl Stream for TimedStream {
    fn validator(&self) -> Arc<dyn Validate> {
        self.inner.validator()
    }
    fn publish(
        &mut self,
        batch: &[StoredMessage],
        deadline: &Deadline,
    ) -> Vec<outboxer::Result<()>> {
        let inner = &mut self.inner;
        self.timings.publish.time(|| inner.publish(batch, deadline))
    }
    fn close(&mut self) {
        self.inner.close();
    }
}

/// Busy time of the relays' claim, mark and publish calls, and the claims of each
/// kind (`--breakdown`).
#[derive(Default)]
pub struct Timings {
    pub claim: Timer,
    pub mark: Timer,
    pub publish: Timer,
    /// Row-lock claims that held their rows (`claim_locked` returned a claim).
    pub locked: AtomicU64,
    /// Lease claims (`claim`).
    pub leased: AtomicU64,
}

#[derive(Default)]
pub struct Timer {
    nanos: AtomicU64,
    calls: AtomicU64,
}

impl Timer {
    fn time<R>(&self, f: impl FnOnce() -> R) -> R {
        let start = Instant::now();
        let r = f();
        let nanos = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.nanos.fetch_add(nanos, Ordering::Relaxed);
        self.calls.fetch_add(1, Ordering::Relaxed);
        r
    }

    fn describe(&self, name: &str, wall: Duration, relays: usize) -> String {
        let secs = self.nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let calls = self.calls.load(Ordering::Relaxed).max(1);
        let busy = secs / (wall.as_secs_f64() * relays as f64).max(1e-9) * 100.0;
        format!(
            "{name} {secs:.2} s / {calls} calls = {:.1} ms each, {busy:.0}% busy",
            secs * 1000.0 / calls as f64
        )
    }
}

impl Timings {
    pub fn print(&self, wall: Duration, relays: usize) {
        println!(
            "    breakdown over {:.2} s x {relays} relay(s): {}; {}; {}; claims: {} row-lock, {} lease",
            wall.as_secs_f64(),
            self.publish.describe("publish", wall, relays),
            self.claim.describe("claim", wall, relays),
            self.mark.describe("mark (or commit)", wall, relays),
            self.locked.load(Ordering::Relaxed),
            self.leased.load(Ordering::Relaxed),
        );
    }

    /// How the claims ran.
    pub fn claims(&self) -> crate::mode::Claims {
        crate::mode::Claims::from_counts(
            self.locked.load(Ordering::Relaxed),
            self.leased.load(Ordering::Relaxed),
        )
    }
}
