//! The SQL Server enqueue path, written once and compiled twice (`#[path]`): in
//! `blocking::store` (requests run on the store's private runtime, `must_be_sync`)
//! and in `async_impl::store` (on the caller's tiberius client, `must_be_async`).
//! The including module provides `maybe` and a `Conn` with `exec` and `batch`.

use super::{maybe, Conn};
use crate::core::rows;
use crate::core::sql::sqlserver::{self as q, batch, SqlServerSql};
use crate::message::Message;
use crate::{Error, Result};
use tiberius::Query;

/// Inserts `messages` on `conn`: key locks first (so ids follow commit order per
/// key), then the rows in order. One request when it fits (with `own_tx`, its own
/// transaction), otherwise several inside one transaction.
#[maybe(AFIT)]
pub(crate) async fn insert(
    conn: &mut Conn<'_>,
    sql: &SqlServerSql,
    messages: &[Message],
    own_tx: bool,
) -> Result<()> {
    if messages.is_empty() {
        return Ok(());
    }
    // Checked before anything is written: a refused schedule stores nothing.
    let delays = crate::message::delays(messages)?;
    let rows = messages
        .iter()
        .zip(delays)
        .map(|(m, d)| Encoded::new(m, d))
        .collect::<Result<Vec<_>>>()?;
    let mut locks: Vec<String> = messages
        .iter()
        .filter_map(Message::key)
        .map(|k| sql.key_resource(k))
        .collect();
    // One lock order for everyone: two enqueues of the same keys cannot deadlock.
    locks.sort_unstable();
    locks.dedup();
    let ctx = "inserting messages";
    if q::fits_one_request(locks.len(), rows.len()) {
        let mut query = Query::new(sql.enqueue(locks.len(), rows.len(), own_tx));
        bind_enqueue(&mut query, &locks, &rows);
        conn.exec(ctx, query).await?;
        return Ok(());
    }
    if own_tx {
        conn.batch("beginning a transaction", batch::BEGIN).await?;
    }
    for chunk in locks.chunks(q::MAX_PARAMS) {
        let mut query = Query::new(sql.enqueue(chunk.len(), 0, false));
        bind_enqueue(&mut query, chunk, &[]);
        conn.exec("locking ordering keys", query).await?;
    }
    for chunk in rows.chunks(q::MAX_INSERT_ROWS) {
        let mut query = Query::new(sql.enqueue(0, chunk.len(), false));
        bind_enqueue(&mut query, &[], chunk);
        conn.exec(ctx, query).await?;
    }
    if own_tx {
        conn.batch("committing messages", batch::COMMIT).await?;
    }
    Ok(())
}

/// A message as bound to the insert statement.
struct Encoded<'m> {
    message_id: uuid::Uuid,
    payload: &'m [u8],
    headers: Vec<u8>,
    options: Vec<u8>,
    key: Option<&'m str>,
    delay_ms: i64,
}

impl<'m> Encoded<'m> {
    fn new(m: &'m Message, delay: std::time::Duration) -> Result<Self> {
        if let Some(k) = m.key() {
            if !q::ordering_key_fits(k) {
                return Err(Error::option(
                    "ordering_key",
                    format!(
                        "longer than {} UTF-16 code units (SQL Server index key limit)",
                        q::MAX_ORDERING_KEY_UTF16
                    ),
                ));
            }
        }
        let json = |v: serde_json::Value| {
            serde_json::to_vec(&v).map_err(|e| Error::db("encoding headers and options", e))
        };
        Ok(Encoded {
            message_id: *m.message_id.as_uuid(),
            payload: &m.payload,
            headers: json(rows::headers_to_json(&m.headers))?,
            options: json(rows::options_to_json(&m.options))?,
            key: m.key(),
            // Rounded up (a delay never ends early); MAX_DELAY is far below the limit.
            delay_ms: q::delay_ms(delay.saturating_add(std::time::Duration::from_nanos(999_999))),
        })
    }
}

fn bind_enqueue<'a>(query: &mut Query<'a>, locks: &'a [String], rows: &'a [Encoded<'_>]) {
    for l in locks {
        query.bind(l.as_str());
    }
    for r in rows {
        query.bind(r.message_id);
        query.bind(r.payload);
        query.bind(r.headers.as_slice());
        query.bind(r.options.as_slice());
        query.bind(r.key);
        query.bind(r.delay_ms);
    }
}
