//! Phases 3d, 4 and 5 for each mode of `--modes`, interleaved (batch by batch,
//! mode by mode) so that a machine that gets busier during the run does not favour
//! the mode that ran first.

use crate::mode::{Claims, Mode};
use crate::phases::{self, us, RelayRun};
use crate::{rate, Backend, BoxResult, Broker, Env, BATCH_SIZES};

/// What one mode measured.
pub struct ModeResults {
    pub mode: Mode,
    /// How its claims ran: probed on the store, and counted with `--breakdown`.
    pub claims: Option<Claims>,
    pub relay_per_s: f64,
    pub relay2_per_s: f64,
    /// Of the best phase 4 run.
    pub db_cpu_us: Option<f64>,
    pub wal_bytes: Option<f64>,
    /// The old mode's later cleanup pass, per message (CPU µs, log bytes).
    pub cleanup: Option<(Option<f64>, Option<f64>)>,
    pub db_ceiling_per_s: f64,
}

impl ModeResults {
    fn new(mode: Mode) -> ModeResults {
        ModeResults {
            mode,
            claims: None,
            relay_per_s: 0.0,
            relay2_per_s: 0.0,
            db_cpu_us: None,
            wal_bytes: None,
            cleanup: None,
            db_ceiling_per_s: 0.0,
        }
    }

    /// `1 / (1/ceiling + 1/db_ceiling)`: what one relay can reach when the broker's
    /// work and the database's work share the machine and do not overlap.
    pub fn limit_per_s(&self, ceiling_per_s: f64) -> f64 {
        1.0 / (1.0 / ceiling_per_s + 1.0 / self.db_ceiling_per_s)
    }
}

/// Runs phases 3d, 4 and 5 in every mode; results in the order of `--modes`.
pub fn measure_modes<B: Backend>(
    env: &Env,
    db: &B,
    broker: &Broker,
    ceiling_per_s: f64,
) -> BoxResult<Vec<ModeResults>> {
    let mut results: Vec<ModeResults> = env.modes.iter().map(|m| ModeResults::new(*m)).collect();

    for batch in BATCH_SIZES {
        for r in results.iter_mut() {
            let d = rate(env.messages, phases::db_ceiling(env, db, batch, r.mode)?);
            println!(
                "[3d] db ceiling {d:>8.2} msg/s   ({} mode: claim + mark alone, batches of {batch})",
                r.mode.name()
            );
            r.db_ceiling_per_s = r.db_ceiling_per_s.max(d);
        }
    }

    for batch in BATCH_SIZES {
        for r in results.iter_mut() {
            let run = phases::relay(env, db, broker, 1, batch, r.mode)?;
            let per_s = rate(env.messages, run.took);
            print_run(4, r.mode, per_s, &run, batch, ceiling_per_s);
            r.claims = run.claims;
            if per_s > r.relay_per_s {
                r.relay_per_s = per_s;
                r.db_cpu_us = run.db_cpu_us;
                r.wal_bytes = run.wal_bytes;
                r.cleanup = run.cleanup;
            }
        }
    }

    for r in results.iter_mut() {
        let run = phases::relay(env, db, broker, 2, BATCH_SIZES[1], r.mode)?;
        r.relay2_per_s = rate(env.messages, run.took);
        println!(
            "[5] relay x2  {:>10.2} msg/s   ({} mode: 2 relays on one table, batch_size {}; database {})",
            r.relay2_per_s,
            r.mode.name(),
            BATCH_SIZES[1],
            us(run.db_cpu_us)
        );
    }
    Ok(results)
}

fn print_run(phase: u8, mode: Mode, per_s: f64, run: &RelayRun, batch: usize, ceiling: f64) {
    let claims = run.claims.map_or("?", Claims::name);
    let wal = match run.wal_bytes {
        Some(b) => format!("{b:.0} log bytes/msg"),
        None => "log bytes unknown".into(),
    };
    println!(
        "[{phase}] relay     {per_s:>10.2} msg/s   ({} mode, {claims} claims: 1 relay, batch_size {batch}; \
         {:.2} of ceiling; database {}, {wal})",
        mode.name(),
        per_s / ceiling,
        us(run.db_cpu_us),
    );
    if let Some((cpu, wal)) = run.cleanup {
        let wal = wal.map_or("?".into(), |b| format!("{b:.0}"));
        println!(
            "    + its later cleanup pass (Store::cleanup, 1000 rows a statement): database {}, {wal} log bytes/msg",
            us(cpu)
        );
    }
}
