//! SQL Server (2017+) SQL text for one outbox table, and the I/O-free helpers of
//! the `sqlserver` store: statement shapes for variable-length lists, lock
//! resource names. (Its connection strings are redacted in `core::redact`.)
//!
//! Every value travels as a parameter (`@P1`, `@P2`, ...). What is spliced into the
//! text is only: the table and index names (validated identifiers, bracket-quoted),
//! the status constants (`'pending'`, `'dispatched'`, `'parked'`: literals, so that
//! the optimizer can match the filtered indexes), the argument names of
//! `sp_getapplock`, and row ordinals that outboxer itself generates.
//!
//! Only forms SQL Server 2017 accepts: `TOP (@n)` (never `LIMIT`), `OUTPUT` (never
//! `RETURNING`), `DATEDIFF_BIG` (2016). No
//! `OPENJSON`/`STRING_SPLIT` either, because those need database compatibility
//! level 130: lists are sent as `IN (@P..)` / `VALUES (..)` lists instead.
//!
//! # Schema
//!
//! ```text
//! id            BIGINT IDENTITY PRIMARY KEY   relay order
//! payload       VARBINARY(MAX) NOT NULL
//! options       VARBINARY(MAX) NULL           UTF-8 JSON object (as the Go outboxer)
//! headers       VARBINARY(MAX) NULL           UTF-8 JSON object (as the Go outboxer)
//! dispatched_at DATETIME2 NULL                UTC
//! message_id    UNIQUEIDENTIFIER NOT NULL     the message's UUIDv7
//! ordering_key  NVARCHAR(800) NULL
//! status        VARCHAR(16) NOT NULL          pending | dispatched | parked
//! attempts      INT NOT NULL
//! last_error    NVARCHAR(MAX) NULL
//! created_at, available_at  DATETIME2 NOT NULL (SYSUTCDATETIME())
//! locked_by     UNIQUEIDENTIFIER NULL         lease token
//! locked_until  DATETIME2 NULL                lease end
//! ```
//!
//! Headers and options are UTF-8 JSON in `VARBINARY(MAX)`, not `NVARCHAR(MAX)`: that
//! is how the Go outboxer's table stores them, so a Go table is upgraded in place
//! without rewriting its rows (turning UTF-8 bytes into `NVARCHAR` in T-SQL needs the
//! UTF-8 collations of SQL Server 2019). Read them with
//! `CAST(headers AS VARCHAR(MAX))` (exact for ASCII).
//!
//! `message_id` is a `UNIQUEIDENTIFIER`: tiberius swaps the first three groups to and
//! from SQL Server's mixed-endian GUID layout, so the value the server shows
//! (`SELECT CAST(message_id AS CHAR(36))`) is the UUID's usual text. Nothing sorts or
//! indexes by it (SQL Server orders GUIDs by their last six bytes first).
//!
//! `ordering_key` is at most 800 UTF-16 code units: the per-key index
//! `(ordering_key, id)` must stay under SQL Server's 1700-byte index key limit.

use crate::core::ident::TableName;
use std::time::Duration;

/// SQL Server accepts at most 2100 parameters per request; stay below it.
pub const MAX_PARAMS: usize = 2000;
/// Parameters per inserted message (message_id, payload, headers, options, ordering_key).
pub const INSERT_PARAMS: usize = 5;
/// Rows per `INSERT` statement.
pub const MAX_INSERT_ROWS: usize = 256;
/// Ids per `IN (..)` list (marks, release, requeue).
pub const MAX_IDS: usize = 1024;
/// Rows per `mark_failed` statement ([`FAILED_PARAMS`] parameters each).
pub const MAX_FAILED_ROWS: usize = 256;
/// Parameters per failed attempt (id, error, delay, park, hold key).
pub const FAILED_PARAMS: usize = 5;
/// Rows claimed per statement. More row locks than about 5000 in one statement make
/// SQL Server escalate to a table lock, which would block every other relay and
/// every enqueue; a claim holds two or three locks per row (clustered key, pending
/// index key).
pub const MAX_CLAIM_ROWS: usize = 1500;
/// Rows deleted per cleanup statement (same lock-escalation reason).
pub const MAX_DELETE_ROWS: usize = 1000;
/// Longest ordering key, in UTF-16 code units (index key limit, see the module docs).
pub const MAX_ORDERING_KEY_UTF16: usize = 800;
/// How long `migrate` waits for another migrator's `sp_getapplock`, in milliseconds.
pub const MIGRATE_LOCK_TIMEOUT_MS: i32 = 20_000;
/// Longest delay passed to the server (lease, backoff, cleanup age): `DATEADD` takes
/// an `INT` number of seconds.
pub const MAX_DELAY_MS: i64 = i32::MAX as i64 * 1000;

// Every request stays under the parameter limit.
const _: () = assert!(MAX_INSERT_ROWS * INSERT_PARAMS <= MAX_PARAMS);
const _: () = assert!(MAX_FAILED_ROWS * FAILED_PARAMS < MAX_PARAMS && MAX_IDS < MAX_PARAMS);

/// The statements of one table, built once.
#[derive(Clone, Debug)]
pub struct SqlServerSql {
    table: String,
    plain: String,
    /// `BEGIN TRAN` etc. must run as plain SQL batches (not through `sp_executesql`,
    /// whose scope would undo `SET` and reject an unbalanced `BEGIN TRAN`).
    pub session_setup: &'static str,
    /// Take the migrate lock: (@P1 resource, @P2 timeout ms) -> one row, the
    /// `sp_getapplock` status (negative: not granted).
    pub migrate_lock: String,
    /// (@P1 quoted table name) -> one row: table exists, has `status`, has Go's
    /// `dispatched`, type of `id`, type of `dispatched_at` (0/1 ints, type names or '').
    pub inspect: String,
    /// (@P1 quoted table name)
    pub create_table: String,
    /// Widen Go's `INT` id: drop the primary key, alter the column, add the key back.
    /// Each a batch of its own; the first takes (@P1 quoted table name).
    pub widen_id: Vec<String>,
    /// Go's `DATETIME` dispatched_at to `DATETIME2`.
    pub widen_dispatched_at: String,
    /// Add every column the table lacks: (@P1 quoted table name).
    pub add_columns: String,
    /// Carry Go rows' `dispatched` flag over to `status` (only right after `status` was added).
    pub upgrade_go_rows: String,
    /// (index name, statement taking @P1 quoted table name and @P2 index name).
    pub indexes: Vec<(String, String)>,
    /// Indexes of earlier versions to drop, same shape as `indexes`.
    pub drop_indexes: Vec<(String, String)>,
    /// Claim: (@P1 limit, @P2 lease token, @P3 lease ms, @P4 payload bytes, @P5 1 when
    /// the first row fits whatever its size); the first result set holds id,
    /// message_id, payload, headers, options, ordering_key, attempts, created_at in
    /// microseconds since the Unix epoch, payload bytes.
    pub claim: String,
    /// (@P1 older than ms, @P2 limit)
    pub cleanup: String,
    /// Every parked row back to pending.
    pub requeue_all: String,
    /// One row: pending, dispatched, parked, leased (BIGINT), oldest pending age in
    /// microseconds (BIGINT), held keys (BIGINT).
    pub stats: String,
    /// (@P1 limit) keys held by a parked head: key, id, message_id, last_error,
    /// waiting (BIGINT).
    pub held_keys: String,
    /// (attempts, count) of pending and parked rows, ascending attempts.
    pub attempts_histogram: String,
    /// (@P1 older than ms, @P2 rows) delete parked rows by created_at.
    pub purge_parked: String,
    /// (@P1 limit) parked rows: id, message_id, attempts, last_error, ordering_key,
    /// holds key (INT 0/1).
    pub parked: String,
    /// `sp_getapplock` resource of `migrate` for this table.
    pub migrate_resource: String,
}

/// Plain-batch statements around transactions.
pub mod batch {
    /// Begins a transaction (a plain batch, so that it outlives the request).
    pub const BEGIN: &str = "BEGIN TRAN";
    /// Commits, then restores the session settings a caller's transaction may have changed.
    pub const COMMIT: &str = "COMMIT TRAN; SET XACT_ABORT ON; SET NOCOUNT OFF; SET TRANSACTION ISOLATION LEVEL READ COMMITTED";
    /// Rolls back if a transaction is still open (`XACT_ABORT` may have ended it
    /// already), then restores the session settings.
    pub const ROLLBACK: &str = "IF @@TRANCOUNT > 0 ROLLBACK TRAN; SET XACT_ABORT ON; SET NOCOUNT OFF; SET TRANSACTION ISOLATION LEVEL READ COMMITTED";
}

/// Session settings of every new connection: errors roll the whole transaction back
/// (`XACT_ABORT`), row counts are reported (marks count what they changed, so a
/// server-wide `NOCOUNT` default must not apply), and the options that filtered
/// indexes require.
const SESSION_SETUP: &str = "SET XACT_ABORT ON; SET IMPLICIT_TRANSACTIONS OFF; SET NOCOUNT OFF; \
    SET ANSI_NULLS ON; SET ANSI_PADDING ON; SET ANSI_WARNINGS ON; SET ARITHABORT ON; \
    SET CONCAT_NULL_YIELDS_NULL ON; SET QUOTED_IDENTIFIER ON; SET NUMERIC_ROUNDABORT OFF; \
    SET TRANSACTION ISOLATION LEVEL READ COMMITTED";

/// `SYSUTCDATETIME()` plus the milliseconds in `param` (a BIGINT parameter, at most
/// [`MAX_DELAY_MS`]); `DATEADD` only takes INT, hence seconds and the rest apart.
fn utc_plus_ms(param: &str) -> String {
    format!(
        "DATEADD(MILLISECOND, CAST({param} % 1000 AS INT), DATEADD(SECOND, CAST({param} / 1000 AS INT), SYSUTCDATETIME()))"
    )
}

/// `SYSUTCDATETIME()` minus the milliseconds in `param`.
fn utc_minus_ms(param: &str) -> String {
    format!(
        "DATEADD(MILLISECOND, -CAST({param} % 1000 AS INT), DATEADD(SECOND, -CAST({param} / 1000 AS INT), SYSUTCDATETIME()))"
    )
}

/// Microseconds since the Unix epoch of a DATETIME2 expression.
fn epoch_micros(expr: &str) -> String {
    format!("DATEDIFF_BIG(MICROSECOND, CAST('1970-01-01T00:00:00' AS DATETIME2), {expr})")
}

/// `@Pfirst, @Pfirst+1, ..` (`count` of them).
fn placeholders(first: usize, count: usize) -> String {
    (first..first + count)
        .map(|i| format!("@P{i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl SqlServerSql {
    /// SQL for `table`.
    pub fn new(table: &TableName) -> Self {
        let t = bracketed(table);
        let name = |suffix: &str| format!("{}_{suffix}", table.table());
        let indexes = vec![
            // Claims walk pending rows in id order; the lease and backoff columns are
            // included so that rows which are not claimable are skipped in the index.
            (
                name("pending_idx"),
                format!(
                    "CREATE INDEX {} ON {t} (id) INCLUDE (available_at, locked_until, ordering_key) \
                     WHERE status = 'pending'",
                    quote_part(&name("pending_idx"))
                ),
            ),
            // The per-key FIFO check: is there an earlier pending or parked row of this
            // key (a parked head holds its key, a skipped one does not)? The claim's
            // UPDATE changes no column of this index, so concurrent claims never X-lock
            // its keys and the NOT EXISTS below never waits for another claim.
            (
                name("undelivered_key_idx"),
                format!(
                    "CREATE INDEX {} ON {t} (ordering_key, id) \
                     WHERE status IN ('pending', 'parked') AND ordering_key IS NOT NULL",
                    quote_part(&name("undelivered_key_idx"))
                ),
            ),
            // Cleanup deletes old dispatched rows, oldest first.
            (
                name("dispatched_idx"),
                format!(
                    "CREATE INDEX {} ON {t} (dispatched_at) WHERE status = 'dispatched'",
                    quote_part(&name("dispatched_idx"))
                ),
            ),
            (
                name("parked_idx"),
                format!(
                    "CREATE INDEX {} ON {t} (id) WHERE status = 'parked'",
                    quote_part(&name("parked_idx"))
                ),
            ),
            (
                name("skipped_idx"),
                format!(
                    "CREATE INDEX {} ON {t} (id) WHERE status = 'skipped'",
                    quote_part(&name("skipped_idx"))
                ),
            ),
        ]
        .into_iter()
        .map(|(n, create)| {
            let guarded = format!(
                "IF NOT EXISTS (SELECT 1 FROM sys.indexes WHERE object_id = OBJECT_ID(@P1, N'U') AND name = @P2) {create}"
            );
            (n, guarded)
        })
        .collect();
        // Indexes of earlier versions, dropped by migrate: (@P1 quoted table, @P2 name).
        let old_key_idx = name("pending_key_idx");
        let drop_indexes = vec![(
            old_key_idx.clone(),
            format!(
                "IF EXISTS (SELECT 1 FROM sys.indexes WHERE object_id = OBJECT_ID(@P1, N'U') AND name = @P2) \
                 DROP INDEX {} ON {t}",
                quote_part(&old_key_idx)
            ),
        )];
        let pkey = quote_part(&name("pkey"));
        // A parked row `h` heads its key: no earlier pending or parked row of the key.
        let heads_key = format!(
            "h.ordering_key IS NOT NULL AND NOT EXISTS (
                SELECT 1 FROM {t} AS p WITH (NOLOCK) WHERE p.status IN ('pending', 'parked')
                  AND p.ordering_key IS NOT NULL AND p.ordering_key = h.ordering_key AND p.id < h.id)"
        );
        SqlServerSql {
            session_setup: SESSION_SETUP,
            migrate_lock: "DECLARE @r INT; \
                 EXEC @r = sp_getapplock @Resource = @P1, @LockMode = 'Exclusive', \
                 @LockOwner = 'Transaction', @LockTimeout = @P2; \
                 SELECT @r"
                .to_string(),
            inspect: "SELECT \
                 CAST(CASE WHEN OBJECT_ID(@P1, N'U') IS NULL THEN 0 ELSE 1 END AS INT), \
                 CAST(CASE WHEN COL_LENGTH(@P1, N'status') IS NULL THEN 0 ELSE 1 END AS INT), \
                 CAST(CASE WHEN COL_LENGTH(@P1, N'dispatched') IS NULL THEN 0 ELSE 1 END AS INT), \
                 ISNULL((SELECT TYPE_NAME(c.system_type_id) FROM sys.columns c \
                         WHERE c.object_id = OBJECT_ID(@P1, N'U') AND c.name = N'id'), N''), \
                 ISNULL((SELECT TYPE_NAME(c.system_type_id) FROM sys.columns c \
                         WHERE c.object_id = OBJECT_ID(@P1, N'U') AND c.name = N'dispatched_at'), N'')"
                .to_string(),
            create_table: format!(
                "IF OBJECT_ID(@P1, N'U') IS NULL CREATE TABLE {t} (
                    id BIGINT IDENTITY(1,1) NOT NULL CONSTRAINT {pkey} PRIMARY KEY CLUSTERED,
                    payload VARBINARY(MAX) NOT NULL,
                    options VARBINARY(MAX) NULL,
                    headers VARBINARY(MAX) NULL,
                    dispatched_at DATETIME2 NULL
                )"
            ),
            widen_id: vec![
                // Go's key has a generated name; drop it by what the catalog says.
                format!(
                    "DECLARE @pk SYSNAME = (SELECT name FROM sys.key_constraints \
                        WHERE parent_object_id = OBJECT_ID(@P1, N'U') AND type = 'PK'); \
                     IF @pk IS NOT NULL BEGIN \
                        DECLARE @drop NVARCHAR(MAX) = N'ALTER TABLE {} DROP CONSTRAINT ' + QUOTENAME(@pk); \
                        EXEC sp_executesql @drop; \
                     END",
                    t.replace('\'', "")
                ),
                format!("ALTER TABLE {t} ALTER COLUMN id BIGINT NOT NULL"),
                format!("ALTER TABLE {t} ADD CONSTRAINT {pkey} PRIMARY KEY CLUSTERED (id)"),
            ],
            widen_dispatched_at: format!("ALTER TABLE {t} ALTER COLUMN dispatched_at DATETIME2 NULL"),
            add_columns: [
                ("message_id", format!("UNIQUEIDENTIFIER NOT NULL CONSTRAINT {} DEFAULT NEWID()", quote_part(&name("message_id_df")))),
                ("ordering_key", "NVARCHAR(800) NULL".to_string()),
                ("status", format!("VARCHAR(16) NOT NULL CONSTRAINT {} DEFAULT 'pending'", quote_part(&name("status_df")))),
                ("attempts", format!("INT NOT NULL CONSTRAINT {} DEFAULT 0", quote_part(&name("attempts_df")))),
                ("last_error", "NVARCHAR(MAX) NULL".to_string()),
                ("created_at", format!("DATETIME2 NOT NULL CONSTRAINT {} DEFAULT SYSUTCDATETIME()", quote_part(&name("created_at_df")))),
                ("available_at", format!("DATETIME2 NOT NULL CONSTRAINT {} DEFAULT SYSUTCDATETIME()", quote_part(&name("available_at_df")))),
                ("locked_by", "UNIQUEIDENTIFIER NULL".to_string()),
                ("locked_until", "DATETIME2 NULL".to_string()),
            ]
            .iter()
            .map(|(col, def)| format!("IF COL_LENGTH(@P1, N'{col}') IS NULL ALTER TABLE {t} ADD {col} {def};"))
            .collect::<Vec<_>>()
            .join("\n"),
            // Go wrote GETDATE() (server local time); ours is UTC.
            upgrade_go_rows: format!(
                "UPDATE {t} SET status = 'dispatched', dispatched_at = COALESCE(\
                    DATEADD(MINUTE, DATEDIFF(MINUTE, SYSDATETIME(), SYSUTCDATETIME()), dispatched_at), \
                    SYSUTCDATETIME()) \
                 WHERE dispatched = 1"
            ),
            indexes,
            drop_indexes,
            // READPAST only on the outer scan: rows another relay is claiming right now
            // are skipped. The NOT EXISTS has no READPAST, so it still sees an earlier
            // pending row of the same key while another relay holds it (leased or being
            // claimed), and a key's later message is never claimed around its head.
            // It reads the per-key index only, whose keys claims never X-lock.
            // The isolation level is set for this statement because READPAST is refused
            // under SERIALIZABLE/SNAPSHOT, which a caller's transaction may have left.
            // The byte cap is a running sum over the locked candidates in id order;
            // candidates past it keep their update locks to the statement's end only.
            claim: format!(
                "SET TRANSACTION ISOLATION LEVEL READ COMMITTED;
                 WITH c AS (
                    SELECT TOP (@P1) e.id, DATALENGTH(e.payload) AS n
                    FROM {t} AS e WITH (UPDLOCK, ROWLOCK, READPAST)
                    WHERE e.status = 'pending' AND e.available_at <= SYSUTCDATETIME()
                      AND (e.locked_until IS NULL OR e.locked_until < SYSUTCDATETIME())
                      AND (e.ordering_key IS NULL OR NOT EXISTS (
                            SELECT 1 FROM {t} AS p
                            WHERE p.status IN ('pending', 'parked') AND p.ordering_key IS NOT NULL
                              AND p.ordering_key = e.ordering_key AND p.id < e.id))
                    ORDER BY e.id
                 ), w AS (
                    SELECT id, SUM(CAST(n AS BIGINT)) OVER (ORDER BY id ROWS UNBOUNDED PRECEDING) AS running,
                           ROW_NUMBER() OVER (ORDER BY id) AS nth
                    FROM c
                 )
                 UPDATE u SET locked_by = @P2, locked_until = {lease_end}
                 OUTPUT inserted.id, inserted.message_id, inserted.payload, inserted.headers,
                        inserted.options, inserted.ordering_key, inserted.attempts, {created},
                        DATALENGTH(inserted.payload)
                 FROM {t} AS u JOIN w ON u.id = w.id
                 WHERE (w.nth = 1 AND @P5 = 1) OR w.running <= @P4;",
                lease_end = utc_plus_ms("@P3"),
                created = epoch_micros("inserted.created_at"),
            ),
            cleanup: format!(
                "WITH d AS (
                    SELECT TOP (@P2) id FROM {t} WITH (ROWLOCK, READPAST)
                    WHERE status = 'dispatched' AND dispatched_at < {cutoff}
                    ORDER BY dispatched_at
                 )
                 DELETE FROM d",
                cutoff = utc_minus_ms("@P1"),
            ),
            requeue_all: format!(
                "UPDATE {t} SET status = 'pending', attempts = 0, available_at = SYSUTCDATETIME(), \
                 locked_by = NULL, locked_until = NULL WHERE status IN ('parked', 'skipped')"
            ),
            // NOLOCK: a snapshot for monitoring must not wait behind a caller's open
            // transaction; counts may include rows of transactions still in flight.
            stats: format!(
                "SELECT
                    ISNULL(SUM(CAST(CASE WHEN status = 'pending' THEN 1 ELSE 0 END AS BIGINT)), 0),
                    ISNULL(SUM(CAST(CASE WHEN status = 'dispatched' THEN 1 ELSE 0 END AS BIGINT)), 0),
                    ISNULL(SUM(CAST(CASE WHEN status IN ('parked', 'skipped') THEN 1 ELSE 0 END AS BIGINT)), 0),
                    ISNULL(SUM(CAST(CASE WHEN status = 'pending' AND locked_until > SYSUTCDATETIME() THEN 1 ELSE 0 END AS BIGINT)), 0),
                    ISNULL((SELECT DATEDIFF_BIG(MICROSECOND, MIN(created_at), SYSUTCDATETIME())
                            FROM {t} WITH (NOLOCK) WHERE status = 'pending'), 0),
                    (SELECT CAST(COUNT(*) AS BIGINT) FROM {t} AS h WITH (NOLOCK)
                     WHERE h.status = 'parked' AND {heads_key})
                 FROM {t} WITH (NOLOCK)"
            ),
            held_keys: format!(
                "SELECT TOP (@P1) h.ordering_key, h.id, h.message_id, h.last_error,
                        (SELECT CAST(COUNT(*) AS BIGINT) FROM {t} AS w WITH (NOLOCK)
                         WHERE w.status IN ('pending', 'parked') AND w.ordering_key IS NOT NULL
                           AND w.ordering_key = h.ordering_key AND w.id > h.id AND w.status = 'pending')
                 FROM {t} AS h WITH (NOLOCK)
                 WHERE h.status = 'parked' AND {heads_key}
                 ORDER BY h.id"
            ),
            purge_parked: format!(
                "WITH d AS (
                    SELECT TOP (@P2) id FROM {t} WITH (ROWLOCK, READPAST)
                    WHERE status IN ('parked', 'skipped') AND created_at < {cutoff}
                    ORDER BY id
                 )
                 DELETE FROM d",
                cutoff = utc_minus_ms("@P1"),
            ),
            attempts_histogram: format!(
                "SELECT attempts, CAST(COUNT(*) AS BIGINT) FROM {t} WITH (NOLOCK) \
                 WHERE status IN ('pending', 'parked', 'skipped') GROUP BY attempts ORDER BY attempts"
            ),
            parked: format!(
                "SELECT TOP (@P1) id, message_id, attempts, last_error, ordering_key, \
                 CAST(CASE WHEN status = 'parked' AND ordering_key IS NOT NULL THEN 1 ELSE 0 END AS INT) \
                 FROM {t} WITH (NOLOCK) WHERE status IN ('parked', 'skipped') ORDER BY id"
            ),
            migrate_resource: format!("outboxer:migrate:{}", table.plain()),
            plain: table.plain(),
            table: t,
        }
    }

    /// The bracket-quoted table name (`[schema].[table]`), also the value of the
    /// `@P1` object-name parameter of the migrate statements.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// One request that locks `locks` ordering keys (parameters `@P1..`) and inserts
    /// `rows` messages (the following parameters, [`INSERT_PARAMS`] per row, in the
    /// order message_id, payload, headers, options, ordering_key). With `own_tx` the
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

    /// `INSERT` of `rows` messages with parameters from `@Pfirst`.
    fn insert(&self, first: usize, rows: usize) -> String {
        let t = &self.table;
        let cols = "message_id, payload, headers, options, ordering_key";
        if rows == 1 {
            return format!(
                "INSERT INTO {t} ({cols}) VALUES ({});\n",
                placeholders(first, INSERT_PARAMS)
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
             SELECT v.message_id, v.payload, v.headers, v.options, v.ordering_key
             FROM (VALUES {values}) AS v(message_id, payload, headers, options, ordering_key, n)
             ORDER BY v.n;\n"
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

    /// The `sp_getapplock` resource that serialises enqueues of `key` in this table,
    /// so that ids follow commit order per key. Keys are hashed (FNV-1a, 64 bits):
    /// resources are limited to 255 characters, and a collision only serialises two
    /// keys' enqueues, it never reorders anything.
    pub fn key_resource(&self, key: &str) -> String {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in key.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        format!("outboxer:key:{}:{h:016x}", self.plain)
    }
}

/// `n` exclusive transaction-owned app locks on `@P1..@Pn`, each checked: a status
/// below zero (timeout, deadlock victim, error) aborts the request.
pub fn lock_keys(n: usize) -> String {
    if n == 0 {
        return String::new();
    }
    let mut sql = String::from("DECLARE @r INT;\n");
    for i in 1..=n {
        sql.push_str(&format!(
            "EXEC @r = sp_getapplock @Resource = @P{i}, @LockMode = 'Exclusive', @LockOwner = 'Transaction';\n\
             IF @r < 0 THROW 51000, 'outboxer: could not lock an ordering key (sp_getapplock)', 1;\n"
        ));
    }
    sql
}

/// The list length a statement for `n` ids is built for: the next power of two (at
/// most [`MAX_IDS`]), so that the server caches a handful of plans rather than one per
/// list length. The caller pads the list by repeating an id, which changes nothing.
pub fn id_bucket(n: usize) -> usize {
    n.clamp(1, MAX_IDS).next_power_of_two().min(MAX_IDS)
}

/// `ids` padded to [`id_bucket`] by repeating the last one.
pub fn pad_ids(ids: &[i64]) -> Vec<i64> {
    let mut v = ids.to_vec();
    if let Some(&last) = ids.last() {
        v.resize(id_bucket(ids.len()), last);
    }
    v
}

/// A delay as the BIGINT milliseconds the statements take, clamped to [`MAX_DELAY_MS`].
pub fn delay_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis())
        .unwrap_or(i64::MAX)
        .min(MAX_DELAY_MS)
}

/// Whether an ordering key fits the column (see [`MAX_ORDERING_KEY_UTF16`]).
pub fn ordering_key_fits(key: &str) -> bool {
    key.encode_utf16().count() <= MAX_ORDERING_KEY_UTF16
}

/// How a batch of `rows` messages with `locks` distinct keys is sent: as one request
/// when its parameters fit, otherwise locks first and inserts in chunks.
pub fn fits_one_request(locks: usize, rows: usize) -> bool {
    rows <= MAX_INSERT_ROWS && locks + rows * INSERT_PARAMS <= MAX_PARAMS
}

/// `[schema].[table]` or `[table]`. Parts are validated identifiers (letters, digits,
/// underscores), so no `]` can occur in them.
fn bracketed(table: &TableName) -> String {
    match table.schema() {
        Some(s) => format!("{}.{}", quote_part(s), quote_part(table.table())),
        None => quote_part(table.table()),
    }
}

fn quote_part(part: &str) -> String {
    format!("[{}]", part.replace(']', "]]"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sql() -> SqlServerSql {
        SqlServerSql::new(&TableName::parse("app.events").expect("valid"))
    }

    /// Every statement a relay or an enqueue sends.
    fn dml(s: &SqlServerSql) -> Vec<String> {
        vec![
            s.claim.clone(),
            s.cleanup.clone(),
            s.requeue_all.clone(),
            s.stats.clone(),
            s.attempts_histogram.clone(),
            s.parked.clone(),
            s.purge_parked.clone(),
            s.enqueue(2, 3, true),
            s.enqueue(0, 1, false),
            s.mark_dispatched(4),
            s.mark_failed(2),
            s.release(2),
            s.requeue_ids(8),
            s.skip(2),
            s.held_keys.clone(),
            s.migrate_lock.clone(),
            s.inspect.clone(),
        ]
    }

    /// The string literals of a statement.
    fn literals(stmt: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut parts = stmt.split('\'');
        parts.next();
        while let Some(lit) = parts.next() {
            out.push(lit.to_string());
            parts.next();
        }
        out
    }

    #[test]
    fn only_sql_server_2017_forms() {
        let s = sql();
        let mut all = dml(&s);
        all.extend(s.widen_id.iter().cloned());
        all.extend(s.indexes.iter().map(|(_, i)| i.clone()));
        all.extend(s.drop_indexes.iter().map(|(_, i)| i.clone()));
        all.push(s.create_table.clone());
        all.push(s.add_columns.clone());
        all.push(s.upgrade_go_rows.clone());
        for stmt in &all {
            let up = stmt.to_ascii_uppercase();
            for banned in [
                "LIMIT ",
                "RETURNING",
                "FOR UPDATE",
                "SKIP LOCKED",
                "$1",
                "::",
                "NOW()",
                "ILIKE",
                "OPENJSON",
                "STRING_SPLIT",
                "GREATEST(",
                "LEAST(",
                "STRING_AGG",
                "TABLE IF",
                "INDEX IF",
                "ADD COLUMN",
                "\"",
                "`",
                "CREATE OR ALTER",
            ] {
                assert!(!up.contains(banned), "{banned} in {stmt}");
            }
            // Row limits are TOP (@param) only.
            if up.contains("TOP") {
                assert!(up.contains("TOP (@P"), "{stmt}");
            }
        }
    }

    #[test]
    fn claim_locks_skips_and_orders() {
        let s = sql();
        let c = &s.claim;
        assert!(
            c.contains("FROM [app].[events] AS e WITH (UPDLOCK, ROWLOCK, READPAST)"),
            "{c}"
        );
        assert!(c.contains("SELECT TOP (@P1)"));
        assert!(c.contains("ORDER BY e.id"));
        assert!(c.contains("OUTPUT inserted.id, inserted.message_id"));
        assert!(c.contains("UPDATE u SET locked_by = @P2"));
        assert!(c.contains("FROM [app].[events] AS u JOIN w ON u.id = w.id"));
        assert!(c.contains("WHERE (w.nth = 1 AND @P5 = 1) OR w.running <= @P4;"));
        assert!(c.contains("@P3 % 1000"));
        // The key-head check sees rows locked by others: no READPAST on its scan.
        let not_exists = &c[c.find("NOT EXISTS").expect("key check")..];
        let inner = &not_exists[..not_exists.find("ORDER BY").expect("order")];
        assert!(inner.contains("FROM [app].[events] AS p\n"), "{inner}");
        assert!(
            !inner.contains("READPAST") && !inner.contains("NOLOCK"),
            "{inner}"
        );
        assert_eq!(c.matches("READPAST").count(), 1);
        assert!(c.starts_with("SET TRANSACTION ISOLATION LEVEL READ COMMITTED;"));
    }

    #[test]
    fn every_value_is_a_parameter() {
        let s = sql();
        let allowed = [
            "pending",
            "dispatched",
            "parked",
            "skipped",
            "Exclusive",
            "Transaction",
            "1970-01-01T00:00:00",
            "U",
            "status",
            "dispatched_at",
            "dispatched",
            "id",
            "PK",
            "",
            "outboxer: could not lock an ordering key (sp_getapplock)",
        ];
        for stmt in dml(&s) {
            for lit in literals(&stmt) {
                assert!(allowed.contains(&lit.as_str()), "literal {lit:?} in {stmt}");
            }
            let takes_values =
                stmt != s.requeue_all && stmt != s.stats && stmt != s.attempts_histogram;
            assert_eq!(stmt.contains("@P"), takes_values, "{stmt}");
        }
        assert!(s
            .mark_dispatched(3)
            .contains("WHERE id IN (@P1, @P2, @P3) AND locked_by = @P4"));
        assert!(s.release(1).contains("id IN (@P1) AND locked_by = @P2"));
        assert!(s
            .release(1)
            .contains("CAST(@P3 / 1000 AS INT), SYSUTCDATETIME()"));
        let f = s.mark_failed(2);
        assert!(
            f.contains("(VALUES (@P1, @P2, @P3, @P4, @P5), (@P6, @P7, @P8, @P9, @P10))"),
            "{f}"
        );
        assert!(f.contains("u.locked_by = @P11"));
        assert!(s
            .cleanup
            .contains("SELECT TOP (@P2) id FROM [app].[events] WITH (ROWLOCK, READPAST)"));
        assert!(s.cleanup.contains("DELETE FROM d"));
    }

    #[test]
    fn enqueue_locks_keys_then_inserts_in_order() {
        let s = sql();
        let one = s.enqueue(0, 1, true);
        assert_eq!(
            one,
            "BEGIN TRAN;\nINSERT INTO [app].[events] (message_id, payload, headers, options, ordering_key) \
             VALUES (@P1, @P2, @P3, @P4, @P5);\nCOMMIT TRAN;"
        );
        let many = s.enqueue(2, 3, false);
        assert!(!many.contains("BEGIN TRAN") && !many.contains("COMMIT"));
        assert_eq!(many.matches("sp_getapplock @Resource = @P").count(), 2);
        assert!(many.contains("@LockOwner = 'Transaction'"));
        assert!(many.contains("IF @r < 0 THROW"));
        assert!(many.find("@P2, @LockMode").expect("lock") < many.find("INSERT").expect("insert"));
        assert!(many.contains("(@P3, @P4, @P5, @P6, @P7, 0)"), "{many}");
        assert!(many.contains("(@P13, @P14, @P15, @P16, @P17, 2)"), "{many}");
        assert!(many.contains("ORDER BY v.n"));
        assert!(fits_one_request(0, MAX_INSERT_ROWS));
        assert!(!fits_one_request(0, MAX_INSERT_ROWS + 1));
        assert!(!fits_one_request(1000, 250));
    }

    #[test]
    fn migrate_is_guarded_and_quoted() {
        let s = sql();
        assert!(s
            .create_table
            .starts_with("IF OBJECT_ID(@P1, N'U') IS NULL CREATE TABLE [app].[events]"));
        assert!(s.create_table.contains("BIGINT IDENTITY(1,1)"));
        assert!(s
            .create_table
            .contains("CONSTRAINT [events_pkey] PRIMARY KEY"));
        assert_eq!(s.add_columns.matches("IF COL_LENGTH(@P1, N'").count(), 9);
        assert!(s
            .add_columns
            .contains("ADD message_id UNIQUEIDENTIFIER NOT NULL"));
        assert_eq!(s.indexes.len(), 5);
        assert_eq!(s.drop_indexes.len(), 1);
        assert!(s.drop_indexes[0]
            .1
            .contains("DROP INDEX [events_pending_key_idx] ON [app].[events]"));
        for (name, stmt) in &s.indexes {
            assert!(
                stmt.starts_with("IF NOT EXISTS (SELECT 1 FROM sys.indexes"),
                "{stmt}"
            );
            assert!(
                stmt.contains(&format!("CREATE INDEX [{name}] ON [app].[events]")),
                "{stmt}"
            );
            // Filtered: SQL Server takes comparisons and `IN (constants)` there.
            assert!(stmt.contains(" WHERE status "), "filtered: {stmt}");
        }
        assert!(s
            .migrate_lock
            .contains("@LockOwner = 'Transaction', @LockTimeout = @P2"));
        assert_eq!(s.migrate_resource, "outboxer:migrate:app.events");
        assert!(s.widen_id[1].contains("ALTER COLUMN id BIGINT NOT NULL"));
        assert!(s.upgrade_go_rows.contains("WHERE dispatched = 1"));
        assert_eq!(s.table(), "[app].[events]");
        let plain = SqlServerSql::new(&TableName::default());
        assert_eq!(plain.table(), "[event_store]");
    }

    #[test]
    fn key_resources_are_short_stable_and_per_table() {
        let s = sql();
        let long = "k".repeat(5000);
        let r = s.key_resource(&long);
        assert!(r.len() < 255, "{r}");
        assert_eq!(r, s.key_resource(&long));
        assert_ne!(s.key_resource("a"), s.key_resource("b"));
        assert!(s.key_resource("a").starts_with("outboxer:key:app.events:"));
        let other = SqlServerSql::new(&TableName::default());
        assert_ne!(other.key_resource("a"), s.key_resource("a"));
        assert_eq!(lock_keys(0), "");
    }

    #[test]
    fn buckets_and_delays() {
        assert_eq!(id_bucket(1), 1);
        assert_eq!(id_bucket(3), 4);
        assert_eq!(id_bucket(1000), 1024);
        assert_eq!(id_bucket(5000), MAX_IDS);
        assert_eq!(pad_ids(&[5, 6, 7]), vec![5, 6, 7, 7]);
        assert!(pad_ids(&[]).is_empty());
        assert_eq!(delay_ms(Duration::from_millis(1500)), 1500);
        assert_eq!(delay_ms(Duration::MAX), MAX_DELAY_MS);
        assert!(ordering_key_fits(&"é".repeat(800)));
        assert!(
            !ordering_key_fits(&"🎉".repeat(401)),
            "surrogate pairs count twice"
        );
    }
}
