// Over 800 lines on purpose: 13 long end-to-end runs of the binary, each its own scenario; topic modules would rename every test (cli::<case>).
//! The `outboxer` command, run as a user runs it: the built binary against the real
//! PostgreSQL, MariaDB and RabbitMQ on 127.0.0.1. Rows are written with plain SQL,
//! as a non-Rust application writes them; deliveries are checked with a RabbitMQ
//! consumer.
#![cfg(feature = "cli")]

mod common;

use common::*;
use outboxer::store::mysql::{self, prelude::Queryable};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_outboxer");

fn mysql_url() -> String {
    std::env::var("OUTBOXER_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into())
}

/// PostgreSQL with a password the server (trust auth) ignores: it must never be printed.
fn pg_url_with_secret() -> String {
    pg_url().replacen("postgres@", "postgres:pg-s3cret-pw@", 1)
}

/// The binary with no OUTBOXER_* variables from the test's environment.
fn outboxer() -> Command {
    let mut c = Command::new(BIN);
    for (k, _) in std::env::vars() {
        if k.starts_with("OUTBOXER_") {
            c.env_remove(k);
        }
    }
    c.env("OUTBOXER_LOG", "info");
    c
}

/// Runs to completion; a command that has not ended after 120 s is killed and
/// fails the test (a one-shot command must never turn into a running relay).
fn run(args: &[&str]) -> Output {
    let mut cmd = outboxer();
    cmd.args(args);
    common::run_to_end(cmd, Duration::from_secs(120))
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs and expects success; returns stdout.
fn ok(args: &[&str]) -> String {
    let o = run(args);
    assert!(o.status.success(), "{args:?}: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stats_json(store: &str, table: &str) -> serde_json::Value {
    let out = ok(&["stats", "--store", store, "--table", table, "--json"]);
    serde_json::from_str(out.trim()).expect("stats --json is JSON")
}

fn counts(v: &serde_json::Value) -> (u64, u64, u64, u64) {
    let n = |k: &str| v[k].as_u64().unwrap_or(u64::MAX);
    (n("pending"), n("leased"), n("dispatched"), n("parked"))
}

/// A running `outboxer relay` whose stderr is collected.
struct RelayProc {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl RelayProc {
    fn spawn(mut cmd: Command) -> RelayProc {
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn relay");
        let log = Arc::new(Mutex::new(String::new()));
        let (stderr, sink) = (child.stderr.take().expect("stderr"), Arc::clone(&log));
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(mut l) = sink.lock() {
                    l.push_str(&line);
                    l.push('\n');
                }
            }
        });
        let r = RelayProc { child, log };
        r.wait_for_log("relay started", Duration::from_secs(30));
        r
    }

    fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    fn wait_for_log(&self, what: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.log().contains(what) {
            assert!(Instant::now() < deadline, "no `{what}` in:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the process to end by itself; returns its status and log.
    fn wait_exit(mut self, within: Duration) -> (std::process::ExitStatus, String) {
        let deadline = Instant::now() + within;
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "relay still running:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        std::thread::sleep(Duration::from_millis(100)); // the reader thread drains stderr
        (status, self.log())
    }

    /// SIGTERM, then waits for a clean exit; returns the log.
    fn terminate(self) -> String {
        let st = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(st.success());
        let (status, log) = self.wait_exit(Duration::from_secs(60));
        assert!(status.success(), "exit {status:?}:\n{log}");
        assert!(log.contains("relay stopped"), "{log}");
        log
    }
}

impl Drop for RelayProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn relay_cmd(store: &str, table: &str, extra: &[&str]) -> Command {
    let mut c = outboxer();
    c.args([
        "relay",
        "--store",
        store,
        "--table",
        table,
        "--stream",
        &amqp_url(),
        "--check-interval",
        "50ms",
        "--lease",
        "10s",
    ])
    .args(extra);
    c
}

/// `n` messages written as a non-Rust application writes them (README, "Writing
/// messages without the library"): payload `m1..mN`, routed to `exchange`.
fn pg_insert(table: &str, exchange: &str, n: i64) {
    pg_insert_from(table, exchange, 1, n);
}

/// Messages `m{from}..=m{to}`, as [`pg_insert`] writes them.
fn pg_insert_from(table: &str, exchange: &str, from: i64, to: i64) {
    pg().execute(
        &format!(
            "INSERT INTO \"{table}\" (payload, options, headers)
             SELECT convert_to('m' || g, 'UTF8'),
                    jsonb_build_object('exchange.name', $1::text, 'exchange.type', 'topic', 'routing_key', 'orders.paid'),
                    '{{\"source\": \"sql\"}}'::jsonb
             FROM generate_series($2::bigint, $3::bigint) AS g"
        ),
        &[&exchange, &from, &to],
    )
    .expect("plain SQL insert");
}

fn my_conn() -> mysql::PooledConn {
    mysql::Pool::new(mysql_url().as_str())
        .and_then(|p| p.get_conn())
        .expect("MariaDB on 127.0.0.1:3306 (see README)")
}

fn my_insert(table: &str, exchange: &str, n: usize) {
    let mut c = my_conn();
    let rows: Vec<(Vec<u8>, String)> = (1..=n)
        .map(|i| {
            (
                format!("m{i}").into_bytes(),
                format!(r#"{{"exchange.name": "{exchange}", "routing_key": "orders.paid"}}"#),
            )
        })
        .collect();
    c.exec_batch(
        format!(
            "INSERT INTO `{table}` (message_id, payload, options) \
             VALUES (UNHEX(REPLACE(UUID(), '-', '')), ?, ?)"
        ),
        rows,
    )
    .expect("plain SQL insert");
}

fn my_drop(table: &str) {
    let _ = my_conn().query_drop(format!("DROP TABLE IF EXISTS `{table}`, `{table}_keys`"));
}

/// Every body m1..mN delivered at least once; returns the most deliveries of one body.
fn all_delivered(got: &[Got], n: usize) -> usize {
    let mut per_body = std::collections::HashMap::new();
    for g in got {
        *per_body.entry(g.body.clone()).or_insert(0usize) += 1;
    }
    for i in 1..=n {
        assert!(
            per_body.contains_key(format!("m{i}").as_bytes()),
            "m{i} never delivered ({} of {n} bodies)",
            per_body.len()
        );
    }
    per_body.values().copied().max().unwrap_or(0)
}

#[test]
fn migrate_is_idempotent_and_stats_json_counts() {
    let table = unique("cli_stats");
    let store = pg_url_with_secret();
    for _ in 0..2 {
        let out = ok(&["migrate", "--store", &store, "--table", &table]);
        assert!(out.contains("migrated table"), "{out}");
        assert!(
            !out.contains("pg-s3cret-pw") && out.contains("***"),
            "{out}"
        );
    }
    pg_insert(&table, "nowhere", 6);
    pg().batch_execute(&format!(
        "UPDATE \"{table}\" SET status = 'dispatched', dispatched_at = now() WHERE payload IN ('m1', 'm2');
         UPDATE \"{table}\" SET status = 'parked', attempts = 10, last_error = 'NOT_FOUND - no exchange' WHERE payload = 'm3';
         UPDATE \"{table}\" SET attempts = 2, locked_by = gen_random_uuid(), locked_until = now() + interval '1 hour' WHERE payload = 'm4';
         UPDATE \"{table}\" SET available_at = now() + interval '1 hour' WHERE payload = 'm5';"
    ))
    .expect("shape rows");
    let v = stats_json(&store, &table);
    assert_eq!(counts(&v), (3, 1, 2, 1), "{v}");
    assert_eq!(v["scheduled"], 1, "{v}");
    let due = v["next_due_in_secs"].as_f64().unwrap_or(0.0);
    assert!(due > 3500.0 && due <= 3600.0, "{v}");
    let text = ok(&["stats", "--store", &store, "--table", &table]);
    assert!(text.contains("scheduled   1 (next due in "), "{text}");
    assert_eq!(v["table"], table.as_str());
    assert!(!v.to_string().contains("pg-s3cret-pw"), "{v}");
    assert!(v["oldest_pending_age_secs"].as_f64().is_some(), "{v}");
    assert_eq!(
        v["attempts_histogram"],
        serde_json::json!([{"attempts": 0, "count": 2}, {"attempts": 2, "count": 1}, {"attempts": 10, "count": 1}])
    );
    let parked = &v["parked_messages"][0];
    assert_eq!(parked["attempts"], 10);
    assert_eq!(parked["last_error"], "NOT_FOUND - no exchange");
    assert_eq!(parked["message_id"].as_str().map(str::len), Some(36));

    // Flags win over OUTBOXER_* variables.
    let o = outboxer()
        .args(["stats", "--json", "--table", &table])
        .env("OUTBOXER_STORE", &store)
        .env("OUTBOXER_TABLE", "no_such_table")
        .output()
        .expect("run");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(
        (v["table"].as_str(), counts(&v)),
        (Some(table.as_str()), (3, 1, 2, 1))
    );

    // The human form and --watch (one JSON line per refresh).
    let human = ok(&["stats", "--store", &store, "--table", &table]);
    assert!(
        human.contains("parked      1") && human.contains("NOT_FOUND - no exchange"),
        "{human}"
    );
    let watched = ok(&[
        "stats", "--store", &store, "--table", &table, "--json", "--watch", "0.2", "--count", "3",
    ]);
    let lines: Vec<serde_json::Value> = watched
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(lines.len(), 3);
    drop_table(&table);
}

#[test]
fn relay_delivers_plain_sql_rows_with_toml_and_env_settings() {
    let table = unique("cli_relay");
    let ex = unique("ex");
    let sink = Sink::new(&ex, "orders.#");
    let dir = std::env::temp_dir().join(unique("cli_cfg"));
    std::fs::create_dir_all(&dir).expect("dir");
    let config = dir.join("outboxer.toml");
    // The file names the store and a table that the environment overrides.
    std::fs::write(
        &config,
        format!(
            "store = \"{}\"\ntable = \"not_this_one\"\nmigrate = true\nbatch_size = 100\ncheck_interval = \"50ms\"\nlog_interval = \"200ms\"\n",
            pg_url_with_secret()
        ),
    )
    .expect("write config");
    let relay = RelayProc::spawn({
        let mut c = outboxer();
        c.arg("relay")
            .env("OUTBOXER_CONFIG", &config)
            .env("OUTBOXER_TABLE", &table)
            .env("OUTBOXER_STREAM", amqp_url());
        c
    });
    pg_insert(&table, &ex, 300);
    let got = sink.collect(300, Duration::from_secs(60));
    assert_eq!(all_delivered(&got, 300), 1, "each delivered once");
    assert_eq!(got[0].routing_key, "orders.paid");
    assert_eq!(
        got[0].headers.get("source").map(String::as_str),
        Some("sql")
    );
    relay.wait_for_log("published", Duration::from_secs(10));
    let log = relay.terminate();
    assert!(log.contains(&format!("table {table}")), "{log}");
    assert!(
        !log.contains("pg-s3cret-pw") && !log.contains("guest:guest"),
        "{log}"
    );
    let v = stats_json(&pg_url(), &table);
    assert_eq!(counts(&v), (0, 0, 0, 0), "dispatched rows deleted: {v}");
    assert!(
        !pg()
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM information_schema.tables WHERE table_name = 'not_this_one')",
                &[]
            )
            .expect("query")
            .get::<_, bool>(0),
        "the environment's table wins over the file's"
    );
    let _ = std::fs::remove_dir_all(&dir);
    drop_table(&table);
}

#[test]
fn sigterm_mid_stream_loses_nothing_mariadb() {
    let table = unique("cli_term");
    let ex = unique("ex");
    let sink = Sink::new(&ex, "#");
    let store = mysql_url();
    ok(&["migrate", "--store", &store, "--table", &table]);
    let n = 3000;
    my_insert(&table, &ex, n);
    // Small batches: the backlog takes a while, so the signal lands mid-stream.
    // Dispatched rows kept, to count them.
    let keep = ["--cleanup-before", "1h"];
    let first = RelayProc::spawn(relay_cmd(
        &store,
        &table,
        &["--batch-size", "20", keep[0], keep[1]],
    ));
    let mut got = sink.collect(200, Duration::from_secs(60));
    assert!(got.len() >= 200, "first relay is publishing");
    let log = first.terminate();
    let v = stats_json(&store, &table);
    let (pending, leased, dispatched, parked) = counts(&v);
    assert_eq!(leased, 0, "no lease left behind: {v}\n{log}");
    assert_eq!(parked, 0, "{v}");
    assert!(pending > 0, "stopped mid-stream: {v}");
    assert_eq!(pending + dispatched, n as u64, "{v}");
    let second = RelayProc::spawn(relay_cmd(&store, &table, &keep));
    sink.collect_into(&mut got, n, Duration::from_secs(120));
    all_delivered(&got, n);
    second.terminate();
    assert_eq!(counts(&stats_json(&store, &table)), (0, 0, n as u64, 0));
    my_drop(&table);
}

#[test]
fn two_relay_processes_cooperate_without_duplicates() {
    let table = unique("cli_two");
    let ex = unique("ex");
    let sink = Sink::new(&ex, "#");
    let store = pg_url();
    ok(&["migrate", "--store", &store, "--table", &table]);
    let n = 4000;
    let a = RelayProc::spawn(relay_cmd(&store, &table, &["--batch-size", "50"]));
    let b = RelayProc::spawn(relay_cmd(&store, &table, &["--batch-size", "50"]));
    pg_insert(&table, &ex, n as i64);
    let mut got = sink.collect(n, Duration::from_secs(120));
    got.extend(sink.drain(Duration::from_millis(500)));
    assert_eq!(all_delivered(&got, n), 1, "no message published twice");
    assert_eq!(got.len(), n);
    let (la, lb) = (a.terminate(), b.terminate());
    // Both took part (each logs its totals when it stops).
    for log in [&la, &lb] {
        assert!(!log.contains("published 0,"), "a relay idled:\n{log}");
    }
    assert_eq!(counts(&stats_json(&store, &table)), (0, 0, 0, 0));
    drop_table(&table);
}

#[test]
fn requeue_and_purge_change_the_counts_mariadb() {
    let table = unique("cli_admin");
    let store = mysql_url();
    ok(&["migrate", "--store", &store, "--table", &table]);
    my_insert(&table, "nowhere", 6);
    my_conn()
        .query_drop(format!(
            "UPDATE `{table}` SET status = 'parked', attempts = 10, last_error = 'boom' WHERE payload IN ('m1', 'm2', 'm3');
             UPDATE `{table}` SET status = 'dispatched', dispatched_at = NOW(6) - INTERVAL 10 DAY WHERE payload = 'm4';
             UPDATE `{table}` SET status = 'dispatched', dispatched_at = NOW(6) - INTERVAL 1 HOUR WHERE payload = 'm5';"
        ))
        .expect("shape rows");
    let v = stats_json(&store, &table);
    assert_eq!(counts(&v), (1, 0, 2, 3), "{v}");
    let first_parked = v["parked_messages"][0]["id"].as_i64().expect("id");

    let out = ok(&[
        "requeue",
        "--store",
        &store,
        "--table",
        &table,
        "--id",
        &first_parked.to_string(),
    ]);
    assert!(out.contains("requeued 1 "), "{out}");
    assert_eq!(counts(&stats_json(&store, &table)), (2, 0, 2, 2));
    let out = ok(&[
        "requeue",
        "--store",
        &store,
        "--table",
        &table,
        "--all-parked",
    ]);
    assert!(out.contains("requeued 2 "), "{out}");
    let v = stats_json(&store, &table);
    assert_eq!(counts(&v), (4, 0, 2, 0), "{v}");
    assert_eq!(
        v["attempts_histogram"],
        serde_json::json!([{"attempts": 0, "count": 4}])
    );

    let out = ok(&[
        "purge", "--store", &store, "--table", &table, "--before", "7d",
    ]);
    assert!(out.contains("purged 1 "), "{out}");
    assert_eq!(counts(&stats_json(&store, &table)), (4, 0, 1, 0));
    // An RFC 3339 time in the future: every dispatched row, never a pending one.
    let out = ok(&[
        "purge",
        "--store",
        &store,
        "--table",
        &table,
        "--before",
        "2999-01-01T00:00:00Z",
    ]);
    assert!(out.contains("purged 1 "), "{out}");
    assert_eq!(counts(&stats_json(&store, &table)), (4, 0, 0, 0));

    // Parked rows go only with --include-parked, and only old enough ones.
    my_conn()
        .query_drop(format!(
            "UPDATE `{table}` SET status = 'parked', attempts = 10 WHERE payload IN ('m1', 'm2');
             UPDATE `{table}` SET created_at = NOW(6) - INTERVAL 10 DAY WHERE payload IN ('m1', 'm3')"
        ))
        .expect("park");
    let out = ok(&[
        "purge", "--store", &store, "--table", &table, "--before", "7d",
    ]);
    assert!(
        out.contains("purged 0 dispatched") && !out.contains("parked"),
        "{out}"
    );
    assert_eq!(counts(&stats_json(&store, &table)), (2, 0, 0, 2));
    let out = ok(&[
        "purge",
        "--store",
        &store,
        "--table",
        &table,
        "--before",
        "7d",
        "--include-parked",
    ]);
    assert!(out.contains("purged 1 parked"), "{out}");
    // m3 is old but pending: it stays.
    assert_eq!(counts(&stats_json(&store, &table)), (2, 0, 0, 1));
    my_drop(&table);
}

/// Held keys in `stats`, `skip` giving a head up (and refusing an id that is not
/// parked), `requeue` putting a head back first; rows written by plain SQL.
#[test]
fn stats_lists_held_keys_and_skip_gives_a_head_up() {
    let table = unique("cli_skip");
    let store = pg_url();
    ok(&["migrate", "--store", &store, "--table", &table]);
    let id_of = |payload: &str| -> i64 {
        pg().query_one(
            &format!("SELECT id FROM \"{table}\" WHERE payload = convert_to($1, 'UTF8')"),
            &[&payload],
        )
        .expect("row")
        .get(0)
    };
    let mut c = pg();
    for (payload, key) in [
        ("k1 a", Some("k1")),
        ("k1 b", Some("k1")),
        ("k1 c", Some("k1")),
        ("k2 a", Some("k2")),
        ("m", None),
        ("k3 a", Some("k3")),
        ("k3 b", Some("k3")),
    ] {
        c.execute(
            &format!("INSERT INTO \"{table}\" (payload, ordering_key) VALUES (convert_to($1, 'UTF8'), $2)"),
            &[&payload, &key],
        )
        .expect("plain SQL insert");
    }
    c.batch_execute(&format!(
        "UPDATE \"{table}\" SET status = 'parked', attempts = 10, last_error = 'NOT_FOUND - no exchange' \
         WHERE payload IN ('k1 a', 'm', 'k3 a')"
    ))
    .expect("park");
    let (k1a, k2a, m, k3a) = (id_of("k1 a"), id_of("k2 a"), id_of("m"), id_of("k3 a"));

    let v = stats_json(&store, &table);
    assert_eq!(
        (v["parked"].as_u64(), v["held_keys"].as_u64()),
        (Some(3), Some(2)),
        "{v}"
    );
    let heads = &v["held_key_heads"];
    assert_eq!(heads[0]["ordering_key"], "k1", "{v}");
    assert_eq!(heads[0]["parked_id"], k1a);
    assert_eq!(heads[0]["waiting"], 2);
    assert_eq!(heads[0]["last_error"], "NOT_FOUND - no exchange");
    assert_eq!(heads[0]["message_id"].as_str().map(str::len), Some(36));
    assert_eq!(
        (
            heads[1]["ordering_key"].as_str(),
            heads[1]["waiting"].as_u64()
        ),
        (Some("k3"), Some(1))
    );
    let parked = v["parked_messages"].as_array().expect("list");
    let holds: Vec<(i64, bool)> = parked
        .iter()
        .map(|p| {
            (
                p["id"].as_i64().unwrap_or(0),
                p["holds_key"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    assert_eq!(holds, vec![(k1a, true), (m, false), (k3a, true)]);
    let human = ok(&["stats", "--store", &store, "--table", &table]);
    assert!(
        human.contains("held keys   2")
            && human.contains(&format!("key k1  head id {k1a} "))
            && human.contains("waiting 2"),
        "{human}"
    );

    // An id that is not a parked message: refused by name, nothing moves.
    let o = run(&[
        "skip",
        "--store",
        &store,
        "--table",
        &table,
        "--id",
        &k2a.to_string(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains(&format!("id {k2a} is not a parked message")),
        "{}",
        text(&o)
    );
    let out = ok(&[
        "skip",
        "--store",
        &store,
        "--table",
        &table,
        "--id",
        &k1a.to_string(),
    ]);
    assert!(out.contains("skipped 1 parked message(s)"), "{out}");
    let v = stats_json(&store, &table);
    assert_eq!(
        (v["parked"].as_u64(), v["held_keys"].as_u64()),
        (Some(3), Some(1)),
        "{v}"
    );
    assert_eq!(v["held_key_heads"][0]["ordering_key"], "k3");
    let missing = run(&["skip", "--store", &store, "--table", &table]);
    assert_eq!(missing.status.code(), Some(2), "--id is required");

    // Requeue puts k3's head back first; k1's later messages flow past its skipped head.
    ok(&[
        "requeue",
        "--store",
        &store,
        "--table",
        &table,
        "--id",
        &k3a.to_string(),
    ]);
    let s = common::store(&table);
    let l = outboxer::store::Lease::new(Duration::from_secs(30));
    let claimed = outboxer::Store::claim(&s, &l, 100.into())
        .expect("claim")
        .messages;
    let bodies: Vec<String> = claimed
        .iter()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect();
    assert_eq!(bodies, ["k1 b", "k2 a", "k3 a"]);
    drop_table(&table);
}

#[test]
fn sqlite_is_the_default_store() {
    let dir = std::env::temp_dir().join(unique("cli_sqlite"));
    std::fs::create_dir_all(&dir).expect("dir");
    let o = outboxer()
        .arg("migrate")
        .current_dir(&dir)
        .output()
        .expect("run");
    assert!(o.status.success(), "{}", text(&o));
    assert!(dir.join("outboxer.db").exists());
    let o = outboxer()
        .args(["stats", "--json"])
        .current_dir(&dir)
        .output()
        .expect("run");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["store"], "sqlite:outboxer.db");
    assert_eq!(counts(&v), (0, 0, 0, 0));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_flags_urls_and_servers_fail_clearly() {
    let dir = std::env::temp_dir().join(unique("cli_bad"));
    std::fs::create_dir_all(&dir).expect("dir");
    let bad_toml = dir.join("bad.toml");
    std::fs::write(
        &bad_toml,
        "store = \"postgres://u:toml-s3cret@h/db\"\nbatchsize = 5\n",
    )
    .expect("write");
    let bad_toml = bad_toml.to_string_lossy().into_owned();
    let pg = pg_url();
    let amqp = amqp_url();
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (
            vec!["relay", "--batch-size", "many"],
            2,
            "invalid value 'many'",
        ),
        (vec!["frobnicate"], 2, "unrecognized subcommand"),
        (vec!["requeue", "--store", &pg], 2, "--all-parked"),
        (
            vec!["stats", "--store", "redis://u:s3cret@h/0"],
            2,
            "unsupported store `redis://u:***@h/0`",
        ),
        (
            vec!["relay", "--store", &pg, "--stream", "nats://u:s3cret@h"],
            2,
            "unsupported stream",
        ),
        (vec!["relay", "--store", &pg], 2, "a stream is required"),
        (
            vec![
                "relay",
                "--store",
                &pg,
                "--stream",
                // Without `sqs` the stream is refused by name; with it, a bad region
                // (a valid URL would start a relay against AWS itself).
                if cfg!(feature = "sqs") {
                    "sqs://KEY:s3cret@bad_region!"
                } else {
                    "sqs://KEY:s3cret@eu-west-1"
                },
            ],
            2,
            if cfg!(feature = "sqs") {
                "is not an AWS region name"
            } else {
                "stream `sqs` is not compiled in: build with --features cli,sqs"
            },
        ),
        (
            vec![
                "relay",
                "--store",
                &pg,
                "--stream",
                &amqp,
                "--check-interval",
                "soon",
            ],
            2,
            "--check-interval",
        ),
        (
            vec![
                "relay",
                "--store",
                &pg,
                "--stream",
                &amqp,
                "--batch-size",
                "0",
            ],
            2,
            "batch_size",
        ),
        (
            vec!["migrate", "--store", &pg, "--table", "no;such table"],
            2,
            "invalid identifier",
        ),
        (
            vec![
                "relay",
                "--store",
                &pg,
                "--table",
                "cli_never_migrated",
                "--stream",
                &amqp,
            ],
            1,
            "run `outboxer migrate` or pass --migrate",
        ),
        (
            vec!["purge", "--store", &pg, "--before", "yesterday"],
            2,
            "--before",
        ),
        (
            vec!["stats", "--config", &bad_toml],
            2,
            "unknown field `batchsize`",
        ),
        (
            vec!["stats", "--config", "/nonexistent/outboxer.toml"],
            2,
            "cannot read config file",
        ),
        (
            vec!["stats", "--store", "postgres://u:s3cret@127.0.0.1:1/test"],
            1,
            "database error",
        ),
        (
            vec![
                "relay",
                "--store",
                &pg,
                "--stream",
                "amqp://guest:s3cret@127.0.0.1:1/%2f",
            ],
            1,
            "amqp unavailable",
        ),
    ];
    for (args, code, needle) in cases {
        let o = run(&args);
        let all = text(&o);
        assert_eq!(o.status.code(), Some(code), "{args:?}: {all}");
        assert!(
            all.contains(needle),
            "{args:?}: expected `{needle}` in: {all}"
        );
        assert!(!all.contains("s3cret"), "{args:?} leaked a secret: {all}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bench_prints_the_result_line() {
    let table = unique("cli_bench");
    let o = run(&[
        "bench",
        "--store",
        &pg_url(),
        "--table",
        &table,
        "--stream",
        &amqp_url(),
        "--messages",
        "500",
    ]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    let result = out
        .lines()
        .find(|l| l.starts_with("RESULT "))
        .unwrap_or_else(|| panic!("no RESULT line: {out}"));
    let keys: Vec<(&str, f64)> = result["RESULT ".len()..]
        .split(' ')
        .map(|kv| {
            let (k, v) = kv.split_once('=').expect("key=value");
            (k, v.parse().expect("number"))
        })
        .collect();
    assert_eq!(
        keys.iter().map(|k| k.0).collect::<Vec<_>>(),
        ["relay_per_s", "enqueue_per_s", "p50_ms", "p99_ms"]
    );
    assert!(keys.iter().all(|k| k.1 > 0.0), "{result}");
    assert!(out.contains("500 of 500 messages"), "{out}");
    drop_table(&table);
}

#[test]
fn relay_delivers_plain_sql_rows_from_sqlite() {
    let dir = std::env::temp_dir().join(unique("cli_sqlite_relay"));
    std::fs::create_dir_all(&dir).expect("dir");
    let store = format!("sqlite:{}", dir.join("app.db").display());
    let ex = unique("ex");
    let sink = Sink::new(&ex, "#");
    ok(&["migrate", "--store", &store]);
    // The README's INSERT for SQLite: 16 random bytes as message_id, Unix milliseconds.
    let db = outboxer::store::rusqlite::Connection::open(dir.join("app.db")).expect("open");
    for i in 1..=50 {
        db.execute(
            "INSERT INTO event_store (message_id, payload, headers, options, created_at, available_at)
             VALUES (randomblob(16), CAST(?1 AS BLOB), '{\"source\": \"sql\"}', ?2,
                     CAST(unixepoch('subsec') * 1000 AS INTEGER), CAST(unixepoch('subsec') * 1000 AS INTEGER))",
            (
                format!("m{i}"),
                format!(r#"{{"exchange.name": "{ex}", "routing_key": "k"}}"#),
            ),
        )
        .expect("plain SQL insert");
    }
    let relay = RelayProc::spawn(relay_cmd(&store, "event_store", &[]));
    let got = sink.collect(50, Duration::from_secs(60));
    assert_eq!(all_delivered(&got, 50), 1);
    relay.terminate();
    assert_eq!(counts(&stats_json(&store, "event_store")), (0, 0, 0, 0));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A TCP proxy in front of RabbitMQ that can cut every connection and refuse new
/// ones, so that this test's relay sees an outage without touching the shared broker.
struct TcpProxy {
    port: u16,
    up: Arc<std::sync::atomic::AtomicBool>,
    conns: Arc<Mutex<Vec<std::net::TcpStream>>>,
}

impl TcpProxy {
    fn start(upstream: &str) -> TcpProxy {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let (up2, conns2, upstream) = (Arc::clone(&up), Arc::clone(&conns), upstream.to_string());
        std::thread::spawn(move || {
            for client in listener.incoming().map_while(Result::ok) {
                if !up2.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(server) = std::net::TcpStream::connect(&upstream) else {
                    continue;
                };
                let pairs = [
                    (client.try_clone(), server.try_clone()),
                    (server.try_clone(), client.try_clone()),
                ];
                if let Ok(mut c) = conns2.lock() {
                    c.push(client);
                    c.push(server);
                }
                for pair in pairs {
                    if let (Ok(mut from), Ok(mut to)) = pair {
                        std::thread::spawn(move || {
                            let _ = std::io::copy(&mut from, &mut to);
                            let _ = to.shutdown(std::net::Shutdown::Both);
                        });
                    }
                }
            }
        });
        TcpProxy { port, up, conns }
    }

    fn cut(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        if let Ok(mut c) = self.conns.lock() {
            for s in c.drain(..) {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
        }
    }

    fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

#[test]
fn broker_outage_is_logged_once_per_interval_and_nothing_is_lost() {
    let table = unique("cli_outage");
    let ex = unique("ex");
    let sink = Sink::new(&ex, "#");
    let store = pg_url();
    ok(&["migrate", "--store", &store, "--table", &table]);
    let proxy = TcpProxy::start("127.0.0.1:5672");
    let mut cmd = outboxer();
    cmd.args([
        "relay",
        "--store",
        &store,
        "--table",
        &table,
        "--check-interval",
        "50ms",
        "--log-interval",
        "500ms",
        "--stream",
        &format!("amqp://guest:guest@127.0.0.1:{}/%2f", proxy.port),
    ]);
    let relay = RelayProc::spawn(cmd);
    pg_insert(&table, &ex, 100);
    let mut got = sink.collect(100, Duration::from_secs(30));
    assert_eq!(got.len(), 100);
    proxy.cut();
    pg().execute(
        &format!(
            "INSERT INTO \"{table}\" (payload, options)
             SELECT convert_to('m' || g, 'UTF8'), jsonb_build_object('exchange.name', $1::text, 'routing_key', 'k')
             FROM generate_series(101, 600) AS g"
        ),
        &[&ex],
    )
    .expect("insert during the outage");
    std::thread::sleep(Duration::from_secs(3));
    proxy.restore();
    sink.collect_into(&mut got, 600, Duration::from_secs(60));
    all_delivered(&got, 600);
    let log = relay.terminate();
    let outage_warnings = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("released"))
        .count();
    assert!(
        (1..=12).contains(&outage_warnings),
        "{outage_warnings} outage warnings for a 3 s outage:\n{log}"
    );
    assert_eq!(counts(&stats_json(&store, &table)), (0, 0, 0, 0));
    drop_table(&table);
}

/// A relay thread that panics stops the relay cleanly and the process exits
/// non-zero, so that a supervisor restarts it; the restarted relay delivers
/// everything. (The panic is injected by a failpoint of debug builds.)
#[test]
fn a_panicking_relay_exits_non_zero_and_a_restart_delivers_everything() {
    let table = unique("cli_panic");
    let ex = unique("ex");
    let sink = Sink::new(&ex, "orders.#");
    ok(&["migrate", "--store", &pg_url(), "--table", &table]);
    pg_insert(&table, &ex, 50);
    let mut c = relay_cmd(&pg_url(), &table, &["--batch-size", "10"]);
    c.env("OUTBOXER_FAILPOINT", "publish-panic-after=2");
    let (status, log) = RelayProc::spawn(c).wait_exit(Duration::from_secs(60));
    assert_eq!(status.code(), Some(1), "exit code 1:\n{log}");
    assert!(log.contains("panicked"), "{log}");
    let leased: i64 = pg()
        .query_one(
            &format!("SELECT count(*) FROM \"{table}\" WHERE status = 'pending' AND locked_by IS NOT NULL"),
            &[],
        )
        .expect("leased")
        .get(0);
    assert_eq!(leased, 0, "claims released before exiting");
    let relay = RelayProc::spawn(relay_cmd(&pg_url(), &table, &[]));
    let got = sink.collect(50, Duration::from_secs(60));
    assert_eq!(all_delivered(&got, 50), 1, "all delivered at least once");
    relay.terminate();
    drop_table(&table);
}

/// Issue 12's acceptance: a table holding one row of each bad kind among 1000
/// good rows, all written by plain SQL. The relay delivers the 1000 within 10 s
/// and parks exactly the bad rows; nothing is left pending.
#[test]
fn bad_rows_and_refused_messages_park_alone_while_1000_good_ones_flow() {
    let table = unique("cli_bad");
    let ex = unique("ex");
    let clash = unique("clash");
    let sink = Sink::new(&ex, "orders.#");
    // An exchange of another type than the bad row asks for.
    {
        let mut conn = amiquip::Connection::insecure_open(&amqp_url()).expect("amqp");
        let ch = conn.open_channel(None).expect("channel");
        ch.exchange_declare(
            amiquip::ExchangeType::Direct,
            clash.as_str(),
            amiquip::ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
        )
        .expect("declare");
        conn.close().expect("close");
    }
    ok(&["migrate", "--store", &pg_url(), "--table", &table]);
    pg_insert(&table, &ex, 500);
    let route = |exchange: &str| {
        format!(
            r#"{{"exchange.name": "{exchange}", "exchange.type": "topic", "routing_key": "orders.paid"}}"#
        )
    };
    // (what is wrong, options, headers): rows another language could write.
    let bad: Vec<(&str, String, String)> = vec![
        ("headers is a JSON array", route(&ex), "[]".into()),
        ("headers is a JSON string", route(&ex), r#""x""#.into()),
        ("headers is a JSON number", route(&ex), "1".into()),
        ("options is a JSON array", "[]".into(), "{}".into()),
        (
            "an option of the wrong type",
            format!(
                r#"{{"exchange.name": "{ex}", "exchange.durable": "yes", "routing_key": "orders.paid"}}"#
            ),
            "{}".into(),
        ),
        (
            "an amq.* exchange that does not exist",
            route("amq.nope"),
            "{}".into(),
        ),
        (
            "an internal exchange",
            format!(
                r#"{{"exchange.name": "{ex}_internal", "exchange.internal": true, "routing_key": "orders.paid"}}"#
            ),
            "{}".into(),
        ),
        ("an exchange of another type", route(&clash), "{}".into()),
    ];
    let mut bad_ids = Vec::new();
    let mut client = pg();
    for (what, options, headers) in &bad {
        let row = client
            .query_one(
                &format!(
                    "INSERT INTO \"{table}\" (payload, options, headers) \
                     VALUES (convert_to($1, 'UTF8'), $2::text::jsonb, $3::text::jsonb) RETURNING id"
                ),
                &[what, options, headers],
            )
            .expect("insert a bad row");
        bad_ids.push(row.get::<_, i64>(0));
    }
    pg_insert_from(&table, &ex, 501, 1000);
    let started = Instant::now();
    let relay = RelayProc::spawn(relay_cmd(
        &pg_url(),
        &table,
        &[
            "--max-attempts",
            "2",
            "--backoff-base",
            "50ms",
            "--backoff-max",
            "100ms",
        ],
    ));
    let got = sink.collect(1000, Duration::from_secs(10));
    let took = started.elapsed();
    assert_eq!(all_delivered(&got, 1000), 1, "each good row delivered once");
    assert!(took < Duration::from_secs(10), "1000 delivered in {took:?}");
    let mut parked: Vec<i64> = Vec::new();
    let end = Instant::now() + Duration::from_secs(20);
    while Instant::now() < end {
        parked = client
            .query(
                &format!("SELECT id FROM \"{table}\" WHERE status = 'parked' ORDER BY id"),
                &[],
            )
            .expect("parked")
            .iter()
            .map(|r| r.get(0))
            .collect();
        if parked.len() >= bad_ids.len() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    relay.terminate();
    assert_eq!(parked, bad_ids, "exactly the bad rows are parked");
    let v = stats_json(&pg_url(), &table);
    assert_eq!(
        counts(&v),
        (0, 0, 0, bad_ids.len() as u64),
        "dispatched rows deleted: {v}"
    );
    drop_table(&table);
}

/// `--store-file`/`--stream-file` (and OUTBOXER_STORE_FILE, OUTBOXER_STREAM_FILE,
/// `store_file` in the TOML) read a URL from a file: exclusive with the URL flag,
/// a missing or empty file is a usage error naming the file, and what the file
/// holds is never printed. Role `outboxer_pw` needs its password
/// (scripts/tls/postgres.sh), so the password in the file is really used.
#[test]
fn urls_from_files_keep_passwords_out_of_args_and_output() {
    const PASSWORD: &str = "outboxer-pw-only-in-a-file";
    let dir = std::env::temp_dir().join(unique("cli_files"));
    std::fs::create_dir_all(&dir).expect("dir");
    let table = unique("cli_files");
    let good = dir.join("store-url");
    std::fs::write(
        &good,
        format!("\n  postgres://outboxer_pw:{PASSWORD}@127.0.0.1:5432/test  \n"),
    )
    .expect("write");
    let good_arg = good.display().to_string();

    // Through the flag, the variable and the config file.
    let out = ok(&["migrate", "--store-file", &good_arg, "--table", &table]);
    assert!(!out.contains(PASSWORD), "{out}");
    let o = outboxer()
        .args(["stats", "--table", &table, "--json"])
        .env("OUTBOXER_STORE_FILE", &good)
        .output()
        .expect("run");
    assert!(o.status.success(), "{}", text(&o));
    assert!(!text(&o).contains(PASSWORD), "{}", text(&o));
    let config = dir.join("outboxer.toml");
    std::fs::write(&config, format!("store_file = {:?}\n", good_arg)).expect("write");
    let out = ok(&[
        "stats",
        "--config",
        &config.display().to_string(),
        "--table",
        &table,
    ]);
    assert!(!out.contains(PASSWORD), "{out}");

    // The password in the file is the one the server checks.
    let wrong = dir.join("wrong-url");
    std::fs::write(
        &wrong,
        "postgres://outboxer_pw:not-the-password@127.0.0.1:5432/test",
    )
    .expect("write");
    let o = run(&["stats", "--store-file", &wrong.display().to_string()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("password authentication failed")
            && !text(&o).contains("not-the-password"),
        "{}",
        text(&o)
    );

    // Exclusive with the URL flag (clap: exit 2).
    let o = run(&["stats", "--store", &pg_url(), "--store-file", &good_arg]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("cannot be used with"), "{}", text(&o));
    let o = run(&[
        "relay",
        "--store-file",
        &good_arg,
        "--stream",
        &amqp_url(),
        "--stream-file",
        &good_arg,
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));

    // Missing and empty files: named, exit 2.
    let empty = dir.join("empty");
    std::fs::write(&empty, " \n").expect("write");
    for (path, says) in [
        (dir.join("missing"), "cannot read"),
        (empty, "the file is empty"),
    ] {
        let p = path.display().to_string();
        let o = run(&["stats", "--store-file", &p]);
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        assert!(
            text(&o).contains(&p) && text(&o).contains(says),
            "{}",
            text(&o)
        );
        let o = run(&["relay", "--store-file", &good_arg, "--stream-file", &p]);
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        assert!(text(&o).contains(&p), "{}", text(&o));
    }
    drop_table(&table);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 15: `outboxer check` prints one line per check and exits 0 when a relay
/// could start, 1 with a clear line for each problem: store unreachable, table
/// missing, a Go outboxer table not migrated, stream unreachable, a TLS mistake.
#[test]
fn check_names_each_problem_and_exits_1() {
    let table = unique("cli_check");
    let store = pg_url();
    ok(&["migrate", "--store", &store, "--table", &table]);
    let out = ok(&[
        "check",
        "--store",
        &store,
        "--table",
        &table,
        "--stream",
        &amqp_url(),
    ]);
    assert!(out.contains("migrated (pending 0"), "{out}");
    assert!(
        out.lines().filter(|l| l.ends_with(": connected")).count() == 2,
        "{out}"
    );
    assert_eq!(out.lines().last(), Some("ok"), "{out}");

    let expect_fail = |args: &[&str], line: &str, summary: &str| {
        let o = run(args);
        let all = text(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {all}");
        assert!(
            String::from_utf8_lossy(&o.stdout).contains(line),
            "{line} in {all}"
        );
        assert!(
            String::from_utf8_lossy(&o.stderr).contains(&format!("check failed: {summary}")),
            "{summary} in {all}"
        );
        assert!(!all.contains("pg-s3cret-pw"), "{all}");
    };
    let missing = unique("cli_check_missing");
    expect_fail(
        &[
            "check",
            "--store",
            &pg_url_with_secret(),
            "--table",
            &missing,
        ],
        &format!("table   {missing}: missing: run `outboxer migrate`"),
        "table missing",
    );
    expect_fail(
        &["check", "--store", &mysql_url(), "--table", &missing],
        &format!("table   {missing}: missing"),
        "table missing",
    );
    // Go outboxer's own schema (postgres/migrations of italolelis/outboxer).
    let go = unique("cli_check_go");
    pg().batch_execute(&format!(
        "CREATE TABLE \"{go}\" (id SERIAL PRIMARY KEY, dispatched BOOLEAN NOT NULL DEFAULT false, \
         dispatched_at TIMESTAMP, payload BYTEA NOT NULL, options JSONB, headers JSONB)"
    ))
    .expect("go table");
    expect_fail(
        &["check", "--store", &store, "--table", &go],
        "not migrated (a Go outboxer table or an older outboxer table): run `outboxer migrate`",
        "table not migrated",
    );
    ok(&["migrate", "--store", &store, "--table", &go]);
    ok(&["check", "--store", &store, "--table", &go]);
    // A table whose index was dropped is not migrated either.
    pg().batch_execute(&format!("DROP INDEX \"{go}_parked_idx\""))
        .expect("drop index");
    expect_fail(
        &["check", "--store", &store, "--table", &go],
        &format!("not migrated: indexes missing: {go}_parked_idx: run `outboxer migrate`"),
        "table not migrated",
    );
    ok(&["migrate", "--store", &store, "--table", &go]);
    ok(&["check", "--store", &store, "--table", &go]);
    expect_fail(
        &[
            "check",
            "--store",
            &pg_url_with_secret().replace(":5432/", ":1/"),
            "--table",
            &table,
        ],
        "unreachable: database error while connecting",
        "store unreachable",
    );
    expect_fail(
        &[
            "check",
            "--store",
            &store,
            "--table",
            &table,
            "--stream",
            "amqp://guest:guest@127.0.0.1:1/%2f",
        ],
        "stream  amqp://guest:***@127.0.0.1:1/%2f: unreachable: amqp unavailable",
        "stream unreachable",
    );
    // TLS asked of a server that verifies against roots that do not hold the test CA,
    // and amqps:// to a plain AMQP port.
    expect_fail(
        &[
            "check",
            "--store",
            &format!("{store}?sslmode=require"),
            "--table",
            &table,
        ],
        "TLS: postgres: the server's certificate is not trusted",
        "store TLS",
    );
    expect_fail(
        &[
            "check",
            "--store",
            &store,
            "--table",
            &table,
            "--stream",
            &amqp_url().replacen("amqp://", "amqps://", 1),
        ],
        ": TLS: amqp: TLS was required but the server does not speak TLS",
        "stream TLS",
    );
    drop_table(&table);
    drop_table(&go);
}

/// Issue 15: a 30 s broker outage while 500 messages wait is a handful of log
/// lines, not one per message, also with `OUTBOXER_LOG=debug`; every line is one
/// JSON object with the documented fields (`--log-format json`).
#[test]
fn a_30s_outage_is_a_handful_of_json_log_lines_even_at_debug() {
    let table = unique("cli_outage30");
    let ex = unique("ex");
    let sink = Sink::new(&ex, "#");
    let store = pg_url();
    ok(&["migrate", "--store", &store, "--table", &table]);
    let proxy = TcpProxy::start("127.0.0.1:5672");
    let mut cmd = outboxer();
    cmd.env("OUTBOXER_LOG", "debug")
        .env("OUTBOXER_LOG_FORMAT", "json");
    cmd.args([
        "relay",
        "--store",
        &store,
        "--table",
        &table,
        "--check-interval",
        "50ms",
        "--stream",
        &format!("amqp://guest:guest@127.0.0.1:{}/%2f", proxy.port),
    ]);
    let relay = RelayProc::spawn(cmd);
    pg_insert(&table, &ex, 100);
    let mut got = sink.collect(100, Duration::from_secs(30));
    assert_eq!(got.len(), 100);
    std::thread::sleep(Duration::from_millis(300));
    let before = relay.log().lines().count();
    proxy.cut();
    for burst in 0..5 {
        pg_insert_from(&table, &ex, 101 + burst * 100, 200 + burst * 100);
        std::thread::sleep(Duration::from_secs(6));
    }
    let during: Vec<String> = relay.log().lines().skip(before).map(String::from).collect();
    proxy.restore();
    sink.collect_into(&mut got, 600, Duration::from_secs(60));
    all_delivered(&got, 600);
    let log = relay.terminate();
    eprintln!(
        "{} log lines during the outage, {} in all:\n{}",
        during.len(),
        log.lines().count(),
        during.join("\n")
    );
    // 600 messages published: no line per message at debug level either.
    assert!(log.lines().count() <= 40, "{log}");
    assert!(
        during.len() <= 12,
        "{} log lines during a 30 s outage of 500 messages:\n{}",
        during.len(),
        during.join("\n")
    );
    assert!(
        during.iter().any(|l| l.contains("outage")),
        "the outage is reported:\n{}",
        during.join("\n")
    );
    let mut levels = std::collections::HashSet::new();
    for line in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        let ts = v["ts"].as_str().unwrap_or_default();
        assert!(
            ts.len() == 24 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T',
            "ts {ts}: {line}"
        );
        for field in ["level", "target", "msg"] {
            assert!(v[field].is_string(), "{field}: {line}");
        }
        levels.insert(v["level"].as_str().unwrap_or_default().to_string());
    }
    assert!(
        levels.contains("INFO") && levels.contains("WARN"),
        "{levels:?}\n{log}"
    );
    // The summary line carries its counts as key-values.
    assert!(
        log.lines().any(|l| l.contains("\"total_published\":")),
        "{log}"
    );
    assert_eq!(counts(&stats_json(&store, &table)), (0, 0, 0, 0));
    drop_table(&table);
}

/// Issue 15's operator tools: `requeue` by age and by error text (and both),
/// saying how many moved; `purge --dry-run` counts by status with the cutoff and
/// deletes nothing; `stats --watch 1s`-style durations with a time on every
/// refresh; `--version` lists the stores and streams compiled in.
#[test]
fn requeue_by_age_and_error_purge_dry_run_watch_and_version() {
    let table = unique("cli_ops_tools");
    let store = pg_url();
    ok(&["migrate", "--store", &store, "--table", &table]);
    // Rows as an old table holds them: parked 10 days ago by two kinds of error,
    // parked just now, dispatched 10 days ago, and one pending.
    pg().batch_execute(&format!(
        "INSERT INTO \"{table}\" (payload, status, last_error, created_at, attempts) VALUES
           ('a', 'parked', 'broker rejected the message: NOT_FOUND - no exchange ''x''', now() - interval '10 days', 10),
           ('b', 'parked', 'message unroutable: 312 NO_ROUTE', now() - interval '10 days', 10),
           ('c', 'parked', 'broker rejected the message: NOT_FOUND - no exchange ''y''', now(), 10);
         INSERT INTO \"{table}\" (payload, status, created_at, dispatched_at) VALUES
           ('d', 'dispatched', now() - interval '10 days', now() - interval '10 days');
         INSERT INTO \"{table}\" (payload) VALUES ('e');"
    ))
    .expect("rows");
    let args = |extra: &[&str]| -> Vec<String> {
        ["--store", &store, "--table", &table]
            .iter()
            .chain(extra)
            .map(|s| s.to_string())
            .collect()
    };
    let run_ok = |cmd: &str, extra: &[&str]| {
        let mut a = vec![cmd.to_string()];
        a.extend(args(extra));
        ok(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };

    let out = run_ok(
        "purge",
        &["--before", "7d", "--include-parked", "--dry-run"],
    );
    assert!(
        out.contains("would purge 1 dispatched message(s) dispatched before 20"),
        "{out}"
    );
    assert!(
        out.contains("would purge 2 parked message(s) enqueued before 20"),
        "{out}"
    );
    assert!(out.contains("nothing deleted"), "{out}");
    let out = run_ok("purge", &["--before", "7d", "--dry-run"]);
    assert!(
        out.contains("2 parked message(s) enqueued before") && out.contains("stay"),
        "{out}"
    );
    assert_eq!(
        counts(&stats_json(&store, &table)),
        (1, 0, 1, 3),
        "dry runs delete nothing"
    );

    let out = run_ok(
        "requeue",
        &["--before", "7d", "--error-contains", "no EXCHANGE"],
    );
    assert!(
        out.starts_with("requeued 1 parked message(s) enqueued before 20"),
        "{out}"
    );
    assert!(
        out.contains("whose last error contains \"no EXCHANGE\""),
        "{out}"
    );
    let out = run_ok("requeue", &["--error-contains", "not_found"]);
    assert!(out.starts_with("requeued 1 "), "{out}");
    let out = run_ok("requeue", &["--before", "2026-01-01T00:00:00Z"]);
    assert!(
        out.starts_with("requeued 0 "),
        "the last one is younger: {out}"
    );
    let out = run_ok("requeue", &["--before", "1d"]);
    assert!(out.starts_with("requeued 1 "), "{out}");
    assert_eq!(counts(&stats_json(&store, &table)), (4, 0, 1, 0));
    for bad in [
        &["--id", "1", "--before", "7d"][..],
        &["--all-parked", "--error-contains", "x"][..],
        &["--error-contains", ""][..],
        &["--before", "soon"][..],
    ] {
        let mut a = vec!["requeue".to_string()];
        a.extend(args(bad));
        let o = run(&a.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(o.status.code(), Some(2), "{bad:?}: {}", text(&o));
    }

    // --watch takes durations (a bare number is still seconds); each refresh has its time.
    for every in ["300ms", "0.3"] {
        let out = run_ok("stats", &["--watch", every, "--count", "2"]);
        let stamps: Vec<&str> = out
            .split("\x1b[2J\x1b[H")
            .filter(|s| !s.is_empty())
            .map(|s| s.lines().next().unwrap_or_default())
            .collect();
        assert_eq!(stamps.len(), 2, "{out}");
        for ts in stamps {
            assert!(
                ts.len() == 24 && ts.ends_with('Z') && ts.starts_with("20"),
                "{ts}"
            );
        }
    }
    let out = run_ok("stats", &["--json", "--watch", "200ms", "--count", "2"]);
    for line in out.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("json");
        assert!(v["ts"].as_str().is_some_and(|t| t.ends_with('Z')), "{line}");
    }
    let o = run(&["stats", "--store", &store, "--watch", "10ms"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));

    let v = ok(&["--version"]);
    assert!(
        v.starts_with("outboxer 0.")
            && v.contains("stores: postgres, mysql, sqlite")
            && v.contains("streams: amqp"),
        "{v}"
    );
    assert_eq!(v.contains("kafka"), cfg!(feature = "kafka"), "{v}");
    drop_table(&table);
}

/// Issue 15: the log format comes from `--log-format`, `OUTBOXER_LOG_FORMAT` or
/// the config file's `log_format`; text lines start with an RFC 3339 UTC time;
/// an unknown format is a usage error (exit 2).
#[test]
fn log_format_from_flag_env_and_config_file() {
    let table = unique("cli_logfmt");
    let store = pg_url();
    ok(&["migrate", "--store", &store, "--table", &table]);
    let check = [
        "check",
        "--store",
        &store,
        "--table",
        &table,
        "--stream",
        &amqp_url(),
    ];
    let stderr_of = |o: &Output| String::from_utf8_lossy(&o.stderr).into_owned();
    let is_rfc3339 = |l: &str| {
        l.len() > 24 && l.as_bytes()[10] == b'T' && l.as_bytes()[23] == b'Z' && l.starts_with("20")
    };
    let o = run(&check);
    assert!(o.status.success(), "{}", text(&o));
    let log = stderr_of(&o);
    assert!(log.contains("connected to amqp"), "{log}");
    assert!(
        log.lines().all(is_rfc3339),
        "text lines start with the time:\n{log}"
    );

    let dir = std::env::temp_dir().join(unique("outboxer-logfmt"));
    std::fs::create_dir_all(&dir).expect("dir");
    let json_toml = dir.join("json.toml");
    std::fs::write(&json_toml, "log_format = \"json\"\n").expect("write");
    let from_file = [
        &check[..],
        &["--config", json_toml.to_str().unwrap_or_default()],
    ]
    .concat();
    let from_env = {
        let mut c = outboxer();
        c.env("OUTBOXER_LOG_FORMAT", "json").args(check);
        c.output().expect("run")
    };
    for o in [
        run(&from_file),
        run(&[&["--log-format", "json"], &check[..]].concat()),
        from_env,
    ] {
        assert!(o.status.success(), "{}", text(&o));
        let log = stderr_of(&o);
        assert!(!log.is_empty());
        for line in log.lines() {
            let v: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
            assert!(v["ts"].as_str().is_some_and(is_rfc3339_json), "{line}");
        }
    }
    let bad_toml = dir.join("bad.toml");
    std::fs::write(&bad_toml, "log_format = \"yaml\"\n").expect("write");
    for args in [
        [
            &check[..],
            &["--config", bad_toml.to_str().unwrap_or_default()],
        ]
        .concat(),
        [&check[..], &["--log-format", "xml"]].concat(),
    ] {
        let o = run(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
    }
    let _ = std::fs::remove_dir_all(&dir);
    drop_table(&table);
}

fn is_rfc3339_json(ts: &str) -> bool {
    ts.len() == 24 && ts.as_bytes()[10] == b'T' && ts.ends_with('Z')
}
