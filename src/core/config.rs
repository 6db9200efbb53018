//! Relay settings and their validation: bad values are typed errors, never panics.

use super::retry::Backoff;
use crate::{Error, Result};
use std::time::Duration;

/// Validated relay settings (built by `Outbox::builder()`).
#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// Polling fallback between claims when no wake-up arrives.
    pub check_interval: Duration,
    /// Most messages claimed and published at once.
    pub batch_size: usize,
    /// How long a claim is owned before another relay may take it over.
    pub lease: Duration,
    /// Failed attempts before a message is parked.
    pub max_attempts: u32,
    /// Delay policy between attempts.
    pub backoff: Backoff,
    /// How often dispatched rows are cleaned up; `None` disables cleanup.
    pub cleanup_interval: Option<Duration>,
    /// Dispatched rows older than this are deleted.
    pub cleanup_before: Duration,
    /// Rows deleted per statement.
    pub cleanup_batch_size: usize,
    /// Capacity of the ok/err channels; when full, outcomes are dropped and counted.
    pub channel_capacity: usize,
    /// Most payload bytes claimed at once (one larger message is still claimed alone).
    pub max_batch_bytes: usize,
    /// What a parked message does to the later messages of its ordering key.
    pub on_park: OnPark,
    /// How often an ongoing outage is reported (on `err()` and in the log).
    pub report_interval: Duration,
    /// How often the table gauges are queried (feature `metrics`).
    pub metrics_interval: Duration,
    /// Whether message metrics carry the `route` label (feature `metrics`).
    pub metrics_route_label: bool,
    /// How a claim owns its rows while they are published.
    pub claim_mode: ClaimMode,
}

/// How a relay owns the rows it claimed while it publishes them.
///
/// ```
/// use outboxer::ClaimMode;
/// assert_eq!(ClaimMode::default(), ClaimMode::RowLocks);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClaimMode {
    /// The claim locks its rows (`SELECT .. FOR UPDATE SKIP LOCKED`) in a
    /// transaction that stays open while the batch is published; the outcomes
    /// are written in that transaction and committed once. No lease is written,
    /// and a relay that dies gives its rows up with its connection, at once. The
    /// transaction's idle time is bounded by the lease on the server
    /// (`idle_in_transaction_session_timeout` on PostgreSQL,
    /// `idle_transaction_timeout` on MariaDB, `wait_timeout` on MySQL). Stores
    /// that cannot hold a transaction open this way (SQLite, whose open write
    /// transaction would block every enqueue; SQL Server so far) lease instead.
    #[default]
    RowLocks,
    /// The claim writes a lease (`locked_by`, `locked_until`) and commits; the
    /// outcomes are written by later statements that check the lease. A dead
    /// relay's rows are taken over when its lease ends. Every store supports it.
    Leases,
}

/// What a parked message does to the later messages of its ordering key.
///
/// ```
/// use outboxer::OnPark;
/// assert_eq!(OnPark::default(), OnPark::HoldKey);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum OnPark {
    /// The key is held: its later messages wait until the parked head is requeued
    /// (published first, in order) or skipped. Key order is never broken.
    #[default]
    HoldKey,
    /// The key is released at once: its later messages flow, and a requeued head is
    /// published after them (out of order).
    ReleaseKey,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            check_interval: Duration::from_secs(1),
            batch_size: 500,
            lease: Duration::from_secs(30),
            max_attempts: 10,
            backoff: Backoff::default(),
            cleanup_interval: Some(Duration::from_secs(60)),
            cleanup_before: Duration::ZERO,
            cleanup_batch_size: 1000,
            channel_capacity: 1024,
            max_batch_bytes: 16 * 1024 * 1024,
            on_park: OnPark::HoldKey,
            report_interval: Duration::from_secs(30),
            metrics_interval: Duration::from_secs(15),
            metrics_route_label: true,
            claim_mode: ClaimMode::RowLocks,
        }
    }
}

const DAY: Duration = Duration::from_secs(24 * 3600);

fn range(field: &'static str, v: Duration, min: Duration, max: Duration) -> Result<()> {
    if v < min || v > max {
        return Err(Error::config(
            field,
            format!("{v:?} is outside {min:?}..={max:?}"),
        ));
    }
    Ok(())
}

impl RelayConfig {
    /// Checks every setting; the first bad one is returned as [`Error::Config`].
    pub fn validate(&self) -> Result<()> {
        range(
            "check_interval",
            self.check_interval,
            Duration::from_millis(1),
            DAY,
        )?;
        if self.batch_size == 0 || self.batch_size > 10_000 {
            return Err(Error::config(
                "batch_size",
                format!("{} is outside 1..=10000", self.batch_size),
            ));
        }
        range("lease", self.lease, Duration::from_secs(1), DAY)?;
        if self.max_attempts == 0 {
            return Err(Error::config("max_attempts", "must be at least 1"));
        }
        if let Some(i) = self.cleanup_interval {
            range("cleanup_interval", i, Duration::from_millis(10), 30 * DAY)?;
        }
        range(
            "cleanup_before",
            self.cleanup_before,
            Duration::ZERO,
            3650 * DAY,
        )?;
        if self.cleanup_batch_size == 0 || self.cleanup_batch_size > 100_000 {
            return Err(Error::config(
                "cleanup_batch_size",
                format!("{} is outside 1..=100000", self.cleanup_batch_size),
            ));
        }
        if self.channel_capacity == 0 || self.channel_capacity > 10_000_000 {
            return Err(Error::config(
                "channel_capacity",
                format!("{} is outside 1..=10000000", self.channel_capacity),
            ));
        }
        if self.max_batch_bytes == 0 {
            return Err(Error::config(
                "max_batch_bytes",
                "must be greater than zero",
            ));
        }
        range(
            "report_interval",
            self.report_interval,
            Duration::from_millis(10),
            DAY,
        )?;
        range(
            "metrics_interval",
            self.metrics_interval,
            Duration::from_millis(10),
            DAY,
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert!(RelayConfig::default().validate().is_ok());
    }

    #[test]
    fn each_bad_value_names_its_field() {
        let cases: Vec<(&str, RelayConfig)> = vec![
            (
                "check_interval",
                RelayConfig {
                    check_interval: Duration::ZERO,
                    ..Default::default()
                },
            ),
            (
                "batch_size",
                RelayConfig {
                    batch_size: 0,
                    ..Default::default()
                },
            ),
            (
                "batch_size",
                RelayConfig {
                    batch_size: 1_000_000,
                    ..Default::default()
                },
            ),
            (
                "lease",
                RelayConfig {
                    lease: Duration::from_millis(10),
                    ..Default::default()
                },
            ),
            (
                "max_attempts",
                RelayConfig {
                    max_attempts: 0,
                    ..Default::default()
                },
            ),
            (
                "cleanup_interval",
                RelayConfig {
                    cleanup_interval: Some(Duration::ZERO),
                    ..Default::default()
                },
            ),
            (
                "cleanup_batch_size",
                RelayConfig {
                    cleanup_batch_size: 0,
                    ..Default::default()
                },
            ),
            (
                "channel_capacity",
                RelayConfig {
                    channel_capacity: 0,
                    ..Default::default()
                },
            ),
            (
                "max_batch_bytes",
                RelayConfig {
                    max_batch_bytes: 0,
                    ..Default::default()
                },
            ),
        ];
        for (field, cfg) in cases {
            match cfg.validate() {
                Err(Error::Config { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        }
    }
}
