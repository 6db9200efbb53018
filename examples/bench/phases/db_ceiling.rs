//! `db_ceiling_per_s`: the relay's database statements alone, no publishing: claim
//! and mark loops over a pre-filled table, one after the other on one thread.
//!
//! New mode: `claim_locked` then the held claim's `commit(ids, delete)` (the
//! dispatched rows deleted and COMMIT), or, on a store that cannot hold row locks,
//! what the relay does there instead: a lease `claim` then `delete_dispatched`.
//! Old mode: a lease `claim` then `mark_dispatched` (the rows kept).

use crate::mode::Mode;
use crate::{Backend, BoxResult, Env, CHUNK};
use outboxer::store::{BatchLimit, Lease};
use outboxer::Store;
use std::time::{Duration, Instant};

/// The lease of each claim (the relay's default).
const LEASE: Duration = Duration::from_secs(30);

/// Fills a fresh table with N messages, then times claim + mark of batches of
/// `batch` until it is drained; every message must be marked exactly once.
pub fn db_ceiling_phase<B: Backend>(
    env: &Env,
    db: &B,
    batch: usize,
    mode: Mode,
) -> BoxResult<Duration> {
    let table = env.table(&format!("dbceil{batch}_{}", mode.name()));
    db.drop_table(&table)?;
    let store = db.store(&table)?;
    for chunk in env.make_messages(env.messages).chunks(CHUNK) {
        store.enqueue(chunk)?;
    }
    let limit = BatchLimit {
        rows: batch,
        bytes: BatchLimit::DEFAULT_BYTES,
    };
    let mut marked = 0usize;
    let start = Instant::now();
    loop {
        let n = match mode {
            Mode::New => claim_and_delete(&store, limit)?,
            Mode::Old => {
                let lease = Lease::new(LEASE);
                let claim = store.claim(&lease, limit)?;
                let ids: Vec<i64> = claim.messages.iter().map(|m| m.id).collect();
                store.mark_dispatched(&lease, &ids)?.len()
            }
        };
        if n == 0 {
            break;
        }
        marked += n;
    }
    let took = start.elapsed();
    if marked != env.messages {
        return Err(format!("db ceiling: marked {marked} of {} messages", env.messages).into());
    }
    drop(store);
    db.drop_table(&table)?;
    Ok(took)
}

/// One new-mode claim and its mark; the number of rows marked (0: drained).
fn claim_and_delete<S: Store>(store: &S, limit: BatchLimit) -> BoxResult<usize> {
    let lease = Lease::new(LEASE);
    if let Some(locked) = store.claim_locked(&lease, limit)? {
        let ids: Vec<i64> = locked.claim.messages.iter().map(|m| m.id).collect();
        return Ok(locked.held.commit(&ids, true)?.len());
    }
    let claim = store.claim(&lease, limit)?;
    let ids: Vec<i64> = claim.messages.iter().map(|m| m.id).collect();
    Ok(store.delete_dispatched(&lease, &ids)?.len())
}
