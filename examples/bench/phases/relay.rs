//! Phases 4 and 5, `relay_per_s` and `relay2_per_s`: one relay, then two on one
//! table, in one mode (old or new), with the database's CPU and log bytes.

use crate::breakdown::{TimedStore, TimedStream, Timings};
use crate::cpu::{my_ports, CpuSample, DbCpu};
use crate::mode::{Claims, Mode};
use crate::{Backend, BoxResult, Broker, Env, CHUNK, PHASE_TIMEOUT};
use outboxer::{Outbox, RelayCounters, Store, Stream};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What one relay run measured.
pub struct RelayRun {
    pub took: Duration,
    /// Database server CPU µs per message (None: not measurable, e.g. SQLite).
    pub db_cpu_us: Option<f64>,
    /// WAL / redo bytes per message (server-wide; None: not measured).
    pub wal_bytes: Option<f64>,
    /// The old mode's deferred cost: the cleanup pass that later deletes the kept
    /// rows, run after the relay (CPU µs, log bytes per message).
    pub cleanup: Option<(Option<f64>, Option<f64>)>,
    /// How the claims ran: what the store answered to a row-lock probe, and, with
    /// `--breakdown`, checked against the claims counted.
    pub claims: Option<Claims>,
}

/// Phases 4 and 5: enqueue N messages, then time `relays` relays in `mode` until
/// all are published. With `--breakdown` the store and stream are timed, and the
/// claims counted: a run whose claims are not the kind `mode` means on this store
/// (row locks where it can hold them) is an error, not a result.
pub fn relay_phase<B: Backend>(
    env: &Env,
    db: &B,
    broker: &Broker,
    relays: usize,
    batch: usize,
    mode: Mode,
) -> BoxResult<RelayRun> {
    let table = relay_table(env, relays, batch, mode);
    db.drop_table(&table)?;
    let mut stores = (0..relays)
        .map(|_| db.store(&table))
        .collect::<BoxResult<Vec<_>>>()?;
    let expected = mode.expected_claims(&stores[0])?;
    if !env.breakdown {
        let mut outboxes = Vec::with_capacity(relays);
        for store in stores {
            outboxes.push(relay_outbox(store, env.stream(true)?, batch, mode)?);
        }
        let mut run = time_relays(env, db, broker, &table, outboxes, mode)?;
        run.claims = Some(expected);
        return Ok(run);
    }
    let timings = Arc::new(Timings::default());
    let mut outboxes = Vec::with_capacity(relays);
    for inner in stores.drain(..) {
        let store = TimedStore {
            inner,
            timings: Arc::clone(&timings),
        };
        let stream = TimedStream {
            inner: env.stream(true)?,
            timings: Arc::clone(&timings),
        };
        outboxes.push(relay_outbox(store, stream, batch, mode)?);
    }
    let mut run = time_relays(env, db, broker, &table, outboxes, mode)?;
    run.claims = Some(expected);
    timings.print(run.took, relays);
    let ran = timings.claims();
    if ran != expected {
        return Err(format!(
            "relay ({} mode): its claims ran as {}, expected {} on this store",
            mode.name(),
            ran.name(),
            expected.name()
        )
        .into());
    }
    Ok(run)
}

/// The table of a relay run: `relay<batch>_<mode>` for one relay,
/// `relay<relays>_<mode>` for more.
pub fn relay_table(env: &Env, relays: usize, batch: usize, mode: Mode) -> String {
    let n = if relays == 1 { batch } else { relays };
    env.table(&format!("relay{n}_{}", mode.name()))
}

/// The outbox of phases 4 and 5: polling every 10 ms, the mode's claims and
/// retention (the old mode's cleanup thread runs, as by default, but deletes
/// nothing within a run: its rows are kept for days).
fn relay_outbox<S: Store>(
    store: S,
    stream: impl Stream,
    batch: usize,
    mode: Mode,
) -> outboxer::Result<Outbox<S>> {
    mode.configure(Outbox::builder())
        .store(store)
        .stream(stream)
        .batch_size(batch)
        .check_interval(Duration::from_millis(10))
        .build()
}

/// Enqueues N messages, starts every outbox's relay and times them until all are
/// published; measures the database's CPU and log bytes meanwhile.
fn time_relays<B: Backend, S: Store>(
    env: &Env,
    db: &B,
    broker: &Broker,
    table: &str,
    outboxes: Vec<Outbox<S>>,
    mode: Mode,
) -> BoxResult<RelayRun> {
    let n = env.messages as u64;
    let relays = outboxes.len();
    for chunk in env.make_messages(env.messages).chunks(CHUNK) {
        outboxes[0].send_batch(chunk)?;
    }

    let meter = db.log_meter()?;
    let db_cpu = DbCpu::start(B::SERVER_PROCESSES);
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
    // While the relays' connections are open: they are ours, the rest are not.
    let foreign = db.foreign_tasks(&my_ports())?;
    let db_cpu_us = db_cpu.and_then(|c| c.finish(&foreign, n));
    let logged = meter.map(|m| m.report(n)).transpose()?;
    let wal_bytes = logged.as_ref().and_then(|l| l.bytes_per_msg);
    if env.breakdown {
        let written = logged.map(|l| format!("; {}", l.text)).unwrap_or_default();
        println!(
            "    {} during the relay run; database {}{written}",
            CpuSample::since(&cpu, n),
            us(db_cpu_us)
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
    // The new mode deletes what it dispatched; the old one keeps it.
    let dispatched = if mode.deletes() { 0 } else { n };
    let rows = db.count(table)?;
    if stats.pending != 0 || stats.dispatched != dispatched || rows != dispatched {
        return Err(format!(
            "relay: table has {} pending, {} dispatched ({rows} rows) after the run",
            stats.pending, stats.dispatched
        )
        .into());
    }
    drop(running);
    drop(outboxes);
    broker.settle(total.published)?;
    let cleanup = match mode {
        Mode::Old => Some(cleanup_cost(db, table, n)?),
        Mode::New => None,
    };
    db.drop_table(table)?;
    Ok(RelayRun {
        took,
        db_cpu_us,
        wal_bytes,
        cleanup,
        claims: None,
    })
}

/// The old mode's deferred work, measured after its run: the cleanup statement
/// the relay's cleanup thread runs days later (`Store::cleanup`, 1000 rows a
/// statement), here with a cutoff of now, until the table is empty.
fn cleanup_cost<B: Backend>(db: &B, table: &str, n: u64) -> BoxResult<(Option<f64>, Option<f64>)> {
    let store = db.store(table)?;
    let meter = db.log_meter()?;
    let db_cpu = DbCpu::start(B::SERVER_PROCESSES);
    let mut deleted = 0u64;
    loop {
        let k = store.cleanup(Duration::ZERO, CHUNK)?;
        deleted += k;
        if k < CHUNK as u64 {
            break;
        }
    }
    let foreign = db.foreign_tasks(&my_ports())?;
    let cpu = db_cpu.and_then(|c| c.finish(&foreign, n));
    let wal = meter
        .map(|m| m.report(n))
        .transpose()?
        .and_then(|l| l.bytes_per_msg);
    if deleted != n {
        return Err(format!("cleanup deleted {deleted} of {n} dispatched rows").into());
    }
    Ok((cpu, wal))
}

/// `12.3 µs/msg` or `cpu unknown`.
pub fn us(v: Option<f64>) -> String {
    match v {
        Some(v) => format!("cpu {v:.1} µs/msg"),
        None => "cpu unknown".into(),
    }
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
