//! URL-scheme dispatch: which store and which stream a URL names.

use crate::fail::Fail;
use outboxer::store::{MysqlStore, PostgresStore, SqliteStore};
use outboxer::{redact_connection_string, redact_url};
use outboxer::{Store, Stream};

#[cfg(feature = "sqlserver")]
use outboxer::store::SqlServerStore;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    Postgres,
    Mysql,
    Sqlite,
    SqlServer,
}

/// The store a URL names, from its scheme. ADO.NET strings (`server=...;`) and
/// `jdbc:sqlserver://` are SQL Server.
pub fn store_kind(url: &str) -> Result<StoreKind, Fail> {
    let lower = url.trim_start().to_ascii_lowercase();
    let kind = if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
        StoreKind::Postgres
    } else if lower.starts_with("mysql://") || lower.starts_with("mariadb://") {
        StoreKind::Mysql
    } else if lower.starts_with("sqlite:") {
        StoreKind::Sqlite
    } else if lower.starts_with("sqlserver://")
        || lower.starts_with("mssql://")
        || lower.starts_with("jdbc:sqlserver:")
        || lower.starts_with("server=")
        || lower.contains(";server=")
    {
        StoreKind::SqlServer
    } else {
        return Err(Fail::usage(format!(
            "unsupported store `{}`: use postgres://, mysql://, mariadb://, sqlite:PATH \
             or a SQL Server connection string",
            display_url(url)
        )));
    };
    Ok(kind)
}

/// A store URL or connection string safe to print: passwords replaced by `***`.
/// SQLite paths are shown as they are (a path holds no password).
pub fn display_url(url: &str) -> String {
    if url.trim_start().to_ascii_lowercase().starts_with("sqlite:") {
        url.to_string()
    } else {
        redact_connection_string(url)
    }
}

/// Opens the store at `url` on `table` (default `event_store`). Does not migrate.
pub fn open_store(url: &str, table: Option<&str>) -> Result<Box<dyn Store>, Fail> {
    let table = table.unwrap_or("event_store");
    Ok(match store_kind(url)? {
        StoreKind::Postgres => Box::new(PostgresStore::builder(url).table(table).build()?),
        StoreKind::Mysql => {
            // The driver knows mysql:// only; MariaDB speaks the same protocol.
            let url = match url.get(..10) {
                Some(p) if p.eq_ignore_ascii_case("mariadb://") => {
                    format!("mysql://{}", &url[10..])
                }
                _ => url.to_string(),
            };
            Box::new(MysqlStore::builder(&url).table(table).build()?)
        }
        StoreKind::Sqlite => Box::new(SqliteStore::builder(url).table(table).build()?),
        #[cfg(feature = "sqlserver")]
        StoreKind::SqlServer => Box::new(SqlServerStore::builder(url).table(table).build()?),
        #[cfg(not(feature = "sqlserver"))]
        StoreKind::SqlServer => {
            return Err(not_compiled("sqlserver", "store"));
        }
    })
}

#[cfg_attr(
    all(
        feature = "sqlserver",
        feature = "kafka",
        feature = "sqs",
        feature = "kinesis",
        feature = "pubsub"
    ),
    allow(dead_code)
)] // with every feature on, nothing is missing
fn not_compiled(feature: &str, what: &str) -> Fail {
    Fail::usage(format!(
        "{what} `{feature}` is not compiled in: build with --features cli,{feature}"
    ))
}

/// The stream scheme of a URL, lower-cased.
fn scheme(url: &str) -> String {
    url.split_once("://")
        .map(|(s, _)| s.trim().to_ascii_lowercase())
        .unwrap_or_default()
}

/// Connects the stream a URL names.
pub fn open_stream(url: &str) -> Result<Box<dyn Stream>, Fail> {
    let stream: Box<dyn Stream> = match scheme(url).as_str() {
        "amqp" | "amqps" => Box::new(outboxer::stream::AmqpStream::connect(url)?),

        #[cfg(feature = "kafka")]
        "kafka" => Box::new(outboxer::stream::KafkaStream::connect(url)?),
        #[cfg(not(feature = "kafka"))]
        "kafka" => return Err(not_compiled("kafka", "stream")),

        // The cloud streams, each behind its own feature.
        #[cfg(feature = "sqs")]
        "sqs" => Box::new(outboxer::stream::SqsStream::connect(url)?),
        #[cfg(not(feature = "sqs"))]
        "sqs" => return Err(not_compiled("sqs", "stream")),

        #[cfg(feature = "kinesis")]
        "kinesis" => Box::new(outboxer::stream::KinesisStream::connect(url)?),
        #[cfg(not(feature = "kinesis"))]
        "kinesis" => return Err(not_compiled("kinesis", "stream")),

        #[cfg(feature = "pubsub")]
        "pubsub" => Box::new(outboxer::stream::PubSubStream::connect(url)?),
        #[cfg(not(feature = "pubsub"))]
        "pubsub" => return Err(not_compiled("pubsub", "stream")),

        _ => {
            return Err(Fail::usage(format!(
                "unsupported stream `{}`: use amqp://, kafka://, sqs://, kinesis:// or pubsub://",
                redact_url(url)
            )))
        }
    };
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_schemes() {
        assert_eq!(
            store_kind("postgres://h/db").ok(),
            Some(StoreKind::Postgres)
        );
        assert_eq!(
            store_kind("PostgreSQL://h/db").ok(),
            Some(StoreKind::Postgres)
        );
        assert_eq!(
            store_kind("mariadb://root@h/test").ok(),
            Some(StoreKind::Mysql)
        );
        assert_eq!(
            store_kind("sqlite:outboxer.db").ok(),
            Some(StoreKind::Sqlite)
        );
        assert_eq!(
            store_kind("server=tcp:h,1433;user=sa;password=x").ok(),
            Some(StoreKind::SqlServer)
        );
        let e = store_kind("redis://u:s3cret@h")
            .err()
            .map(|f| (f.code, f.message));
        let (code, msg) = e.unwrap_or_default();
        assert_eq!(code, crate::fail::USAGE);
        assert!(
            msg.contains("unsupported store") && !msg.contains("s3cret"),
            "{msg}"
        );
    }

    #[test]
    fn cloud_streams_not_compiled_in_say_how_to_get_them() {
        for s in ["sqs", "kinesis", "pubsub"] {
            let url = format!("{s}://KEY:s3cret@eu-west-1");
            if let Err(f) = open_stream(&url) {
                if !cfg!(feature = "sqs") && s == "sqs" {
                    assert_eq!(
                        f.message,
                        "stream `sqs` is not compiled in: build with --features cli,sqs"
                    );
                }
                assert!(!f.message.contains("s3cret"), "{}", f.message);
            }
        }
    }

    #[test]
    fn secrets_are_not_displayed() {
        assert!(!display_url("postgres://u:s3cret@h/db").contains("s3cret"));
        assert!(!display_url("server=tcp:h,1433;password=s3cret").contains("s3cret"));
        assert_eq!(display_url("sqlite:/tmp/x.db"), "sqlite:/tmp/x.db");
    }
}
