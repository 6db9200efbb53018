// Over 800 lines on purpose: one crash kit (child relays, consumer, driver, checker) sharing private types; the child is this binary re-run by test name.
//! Crash kit: N relay processes on one outbox table, SIGKILLed at random points
//! while messages are committed at a steady rate; the consumer side then checks
//! 0 lost, 0 rolled-back messages published, every duplicate carries the same
//! message id and follows a crash, and per-ordering-key order.
//!
//! The relay processes are this test binary itself, re-executed as the ignored
//! test `crash_child_relay`. Default (CI) mode: about 10 kills and 1500 messages
//! per store. `OUTBOXER_CRASH_FULL=1`: at least 100 kills per store.
//! Every run prints one `CRASH store=.. kills=.. ...` line (see it with `--nocapture`).
//!
//! `crash_postgres_inbox_consumer`: the same run (shorter, ~40 s) with a consumer
//! that applies every message's side effect through the inbox
//! (`outboxer::inbox::PostgresInbox`) before it acks, and that also "dies" after
//! every 10th commit, before its ack (a nack with requeue), so that duplicates
//! arrive in every run, not only after kills. The effects table must hold each
//! committed message exactly once.
//!
//! `takeover` (crash_kit/takeover.rs) times how soon a SIGKILLed relay's held
//! batch is published by another relay: row locks vs leases.
#![cfg(all(feature = "postgres", feature = "amqp"))]

mod common;
// Takeover timing after a SIGKILL, row locks vs leases (issue 16).
#[path = "crash_kit/takeover.rs"]
mod takeover;

use amiquip::{Connection, ConsumerMessage, ConsumerOptions};
use common::{amqp_url, pg_url, stream, unique};
use outboxer::inbox::PostgresInbox;
use outboxer::store::{PostgresStore, Store, TxStore};
use outboxer::stream::amqp;
use outboxer::{Message, MessageId, Outbox};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Relay processes per table.
const RELAYS: usize = 3;
/// The relays' lease: a killed relay's rows are taken over after this.
const LEASE: Duration = Duration::from_secs(2);
/// Ordering keys in use; a share of the messages carries one of them.
const KEYS: usize = 8;
/// How much earlier than a duplicate's previous delivery the crash that explains it
/// may lie: the killed relay's publish may still be on its way to the consumer
/// (and the consumer thread may lag behind on a loaded machine).
const IN_FLIGHT: Duration = Duration::from_secs(2);

const ENV_STORE: &str = "OUTBOXER_CRASH_STORE";
const ENV_LOCATION: &str = "OUTBOXER_CRASH_LOCATION";
const ENV_TABLE: &str = "OUTBOXER_CRASH_TABLE";
const ENV_LEASE_MS: &str = "OUTBOXER_CRASH_LEASE_MS";
const ENV_PARENT: &str = "OUTBOXER_CRASH_PARENT";

/// One crash run at a time in this binary: three stores' relays at once would
/// starve a small machine and blur what a crash explains.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Postgres,
    #[cfg(feature = "mysql")]
    Mysql,
    #[cfg(feature = "sqlite")]
    Sqlite,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Postgres => "postgres",
            #[cfg(feature = "mysql")]
            Kind::Mysql => "mysql",
            #[cfg(feature = "sqlite")]
            Kind::Sqlite => "sqlite",
        }
    }

    fn parse(s: &str) -> Option<Kind> {
        match s {
            "postgres" => Some(Kind::Postgres),
            #[cfg(feature = "mysql")]
            "mysql" => Some(Kind::Mysql),
            #[cfg(feature = "sqlite")]
            "sqlite" => Some(Kind::Sqlite),
            _ => None,
        }
    }
}

/// Where the outbox table lives: enough for a child process to open the same store.
#[derive(Clone, Debug)]
struct Place {
    kind: Kind,
    /// A URL, or the SQLite file path.
    location: String,
    table: String,
}

impl Place {
    fn from_env() -> Place {
        let kind = std::env::var(ENV_STORE).expect("only run by the crash tests");
        Place {
            kind: Kind::parse(&kind).expect("a store kind compiled into this binary"),
            location: std::env::var(ENV_LOCATION).expect("store location"),
            table: std::env::var(ENV_TABLE).expect("table"),
        }
    }
}

fn pg_store(p: &Place) -> PostgresStore {
    PostgresStore::builder(&p.location)
        .table(&p.table)
        .build()
        .expect("PostgreSQL store (see README)")
}

#[cfg(feature = "mysql")]
fn mysql_url() -> String {
    std::env::var("OUTBOXER_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into())
}

#[cfg(feature = "mysql")]
fn mysql_store(p: &Place) -> outboxer::store::MysqlStore {
    outboxer::store::MysqlStore::builder(&p.location)
        .table(&p.table)
        .max_connections(4)
        .build()
        .expect("MariaDB/MySQL store (see README)")
}

#[cfg(feature = "sqlite")]
fn sqlite_store(p: &Place) -> outboxer::store::SqliteStore {
    outboxer::store::SqliteStore::builder(&p.location)
        .table(&p.table)
        .busy_timeout(Duration::from_secs(10))
        .build()
        .expect("SQLite store")
}

/// Drops the table (or removes the SQLite files) when dropped, also on failure.
struct Cleanup(Place);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let p = &self.0;
        match p.kind {
            Kind::Postgres => {
                common::drop_table(&p.table);
                common::drop_table(&format!("{}_inbox", p.table));
                common::drop_table(&format!("{}_fx", p.table));
            }
            #[cfg(feature = "mysql")]
            Kind::Mysql => {
                use outboxer::store::mysql::prelude::Queryable;
                if let Ok(pool) = outboxer::store::mysql::Pool::new(p.location.as_str()) {
                    if let Ok(mut c) = pool.get_conn() {
                        let _ = c.query_drop(format!("DROP TABLE IF EXISTS `{}`", p.table));
                        let _ = c.query_drop(format!("DROP TABLE IF EXISTS `{}_keys`", p.table));
                    }
                }
            }
            #[cfg(feature = "sqlite")]
            Kind::Sqlite => {
                for suffix in ["", "-wal", "-shm", "-journal"] {
                    let _ = std::fs::remove_file(format!("{}{suffix}", p.location));
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The relay process.

/// Not a test: the relay process the crash tests spawn and SIGKILL. It runs until
/// killed, or until its parent is gone (a driver that died without reaping it).
#[test]
#[ignore = "helper process, spawned and SIGKILLed by the crash_* tests"]
fn crash_child_relay() {
    let place = Place::from_env();
    let lease_ms: u64 = std::env::var(ENV_LEASE_MS)
        .expect("lease")
        .parse()
        .expect("lease in ms");
    let parent: u32 = std::env::var(ENV_PARENT)
        .expect("parent pid")
        .parse()
        .expect("parent pid number");
    let lease = Duration::from_millis(lease_ms);
    match place.kind {
        Kind::Postgres => relay_until_orphaned(pg_store(&place), lease, parent),
        #[cfg(feature = "mysql")]
        Kind::Mysql => relay_until_orphaned(mysql_store(&place), lease, parent),
        #[cfg(feature = "sqlite")]
        Kind::Sqlite => relay_until_orphaned(sqlite_store(&place), lease, parent),
    }
}

fn relay_until_orphaned<S: Store>(store: S, lease: Duration, parent: u32) {
    let outbox = Outbox::builder()
        .store(store)
        .stream(stream())
        .batch_size(20)
        .lease(lease)
        .check_interval(Duration::from_millis(20))
        .backoff(Duration::from_millis(100), Duration::from_secs(2))
        .no_cleanup()
        .build()
        .expect("outbox");
    let _relay = outbox.start().expect("start the relay");
    while std::os::unix::process::parent_id() == parent {
        std::thread::sleep(Duration::from_millis(200));
    }
    // Orphaned: leave as abruptly as a crash would.
    std::process::exit(0);
}

/// The relay processes of one run. Dropping kills and reaps every one of them.
struct Relays {
    exe: PathBuf,
    place: Place,
    children: Vec<Child>,
    /// Relays that exited by themselves (not killed by us), with when we noticed.
    exits: Vec<(Instant, String)>,
}

impl Relays {
    fn start(place: &Place, n: usize) -> Relays {
        let mut r = Relays {
            exe: std::env::current_exe().expect("test binary"),
            place: place.clone(),
            children: Vec::new(),
            exits: Vec::new(),
        };
        for _ in 0..n {
            let c = r.spawn();
            r.children.push(c);
        }
        r
    }

    fn spawn(&self) -> Child {
        Command::new(&self.exe)
            .args([
                "--exact",
                "crash_child_relay",
                "--ignored",
                "--quiet",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(ENV_STORE, self.place.kind.name())
            .env(ENV_LOCATION, &self.place.location)
            .env(ENV_TABLE, &self.place.table)
            .env(ENV_LEASE_MS, LEASE.as_millis().to_string())
            .env(ENV_PARENT, std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn a relay process")
    }

    /// SIGKILLs relay `i`, reaps it and starts a replacement at once; returns when
    /// the kill was sent.
    fn kill_and_replace(&mut self, i: usize) -> Instant {
        let at = Instant::now();
        let _ = self.children[i].kill(); // SIGKILL on Unix
        let _ = self.children[i].wait();
        self.children[i] = self.spawn();
        at
    }

    /// Replaces relays that exited by themselves (a panic at start-up, say).
    fn replace_exited(&mut self) {
        for i in 0..self.children.len() {
            if let Ok(Some(status)) = self.children[i].try_wait() {
                self.exits.push((Instant::now(), status.to_string()));
                assert!(
                    self.exits.len() < 50,
                    "relay processes keep exiting by themselves: {:?}",
                    &self.exits[..5]
                );
                self.children[i] = self.spawn();
            }
        }
    }
}

impl Drop for Relays {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

// ---------------------------------------------------------------------------
// The consumer: a durable queue on its own thread, every delivery timestamped.

struct Delivery {
    at: Instant,
    message_id: Option<String>,
    body: Vec<u8>,
    /// With an inbox consumer: the inbox had the id already (the effect was not
    /// applied again).
    duplicate: bool,
}

/// The inbox side of a consumer: every delivery's effect (a row in `fx`) is
/// applied through the inbox in one PostgreSQL transaction, committed before the
/// ack.
struct InboxSide {
    db: postgres::Client,
    inbox: PostgresInbox,
    fx: String,
    processed: u64,
    /// Deliveries requeued on purpose after their commit (a consumer dying before
    /// its ack), and after a failed transaction: both come again.
    requeues: Arc<Mutex<Vec<Instant>>>,
    errors: Arc<Mutex<Vec<String>>>,
}

impl InboxSide {
    fn new(table: &str) -> InboxSide {
        let mut db = common::pg();
        let inbox = PostgresInbox::with_table(&format!("{table}_inbox")).expect("inbox table name");
        inbox.migrate(&mut db).expect("inbox migrate");
        let fx = format!("{table}_fx");
        db.batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS \"{fx}\" (message_id UUID NOT NULL, n BIGINT)"
        ))
        .expect("effects table");
        InboxSide {
            db,
            inbox,
            fx,
            processed: 0,
            requeues: Arc::default(),
            errors: Arc::default(),
        }
    }

    fn apply(
        &mut self,
        id: MessageId,
        body: &[u8],
    ) -> outboxer::Result<outboxer::inbox::Outcome<()>> {
        let n = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|b| b["n"].as_i64());
        let sql = format!(
            "INSERT INTO \"{}\" (message_id, n) VALUES ($1, $2)",
            self.fx
        );
        let mut tx = self.db.transaction()?;
        let outcome = self.inbox.process(&mut tx, id, |tx| {
            tx.execute(&sql, &[id.as_uuid(), &n])?;
            Ok::<_, outboxer::Error>(())
        })?;
        tx.commit()?;
        Ok(outcome)
    }

    /// Effect rows per message id.
    fn effects(&mut self) -> HashMap<String, i64> {
        self.db
            .query(
                &format!(
                    "SELECT message_id::text, count(*) FROM \"{}\" GROUP BY 1",
                    self.fx
                ),
                &[],
            )
            .expect("effects")
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    }
}

struct Consumer {
    rx: crossbeam_channel::Receiver<Delivery>,
    /// With an inbox: its requeue times and errors (the side itself lives on the
    /// consumer thread and comes back when it ends).
    requeues: Arc<Mutex<Vec<Instant>>>,
    inbox_errors: Arc<Mutex<Vec<String>>>,
    /// When the consumer lost its connection: unacked deliveries come again after it.
    reconnects: Arc<Mutex<Vec<Instant>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Option<InboxSide>>>,
}

impl Consumer {
    fn start(exchange: &str, mut side: Option<InboxSide>) -> Consumer {
        let queue = unique("crashq");
        let (tx, rx) = crossbeam_channel::unbounded();
        let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
        let reconnects = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let requeues = side
            .as_ref()
            .map(|s| Arc::clone(&s.requeues))
            .unwrap_or_default();
        let inbox_errors = side
            .as_ref()
            .map(|s| Arc::clone(&s.errors))
            .unwrap_or_default();
        let (ex, rc, st) = (
            exchange.to_string(),
            Arc::clone(&reconnects),
            Arc::clone(&stop),
        );
        let thread = std::thread::spawn(move || {
            let mut ready = Some(ready_tx);
            while !st.load(Ordering::Relaxed) {
                if consume(&ex, &queue, &tx, &mut ready, &st, &mut side).is_ok() {
                    break;
                }
                rc.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(Instant::now());
                std::thread::sleep(Duration::from_millis(300));
            }
            side
        });
        ready_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("consumer ready (RabbitMQ on 127.0.0.1:5672)");
        Consumer {
            rx,
            requeues,
            inbox_errors,
            reconnects,
            stop,
            thread: Some(thread),
        }
    }

    /// Stops the consumer; returns its inbox side, if any.
    fn finish(mut self) -> Option<InboxSide> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().and_then(|t| t.join().ok()).flatten()
    }

    fn reconnects(&self) -> Vec<Instant> {
        self.reconnects
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn consume(
    ex: &str,
    q: &str,
    tx: &crossbeam_channel::Sender<Delivery>,
    ready: &mut Option<crossbeam_channel::Sender<()>>,
    stop: &AtomicBool,
    side: &mut Option<InboxSide>,
) -> amiquip::Result<()> {
    let mut conn = Connection::insecure_open(&amqp_url())?;
    let ch = conn.open_channel(None)?;
    let queue = common::bound_queue(&ch, ex, q, "#")?;
    let consumer = queue.consume(ConsumerOptions::default())?;
    if let Some(r) = ready.take() {
        let _ = r.send(());
    }
    while !stop.load(Ordering::Relaxed) {
        match consumer.receiver().recv_timeout(Duration::from_millis(100)) {
            Ok(ConsumerMessage::Delivery(d)) => {
                let mut got = Delivery {
                    at: Instant::now(),
                    message_id: d.properties.message_id().clone(),
                    body: d.body.clone(),
                    duplicate: false,
                };
                let id = got
                    .message_id
                    .as_deref()
                    .and_then(|s| s.parse::<MessageId>().ok());
                if let (Some(side), Some(id)) = (side.as_mut(), id) {
                    let requeue = match side.apply(id, &d.body) {
                        Ok(outcome) => {
                            got.duplicate = outcome.is_duplicate();
                            side.processed += u64::from(outcome.is_processed());
                            // Every 10th new one: committed, then "dies" before its ack.
                            outcome.is_processed() && side.processed % 10 == 0
                        }
                        Err(e) => {
                            side.errors
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .push(e.to_string());
                            true
                        }
                    };
                    if requeue {
                        side.requeues
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(Instant::now());
                        consumer.nack(d, true)?;
                        if tx.send(got).is_err() {
                            break;
                        }
                        continue;
                    }
                }
                consumer.ack(d)?;
                if tx.send(got).is_err() {
                    break;
                }
            }
            Ok(_) => return Err(amiquip::Error::ClientClosedChannel),
            Err(e) if e.is_timeout() => {}
            Err(_) => return Err(amiquip::Error::ClientClosedChannel),
        }
    }
    let _ = consumer.cancel();
    let _ = ch.queue_delete(q, Default::default());
    // The relays are gone by now (the driver drops them first).
    let _ = ch.exchange_delete(ex, false);
    let _ = conn.close();
    Ok(())
}

// ---------------------------------------------------------------------------
// The driver.

/// How hard a run is.
struct Mode {
    full: bool,
    kills: usize,
    messages: usize,
    /// Messages committed per second.
    rate: f64,
    /// Pause between kills, uniformly random in this range (ms).
    kill_gap_ms: (u64, u64),
    /// Sending stops here even if the targets are not met (then the test fails).
    limit: Duration,
    /// How long to wait for the last committed message once sending stopped.
    drain: Duration,
}

impl Mode {
    fn from_env() -> Mode {
        if std::env::var("OUTBOXER_CRASH_FULL").is_ok_and(|v| v == "1") {
            Mode {
                full: true,
                kills: 100,
                messages: 10_000,
                rate: 100.0,
                kill_gap_ms: (200, 1800),
                limit: Duration::from_secs(400),
                drain: Duration::from_secs(180),
            }
        } else {
            Mode {
                full: false,
                kills: 10,
                messages: 1500,
                rate: 100.0,
                kill_gap_ms: (400, 2400),
                limit: Duration::from_secs(45),
                drain: Duration::from_secs(60),
            }
        }
    }
}

impl Mode {
    /// The inbox consumer's run: bounded to about 40 s.
    fn inbox() -> Mode {
        Mode {
            full: false,
            kills: 10,
            messages: 2400,
            rate: 250.0,
            kill_gap_ms: (300, 1500),
            limit: Duration::from_secs(20),
            drain: Duration::from_secs(25),
        }
    }
}

/// Why a deliberately rolled-back transaction returned `Err`.
#[derive(Debug)]
enum Abort {
    Deliberate,
    #[allow(dead_code)] // read through Debug only
    Db(outboxer::Error),
}

impl From<outboxer::Error> for Abort {
    fn from(e: outboxer::Error) -> Self {
        Abort::Db(e)
    }
}

/// What the driver sent, by message id.
#[derive(Default)]
struct Ledger {
    committed: HashSet<String>,
    rolled_back: HashSet<String>,
    /// Commit attempts that failed: their messages may or may not be stored.
    uncertain: HashSet<String>,
    errors: Vec<String>,
    sent: usize,
    per_key_seq: [u64; KEYS],
    n: u64,
}

impl Ledger {
    fn unit(&mut self, ex: &str) -> Vec<Message> {
        (0..fastrand::usize(1..=6))
            .map(|_| {
                self.n += 1;
                let route = amqp::topic(ex, "crash");
                if fastrand::u8(..100) < 40 {
                    let k = fastrand::usize(..KEYS);
                    self.per_key_seq[k] += 1;
                    let key = format!("key-{k}");
                    let body =
                        serde_json::json!({"n": self.n, "key": key, "seq": self.per_key_seq[k]});
                    Message::new(body.to_string().into_bytes())
                        .route(route)
                        .ordering_key(key)
                } else {
                    let body = serde_json::json!({"n": self.n});
                    Message::new(body.to_string().into_bytes()).route(route)
                }
            })
            .collect()
    }

    /// Commits or deliberately rolls back one unit of 1..=6 messages.
    fn send<S: TxStore>(&mut self, outbox: &Outbox<S>, ex: &str) {
        let msgs = self.unit(ex);
        let ids: Vec<String> = msgs.iter().map(|m| m.message_id().to_string()).collect();
        self.sent += msgs.len();
        let how = fastrand::u8(..100);
        let result = if how < 15 {
            // Enqueued inside a transaction that is then rolled back: none may arrive.
            let r: Result<(), Abort> = outbox.transaction(|tx| {
                for m in &msgs {
                    tx.send(m.clone())?;
                }
                Err(Abort::Deliberate)
            });
            match r {
                Err(Abort::Deliberate) => {}
                other => self.errors.push(format!("rolled-back unit: {other:?}")),
            }
            // Err from the closure rolls back: whatever failed, nothing committed.
            self.rolled_back.extend(ids);
            return;
        } else if how < 45 {
            outbox.send_batch(&msgs).map(|_| ())
        } else {
            outbox.transaction(|tx| {
                for m in &msgs {
                    tx.send(m.clone())?;
                }
                Ok::<_, outboxer::Error>(())
            })
        };
        match result {
            Ok(()) => self.committed.extend(ids),
            Err(e) => {
                self.errors.push(e.to_string());
                self.uncertain.extend(ids);
            }
        }
    }
}

/// Sends at a steady rate while SIGKILLing a random relay at random points, then
/// checks what the consumer got.
fn crash_run<S: TxStore + Clone>(place: Place, store: S) {
    crash_run_with(place, store, Mode::from_env(), false);
}

/// A crash run; with `inbox`, the consumer applies each message's effect through
/// the inbox and the effects are checked too.
fn crash_run_with<S: TxStore + Clone>(place: Place, store: S, mode: Mode, inbox: bool) {
    let began = Instant::now();
    let _cleanup = Cleanup(place.clone());
    store.migrate().expect("migrate");
    let ex = unique("crashex");
    let side = inbox.then(|| InboxSide::new(&place.table));
    let consumer = Consumer::start(&ex, side);
    let sender = Outbox::builder()
        .store(store.clone())
        .build()
        .expect("outbox");
    let mut relays = Relays::start(&place, RELAYS);

    let mut ledger = Ledger::default();
    let mut kills: Vec<Instant> = Vec::new();
    let gap = || Duration::from_millis(fastrand::u64(mode.kill_gap_ms.0..=mode.kill_gap_ms.1));
    let start = Instant::now();
    let mut next_kill = start + gap();
    loop {
        let now = Instant::now();
        let done = ledger.sent >= mode.messages && kills.len() >= mode.kills;
        if done || now - start >= mode.limit {
            break;
        }
        if now >= next_kill {
            let i = fastrand::usize(..RELAYS);
            kills.push(relays.kill_and_replace(i));
            next_kill = Instant::now() + gap();
        }
        relays.replace_exited();
        let due = (start.elapsed().as_secs_f64() * mode.rate) as usize;
        if ledger.sent < due {
            ledger.send(&sender, &ex);
        } else {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let sending = start.elapsed();

    // No more kills: the relays left finish the work.
    let mut got: Vec<Delivery> = Vec::new();
    let mut outstanding: HashSet<&str> = ledger.committed.iter().map(String::as_str).collect();
    let wait_until = Instant::now() + mode.drain;
    while !outstanding.is_empty() && Instant::now() < wait_until {
        relays.replace_exited();
        if let Ok(d) = consumer.rx.recv_timeout(Duration::from_millis(200)) {
            if let Some(id) = &d.message_id {
                outstanding.remove(id.as_str());
            }
            got.push(d);
        }
    }
    // Late copies: a killed relay's lease runs out after its last kill.
    let last_kill = kills.last().copied().unwrap_or(start);
    let tail_until = (last_kill + LEASE).max(Instant::now()) + Duration::from_millis(1500);
    while let Ok(d) = consumer
        .rx
        .recv_timeout(tail_until.saturating_duration_since(Instant::now()))
    {
        got.push(d);
    }
    // The table agrees: nothing pending or parked once the marks land.
    let stats_until = Instant::now() + Duration::from_secs(15);
    let mut stats = store.stats().expect("stats");
    while stats.pending > 0 && Instant::now() < stats_until {
        std::thread::sleep(Duration::from_millis(100));
        stats = store.stats().expect("stats");
    }
    relays.replace_exited();
    let exits = std::mem::take(&mut relays.exits);
    drop(relays);
    let reconnects = consumer.reconnects();
    let requeues = consumer
        .requeues
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let inbox_errors = consumer
        .inbox_errors
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let side = consumer.finish();

    // A requeued delivery comes again: it explains a duplicate as a reconnect does.
    let mut redeliveries = reconnects.clone();
    redeliveries.extend(&requeues);
    let report = check(&ledger, &got, &kills, &exits, &redeliveries);
    println!(
        "CRASH store={} mode={} kills={} messages={} lost={} rolled_back_published={} duplicates={} \
         order_violations={} unexplained_duplicates={} strangers={} altered={} reissued={} rolled_back_sent={} \
         send_errors={} relay_exits={} consumer_reconnects={} max_dup_gap_after_crash_ms={} \
         sending_secs={:.1} secs={:.1}",
        place.kind.name(),
        if mode.full { "full" } else { "default" },
        kills.len(),
        ledger.committed.len(),
        report.lost.len(),
        report.rolled_back_published.len(),
        report.duplicates,
        report.order_violations.len(),
        report.unexplained.len(),
        report.strangers,
        report.altered,
        report.reissued,
        ledger.rolled_back.len(),
        ledger.errors.len(),
        exits.len(),
        reconnects.len(),
        report.max_gap_ms,
        sending.as_secs_f64(),
        began.elapsed().as_secs_f64(),
    );
    if !ledger.errors.is_empty() {
        println!(
            "send errors (first 5): {:?}",
            &ledger.errors[..ledger.errors.len().min(5)]
        );
    }
    if !exits.is_empty() {
        println!("relays that exited by themselves: {exits:?}");
    }

    assert!(
        kills.len() >= mode.kills,
        "only {} kills within {:?}",
        kills.len(),
        mode.limit
    );
    assert!(
        ledger.committed.len() + ledger.uncertain.len() + ledger.rolled_back.len() >= mode.messages,
        "only {} messages sent within {:?}",
        ledger.sent,
        mode.limit
    );
    assert!(
        report.lost.is_empty(),
        "{} committed messages lost, e.g. {:?}",
        report.lost.len(),
        report.lost.iter().take(5).collect::<Vec<_>>()
    );
    assert!(
        report.rolled_back_published.is_empty(),
        "rolled-back messages published: {:?}",
        report.rolled_back_published
    );
    assert_eq!(report.strangers, 0, "deliveries with unknown message ids");
    assert_eq!(
        (report.altered, report.reissued),
        (0, 0),
        "copies with another body, payloads under another message id"
    );
    assert!(
        report.unexplained.is_empty(),
        "duplicates with no crash between {IN_FLIGHT:?} before the earlier copy and the later copy: {:?}",
        report.unexplained
    );
    assert!(
        report.order_violations.is_empty(),
        "per-key order broken: {:?}",
        report.order_violations
    );
    assert_eq!(
        (stats.pending, stats.parked),
        (0, 0),
        "table after the run: {stats:?}"
    );
    if let Some(mut side) = side {
        check_effects(&ledger, &got, &requeues, &inbox_errors, &mut side);
    }
}

/// The inbox consumer's effects: each committed message's exactly once, none of
/// a rolled-back one, whatever duplicates arrived.
fn check_effects(
    ledger: &Ledger,
    got: &[Delivery],
    requeues: &[Instant],
    errors: &[String],
    side: &mut InboxSide,
) {
    let effects = side.effects();
    let duplicates = got.iter().filter(|d| d.duplicate).count();
    let repeated: Vec<_> = effects.iter().filter(|(_, n)| **n != 1).collect();
    let missing: Vec<_> = ledger
        .committed
        .iter()
        .filter(|id| !effects.contains_key(id.as_str()))
        .take(5)
        .collect();
    let rolled_back: Vec<_> = ledger
        .rolled_back
        .iter()
        .filter(|id| effects.contains_key(id.as_str()))
        .collect();
    println!(
        "INBOX deliveries={} duplicates_seen={duplicates} requeued={} not_from_requeues={} effects={} \
         repeated={} missing={} rolled_back_applied={} inbox_errors={}",
        got.len(),
        requeues.len(),
        duplicates.saturating_sub(requeues.len()),
        effects.len(),
        repeated.len(),
        missing.len(),
        rolled_back.len(),
        errors.len(),
    );
    assert!(
        repeated.is_empty(),
        "effects applied more than once: {repeated:?}"
    );
    assert!(
        missing.is_empty(),
        "committed messages without an effect: {missing:?}"
    );
    assert!(
        rolled_back.is_empty(),
        "effects of rolled-back messages: {rolled_back:?}"
    );
    // Every requeued delivery came again and was recognised: duplicates did arrive,
    // and their effects did not repeat.
    assert!(
        !requeues.is_empty(),
        "no delivery was requeued: the run tested no duplicate"
    );
    assert!(
        duplicates >= requeues.len().saturating_sub(errors.len()),
        "{duplicates} duplicates recognised, {} deliveries requeued after their commit",
        requeues.len().saturating_sub(errors.len())
    );
}

#[derive(Default)]
struct Report {
    lost: Vec<String>,
    rolled_back_published: Vec<String>,
    /// Deliveries beyond the first of each message id.
    duplicates: usize,
    /// (message id, ms from the earlier copy to the later one) of duplicates no crash explains.
    unexplained: Vec<(String, u128)>,
    /// (key, earlier seq, later seq) of first deliveries out of order.
    order_violations: Vec<(String, u64, u64)>,
    strangers: usize,
    /// Later copies whose body differs from the first copy's.
    altered: usize,
    /// Payloads (by their sequence number `n`) that arrived under more than one message id.
    reissued: usize,
    /// The longest time from the latest explaining crash to a duplicate's delivery.
    max_gap_ms: u128,
}

fn check(
    ledger: &Ledger,
    got: &[Delivery],
    kills: &[Instant],
    exits: &[(Instant, String)],
    reconnects: &[Instant],
) -> Report {
    let mut r = Report::default();
    // Anything that may make a message arrive twice: our kills, relays that died by
    // themselves, and the consumer losing its connection (unacked deliveries return).
    let mut crashes: Vec<Instant> = kills.to_vec();
    crashes.extend(exits.iter().map(|(t, _)| *t));
    crashes.extend(reconnects);
    crashes.sort();

    let mut times: HashMap<&str, Vec<Instant>> = HashMap::new();
    let mut first_per_key: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut first_body: HashMap<&str, &[u8]> = HashMap::new();
    let mut id_of_n: HashMap<u64, &str> = HashMap::new();
    for d in got {
        let Some(id) = d.message_id.as_deref() else {
            r.strangers += 1;
            continue;
        };
        if !ledger.committed.contains(id) && !ledger.uncertain.contains(id) {
            if ledger.rolled_back.contains(id) {
                r.rolled_back_published.push(id.to_string());
            } else {
                r.strangers += 1;
            }
        }
        let t = times.entry(id).or_default();
        t.push(d.at);
        if t.len() > 1 {
            if first_body.get(id).is_some_and(|b| *b != d.body.as_slice()) {
                r.altered += 1;
            }
            continue;
        }
        first_body.insert(id, &d.body);
        let body: serde_json::Value = serde_json::from_slice(&d.body).unwrap_or_default();
        if let Some(n) = body["n"].as_u64() {
            if id_of_n.insert(n, id).is_some() {
                r.reissued += 1;
            }
        }
        if let (Some(key), Some(seq)) = (body["key"].as_str(), body["seq"].as_u64()) {
            first_per_key.entry(key.to_string()).or_default().push(seq);
        }
    }
    r.lost = ledger
        .committed
        .iter()
        .filter(|id| !times.contains_key(id.as_str()))
        .cloned()
        .collect();
    r.lost.sort();
    for (id, t) in &times {
        r.duplicates += t.len() - 1;
        for pair in t.windows(2) {
            let (earlier, later) = (pair[0], pair[1]);
            let from = earlier.checked_sub(IN_FLIGHT).unwrap_or(earlier);
            // The latest crash in [earlier - IN_FLIGHT, later].
            match crashes.iter().rev().find(|c| **c >= from && **c <= later) {
                Some(c) => r.max_gap_ms = r.max_gap_ms.max((later - *c).as_millis()),
                None => r
                    .unexplained
                    .push((id.to_string(), (later - earlier).as_millis())),
            }
        }
    }
    for (key, seqs) in &first_per_key {
        for w in seqs.windows(2) {
            if w[1] <= w[0] {
                r.order_violations.push((key.clone(), w[0], w[1]));
            }
        }
    }
    r
}

// ---------------------------------------------------------------------------
// One run per store.

#[test]
fn crash_postgres() {
    let _serial = serial();
    let place = Place {
        kind: Kind::Postgres,
        location: pg_url(),
        table: unique("crash"),
    };
    let store = pg_store(&place);
    crash_run(place, store);
}

/// The crash run with a consumer that applies effects through the inbox: every
/// committed message's effect exactly once while relays are SIGKILLed and the
/// consumer requeues every 10th delivery after its commit.
#[test]
fn crash_postgres_inbox_consumer() {
    let _serial = serial();
    let place = Place {
        kind: Kind::Postgres,
        location: pg_url(),
        table: unique("crashin"),
    };
    let store = pg_store(&place);
    crash_run_with(place, store, Mode::inbox(), true);
}

#[cfg(feature = "mysql")]
#[test]
fn crash_mysql() {
    let _serial = serial();
    let place = Place {
        kind: Kind::Mysql,
        location: mysql_url(),
        table: unique("crash"),
    };
    let store = mysql_store(&place);
    crash_run(place, store);
}

#[cfg(feature = "sqlite")]
#[test]
fn crash_sqlite() {
    let _serial = serial();
    let place = Place {
        kind: Kind::Sqlite,
        location: std::env::temp_dir()
            .join(format!("{}.db", unique("outboxer-crash")))
            .to_string_lossy()
            .into_owned(),
        table: "crash_outbox".into(),
    };
    let store = sqlite_store(&place);
    crash_run(place, store);
}

/// The checker itself, on made-up deliveries: it must flag what it is there to flag.
#[test]
fn crash_checker_flags_loss_rollback_stray_duplicates_and_disorder() {
    let t0 = Instant::now() + Duration::from_secs(10);
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    let d = |ms: u64, id: &str, body: serde_json::Value| Delivery {
        at: at(ms),
        message_id: Some(id.to_string()),
        body: body.to_string().into_bytes(),
        duplicate: false,
    };
    let mut ledger = Ledger::default();
    ledger
        .committed
        .extend(["a", "b", "c", "lost", "k1", "k2"].map(String::from));
    ledger.rolled_back.insert("rb".into());
    ledger.committed.extend(["x", "y"].map(String::from));
    let k = |seq: u64| serde_json::json!({"key": "key-0", "seq": seq});
    let got = vec![
        d(0, "a", serde_json::json!({})),
        d(200, "k2", k(2)),
        d(300, "k1", k(1)), // after seq 2: out of order
        d(400, "rb", serde_json::json!({})),
        d(2500, "a", serde_json::json!({})), // the crash at 1000 explains it
        d(3500, "b", serde_json::json!({})),
        d(5000, "b", serde_json::json!({})), // no crash in [3500 - IN_FLIGHT, 5000]
        d(5100, "c", serde_json::json!({})),
        d(5200, "k2", k(2)), // a later copy: not an order violation
        d(5300, "a", serde_json::json!({"n": 9})), // a third copy of a, altered
        d(5400, "x", serde_json::json!({"n": 7})),
        d(5500, "y", serde_json::json!({"n": 7})), // the same payload under another id
    ];
    let r = check(&ledger, &got, &[at(1000)], &[], &[]);
    assert_eq!(r.lost, vec!["lost".to_string()]);
    assert_eq!(r.rolled_back_published, vec!["rb".to_string()]);
    assert_eq!(r.duplicates, 4);
    assert_eq!((r.altered, r.reissued), (1, 1));
    assert_eq!(r.unexplained, vec![("b".to_string(), 1500)]);
    assert_eq!(r.order_violations, vec![("key-0".to_string(), 2, 1)]);
    assert_eq!(r.strangers, 0);
    assert_eq!(r.max_gap_ms, 4300);
    // A crash after the later copy explains nothing.
    let r = check(&ledger, &got, &[at(2600)], &[], &[]);
    assert_eq!(r.unexplained, vec![("a".to_string(), 2500)]);
    let r = check(&ledger, &got, &[], &[], &[at(4000)]);
    assert_eq!(
        r.unexplained.len(),
        1,
        "a consumer reconnect explains all but the first copy pair of a"
    );
    // Nothing at all explains any of them.
    assert_eq!(check(&ledger, &got, &[], &[], &[]).unexplained.len(), 4);
}
