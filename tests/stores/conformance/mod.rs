//! One conformance suite for every store. A store's test module implements
//! [`Harness`] and expands `store_conformance!(TheHarness)`. The cases are
//! in one file per topic next to this one.

use outboxer::store::{FailedAttempt, Lease, Requeue, Store, TxStore};
use outboxer::{Error, Message, MessageId, StoredMessage};
use std::collections::HashSet;
use std::time::Duration;

/// What the suite needs from a store's test module.
pub trait Harness {
    type S: TxStore + Clone;
    /// A store on `table` (not migrated), or the error its builder gives.
    fn try_store(table: &str) -> Result<Self::S, Error>;
    /// The same store type pointed at a server that is not there.
    fn unreachable() -> Result<Self::S, Error>;
    /// Runs raw SQL statements (to create a Go outboxer table, to drop tables).
    fn exec(statements: &[String]);
    /// Statements creating the Go outboxer's table for this database, with one
    /// dispatched and one pending row (payload 'from go', headers {"n": 1}).
    fn go_table(table: &str) -> Vec<String>;
    /// Drops the table.
    fn drop_table(table: &str);
    /// Whether the store holds claims by row locks (`Store::claim_locked`).
    const ROW_LOCKS: bool;
    /// How `DROP INDEX` names index `index` of `table` in this database.
    fn index_ref(table: &str, index: &str) -> String;
    /// One `INSERT` of a row as another language writes it with plain SQL: the
    /// payload text as bytes, headers and options as JSON text (or NULL), an
    /// optional ordering key; every other column from its default (or "now").
    fn insert_sql(
        table: &str,
        payload: &str,
        headers: Option<&str>,
        options: Option<&str>,
        key: Option<&str>,
    ) -> String;
    /// One `INSERT` of a row delayed by `secs` seconds, as docs/stores.md shows
    /// plain-SQL writers (the payload text as bytes, every other column from its
    /// default or "now").
    fn delayed_insert_sql(table: &str, payload: &str, secs: u32) -> String;
}

/// An SQL string literal (single quotes doubled).
pub fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// [`lit`], or NULL.
pub fn lit_or_null(v: Option<&str>) -> String {
    v.map_or("NULL".to_string(), lit)
}

pub fn unique(prefix: &str) -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{prefix}_{}_{}", std::process::id(), n % 1_000_000_000_000)
}

pub fn store<H: Harness>(table: &str) -> H::S {
    let s = H::try_store(table).expect("store");
    s.migrate().expect("migrate");
    s
}

fn lease(secs: u64) -> Lease {
    Lease::new(Duration::from_secs(secs))
}

fn msg(i: usize) -> Message {
    Message::new(format!("m{i}").into_bytes())
}

fn ids(v: &[StoredMessage]) -> Vec<MessageId> {
    v.iter().map(|m| m.message_id).collect()
}

fn keyed(body: &str, key: &str) -> Message {
    Message::new(body.as_bytes().to_vec()).ordering_key(key)
}

fn park(m: &StoredMessage, hold_key: bool) -> FailedAttempt {
    FailedAttempt {
        id: m.id,
        error: format!("poison {}", String::from_utf8_lossy(&m.payload)),
        retry_in: Duration::ZERO,
        park: true,
        hold_key,
    }
}

fn bodies(v: &[StoredMessage]) -> Vec<String> {
    v.iter()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect()
}

/// Claims everything claimable, marks it dispatched, returns the bodies.
fn drain<S: Store>(s: &S) -> Vec<String> {
    let l = lease(60);
    let got = s.claim(&l, 100.into()).expect("claim").messages;
    let ids: Vec<i64> = got.iter().map(|m| m.id).collect();
    assert_eq!(s.mark_dispatched(&l, &ids).expect("mark").len(), ids.len());
    bodies(&got)
}

mod claims;
mod failures;
mod keys;
mod locked;
#[cfg(all(feature = "postgres", feature = "amqp"))]
mod relay;
mod schedule;
mod schema;

pub use claims::*;
pub use failures::*;
pub use keys::*;
pub use locked::*;
#[cfg(all(feature = "postgres", feature = "amqp"))]
pub use relay::*;
pub use schedule::*;
pub use schema::*;

/// Expands the whole suite as `#[test]`s for a harness; extra attributes (e.g. `#[ignore]`) mark tests
/// that need a server this machine may not have.
#[macro_export]
macro_rules! store_conformance {
    ($h:ty $(, #[$attr:meta])*) => {
        $crate::store_conformance!(@tests $h, [$(#[$attr])*],
            send_claim_mark_roundtrip mark_fail_park_requeue requeue_by_age_and_error_text attempts_histogram_and_parked_list
            purge_parked_only_touches_parked
            lease_expiry_and_token_checked_marks mark_reports_exactly_the_rows_still_held
            concurrent_claimers_never_share_a_row per_key_fifo rollback_stores_nothing
            cleanup_only_old_dispatched migrate_concurrently_and_upgrade_go_table missing_indexes_until_migrated
            bad_names_and_unreachable_servers_are_typed_errors
            undecodable_rows_are_claimed_apart release_with_a_delay parked_head_holds_its_key
            skip_and_held_keys claims_honour_the_byte_limit
            plain_sql_trace_context_is_claimed_with_the_row
            row_locks_hold_rows_until_commit row_locks_commit_deletes_with_zero_retention
            row_locks_keep_key_order row_locks_end_when_idle_longer_than_the_lease
            delayed_messages_are_claimed_when_due a_delayed_head_holds_its_key
            bad_schedules_store_nothing_and_ten_years_fit plain_sql_delayed_row_waits);
    };
    (@tests $h:ty, $attrs:tt, $($name:ident)*) => {
        #[cfg(all(feature = "postgres", feature = "amqp"))]
        $crate::store_conformance!(@one $h, $attrs, relay_end_to_end_with_amqp);
        #[cfg(all(feature = "postgres", feature = "amqp"))]
        $crate::store_conformance!(@one $h, $attrs, relay_parks_undecodable_rows_alone);
        #[cfg(all(feature = "postgres", feature = "amqp"))]
        $crate::store_conformance!(@one $h, $attrs, relay_publishes_a_delayed_message_when_due);
        $( $crate::store_conformance!(@one $h, $attrs, $name); )*
    };
    (@one $h:ty, [$(#[$m:meta])*], $name:ident) => {
        #[test]
        $(#[$m])*
        fn $name() {
            $crate::conformance::$name::<$h>();
        }
    };
}
