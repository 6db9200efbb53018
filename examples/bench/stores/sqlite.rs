//! SQLite, on `rusqlite` directly for phase 1.

use super::{like_prefix, Backend};
use crate::{BoxResult, CHUNK};
use outboxer::store::SqliteStore;
use outboxer::Message;
use rusqlite::Connection;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub struct Sqlite {
    path: PathBuf,
    /// The file is ours (the default path): removed at the end.
    ours: bool,
}

impl Sqlite {
    pub fn from_env(pid: u32) -> Sqlite {
        match std::env::var_os("OUTBOXER_SQLITE_PATH") {
            Some(p) if !p.is_empty() => Sqlite {
                path: p.into(),
                ours: false,
            },
            _ => Sqlite {
                path: std::env::temp_dir().join(format!("outboxer-bench-{pid}.db")),
                ours: true,
            },
        }
    }

    /// A connection set up as the store sets up its own: WAL, `synchronous = NORMAL`.
    fn conn(&self) -> BoxResult<Connection> {
        let c = Connection::open(&self.path)
            .map_err(|e| format!("opening {}: {e}", self.path.display()))?;
        c.busy_timeout(Duration::from_secs(5))?;
        let _mode: String = c.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        c.pragma_update(None, "synchronous", "NORMAL")?;
        Ok(c)
    }
}

impl Backend for Sqlite {
    type S = SqliteStore;
    const INSERT_HOW: &'static str = "prepared single-row INSERT in BEGIN IMMEDIATE";

    fn version(&self) -> BoxResult<String> {
        Ok(format!(
            "SQLite {} ({})",
            rusqlite::version(),
            self.path.display()
        ))
    }

    fn plain_insert(&self, table: &str, messages: &[Message]) -> BoxResult<Duration> {
        let conn = self.conn()?;
        // The outbox table's column types (see src/core/sql/sqlite.rs).
        conn.execute_batch(&format!(
            "DROP TABLE IF EXISTS \"{table}\";
             CREATE TABLE \"{table}\" (
                 id INTEGER PRIMARY KEY AUTOINCREMENT,
                 message_id BLOB NOT NULL,
                 payload BLOB NOT NULL,
                 headers TEXT,
                 options TEXT
             )"
        ))?;
        let mut insert = conn.prepare(&format!(
            "INSERT INTO \"{table}\" (message_id, payload, headers, options) \
             VALUES (?1, ?2, ?3, ?4)"
        ))?;
        let start = Instant::now();
        for chunk in messages.chunks(CHUNK) {
            conn.execute_batch("BEGIN IMMEDIATE")?;
            for m in chunk {
                insert.execute(rusqlite::params![
                    m.message_id().as_uuid().as_bytes().as_slice(),
                    m.payload(),
                    serde_json::json!(m.headers()).to_string(),
                    serde_json::json!(m.options()).to_string(),
                ])?;
            }
            conn.execute_batch("COMMIT")?;
        }
        Ok(start.elapsed())
    }

    fn count(&self, table: &str) -> BoxResult<u64> {
        let n: i64 =
            self.conn()?
                .query_row(&format!("SELECT count(*) FROM \"{table}\""), [], |r| {
                    r.get(0)
                })?;
        Ok(u64::try_from(n)?)
    }

    fn store(&self, table: &str) -> BoxResult<SqliteStore> {
        let store = SqliteStore::builder(&self.path).table(table).build()?;
        store.migrate()?;
        Ok(store)
    }

    fn drop_table(&self, table: &str) -> BoxResult<()> {
        self.conn()?
            .execute_batch(&format!("DROP TABLE IF EXISTS \"{table}\""))?;
        Ok(())
    }

    fn drop_tables_like(&self, prefix: &str) -> BoxResult<()> {
        let conn = self.conn()?;
        let tables = conn
            .prepare(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE ?1 ESCAPE '\\'",
            )?
            .query_map([like_prefix(prefix)], |r| r.get::<_, String>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        for table in tables {
            conn.execute_batch(&format!("DROP TABLE IF EXISTS \"{table}\""))?;
        }
        Ok(())
    }

    fn finish(&self) {
        if self.ours {
            for ext in ["", "-wal", "-shm"] {
                let mut file = self.path.clone().into_os_string();
                file.push(ext);
                let _ = std::fs::remove_file(file);
            }
        }
    }
}
