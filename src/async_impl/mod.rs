//! The async (tokio) API, behind the `async` cargo feature: the same API as the
//! blocking root, `.await`-able, usable in the same build as the blocking one.
//!
//! Enqueueing goes through the async driver of each store (tokio-postgres for
//! PostgreSQL); the relay is the blocking pipeline of [`crate::Relay`], run on
//! OS threads of its own, so a tokio worker thread never blocks on it; its
//! outcomes are forwarded into bounded async channels ([`Relay::ok`],
//! [`Relay::err`]). Every blocking [`Stream`](crate::Stream) works here unchanged.
//!
//! Every `async fn` here must be awaited inside a tokio runtime (any flavour);
//! outside one they return [`Error::Config`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), outboxer::Error> {
//! use outboxer::async_impl::{store::PostgresStore, Outbox};
//! use outboxer::stream::{amqp, AmqpStream};
//! use outboxer::Message;
//!
//! let store = PostgresStore::connect("postgres://postgres@127.0.0.1/test").await?;
//! store.migrate().await?;
//! let stream = AmqpStream::connect("amqp://guest:guest@127.0.0.1:5672/%2f")?;
//! let outbox = Outbox::builder().store(store).stream(stream).build()?;
//! let relay = outbox.start().await?;
//! outbox.send(Message::new(b"hi".to_vec()).route(amqp::topic("test", "test.send"))).await?;
//! // Bounded: on a broker where no queue is bound to `test`, the mandatory publish
//! // comes back and the outcome is on `err()` instead.
//! let wait = std::time::Duration::from_secs(10);
//! if let Ok(Ok(delivered)) = tokio::time::timeout(wait, relay.ok().recv()).await {
//!     println!("published {}", delivered.message_id);
//! }
//! relay.stop().await?;
//! # Ok(()) }
//! ```

#[cfg(any(
    feature = "postgres",
    feature = "mysql",
    feature = "sqlite",
    feature = "sqlserver"
))]
pub mod inbox;
mod outbox;
mod relay;
pub mod store;

pub use outbox::{Outbox, OutboxBuilder, OutboxTx};
pub use relay::Relay;
// Also here for `use outboxer::async_impl::Store`; documented once, in `store`.
#[doc(no_inline)]
pub use store::Store;

use crate::{Error, Result};

/// Runs blocking work on tokio's blocking pool, never on a worker thread.
pub(crate) async fn unblock<T, F>(context: &'static str, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    runtime()?;
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::db(context, e))?
}

/// The current tokio runtime, or a typed error outside of one.
pub(crate) fn runtime() -> Result<tokio::runtime::Handle> {
    tokio::runtime::Handle::try_current().map_err(|_| {
        Error::config(
            "runtime",
            "outboxer::async_impl must be used inside a tokio runtime",
        )
    })
}

/// The slot of a [`BlockingDrop`]: a value whose drop may block (a blocking relay
/// joining its threads, a `postgres::Client` closing on its private runtime);
/// dropped inside a tokio runtime, the value is dropped on a thread of its own
/// instead.
struct DropSlot<T: Send + 'static>(Option<T>);

impl<T: Send + 'static> DropSlot<T> {
    fn get(&self) -> Option<&T> {
        self.0.as_ref()
    }
}

/// A value whose drop may block, kept until drop and then dropped off the tokio
/// runtime (see [`DropSlot`]); derefs to the value.
pub(crate) struct BlockingDrop<T: Send + 'static>(DropSlot<T>);

impl<T: Send + 'static> BlockingDrop<T> {
    pub(crate) fn new(t: T) -> Self {
        BlockingDrop(DropSlot(Some(t)))
    }
}

impl<T: Send + 'static> std::ops::Deref for BlockingDrop<T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.0.get().expect("taken only by drop")
    }
}

impl<T: Send + 'static> Drop for DropSlot<T> {
    fn drop(&mut self) {
        let Some(t) = self.0.take() else { return };
        if tokio::runtime::Handle::try_current().is_err() {
            return drop(t);
        }
        let spawned = std::thread::Builder::new()
            .name("outboxer-drop".into())
            .spawn(move || drop(t));
        if let Err(e) = spawned {
            log::error!("outboxer: cannot spawn a thread to drop a blocking value: {e}");
        }
    }
}
