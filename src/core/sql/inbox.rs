//! SQL text of the consumer inbox (`outboxer::inbox`): one table of processed
//! message ids per consumer, in each dialect. The table name is a validated
//! identifier; message ids, ages and limits travel as parameters.
//!
//! Every dialect records an id with an insert that does nothing when the id is
//! there, and that waits for a concurrent, uncommitted insert of the same id (its
//! row or key lock) before deciding: so of two consumers of one id, the second
//! sees the first one's outcome once it commits (duplicate) or rolls back (its
//! own turn).

use crate::core::ident::TableName;
use std::time::Duration;

/// The savepoint around one id's insert and handler: a failing handler is rolled
/// back to it, id included, leaving the caller's transaction usable.
pub const SAVEPOINT: &str = "SAVEPOINT outboxer_inbox";
/// Ends the savepoint's scope, keeping what it covered.
pub const RELEASE: &str = "RELEASE SAVEPOINT outboxer_inbox";
/// Undoes the id and the handler's writes.
pub const ROLLBACK_TO: &str = "ROLLBACK TO SAVEPOINT outboxer_inbox";

/// The default table name.
pub const DEFAULT_TABLE: &str = "outboxer_inbox";

/// Milliseconds of `d`, saturating.
pub fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A batch limit as the SQL parameter, at least 1 (`LIMIT 0` would make a
/// caller's delete-until-done loop stop at once with rows left).
pub fn limit(n: usize) -> i64 {
    i64::try_from(n.max(1)).unwrap_or(i64::MAX)
}

/// PostgreSQL.
#[derive(Clone, Debug)]
pub struct PostgresInboxSql {
    /// Taken inside the migrate transaction: ($1 text) -> `pg_advisory_xact_lock`.
    pub migrate_lock: &'static str,
    /// The lock's key text.
    pub migrate_resource: String,
    /// `CREATE TABLE` and its index, idempotent.
    pub migrate: Vec<String>,
    /// ($1 uuid) -> 1 row inserted, or 0 when the id is there.
    pub insert: String,
    /// ($1 float8 ms, $2 int8 limit) -> rows deleted.
    pub cleanup: String,
    /// ($1 uuid) -> one row when the id is recorded.
    pub contains: String,
}

impl PostgresInboxSql {
    /// SQL for `table`.
    pub fn new(table: &TableName) -> Self {
        let t = table.quoted();
        let idx = table.derived("processed_at_idx");
        PostgresInboxSql {
            migrate_lock: "SELECT pg_advisory_xact_lock(hashtext($1))",
            migrate_resource: format!("outboxer:inbox:migrate:{}", table.plain()),
            migrate: vec![
                format!(
                    "CREATE TABLE IF NOT EXISTS {t} (
                        message_id UUID PRIMARY KEY,
                        processed_at TIMESTAMPTZ NOT NULL DEFAULT now()
                    )"
                ),
                format!("CREATE INDEX IF NOT EXISTS {idx} ON {t} (processed_at)"),
            ],
            insert: format!(
                "INSERT INTO {t} (message_id) VALUES ($1) ON CONFLICT (message_id) DO NOTHING"
            ),
            cleanup: format!(
                "DELETE FROM {t} WHERE message_id IN (
                    SELECT message_id FROM {t}
                    WHERE processed_at < now() - $1::float8 * interval '1 millisecond'
                    ORDER BY processed_at LIMIT $2)"
            ),
            contains: format!("SELECT 1 FROM {t} WHERE message_id = $1"),
        }
    }
}

/// MySQL 8.0.13+ / MariaDB 10.6+ (InnoDB). Times in UTC, as the outbox table's.
#[derive(Clone, Debug)]
pub struct MysqlInboxSql {
    /// `CREATE TABLE IF NOT EXISTS` with its index (atomic in MySQL: no lock needed).
    pub create: String,
    /// (? 16-byte id) -> 1 row affected, or 0 when the id is there.
    pub insert: String,
    /// (? µs, ? limit) -> rows deleted.
    pub cleanup: String,
    /// (? 16-byte id) -> one row when the id is recorded.
    pub contains: String,
}

impl MysqlInboxSql {
    /// SQL for `table`.
    pub fn new(table: &TableName) -> Self {
        let q = |name: &str| format!("`{name}`");
        let t = match table.schema() {
            Some(s) => format!("{}.{}", q(s), q(table.table())),
            None => q(table.table()),
        };
        let idx = q(&format!("{}_processed_at_idx", table.table()));
        MysqlInboxSql {
            create: format!(
                "CREATE TABLE IF NOT EXISTS {t} (
                    message_id BINARY(16) NOT NULL PRIMARY KEY,
                    processed_at {now_column},
                    KEY {idx} (processed_at)
                ) ENGINE = InnoDB",
                now_column = super::mysql::UTC_NOW_COLUMN,
            ),
            // IGNORE: a duplicate key is the only error a 16-byte value can meet here.
            // On a duplicate, InnoDB takes a shared lock on the existing record, so a
            // concurrent uncommitted insert of the id is waited for.
            insert: format!("INSERT IGNORE INTO {t} (message_id) VALUES (?)"),
            cleanup: format!(
                "DELETE FROM {t} WHERE processed_at < UTC_TIMESTAMP(6) - INTERVAL ? MICROSECOND
                 ORDER BY processed_at LIMIT ?"
            ),
            contains: format!("SELECT 1 FROM {t} WHERE message_id = ?"),
        }
    }
}

/// SQLite (one writer at a time: the database lock is what concurrent consumers
/// wait on). `processed_at` is Unix milliseconds, as the outbox table's times.
#[derive(Clone, Debug)]
pub struct SqliteInboxSql {
    /// `CREATE TABLE` and its index, idempotent.
    pub migrate: String,
    /// (?1 16-byte id, ?2 now ms) -> 1 row inserted, or 0 when the id is there.
    pub insert: String,
    /// (?1 cutoff ms, ?2 limit) -> rows deleted.
    pub cleanup: String,
    /// (?1 16-byte id) -> one row when the id is recorded.
    pub contains: String,
}

impl SqliteInboxSql {
    /// SQL for `table`, already passed through [`sqlite_table`](super::sqlite::sqlite_table).
    pub fn new(table: &TableName) -> Self {
        let t = table.quoted();
        let idx = table.derived("processed_at_idx");
        SqliteInboxSql {
            migrate: format!(
                "CREATE TABLE IF NOT EXISTS {t} (
                    message_id BLOB NOT NULL PRIMARY KEY,
                    processed_at INTEGER NOT NULL
                ) WITHOUT ROWID;
                CREATE INDEX IF NOT EXISTS {idx} ON {t} (processed_at);"
            ),
            insert: format!(
                "INSERT INTO {t} (message_id, processed_at) VALUES (?1, ?2)
                 ON CONFLICT (message_id) DO NOTHING"
            ),
            cleanup: format!(
                "DELETE FROM {t} WHERE message_id IN (
                    SELECT message_id FROM {t} WHERE processed_at < ?1
                    ORDER BY processed_at LIMIT ?2)"
            ),
            contains: format!("SELECT 1 FROM {t} WHERE message_id = ?1"),
        }
    }
}

/// SQL Server 2017+. The caller's transaction runs with `XACT_ABORT ON` (the
/// store's session): a failed statement rolls all of it back, so the insert must
/// not fail on a duplicate; it checks first, under a key-range update lock
/// (`UPDLOCK, HOLDLOCK`) that a concurrent check of the same id waits for.
#[derive(Clone, Debug)]
pub struct SqlServerInboxSql {
    /// (@P1 resource, @P2 timeout ms) -> one row, the `sp_getapplock` status.
    pub migrate_lock: &'static str,
    /// The lock's resource name.
    pub migrate_resource: String,
    /// (@P1 the bracketed table name) creates the table and its indexes when missing.
    pub migrate: String,
    /// The bracketed table name (the `@P1` of `migrate`).
    pub table: String,
    /// (@P1 uniqueidentifier) -> 1 row inserted, or 0 when the id is there.
    pub insert: String,
    /// (@P1 BIGINT ms, @P2 BIGINT limit) -> rows deleted.
    pub cleanup: String,
    /// (@P1 uniqueidentifier) -> one row when the id is recorded.
    pub contains: String,
    /// `SAVE TRANSACTION` (SQL Server has no `SAVEPOINT` nor a release).
    pub savepoint: &'static str,
    /// Back to the savepoint.
    pub rollback_to: &'static str,
}

impl SqlServerInboxSql {
    /// SQL for `table`.
    pub fn new(table: &TableName) -> Self {
        let q = |p: &str| format!("[{p}]");
        let t = match table.schema() {
            Some(s) => format!("{}.{}", q(s), q(table.table())),
            None => q(table.table()),
        };
        let name = table.table();
        let cutoff = super::sqlserver::utc_minus_ms("@P1");
        SqlServerInboxSql {
            migrate_lock: "DECLARE @r INT; \
                 EXEC @r = sp_getapplock @Resource = @P1, @LockMode = 'Exclusive', \
                 @LockOwner = 'Transaction', @LockTimeout = @P2; \
                 SELECT @r",
            migrate_resource: format!("outboxer:inbox:migrate:{}", table.plain()),
            // Clustered on processed_at, not on the id: ids are UUIDv7, which SQL Server
            // orders by their last (random) bytes, so a clustered id would insert
            // everywhere in the table; processed_at grows, and cleanup deletes from its
            // start.
            migrate: format!(
                "IF OBJECT_ID(@P1, N'U') IS NULL
                 BEGIN
                    CREATE TABLE {t} (
                        message_id UNIQUEIDENTIFIER NOT NULL
                            CONSTRAINT [{name}_pkey] PRIMARY KEY NONCLUSTERED,
                        processed_at DATETIME2 NOT NULL
                            CONSTRAINT [{name}_processed_at_df] DEFAULT SYSUTCDATETIME()
                    );
                    CREATE CLUSTERED INDEX [{name}_processed_at_idx] ON {t} (processed_at);
                 END"
            ),
            insert: format!(
                "INSERT INTO {t} (message_id) SELECT @P1
                 WHERE NOT EXISTS (SELECT 1 FROM {t} WITH (UPDLOCK, HOLDLOCK) WHERE message_id = @P1)"
            ),
            cleanup: format!(
                "WITH d AS (
                    SELECT TOP (@P2) message_id FROM {t} WITH (ROWLOCK, READPAST)
                    WHERE processed_at < {cutoff}
                    ORDER BY processed_at
                 )
                 DELETE FROM d"
            ),
            contains: format!("SELECT 1 FROM {t} WHERE message_id = @P1"),
            table: t,
            savepoint: "SAVE TRANSACTION outboxer_inbox",
            rollback_to: "ROLLBACK TRANSACTION outboxer_inbox",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(name: &str) -> TableName {
        TableName::parse(name).expect("valid")
    }

    #[test]
    fn postgres_text() {
        let s = PostgresInboxSql::new(&table("app.seen"));
        assert!(s.migrate[0].starts_with("CREATE TABLE IF NOT EXISTS \"app\".\"seen\""));
        assert!(s.migrate[1].contains("\"seen_processed_at_idx\" ON \"app\".\"seen\""));
        assert!(s.insert.contains("ON CONFLICT (message_id) DO NOTHING"));
        assert!(s.cleanup.contains("LIMIT $2"));
        assert_eq!(s.migrate_resource, "outboxer:inbox:migrate:app.seen");
    }

    #[test]
    fn mysql_text() {
        let s = MysqlInboxSql::new(&table("app.seen"));
        assert!(s.create.contains("`app`.`seen`"));
        assert!(s
            .create
            .contains("KEY `seen_processed_at_idx` (processed_at)"));
        assert!(s.create.contains("UTC_TIMESTAMP(6)"));
        assert!(s.insert.starts_with("INSERT IGNORE INTO `app`.`seen`"));
        assert!(s
            .cleanup
            .contains("UTC_TIMESTAMP(6) - INTERVAL ? MICROSECOND"));
    }

    #[test]
    fn sqlite_text() {
        let s = SqliteInboxSql::new(&table("seen"));
        assert!(s.migrate.contains("CREATE TABLE IF NOT EXISTS \"seen\""));
        assert!(s
            .migrate
            .contains("\"seen_processed_at_idx\" ON \"seen\" (processed_at)"));
        assert!(s.insert.contains("ON CONFLICT (message_id) DO NOTHING"));
    }

    /// No SQL Server here: the statements are checked as text.
    #[test]
    fn sqlserver_text() {
        let s = SqlServerInboxSql::new(&table("app.seen"));
        assert_eq!(s.table, "[app].[seen]");
        assert!(s.migrate.contains("IF OBJECT_ID(@P1, N'U') IS NULL"));
        assert!(s.migrate.contains("PRIMARY KEY NONCLUSTERED"));
        assert!(s.migrate.contains(
            "CREATE CLUSTERED INDEX [seen_processed_at_idx] ON [app].[seen] (processed_at)"
        ));
        // The duplicate check holds a key-range update lock until the transaction
        // ends: a concurrent insert of the same id waits instead of both inserting
        // (or one failing, which XACT_ABORT would turn into a rolled-back transaction).
        assert!(s
            .insert
            .contains("WITH (UPDLOCK, HOLDLOCK) WHERE message_id = @P1"));
        assert!(s
            .insert
            .starts_with("INSERT INTO [app].[seen] (message_id) SELECT @P1"));
        assert!(s.cleanup.contains("TOP (@P2)"));
        assert!(s
            .cleanup
            .contains("DATEADD(SECOND, -CAST(@P1 / 1000 AS INT)"));
        assert!(
            !s.savepoint.contains("SAVEPOINT"),
            "T-SQL spells it SAVE TRANSACTION"
        );
        for text in [&s.migrate, &s.insert, &s.cleanup, &s.contains] {
            let opens = text.matches('(').count();
            assert_eq!(opens, text.matches(')').count(), "unbalanced: {text}");
        }
    }

    #[test]
    fn limits_and_millis() {
        assert_eq!(limit(0), 1);
        assert_eq!(limit(500), 500);
        assert_eq!(millis(Duration::from_secs(2)), 2000);
        assert_eq!(millis(Duration::MAX), i64::MAX);
    }
}
