//! The command line.

use crate::mode::Mode;

/// Command line: `--messages N` (default 20000), `--store NAME`, `--stream NAME`,
/// `--modes old,new` (default both), `--breakdown`.
pub struct Args {
    pub messages: usize,
    pub store: StoreKind,
    pub stream: StreamKind,
    /// The relay modes measured side by side, in this order.
    pub modes: Vec<Mode>,
    pub breakdown: bool,
    pub async_api: bool,
}

/// The broker of phases 3 to 6.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamKind {
    Amqp,
    Kafka,
    PubSub,
    Sqs,
    Kinesis,
}

impl StreamKind {
    pub fn parse(name: &str) -> Result<StreamKind, String> {
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
pub enum StoreKind {
    Postgres,
    Mysql,
    Sqlite,
    SqlServer,
}

impl StoreKind {
    pub fn parse(name: &str) -> Result<StoreKind, String> {
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
    pub fn feature(self) -> &'static str {
        match self {
            StoreKind::Postgres => "postgres",
            StoreKind::Mysql => "mysql",
            StoreKind::Sqlite => "sqlite",
            StoreKind::SqlServer => "sqlserver",
        }
    }
}

pub fn parse_args() -> Result<Args, String> {
    const USAGE: &str = "usage: --messages N --store postgres|mysql|sqlite|sqlserver \
                         --stream amqp|kafka|pubsub|sqs|kinesis [--modes old,new] [--breakdown] [--async]";
    let mut parsed = Args {
        messages: 20_000,
        store: StoreKind::Postgres,
        stream: StreamKind::Amqp,
        modes: vec![Mode::Old, Mode::New],
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
        if !["--messages", "--store", "--stream", "--modes"].contains(&name.as_str()) {
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
        } else if name == "--modes" {
            parsed.modes = Mode::parse_list(&value)?;
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
