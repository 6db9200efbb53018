//! The blocking (sync) API: plain threads, no async runtime.

mod outbox;
mod relay;
pub mod store;
pub mod stream;

pub use outbox::{Outbox, OutboxBuilder, OutboxTx};
pub use relay::{Health, OutageStatus, Relay, RelayCounters};
