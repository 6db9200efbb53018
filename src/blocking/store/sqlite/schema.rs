//! `migrate`: creating the table and upgrading an older or a Go outboxer one.

use super::connection::db;
use super::*;

impl SqliteStore {
    pub(super) fn migrate_in(&self, tx: &Transaction<'_>, now: i64) -> Result<()> {
        let sql = &self.inner.sql;
        let ctx = "migrating the table";
        let cols = tx
            .prepare(&sql.inspect)
            .and_then(|mut s| {
                s.query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?.to_ascii_lowercase(),
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()
            })
            .map_err(db("inspecting the table"))?;
        let has = |name: &str| cols.iter().any(|(c, _, _)| c == name);
        if !cols.is_empty() {
            self.check_shape(&cols)?;
        }
        tx.execute_batch(&sql.create_table).map_err(db(ctx))?;
        let mut added = Vec::new();
        if !cols.is_empty() {
            for (col, stmt) in &sql.add_columns {
                if !has(col) {
                    tx.execute_batch(stmt).map_err(db(ctx))?;
                    added.push(*col);
                }
            }
        }
        if added.contains(&"status") && has("dispatched") {
            // A Go outboxer table: its dispatched rows stay dispatched.
            tx.execute(&sql.upgrade_go_rows, [now])
                .map_err(db("upgrading Go outboxer rows"))?;
        }
        if added.contains(&"created_at") {
            tx.execute(&sql.backfill_created_at, [now])
                .map_err(db("upgrading Go outboxer rows"))?;
        }
        if added.contains(&"message_id") {
            // SQLite cannot make a UUID; old rows get a random (v4) one here.
            let ids = tx
                .prepare(&sql.missing_message_ids)
                .and_then(|mut s| {
                    s.query_map([], |r| r.get::<_, i64>(0))?
                        .collect::<rusqlite::Result<Vec<_>>>()
                })
                .map_err(db("upgrading Go outboxer rows"))?;
            let mut set = tx
                .prepare(&sql.set_message_id)
                .map_err(db("upgrading Go outboxer rows"))?;
            for id in ids {
                set.execute(params![id, uuid::Uuid::new_v4().as_bytes().as_slice()])
                    .map_err(db("upgrading Go outboxer rows"))?;
            }
        }
        for stmt in &sql.indexes {
            tx.execute_batch(stmt).map_err(db("creating indexes"))?;
        }
        if !added.is_empty() {
            log::info!(
                "outboxer: upgraded table {} in {} (added {})",
                self.inner.table.plain(),
                self.inner.path.display(),
                added.join(", ")
            );
        }
        Ok(())
    }

    /// An existing table must be one we can upgrade: its `id` must be the rowid (so
    /// inserts number rows in order) and it must have a payload.
    fn check_shape(&self, cols: &[(String, String, i64)]) -> Result<()> {
        let keys: Vec<&(String, String, i64)> = cols.iter().filter(|c| c.2 > 0).collect();
        let rowid_id =
            matches!(keys.as_slice(), [(name, ty, _)] if name == "id" && ty == "INTEGER");
        if !rowid_id || !cols.iter().any(|c| c.0 == "payload") {
            return Err(Error::config(
                "table",
                format!(
                    "{} exists but is not an outbox table: it needs `id INTEGER PRIMARY KEY` and `payload`",
                    self.inner.table.plain()
                ),
            ));
        }
        Ok(())
    }
}
