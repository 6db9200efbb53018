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

mod failure_log;
mod metrics;
mod outage;
mod schedule;
mod spans;
mod stages;

use super::outbox::Shared;
use super::store::{HeldClaim, Lease, Store};
use super::stream::Stream;
use crate::message::{Delivered, Failure, FailureAction, MessageId, StoredMessage};
use crate::{Error, Result};
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};
use parking_lot::Mutex;
use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use failure_log::FailureLog;
use metrics::{RelayMetrics, Route};
use outage::Outage;
use stages::{claimer, cleanup, marker, publisher};

/// A running relay. `ok()` and `err()` report outcomes; `stop()` (or drop)
/// finishes the in-flight batch and joins the threads.
pub struct Relay {
    ok_rx: Receiver<Delivered>,
    err_rx: Receiver<Failure>,
    control: Arc<Control>,
    threads: Mutex<Vec<(&'static str, JoinHandle<()>)>>,
    counters: Arc<Counters>,
    probe: Arc<Probe>,
}

/// What [`Relay::health`] reads, written by the relay's threads.
struct Probe {
    store_outage: Outage,
    stream_outage: Outage,
    last_claim: Mutex<Option<SystemTime>>,
}

/// A relay's health, for liveness and readiness probes ([`Relay::health`]).
///
/// ```
/// use outboxer::Health;
/// use std::time::{Duration, SystemTime};
///
/// let h = Health {
///     threads_alive: true,
///     last_claim: Some(SystemTime::now()),
///     store_outage: None,
///     stream_outage: None,
/// };
/// assert!(h.ready(Duration::from_secs(10)).is_ok());
/// let stale = Health { last_claim: None, ..h };
/// assert!(stale.ready(Duration::from_secs(10)).is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    /// Every relay thread runs (false once one panicked or the relay stopped).
    pub threads_alive: bool,
    /// When the claimer last completed a claim (with or without messages); it
    /// claims at least once per check interval while the database answers.
    pub last_claim: Option<SystemTime>,
    /// The database's outage, while its last operation failed.
    pub store_outage: Option<OutageStatus>,
    /// The broker's outage, while its last batch (or, when idle, its last
    /// [`Stream::check`], every 5 s) failed as unavailable. Streams without a
    /// check (all but AMQP so far) show an idle relay's broker outage with its
    /// next message.
    pub stream_outage: Option<OutageStatus>,
}

/// An ongoing outage of the database or the broker, as [`Health`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutageStatus {
    /// When it started (by this process's clock).
    pub since: SystemTime,
    /// Messages released or operations failed since it started.
    pub failures: u64,
    /// The last error.
    pub last_error: String,
}

impl Health {
    /// `Ok` when the relay can do its work: its threads run, neither the
    /// database nor the broker is failing, and a claim completed within `within`
    /// (a few check intervals); otherwise the reason, for a readiness probe.
    pub fn ready(&self, within: Duration) -> std::result::Result<(), String> {
        if !self.threads_alive {
            return Err("the relay's threads are not running".into());
        }
        if let Some(o) = &self.store_outage {
            return Err(format!("database unavailable: {}", o.last_error));
        }
        if let Some(o) = &self.stream_outage {
            return Err(format!("broker unavailable: {}", o.last_error));
        }
        let age = self
            .last_claim
            .map(|t| SystemTime::now().duration_since(t).unwrap_or_default());
        match age {
            Some(a) if a <= within => Ok(()),
            Some(a) => Err(format!("no claim completed for {a:.0?}")),
            None => Err("no claim completed yet".into()),
        }
    }
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

    /// Whether the relay's threads run, when it last claimed, and the outages it
    /// is in: what a liveness or readiness probe needs (see [`Health::ready`]).
    ///
    /// ```no_run
    /// # fn demo(relay: &outboxer::Relay) {
    /// use std::time::Duration;
    /// let h = relay.health();
    /// if let Err(why) = h.ready(Duration::from_secs(10)) {
    ///     eprintln!("not ready: {why}");
    /// }
    /// # }
    /// ```
    pub fn health(&self) -> Health {
        let threads = self.threads.lock();
        let threads_alive = !threads.is_empty()
            && threads.iter().all(|(_, t)| !t.is_finished())
            && self.control.panicked.lock().is_none();
        Health {
            threads_alive,
            last_claim: *self.probe.last_claim.lock(),
            store_outage: self.probe.store_outage.status(),
            stream_outage: self.probe.stream_outage.status(),
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
    /// The transaction holding the rows by their locks ([`crate::ClaimMode::RowLocks`]);
    /// `None` when they are leased. Dropped without a commit, it gives them back.
    held: Option<Box<dyn HeldClaim>>,
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
    /// Its route's counters.
    route: Route,
}

/// What the publisher hands to the marker.
struct Published {
    lease: Lease,
    at: Instant,
    sent: Vec<Sent>,
    outcomes: Vec<Result<()>>,
    held: Option<Box<dyn HeldClaim>>,
}

/// Everything the threads share.
struct Ctx<S: Store> {
    shared: Arc<Shared<S>>,
    control: Arc<Control>,
    stop_rx: Receiver<()>,
    ok_tx: Sender<Delivered>,
    err_tx: Sender<Failure>,
    counters: Arc<Counters>,
    probe: Arc<Probe>,
    metrics: RelayMetrics,
    failure_log: FailureLog,
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
            self.metrics.dropped_err();
        }
    }

    /// A failure of one message (refused, retried, parked): reported each time,
    /// with the message id, row id and attempt (1 = the first publish) also as
    /// the log record's key-values.
    fn report(&self, failure: Failure, attempt: Option<u32>) {
        self.failure_log
            .log(&failure, attempt, self.shared.config.report_interval);
        self.send_err(failure);
    }

    /// A database failure: reported when due (see [`Outage`]).
    fn store_failed(&self, error: Error) {
        let every = self.shared.config.report_interval;
        if let Some(error) = self.probe.store_outage.failed(error, 1, every) {
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

    /// Gives a batch back at once: a held one by rolling its transaction back,
    /// a leased one by releasing its rows.
    fn release_claimed(&self, c: Claimed) {
        if c.held.is_some() {
            drop(c);
            return;
        }
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
        self.metrics.panicked(thread);
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
    let probe = Arc::new(Probe {
        store_outage: Outage::new("database"),
        stream_outage: Outage::new("broker"),
        last_claim: Mutex::new(None),
    });
    let metrics = RelayMetrics::new(
        shared.store.table_name(),
        home.stream
            .as_ref()
            .map_or_else(|| "custom".into(), |s| s.name().to_owned()),
        cfg.metrics_route_label,
    );
    let ctx = Arc::new(Ctx {
        shared: Arc::clone(&shared),
        control: Arc::clone(&control),
        stop_rx,
        ok_tx,
        err_tx,
        counters: Arc::clone(&counters),
        probe: Arc::clone(&probe),
        metrics,
        failure_log: FailureLog::new(),
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
        })
        .and_then(|()| match cfg!(feature = "metrics") {
            true => spawn("metrics", Box::new(stats_gauges)),
            false => Ok(()),
        });
    let relay = Relay {
        ok_rx,
        err_rx,
        control,
        threads: Mutex::new(threads),
        counters,
        probe,
    };
    match started {
        Ok(()) => {
            ctx.metrics.started();
            Ok(relay)
        }
        Err(e) => {
            // The threads that did start stop again and hand the stream back.
            log::error!("outboxer: {e}");
            let _ = relay.stop();
            Err(e)
        }
    }
}

/// The table gauges: one stats query per metrics interval, on its own thread so
/// that a slow query never holds up a claim.
fn stats_gauges<S: Store>(ctx: &Ctx<S>) {
    let every = ctx.shared.config.metrics_interval;
    loop {
        match ctx.shared.store.stats() {
            Ok(s) => ctx.metrics.stats(&s),
            // Part of the database's outage (reported by the claimer's rules).
            Err(e) => ctx.store_failed(e),
        }
        if ctx.sleep(every) {
            return;
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
