//! SQLite SQL text for one outbox table. The table name is a validated, quoted
//! identifier; every value travels as a bind parameter.
//!
//! Column types: `message_id` and `locked_by` are 16-byte UUID BLOBs (compact, and
//! `hex(message_id)` reads them in the `sqlite3` shell); `headers` and `options` are
//! JSON TEXT; every timestamp is INTEGER unix milliseconds. Timestamps are bound from
//! the caller's clock: for an embedded database the "database clock" is the clock of
//! the machine that holds the file, so every process on it agrees, and a bound value
//! is one instant for the whole statement.

use crate::core::ident::TableName;
use crate::{Error, Result};
use std::time::Duration;

/// The statements of one table, built once.
#[derive(Clone, Debug)]
pub struct SqliteSql {
    /// The full table for a fresh database (no-op when the table exists).
    pub create_table: String,
    /// Columns of an existing table: `name, upper(type), pk` (no parameters).
    pub inspect: String,
    /// `(column, ALTER TABLE .. ADD COLUMN ..)` for every column a Go-outboxer-shaped
    /// table may lack. ADD COLUMN only takes constant defaults: backfills follow.
    pub add_columns: Vec<(&'static str, String)>,
    /// Carry Go's `dispatched` flag over to `status` and make `dispatched_at` integer
    /// milliseconds: (?1 now ms).
    pub upgrade_go_rows: String,
    /// Give rows that got a `created_at` of 0 from ADD COLUMN a real time: (?1 now ms).
    pub backfill_created_at: String,
    /// Row ids whose `message_id` is NULL (rows written before the upgrade).
    pub missing_message_ids: String,
    /// (?1 id, ?2 message_id blob)
    pub set_message_id: String,
    /// Partial indexes, created after the columns they name exist.
    pub indexes: Vec<String>,
    /// One message: (?1 message_id blob, ?2 payload, ?3 headers json, ?4 options json,
    /// ?5 ordering key, ?6 now ms, ?7 available_at ms: now plus its delay).
    pub insert: String,
    /// Claim: (?1 limit, ?2 lease token blob, ?3 lease end ms, ?4 now ms, ?5 payload
    /// bytes).
    pub claim: String,
    /// One row: (?1 id, ?2 token, ?3 now ms)
    pub mark_dispatched: String,
    /// (?1 id, ?2 token) the mark with a retention of zero
    pub delete_dispatched: String,
    /// One row: (?1 id, ?2 error, ?3 available_at ms, ?4 park flag, ?5 token,
    /// ?6 hold-key flag)
    pub mark_failed: String,
    /// One row: (?1 id, ?2 token, ?3 available_at ms)
    pub release: String,
    /// (?1 cutoff ms, ?2 limit)
    pub cleanup: String,
    /// One parked (or skipped) row back to pending: (?1 id, ?2 now ms)
    pub requeue_one: String,
    /// Every parked and skipped row back to pending: (?1 now ms)
    pub requeue_all: String,
    /// Matching parked and skipped rows back to pending: (?1 now ms, ?2 created
    /// before ms or NULL, ?3 error text or NULL)
    pub requeue_matching: String,
    /// Counts (pending, dispatched, parked, leased), the oldest pending
    /// `created_at` (NULL when none), held keys, scheduled count and the earliest
    /// future `available_at` (NULL when none): (?1 now ms)
    pub stats: String,
    /// The earliest `available_at` of a pending row after ?1 (now ms), NULL when none.
    pub next_due: String,
    /// One parked row gives its key up: (?1 id)
    pub skip_one: String,
    /// (?1 limit) keys held by a parked head: key, id, message_id, last_error, waiting.
    pub held_keys: String,
    /// (attempts, count) of pending and parked rows, ascending attempts.
    pub attempts_histogram: String,
    /// (?1 cutoff ms, ?2 limit) delete parked rows created before the cutoff.
    pub purge_parked: String,
    /// (?1 dispatched/created before ms) dispatched and parked rows older than the cutoff
    pub purgeable: String,
    /// (?1 limit) parked rows: id, message_id, attempts, last_error, ordering_key,
    /// holds key (0/1).
    pub parked: String,
}

/// The suffixes of the indexes `migrate` creates (`{table}_{suffix}`).
pub const INDEXES: [&str; 5] = [
    "pending_idx",
    "undelivered_key_idx",
    "dispatched_idx",
    "parked_idx",
    "skipped_idx",
];

/// What a claim returns, in the order the store decodes it.
pub const RETURNING: &str =
    "id, message_id, payload, headers, options, ordering_key, attempts, created_at";

/// The table as SQLite sees it. A database file has one schema of its own, `main`
/// (`temp` is private to a connection, so useless to a pool): `main.t` is `t`, any
/// other schema is refused.
pub fn sqlite_table(name: &TableName) -> Result<TableName> {
    match name.schema() {
        None => Ok(name.clone()),
        Some(s) if s.eq_ignore_ascii_case("main") => TableName::parse(name.table()),
        Some(_) => Err(Error::InvalidIdentifier {
            name: name.plain(),
            reason: "SQLite has no schemas: use `table` or `main.table`",
        }),
    }
}

/// Milliseconds of `d` as SQLite's INTEGER, saturating.
pub fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Milliseconds of `d` rounded up (a delay never ends early), saturating.
pub fn millis_up(d: Duration) -> i64 {
    millis(d).saturating_add(i64::from(d.subsec_nanos() % 1_000_000 != 0))
}

impl SqliteSql {
    /// SQL for `table` (already passed through [`sqlite_table`]).
    pub fn new(table: &TableName) -> Self {
        let t = table.quoted();
        let idx = |s: &str| table.derived(s);
        // A parked row `h` heads its key: no earlier pending or parked row of the key.
        let heads_key = format!(
            "h.ordering_key IS NOT NULL AND NOT EXISTS (
                SELECT 1 FROM {t} AS p WHERE p.status IN ('pending', 'parked')
                  AND p.ordering_key = h.ordering_key AND p.id < h.id)"
        );
        // AUTOINCREMENT: ids are never reused after cleanup deletes the newest rows, so
        // a row id names one message for the table's whole life (logs, `Delivered`).
        let create_table = format!(
            "CREATE TABLE IF NOT EXISTS {t} (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                message_id BLOB NOT NULL,
                payload BLOB NOT NULL,
                headers TEXT,
                options TEXT,
                ordering_key TEXT,
                status TEXT NOT NULL DEFAULT 'pending',
                attempts INTEGER NOT NULL DEFAULT 0,
                last_error TEXT,
                created_at INTEGER NOT NULL,
                available_at INTEGER NOT NULL,
                dispatched_at INTEGER,
                locked_by BLOB,
                locked_until INTEGER
            )"
        );
        let add =
            |col: &'static str, def: &str| (col, format!("ALTER TABLE {t} ADD COLUMN {col} {def}"));
        let add_columns = vec![
            add("message_id", "BLOB"),
            add("headers", "TEXT"),
            add("options", "TEXT"),
            add("ordering_key", "TEXT"),
            add("status", "TEXT NOT NULL DEFAULT 'pending'"),
            add("attempts", "INTEGER NOT NULL DEFAULT 0"),
            add("last_error", "TEXT"),
            add("created_at", "INTEGER NOT NULL DEFAULT 0"),
            add("available_at", "INTEGER NOT NULL DEFAULT 0"),
            add("dispatched_at", "INTEGER"),
            add("locked_by", "BLOB"),
            add("locked_until", "INTEGER"),
        ];
        // Go's `dispatched_at` is a DATETIME: text such as '2024-05-01 12:00:00' (UTC),
        // or a number (seconds, or already milliseconds when past year 5138 as seconds).
        let upgrade_go_rows = format!(
            "UPDATE {t} SET status = 'dispatched', dispatched_at = CASE
                WHEN typeof(dispatched_at) IN ('integer', 'real') THEN
                    CAST(CASE WHEN dispatched_at < 100000000000 THEN dispatched_at * 1000 ELSE dispatched_at END AS INTEGER)
                WHEN typeof(dispatched_at) = 'text' AND julianday(dispatched_at) IS NOT NULL THEN
                    CAST(round((julianday(dispatched_at) - 2440587.5) * 86400000.0) AS INTEGER)
                ELSE ?1 END
             WHERE dispatched OR lower(CAST(dispatched AS TEXT)) IN ('true', 't')"
        );
        let backfill_created_at = format!(
            "UPDATE {t} SET created_at = CASE
                WHEN status = 'dispatched' AND typeof(dispatched_at) = 'integer' THEN dispatched_at
                ELSE ?1 END
             WHERE created_at = 0"
        );
        let indexes = vec![
            // Claims scan pending rows in id order.
            format!(
                "CREATE INDEX IF NOT EXISTS {} ON {t} (id) WHERE status = 'pending'",
                idx("pending_idx")
            ),
            // The per-key FIFO check: is there an earlier pending or parked row of this
            // key (a parked head holds its key, a skipped one does not)? The claim
            // repeats the status term as written here and its `p.ordering_key =
            // e.ordering_key` implies IS NOT NULL, so SQLite uses this partial index.
            format!(
                "CREATE INDEX IF NOT EXISTS {} ON {t} (ordering_key, id) \
                 WHERE status IN ('pending', 'parked') AND ordering_key IS NOT NULL",
                idx("undelivered_key_idx")
            ),
            // Its pending-only predecessor (before parked heads held their keys).
            format!("DROP INDEX IF EXISTS {}", idx("pending_key_idx")),
            // Cleanup deletes old dispatched rows.
            format!(
                "CREATE INDEX IF NOT EXISTS {} ON {t} (dispatched_at) WHERE status = 'dispatched'",
                idx("dispatched_idx")
            ),
            format!(
                "CREATE INDEX IF NOT EXISTS {} ON {t} (id) WHERE status = 'parked'",
                idx("parked_idx")
            ),
            format!(
                "CREATE INDEX IF NOT EXISTS {} ON {t} (id) WHERE status = 'skipped'",
                idx("skipped_idx")
            ),
        ];
        SqliteSql {
            create_table,
            // The table name is a validated identifier, so it can sit in a string literal.
            inspect: format!(
                "SELECT name, upper(type), pk FROM pragma_table_info('{}')",
                table.table()
            ),
            add_columns,
            upgrade_go_rows,
            backfill_created_at,
            missing_message_ids: format!("SELECT id FROM {t} WHERE message_id IS NULL"),
            set_message_id: format!("UPDATE {t} SET message_id = ?2 WHERE id = ?1"),
            indexes,
            insert: format!(
                "INSERT INTO {t} (message_id, payload, headers, options, ordering_key, created_at, available_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
            ),
            // No SKIP LOCKED needed: the claim runs in a BEGIN IMMEDIATE transaction,
            // and SQLite has one writer at a time per file, so claims from any thread or
            // process are serialised and each sees the leases the previous one took.
            // The byte cap is a running sum over the candidates in id order (the first
            // always fits); octet_length reads a blob's size without loading it.
            claim: format!(
                "UPDATE {t} SET locked_by = ?2, locked_until = ?3
                 WHERE id IN (
                    SELECT id FROM (
                        SELECT id, sum(n) OVER (ORDER BY id) AS running,
                               row_number() OVER (ORDER BY id) AS nth
                        FROM (
                            SELECT e.id, octet_length(e.payload) AS n FROM {t} AS e
                            WHERE e.status = 'pending' AND e.available_at <= ?4
                              AND (e.locked_until IS NULL OR e.locked_until < ?4)
                              AND (e.ordering_key IS NULL OR NOT EXISTS (
                                    SELECT 1 FROM {t} AS p
                                    WHERE p.status IN ('pending', 'parked') AND p.ordering_key = e.ordering_key
                                      AND p.id < e.id))
                            ORDER BY e.id
                            LIMIT ?1))
                    WHERE nth = 1 OR running <= ?5)
                 RETURNING {RETURNING}"
            ),
            mark_dispatched: format!(
                "UPDATE {t} SET status = 'dispatched', dispatched_at = ?3, locked_by = NULL, locked_until = NULL \
                 WHERE id = ?1 AND locked_by = ?2 AND status = 'pending'"
            ),
            delete_dispatched: format!(
                "DELETE FROM {t} WHERE id = ?1 AND locked_by = ?2 AND status = 'pending'"
            ),
            mark_failed: format!(
                "UPDATE {t} SET attempts = attempts + 1, last_error = ?2, locked_by = NULL, locked_until = NULL,
                    available_at = ?3,
                    status = CASE WHEN NOT ?4 THEN 'pending' WHEN ?6 THEN 'parked' ELSE 'skipped' END
                 WHERE id = ?1 AND locked_by = ?5 AND status = 'pending'"
            ),
            release: format!(
                "UPDATE {t} SET locked_by = NULL, locked_until = NULL, available_at = ?3 \
                 WHERE id = ?1 AND locked_by = ?2"
            ),
            cleanup: format!(
                "DELETE FROM {t} WHERE id IN (
                    SELECT id FROM {t} WHERE status = 'dispatched' AND dispatched_at < ?1
                    ORDER BY dispatched_at LIMIT ?2)"
            ),
            requeue_one: format!(
                "UPDATE {t} SET status = 'pending', attempts = 0, available_at = ?2, locked_by = NULL, locked_until = NULL \
                 WHERE id = ?1 AND status IN ('parked', 'skipped')"
            ),
            requeue_all: format!(
                "UPDATE {t} SET status = 'pending', attempts = 0, available_at = ?1, locked_by = NULL, locked_until = NULL \
                 WHERE status IN ('parked', 'skipped')"
            ),
            requeue_matching: format!(
                "UPDATE {t} SET status = 'pending', attempts = 0, available_at = ?1, locked_by = NULL, locked_until = NULL \
                 WHERE status IN ('parked', 'skipped') AND (?2 IS NULL OR created_at < ?2) \
                   AND (?3 IS NULL OR instr(lower(last_error), lower(?3)) > 0)"
            ),
            // One subquery per status, so each count reads its own partial index
            // instead of scanning the whole table.
            stats: format!(
                "SELECT (SELECT count(*) FROM {t} WHERE status = 'pending'),
                        (SELECT count(*) FROM {t} WHERE status = 'dispatched'),
                        (SELECT count(*) FROM {t} WHERE status = 'parked')
                          + (SELECT count(*) FROM {t} WHERE status = 'skipped'),
                        (SELECT count(*) FROM {t} WHERE status = 'pending' AND locked_until > ?1),
                        (SELECT min(created_at) FROM {t} WHERE status = 'pending'),
                        (SELECT count(*) FROM {t} AS h WHERE h.status = 'parked' AND {heads_key}),
                        (SELECT count(*) FROM {t} WHERE status = 'pending' AND available_at > ?1),
                        (SELECT min(available_at) FROM {t} WHERE status = 'pending' AND available_at > ?1)"
            ),
            next_due: format!(
                "SELECT min(available_at) FROM {t} WHERE status = 'pending' AND available_at > ?1"
            ),
            skip_one: format!("UPDATE {t} SET status = 'skipped' WHERE id = ?1 AND status = 'parked'"),
            held_keys: format!(
                "SELECT h.ordering_key, h.id, h.message_id, h.last_error,
                        (SELECT count(*) FROM {t} AS w
                         WHERE w.status IN ('pending', 'parked') AND w.ordering_key = h.ordering_key
                           AND w.id > h.id AND w.status = 'pending')
                 FROM {t} AS h
                 WHERE h.status = 'parked' AND {heads_key}
                 ORDER BY h.id LIMIT ?1"
            ),
            purge_parked: format!(
                "DELETE FROM {t} WHERE id IN (
                    SELECT id FROM {t} WHERE status IN ('parked', 'skipped') AND created_at < ?1
                    ORDER BY id LIMIT ?2)"
            ),
            purgeable: format!(
                "SELECT (SELECT count(*) FROM {t} WHERE status = 'dispatched' AND dispatched_at < ?1),
                        (SELECT count(*) FROM {t} WHERE status IN ('parked', 'skipped') AND created_at < ?1)"
            ),
            attempts_histogram: format!(
                "SELECT attempts, count(*) FROM {t} WHERE status IN ('pending', 'parked', 'skipped') \
                 GROUP BY attempts ORDER BY attempts"
            ),
            parked: format!(
                "SELECT id, message_id, attempts, last_error, ordering_key, \
                        status = 'parked' AND ordering_key IS NOT NULL \
                 FROM {t} WHERE status IN ('parked', 'skipped') ORDER BY id LIMIT ?1"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sql(name: &str) -> SqliteSql {
        let t = TableName::parse(name)
            .and_then(|t| sqlite_table(&t))
            .expect("valid");
        SqliteSql::new(&t)
    }

    #[test]
    fn statements_quote_the_table_and_bind_values() {
        let s = sql("events");
        assert!(s.claim.starts_with("UPDATE \"events\" SET locked_by = ?2"));
        assert!(s.claim.contains("FROM \"events\" AS e"));
        assert!(s.claim.contains("NOT EXISTS"));
        assert!(s.claim.contains("ORDER BY e.id"));
        assert!(s.claim.contains(&format!("RETURNING {RETURNING}")));
        assert!(!s.claim.contains("SKIP LOCKED"));
        assert!(s.mark_dispatched.contains("locked_by = ?2"));
        assert!(s.mark_failed.contains("locked_by = ?5"));
        assert!(s.release.contains("locked_by = ?2"));
        assert!(s
            .create_table
            .contains("id INTEGER PRIMARY KEY AUTOINCREMENT"));
        assert!(s.indexes[0].contains("\"events_pending_idx\""));
        assert_eq!(
            s.inspect,
            "SELECT name, upper(type), pk FROM pragma_table_info('events')"
        );
        // DDL carries no parameters, and no statement uses PostgreSQL's placeholders.
        assert!(s
            .indexes
            .iter()
            .chain([&s.create_table])
            .all(|q| !q.contains('?')));
        assert!(s
            .add_columns
            .iter()
            .all(|(c, q)| q.contains(&format!("ADD COLUMN {c} "))));
        for q in [&s.claim, &s.insert, &s.stats, &s.cleanup, &s.requeue_all] {
            assert!(!q.contains('$'), "{q}");
        }
    }

    #[test]
    fn add_column_defaults_are_constants() {
        // SQLite refuses ADD COLUMN with an expression default or NOT NULL without one.
        for (_, q) in &sql("t").add_columns {
            assert!(!q.contains('('), "{q}");
            assert!(!q.contains("NOT NULL") || q.contains("DEFAULT"), "{q}");
        }
    }

    #[test]
    fn main_schema_is_the_only_one() {
        assert_eq!(sql("main.events").claim, sql("events").claim);
        assert_eq!(sql("MAIN.events").claim, sql("events").claim);
        let other = TableName::parse("app.events").expect("valid");
        assert!(matches!(
            sqlite_table(&other),
            Err(Error::InvalidIdentifier { .. })
        ));
    }

    #[test]
    fn delays_round_up_to_milliseconds() {
        assert_eq!(millis_up(Duration::from_millis(1500)), 1500);
        assert_eq!(millis_up(Duration::from_micros(1_500_001)), 1501);
        assert_eq!(millis_up(Duration::ZERO), 0);
        assert_eq!(millis_up(Duration::MAX), i64::MAX);
    }

    #[test]
    fn millis_saturate() {
        assert_eq!(millis(Duration::from_millis(1500)), 1500);
        assert_eq!(millis(Duration::MAX), i64::MAX);
    }
}

#[cfg(test)]
mod index_names {
    use super::*;

    #[test]
    fn migrate_creates_every_listed_index_under_its_name() {
        let t = sqlite_table(&TableName::parse("events").expect("name")).expect("table");
        let sql = SqliteSql::new(&t);
        for suffix in INDEXES {
            let create = format!("CREATE INDEX IF NOT EXISTS \"events_{suffix}\" ON");
            assert!(sql.indexes.iter().any(|s| s.contains(&create)), "{suffix}");
        }
    }
}
