//! `outboxer bench`: enqueue N messages through the library while a relay publishes
//! them, with a progress bar; prints the same `RESULT key=value` line format as
//! `examples/bench/` (a subset of its keys, see the README).

use crate::fail::Fail;
use amiquip::{Connection, ExchangeDeclareOptions, ExchangeType, FieldTable, QueueDeclareOptions};
use indicatif::{ProgressBar, ProgressStyle};
use outboxer::stream::amqp;
use outboxer::{Message, MessageId, Outbox, Store, Stream};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// Messages per `send_batch` transaction.
const CHUNK: usize = 100;

pub struct BenchOptions {
    pub messages: u64,
    pub payload_size: usize,
    pub timeout: Duration,
    /// The table is the bench's own (`outboxer_bench`): its dispatched rows are
    /// deleted at the end. A table given with `--table` is left as it is.
    pub own_table: bool,
}

/// A durable topic exchange and a queue bound to it, removed on drop, so that the
/// relay's mandatory publishes are routable. The queue is never consumed.
struct AmqpSink {
    conn: Option<Connection>,
    exchange: String,
    queue: String,
}

/// Opens an AMQP connection the way the stream does (the library's URL parsing,
/// a `TCP_NODELAY` socket of its own, bounded handshake).
fn connect(raw: &str) -> Result<Connection, Fail> {
    let shown = outboxer::redact_url(raw);
    amqp::open_connection(raw).map_err(|e| match e {
        outboxer::Error::InvalidUrl { reason, .. } => {
            Fail::usage(format!("stream {shown}: {reason}"))
        }
        e => Fail::runtime(format!("stream {shown}: {e}")),
    })
}

impl AmqpSink {
    fn setup(url: &str, name: &str) -> Result<AmqpSink, Fail> {
        let shown = outboxer::redact_url(url);
        let err = |e: amiquip::Error| Fail::runtime(format!("setting up {shown}: {e}"));
        let mut conn = connect(url)?;
        let ch = conn.open_channel(None).map_err(err)?;
        let opts = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        ch.exchange_declare(ExchangeType::Topic, name, opts)
            .map_err(err)?;
        ch.queue_declare(name, QueueDeclareOptions::default())
            .map_err(err)?;
        ch.queue_bind(name, name, "#", FieldTable::new())
            .map_err(err)?;
        ch.close().map_err(err)?;
        Ok(AmqpSink {
            conn: Some(conn),
            exchange: name.to_string(),
            queue: name.to_string(),
        })
    }
}

impl Drop for AmqpSink {
    fn drop(&mut self) {
        if let Some(mut conn) = self.conn.take() {
            let r = conn.open_channel(None).and_then(|ch| {
                ch.queue_delete(&self.queue, Default::default())?;
                ch.exchange_delete(&self.exchange, false)?;
                ch.close()
            });
            if let Err(e) = r {
                log::warn!("bench: removing exchange and queue {}: {e}", self.queue);
            }
            let _ = conn.close();
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn bar(n: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(n);
    let style =
        ProgressStyle::with_template("{prefix:>9} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")
            .map(|s| s.progress_chars("=> "))
            .unwrap_or_else(|_| ProgressStyle::default_bar());
    pb.set_style(style);
    pb.set_prefix(what.to_string());
    pb
}

pub fn run(
    store: Box<dyn Store>,
    stream_url: &str,
    stream: Box<dyn Stream>,
    o: &BenchOptions,
) -> Result<(), Fail> {
    let name = format!("outboxer_bench_{}", std::process::id());
    let sink = AmqpSink::setup(stream_url, &name)?;
    store.migrate()?;
    let outbox = Outbox::builder()
        .store(store)
        .stream(stream)
        .batch_size(1000)
        .no_cleanup()
        .channel_capacity(1_000_000)
        .build()?;
    let relay = outbox.start()?;
    let n = o.messages;
    let payload = vec![b'x'; o.payload_size];

    // The messages, made up front so that the collector knows their ids: other rows
    // of the table (a --table with traffic of its own) are not counted.
    let messages: Vec<Message> = (0..n)
        .map(|_| Message::new(payload.clone()).route(amqp::topic(&sink.exchange, "bench")))
        .collect();
    let ours: HashSet<MessageId> = messages.iter().map(|m| m.message_id()).collect();

    // Deliveries are collected on a thread of their own while this one enqueues.
    let ok = relay.ok().clone();
    let err = relay.err().clone();
    let relayed = bar(n, "relayed");
    let pb = relayed.clone();
    let deadline = Instant::now() + o.timeout;
    let collector = std::thread::spawn(move || {
        let mut delivered: HashMap<MessageId, Instant> = HashMap::with_capacity(n as usize);
        let mut failed = 0u64;
        while (delivered.len() as u64) < n && Instant::now() < deadline {
            crossbeam_channel::select! {
                recv(ok) -> d => if let Ok(d) = d {
                    if ours.contains(&d.message_id) {
                        delivered.insert(d.message_id, Instant::now());
                        pb.inc(1);
                    }
                },
                recv(err) -> f => if let Ok(f) = f {
                    if f.message_id.is_some_and(|m| ours.contains(&m)) {
                        if f.action == outboxer::FailureAction::Parked {
                            failed += 1;
                            pb.inc(1);
                        }
                        log::warn!("bench: {}", f.error);
                    }
                },
                default(Duration::from_millis(200)) => {},
            }
            if delivered.len() as u64 + failed >= n {
                break;
            }
        }
        (delivered, failed)
    });

    let enqueued = bar(n, "enqueued");
    let started = Instant::now();
    let mut sent: Vec<(MessageId, Instant)> = Vec::with_capacity(n as usize);
    for batch in messages.chunks(CHUNK) {
        let ids = outbox.send_batch(batch)?;
        let at = Instant::now();
        sent.extend(ids.into_iter().map(|id| (id, at)));
        enqueued.inc(batch.len() as u64);
    }
    let enqueue_secs = started.elapsed().as_secs_f64();
    enqueued.finish();

    let (delivered, failed) = collector
        .join()
        .map_err(|_| Fail::runtime("bench: the collector thread panicked"))?;
    relayed.finish();
    relay.stop()?;
    let last = delivered.values().max().copied().unwrap_or(started);
    let relay_secs = last.duration_since(started).as_secs_f64();
    let mut latencies: Vec<f64> = sent
        .iter()
        .filter_map(|(id, at)| delivered.get(id).map(|d| d.saturating_duration_since(*at)))
        .map(|d| d.as_secs_f64() * 1000.0)
        .collect();
    latencies.sort_by(f64::total_cmp);
    if o.own_table {
        // Empty the bench's own table of dispatched rows (the table itself stays).
        while let Ok(10_000) = outbox.store().cleanup(Duration::ZERO, 10_000) {}
    }
    drop(sink);

    let got = delivered.len() as u64;
    println!(
        "bench: {got} of {n} messages of {} bytes delivered, {failed} parked, in {relay_secs:.2}s",
        o.payload_size
    );
    let rate = |secs: f64| if secs > 0.0 { got as f64 / secs } else { 0.0 };
    println!(
        "RESULT relay_per_s={:.2} enqueue_per_s={:.2} p50_ms={:.2} p99_ms={:.2}",
        rate(relay_secs),
        if enqueue_secs > 0.0 {
            n as f64 / enqueue_secs
        } else {
            0.0
        },
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
    );
    if got < n {
        return Err(Fail::runtime(format!(
            "bench: only {got} of {n} messages were delivered ({failed} parked)"
        )));
    }
    Ok(())
}
