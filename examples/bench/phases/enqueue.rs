//! Phase 2, `enqueue_per_s`: the library's `send_batch`.

use crate::{Backend, BoxResult, Env, CHUNK};
use outboxer::Outbox;
use std::time::{Duration, Instant};

/// Phase 2: `send_batch` of 1000 messages into a fresh outbox table, no relay.
pub fn enqueue_phase<B: Backend>(env: &Env, db: &B) -> BoxResult<Duration> {
    let table = env.table("enqueue");
    db.drop_table(&table)?;
    let outbox = Outbox::builder()
        .store(db.store(&table)?)
        // Not connected: `build()` only gives `send` the stream's validator.
        .stream(env.stream(false)?)
        .build()?;
    let messages = env.make_messages(env.messages);
    let start = Instant::now();
    for chunk in messages.chunks(CHUNK) {
        outbox.send_batch(chunk)?;
    }
    let took = start.elapsed();
    let pending = outbox.stats()?.pending;
    if pending != env.messages as u64 {
        return Err(format!("enqueue: {pending} pending, expected {}", env.messages).into());
    }
    drop(outbox);
    db.drop_table(&table)?;
    Ok(took)
}
