use super::*;

fn sql() -> SqlServerSql {
    SqlServerSql::new(&TableName::parse("app.events").expect("valid"))
}

/// Every statement a relay or an enqueue sends.
fn dml(s: &SqlServerSql) -> Vec<String> {
    vec![
        s.claim.clone(),
        s.cleanup.clone(),
        s.requeue_all.clone(),
        s.requeue_matching.clone(),
        s.stats.clone(),
        s.attempts_histogram.clone(),
        s.parked.clone(),
        s.purge_parked.clone(),
        s.purgeable.clone(),
        s.enqueue(2, 3, true),
        s.enqueue(0, 1, false),
        s.mark_dispatched(4),
        s.mark_failed(2),
        s.release(2),
        s.requeue_ids(8),
        s.skip(2),
        s.held_keys.clone(),
        s.migrate_lock.clone(),
        s.inspect.clone(),
    ]
}

/// The string literals of a statement.
fn literals(stmt: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut parts = stmt.split('\'');
    parts.next();
    while let Some(lit) = parts.next() {
        out.push(lit.to_string());
        parts.next();
    }
    out
}

#[test]
fn only_sql_server_2017_forms() {
    let s = sql();
    let mut all = dml(&s);
    all.extend(s.widen_id.iter().cloned());
    all.extend(s.indexes.iter().map(|(_, i)| i.clone()));
    all.extend(s.drop_indexes.iter().map(|(_, i)| i.clone()));
    all.push(s.create_table.clone());
    all.push(s.add_columns.clone());
    all.push(s.upgrade_go_rows.clone());
    for stmt in &all {
        let up = stmt.to_ascii_uppercase();
        for banned in [
            "LIMIT ",
            "RETURNING",
            "FOR UPDATE",
            "SKIP LOCKED",
            "$1",
            "::",
            "NOW()",
            "ILIKE",
            "OPENJSON",
            "STRING_SPLIT",
            "GREATEST(",
            "LEAST(",
            "STRING_AGG",
            "TABLE IF",
            "INDEX IF",
            "ADD COLUMN",
            "\"",
            "`",
            "CREATE OR ALTER",
        ] {
            assert!(!up.contains(banned), "{banned} in {stmt}");
        }
        // Row limits are TOP (@param) only.
        if up.contains("TOP") {
            assert!(up.contains("TOP (@P"), "{stmt}");
        }
    }
}

#[test]
fn claim_locks_skips_and_orders() {
    let s = sql();
    let c = &s.claim;
    assert!(
        c.contains("FROM [app].[events] AS e WITH (UPDLOCK, ROWLOCK, READPAST)"),
        "{c}"
    );
    assert!(c.contains("SELECT TOP (@P1)"));
    assert!(c.contains("ORDER BY e.id"));
    assert!(c.contains("OUTPUT inserted.id, inserted.message_id"));
    assert!(c.contains("UPDATE u SET locked_by = @P2"));
    assert!(c.contains("FROM [app].[events] AS u JOIN w ON u.id = w.id"));
    assert!(c.contains("WHERE (w.nth = 1 AND @P5 = 1) OR w.running <= @P4;"));
    assert!(c.contains("@P3 % 1000"));
    // The key-head check sees rows locked by others: no READPAST on its scan.
    let not_exists = &c[c.find("NOT EXISTS").expect("key check")..];
    let inner = &not_exists[..not_exists.find("ORDER BY").expect("order")];
    assert!(inner.contains("FROM [app].[events] AS p\n"), "{inner}");
    assert!(
        !inner.contains("READPAST") && !inner.contains("NOLOCK"),
        "{inner}"
    );
    assert_eq!(c.matches("READPAST").count(), 1);
    assert!(c.starts_with("SET TRANSACTION ISOLATION LEVEL READ COMMITTED;"));
}

#[test]
fn every_value_is_a_parameter() {
    let s = sql();
    let allowed = [
        "pending",
        "dispatched",
        "parked",
        "skipped",
        "Exclusive",
        "Transaction",
        "1970-01-01T00:00:00",
        "U",
        "status",
        "dispatched_at",
        "dispatched",
        "id",
        "PK",
        "",
        "outboxer: could not lock an ordering key (sp_getapplock)",
    ];
    for stmt in dml(&s) {
        for lit in literals(&stmt) {
            assert!(allowed.contains(&lit.as_str()), "literal {lit:?} in {stmt}");
        }
        let takes_values = stmt != s.requeue_all && stmt != s.stats && stmt != s.attempts_histogram;
        assert_eq!(stmt.contains("@P"), takes_values, "{stmt}");
    }
    assert!(s
        .mark_dispatched(3)
        .contains("WHERE id IN (@P1, @P2, @P3) AND locked_by = @P4"));
    assert!(s.release(1).contains("id IN (@P1) AND locked_by = @P2"));
    assert!(s
        .release(1)
        .contains("CAST(@P3 / 1000 AS INT), SYSUTCDATETIME()"));
    let f = s.mark_failed(2);
    assert!(
        f.contains("(VALUES (@P1, @P2, @P3, @P4, @P5), (@P6, @P7, @P8, @P9, @P10))"),
        "{f}"
    );
    assert!(f.contains("u.locked_by = @P11"));
    assert!(s
        .cleanup
        .contains("SELECT TOP (@P2) id FROM [app].[events] WITH (ROWLOCK, READPAST)"));
    assert!(s.cleanup.contains("DELETE FROM d"));
}

#[test]
fn enqueue_locks_keys_then_inserts_in_order() {
    let s = sql();
    let one = s.enqueue(0, 1, true);
    assert_eq!(
            one,
            "BEGIN TRAN;\nINSERT INTO [app].[events] (message_id, payload, headers, options, ordering_key, available_at) \
             VALUES (@P1, @P2, @P3, @P4, @P5, DATEADD(MILLISECOND, CAST(@P6 % 1000 AS INT), \
             DATEADD(SECOND, CAST(@P6 / 1000 AS INT), SYSUTCDATETIME())));\nCOMMIT TRAN;"
        );
    let many = s.enqueue(2, 3, false);
    assert!(!many.contains("BEGIN TRAN") && !many.contains("COMMIT"));
    assert_eq!(many.matches("sp_getapplock @Resource = @P").count(), 2);
    assert!(many.contains("@LockOwner = 'Transaction'"));
    assert!(many.contains("IF @r < 0 THROW"));
    assert!(many.find("@P2, @LockMode").expect("lock") < many.find("INSERT").expect("insert"));
    assert!(many.contains("(@P3, @P4, @P5, @P6, @P7, @P8, 0)"), "{many}");
    assert!(
        many.contains("(@P15, @P16, @P17, @P18, @P19, @P20, 2)"),
        "{many}"
    );
    assert!(
        many.contains("CAST(v.delay_ms / 1000 AS INT), SYSUTCDATETIME())"),
        "{many}"
    );
    assert!(many.contains("ORDER BY v.n"));
    assert!(fits_one_request(0, MAX_INSERT_ROWS));
    assert!(!fits_one_request(0, MAX_INSERT_ROWS + 1));
    assert!(!fits_one_request(1000, 250));
}

#[test]
fn migrate_is_guarded_and_quoted() {
    let s = sql();
    assert!(s
        .create_table
        .starts_with("IF OBJECT_ID(@P1, N'U') IS NULL CREATE TABLE [app].[events]"));
    assert!(s.create_table.contains("BIGINT IDENTITY(1,1)"));
    assert!(s
        .create_table
        .contains("CONSTRAINT [events_pkey] PRIMARY KEY"));
    assert_eq!(s.add_columns.matches("IF COL_LENGTH(@P1, N'").count(), 9);
    assert!(s
        .add_columns
        .contains("ADD message_id UNIQUEIDENTIFIER NOT NULL"));
    assert_eq!(s.indexes.len(), 5);
    assert_eq!(s.drop_indexes.len(), 1);
    assert!(s.drop_indexes[0]
        .1
        .contains("DROP INDEX [events_pending_key_idx] ON [app].[events]"));
    for (name, stmt) in &s.indexes {
        assert!(
            stmt.starts_with("IF NOT EXISTS (SELECT 1 FROM sys.indexes"),
            "{stmt}"
        );
        assert!(
            stmt.contains(&format!("CREATE INDEX [{name}] ON [app].[events]")),
            "{stmt}"
        );
        // Filtered: SQL Server takes comparisons and `IN (constants)` there.
        assert!(stmt.contains(" WHERE status "), "filtered: {stmt}");
    }
    assert!(s
        .migrate_lock
        .contains("@LockOwner = 'Transaction', @LockTimeout = @P2"));
    assert_eq!(s.migrate_resource, "outboxer:migrate:app.events");
    assert!(s.widen_id[1].contains("ALTER COLUMN id BIGINT NOT NULL"));
    assert!(s.upgrade_go_rows.contains("WHERE dispatched = 1"));
    assert_eq!(s.table(), "[app].[events]");
    let plain = SqlServerSql::new(&TableName::default());
    assert_eq!(plain.table(), "[event_store]");
}

#[test]
fn key_resources_are_short_stable_and_per_table() {
    let s = sql();
    let long = "k".repeat(5000);
    let r = s.key_resource(&long);
    assert!(r.len() < 255, "{r}");
    assert_eq!(r, s.key_resource(&long));
    assert_ne!(s.key_resource("a"), s.key_resource("b"));
    assert!(s.key_resource("a").starts_with("outboxer:key:app.events:"));
    let other = SqlServerSql::new(&TableName::default());
    assert_ne!(other.key_resource("a"), s.key_resource("a"));
    assert_eq!(lock_keys(0), "");
}

#[test]
fn buckets_and_delays() {
    assert_eq!(id_bucket(1), 1);
    assert_eq!(id_bucket(3), 4);
    assert_eq!(id_bucket(1000), 1024);
    assert_eq!(id_bucket(5000), MAX_IDS);
    assert_eq!(pad_ids(&[5, 6, 7]), vec![5, 6, 7, 7]);
    assert!(pad_ids(&[]).is_empty());
    assert_eq!(delay_ms(Duration::from_millis(1500)), 1500);
    assert_eq!(delay_ms(Duration::MAX), MAX_DELAY_MS);
    assert!(ordering_key_fits(&"é".repeat(800)));
    assert!(
        !ordering_key_fits(&"🎉".repeat(401)),
        "surrogate pairs count twice"
    );
}
