//! `outboxer`: the relay as a standalone process, and tools for operators.
//! Built with the `cli` feature: `cargo install outboxer --features cli`.

mod admin;
mod args;
mod bench;
mod connect;
mod fail;
mod parse;
mod relay;
mod serve;
mod settings;

use args::{Cli, Command, Common};
use clap::Parser;
use connect::{display_url, open_store, open_stream};
use fail::Fail;
use outboxer::store::Requeue;
use settings::{FileConfig, RelaySettings};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

/// The default log filter (`env_logger` syntax, like `RUST_LOG`).
const DEFAULT_LOG: &str = "warn,outboxer=info,outboxer::blocking::relay=error";

fn main() -> ExitCode {
    let cli = Cli::parse(); // usage errors exit with code 2
                            // Logs go to stderr; OUTBOXER_LOG overrides the default. By default: info for
                            // outboxer, warnings for the drivers (no PostgreSQL NOTICEs), and the library
                            // relay's own per-failure warnings left out, because the command logs every
                            // failure from the relay's err() channel itself (rate-limited during outages).
    env_logger::Builder::from_env(
        env_logger::Env::default()
            .filter_or("OUTBOXER_LOG", DEFAULT_LOG)
            .write_style("OUTBOXER_LOG_STYLE"),
    )
    .format_target(false)
    .init();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("outboxer: error: {f}");
            f.exit_code()
        }
    }
}

/// The store and table a command works on, with the printable name of both.
struct Opened {
    store: Box<dyn outboxer::Store>,
    shown: String,
    table: String,
}

fn open(common: &Common, file: &FileConfig, default_table: &str) -> Result<Opened, Fail> {
    let t = settings::target(common, file)?;
    let table = t.table.unwrap_or_else(|| default_table.to_string());
    let shown = display_url(&t.store);
    let store = open_store(&t.store, Some(&table)).map_err(|f| Fail {
        code: f.code,
        message: if f.message.contains(&shown) {
            f.message
        } else {
            format!("store {shown}: {}", f.message)
        },
    })?;
    Ok(Opened {
        store,
        shown,
        table,
    })
}

fn stream_url(
    flag: Option<String>,
    flag_file: Option<PathBuf>,
    file: &FileConfig,
) -> Result<String, Fail> {
    settings::stream_url(flag.as_ref(), flag_file.as_deref(), file)?.ok_or_else(|| {
        Fail::usage(
            "a stream is required: --stream URL, --stream-file PATH, OUTBOXER_STREAM, \
             OUTBOXER_STREAM_FILE or `stream`/`stream_file` in the config file",
        )
    })
}

fn run(command: Command) -> Result<(), Fail> {
    match command {
        Command::Migrate(common) => {
            let file = FileConfig::load(&common)?;
            let o = open(&common, &file, "event_store")?;
            let what = format!("table {} on {}", o.table, o.shown);
            admin::migrate(&*o.store, &what)
        }
        Command::Relay(a) => {
            let file = FileConfig::load(&a.common)?;
            let settings = RelaySettings::resolve(&a.relay, &file)?;
            let url = stream_url(a.stream, a.stream_file, &file)?;
            let o = open(&a.common, &file, "event_store")?;
            let stream = open_stream(&url)?;
            let what = format!(
                "table {} on {} -> {}",
                o.table,
                o.shown,
                outboxer::redact_url(&url)
            );
            relay::run(o.store, stream, &settings, &what)
        }
        Command::Stats(a) => {
            let file = FileConfig::load(&a.common)?;
            let watch = match a.watch {
                None => None,
                Some(secs) => Some(
                    Duration::try_from_secs_f64(secs)
                        .ok()
                        .filter(|d| *d >= Duration::from_millis(100))
                        .ok_or_else(|| {
                            Fail::usage(format!("--watch {secs}: give at least 0.1 seconds"))
                        })?,
                ),
            };
            let opts = admin::StatsOptions {
                json: a.json,
                watch,
                count: a.count,
                parked_limit: a.parked_limit,
            };
            let o = open(&a.common, &file, "event_store")?;
            let (shown, table) = (o.shown.clone(), o.table.clone());
            admin::stats(&*o.store, &opts, &shown, &table)
        }
        Command::Requeue(a) => {
            let file = FileConfig::load(&a.common)?;
            let which = if a.all_parked {
                Requeue::AllParked
            } else {
                Requeue::Ids(a.id)
            };
            let o = open(&a.common, &file, "event_store")?;
            admin::requeue(&*o.store, &which)
        }
        Command::Skip(a) => {
            let file = FileConfig::load(&a.common)?;
            let o = open(&a.common, &file, "event_store")?;
            admin::skip(&*o.store, &a.id)
        }
        Command::Purge(a) => {
            let file = FileConfig::load(&a.common)?;
            let age = parse::age_or_time(&a.before, SystemTime::now())
                .map_err(|e| Fail::usage(format!("--before: {e}")))?;
            let o = open(&a.common, &file, "event_store")?;
            admin::purge(&*o.store, age, &a.before, a.include_parked)
        }
        Command::Bench(a) => {
            let file = FileConfig::load(&a.common)?;
            let url = stream_url(a.stream, a.stream_file, &file)?;
            let lower = url.to_ascii_lowercase();
            if !lower.starts_with("amqp://") && !lower.starts_with("amqps://") {
                return Err(Fail::usage(
                    "bench supports amqp:// and amqps:// streams only",
                ));
            }
            if a.messages == 0 {
                return Err(Fail::usage("--messages must be at least 1"));
            }
            let opts = bench::BenchOptions {
                messages: a.messages,
                payload_size: a.payload_size,
                timeout: parse::duration(&a.timeout)
                    .map_err(|e| Fail::usage(format!("--timeout: {e}")))?,
                own_table: a.common.table.is_none() && file.table.is_none(),
            };
            let o = open(&a.common, &file, "outboxer_bench")?;
            let stream = open_stream(&url)?;
            bench::run(o.store, &url, stream, &opts)
        }
    }
}
