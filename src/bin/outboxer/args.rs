//! The command line: subcommands, flags and their `OUTBOXER_*` environment variables.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// Runs the outboxer relay next to any application that writes the outbox table,
/// and gives operators tools to look into it.
#[derive(Debug, Parser)]
#[command(name = "outboxer", version, about, long_about = None)]
#[command(
    after_help = "Exit codes: 0 success, 1 runtime error (database, broker), \
    2 usage error (bad flag, URL, setting or config file).\n\
    Settings come from flags, then OUTBOXER_* environment variables, then the \
    --config TOML file, then defaults."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log lines on stderr: `text` (RFC 3339 UTC time, level, message) or `json`
    /// (one object per line: ts, level, target, msg and the record's key-values)
    /// [default: text]
    #[arg(long, global = true, env = "OUTBOXER_LOG_FORMAT", value_enum)]
    pub log_format: Option<crate::logging::LogFormat>,
}

impl Command {
    /// The options shared by every subcommand (for the config file's path).
    pub fn common(&self) -> &Common {
        match self {
            Command::Migrate(c) => c,
            Command::Check(a) => &a.common,
            Command::Relay(a) => &a.common,
            Command::Stats(a) => &a.common,
            Command::Requeue(a) => &a.common,
            Command::Skip(a) => &a.common,
            Command::Purge(a) => &a.common,
            Command::Bench(a) => &a.common,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create or upgrade the outbox table and its indexes (idempotent).
    Migrate(Common),
    /// Connect to the store and the stream and check that the table is migrated:
    /// one line per check, exit 0 when all is well, 1 otherwise (for exec probes
    /// and deploy pipelines).
    Check(CheckArgs),
    /// Run the relay until SIGINT or SIGTERM.
    Relay(Box<RelayArgs>),
    /// Counts by status, oldest pending age, attempts histogram, parked messages,
    /// keys held by a parked head.
    Stats(StatsArgs),
    /// Move parked messages back to pending with a fresh attempt budget (a parked
    /// key head goes first, in key order).
    Requeue(RequeueArgs),
    /// Give parked key heads up: they stay parked, their keys' later messages flow.
    Skip(SkipArgs),
    /// Delete dispatched messages (with --include-parked also parked ones) older than a time or an age.
    Purge(PurgeArgs),
    /// Enqueue N messages through the library while a relay publishes them;
    /// prints throughput and latency.
    Bench(BenchArgs),
}

/// Options every subcommand takes.
#[derive(Debug, Args, Clone, Default)]
pub struct Common {
    /// Store URL: postgres://, mysql:// (or mariadb://), sqlite:PATH, or sqlserver
    /// (ADO/JDBC string, when compiled in) [default: sqlite:outboxer.db]
    #[arg(long, env = "OUTBOXER_STORE", hide_env_values = true)]
    pub store: Option<String>,
    /// Read the store URL from this file instead (first and last whitespace
    /// trimmed): its password stays out of the process list and the shell history
    #[arg(
        long,
        env = "OUTBOXER_STORE_FILE",
        value_name = "PATH",
        conflicts_with = "store"
    )]
    pub store_file: Option<PathBuf>,
    /// Outbox table name, optionally schema-qualified [default: event_store]
    #[arg(long, env = "OUTBOXER_TABLE")]
    pub table: Option<String>,
    /// TOML file with settings (flags and environment variables take precedence)
    #[arg(long, env = "OUTBOXER_CONFIG")]
    pub config: Option<PathBuf>,
}

/// The stream's URL, given or read from a file: one pair of flags for every
/// subcommand that publishes or checks a stream.
#[derive(Debug, Args, Clone, Default)]
pub struct StreamArg {
    /// Stream URL: amqp://, amqps://, kafka://, sqs://, kinesis://, pubsub://
    /// (when compiled in)
    #[arg(long, env = "OUTBOXER_STREAM", hide_env_values = true)]
    pub stream: Option<String>,
    /// Read the stream URL from this file instead (trimmed), keeping its secrets
    /// out of the process list
    #[arg(
        long,
        env = "OUTBOXER_STREAM_FILE",
        value_name = "PATH",
        conflicts_with = "stream"
    )]
    pub stream_file: Option<PathBuf>,
}

#[derive(Debug, Args, Clone, Default)]
pub struct RelayArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub stream: StreamArg,
    #[command(flatten)]
    pub relay: RelayOptions,
}

/// The relay's settings (see the library's `OutboxBuilder`).
#[derive(Debug, Args, Clone, Default)]
pub struct RelayOptions {
    /// Create or upgrade the table before relaying
    #[arg(long, env = "OUTBOXER_MIGRATE", num_args = 0..=1, default_missing_value = "true")]
    pub migrate: Option<bool>,
    /// Most messages claimed and published at once [default: 500]
    #[arg(long, env = "OUTBOXER_BATCH_SIZE")]
    pub batch_size: Option<usize>,
    /// Polling interval when no wake-up arrives, e.g. 500ms, 1s [default: 1s]
    #[arg(long, env = "OUTBOXER_CHECK_INTERVAL")]
    pub check_interval: Option<String>,
    /// How long a claim is owned before another relay may take it over [default: 30s]
    #[arg(long, env = "OUTBOXER_LEASE")]
    pub lease: Option<String>,
    /// How a claim owns its rows while they are published: `locks` (row locks
    /// in a transaction held open; SQLite and SQL Server lease) or `leases`
    /// [default: locks]
    #[arg(long, env = "OUTBOXER_CLAIM_MODE", value_name = "MODE")]
    pub claim_mode: Option<String>,
    /// Failed attempts before a message is parked [default: 10]
    #[arg(long, env = "OUTBOXER_MAX_ATTEMPTS")]
    pub max_attempts: Option<u32>,
    /// First retry delay, doubling up to --backoff-max [default: 500ms]
    #[arg(long, env = "OUTBOXER_BACKOFF_BASE")]
    pub backoff_base: Option<String>,
    /// Longest retry delay [default: 5m]
    #[arg(long, env = "OUTBOXER_BACKOFF_MAX")]
    pub backoff_max: Option<String>,
    /// How often old dispatched rows are deleted, or "off" [default: 60s]
    #[arg(long, env = "OUTBOXER_CLEANUP_INTERVAL")]
    pub cleanup_interval: Option<String>,
    /// How long dispatched rows are kept before the cleanup deletes them; 0
    /// deletes each row as it is dispatched [default: 0]
    #[arg(long, env = "OUTBOXER_CLEANUP_BEFORE")]
    pub cleanup_before: Option<String>,
    /// How often a summary (published / failed) is logged [default: 10s]
    #[arg(long, env = "OUTBOXER_LOG_INTERVAL")]
    pub log_interval: Option<String>,
    /// Serve /metrics (Prometheus), /healthz and /readyz on this address,
    /// e.g. 127.0.0.1:9464 [default: off]
    #[arg(long, env = "OUTBOXER_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
    /// How often the table gauges (pending, oldest pending age, parked, held keys)
    /// are queried for /metrics [default: 15s]
    #[arg(long, env = "OUTBOXER_METRICS_INTERVAL")]
    pub metrics_interval: Option<String>,
}

#[derive(Debug, Args, Clone, Default)]
pub struct CheckArgs {
    #[command(flatten)]
    pub common: Common,
    // Without a stream, only the store and table are checked.
    #[command(flatten)]
    pub stream: StreamArg,
}

#[derive(Debug, Args, Clone)]
pub struct StatsArgs {
    #[command(flatten)]
    pub common: Common,
    /// One JSON object per line on stdout (stable field names)
    #[arg(long)]
    pub json: bool,
    /// Refresh every DURATION (2s, 500ms, 1m; a bare number is seconds; default
    /// 2s) until interrupted; each refresh is stamped with its RFC 3339 time
    #[arg(long, value_name = "DURATION", num_args = 0..=1, default_missing_value = "2s")]
    pub watch: Option<String>,
    /// With --watch: stop after this many refreshes
    #[arg(long, value_name = "N", requires = "watch")]
    pub count: Option<u64>,
    /// Most parked messages (and most held keys) listed
    #[arg(long, default_value_t = 20)]
    pub parked_limit: usize,
}

#[derive(Debug, Args, Clone)]
pub struct SkipArgs {
    #[command(flatten)]
    pub common: Common,
    /// Row id of a parked message holding its key (repeatable; see `outboxer stats`)
    #[arg(long = "id", value_name = "ID", required = true)]
    pub id: Vec<i64>,
}

#[derive(Debug, Args, Clone)]
#[group(id = "which", required = true, multiple = true, args = ["id", "all_parked", "before", "error_contains"])]
pub struct RequeueArgs {
    #[command(flatten)]
    pub common: Common,
    /// Row id of a parked message (repeatable)
    #[arg(long = "id", value_name = "ID", conflicts_with_all = ["all_parked", "before", "error_contains"])]
    pub id: Vec<i64>,
    /// Every parked message
    #[arg(long, conflicts_with_all = ["before", "error_contains"])]
    pub all_parked: bool,
    /// Parked messages enqueued before this: an RFC 3339 time
    /// (2026-11-20T00:00:00Z) or an age (7d, 12h, 30m)
    #[arg(long, value_name = "TIME|AGE")]
    pub before: Option<String>,
    /// Parked messages whose last error contains this text (case-insensitive);
    /// with --before, those that match both
    #[arg(long, value_name = "TEXT")]
    pub error_contains: Option<String>,
}

#[derive(Debug, Args, Clone)]
pub struct PurgeArgs {
    #[command(flatten)]
    pub common: Common,
    /// Delete dispatched rows dispatched before this: an RFC 3339 time
    /// (2026-11-20T00:00:00Z) or an age (7d, 12h, 30m, 10s). Pending rows are never
    /// deleted; parked rows only with --include-parked.
    #[arg(long, value_name = "TIME|AGE")]
    pub before: String,
    /// Also delete parked messages enqueued before that time (read their errors
    /// with `outboxer stats` first)
    #[arg(long)]
    pub include_parked: bool,
    /// Say what would be deleted (counts by status, the cutoff) and delete nothing
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args, Clone)]
pub struct BenchArgs {
    #[command(flatten)]
    pub common: Common,
    // The stream: amqp:// or amqps:// only.
    #[command(flatten)]
    pub stream: StreamArg,
    /// Messages to send
    #[arg(long, default_value_t = 10_000)]
    pub messages: u64,
    /// Payload size in bytes
    #[arg(long, default_value_t = 256)]
    pub payload_size: usize,
    /// Give up waiting for deliveries after this long
    #[arg(long, default_value = "5m")]
    pub timeout: String,
}
