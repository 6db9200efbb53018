//! `outboxer relay`: the library's relay as a long-running process.

use crate::fail::Fail;
use crate::serve;
use crate::settings::RelaySettings;
use crossbeam_channel::{select, tick, Receiver};
use outboxer::{FailureAction, Outbox, Store, Stream};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// SIGINT and SIGTERM as a channel: the first one asks for a graceful stop; a second
/// one exits at once (leases then expire and other relays take the rows over).
pub fn stop_signals() -> Result<Receiver<i32>, Fail> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .map_err(|e| Fail::runtime(format!("cannot install signal handlers: {e}")))?;
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::Builder::new()
        .name("outboxer-signals".into())
        .spawn(move || {
            let mut first = true;
            for sig in signals.forever() {
                if first {
                    first = false;
                    let _ = tx.try_send(sig);
                } else {
                    log::warn!("second signal: exiting without waiting for the relay");
                    std::process::exit(128 + sig);
                }
            }
        })
        .map_err(|e| Fail::runtime(format!("cannot start the signal thread: {e}")))?;
    Ok(rx)
}

/// Runs the relay until a stop signal; logs outcomes to stderr.
pub fn run(
    store: Box<dyn Store>,
    stream: Box<dyn Stream>,
    s: &RelaySettings,
    what: &str,
) -> Result<(), Fail> {
    #[cfg(debug_assertions)]
    let stream = failpoint::wrap(stream);
    // Before the relay starts: it registers its series with the recorder.
    let metrics = match s.listen {
        Some(_) => Some(serve::install()?),
        None => None,
    };
    let mut b = Outbox::builder()
        .store(store)
        .stream(stream)
        .batch_size(s.batch_size)
        .check_interval(s.check_interval)
        .lease(s.lease)
        .claim_mode(s.claim_mode)
        .max_attempts(s.max_attempts)
        .backoff(s.backoff_base, s.backoff_max)
        .cleanup_before(s.cleanup_before)
        .report_interval(s.log_interval)
        .metrics_interval(s.metrics_interval);
    b = match s.cleanup_interval {
        Some(i) => b.cleanup_interval(i),
        None => b.no_cleanup(),
    };
    let outbox = b.build()?;
    if s.migrate {
        outbox.migrate()?;
        log::info!("table migrated");
    }
    // A missing table or an unreachable database is a start-up error, not a warning
    // repeated at every check interval.
    if let Err(e) = outbox.stats() {
        let mut f = Fail::from(e);
        f.message
            .push_str(" (is the table there? run `outboxer migrate` or pass --migrate)");
        return Err(f);
    }
    let stop = stop_signals()?;
    let relay = Arc::new(outbox.start()?);
    log::info!("relay started: {what}");
    let server = match (s.listen, metrics) {
        (Some(addr), Some(handle)) => {
            let probe = serve::Probe {
                relay: Arc::clone(&relay),
                handle,
                table: outbox.store().table_name(),
                // The claimer claims once per check interval when idle; a few
                // missed rounds (and never less than 5 s) make a relay unready.
                ready_within: (s.check_interval * 3).max(Duration::from_secs(5)),
            };
            let server = serve::start(addr, probe);
            if server.is_ok() {
                log::info!("serving /metrics, /healthz and /readyz on http://{addr}");
            }
            Some(server?)
        }
        _ => None,
    };
    let summary = tick(s.log_interval);
    let started = Instant::now();
    // One source of truth for failures: the library logs each message failure
    // once and every outage rate-limited (when it starts, per report interval,
    // when it ends). The command counts outcomes for its summary and adds no line
    // per message at any level below trace.
    let (mut ok, mut failed, mut parked, mut released) = (0u64, 0u64, 0u64, 0u64);
    let (mut last_ok, mut last_failed) = (0u64, 0u64);
    loop {
        select! {
            recv(relay.ok()) -> d => match d {
                Ok(d) => {
                    ok += 1;
                    log::trace!(message_id:display = d.message_id, row = d.id; "published");
                }
                Err(_) => break,
            },
            recv(relay.err()) -> f => match f {
                // An outage arrives once per report (the library counts its
                // released messages in that report), a message failure per message.
                Ok(f) if f.action == FailureAction::Released => released += 1,
                Ok(f) => {
                    failed += 1;
                    if f.action == FailureAction::Parked {
                        parked += 1;
                    }
                }
                Err(_) => break,
            },
            recv(summary) -> _ => {
                if ok != last_ok || failed != last_failed {
                    let (p, f) = (ok - last_ok, failed - last_failed);
                    log::info!(
                        published = p, failed = f, total_published = ok, total_failed = failed,
                        total_parked = parked, outage_reports = released;
                        "published {p} failed {f} in the last {:?} (total: published {ok}, \
                         failed {failed}, parked {parked}, outage reports {released})",
                        s.log_interval
                    );
                    last_ok = ok;
                    last_failed = failed;
                }
            },
            recv(stop) -> sig => {
                log::info!(
                    "signal {}: stopping (finishing the batch in flight, releasing claimed rows)",
                    sig.unwrap_or_default()
                );
                break;
            },
        }
    }
    let stopped = relay.stop();
    if let Some(server) = server {
        server.stop();
    }
    stopped?;
    // Outcomes recorded while stopping (the library logged the failures).
    ok += relay.ok().try_iter().count() as u64;
    for f in relay.err().try_iter() {
        if f.action != FailureAction::Released {
            failed += 1;
        }
        if f.action == FailureAction::Parked {
            parked += 1;
        }
    }
    let c = relay.counters();
    log::info!(
        "relay stopped after {:.1}s: published {ok}, failed {failed}, parked {parked} \
         (counters: published {}, failed {}, outcomes dropped {})",
        started.elapsed().as_secs_f64(),
        c.published,
        c.failed,
        c.dropped_ok + c.dropped_err
    );
    Ok(())
}

/// Debug builds only: `OUTBOXER_FAILPOINT=publish-panic-after=N` makes the stream
/// panic on its publish number N+1, so that tests can check that a panicking relay
/// stops cleanly and the command exits non-zero. Release builds have no failpoints.
#[cfg(debug_assertions)]
mod failpoint {
    use outboxer::stream::{Deadline, Validate};
    use outboxer::{StoredMessage, Stream};
    use std::sync::Arc;

    struct PanicAfter {
        inner: Box<dyn Stream>,
        left: u64,
    }

    impl Stream for PanicAfter {
        fn validator(&self) -> Arc<dyn Validate> {
            self.inner.validator()
        }
        fn publish(
            &mut self,
            batch: &[StoredMessage],
            deadline: &Deadline,
        ) -> Vec<outboxer::Result<()>> {
            if self.left == 0 {
                panic!("failpoint publish-panic-after");
            }
            self.left -= 1;
            self.inner.publish(batch, deadline)
        }
        fn close(&mut self) {
            self.inner.close();
        }
    }

    pub fn wrap(stream: Box<dyn Stream>) -> Box<dyn Stream> {
        let n = std::env::var("OUTBOXER_FAILPOINT")
            .ok()
            .and_then(|v| v.strip_prefix("publish-panic-after=")?.parse().ok());
        match n {
            Some(left) => Box::new(PanicAfter {
                inner: stream,
                left,
            }),
            None => stream,
        }
    }
}
