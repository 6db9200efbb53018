//! I/O-free logic shared by the blocking and async APIs: SQL text,
//! row mapping, retry policy, relay settings, option parsing, redaction.
//!
//! Private: what users need is re-exported at one public path (routes and wire
//! formats in `stream::<broker>`, `OnPark` and the redaction functions at the
//! root); outboxer's own tests reach the rest through the hidden,
//! semver-exempt `__private` module.

pub mod amqp;
pub mod aws;
pub mod config;
pub mod http_tls;
pub mod ident;
pub mod kafka;
pub mod kinesis;
#[cfg(feature = "mysql")]
pub mod mysql_url;
mod options;
pub mod percent;
#[cfg(feature = "postgres")]
pub mod pg_tls;
pub mod pubsub;
pub mod redact;
pub mod retry;
pub mod rows;
pub mod sql;
pub mod sqs;
pub mod tls;
#[cfg(feature = "postgres")]
pub mod tls_rustls;
pub mod waves;
