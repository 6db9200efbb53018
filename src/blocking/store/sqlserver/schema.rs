//! `migrate`: creating the table and upgrading an older or a Go outboxer one.

use super::*;

impl SqlServerStore {
    pub(super) fn migrate_in(&self, conn: &mut Conn<'_>) -> Result<()> {
        let sql = &self.inner.sql;
        let table = sql.table();
        let one = |s: &str| {
            let mut query = Query::new(s.to_string());
            query.bind(table);
            query
        };

        let mut lock = Query::new(sql.migrate_lock.as_str());
        lock.bind(sql.migrate_resource.as_str());
        lock.bind(q::MIGRATE_LOCK_TIMEOUT_MS);
        let status = conn
            .rows("locking for migrate", lock)?
            .first()
            .and_then(|r| r.get::<i32, _>(0))
            .unwrap_or(-999);
        if status < 0 {
            return Err(Error::db(
                "locking for migrate",
                format!(
                    "sp_getapplock returned {status} (-1: another migrate held the lock for {} s)",
                    q::MIGRATE_LOCK_TIMEOUT_MS / 1000
                ),
            ));
        }

        let rows = conn.rows("inspecting the table", one(&sql.inspect))?;
        let row = rows
            .first()
            .ok_or_else(|| Error::db("inspecting the table", "no row"))?;
        let flag = |i: usize| row.get::<i32, _>(i).unwrap_or(0) == 1;
        let text = |i: usize| row.get::<&str, _>(i).unwrap_or("").to_ascii_lowercase();
        let (exists, has_status, has_dispatched) = (flag(0), flag(1), flag(2));
        let (id_type, dispatched_at_type) = (text(3), text(4));
        let go = exists && has_dispatched;

        conn.exec("creating the table", one(&sql.create_table))?;
        if go && id_type == "int" {
            // A Go outboxer table: widen its INT id, keeping its rows and identity.
            conn.exec("upgrading the Go outboxer table", one(&sql.widen_id[0]))?;
            for stmt in &sql.widen_id[1..] {
                conn.exec("upgrading the Go outboxer table", Query::new(stmt.as_str()))?;
            }
        }
        if exists && dispatched_at_type == "datetime" {
            conn.exec(
                "upgrading the Go outboxer table",
                Query::new(sql.widen_dispatched_at.as_str()),
            )?;
        }
        conn.exec("adding columns", one(&sql.add_columns))?;
        if go && !has_status {
            conn.exec(
                "upgrading Go outboxer rows",
                Query::new(sql.upgrade_go_rows.as_str()),
            )?;
        }
        for (name, stmt) in &sql.indexes {
            let mut query = one(stmt);
            query.bind(name.as_str());
            conn.exec("creating indexes", query)?;
        }
        for (name, stmt) in &sql.drop_indexes {
            let mut query = one(stmt);
            query.bind(name.as_str());
            conn.exec("dropping old indexes", query)?;
        }
        if go {
            log::info!(
                "outboxer: upgraded Go outboxer table {}",
                self.inner.table.plain()
            );
        }
        Ok(())
    }
}
