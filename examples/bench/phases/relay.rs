//! Phases 4 and 5, `relay_per_s` and `relay2_per_s`: one relay, then two on one table.

use crate::breakdown::{CpuSample, TimedStore, TimedStream, Timings};
use crate::{Backend, BoxResult, Broker, Env, CHUNK, PHASE_TIMEOUT};
use outboxer::{Outbox, RelayCounters, Store, Stream};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Phases 4 and 5: enqueue N messages, then time `relays` relays until all are published.
pub fn relay_phase<B: Backend>(
    env: &Env,
    db: &B,
    broker: &Broker,
    relays: usize,
    batch: usize,
) -> BoxResult<Duration> {
    let table = relay_table(env, relays, batch);
    db.drop_table(&table)?;
    if !env.breakdown {
        let mut outboxes = Vec::with_capacity(relays);
        for _ in 0..relays {
            let stream = env.stream(true)?;
            outboxes.push(relay_outbox(db.store(&table)?, stream, batch)?);
        }
        return time_relays(env, db, broker, &table, outboxes);
    }
    let timings = Arc::new(Timings::default());
    let mut outboxes = Vec::with_capacity(relays);
    for _ in 0..relays {
        let store = TimedStore {
            inner: db.store(&table)?,
            timings: Arc::clone(&timings),
        };
        let stream = TimedStream {
            inner: env.stream(true)?,
            timings: Arc::clone(&timings),
        };
        outboxes.push(relay_outbox(store, stream, batch)?);
    }
    let took = time_relays(env, db, broker, &table, outboxes)?;
    timings.print(took, relays);
    Ok(took)
}

/// The table of a relay run: `relay<batch>` for one relay, `relay<relays>` for more.
pub fn relay_table(env: &Env, relays: usize, batch: usize) -> String {
    if relays == 1 {
        env.table(&format!("relay{batch}"))
    } else {
        env.table(&format!("relay{relays}"))
    }
}

/// The outbox of phases 4 and 5: polling every 10 ms, no cleanup thread.
fn relay_outbox<S: Store>(
    store: S,
    stream: impl Stream,
    batch: usize,
) -> outboxer::Result<Outbox<S>> {
    Outbox::builder()
        .store(store)
        .stream(stream)
        .batch_size(batch)
        .check_interval(Duration::from_millis(10))
        .no_cleanup()
        .build()
}

/// Enqueues N messages, starts every outbox's relay and times them until all are published.
fn time_relays<B: Backend, S: Store>(
    env: &Env,
    db: &B,
    broker: &Broker,
    table: &str,
    outboxes: Vec<Outbox<S>>,
) -> BoxResult<Duration> {
    let n = env.messages as u64;
    let relays = outboxes.len();
    for chunk in env.make_messages(env.messages).chunks(CHUNK) {
        outboxes[0].send_batch(chunk)?;
    }

    let meter = if env.breakdown { db.log_meter()? } else { None };
    let cpu = env.breakdown.then(CpuSample::take).flatten();
    let start = Instant::now();
    let mut running = Vec::with_capacity(relays);
    for outbox in &outboxes {
        running.push(outbox.start()?);
    }
    let mut failures = 0usize;
    let took = loop {
        let published: u64 = running.iter().map(|r| r.counters().published).sum();
        let errors = running.iter().flat_map(|r| r.err().try_iter());
        if let Some(took) = relay_progress(n, start, published, &mut failures, errors)? {
            break took;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    if env.breakdown {
        let written = match meter {
            Some(m) => format!("; {}", m.report(n)?),
            None => String::new(),
        };
        println!(
            "    {} during the relay run{written}",
            CpuSample::since(&cpu, n)
        );
    }
    let mut total = RelayCounters::default();
    for relay in &running {
        relay.stop()?;
        let c = relay.counters();
        total.published += c.published;
        total.failed += c.failed;
    }
    if total.failed > 0 {
        println!("    note: {} failed publish attempts", total.failed);
    }
    if total.published != n {
        println!("    note: published {} for {n} messages", total.published);
    }
    let stats = outboxes[0].stats()?;
    if stats.pending != 0 || stats.dispatched != n {
        return Err(format!(
            "relay: table has {} pending, {} dispatched after the run",
            stats.pending, stats.dispatched
        )
        .into());
    }
    drop(running);
    drop(outboxes);
    broker.settle(total.published)?;
    db.drop_table(table)?;
    Ok(took)
}

/// One look at the relays of phases 4 and 5 (blocking or async): the time taken
/// once `n` messages are published, the first failures printed, an error once the
/// phase has run too long.
pub fn relay_progress(
    n: u64,
    start: Instant,
    published: u64,
    failures: &mut usize,
    errors: impl Iterator<Item = outboxer::Failure>,
) -> BoxResult<Option<Duration>> {
    if published >= n {
        return Ok(Some(start.elapsed()));
    }
    for f in errors {
        *failures += 1;
        if *failures <= 3 {
            eprintln!("bench: relay failure: {} ({:?})", f.error, f.action);
        }
    }
    if start.elapsed() > PHASE_TIMEOUT {
        return Err(
            format!("relay: only {published} of {n} published after {PHASE_TIMEOUT:?}").into(),
        );
    }
    Ok(None)
}
