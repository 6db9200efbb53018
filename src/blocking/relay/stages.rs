//! The relay's stages: the claimer leases batches, the publisher publishes them,
//! the marker records outcomes; plus the cleanup of old dispatched rows.

use super::outage::release_delay;
use super::schedule::idle_wait;
use super::spans;
use super::{lease_left, Claimed, Ctx, Published, Sent, StreamHome};
use crate::blocking::store::{
    BatchLimit, Claim, FailedAttempt, HeldClaim, Lease, Store, Undecodable,
};
use crate::blocking::stream::Deadline;
use crate::core::config::{ClaimMode, OnPark};
use crate::core::retry::{verdict, Backoff, Verdict};
use crate::message::{Delivered, Failure, FailureAction};
use crate::{Error, Result};
use crossbeam_channel::{select, Receiver, RecvTimeoutError, Sender};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

pub(super) fn claimer<S: Store>(ctx: &Ctx<S>, out: Sender<Claimed>) {
    let cfg = &ctx.shared.config;
    let wake = ctx.shared.wake_rx.clone();
    let mut idle = false;
    let mut wait = cfg.check_interval;
    let mut db_failures = 0u32;
    // Row locks until the store says it cannot hold them (then leases for good).
    let mut locks = cfg.claim_mode == ClaimMode::RowLocks;
    let pause =
        Backoff::new(Duration::from_millis(100), Duration::from_secs(5)).unwrap_or_default();
    loop {
        if idle {
            select! {
                recv(wake) -> _ => {},
                recv(ctx.stop_rx) -> _ => {},
                default(wait) => {},
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
        let span = spans::claim(limit.rows);
        let (claim, mut held) = match claim(ctx, &lease, limit, &mut locks) {
            Ok(c) => {
                db_failures = 0;
                ctx.probe.store_outage.succeeded(cfg.report_interval);
                *ctx.probe.last_claim.lock() = Some(SystemTime::now());
                ctx.metrics.claimed(at.elapsed(), c.0.len());
                c
            }
            Err(e) => {
                span.end();
                ctx.store_failed(e);
                db_failures += 1;
                if ctx.sleep(pause.delay(db_failures)) {
                    return;
                }
                idle = false;
                continue;
            }
        };
        span.claimed(&claim.messages);
        span.end();
        // A short claim means the table is drained, unless the byte cap cut it.
        let bytes: usize = claim.messages.iter().map(|m| m.payload.len()).sum();
        idle = claim.len() < cfg.batch_size && bytes <= cfg.max_batch_bytes / 2;
        if idle {
            wait = idle_wait(&ctx.shared.store, cfg.check_interval);
        }
        if !park_undecodable(ctx, &lease, claim.undecodable, held.as_mut()) {
            // The held transaction is lost: its rows are claimable again.
            continue;
        }
        let messages = claim.messages;
        if messages.is_empty() {
            if let Some(h) = held {
                // Commits the parked undecodable rows (or just ends an empty claim).
                if let Err(e) = h.commit(&[], false) {
                    ctx.store_failed(e);
                }
            }
            continue;
        }
        let mut batch = Claimed {
            lease,
            messages,
            at,
            held,
        };
        loop {
            match out.send_timeout(batch, Duration::from_millis(50)) {
                Ok(()) => break,
                Err(e) => {
                    batch = e.into_inner();
                    if ctx.stopped() {
                        ctx.release_claimed(batch);
                        return;
                    }
                }
            }
        }
    }
}

/// One claim, by row locks while `locks` holds and the store supports them.
fn claim<S: Store>(
    ctx: &Ctx<S>,
    lease: &Lease,
    limit: BatchLimit,
    locks: &mut bool,
) -> Result<(Claim, Option<Box<dyn HeldClaim>>)> {
    let store = &ctx.shared.store;
    if *locks {
        match store.claim_locked(lease, limit)? {
            Some(l) => return Ok((l.claim, Some(l.held))),
            None => *locks = false,
        }
    }
    Ok((store.claim(lease, limit)?, None))
}

/// Rows that cannot be decoded can never be published: they park at once, with
/// the reason in `last_error`, and hold up nothing but their own key. False
/// when the held transaction failed (drop it).
fn park_undecodable<S: Store>(
    ctx: &Ctx<S>,
    lease: &Lease,
    rows: Vec<Undecodable>,
    held: Option<&mut Box<dyn HeldClaim>>,
) -> bool {
    if rows.is_empty() {
        return true;
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
    let written = match held {
        Some(h) => h.mark_failed(&failed),
        None => ctx.shared.store.mark_failed(lease, &failed),
    };
    if let Err(e) = written {
        // The lease expires (or the transaction rolls back) and the next claim
        // tries again.
        ctx.store_failed(e);
        return false;
    }
    ctx.counters
        .failed
        .fetch_add(rows.len() as u64, Ordering::Relaxed);
    let route = ctx.metrics.unrouted();
    route.failed.increment(rows.len() as u64);
    route.parked.increment(rows.len() as u64);
    for r in rows {
        ctx.report(
            Failure {
                id: Some(r.id),
                message_id: None,
                error: Error::Decode {
                    id: r.id,
                    reason: r.reason,
                },
                action: FailureAction::Parked,
            },
            None,
        );
    }
    true
}

pub(super) fn publisher<S: Store>(
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
    let mut routes = ctx.metrics.routes();
    let idle_check = ctx.shared.config.check_interval.max(IDLE_CHECK);
    loop {
        let claimed = match input.recv_timeout(idle_check) {
            Ok(c) => c,
            Err(RecvTimeoutError::Timeout) => {
                let alive = home
                    .stream
                    .as_mut()
                    .is_none_or(|s| check_idle(ctx, s.as_mut()));
                if !alive {
                    return;
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        // Not started before stop, or so late that another relay may own it by now.
        if ctx.stopped() || claimed.lease_left() < claimed.lease.duration / 5 {
            ctx.release_claimed(claimed);
            continue;
        }
        let Some(stream) = home.stream.as_mut() else {
            ctx.release_claimed(claimed);
            continue;
        };
        // Publishing ends a fifth of the lease before the lease does: time to record
        // the outcomes while the rows are still ours.
        let deadline = Deadline::with_stop(
            claimed.at + claimed.lease.duration * 4 / 5,
            ctx.stop_rx.clone(),
        );
        let span = spans::publish(&claimed.messages);
        let began = Instant::now();
        let outcomes = catch_unwind(AssertUnwindSafe(|| {
            stream.publish(&claimed.messages, &deadline)
        }));
        if let Ok(o) = &outcomes {
            span.outcomes(o);
        }
        span.end();
        let outcomes = match outcomes {
            Ok(o) if o.len() == claimed.messages.len() => o,
            Ok(o) => {
                // A stream that breaks the one-outcome-per-message contract would
                // do it again with every batch: a bug, stopped like a panic.
                let what = format!(
                    "the stream returned {} outcomes for {} messages",
                    o.len(),
                    claimed.messages.len()
                );
                ctx.release_claimed(claimed);
                ctx.panicked("publisher", &what);
                continue;
            }
            Err(p) => {
                ctx.release_claimed(claimed);
                ctx.panicked("publisher", p.as_ref());
                continue;
            }
        };
        ctx.metrics.published(began.elapsed());
        let now = SystemTime::now();
        for (m, o) in claimed.messages.iter().zip(&outcomes) {
            if o.is_ok() {
                ctx.metrics.lag(now, m.created_at);
            }
        }
        let all_down = outcomes
            .iter()
            .all(|o| o.as_ref().is_err_and(Error::is_transient));
        let Claimed {
            lease,
            messages,
            at,
            held,
        } = claimed;
        // The payloads are dropped here, before the marks.
        let sent: Vec<Sent> = messages
            .into_iter()
            .map(|m| Sent {
                id: m.id,
                message_id: m.message_id,
                attempts: m.attempts,
                route: routes.get(|| stream.route_label(&m.options)),
            })
            .collect();
        if let Err(e) = out.send(Published {
            lease,
            at,
            sent,
            outcomes,
            held,
        }) {
            // The marker is gone (it panicked): give the rows back; published ones
            // are published again (at least once).
            let p = e.into_inner();
            if p.held.is_none() {
                let ids: Vec<i64> = p.sent.iter().map(|s| s.id).collect();
                ctx.release(&p.lease, &ids);
            }
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

/// How often an idle publisher checks its broker (at least: the check interval
/// when longer), so that health sees a broker outage without a message.
const IDLE_CHECK: Duration = Duration::from_secs(5);

/// An idle publisher's [`Stream::check`]: a transient failure is the broker's
/// outage (reported by its rules), a success ends it. False when the check
/// panicked (the relay is stopping).
fn check_idle<S: Store>(ctx: &Ctx<S>, stream: &mut dyn crate::blocking::stream::Stream) -> bool {
    if ctx.stopped() {
        return true;
    }
    let every = ctx.shared.config.report_interval;
    let deadline = Deadline::with_stop(Instant::now() + IDLE_CHECK, ctx.stop_rx.clone());
    match catch_unwind(AssertUnwindSafe(|| stream.check(&deadline))) {
        Ok(None) => {}
        Ok(Some(Ok(()))) => ctx.probe.stream_outage.succeeded(every),
        Ok(Some(Err(e))) if e.is_transient() => {
            if let Some(e) = ctx.probe.stream_outage.failed(e, 0, every) {
                ctx.send_err(Failure {
                    id: None,
                    message_id: None,
                    error: e,
                    action: FailureAction::None,
                });
            }
        }
        Ok(Some(Err(e))) => log::debug!("outboxer: broker check: {e}"),
        Err(p) => {
            ctx.panicked("publisher", p.as_ref());
            return false;
        }
    }
    true
}

/// What one batch's outcomes come to.
#[derive(Default)]
struct Sorted<'a> {
    ok: Vec<&'a Sent>,
    failed: Vec<FailedAttempt>,
    /// With the attempt each one was (1 = the first publish).
    failures: Vec<(Failure, u32)>,
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
                m.route.failed.increment(1);
                m.route.released.increment(1);
                s.released.push(m.id);
                s.outage.get_or_insert((error, m));
            }
            v => {
                let park = v == Verdict::Park;
                m.route.failed.increment(1);
                if park {
                    m.route.parked.increment(1);
                }
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
                s.failures.push((
                    Failure {
                        id: Some(m.id),
                        message_id: Some(m.message_id),
                        error,
                        action: if park {
                            FailureAction::Parked
                        } else {
                            FailureAction::Retry
                        },
                    },
                    m.attempts + 1,
                ));
            }
        }
    }
    s
}

pub(super) fn marker<S: Store>(ctx: &Ctx<S>, input: Receiver<Published>) {
    let cfg = &ctx.shared.config;
    let store = &ctx.shared.store;
    for p in input.iter() {
        let Published {
            lease,
            at,
            sent,
            outcomes,
            held,
        } = p;
        let s = sort(ctx, &sent, outcomes);
        let every = cfg.report_interval;
        let began = Instant::now();
        let delay = match s.outage {
            Some((e, m)) => {
                let outage = &ctx.probe.stream_outage;
                if let Some(e) = outage.failed(e, s.released.len() as u64, every) {
                    ctx.send_err(Failure {
                        id: Some(m.id),
                        message_id: Some(m.message_id),
                        error: e,
                        action: FailureAction::Released,
                    });
                }
                release_delay(outage.streak())
            }
            None => {
                ctx.probe.stream_outage.succeeded(every);
                Duration::ZERO
            }
        };
        let span = spans::mark(&sent, s.ok.len(), s.failed.len(), s.released.len());
        let ids: Vec<i64> = s.ok.iter().map(|m| m.id).collect();
        let delete = cfg.cleanup_before.is_zero();
        let was_held = held.is_some();
        let marked = match held {
            Some(h) => commit_held(ctx, h, &ids, &s.failed, &s.released, delay, delete),
            None => {
                let marked = persist(ctx, &lease, at, || match delete {
                    true => store.delete_dispatched(&lease, &ids),
                    false => store.mark_dispatched(&lease, &ids),
                });
                persist(ctx, &lease, at, || store.mark_failed(&lease, &s.failed));
                persist(ctx, &lease, at, || {
                    store.release(&lease, &s.released, delay)
                });
                marked
            }
        };
        span.end();
        ctx.metrics.marked(began.elapsed());

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
        if !delivered.is_empty() {
            // The next message of a delivered one's key is claimable only now: an
            // idle claimer would otherwise wait for its next poll to take it.
            let _ = ctx.shared.wake_tx.try_send(());
        }
        ctx.counters
            .published
            .fetch_add(delivered.len() as u64, Ordering::Relaxed);
        let failed = s.failures.len() + s.released.len() + unmarked.len();
        ctx.counters
            .failed
            .fetch_add(failed as u64, Ordering::Relaxed);
        for m in delivered {
            m.route.published.increment(1);
            let d = Delivered {
                id: m.id,
                message_id: m.message_id,
                attempts: m.attempts,
            };
            if ctx.ok_tx.try_send(d).is_err() {
                ctx.counters.dropped_ok.fetch_add(1, Ordering::Relaxed);
                ctx.metrics.dropped_ok();
            }
        }
        for (f, attempt) in s.failures {
            ctx.report(f, Some(attempt));
        }
        // One log line for the batch (a database outage would otherwise log every
        // message of every batch in flight); err() still gets one per message.
        if let (Some(first), Some(last)) = (unmarked.first(), unmarked.last()) {
            let why = match (&marked, was_held) {
                (Some(_), _) => "the lease was lost to another relay",
                (None, false) => "the database was unreachable until the lease ended",
                (None, true) => "their transaction ended before the commit: database unreachable, or idle past the lease",
            };
            log::warn!(
                count = unmarked.len(),
                first_message_id:% = first.message_id,
                first_row_id = first.id,
                last_row_id = last.id;
                "outboxer: {} published message(s) not marked dispatched ({why}), first row {}, last row {}, \
                 first message {}: they are published again (consumers drop the duplicates \
                 by message id)",
                unmarked.len(),
                first.id,
                last.id,
                first.message_id
            );
        }
        for m in unmarked {
            let error = match &marked {
                Some(_) => Error::LeaseLost { count: 1 },
                None if was_held => Error::unavailable(
                    "database",
                    "the claim's transaction ended before its outcomes were committed",
                ),
                None => Error::unavailable(
                    "database",
                    "the dispatched mark did not land before the lease ended",
                ),
            };
            ctx.send_err(Failure {
                id: Some(m.id),
                message_id: Some(m.message_id),
                error,
                action: FailureAction::NotMarked,
            });
        }
    }
}

/// Writes a held batch's outcomes in its transaction and commits: all of them
/// land, or none (the rows are then claimable again at once, and the published
/// ones are published again).
fn commit_held<S: Store>(
    ctx: &Ctx<S>,
    mut held: Box<dyn HeldClaim>,
    dispatched: &[i64],
    failed: &[FailedAttempt],
    released: &[i64],
    delay: Duration,
    delete: bool,
) -> Option<Vec<i64>> {
    let written = held
        .mark_failed(failed)
        .and_then(|_| held.release(released, delay))
        .and_then(|_| held.commit(dispatched, delete));
    match written {
        Ok(ids) => Some(ids),
        Err(e) => {
            ctx.store_failed(e);
            None
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

pub(super) fn cleanup<S: Store>(ctx: &Ctx<S>) {
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
