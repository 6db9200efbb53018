//! Throughput and latency benchmark of outboxer against a real database and RabbitMQ.
//!
//! ```text
//! cargo run --release --example bench --features postgres,amqp -- --messages 20000
//! cargo run --release --example bench --features postgres,mysql,amqp -- --store mysql
//! cargo run --release --example bench --features postgres,amqp,kafka -- --stream kafka
//! cargo run --release --example bench --features postgres,amqp,async -- --async
//! ```
//!
//! `--stream amqp|kafka` (default `amqp`) picks the broker. Kafka needs the `kafka`
//! feature and `OUTBOXER_KAFKA_URL` (default `kafka://127.0.0.1:9092`, the Tansu broker
//! of `scripts/kafka-broker start`). With Kafka, every message is routed with
//! `kafka::topic(<topic>).key("bench")` to a topic of one partition that the bench
//! creates (rdkafka's admin client) and deletes at the end; phase 3 is the raw rdkafka
//! ceiling: a `BaseProducer` with `enable.idempotence=true`, `acks=all` (the settings
//! `KafkaStream` uses), the same records (payload, key, timestamp, message-id header),
//! 1000 sends then poll (1 ms steps: rdkafka 0.39's `BaseProducer::poll` always
//! blocks for its whole timeout) until all 1000 delivery reports arrived, repeated. There is no
//! consumer-side check with Kafka: the ceiling and the relays count delivery reports
//! (acks=all); the topic's high watermark is printed at the end, not checked.
//!
//! `--stream pubsub` needs the `pubsub` feature and the Pub/Sub emulator at
//! `OUTBOXER_PUBSUB_EMULATOR` (default `127.0.0.1:8086`, `scripts/pubsub-emulator
//! start`). Messages are routed with `pubsub::topic(<topic>)` (no ordering key) to a
//! topic that the bench creates and deletes; phase 3 is the raw REST ceiling of the
//! emulator: `POST projects/P/topics/T:publish` with 1000 messages per request (the
//! same JSON as `PubSubStream`: base64 data, the message-id attribute), one request
//! after the other on one keep-alive connection (ureq), each checked for 1000 message
//! ids. No consumer-side check: the ceiling and the relays count publish responses.
//! `--stream sqs|kinesis` (features `sqs` / `kinesis`) publishes to moto
//! (`scripts/moto-server start`; `OUTBOXER_AWS_URL`, default `http://127.0.0.1:4566`,
//! region us-east-1, key test:test): a standard queue (keyless messages, batches of
//! 10) or a stream of one shard (`partition_key("bench")`, up to 500 records a call).
//! Phase 3 is the raw ceiling of that server: signed `SendMessageBatch` /
//! `PutRecords` calls, one after the other like the stream's, with the same bodies
//! and attributes (SQS) or envelopes (Kinesis). With SQS every phase checks the
//! queue's message count (moto's is exact); with Kinesis there is no consumer-side check.
//!
//! `--store postgres|mysql|sqlite|sqlserver` (default `postgres`) picks the database;
//! each store other than PostgreSQL needs its cargo feature as well. Servers:
//! `OUTBOXER_PG_URL` (default `postgres://postgres@127.0.0.1:5432/test`),
//! `OUTBOXER_MYSQL_URL` (default `mysql://root@127.0.0.1:3306/test`, MySQL 8 or
//! MariaDB), `OUTBOXER_SQLITE_PATH` (a file path; default a file in the temporary
//! directory, removed at the end), `OUTBOXER_MSSQL_URL` (an ADO.NET connection string;
//! no default) and `OUTBOXER_AMQP_URL` (default `amqp://guest:guest@127.0.0.1:5672/%2f`).
//!
//! Every message is the same shape: a 200-byte payload, no user headers, routed with
//! `amqp::topic(<exchange>, "bench")` to a durable topic exchange that has one durable
//! queue bound to it. A consumer thread drains that queue (`no_ack`) all the time, and
//! after every publishing phase the benchmark waits until it has received everything
//! published so far (an end-to-end check; the queue is purged if it falls behind).
//!
//! Phases, in order, each on its own table named after the process id:
//!
//! 1. `insert_per_s` — the raw database ceiling: the same rows, in the same column
//!    types as that store's outbox table, inserted into a plain table with only a
//!    primary key, 1000 rows per transaction, statements prepared once, on a client of
//!    our own. PostgreSQL: `INSERT .. SELECT * FROM unnest(..)` (uuid, bytea, jsonb,
//!    jsonb). MySQL/MariaDB: one multi-row `INSERT .. VALUES (?, ?, ?, ?), ..` (BINARY(16),
//!    LONGBLOB, JSON, JSON). SQLite: a prepared single-row INSERT run 1000 times in one
//!    `BEGIN IMMEDIATE` transaction, with the store's pragmas. SQL Server: two multi-row
//!    `INSERT .. VALUES` of 500 rows (the 2100-parameter limit) per transaction
//!    (UNIQUEIDENTIFIER, VARBINARY(MAX) x 3). Best of three runs, each on a fresh table.
//! 2. `enqueue_per_s` — the library's `Outbox::send_batch` of 1000 messages per call into
//!    a freshly migrated outbox table, no relay running. Best of three runs, each on a
//!    fresh table. `enqueue_ratio` is `insert_per_s / enqueue_per_s` (1.0 = no overhead
//!    over plain SQL).
//! 3. `ceiling_per_s` — the raw broker ceiling: amiquip on a TCP_NODELAY socket (opened the
//!    way the library opens it), one channel in confirm mode, persistent `mandatory`
//!    publishes with a `message_id` property, a timestamp and the message-id header,
//!    1000 publishes then wait for all their confirms, repeated. Best of three runs.
//! 4. `relay_per_s` — N messages enqueued first, then ONE relay (`check_interval` 10 ms,
//!    no cleanup) timed from `start()` until its `published` counter reaches N; batch
//!    sizes 500 and 1000, the best is reported. `ratio` is `relay_per_s / ceiling_per_s`.
//! 5. `relay2_per_s` — the same with TWO `Outbox` instances (each with its own store and
//!    stream) on one table, started together, timed until the sum of `published` is N.
//! 6. `p50_ms` / `p99_ms` — commit-to-publish latency at a steady 200 msg/s: one relay
//!    with `check_interval` 1 s (so the wake-up on `send` does the work, not polling),
//!    2000 messages sent one by one with `Outbox::send`; per message, the time from
//!    `send` returning to its `Delivered` arriving on `relay.ok()`.
//!
//! Phases 2 and 4 to 6 are the same code for every store (generic over [`Store`]).
//! With `--breakdown`, phases 3 to 5 also print the machine's CPU use per process
//! (from `/proc`, Linux; also as CPU time per message), phases 4 and 5 wrap the store and the stream in timing
//! decorators (through the public `Store` and `Stream` traits) to show how busy the
//! relay's claim, publish and mark steps were, and what the database wrote (PostgreSQL:
//! WAL bytes; MySQL/MariaDB: redo bytes, fsyncs, statements and index reads from
//! `SHOW GLOBAL STATUS`, server-wide). The default run measures the plain stores and
//! `AmqpStream`.
//!
//! `--async` (PostgreSQL only, needs the `async` feature) runs phases 2 and 4 to 6
//! through `outboxer::async_impl` on a current-thread tokio runtime: `send_batch` /
//! `send` over tokio-postgres, the async Outbox's relay (the blocking pipeline on its
//! own threads, outcomes received from its async channels); phases 1 and 3 are the
//! same raw ceilings.
//!
//! Tables are used fresh, as `migrate()` leaves them (never analyzed). At 20000 messages
//! each run lasts one or two seconds, so single results vary by ±20% from run to run.
//!
//! The last line of output is machine-readable, the same for every store (the line
//! before it names the store):
//! `RESULT relay_per_s=.. ceiling_per_s=.. ratio=.. relay2_per_s=.. enqueue_per_s=..
//! insert_per_s=.. enqueue_ratio=.. p50_ms=.. p99_ms=..`.
//! Tables, the exchange and the queue are removed at the end, also after an error.

use amiquip::{
    AmqpProperties, AmqpValue, Auth, Channel, Confirm, ConfirmSmoother, Connection,
    ConnectionOptions, ConnectionTuning, ConsumerMessage, ConsumerOptions, ExchangeDeclareOptions,
    ExchangeType, FieldTable, Publish, QueueDeclareOptions, QueueDeleteOptions,
};
use outboxer::store::{BatchLimit, Claim, FailedAttempt, Lease, Requeue, Stats, WakeListener};
use outboxer::stream::{amqp, kafka, pubsub, AmqpStream, Deadline, Validate};
use outboxer::{
    Message, MessageId, Outbox, RelayCounters, Store, StoredMessage, Stream, MESSAGE_ID_HEADER,
};
use std::collections::HashMap;
use std::error::Error;
use std::net::ToSocketAddrs;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

type BoxResult<T> = Result<T, Box<dyn Error>>;

/// Payload bytes per message.
const PAYLOAD_SIZE: usize = 200;
/// Rows per transaction (phases 1, 2 and the pre-enqueue) and publishes per confirm window.
const CHUNK: usize = 1000;
/// Routing key of every message; the queue is bound with it.
const ROUTING_KEY: &str = "bench";
/// Relay batch sizes tried in phase 4.
const BATCH_SIZES: [usize; 2] = [500, 1000];
/// Runs of phases 1, 2 and 3 (a few hundred ms each at 20000 messages, so noisy); the
/// best one counts.
const RUNS: usize = 3;
/// Messages and rate of the latency phase.
const LATENCY_MESSAGES: usize = 2000;
const LATENCY_RATE_PER_S: u64 = 200;
/// Longest wait for a relay run or for the consumer to catch up.
const PHASE_TIMEOUT: Duration = Duration::from_secs(300);

fn main() -> ExitCode {
    match try_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Picks the store: a store not compiled in or a missing setting fails here, before
/// RabbitMQ is touched.
fn try_main() -> BoxResult<()> {
    let args = parse_args()?;
    if args.stream == StreamKind::PubSub && !cfg!(feature = "pubsub") {
        return Err(format!(
            "--stream pubsub is not compiled in: add the `pubsub` feature \
             (cargo run --release --example bench --features {},amqp,pubsub -- --stream pubsub)",
            args.store.feature()
        )
        .into());
    }
    if args.stream == StreamKind::Kafka && !cfg!(feature = "kafka") {
        return Err(format!(
            "--stream kafka is not compiled in: add the `kafka` feature \
             (cargo run --release --example bench --features {},amqp,kafka -- --stream kafka)",
            args.store.feature()
        )
        .into());
    }
    for (kind, on, feature) in [
        (StreamKind::Sqs, cfg!(feature = "sqs"), "sqs"),
        (StreamKind::Kinesis, cfg!(feature = "kinesis"), "kinesis"),
    ] {
        if args.stream == kind && !on {
            return Err(format!(
                "--stream {feature} is not compiled in: add the `{feature}` feature"
            )
            .into());
        }
    }
    let env = Env::new(&args);
    match args.store {
        StoreKind::Postgres => bench(&env, &pg::Postgres::from_env()),
        #[cfg(feature = "mysql")]
        StoreKind::Mysql => bench(&env, &my::Mysql::from_env()?),
        #[cfg(feature = "sqlite")]
        StoreKind::Sqlite => bench(&env, &lite::Sqlite::from_env(env.pid)),
        #[cfg(feature = "sqlserver")]
        StoreKind::SqlServer => bench(&env, &mssql::SqlServer::from_env()?),
        #[allow(unreachable_patterns)]
        other => Err(format!(
            "--store {0} is not compiled in: add the `{0}` feature \
             (cargo run --release --example bench --features postgres,{0},amqp -- --store {0})",
            other.feature()
        )
        .into()),
    }
}

/// Command line: `--messages N` (default 20000), `--store NAME`, `--stream NAME`,
/// `--breakdown`.
struct Args {
    messages: usize,
    store: StoreKind,
    stream: StreamKind,
    breakdown: bool,
    async_api: bool,
}

/// The broker of phases 3 to 6.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StreamKind {
    Amqp,
    Kafka,
    PubSub,
    Sqs,
    Kinesis,
}

impl StreamKind {
    fn parse(name: &str) -> Result<StreamKind, String> {
        match name {
            "amqp" | "rabbitmq" => Ok(StreamKind::Amqp),
            "kafka" => Ok(StreamKind::Kafka),
            "pubsub" => Ok(StreamKind::PubSub),
            "sqs" => Ok(StreamKind::Sqs),
            "kinesis" => Ok(StreamKind::Kinesis),
            _ => Err(format!(
                "--stream {name:?}: expected amqp, kafka, pubsub, sqs or kinesis"
            )),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StoreKind {
    Postgres,
    Mysql,
    Sqlite,
    SqlServer,
}

impl StoreKind {
    fn parse(name: &str) -> Result<StoreKind, String> {
        match name {
            "postgres" | "postgresql" | "pg" => Ok(StoreKind::Postgres),
            "mysql" | "mariadb" => Ok(StoreKind::Mysql),
            "sqlite" => Ok(StoreKind::Sqlite),
            "sqlserver" | "mssql" => Ok(StoreKind::SqlServer),
            _ => Err(format!(
                "--store {name:?}: expected postgres, mysql, sqlite or sqlserver"
            )),
        }
    }

    /// The cargo feature of this store.
    fn feature(self) -> &'static str {
        match self {
            StoreKind::Postgres => "postgres",
            StoreKind::Mysql => "mysql",
            StoreKind::Sqlite => "sqlite",
            StoreKind::SqlServer => "sqlserver",
        }
    }
}

fn parse_args() -> Result<Args, String> {
    const USAGE: &str = "usage: --messages N --store postgres|mysql|sqlite|sqlserver \
                         --stream amqp|kafka|pubsub|sqs|kinesis [--breakdown] [--async]";
    let mut parsed = Args {
        messages: 20_000,
        store: StoreKind::Postgres,
        stream: StreamKind::Amqp,
        breakdown: false,
        async_api: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--breakdown" {
            parsed.breakdown = true;
            continue;
        }
        if arg == "--async" {
            parsed.async_api = true;
            continue;
        }
        // `--name value` or `--name=value`.
        let (name, inline) = match arg.split_once('=') {
            Some((name, value)) => (name.to_string(), Some(value.to_string())),
            None => (arg.clone(), None),
        };
        if name != "--messages" && name != "--store" && name != "--stream" {
            return Err(format!("unknown argument {arg:?} ({USAGE})"));
        }
        let value = match inline {
            Some(v) => v,
            None => args
                .next()
                .ok_or_else(|| format!("{name} needs a value ({USAGE})"))?,
        };
        if name == "--store" {
            parsed.store = StoreKind::parse(&value)?;
        } else if name == "--stream" {
            parsed.stream = StreamKind::parse(&value)?;
        } else {
            parsed.messages = value
                .parse()
                .map_err(|_| format!("--messages {value:?} is not a number"))?;
        }
    }
    if parsed.messages == 0 {
        return Err("--messages must be at least 1".into());
    }
    if parsed.async_api && !cfg!(feature = "async") {
        return Err("--async needs the `async` feature \
                    (cargo run --release --example bench --features postgres,amqp,async -- --async)"
            .into());
    }
    if parsed.async_api && (parsed.store != StoreKind::Postgres || parsed.breakdown) {
        return Err("--async runs with --store postgres, without --breakdown".into());
    }
    Ok(parsed)
}

/// Everything measured, for the RESULT line.
struct Results {
    insert_per_s: f64,
    enqueue_per_s: f64,
    ceiling_per_s: f64,
    relay_per_s: f64,
    relay2_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// Sets up the broker, runs every phase on `db`, cleans up and prints the RESULT line.
fn bench<B: Backend>(env: &Env, db: &B) -> BoxResult<()> {
    let destination = match env.stream {
        StreamKind::Amqp => format!("exchange {}, queue {}", env.exchange, env.queue),
        StreamKind::Kafka => format!("Kafka topic {} (1 partition)", env.topic),
        StreamKind::PubSub => format!("Pub/Sub topic {}", env.topic),
        StreamKind::Sqs => format!("SQS standard queue {} on moto", env.topic),
        StreamKind::Kinesis => format!("Kinesis stream {} (1 shard) on moto", env.topic),
    };
    println!(
        "bench: {} messages of {PAYLOAD_SIZE} bytes on {}; tables {}*, {destination}",
        env.messages,
        db.version()?,
        env.prefix(),
    );
    let broker = Broker::setup(env)?;
    let result = run(env, db, &broker);
    // Clean up whatever happened; a cleanup failure must not hide the run's error.
    if let Err(e) = broker.teardown() {
        eprintln!("bench: cleaning up the broker failed: {e}");
    }
    if let Err(e) = db.drop_tables_like(&env.prefix()) {
        eprintln!("bench: dropping tables failed: {e}");
    }
    db.finish();
    let r = result?;
    println!(
        "bench: store {}, stream {}, {} API",
        env.store.feature(),
        match env.stream {
            StreamKind::Amqp => "amqp",
            StreamKind::Kafka => "kafka",
            StreamKind::PubSub => "pubsub",
            StreamKind::Sqs => "sqs",
            StreamKind::Kinesis => "kinesis",
        },
        if env.async_api { "async" } else { "blocking" }
    );
    println!(
        "RESULT relay_per_s={:.2} ceiling_per_s={:.2} ratio={:.2} relay2_per_s={:.2} \
         enqueue_per_s={:.2} insert_per_s={:.2} enqueue_ratio={:.2} p50_ms={:.2} p99_ms={:.2}",
        r.relay_per_s,
        r.ceiling_per_s,
        r.relay_per_s / r.ceiling_per_s,
        r.relay2_per_s,
        r.enqueue_per_s,
        r.insert_per_s,
        r.insert_per_s / r.enqueue_per_s,
        r.p50_ms,
        r.p99_ms,
    );
    Ok(())
}

fn run<B: Backend>(env: &Env, db: &B, broker: &Broker) -> BoxResult<Results> {
    let n = env.messages;

    let mut insert_per_s: f64 = 0.0;
    for i in 1..=RUNS {
        let r = rate(n, insert_phase(env, db)?);
        println!(
            "[1] insert    {r:>10.2} rows/s  (plain table, {}, {CHUNK} rows/tx, run {i}/{RUNS})",
            B::INSERT_HOW
        );
        insert_per_s = insert_per_s.max(r);
    }

    let mut enqueue_per_s: f64 = 0.0;
    for i in 1..=RUNS {
        let r = rate(n, phases::enqueue(env, db)?);
        println!("[2] enqueue   {r:>10.2} msg/s   (send_batch of {CHUNK}, run {i}/{RUNS})");
        enqueue_per_s = enqueue_per_s.max(r);
    }

    let mut ceiling_per_s: f64 = 0.0;
    for i in 1..=RUNS {
        let r = rate(n, broker.ceiling(env)?);
        broker.settle(n as u64)?;
        let how = match env.stream {
            StreamKind::Amqp => "raw amiquip, confirm windows",
            StreamKind::Kafka => "raw rdkafka, acks=all idempotent, delivery-report windows",
            StreamKind::PubSub => "raw REST publish requests",
            StreamKind::Sqs => "raw signed SendMessageBatch of 10, one call at a time, windows",
            StreamKind::Kinesis => "raw signed PutRecords of 500, one call at a time, windows",
        };
        println!("[3] ceiling   {r:>10.2} msg/s   ({how} of {CHUNK}, run {i}/{RUNS})");
        ceiling_per_s = ceiling_per_s.max(r);
    }

    let mut relay_per_s: f64 = 0.0;
    for batch in BATCH_SIZES {
        let r = rate(n, phases::relay(env, db, broker, 1, batch)?);
        println!(
            "[4] relay     {r:>10.2} msg/s   (1 relay, batch_size {batch}; {:.2} of ceiling)",
            r / ceiling_per_s
        );
        relay_per_s = relay_per_s.max(r);
    }

    let relay2_per_s = rate(n, phases::relay(env, db, broker, 2, BATCH_SIZES[1])?);
    println!(
        "[5] relay x2  {relay2_per_s:>10.2} msg/s   (2 relays on one table, batch_size {})",
        BATCH_SIZES[1]
    );

    let (p50_ms, p99_ms) = phases::latency(env, db, broker)?;
    println!(
        "[6] latency   p50 {p50_ms:.2} ms, p99 {p99_ms:.2} ms  ({} sends at {} msg/s)",
        env.latency_plan().0,
        env.latency_plan().1
    );

    Ok(Results {
        insert_per_s,
        enqueue_per_s,
        ceiling_per_s,
        relay_per_s,
        relay2_per_s,
        p50_ms,
        p99_ms,
    })
}

/// Phases 2 and 4 to 6 through the blocking API or, with `--async`, through
/// `outboxer::async_impl` (same tables, messages, settings and checks).
mod phases {
    use super::*;

    pub fn enqueue<B: Backend>(env: &Env, db: &B) -> BoxResult<Duration> {
        #[cfg(feature = "async")]
        if env.async_api {
            return async_api::enqueue_phase(env, db);
        }
        enqueue_phase(env, db)
    }

    pub fn relay<B: Backend>(
        env: &Env,
        db: &B,
        broker: &Broker,
        relays: usize,
        batch: usize,
    ) -> BoxResult<Duration> {
        #[cfg(feature = "async")]
        if env.async_api {
            return async_api::relay_phase(env, db, broker, relays, batch);
        }
        relay_phase(env, db, broker, relays, batch)
    }

    pub fn latency<B: Backend>(env: &Env, db: &B, broker: &Broker) -> BoxResult<(f64, f64)> {
        #[cfg(feature = "async")]
        if env.async_api {
            return async_api::latency_phase(env, db, broker);
        }
        latency_phase(env, db, broker)
    }
}

/// `--async`: the phases on a current-thread tokio runtime. Sends go through
/// tokio-postgres; each relay is the async Outbox's (the blocking pipeline on its
/// own threads, outcomes forwarded into async channels). Blocking setup (tables,
/// broker connections, the consumer check) stays outside the runtime.
#[cfg(feature = "async")]
mod async_api {
    use super::*;
    use outboxer::async_impl::store::PostgresStore as AsyncPg;
    use outboxer::async_impl::Outbox as AsyncOutbox;

    fn runtime() -> BoxResult<tokio::runtime::Runtime> {
        Ok(tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?)
    }

    async fn store(table: &str) -> BoxResult<AsyncPg> {
        let url = std::env::var("OUTBOXER_PG_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let store = AsyncPg::builder(&url).table(table).build().await?;
        store.migrate().await?;
        Ok(store)
    }

    pub fn enqueue_phase<B: Backend>(env: &Env, db: &B) -> BoxResult<Duration> {
        let table = env.table("enqueue");
        db.drop_table(&table)?;
        let stream = env.stream(false)?;
        let messages = env.make_messages(env.messages);
        let took = runtime()?.block_on(async {
            let outbox = AsyncOutbox::builder()
                .store(store(&table).await?)
                .stream(stream)
                .build()?;
            let start = Instant::now();
            for chunk in messages.chunks(CHUNK) {
                outbox.send_batch(chunk).await?;
            }
            let took = start.elapsed();
            let pending = outbox.stats().await?.pending;
            if pending != env.messages as u64 {
                return Err(
                    format!("enqueue: {pending} pending, expected {}", env.messages).into(),
                );
            }
            BoxResult::Ok(took)
        })?;
        db.drop_table(&table)?;
        Ok(took)
    }

    pub fn relay_phase<B: Backend>(
        env: &Env,
        db: &B,
        broker: &Broker,
        relays: usize,
        batch: usize,
    ) -> BoxResult<Duration> {
        let table = if relays == 1 {
            env.table(&format!("relay{batch}"))
        } else {
            env.table(&format!("relay{relays}"))
        };
        db.drop_table(&table)?;
        let streams = (0..relays)
            .map(|_| env.stream(true))
            .collect::<BoxResult<Vec<_>>>()?;
        let messages = env.make_messages(env.messages);
        let n = env.messages as u64;
        let (took, published) = runtime()?.block_on(async {
            let mut outboxes = Vec::with_capacity(relays);
            for stream in streams {
                outboxes.push(
                    AsyncOutbox::builder()
                        .store(store(&table).await?)
                        .stream(stream)
                        .batch_size(batch)
                        .check_interval(Duration::from_millis(10))
                        .no_cleanup()
                        .build()?,
                );
            }
            for chunk in messages.chunks(CHUNK) {
                outboxes[0].send_batch(chunk).await?;
            }
            let start = Instant::now();
            let mut running = Vec::with_capacity(relays);
            for outbox in &outboxes {
                running.push(outbox.start().await?);
            }
            let mut failures = 0usize;
            let took = loop {
                let published: u64 = running.iter().map(|r| r.counters().published).sum();
                if published >= n {
                    break start.elapsed();
                }
                for relay in &running {
                    while let Ok(f) = relay.err().try_recv() {
                        failures += 1;
                        if failures <= 3 {
                            eprintln!("bench: relay failure: {} ({:?})", f.error, f.action);
                        }
                    }
                }
                if start.elapsed() > PHASE_TIMEOUT {
                    return Err(format!(
                        "relay: only {published} of {n} published after {PHASE_TIMEOUT:?}"
                    )
                    .into());
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            };
            let mut published = 0;
            for relay in &running {
                relay.stop().await?;
                published += relay.counters().published;
            }
            let stats = outboxes[0].stats().await?;
            if stats.pending != 0 || stats.dispatched != n {
                return Err(format!(
                    "relay: table has {} pending, {} dispatched after the run",
                    stats.pending, stats.dispatched
                )
                .into());
            }
            BoxResult::Ok((took, published))
        })?;
        if published != n {
            println!("    note: published {published} for {n} messages");
        }
        broker.settle(published)?;
        db.drop_table(&table)?;
        Ok(took)
    }

    pub fn latency_phase<B: Backend>(env: &Env, db: &B, broker: &Broker) -> BoxResult<(f64, f64)> {
        let table = env.table("latency");
        db.drop_table(&table)?;
        let stream = env.stream(true)?;
        let warm = env.make_messages(1).remove(0);
        let messages = env.make_messages(LATENCY_MESSAGES);
        let interval = Duration::from_nanos(1_000_000_000 / LATENCY_RATE_PER_S);
        let (sent, delivered, published) = runtime()?.block_on(async {
            let outbox = AsyncOutbox::builder()
                .store(store(&table).await?)
                .stream(stream)
                .check_interval(Duration::from_secs(1))
                .no_cleanup()
                .build()?;
            let relay = outbox.start().await?;
            // Warm up: the first publish declares the exchange.
            let warm = outbox.send(warm).await?;
            loop {
                match tokio::time::timeout(Duration::from_secs(10), relay.ok().recv()).await {
                    Ok(Ok(d)) if d.message_id == warm => break,
                    Ok(Ok(_)) => {}
                    _ => return Err("latency: warm-up message not delivered".into()),
                }
            }
            let sender = async {
                let mut sent = Vec::with_capacity(LATENCY_MESSAGES);
                let start = tokio::time::Instant::now();
                for (i, m) in messages.into_iter().enumerate() {
                    tokio::time::sleep_until(start + interval * i as u32).await;
                    let id = outbox.send(m).await?;
                    sent.push((id, Instant::now()));
                }
                Ok::<_, outboxer::Error>(sent)
            };
            let receiver = async {
                let mut delivered = HashMap::with_capacity(LATENCY_MESSAGES);
                let deadline = tokio::time::Instant::now()
                    + interval * LATENCY_MESSAGES as u32
                    + Duration::from_secs(30);
                while delivered.len() < LATENCY_MESSAGES {
                    match tokio::time::timeout_at(deadline, relay.ok().recv()).await {
                        Ok(Ok(d)) => {
                            delivered.insert(d.message_id, Instant::now());
                        }
                        _ => break,
                    }
                }
                delivered
            };
            let (sent, delivered) = tokio::join!(sender, receiver);
            relay.stop().await?;
            let c = relay.counters();
            if c.dropped_ok > 0 || c.failed > 0 {
                println!(
                    "    note: {} outcomes dropped, {} failed attempts",
                    c.dropped_ok, c.failed
                );
            }
            BoxResult::Ok((sent?, delivered, c.published))
        })?;
        let mut latencies: Vec<f64> = sent
            .iter()
            .filter_map(|(id, at)| delivered.get(id).map(|d| d.saturating_duration_since(*at)))
            .map(|d| d.as_secs_f64() * 1000.0)
            .collect();
        if latencies.len() < LATENCY_MESSAGES {
            return Err(format!(
                "latency: only {} of {LATENCY_MESSAGES} messages delivered",
                latencies.len()
            )
            .into());
        }
        latencies.sort_by(f64::total_cmp);
        broker.settle(published)?;
        db.drop_table(&table)?;
        Ok((percentile(&latencies, 0.50), percentile(&latencies, 0.99)))
    }
}

fn rate(n: usize, took: Duration) -> f64 {
    n as f64 / took.as_secs_f64().max(1e-9)
}

/// Settings and names of this run (the store's own settings live in its [`Backend`]).
struct Env {
    amqp_url: String,
    #[cfg_attr(not(feature = "kafka"), allow(dead_code))]
    kafka_url: String,
    #[cfg_attr(not(feature = "pubsub"), allow(dead_code))]
    pubsub_emulator: String,
    /// moto's endpoint (`--stream sqs|kinesis`).
    #[cfg_attr(not(any(feature = "sqs", feature = "kinesis")), allow(dead_code))]
    aws_endpoint: String,
    stream: StreamKind,
    /// The Kafka topic (`--stream kafka`).
    topic: String,
    store: StoreKind,
    pid: u32,
    exchange: String,
    queue: String,
    messages: usize,
    /// Time the relay's store and stream calls (phases 4 and 5) and print where time goes.
    breakdown: bool,
    /// Phases 2, 4, 5 and 6 through `outboxer::async_impl` (`--async`).
    #[cfg_attr(not(feature = "async"), allow(dead_code))]
    async_api: bool,
}

impl Env {
    fn new(args: &Args) -> Env {
        let pid = std::process::id();
        Env {
            amqp_url: std::env::var("OUTBOXER_AMQP_URL")
                .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into()),
            kafka_url: std::env::var("OUTBOXER_KAFKA_URL")
                .unwrap_or_else(|_| "kafka://127.0.0.1:9092".into()),
            pubsub_emulator: std::env::var("OUTBOXER_PUBSUB_EMULATOR")
                .unwrap_or_else(|_| "127.0.0.1:8086".into()),
            aws_endpoint: std::env::var("OUTBOXER_AWS_URL")
                .unwrap_or_else(|_| "http://127.0.0.1:4566".into()),
            stream: args.stream,
            topic: format!("bench_{pid}_{}", unix_now()),
            store: args.store,
            pid,
            exchange: format!("bench_{pid}_ex"),
            queue: format!("bench_{pid}_q"),
            messages: args.messages,
            breakdown: args.breakdown,
            async_api: args.async_api,
        }
    }

    /// Every table of this run starts with this: `bench_<pid>_`.
    fn prefix(&self) -> String {
        format!("bench_{}_", self.pid)
    }

    /// The table of one phase: `bench_<pid>_<suffix>`.
    fn table(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.prefix())
    }

    /// `n` fresh messages: 200-byte payloads routed to the bench exchange.
    fn make_messages(&self, n: usize) -> Vec<Message> {
        (0..n)
            .map(|i| {
                let payload: Vec<u8> = (0..PAYLOAD_SIZE)
                    .map(|j| b'a' + ((i + j) % 26) as u8)
                    .collect();
                let message = Message::new(payload);
                match self.stream {
                    StreamKind::Amqp => message.route(amqp::topic(&self.exchange, ROUTING_KEY)),
                    StreamKind::Kafka => message.route(kafka::topic(&self.topic).key(ROUTING_KEY)),
                    StreamKind::PubSub => message.route(pubsub::topic(&self.topic)),
                    StreamKind::Sqs => message.route(outboxer::stream::sqs::queue(&self.topic)),
                    StreamKind::Kinesis => message.route(
                        outboxer::stream::kinesis::stream(&self.topic).partition_key(ROUTING_KEY),
                    ),
                }
            })
            .collect()
    }

    /// The library's stream for `--stream`: connected (a broker must answer), or only
    /// built (phase 2 needs just its validator).
    fn stream(&self, connect: bool) -> BoxResult<Box<dyn Stream>> {
        match self.stream {
            StreamKind::Amqp if connect => Ok(Box::new(AmqpStream::connect(&self.amqp_url)?)),
            StreamKind::Amqp => Ok(Box::new(AmqpStream::builder(&self.amqp_url).build()?)),
            #[cfg(feature = "kafka")]
            StreamKind::Kafka if connect => Ok(Box::new(outboxer::stream::KafkaStream::connect(
                &self.kafka_url,
            )?)),
            #[cfg(feature = "kafka")]
            StreamKind::Kafka => Ok(Box::new(
                outboxer::stream::KafkaStream::builder(&self.kafka_url).build()?,
            )),
            #[cfg(not(feature = "kafka"))]
            StreamKind::Kafka => Err("--stream kafka needs the `kafka` feature".into()),
            #[cfg(feature = "pubsub")]
            StreamKind::PubSub => Ok(Box::new(outboxer::stream::PubSubStream::connect(
                &pubsub_bench::url(self),
            )?)),
            #[cfg(not(feature = "pubsub"))]
            StreamKind::PubSub => Err("--stream pubsub needs the `pubsub` feature".into()),
            // Neither needs a connection: `connect` only resolves the settings.
            #[cfg(feature = "sqs")]
            StreamKind::Sqs => Ok(Box::new(outboxer::stream::SqsStream::connect(
                &self.aws_url("sqs"),
            )?)),
            #[cfg(feature = "kinesis")]
            StreamKind::Kinesis => Ok(Box::new(outboxer::stream::KinesisStream::connect(
                &self.aws_url("kinesis"),
            )?)),
            #[allow(unreachable_patterns)]
            _ => Err("this --stream is not compiled in".into()),
        }
    }

    /// Phase 6's sends and rate: SQS on moto takes fewer (its sends slow down as
    /// a queue grows, to ~100-200 msg/s here), so it gets 500 at 50 msg/s.
    fn latency_plan(&self) -> (usize, u64) {
        match self.stream {
            StreamKind::Sqs => (500, 50),
            _ => (LATENCY_MESSAGES, LATENCY_RATE_PER_S),
        }
    }

    /// `sqs://test:test@us-east-1?endpoint=<moto>` (moto takes any key).
    #[cfg_attr(not(any(feature = "sqs", feature = "kinesis")), allow(dead_code))]
    fn aws_url(&self, scheme: &str) -> String {
        format!(
            "{scheme}://test:test@us-east-1?endpoint={}",
            self.aws_endpoint
        )
    }
}

/// One database: what the phases need beyond the [`Store`] trait.
trait Backend {
    type S: Store;
    /// How phase 1 inserts, for its output line.
    const INSERT_HOW: &'static str;

    /// The server and its version, for the first line.
    fn version(&self) -> BoxResult<String>;
    /// Phase 1's timed part: (re)creates the plain table `table` (only a primary key,
    /// the outbox table's column types) and inserts `messages`, [`CHUNK`] rows per
    /// transaction, statements prepared before the clock starts.
    fn plain_insert(&self, table: &str, messages: &[Message]) -> BoxResult<Duration>;
    /// Rows in `table`.
    fn count(&self, table: &str) -> BoxResult<u64>;
    /// A store on `table`, migrated.
    fn store(&self, table: &str) -> BoxResult<Self::S>;
    /// Drops `table` and whatever the store created with it.
    fn drop_table(&self, table: &str) -> BoxResult<()>;
    /// Drops every table whose name starts with `prefix` (all phases, also after an error).
    fn drop_tables_like(&self, prefix: &str) -> BoxResult<()>;
    /// `--breakdown`: starts measuring what the database writes during a relay run.
    fn log_meter(&self) -> BoxResult<Option<Box<dyn LogMeter>>> {
        Ok(None)
    }
    /// Last cleanup once the tables are gone (a database file of our own, say).
    fn finish(&self) {}
}

/// What the database wrote between [`Backend::log_meter`] and `report`.
trait LogMeter {
    fn report(self: Box<Self>, messages: u64) -> BoxResult<String>;
}

/// `bench\_123\_%`: a LIKE pattern (backslash escapes) for names starting with `prefix`.
fn like_prefix(prefix: &str) -> String {
    format!("{}%", prefix.replace('_', "\\_"))
}

/// Phase 1: plain inserts into a plain table; returns the time taken.
fn insert_phase<B: Backend>(env: &Env, db: &B) -> BoxResult<Duration> {
    let table = env.table("raw");
    let messages = env.make_messages(env.messages);
    let took = db.plain_insert(&table, &messages)?;
    let count = db.count(&table)?;
    if count != env.messages as u64 {
        return Err(format!("plain insert: {count} rows, expected {}", env.messages).into());
    }
    db.drop_table(&table)?;
    Ok(took)
}

/// Phase 2: `send_batch` of 1000 messages into a fresh outbox table, no relay.
fn enqueue_phase<B: Backend>(env: &Env, db: &B) -> BoxResult<Duration> {
    let table = env.table("enqueue");
    db.drop_table(&table)?;
    let outbox = Outbox::builder()
        .store(db.store(&table)?)
        // Not connected: `build()` only gives `send` the stream's validator.
        .stream(env.stream(false)?)
        .build()?;
    let messages = env.make_messages(env.messages);
    let start = Instant::now();
    for chunk in messages.chunks(CHUNK) {
        outbox.send_batch(chunk)?;
    }
    let took = start.elapsed();
    let pending = outbox.stats()?.pending;
    if pending != env.messages as u64 {
        return Err(format!("enqueue: {pending} pending, expected {}", env.messages).into());
    }
    drop(outbox);
    db.drop_table(&table)?;
    Ok(took)
}

/// Phase 3: raw amiquip confirm-publishing of the same messages; returns the time taken.
fn ceiling_phase(env: &Env) -> BoxResult<Duration> {
    let mut connection = open_amqp(&env.amqp_url)?;
    let channel = connection.open_channel(None)?;
    let returns = channel.listen_for_returns()?;
    let confirms = channel.listen_for_publisher_confirms()?;
    channel.enable_publisher_confirms()?;
    declare_exchange(&channel, &env.exchange)?;
    let messages = env.make_messages(env.messages);
    let cpu = env.breakdown.then(CpuSample::take).flatten();
    let mut smoother = ConfirmSmoother::new();
    let mut published = 0u64;
    let mut confirmed = 0u64;
    let start = Instant::now();
    for window in messages.chunks(CHUNK) {
        for m in window {
            let id = m.message_id().to_string();
            let mut headers = FieldTable::new();
            headers.insert(
                MESSAGE_ID_HEADER.to_string(),
                AmqpValue::LongString(id.clone()),
            );
            let properties = AmqpProperties::default()
                .with_message_id(id)
                .with_delivery_mode(2)
                .with_timestamp(unix_now())
                .with_headers(headers);
            let publish = Publish {
                mandatory: true,
                ..Publish::with_properties(m.payload(), ROUTING_KEY, properties)
            };
            channel.basic_publish(env.exchange.clone(), publish)?;
            published += 1;
        }
        while confirmed < published {
            let raw = confirms
                .recv_timeout(Duration::from_secs(15))
                .map_err(|e| format!("ceiling: waiting for confirms: {e}"))?;
            for c in smoother.process(raw) {
                match c {
                    Confirm::Ack(_) => confirmed += 1,
                    Confirm::Nack(p) => {
                        return Err(format!("ceiling: broker nacked tag {}", p.delivery_tag).into())
                    }
                }
            }
        }
        if let Ok(r) = returns.try_recv() {
            return Err(format!("ceiling: unroutable: {} {}", r.reply_code, r.reply_text).into());
        }
    }
    let took = start.elapsed();
    if env.breakdown {
        println!(
            "    {} during the ceiling run",
            CpuSample::since(&cpu, published)
        );
    }
    channel.close()?;
    connection.close()?;
    Ok(took)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Phases 4 and 5: enqueue N messages, then time `relays` relays until all are published.
fn relay_phase<B: Backend>(
    env: &Env,
    db: &B,
    broker: &Broker,
    relays: usize,
    batch: usize,
) -> BoxResult<Duration> {
    let table = if relays == 1 {
        env.table(&format!("relay{batch}"))
    } else {
        env.table(&format!("relay{relays}"))
    };
    db.drop_table(&table)?;
    if !env.breakdown {
        let mut outboxes = Vec::with_capacity(relays);
        for _ in 0..relays {
            let stream = env.stream(true)?;
            outboxes.push(relay_outbox(db.store(&table)?, stream, batch)?);
        }
        return time_relays(env, db, broker, &table, outboxes);
    }
    let timings = Arc::new(Timings::default());
    let mut outboxes = Vec::with_capacity(relays);
    for _ in 0..relays {
        let store = TimedStore {
            inner: db.store(&table)?,
            timings: Arc::clone(&timings),
        };
        let stream = TimedStream {
            inner: env.stream(true)?,
            timings: Arc::clone(&timings),
        };
        outboxes.push(relay_outbox(store, stream, batch)?);
    }
    let took = time_relays(env, db, broker, &table, outboxes)?;
    timings.print(took, relays);
    Ok(took)
}

/// The outbox of phases 4 and 5: polling every 10 ms, no cleanup thread.
fn relay_outbox<S: Store>(
    store: S,
    stream: impl Stream,
    batch: usize,
) -> outboxer::Result<Outbox<S>> {
    Outbox::builder()
        .store(store)
        .stream(stream)
        .batch_size(batch)
        .check_interval(Duration::from_millis(10))
        .no_cleanup()
        .build()
}

/// Enqueues N messages, starts every outbox's relay and times them until all are published.
fn time_relays<B: Backend, S: Store>(
    env: &Env,
    db: &B,
    broker: &Broker,
    table: &str,
    outboxes: Vec<Outbox<S>>,
) -> BoxResult<Duration> {
    let n = env.messages as u64;
    let relays = outboxes.len();
    for chunk in env.make_messages(env.messages).chunks(CHUNK) {
        outboxes[0].send_batch(chunk)?;
    }

    let meter = if env.breakdown { db.log_meter()? } else { None };
    let cpu = env.breakdown.then(CpuSample::take).flatten();
    let start = Instant::now();
    let mut running = Vec::with_capacity(relays);
    for outbox in &outboxes {
        running.push(outbox.start()?);
    }
    let mut failures = 0usize;
    let took = loop {
        let published: u64 = running.iter().map(|r| r.counters().published).sum();
        if published >= n {
            break start.elapsed();
        }
        for relay in &running {
            for f in relay.err().try_iter() {
                failures += 1;
                if failures <= 3 {
                    eprintln!("bench: relay failure: {} ({:?})", f.error, f.action);
                }
            }
        }
        if start.elapsed() > PHASE_TIMEOUT {
            return Err(format!(
                "relay: only {published} of {n} published after {PHASE_TIMEOUT:?}"
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    if env.breakdown {
        let written = match meter {
            Some(m) => format!("; {}", m.report(n)?),
            None => String::new(),
        };
        println!(
            "    {} during the relay run{written}",
            CpuSample::since(&cpu, n)
        );
    }
    let mut total = RelayCounters::default();
    for relay in &running {
        relay.stop()?;
        let c = relay.counters();
        total.published += c.published;
        total.failed += c.failed;
    }
    if total.failed > 0 {
        println!("    note: {} failed publish attempts", total.failed);
    }
    if total.published != n {
        println!("    note: published {} for {n} messages", total.published);
    }
    let stats = outboxes[0].stats()?;
    if stats.pending != 0 || stats.dispatched != n {
        return Err(format!(
            "relay: table has {} pending, {} dispatched after the run",
            stats.pending, stats.dispatched
        )
        .into());
    }
    drop(running);
    drop(outboxes);
    broker.settle(total.published)?;
    db.drop_table(table)?;
    Ok(took)
}

/// Phase 6: commit-to-publish latency at a steady rate; returns (p50, p99) in ms.
fn latency_phase<B: Backend>(env: &Env, db: &B, broker: &Broker) -> BoxResult<(f64, f64)> {
    let (latency_messages, latency_rate) = env.latency_plan();
    let table = env.table("latency");
    db.drop_table(&table)?;
    let outbox = Outbox::builder()
        .store(db.store(&table)?)
        .stream(env.stream(true)?)
        .check_interval(Duration::from_secs(1))
        .no_cleanup()
        .build()?;
    let relay = outbox.start()?;
    // Warm up: the first publish declares the exchange.
    let warm = outbox.send(env.make_messages(1).remove(0))?;
    loop {
        match relay.ok().recv_timeout(Duration::from_secs(10)) {
            Ok(d) if d.message_id == warm => break,
            Ok(_) => {}
            Err(e) => return Err(format!("latency: warm-up message not delivered: {e}").into()),
        }
    }

    let messages = env.make_messages(latency_messages);
    let interval = Duration::from_nanos(1_000_000_000 / latency_rate);
    let mut delivered: HashMap<MessageId, Instant> = HashMap::with_capacity(latency_messages);
    let sent = std::thread::scope(|s| -> BoxResult<Vec<(MessageId, Instant)>> {
        let sender = s.spawn(|| -> Result<Vec<(MessageId, Instant)>, String> {
            let mut sent = Vec::with_capacity(latency_messages);
            let start = Instant::now();
            for (i, m) in messages.into_iter().enumerate() {
                let due = start + interval * i as u32;
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let id = outbox.send(m).map_err(|e| e.to_string())?;
                sent.push((id, Instant::now()));
            }
            Ok(sent)
        });
        let deadline =
            Instant::now() + interval * latency_messages as u32 + Duration::from_secs(30);
        while delivered.len() < latency_messages {
            let left = deadline.saturating_duration_since(Instant::now());
            match relay.ok().recv_timeout(left) {
                Ok(d) => {
                    delivered.insert(d.message_id, Instant::now());
                }
                Err(_) => break,
            }
        }
        let sent = sender
            .join()
            .map_err(|_| "latency: sender thread panicked")??;
        Ok(sent)
    })?;
    relay.stop()?;
    let c = relay.counters();
    if c.dropped_ok > 0 || c.failed > 0 {
        println!(
            "    note: {} outcomes dropped, {} failed attempts",
            c.dropped_ok, c.failed
        );
    }
    let mut latencies: Vec<f64> = sent
        .iter()
        .filter_map(|(id, at)| delivered.get(id).map(|d| d.saturating_duration_since(*at)))
        .map(|d| d.as_secs_f64() * 1000.0)
        .collect();
    if latencies.len() < latency_messages {
        return Err(format!(
            "latency: only {} of {latency_messages} messages delivered",
            latencies.len()
        )
        .into());
    }
    latencies.sort_by(f64::total_cmp);
    drop(relay);
    drop(outbox);
    broker.settle(c.published)?;
    db.drop_table(&table)?;
    Ok((percentile(&latencies, 0.50), percentile(&latencies, 0.99)))
}

/// Nearest-rank percentile of sorted, non-empty values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted
        .get(rank.clamp(1, sorted.len().max(1)) - 1)
        .copied()
        .unwrap_or(f64::NAN)
}

/// PostgreSQL (always built: the example requires the `postgres` feature).
mod pg {
    use super::*;
    use outboxer::store::PostgresStore;

    pub struct Postgres {
        url: String,
    }

    impl Postgres {
        pub fn from_env() -> Postgres {
            Postgres {
                url: std::env::var("OUTBOXER_PG_URL")
                    .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into()),
            }
        }

        fn client(&self) -> BoxResult<postgres::Client> {
            postgres::Client::connect(&self.url, postgres::NoTls)
                .map_err(|e| format!("connecting to PostgreSQL: {e}").into())
        }
    }

    impl Backend for Postgres {
        type S = PostgresStore;
        const INSERT_HOW: &'static str = "INSERT .. SELECT FROM unnest(..)";

        fn version(&self) -> BoxResult<String> {
            let v: String = self
                .client()?
                .query_one("SHOW server_version", &[])?
                .try_get(0)?;
            Ok(format!("PostgreSQL {v}"))
        }

        fn plain_insert(&self, table: &str, messages: &[Message]) -> BoxResult<Duration> {
            let mut pg = self.client()?;
            pg.batch_execute(&format!(
                "DROP TABLE IF EXISTS \"{table}\";
                 CREATE TABLE \"{table}\" (
                     id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
                     message_id UUID NOT NULL,
                     payload BYTEA NOT NULL,
                     headers JSONB,
                     options JSONB
                 )"
            ))?;
            let insert = pg.prepare(&format!(
                "INSERT INTO \"{table}\" (message_id, payload, headers, options) \
                 SELECT * FROM unnest($1::uuid[], $2::bytea[], $3::jsonb[], $4::jsonb[])"
            ))?;
            let start = Instant::now();
            for chunk in messages.chunks(CHUNK) {
                let ids: Vec<uuid::Uuid> =
                    chunk.iter().map(|m| *m.message_id().as_uuid()).collect();
                let payloads: Vec<&[u8]> = chunk.iter().map(|m| m.payload()).collect();
                let headers: Vec<serde_json::Value> = chunk
                    .iter()
                    .map(|m| serde_json::json!(m.headers()))
                    .collect();
                let options: Vec<serde_json::Value> = chunk
                    .iter()
                    .map(|m| serde_json::json!(m.options()))
                    .collect();
                let mut tx = pg.transaction()?;
                tx.execute(&insert, &[&ids, &payloads, &headers, &options])?;
                tx.commit()?;
            }
            Ok(start.elapsed())
        }

        fn count(&self, table: &str) -> BoxResult<u64> {
            let n: i64 = self
                .client()?
                .query_one(&format!("SELECT count(*) FROM \"{table}\""), &[])?
                .try_get(0)?;
            Ok(u64::try_from(n)?)
        }

        fn store(&self, table: &str) -> BoxResult<PostgresStore> {
            let store = PostgresStore::builder(&self.url).table(table).build()?;
            store.migrate()?;
            Ok(store)
        }

        fn drop_table(&self, table: &str) -> BoxResult<()> {
            self.client()?
                .batch_execute(&format!("DROP TABLE IF EXISTS \"{table}\""))?;
            Ok(())
        }

        fn drop_tables_like(&self, prefix: &str) -> BoxResult<()> {
            let mut pg = self.client()?;
            let tables = pg.query(
                "SELECT tablename::text FROM pg_tables \
                 WHERE schemaname = current_schema() AND tablename LIKE $1",
                &[&like_prefix(prefix)],
            )?;
            for row in tables {
                let table: String = row.try_get(0)?;
                pg.batch_execute(&format!("DROP TABLE IF EXISTS \"{table}\""))?;
            }
            Ok(())
        }

        fn log_meter(&self) -> BoxResult<Option<Box<dyn LogMeter>>> {
            let mut pg = self.client()?;
            let start: String = pg
                .query_one("SELECT pg_current_wal_lsn()::text", &[])?
                .try_get(0)?;
            Ok(Some(Box::new(WalMeter { pg, start })))
        }
    }

    /// WAL written by PostgreSQL (the whole server) during a run.
    struct WalMeter {
        pg: postgres::Client,
        start: String,
    }

    impl LogMeter for WalMeter {
        fn report(mut self: Box<Self>, messages: u64) -> BoxResult<String> {
            let bytes: f64 = self
                .pg
                .query_one(
                    "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::text::pg_lsn)::float8",
                    &[&self.start],
                )?
                .try_get(0)?;
            Ok(format!(
                "WAL {:.1} MB = {:.0} bytes/message",
                bytes / 1e6,
                bytes / messages.max(1) as f64
            ))
        }
    }
}

/// MySQL 8 / MariaDB, on the `mysql` crate directly for phase 1.
#[cfg(feature = "mysql")]
mod my {
    use super::*;
    use mysql::prelude::Queryable;
    use mysql::{Conn, IsolationLevel, Opts, TxOpts, Value};
    use outboxer::store::MysqlStore;

    pub struct Mysql {
        url: String,
        opts: Opts,
    }

    impl Mysql {
        pub fn from_env() -> BoxResult<Mysql> {
            let url = std::env::var("OUTBOXER_MYSQL_URL")
                .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into());
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
            let tx_opts =
                TxOpts::default().set_isolation_level(Some(IsolationLevel::ReadCommitted));
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
        fn report(mut self: Box<Self>, messages: u64) -> BoxResult<String> {
            let end = status(&mut self.conn)?;
            let delta = |name: &str| end.get(name)?.checked_sub(*self.start.get(name)?);
            let per = |name: &str| Some(delta(name)? as f64 / messages.max(1) as f64);
            let show = |v: Option<f64>, digits: usize| match v {
                Some(v) => format!("{v:.digits$}"),
                None => "?".into(),
            };
            Ok(format!(
                "per message: redo {} bytes, {} fsyncs, {} statements, \
                 {} index lookups + {} index steps; {} row lock waits",
                show(per("Innodb_lsn_current"), 0),
                show(per("Innodb_data_fsyncs"), 3),
                show(per("Questions"), 3),
                show(per("Handler_read_key"), 2),
                show(per("Handler_read_next"), 1),
                show(delta("Innodb_row_lock_waits").map(|d| d as f64), 0),
            ))
        }
    }
}

/// SQLite, on `rusqlite` directly for phase 1.
#[cfg(feature = "sqlite")]
mod lite {
    use super::*;
    use outboxer::store::SqliteStore;
    use rusqlite::Connection;
    use std::path::PathBuf;

    pub struct Sqlite {
        path: PathBuf,
        /// The file is ours (the default path): removed at the end.
        ours: bool,
    }

    impl Sqlite {
        pub fn from_env(pid: u32) -> Sqlite {
            match std::env::var_os("OUTBOXER_SQLITE_PATH") {
                Some(p) if !p.is_empty() => Sqlite {
                    path: p.into(),
                    ours: false,
                },
                _ => Sqlite {
                    path: std::env::temp_dir().join(format!("outboxer-bench-{pid}.db")),
                    ours: true,
                },
            }
        }

        /// A connection set up as the store sets up its own: WAL, `synchronous = NORMAL`.
        fn conn(&self) -> BoxResult<Connection> {
            let c = Connection::open(&self.path)
                .map_err(|e| format!("opening {}: {e}", self.path.display()))?;
            c.busy_timeout(Duration::from_secs(5))?;
            let _mode: String = c.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
            c.pragma_update(None, "synchronous", "NORMAL")?;
            Ok(c)
        }
    }

    impl Backend for Sqlite {
        type S = SqliteStore;
        const INSERT_HOW: &'static str = "prepared single-row INSERT in BEGIN IMMEDIATE";

        fn version(&self) -> BoxResult<String> {
            Ok(format!(
                "SQLite {} ({})",
                rusqlite::version(),
                self.path.display()
            ))
        }

        fn plain_insert(&self, table: &str, messages: &[Message]) -> BoxResult<Duration> {
            let conn = self.conn()?;
            // The outbox table's column types (see src/core/sql/sqlite.rs).
            conn.execute_batch(&format!(
                "DROP TABLE IF EXISTS \"{table}\";
                 CREATE TABLE \"{table}\" (
                     id INTEGER PRIMARY KEY AUTOINCREMENT,
                     message_id BLOB NOT NULL,
                     payload BLOB NOT NULL,
                     headers TEXT,
                     options TEXT
                 )"
            ))?;
            let mut insert = conn.prepare(&format!(
                "INSERT INTO \"{table}\" (message_id, payload, headers, options) \
                 VALUES (?1, ?2, ?3, ?4)"
            ))?;
            let start = Instant::now();
            for chunk in messages.chunks(CHUNK) {
                conn.execute_batch("BEGIN IMMEDIATE")?;
                for m in chunk {
                    insert.execute(rusqlite::params![
                        m.message_id().as_uuid().as_bytes().as_slice(),
                        m.payload(),
                        serde_json::json!(m.headers()).to_string(),
                        serde_json::json!(m.options()).to_string(),
                    ])?;
                }
                conn.execute_batch("COMMIT")?;
            }
            Ok(start.elapsed())
        }

        fn count(&self, table: &str) -> BoxResult<u64> {
            let n: i64 =
                self.conn()?
                    .query_row(&format!("SELECT count(*) FROM \"{table}\""), [], |r| {
                        r.get(0)
                    })?;
            Ok(u64::try_from(n)?)
        }

        fn store(&self, table: &str) -> BoxResult<SqliteStore> {
            let store = SqliteStore::builder(&self.path).table(table).build()?;
            store.migrate()?;
            Ok(store)
        }

        fn drop_table(&self, table: &str) -> BoxResult<()> {
            self.conn()?
                .execute_batch(&format!("DROP TABLE IF EXISTS \"{table}\""))?;
            Ok(())
        }

        fn drop_tables_like(&self, prefix: &str) -> BoxResult<()> {
            let conn = self.conn()?;
            let tables = conn
                .prepare(
                    "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE ?1 ESCAPE '\\'",
                )?
                .query_map([like_prefix(prefix)], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            for table in tables {
                conn.execute_batch(&format!("DROP TABLE IF EXISTS \"{table}\""))?;
            }
            Ok(())
        }

        fn finish(&self) {
            if self.ours {
                for ext in ["", "-wal", "-shm"] {
                    let mut file = self.path.clone().into_os_string();
                    file.push(ext);
                    let _ = std::fs::remove_file(file);
                }
            }
        }
    }
}

/// SQL Server; phase 1 runs its own SQL through the store's transactions
/// ([`SqlServerStore::begin`]), so the bench needs no async runtime of its own.
#[cfg(feature = "sqlserver")]
mod mssql {
    use super::*;
    use outboxer::store::SqlServerStore;
    use tiberius::ToSql;

    /// Rows per `INSERT`: 4 parameters each, under SQL Server's 2100-parameter limit
    /// (two statements per 1000-row transaction).
    const ROWS_PER_INSERT: usize = 500;

    pub struct SqlServer {
        conn_str: String,
        /// Only its pooled connections are used (no table of its own).
        client: SqlServerStore,
    }

    impl SqlServer {
        pub fn from_env() -> BoxResult<SqlServer> {
            let conn_str = std::env::var("OUTBOXER_MSSQL_URL").map_err(|_| {
                "--store sqlserver needs OUTBOXER_MSSQL_URL (no default), an ADO.NET \
                 connection string such as \
                 \"server=tcp:127.0.0.1,1433;user=sa;password=..;TrustServerCertificate=true\""
            })?;
            let client = SqlServerStore::builder(&conn_str).build()?;
            Ok(SqlServer { conn_str, client })
        }

        /// Runs `sql` in a transaction of its own; returns the first result set.
        fn run(&self, sql: &str) -> BoxResult<Vec<tiberius::Row>> {
            let mut tx = self.client.begin()?;
            let rows = tx.query(sql, &[])?;
            tx.commit()?;
            Ok(rows)
        }
    }

    /// `INSERT` of `rows` rows: parameters `@P1..@P{4 * rows}`.
    fn insert_sql(table: &str, rows: usize) -> String {
        let values: Vec<String> = (0..rows)
            .map(|r| {
                let p = r * 4;
                format!("(@P{}, @P{}, @P{}, @P{})", p + 1, p + 2, p + 3, p + 4)
            })
            .collect();
        format!(
            "INSERT INTO [{table}] (message_id, payload, headers, options) VALUES {}",
            values.join(", ")
        )
    }

    impl Backend for SqlServer {
        type S = SqlServerStore;
        const INSERT_HOW: &'static str = "multi-row INSERT .. VALUES (@P1, ..), 500 rows each";

        fn version(&self) -> BoxResult<String> {
            let rows = self.run("SELECT @@VERSION")?;
            let version = match rows.first() {
                Some(row) => row.try_get::<&str, _>(0)?.unwrap_or_default(),
                None => "",
            };
            Ok(version
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_string())
        }

        fn plain_insert(&self, table: &str, messages: &[Message]) -> BoxResult<Duration> {
            // The outbox table's column types (see src/core/sql/sqlserver.rs).
            self.run(&format!(
                "DROP TABLE IF EXISTS [{table}];
                 CREATE TABLE [{table}] (
                     id BIGINT IDENTITY PRIMARY KEY,
                     message_id UNIQUEIDENTIFIER NOT NULL,
                     payload VARBINARY(MAX) NOT NULL,
                     headers VARBINARY(MAX) NULL,
                     options VARBINARY(MAX) NULL
                 )"
            ))?;
            // Parameterized text: SQL Server caches the plan of each shape.
            let full = insert_sql(table, ROWS_PER_INSERT);
            let tail = insert_sql(table, messages.len() % ROWS_PER_INSERT);
            let start = Instant::now();
            for chunk in messages.chunks(CHUNK) {
                let mut tx = self.client.begin()?;
                for part in chunk.chunks(ROWS_PER_INSERT) {
                    let ids: Vec<uuid::Uuid> =
                        part.iter().map(|m| *m.message_id().as_uuid()).collect();
                    let payloads: Vec<&[u8]> = part.iter().map(|m| m.payload()).collect();
                    let headers: Vec<Vec<u8>> = part
                        .iter()
                        .map(|m| serde_json::json!(m.headers()).to_string().into_bytes())
                        .collect();
                    let options: Vec<Vec<u8>> = part
                        .iter()
                        .map(|m| serde_json::json!(m.options()).to_string().into_bytes())
                        .collect();
                    let mut params: Vec<&dyn ToSql> = Vec::with_capacity(part.len() * 4);
                    for i in 0..part.len() {
                        params.extend([
                            &ids[i] as &dyn ToSql,
                            &payloads[i],
                            &headers[i],
                            &options[i],
                        ]);
                    }
                    let sql = if part.len() == ROWS_PER_INSERT {
                        &full
                    } else {
                        &tail
                    };
                    tx.execute(sql, &params)?;
                }
                tx.commit()?;
            }
            Ok(start.elapsed())
        }

        fn count(&self, table: &str) -> BoxResult<u64> {
            let rows = self.run(&format!("SELECT COUNT_BIG(*) FROM [{table}]"))?;
            let n = rows
                .first()
                .map(|row| row.try_get::<i64, _>(0))
                .transpose()?
                .flatten()
                .ok_or("COUNT_BIG(*) returned no row")?;
            Ok(u64::try_from(n)?)
        }

        fn store(&self, table: &str) -> BoxResult<SqlServerStore> {
            let store = SqlServerStore::builder(&self.conn_str)
                .table(table)
                .build()?;
            store.migrate()?;
            Ok(store)
        }

        fn drop_table(&self, table: &str) -> BoxResult<()> {
            self.run(&format!("DROP TABLE IF EXISTS [{table}]"))?;
            Ok(())
        }

        fn drop_tables_like(&self, prefix: &str) -> BoxResult<()> {
            let mut tx = self.client.begin()?;
            let rows = tx.query(
                "SELECT name FROM sys.tables WHERE schema_id = SCHEMA_ID() \
                 AND name LIKE @P1 ESCAPE '\\'",
                &[&like_prefix(prefix)],
            )?;
            tx.commit()?;
            for row in &rows {
                if let Some(table) = row.try_get::<&str, _>(0)? {
                    self.drop_table(table)?;
                }
            }
            Ok(())
        }
    }
}

/// A store that times `claim` and `mark_dispatched` (`--breakdown`).
struct TimedStore<S> {
    inner: S,
    timings: Arc<Timings>,
}

impl<S: Store> Store for TimedStore<S> {
    fn migrate(&self) -> outboxer::Result<()> {
        self.inner.migrate()
    }
    fn enqueue(&self, messages: &[Message]) -> outboxer::Result<()> {
        self.inner.enqueue(messages)
    }
    fn claim(&self, lease: &Lease, limit: BatchLimit) -> outboxer::Result<Claim> {
        self.timings.claim.time(|| self.inner.claim(lease, limit))
    }
    fn mark_dispatched(&self, lease: &Lease, ids: &[i64]) -> outboxer::Result<Vec<i64>> {
        self.timings
            .mark
            .time(|| self.inner.mark_dispatched(lease, ids))
    }
    fn mark_failed(&self, lease: &Lease, failures: &[FailedAttempt]) -> outboxer::Result<usize> {
        self.inner.mark_failed(lease, failures)
    }
    fn release(&self, lease: &Lease, ids: &[i64], retry_in: Duration) -> outboxer::Result<usize> {
        self.inner.release(lease, ids, retry_in)
    }
    fn cleanup(&self, older_than: Duration, limit: usize) -> outboxer::Result<u64> {
        self.inner.cleanup(older_than, limit)
    }
    fn requeue(&self, which: &Requeue) -> outboxer::Result<u64> {
        self.inner.requeue(which)
    }
    fn skip(&self, ids: &[i64]) -> outboxer::Result<u64> {
        self.inner.skip(ids)
    }
    fn held_keys(&self, limit: usize) -> outboxer::Result<Vec<outboxer::store::HeldKey>> {
        self.inner.held_keys(limit)
    }
    fn stats(&self) -> outboxer::Result<Stats> {
        self.inner.stats()
    }
    fn purge_parked(&self, older_than: Duration, limit: usize) -> outboxer::Result<u64> {
        self.inner.purge_parked(older_than, limit)
    }
    fn attempts_histogram(&self) -> outboxer::Result<Vec<(u32, u64)>> {
        self.inner.attempts_histogram()
    }
    fn parked(&self, limit: usize) -> outboxer::Result<Vec<outboxer::store::ParkedMessage>> {
        self.inner.parked(limit)
    }
    fn wake_listener(&self) -> outboxer::Result<Option<Box<dyn WakeListener>>> {
        self.inner.wake_listener()
    }
}

/// A stream that times `publish` (publishes plus waiting for confirms).
struct TimedStream {
    inner: Box<dyn Stream>,
    timings: Arc<Timings>,
}

impl Stream for TimedStream {
    fn validator(&self) -> Arc<dyn Validate> {
        self.inner.validator()
    }
    fn publish(
        &mut self,
        batch: &[StoredMessage],
        deadline: &Deadline,
    ) -> Vec<outboxer::Result<()>> {
        let inner = &mut self.inner;
        self.timings.publish.time(|| inner.publish(batch, deadline))
    }
    fn close(&mut self) {
        self.inner.close();
    }
}

/// Busy time of the relays' claim, mark and publish calls (`--breakdown`).
#[derive(Default)]
struct Timings {
    claim: Timer,
    mark: Timer,
    publish: Timer,
}

#[derive(Default)]
struct Timer {
    nanos: AtomicU64,
    calls: AtomicU64,
}

impl Timer {
    fn time<R>(&self, f: impl FnOnce() -> R) -> R {
        let start = Instant::now();
        let r = f();
        let nanos = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.nanos.fetch_add(nanos, Ordering::Relaxed);
        self.calls.fetch_add(1, Ordering::Relaxed);
        r
    }

    fn describe(&self, name: &str, wall: Duration, relays: usize) -> String {
        let secs = self.nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let calls = self.calls.load(Ordering::Relaxed).max(1);
        let busy = secs / (wall.as_secs_f64() * relays as f64).max(1e-9) * 100.0;
        format!(
            "{name} {secs:.2} s / {calls} calls = {:.1} ms each, {busy:.0}% busy",
            secs * 1000.0 / calls as f64
        )
    }
}

impl Timings {
    fn print(&self, wall: Duration, relays: usize) {
        println!(
            "    breakdown over {:.2} s x {relays} relay(s): {}; {}; {}",
            wall.as_secs_f64(),
            self.publish.describe("publish", wall, relays),
            self.claim.describe("claim", wall, relays),
            self.mark.describe("mark_dispatched", wall, relays),
        );
    }
}

/// CPU time per process name and for the whole machine, from `/proc` (Linux,
/// `--breakdown` only), in clock ticks.
struct CpuSample {
    /// pid -> (name, ticks); kernel threads change their name, so keyed by pid.
    by_pid: HashMap<u32, (String, u64)>,
    machine_busy: u64,
    machine_total: u64,
    at: Instant,
}

impl CpuSample {
    fn take() -> Option<CpuSample> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let line = stat.lines().next()?.strip_prefix("cpu ")?;
        // user nice system idle iowait irq softirq steal
        let v: Vec<u64> = line
            .split_whitespace()
            .take(8)
            .filter_map(|x| x.parse().ok())
            .collect();
        let machine_total: u64 = v.iter().sum();
        let machine_busy = machine_total.saturating_sub(v.get(3)? + v.get(4)?);
        let mut by_pid = HashMap::new();
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(text) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // pid (comm) state ppid ... utime stime: fields 14 and 15.
            let (Some(open), Some(close)) = (text.find('('), text.rfind(')')) else {
                continue;
            };
            let name = text[open + 1..close]
                .split(['/', '-'])
                .next()
                .unwrap_or_default()
                .to_string();
            let fields: Vec<&str> = text[close + 1..].split_whitespace().collect();
            let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
            if let (Some(u), Some(s)) = (ticks(11), ticks(12)) {
                by_pid.insert(pid, (name, u + s));
            }
        }
        Some(CpuSample {
            by_pid,
            machine_busy,
            machine_total,
            at: Instant::now(),
        })
    }

    /// "cpu 190% of 200%: beam.smp 95% = 50 µs/msg, postgres 60% = 31 µs/msg, .." since
    /// `before`, for a run of `messages` messages.
    fn since(before: &Option<CpuSample>, messages: u64) -> String {
        let (Some(a), Some(b)) = (before, CpuSample::take()) else {
            return "cpu use unknown".into();
        };
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let total = b.machine_total.saturating_sub(a.machine_total).max(1) as f64;
        let pct = |ticks: u64| ticks as f64 / total * 100.0 * cores;
        // CPU time per message: the share of all cores' time, times the wall time.
        let wall = b.at.duration_since(a.at).as_secs_f64();
        let us_per_msg = |ticks: u64| pct(ticks) / 100.0 * wall * 1e6 / messages.max(1) as f64;
        let mut by_name: HashMap<&str, u64> = HashMap::new();
        for (pid, (name, t)) in &b.by_pid {
            let before = a.by_pid.get(pid).map_or(0, |(_, t0)| *t0);
            *by_name.entry(name).or_insert(0) += t.saturating_sub(before);
        }
        let mut used: Vec<(u64, &str)> = by_name
            .into_iter()
            .filter(|(_, t)| *t > 0)
            .map(|(name, t)| (t, name))
            .collect();
        used.sort_by(|x, y| y.cmp(x));
        let top: Vec<String> = used
            .iter()
            .take(4)
            .map(|(t, name)| format!("{name} {:.0}% = {:.0} µs/msg", pct(*t), us_per_msg(*t)))
            .collect();
        format!(
            "cpu {:.0}% of {:.0}%: {}",
            pct(b.machine_busy.saturating_sub(a.machine_busy)),
            cores * 100.0,
            top.join(", ")
        )
    }
}

/// Opens an AMQP connection as the library does: TCP_NODELAY socket, mio stream.
/// This mirrors `parse_target` and the connect code of src/blocking/stream/amqp.rs on
/// purpose: the ceiling must use the library's socket setup, which it does not export.
fn open_amqp(url: &str) -> BoxResult<Connection> {
    let url = url::Url::parse(url)?;
    let host = url.host_str().ok_or("AMQP URL without host")?;
    let port = url.port().unwrap_or(5672);
    let user = match url.username() {
        "" => "guest".to_string(),
        u => percent_decode(u)?,
    };
    let password = match url.password() {
        None => "guest".to_string(),
        Some(p) => percent_decode(p)?,
    };
    let vhost = match url.path() {
        "" | "/" => "/".to_string(),
        p => percent_decode(&p[1..])?,
    };
    let addr = (host, port)
        .to_socket_addrs()?
        .next()
        .ok_or("AMQP host resolves to no address")?;
    let tcp = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .map_err(|e| format!("connecting to RabbitMQ at {addr}: {e}"))?;
    tcp.set_nodelay(true)?;
    let tcp = mio::net::TcpStream::from_stream(tcp)?;
    let options = ConnectionOptions::<Auth>::default()
        .auth(Auth::Plain {
            username: user,
            password,
        })
        .virtual_host(vhost)
        .heartbeat(60)
        .connection_timeout(Some(Duration::from_secs(10)));
    Ok(Connection::insecure_open_stream(
        tcp,
        options,
        ConnectionTuning::default(),
    )?)
}

fn percent_decode(s: &str) -> BoxResult<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("bad percent-escape in AMQP URL")?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Ok(String::from_utf8(out)?)
}

/// The bench's durable topic exchange (declared by the broker setup and the ceiling).
fn declare_exchange(channel: &Channel, name: &str) -> amiquip::Result<()> {
    let options = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .exchange_declare(ExchangeType::Topic, name, options)
        .map(|_| ())
}

/// The broker of `--stream`: set up, ceiling (phase 3), end-to-end check, teardown.
/// One per run: its size does not matter.
#[allow(clippy::large_enum_variant)]
enum Broker {
    Amqp(AmqpBroker),
    #[cfg(feature = "kafka")]
    Kafka(kafka_bench::KafkaBroker),
    #[cfg(feature = "pubsub")]
    PubSub(pubsub_bench::PubSubBroker),
    #[cfg(any(feature = "sqs", feature = "kinesis"))]
    Aws(aws_bench::AwsBroker),
}

impl Broker {
    fn setup(env: &Env) -> BoxResult<Broker> {
        match env.stream {
            StreamKind::Amqp => Ok(Broker::Amqp(AmqpBroker::setup(env)?)),
            #[cfg(feature = "kafka")]
            StreamKind::Kafka => Ok(Broker::Kafka(kafka_bench::KafkaBroker::setup(env)?)),
            #[cfg(not(feature = "kafka"))]
            StreamKind::Kafka => Err("--stream kafka needs the `kafka` feature".into()),
            #[cfg(feature = "pubsub")]
            StreamKind::PubSub => Ok(Broker::PubSub(pubsub_bench::PubSubBroker::setup(env)?)),
            #[cfg(not(feature = "pubsub"))]
            StreamKind::PubSub => Err("--stream pubsub needs the `pubsub` feature".into()),
            #[cfg(any(feature = "sqs", feature = "kinesis"))]
            StreamKind::Sqs | StreamKind::Kinesis => {
                Ok(Broker::Aws(aws_bench::AwsBroker::setup(env)?))
            }
            #[allow(unreachable_patterns)]
            _ => Err("this --stream is not compiled in".into()),
        }
    }

    /// Phase 3's timed part.
    fn ceiling(&self, env: &Env) -> BoxResult<Duration> {
        match self {
            Broker::Amqp(_) => ceiling_phase(env),
            #[cfg(feature = "kafka")]
            Broker::Kafka(k) => k.ceiling(env),
            #[cfg(feature = "pubsub")]
            Broker::PubSub(p) => p.ceiling(env),
            #[cfg(any(feature = "sqs", feature = "kinesis"))]
            Broker::Aws(a) => a.ceiling(env),
        }
    }

    /// Waits until the broker has everything published so far (`published` more).
    fn settle(&self, published: u64) -> BoxResult<()> {
        match self {
            Broker::Amqp(a) => a.settle(published),
            #[cfg(feature = "kafka")]
            Broker::Kafka(k) => k.settle(published),
            #[cfg(feature = "pubsub")]
            Broker::PubSub(p) => p.settle(published),
            #[cfg(any(feature = "sqs", feature = "kinesis"))]
            Broker::Aws(a) => a.settle(published),
        }
    }

    fn teardown(self) -> BoxResult<()> {
        match self {
            Broker::Amqp(a) => a.teardown(),
            #[cfg(feature = "kafka")]
            Broker::Kafka(k) => k.teardown(),
            #[cfg(feature = "pubsub")]
            Broker::PubSub(p) => p.teardown(),
            #[cfg(any(feature = "sqs", feature = "kinesis"))]
            Broker::Aws(a) => a.teardown(),
        }
    }
}

/// The exchange, the bound queue and a consumer thread that drains it.
struct AmqpBroker {
    // Field order: the channel closes before its connection.
    channel: Channel,
    admin: Connection,
    queue: String,
    exchange: String,
    consumed: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    consumer: Option<JoinHandle<Result<(), String>>>,
    /// Messages published so far (what the consumer should have received).
    expected: AtomicU64,
    /// Report the consumer's lag after each run (`--breakdown`).
    verbose: bool,
}

impl AmqpBroker {
    fn setup(env: &Env) -> BoxResult<AmqpBroker> {
        let mut admin = open_amqp(&env.amqp_url)?;
        if let Some(AmqpValue::LongString(v)) = admin.server_properties().get("version") {
            println!("bench: RabbitMQ {v}");
        }
        let ch = admin.open_channel(None)?;
        declare_exchange(&ch, &env.exchange)?;
        ch.queue_declare(
            env.queue.clone(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
        )?;
        ch.queue_bind(
            env.queue.clone(),
            env.exchange.clone(),
            ROUTING_KEY,
            FieldTable::new(),
        )?;

        let consumed = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
        let (url, queue) = (env.amqp_url.clone(), env.queue.clone());
        let (count, stopped) = (Arc::clone(&consumed), Arc::clone(&stop));
        let consumer = std::thread::spawn(move || -> Result<(), String> {
            let mut conn = open_amqp(&url).map_err(|e| e.to_string())?;
            let ch = conn.open_channel(None).map_err(|e| e.to_string())?;
            let consumer = ch
                .basic_consume(
                    queue,
                    ConsumerOptions {
                        no_ack: true,
                        ..Default::default()
                    },
                )
                .map_err(|e| e.to_string())?;
            let _ = ready_tx.send(());
            while !stopped.load(Ordering::Relaxed) {
                match consumer.receiver().recv_timeout(Duration::from_millis(100)) {
                    Ok(ConsumerMessage::Delivery(_)) => {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(other) => return Err(format!("consumer stopped: {other:?}")),
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                    Err(e) => return Err(format!("consumer: {e}")),
                }
            }
            drop(consumer);
            let _ = ch.close();
            let _ = conn.close();
            Ok(())
        });
        ready_rx
            .recv_timeout(Duration::from_secs(20))
            .map_err(|_| "the consumer did not start")?;
        Ok(AmqpBroker {
            channel: ch,
            admin,
            queue: env.queue.clone(),
            exchange: env.exchange.clone(),
            consumed,
            stop,
            consumer: Some(consumer),
            expected: AtomicU64::new(0),
            verbose: env.breakdown,
        })
    }

    /// Waits until the consumer has received everything published so far (`published`
    /// more since the last call), so that no phase starts with a backlog. Purges the
    /// queue if the consumer is too slow.
    fn settle(&self, published: u64) -> BoxResult<()> {
        let expected = self.expected.fetch_add(published, Ordering::Relaxed) + published;
        let start = Instant::now();
        if self.verbose {
            let behind = expected.saturating_sub(self.consumed.load(Ordering::Relaxed));
            println!("    consumer {behind} messages behind at the end of the run");
        }
        while self.consumed.load(Ordering::Relaxed) < expected {
            if start.elapsed() > Duration::from_secs(30) {
                let got = self.consumed.load(Ordering::Relaxed);
                let purged = self.channel.queue_purge(self.queue.clone())?;
                println!(
                    "    note: consumer had {got} of {expected} messages after 30 s; purged {purged}"
                );
                self.expected
                    .store(got + u64::from(purged), Ordering::Relaxed);
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    fn teardown(mut self) -> BoxResult<()> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(c) = self.consumer.take() {
            match c.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => eprintln!("bench: {e}"),
                Err(_) => eprintln!("bench: consumer thread panicked"),
            }
        }
        let AmqpBroker {
            channel,
            admin,
            queue,
            exchange,
            ..
        } = self;
        channel.queue_delete(queue, QueueDeleteOptions::default())?;
        channel.exchange_delete(exchange, false)?;
        channel.close()?;
        admin.close()?;
        Ok(())
    }
}

/// `--stream kafka`: the topic, the raw rdkafka ceiling and the high-watermark check.
#[cfg(feature = "kafka")]
mod kafka_bench {
    use super::*;
    use outboxer::stream::kafka::KafkaUrl;
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::config::ClientConfig;
    use rdkafka::error::{KafkaError, RDKafkaErrorCode};
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
    use rdkafka::ClientContext;
    use std::future::Future;
    use std::sync::Mutex;
    use std::task::{Context, Poll, Wake, Waker};

    /// Partitions of the bench topic.
    const PARTITIONS: i32 = 1;

    /// The client settings of `url`: brokers plus its properties (SASL and the like).
    fn client_config(url: &str) -> BoxResult<ClientConfig> {
        let parsed = KafkaUrl::parse(url).map_err(|e| format!("OUTBOXER_KAFKA_URL: {e}"))?;
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", parsed.brokers.join(","));
        for (k, v) in &parsed.settings {
            config.set(k, v);
        }
        Ok(config)
    }

    /// Runs an admin future to completion on this thread (rdkafka's admin client
    /// completes it from its own thread).
    fn block_on<F: Future>(future: F) -> F::Output {
        struct Unpark(std::thread::Thread);
        impl Wake for Unpark {
            fn wake(self: Arc<Self>) {
                self.0.unpark();
            }
        }
        let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
        let mut cx = Context::from_waker(&waker);
        let mut future = std::pin::pin!(future);
        loop {
            match future.as_mut().poll(&mut cx) {
                Poll::Ready(v) => return v,
                Poll::Pending => std::thread::park(),
            }
        }
    }

    /// The bench topic.
    pub struct KafkaBroker {
        admin: AdminClient<DefaultClientContext>,
        topic: String,
        /// Records delivered so far (for the closing note).
        expected: AtomicU64,
    }

    impl KafkaBroker {
        pub fn setup(env: &Env) -> BoxResult<KafkaBroker> {
            let admin: AdminClient<DefaultClientContext> = client_config(&env.kafka_url)?
                .create()
                .map_err(|e| format!("Kafka admin client: {e}"))?;
            let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
            let new = NewTopic::new(&env.topic, PARTITIONS, TopicReplication::Fixed(1));
            let results = block_on(admin.create_topics([&new], &options))
                .map_err(|e| format!("creating Kafka topic {}: {e}", env.topic))?;
            for r in results {
                if let Err((topic, code)) = r {
                    return Err(format!("creating Kafka topic {topic}: {code:?}").into());
                }
            }
            let broker = KafkaBroker {
                admin,
                topic: env.topic.clone(),
                expected: AtomicU64::new(0),
            };
            // The topic must be visible before the first phase.
            let deadline = Instant::now() + Duration::from_secs(20);
            while broker.high_watermark().is_err() {
                if Instant::now() > deadline {
                    return Err(format!("Kafka topic {} did not appear", env.topic).into());
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            println!(
                "bench: Kafka at {} (no consumer-side check: the ceiling and the relays count \
                 delivery reports, acks=all)",
                KafkaUrl::redact(&env.kafka_url)
            );
            Ok(broker)
        }

        /// Records in the topic: the sum of its partitions' high watermarks.
        fn high_watermark(&self) -> BoxResult<u64> {
            let mut sum = 0i64;
            for p in 0..PARTITIONS {
                let (_, high) =
                    self.admin
                        .inner()
                        .fetch_watermarks(&self.topic, p, Duration::from_secs(5))?;
                sum += high;
            }
            Ok(u64::try_from(sum).unwrap_or(0))
        }

        /// No end-to-end check with Kafka (no consumer): the relay phases count
        /// delivery reports (acks=all), the ceiling too. Only tallies what was published.
        pub fn settle(&self, published: u64) -> BoxResult<()> {
            self.expected.fetch_add(published, Ordering::Relaxed);
            Ok(())
        }

        pub fn teardown(self) -> BoxResult<()> {
            // For information only: Tansu's high watermark is not a record count (it
            // lags by the size of the last record batch).
            if let Ok(high) = self.high_watermark() {
                println!(
                    "bench: Kafka topic high watermark {high} after {} delivered records \
                     (not checked)",
                    self.expected.load(Ordering::Relaxed)
                );
            }
            let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
            let results = block_on(self.admin.delete_topics(&[&self.topic], &options))?;
            for r in results {
                if let Err((topic, code)) = r {
                    return Err(format!("deleting Kafka topic {topic}: {code:?}").into());
                }
            }
            Ok(())
        }

        /// Phase 3 with Kafka: raw rdkafka, the producer settings of `KafkaStream`.
        pub fn ceiling(&self, env: &Env) -> BoxResult<Duration> {
            let mut config = client_config(&env.kafka_url)?;
            config
                .set("enable.idempotence", "true")
                .set("acks", "all")
                .set("max.in.flight.requests.per.connection", "5")
                .set("message.timeout.ms", "15000")
                .set("allow.auto.create.topics", "false")
                .set("client.id", "outboxer-bench");
            let producer: BaseProducer<Counting> = config
                .create_with_context(Counting::default())
                .map_err(|e| format!("Kafka producer: {e}"))?;
            // Connected, with the topic's metadata, before the clock starts.
            producer
                .client()
                .fetch_metadata(Some(&self.topic), Duration::from_secs(10))?;
            let messages = env.make_messages(env.messages);
            let cpu = env.breakdown.then(CpuSample::take).flatten();
            let mut sent = 0u64;
            let start = Instant::now();
            for window in messages.chunks(CHUNK) {
                for m in window {
                    let id = m.message_id().to_string();
                    let headers = OwnedHeaders::new_with_capacity(1).insert(Header {
                        key: MESSAGE_ID_HEADER,
                        value: Some(id.as_bytes()),
                    });
                    let ts = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map(|d| d.as_millis() as i64)
                        .unwrap_or(0);
                    let mut record: BaseRecord<'_, str, [u8], ()> = BaseRecord::to(&self.topic)
                        .payload(m.payload())
                        .key(ROUTING_KEY)
                        .headers(headers)
                        .timestamp(ts);
                    loop {
                        match producer.send(record) {
                            Ok(()) => break,
                            Err((
                                KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull),
                                r,
                            )) => {
                                record = r;
                                producer.poll(Duration::from_millis(10));
                            }
                            Err((e, _)) => return Err(format!("ceiling: send: {e}").into()),
                        }
                    }
                    sent += 1;
                }
                let deadline = Instant::now() + Duration::from_secs(30);
                while producer.context().delivered.load(Ordering::Relaxed) < sent {
                    if let Some(e) = producer
                        .context()
                        .failed
                        .lock()
                        .map_err(|_| "poisoned")?
                        .take()
                    {
                        return Err(format!("ceiling: delivery failed: {e}").into());
                    }
                    if Instant::now() > deadline {
                        return Err("ceiling: no delivery reports within 30 s".into());
                    }
                    // rdkafka 0.39's `poll` (and `flush`) blocks for its whole timeout
                    // (flush: 100 ms steps) even once the reports are in: short steps.
                    producer.poll(Duration::from_millis(1));
                }
            }
            let took = start.elapsed();
            if env.breakdown {
                println!(
                    "    {} during the ceiling run",
                    CpuSample::since(&cpu, sent)
                );
            }
            Ok(took)
        }
    }

    /// Counts delivery reports (the ceiling's confirms).
    #[derive(Default)]
    struct Counting {
        delivered: AtomicU64,
        failed: Mutex<Option<String>>,
    }

    impl ClientContext for Counting {}

    impl ProducerContext for Counting {
        type DeliveryOpaque = ();
        fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
            match result {
                Ok(_) => {
                    self.delivered.fetch_add(1, Ordering::Relaxed);
                }
                Err((e, _)) => {
                    if let Ok(mut f) = self.failed.lock() {
                        f.get_or_insert_with(|| e.to_string());
                    }
                }
            }
        }
    }
}
#[cfg(feature = "pubsub")]
mod pubsub_bench {
    use super::*;
    use base64::Engine as _;

    /// The project of the bench topic (the emulator takes any).
    const PROJECT: &str = "outboxer-bench";

    /// The stream URL of this run.
    pub fn url(env: &Env) -> String {
        format!("pubsub://{PROJECT}?emulator={}", env.pubsub_emulator)
    }

    /// The bench topic on the emulator.
    pub struct PubSubBroker {
        agent: ureq::Agent,
        /// `http://host:port/v1/projects/P/topics/T`
        topic_url: String,
        /// Messages published so far (for the closing note).
        expected: AtomicU64,
    }

    impl PubSubBroker {
        fn call(&self, method: &str, url: &str, body: Vec<u8>) -> BoxResult<(u16, Vec<u8>)> {
            let req = ureq::http::Request::builder()
                .method(method)
                .uri(url)
                .header("content-type", "application/json")
                .body(body)?;
            let mut resp = self.agent.run(req)?;
            let status = resp.status().as_u16();
            let body = resp
                .body_mut()
                .with_config()
                .limit(64 * 1024 * 1024)
                .read_to_vec()?;
            Ok((status, body))
        }

        pub fn setup(env: &Env) -> BoxResult<PubSubBroker> {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(30)))
                .build()
                .into();
            let broker = PubSubBroker {
                agent,
                topic_url: format!(
                    "http://{}/v1/projects/{PROJECT}/topics/{}",
                    env.pubsub_emulator, env.topic
                ),
                expected: AtomicU64::new(0),
            };
            let (status, body) = broker
                .call("PUT", &broker.topic_url, b"{}".to_vec())
                .map_err(|e| format!("Pub/Sub emulator at {}: {e}", env.pubsub_emulator))?;
            if status != 200 {
                return Err(format!(
                    "creating Pub/Sub topic {}: HTTP {status}: {}",
                    env.topic,
                    String::from_utf8_lossy(&body)
                )
                .into());
            }
            println!(
                "bench: Pub/Sub emulator at {} (no consumer-side check: the ceiling and the \
                 relays count publish responses)",
                env.pubsub_emulator
            );
            Ok(broker)
        }

        pub fn settle(&self, published: u64) -> BoxResult<()> {
            self.expected.fetch_add(published, Ordering::Relaxed);
            Ok(())
        }

        pub fn teardown(self) -> BoxResult<()> {
            println!(
                "bench: {} messages published to the Pub/Sub topic (not pulled)",
                self.expected.load(Ordering::Relaxed)
            );
            let (status, body) = self.call("DELETE", &self.topic_url, Vec::new())?;
            if status != 200 {
                return Err(format!(
                    "deleting the Pub/Sub topic: HTTP {status}: {}",
                    String::from_utf8_lossy(&body)
                )
                .into());
            }
            Ok(())
        }

        /// Phase 3 with Pub/Sub: raw REST publish requests of `CHUNK` messages, one
        /// after the other, the same JSON as the stream.
        pub fn ceiling(&self, env: &Env) -> BoxResult<Duration> {
            let messages = env.make_messages(env.messages);
            let url = format!("{}:publish", self.topic_url);
            // One request before the clock starts: the connection is open.
            self.call("POST", &url, br#"{"messages":[{"data":"AA=="}]}"#.to_vec())?;
            self.expected.fetch_add(1, Ordering::Relaxed);
            let cpu = env.breakdown.then(CpuSample::take).flatten();
            let start = Instant::now();
            for window in messages.chunks(CHUNK) {
                let body = serde_json::json!({
                    "messages": window
                        .iter()
                        .map(|m| serde_json::json!({
                            "data": base64::engine::general_purpose::STANDARD.encode(m.payload()),
                            "attributes": { MESSAGE_ID_HEADER: m.message_id().to_string() },
                        }))
                        .collect::<Vec<_>>()
                });
                let (status, resp) = self.call("POST", &url, body.to_string().into_bytes())?;
                let ids = serde_json::from_slice::<serde_json::Value>(&resp)
                    .ok()
                    .and_then(|v| v["messageIds"].as_array().map(Vec::len));
                if status != 200 || ids != Some(window.len()) {
                    return Err(format!(
                        "ceiling: publish: HTTP {status}: {}",
                        String::from_utf8_lossy(&resp)
                            .chars()
                            .take(300)
                            .collect::<String>()
                    )
                    .into());
                }
            }
            let took = start.elapsed();
            if env.breakdown {
                println!(
                    "    {} during the ceiling run",
                    CpuSample::since(&cpu, messages.len() as u64)
                );
            }
            Ok(took)
        }
    }
}

/// `--stream sqs|kinesis`: the queue or stream on moto, the raw signed-call
/// ceiling and (SQS) the message-count check.
#[cfg(any(feature = "sqs", feature = "kinesis"))]
mod aws_bench {
    use super::*;
    use outboxer::stream::aws::{AwsClient, Service};
    use serde_json::{json, Value};

    pub struct AwsBroker {
        client: AwsClient,
        service: Service,
        name: String,
        /// SQS: the queue URL.
        queue_url: String,
        expected: AtomicU64,
    }

    impl AwsBroker {
        pub fn setup(env: &Env) -> BoxResult<AwsBroker> {
            let (service, scheme) = match env.stream {
                StreamKind::Sqs => (Service::Sqs, "sqs"),
                _ => (Service::Kinesis, "kinesis"),
            };
            let client = AwsClient::connect(&env.aws_url(scheme), service)?;
            let mut queue_url = String::new();
            match service {
                Service::Sqs => {
                    let a = client.call_json("CreateQueue", &json!({"QueueName": env.topic}))?;
                    queue_url = a["QueueUrl"]
                        .as_str()
                        .ok_or("CreateQueue: no QueueUrl")?
                        .to_string();
                }
                Service::Kinesis => {
                    client.call_json(
                        "CreateStream",
                        &json!({"StreamName": env.topic, "ShardCount": 1}),
                    )?;
                }
            }
            println!("bench: moto at {}", env.aws_endpoint);
            Ok(AwsBroker {
                client,
                service,
                name: env.topic.clone(),
                queue_url,
                expected: AtomicU64::new(0),
            })
        }

        /// SQS: waits until the queue holds exactly the messages of this phase,
        /// then re-creates it empty: moto's sends slow down as a standard queue grows
        /// (measured: 511, 218, 139 msg/s with 100, 200, 300 messages queued), so
        /// every phase starts on an empty queue. Kinesis: only tallies.
        pub fn settle(&self, published: u64) -> BoxResult<()> {
            self.expected.fetch_add(published, Ordering::Relaxed);
            let expected = published;
            if self.service != Service::Sqs {
                return Ok(());
            }
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let a = self.client.call_json(
                    "GetQueueAttributes",
                    &json!({"QueueUrl": self.queue_url, "AttributeNames": ["ApproximateNumberOfMessages"]}),
                )?;
                let n: u64 = a["Attributes"]["ApproximateNumberOfMessages"]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .ok_or("GetQueueAttributes: no count")?;
                if n == expected {
                    // PurgeQueue is limited to once a minute: delete and create it
                    // again instead (moto's queue URL, which the streams cache, stays).
                    self.client
                        .call_json("DeleteQueue", &json!({"QueueUrl": self.queue_url}))?;
                    let a = self
                        .client
                        .call_json("CreateQueue", &json!({"QueueName": self.name}))?;
                    if a["QueueUrl"].as_str() != Some(self.queue_url.as_str()) {
                        return Err(
                            format!("re-created queue has a new URL: {}", a["QueueUrl"]).into()
                        );
                    }
                    return Ok(());
                }
                if n > expected || Instant::now() > deadline {
                    return Err(format!("SQS queue holds {n} messages, expected {expected}").into());
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }

        pub fn teardown(self) -> BoxResult<()> {
            match self.service {
                Service::Sqs => {
                    self.client
                        .call_json("DeleteQueue", &json!({"QueueUrl": self.queue_url}))?;
                }
                Service::Kinesis => {
                    self.client.call_json(
                        "DeleteStream",
                        &json!({"StreamName": self.name, "EnforceConsumerDeletion": true}),
                    )?;
                }
            }
            Ok(())
        }

        /// Phase 3: the same bodies as the stream sends, in signed calls, one at a time.
        pub fn ceiling(&self, env: &Env) -> BoxResult<Duration> {
            use base64::Engine as _;
            let b64 = base64::engine::general_purpose::STANDARD;
            let messages = env.make_messages(env.messages);
            let cpu = env.breakdown.then(CpuSample::take).flatten();
            let start = Instant::now();
            match self.service {
                Service::Sqs => {
                    for chunk in messages.chunks(10) {
                        let entries: Vec<Value> = chunk
                            .iter()
                            .enumerate()
                            .map(|(i, m)| {
                                let e = outboxer::stream::sqs::encode(
                                    &m.message_id().to_string(),
                                    m.payload(),
                                    m.headers(),
                                )?;
                                let attrs: serde_json::Map<String, Value> = e
                                    .attributes
                                    .into_iter()
                                    .map(|(k, v)| (k, json!({"DataType": "String", "StringValue": v})))
                                    .collect();
                                Ok(json!({"Id": i.to_string(), "MessageBody": e.body, "MessageAttributes": attrs}))
                            })
                            .collect::<Result<_, outboxer::Error>>()?;
                        let a = self.client.call_json(
                            "SendMessageBatch",
                            &json!({"QueueUrl": self.queue_url, "Entries": entries}),
                        )?;
                        if a["Failed"].as_array().is_some_and(|f| !f.is_empty()) {
                            return Err(format!("ceiling: failed entries {}", a["Failed"]).into());
                        }
                    }
                }
                Service::Kinesis => {
                    for chunk in messages.chunks(500) {
                        let records: Vec<Value> = chunk
                            .iter()
                            .map(|m| {
                                let data = outboxer::stream::kinesis::encode_record(
                                    &m.message_id().to_string(),
                                    m.payload(),
                                    m.headers(),
                                );
                                json!({"Data": b64.encode(data), "PartitionKey": ROUTING_KEY})
                            })
                            .collect();
                        let a = self.client.call_json(
                            "PutRecords",
                            &json!({"StreamName": self.name, "Records": records}),
                        )?;
                        if a["FailedRecordCount"].as_u64().unwrap_or(0) > 0 {
                            return Err("ceiling: failed records".into());
                        }
                    }
                }
            }
            let took = start.elapsed();
            if env.breakdown {
                println!(
                    "    {} during the ceiling run",
                    CpuSample::since(&cpu, env.messages as u64)
                );
            }
            Ok(took)
        }
    }
}
