//! One kind of outage (the database's or the broker's): when to report it and
//! how long released messages wait.

use crate::core::retry::Backoff;
use crate::Error;
use parking_lot::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// One kind of outage (the database's or the broker's): reported when it starts,
/// once per interval while it lasts, and when it ends; never once per message.
pub(super) struct Outage {
    what: &'static str,
    state: Mutex<OutageState>,
}

#[derive(Default)]
struct OutageState {
    since: Option<Instant>,
    last_failure: Option<Instant>,
    last_report: Option<Instant>,
    /// Messages released (or operations failed) since the last report, and in all.
    quiet: u64,
    total: u64,
    /// Consecutive failing rounds, for the release delay.
    streak: u32,
    /// The last error, for [`crate::Health`].
    last_error: Option<String>,
}

impl Outage {
    pub(super) fn new(what: &'static str) -> Self {
        Outage {
            what,
            state: Mutex::new(OutageState::default()),
        }
    }

    /// Records `count` failures of one round with `error`; returns the error when
    /// it is due to be reported (the first of an outage, then one per interval).
    pub(super) fn failed(&self, error: Error, count: u64, every: Duration) -> Option<Error> {
        let now = Instant::now();
        let mut s = self.state.lock();
        s.last_failure = Some(now);
        s.last_error = Some(error.to_string());
        s.total += count;
        s.streak = s.streak.saturating_add(1);
        let Some(since) = s.since else {
            s.since = Some(now);
            s.last_report = Some(now);
            s.quiet = 0;
            log::warn!(
                "outboxer: {} outage: {error}; messages are released without counting \
                 attempts and retried with backoff (next report in {every:?})",
                self.what
            );
            return Some(error);
        };
        s.quiet += count;
        if s.last_report
            .is_some_and(|r| now.duration_since(r) >= every)
        {
            log::warn!(
                "outboxer: {} outage for {:.0?}: {} failed since the last report ({} in all); \
                 last error: {error}",
                self.what,
                now.duration_since(since),
                s.quiet,
                s.total
            );
            s.last_report = Some(now);
            s.quiet = 0;
            return Some(error);
        }
        None
    }

    /// A round without failures: the outage ends once none came for an interval.
    pub(super) fn succeeded(&self, every: Duration) {
        let mut s = self.state.lock();
        s.streak = 0;
        let (Some(since), Some(last)) = (s.since, s.last_failure) else {
            return;
        };
        if last.elapsed() >= every {
            log::info!(
                "outboxer: {} outage over after {:.0?} ({} failed in all)",
                self.what,
                last.duration_since(since),
                s.total
            );
            *s = OutageState::default();
        }
    }

    pub(super) fn streak(&self) -> u32 {
        self.state.lock().streak
    }

    /// The outage as health sees it: only while the last round failed (a good
    /// round ends it here at once, before the log's quiet interval).
    pub(super) fn status(&self) -> Option<crate::OutageStatus> {
        let s = self.state.lock();
        if s.streak == 0 {
            return None;
        }
        let since = s.since?;
        Some(crate::OutageStatus {
            since: SystemTime::now()
                .checked_sub(since.elapsed())
                .unwrap_or(SystemTime::UNIX_EPOCH),
            failures: s.total,
            last_error: s.last_error.clone().unwrap_or_default(),
        })
    }
}

/// How long released messages wait before they are claimed again: short at
/// first, longer while the outage lasts (1 s doubling up to 10 s, with jitter), so
/// other routes keep flowing, a dead server is not hammered, and messages go out
/// within seconds of the server's return.
pub(super) fn release_delay(streak: u32) -> Duration {
    Backoff::new(Duration::from_secs(1), Duration::from_secs(10))
        .map(|b| b.delay(streak.max(1)))
        .unwrap_or(Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_is_reported_when_it_starts_then_once_per_interval() {
        let o = Outage::new("broker");
        let every = Duration::from_millis(200);
        let err = || Error::unavailable("amqp", "down");
        assert!(
            o.failed(err(), 10, every).is_some(),
            "first failure reported"
        );
        for _ in 0..50 {
            assert!(
                o.failed(err(), 10, every).is_none(),
                "quiet within the interval"
            );
        }
        assert_eq!(o.streak(), 51);
        std::thread::sleep(every);
        assert!(
            o.failed(err(), 1, every).is_some(),
            "one report per interval"
        );
        o.succeeded(every);
        assert_eq!(o.streak(), 0, "a good round resets the delay");
        assert!(
            o.state.lock().since.is_some(),
            "not over until quiet for an interval"
        );
        std::thread::sleep(every);
        o.succeeded(every);
        assert!(
            o.state.lock().since.is_none(),
            "over after a quiet interval"
        );
        assert!(
            o.failed(err(), 1, every).is_some(),
            "a new outage is reported"
        );
    }

    #[test]
    fn release_delays_grow_and_stay_bounded() {
        let first = release_delay(1);
        assert!(first >= Duration::from_millis(500) && first <= Duration::from_secs(1));
        assert!(release_delay(0) <= Duration::from_secs(1));
        for n in [5, 10, 1000, u32::MAX] {
            let d = release_delay(n);
            assert!(
                d >= Duration::from_secs(5) && d <= Duration::from_secs(10),
                "{d:?}"
            );
        }
    }
}
