//! MySQL 8 / MariaDB, on the `mysql` crate directly for phase 1.

use super::{like_prefix, Backend, LogMeter, Logged};
use crate::{BoxResult, CHUNK};
use mysql::prelude::Queryable;
use mysql::{Conn, IsolationLevel, Opts, TxOpts, Value};
use outboxer::store::MysqlStore;
use outboxer::Message;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

pub struct Mysql {
    url: String,
    opts: Opts,
}

impl Mysql {
    pub fn from_env() -> BoxResult<Mysql> {
        let mut url = std::env::var("OUTBOXER_MYSQL_URL")
            .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into());
        // The mysql crate moves a connection to 127.0.0.1 onto the Unix socket;
        // over TCP the server's threads serving the bench are known by client port
        // (the database CPU per message leaves other clients' connections out).
        if !url.contains("prefer_socket") {
            url.push(if url.contains('?') { '&' } else { '?' });
            url.push_str("prefer_socket=false");
        }
        let opts = Opts::from_url(&url).map_err(|e| format!("OUTBOXER_MYSQL_URL: {e}"))?;
        Ok(Mysql { url, opts })
    }

    fn conn(&self) -> BoxResult<Conn> {
        Conn::new(self.opts.clone()).map_err(|e| format!("connecting to MySQL: {e}").into())
    }
}

/// `INSERT` of `rows` rows, 4 parameters each.
fn insert_sql(table: &str, rows: usize) -> String {
    let values = vec!["(?, ?, ?, ?)"; rows].join(", ");
    format!("INSERT INTO `{table}` (message_id, payload, headers, options) VALUES {values}")
}

impl Backend for Mysql {
    type S = MysqlStore;
    const INSERT_HOW: &'static str = "multi-row INSERT .. VALUES (?, ?, ?, ?), ..";

    fn version(&self) -> BoxResult<String> {
        let v: String = self
            .conn()?
            .query_first("SELECT VERSION()")?
            .unwrap_or_default();
        let server = if v.contains("MariaDB") {
            "MariaDB"
        } else {
            "MySQL"
        };
        Ok(format!("{server} {v}"))
    }

    fn plain_insert(&self, table: &str, messages: &[Message]) -> BoxResult<Duration> {
        let mut conn = self.conn()?;
        conn.query_drop(format!("DROP TABLE IF EXISTS `{table}`"))?;
        // The outbox table's column types (see src/core/sql/mysql.rs).
        conn.query_drop(format!(
            "CREATE TABLE `{table}` (
                 id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
                 message_id BINARY(16) NOT NULL,
                 payload LONGBLOB NOT NULL,
                 headers JSON NULL,
                 options JSON NULL
             ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
        ))?;
        let full = conn.prep(insert_sql(table, CHUNK))?;
        let tail = match messages.len() % CHUNK {
            0 => None,
            rest => Some(conn.prep(insert_sql(table, rest))?),
        };
        // READ COMMITTED, as the store's own transactions.
        let tx_opts = TxOpts::default().set_isolation_level(Some(IsolationLevel::ReadCommitted));
        let start = Instant::now();
        for chunk in messages.chunks(CHUNK) {
            let stmt = match &tail {
                Some(tail) if chunk.len() < CHUNK => tail,
                _ => &full,
            };
            let mut params: Vec<Value> = Vec::with_capacity(chunk.len() * 4);
            for m in chunk {
                params.push(Value::Bytes(m.message_id().as_uuid().as_bytes().to_vec()));
                params.push(Value::Bytes(m.payload().to_vec()));
                params.push(Value::from(serde_json::json!(m.headers()).to_string()));
                params.push(Value::from(serde_json::json!(m.options()).to_string()));
            }
            let mut tx = conn.start_transaction(tx_opts)?;
            tx.exec_drop(stmt, params)?;
            tx.commit()?;
        }
        Ok(start.elapsed())
    }

    fn count(&self, table: &str) -> BoxResult<u64> {
        let n: Option<u64> = self
            .conn()?
            .query_first(format!("SELECT COUNT(*) FROM `{table}`"))?;
        Ok(n.ok_or("COUNT(*) returned no row")?)
    }

    fn store(&self, table: &str) -> BoxResult<MysqlStore> {
        let store = MysqlStore::builder(&self.url).table(table).build()?;
        store.migrate()?;
        Ok(store)
    }

    fn drop_table(&self, table: &str) -> BoxResult<()> {
        // The store keeps its per-key locks in `<table>_keys`.
        self.conn()?
            .query_drop(format!("DROP TABLE IF EXISTS `{table}`, `{table}_keys`"))?;
        Ok(())
    }

    fn drop_tables_like(&self, prefix: &str) -> BoxResult<()> {
        let mut conn = self.conn()?;
        let tables: Vec<String> = conn.exec(
            "SELECT table_name FROM information_schema.tables \
             WHERE table_schema = DATABASE() AND table_name LIKE ?",
            (like_prefix(prefix),),
        )?;
        for table in tables {
            conn.query_drop(format!("DROP TABLE IF EXISTS `{table}`"))?;
        }
        Ok(())
    }

    fn log_meter(&self) -> BoxResult<Option<Box<dyn LogMeter>>> {
        let mut conn = self.conn()?;
        let start = status(&mut conn)?;
        Ok(Some(Box::new(StatusMeter { conn, start })))
    }

    const SERVER_PROCESSES: &'static [&'static str] = &["mariadbd", "mysqld"];

    fn foreign_tasks(&self, mine: &HashSet<u16>) -> BoxResult<HashSet<u32>> {
        // MariaDB 10.5+ names each connection's OS thread (TID); HOST is
        // `ip:port` for TCP clients, `localhost` for the Unix socket, empty for the
        // server's own threads (kept: their work is the server's).
        let rows: Vec<(Option<u64>, String)> = self
            .conn()?
            .query("SELECT TID, HOST FROM information_schema.PROCESSLIST WHERE HOST <> ''")?;
        let mut foreign = HashSet::new();
        for (tid, host) in rows {
            let port = host
                .rsplit_once(':')
                .and_then(|(_, p)| p.parse::<u16>().ok());
            if !port.is_some_and(|p| mine.contains(&p)) {
                foreign.extend(tid.and_then(|t| u32::try_from(t).ok()));
            }
        }
        Ok(foreign)
    }
}

/// Server-wide counters read for `--breakdown`.
const COUNTERS: [&str; 6] = [
    "Innodb_lsn_current",
    "Innodb_row_lock_waits",
    "Innodb_data_fsyncs",
    "Questions",
    "Handler_read_key",
    "Handler_read_next",
];

fn status(conn: &mut Conn) -> BoxResult<HashMap<String, u64>> {
    let list = COUNTERS.map(|c| format!("'{c}'")).join(", ");
    let rows: Vec<(String, String)> = conn.query(format!(
        "SHOW GLOBAL STATUS WHERE Variable_name IN ({list})"
    ))?;
    Ok(rows
        .into_iter()
        .filter_map(|(name, v)| Some((name, v.parse().ok()?)))
        .collect())
}

/// Redo bytes, fsyncs, statements and index reads of the whole server during a run
/// (other clients of the server count too).
struct StatusMeter {
    conn: Conn,
    start: HashMap<String, u64>,
}

impl LogMeter for StatusMeter {
    fn report(mut self: Box<Self>, messages: u64) -> BoxResult<Logged> {
        let end = status(&mut self.conn)?;
        let delta = |name: &str| end.get(name)?.checked_sub(*self.start.get(name)?);
        let per = |name: &str| Some(delta(name)? as f64 / messages.max(1) as f64);
        let show = |v: Option<f64>, digits: usize| match v {
            Some(v) => format!("{v:.digits$}"),
            None => "?".into(),
        };
        let text = format!(
            "per message: redo {} bytes, {} fsyncs, {} statements, \
             {} index lookups + {} index steps; {} row lock waits",
            show(per("Innodb_lsn_current"), 0),
            show(per("Innodb_data_fsyncs"), 3),
            show(per("Questions"), 3),
            show(per("Handler_read_key"), 2),
            show(per("Handler_read_next"), 1),
            show(delta("Innodb_row_lock_waits").map(|d| d as f64), 0),
        );
        Ok(Logged {
            text,
            bytes_per_msg: per("Innodb_lsn_current"),
        })
    }
}
