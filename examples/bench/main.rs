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
//! 3. `ceiling_per_s` — the raw broker ceiling: amiquip on the library's own connection
//!    (`outboxer::stream::amqp::open_connection`: a TCP_NODELAY socket) and a channel in
//!    confirm mode (`open_confirm_channel`), persistent `mandatory` publishes with the
//!    stream's properties (`message_properties`: a `message_id` property, a timestamp
//!    and the message-id header), 1000 publishes then wait for all their confirms,
//!    repeated. Best of three runs.
//!
//!    Phase 3d, `db_ceiling_per_s` — the relay's database statements alone, no publishing:
//!    N messages enqueued, then claim + mark loops on one thread until the table is
//!    drained, batch sizes 500 and 1000, the best counts. New mode: `claim_locked` +
//!    the held claim's `commit(ids, delete)`; old mode: a lease `claim` +
//!    `mark_dispatched`. `limit_per_s = 1 / (1/ceiling_per_s + 1/db_ceiling_per_s)`
//!    is what a relay sharing the machine with its database and broker can reach;
//!    `relay_vs_limit = relay_per_s / limit_per_s`.
//! 4. `relay_per_s` — N messages enqueued first, then ONE relay (`check_interval` 10 ms)
//!    timed from `start()` until its `published` counter reaches N; batch sizes 500
//!    and 1000, the best is reported. `ratio` is `relay_per_s / ceiling_per_s`. Each
//!    run also measures the database server's CPU time (`/proc/<pid>/task/*/schedstat`
//!    of the `postgres` / `mariadbd` processes, without the connections of other
//!    clients, told apart by client port) and its WAL / redo bytes (PostgreSQL:
//!    `pg_current_wal_lsn()` diff; MariaDB: `Innodb_lsn_current` diff; both
//!    server-wide), per relayed message. The old mode's run is followed by its
//!    deferred cost, measured apart: the cleanup statement (`Store::cleanup`) deleting
//!    the kept rows (`old_cleanup_*`).
//! 5. `relay2_per_s` — the same with TWO `Outbox` instances (each with its own store and
//!    stream) on one table, started together, timed until the sum of `published` is N.
//! 6. `p50_ms` / `p99_ms` — commit-to-publish latency at a steady 200 msg/s (new mode): one relay
//!    with `check_interval` 1 s (so the wake-up on `send` does the work, not polling),
//!    2000 messages sent one by one with `Outbox::send`; per message, the time from
//!    `send` returning to its `Delivered` arriving on `relay.ok()`.
//!
//! `--modes old,new` (the default; or one of them): phases 3d, 4 and 5 run in both
//! relay modes side by side, interleaved batch size by batch size. *new* is the
//! default since issue 16: `ClaimMode::RowLocks` (where the store can hold row
//! locks; SQLite, and stores not yet converted, lease) and delete on dispatch
//! (`cleanup_before(Duration::ZERO)`). *old* is the mode before it:
//! `ClaimMode::Leases`, dispatched rows kept (5 days) with the cleanup thread on.
//!
//! Phases 2 and 4 to 6 are the same code for every store (generic over [`Store`]).
//! With `--breakdown`, phases 3 to 5 also print the machine's CPU use per process
//! (from `/proc`, Linux; also as CPU time per message), phases 4 and 5 wrap the store and the stream in timing
//! decorators (through the public `Store` and `Stream` traits) to show how busy the
//! relay's claim, publish and mark steps were, and what the database wrote (PostgreSQL:
//! WAL bytes; MySQL/MariaDB: redo bytes, fsyncs, statements and index reads from
//! `SHOW GLOBAL STATUS`, server-wide). The timing store forwards `claim_locked` (its
//! held claim's commit timed as the mark) and `delete_dispatched`, counts the claims
//! of each kind, and a run whose claims are not what the mode means on that store
//! (asked with a `claim_locked` probe on the empty table) fails. The default run
//! measures the plain stores and `AmqpStream`.
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
//! insert_per_s=.. enqueue_ratio=.. p50_ms=.. p99_ms=..` (the new mode), then
//! `old_relay_per_s old_ratio old_relay2_per_s`, `db_cpu_us_per_msg` /
//! `old_db_cpu_us_per_msg`, `wal_bytes_per_msg` / `old_wal_bytes_per_msg`,
//! `db_ceiling_per_s` / `old_..`, `limit_per_s` / `old_..`, `relay_vs_limit` /
//! `old_..`, `old_cleanup_db_cpu_us_per_msg`, `old_cleanup_wal_bytes_per_msg`, and
//! `claims=row_locks|leases old_claims=..` (`na`: not measured).
//! Tables, the exchange and the queue are removed at the end, also after an error.
//!
//! Layout: this file runs the phases in order and prints the results; `args` reads
//! the command line, `env` holds the run's settings, names and messages; `mode` the
//! two relay modes, `compare` runs phases 3d to 5 in each, `report` the RESULT line,
//! `cpu` CPU time from `/proc`; `phases/`
//! holds the phases that are the same for every store and stream (phase 3, the
//! broker's raw ceiling, is in each `streams/` module); `stores/` one module per
//! database (phase 1 and the tables), `streams/` one per broker (setup, ceiling,
//! end-to-end check, teardown); `breakdown` the `--breakdown` measurements.

mod args;
mod breakdown;
mod compare;
mod cpu;
mod env;
mod mode;
mod phases;
mod report;
mod stores;
mod streams;

use args::{parse_args, StoreKind, StreamKind};
use env::Env;
use report::Results;
use std::error::Error;
use std::process::ExitCode;
use std::time::Duration;
use stores::Backend;
use streams::Broker;

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
        StoreKind::Postgres => bench(&env, &stores::postgres::Postgres::from_env()),
        #[cfg(feature = "mysql")]
        StoreKind::Mysql => bench(&env, &stores::mysql::Mysql::from_env()?),
        #[cfg(feature = "sqlite")]
        StoreKind::Sqlite => bench(&env, &stores::sqlite::Sqlite::from_env(env.pid)),
        #[cfg(feature = "sqlserver")]
        StoreKind::SqlServer => bench(&env, &stores::sqlserver::SqlServer::from_env()?),
        #[allow(unreachable_patterns)]
        other => Err(format!(
            "--store {0} is not compiled in: add the `{0}` feature \
             (cargo run --release --example bench --features postgres,{0},amqp -- --store {0})",
            other.feature()
        )
        .into()),
    }
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
    println!("{}", r.line());
    Ok(())
}

fn run<B: Backend>(env: &Env, db: &B, broker: &Broker) -> BoxResult<Results> {
    let n = env.messages;

    let mut insert_per_s: f64 = 0.0;
    for i in 1..=RUNS {
        let r = rate(n, phases::insert(env, db)?);
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

    let modes = compare::measure_modes(env, db, broker, ceiling_per_s)?;

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
        p50_ms,
        p99_ms,
        modes,
    })
}

pub fn rate(n: usize, took: Duration) -> f64 {
    n as f64 / took.as_secs_f64().max(1e-9)
}
