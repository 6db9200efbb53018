//! The statements fixed per table, built once by [`SqlServerSql::new`]: schema and
//! migrate, claim, cleanup, admin and stats queries.

use super::*;

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
            requeue_matching: format!(
                "UPDATE {t} SET status = 'pending', attempts = 0, available_at = SYSUTCDATETIME(), \
                 locked_by = NULL, locked_until = NULL WHERE status IN ('parked', 'skipped') \
                 AND (@P1 IS NULL OR created_at < {cutoff}) \
                 AND (@P2 IS NULL OR CHARINDEX(LOWER(@P2), LOWER(last_error)) > 0)",
                cutoff = utc_minus_ms("@P1"),
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
                     WHERE h.status = 'parked' AND {heads_key}),
                    ISNULL(SUM(CAST(CASE WHEN status = 'pending' AND available_at > SYSUTCDATETIME() THEN 1 ELSE 0 END AS BIGINT)), 0),
                    (SELECT DATEDIFF_BIG(MICROSECOND, SYSUTCDATETIME(), MIN(available_at))
                     FROM {t} WITH (NOLOCK) WHERE status = 'pending' AND available_at > SYSUTCDATETIME())
                 FROM {t} WITH (NOLOCK)"
            ),
            // READPAST, like the claim: rows of enqueues still in flight are skipped
            // rather than waited for.
            next_due: format!(
                "SELECT DATEDIFF_BIG(MICROSECOND, SYSUTCDATETIME(), MIN(available_at))
                 FROM {t} WITH (READPAST) WHERE status = 'pending' AND available_at > SYSUTCDATETIME()"
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
            purgeable: format!(
                "SELECT (SELECT CAST(COUNT(*) AS BIGINT) FROM {t} WITH (NOLOCK)
                         WHERE status = 'dispatched' AND dispatched_at < {cutoff}),
                        (SELECT CAST(COUNT(*) AS BIGINT) FROM {t} WITH (NOLOCK)
                         WHERE status IN ('parked', 'skipped') AND created_at < {cutoff})",
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
}
