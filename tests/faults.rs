//! Fault tests that stop and start shared servers. They run serially (one lock),
//! in their own test binary so no other test binary runs meanwhile, and always
//! start the server again, even when the test fails.

mod common;

use common::*;
use outboxer::stream::amqp;
use outboxer::{FailureAction, Message, Outbox};
use std::collections::HashSet;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

static SERIAL: Mutex<()> = Mutex::new(());

fn run(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn rabbit_up() {
    if !run("rabbitmqctl", &["-q", "status"]) {
        run("rabbitmq-server", &["-detached"]);
    }
    assert!(
        run("rabbitmqctl", &["-q", "await_startup", "--timeout", "120"]),
        "RabbitMQ did not come back"
    );
}

/// Starts RabbitMQ again when dropped, also when the test panics.
struct RabbitGuard;
impl Drop for RabbitGuard {
    fn drop(&mut self) {
        rabbit_up();
    }
}

#[test]
fn rabbitmq_restart_mid_stream_loses_nothing() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let table = unique("restart");
    let ex = unique("ex");
    let sink = Sink::new(&ex, "#");
    let outbox = Outbox::builder()
        .store(store(&table))
        .stream(stream())
        .check_interval(Duration::from_millis(50))
        .backoff(Duration::from_millis(100), Duration::from_secs(2))
        .build()
        .expect("outbox");
    let relay = outbox.start().expect("start");
    const N: usize = 3000;
    let sender = {
        let outbox = outbox.clone();
        let ex = ex.clone();
        std::thread::spawn(move || {
            let mut ids = Vec::new();
            for i in 0..N {
                let m = Message::new(format!("m{i}").into_bytes()).route(amqp::topic(&ex, "k"));
                ids.push(outbox.send(m).expect("send: PostgreSQL stays up"));
                if i % 100 == 0 {
                    std::thread::sleep(Duration::from_millis(40));
                }
            }
            ids
        })
    };
    let early = sink.collect(200, Duration::from_secs(30));
    assert!(early.len() >= 200, "relay publishes before the restart");
    {
        let _guard = RabbitGuard;
        assert!(run("rabbitmqctl", &["-q", "stop_app"]), "stop RabbitMQ");
        std::thread::sleep(Duration::from_secs(2));
        assert!(run("rabbitmqctl", &["-q", "start_app"]), "start RabbitMQ");
    }
    let sent = sender.join().expect("sender");
    let mut all = early;
    let missing = missing_after_wait(&sink, &mut all, &sent);
    assert_eq!(missing, 0, "all {N} delivered after the restart");
    // The outage was reported on err(), as released (not counted) attempts.
    let mut released = 0;
    while let Ok(f) = relay.err().try_recv() {
        if f.action == FailureAction::Released {
            released += 1;
        }
    }
    let stats = outbox.stats().expect("stats");
    assert_eq!(stats.parked, 0, "an outage never parks messages");
    assert!(
        released > 0 || relay.counters().failed > 0,
        "the outage was reported"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while outbox.stats().expect("stats").pending > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    relay.stop().expect("stop");
    drop_table(&table);
}

#[test]
fn postgres_connections_terminated_mid_stream_lose_nothing() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let table = unique("term");
    let ex = unique("ex");
    let sink = Sink::new(&ex, "#");
    // The relay's connections carry their own application_name, so only they are cut.
    let app = unique("ob_fault");
    let relay_store =
        outboxer::store::PostgresStore::builder(&format!("{}?application_name={app}", pg_url()))
            .table(&table)
            .build()
            .expect("store");
    relay_store.migrate().expect("migrate");
    let outbox = fault_outbox(relay_store)
        .lease(Duration::from_secs(3))
        .build()
        .expect("outbox");
    let relay = outbox.start().expect("start");
    let sender = Outbox::builder()
        .store(store(&table))
        .build()
        .expect("sender");
    const N: usize = 3000;
    let mut sent = Vec::new();
    let msgs: Vec<Message> = (0..N)
        .map(|i| Message::new(format!("m{i}").into_bytes()).route(amqp::topic(&ex, "k")))
        .collect();
    let mut pg = pg();
    let mut all = Vec::new();
    let mut terminated = 0i64;
    for chunk in msgs.chunks(300) {
        sent.extend(sender.send_batch(chunk).expect("send"));
        sink.collect_into(&mut all, 100.min(sent.len()), Duration::from_secs(20));
        let row = pg
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1",
                &[&app],
            )
            .expect("terminate");
        terminated += row.get::<_, i64>(0);
    }
    let missing = missing_after_wait(&sink, &mut all, &sent);
    assert!(terminated > 0, "the relay's connections were cut");
    assert_eq!(
        missing, 0,
        "all {N} delivered although connections were cut {terminated} times"
    );
    let mut db_errors = 0;
    while let Ok(f) = relay.err().try_recv() {
        if matches!(f.error, outboxer::Error::Database { .. }) {
            db_errors += 1;
        }
    }
    assert!(db_errors > 0, "the cut connections were reported on err()");
    relay.stop().expect("stop");
    drop_table(&table);
}

/// Waits until every sent id arrived (at most 120 s); returns how many did not.
fn missing_after_wait(sink: &Sink, all: &mut Vec<Got>, sent: &[outboxer::MessageId]) -> usize {
    sink.collect_into(all, sent.len(), Duration::from_secs(120));
    let got: HashSet<String> = counts(all).keys().cloned().collect();
    ids_of(sent)
        .into_iter()
        .filter(|i| !got.contains(i))
        .count()
}

/// Transient failures reported on `err()` so far (drained).
fn transient_reports(relay: &outboxer::Relay) -> usize {
    relay
        .err()
        .try_iter()
        .filter(|f| f.error.is_transient())
        .count()
}

/// The outage was reported on `err()` as transient (`seen`: reports drained
/// earlier), and parked nothing.
fn assert_outage_reported<S: outboxer::Store>(
    relay: &outboxer::Relay,
    outbox: &Outbox<S>,
    seen: usize,
) {
    let transient = seen + transient_reports(relay);
    assert!(transient > 0, "the outage was reported on err()");
    assert_eq!(
        outbox.stats().expect("stats").parked,
        0,
        "an outage parks nothing"
    );
}

/// A relay builder tuned for fault tests: small batches, quick polling.
fn fault_outbox<S: outboxer::Store>(store: S) -> outboxer::OutboxBuilder<S> {
    Outbox::builder()
        .store(store)
        .stream(stream())
        .batch_size(100)
        .check_interval(Duration::from_millis(50))
}

fn pg_cluster() -> String {
    std::fs::read_dir("/etc/postgresql")
        .ok()
        .and_then(|mut d| d.next())
        .and_then(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .unwrap_or_else(|| "15".into())
}

fn pg_ready() -> bool {
    run("pg_isready", &["-q", "-h", "127.0.0.1", "-p", "5432"])
}

/// Starts PostgreSQL again when dropped, also when the test panics.
struct PgGuard;
impl Drop for PgGuard {
    fn drop(&mut self) {
        if !pg_ready() {
            run(
                "pg_ctlcluster",
                &["--skip-systemctl-redirect", &pg_cluster(), "main", "start"],
            );
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while !pg_ready() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

#[test]
fn postgres_restart_mid_stream_loses_nothing() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let table = unique("pgrestart");
    let ex = unique("ex");
    let sink = Sink::new(&ex, "#");
    let outbox = fault_outbox(store(&table)).build().expect("outbox");
    let relay = outbox.start().expect("start");
    const N: usize = 2000;
    let sender = spawn_sender(&outbox, &ex, N);
    let mut all = sink.collect(100, Duration::from_secs(30));
    assert!(all.len() >= 100, "relay publishes before the restart");
    {
        let _guard = PgGuard;
        assert!(
            run(
                "pg_ctlcluster",
                &[
                    "--skip-systemctl-redirect",
                    &pg_cluster(),
                    "main",
                    "restart",
                    "-m",
                    "fast"
                ]
            ),
            "restart PostgreSQL"
        );
    }
    let (sent, refused) = sender.join().expect("sender");
    let missing = missing_after_wait(&sink, &mut all, &sent);
    assert_eq!(
        missing, 0,
        "all {N} delivered after the restart ({refused} sends refused meanwhile)"
    );
    assert_outage_reported(&relay, &outbox, 0);
    relay.stop().expect("stop");
    drop_table(&table);
}

/// `send_retrying` on a thread of its own, so the test can cause faults meanwhile.
fn spawn_sender<S: outboxer::Store>(
    outbox: &Outbox<S>,
    ex: &str,
    n: usize,
) -> std::thread::JoinHandle<(Vec<outboxer::MessageId>, usize)> {
    let (outbox, ex) = (outbox.clone(), ex.to_string());
    std::thread::spawn(move || send_retrying(&outbox, &ex, n))
}

/// Sends `n` messages, retrying a send that failed (a failed send stores nothing).
fn send_retrying<S: outboxer::Store>(
    outbox: &Outbox<S>,
    ex: &str,
    n: usize,
) -> (Vec<outboxer::MessageId>, usize) {
    let mut ids = Vec::new();
    let mut refused = 0;
    for i in 0..n {
        let m = Message::new(format!("m{i}").into_bytes()).route(amqp::topic(ex, "k"));
        loop {
            match outbox.send(m.clone()) {
                Ok(id) => {
                    ids.push(id);
                    break;
                }
                Err(_) => {
                    refused += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
        if i % 50 == 0 {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    (ids, refused)
}

#[test]
fn rabbitmq_connections_closed_by_the_broker_lose_nothing() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let table = unique("cut");
    let ex = unique("ex");
    let sink = Sink::new(&ex, "#");
    let outbox = fault_outbox(store(&table))
        .backoff(Duration::from_millis(100), Duration::from_secs(1))
        .build()
        .expect("outbox");
    let relay = outbox.start().expect("start");
    const N: usize = 2000;
    let sender = spawn_sender(&outbox, &ex, N);
    let mut all = sink.collect(100, Duration::from_secs(30));
    let mut cuts = 0;
    for _ in 0..3 {
        if run(
            "rabbitmqctl",
            &["-q", "close_all_connections", "outboxer fault test"],
        ) {
            cuts += 1;
        }
        std::thread::sleep(Duration::from_millis(400));
    }
    assert_eq!(cuts, 3, "rabbitmqctl close_all_connections");
    let (sent, _) = sender.join().expect("sender");
    let missing = missing_after_wait(&sink, &mut all, &sent);
    assert_eq!(
        missing, 0,
        "all {N} delivered although the broker closed the connections"
    );
    let mut reported = 0;
    while let Ok(f) = relay.err().try_recv() {
        if f.error.is_transient() {
            reported += 1;
        }
    }
    assert!(
        reported > 0,
        "the closed connections were reported on err()"
    );
    assert_eq!(
        outbox.stats().expect("stats").parked,
        0,
        "an outage parks nothing"
    );
    relay.stop().expect("stop");
    drop_table(&table);
}

#[cfg(feature = "mysql")]
#[test]
fn mariadb_connections_killed_mid_stream_lose_nothing() {
    use mysql::prelude::Queryable;
    use outboxer::store::MysqlStore;
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let url = std::env::var("OUTBOXER_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into());
    let table = unique("mykill");
    let ex = unique("ex");
    let sink = Sink::new(&ex, "#");
    let store = MysqlStore::builder(&url)
        .table(&table)
        .build()
        .expect("store");
    store.migrate().expect("migrate");
    let outbox = fault_outbox(store)
        .lease(Duration::from_secs(3))
        .build()
        .expect("outbox");
    let relay = outbox.start().expect("start");
    const N: usize = 2000;
    let sender = spawn_sender(&outbox, &ex, N);
    let mut all = sink.collect(100, Duration::from_secs(30));
    let pool = mysql::Pool::new(url.as_str()).expect("pool");
    let mut admin = pool.get_conn().expect("admin connection");
    let mut killed = 0usize;
    // A killed connection that was idle in the pool is replaced unseen (the pool
    // pings before lending it): kill until one in use was hit, and at least 5
    // times.
    let mut seen = 0;
    for round in 0..25 {
        if round >= 5 && seen > 0 {
            break;
        }
        // Every other session on the test database: the relay's and the sender's.
        let ids: Vec<u64> = admin
            .query("SELECT id FROM information_schema.processlist WHERE db = DATABASE() AND id <> CONNECTION_ID()")
            .expect("processlist");
        for id in ids {
            if admin.query_drop(format!("KILL CONNECTION {id}")).is_ok() {
                killed += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(300));
        seen += transient_reports(&relay);
    }
    assert!(killed > 0, "connections were killed");
    let (sent, refused) = sender.join().expect("sender");
    let missing = missing_after_wait(&sink, &mut all, &sent);
    assert_eq!(
        missing, 0,
        "all {N} delivered although {killed} connections were killed ({refused} sends refused)"
    );
    assert_outage_reported(&relay, &outbox, seen);
    relay.stop().expect("stop");
    drop(admin);
    let mut c = pool.get_conn().expect("conn");
    let _ = c.query_drop(format!("DROP TABLE IF EXISTS `{table}`, `{table}_keys`"));
}

/// RabbitMQ 3.10 has `max_message_size` only as a global setting (no per-vhost
/// limit, no policy), read by each channel when it opens: it is lowered here, in
/// the serial fault binary, and restored by a guard. 2 MiB stays above what the
/// other test suites publish, so that a concurrent run elsewhere is not hurt.
#[test]
fn a_message_above_the_brokers_max_message_size_fails_alone() {
    use common::amqp_faults::MaxMessageSize;
    use outboxer::{MessageId, StoredMessage, Stream};
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let _limit = MaxMessageSize::set(2 * 1024 * 1024);
    let big = vec![7u8; 3 * 1024 * 1024];

    // The stream: the oversized message fails (Rejected), the ten behind it are published.
    let ex = unique("ex_big");
    let sink = Sink::new(&ex, "#");
    let route: outboxer::Options = amqp::topic(&ex, "k").into();
    let stored = |id: i64, payload: Vec<u8>| StoredMessage {
        id,
        message_id: MessageId::new(),
        payload,
        headers: Default::default(),
        options: route.clone(),
        ordering_key: None,
        attempts: 0,
        created_at: std::time::SystemTime::now(),
    };
    let mut s = stream();
    let mut batch = vec![stored(1, big.clone())];
    batch.extend((0..10).map(|i| stored(2 + i, format!("good {i}").into_bytes())));
    let out = s.publish(&batch, &deadline());
    assert!(
        matches!(&out[0], Err(outboxer::Error::Rejected(r)) if r.contains("max size")),
        "{:?}",
        out[0]
    );
    assert!(out[1..].iter().all(|o| o.is_ok()), "{out:?}");
    assert_eq!(counts(&sink.collect(10, Duration::from_secs(10))).len(), 10);
    s.close();

    // The relay: parked after two attempts, the ten behind it delivered promptly.
    let table = unique("big");
    let outbox = Outbox::builder()
        .store(store(&table))
        .stream(stream())
        .check_interval(Duration::from_millis(20))
        .max_attempts(2)
        .backoff(Duration::from_millis(50), Duration::from_millis(200))
        .build()
        .expect("outbox");
    let bad = outbox
        .send(Message::new(big).route(amqp::topic(&ex, "k")))
        .expect("send");
    let good: Vec<Message> = (0..10)
        .map(|i| Message::new(format!("relayed {i}").into_bytes()).route(amqp::topic(&ex, "k")))
        .collect();
    let good = outbox.send_batch(&good).expect("send");
    let relay = outbox.start().expect("start");
    let got = counts(&sink.collect(10, Duration::from_secs(10)));
    for id in &good {
        assert!(got.contains_key(&id.to_string()), "delivered within 10 s");
    }
    let status = |id: &MessageId| -> (String, i32) {
        let row = pg()
            .query_one(
                &format!("SELECT status, attempts FROM \"{table}\" WHERE message_id = $1"),
                &[id.as_uuid()],
            )
            .expect("row");
        (row.get(0), row.get(1))
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while status(&bad).0 != "parked" && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(status(&bad), ("parked".to_string(), 2));
    relay.stop().expect("stop");
    drop_table(&table);
}

/// `outboxer relay --listen`: `/readyz` turns 503 (with the reason) within
/// seconds of RabbitMQ stopping, and 200 again after it is back; `/healthz`
/// stays 200 throughout (the relay's threads live through an outage). A message
/// every 100 ms keeps the relay publishing: it meets the broker only then.
#[cfg(feature = "cli")]
#[test]
fn readyz_follows_a_rabbitmq_stop_and_start() {
    use common::prom::{free_addr, get};
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let table = unique("readyz");
    let ex = unique("ex");
    let _sink = Sink::new(&ex, "#");
    let outbox = outboxer::Outbox::builder()
        .store(store(&table))
        .build()
        .expect("outbox");
    let addr = free_addr();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_outboxer"));
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("OUTBOXER_")) {
        cmd.env_remove(k);
    }
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _relay = Kill(
        cmd.args(["relay", "--store", &pg_url(), "--table", &table])
            .args(["--stream", &amqp_url(), "--check-interval", "100ms"])
            .args(["--listen", &addr, "--log-interval", "1s"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn outboxer relay"),
    );
    let stop_sending = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender = {
        let (stop, ex) = (std::sync::Arc::clone(&stop_sending), ex.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let m = Message::new(b"tick".to_vec()).route(amqp::topic(&ex, "k"));
                outbox.send(m).expect("send: PostgreSQL stays up");
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let status = |path: &str| get(&addr, path).map(|(s, _)| s);
    let wait_for = |path: &str, want: u16, within: Duration| -> Option<Duration> {
        let t0 = Instant::now();
        while t0.elapsed() < within {
            if status(path) == Some(want) {
                return Some(t0.elapsed());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    };
    assert!(
        wait_for("/readyz", 200, Duration::from_secs(30)).is_some(),
        "ready before the stop: {:?}",
        get(&addr, "/readyz")
    );
    {
        let _guard = RabbitGuard;
        assert!(run("rabbitmqctl", &["-q", "stop_app"]), "stop RabbitMQ");
        let down = wait_for("/readyz", 503, Duration::from_secs(10));
        let body = get(&addr, "/readyz").map(|(_, b)| b).unwrap_or_default();
        assert!(down.is_some(), "503 within 10 s of the stop: {body}");
        assert!(body.contains("broker unavailable"), "{body}");
        eprintln!("/readyz 503 after {down:?}: {}", body.trim());
        assert_eq!(status("/healthz"), Some(200), "alive through the outage");
        assert!(run("rabbitmqctl", &["-q", "start_app"]), "start RabbitMQ");
    }
    let up = wait_for("/readyz", 200, Duration::from_secs(40));
    assert!(
        up.is_some(),
        "ready again after the start: {:?}",
        get(&addr, "/readyz")
    );
    eprintln!("/readyz 200 again {up:?} after RabbitMQ started");
    stop_sending.store(true, std::sync::atomic::Ordering::Relaxed);
    sender.join().expect("sender");
    drop_table(&table);
}

/// An idle relay (nothing to publish) still sees RabbitMQ stop and start: its
/// publisher checks the broker every 5 s, so `Relay::health()` (what `/readyz`
/// reads) reports the outage without a message, and its end.
#[test]
fn an_idle_relays_health_sees_rabbitmq_stop_and_start() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let table = unique("idle_health");
    let outbox = Outbox::builder()
        .store(store(&table))
        .stream(stream())
        .check_interval(Duration::from_millis(100))
        .build()
        .expect("outbox");
    let relay = outbox.start().expect("start");
    let within = Duration::from_secs(5);
    let wait = |want_ready: bool, limit: Duration| -> Option<Duration> {
        let t0 = Instant::now();
        while t0.elapsed() < limit {
            if relay.health().ready(within).is_ok() == want_ready {
                return Some(t0.elapsed());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    };
    assert!(
        wait(true, Duration::from_secs(10)).is_some(),
        "{:?}",
        relay.health()
    );
    {
        let _guard = RabbitGuard;
        assert!(run("rabbitmqctl", &["-q", "stop_app"]), "stop RabbitMQ");
        let down = wait(false, Duration::from_secs(15));
        let h = relay.health();
        assert!(down.is_some(), "outage seen within 15 s: {h:?}");
        assert!(h.stream_outage.is_some() && h.threads_alive, "{h:?}");
        eprintln!("idle relay: broker outage seen {down:?} after stop_app returned");
        assert!(run("rabbitmqctl", &["-q", "start_app"]), "start RabbitMQ");
    }
    let up = wait(true, Duration::from_secs(20));
    assert!(up.is_some(), "ready again: {:?}", relay.health());
    eprintln!("idle relay: ready again {up:?} after start_app returned");
    relay.stop().expect("stop");
    drop_table(&table);
}
