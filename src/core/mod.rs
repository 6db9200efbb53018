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
mod options;
pub mod percent;
pub mod pubsub;
pub mod redact;
pub mod retry;
pub mod rows;
pub mod sql;
pub mod sqs;
pub mod tls;
pub mod waves;
