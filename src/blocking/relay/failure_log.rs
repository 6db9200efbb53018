//! Per-message failure lines, rate-limited: a flood of bad messages (a route
//! refused for thousands of rows) must not become a flood of log lines, at any
//! log level. `err()` still carries every failure.

use crate::message::{Failure, FailureAction};
use parking_lot::Mutex;
use std::time::{Duration, Instant};

/// How many failures of one report interval are logged one by one.
const PER_INTERVAL: u32 = 5;

pub(super) struct FailureLog {
    window: Mutex<Window>,
}

struct Window {
    started: Instant,
    logged: u32,
    /// Failures counted but not logged in this window, and of those parked.
    quiet: u64,
    parked: u64,
    first_message_id: Option<String>,
    last_error: String,
}

impl FailureLog {
    pub(super) fn new() -> Self {
        FailureLog {
            window: Mutex::new(Window {
                started: Instant::now(),
                logged: 0,
                quiet: 0,
                parked: 0,
                first_message_id: None,
                last_error: String::new(),
            }),
        }
    }

    /// Logs the failure on its own line while this interval has room, else counts
    /// it; a window's count is logged as one summary when the next window opens
    /// (or the relay ends).
    pub(super) fn log(&self, failure: &Failure, attempt: Option<u32>, every: Duration) {
        let mut w = self.window.lock();
        if w.started.elapsed() >= every {
            w.flush(every);
            w.started = Instant::now();
            w.logged = 0;
        }
        let message_id = failure.message_id.map(|m| m.to_string());
        if w.logged < PER_INTERVAL {
            w.logged += 1;
            log::warn!(
                message_id = message_id.as_deref(),
                row_id = failure.id,
                attempt,
                action:? = failure.action;
                "outboxer: message {} (row {}) {}: {}",
                message_id.as_deref().unwrap_or("-"),
                failure.id.map_or_else(|| "-".to_string(), |id| id.to_string()),
                action_word(failure.action),
                failure.error
            );
            return;
        }
        w.quiet += 1;
        if failure.action == FailureAction::Parked {
            w.parked += 1;
        }
        if w.first_message_id.is_none() {
            w.first_message_id = message_id;
        }
        w.last_error = failure.error.to_string();
    }
}

impl Window {
    fn flush(&mut self, every: Duration) {
        if self.quiet == 0 {
            return;
        }
        log::warn!(
            count = self.quiet,
            parked = self.parked,
            first_message_id = self.first_message_id.as_deref();
            "outboxer: {} more message failures in {:?} not logged one by one ({} parked; the last: {}); every one is on err() and in `outboxer stats`",
            self.quiet,
            every,
            self.parked,
            self.last_error
        );
        self.quiet = 0;
        self.parked = 0;
        self.first_message_id = None;
    }
}

impl Drop for FailureLog {
    fn drop(&mut self) {
        let every = self.window.get_mut().started.elapsed();
        self.window.get_mut().flush(every);
    }
}

fn action_word(action: FailureAction) -> &'static str {
    match action {
        FailureAction::Retry => "will be retried",
        FailureAction::Parked => "parked",
        FailureAction::Released => "released",
        FailureAction::NotMarked => "published but not marked",
        _ => "failed",
    }
}
