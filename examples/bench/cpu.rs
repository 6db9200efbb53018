//! CPU time: per process for the whole machine (`--breakdown`), and the database
//! server's own, per relayed message (every relay run).

use std::collections::{HashMap, HashSet};
use std::time::Instant;

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

/// The database server's CPU time during a relay run, per relayed message: every
/// thread of the server's processes (`/proc/<pid>/task/*/schedstat`, nanoseconds)
/// except the connections of other clients of the same server (the machine's
/// other users), which [`crate::Backend::foreign_tasks`] names by client port.
/// Background work (WAL writer, checkpointer, purge) counts, whoever caused it.
pub struct DbCpu {
    names: &'static [&'static str],
    before: HashMap<u32, u64>,
}

impl DbCpu {
    /// None when the database runs in this process (SQLite) or /proc is missing.
    pub fn start(names: &'static [&'static str]) -> Option<DbCpu> {
        if names.is_empty() {
            return None;
        }
        let before = server_tasks(names)?;
        Some(DbCpu { names, before })
    }

    /// Server CPU µs per message since `start`, without the tasks in `foreign`.
    /// Only tasks alive now count (a connection that ended in between is lost).
    pub fn finish(&self, foreign: &HashSet<u32>, messages: u64) -> Option<f64> {
        let now = server_tasks(self.names)?;
        let ns: u64 = now
            .iter()
            .filter(|(tid, _)| !foreign.contains(tid))
            .map(|(tid, ns)| ns.saturating_sub(self.before.get(tid).copied().unwrap_or(0)))
            .sum();
        Some(ns as f64 / 1e3 / messages.max(1) as f64)
    }
}

/// Thread id -> CPU nanoseconds of every thread of the processes named `names`.
fn server_tasks(names: &[&str]) -> Option<HashMap<u32, u64>> {
    let mut tasks = HashMap::new();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let path = entry.path();
        if entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
            .is_none()
        {
            continue;
        }
        let Ok(comm) = std::fs::read_to_string(path.join("comm")) else {
            continue;
        };
        if !names.contains(&comm.trim()) {
            continue;
        }
        let Ok(threads) = std::fs::read_dir(path.join("task")) else {
            continue;
        };
        for t in threads.flatten() {
            let Some(tid) = t.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
                continue;
            };
            // schedstat: time on CPU (ns), time waiting, timeslices.
            let ns = std::fs::read_to_string(t.path().join("schedstat"))
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok());
            if let Some(ns) = ns {
                tasks.insert(tid, ns);
            }
        }
    }
    Some(tasks)
}

/// The local TCP ports of this process's sockets: the client ports of our own
/// database connections, as the server sees them.
pub fn my_ports() -> HashSet<u16> {
    let mut inodes = HashSet::new();
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        for fd in fds.flatten() {
            let Ok(link) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let link = link.to_string_lossy();
            if let Some(inode) = link
                .strip_prefix("socket:[")
                .and_then(|s| s.strip_suffix(']'))
            {
                inodes.insert(inode.to_string());
            }
        }
    }
    let mut ports = HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(inode)) = (f.get(1), f.get(9)) else {
                continue;
            };
            if !inodes.contains(*inode) {
                continue;
            }
            let port = local
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            ports.extend(port);
        }
    }
    ports
}
