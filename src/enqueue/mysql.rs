//! The MySQL/MariaDB enqueue path, written once and compiled twice (`#[path]`):
//! in `blocking::store` over `mysql` with `maybe = must_be_sync` and in
//! `async_impl::store` over `mysql_async` with `maybe = must_be_async`. The
//! including module provides `maybe`, `Queryable` and `Value` of its driver.

use super::{maybe, Queryable, Value};
use crate::core::rows;
use crate::core::sql::mysql::{key_bucket, MysqlSql};
use crate::message::Message;
use crate::{Error, Result};

/// Inserts `messages` on `q` (a connection or the caller's transaction): the
/// key-bucket locks first (held to commit: one key's ids follow commit order),
/// then multi-row INSERTs of at most 500 rows.
#[maybe(AFIT)]
pub(crate) async fn insert<Q: Queryable>(
    q: &mut Q,
    sql: &MysqlSql,
    messages: &[Message],
) -> Result<()> {
    if messages.is_empty() {
        return Ok(());
    }
    // Checked before anything is written: a refused schedule stores nothing.
    let delays = crate::message::delays(messages)?;
    let mut buckets: Vec<u32> = messages
        .iter()
        .filter_map(|m| m.key())
        .map(key_bucket)
        .collect();
    if !buckets.is_empty() {
        // Held to commit: enqueues of one key commit in id order.
        buckets.sort_unstable();
        buckets.dedup();
        let _: Vec<u32> = q
            .query(sql.lock_keys(&buckets))
            .await
            .map_err(|e| Error::db("locking ordering keys", e))?;
    }
    // Chunks keep the statement count (and the statement cache) small.
    for (chunk, delays) in messages.chunks(500).zip(delays.chunks(500)) {
        let mut params: Vec<Value> = Vec::with_capacity(chunk.len() * 6);
        for (m, delay) in chunk.iter().zip(delays) {
            params.push(Value::Bytes(m.message_id.as_uuid().as_bytes().to_vec()));
            params.push(Value::Bytes(m.payload.clone()));
            params.push(Value::from(rows::headers_to_json(&m.headers).to_string()));
            params.push(Value::from(rows::options_to_json(&m.options).to_string()));
            params.push(match &m.ordering_key {
                Some(k) => Value::from(k.as_str()),
                None => Value::NULL,
            });
            // At most MAX_DELAY: fits an i64 of microseconds.
            params.push(Value::from(
                i64::try_from(delay.as_micros()).unwrap_or(i64::MAX),
            ));
        }
        q.exec_drop(sql.insert(chunk.len()), params)
            .await
            .map_err(|e| Error::db("inserting messages", e))?;
    }
    Ok(())
}
