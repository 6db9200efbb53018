//! Phase 1, `insert_per_s`: the database's raw ceiling.

use crate::{Backend, BoxResult, Env};
use std::time::Duration;

/// Phase 1: plain inserts into a plain table; returns the time taken.
pub fn insert<B: Backend>(env: &Env, db: &B) -> BoxResult<Duration> {
    let table = env.table("raw");
    let messages = env.make_messages(env.messages);
    let took = db.plain_insert(&table, &messages)?;
    let count = db.count(&table)?;
    if count != env.messages as u64 {
        return Err(format!("plain insert: {count} rows, expected {}", env.messages).into());
    }
    db.drop_table(&table)?;
    Ok(took)
}
