//! The async relay handle: the blocking relay's threads do the work; one more
//! thread forwards their outcomes into bounded async channels.

use super::{unblock, BlockingDrop};
use crate::message::{Delivered, Failure};
use crate::{Error, RelayCounters, Result};
use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// A running relay of an async [`Outbox`](super::Outbox). `ok()` and `err()`
/// report outcomes as async receivers; `stop().await` (or drop) finishes the
/// in-flight batch and ends the relay's threads without blocking the runtime.
pub struct Relay {
    ok_rx: async_channel::Receiver<Delivered>,
    err_rx: async_channel::Receiver<Failure>,
    /// Dropped off the runtime: the blocking relay's drop joins its threads.
    relay: BlockingDrop<Arc<crate::Relay>>,
    forwarder: Mutex<Option<JoinHandle<()>>>,
    dropped: Arc<[AtomicU64; 2]>,
}

impl Relay {
    pub(crate) fn forward(relay: crate::Relay, capacity: usize) -> Result<Relay> {
        let (ok_tx, ok_rx) = async_channel::bounded(capacity);
        let (err_tx, err_rx) = async_channel::bounded(capacity);
        let dropped = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
        let (ok_in, err_in) = (relay.ok().clone(), relay.err().clone());
        let counts = Arc::clone(&dropped);
        // Ends when the relay's threads have ended and both channels are drained.
        let forwarder = std::thread::Builder::new()
            .name("outboxer-forward".into())
            .spawn(move || {
                let (mut ok_open, mut err_open) = (true, true);
                while ok_open || err_open {
                    let mut sel = crossbeam_channel::Select::new();
                    let ok_i = ok_open.then(|| sel.recv(&ok_in));
                    let err_i = err_open.then(|| sel.recv(&err_in));
                    let op = sel.select();
                    let i = op.index();
                    if Some(i) == ok_i {
                        match op.recv(&ok_in) {
                            // Full or no reader: drop and count, never wait.
                            Ok(d) => {
                                if ok_tx.try_send(d).is_err() {
                                    counts[0].fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            Err(_) => ok_open = false,
                        }
                    } else if Some(i) == err_i {
                        match op.recv(&err_in) {
                            Ok(f) => {
                                if err_tx.try_send(f).is_err() {
                                    counts[1].fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            Err(_) => err_open = false,
                        }
                    }
                }
            })
            .map_err(|e| Error::ThreadSpawn {
                name: "forward",
                reason: e.to_string(),
            })?;
        Ok(Relay {
            ok_rx,
            err_rx,
            relay: BlockingDrop::new(Arc::new(relay)),
            forwarder: Mutex::new(Some(forwarder)),
            dropped,
        })
    }

    /// Messages published and marked dispatched (like Go's `OkChan`).
    pub fn ok(&self) -> &async_channel::Receiver<Delivered> {
        &self.ok_rx
    }

    /// Failures (like Go's `ErrChan`), with what the relay did about each.
    pub fn err(&self) -> &async_channel::Receiver<Failure> {
        &self.err_rx
    }

    /// Counters since start; the dropped counts include outcomes dropped on the
    /// async channels.
    pub fn counters(&self) -> RelayCounters {
        let mut c = self.relay.counters();
        c.dropped_ok += self.dropped[0].load(Ordering::Relaxed);
        c.dropped_err += self.dropped[1].load(Ordering::Relaxed);
        c
    }

    /// The relay's health for probes (see [`crate::Health`]); it reads shared
    /// state only, so it does not block.
    pub fn health(&self) -> crate::Health {
        self.relay.health()
    }

    /// Stops claiming, finishes the batch being published, records every outcome
    /// and joins the relay's threads, on tokio's blocking pool. Idempotent.
    pub async fn stop(&self) -> Result<()> {
        let relay = Arc::clone(&self.relay);
        let forwarder = self.forwarder.lock().take();
        unblock("stopping the relay", move || {
            let r = relay.stop();
            if let Some(f) = forwarder {
                if f.join().is_err() {
                    return Err(Error::RelayPanicked("forward"));
                }
            }
            r
        })
        .await
    }
}
