//! PostgreSQL SQL text for one outbox table. The table name is a validated,
//! quoted identifier; every value travels as a bind parameter.

use crate::core::ident::TableName;

/// The statements of one table, built once.
#[derive(Clone, Debug)]
pub struct PostgresSql {
    /// Create or upgrade, run under an advisory transaction lock.
    pub migrate: Vec<String>,
    /// Is there a table already, and does it have our `status` column? ($1 schema or NULL, $2 table)
    pub inspect: String,
    /// Backfill status of rows written by the Go outboxer (only after `status` was added).
    pub upgrade_go_rows: String,
    /// Widen Go's SERIAL id to bigint.
    pub widen_id: Vec<String>,
    /// One message: ($1 uuid, $2 bytea, $3 jsonb, $4 jsonb, $5 text, $6 delay ms
    /// float8). `available_at` is the server's `statement_timestamp()` plus the
    /// delay: the database clock, from the time of the insert (not of `BEGIN`).
    pub insert_one: String,
    /// Many messages through unnest, same columns as arrays.
    pub insert_many: String,
    /// Transaction-scoped locks on the ordering keys, in hash order: ($1 lock space, $2 text[]).
    pub lock_keys: String,
    /// Wake other relays after commit: ($1 channel).
    pub notify: String,
    /// Claim: ($1 limit, $2 lease token, $3 lease ms, $4 payload bytes).
    pub claim: String,
    /// Row-lock claim (inside an open transaction, nothing written): ($1 limit,
    /// $2 payload bytes).
    pub claim_locked: String,
    /// ($1 ids, $2 token)
    pub mark_dispatched: String,
    /// ($1 ids, $2 token) the lease-mode mark with a retention of zero
    pub delete_dispatched: String,
    /// ($1 ids, $2 errors, $3 delay ms, $4 park flags, $5 hold-key flags): failed
    /// attempts of rows held by this transaction's locks
    pub held_mark_failed: String,
    /// ($1 ids, $2 delay ms) held rows given back after a delay
    pub held_release: String,
    /// ($1 ids, $2 errors, $3 delay ms, $4 park flags, $5 token, $6 hold-key flags)
    pub mark_failed: String,
    /// ($1 ids, $2 token, $3 delay ms)
    pub release: String,
    /// ($1 older than ms, $2 limit)
    pub cleanup: String,
    /// ($1 ids) parked (or skipped) rows back to pending
    pub requeue_ids: String,
    /// all parked (and skipped) rows back to pending
    pub requeue_all: String,
    /// ($1 older than ms or NULL, $2 error text or NULL) matching parked rows back
    /// to pending
    pub requeue_matching: String,
    /// ($1 ids) parked rows give their keys up
    pub skip: String,
    /// ($1 limit) keys held by a parked head: key, id, message_id, last_error, waiting
    pub held_keys: String,
    /// counts by status, leased count, oldest pending age in seconds, held keys,
    /// scheduled count, seconds until the next scheduled one is due (NULL: none)
    pub stats: String,
    /// seconds until the earliest pending row with a future `available_at` is due
    /// (NULL: none)
    pub next_due: String,
    /// (attempts, count) of pending and parked rows, ascending attempts
    pub attempts_histogram: String,
    /// ($1 older than ms, $2 limit) delete parked rows by created_at
    pub purge_parked: String,
    /// ($1 older than ms) dispatched and parked rows older than the cutoff
    pub purgeable: String,
    /// ($1 limit) parked rows: id, message_id, attempts, last_error, ordering_key,
    /// holds key
    pub parked: String,
    /// The LISTEN/NOTIFY channel name (unquoted).
    pub channel: String,
}

/// The suffixes of the indexes `migrate` creates (`{table}_{suffix}`).
pub const INDEXES: [&str; 5] = [
    "pending_idx",
    "undelivered_key_idx",
    "dispatched_idx",
    "parked_idx",
    "skipped_idx",
];

/// The name PostgreSQL gives an index `{table}_{suffix}`: identifiers are cut to
/// 63 bytes.
pub fn index_name(table: &str, suffix: &str) -> String {
    let mut name = format!("{table}_{suffix}");
    let mut end = name.len().min(63);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name.truncate(end);
    name
}

/// What a claim returns, in the order `rows` decodes it.
const RETURNING: &str =
    "u.id, u.message_id, u.payload, u.headers, u.options, u.ordering_key, u.attempts, \
     (extract(epoch from u.created_at) * 1000000)::bigint";

impl PostgresSql {
    /// SQL for `table`.
    pub fn new(table: &TableName) -> Self {
        let t = table.quoted();
        let idx = |s: &str| table.derived(s);
        // A parked row `h` heads its key: no earlier pending or parked row of the key.
        let heads_key = format!(
            "h.ordering_key IS NOT NULL AND NOT EXISTS (
                SELECT 1 FROM {t} p WHERE p.status IN ('pending', 'parked')
                  AND p.ordering_key = h.ordering_key AND p.id < h.id)"
        );
        // A claim's candidates (the rows of `e`): pending and due, not leased,
        // each the earliest undelivered row of its key, locked in id order
        // skipping rows other claims hold.
        let candidates = format!(
            "WHERE e.status = 'pending' AND e.available_at <= now()
                      AND (e.locked_until IS NULL OR e.locked_until < now())
                      AND (e.ordering_key IS NULL OR NOT EXISTS (
                            SELECT 1 FROM {t} p
                            WHERE p.status IN ('pending', 'parked') AND p.ordering_key = e.ordering_key
                              AND p.id < e.id))
                    ORDER BY e.id
                    LIMIT $1
                    FOR UPDATE SKIP LOCKED"
        );
        let migrate = vec![
            format!(
                "CREATE TABLE IF NOT EXISTS {t} (
                    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
                    payload BYTEA NOT NULL,
                    options JSONB,
                    headers JSONB,
                    dispatched_at TIMESTAMPTZ
                )"
            ),
            // Free space in each page lets the claim's lease update (no indexed column
            // changes) stay on its page as a HOT update, without new index entries.
            format!("ALTER TABLE {t} SET (fillfactor = 80)"),
            // Columns beyond Go's table; ADD COLUMN IF NOT EXISTS upgrades a Go table in place.
            format!(
                "ALTER TABLE {t}
                    ADD COLUMN IF NOT EXISTS message_id UUID NOT NULL DEFAULT gen_random_uuid(),
                    ADD COLUMN IF NOT EXISTS ordering_key TEXT,
                    ADD COLUMN IF NOT EXISTS status TEXT NOT NULL DEFAULT 'pending',
                    ADD COLUMN IF NOT EXISTS attempts INTEGER NOT NULL DEFAULT 0,
                    ADD COLUMN IF NOT EXISTS last_error TEXT,
                    ADD COLUMN IF NOT EXISTS created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
                    ADD COLUMN IF NOT EXISTS available_at TIMESTAMPTZ NOT NULL DEFAULT now(),
                    ADD COLUMN IF NOT EXISTS locked_by UUID,
                    ADD COLUMN IF NOT EXISTS locked_until TIMESTAMPTZ"
            ),
            // Claims scan pending rows in id order.
            format!(
                "CREATE INDEX IF NOT EXISTS {} ON {t} (id) WHERE status = 'pending'",
                idx("pending_idx")
            ),
            // The per-key FIFO check: is there an earlier row of this key that is
            // pending or parked (a parked head holds its key; a skipped one does not)?
            format!(
                "CREATE INDEX IF NOT EXISTS {} ON {t} (ordering_key, id) \
                 WHERE status IN ('pending', 'parked') AND ordering_key IS NOT NULL",
                idx("undelivered_key_idx")
            ),
            // Its pending-only predecessor (before parked heads held their keys).
            format!(
                "DROP INDEX IF EXISTS {}",
                qualified(table, "pending_key_idx")
            ),
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
        let inspect = "SELECT \
                EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = coalesce($1, current_schema()) AND table_name = $2), \
                EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = coalesce($1, current_schema()) AND table_name = $2 AND column_name = 'status'), \
                EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = coalesce($1, current_schema()) AND table_name = $2 AND column_name = 'dispatched'), \
                coalesce((SELECT data_type FROM information_schema.columns WHERE table_schema = coalesce($1, current_schema()) AND table_name = $2 AND column_name = 'id'), '')"
            .to_string();
        let upgrade_go_rows = format!(
            "UPDATE {t} SET status = 'dispatched', dispatched_at = coalesce(dispatched_at, now()) WHERE dispatched"
        );
        let widen_id = vec![
            format!("ALTER TABLE {t} ALTER COLUMN id TYPE BIGINT"),
            format!(
                "DO $$ DECLARE s text := pg_get_serial_sequence('{}', 'id'); BEGIN \
                 IF s IS NOT NULL THEN EXECUTE format('ALTER SEQUENCE %s AS BIGINT', s); END IF; END $$",
                t.replace('\'', "")
            ),
            format!("ALTER TABLE {t} ALTER COLUMN dispatched_at TYPE TIMESTAMPTZ"),
            format!("ALTER TABLE {t} ALTER COLUMN dispatched SET DEFAULT false"),
        ];
        PostgresSql {
            migrate,
            inspect,
            upgrade_go_rows,
            widen_id,
            insert_one: format!(
                "INSERT INTO {t} (message_id, payload, headers, options, ordering_key, available_at) \
                 VALUES ($1, $2, $3, $4, $5, {AVAILABLE_AT})",
                AVAILABLE_AT = available_at("$6::float8")
            ),
            insert_many: format!(
                "INSERT INTO {t} (message_id, payload, headers, options, ordering_key, available_at) \
                 SELECT m, p, h, o, k, {AVAILABLE_AT} \
                 FROM unnest($1::uuid[], $2::bytea[], $3::jsonb[], $4::jsonb[], $5::text[], $6::float8[]) \
                   AS r(m, p, h, o, k, d)",
                AVAILABLE_AT = available_at("r.d")
            ),
            lock_keys: "SELECT count(pg_advisory_xact_lock($1, h)) FROM \
                 (SELECT DISTINCT hashtext(k) AS h FROM unnest($2::text[]) AS k ORDER BY 1) AS keys"
                .to_string(),
            notify: "SELECT pg_notify($1, '')".to_string(),
            // The byte cap is a running sum over the locked candidates in id order;
            // the first always fits. Candidates past the cap stay locked until COMMIT
            // but are not leased.
            claim: format!(
                "WITH c AS (
                    SELECT e.id, octet_length(e.payload) AS n FROM {t} e
                    {candidates}
                 ), w AS (
                    SELECT id, sum(n) OVER (ORDER BY id) AS running, row_number() OVER (ORDER BY id) AS nth
                    FROM c
                 )
                 UPDATE {t} AS u SET locked_by = $2, locked_until = now() + $3::float8 * interval '1 millisecond'
                 FROM w WHERE u.id = w.id AND (w.nth = 1 OR w.running <= $4)
                 RETURNING {RETURNING}"
            ),
            // The same candidates as `claim`, locked and returned instead of
            // leased: the transaction stays open while they are published. The
            // columns come from the locked rows (no join back by primary key:
            // measured 1.06 ms instead of 1.53 ms for 500 rows).
            // Candidates past the byte cap stay locked (not returned) until its end.
            claim_locked: format!(
                "WITH c AS (
                    SELECT e.id, e.message_id, e.payload, e.headers, e.options, e.ordering_key,
                           e.attempts, e.created_at, octet_length(e.payload) AS n
                    FROM {t} e
                    {candidates}
                 ), u AS (
                    SELECT c.*, sum(n) OVER (ORDER BY id) AS running, row_number() OVER (ORDER BY id) AS nth
                    FROM c
                 )
                 SELECT {RETURNING} FROM u WHERE u.nth = 1 OR u.running <= $2"
            ),
            delete_dispatched: format!(
                "DELETE FROM {t} WHERE id = ANY($1) AND locked_by = $2 AND status = 'pending' RETURNING id"
            ),
            held_mark_failed: format!(
                "UPDATE {t} AS u SET attempts = u.attempts + 1, last_error = f.err,
                    available_at = now() + f.delay_ms * interval '1 millisecond',
                    status = CASE WHEN NOT f.park THEN 'pending' WHEN f.hold THEN 'parked' ELSE 'skipped' END
                 FROM unnest($1::bigint[], $2::text[], $3::float8[], $4::bool[], $5::bool[])
                      AS f(id, err, delay_ms, park, hold)
                 WHERE u.id = f.id AND u.status = 'pending'"
            ),
            held_release: format!(
                "UPDATE {t} SET available_at = now() + $2::float8 * interval '1 millisecond'
                 WHERE id = ANY($1)"
            ),
            mark_dispatched: format!(
                "UPDATE {t} SET status = 'dispatched', dispatched_at = now(), locked_by = NULL, locked_until = NULL \
                 WHERE id = ANY($1) AND locked_by = $2 AND status = 'pending' RETURNING id"
            ),
            mark_failed: format!(
                "UPDATE {t} AS u SET attempts = u.attempts + 1, last_error = f.err, locked_by = NULL, locked_until = NULL,
                    available_at = now() + f.delay_ms * interval '1 millisecond',
                    status = CASE WHEN NOT f.park THEN 'pending' WHEN f.hold THEN 'parked' ELSE 'skipped' END
                 FROM unnest($1::bigint[], $2::text[], $3::float8[], $4::bool[], $6::bool[])
                      AS f(id, err, delay_ms, park, hold)
                 WHERE u.id = f.id AND u.locked_by = $5 AND u.status = 'pending'"
            ),
            release: format!(
                "UPDATE {t} SET locked_by = NULL, locked_until = NULL,
                    available_at = now() + $3::float8 * interval '1 millisecond'
                 WHERE id = ANY($1) AND locked_by = $2"
            ),
            cleanup: format!(
                "DELETE FROM {t} WHERE id IN (
                    SELECT id FROM {t} WHERE status = 'dispatched'
                      AND dispatched_at < now() - $1::float8 * interval '1 millisecond'
                    ORDER BY dispatched_at LIMIT $2)"
            ),
            requeue_ids: format!(
                "UPDATE {t} SET status = 'pending', attempts = 0, available_at = now(), locked_by = NULL, locked_until = NULL \
                 WHERE id = ANY($1) AND status IN ('parked', 'skipped')"
            ),
            requeue_all: format!(
                "UPDATE {t} SET status = 'pending', attempts = 0, available_at = now(), locked_by = NULL, locked_until = NULL \
                 WHERE status IN ('parked', 'skipped')"
            ),
            requeue_matching: format!(
                "UPDATE {t} SET status = 'pending', attempts = 0, available_at = now(), locked_by = NULL, locked_until = NULL \
                 WHERE status IN ('parked', 'skipped') \
                   AND ($1::float8 IS NULL OR created_at < now() - $1::float8 * interval '1 millisecond') \
                   AND ($2::text IS NULL OR strpos(lower(last_error), lower($2::text)) > 0)"
            ),
            skip: format!(
                "UPDATE {t} SET status = 'skipped' WHERE id = ANY($1) AND status = 'parked'"
            ),
            held_keys: format!(
                "SELECT h.ordering_key, h.id, h.message_id, h.last_error,
                        (SELECT count(*) FROM {t} w  -- the IN matches the key index
                         WHERE w.status IN ('pending', 'parked') AND w.ordering_key = h.ordering_key
                           AND w.id > h.id AND w.status = 'pending')
                 FROM {t} h
                 WHERE h.status = 'parked' AND {heads_key}
                 ORDER BY h.id LIMIT $1"
            ),
            stats: format!(
                "SELECT count(*) FILTER (WHERE status = 'pending'),
                        count(*) FILTER (WHERE status = 'dispatched'),
                        count(*) FILTER (WHERE status IN ('parked', 'skipped')),
                        count(*) FILTER (WHERE status = 'pending' AND locked_until > now()),
                        coalesce(extract(epoch FROM now() - min(created_at) FILTER (WHERE status = 'pending'))::float8, 0),
                        (SELECT count(*) FROM {t} h WHERE h.status = 'parked' AND {heads_key}),
                        count(*) FILTER (WHERE status = 'pending' AND available_at > now()),
                        extract(epoch FROM min(available_at) FILTER (WHERE status = 'pending' AND available_at > now()) - now())::float8
                 FROM {t}"
            ),
            // Reads the pending rows through the pending index, as an idle claim does.
            next_due: format!(
                "SELECT extract(epoch FROM min(available_at) - now())::float8 FROM {t} \
                 WHERE status = 'pending' AND available_at > now()"
            ),
            purge_parked: format!(
                "DELETE FROM {t} WHERE id IN (
                    SELECT id FROM {t} WHERE status IN ('parked', 'skipped')
                      AND created_at < now() - $1::float8 * interval '1 millisecond'
                    ORDER BY id LIMIT $2)"
            ),
            purgeable: format!(
                "SELECT count(*) FILTER (WHERE status = 'dispatched'
                          AND dispatched_at < now() - $1::float8 * interval '1 millisecond'),
                        count(*) FILTER (WHERE status IN ('parked', 'skipped')
                          AND created_at < now() - $1::float8 * interval '1 millisecond')
                 FROM {t} WHERE status IN ('dispatched', 'parked', 'skipped')"
            ),
            attempts_histogram: format!(
                "SELECT attempts, count(*) FROM {t} WHERE status IN ('pending', 'parked', 'skipped') \
                 GROUP BY attempts ORDER BY attempts"
            ),
            parked: format!(
                "SELECT id, message_id, attempts, last_error, ordering_key, \
                        status = 'parked' AND ordering_key IS NOT NULL \
                 FROM {t} WHERE status IN ('parked', 'skipped') ORDER BY id LIMIT $1"
            ),
            channel: channel_name(table),
        }
    }
}

impl PostgresSql {
    /// Opens a row-lock claim's transaction: the claim's planner settings, and
    /// the lease as the server's bound on the transaction's idle time (a relay
    /// that hangs loses its locks, and its batch goes to another relay). The
    /// claim is a statement prepared once per connection and run with its
    /// generic plan: planning it took 0.8 ms per batch of 500 (a tenth of the
    /// database's time per message), and with sorts off the generic plan is the
    /// same walk of the pending index in id order.
    pub fn begin_held(lease_ms: u64) -> String {
        format!(
            "BEGIN; SET LOCAL enable_sort = off; SET LOCAL jit = off; \
             SET LOCAL plan_cache_mode = force_generic_plan; \
             SET LOCAL idle_in_transaction_session_timeout = {}",
            lease_ms.max(1)
        )
    }

    /// Ends a row-lock claim: its published rows dispatched (or deleted), then
    /// COMMIT, in one round trip. The ids are the claim's own row ids.
    pub fn commit_held(table: &TableName, ids: &[i64], delete: bool) -> String {
        if ids.is_empty() {
            return "COMMIT".into();
        }
        let list = ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
        let t = table.quoted();
        if delete {
            format!("DELETE FROM {t} WHERE id IN ({list}); COMMIT")
        } else {
            format!(
                "UPDATE {t} SET status = 'dispatched', dispatched_at = now() \
                 WHERE id IN ({list}) AND status = 'pending'; COMMIT"
            )
        }
    }
}

/// When a row inserted with a delay of `ms` milliseconds becomes claimable.
fn available_at(ms: &str) -> String {
    format!("statement_timestamp() + {ms} * interval '1 millisecond'")
}

/// An index of the table, schema-qualified when the table is (for `DROP INDEX`).
fn qualified(table: &TableName, suffix: &str) -> String {
    match table.schema() {
        Some(s) => format!("\"{s}\".{}", table.derived(suffix)),
        None => table.derived(suffix),
    }
}

/// The LISTEN/NOTIFY channel: readable when it fits PostgreSQL's 63-byte
/// identifiers, else a hash of the name (channels are wake-up hints only).
fn channel_name(table: &TableName) -> String {
    let readable = format!("outboxer_{}", table.plain().replace('.', "_"));
    if readable.len() <= 63 {
        readable
    } else {
        format!("outboxer_{:08x}", table.lock_space() as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_quote_the_table_and_bind_values() {
        let t = TableName::parse("app.events").expect("valid");
        let sql = PostgresSql::new(&t);
        assert!(sql.claim.contains("FROM \"app\".\"events\" e"));
        assert!(sql.claim.contains("FOR UPDATE SKIP LOCKED"));
        assert!(sql.claim.contains("NOT EXISTS"));
        assert!(sql.claim.contains("RETURNING u.id, u.message_id"));
        assert!(sql.mark_dispatched.contains("locked_by = $2"));
        assert!(sql.mark_failed.contains("u.locked_by = $5"));
        assert_eq!(sql.channel, "outboxer_app_events");
        let long =
            TableName::parse(&format!("{}.{}", "s".repeat(40), "t".repeat(40))).expect("valid");
        assert!(PostgresSql::new(&long).channel.len() <= 63);
        assert!(sql.migrate.iter().all(|s| !s.contains("$1")));
        assert!(
            sql.parked.contains("status IN ('parked', 'skipped')")
                && sql.parked.contains("LIMIT $1")
        );
        assert!(sql.attempts_histogram.contains("GROUP BY attempts"));
        assert!(sql.purge_parked.contains("status IN ('parked', 'skipped')"));
        assert!(sql
            .migrate
            .iter()
            .any(|s| s == "DROP INDEX IF EXISTS \"app\".\"events_pending_key_idx\""));
    }
}

#[cfg(test)]
mod index_names {
    use super::*;

    #[test]
    fn migrate_creates_every_listed_index_under_its_name() {
        let t = TableName::parse("app.events").expect("name");
        let sql = PostgresSql::new(&t);
        for suffix in INDEXES {
            let create = format!("CREATE INDEX IF NOT EXISTS \"events_{suffix}\" ON");
            assert!(sql.migrate.iter().any(|s| s.contains(&create)), "{suffix}");
        }
        let long = "t".repeat(60);
        assert_eq!(index_name(&long, "pending_idx").len(), 63);
        assert_eq!(index_name("events", "pending_idx"), "events_pending_idx");
    }
}
