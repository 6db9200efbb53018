//! The PostgreSQL enqueue path, written once and compiled twice (`#[path]`):
//! in `blocking::store` over `postgres` with `maybe = must_be_sync` and in
//! `async_impl::store` over `tokio-postgres` with `maybe = must_be_async`. The
//! including module provides `maybe` and `PostgresClient`
//! (`pg::GenericClient`, plus `Send + Sync` for the async driver's futures).

use super::{maybe, PostgresClient};
use crate::core::rows;
use crate::core::sql::postgres::PostgresSql;
use crate::message::Message;
use crate::{Error, Result};

/// Where the statements go and what they need besides the messages.
pub(crate) struct Target<'a> {
    pub sql: &'a PostgresSql,
    pub lock_space: i32,
    pub notify: bool,
}

/// Inserts `messages` on `client` (a connection or the caller's transaction):
/// per-key locks first (ids follow commit order), one row or an `unnest` batch,
/// then `NOTIFY` so relays in other processes wake at commit.
#[maybe(AFIT)]
pub(crate) async fn insert<C>(client: &mut C, t: &Target<'_>, messages: &[Message]) -> Result<()>
where
    C: PostgresClient,
{
    if messages.is_empty() {
        return Ok(());
    }
    let sql = t.sql;
    // Checked before anything is written: a refused schedule stores nothing.
    let delays: Vec<f64> = crate::message::delays(messages)?
        .iter()
        .map(|d| d.as_secs_f64() * 1000.0)
        .collect();
    let keys: Vec<&str> = messages.iter().filter_map(|m| m.key()).collect();
    if !keys.is_empty() {
        // Serialise enqueues of the same key so ids follow commit order.
        client
            .query_one(&sql.lock_keys, &[&t.lock_space, &keys])
            .await
            .map_err(|e| Error::db("locking ordering keys", e))?;
    }
    if let ([m], [delay]) = (messages, delays.as_slice()) {
        let headers = rows::headers_to_json(&m.headers);
        let options = rows::options_to_json(&m.options);
        client
            .execute(
                &sql.insert_one,
                &[
                    m.message_id.as_uuid(),
                    &m.payload,
                    &headers,
                    &options,
                    &m.ordering_key,
                    delay,
                ],
            )
            .await
            .map_err(|e| Error::db("inserting a message", e))?;
    } else {
        let ids: Vec<uuid::Uuid> = messages.iter().map(|m| *m.message_id.as_uuid()).collect();
        let payloads: Vec<&[u8]> = messages.iter().map(|m| m.payload.as_slice()).collect();
        let headers: Vec<serde_json::Value> = messages
            .iter()
            .map(|m| rows::headers_to_json(&m.headers))
            .collect();
        let options: Vec<serde_json::Value> = messages
            .iter()
            .map(|m| rows::options_to_json(&m.options))
            .collect();
        let okeys: Vec<Option<&str>> = messages.iter().map(|m| m.key()).collect();
        client
            .execute(
                &sql.insert_many,
                &[&ids, &payloads, &headers, &options, &okeys, &delays],
            )
            .await
            .map_err(|e| Error::db("inserting messages", e))?;
    }
    if t.notify {
        client
            .query_one(&sql.notify, &[&sql.channel])
            .await
            .map_err(|e| Error::db("notifying relays", e))?;
    }
    Ok(())
}
