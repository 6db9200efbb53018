//! SQL Server; phase 1 runs its own SQL through the store's transactions
//! ([`SqlServerStore::begin`]), so the bench needs no async runtime of its own.

use super::{like_prefix, Backend};
use crate::{BoxResult, CHUNK};
use outboxer::store::SqlServerStore;
use outboxer::Message;
use std::time::{Duration, Instant};
use tiberius::ToSql;

/// Rows per `INSERT`: 4 parameters each, under SQL Server's 2100-parameter limit
/// (two statements per 1000-row transaction).
const ROWS_PER_INSERT: usize = 500;

pub struct SqlServer {
    conn_str: String,
    /// Only its pooled connections are used (no table of its own).
    client: SqlServerStore,
}

impl SqlServer {
    pub fn from_env() -> BoxResult<SqlServer> {
        let conn_str = std::env::var("OUTBOXER_MSSQL_URL").map_err(|_| {
            "--store sqlserver needs OUTBOXER_MSSQL_URL (no default), an ADO.NET \
             connection string such as \
             \"server=tcp:127.0.0.1,1433;user=sa;password=..;encrypt=true;\
             TrustServerCertificateCA=/path/to/server-ca.pem\""
        })?;
        let client = SqlServerStore::builder(&conn_str).build()?;
        Ok(SqlServer { conn_str, client })
    }

    /// Runs `sql` in a transaction of its own; returns the first result set.
    fn run(&self, sql: &str) -> BoxResult<Vec<tiberius::Row>> {
        let mut tx = self.client.begin()?;
        let rows = tx.query(sql, &[])?;
        tx.commit()?;
        Ok(rows)
    }
}

/// `INSERT` of `rows` rows: parameters `@P1..@P{4 * rows}`.
fn insert_sql(table: &str, rows: usize) -> String {
    let values: Vec<String> = (0..rows)
        .map(|r| {
            let p = r * 4;
            format!("(@P{}, @P{}, @P{}, @P{})", p + 1, p + 2, p + 3, p + 4)
        })
        .collect();
    format!(
        "INSERT INTO [{table}] (message_id, payload, headers, options) VALUES {}",
        values.join(", ")
    )
}

impl Backend for SqlServer {
    type S = SqlServerStore;
    const INSERT_HOW: &'static str = "multi-row INSERT .. VALUES (@P1, ..), 500 rows each";

    fn version(&self) -> BoxResult<String> {
        let rows = self.run("SELECT @@VERSION")?;
        let version = match rows.first() {
            Some(row) => row.try_get::<&str, _>(0)?.unwrap_or_default(),
            None => "",
        };
        Ok(version
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_string())
    }

    fn plain_insert(&self, table: &str, messages: &[Message]) -> BoxResult<Duration> {
        // The outbox table's column types (see src/core/sql/sqlserver.rs).
        self.run(&format!(
            "DROP TABLE IF EXISTS [{table}];
             CREATE TABLE [{table}] (
                 id BIGINT IDENTITY PRIMARY KEY,
                 message_id UNIQUEIDENTIFIER NOT NULL,
                 payload VARBINARY(MAX) NOT NULL,
                 headers VARBINARY(MAX) NULL,
                 options VARBINARY(MAX) NULL
             )"
        ))?;
        // Parameterized text: SQL Server caches the plan of each shape.
        let full = insert_sql(table, ROWS_PER_INSERT);
        let tail = insert_sql(table, messages.len() % ROWS_PER_INSERT);
        let start = Instant::now();
        for chunk in messages.chunks(CHUNK) {
            let mut tx = self.client.begin()?;
            for part in chunk.chunks(ROWS_PER_INSERT) {
                let ids: Vec<uuid::Uuid> = part.iter().map(|m| *m.message_id().as_uuid()).collect();
                let payloads: Vec<&[u8]> = part.iter().map(|m| m.payload()).collect();
                let headers: Vec<Vec<u8>> = part
                    .iter()
                    .map(|m| serde_json::json!(m.headers()).to_string().into_bytes())
                    .collect();
                let options: Vec<Vec<u8>> = part
                    .iter()
                    .map(|m| serde_json::json!(m.options()).to_string().into_bytes())
                    .collect();
                let mut params: Vec<&dyn ToSql> = Vec::with_capacity(part.len() * 4);
                for i in 0..part.len() {
                    params.extend([
                        &ids[i] as &dyn ToSql,
                        &payloads[i],
                        &headers[i],
                        &options[i],
                    ]);
                }
                let sql = if part.len() == ROWS_PER_INSERT {
                    &full
                } else {
                    &tail
                };
                tx.execute(sql, &params)?;
            }
            tx.commit()?;
        }
        Ok(start.elapsed())
    }

    fn count(&self, table: &str) -> BoxResult<u64> {
        let rows = self.run(&format!("SELECT COUNT_BIG(*) FROM [{table}]"))?;
        let n = rows
            .first()
            .map(|row| row.try_get::<i64, _>(0))
            .transpose()?
            .flatten()
            .ok_or("COUNT_BIG(*) returned no row")?;
        Ok(u64::try_from(n)?)
    }

    fn store(&self, table: &str) -> BoxResult<SqlServerStore> {
        let store = SqlServerStore::builder(&self.conn_str)
            .table(table)
            .build()?;
        store.migrate()?;
        Ok(store)
    }

    fn drop_table(&self, table: &str) -> BoxResult<()> {
        self.run(&format!("DROP TABLE IF EXISTS [{table}]"))?;
        Ok(())
    }

    fn drop_tables_like(&self, prefix: &str) -> BoxResult<()> {
        let mut tx = self.client.begin()?;
        let rows = tx.query(
            "SELECT name FROM sys.tables WHERE schema_id = SCHEMA_ID() \
             AND name LIKE @P1 ESCAPE '\\'",
            &[&like_prefix(prefix)],
        )?;
        tx.commit()?;
        for row in &rows {
            if let Some(table) = row.try_get::<&str, _>(0)? {
                self.drop_table(table)?;
            }
        }
        Ok(())
    }
}
