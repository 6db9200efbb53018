//! MySQL 8.0.13+ / MariaDB 10.6+ SQL text for one outbox table. The table name is
//! a validated identifier quoted with backticks; user values travel as parameters;
//! id lists and lease tokens are formatted from integers and bytes we generated.
//!
//! Times are `DATETIME(6)` in UTC: every statement reads the clock with
//! `UTC_TIMESTAMP(6)` and the time columns default to it, never to `NOW(6)` or
//! `CURRENT_TIMESTAMP`, which follow the session's `time_zone`. So a session (ours
//! or another application's) in another zone, or a DST change, cannot shorten or
//! stretch a lease, a backoff or a cleanup cutoff.

use crate::core::ident::TableName;
use std::fmt::Write as _;

/// Columns beyond the Go outboxer's table, added by `migrate` when missing.
/// (MySQL 8 has no `ADD COLUMN IF NOT EXISTS`, so the store inspects first.)
pub const EXTRA_COLUMNS: [(&str, &str); 9] = [
    ("message_id", "BINARY(16) NULL"),
    ("ordering_key", "VARCHAR(255) NULL"),
    // Fixed-size columns: InnoDB updates a row in place only when its size does not
    // change. NULL -> value (or 'pending' -> 'dispatched' in a VARCHAR) grows the
    // row and cost ~4 KB of redo per claimed row here; fixed sizes cost ~0.1 KB.
    (
        "status",
        "CHAR(10) CHARACTER SET ascii NOT NULL DEFAULT 'pending'",
    ),
    ("attempts", "INT NOT NULL DEFAULT 0"),
    ("last_error", "TEXT NULL"),
    ("created_at", UTC_NOW_COLUMN),
    ("available_at", UTC_NOW_COLUMN),
    (
        "locked_by",
        "BINARY(16) NOT NULL DEFAULT X'00000000000000000000000000000000'",
    ),
    (
        "locked_until",
        "DATETIME(6) NOT NULL DEFAULT '1970-01-01 00:00:01'",
    ),
];

/// A time column that defaults to the UTC time of the insert (an expression default:
/// MySQL 8.0.13+, MariaDB 10.2+), whatever the writer's session `time_zone`.
pub const UTC_NOW_COLUMN: &str = "DATETIME(6) NOT NULL DEFAULT (UTC_TIMESTAMP(6))";

/// The columns that default to [`UTC_NOW_COLUMN`] (earlier versions: `CURRENT_TIMESTAMP(6)`).
pub const UTC_DEFAULT_COLUMNS: [&str; 2] = ["created_at", "available_at"];

/// The "no lease" values (the zero token, a past time) instead of NULL: see above.
const NO_LEASE: &str =
    "locked_by = X'00000000000000000000000000000000', locked_until = '1970-01-01 00:00:01'";

/// The columns of a row-lock claim (`e` is the table): the lease claim's
/// [`MysqlSql::columns`], then the payload size.
const HELD_COLUMNS: &str =
    "e.id, e.message_id, e.payload, e.headers, e.options, e.ordering_key, e.attempts, \
     CAST(TIMESTAMPDIFF(MICROSECOND, '1970-01-01', e.created_at) AS SIGNED)";

/// The server's bound on a transaction's idle time, named after its variable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdleLimit {
    /// MariaDB: `idle_transaction_timeout` ends a transaction idle that long.
    MariaDb,
    /// MySQL has no such variable: `wait_timeout` closes a connection idle that
    /// long (in a transaction or not; reset when the claim ends).
    MySql,
}

impl IdleLimit {
    /// The session variable, in seconds.
    pub fn variable(self) -> &'static str {
        match self {
            IdleLimit::MariaDb => "idle_transaction_timeout",
            IdleLimit::MySql => "wait_timeout",
        }
    }

    /// The server of a `SELECT VERSION()` answer.
    pub fn of_version(version: &str) -> Self {
        if version.to_ascii_lowercase().contains("mariadb") {
            IdleLimit::MariaDb
        } else {
            IdleLimit::MySql
        }
    }
}

/// The statements of one table, built once.
#[derive(Clone, Debug)]
pub struct MysqlSql {
    /// `CREATE TABLE IF NOT EXISTS` in the Go outboxer's shape, widened.
    pub create: String,
    /// Widens a Go table's columns (payload BLOB is 64 KiB).
    pub widen: String,
    /// Carries Go's `dispatched` flag over (only right after `status` was added).
    pub upgrade_go_rows: String,
    /// The defaults of the time columns, lower-cased: `(column, default)` rows of
    /// `(? schema or NULL, ? table)`.
    pub time_defaults: &'static str,
    /// Undelivered rows written under the `CURRENT_TIMESTAMP(6)` defaults and `NOW(6)`
    /// of earlier versions hold local time: moved to UTC by (? µs, three times) the
    /// offset of the migrating session's zone, the zone the store's sessions use.
    pub undelivered_to_utc: String,
    /// The time columns' defaults to `UTC_TIMESTAMP(6)`.
    pub utc_defaults: String,
    /// `(index name, column list)`; MySQL has no partial indexes, so status leads.
    pub indexes: Vec<(String, String)>,
    /// The per-key lock table, created with the outbox table.
    pub create_keys: String,
    /// The quoted table name.
    pub table: String,
    /// The quoted key-lock table name.
    pub keys_table: String,
    /// The claim index's name, quoted.
    pub status_index: String,
    /// Claim step 1: candidate ids by a consistent (non-locking) read: ($1 limit).
    pub claim_candidates: String,
    /// Claim step 4: the claimed rows' data, given an id list and token.
    pub columns: &'static str,
    /// Counts, oldest pending age (microseconds), held keys.
    pub stats: String,
    /// Microseconds until the earliest pending row with a future `available_at` is
    /// due (NULL: none).
    pub next_due: String,
    /// (? limit) keys held by a parked head: key, id, message_id, last_error, waiting.
    pub held_keys: String,
    /// (attempts, count) of pending and parked rows, ascending attempts.
    pub attempts_histogram: String,
    /// (? older than µs, ? limit) delete parked rows by created_at.
    pub purge_parked: String,
    /// (? older than µs, twice) dispatched and parked rows older than the cutoff
    pub purgeable: String,
    /// (? limit) parked rows: id, message_id, attempts, last_error, ordering_key,
    /// holds key (0/1).
    pub parked: String,
    /// ($1 older-than microseconds, $2 limit)
    pub cleanup: String,
}

/// Buckets of the per-key enqueue lock: distinct keys share a lock row only by
/// hash collision, which merely serialises their enqueues.
pub const KEY_LOCK_BUCKETS: u64 = 4096;

fn q(name: &str) -> String {
    format!("`{name}`")
}

impl MysqlSql {
    /// SQL for `table`.
    pub fn new(table: &TableName) -> Self {
        let quoted = |name: &str| match table.schema() {
            Some(s) => format!("{}.{}", q(s), q(name)),
            None => q(name),
        };
        let t = quoted(table.table());
        let keys_table = quoted(&format!("{}_keys", table.table()));
        let name = table.table();
        // A parked row `h` heads its key: no earlier pending or parked row of the key.
        let heads_key = format!(
            "h.ordering_key IS NOT NULL AND NOT EXISTS (
                SELECT 1 FROM {t} p WHERE p.ordering_key = h.ordering_key
                  AND p.status IN ('pending', 'parked') AND p.id < h.id)"
        );
        MysqlSql {
            create: format!(
                "CREATE TABLE IF NOT EXISTS {t} (
                    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
                    dispatched BOOL NOT NULL DEFAULT false,
                    dispatched_at DATETIME(6) NULL DEFAULT '1970-01-01 00:00:01',
                    payload LONGBLOB NOT NULL,
                    options JSON NULL,
                    headers JSON NULL
                ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
            ),
            widen: format!(
                "ALTER TABLE {t} MODIFY payload LONGBLOB NOT NULL, \
                 MODIFY dispatched_at DATETIME(6) NULL DEFAULT '1970-01-01 00:00:01'"
            ),
            upgrade_go_rows: format!(
                "UPDATE {t} SET status = 'dispatched', dispatched_at = COALESCE(dispatched_at, UTC_TIMESTAMP(6)) WHERE dispatched"
            ),
            time_defaults: "SELECT LOWER(column_name), LOWER(COALESCE(column_default, '')) \
                 FROM information_schema.columns \
                 WHERE table_schema = COALESCE(?, DATABASE()) AND table_name = ? \
                   AND column_name IN ('created_at', 'available_at')",
            undelivered_to_utc: format!(
                "UPDATE {t} SET
                    created_at = created_at - INTERVAL ? MICROSECOND,
                    available_at = available_at - INTERVAL ? MICROSECOND,
                    locked_until = IF(locked_until > '1970-01-02', locked_until - INTERVAL ? MICROSECOND, locked_until)
                 WHERE status IN ('pending', 'parked', 'skipped')"
            ),
            utc_defaults: format!(
                "ALTER TABLE {t} {}",
                UTC_DEFAULT_COLUMNS
                    .map(|c| format!("MODIFY {c} {UTC_NOW_COLUMN}"))
                    .join(", ")
            ),
            indexes: vec![
                // Claims: pending rows in id order. Requeue and stats use it too.
                (format!("{name}_status_idx"), "status, id".into()),
                // The per-key FIFO check: an earlier pending or parked row of this key?
                (format!("{name}_key_idx"), "ordering_key, status, id".into()),
                // Cleanup: old dispatched rows.
                (format!("{name}_dispatched_idx"), "status, dispatched_at".into()),
            ],
            create_keys: format!(
                "CREATE TABLE IF NOT EXISTS {keys_table} (bucket INT UNSIGNED NOT NULL PRIMARY KEY) ENGINE=InnoDB"
            ),
            // FORCE INDEX: with ORDER BY id LIMIT the optimizer prefers walking the
            // primary key over every dispatched row (seen in EXPLAIN on MariaDB 10.11).
            claim_candidates: format!(
                "SELECT e.id FROM {t} e FORCE INDEX (`{name}_status_idx`)
                 WHERE e.status = 'pending' AND e.available_at <= UTC_TIMESTAMP(6)
                   AND (e.locked_until IS NULL OR e.locked_until < UTC_TIMESTAMP(6))
                   AND (e.ordering_key IS NULL OR NOT EXISTS (
                         SELECT 1 FROM {t} p
                         WHERE p.ordering_key = e.ordering_key AND p.status IN ('pending', 'parked')
                           AND p.id < e.id))
                 ORDER BY e.id LIMIT ?"
            ),
            columns: "id, message_id, payload, headers, options, ordering_key, attempts, \
                      CAST(TIMESTAMPDIFF(MICROSECOND, '1970-01-01', created_at) AS SIGNED)",
            stats: format!(
                "SELECT CAST(COALESCE(SUM(status = 'pending'), 0) AS SIGNED),
                        CAST(COALESCE(SUM(status = 'dispatched'), 0) AS SIGNED),
                        CAST(COALESCE(SUM(status IN ('parked', 'skipped')), 0) AS SIGNED),
                        CAST(COALESCE(SUM(status = 'pending' AND locked_until > UTC_TIMESTAMP(6)), 0) AS SIGNED),
                        CAST(COALESCE(TIMESTAMPDIFF(MICROSECOND,
                            MIN(CASE WHEN status = 'pending' THEN created_at END), UTC_TIMESTAMP(6)), 0) AS SIGNED),
                        (SELECT CAST(COUNT(*) AS SIGNED) FROM {t} h WHERE h.status = 'parked' AND {heads_key}),
                        CAST(COALESCE(SUM(status = 'pending' AND available_at > UTC_TIMESTAMP(6)), 0) AS SIGNED),
                        CAST(TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6),
                            MIN(CASE WHEN status = 'pending' AND available_at > UTC_TIMESTAMP(6) THEN available_at END)) AS SIGNED)
                 FROM {t}"
            ),
            // Reads the pending rows through the status index, as an idle claim does.
            next_due: format!(
                "SELECT CAST(TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), MIN(available_at)) AS SIGNED)
                 FROM {t} WHERE status = 'pending' AND available_at > UTC_TIMESTAMP(6)"
            ),
            held_keys: format!(
                "SELECT h.ordering_key, h.id, h.message_id, h.last_error,
                        (SELECT CAST(COUNT(*) AS SIGNED) FROM {t} w
                         WHERE w.ordering_key = h.ordering_key AND w.status = 'pending' AND w.id > h.id)
                 FROM {t} h
                 WHERE h.status = 'parked' AND {heads_key}
                 ORDER BY h.id LIMIT ?"
            ),
            purge_parked: format!(
                "DELETE FROM {t} WHERE status IN ('parked', 'skipped')
                   AND created_at < UTC_TIMESTAMP(6) - INTERVAL ? MICROSECOND
                 ORDER BY id LIMIT ?"
            ),
            purgeable: format!(
                "SELECT CAST(COALESCE(SUM(status = 'dispatched'
                          AND dispatched_at < UTC_TIMESTAMP(6) - INTERVAL ? MICROSECOND), 0) AS SIGNED),
                        CAST(COALESCE(SUM(status IN ('parked', 'skipped')
                          AND created_at < UTC_TIMESTAMP(6) - INTERVAL ? MICROSECOND), 0) AS SIGNED)
                 FROM {t} WHERE status IN ('dispatched', 'parked', 'skipped')"
            ),
            attempts_histogram: format!(
                "SELECT CAST(attempts AS SIGNED), CAST(COUNT(*) AS SIGNED) FROM {t} \
                 WHERE status IN ('pending', 'parked', 'skipped') GROUP BY attempts ORDER BY attempts"
            ),
            parked: format!(
                "SELECT id, message_id, CAST(attempts AS SIGNED), last_error, ordering_key, \
                        CAST(status = 'parked' AND ordering_key IS NOT NULL AS SIGNED) \
                 FROM {t} WHERE status IN ('parked', 'skipped') ORDER BY id LIMIT ?"
            ),
            cleanup: format!(
                "DELETE FROM {t} WHERE status = 'dispatched'
                   AND dispatched_at < UTC_TIMESTAMP(6) - INTERVAL ? MICROSECOND
                 ORDER BY dispatched_at LIMIT ?"
            ),
            table: t,
            keys_table,
            status_index: q(&format!("{name}_status_idx")),
        }
    }

    /// `INSERT` of `rows` messages: 6 parameters per row (message_id, payload,
    /// headers, options, ordering_key, delay in microseconds). `available_at` is
    /// `UTC_TIMESTAMP(6)` plus the delay: the database clock, in UTC like every
    /// time column.
    pub fn insert(&self, rows: usize) -> String {
        let mut s = format!(
            "INSERT INTO {} (message_id, payload, headers, options, ordering_key, available_at) VALUES ",
            self.table
        );
        for i in 0..rows {
            if i > 0 {
                s.push_str(", ");
            }
            s.push_str("(?, ?, ?, ?, ?, UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND)");
        }
        s
    }

    /// Fills the key-lock table once: locking existing rows by primary key takes
    /// record locks only, where inserting them would take gap locks (deadlocks).
    pub fn fill_keys(&self) -> String {
        format!(
            "INSERT IGNORE INTO {} (bucket) VALUES {}",
            self.keys_table,
            list((0..KEY_LOCK_BUCKETS).map(|b| format!("({b})")))
        )
    }

    /// Locks the key-lock rows of these buckets (sorted, so no deadlocks); held to commit.
    pub fn lock_keys(&self, buckets: &[u32]) -> String {
        format!(
            "SELECT bucket FROM {} WHERE bucket IN ({}) ORDER BY bucket FOR UPDATE",
            self.keys_table,
            list(buckets.iter().map(|b| b.to_string()))
        )
    }

    /// Claim step 2: lock the candidates still free, skipping rows others hold;
    /// returns their ids and payload sizes, in id order.
    pub fn claim_lock(&self, ids: &[i64]) -> String {
        format!(
            "SELECT id, CAST(LENGTH(payload) AS SIGNED) FROM {} WHERE id IN ({}) AND status = 'pending'
               AND (locked_until IS NULL OR locked_until < UTC_TIMESTAMP(6))
             ORDER BY id FOR UPDATE SKIP LOCKED",
            self.table,
            ids_list(ids)
        )
    }

    /// Claim step 3: take the lease; Go rows without a message id get one.
    pub fn claim_update(&self, ids: &[i64], token: &[u8; 16], lease_us: u64) -> String {
        format!(
            "UPDATE {} SET locked_by = {}, locked_until = UTC_TIMESTAMP(6) + INTERVAL {lease_us} MICROSECOND,
                message_id = COALESCE(message_id, UNHEX(REPLACE(UUID(), '-', '')))
             WHERE id IN ({})",
            self.table,
            hex(token),
            ids_list(ids)
        )
    }

    /// Claim step 4: read the claimed rows.
    pub fn claim_read(&self, ids: &[i64]) -> String {
        format!(
            "SELECT {} FROM {} WHERE id IN ({}) ORDER BY id",
            self.columns,
            self.table,
            ids_list(ids)
        )
    }

    /// A row-lock claim (inside an open READ COMMITTED transaction, nothing
    /// written): the claimable rows, locked, in id order, with their payload sizes
    /// last. Rows other transactions hold are skipped before the limit counts, so
    /// a relay's next claim takes the next rows while its earlier batches are held.
    ///
    /// The key check is a consistent (non-locking) read, as in the candidates of
    /// the lease claim: it sees the rows others hold. The outer row is read
    /// locking (its newest version), so it must also be visible in that snapshot:
    /// a row committed after the snapshot could follow an earlier row of its key
    /// that the snapshot misses too (the key lock commits one key's rows in id
    /// order, so a visible row's predecessors are visible).
    pub fn claim_locked(&self, limit: usize) -> String {
        let t = &self.table;
        format!(
            "SELECT {}, CAST(LENGTH(e.payload) AS SIGNED) FROM {t} e FORCE INDEX ({})
             WHERE e.status = 'pending' AND e.available_at <= UTC_TIMESTAMP(6)
               AND e.locked_until < UTC_TIMESTAMP(6)
               AND (e.ordering_key IS NULL OR (
                     NOT EXISTS (SELECT 1 FROM {t} p
                        WHERE p.ordering_key = e.ordering_key AND p.status IN ('pending', 'parked')
                          AND p.id < e.id)
                     AND EXISTS (SELECT 1 FROM {t} v WHERE v.id = e.id)))
             ORDER BY e.id LIMIT {limit}
             FOR UPDATE SKIP LOCKED",
            HELD_COLUMNS, self.status_index
        )
    }

    /// Opens a row-lock claim's transaction (READ COMMITTED: no gap locks, so the
    /// held batch never blocks an enqueue) with the server's bound on its idle
    /// time (`idle_secs`, see [`IdleLimit`]).
    pub fn begin_held(limit: IdleLimit, idle_secs: u64) -> String {
        format!(
            "SET SESSION {} = {}; SET TRANSACTION ISOLATION LEVEL READ COMMITTED; START TRANSACTION",
            limit.variable(),
            idle_secs.max(1)
        )
    }

    /// Puts the idle bound back to the server's default (the connection goes back
    /// to the shared pool).
    pub fn end_held(limit: IdleLimit) -> String {
        let v = limit.variable();
        format!("SET SESSION {v} = @@GLOBAL.{v}")
    }

    /// Ends a row-lock claim: its published rows dispatched (or deleted), COMMIT,
    /// and the idle bound reset, in one round trip. The ids are our own row ids.
    pub fn commit_held(&self, ids: &[i64], delete: bool, limit: IdleLimit) -> String {
        let end = Self::end_held(limit);
        if ids.is_empty() {
            return format!("COMMIT; {end}");
        }
        if delete {
            format!("DELETE e FROM {}; COMMIT; {end}", self.by_ids(ids))
        } else {
            format!(
                "UPDATE {} SET status = 'dispatched', dispatched_at = UTC_TIMESTAMP(6)
                 WHERE id IN ({}) AND status = 'pending'; COMMIT; {end}",
                self.table,
                ids_list(ids)
            )
        }
    }

    /// One failed attempt of a held row: (?: error text).
    pub fn held_mark_failed(&self, id: i64, delay_us: u64, status: &str) -> String {
        format!(
            "UPDATE {} SET attempts = attempts + 1, last_error = ?,
                available_at = UTC_TIMESTAMP(6) + INTERVAL {delay_us} MICROSECOND, status = '{status}'
             WHERE id = {id} AND status = 'pending'",
            self.table
        )
    }

    /// Held rows given back after a delay.
    pub fn held_release(&self, ids: &[i64], delay_us: u64) -> String {
        format!(
            "UPDATE {} SET available_at = UTC_TIMESTAMP(6) + INTERVAL {delay_us} MICROSECOND
             WHERE id IN ({})",
            self.table,
            ids_list(ids)
        )
    }

    /// Go rows (no `message_id`) get one, committed before they are published.
    pub fn assign_message_ids(&self, ids: &[i64]) -> String {
        format!(
            "UPDATE {} SET message_id = UNHEX(REPLACE(UUID(), '-', '')) WHERE id IN ({}) AND message_id IS NULL",
            self.table,
            ids_list(ids)
        )
    }

    /// Marks rows dispatched if they still hold the lease.
    pub fn mark_dispatched(&self, ids: &[i64], token: &[u8; 16]) -> String {
        format!(
            "UPDATE {} SET status = 'dispatched', dispatched_at = UTC_TIMESTAMP(6), {NO_LEASE}
             WHERE id IN ({}) AND locked_by = {} AND status = 'pending'",
            self.table,
            ids_list(ids),
            hex(token)
        )
    }

    /// Deletes dispatched rows if they still hold the lease (a retention of zero).
    pub fn delete_dispatched(&self, ids: &[i64], token: &[u8; 16]) -> String {
        format!(
            "DELETE e FROM {} WHERE e.locked_by = {} AND e.status = 'pending'",
            self.by_ids(ids),
            hex(token)
        )
    }

    /// The rows `e` of these ids, looked up one by one in the primary key. A
    /// `DELETE .. WHERE id IN (..)` may scan the table instead (the optimizer's
    /// choice on a small table), and a DELETE, unlike an UPDATE, waits for every
    /// row lock it meets on its way, also those of rows it would not delete: the
    /// batches other claims hold, which may wait for this one (seen as a hang
    /// until the idle limit ended them).
    fn by_ids(&self, ids: &[i64]) -> String {
        format!(
            "JSON_TABLE('[{}]', '$[*]' COLUMNS (id BIGINT PATH '$')) AS j STRAIGHT_JOIN {} AS e ON e.id = j.id",
            ids.iter().map(i64::to_string).collect::<Vec<_>>().join(","),
            self.table
        )
    }

    /// The ids of `ids` that `token` still holds, locked until the end of the
    /// transaction (the slow path of a mark that found some leases lost).
    pub fn held(&self, ids: &[i64], token: &[u8; 16]) -> String {
        format!(
            "SELECT id FROM {} WHERE id IN ({}) AND locked_by = {} AND status = 'pending' FOR UPDATE",
            self.table,
            ids_list(ids),
            hex(token)
        )
    }

    /// One failed attempt: (?: error text); the status and delay are formatted from
    /// our own values (`status` is [`failed_status`]).
    pub fn mark_failed(&self, id: i64, token: &[u8; 16], delay_us: u64, status: &str) -> String {
        format!(
            "UPDATE {} SET attempts = attempts + 1, last_error = ?, {NO_LEASE},
                available_at = UTC_TIMESTAMP(6) + INTERVAL {delay_us} MICROSECOND, status = '{status}'
             WHERE id = {id} AND locked_by = {} AND status = 'pending'",
            self.table,
            hex(token)
        )
    }

    /// Gives rows back without counting an attempt, claimable after the delay.
    pub fn release(&self, ids: &[i64], token: &[u8; 16], delay_us: u64) -> String {
        format!(
            "UPDATE {} SET {NO_LEASE}, available_at = UTC_TIMESTAMP(6) + INTERVAL {delay_us} MICROSECOND
             WHERE id IN ({}) AND locked_by = {}",
            self.table,
            ids_list(ids),
            hex(token)
        )
    }

    /// Parked rows among these ids give their keys up.
    pub fn skip(&self, ids: &[i64]) -> String {
        format!(
            "UPDATE {} SET status = 'skipped' WHERE status = 'parked' AND id IN ({})",
            self.table,
            ids_list(ids)
        )
    }

    /// Matching parked (and skipped) rows back to pending: (? older than µs or
    /// NULL, twice; ? error text or NULL, twice).
    pub fn requeue_matching(&self) -> String {
        format!(
            "UPDATE {} SET status = 'pending', attempts = 0, available_at = UTC_TIMESTAMP(6), {NO_LEASE}
             WHERE status IN ('parked', 'skipped')
               AND (? IS NULL OR created_at < UTC_TIMESTAMP(6) - INTERVAL ? MICROSECOND)
               AND (? IS NULL OR LOCATE(LOWER(?), LOWER(last_error)) > 0)",
            self.table
        )
    }

    /// Parked (and skipped) rows back to pending (all, or these ids).
    pub fn requeue(&self, ids: Option<&[i64]>) -> String {
        let filter = match ids {
            Some(ids) => format!(" AND id IN ({})", ids_list(ids)),
            None => String::new(),
        };
        format!(
            "UPDATE {} SET status = 'pending', attempts = 0, available_at = UTC_TIMESTAMP(6), {NO_LEASE}
             WHERE status IN ('parked', 'skipped'){filter}",
            self.table
        )
    }
}

/// The status a failed attempt leaves: back to pending, parked holding its key, or
/// parked without holding it (`skipped`).
pub fn failed_status(park: bool, hold_key: bool) -> &'static str {
    match (park, hold_key) {
        (false, _) => "pending",
        (true, true) => "parked",
        (true, false) => "skipped",
    }
}

fn list(items: impl Iterator<Item = String>) -> String {
    items.collect::<Vec<_>>().join(", ")
}

fn ids_list(ids: &[i64]) -> String {
    if ids.is_empty() {
        // `IN ()` is a syntax error; no row has a NULL id.
        return "NULL".into();
    }
    list(ids.iter().map(i64::to_string))
}

fn hex(bytes: &[u8; 16]) -> String {
    let mut s = String::with_capacity(35);
    s.push_str("X'");
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s.push('\'');
    s
}

/// The key-lock bucket of an ordering key (FNV-1a, stable across processes).
pub fn key_bucket(key: &str) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % KEY_LOCK_BUCKETS) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements() {
        let t = TableName::parse("app.events").expect("valid");
        let sql = MysqlSql::new(&t);
        assert_eq!(sql.table, "`app`.`events`");
        assert!(sql.claim_candidates.contains("NOT EXISTS"));
        assert!(sql.claim_lock(&[1, 2]).contains("WHERE id IN (1, 2)"));
        assert!(sql.claim_lock(&[1]).contains("FOR UPDATE SKIP LOCKED"));
        assert!(sql.claim_lock(&[]).contains("IN (NULL)"));
        let tok = [0xabu8; 16];
        assert!(sql
            .mark_dispatched(&[3], &tok)
            .contains(&format!("X'{}'", "ab".repeat(16))));
        assert_eq!(sql.insert(2).matches('?').count(), 12);
        assert!(sql.lock_keys(&[5, 9]).contains("IN (5, 9)"));
        assert!(sql.fill_keys().contains("(4095)"));
        assert!(key_bucket("k") < KEY_LOCK_BUCKETS as u32);
        assert_eq!(key_bucket("order-42"), key_bucket("order-42"));
        assert!(sql
            .mark_failed(1, &tok, 5, failed_status(true, true))
            .contains("status = 'parked'"));
        assert_eq!(
            [(false, true), (true, true), (true, false)].map(|(p, h)| failed_status(p, h)),
            ["pending", "parked", "skipped"]
        );
        assert!(sql
            .claim_candidates
            .contains("p.status IN ('pending', 'parked')"));
    }

    #[test]
    fn held_claims() {
        let sql = MysqlSql::new(&TableName::parse("events").expect("valid"));
        let claim = sql.claim_locked(500);
        assert!(claim.contains("LIMIT 500"));
        assert!(claim.ends_with("FOR UPDATE SKIP LOCKED"));
        assert!(claim.contains("EXISTS (SELECT 1 FROM `events` v WHERE v.id = e.id)"));
        assert_eq!(
            IdleLimit::of_version("10.11.19-MariaDB-0+deb12u1"),
            IdleLimit::MariaDb
        );
        assert_eq!(IdleLimit::of_version("8.0.36"), IdleLimit::MySql);
        assert_eq!(
            MysqlSql::begin_held(IdleLimit::MariaDb, 0),
            "SET SESSION idle_transaction_timeout = 1; \
             SET TRANSACTION ISOLATION LEVEL READ COMMITTED; START TRANSACTION"
        );
        assert!(MysqlSql::begin_held(IdleLimit::MySql, 30)
            .starts_with("SET SESSION wait_timeout = 30;"));
        let end = "SET SESSION wait_timeout = @@GLOBAL.wait_timeout";
        assert_eq!(
            sql.commit_held(&[], true, IdleLimit::MySql),
            format!("COMMIT; {end}")
        );
        let delete = sql.commit_held(&[3, 4], true, IdleLimit::MySql);
        assert!(
            delete.starts_with("DELETE e FROM JSON_TABLE('[3,4]'"),
            "{delete}"
        );
        assert!(delete.ends_with(&format!("; COMMIT; {end}")));
        let keep = sql.commit_held(&[3, 4], false, IdleLimit::MySql);
        assert!(keep.contains("status = 'dispatched'") && keep.contains("id IN (3, 4)"));
        assert!(sql
            .delete_dispatched(&[7], &[0u8; 16])
            .starts_with("DELETE e FROM JSON_TABLE('[7]'"));
        assert!(sql.held_release(&[1], 5).contains("INTERVAL 5 MICROSECOND"));
        assert!(sql
            .held_mark_failed(9, 0, failed_status(true, false))
            .contains("WHERE id = 9 AND status = 'pending'"));
    }
}
