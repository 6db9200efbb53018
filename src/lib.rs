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
//!
//! let store = PostgresStore::connect("postgres://postgres@127.0.0.1/test")?;
//! store.migrate()?;
//! let outbox = Outbox::builder()
//!     .store(store)
//!     .stream(AmqpStream::connect("amqp://guest:guest@127.0.0.1:5672/%2f")?)
//!     .build()?;
//! let relay = outbox.start()?;
//! outbox.send(Message::new(b"test payload".to_vec()).route(amqp::topic("test", "test.send")))?;
//! if let Ok(delivered) = relay.ok().recv() {
//!     println!("published {}", delivered.message_id);
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

#[cfg(any(test, feature = "testing"))]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;

pub use crate::core::config::OnPark;
pub use blocking::store::{self, Store};
pub use blocking::stream::{self, Stream};
pub use blocking::{Outbox, OutboxBuilder, OutboxTx, Relay, RelayCounters};
pub use error::{BoxError, Error, Result};
pub use message::{
    Delivered, Failure, FailureAction, Headers, Message, MessageId, Options, StoredMessage,
    MESSAGE_ID_HEADER,
};

/// The README's examples compile as doctests.
#[cfg(all(doctest, feature = "postgres", feature = "amqp", feature = "async"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
