//! The command's log lines on stderr: RFC 3339 UTC timestamps with milliseconds,
//! as text (default) or one JSON object per line (`--log-format json`).

use crate::parse;
use clap::ValueEnum;
use log::kv::{Key, Value, VisitSource};
use serde_json::Value as Json;
use std::io::Write;
use std::time::SystemTime;

/// The default filter (`env_logger` syntax, like `RUST_LOG`): info for outboxer,
/// warnings for the drivers (no PostgreSQL NOTICEs). The library reports outages
/// itself, rate-limited; the command adds no line of its own per failure.
pub const DEFAULT_FILTER: &str = "warn,outboxer=info";

/// Drivers that log per frame or per request at debug level: kept at `warn` unless
/// the user names them in `OUTBOXER_LOG` (a bare `OUTBOXER_LOG=debug` must not
/// turn an outage or a busy relay into a line per message).
const QUIET_DRIVERS: &[&str] = &[
    "amiquip",
    "mio",
    "rustls",
    "ureq",
    "ureq_proto",
    "postgres",
    "tokio_postgres",
    "mysql",
    "mysql_common",
    "rusqlite",
    "tiberius",
    "rdkafka",
    "librdkafka",
    "hyper",
    "h2",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// `2026-11-20T08:30:00.123Z INFO  message key=value`
    Text,
    /// `{"ts":"2026-11-20T08:30:00.123Z","level":"INFO","target":"outboxer","msg":"..."}`
    Json,
}

impl LogFormat {
    pub fn parse(s: &str) -> Option<LogFormat> {
        LogFormat::from_str(s, true).ok()
    }
}

/// Installs the logger: `OUTBOXER_LOG` (or the default filter) over the quiet
/// driver levels; `OUTBOXER_LOG_STYLE` for colours of the text format.
pub fn init(format: LogFormat) {
    let user = std::env::var("OUTBOXER_LOG").ok();
    let mut b = env_logger::Builder::new();
    for d in QUIET_DRIVERS {
        b.filter_module(d, log::LevelFilter::Warn);
    }
    // The relay's tracing spans (feature `tracing`) are for tracing subscribers:
    // written as log records they would be a line per claim and per batch.
    b.filter_module("outboxer::spans", log::LevelFilter::Off);
    // Later directives win for the same module, so a driver the user names is theirs.
    b.parse_filters(user.as_deref().unwrap_or(DEFAULT_FILTER));
    if let Ok(style) = std::env::var("OUTBOXER_LOG_STYLE") {
        b.parse_write_style(&style);
    }
    b.format(move |buf, record| {
        let line = match format {
            LogFormat::Text => text_line(record, SystemTime::now()),
            LogFormat::Json => json_line(record, SystemTime::now()),
        };
        buf.write_all(line.as_bytes())
    });
    b.init();
}

/// Collects a record's key-values in order.
struct Pairs(Vec<(String, Json)>);

impl<'kvs> VisitSource<'kvs> for Pairs {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), log::kv::Error> {
        let v = if let Some(b) = value.to_bool() {
            Json::Bool(b)
        } else if let Some(n) = value.to_u64() {
            Json::from(n)
        } else if let Some(n) = value.to_i64() {
            Json::from(n)
        } else if let Some(f) = value.to_f64().and_then(serde_json::Number::from_f64) {
            Json::Number(f)
        } else {
            Json::String(value.to_string())
        };
        self.0.push((key.as_str().to_string(), v));
        Ok(())
    }
}

fn pairs(record: &log::Record<'_>) -> Vec<(String, Json)> {
    let mut p = Pairs(Vec::new());
    let _ = record.key_values().visit(&mut p);
    p.0
}

/// The fields every JSON line has; a key-value of the same name is written as
/// `kv.<name>` instead.
pub const JSON_FIELDS: [&str; 4] = ["ts", "level", "target", "msg"];

pub fn json_line(record: &log::Record<'_>, now: SystemTime) -> String {
    // Written field by field so that the fixed fields come first, in this order.
    let q = |s: &str| Json::String(s.to_string()).to_string();
    let mut s = format!(
        "{{\"ts\":{},\"level\":{},\"target\":{},\"msg\":{}",
        q(&parse::rfc3339_millis(now)),
        q(record.level().as_str()),
        q(record.target()),
        q(&record.args().to_string())
    );
    let mut seen: Vec<String> = Vec::new();
    for (k, v) in pairs(record) {
        let k = if JSON_FIELDS.contains(&k.as_str()) || seen.contains(&k) {
            format!("kv.{k}")
        } else {
            k
        };
        s.push_str(&format!(",{}:{v}", q(&k)));
        seen.push(k);
    }
    s.push_str("}\n");
    s
}

pub fn text_line(record: &log::Record<'_>, now: SystemTime) -> String {
    let target = record.target();
    // The library's lines say `outboxer:` themselves; other crates are named.
    let from = if target == "outboxer" || target.starts_with("outboxer::") {
        String::new()
    } else {
        format!("[{target}] ")
    };
    let mut s = format!(
        "{} {:<5} {from}{}",
        parse::rfc3339_millis(now),
        record.level(),
        record.args()
    );
    for (k, v) in pairs(record) {
        match v {
            Json::String(t) if !t.is_empty() && !t.contains([' ', '"', '=']) => {
                s.push_str(&format!(" {k}={t}"))
            }
            other => s.push_str(&format!(" {k}={other}")),
        }
    }
    // One record, one line: a multi-line error cannot forge a log line.
    let mut s = s.replace(['\n', '\r'], " ");
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn json_lines_have_the_fixed_fields_and_the_key_values() {
        let kvs: [(&str, Value<'_>); 3] = [
            ("message_id", Value::from("0190-x")),
            ("row", Value::from(42u64)),
            ("msg", Value::from("clash")),
        ];
        let args = format_args!("published \"one\"\nnext");
        let record = log::Record::builder()
            .args(args)
            .level(log::Level::Warn)
            .target("outboxer::blocking::relay")
            .key_values(&kvs)
            .build();
        let now = UNIX_EPOCH + Duration::from_millis(1_795_163_400_250);
        let line = json_line(&record, now);
        assert!(
            line.ends_with('\n') && line.matches('\n').count() == 1,
            "{line}"
        );
        let v: Json = serde_json::from_str(&line).expect("json");
        assert_eq!(v["ts"], "2026-11-20T08:30:00.250Z");
        assert_eq!(v["level"], "WARN");
        assert_eq!(v["target"], "outboxer::blocking::relay");
        assert_eq!(v["msg"], "published \"one\"\nnext");
        assert_eq!(v["message_id"], "0190-x");
        assert_eq!(v["row"], 42);
        assert_eq!(v["kv.msg"], "clash");
        assert!(
            line.starts_with(r#"{"ts":"2026-11-20T08:30:00.250Z","level":"WARN","target":"#),
            "{line}"
        );
        let text = text_line(&record, now);
        assert_eq!(
            text,
            "2026-11-20T08:30:00.250Z WARN  published \"one\" next message_id=0190-x row=42 msg=clash\n"
        );
    }
}
