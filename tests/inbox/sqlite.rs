//! The inbox cases on SQLite files under the temp directory.

use crate::{Backend, CallerRow, Fail, How, Place};
use outboxer::inbox::{Outcome, SqliteInbox};
use outboxer::store::rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior};
use outboxer::MessageId;
use std::collections::BTreeMap;
use std::time::Duration;

pub fn place() -> Place {
    let name = crate::unique("inbox_lite");
    Place {
        kind: "sqlite",
        location: std::env::temp_dir()
            .join(format!("{name}.db"))
            .to_string_lossy()
            .into_owned(),
        table: "consumer_inbox".into(),
    }
}

pub struct Lite {
    conn: Connection,
    inbox: SqliteInbox,
    fx: String,
}

fn db(e: outboxer::store::rusqlite::Error) -> Fail {
    Fail::Db(outboxer::Error::Rejected(e.to_string()))
}

fn effect(tx: &Transaction<'_>, fx: &str, id: MessageId, worker: &str) -> Result<(), Fail> {
    tx.execute(
        &format!("INSERT INTO \"{fx}\" (message_id, worker) VALUES (?1, ?2)"),
        (id.to_string(), worker),
    )
    .map(drop)
    .map_err(db)
}

impl Backend for Lite {
    fn connect(place: &Place) -> Self {
        let conn = Connection::open(&place.location).expect("SQLite file");
        conn.busy_timeout(Duration::from_secs(20))
            .expect("busy timeout");
        conn.pragma_update(None, "journal_mode", "WAL")
            .expect("WAL");
        Lite {
            conn,
            inbox: SqliteInbox::with_table(&place.table).expect("table name"),
            fx: place.effects(),
        }
    }

    fn setup(&mut self) {
        self.inbox.migrate(&self.conn).expect("migrate");
        self.conn
            .execute_batch(&format!(
                "CREATE TABLE IF NOT EXISTS \"{}\" (message_id TEXT NOT NULL, worker TEXT NOT NULL)",
                self.fx
            ))
            .expect("effects table");
    }

    fn teardown(place: &Place) {
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", place.location));
        }
    }

    fn apply(&mut self, id: MessageId, worker: &str, how: How) -> Result<Outcome<()>, Fail> {
        let fx = self.fx.clone();
        let mut tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db)?;
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
        let mut stmt = self
            .conn
            .prepare(&format!("SELECT message_id, worker FROM \"{}\"", self.fx))
            .expect("effects");
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .expect("effects");
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for row in rows {
            let (id, w) = row.expect("row");
            out.entry(id).or_default().push(w);
        }
        out
    }

    fn recorded(&mut self, id: MessageId) -> bool {
        self.inbox.contains(&self.conn, id).expect("contains")
    }

    fn backdate(&mut self, id: MessageId, by: Duration) {
        let n = self
            .conn
            .execute(
                &format!(
                    "UPDATE \"{}\" SET processed_at = processed_at - ?2 WHERE message_id = ?1",
                    self.inbox.table_name()
                ),
                (id.as_uuid().as_bytes().as_slice(), by.as_millis() as i64),
            )
            .expect("backdate");
        assert_eq!(n, 1);
    }

    fn cleanup(&mut self, older_than: Duration, limit: usize) -> u64 {
        self.inbox
            .cleanup(&self.conn, older_than, limit)
            .expect("cleanup")
    }

    fn inbox_rows(&mut self) -> u64 {
        let n: Option<i64> = self
            .conn
            .query_row(
                &format!("SELECT COUNT(*) FROM \"{}\"", self.inbox.table_name()),
                [],
                |r| r.get(0),
            )
            .optional()
            .expect("count");
        n.unwrap_or(0) as u64
    }
}

impl CallerRow for Lite {
    fn create_effects_only(&mut self) {
        self.conn
            .execute_batch(&format!(
                "CREATE TABLE \"{}\" (message_id TEXT NOT NULL, worker TEXT NOT NULL)",
                self.fx
            ))
            .expect("effects table");
    }

    fn fail_then_commit(&mut self, id: MessageId) -> Result<Outcome<()>, Fail> {
        let fx = self.fx.clone();
        let mut tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db)?;
        effect(&tx, &fx, id, "caller")?;
        let r = self.inbox.process(&mut tx, id, |tx| {
            effect(tx, &fx, id, "handler")?;
            Err(Fail::Deliberate)
        });
        tx.commit().map_err(db)?;
        r
    }
}

crate::inbox_cases!(Lite, place());
