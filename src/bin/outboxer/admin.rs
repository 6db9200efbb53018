//! The operator's commands: migrate, stats, requeue, skip, purge.

use crate::fail::Fail;
use crate::parse;
use outboxer::store::{HeldKey, ParkedMessage, Requeue, Stats};
use outboxer::Store;
use serde_json::json;
use std::io::Write;
use std::time::{Duration, SystemTime};

pub fn migrate(store: &dyn Store, what: &str) -> Result<(), Fail> {
    store.migrate()?;
    println!("migrated {what}");
    Ok(())
}

/// One look at the table.
pub struct Snapshot {
    pub stats: Stats,
    pub histogram: Vec<(u32, u64)>,
    pub parked: Vec<ParkedMessage>,
    pub held: Vec<HeldKey>,
}

pub fn snapshot(store: &dyn Store, parked_limit: usize) -> Result<Snapshot, Fail> {
    let listed = parked_limit > 0;
    Ok(Snapshot {
        stats: store.stats()?,
        histogram: store.attempts_histogram()?,
        parked: if listed {
            store.parked(parked_limit)?
        } else {
            Vec::new()
        },
        held: if listed {
            store.held_keys(parked_limit)?
        } else {
            Vec::new()
        },
    })
}

/// The `--json` form; field names are stable (documented in the README).
pub fn to_json(s: &Snapshot, store: &str, table: &str) -> serde_json::Value {
    json!({
        "ts": parse::rfc3339_millis(SystemTime::now()),
        "store": store,
        "table": table,
        "pending": s.stats.pending,
        "leased": s.stats.leased,
        "dispatched": s.stats.dispatched,
        "parked": s.stats.parked,
        "held_keys": s.stats.held_keys,
        "oldest_pending_age_secs": s.stats.oldest_pending_age.as_secs_f64(),
        "scheduled": s.stats.scheduled,
        "next_due_in_secs": s.stats.next_due_in.map(|d| d.as_secs_f64()),
        "attempts_histogram": s.histogram.iter()
            .map(|(attempts, count)| json!({"attempts": attempts, "count": count}))
            .collect::<Vec<_>>(),
        "parked_messages": s.parked.iter()
            .map(|p| json!({
                "id": p.id,
                "message_id": p.message_id.map(|m| m.to_string()),
                "attempts": p.attempts,
                "last_error": p.last_error,
                "ordering_key": p.ordering_key,
                "holds_key": p.holds_key,
            }))
            .collect::<Vec<_>>(),
        "held_key_heads": s.held.iter()
            .map(|h| json!({
                "ordering_key": h.ordering_key,
                "parked_id": h.parked_id,
                "message_id": h.message_id.map(|m| m.to_string()),
                "last_error": h.last_error,
                "waiting": h.waiting,
            }))
            .collect::<Vec<_>>(),
    })
}

fn one_line(s: &str, max: usize) -> String {
    let flat: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() > max {
        let mut cut: String = flat.chars().take(max).collect();
        cut.push('…');
        cut
    } else {
        flat
    }
}

pub fn to_text(s: &Snapshot, store: &str, table: &str) -> String {
    let st = &s.stats;
    let mut out = format!(
        "store       {store}\ntable       {table}\n\
         pending     {} (leased {})\ndispatched  {}\nparked      {}\nheld keys   {}\n\
         scheduled   {}{}\noldest pending  {}\n",
        st.pending,
        st.leased,
        st.dispatched,
        st.parked,
        st.held_keys,
        st.scheduled,
        st.next_due_in
            .map(|d| format!(" (next due in {})", parse::human(d)))
            .unwrap_or_default(),
        if st.pending == 0 {
            "-".to_string()
        } else {
            parse::human(st.oldest_pending_age)
        },
    );
    out.push_str("attempts of undelivered messages:");
    if s.histogram.is_empty() {
        out.push_str(" -\n");
    } else {
        out.push('\n');
        let width = s.histogram.iter().map(|h| h.1).max().unwrap_or(1).max(1);
        for (attempts, count) in &s.histogram {
            let bar = "#".repeat(((count * 40).div_ceil(width)) as usize);
            out.push_str(&format!("  {attempts:>3}  {count:>8}  {bar}\n"));
        }
    }
    if !s.parked.is_empty() {
        out.push_str(&format!(
            "parked messages (first {}; `outboxer requeue --id ID` brings one back):\n",
            s.parked.len()
        ));
        for p in &s.parked {
            out.push_str(&format!(
                "  id {:<8} message {}  attempts {:<3} {}\n",
                p.id,
                p.message_id
                    .map(|m| m.to_string())
                    .unwrap_or_else(|| "-".into()),
                p.attempts,
                one_line(p.last_error.as_deref().unwrap_or("-"), 160),
            ));
        }
    }
    if !s.held.is_empty() {
        out.push_str(&format!(
            "held keys (first {}; their later messages wait for the parked head: \
             `outboxer requeue --id ID` puts it back in order, `outboxer skip --id ID` gives it up):\n",
            s.held.len()
        ));
        for h in &s.held {
            out.push_str(&format!(
                "  key {}  head id {}  message {}  waiting {}  {}\n",
                one_line(&h.ordering_key, 80),
                h.parked_id,
                h.message_id
                    .map(|m| m.to_string())
                    .unwrap_or_else(|| "-".into()),
                h.waiting,
                one_line(h.last_error.as_deref().unwrap_or("-"), 160),
            ));
        }
    }
    out
}

pub struct StatsOptions {
    pub json: bool,
    pub watch: Option<Duration>,
    pub count: Option<u64>,
    pub parked_limit: usize,
}

pub fn stats(store: &dyn Store, o: &StatsOptions, shown: &str, table: &str) -> Result<(), Fail> {
    let stdout = std::io::stdout();
    let mut n = 0u64;
    loop {
        let snap = snapshot(store, o.parked_limit)?;
        let text = if o.json {
            format!("{}\n", to_json(&snap, shown, table))
        } else if o.watch.is_some() {
            // Clear the screen and print the time of the refresh.
            format!(
                "\x1b[2J\x1b[H{}\n{}",
                parse::rfc3339_millis(SystemTime::now()),
                to_text(&snap, shown, table)
            )
        } else {
            to_text(&snap, shown, table)
        };
        let mut lock = stdout.lock();
        lock.write_all(text.as_bytes())
            .and_then(|_| lock.flush())
            .map_err(|e| Fail::runtime(format!("writing to stdout: {e}")))?;
        drop(lock);
        n += 1;
        match o.watch {
            Some(every) if o.count.is_none_or(|c| n < c) => std::thread::sleep(every),
            _ => return Ok(()),
        }
    }
}

/// `what` describes a filter (` enqueued before ..`, ` whose last error ..`).
pub fn requeue(store: &dyn Store, which: &Requeue, what: &str) -> Result<(), Fail> {
    let n = store.requeue(which)?;
    println!("requeued {n} parked message(s){what}");
    Ok(())
}

/// Gives parked key heads up, one id at a time so that an id that is not a parked
/// message holding its key is named in the error (the others are skipped).
pub fn skip(store: &dyn Store, ids: &[i64]) -> Result<(), Fail> {
    let mut moved = 0u64;
    let mut refused = Vec::new();
    for &id in ids {
        match store.skip(&[id])? {
            0 => refused.push(id.to_string()),
            n => moved += n,
        }
    }
    println!("skipped {moved} parked message(s): their keys' later messages flow");
    if refused.is_empty() {
        Ok(())
    } else {
        Err(Fail::runtime(format!(
            "not skipped: id {} is not a parked message holding its key (pending, \
             dispatched, skipped already or no such row)",
            refused.join(", ")
        )))
    }
}

/// Says what [`purge`] would delete, deleting nothing.
pub fn purge_dry_run(
    store: &dyn Store,
    age: Duration,
    before: &str,
    parked: bool,
) -> Result<(), Fail> {
    let p = store.purgeable(age)?;
    println!(
        "dry run: would purge {} dispatched message(s) dispatched before {before}",
        p.dispatched
    );
    if parked {
        println!(
            "dry run: would purge {} parked message(s) enqueued before {before}",
            p.parked
        );
    } else {
        println!(
            "dry run: {} parked message(s) enqueued before {before} stay (--include-parked deletes them)",
            p.parked
        );
    }
    println!("dry run: nothing deleted; pending messages are never deleted");
    Ok(())
}

/// Deletes dispatched rows older than `age` (and with `parked`, parked rows enqueued
/// before then), in batches; pending rows always stay.
pub fn purge(store: &dyn Store, age: Duration, before: &str, parked: bool) -> Result<(), Fail> {
    const BATCH: usize = 5000;
    let in_batches = |f: &dyn Fn() -> outboxer::Result<u64>| -> Result<u64, Fail> {
        let mut total = 0u64;
        loop {
            let n = f()?;
            total += n;
            if n < BATCH as u64 {
                return Ok(total);
            }
        }
    };
    let total = in_batches(&|| store.cleanup(age, BATCH))?;
    println!("purged {total} dispatched message(s) dispatched before {before}");
    if parked {
        let total = in_batches(&|| store.purge_parked(age, BATCH))?;
        println!("purged {total} parked message(s) enqueued before {before}");
    }
    Ok(())
}
