//! The store conformance cases that go through the Outbox API, run through the
//! async Outbox. A store's module implements [`AsyncHarness`] and expands
//! `async_store_conformance!(TheHarness)`.

use crate::common::{amqp_url, counts, unique, Sink};
use outboxer::async_impl::{Outbox, Store};
use outboxer::store::{Lease, Store as BlockingStore};
use outboxer::stream::{amqp, AmqpStream};
use outboxer::{Error, Message, MessageId, StoredMessage};
use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

/// What the suite needs from a store's test module.
pub trait AsyncHarness {
    type S: Store + Clone;
    /// A migrated store on `table`.
    fn store(table: &str) -> impl Future<Output = Self::S>;
    /// Drops the table.
    fn drop_table(table: &str);
}

/// Runs blocking test code (blocking store calls, consumers) off the runtime.
pub async fn off<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

fn outbox<H: AsyncHarness>(s: H::S) -> Outbox<H::S> {
    Outbox::builder().store(s).build().expect("outbox")
}

/// Claims through the relay's blocking store (as the relay does).
async fn claim<H: AsyncHarness>(s: &H::S, lease: Lease) -> Vec<StoredMessage> {
    let b = s.blocking().clone();
    off(move || b.claim(&lease, 100.into()).expect("claim").messages).await
}

fn lease() -> Lease {
    Lease::new(Duration::from_secs(60))
}

fn ids(v: &[StoredMessage]) -> Vec<MessageId> {
    v.iter().map(|m| m.message_id).collect()
}

pub async fn roundtrip_byte_exact<H: AsyncHarness>() {
    let t = unique("a_rt");
    let s = H::store(&t).await;
    let o = outbox::<H>(s.clone());
    let big: Vec<u8> = (0..1024 * 1024).map(|i| (i * 7 % 256) as u8).collect();
    let sent = vec![
        Message::new(big.clone())
            .header("ключ", "значение 🎉")
            .header("tenant", "acme")
            .option("exchange.name", "orders")
            .option("exchange.durable", true)
            .ordering_key("k1"),
        Message::new(vec![0u8, 159, 146, 150, 255]),
    ];
    let mut want = o.send_batch(&sent).await.expect("send_batch");
    let one = Message::new(b"one".to_vec()).header("h", "v");
    want.push(o.send(one.clone()).await.expect("send"));
    let got = claim::<H>(&s, lease()).await;
    assert_eq!(ids(&got), want, "id order");
    assert_eq!(got[0].payload, big, "1 MiB byte-exact");
    assert_eq!(got[0].headers, *sent[0].headers());
    assert_eq!(got[0].options, *sent[0].options());
    assert_eq!(got[0].ordering_key.as_deref(), Some("k1"));
    assert_eq!(got[1].payload, vec![0u8, 159, 146, 150, 255], "non-UTF-8");
    assert_eq!(got[2].payload, b"one");
    assert_eq!(got[2].headers, *one.headers());
    let st = o.stats().await.expect("stats");
    assert_eq!((st.pending, st.leased), (3, 3));
    H::drop_table(&t);
}

pub async fn rollback_stores_nothing<H: AsyncHarness>() {
    let t = unique("a_rb");
    let s = H::store(&t).await;
    let o = outbox::<H>(s.clone());
    let r: Result<(), Error> = o
        .transaction(async |tx| {
            tx.send(Message::new(b"1".to_vec())).await?;
            tx.send(Message::new(b"2".to_vec())).await?;
            Err(Error::Rejected("user error".into()))
        })
        .await;
    assert!(matches!(r, Err(Error::Rejected(_))), "{r:?}");
    let kept = Message::new(b"3".to_vec());
    let id = o
        .transaction(async |tx| tx.send(kept.clone()).await)
        .await
        .expect("commit");
    assert_eq!(id, kept.message_id());
    let got = claim::<H>(&s, lease()).await;
    assert_eq!(ids(&got), vec![kept.message_id()], "only the committed one");
    H::drop_table(&t);
}

pub async fn per_key_fifo<H: AsyncHarness>() {
    let t = unique("a_key");
    let s = H::store(&t).await;
    let o = outbox::<H>(s.clone());
    let k1a = Message::new(b"k1a".to_vec()).ordering_key("k1");
    let k1b = Message::new(b"k1b".to_vec()).ordering_key("k1");
    let k2a = Message::new(b"k2a".to_vec()).ordering_key("k2");
    let free = Message::new(b"free".to_vec());
    o.send(k1a.clone()).await.expect("send");
    o.send_batch(&[k1b.clone(), k2a.clone(), free.clone()])
        .await
        .expect("send");
    let l = lease();
    let got = claim::<H>(&s, l).await;
    assert_eq!(
        ids(&got),
        vec![k1a.message_id(), k2a.message_id(), free.message_id()],
        "one head per key"
    );
    assert!(claim::<H>(&s, lease()).await.is_empty(), "k1b waits");
    let b = s.blocking().clone();
    let done: Vec<i64> = got.iter().map(|m| m.id).collect();
    off(move || b.mark_dispatched(&l, &done).expect("mark").len()).await;
    assert_eq!(ids(&claim::<H>(&s, lease()).await), vec![k1b.message_id()]);
    H::drop_table(&t);
}

/// Two async outboxes with relays on one table, keyed and unkeyed messages,
/// consumed from a bound RabbitMQ queue: all delivered once, per-key order kept,
/// every delivery reported on an async `ok()` receiver.
pub async fn relay_end_to_end_exactly_once<H: AsyncHarness>() {
    let t = unique("a_e2e");
    let ex = unique("ex");
    let sink = {
        let ex = ex.clone();
        off(move || Sink::new(&ex, "#")).await
    };
    let mut outboxes = Vec::new();
    for _ in 0..2 {
        let stream = off(|| AmqpStream::connect(&amqp_url()).expect("RabbitMQ")).await;
        outboxes.push(
            Outbox::builder()
                .store(H::store(&t).await)
                .stream(stream)
                .batch_size(50)
                .check_interval(Duration::from_millis(20))
                .build()
                .expect("outbox"),
        );
    }
    let mut relays = Vec::new();
    for o in &outboxes {
        relays.push(o.start().await.expect("start"));
    }
    const N: usize = 400;
    let msgs: Vec<Message> = (0..N)
        .map(|i| {
            let m = Message::new(format!("{}:{i}", i % 8).into_bytes())
                .route(amqp::topic(&ex, "e2e"))
                .header("n", i.to_string());
            if i % 2 == 0 {
                m.ordering_key(format!("key-{}", i % 8))
            } else {
                m
            }
        })
        .collect();
    for chunk in msgs.chunks(40) {
        outboxes[0].send_batch(chunk).await.expect("send");
    }
    let mut reported = std::collections::HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while reported.len() < N {
        let next = async {
            tokio::select! {
                d = relays[0].ok().recv() => d,
                d = relays[1].ok().recv() => d,
            }
        };
        match tokio::time::timeout_at(deadline, next).await {
            Ok(Ok(d)) => {
                reported.insert(d.message_id);
            }
            other => panic!("ok() ended early: {other:?}, {} reported", reported.len()),
        }
    }
    let got = off(move || sink.collect(N, Duration::from_secs(60))).await;
    let c = counts(&got);
    assert_eq!(c.len(), N, "all delivered");
    assert!(c.values().all(|n| *n == 1), "no duplicates");
    let mut last = HashMap::new();
    for g in &got {
        let body = String::from_utf8(g.body.clone()).expect("utf8");
        let (k, i) = body.split_once(':').expect("k:i");
        let i: usize = i.parse().expect("i");
        assert_eq!(g.headers.get("n"), Some(&i.to_string()));
        if i % 2 == 0 {
            let prev = last.insert(k.to_string(), i);
            assert!(prev.is_none_or(|p| p < i), "key {k}: {i} after {prev:?}");
        }
    }
    let mut published = 0;
    for r in &relays {
        r.stop().await.expect("stop");
        r.stop().await.expect("stop is idempotent");
        published += r.counters().published;
    }
    assert_eq!(published, N as u64, "counters");
    H::drop_table(&t);
}

/// Delayed messages through the async API: `send`, `send_batch` and `transaction`
/// store them with their delay (claimable only when due, counted as scheduled);
/// a refused schedule is a typed error from the outbox and from the store itself,
/// with nothing stored.
pub async fn delayed_messages_wait_and_bad_schedules_store_nothing<H: AsyncHarness>() {
    use std::time::{Instant, SystemTime};
    let t = unique("a_delay");
    let s = H::store(&t).await;
    let o = outbox::<H>(s.clone());
    let delay = Duration::from_millis(1500);
    let began = Instant::now();
    let now = Message::new(b"now".to_vec());
    let later = Message::new(b"later".to_vec()).delay(delay);
    let at = Message::new(b"at".to_vec()).deliver_at(SystemTime::now() + delay);
    o.send(later.clone()).await.expect("send");
    o.send_batch(&[now.clone(), at.clone()])
        .await
        .expect("send_batch");
    let in_tx = Message::new(b"in tx".to_vec()).delay(delay);
    o.transaction(async |tx| tx.send(in_tx.clone()).await)
        .await
        .expect("commit");
    let too_far =
        Message::new(b"too far".to_vec()).delay(outboxer::MAX_DELAY + Duration::from_secs(1));
    let before_epoch =
        Message::new(b"1969".to_vec()).deliver_at(SystemTime::UNIX_EPOCH - Duration::from_secs(1));
    for bad in [&too_far, &before_epoch] {
        let r = o
            .send_batch(&[Message::new(b"ok".to_vec()), bad.clone()])
            .await;
        assert!(matches!(r, Err(Error::InvalidSchedule { .. })), "{r:?}");
        // The store refuses it too (an application calling the store directly).
        let r = s
            .enqueue(&[Message::new(b"ok".to_vec()), bad.clone()])
            .await;
        assert!(matches!(r, Err(Error::InvalidSchedule { .. })), "{r:?}");
    }
    let r: Result<(), Error> = o
        .transaction(async |tx| {
            tx.send(Message::new(b"rolled back".to_vec())).await?;
            tx.send(too_far.clone()).await?;
            Ok(())
        })
        .await;
    assert!(matches!(r, Err(Error::InvalidSchedule { .. })), "{r:?}");
    let st = o.stats().await.expect("stats");
    assert_eq!((st.pending, st.scheduled), (4, 3), "{st:?}");
    assert!(st.next_due_in.is_some_and(|d| d <= delay), "{st:?}");
    assert_eq!(ids(&claim::<H>(&s, lease()).await), vec![now.message_id()]);
    tokio::time::sleep(delay.saturating_sub(began.elapsed()) + Duration::from_millis(100)).await;
    assert_eq!(
        ids(&claim::<H>(&s, lease()).await),
        vec![later.message_id(), at.message_id(), in_tx.message_id()],
        "due now, in id order"
    );
    H::drop_table(&t);
}

/// Expands the suite as `#[tokio::test]`s (current-thread runtimes) for a harness.
#[macro_export]
macro_rules! async_store_conformance {
    ($h:ty) => {
        $crate::async_store_conformance!(@tests $h,
            roundtrip_byte_exact rollback_stores_nothing per_key_fifo
            relay_end_to_end_exactly_once
            delayed_messages_wait_and_bad_schedules_store_nothing);
    };
    (@tests $h:ty, $($name:ident)*) => {
        $(
            #[tokio::test]
            async fn $name() {
                $crate::conformance::$name::<$h>().await;
            }
        )*
    };
}
