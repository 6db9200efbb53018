//! The inbox cases on MariaDB/MySQL (127.0.0.1:3306, or OUTBOXER_MYSQL_URL).

use crate::{Backend, CallerRow, Fail, How, Place};
use outboxer::inbox::{MysqlInbox, Outcome};
use outboxer::store::mysql::prelude::Queryable;
use outboxer::store::mysql::{Conn, Opts, Transaction, TxOpts};
use outboxer::MessageId;
use std::collections::BTreeMap;
use std::time::Duration;

pub fn url() -> String {
    std::env::var("OUTBOXER_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into())
}

pub fn place() -> Place {
    Place {
        kind: "mysql",
        location: url(),
        table: crate::unique("inbox_my"),
    }
}

pub struct Maria {
    conn: Conn,
    inbox: MysqlInbox,
    fx: String,
}

fn db(e: outboxer::store::mysql::Error) -> Fail {
    Fail::Db(outboxer::Error::Rejected(e.to_string()))
}

fn open(url: &str) -> Conn {
    let opts = Opts::from_url(url).expect("MySQL URL");
    Conn::new(opts).expect("MariaDB on 127.0.0.1:3306 (see README)")
}

fn effect(tx: &mut Transaction<'_>, fx: &str, id: MessageId, worker: &str) -> Result<(), Fail> {
    tx.exec_drop(
        format!("INSERT INTO `{fx}` (message_id, worker) VALUES (?, ?)"),
        (id.to_string(), worker),
    )
    .map_err(db)
}

impl Backend for Maria {
    fn connect(place: &Place) -> Self {
        Maria {
            conn: open(&place.location),
            inbox: MysqlInbox::with_table(&place.table).expect("table name"),
            fx: place.effects(),
        }
    }

    fn setup(&mut self) {
        self.inbox.migrate(&mut self.conn).expect("migrate");
        self.conn
            .query_drop(format!(
                "CREATE TABLE IF NOT EXISTS `{}` (message_id VARCHAR(36) NOT NULL, worker VARCHAR(32) NOT NULL) ENGINE = InnoDB",
                self.fx
            ))
            .expect("effects table");
    }

    fn teardown(place: &Place) {
        let mut c = open(&place.location);
        let _ = c.query_drop(format!(
            "DROP TABLE IF EXISTS `{}`, `{}`",
            place.table,
            place.effects()
        ));
    }

    fn apply(&mut self, id: MessageId, worker: &str, how: How) -> Result<Outcome<()>, Fail> {
        let fx = self.fx.clone();
        let mut tx = self.conn.start_transaction(TxOpts::default()).map_err(db)?;
        let r = self.inbox.process(&mut tx, id, |tx| {
            effect(tx, &fx, id, worker)?;
            std::thread::sleep(how.hold);
            if how.fail {
                return Err(Fail::Deliberate);
            }
            Ok(())
        });
        match r {
            Ok(outcome) if !how.abort => {
                tx.commit().map_err(db)?;
                Ok(outcome)
            }
            other => {
                tx.rollback().map_err(db)?;
                other
            }
        }
    }

    fn effects(&mut self) -> BTreeMap<String, Vec<String>> {
        let rows: Vec<(String, String)> = self
            .conn
            .query(format!("SELECT message_id, worker FROM `{}`", self.fx))
            .expect("effects");
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (id, w) in rows {
            out.entry(id).or_default().push(w);
        }
        out
    }

    fn recorded(&mut self, id: MessageId) -> bool {
        self.inbox.contains(&mut self.conn, id).expect("contains")
    }

    fn backdate(&mut self, id: MessageId, by: Duration) {
        self.conn
            .exec_drop(
                format!(
                    "UPDATE `{}` SET processed_at = processed_at - INTERVAL ? SECOND WHERE message_id = ?",
                    self.inbox.table_name()
                ),
                (by.as_secs(), id.as_uuid().as_bytes().to_vec()),
            )
            .expect("backdate");
        assert_eq!(self.conn.affected_rows(), 1);
    }

    fn cleanup(&mut self, older_than: Duration, limit: usize) -> u64 {
        self.inbox
            .cleanup(&mut self.conn, older_than, limit)
            .expect("cleanup")
    }

    fn inbox_rows(&mut self) -> u64 {
        let n: Option<u64> = self
            .conn
            .query_first(format!(
                "SELECT COUNT(*) FROM `{}`",
                self.inbox.table_name()
            ))
            .expect("count");
        n.unwrap_or(0)
    }
}

impl CallerRow for Maria {
    fn create_effects_only(&mut self) {
        self.conn
            .query_drop(format!(
                "CREATE TABLE `{}` (message_id VARCHAR(36) NOT NULL, worker VARCHAR(32) NOT NULL)",
                self.fx
            ))
            .expect("effects table");
    }

    fn fail_then_commit(&mut self, id: MessageId) -> Result<Outcome<()>, Fail> {
        let fx = self.fx.clone();
        let mut tx = self.conn.start_transaction(TxOpts::default()).map_err(db)?;
        effect(&mut tx, &fx, id, "caller")?;
        let r = self.inbox.process(&mut tx, id, |tx| {
            effect(tx, &fx, id, "handler")?;
            Err(Fail::Deliberate)
        });
        tx.commit().map_err(db)?;
        r
    }
}

crate::inbox_cases!(Maria, place());
