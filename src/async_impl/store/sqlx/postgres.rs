//! PostgreSQL through sqlx: the statements of the crate's PostgreSQL store
//! ([`PostgresSql`]) bound with sqlx, in the order its enqueue path runs them.

use super::{sealed, SqlxDatabase};
use crate::async_impl::store::Finish;
use crate::core::rows;
use crate::core::sql::postgres::PostgresSql;
use crate::message::Message;
use crate::{Error, Result};
use sqlx::postgres::{PgConnection, Postgres};
use std::future::Future;

/// The table's statements and what the enqueue needs besides the messages.
pub struct PgTarget {
    sql: PostgresSql,
    lock_space: i32,
    notify: bool,
}

impl sealed::Sealed for Postgres {}

impl SqlxDatabase for Postgres {
    type Blocking = crate::store::PostgresStore;
    type Target = PgTarget;

    fn target(store: &crate::store::PostgresStore) -> PgTarget {
        let table = store.table();
        PgTarget {
            sql: PostgresSql::new(table),
            lock_space: table.lock_space(),
            notify: store.notifies(),
        }
    }

    fn insert<'c>(
        conn: &'c mut PgConnection,
        t: &'c PgTarget,
        messages: &'c [Message],
    ) -> impl Future<Output = Result<()>> + Send + 'c {
        insert(conn, t, messages)
    }
}

/// As the store's enqueue: per-key advisory locks first (ids follow commit
/// order), one row or an `unnest` batch, then `NOTIFY` (delivered at commit).
async fn insert(conn: &mut PgConnection, t: &PgTarget, messages: &[Message]) -> Result<()> {
    if messages.is_empty() {
        return Ok(());
    }
    let sql = &t.sql;
    // Checked before anything is written, as the store's enqueue does.
    let delays: Vec<f64> = crate::message::delays(messages)?
        .iter()
        .map(|d| d.as_secs_f64() * 1000.0)
        .collect();
    let keys: Vec<&str> = messages.iter().filter_map(|m| m.key()).collect();
    if !keys.is_empty() {
        sqlx::query(&sql.lock_keys)
            .bind(t.lock_space)
            .bind(&keys)
            .execute(&mut *conn)
            .await
            .map_err(|e| Error::db("locking ordering keys", e))?;
    }
    if let ([m], [delay]) = (messages, delays.as_slice()) {
        sqlx::query(&sql.insert_one)
            .bind(m.message_id.as_uuid())
            .bind(m.payload.as_slice())
            .bind(rows::headers_to_json(&m.headers))
            .bind(rows::options_to_json(&m.options))
            .bind(m.ordering_key.as_deref())
            .bind(delay)
            .execute(&mut *conn)
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
        sqlx::query(&sql.insert_many)
            .bind(&ids)
            .bind(&payloads)
            .bind(&headers)
            .bind(&options)
            .bind(&okeys)
            .bind(&delays)
            .execute(&mut *conn)
            .await
            .map_err(|e| Error::db("inserting messages", e))?;
    }
    if t.notify {
        sqlx::query(&sql.notify)
            .bind(&sql.channel)
            .execute(&mut *conn)
            .await
            .map_err(|e| Error::db("notifying relays", e))?;
    }
    Ok(())
}

impl Finish for sqlx::Transaction<'_, Postgres> {
    async fn commit(self) -> Result<()> {
        let r = sqlx::Transaction::commit(self).await;
        r.map_err(|e| Error::db("committing", e))
    }
    async fn rollback(self) -> Result<()> {
        let r = sqlx::Transaction::rollback(self).await;
        r.map_err(|e| Error::db("rolling back", e))
    }
}
