//! When an idle relay claims again: after its check interval, or as soon as a
//! scheduled (or backing-off) message falls due, when that is sooner.

use crate::blocking::store::Store;
use std::time::Duration;

/// Past the due time by a little, so that the database clock has passed
/// `available_at` when the claim runs, whatever the store's clock rounds.
const SLACK: Duration = Duration::from_millis(2);

/// How long an idle claimer waits (unless woken) before it claims again: the check
/// interval, or less when the store knows of a message due sooner. One small query
/// per idle claim; when it fails the check interval stands (the next claim reports
/// a store that is down).
pub(super) fn idle_wait<S: Store>(store: &S, check_interval: Duration) -> Duration {
    match store.next_due() {
        Ok(Some(due)) => check_interval.min(due.saturating_add(SLACK)),
        Ok(None) => check_interval,
        Err(e) => {
            log::debug!("outboxer: cannot read when the next message is due: {e}");
            check_interval
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::MemoryStore;
    use crate::{Message, Store};

    #[test]
    fn waits_for_the_earlier_of_interval_and_next_due() {
        let store = MemoryStore::new();
        let interval = Duration::from_secs(5);
        assert_eq!(idle_wait(&store, interval), interval);
        store
            .enqueue(&[Message::new(b"x".to_vec()).delay(Duration::from_millis(800))])
            .expect("enqueue");
        let w = idle_wait(&store, interval);
        assert!(
            w > Duration::from_millis(700) && w <= Duration::from_millis(802),
            "{w:?}"
        );
        store
            .enqueue(&[Message::new(b"y".to_vec()).delay(Duration::from_secs(60))])
            .expect("enqueue");
        assert!(idle_wait(&store, interval) <= Duration::from_millis(802));
        assert_eq!(
            idle_wait(&store, Duration::from_millis(100)),
            Duration::from_millis(100)
        );
    }
}
