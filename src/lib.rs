//! # outboxer
//!
//! The transactional outbox pattern for Rust: write business rows and outgoing
//! messages in ONE database transaction; a relay publishes committed messages to
//! a broker, at least once, with per-message broker confirms. Nothing committed is
//! lost, nothing rolled back is published.
//!
//! The root re-exports the blocking API (threads, no runtime). Stores and streams
//! sit behind cargo features: `postgres`, `mysql`, `sqlite`, `sqlserver`, `amqp`,
//! `kafka`, `sqs`, `kinesis`, `pubsub`. With the `async` feature, [`async_impl`]
//! offers the same API on tokio, in the same build as the blocking one. With the
//! `metrics` feature the relay records its series through the `metrics` facade
//! (docs/operations.md, Metrics); [`Relay::health`] serves liveness and
//! readiness probes. On the consuming side, `inbox` (with a store's feature)
//! records processed message ids in the consumer's own transaction, so that a
//! redelivered message's effects are applied once (docs/inbox.md).
//!
//! ```no_run
//! # fn main() -> Result<(), outboxer::Error> {
//! use outboxer::{Message, Outbox};
//! use outboxer::store::PostgresStore;
//! use outboxer::stream::{amqp, AmqpStream};
//! use std::time::Duration;
//!
//! let store = PostgresStore::connect("postgres://postgres@127.0.0.1/test")?;
//! store.migrate()?;
//! let outbox = Outbox::builder()
//!     .store(store)
//!     .stream(AmqpStream::connect("amqp://guest:guest@127.0.0.1:5672/%2f")?)
//!     .build()?;
//! let relay = outbox.start()?;
//! outbox.send(Message::new(b"test payload".to_vec()).route(amqp::topic("test", "test.send")))?;
//! // Publishes are `mandatory`: with no queue bound to `test` the message comes back
//! // as a failure on `relay.err()` (the README's quick start binds one). Never wait
//! // forever on an outcome.
//! match relay.ok().recv_timeout(Duration::from_secs(10)) {
//!     Ok(delivered) => println!("published {}", delivered.message_id),
//!     Err(_) => eprintln!("not published within 10 s: {:?}", relay.err().try_recv()),
//! }
//! relay.stop()?;
//! # Ok(()) }
//! ```
//!
//! # Design notes: one name per thing
//!
//! Each database, broker and concept has one spelling across cargo features,
//! modules, files, types and builder settings:
//!
//! - Databases: `postgres` (PostgreSQL), `mysql` (MySQL and MariaDB), `sqlite`,
//!   `sqlserver` (SQL Server); in types `Postgres`, `Mysql`, `Sqlite`, `SqlServer`
//!   (`PostgresStore`, `SqlServerSql`). Never `pg` or `mssql` (`mssql://` stays
//!   accepted as a URL scheme); `Tds` names only the SQL Server driver's (tiberius)
//!   wire-level types.
//! - Brokers: `amqp`, `kafka`, `sqs`, `kinesis`, `pubsub`; in types `Amqp`,
//!   `Kafka`, `Sqs`, `Kinesis`, `PubSub`. Each has one module,
//!   [`stream::amqp`] etc., holding its stream, builder, routes and validator.
//! - Seams: a *store* holds the table ([`store::Store`], and [`store::TxStore`]
//!   to join the caller's transaction); a *stream* publishes ([`stream::Stream`]).
//! - Verbs: the outbox *sends* (`send`, `send_batch`, `send_within_tx`); a store
//!   *enqueues* (`enqueue`, `enqueue_in_tx`), *claims* under a *lease*, *marks*
//!   (`mark_dispatched`, `mark_failed`), *releases*, *parks*; operators
//!   *requeue*, *skip* and *purge*; `cleanup` deletes dispatched rows.
//! - Source layout: `src/core/` is the I/O-free half (SQL text in
//!   `core/sql/<database>.rs`); `src/enqueue/<database>.rs` is the enqueue path
//!   written once and compiled for both APIs with maybe-async.
//! - Store settings: `table`; `max_idle` (connections kept open between uses),
//!   `max_connections` (most open at once), `pool_timeout` (wait for one of them);
//!   `connect_timeout`, `command_timeout` (SQL Server) and `busy_timeout` (SQLite's
//!   lock wait) are different waits and keep their own names.
//! - Stream settings: `request_timeout` and `request_attempts` (one HTTP request of
//!   SQS, Kinesis and Pub/Sub: its time limit and tries, the first included);
//!   `confirm_timeout` (AMQP publisher confirms) and `delivery_timeout` (Kafka
//!   delivery reports, librdkafka's `message.timeout.ms`) name each broker's own
//!   mechanism; `max_message_size` everywhere.
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod blocking;
// The I/O-free half of every store and stream, compiled whatever the features
// (route builders and validators need it): with a driver's feature off, what
// only that driver uses is unused. With every feature on, the lint applies.
#[cfg_attr(
    not(all(
        feature = "postgres",
        feature = "mysql",
        feature = "sqlite",
        feature = "sqlserver",
        feature = "amqp",
        feature = "kafka",
        feature = "sqs",
        feature = "kinesis",
        feature = "pubsub"
    )),
    allow(dead_code)
)]
mod core;
pub mod decode;
mod error;
#[cfg(any(
    feature = "postgres",
    feature = "mysql",
    feature = "sqlite",
    feature = "sqlserver"
))]
#[cfg_attr(
    docsrs,
    doc(cfg(any(
        feature = "postgres",
        feature = "mysql",
        feature = "sqlite",
        feature = "sqlserver"
    )))
)]
pub mod inbox;
mod message;
pub mod tls;

#[cfg(feature = "async")]
#[cfg_attr(docsrs, doc(cfg(feature = "async")))]
pub mod async_impl;

#[cfg(any(test, feature = "testing"))]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;

pub use crate::core::config::{ClaimMode, OnPark};
pub use crate::core::redact::{redact_connection_string, redact_url};
pub use blocking::store;
pub use blocking::stream;
pub use blocking::{Health, OutageStatus, Outbox, OutboxBuilder, OutboxTx, Relay, RelayCounters};
pub use error::{BoxError, Error, Result};
pub use message::{
    Delivered, Failure, FailureAction, Headers, Message, MessageId, Options, StoredMessage,
    TraceContext, CONTENT_TYPE_HEADER, JSON_CONTENT_TYPE, MAX_DELAY, MESSAGE_ID_HEADER,
    TRACEPARENT_HEADER, TRACESTATE_HEADER,
};
// The seams' traits, also at the root for `use outboxer::{Store, Stream}`;
// documented once, in their modules.
#[doc(no_inline)]
pub use blocking::store::{Store, TxStore};
#[doc(no_inline)]
pub use blocking::stream::Stream;

/// Internals that outboxer's own integration and property tests check directly
/// (SQL text, identifier parsing, row JSON, backoff, relay settings).
///
/// **Not public API and not covered by semver**: anything here may change or go
/// away in any release. Applications use the documented modules.
#[doc(hidden)]
pub mod __private {
    pub use crate::core::config::RelayConfig;
    pub use crate::core::ident::TableName;
    pub use crate::core::retry::Backoff;
    pub use crate::core::{rows, sql};
}

// The code blocks of README.md and docs/*.md compile (and, unless marked
// `no_run`, run) as doctests: one include per file, gated on the features its
// code needs, so `cargo test --all-features --doc` checks them all. Blocks that
// are not Rust are marked `sh`, `toml`, `sql` or `text`.

/// README.md
#[cfg(all(
    doctest,
    feature = "postgres",
    feature = "amqp",
    feature = "sqlx-postgres"
))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// docs/stores.md
#[cfg(all(
    doctest,
    feature = "postgres",
    feature = "mysql",
    feature = "sqlite",
    feature = "sqlserver"
))]
#[doc = include_str!("../docs/stores.md")]
pub struct StoresDoctests;

/// docs/streams.md
#[cfg(all(
    doctest,
    feature = "amqp",
    feature = "kafka",
    feature = "pubsub",
    feature = "sqs",
    feature = "kinesis"
))]
#[doc = include_str!("../docs/streams.md")]
pub struct StreamsDoctests;

/// docs/async.md
#[cfg(all(doctest, feature = "sqlx-postgres", feature = "amqp"))]
#[doc = include_str!("../docs/async.md")]
pub struct AsyncDoctests;

/// docs/inbox.md
#[cfg(all(doctest, feature = "postgres", feature = "async"))]
#[doc = include_str!("../docs/inbox.md")]
pub struct InboxDoctests;

/// docs/tls.md
#[cfg(all(
    doctest,
    feature = "postgres",
    feature = "mysql",
    feature = "sqlserver",
    feature = "amqp",
    feature = "kafka"
))]
#[doc = include_str!("../docs/tls.md")]
pub struct TlsDoctests;

/// docs/operations.md
#[cfg(all(doctest, feature = "postgres"))]
#[doc = include_str!("../docs/operations.md")]
pub struct OperationsDoctests;

/// docs/cli.md, docs/testing.md, docs/benchmarks.md, docs/security.md and
/// docs/design.md hold no Rust: included so that an unmarked block fails.
#[cfg(doctest)]
#[doc = include_str!("../docs/cli.md")]
#[doc = include_str!("../docs/testing.md")]
#[doc = include_str!("../docs/benchmarks.md")]
#[doc = include_str!("../docs/security.md")]
#[doc = include_str!("../docs/design.md")]
pub struct OtherDocsDoctests;
