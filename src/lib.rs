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
//! offers the same API on tokio, in the same build as the blocking one.
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
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod core;
mod error;
mod message;

pub mod blocking;

#[cfg(feature = "async")]
#[cfg_attr(docsrs, doc(cfg(feature = "async")))]
pub mod async_impl;

pub use crate::core::config::OnPark;
pub use blocking::store::{self, Store};
pub use blocking::stream::{self, Stream};
pub use blocking::{Outbox, OutboxBuilder, OutboxTx, Relay, RelayCounters};
pub use error::{BoxError, Error, Result};
pub use message::{
    Delivered, Failure, FailureAction, Headers, Message, MessageId, Options, StoredMessage,
    MESSAGE_ID_HEADER,
};

// The code blocks of README.md and docs/*.md compile (and, unless marked
// `no_run`, run) as doctests: one include per file, gated on the features its
// code needs, so `cargo test --all-features --doc` checks them all. Blocks that
// are not Rust are marked `sh`, `toml`, `sql` or `text`.

/// README.md
#[cfg(all(doctest, feature = "postgres", feature = "amqp", feature = "async"))]
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
#[cfg(all(doctest, feature = "async", feature = "postgres", feature = "amqp"))]
#[doc = include_str!("../docs/async.md")]
pub struct AsyncDoctests;

/// docs/tls.md (rustls and tokio-postgres-rustls are dev-dependencies)
#[cfg(all(doctest, feature = "postgres"))]
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
