//! Phase 6, `p50_ms` / `p99_ms`: commit-to-publish latency at a steady rate.

use crate::mode::Mode;
use crate::{Backend, BoxResult, Broker, Env};
use outboxer::{MessageId, Outbox};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Phase 6: commit-to-publish latency at a steady rate; returns (p50, p99) in ms.
pub fn latency_phase<B: Backend>(env: &Env, db: &B, broker: &Broker) -> BoxResult<(f64, f64)> {
    let (latency_messages, latency_rate) = env.latency_plan();
    let table = env.table("latency");
    db.drop_table(&table)?;
    // The default (new) mode.
    let outbox = Mode::New
        .configure(Outbox::builder())
        .store(db.store(&table)?)
        .stream(env.stream(true)?)
        .check_interval(Duration::from_secs(1))
        .no_cleanup()
        .build()?;
    let relay = outbox.start()?;
    // Warm up: the first publish declares the exchange.
    let warm = outbox.send(env.make_messages(1).remove(0))?;
    loop {
        match relay.ok().recv_timeout(Duration::from_secs(10)) {
            Ok(d) if d.message_id == warm => break,
            Ok(_) => {}
            Err(e) => return Err(format!("latency: warm-up message not delivered: {e}").into()),
        }
    }

    let messages = env.make_messages(latency_messages);
    let interval = Duration::from_nanos(1_000_000_000 / latency_rate);
    let mut delivered: HashMap<MessageId, Instant> = HashMap::with_capacity(latency_messages);
    let sent = std::thread::scope(|s| -> BoxResult<Vec<(MessageId, Instant)>> {
        let sender = s.spawn(|| -> Result<Vec<(MessageId, Instant)>, String> {
            let mut sent = Vec::with_capacity(latency_messages);
            let start = Instant::now();
            for (i, m) in messages.into_iter().enumerate() {
                let due = start + interval * i as u32;
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let id = outbox.send(m).map_err(|e| e.to_string())?;
                sent.push((id, Instant::now()));
            }
            Ok(sent)
        });
        let deadline =
            Instant::now() + interval * latency_messages as u32 + Duration::from_secs(30);
        while delivered.len() < latency_messages {
            let left = deadline.saturating_duration_since(Instant::now());
            match relay.ok().recv_timeout(left) {
                Ok(d) => {
                    delivered.insert(d.message_id, Instant::now());
                }
                Err(_) => break,
            }
        }
        let sent = sender
            .join()
            .map_err(|_| "latency: sender thread panicked")??;
        Ok(sent)
    })?;
    relay.stop()?;
    let c = relay.counters();
    if c.dropped_ok > 0 || c.failed > 0 {
        println!(
            "    note: {} outcomes dropped, {} failed attempts",
            c.dropped_ok, c.failed
        );
    }
    let latencies = sorted_latencies(&sent, &delivered, latency_messages)?;
    drop(relay);
    drop(outbox);
    broker.settle(c.published)?;
    db.drop_table(&table)?;
    Ok((percentile(&latencies, 0.50), percentile(&latencies, 0.99)))
}

/// Send-to-delivery times in ms, sorted; an error unless all `expected` messages
/// were delivered.
pub fn sorted_latencies(
    sent: &[(MessageId, Instant)],
    delivered: &HashMap<MessageId, Instant>,
    expected: usize,
) -> BoxResult<Vec<f64>> {
    let mut latencies: Vec<f64> = sent
        .iter()
        .filter_map(|(id, at)| delivered.get(id).map(|d| d.saturating_duration_since(*at)))
        .map(|d| d.as_secs_f64() * 1000.0)
        .collect();
    if latencies.len() < expected {
        return Err(format!(
            "latency: only {} of {expected} messages delivered",
            latencies.len()
        )
        .into());
    }
    latencies.sort_by(f64::total_cmp);
    Ok(latencies)
}

/// Nearest-rank percentile of sorted, non-empty values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted
        .get(rank.clamp(1, sorted.len().max(1)) - 1)
        .copied()
        .unwrap_or(f64::NAN)
}
