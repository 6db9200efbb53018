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
    assert_eq!(store.rows_in(RowStatus::Dispatched).len(), 80);
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
