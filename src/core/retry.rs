//! Retry policy: exponential backoff with jitter, and when to park.

use crate::{Error, Result};
use std::time::Duration;

/// HTTP statuses worth retrying: 408 (request timeout), 429 (throttled) and 5xx.
pub fn retryable_http_status(status: u16) -> bool {
    status == 408 || status == 429 || (500..=599).contains(&status)
}

/// Exponential backoff with "equal jitter": attempt `n` waits between half and
/// all of `min(max, base * 2^(n-1))`, so retries of many messages spread out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    max: Duration,
}

impl Backoff {
    /// `base` for the first retry, doubling up to `max`. Both must be > 0 and `base <= max`.
    pub fn new(base: Duration, max: Duration) -> Result<Self> {
        if base.is_zero() {
            return Err(Error::config("backoff", "base must be greater than zero"));
        }
        if max < base {
            return Err(Error::config("backoff", "max must be at least base"));
        }
        if max > Duration::from_secs(7 * 24 * 3600) {
            return Err(Error::config("backoff", "max must be at most 7 days"));
        }
        Ok(Backoff { base, max })
    }

    /// The delay before retry number `attempt` (1 = first retry).
    pub fn delay(&self, attempt: u32) -> Duration {
        let full = self.ceiling(attempt);
        let half = full / 2;
        let spread = (full - half).as_nanos().min(u128::from(u64::MAX)) as u64;
        half + Duration::from_nanos(if spread == 0 {
            0
        } else {
            fastrand::u64(0..=spread)
        })
    }

    /// The delay without jitter: `min(max, base * 2^(attempt-1))`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1);
        let nanos = (exp < 64)
            .then(|| self.base.as_nanos().checked_mul(1u128 << exp))
            .flatten();
        match nanos {
            Some(n) if n < self.max.as_nanos() => {
                Duration::from_nanos(u64::try_from(n).unwrap_or(u64::MAX))
            }
            _ => self.max,
        }
    }

    /// The base delay.
    pub fn base(&self) -> Duration {
        self.base
    }
    /// The maximum delay.
    pub fn max(&self) -> Duration {
        self.max
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(500),
            max: Duration::from_secs(300),
        }
    }
}

/// What to do with a message whose publish failed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Verdict {
    /// Back into the queue after this delay, one more attempt counted.
    Retry(Duration),
    /// No more attempts: status `parked`.
    Park,
    /// The failure was the connection's, not the message's: release the lease, count nothing.
    Release,
}

/// Decides the fate of a failed message that had `attempts` failures before this one.
pub fn verdict(error: &Error, attempts: u32, max_attempts: u32, backoff: &Backoff) -> Verdict {
    if error.is_transient() {
        return Verdict::Release;
    }
    let attempts = attempts.saturating_add(1);
    if error.is_permanent() || attempts >= max_attempts {
        Verdict::Park
    } else {
        Verdict::Retry(backoff.delay(attempts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_and_caps_with_jitter() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1)).expect("valid");
        assert_eq!(b.ceiling(1), Duration::from_millis(100));
        assert_eq!(b.ceiling(3), Duration::from_millis(400));
        assert_eq!(b.ceiling(30), Duration::from_secs(1));
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(1));
        for n in 1..50 {
            let d = b.delay(n);
            assert!(d >= b.ceiling(n) / 2 && d <= b.ceiling(n), "{n}: {d:?}");
        }
    }

    #[test]
    fn rejects_bad_backoff() {
        assert!(Backoff::new(Duration::ZERO, Duration::from_secs(1)).is_err());
        assert!(Backoff::new(Duration::from_secs(2), Duration::from_secs(1)).is_err());
    }

    #[test]
    fn verdicts() {
        let b = Backoff::default();
        let nack = Error::Rejected("nack".into());
        assert!(matches!(verdict(&nack, 0, 3, &b), Verdict::Retry(_)));
        assert_eq!(verdict(&nack, 2, 3, &b), Verdict::Park);
        let bad = Error::option("routing_key", "not a string");
        assert_eq!(verdict(&bad, 0, 10, &b), Verdict::Park);
        let down = Error::unavailable("amqp", "connection refused");
        assert_eq!(verdict(&down, 9, 10, &b), Verdict::Release);
    }
}
