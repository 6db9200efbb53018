//! A broker in memory whose answers a test scripts.

use crate::blocking::stream::{Deadline, Stream, Validate};
use crate::message::{Headers, Options, StoredMessage};
use crate::{Error, Result};
use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the scripted broker does with a message instead of accepting it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PublishFault {
    /// The broker is down: a transient [`Error::Unavailable`] (released, never
    /// counted as an attempt).
    Unavailable,
    /// No answer in time: a transient [`Error::Timeout`].
    Timeout,
    /// Credentials refused: a transient [`Error::Unauthorized`].
    Unauthorized,
    /// The broker refuses the message: [`Error::Rejected`] (counts an attempt,
    /// parks after `max_attempts`).
    Rejected,
    /// The message is delivered twice (a redelivery your consumer must absorb);
    /// the outcome is a success.
    Duplicate,
    /// The message is delivered, then the relay crashes (the stream panics) before
    /// it can mark it: a restarted relay publishes it again.
    CrashAfterPublish,
}

type Matcher = Box<dyn Fn(&StoredMessage) -> bool + Send>;

#[derive(Default)]
struct Script {
    /// Faults for the next messages published, one each, in order.
    next: VecDeque<PublishFault>,
    /// Faults for every message that matches, while the rule stands.
    rules: Vec<(Matcher, PublishFault)>,
    publishes: u64,
}

/// A broker in memory: records what it receives and answers as scripted. Cheap
/// to clone: clones share the script and the deliveries, so a test keeps one
/// clone and gives the other to the outbox.
///
/// ```
/// use outboxer::testing::{MemoryStore, PublishFault, ScriptedStream};
/// use outboxer::{FailureAction, Message, Outbox};
/// use std::time::Duration;
///
/// # fn main() -> outboxer::Result<()> {
/// let stream = ScriptedStream::new();
/// stream.fail_next(PublishFault::Rejected);
/// let outbox = Outbox::builder()
///     .store(MemoryStore::new())
///     .stream(stream.clone())
///     .check_interval(Duration::from_millis(10))
///     .backoff(Duration::from_millis(10), Duration::from_millis(10))
///     .build()?;
/// let relay = outbox.start()?;
/// outbox.send(Message::new(b"refused once".to_vec()))?;
/// let failure = relay.err().recv_timeout(Duration::from_secs(5)).expect("reported");
/// assert_eq!(failure.action, FailureAction::Retry);
/// assert_eq!(stream.wait_for(1, Duration::from_secs(5)).len(), 1, "then delivered");
/// relay.stop()?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ScriptedStream {
    script: Arc<Mutex<Script>>,
    tx: Sender<StoredMessage>,
    rx: Receiver<StoredMessage>,
    validator: Arc<dyn Validate>,
}

impl std::fmt::Debug for ScriptedStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScriptedStream")
            .field("publishes", &self.script.lock().publishes)
            .finish_non_exhaustive()
    }
}

impl Default for ScriptedStream {
    fn default() -> Self {
        Self::new()
    }
}

/// Accepts every message at `send`.
struct AcceptAll;

impl Validate for AcceptAll {
    fn validate(&self, _: &[u8], _: &Headers, _: &Options) -> Result<()> {
        Ok(())
    }
}

impl ScriptedStream {
    /// A broker that accepts everything until told otherwise.
    pub fn new() -> Self {
        let (tx, rx) = crossbeam_channel::unbounded();
        ScriptedStream {
            script: Arc::default(),
            tx,
            rx,
            validator: Arc::new(AcceptAll),
        }
    }

    /// Checks messages at `send` with a real stream's rules (e.g.
    /// `AmqpValidator`), so that tests see the same typed errors.
    pub fn with_validator(mut self, v: impl Validate + 'static) -> Self {
        self.validator = Arc::new(v);
        self
    }

    /// The next message published meets `fault` (queued after earlier ones).
    pub fn fail_next(&self, fault: PublishFault) {
        self.script.lock().next.push_back(fault);
    }

    /// Every message for which `matches` is true meets `fault`, until
    /// [`ScriptedStream::clear`] (a route that is down, a poison message, ...).
    pub fn fail_where(
        &self,
        matches: impl Fn(&StoredMessage) -> bool + Send + 'static,
        fault: PublishFault,
    ) {
        self.script.lock().rules.push((Box::new(matches), fault));
    }

    /// Forgets every scripted fault: everything is accepted again.
    pub fn clear(&self) {
        let mut s = self.script.lock();
        s.next.clear();
        s.rules.clear();
    }

    /// How many `publish` calls (batches) the relay made.
    pub fn publishes(&self) -> u64 {
        self.script.lock().publishes
    }

    /// Waits up to `within` for `n` deliveries (more if more arrive meanwhile are
    /// left for the next call); returns what arrived, in delivery order.
    pub fn wait_for(&self, n: usize, within: Duration) -> Vec<StoredMessage> {
        let end = Instant::now() + within;
        let mut got = Vec::new();
        while got.len() < n {
            match self
                .rx
                .recv_timeout(end.saturating_duration_since(Instant::now()))
            {
                Ok(m) => got.push(m),
                Err(_) => break,
            }
        }
        got
    }

    /// Deliveries that arrived and were not taken yet.
    pub fn delivered(&self) -> Vec<StoredMessage> {
        self.rx.try_iter().collect()
    }

    fn fault_for(&self, m: &StoredMessage) -> Option<PublishFault> {
        let mut s = self.script.lock();
        if let Some(f) = s.next.pop_front() {
            return Some(f);
        }
        s.rules.iter().find(|(hit, _)| hit(m)).map(|(_, f)| *f)
    }
}

impl Stream for ScriptedStream {
    fn validator(&self) -> Arc<dyn Validate> {
        Arc::clone(&self.validator)
    }

    fn publish(&mut self, batch: &[StoredMessage], _deadline: &Deadline) -> Vec<Result<()>> {
        self.script.lock().publishes += 1;
        let mut crash = false;
        let out = batch
            .iter()
            .map(|m| match self.fault_for(m) {
                None => {
                    let _ = self.tx.send(m.clone());
                    Ok(())
                }
                Some(PublishFault::Duplicate) => {
                    let _ = self.tx.send(m.clone());
                    let _ = self.tx.send(m.clone());
                    Ok(())
                }
                Some(PublishFault::CrashAfterPublish) => {
                    let _ = self.tx.send(m.clone());
                    crash = true;
                    Ok(())
                }
                Some(PublishFault::Unavailable) => {
                    Err(Error::unavailable("scripted", "broker down (scripted)"))
                }
                Some(PublishFault::Timeout) => Err(Error::Timeout("scripted".into())),
                Some(PublishFault::Unauthorized) => Err(Error::unauthorized(
                    "scripted",
                    "credentials refused (scripted)",
                )),
                Some(PublishFault::Rejected) => {
                    Err(Error::Rejected("refused by the scripted broker".into()))
                }
            })
            .collect();
        if crash {
            panic!("scripted crash between publish and mark");
        }
        out
    }
}
