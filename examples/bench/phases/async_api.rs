//! `--async`: the phases on a current-thread tokio runtime. Sends go through
//! tokio-postgres; each relay is the async Outbox's (the blocking pipeline on its
//! own threads, outcomes forwarded into async channels). Blocking setup (tables,
//! broker connections, the consumer check) stays outside the runtime.

use super::latency::{percentile, sorted_latencies};
use super::relay::{relay_progress, relay_table, RelayRun};
use crate::mode::Mode;
use crate::{Backend, BoxResult, Broker, Env, CHUNK, LATENCY_MESSAGES, LATENCY_RATE_PER_S};
use outboxer::async_impl::store::PostgresStore as AsyncPg;
use outboxer::async_impl::Outbox as AsyncOutbox;
use outboxer::ClaimMode;
use std::collections::HashMap;
use std::time::{Duration, Instant};

fn runtime() -> BoxResult<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

async fn store(table: &str) -> BoxResult<AsyncPg> {
    let url = std::env::var("OUTBOXER_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let store = AsyncPg::builder(&url).table(table).build().await?;
    store.migrate().await?;
    Ok(store)
}

pub fn enqueue_phase<B: Backend>(env: &Env, db: &B) -> BoxResult<Duration> {
    let table = env.table("enqueue");
    db.drop_table(&table)?;
    let stream = env.stream(false)?;
    let messages = env.make_messages(env.messages);
    let took = runtime()?.block_on(async {
        let outbox = AsyncOutbox::builder()
            .store(store(&table).await?)
            .stream(stream)
            .build()?;
        let start = Instant::now();
        for chunk in messages.chunks(CHUNK) {
            outbox.send_batch(chunk).await?;
        }
        let took = start.elapsed();
        let pending = outbox.stats().await?.pending;
        if pending != env.messages as u64 {
            return Err(format!("enqueue: {pending} pending, expected {}", env.messages).into());
        }
        BoxResult::Ok(took)
    })?;
    db.drop_table(&table)?;
    Ok(took)
}

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
    let streams = (0..relays)
        .map(|_| env.stream(true))
        .collect::<BoxResult<Vec<_>>>()?;
    let messages = env.make_messages(env.messages);
    let n = env.messages as u64;
    let (took, published) = runtime()?.block_on(async {
        let mut outboxes = Vec::with_capacity(relays);
        for stream in streams {
            let builder = match mode {
                Mode::Old => AsyncOutbox::builder()
                    .claim_mode(ClaimMode::Leases)
                    .cleanup_before(crate::mode::OLD_RETENTION),
                Mode::New => AsyncOutbox::builder()
                    .claim_mode(ClaimMode::RowLocks)
                    .cleanup_before(Duration::ZERO),
            };
            outboxes.push(
                builder
                    .store(store(&table).await?)
                    .stream(stream)
                    .batch_size(batch)
                    .check_interval(Duration::from_millis(10))
                    .build()?,
            );
        }
        for chunk in messages.chunks(CHUNK) {
            outboxes[0].send_batch(chunk).await?;
        }
        let start = Instant::now();
        let mut running = Vec::with_capacity(relays);
        for outbox in &outboxes {
            running.push(outbox.start().await?);
        }
        let mut failures = 0usize;
        let took = loop {
            let published: u64 = running.iter().map(|r| r.counters().published).sum();
            let errors = running
                .iter()
                .flat_map(|r| std::iter::from_fn(|| r.err().try_recv().ok()));
            if let Some(took) = relay_progress(n, start, published, &mut failures, errors)? {
                break took;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        let mut published = 0;
        for relay in &running {
            relay.stop().await?;
            published += relay.counters().published;
        }
        let stats = outboxes[0].stats().await?;
        let dispatched = if mode.deletes() { 0 } else { n };
        if stats.pending != 0 || stats.dispatched != dispatched {
            return Err(format!(
                "relay: table has {} pending, {} dispatched after the run",
                stats.pending, stats.dispatched
            )
            .into());
        }
        BoxResult::Ok((took, published))
    })?;
    if published != n {
        println!("    note: published {published} for {n} messages");
    }
    broker.settle(published)?;
    db.drop_table(&table)?;
    // Not measured with --async: database CPU and log bytes are the blocking run's.
    Ok(RelayRun {
        took,
        db_cpu_us: None,
        wal_bytes: None,
        cleanup: None,
        claims: None,
    })
}

pub fn latency_phase<B: Backend>(env: &Env, db: &B, broker: &Broker) -> BoxResult<(f64, f64)> {
    let table = env.table("latency");
    db.drop_table(&table)?;
    let stream = env.stream(true)?;
    let warm = env.make_messages(1).remove(0);
    let messages = env.make_messages(LATENCY_MESSAGES);
    let interval = Duration::from_nanos(1_000_000_000 / LATENCY_RATE_PER_S);
    let (sent, delivered, published) = runtime()?.block_on(async {
        let outbox = AsyncOutbox::builder()
            .store(store(&table).await?)
            .stream(stream)
            .check_interval(Duration::from_secs(1))
            .no_cleanup()
            .build()?;
        let relay = outbox.start().await?;
        // Warm up: the first publish declares the exchange.
        let warm = outbox.send(warm).await?;
        loop {
            match tokio::time::timeout(Duration::from_secs(10), relay.ok().recv()).await {
                Ok(Ok(d)) if d.message_id == warm => break,
                Ok(Ok(_)) => {}
                _ => return Err("latency: warm-up message not delivered".into()),
            }
        }
        let sender = async {
            let mut sent = Vec::with_capacity(LATENCY_MESSAGES);
            let start = tokio::time::Instant::now();
            for (i, m) in messages.into_iter().enumerate() {
                tokio::time::sleep_until(start + interval * i as u32).await;
                let id = outbox.send(m).await?;
                sent.push((id, Instant::now()));
            }
            Ok::<_, outboxer::Error>(sent)
        };
        let receiver = async {
            let mut delivered = HashMap::with_capacity(LATENCY_MESSAGES);
            let deadline = tokio::time::Instant::now()
                + interval * LATENCY_MESSAGES as u32
                + Duration::from_secs(30);
            while delivered.len() < LATENCY_MESSAGES {
                match tokio::time::timeout_at(deadline, relay.ok().recv()).await {
                    Ok(Ok(d)) => {
                        delivered.insert(d.message_id, Instant::now());
                    }
                    _ => break,
                }
            }
            delivered
        };
        let (sent, delivered) = tokio::join!(sender, receiver);
        relay.stop().await?;
        let c = relay.counters();
        if c.dropped_ok > 0 || c.failed > 0 {
            println!(
                "    note: {} outcomes dropped, {} failed attempts",
                c.dropped_ok, c.failed
            );
        }
        BoxResult::Ok((sent?, delivered, c.published))
    })?;
    let latencies = sorted_latencies(&sent, &delivered, LATENCY_MESSAGES)?;
    broker.settle(published)?;
    db.drop_table(&table)?;
    Ok((percentile(&latencies, 0.50), percentile(&latencies, 0.99)))
}
