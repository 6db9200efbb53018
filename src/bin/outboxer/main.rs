//! `outboxer`: the relay as a standalone process, and tools for operators.
//! Built with the `cli` feature: `cargo install outboxer --features cli`.

mod admin;
mod args;
mod bench;
mod check;
mod connect;
mod fail;
mod logging;
mod parse;
mod relay;
mod serve;
mod settings;

use args::{Cli, Command, Common, StreamArg};
use clap::{CommandFactory, FromArgMatches};
use connect::{display_url, open_store, open_stream};
use fail::Fail;
use outboxer::store::{ParkedFilter, Requeue};
use settings::{FileConfig, RelaySettings};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

/// The version line: the crate's version and the stores and streams compiled in.
fn version() -> String {
    let on = |list: &[(&'static str, bool)]| {
        list.iter()
            .filter(|(_, on)| *on)
            .map(|(name, _)| *name)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let stores = on(&[
        ("postgres", true),
        ("mysql", true),
        ("sqlite", true),
        ("sqlserver", cfg!(feature = "sqlserver")),
    ]);
    let streams = on(&[
        ("amqp", true),
        ("kafka", cfg!(feature = "kafka")),
        ("sqs", cfg!(feature = "sqs")),
        ("kinesis", cfg!(feature = "kinesis")),
        ("pubsub", cfg!(feature = "pubsub")),
    ]);
    format!(
        "{} (stores: {stores}; streams: {streams})",
        env!("CARGO_PKG_VERSION")
    )
}

fn main() -> ExitCode {
    // clap takes a &'static str; this runs once.
    let version: &'static str = Box::leak(version().into_boxed_str());
    let cli = match Cli::from_arg_matches(&Cli::command().version(version).get_matches()) {
        Ok(cli) => cli,
        Err(e) => e.exit(), // usage errors exit with code 2
    };
    // The log format: flag or OUTBOXER_LOG_FORMAT, else the config file's
    // `log_format` (a file that fails to load is reported by the command itself).
    let format = cli.log_format.or_else(|| {
        FileConfig::load(cli.command.common())
            .ok()
            .and_then(|f| f.log_format)
            .and_then(|f| logging::LogFormat::parse(&f))
    });
    logging::init(format.unwrap_or(logging::LogFormat::Text));
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
        message: if f.message.contains(&shown) {
            f.message
        } else {
            format!("store {shown}: {}", f.message)
        },
        ..f
    })?;
    Ok(Opened {
        store,
        shown,
        table,
    })
}

fn stream_url(arg: &StreamArg, file: &FileConfig) -> Result<String, Fail> {
    settings::stream_url(arg, file)?.ok_or_else(|| {
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
        Command::Check(a) => {
            let file = FileConfig::load(&a.common)?;
            let target = settings::target(&a.common, &file)?;
            let url = settings::stream_url(&a.stream, &file)?;
            check::run(&target, url.as_deref())
        }
        Command::Relay(a) => {
            let file = FileConfig::load(&a.common)?;
            let settings = RelaySettings::resolve(&a.relay, &file)?;
            let url = stream_url(&a.stream, &file)?;
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
                Some(every) => Some(
                    parse::duration(&every)
                        .map_err(|e| Fail::usage(format!("--watch: {e}")))
                        .and_then(|d| {
                            if d >= Duration::from_millis(100) {
                                Ok(d)
                            } else {
                                Err(Fail::usage(format!("--watch {every}: give at least 100ms")))
                            }
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
            let (which, what) = if a.all_parked {
                (Requeue::AllParked, String::new())
            } else if a.before.is_some() || a.error_contains.is_some() {
                let mut filter = ParkedFilter::new();
                let mut what = String::new();
                if let Some(before) = &a.before {
                    let now = SystemTime::now();
                    let age = parse::age_or_time(before, now)
                        .map_err(|e| Fail::usage(format!("--before: {e}")))?;
                    filter = filter.older_than(age);
                    what.push_str(&format!(
                        " enqueued before {}",
                        parse::rfc3339_millis(
                            now.checked_sub(age).unwrap_or(SystemTime::UNIX_EPOCH)
                        )
                    ));
                }
                if let Some(text) = &a.error_contains {
                    if text.is_empty() {
                        return Err(Fail::usage("--error-contains: give some text"));
                    }
                    filter = filter.error_contains(text.as_str());
                    what.push_str(&format!(" whose last error contains {text:?}"));
                }
                (Requeue::Matching(filter), what)
            } else {
                (Requeue::Ids(a.id), String::new())
            };
            let o = open(&a.common, &file, "event_store")?;
            admin::requeue(&*o.store, &which, &what)
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
            let cutoff = SystemTime::now()
                .checked_sub(age)
                .map(parse::rfc3339_millis)
                .unwrap_or_else(|| a.before.clone());
            let o = open(&a.common, &file, "event_store")?;
            if a.dry_run {
                admin::purge_dry_run(&*o.store, age, &cutoff, a.include_parked)
            } else {
                admin::purge(&*o.store, age, &cutoff, a.include_parked)
            }
        }
        Command::Bench(a) => {
            let file = FileConfig::load(&a.common)?;
            let url = stream_url(&a.stream, &file)?;
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
