//! Unit tests of the relay pipeline (claimer → publisher → marker, stop,
//! outages, lease loss, dropped outcomes, panics), without servers: the real
//! relay on a [`MemoryStore`] and a [`ScriptedStream`].

use super::{MemoryStore, PublishFault, RowStatus, ScriptedStream, StoreOp};
use crate::message::{Failure, FailureAction, Message, MessageId};
use crate::{Error, OnPark, Outbox, OutboxBuilder};
use std::time::{Duration, Instant};

fn builder(store: &MemoryStore, stream: &ScriptedStream) -> OutboxBuilder<MemoryStore> {
    Outbox::builder()
        .store(store.clone())
        .stream(stream.clone())
        .check_interval(Duration::from_millis(5))
        .backoff(Duration::from_millis(5), Duration::from_millis(20))
        .report_interval(Duration::from_millis(200))
        // Dispatched rows kept, to be counted (the default deletes them).
        .cleanup_before(Duration::from_secs(3600))
}

fn keyed(key: &str, i: usize) -> Message {
    Message::new(format!("{key}-{i}").into_bytes()).ordering_key(key)
}

fn until(within: Duration, mut done: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    done()
}

fn errors(relay: &crate::Relay) -> Vec<Failure> {
    relay.err().try_iter().collect()
}

#[test]
fn the_pipeline_delivers_everything_once_in_key_order() {
    let (store, stream) = (MemoryStore::new(), ScriptedStream::new());
    let outbox = builder(&store, &stream)
        .batch_size(7)
        .cleanup_before(Duration::ZERO)
        .build()
        .expect("outbox");
    let msgs: Vec<Message> = (0..60)
        .map(|i| keyed(["a", "b", "c"][i % 3], i))
        .chain((0..20).map(|i| Message::new(vec![i as u8])))
        .collect();
    outbox.send_batch(&msgs).expect("send");
    let relay = outbox.start().expect("start");
    let got = stream.wait_for(80, Duration::from_secs(10));
    relay.stop().expect("stop");
    assert_eq!(got.len(), 80);
    for key in ["a", "b", "c"] {
        let ids: Vec<i64> = got
            .iter()
            .filter(|m| m.ordering_key.as_deref() == Some(key))
            .map(|m| m.id)
            .collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{key}: {ids:?}");
    }
    let ok: Vec<MessageId> = relay.ok().try_iter().map(|d| d.message_id).collect();
    assert_eq!(ok.len(), 80, "every delivery reported once on ok()");
    assert_eq!(relay.counters().published, 80);
    assert!(
        store.rows().is_empty(),
        "dispatched rows deleted (retention 0)"
    );
}

#[test]
fn stop_releases_claimed_batches_and_start_works_again() {
    let (store, stream) = (MemoryStore::new(), ScriptedStream::new());
    let outbox = builder(&store, &stream)
        .batch_size(1)
        .build()
        .expect("outbox");
    outbox
        .send_batch(
            &(0..200)
                .map(|i| Message::new(vec![i as u8]))
                .collect::<Vec<_>>(),
        )
        .expect("send");
    let relay = outbox.start().expect("start");
    assert!(until(Duration::from_secs(5), || stream.publishes() >= 3));
    relay.stop().expect("stop");
    relay.stop().expect("idempotent");
    assert!(
        store.rows().iter().all(|r| !r.leased),
        "no claim left leased after stop"
    );
    let relay = outbox.start().expect("start again");
    let total = until(Duration::from_secs(10), || {
        store.rows_in(RowStatus::Dispatched).len() == 200
    });
    relay.stop().expect("stop");
    assert!(total, "everything delivered after the restart");
}

#[test]
fn an_outage_releases_without_attempts_reports_once_per_interval_then_delivers() {
    let (store, stream) = (MemoryStore::new(), ScriptedStream::new());
    stream.fail_where(|_| true, PublishFault::Unavailable);
    let outbox = builder(&store, &stream)
        .max_attempts(1)
        .batch_size(5)
        .build()
        .expect("outbox");
    outbox
        .send_batch(
            &(0..50)
                .map(|i| Message::new(vec![i as u8]))
                .collect::<Vec<_>>(),
        )
        .expect("send");
    let relay = outbox.start().expect("start");
    std::thread::sleep(Duration::from_millis(700));
    let reports = errors(&relay);
    assert!(
        !reports.is_empty() && reports.len() <= 5,
        "when it starts, then once per 200 ms, not per message: {}",
        reports.len()
    );
    assert!(reports
        .iter()
        .all(|f| f.action == FailureAction::Released && f.error.is_transient()));
    assert!(store
        .rows()
        .iter()
        .all(|r| r.attempts == 0 && r.status == RowStatus::Pending));
    stream.clear();
    let delivered = until(Duration::from_secs(15), || {
        store.rows_in(RowStatus::Dispatched).len() == 50
    });
    relay.stop().expect("stop");
    assert!(delivered, "delivered once the broker is back");
}

#[test]
fn a_lost_lease_is_reported_not_delivered() {
    let (store, stream) = (MemoryStore::new(), ScriptedStream::new());
    let outbox = builder(&store, &stream)
        .lease(Duration::from_secs(2))
        .build()
        .expect("outbox");
    outbox.send(Message::new(b"x".to_vec())).expect("send");
    // The relay crashes between publish and mark (a failed mark until the lease
    // is gone); another claimer took the row meanwhile.
    store.fail_next(StoreOp::MarkDispatched, 1_000);
    let relay = outbox.start().expect("start");
    assert_eq!(stream.wait_for(1, Duration::from_secs(5)).len(), 1);
    store.expire_leases();
    let thief = crate::store::Lease::new(Duration::from_secs(60));
    let taken = crate::Store::claim(&store, &thief, 10.into()).expect("claim");
    store.fail_next(StoreOp::MarkDispatched, 0);
    assert_eq!(taken.messages.len(), 1, "another relay owns it now");
    let lost = until(Duration::from_secs(10), || {
        relay
            .err()
            .try_iter()
            .any(|f| f.action == FailureAction::NotMarked)
    });
    relay.stop().expect("stop");
    assert!(lost, "reported as not marked");
    assert!(relay.ok().try_recv().is_err(), "never reported delivered");
    assert_eq!(relay.counters().published, 0);
}

#[test]
fn unread_outcomes_are_dropped_and_counted() {
    let (store, stream) = (MemoryStore::new(), ScriptedStream::new());
    let outbox = builder(&store, &stream)
        .channel_capacity(1)
        .build()
        .expect("outbox");
    outbox
        .send_batch(
            &(0..30)
                .map(|i| Message::new(vec![i as u8]))
                .collect::<Vec<_>>(),
        )
        .expect("send");
    let relay = outbox.start().expect("start");
    assert!(until(Duration::from_secs(5), || relay.counters().published == 30));
    relay.stop().expect("stop");
    let c = relay.counters();
    assert_eq!((c.published, c.dropped_ok), (30, 29), "{c:?}");
}

#[test]
fn a_crash_between_publish_and_mark_stops_the_relay_and_the_restart_delivers_again() {
    let (store, stream) = (MemoryStore::new(), ScriptedStream::new());
    let outbox = builder(&store, &stream).build().expect("outbox");
    let id = outbox.send(Message::new(b"x".to_vec())).expect("send");
    stream.fail_next(PublishFault::CrashAfterPublish);
    let relay = outbox.start().expect("start");
    let f = relay
        .err()
        .recv_timeout(Duration::from_secs(5))
        .expect("reported");
    assert!(
        matches!(f.error, Error::RelayPanicked("publisher")),
        "{f:?}"
    );
    assert!(matches!(relay.stop(), Err(Error::RelayPanicked(_))));
    assert_eq!(
        store.rows()[0].status,
        RowStatus::Pending,
        "released, not lost"
    );
    let relay = outbox.start().expect("start again");
    let got = stream.wait_for(2, Duration::from_secs(5));
    relay.stop().expect("stop");
    assert_eq!(got.len(), 2, "delivered before the crash and again after");
    assert!(got.iter().all(|m| m.message_id == id));
}

#[test]
fn a_database_outage_is_reported_and_survived() {
    let (store, stream) = (MemoryStore::new(), ScriptedStream::new());
    store.fail_next(StoreOp::Claim, 5);
    let outbox = builder(&store, &stream).build().expect("outbox");
    outbox.send(Message::new(b"x".to_vec())).expect("send");
    let relay = outbox.start().expect("start");
    assert_eq!(stream.wait_for(1, Duration::from_secs(15)).len(), 1);
    relay.stop().expect("stop");
    let reports = errors(&relay);
    assert!(
        reports
            .iter()
            .any(|f| matches!(f.error, Error::Database { .. })),
        "{reports:?}"
    );
    assert!(reports.len() < 5, "not once per failed claim: {reports:?}");
}

#[test]
fn an_undecodable_row_parks_alone() {
    let (store, stream) = (MemoryStore::new(), ScriptedStream::new());
    let outbox = builder(&store, &stream).build().expect("outbox");
    outbox
        .send_batch(
            &(0..5)
                .map(|i| Message::new(vec![i as u8]))
                .collect::<Vec<_>>(),
        )
        .expect("send");
    store.corrupt(3, "headers: must be a JSON object, found an array ([])");
    let relay = outbox.start().expect("start");
    assert_eq!(stream.wait_for(4, Duration::from_secs(5)).len(), 4);
    relay.stop().expect("stop");
    let parked = store.rows_in(RowStatus::Parked);
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].id, 3);
    assert!(parked[0]
        .last_error
        .as_deref()
        .is_some_and(|e| e.contains("headers")));
}

#[test]
fn a_parked_head_holds_its_key_until_requeued_unless_told_otherwise() {
    for policy in [OnPark::HoldKey, OnPark::ReleaseKey] {
        let (store, stream) = (MemoryStore::new(), ScriptedStream::new());
        stream.fail_where(|m| m.payload == b"k-0", PublishFault::Rejected);
        let outbox = builder(&store, &stream)
            .max_attempts(1)
            .on_park(policy)
            .build()
            .expect("outbox");
        outbox
            .send_batch(&(0..3).map(|i| keyed("k", i)).collect::<Vec<_>>())
            .expect("send");
        outbox.send(Message::new(b"other".to_vec())).expect("send");
        let relay = outbox.start().expect("start");
        let first = stream.wait_for(
            if policy == OnPark::HoldKey { 1 } else { 3 },
            Duration::from_secs(5),
        );
        std::thread::sleep(Duration::from_millis(100));
        let mut got: Vec<Vec<u8>> = first.into_iter().map(|m| m.payload).collect();
        got.extend(stream.delivered().into_iter().map(|m| m.payload));
        if policy == OnPark::HoldKey {
            assert_eq!(
                got,
                vec![b"other".to_vec()],
                "the key waits behind its head"
            );
            assert_eq!(outbox.stats().expect("stats").held_keys, 1);
            stream.clear();
            outbox
                .requeue(&crate::store::Requeue::AllParked)
                .expect("requeue");
            let rest: Vec<Vec<u8>> = stream
                .wait_for(3, Duration::from_secs(5))
                .into_iter()
                .map(|m| m.payload)
                .collect();
            assert_eq!(
                rest,
                vec![b"k-0".to_vec(), b"k-1".to_vec(), b"k-2".to_vec()]
            );
        } else {
            got.sort();
            assert_eq!(
                got,
                vec![b"k-1".to_vec(), b"k-2".to_vec(), b"other".to_vec()]
            );
            assert_eq!(store.rows_in(RowStatus::Skipped).len(), 1);
        }
        relay.stop().expect("stop");
    }
}

#[test]
fn batches_stay_within_the_byte_cap() {
    let (store, stream) = (MemoryStore::new(), ScriptedStream::new());
    let outbox = builder(&store, &stream)
        .max_batch_bytes(250)
        .build()
        .expect("outbox");
    let mut msgs: Vec<Message> = (0..10).map(|i| Message::new(vec![i as u8; 100])).collect();
    msgs.push(Message::new(vec![9; 1000]));
    outbox.send_batch(&msgs).expect("send");
    let relay = outbox.start().expect("start");
    assert_eq!(stream.wait_for(11, Duration::from_secs(5)).len(), 11);
    relay.stop().expect("stop");
    assert!(
        stream.publishes() >= 6,
        "two 100-byte messages per batch, the large one alone: {} batches",
        stream.publishes()
    );
}

/// A log record's text and key-values.
type Logged = (String, Vec<(String, String)>);

/// Every log record of the outboxer targets, with its key-values (installed once
/// for this test binary; tests filter by their own message ids).
fn captured_logs() -> &'static std::sync::Mutex<Vec<Logged>> {
    use std::sync::{Mutex, OnceLock};
    struct Capture(Mutex<Vec<Logged>>);
    struct Kv<'a>(&'a mut Vec<(String, String)>);
    impl<'kvs> log::kv::VisitSource<'kvs> for Kv<'_> {
        fn visit_pair(
            &mut self,
            key: log::kv::Key<'kvs>,
            value: log::kv::Value<'kvs>,
        ) -> Result<(), log::kv::Error> {
            self.0.push((key.to_string(), value.to_string()));
            Ok(())
        }
    }
    impl log::Log for Capture {
        fn enabled(&self, _: &log::Metadata<'_>) -> bool {
            true
        }
        fn log(&self, record: &log::Record<'_>) {
            if !record.target().starts_with("outboxer") {
                return;
            }
            let mut kv = Vec::new();
            let _ = record.key_values().visit(&mut Kv(&mut kv));
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((record.args().to_string(), kv));
        }
        fn flush(&self) {}
    }
    static LOGS: OnceLock<&'static Capture> = OnceLock::new();
    let c = *LOGS.get_or_init(|| {
        let c: &'static Capture = Box::leak(Box::new(Capture(Mutex::new(Vec::new()))));
        if log::set_logger(c).is_ok() {
            log::set_max_level(log::LevelFilter::Trace);
        }
        c
    });
    &c.0
}

/// Sends `n` messages `<prefix><i>` in one batch; their message ids as text.
fn send_numbered(outbox: &Outbox<MemoryStore>, prefix: &str, n: usize) -> Vec<String> {
    let msgs: Vec<Message> = (0..n)
        .map(|i| Message::new(format!("{prefix}{i}").into_bytes()))
        .collect();
    outbox
        .send_batch(&msgs)
        .expect("send")
        .iter()
        .map(|i| i.to_string())
        .collect()
}

/// The captured records that name one of `ids`, in their text or a key-value.
fn logged_about(logs: &std::sync::Mutex<Vec<Logged>>, ids: &[String]) -> Vec<Logged> {
    logs.lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|(text, kv)| {
            ids.iter()
                .any(|id| text.contains(id.as_str()) || kv.iter().any(|(_, v)| v == id))
        })
        .cloned()
        .collect()
}

/// A database that goes away between publish and mark: the whole batch comes back
/// as not marked on `err()`, one failure per message, but the log says it once
/// per batch, never once per message (an outage must not flood the log).
#[test]
fn unmarked_messages_of_a_database_outage_are_logged_once_per_batch() {
    let logs = captured_logs();
    let (store, stream) = (MemoryStore::new(), ScriptedStream::new());
    let outbox = builder(&store, &stream)
        .lease(Duration::from_secs(1))
        .build()
        .expect("outbox");
    let ids = send_numbered(&outbox, "m", 50);
    store.fail_next(StoreOp::MarkDispatched, 1_000);
    let relay = outbox.start().expect("start");
    assert_eq!(stream.wait_for(50, Duration::from_secs(5)).len(), 50);
    let mut not_marked = 0;
    let reported = until(Duration::from_secs(10), || {
        not_marked += relay
            .err()
            .try_iter()
            .filter(|f| f.action == FailureAction::NotMarked)
            .count();
        not_marked >= 50
    });
    relay.stop().expect("stop");
    assert!(reported, "each message reported on err(): {not_marked}");
    let lines = logged_about(logs, &ids);
    assert!(
        (1..=2).contains(&lines.len()),
        "one line per batch, not per message: {} lines: {lines:#?}",
        lines.len()
    );
}

#[test]
fn memory_store_requeues_by_age_and_error_text() {
    use crate::store::{FailedAttempt, Lease, ParkedFilter, Requeue, Store};
    let store = MemoryStore::new();
    let park = |body: &str, error: &str| {
        store
            .enqueue(&[Message::new(body.as_bytes().to_vec())])
            .expect("enqueue");
        let l = Lease::new(Duration::from_secs(30));
        let got = store.claim(&l, 10.into()).expect("claim").messages;
        let f = FailedAttempt {
            id: got[0].id,
            error: error.into(),
            retry_in: Duration::ZERO,
            park: true,
            hold_key: false,
        };
        assert_eq!(store.mark_failed(&l, &[f]).expect("park"), 1);
    };
    park("old", "NOT_FOUND - no exchange 'a'");
    std::thread::sleep(Duration::from_millis(300));
    park("new", "NOT_FOUND - no exchange 'b'");
    let requeue = |f: ParkedFilter| store.requeue(&Requeue::Matching(f)).expect("requeue");
    let older = ParkedFilter::new().older_than(Duration::from_millis(200));
    assert_eq!(requeue(older.clone().error_contains("exchange 'B'")), 0);
    assert_eq!(requeue(older.error_contains("no EXCHANGE")), 1);
    assert_eq!(store.rows_in(RowStatus::Skipped).len(), 1); // parked without holding a key
    assert_eq!(requeue(ParkedFilter::new().error_contains("")), 1);
    assert!(store.rows_in(RowStatus::Skipped).is_empty());
}

/// A flood of bad messages (a route refused for 300 messages, each retried once
/// and parked) is not a flood of log lines: the first few failures of each report
/// interval are logged one by one, the rest are counted into one summary line.
/// `err()` still gets every failure.
#[test]
fn message_failures_are_logged_a_few_per_interval_and_summarised() {
    let logs = captured_logs();
    let (store, stream) = (MemoryStore::new(), ScriptedStream::new());
    let outbox = builder(&store, &stream)
        .max_attempts(2)
        .report_interval(Duration::from_secs(60))
        .build()
        .expect("outbox");
    let ids = send_numbered(&outbox, "bad", 300);
    stream.fail_where(|_| true, PublishFault::Rejected);
    let relay = outbox.start().expect("start");
    let parked = until(Duration::from_secs(20), || {
        store.rows_in(RowStatus::Parked).len() == 300
    });
    let reported = relay.err().try_iter().count();
    relay.stop().expect("stop");
    drop(relay);
    drop(outbox);
    assert!(parked, "all 300 parked");
    assert!(reported >= 300, "err() has every failure: {reported}");
    let lines = logged_about(logs, &ids);
    assert!(
        !lines.is_empty() && lines.len() <= 10,
        "a few lines per interval, not one per failure: {} lines",
        lines.len()
    );
    let summary = logs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .any(|(text, kv)| {
            text.contains("more message failures")
                && kv
                    .iter()
                    .any(|(k, v)| k == "first_message_id" && ids.contains(v))
        });
    assert!(summary, "the rest are summarised in one line");
}

#[test]
fn health_follows_claims_outages_and_stop() {
    let (store, stream) = (MemoryStore::new(), ScriptedStream::new());
    let outbox = builder(&store, &stream).build().expect("outbox");
    let relay = outbox.start().expect("start");
    assert!(
        until(Duration::from_secs(5), || relay
            .health()
            .last_claim
            .is_some()),
        "the claimer claims at once"
    );
    let h = relay.health();
    assert!(h.threads_alive);
    assert_eq!(h.ready(Duration::from_secs(5)), Ok(()));
    // The broker goes down: health reports it while batches fail, with the error.
    stream.fail_where(|_| true, PublishFault::Unavailable);
    outbox.send(Message::new(b"x".to_vec())).expect("send");
    assert!(
        until(Duration::from_secs(5), || relay
            .health()
            .stream_outage
            .is_some()),
        "stream outage seen"
    );
    let why = relay
        .health()
        .ready(Duration::from_secs(5))
        .expect_err("not ready");
    assert!(why.starts_with("broker unavailable"), "{why}");
    assert!(relay.health().store_outage.is_none());
    // Back: the first good batch ends it for health (the log waits a quiet interval).
    stream.clear();
    assert!(
        until(Duration::from_secs(10), || relay
            .health()
            .stream_outage
            .is_none()),
        "stream outage over once a batch goes through"
    );
    assert_eq!(stream.wait_for(1, Duration::from_secs(5)).len(), 1);
    relay.stop().expect("stop");
    let h = relay.health();
    assert!(!h.threads_alive, "stopped");
    assert!(h.ready(Duration::from_secs(5)).is_err());
}

#[test]
fn a_panicked_thread_shows_in_health() {
    let (store, stream) = (MemoryStore::new(), ScriptedStream::new());
    let outbox = builder(&store, &stream).build().expect("outbox");
    let relay = outbox.start().expect("start");
    stream.fail_next(PublishFault::CrashAfterPublish);
    outbox.send(Message::new(b"x".to_vec())).expect("send");
    assert!(
        until(Duration::from_secs(5), || !relay.health().threads_alive),
        "threads_alive turns false after a panic"
    );
    assert!(matches!(relay.stop(), Err(Error::RelayPanicked(_))));
}

#[test]
fn an_idle_relay_wakes_when_a_delayed_message_is_due_and_keeps_its_key_order() {
    let (store, stream) = (MemoryStore::new(), ScriptedStream::new());
    let check = Duration::from_secs(10);
    let outbox = builder(&store, &stream)
        .check_interval(check)
        .build()
        .expect("outbox");
    let relay = outbox.start().expect("start");
    let delay = Duration::from_millis(300);
    let began = Instant::now();
    let head = keyed("k", 0).delay(delay);
    let next = keyed("k", 1);
    let free = Message::new(b"free".to_vec());
    outbox
        .send_batch(&[head.clone(), next.clone(), free.clone()])
        .expect("send");
    let order: Vec<(MessageId, Duration)> = (0..3)
        .map(|_| {
            let d = relay
                .ok()
                .recv_timeout(Duration::from_secs(5))
                .expect("delivered");
            (d.message_id, began.elapsed())
        })
        .collect();
    relay.stop().expect("stop");
    let ids: Vec<MessageId> = order.iter().map(|o| o.0).collect();
    assert_eq!(
        ids,
        vec![free.message_id(), head.message_id(), next.message_id()]
    );
    assert!(order[0].1 < delay, "{order:?}");
    assert!(order[1].1 >= delay, "published early: {order:?}");
    assert!(
        order[2].1 < delay + Duration::from_millis(500),
        "not woken when due (check interval {check:?}): {order:?}"
    );
}

#[test]
fn a_keys_backlog_drains_without_waiting_a_check_interval_per_message() {
    // One key's messages are claimable one at a time, each after its predecessor
    // is marked: an idle relay must not wait for its next poll between them.
    let (store, stream) = (MemoryStore::new(), ScriptedStream::new());
    let check = Duration::from_secs(10);
    let outbox = builder(&store, &stream)
        .check_interval(check)
        .build()
        .expect("outbox");
    let relay = outbox.start().expect("start");
    let began = Instant::now();
    outbox
        .send_batch(&(0..5).map(|i| keyed("k", i)).collect::<Vec<_>>())
        .expect("send");
    let got = stream.wait_for(5, Duration::from_secs(3));
    relay.stop().expect("stop");
    assert_eq!(
        got.len(),
        5,
        "{:?} after send, check interval {check:?}",
        began.elapsed()
    );
}
