//! Row-lock claims on MySQL / MariaDB: the batch is held by its rows' locks in a
//! READ COMMITTED transaction that stays open on a pooled connection of its own
//! while the relay publishes; the outcomes are written in it and committed once.
//!
//! Round trips: one to open the transaction and lock the batch, one to mark (or
//! delete) the published rows and commit. The connection goes back to the pool
//! without the driver's reset (the pool's default) only when its state is known
//! to be clean; otherwise the reset on return rolls back whatever is open, or
//! finds the connection dead and drops it.

use super::{decode, micros, MysqlStore};
use crate::blocking::store::{Claim, FailedAttempt, HeldClaim, Lease, LockedClaim};
use crate::core::sql::mysql::{failed_status, IdleLimit, MysqlSql};
use crate::{Error, Result};
use mysql::prelude::Queryable;
use mysql::{PooledConn, Row};
use std::sync::Arc;
use std::time::Duration;

/// An open row-lock claim.
pub(super) struct MysqlHeld {
    conn: PooledConn,
    sql: Arc<MysqlSql>,
    limit: IdleLimit,
    done: bool,
}

/// Runs a (multi-statement) text query and returns the rows of all its result
/// sets and the affected rows of the last statement; the first failing
/// statement's error stops it (the later ones do not run).
fn run(conn: &mut PooledConn, sql: &str) -> mysql::Result<(Vec<Row>, u64)> {
    let mut result = conn.query_iter(sql)?;
    let mut rows = Vec::new();
    let mut affected = 0;
    while let Some(set) = result.iter() {
        affected = set.affected_rows();
        for row in set {
            rows.push(row?);
        }
    }
    Ok((rows, affected))
}

/// The idle bound for a lease: whole seconds, rounded up.
fn idle_secs(lease: Duration) -> u64 {
    lease.as_secs() + u64::from(lease.subsec_nanos() > 0)
}

impl MysqlStore {
    /// Which server this is (its idle bound), asked once.
    fn idle_limit(&self, conn: &mut PooledConn) -> Result<IdleLimit> {
        if let Some(l) = self.inner.idle_limit.get() {
            return Ok(*l);
        }
        let version: Option<String> = conn
            .query_first("SELECT VERSION()")
            .map_err(|e| Error::db("claiming messages", e))?;
        let limit = IdleLimit::of_version(version.as_deref().unwrap_or(""));
        Ok(*self.inner.idle_limit.get_or_init(|| limit))
    }

    pub(super) fn claim_held(
        &self,
        lease: &Lease,
        rows: usize,
        bytes: usize,
    ) -> Result<Option<LockedClaim>> {
        // Go rows without a message id get one first, committed (a rolled-back id
        // would change between deliveries); then the claim runs again.
        for _ in 0..2 {
            let (held, found) = self.lock_batch(lease, rows)?;
            let go_rows: Vec<i64> = found
                .iter()
                .filter(|r| matches!(r.as_ref(1), Some(mysql::Value::NULL)))
                .filter_map(|r| r.get_opt::<i64, usize>(0).and_then(|v| v.ok()))
                .collect();
            if !go_rows.is_empty() {
                // A failed rollback leaves the connection to the pool's reset.
                drop(held.rollback());
                self.write(
                    "giving messages an id",
                    self.inner.sql.assign_message_ids(&go_rows),
                )?;
                continue;
            }
            let sizes: Vec<(i64, i64)> = found
                .iter()
                .map(|r| {
                    let id = r.get_opt::<i64, usize>(0).and_then(|v| v.ok());
                    let size = r.get_opt::<i64, usize>(8).and_then(|v| v.ok());
                    (id.unwrap_or(0), size.unwrap_or(0))
                })
                .collect();
            let keep = super::within_bytes(&sizes, bytes).len();
            // Past the byte cap the rows stay locked (not returned) until the end.
            let decoded = found
                .into_iter()
                .take(keep)
                .map(decode)
                .collect::<Result<Vec<_>>>()?;
            return Ok(Some(LockedClaim {
                claim: Claim::from_rows(decoded),
                held: Box::new(held),
            }));
        }
        Err(Error::db(
            "claiming messages",
            "rows without a message_id kept coming back after they were given one",
        ))
    }

    /// Opens the transaction and locks up to `rows` claimable rows.
    fn lock_batch(&self, lease: &Lease, rows: usize) -> Result<(MysqlHeld, Vec<Row>)> {
        let mut conn = self.conn()?;
        // Reset on return unless it ends cleanly (then set back).
        conn.reset_connection(true);
        let limit = self.idle_limit(&mut conn)?;
        let sql = &self.inner.sql;
        let query = format!(
            "{}; {}",
            MysqlSql::begin_held(limit, idle_secs(lease.duration)),
            sql.claim_locked(rows)
        );
        // Until the claim is handed out, dropping `held` rolls back.
        let mut held = MysqlHeld {
            conn,
            sql: Arc::clone(&self.inner.sql),
            limit,
            done: false,
        };
        let (found, _) =
            run(&mut held.conn, &query).map_err(|e| Error::db("claiming messages", e))?;
        Ok((held, found))
    }
}

impl MysqlHeld {
    /// Rolls back and resets the idle bound; the connection is clean after it.
    fn rollback(mut self) -> Result<()> {
        self.done = true;
        let sql = format!("ROLLBACK; {}", MysqlSql::end_held(self.limit));
        run(&mut self.conn, &sql).map_err(|e| Error::db("rolling back a claim", e))?;
        self.conn.reset_connection(false);
        Ok(())
    }
}

impl HeldClaim for MysqlHeld {
    fn mark_failed(&mut self, failures: &[FailedAttempt]) -> Result<usize> {
        let db = |e| Error::db("recording failed attempts", e);
        let mut n = 0;
        for f in failures {
            let stmt = self.sql.held_mark_failed(
                f.id,
                micros(f.retry_in),
                failed_status(f.park, f.hold_key),
            );
            self.conn.exec_drop(stmt, (&f.error,)).map_err(db)?;
            n += self.conn.affected_rows() as usize;
        }
        Ok(n)
    }

    fn release(&mut self, ids: &[i64], retry_in: Duration) -> Result<usize> {
        // Unlocked by the commit, claimable at once: nothing to write.
        if ids.is_empty() || retry_in.is_zero() {
            return Ok(ids.len());
        }
        let stmt = self.sql.held_release(ids, micros(retry_in));
        self.conn
            .query_drop(stmt)
            .map_err(|e| Error::db("releasing messages", e))?;
        Ok(self.conn.affected_rows() as usize)
    }

    fn commit(mut self: Box<Self>, dispatched: &[i64], delete: bool) -> Result<Vec<i64>> {
        let sql = self.sql.commit_held(dispatched, delete, self.limit);
        // From here on no ROLLBACK on drop: a failed commit leaves the connection
        // to the pool's reset, which rolls back or finds it dead and drops it.
        self.done = true;
        run(&mut self.conn, &sql).map_err(|e| Error::db("committing a batch's outcomes", e))?;
        self.conn.reset_connection(false);
        // Locked by this transaction since the claim: every row is still ours.
        Ok(dispatched.to_vec())
    }
}

impl Drop for MysqlHeld {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let sql = format!("ROLLBACK; {}", MysqlSql::end_held(self.limit));
        // On failure the pool's reset on return cleans up (or drops the connection).
        if run(&mut self.conn, &sql).is_ok() {
            self.conn.reset_connection(false);
        }
    }
}
