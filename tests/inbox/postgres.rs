//! The inbox cases on PostgreSQL (127.0.0.1:5432, or OUTBOXER_PG_URL).

use crate::{Backend, CallerRow, Fail, How, Place};
use outboxer::inbox::{Outcome, PostgresInbox};
use outboxer::store::postgres::{Client, NoTls};
use outboxer::MessageId;
use std::collections::BTreeMap;
use std::time::Duration;

pub fn url() -> String {
    std::env::var("OUTBOXER_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

pub fn place() -> Place {
    Place {
        kind: "postgres",
        location: url(),
        table: crate::unique("inbox_pg"),
    }
}

pub struct Pg {
    client: Client,
    inbox: PostgresInbox,
    fx: String,
}

impl Pg {
    fn effect(
        tx: &mut outboxer::store::postgres::Transaction<'_>,
        fx: &str,
        id: MessageId,
        worker: &str,
    ) -> Result<(), Fail> {
        tx.execute(
            &format!("INSERT INTO \"{fx}\" (message_id, worker) VALUES ($1, $2)"),
            &[&id.to_string(), &worker],
        )
        .map_err(|e| Fail::Db(e.into()))?;
        Ok(())
    }
}

impl Backend for Pg {
    fn connect(place: &Place) -> Self {
        Pg {
            client: Client::connect(&place.location, NoTls)
                .expect("PostgreSQL on 127.0.0.1:5432 (see README)"),
            inbox: PostgresInbox::with_table(&place.table).expect("table name"),
            fx: place.effects(),
        }
    }

    fn setup(&mut self) {
        self.inbox.migrate(&mut self.client).expect("migrate");
        self.client
            .batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS \"{}\" (message_id TEXT NOT NULL, worker TEXT NOT NULL)",
                self.fx
            ))
            .expect("effects table");
    }

    fn teardown(place: &Place) {
        if let Ok(mut c) = Client::connect(&place.location, NoTls) {
            let _ = c.batch_execute(&format!(
                "DROP TABLE IF EXISTS \"{}\"; DROP TABLE IF EXISTS \"{}\"",
                place.table,
                place.effects()
            ));
        }
    }

    fn apply(&mut self, id: MessageId, worker: &str, how: How) -> Result<Outcome<()>, Fail> {
        let mut tx = self.client.transaction().map_err(|e| Fail::Db(e.into()))?;
        let fx = self.fx.clone();
        let r = self.inbox.process(&mut tx, id, |tx| {
            Pg::effect(tx, &fx, id, worker)?;
            std::thread::sleep(how.hold);
            if how.fail {
                return Err(Fail::Deliberate);
            }
            Ok(())
        });
        match r {
            Ok(outcome) if !how.abort => {
                tx.commit().map_err(|e| Fail::Db(e.into()))?;
                Ok(outcome)
            }
            other => {
                tx.rollback().map_err(|e| Fail::Db(e.into()))?;
                other
            }
        }
    }

    fn effects(&mut self) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for row in self
            .client
            .query(
                &format!("SELECT message_id, worker FROM \"{}\"", self.fx),
                &[],
            )
            .expect("effects")
        {
            out.entry(row.get(0)).or_default().push(row.get(1));
        }
        out
    }

    fn recorded(&mut self, id: MessageId) -> bool {
        self.inbox.contains(&mut self.client, id).expect("contains")
    }

    fn backdate(&mut self, id: MessageId, by: Duration) {
        let n = self
            .client
            .execute(
                &format!(
                    "UPDATE \"{}\" SET processed_at = processed_at - $2::float8 * interval '1 second' WHERE message_id = $1",
                    self.inbox.table_name()
                ),
                &[id.as_uuid(), &by.as_secs_f64()],
            )
            .expect("backdate");
        assert_eq!(n, 1);
    }

    fn cleanup(&mut self, older_than: Duration, limit: usize) -> u64 {
        self.inbox
            .cleanup(&mut self.client, older_than, limit)
            .expect("cleanup")
    }

    fn inbox_rows(&mut self) -> u64 {
        let row = self
            .client
            .query_one(
                &format!("SELECT count(*) FROM \"{}\"", self.inbox.table_name()),
                &[],
            )
            .expect("count");
        row.get::<_, i64>(0) as u64
    }
}

impl CallerRow for Pg {
    fn create_effects_only(&mut self) {
        self.client
            .batch_execute(&format!(
                "CREATE TABLE \"{}\" (message_id TEXT NOT NULL, worker TEXT NOT NULL)",
                self.fx
            ))
            .expect("effects table");
    }

    fn fail_then_commit(&mut self, id: MessageId) -> Result<Outcome<()>, Fail> {
        let mut tx = self.client.transaction().map_err(|e| Fail::Db(e.into()))?;
        Pg::effect(&mut tx, &self.fx, id, "caller")?;
        let fx = self.fx.clone();
        let r = self.inbox.process(&mut tx, id, |tx| {
            Pg::effect(tx, &fx, id, "handler")?;
            // A failed statement too: PostgreSQL aborts the transaction until the
            // savepoint is rolled back.
            let _ = tx.batch_execute("SELECT 1/0");
            Err(Fail::Deliberate)
        });
        tx.commit().map_err(|e| Fail::Db(e.into()))?;
        r
    }
}

crate::inbox_cases!(Pg, place());

/// Concurrent migrates of one inbox table (consumers starting together) all succeed.
#[test]
fn concurrent_migrates() {
    let place = place();
    let _c = crate::Cleanup::<Pg>::new(&place);
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let place = place.clone();
            std::thread::spawn(move || {
                let mut db = Pg::connect(&place);
                db.inbox.migrate(&mut db.client)
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread").expect("migrate");
    }
}
