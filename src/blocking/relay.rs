//! The relay: a pipeline of threads. The claimer leases batches, the publisher
//! (owner of the stream) publishes them with broker confirms, the marker records
//! outcomes, so that database round trips overlap with publishing. A cleanup
//! thread deletes old dispatched rows; a listener turns NOTIFY into wake-ups.

use super::outbox::Shared;
use super::store::{BatchLimit, FailedAttempt, Lease, Store, Undecodable};
use super::stream::{Deadline, Stream};
use crate::core::config::OnPark;
use crate::core::retry::{verdict, Backoff, Verdict};
use crate::message::{Delivered, Failure, FailureAction, StoredMessage};
use crate::{Error, Result};
use crossbeam_channel::{bounded, select, Receiver, RecvTimeoutError, Sender};
use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A running relay. `ok()` and `err()` report outcomes; `stop()` (or drop)
/// finishes the in-flight batch and joins the threads.
pub struct Relay {
    ok_rx: Receiver<Delivered>,
    err_rx: Receiver<Failure>,
    stop_tx: Mutex<Option<Sender<()>>>,
    threads: Mutex<Vec<(&'static str, JoinHandle<()>)>>,
    counters: Arc<Counters>,
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
    /// Failed publish attempts (retried, parked or released).
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

    /// Failures (like Go's `ErrChan`), with what the relay did about each.
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
    pub fn stop(&self) -> Result<()> {
        drop(self.stop_tx.lock().take());
        let threads = std::mem::take(&mut *self.threads.lock());
        let mut result = Ok(());
        for (name, t) in threads {
            if t.join().is_err() {
                log::error!("outboxer: relay thread {name} panicked");
                result = Err(Error::RelayPanicked(name));
            }
        }
        result
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// A claimed batch on its way through the pipeline.
struct Claimed {
    lease: Lease,
    messages: Vec<StoredMessage>,
    /// When the lease started, by our clock; the lease ends `lease.duration` later.
    at: Instant,
}

impl Claimed {
    fn lease_left(&self) -> Duration {
        self.lease.duration.saturating_sub(self.at.elapsed())
    }
}

/// What the publisher hands to the marker.
struct Published {
    claimed: Claimed,
    outcomes: Vec<Result<()>>,
}

/// Everything the threads share.
struct Ctx<S: Store> {
    shared: Arc<Shared<S>>,
    stop_rx: Receiver<()>,
    ok_tx: Sender<Delivered>,
    err_tx: Sender<Failure>,
    counters: Arc<Counters>,
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

    fn report(&self, failure: Failure) {
        log::warn!(
            "outboxer: {} (message {:?}, {:?})",
            failure.error,
            failure.message_id,
            failure.action
        );
        if self.err_tx.try_send(failure).is_err() {
            self.counters.dropped_err.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn report_general(&self, error: Error) {
        self.report(Failure {
            id: None,
            message_id: None,
            error,
            action: FailureAction::None,
        });
    }

    fn release(&self, c: &Claimed) {
        let ids: Vec<i64> = c.messages.iter().map(|m| m.id).collect();
        if let Err(e) = self.shared.store.release(&c.lease, &ids, Duration::ZERO) {
            // The lease expires by itself; another relay will take the rows then.
            self.report_general(e);
        }
    }
}

pub(crate) fn start<S: Store>(shared: Arc<Shared<S>>, stream: Box<dyn Stream>) -> Result<Relay> {
    let cfg = shared.config.clone();
    let (stop_tx, stop_rx) = bounded::<()>(0);
    let (ok_tx, ok_rx) = bounded(cfg.channel_capacity);
    let (err_tx, err_rx) = bounded(cfg.channel_capacity);
    let counters = Arc::new(Counters::default());
    let ctx = Arc::new(Ctx {
        shared: Arc::clone(&shared),
        stop_rx,
        ok_tx,
        err_tx,
        counters: Arc::clone(&counters),
    });
    // One batch may wait while another is published: enough to overlap, little to hold.
    let (claimed_tx, claimed_rx) = bounded::<Claimed>(1);
    let (published_tx, published_rx) = bounded::<Published>(2);
    let listener = shared.store.wake_listener()?;

    let mut threads: Vec<(&'static str, JoinHandle<()>)> = Vec::new();
    let spawn = |name: &'static str, f: Box<dyn FnOnce() + Send>| {
        std::thread::Builder::new()
            .name(format!("outboxer-{name}"))
            .spawn(f)
            .map(|h| (name, h))
            .map_err(|e| Error::config("threads", format!("cannot spawn {name}: {e}")))
    };
    let c = Arc::clone(&ctx);
    threads.push(spawn("marker", Box::new(move || marker(&c, published_rx)))?);
    let c = Arc::clone(&ctx);
    threads.push(spawn(
        "publisher",
        Box::new(move || publisher(&c, stream, claimed_rx, published_tx)),
    )?);
    let c = Arc::clone(&ctx);
    threads.push(spawn("claimer", Box::new(move || claimer(&c, claimed_tx)))?);
    if cfg.cleanup_interval.is_some() {
        let c = Arc::clone(&ctx);
        threads.push(spawn("cleanup", Box::new(move || cleanup(&c)))?);
    }
    if let Some(mut l) = listener {
        let c = Arc::clone(&ctx);
        threads.push(spawn(
            "listener",
            Box::new(move || {
                while !c.stopped() {
                    match l.wait(Duration::from_millis(250)) {
                        Ok(true) => {
                            let _ = c.shared.wake_tx.try_send(());
                        }
                        Ok(false) => {}
                        Err(e) => {
                            log::warn!("outboxer: wake-up listener: {e}; polling meanwhile");
                            if c.sleep(Duration::from_secs(1)) {
                                break;
                            }
                        }
                    }
                }
            }),
        )?);
    }
    Ok(Relay {
        ok_rx,
        err_rx,
        stop_tx: Mutex::new(Some(stop_tx)),
        threads: Mutex::new(threads),
        counters,
    })
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
                c
            }
            Err(e) => {
                ctx.report_general(e);
                db_failures += 1;
                if ctx.sleep(pause.delay(db_failures)) {
                    return;
                }
                idle = false;
                continue;
            }
        };
        idle = claim.len() < cfg.batch_size;
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
                        ctx.release(&batch);
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
        ctx.report_general(e);
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
    mut stream: Box<dyn Stream>,
    input: Receiver<Claimed>,
    out: Sender<Published>,
) {
    let pause = ctx.shared.config.backoff;
    let mut down = 0u32;
    for claimed in input.iter() {
        // Not started before stop, or so late that another relay may own it by now.
        if ctx.stopped() || claimed.lease_left() < claimed.lease.duration / 5 {
            ctx.release(&claimed);
            continue;
        }
        let deadline =
            Deadline::with_stop(claimed.at + claimed.lease.duration, ctx.stop_rx.clone());
        let outcomes = stream.publish(&claimed.messages, &deadline);
        let unavailable = outcomes
            .iter()
            .any(|o| o.as_ref().is_err_and(Error::is_transient));
        if out.send(Published { claimed, outcomes }).is_err() {
            break;
        }
        if unavailable {
            down += 1;
            // The broker is down: wait before the next batch instead of spinning.
            if ctx.sleep(pause.delay(down).min(Duration::from_secs(5))) {
                continue;
            }
        } else {
            down = 0;
        }
    }
    stream.close();
    *ctx.shared.stream.lock() = Some(stream);
}

fn marker<S: Store>(ctx: &Ctx<S>, input: Receiver<Published>) {
    let cfg = &ctx.shared.config;
    for Published { claimed, outcomes } in input.iter() {
        let mut ok = Vec::new();
        let mut failed = Vec::new();
        let mut released = Vec::new();
        let mut failures = Vec::new();
        for (m, outcome) in claimed.messages.iter().zip(outcomes) {
            match outcome {
                Ok(()) => ok.push(m),
                Err(error) => {
                    let v = verdict(&error, m.attempts, cfg.max_attempts, &cfg.backoff);
                    let action = match v {
                        Verdict::Release => {
                            released.push(m.id);
                            FailureAction::Released
                        }
                        Verdict::Park | Verdict::Retry(_) => {
                            failed.push(FailedAttempt {
                                id: m.id,
                                error: error.to_string(),
                                retry_in: match v {
                                    Verdict::Retry(d) => d,
                                    _ => Duration::ZERO,
                                },
                                park: v == Verdict::Park,
                                hold_key: cfg.on_park == OnPark::HoldKey,
                            });
                            if v == Verdict::Park {
                                FailureAction::Parked
                            } else {
                                FailureAction::Retry
                            }
                        }
                    };
                    failures.push(Failure {
                        id: Some(m.id),
                        message_id: Some(m.message_id),
                        error,
                        action,
                    });
                }
            }
        }
        let store = &ctx.shared.store;
        let ids: Vec<i64> = ok.iter().map(|m| m.id).collect();
        match persist(ctx, &claimed, |l| store.mark_dispatched(l, &ids)) {
            Some(n) if n.len() < ids.len() => ctx.report_general(Error::LeaseLost {
                count: ids.len() - n.len(),
            }),
            _ => {}
        }
        persist(ctx, &claimed, |l| store.mark_failed(l, &failed));
        persist(ctx, &claimed, |l| {
            store.release(l, &released, Duration::ZERO)
        });
        ctx.counters
            .published
            .fetch_add(ok.len() as u64, Ordering::Relaxed);
        ctx.counters
            .failed
            .fetch_add(failures.len() as u64, Ordering::Relaxed);
        for m in ok {
            let d = Delivered {
                id: m.id,
                message_id: m.message_id,
                attempts: m.attempts,
            };
            if ctx.ok_tx.try_send(d).is_err() {
                ctx.counters.dropped_ok.fetch_add(1, Ordering::Relaxed);
            }
        }
        for f in failures {
            ctx.report(f);
        }
    }
}

/// Runs a mark statement, retrying while the lease lasts: a mark that never lands
/// means the rows are published again after the lease expires (at-least-once).
fn persist<S: Store, T>(
    ctx: &Ctx<S>,
    claimed: &Claimed,
    mut f: impl FnMut(&Lease) -> Result<T>,
) -> Option<T> {
    let pause = Backoff::new(Duration::from_millis(50), Duration::from_secs(2)).unwrap_or_default();
    let mut attempt = 0;
    loop {
        match f(&claimed.lease) {
            Ok(n) => return Some(n),
            Err(e) => {
                attempt += 1;
                let wait = pause.delay(attempt);
                if claimed.lease_left() <= wait {
                    ctx.report_general(e);
                    return None;
                }
                log::warn!("outboxer: {e}; retrying");
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
                    ctx.report_general(e);
                    break;
                }
            }
            if ctx.stopped() {
                return;
            }
        }
    }
}
