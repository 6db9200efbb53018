//! The store seam on SQL Server: enqueue, claims, marks, admin queries, and the
//! caller's transaction (`TxStore`).

use super::decode::decode;
use super::*;

impl SqlServerStore {
    pub(super) fn insert(
        &self,
        conn: &mut Conn<'_>,
        messages: &[Message],
        own_tx: bool,
    ) -> Result<()> {
        enqueue::insert(conn, &self.inner.sql, messages, own_tx)
    }

    /// Runs `stmt(n)` over `ids` in padded chunks, then the lease token and the
    /// delay in milliseconds when given; sums the rows changed.
    fn by_ids(
        &self,
        ctx: &'static str,
        ids: &[i64],
        token: Option<uuid::Uuid>,
        delay_ms: Option<i64>,
        stmt: impl Fn(&SqlServerSql, usize) -> String,
    ) -> Result<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        let mut conn = self.conn()?;
        let mut total = 0;
        for chunk in ids.chunks(q::MAX_IDS) {
            let padded = q::pad_ids(chunk);
            let mut query = Query::new(stmt(&self.inner.sql, padded.len()));
            for id in &padded {
                query.bind(*id);
            }
            if let Some(t) = token {
                query.bind(t);
            }
            if let Some(d) = delay_ms {
                query.bind(d);
            }
            total += conn.exec(ctx, query)?;
        }
        Ok(total)
    }

    /// A lease-mode dispatched mark (or delete): the ids that still held the lease.
    fn lease_mark(&self, lease: &Lease, ids: &[i64], delete: bool) -> Result<Vec<i64>> {
        let ctx = "marking messages dispatched";
        let mut marked = Vec::with_capacity(ids.len());
        if ids.is_empty() {
            return Ok(marked);
        }
        let mut conn = self.conn()?;
        for chunk in ids.chunks(q::MAX_IDS) {
            let padded = q::pad_ids(chunk);
            let sql = match delete {
                true => self.inner.sql.delete_dispatched(padded.len()),
                false => self.inner.sql.mark_dispatched(padded.len()),
            };
            let mut query = Query::new(sql);
            for id in &padded {
                query.bind(*id);
            }
            query.bind(lease.token);
            // OUTPUT: the rows that still held the lease.
            for row in conn.rows(ctx, query)? {
                let id: Option<i64> = row.try_get(0).map_err(|e| Error::db(ctx, e))?;
                marked.extend(id);
            }
        }
        Ok(marked)
    }
}

impl Store for SqlServerStore {
    fn migrate(&self) -> Result<()> {
        // A connection of its own, without a command timeout: widening a large Go
        // table's id may take long. One transaction, under an exclusive app lock on
        // the table's name, so concurrent migrators run one after the other.
        let mut config = self.inner.config.clone();
        config.command_timeout(None);
        let mut conn = Conn {
            inner: &self.inner,
            client: Some(self.inner.open(config)?),
            broken: false,
            pooled: false,
        };
        conn.batch("beginning migrate", batch::BEGIN)?;
        self.migrate_in(&mut conn)?;
        conn.batch("committing migrate", batch::COMMIT)
    }

    fn enqueue(&self, messages: &[Message]) -> Result<()> {
        if messages.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn()?;
        self.insert(&mut conn, messages, true)
    }

    fn claim(&self, lease: &Lease, limit: BatchLimit) -> Result<Claim> {
        let mut out: Vec<Decoded> = Vec::new();
        if limit.rows == 0 {
            return Ok(Claim::default());
        }
        let mut conn = self.conn()?;
        let mut remaining = limit.rows;
        let mut bytes_left = i64::try_from(limit.bytes).unwrap_or(i64::MAX);
        // Several statements for big batches: one statement locking more than a few
        // thousand rows would escalate to a table lock.
        while remaining > 0 {
            let n = remaining.min(q::MAX_CLAIM_ROWS);
            let mut query = Query::new(self.inner.sql.claim.as_str());
            query.bind(i64::try_from(n).unwrap_or(i64::MAX));
            query.bind(lease.token);
            query.bind(q::delay_ms(lease.duration));
            query.bind(bytes_left);
            // Only the claim's first statement takes a first row larger than the cap.
            query.bind(i32::from(out.is_empty()));
            let rows = conn.rows("claiming messages", query)?;
            let got = rows.len();
            for row in &rows {
                out.push(decode(row)?);
                let size: Option<i64> = row.try_get(8).unwrap_or(None);
                bytes_left = bytes_left.saturating_sub(size.unwrap_or(0));
            }
            if got < n || bytes_left <= 0 {
                break;
            }
            remaining -= n;
        }
        Ok(Claim::from_rows(out))
    }

    fn mark_dispatched(&self, lease: &Lease, ids: &[i64]) -> Result<Vec<i64>> {
        self.lease_mark(lease, ids, false)
    }

    fn delete_dispatched(&self, lease: &Lease, ids: &[i64]) -> Result<Vec<i64>> {
        self.lease_mark(lease, ids, true)
    }

    fn mark_failed(&self, lease: &Lease, failures: &[FailedAttempt]) -> Result<usize> {
        if failures.is_empty() {
            return Ok(0);
        }
        let mut conn = self.conn()?;
        let mut total = 0;
        for chunk in failures.chunks(q::MAX_FAILED_ROWS) {
            let mut query = Query::new(self.inner.sql.mark_failed(chunk.len()));
            for f in chunk {
                query.bind(f.id);
                query.bind(f.error.as_str());
                query.bind(q::delay_ms(f.retry_in));
                query.bind(f.park);
                query.bind(f.hold_key);
            }
            query.bind(lease.token);
            total += conn.exec("recording failed attempts", query)?;
        }
        Ok(usize::try_from(total).unwrap_or(usize::MAX))
    }

    fn release(&self, lease: &Lease, ids: &[i64], retry_in: Duration) -> Result<usize> {
        let n = self.by_ids(
            "releasing messages",
            ids,
            Some(lease.token),
            Some(q::delay_ms(retry_in)),
            SqlServerSql::release,
        )?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    fn cleanup(&self, older_than: Duration, limit: usize) -> Result<u64> {
        if limit == 0 {
            return Ok(0);
        }
        let mut conn = self.conn()?;
        let mut total = 0u64;
        let mut remaining = limit;
        while remaining > 0 {
            let n = remaining.min(q::MAX_DELETE_ROWS);
            let mut query = Query::new(self.inner.sql.cleanup.as_str());
            query.bind(q::delay_ms(older_than));
            query.bind(i64::try_from(n).unwrap_or(i64::MAX));
            let deleted = conn.exec("cleaning up dispatched messages", query)?;
            total += deleted;
            if deleted < n as u64 {
                break;
            }
            remaining -= n;
        }
        Ok(total)
    }

    fn requeue(&self, which: &Requeue) -> Result<u64> {
        let ctx = "requeueing parked messages";
        match which {
            Requeue::AllParked => self
                .conn()?
                .exec(ctx, Query::new(self.inner.sql.requeue_all.as_str())),
            Requeue::Ids(ids) => self.by_ids(ctx, ids, None, None, SqlServerSql::requeue_ids),
            Requeue::Matching(f) => {
                let mut query = Query::new(self.inner.sql.requeue_matching.as_str());
                query.bind(f.older_than.map(q::delay_ms));
                query.bind(f.error_text().map(str::to_string));
                self.conn()?.exec(ctx, query)
            }
        }
    }

    fn purge_parked(&self, older_than: Duration, limit: usize) -> Result<u64> {
        let mut conn = self.conn()?;
        let mut total = 0u64;
        let mut remaining = limit;
        while remaining > 0 {
            let n = remaining.min(q::MAX_DELETE_ROWS);
            let mut query = Query::new(self.inner.sql.purge_parked.as_str());
            query.bind(q::delay_ms(older_than));
            query.bind(i64::try_from(n).unwrap_or(i64::MAX));
            let deleted = conn.exec("purging parked messages", query)?;
            total += deleted;
            if deleted < n as u64 {
                break;
            }
            remaining -= n;
        }
        Ok(total)
    }

    fn missing_indexes(&self) -> Result<Option<Vec<String>>> {
        let ctx = "listing the table's indexes";
        let sql = &self.inner.sql;
        let table = sql.table();
        let rows = self.conn()?.rows_dyn(
            ctx,
            "SELECT name FROM sys.indexes WHERE object_id = OBJECT_ID(@P1, N'U') AND name IS NOT NULL",
            &[&table],
        )?;
        let mut present = Vec::with_capacity(rows.len());
        for row in &rows {
            let name: Option<&str> = row.try_get(0).map_err(|e| Error::db(ctx, e))?;
            present.extend(name.map(str::to_string));
        }
        let expected = sql.indexes.iter().map(|(n, _)| n.clone()).collect();
        Ok(Some(crate::blocking::store::not_present(
            expected, &present,
        )))
    }

    fn purgeable(&self, older_than: Duration) -> Result<Purgeable> {
        let ctx = "counting purgeable messages";
        let ms = q::delay_ms(older_than);
        let rows = self
            .conn()?
            .rows_dyn(ctx, &self.inner.sql.purgeable, &[&ms])?;
        let row = rows.first().ok_or_else(|| Error::db(ctx, "no row"))?;
        let num = |i: usize| -> Result<u64> {
            let v: Option<i64> = row.try_get(i).map_err(|e| Error::db(ctx, e))?;
            Ok(u64::try_from(v.unwrap_or(0)).unwrap_or(0))
        };
        Ok(Purgeable {
            dispatched: num(0)?,
            parked: num(1)?,
        })
    }

    fn attempts_histogram(&self) -> Result<Vec<(u32, u64)>> {
        let ctx = "reading the attempts histogram";
        let rows = self
            .conn()?
            .rows(ctx, Query::new(self.inner.sql.attempts_histogram.as_str()))?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let attempts: i32 = row.try_get(0).map_err(|e| Error::db(ctx, e))?.unwrap_or(0);
            let n: i64 = row.try_get(1).map_err(|e| Error::db(ctx, e))?.unwrap_or(0);
            out.push((
                u32::try_from(attempts).unwrap_or(0),
                u64::try_from(n).unwrap_or(0),
            ));
        }
        Ok(out)
    }

    fn parked(&self, limit: usize) -> Result<Vec<ParkedMessage>> {
        let ctx = "listing parked messages";
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .conn()?
            .rows_dyn(ctx, &self.inner.sql.parked, &[&limit])?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let e = |e: tiberius::error::Error| Error::db(ctx, e);
            let id: i64 = row.try_get(0).map_err(e)?.unwrap_or(0);
            let message_id: Option<uuid::Uuid> = row.try_get(1).map_err(e)?;
            let attempts: i32 = row.try_get(2).map_err(e)?.unwrap_or(0);
            let last_error: Option<&str> = row.try_get(3).map_err(e)?;
            let ordering_key: Option<&str> = row.try_get(4).map_err(e)?;
            let holds: i32 = row.try_get(5).map_err(e)?.unwrap_or(0);
            out.push(ParkedMessage {
                id,
                message_id: message_id.map(MessageId::from_uuid),
                attempts: u32::try_from(attempts).unwrap_or(0),
                last_error: last_error.map(str::to_string),
                ordering_key: ordering_key.map(str::to_string),
                holds_key: holds == 1,
            });
        }
        Ok(out)
    }

    fn skip(&self, ids: &[i64]) -> Result<u64> {
        self.by_ids(
            "skipping parked messages",
            ids,
            None,
            None,
            SqlServerSql::skip,
        )
    }

    fn held_keys(&self, limit: usize) -> Result<Vec<HeldKey>> {
        let ctx = "listing held keys";
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .conn()?
            .rows_dyn(ctx, &self.inner.sql.held_keys, &[&limit])?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let e = |e: tiberius::error::Error| Error::db(ctx, e);
            let ordering_key: Option<&str> = row.try_get(0).map_err(e)?;
            let parked_id: i64 = row.try_get(1).map_err(e)?.unwrap_or(0);
            let message_id: Option<uuid::Uuid> = row.try_get(2).map_err(e)?;
            let last_error: Option<&str> = row.try_get(3).map_err(e)?;
            let waiting: i64 = row.try_get(4).map_err(e)?.unwrap_or(0);
            out.push(HeldKey {
                ordering_key: ordering_key.unwrap_or_default().to_string(),
                parked_id,
                message_id: message_id.map(MessageId::from_uuid),
                last_error: last_error.map(str::to_string),
                waiting: u64::try_from(waiting).unwrap_or(0),
            });
        }
        Ok(out)
    }

    fn table_name(&self) -> String {
        self.table().plain()
    }

    fn stats(&self) -> Result<Stats> {
        let rows = self
            .conn()?
            .rows("reading stats", Query::new(self.inner.sql.stats.as_str()))?;
        let row = rows
            .first()
            .ok_or_else(|| Error::db("reading stats", "no row"))?;
        let num = |i: usize| -> Result<u64> {
            let v: Option<i64> = row.try_get(i).map_err(|e| Error::db("reading stats", e))?;
            Ok(u64::try_from(v.unwrap_or(0)).unwrap_or(0))
        };
        Ok(Stats {
            pending: num(0)?,
            dispatched: num(1)?,
            parked: num(2)?,
            leased: num(3)?,
            oldest_pending_age: Duration::from_micros(num(4)?),
            held_keys: num(5)?,
            scheduled: num(6)?,
            next_due_in: row
                .try_get::<i64, _>(7)
                .map_err(|e| Error::db("reading stats", e))?
                .map(|us| Duration::from_micros(u64::try_from(us).unwrap_or(0))),
        })
    }

    fn next_due(&self) -> Result<Option<Duration>> {
        let ctx = "reading the next due time";
        let rows = self
            .conn()?
            .rows(ctx, Query::new(self.inner.sql.next_due.as_str()))?;
        let due: Option<i64> = match rows.first() {
            Some(row) => row.try_get(0).map_err(|e| Error::db(ctx, e))?,
            None => None,
        };
        Ok(due.map(|us| Duration::from_micros(u64::try_from(us).unwrap_or(0))))
    }
}

impl TxStore for SqlServerStore {
    type Tx<'a> = SqlServerTx<'a>;

    fn enqueue_in_tx(&self, tx: &mut SqlServerTx<'_>, messages: &[Message]) -> Result<()> {
        // The transaction's own connection and runtime, whichever store it came from.
        tx.insert(self, messages)
    }

    fn with_transaction<R, E, F>(&self, f: F) -> std::result::Result<R, E>
    where
        F: FnOnce(&mut SqlServerTx<'_>) -> std::result::Result<R, E>,
        E: From<Error>,
    {
        run_in(self.begin()?, f)
    }
}
