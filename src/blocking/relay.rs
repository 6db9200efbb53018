//! The relay: a pipeline of threads. The claimer leases batches, the publisher
//! (owner of the stream) publishes them with broker confirms, the marker records
//! outcomes, so that database round trips overlap with publishing. A cleanup
//! thread deletes old dispatched rows; a listener turns NOTIFY into wake-ups.
//!
//! What keeps it moving: a row that cannot be decoded parks alone; a message the
//! broker refuses counts an attempt and parks alone; an outage (server down or
//! silent, credentials refused) releases its messages with a growing delay,
//! without counting attempts, and is reported once when it starts, once per
//! report interval while it lasts and once when it ends; a panicking thread stops
//! the whole relay cleanly and is reported, never a silent death.

use super::outbox::Shared;
use super::store::{BatchLimit, FailedAttempt, Lease, Store, Undecodable};
use super::stream::{Deadline, Stream};
use crate::core::config::OnPark;
use crate::core::retry::{verdict, Backoff, Verdict};
use crate::message::{Delivered, Failure, FailureAction, MessageId, StoredMessage};
use crate::{Error, Result};
use crossbeam_channel::{bounded, select, Receiver, RecvTimeoutError, Sender};
use parking_lot::Mutex;
use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A running relay. `ok()` and `err()` report outcomes; `stop()` (or drop)
/// finishes the in-flight batch and joins the threads.
pub struct Relay {
    ok_rx: Receiver<Delivered>,
    err_rx: Receiver<Failure>,
    control: Arc<Control>,
    threads: Mutex<Vec<(&'static str, JoinHandle<()>)>>,
    counters: Arc<Counters>,
}

/// What the relay handle and its threads share to stop each other.
#[derive(Default)]
struct Control {
    /// Dropping the sender (from `stop()` or a panicking thread) stops every thread.
    stop_tx: Mutex<Option<Sender<()>>>,
    /// The first thread that panicked.
    panicked: Mutex<Option<&'static str>>,
}

impl Control {
    fn stop(&self) {
        drop(self.stop_tx.lock().take());
    }
}

/// Counters of a relay since `start()`.
#[derive(Debug, Default)]
struct Counters {
    published: AtomicU64,
    failed: AtomicU64,
    dropped_ok: AtomicU64,
    dropped_err: AtomicU64,
}

/// A snapshot of a relay's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelayCounters {
    /// Messages confirmed by the broker and marked dispatched.
    pub published: u64,
    /// Failed publish attempts (retried, parked or released), and published messages
    /// whose dispatched mark did not land.
    pub failed: u64,
    /// `ok()` outcomes dropped because nobody read the channel.
    pub dropped_ok: u64,
    /// `err()` outcomes dropped because nobody read the channel.
    pub dropped_err: u64,
}

impl Relay {
    /// Messages published and marked dispatched (like Go's `OkChan`).
    pub fn ok(&self) -> &Receiver<Delivered> {
        &self.ok_rx
    }

    /// Failures (like Go's `ErrChan`), with what the relay did about each. Message
    /// failures (refused, retried, parked, not marked) come one per message; an
    /// outage (broker or database unavailable, credentials refused) comes when it
    /// starts and then at most once per report interval, with the first message it
    /// released in that round; a panicked relay thread comes as
    /// [`Error::RelayPanicked`].
    pub fn err(&self) -> &Receiver<Failure> {
        &self.err_rx
    }

    /// Counters since start, including outcomes dropped on full channels.
    pub fn counters(&self) -> RelayCounters {
        let c = &self.counters;
        RelayCounters {
            published: c.published.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            dropped_ok: c.dropped_ok.load(Ordering::Relaxed),
            dropped_err: c.dropped_err.load(Ordering::Relaxed),
        }
    }

    /// Stops claiming, finishes the batch being published, releases batches claimed
    /// but not started, records every outcome, and joins the threads. Idempotent.
    ///
    /// Returns within the stream's own bound on one call (at most one request,
    /// connection or confirm timeout of the stream) plus the database round trips
    /// that record the outcomes: the batch in flight starts no new attempt once the
    /// relay is stopping.
    ///
    /// `Err(Error::RelayPanicked(thread))` when a relay thread panicked (the relay
    /// then stopped by itself and released its claims).
    pub fn stop(&self) -> Result<()> {
        self.control.stop();
        let threads = std::mem::take(&mut *self.threads.lock());
        for (name, t) in threads {
            // Threads catch their own panics; a join error is a panic in the catcher.
            if t.join().is_err() {
                self.control.panicked.lock().get_or_insert(name);
            }
        }
        match *self.control.panicked.lock() {
            Some(name) => Err(Error::RelayPanicked(name)),
            None => Ok(()),
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// A claimed batch on its way to the publisher.
struct Claimed {
    lease: Lease,
    messages: Vec<StoredMessage>,
    /// When the lease started, by our clock; the lease ends `lease.duration` later.
    at: Instant,
}

impl Claimed {
    fn lease_left(&self) -> Duration {
        lease_left(&self.lease, self.at)
    }
}

fn lease_left(lease: &Lease, at: Instant) -> Duration {
    lease.duration.saturating_sub(at.elapsed())
}

/// What the marker needs of a published message: its payload is gone by then.
struct Sent {
    id: i64,
    message_id: MessageId,
    attempts: u32,
}

/// What the publisher hands to the marker.
struct Published {
    lease: Lease,
    at: Instant,
    sent: Vec<Sent>,
    outcomes: Vec<Result<()>>,
}

/// One kind of outage (the database's or the broker's): reported when it starts,
/// once per interval while it lasts, and when it ends; never once per message.
struct Outage {
    what: &'static str,
    state: Mutex<OutageState>,
}

#[derive(Default)]
struct OutageState {
    since: Option<Instant>,
    last_failure: Option<Instant>,
    last_report: Option<Instant>,
    /// Messages released (or operations failed) since the last report, and in all.
    quiet: u64,
    total: u64,
    /// Consecutive failing rounds, for the release delay.
    streak: u32,
}

impl Outage {
    fn new(what: &'static str) -> Self {
        Outage {
            what,
            state: Mutex::new(OutageState::default()),
        }
    }

    /// Records `count` failures of one round with `error`; returns the error when
    /// it is due to be reported (the first of an outage, then one per interval).
    fn failed(&self, error: Error, count: u64, every: Duration) -> Option<Error> {
        let now = Instant::now();
        let mut s = self.state.lock();
        s.last_failure = Some(now);
        s.total += count;
        s.streak = s.streak.saturating_add(1);
        let Some(since) = s.since else {
            s.since = Some(now);
            s.last_report = Some(now);
            s.quiet = 0;
            log::warn!(
                "outboxer: {} outage: {error}; messages are released without counting \
                 attempts and retried with backoff (next report in {every:?})",
                self.what
            );
            return Some(error);
        };
        s.quiet += count;
        if s.last_report
            .is_some_and(|r| now.duration_since(r) >= every)
        {
            log::warn!(
                "outboxer: {} outage for {:.0?}: {} failed since the last report ({} in all); \
                 last error: {error}",
                self.what,
                now.duration_since(since),
                s.quiet,
                s.total
            );
            s.last_report = Some(now);
            s.quiet = 0;
            return Some(error);
        }
        None
    }

    /// A round without failures: the outage ends once none came for an interval.
    fn succeeded(&self, every: Duration) {
        let mut s = self.state.lock();
        s.streak = 0;
        let (Some(since), Some(last)) = (s.since, s.last_failure) else {
            return;
        };
        if last.elapsed() >= every {
            log::info!(
                "outboxer: {} outage over after {:.0?} ({} failed in all)",
                self.what,
                last.duration_since(since),
                s.total
            );
            *s = OutageState::default();
        }
    }

    fn streak(&self) -> u32 {
        self.state.lock().streak
    }
}

/// Everything the threads share.
struct Ctx<S: Store> {
    shared: Arc<Shared<S>>,
    control: Arc<Control>,
    stop_rx: Receiver<()>,
    ok_tx: Sender<Delivered>,
    err_tx: Sender<Failure>,
    counters: Arc<Counters>,
    store_outage: Outage,
    stream_outage: Outage,
}

impl<S: Store> Ctx<S> {
    fn stopped(&self) -> bool {
        matches!(
            self.stop_rx.try_recv(),
            Err(crossbeam_channel::TryRecvError::Disconnected)
        )
    }

    /// Sleeps up to `d`; returns true if the relay was stopped meanwhile.
    fn sleep(&self, d: Duration) -> bool {
        matches!(
            self.stop_rx.recv_timeout(d),
            Err(RecvTimeoutError::Disconnected)
        )
    }

    fn send_err(&self, failure: Failure) {
        if self.err_tx.try_send(failure).is_err() {
            self.counters.dropped_err.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A failure of one message (refused, retried, parked): reported each time.
    fn report(&self, failure: Failure) {
        log::warn!(
            "outboxer: {} (message {:?}, row {:?}, {:?})",
            failure.error,
            failure.message_id,
            failure.id,
            failure.action
        );
        self.send_err(failure);
    }

    /// A database failure: reported when due (see [`Outage`]).
    fn store_failed(&self, error: Error) {
        let every = self.shared.config.report_interval;
        if let Some(error) = self.store_outage.failed(error, 1, every) {
            self.send_err(Failure {
                id: None,
                message_id: None,
                error,
                action: FailureAction::None,
            });
        }
    }

    /// Releases a batch the publisher did not start, at once and without a count.
    fn release(&self, lease: &Lease, ids: &[i64]) {
        if let Err(e) = self.shared.store.release(lease, ids, Duration::ZERO) {
            // The lease expires by itself; another relay will take the rows then.
            self.store_failed(e);
        }
    }

    fn release_claimed(&self, c: &Claimed) {
        let ids: Vec<i64> = c.messages.iter().map(|m| m.id).collect();
        self.release(&c.lease, &ids);
    }

    /// A relay thread panicked: report it, remember it for `stop()`, stop the rest.
    fn panicked(&self, thread: &'static str, payload: &(dyn Any + Send)) {
        let what = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a non-string panic".into());
        log::error!("outboxer: relay thread {thread} panicked ({what}); stopping the relay");
        self.control.panicked.lock().get_or_insert(thread);
        self.send_err(Failure {
            id: None,
            message_id: None,
            error: Error::RelayPanicked(thread),
            action: FailureAction::None,
        });
        self.control.stop();
    }
}

/// The stream's place while the publisher runs: it goes back to the outbox when
/// the publisher ends, also by a panic or a thread that never started, so that
/// `start()` works again.
struct StreamHome<S: Store> {
    stream: Option<Box<dyn Stream>>,
    shared: Arc<Shared<S>>,
}

impl<S: Store> Drop for StreamHome<S> {
    fn drop(&mut self) {
        if let Some(mut s) = self.stream.take() {
            if catch_unwind(AssertUnwindSafe(|| s.close())).is_err() {
                log::error!("outboxer: the stream panicked while closing");
            }
            *self.shared.stream.lock() = Some(s);
        }
    }
}

/// A relay thread's body.
type Job<S> = Box<dyn FnOnce(&Ctx<S>) + Send>;

pub(crate) fn start<S: Store>(shared: Arc<Shared<S>>, stream: Box<dyn Stream>) -> Result<Relay> {
    let cfg = shared.config.clone();
    let (stop_tx, stop_rx) = bounded::<()>(0);
    let (ok_tx, ok_rx) = bounded(cfg.channel_capacity);
    let (err_tx, err_rx) = bounded(cfg.channel_capacity);
    let counters = Arc::new(Counters::default());
    let control = Arc::new(Control {
        stop_tx: Mutex::new(Some(stop_tx)),
        panicked: Mutex::new(None),
    });
    let home = StreamHome {
        stream: Some(stream),
        shared: Arc::clone(&shared),
    };
    let listener = shared.store.wake_listener()?;
    let ctx = Arc::new(Ctx {
        shared: Arc::clone(&shared),
        control: Arc::clone(&control),
        stop_rx,
        ok_tx,
        err_tx,
        counters: Arc::clone(&counters),
        store_outage: Outage::new("database"),
        stream_outage: Outage::new("broker"),
    });
    // One batch may wait while another is published: enough to overlap, little to hold.
    let (claimed_tx, claimed_rx) = bounded::<Claimed>(1);
    let (published_tx, published_rx) = bounded::<Published>(2);

    let mut threads: Vec<(&'static str, JoinHandle<()>)> = Vec::new();
    let mut spawn = |name: &'static str, f: Job<S>| -> Result<()> {
        let c = Arc::clone(&ctx);
        let guarded = move || {
            if let Err(p) = catch_unwind(AssertUnwindSafe(|| f(&c))) {
                c.panicked(name, p.as_ref());
            }
        };
        match std::thread::Builder::new()
            .name(format!("outboxer-{name}"))
            .spawn(guarded)
        {
            Ok(h) => {
                threads.push((name, h));
                Ok(())
            }
            Err(e) => Err(Error::ThreadSpawn {
                name,
                reason: e.to_string(),
            }),
        }
    };
    let started = spawn("marker", Box::new(move |c| marker(c, published_rx)))
        .and_then(|()| {
            spawn(
                "publisher",
                Box::new(move |c| publisher(c, home, claimed_rx, published_tx)),
            )
        })
        .and_then(|()| spawn("claimer", Box::new(move |c| claimer(c, claimed_tx))))
        .and_then(|()| match cfg.cleanup_interval {
            Some(_) => spawn("cleanup", Box::new(cleanup)),
            None => Ok(()),
        })
        .and_then(|()| match listener {
            Some(l) => spawn("listener", Box::new(move |c| listen(c, l))),
            None => Ok(()),
        });
    let relay = Relay {
        ok_rx,
        err_rx,
        control,
        threads: Mutex::new(threads),
        counters,
    };
    match started {
        Ok(()) => Ok(relay),
        Err(e) => {
            // The threads that did start stop again and hand the stream back.
            log::error!("outboxer: {e}");
            let _ = relay.stop();
            Err(e)
        }
    }
}

fn listen<S: Store>(ctx: &Ctx<S>, mut l: Box<dyn super::store::WakeListener>) {
    while !ctx.stopped() {
        match l.wait(Duration::from_millis(250)) {
            Ok(true) => {
                let _ = ctx.shared.wake_tx.try_send(());
            }
            Ok(false) => {}
            Err(e) => {
                log::warn!("outboxer: wake-up listener: {e}; polling meanwhile");
                if ctx.sleep(Duration::from_secs(1)) {
                    break;
                }
            }
        }
    }
}

fn claimer<S: Store>(ctx: &Ctx<S>, out: Sender<Claimed>) {
    let cfg = &ctx.shared.config;
    let wake = ctx.shared.wake_rx.clone();
    let mut idle = false;
    let mut db_failures = 0u32;
    let pause =
        Backoff::new(Duration::from_millis(100), Duration::from_secs(5)).unwrap_or_default();
    loop {
        if idle {
            select! {
                recv(wake) -> _ => {},
                recv(ctx.stop_rx) -> _ => {},
                default(cfg.check_interval) => {},
            }
        }
        if ctx.stopped() {
            return;
        }
        let lease = Lease::new(cfg.lease);
        let at = Instant::now();
        let limit = BatchLimit {
            rows: cfg.batch_size,
            bytes: cfg.max_batch_bytes,
        };
        let claim = match ctx.shared.store.claim(&lease, limit) {
            Ok(c) => {
                db_failures = 0;
                ctx.store_outage.succeeded(cfg.report_interval);
                c
            }
            Err(e) => {
                ctx.store_failed(e);
                db_failures += 1;
                if ctx.sleep(pause.delay(db_failures)) {
                    return;
                }
                idle = false;
                continue;
            }
        };
        // A short claim means the table is drained, unless the byte cap cut it.
        let bytes: usize = claim.messages.iter().map(|m| m.payload.len()).sum();
        idle = claim.len() < cfg.batch_size && bytes <= cfg.max_batch_bytes / 2;
        park_undecodable(ctx, &lease, claim.undecodable);
        let messages = claim.messages;
        if messages.is_empty() {
            continue;
        }
        let mut batch = Claimed {
            lease,
            messages,
            at,
        };
        loop {
            match out.send_timeout(batch, Duration::from_millis(50)) {
                Ok(()) => break,
                Err(e) => {
                    batch = e.into_inner();
                    if ctx.stopped() {
                        ctx.release_claimed(&batch);
                        return;
                    }
                }
            }
        }
    }
}

/// Rows that cannot be decoded can never be published: they park at once, with
/// the reason in `last_error`, and hold up nothing but their own key.
fn park_undecodable<S: Store>(ctx: &Ctx<S>, lease: &Lease, rows: Vec<Undecodable>) {
    if rows.is_empty() {
        return;
    }
    let cfg = &ctx.shared.config;
    let failed: Vec<FailedAttempt> = rows
        .iter()
        .map(|r| FailedAttempt {
            id: r.id,
            error: Error::Decode {
                id: r.id,
                reason: r.reason.clone(),
            }
            .to_string(),
            retry_in: Duration::ZERO,
            park: true,
            hold_key: cfg.on_park == OnPark::HoldKey,
        })
        .collect();
    if let Err(e) = ctx.shared.store.mark_failed(lease, &failed) {
        // The lease expires and the next claim tries again.
        ctx.store_failed(e);
        return;
    }
    ctx.counters
        .failed
        .fetch_add(rows.len() as u64, Ordering::Relaxed);
    for r in rows {
        ctx.report(Failure {
            id: Some(r.id),
            message_id: None,
            error: Error::Decode {
                id: r.id,
                reason: r.reason,
            },
            action: FailureAction::Parked,
        });
    }
}

fn publisher<S: Store>(
    ctx: &Ctx<S>,
    mut home: StreamHome<S>,
    input: Receiver<Claimed>,
    out: Sender<Published>,
) {
    // Between batches of which every message met an outage: the broker is down,
    // wait before the next batch instead of spinning.
    let pause =
        Backoff::new(Duration::from_millis(200), Duration::from_secs(5)).unwrap_or_default();
    let mut down = 0u32;
    for claimed in input.iter() {
        // Not started before stop, or so late that another relay may own it by now.
        if ctx.stopped() || claimed.lease_left() < claimed.lease.duration / 5 {
            ctx.release_claimed(&claimed);
            continue;
        }
        let Some(stream) = home.stream.as_mut() else {
            ctx.release_claimed(&claimed);
            continue;
        };
        // Publishing ends a fifth of the lease before the lease does: time to record
        // the outcomes while the rows are still ours.
        let deadline = Deadline::with_stop(
            claimed.at + claimed.lease.duration * 4 / 5,
            ctx.stop_rx.clone(),
        );
        let outcomes = match catch_unwind(AssertUnwindSafe(|| {
            stream.publish(&claimed.messages, &deadline)
        })) {
            Ok(o) if o.len() == claimed.messages.len() => o,
            Ok(o) => {
                // A stream that breaks the one-outcome-per-message contract would
                // do it again with every batch: a bug, stopped like a panic.
                let what = format!(
                    "the stream returned {} outcomes for {} messages",
                    o.len(),
                    claimed.messages.len()
                );
                ctx.release_claimed(&claimed);
                ctx.panicked("publisher", &what);
                continue;
            }
            Err(p) => {
                ctx.release_claimed(&claimed);
                ctx.panicked("publisher", p.as_ref());
                continue;
            }
        };
        let all_down = outcomes
            .iter()
            .all(|o| o.as_ref().is_err_and(Error::is_transient));
        let Claimed {
            lease,
            messages,
            at,
        } = claimed;
        // The payloads are dropped here, before the marks.
        let sent: Vec<Sent> = messages
            .into_iter()
            .map(|m| Sent {
                id: m.id,
                message_id: m.message_id,
                attempts: m.attempts,
            })
            .collect();
        if let Err(e) = out.send(Published {
            lease,
            at,
            sent,
            outcomes,
        }) {
            // The marker is gone (it panicked): give the rows back; published ones
            // are published again (at least once).
            let p = e.into_inner();
            let ids: Vec<i64> = p.sent.iter().map(|s| s.id).collect();
            ctx.release(&p.lease, &ids);
            continue;
        }
        if all_down {
            down += 1;
            if ctx.sleep(pause.delay(down)) {
                continue;
            }
        } else {
            down = 0;
        }
    }
}

/// What one batch's outcomes come to.
#[derive(Default)]
struct Sorted<'a> {
    ok: Vec<&'a Sent>,
    failed: Vec<FailedAttempt>,
    failures: Vec<Failure>,
    released: Vec<i64>,
    /// The first transient error of the batch and its message (the outage's face
    /// in reports).
    outage: Option<(Error, &'a Sent)>,
}

fn sort<'a, S: Store>(ctx: &Ctx<S>, sent: &'a [Sent], outcomes: Vec<Result<()>>) -> Sorted<'a> {
    let cfg = &ctx.shared.config;
    let mut s = Sorted::default();
    for (m, outcome) in sent.iter().zip(outcomes) {
        let error = match outcome {
            Ok(()) => {
                s.ok.push(m);
                continue;
            }
            Err(e) => e,
        };
        match verdict(&error, m.attempts, cfg.max_attempts, &cfg.backoff) {
            Verdict::Release => {
                s.released.push(m.id);
                s.outage.get_or_insert((error, m));
            }
            v => {
                let park = v == Verdict::Park;
                s.failed.push(FailedAttempt {
                    id: m.id,
                    error: error.to_string(),
                    retry_in: match v {
                        Verdict::Retry(d) => d,
                        _ => Duration::ZERO,
                    },
                    park,
                    hold_key: cfg.on_park == OnPark::HoldKey,
                });
                s.failures.push(Failure {
                    id: Some(m.id),
                    message_id: Some(m.message_id),
                    error,
                    action: if park {
                        FailureAction::Parked
                    } else {
                        FailureAction::Retry
                    },
                });
            }
        }
    }
    s
}

/// How long released messages wait before they are claimed again: short at
/// first, longer while the outage lasts (1 s doubling up to 10 s, with jitter), so
/// other routes keep flowing, a dead server is not hammered, and messages go out
/// within seconds of the server's return.
fn release_delay(streak: u32) -> Duration {
    Backoff::new(Duration::from_secs(1), Duration::from_secs(10))
        .map(|b| b.delay(streak.max(1)))
        .unwrap_or(Duration::from_secs(1))
}

fn marker<S: Store>(ctx: &Ctx<S>, input: Receiver<Published>) {
    let cfg = &ctx.shared.config;
    let store = &ctx.shared.store;
    for p in input.iter() {
        let Published {
            lease,
            at,
            sent,
            outcomes,
        } = p;
        let s = sort(ctx, &sent, outcomes);
        let every = cfg.report_interval;
        let delay = match s.outage {
            Some((e, m)) => {
                if let Some(e) = ctx.stream_outage.failed(e, s.released.len() as u64, every) {
                    ctx.send_err(Failure {
                        id: Some(m.id),
                        message_id: Some(m.message_id),
                        error: e,
                        action: FailureAction::Released,
                    });
                }
                release_delay(ctx.stream_outage.streak())
            }
            None => {
                ctx.stream_outage.succeeded(every);
                Duration::ZERO
            }
        };
        let ids: Vec<i64> = s.ok.iter().map(|m| m.id).collect();
        let marked = persist(ctx, &lease, at, || store.mark_dispatched(&lease, &ids));
        persist(ctx, &lease, at, || store.mark_failed(&lease, &s.failed));
        persist(ctx, &lease, at, || {
            store.release(&lease, &s.released, delay)
        });

        // Only what the mark recorded is delivered; the rest is published again by
        // whoever holds it now (a duplicate, de-duplicated by message id).
        let (delivered, unmarked): (Vec<&Sent>, Vec<&Sent>) = match &marked {
            Some(ids) if ids.len() == s.ok.len() => (s.ok, Vec::new()),
            Some(ids) => {
                let ids: std::collections::HashSet<i64> = ids.iter().copied().collect();
                s.ok.into_iter().partition(|m| ids.contains(&m.id))
            }
            None => (Vec::new(), s.ok),
        };
        ctx.counters
            .published
            .fetch_add(delivered.len() as u64, Ordering::Relaxed);
        let failed = s.failures.len() + s.released.len() + unmarked.len();
        ctx.counters
            .failed
            .fetch_add(failed as u64, Ordering::Relaxed);
        for m in delivered {
            let d = Delivered {
                id: m.id,
                message_id: m.message_id,
                attempts: m.attempts,
            };
            if ctx.ok_tx.try_send(d).is_err() {
                ctx.counters.dropped_ok.fetch_add(1, Ordering::Relaxed);
            }
        }
        for f in s.failures {
            ctx.report(f);
        }
        for m in unmarked {
            let error = match &marked {
                Some(_) => Error::LeaseLost { count: 1 },
                None => Error::unavailable(
                    "database",
                    "the dispatched mark did not land before the lease ended",
                ),
            };
            ctx.report(Failure {
                id: Some(m.id),
                message_id: Some(m.message_id),
                error,
                action: FailureAction::NotMarked,
            });
        }
    }
}

/// Runs a mark statement, retrying while the lease lasts: a mark that never lands
/// means the rows are published again after the lease expires (at-least-once).
fn persist<S: Store, T>(
    ctx: &Ctx<S>,
    lease: &Lease,
    at: Instant,
    mut f: impl FnMut() -> Result<T>,
) -> Option<T> {
    let pause = Backoff::new(Duration::from_millis(50), Duration::from_secs(2)).unwrap_or_default();
    let mut attempt = 0;
    loop {
        match f() {
            Ok(n) => return Some(n),
            Err(e) => {
                attempt += 1;
                let wait = pause.delay(attempt);
                let give_up = lease_left(lease, at) <= wait;
                // Part of the database's outage, even when a retry succeeds.
                ctx.store_failed(e);
                if give_up {
                    return None;
                }
                std::thread::sleep(wait);
            }
        }
    }
}

fn cleanup<S: Store>(ctx: &Ctx<S>) {
    let cfg = &ctx.shared.config;
    let Some(every) = cfg.cleanup_interval else {
        return;
    };
    while !ctx.sleep(every) {
        // The cutoff is the database's now() at each statement, never a frozen time.
        loop {
            match ctx
                .shared
                .store
                .cleanup(cfg.cleanup_before, cfg.cleanup_batch_size)
            {
                Ok(n) if (n as usize) < cfg.cleanup_batch_size => break,
                Ok(n) => log::debug!("outboxer: cleaned up {n} dispatched messages"),
                Err(e) => {
                    ctx.store_failed(e);
                    break;
                }
            }
            if ctx.stopped() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_is_reported_when_it_starts_then_once_per_interval() {
        let o = Outage::new("broker");
        let every = Duration::from_millis(200);
        let err = || Error::unavailable("amqp", "down");
        assert!(
            o.failed(err(), 10, every).is_some(),
            "first failure reported"
        );
        for _ in 0..50 {
            assert!(
                o.failed(err(), 10, every).is_none(),
                "quiet within the interval"
            );
        }
        assert_eq!(o.streak(), 51);
        std::thread::sleep(every);
        assert!(
            o.failed(err(), 1, every).is_some(),
            "one report per interval"
        );
        o.succeeded(every);
        assert_eq!(o.streak(), 0, "a good round resets the delay");
        assert!(
            o.state.lock().since.is_some(),
            "not over until quiet for an interval"
        );
        std::thread::sleep(every);
        o.succeeded(every);
        assert!(
            o.state.lock().since.is_none(),
            "over after a quiet interval"
        );
        assert!(
            o.failed(err(), 1, every).is_some(),
            "a new outage is reported"
        );
    }

    #[test]
    fn release_delays_grow_and_stay_bounded() {
        let first = release_delay(1);
        assert!(first >= Duration::from_millis(500) && first <= Duration::from_secs(1));
        assert!(release_delay(0) <= Duration::from_secs(1));
        for n in [5, 10, 1000, u32::MAX] {
            let d = release_delay(n);
            assert!(
                d >= Duration::from_secs(5) && d <= Duration::from_secs(10),
                "{d:?}"
            );
        }
    }
}
