//! `--breakdown`: timing decorators of the store and stream, CPU use per process.

use outboxer::store::{BatchLimit, Claim, FailedAttempt, Lease, Requeue, Stats, WakeListener};
use outboxer::stream::{Deadline, Validate};
use outboxer::{Message, Store, StoredMessage, Stream};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A store that times `claim` and `mark_dispatched` (`--breakdown`).
pub struct TimedStore<S> {
    pub inner: S,
    pub timings: Arc<Timings>,
}

impl<S: Store> Store for TimedStore<S> {
    fn migrate(&self) -> outboxer::Result<()> {
        self.inner.migrate()
    }
    fn enqueue(&self, messages: &[Message]) -> outboxer::Result<()> {
        self.inner.enqueue(messages)
    }
    fn claim(&self, lease: &Lease, limit: BatchLimit) -> outboxer::Result<Claim> {
        self.timings.claim.time(|| self.inner.claim(lease, limit))
    }
    fn mark_dispatched(&self, lease: &Lease, ids: &[i64]) -> outboxer::Result<Vec<i64>> {
        self.timings
            .mark
            .time(|| self.inner.mark_dispatched(lease, ids))
    }
    fn mark_failed(&self, lease: &Lease, failures: &[FailedAttempt]) -> outboxer::Result<usize> {
        self.inner.mark_failed(lease, failures)
    }
    fn release(&self, lease: &Lease, ids: &[i64], retry_in: Duration) -> outboxer::Result<usize> {
        self.inner.release(lease, ids, retry_in)
    }
    fn cleanup(&self, older_than: Duration, limit: usize) -> outboxer::Result<u64> {
        self.inner.cleanup(older_than, limit)
    }
    fn requeue(&self, which: &Requeue) -> outboxer::Result<u64> {
        self.inner.requeue(which)
    }
    fn skip(&self, ids: &[i64]) -> outboxer::Result<u64> {
        self.inner.skip(ids)
    }
    fn held_keys(&self, limit: usize) -> outboxer::Result<Vec<outboxer::store::HeldKey>> {
        self.inner.held_keys(limit)
    }
    fn stats(&self) -> outboxer::Result<Stats> {
        self.inner.stats()
    }
    fn purge_parked(&self, older_than: Duration, limit: usize) -> outboxer::Result<u64> {
        self.inner.purge_parked(older_than, limit)
    }
    fn purgeable(&self, older_than: Duration) -> outboxer::Result<outboxer::store::Purgeable> {
        self.inner.purgeable(older_than)
    }
    fn attempts_histogram(&self) -> outboxer::Result<Vec<(u32, u64)>> {
        self.inner.attempts_histogram()
    }
    fn parked(&self, limit: usize) -> outboxer::Result<Vec<outboxer::store::ParkedMessage>> {
        self.inner.parked(limit)
    }
    fn wake_listener(&self) -> outboxer::Result<Option<Box<dyn WakeListener>>> {
        self.inner.wake_listener()
    }
}

/// A stream that times `publish` (publishes plus waiting for confirms).
pub struct TimedStream {
    pub inner: Box<dyn Stream>,
    pub timings: Arc<Timings>,
}

impl Stream for TimedStream {
    fn validator(&self) -> Arc<dyn Validate> {
        self.inner.validator()
    }
    fn publish(
        &mut self,
        batch: &[StoredMessage],
        deadline: &Deadline,
    ) -> Vec<outboxer::Result<()>> {
        let inner = &mut self.inner;
        self.timings.publish.time(|| inner.publish(batch, deadline))
    }
    fn close(&mut self) {
        self.inner.close();
    }
}

/// Busy time of the relays' claim, mark and publish calls (`--breakdown`).
#[derive(Default)]
pub struct Timings {
    pub claim: Timer,
    pub mark: Timer,
    pub publish: Timer,
}

#[derive(Default)]
pub struct Timer {
    nanos: AtomicU64,
    calls: AtomicU64,
}

impl Timer {
    fn time<R>(&self, f: impl FnOnce() -> R) -> R {
        let start = Instant::now();
        let r = f();
        let nanos = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.nanos.fetch_add(nanos, Ordering::Relaxed);
        self.calls.fetch_add(1, Ordering::Relaxed);
        r
    }

    fn describe(&self, name: &str, wall: Duration, relays: usize) -> String {
        let secs = self.nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let calls = self.calls.load(Ordering::Relaxed).max(1);
        let busy = secs / (wall.as_secs_f64() * relays as f64).max(1e-9) * 100.0;
        format!(
            "{name} {secs:.2} s / {calls} calls = {:.1} ms each, {busy:.0}% busy",
            secs * 1000.0 / calls as f64
        )
    }
}

impl Timings {
    pub fn print(&self, wall: Duration, relays: usize) {
        println!(
            "    breakdown over {:.2} s x {relays} relay(s): {}; {}; {}",
            wall.as_secs_f64(),
            self.publish.describe("publish", wall, relays),
            self.claim.describe("claim", wall, relays),
            self.mark.describe("mark_dispatched", wall, relays),
        );
    }
}

/// CPU time per process name and for the whole machine, from `/proc` (Linux,
/// `--breakdown` only), in clock ticks.
pub struct CpuSample {
    /// pid -> (name, ticks); kernel threads change their name, so keyed by pid.
    by_pid: HashMap<u32, (String, u64)>,
    machine_busy: u64,
    machine_total: u64,
    at: Instant,
}

impl CpuSample {
    pub fn take() -> Option<CpuSample> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let line = stat.lines().next()?.strip_prefix("cpu ")?;
        // user nice system idle iowait irq softirq steal
        let v: Vec<u64> = line
            .split_whitespace()
            .take(8)
            .filter_map(|x| x.parse().ok())
            .collect();
        let machine_total: u64 = v.iter().sum();
        let machine_busy = machine_total.saturating_sub(v.get(3)? + v.get(4)?);
        let mut by_pid = HashMap::new();
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(text) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // pid (comm) state ppid ... utime stime: fields 14 and 15.
            let (Some(open), Some(close)) = (text.find('('), text.rfind(')')) else {
                continue;
            };
            let name = text[open + 1..close]
                .split(['/', '-'])
                .next()
                .unwrap_or_default()
                .to_string();
            let fields: Vec<&str> = text[close + 1..].split_whitespace().collect();
            let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
            if let (Some(u), Some(s)) = (ticks(11), ticks(12)) {
                by_pid.insert(pid, (name, u + s));
            }
        }
        Some(CpuSample {
            by_pid,
            machine_busy,
            machine_total,
            at: Instant::now(),
        })
    }

    /// "cpu 190% of 200%: beam.smp 95% = 50 µs/msg, postgres 60% = 31 µs/msg, .." since
    /// `before`, for a run of `messages` messages.
    pub fn since(before: &Option<CpuSample>, messages: u64) -> String {
        let (Some(a), Some(b)) = (before, CpuSample::take()) else {
            return "cpu use unknown".into();
        };
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let total = b.machine_total.saturating_sub(a.machine_total).max(1) as f64;
        let pct = |ticks: u64| ticks as f64 / total * 100.0 * cores;
        // CPU time per message: the share of all cores' time, times the wall time.
        let wall = b.at.duration_since(a.at).as_secs_f64();
        let us_per_msg = |ticks: u64| pct(ticks) / 100.0 * wall * 1e6 / messages.max(1) as f64;
        let mut by_name: HashMap<&str, u64> = HashMap::new();
        for (pid, (name, t)) in &b.by_pid {
            let before = a.by_pid.get(pid).map_or(0, |(_, t0)| *t0);
            *by_name.entry(name).or_insert(0) += t.saturating_sub(before);
        }
        let mut used: Vec<(u64, &str)> = by_name
            .into_iter()
            .filter(|(_, t)| *t > 0)
            .map(|(name, t)| (t, name))
            .collect();
        used.sort_by(|x, y| y.cmp(x));
        let top: Vec<String> = used
            .iter()
            .take(4)
            .map(|(t, name)| format!("{name} {:.0}% = {:.0} µs/msg", pct(*t), us_per_msg(*t)))
            .collect();
        format!(
            "cpu {:.0}% of {:.0}%: {}",
            pct(b.machine_busy.saturating_sub(a.machine_busy)),
            cores * 100.0,
            top.join(", ")
        )
    }
}
