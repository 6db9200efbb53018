//! I/O-free logic shared by the blocking and async APIs: SQL text,
//! row mapping, retry policy, relay settings, option parsing, redaction.

pub mod amqp;
pub mod aws;
pub mod config;
pub mod ident;
pub mod kafka;
pub mod kinesis;
mod options;
pub mod pubsub;
pub mod redact;
pub mod retry;
pub mod rows;
pub mod sql;
pub mod sqs;
