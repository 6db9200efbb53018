//! The async `Outbox`: enqueue through the store's async driver, relay on threads.

use super::relay::Relay;
use super::store::Store;
use super::{unblock, BlockingDrop};
use crate::blocking::store::{Requeue, Stats};
use crate::blocking::stream::Stream;
use crate::message::{Message, MessageId};
use crate::{Error, Result};
use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::Duration;

/// The transactional outbox for tokio applications: the same API as the blocking
/// [`crate::Outbox`], `.await`-able.
///
/// Cheap to clone; clones share the store and the relay's wake-up. A blocking
/// [`crate::Outbox`] on the same store and table may run in the same program.
///
/// ```no_run
/// # async fn demo() -> Result<(), outboxer::Error> {
/// use outboxer::async_impl::{store::PostgresStore, Outbox};
/// use outboxer::stream::{amqp, AmqpStream};
/// use outboxer::Message;
///
/// let store = PostgresStore::connect("postgres://postgres@127.0.0.1/test").await?;
/// store.migrate().await?;
/// let outbox = Outbox::builder()
///     .store(store)
///     .stream(AmqpStream::connect("amqp://guest:guest@127.0.0.1:5672/%2f")?)
///     .build()?;
/// let relay = outbox.start().await?;
/// outbox.send(Message::new(b"hi".to_vec()).route(amqp::topic("test", "test.send"))).await?;
/// relay.stop().await?;
/// # Ok(()) }
/// ```
pub struct Outbox<S: Store> {
    store: S,
    inner: Arc<BlockingDrop<crate::Outbox<S::Blocking>>>,
}

impl<S: Store + Clone> Clone for Outbox<S> {
    fn clone(&self) -> Self {
        Outbox {
            store: self.store.clone(),
            inner: Arc::clone(&self.inner),
        }
    }
}

/// Settings of an async [`Outbox`]: the same settings, defaults and checks as
/// [`crate::OutboxBuilder`].
pub struct OutboxBuilder<S: Store> {
    store: Option<S>,
    inner: crate::OutboxBuilder<S::Blocking>,
}

impl<S: Store> Outbox<S> {
    /// Starts the settings; `store` is required, `stream` is needed to `start()` a relay.
    pub fn builder() -> OutboxBuilder<S> {
        OutboxBuilder {
            store: None,
            inner: crate::Outbox::builder(),
        }
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The blocking outbox on the same store, settings and relay wake-up.
    pub fn blocking(&self) -> &crate::Outbox<S::Blocking> {
        &self.inner
    }

    /// Enqueues one message in its own transaction and wakes the local relay.
    pub async fn send(&self, message: Message) -> Result<MessageId> {
        self.inner.validate(&message)?;
        let id = message.message_id;
        self.store.enqueue(std::slice::from_ref(&message)).await?;
        self.inner.wake();
        Ok(id)
    }

    /// Enqueues several messages in one transaction (all or none).
    pub async fn send_batch(&self, messages: &[Message]) -> Result<Vec<MessageId>> {
        for m in messages {
            self.inner.validate(m)?;
        }
        self.store.enqueue(messages).await?;
        self.inner.wake();
        Ok(messages.iter().map(|m| m.message_id).collect())
    }

    /// Enqueues inside the caller's transaction (e.g. a `tokio_postgres::Transaction`):
    /// the message is published only if that transaction commits.
    // The `Send` bound is spelled out (not `async fn`): inferred through a caller's
    // closure, higher-ranked over the transaction's lifetime, rustc cannot prove it.
    #[allow(clippy::manual_async_fn)]
    pub fn send_within_tx<'a, 't>(
        &'a self,
        tx: &'a mut S::Tx<'t>,
        message: Message,
    ) -> impl Future<Output = Result<MessageId>> + Send + use<'a, 't, S> {
        async move {
            self.inner.validate(&message)?;
            let id = message.message_id;
            self.store
                .enqueue_in_tx(tx, std::slice::from_ref(&message))
                .await?;
            Ok(id)
        }
    }

    /// Begins a transaction, runs the async closure `f` with it, commits if `f`
    /// returns `Ok` and rolls back otherwise.
    ///
    /// ```no_run
    /// # async fn demo(outbox: outboxer::async_impl::Outbox<outboxer::async_impl::store::PostgresStore>) -> Result<(), outboxer::Error> {
    /// use outboxer::Message;
    /// outbox
    ///     .transaction(async |tx| {
    ///         // A database error is `Error::Database` (`From<tokio_postgres::Error>`).
    ///         tx.execute("UPDATE orders SET state = 'paid' WHERE id = $1", &[&42i64])
    ///             .await?;
    ///         tx.send(Message::new(br#"{"order":42}"#.to_vec())).await?;
    ///         Ok::<_, outboxer::Error>(())
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn transaction<R, E, F>(&self, f: F) -> std::result::Result<R, E>
    where
        F: AsyncFnOnce(&mut OutboxTx<'_, '_, S>) -> std::result::Result<R, E>,
        E: From<Error>,
    {
        let r = self
            .store
            .with_transaction(async |tx| f(&mut OutboxTx { tx, outbox: self }).await)
            .await?;
        // A hint only: at worst the relay claims once and finds nothing.
        self.inner.wake();
        Ok(r)
    }

    /// Starts the relay: the blocking pipeline on OS threads of its own, its
    /// outcomes forwarded into async channels. `stop().await` stops it.
    pub async fn start(&self) -> Result<Relay> {
        let outbox = Arc::clone(&self.inner);
        let capacity = self.inner.shared.config.channel_capacity;
        let relay = unblock("starting the relay", move || outbox.start()).await?;
        Relay::forward(relay, capacity)
    }

    /// Creates or upgrades the outbox table (see [`crate::Store::migrate`]).
    pub async fn migrate(&self) -> Result<()> {
        let outbox = Arc::clone(&self.inner);
        unblock("migrating the table", move || outbox.migrate()).await
    }

    /// Moves parked messages back to pending with a fresh attempt budget: by id,
    /// all, or those matching a [`crate::store::ParkedFilter`] (age, error text).
    ///
    /// ```no_run
    /// # async fn demo(outbox: outboxer::async_impl::Outbox<outboxer::async_impl::store::PostgresStore>) -> Result<(), outboxer::Error> {
    /// use outboxer::store::{ParkedFilter, Requeue};
    ///
    /// let which = ParkedFilter::new().error_contains("NOT_FOUND - no exchange");
    /// let moved = outbox.requeue(Requeue::Matching(which)).await?;
    /// println!("requeued {moved} parked message(s)");
    /// # Ok(()) }
    /// ```
    pub async fn requeue(&self, which: Requeue) -> Result<u64> {
        let outbox = Arc::clone(&self.inner);
        unblock("requeueing parked messages", move || outbox.requeue(&which)).await
    }

    /// Gives parked key heads up (see [`crate::Store::skip`]): they stay parked,
    /// and their keys' later messages flow. Returns how many moved.
    pub async fn skip(&self, ids: Vec<i64>) -> Result<u64> {
        let outbox = Arc::clone(&self.inner);
        unblock("skipping parked messages", move || outbox.skip(&ids)).await
    }

    /// Counts by status and the age of the oldest pending message.
    pub async fn stats(&self) -> Result<Stats> {
        let outbox = Arc::clone(&self.inner);
        unblock("reading stats", move || outbox.stats()).await
    }
}

/// The transaction inside [`Outbox::transaction`]: derefs to the store's transaction
/// type (e.g. `tokio_postgres::Transaction`) and adds [`OutboxTx::send`].
pub struct OutboxTx<'a, 't, S: Store> {
    tx: &'a mut S::Tx<'t>,
    outbox: &'a Outbox<S>,
}

impl<'t, S: Store> OutboxTx<'_, 't, S> {
    /// The store's transaction, mutably.
    pub fn tx(&mut self) -> &mut S::Tx<'t> {
        self.tx
    }

    /// Enqueues a message in this transaction.
    pub fn send(
        &mut self,
        message: Message,
    ) -> impl Future<Output = Result<MessageId>> + Send + use<'_, 't, S> {
        self.outbox.send_within_tx(self.tx, message)
    }
}

/// `tx.execute(..)` reaches the store's transaction (tokio-postgres takes `&self`);
/// [`OutboxTx::tx`] gives `&mut` access for drivers that need it.
impl<'t, S: Store> Deref for OutboxTx<'_, 't, S> {
    type Target = S::Tx<'t>;
    fn deref(&self) -> &S::Tx<'t> {
        self.tx
    }
}

/// `&mut **tx` reaches drivers whose statements take the transaction mutably
/// (a `sqlx::Transaction` is executed as `&mut ***tx`, its connection).
impl<S: Store> DerefMut for OutboxTx<'_, '_, S> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.tx
    }
}

/// Forwards a setter to the blocking builder, which checks the values at `build()`.
macro_rules! forward {
    ($($(#[$doc:meta])* $name:ident($($arg:ident: $ty:ty),*);)*) => {$(
        $(#[$doc])*
        pub fn $name(mut self $(, $arg: $ty)*) -> Self {
            self.inner = self.inner.$name($($arg),*);
            self
        }
    )*};
}

impl<S: Store> OutboxBuilder<S> {
    /// The store holding the outbox table (required).
    pub fn store(mut self, store: S) -> Self {
        self.inner = self.inner.store(store.blocking().clone());
        self.store = Some(store);
        self
    }

    /// The broker the relay publishes to (required for `start()`): any blocking
    /// [`Stream`]; the relay calls it on a thread of its own.
    pub fn stream(mut self, stream: impl Stream) -> Self {
        self.inner = self.inner.stream(stream);
        self
    }

    forward! {
        /// Polling fallback when no wake-up arrives (default 1 s; 1 ms..=1 day).
        check_interval(d: Duration);
        /// Most messages claimed and published at once (default 500; 1..=10000).
        batch_size(n: usize);
        /// How long a claim is owned before another relay may take it over (default 30 s).
        lease(d: Duration);
        /// Failed attempts before a message is parked (default 10).
        max_attempts(n: u32);
        /// Retry delays: `base` doubling up to `max`, with jitter (default 500 ms .. 5 min).
        backoff(base: Duration, max: Duration);
        /// How often old dispatched rows are deleted (default 60 s).
        cleanup_interval(d: Duration);
        /// Never delete dispatched rows.
        no_cleanup();
        /// How a claim owns its rows while they are published (default
        /// [`ClaimMode::RowLocks`](crate::ClaimMode::RowLocks) where the store can).
        claim_mode(mode: crate::ClaimMode);
        /// How long dispatched rows are kept (default zero: the mark deletes
        /// them; longer: kept, then deleted by the cleanup).
        cleanup_before(d: Duration);
        /// Rows deleted per statement (default 1000).
        cleanup_batch_size(n: usize);
        /// Capacity of the `ok()`/`err()` channels (default 1024). When a channel is
        /// full, outcomes are dropped and counted; the relay never waits for a reader.
        channel_capacity(n: usize);
        /// Most payload bytes claimed and held in memory at once (default 16 MiB); a
        /// single larger message is still claimed, alone.
        max_batch_bytes(n: usize);
        /// What a parked message does to the later messages of its ordering key
        /// (default [`OnPark::HoldKey`](crate::OnPark::HoldKey)).
        on_park(policy: crate::OnPark);
        /// How often an ongoing outage is reported on `err()` and in the log (default
        /// 30 s): once when it starts, then once per interval, never once per message.
        report_interval(d: Duration);
    }

    /// Checks every setting and builds the outbox.
    pub fn build(self) -> Result<Outbox<S>> {
        let store = self
            .store
            .ok_or_else(|| Error::config("store", "a store is required"))?;
        let inner = self.inner.build()?;
        Ok(Outbox {
            store,
            inner: Arc::new(BlockingDrop::new(inner)),
        })
    }
}
