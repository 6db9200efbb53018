//! The store seam on SQLite: enqueue, claims, marks, admin queries, and the
//! caller's transaction (`TxStore`).

use super::connection::{db, now_ms};
use super::decode::{decode, message_id_of, text_of};
use super::*;

impl SqliteStore {
    pub(crate) fn insert(&self, conn: &Connection, messages: &[Message]) -> Result<()> {
        if messages.is_empty() {
            return Ok(());
        }
        // Per-key order is commit order without any key lock: SQLite has one writer at
        // a time per file, and the writer holds the lock from its first INSERT to its
        // COMMIT, so ids are handed out in commit order.
        let ctx = "inserting messages";
        // Checked before anything is written: a refused schedule stores nothing.
        let delays = crate::message::delays(messages)?;
        let now = now_ms();
        let mut stmt = conn
            .prepare_cached(&self.inner.sql.insert)
            .map_err(db(ctx))?;
        for (m, delay) in messages.iter().zip(delays) {
            stmt.execute(params![
                m.message_id.as_uuid().as_bytes().as_slice(),
                m.payload,
                rows::headers_to_json(&m.headers).to_string(),
                rows::options_to_json(&m.options).to_string(),
                m.ordering_key,
                now,
                now.saturating_add(millis_up(delay)),
            ])
            .map_err(db(ctx))?;
        }
        Ok(())
    }
}

impl Store for SqliteStore {
    fn migrate(&self) -> Result<()> {
        // BEGIN IMMEDIATE makes concurrent migrators, in any process, run one at a
        // time; the later ones find the columns present and change nothing.
        self.write("migrating the table", |tx, now| self.migrate_in(tx, now))
    }

    fn enqueue(&self, messages: &[Message]) -> Result<()> {
        if messages.is_empty() {
            return Ok(());
        }
        self.write("inserting messages", |tx, _| self.insert(tx, messages))
    }

    fn claim(&self, lease: &Lease, limit: BatchLimit) -> Result<Claim> {
        let (max_rows, max_bytes) = (
            i64::try_from(limit.rows).unwrap_or(i64::MAX),
            i64::try_from(limit.bytes).unwrap_or(i64::MAX),
        );
        let token = lease.token.as_bytes().as_slice();
        let ctx = "claiming messages";
        // A row that cannot be decoded is leased like the others and returned apart,
        // so the relay parks it instead of the claim failing.
        let rows = self.write(ctx, |tx, now| {
            let until = now.saturating_add(millis(lease.duration));
            let mut stmt = tx.prepare_cached(&self.inner.sql.claim).map_err(db(ctx))?;
            let rows = stmt
                .query_map(params![max_rows, token, until, now, max_bytes], |r| {
                    Ok(decode(r))
                })
                .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
                .map_err(db(ctx))?;
            Ok(rows)
        })?;
        // RETURNING gives rows in no promised order: from_rows sorts them.
        let decoded = rows.into_iter().collect::<Result<Vec<_>>>()?;
        Ok(Claim::from_rows(decoded))
    }

    fn mark_dispatched(&self, lease: &Lease, ids: &[i64]) -> Result<Vec<i64>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let ctx = "marking messages dispatched";
        let token = lease.token.as_bytes().as_slice();
        self.write(ctx, |tx, now| {
            let mut stmt = tx
                .prepare_cached(&self.inner.sql.mark_dispatched)
                .map_err(db(ctx))?;
            let mut marked = Vec::with_capacity(ids.len());
            for id in ids {
                if stmt.execute(params![id, token, now]).map_err(db(ctx))? > 0 {
                    marked.push(*id);
                }
            }
            Ok(marked)
        })
    }

    fn delete_dispatched(&self, lease: &Lease, ids: &[i64]) -> Result<Vec<i64>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let ctx = "deleting dispatched messages";
        let token = lease.token.as_bytes().as_slice();
        self.write(ctx, |tx, _now| {
            let mut stmt = tx
                .prepare_cached(&self.inner.sql.delete_dispatched)
                .map_err(db(ctx))?;
            let mut marked = Vec::with_capacity(ids.len());
            for id in ids {
                if stmt.execute(params![id, token]).map_err(db(ctx))? > 0 {
                    marked.push(*id);
                }
            }
            Ok(marked)
        })
    }

    fn mark_failed(&self, lease: &Lease, failures: &[FailedAttempt]) -> Result<usize> {
        if failures.is_empty() {
            return Ok(0);
        }
        let ctx = "recording failed attempts";
        let token = lease.token.as_bytes().as_slice();
        self.write(ctx, |tx, now| {
            let mut stmt = tx
                .prepare_cached(&self.inner.sql.mark_failed)
                .map_err(db(ctx))?;
            let mut n = 0;
            for f in failures {
                let at = now.saturating_add(millis(f.retry_in));
                n += stmt
                    .execute(params![f.id, f.error, at, f.park, token, f.hold_key])
                    .map_err(db(ctx))?;
            }
            Ok(n)
        })
    }

    fn release(&self, lease: &Lease, ids: &[i64], retry_in: Duration) -> Result<usize> {
        if ids.is_empty() {
            return Ok(0);
        }
        let ctx = "releasing messages";
        let token = lease.token.as_bytes().as_slice();
        self.write(ctx, |tx, now| {
            let at = now.saturating_add(millis(retry_in));
            let mut stmt = tx
                .prepare_cached(&self.inner.sql.release)
                .map_err(db(ctx))?;
            let mut n = 0;
            for id in ids {
                n += stmt.execute(params![id, token, at]).map_err(db(ctx))?;
            }
            Ok(n)
        })
    }

    fn cleanup(&self, older_than: Duration, limit: usize) -> Result<u64> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let ctx = "cleaning up dispatched messages";
        self.write(ctx, |tx, now| {
            let cutoff = now.saturating_sub(millis(older_than));
            let n = tx
                .prepare_cached(&self.inner.sql.cleanup)
                .and_then(|mut s| s.execute(params![cutoff, limit]))
                .map_err(db(ctx))?;
            Ok(n as u64)
        })
    }

    fn requeue(&self, which: &Requeue) -> Result<u64> {
        let ctx = "requeueing parked messages";
        self.write(ctx, |tx, now| {
            let n = match which {
                Requeue::AllParked => tx
                    .execute(&self.inner.sql.requeue_all, [now])
                    .map_err(db(ctx))?,
                Requeue::Ids(ids) => {
                    let mut stmt = tx
                        .prepare_cached(&self.inner.sql.requeue_one)
                        .map_err(db(ctx))?;
                    let mut n = 0;
                    for id in ids {
                        n += stmt.execute(params![id, now]).map_err(db(ctx))?;
                    }
                    n
                }
                Requeue::Matching(f) => {
                    let before = f.older_than.map(|age| now.saturating_sub(millis(age)));
                    tx.execute(
                        &self.inner.sql.requeue_matching,
                        params![now, before, f.error_text()],
                    )
                    .map_err(db(ctx))?
                }
            };
            Ok(n as u64)
        })
    }

    fn purge_parked(&self, older_than: Duration, limit: usize) -> Result<u64> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let ctx = "purging parked messages";
        self.write(ctx, |tx, now| {
            let cutoff = now.saturating_sub(millis(older_than));
            let n = tx
                .prepare_cached(&self.inner.sql.purge_parked)
                .and_then(|mut s| s.execute(params![cutoff, limit]))
                .map_err(db(ctx))?;
            Ok(n as u64)
        })
    }

    fn attempts_histogram(&self) -> Result<Vec<(u32, u64)>> {
        let ctx = "reading the attempts histogram";
        self.with_conn(|c| {
            let mut stmt = c
                .prepare_cached(&self.inner.sql.attempts_histogram)
                .map_err(db(ctx))?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))
                .map_err(db(ctx))?;
            let mut out = Vec::new();
            for row in rows {
                let (a, n) = row.map_err(db(ctx))?;
                out.push((u32::try_from(a).unwrap_or(0), u64::try_from(n).unwrap_or(0)));
            }
            Ok(out)
        })
    }

    fn parked(&self, limit: usize) -> Result<Vec<ParkedMessage>> {
        let ctx = "listing parked messages";
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with_conn(|c| {
            let mut stmt = c.prepare_cached(&self.inner.sql.parked).map_err(db(ctx))?;
            let rows = stmt
                .query_map([limit], |r| {
                    Ok(ParkedMessage {
                        id: r.get(0)?,
                        message_id: message_id_of(r.get_ref(1)?),
                        attempts: u32::try_from(r.get::<_, i64>(2)?).unwrap_or(0),
                        last_error: text_of(r.get_ref(3)?),
                        ordering_key: text_of(r.get_ref(4)?),
                        holds_key: r.get::<_, i64>(5)? == 1,
                    })
                })
                .map_err(db(ctx))?;
            let mut out = Vec::new();
            for row in rows {
                out.push(row.map_err(db(ctx))?);
            }
            Ok(out)
        })
    }

    fn skip(&self, ids: &[i64]) -> Result<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        let ctx = "skipping parked messages";
        self.write(ctx, |tx, _| {
            let mut stmt = tx
                .prepare_cached(&self.inner.sql.skip_one)
                .map_err(db(ctx))?;
            let mut n = 0;
            for id in ids {
                n += stmt.execute([id]).map_err(db(ctx))?;
            }
            Ok(n as u64)
        })
    }

    fn held_keys(&self, limit: usize) -> Result<Vec<HeldKey>> {
        let ctx = "listing held keys";
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with_conn(|c| {
            let mut stmt = c
                .prepare_cached(&self.inner.sql.held_keys)
                .map_err(db(ctx))?;
            let rows = stmt
                .query_map([limit], |r| {
                    Ok(HeldKey {
                        ordering_key: text_of(r.get_ref(0)?).unwrap_or_default(),
                        parked_id: r.get(1)?,
                        message_id: message_id_of(r.get_ref(2)?),
                        last_error: text_of(r.get_ref(3)?),
                        waiting: u64::try_from(r.get::<_, i64>(4)?).unwrap_or(0),
                    })
                })
                .map_err(db(ctx))?;
            let mut out = Vec::new();
            for row in rows {
                out.push(row.map_err(db(ctx))?);
            }
            Ok(out)
        })
    }

    fn missing_indexes(&self) -> Result<Option<Vec<String>>> {
        let table = self.inner.table.table().to_string();
        let present = self.with_conn(|c| {
            c.prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ?1")
                .and_then(|mut s| {
                    s.query_map([&table], |r| r.get::<_, String>(0))?
                        .collect::<rusqlite::Result<Vec<_>>>()
                })
                .map_err(db("listing the table's indexes"))
        })?;
        let expected = crate::core::sql::sqlite::INDEXES
            .iter()
            .map(|s| format!("{table}_{s}"))
            .collect();
        Ok(Some(crate::blocking::store::not_present(
            expected, &present,
        )))
    }

    fn purgeable(&self, older_than: Duration) -> Result<Purgeable> {
        let ctx = "counting purgeable messages";
        let (dispatched, parked) = self.with_conn(|c| {
            let cutoff = now_ms().saturating_sub(millis(older_than));
            c.prepare_cached(&self.inner.sql.purgeable)
                .and_then(|mut s| {
                    s.query_row([cutoff], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))
                })
                .map_err(db(ctx))
        })?;
        Ok(Purgeable {
            dispatched: u64::try_from(dispatched).unwrap_or(0),
            parked: u64::try_from(parked).unwrap_or(0),
        })
    }

    fn table_name(&self) -> String {
        self.table().plain()
    }

    fn stats(&self) -> Result<Stats> {
        let ctx = "reading stats";
        // One statement is one consistent snapshot; reads need no write lock.
        let ((pending, dispatched, parked, leased, oldest, held), (scheduled, due), now) = self
            .with_conn(|c| {
                let now = now_ms();
                c.prepare_cached(&self.inner.sql.stats)
                    .and_then(|mut s| {
                        s.query_row([now], |r| {
                            Ok((
                                (
                                    r.get::<_, i64>(0)?,
                                    r.get::<_, i64>(1)?,
                                    r.get::<_, i64>(2)?,
                                    r.get::<_, i64>(3)?,
                                    r.get::<_, Option<i64>>(4)?,
                                    r.get::<_, i64>(5)?,
                                ),
                                (r.get::<_, i64>(6)?, r.get::<_, Option<i64>>(7)?),
                                now,
                            ))
                        })
                    })
                    .map_err(db(ctx))
            })?;
        let count = |n: i64| u64::try_from(n).unwrap_or(0);
        let age = oldest.map_or(0, |t| now.saturating_sub(t).max(0));
        Ok(Stats {
            pending: count(pending),
            leased: count(leased),
            dispatched: count(dispatched),
            parked: count(parked),
            oldest_pending_age: Duration::from_millis(count(age)),
            held_keys: count(held),
            scheduled: count(scheduled),
            next_due_in: due.map(|at| Duration::from_millis(count(at.saturating_sub(now)))),
        })
    }

    fn next_due(&self) -> Result<Option<Duration>> {
        let ctx = "reading the next due time";
        let now = now_ms();
        let due: Option<i64> = self.with_conn(|c| {
            c.prepare_cached(&self.inner.sql.next_due)
                .and_then(|mut s| s.query_row([now], |r| r.get(0)))
                .map_err(db(ctx))
        })?;
        Ok(due.map(|at| Duration::from_millis(u64::try_from(at.saturating_sub(now)).unwrap_or(0))))
    }
}

impl TxStore for SqliteStore {
    type Tx<'a> = Transaction<'a>;

    fn enqueue_in_tx(&self, tx: &mut Transaction<'_>, messages: &[Message]) -> Result<()> {
        self.insert(tx, messages)
    }

    /// The transaction is `BEGIN IMMEDIATE` on a pooled connection.
    fn with_transaction<R, E, F>(&self, f: F) -> std::result::Result<R, E>
    where
        F: FnOnce(&mut Transaction<'_>) -> std::result::Result<R, E>,
        E: From<Error>,
    {
        self.with_conn(|c| {
            let _turn = self.turn();
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db("beginning a transaction"))?;
            run_in(tx, f)
        })
    }
}

impl Finish for Transaction<'_> {
    fn commit(self) -> Result<()> {
        Transaction::commit(self).map_err(db("committing"))
    }
    fn rollback(self) -> Result<()> {
        Transaction::rollback(self).map_err(db("rolling back"))
    }
}
