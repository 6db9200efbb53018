//! Stand-ins for a store and a broker, for testing code that sends through an
//! outbox without servers (feature `testing`).
//!
//! [`MemoryStore`] is an outbox table in memory with the real stores' semantics
//! (leases, per-key order, parked heads holding their keys, backoff, byte-capped
//! claims) and database faults on demand ([`StoreOp`]); [`ScriptedStream`] is a
//! broker that records what it receives and answers as scripted
//! ([`PublishFault`]: an outage, a refusal, a duplicate delivery, a crash between
//! publish and mark). Together they run the real relay:
//!
//! ```
//! use outboxer::testing::{MemoryStore, PublishFault, ScriptedStream};
//! use outboxer::{Message, Outbox};
//! use std::time::Duration;
//!
//! # fn main() -> outboxer::Result<()> {
//! let (store, stream) = (MemoryStore::new(), ScriptedStream::new());
//! let outbox = Outbox::builder()
//!     .store(store.clone())
//!     .stream(stream.clone())
//!     .check_interval(Duration::from_millis(10))
//!     .build()?;
//! // The code under test sends inside its own transaction.
//! let mut tx = store.begin();
//! outbox.send_within_tx(&mut tx, Message::new(b"order 42 paid".to_vec()))?;
//! tx.commit()?;
//!
//! // A consumer must absorb redeliveries: deliver this one twice.
//! stream.fail_next(PublishFault::Duplicate);
//! let relay = outbox.start()?;
//! let got = stream.wait_for(2, Duration::from_secs(5));
//! assert_eq!(got.len(), 2);
//! assert_eq!(got[0].message_id, got[1].message_id, "same id: de-duplicate by it");
//! relay.stop()?;
//! # Ok(()) }
//! ```

mod memory_store;
mod scripted_stream;

pub use memory_store::{MemoryStore, MemoryTx, Row, RowStatus, StoreOp};
pub use scripted_stream::{PublishFault, ScriptedStream};

#[cfg(test)]
mod relay_tests;
