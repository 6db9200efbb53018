//! The blocking `Outbox`: enqueue in the caller's transaction, start the relay.

use super::relay::{self, Relay};
use super::store::{Requeue, Stats, Store, TxStore};
use super::stream::{Stream, Validate};
use crate::core::config::{ClaimMode, OnPark, RelayConfig};
use crate::core::retry::Backoff;
use crate::message::{Message, MessageId};
use crate::{Error, Result};
use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::Duration;

/// The transactional outbox: a store for messages and, once started, a relay
/// that publishes them to a stream.
///
/// Cheap to clone; clones share the store and the relay's wake-up.
///
/// ```no_run
/// # fn main() -> Result<(), outboxer::Error> {
/// use outboxer::{Message, Outbox};
/// use outboxer::store::PostgresStore;
/// use outboxer::stream::{amqp, AmqpStream};
///
/// let store = PostgresStore::connect("postgres://postgres@127.0.0.1/test")?;
/// store.migrate()?;
/// let outbox = Outbox::builder()
///     .store(store)
///     .stream(AmqpStream::connect("amqp://guest:guest@127.0.0.1:5672/%2f")?)
///     .build()?;
/// let relay = outbox.start()?;
/// outbox.send(Message::new(b"hi".to_vec()).route(amqp::topic("test", "test.send")))?;
/// relay.stop()?;
/// # Ok(()) }
/// ```
pub struct Outbox<S: Store> {
    pub(crate) shared: Arc<Shared<S>>,
}

impl<S: Store> Clone for Outbox<S> {
    fn clone(&self) -> Self {
        Outbox {
            shared: Arc::clone(&self.shared),
        }
    }
}

pub(crate) struct Shared<S: Store> {
    pub(crate) store: S,
    pub(crate) config: RelayConfig,
    validator: Option<Arc<dyn Validate>>,
    /// The stream lives here while no relay runs; the relay gives it back when it stops.
    pub(crate) stream: Mutex<Option<Box<dyn Stream>>>,
    has_stream: bool,
    pub(crate) wake_tx: Sender<()>,
    pub(crate) wake_rx: Receiver<()>,
}

/// Settings of an [`Outbox`]. Every value is checked by [`OutboxBuilder::build`].
pub struct OutboxBuilder<S: Store> {
    store: Option<S>,
    stream: Option<Box<dyn Stream>>,
    config: RelayConfig,
    backoff: (Duration, Duration),
}

impl<S: Store> Outbox<S> {
    /// Starts the settings; `store` is required, `stream` is needed to `start()` a relay.
    pub fn builder() -> OutboxBuilder<S> {
        let d = RelayConfig::default();
        OutboxBuilder {
            store: None,
            stream: None,
            backoff: (d.backoff.base(), d.backoff.max()),
            config: d,
        }
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.shared.store
    }

    /// Creates or upgrades the outbox table (see [`Store::migrate`]).
    pub fn migrate(&self) -> Result<()> {
        self.shared.store.migrate()
    }

    pub(crate) fn validate(&self, m: &Message) -> Result<()> {
        crate::message::check_trace_headers(&m.headers)?;
        m.delay_from(std::time::SystemTime::now())?;
        match &self.shared.validator {
            Some(v) => v.validate(&m.payload, &m.headers, &m.options),
            None => Ok(()),
        }
    }

    pub(crate) fn wake(&self) {
        // A full channel already holds a wake-up: nothing is lost.
        let _ = self.shared.wake_tx.try_send(());
    }

    /// Enqueues one message in its own transaction and wakes the local relay.
    pub fn send(&self, message: Message) -> Result<MessageId> {
        self.validate(&message)?;
        let id = message.message_id;
        self.shared.store.enqueue(std::slice::from_ref(&message))?;
        self.wake();
        Ok(id)
    }

    /// Enqueues several messages in one transaction (all or none).
    pub fn send_batch(&self, messages: &[Message]) -> Result<Vec<MessageId>> {
        for m in messages {
            self.validate(m)?;
        }
        self.shared.store.enqueue(messages)?;
        self.wake();
        Ok(messages.iter().map(|m| m.message_id).collect())
    }

    /// Starts the relay threads (claim, publish, mark, cleanup, wake-up listener).
    /// The returned handle's `stop()` (or drop) stops them.
    pub fn start(&self) -> Result<Relay> {
        if !self.shared.has_stream {
            return Err(Error::config(
                "stream",
                "no stream was given to the builder",
            ));
        }
        let mut stream = self
            .shared
            .stream
            .lock()
            .take()
            .ok_or(Error::AlreadyStarted)?;
        if let Err(e) = stream.connect() {
            if matches!(
                e,
                Error::Tls { .. } | Error::Config { .. } | Error::InvalidUrl { .. }
            ) {
                // Not started: the stream goes back, so a later start can try again.
                *self.shared.stream.lock() = Some(stream);
                return Err(e);
            }
            log::warn!("outboxer: the relay starts while its broker is unavailable: {e}");
        }
        relay::start(Arc::clone(&self.shared), stream)
    }

    /// Moves parked messages back to pending with a fresh attempt budget.
    pub fn requeue(&self, which: &Requeue) -> Result<u64> {
        let n = self.shared.store.requeue(which)?;
        if n > 0 {
            self.wake();
        }
        Ok(n)
    }

    /// Gives parked key heads up (see [`Store::skip`]): they stay parked, and
    /// their keys' later messages flow. Returns how many moved.
    pub fn skip(&self, ids: &[i64]) -> Result<u64> {
        let n = self.shared.store.skip(ids)?;
        if n > 0 {
            self.wake();
        }
        Ok(n)
    }

    /// Counts by status and the age of the oldest pending message.
    pub fn stats(&self) -> Result<Stats> {
        self.shared.store.stats()
    }
}

/// Joining the caller's transaction: needs a store that names its transaction
/// type ([`TxStore`]).
impl<S: TxStore> Outbox<S> {
    /// Enqueues inside the caller's transaction: the message is published only if
    /// that transaction commits. Relays are woken by the store's notification
    /// (PostgreSQL NOTIFY, delivered at commit) or by polling.
    pub fn send_within_tx(&self, tx: &mut S::Tx<'_>, message: Message) -> Result<MessageId> {
        self.validate(&message)?;
        let id = message.message_id;
        self.shared
            .store
            .enqueue_in_tx(tx, std::slice::from_ref(&message))?;
        Ok(id)
    }

    /// Begins a transaction, runs `f` with it, commits if `f` returns `Ok` and rolls
    /// back otherwise: business rows and messages commit together or not at all.
    ///
    /// ```no_run
    /// # fn demo(outbox: outboxer::Outbox<outboxer::store::PostgresStore>) -> Result<(), outboxer::Error> {
    /// use outboxer::Message;
    /// outbox.transaction(|tx| {
    ///     tx.execute("UPDATE orders SET state = 'paid' WHERE id = $1", &[&42i64])?;
    ///     tx.send(Message::new(br#"{"order":42}"#.to_vec()))?;
    ///     Ok::<_, outboxer::Error>(())
    /// })?;
    /// # Ok(()) }
    /// ```
    pub fn transaction<R, E, F>(&self, f: F) -> std::result::Result<R, E>
    where
        F: for<'a, 't> FnOnce(&mut OutboxTx<'a, 't, S>) -> std::result::Result<R, E>,
        E: From<Error>,
    {
        let mut sent = false;
        let r = self.shared.store.with_transaction(|tx| {
            let mut otx = OutboxTx {
                tx,
                outbox: self,
                sent: &mut sent,
            };
            f(&mut otx)
        })?;
        if sent {
            self.wake();
        }
        Ok(r)
    }
}

/// The caller's transaction inside [`Outbox::transaction`]: derefs to the store's
/// transaction type (e.g. `postgres::Transaction`) and adds [`OutboxTx::send`].
pub struct OutboxTx<'a, 't, S: TxStore> {
    tx: &'a mut S::Tx<'t>,
    outbox: &'a Outbox<S>,
    sent: &'a mut bool,
}

impl<'t, S: TxStore> OutboxTx<'_, 't, S> {
    /// Enqueues a message in this transaction.
    pub fn send(&mut self, message: Message) -> Result<MessageId> {
        let id = self.outbox.send_within_tx(self.tx, message)?;
        *self.sent = true;
        Ok(id)
    }
}

impl<'t, S: TxStore> Deref for OutboxTx<'_, 't, S> {
    type Target = S::Tx<'t>;
    fn deref(&self) -> &Self::Target {
        self.tx
    }
}

impl<'t, S: TxStore> DerefMut for OutboxTx<'_, 't, S> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.tx
    }
}

impl<S: Store> OutboxBuilder<S> {
    /// The store holding the outbox table (required).
    pub fn store(mut self, store: S) -> Self {
        self.store = Some(store);
        self
    }
    /// The broker the relay publishes to (required for `start()`).
    pub fn stream(mut self, stream: impl Stream) -> Self {
        self.stream = Some(Box::new(stream));
        self
    }
    /// Polling fallback when no wake-up arrives (default 1 s; 1 ms..=1 day).
    pub fn check_interval(mut self, d: Duration) -> Self {
        self.config.check_interval = d;
        self
    }
    /// Most messages claimed and published at once (default 500; 1..=10000).
    pub fn batch_size(mut self, n: usize) -> Self {
        self.config.batch_size = n;
        self
    }
    /// How long a claim is owned before another relay may take it over (default 30 s).
    pub fn lease(mut self, d: Duration) -> Self {
        self.config.lease = d;
        self
    }
    /// Failed attempts before a message is parked (default 10).
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.config.max_attempts = n;
        self
    }
    /// Retry delays: `base` doubling up to `max`, with jitter (default 500 ms .. 5 min).
    pub fn backoff(mut self, base: Duration, max: Duration) -> Self {
        self.backoff = (base, max);
        self
    }
    /// How often old dispatched rows are deleted (default 60 s).
    pub fn cleanup_interval(mut self, d: Duration) -> Self {
        self.config.cleanup_interval = Some(d);
        self
    }
    /// Never delete dispatched rows.
    pub fn no_cleanup(mut self) -> Self {
        self.config.cleanup_interval = None;
        self
    }
    /// How a claim owns its rows while they are published (default
    /// [`ClaimMode::RowLocks`] where the store can, else leases).
    pub fn claim_mode(mut self, mode: ClaimMode) -> Self {
        self.config.claim_mode = mode;
        self
    }
    /// How long dispatched rows are kept (default zero: the mark deletes each
    /// row as it is dispatched, the least database work per message). A longer
    /// retention keeps them, `status = 'dispatched'`, for audits and `outboxer
    /// stats`, and the cleanup deletes them once older than this.
    pub fn cleanup_before(mut self, d: Duration) -> Self {
        self.config.cleanup_before = d;
        self
    }
    /// Rows deleted per statement (default 1000).
    pub fn cleanup_batch_size(mut self, n: usize) -> Self {
        self.config.cleanup_batch_size = n;
        self
    }
    /// Capacity of the `ok()`/`err()` channels (default 1024). When a channel is
    /// full, outcomes are dropped and counted; the relay never waits for a reader.
    pub fn channel_capacity(mut self, n: usize) -> Self {
        self.config.channel_capacity = n;
        self
    }
    /// Most payload bytes claimed and held in memory at once (default 16 MiB); a
    /// single larger message is still claimed, alone.
    pub fn max_batch_bytes(mut self, n: usize) -> Self {
        self.config.max_batch_bytes = n;
        self
    }
    /// What a parked message does to the later messages of its ordering key
    /// (default [`OnPark::HoldKey`]: they wait until it is requeued or skipped).
    pub fn on_park(mut self, policy: OnPark) -> Self {
        self.config.on_park = policy;
        self
    }
    /// How often an ongoing outage is reported on `err()` and in the log (default
    /// 30 s; 10 ms..=1 day): once when it starts, then once per interval with counts,
    /// and once in the log when it ends; never once per message.
    pub fn report_interval(mut self, d: Duration) -> Self {
        self.config.report_interval = d;
        self
    }
    /// How often the relay queries the table for its gauges (default 15 s;
    /// 10 ms..=1 day): `outboxer_pending_messages`, `outboxer_oldest_pending_age_seconds`,
    /// `outboxer_parked_messages` and `outboxer_held_keys`, one [`Store::stats`]
    /// query per interval on the relay's own `metrics` thread, never in the way of
    /// a claim. Only with the feature `metrics`.
    ///
    /// With the feature, the relay records the series listed in
    /// docs/operations.md (Metrics) through the [`metrics`](https://docs.rs/metrics)
    /// facade: counters of messages published, failed, parked and released by
    /// `stream` and `route`, claim/publish/mark durations, commit-to-publish lag,
    /// batch sizes, dropped outcomes, starts and panics, every series labelled
    /// `table`. Install a recorder (e.g. `metrics-exporter-prometheus`) before
    /// `start()`; without one each record is a no-op.
    ///
    /// ```no_run
    /// # fn main() -> outboxer::Result<()> {
    /// use outboxer::{store::PostgresStore, Outbox};
    /// use std::time::Duration;
    /// let outbox = Outbox::builder()
    ///     .store(PostgresStore::connect("postgres://postgres@127.0.0.1/test")?)
    ///     .metrics_interval(Duration::from_secs(30))
    ///     .metrics_route_label(false)
    ///     .build()?;
    /// # Ok(()) }
    /// ```
    pub fn metrics_interval(mut self, d: Duration) -> Self {
        self.config.metrics_interval = d;
        self
    }
    /// Whether message counters carry the `route` label: the exchange, topic,
    /// queue or stream name of each message (default true). Turn it off when
    /// routes are many (per tenant, per customer): the label is then absent.
    /// Past 1000 distinct routes a relay counts the rest under `route="other"`.
    /// Only with the feature `metrics`.
    pub fn metrics_route_label(mut self, on: bool) -> Self {
        self.config.metrics_route_label = on;
        self
    }

    /// Checks every setting and builds the outbox.
    pub fn build(self) -> Result<Outbox<S>> {
        let store = self
            .store
            .ok_or_else(|| Error::config("store", "a store is required"))?;
        let mut config = self.config;
        config.backoff = Backoff::new(self.backoff.0, self.backoff.1)?;
        config.validate()?;
        let (wake_tx, wake_rx) = crossbeam_channel::bounded(1);
        Ok(Outbox {
            shared: Arc::new(Shared {
                store,
                config,
                validator: self.stream.as_ref().map(|s| s.validator()),
                has_stream: self.stream.is_some(),
                stream: Mutex::new(self.stream),
                wake_tx,
                wake_rx,
            }),
        })
    }
}
