//! MySQL / MariaDB through sqlx: the statements of the crate's MySQL store
//! ([`MysqlSql`]) bound with sqlx, in the order its enqueue path runs them.

use super::{sealed, SqlxDatabase};
use crate::async_impl::store::Finish;
use crate::core::rows;
use crate::core::sql::mysql::{key_bucket, MysqlSql};
use crate::message::Message;
use crate::{Error, Result};
use sqlx::mysql::{MySql, MySqlConnection};
use std::future::Future;

impl sealed::Sealed for MySql {}

impl SqlxDatabase for MySql {
    type Blocking = crate::store::MysqlStore;
    type Target = MysqlSql;

    fn target(store: &crate::store::MysqlStore) -> MysqlSql {
        MysqlSql::new(store.table())
    }

    fn insert<'c>(
        conn: &'c mut MySqlConnection,
        sql: &'c MysqlSql,
        messages: &'c [Message],
    ) -> impl Future<Output = Result<()>> + Send + 'c {
        insert(conn, sql, messages)
    }
}

/// As the store's enqueue: the key-bucket rows locked first, in bucket order
/// (held to commit: one key's ids follow commit order), then multi-row INSERTs
/// of at most 500 rows.
async fn insert(conn: &mut MySqlConnection, sql: &MysqlSql, messages: &[Message]) -> Result<()> {
    if messages.is_empty() {
        return Ok(());
    }
    // Checked before anything is written, as the store's enqueue does.
    let delays = crate::message::delays(messages)?;
    let mut buckets: Vec<u32> = messages
        .iter()
        .filter_map(|m| m.key())
        .map(key_bucket)
        .collect();
    if !buckets.is_empty() {
        buckets.sort_unstable();
        buckets.dedup();
        sqlx::query(&sql.lock_keys(&buckets))
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| Error::db("locking ordering keys", e))?;
    }
    for (chunk, delays) in messages.chunks(500).zip(delays.chunks(500)) {
        let text = sql.insert(chunk.len());
        let mut q = sqlx::query(&text);
        for (m, delay) in chunk.iter().zip(delays) {
            q = q
                .bind(m.message_id.as_uuid().as_bytes().as_slice())
                .bind(m.payload.as_slice())
                .bind(rows::headers_to_json(&m.headers).to_string())
                .bind(rows::options_to_json(&m.options).to_string())
                .bind(m.key())
                .bind(i64::try_from(delay.as_micros()).unwrap_or(i64::MAX));
        }
        q.execute(&mut *conn)
            .await
            .map_err(|e| Error::db("inserting messages", e))?;
    }
    Ok(())
}

impl Finish for sqlx::Transaction<'_, MySql> {
    async fn commit(self) -> Result<()> {
        let r = sqlx::Transaction::commit(self).await;
        r.map_err(|e| Error::db("committing", e))
    }
    async fn rollback(self) -> Result<()> {
        let r = sqlx::Transaction::rollback(self).await;
        r.map_err(|e| Error::db("rolling back", e))
    }
}
