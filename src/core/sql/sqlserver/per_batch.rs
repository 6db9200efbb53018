//! The statements whose text depends on a batch: how many rows, ids or key locks
//! it carries (parameters are numbered, so the text changes with the count).

use super::*;

impl SqlServerSql {
    /// One request that locks `locks` ordering keys (parameters `@P1..`) and inserts
    /// `rows` messages (the following parameters, [`INSERT_PARAMS`] per row, in the
    /// order message_id, payload, headers, options, ordering_key, delay in
    /// milliseconds as BIGINT). With `own_tx` the
    /// request is its own transaction. Ids are assigned in row order.
    pub fn enqueue(&self, locks: usize, rows: usize, own_tx: bool) -> String {
        let mut sql = String::new();
        if own_tx {
            sql.push_str("BEGIN TRAN;\n");
        }
        sql.push_str(&lock_keys(locks));
        if rows > 0 {
            sql.push_str(&self.insert(locks + 1, rows));
        }
        if own_tx {
            sql.push_str("COMMIT TRAN;");
        }
        sql
    }

    /// `INSERT` of `rows` messages with parameters from `@Pfirst`. `available_at`
    /// is `SYSUTCDATETIME()` plus each row's delay (the database clock, UTC).
    fn insert(&self, first: usize, rows: usize) -> String {
        let t = &self.table;
        let cols = "message_id, payload, headers, options, ordering_key, available_at";
        if rows == 1 {
            return format!(
                "INSERT INTO {t} ({cols}) VALUES ({}, {});\n",
                placeholders(first, INSERT_PARAMS - 1),
                utc_plus_ms(&format!("@P{}", first + INSERT_PARAMS - 1))
            );
        }
        // INSERT .. SELECT .. ORDER BY is the documented way to fix the order in
        // which IDENTITY values are assigned; a multi-row VALUES has no such promise.
        let values = (0..rows)
            .map(|r| {
                format!(
                    "({}, {r})",
                    placeholders(first + r * INSERT_PARAMS, INSERT_PARAMS)
                )
            })
            .collect::<Vec<_>>()
            .join(",\n");
        format!(
            "INSERT INTO {t} ({cols})
             SELECT v.message_id, v.payload, v.headers, v.options, v.ordering_key, {available_at}
             FROM (VALUES {values}) AS v(message_id, payload, headers, options, ordering_key, delay_ms, n)
             ORDER BY v.n;\n",
            available_at = utc_plus_ms("v.delay_ms")
        )
    }

    /// Marks `n` ids (`@P1..@Pn`) dispatched if `@P{n+1}` still holds their lease.
    pub fn mark_dispatched(&self, n: usize) -> String {
        format!(
            "UPDATE {} SET status = 'dispatched', dispatched_at = SYSUTCDATETIME(), \
             locked_by = NULL, locked_until = NULL OUTPUT inserted.id \
             WHERE id IN ({}) AND locked_by = @P{} AND status = 'pending'",
            self.table,
            placeholders(1, n),
            n + 1
        )
    }

    /// Deletes `n` dispatched ids (`@P1..@Pn`) if `@P{n+1}` still holds their
    /// lease (a retention of zero).
    pub fn delete_dispatched(&self, n: usize) -> String {
        format!(
            "DELETE FROM {} OUTPUT deleted.id \
             WHERE id IN ({}) AND locked_by = @P{} AND status = 'pending'",
            self.table,
            placeholders(1, n),
            n + 1
        )
    }

    /// Records `n` failed attempts: per row (@P id, @P error, @P delay ms, @P park,
    /// @P hold key), then the lease token as the last parameter.
    pub fn mark_failed(&self, n: usize) -> String {
        let values = (0..n)
            .map(|r| format!("({})", placeholders(1 + r * FAILED_PARAMS, FAILED_PARAMS)))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "UPDATE u SET attempts = u.attempts + 1, last_error = f.err, \
                locked_by = NULL, locked_until = NULL, available_at = {next}, \
                status = CASE WHEN f.park = 0 THEN 'pending' WHEN f.hold = 1 THEN 'parked' ELSE 'skipped' END \
             FROM {t} AS u JOIN (VALUES {values}) AS f(id, err, delay_ms, park, hold) ON u.id = f.id \
             WHERE u.locked_by = @P{token} AND u.status = 'pending'",
            t = self.table,
            next = utc_plus_ms("f.delay_ms"),
            token = FAILED_PARAMS * n + 1
        )
    }

    /// Gives `n` ids (`@P1..@Pn`) back if `@P{n+1}` still holds their lease,
    /// claimable again after `@P{n+2}` milliseconds.
    pub fn release(&self, n: usize) -> String {
        format!(
            "UPDATE {} SET locked_by = NULL, locked_until = NULL, available_at = {} \
             WHERE id IN ({}) AND locked_by = @P{}",
            self.table,
            utc_plus_ms(&format!("@P{}", n + 2)),
            placeholders(1, n),
            n + 1
        )
    }

    /// Moves the parked (or skipped) rows among `n` ids (`@P1..@Pn`) back to pending.
    pub fn requeue_ids(&self, n: usize) -> String {
        format!(
            "UPDATE {} SET status = 'pending', attempts = 0, available_at = SYSUTCDATETIME(), \
             locked_by = NULL, locked_until = NULL WHERE id IN ({}) AND status IN ('parked', 'skipped')",
            self.table,
            placeholders(1, n)
        )
    }

    /// Parked rows among `n` ids (`@P1..@Pn`) give their keys up.
    pub fn skip(&self, n: usize) -> String {
        format!(
            "UPDATE {} SET status = 'skipped' WHERE id IN ({}) AND status = 'parked'",
            self.table,
            placeholders(1, n)
        )
    }
}
