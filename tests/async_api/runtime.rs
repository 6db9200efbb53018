//! The async API never blocks a runtime worker, and lives beside the blocking API.

use crate::common::{counts, stream, unique, Sink};
use crate::conformance::{off, AsyncHarness};
use crate::postgres::Pg;
use outboxer::stream::amqp;
use outboxer::Message;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A task on the (only) worker thread that records the longest gap between ticks
/// of a 5 ms interval until `stop` is set.
fn ticker(stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<(Duration, u64)> {
    tokio::spawn(async move {
        let mut iv = tokio::time::interval(Duration::from_millis(5));
        iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        iv.tick().await;
        let mut last = Instant::now();
        let (mut max, mut n) = (Duration::ZERO, 0u64);
        while !stop.load(Ordering::Relaxed) {
            iv.tick().await;
            let now = Instant::now();
            max = max.max(now - last);
            last = now;
            n += 1;
        }
        (max, n)
    })
}

/// On a current-thread runtime, a timer task keeps ticking (longest gap < 100 ms)
/// while the store connects, the relay starts, messages are sent and confirmed,
/// outcomes are received, the relay stops, and outbox and relay are dropped.
#[tokio::test(flavor = "current_thread")]
async fn current_thread_runtime_keeps_ticking() {
    let stop = Arc::new(AtomicBool::new(false));
    let tick = ticker(Arc::clone(&stop));
    tokio::task::yield_now().await;
    let t = unique("a_tick");
    let ex = unique("ex_tick");
    let sink = {
        let ex = ex.clone();
        off(move || Sink::new(&ex, "#")).await
    };
    let started = Instant::now();
    let store = Pg::store(&t).await;
    let amqp_stream = off(stream).await;
    let outbox = outboxer::async_impl::Outbox::builder()
        .store(store)
        .stream(amqp_stream)
        .check_interval(Duration::from_millis(20))
        .build()
        .expect("outbox");
    let relay = outbox.start().await.expect("start");
    let route = amqp::topic(&ex, "tick");
    const N: usize = 300;
    for i in 0..100 {
        let m = Message::new(format!("{i}").into_bytes()).route(route.clone());
        outbox.send(m).await.expect("send");
    }
    let batch: Vec<Message> = (100..N - 1)
        .map(|i| Message::new(format!("{i}").into_bytes()).route(route.clone()))
        .collect();
    outbox.send_batch(&batch).await.expect("send_batch");
    let last = Message::new(b"last".to_vec()).route(route.clone());
    outbox
        .transaction(async |tx| tx.send(last).await)
        .await
        .expect("transaction");
    let mut reported = 0;
    while reported < N {
        let d = tokio::time::timeout(Duration::from_secs(60), relay.ok().recv()).await;
        d.expect("in time").expect("open");
        reported += 1;
    }
    let st = outbox.stats().await.expect("stats");
    assert_eq!(st.pending, 0, "{st:?}");
    relay.stop().await.expect("stop");
    // A second relay, dropped while running: its threads are joined off the runtime.
    let again = outbox.start().await.expect("restart");
    outbox
        .send(Message::new(b"after restart".to_vec()).route(route.clone()))
        .await
        .expect("send");
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(again);
    drop(outbox);
    tokio::time::sleep(Duration::from_millis(50)).await;
    stop.store(true, Ordering::Relaxed);
    let (max_gap, ticks) = tick.await.expect("ticker");
    let elapsed = started.elapsed();
    assert!(ticks > 20, "the timer ran ({ticks} ticks in {elapsed:?})");
    assert!(
        max_gap < Duration::from_millis(100),
        "a worker thread was blocked for {max_gap:?}"
    );
    let got = off(move || sink.collect(N + 1, Duration::from_secs(30))).await;
    assert_eq!(counts(&got).len(), N + 1, "all delivered");
    Pg::drop_table(&t);
}

/// One build, one table, both APIs: a blocking `outboxer::Outbox` and an
/// `outboxer::async_impl::Outbox` enqueue side by side, each runs a relay, and
/// every message is delivered exactly once.
#[tokio::test(flavor = "current_thread")]
async fn blocking_and_async_apis_in_one_build() {
    let t = unique("a_both");
    let ex = unique("ex_both");
    let sink = {
        let ex = ex.clone();
        off(move || Sink::new(&ex, "#")).await
    };
    let async_outbox: outboxer::async_impl::Outbox<outboxer::async_impl::store::PostgresStore> =
        outboxer::async_impl::Outbox::builder()
            .store(Pg::store(&t).await)
            .stream(off(stream).await)
            .check_interval(Duration::from_millis(20))
            .build()
            .expect("async outbox");
    let table = t.clone();
    let blocking_outbox: outboxer::Outbox<outboxer::store::PostgresStore> = off(move || {
        outboxer::Outbox::builder()
            .store(crate::common::store(&table))
            .stream(stream())
            .check_interval(Duration::from_millis(20))
            .build()
            .expect("blocking outbox")
    })
    .await;
    let async_relay = async_outbox.start().await.expect("async start");
    let blocking_outbox = Arc::new(blocking_outbox);
    let b = Arc::clone(&blocking_outbox);
    let blocking_relay = off(move || b.start().expect("blocking start")).await;

    let route = amqp::topic(&ex, "both");
    let mut sent = Vec::new();
    for i in 0..20 {
        let m = Message::new(format!("async {i}").into_bytes())
            .route(route.clone())
            .ordering_key("shared-key");
        sent.push(async_outbox.send(m).await.expect("async send"));
        let b = Arc::clone(&blocking_outbox);
        let r = route.clone();
        sent.push(
            off(move || {
                b.transaction(|tx| {
                    tx.send(
                        Message::new(format!("blocking {i}").into_bytes())
                            .route(r)
                            .ordering_key("shared-key"),
                    )
                })
                .expect("blocking send")
            })
            .await,
        );
    }
    let got = off(move || sink.collect(40, Duration::from_secs(60))).await;
    let c = counts(&got);
    assert_eq!(c.len(), 40, "all delivered");
    assert!(c.values().all(|n| *n == 1), "exactly once");
    // One key across both APIs: delivered in enqueue order.
    let order: Vec<String> = got.iter().filter_map(|g| g.message_id.clone()).collect();
    let want: Vec<String> = sent.iter().map(|id| id.to_string()).collect();
    assert_eq!(order, want, "per-key order across both APIs");
    async_relay.stop().await.expect("async stop");
    // Counted once marked, which may come just after the consumer got the message.
    let blocking_published = off(move || {
        blocking_relay.stop().expect("blocking stop");
        let n = blocking_relay.counters().published;
        drop(blocking_outbox);
        n
    })
    .await;
    let total = async_relay.counters().published + blocking_published;
    assert_eq!(total, 40);
    Pg::drop_table(&t);
}

/// Nobody reads the outcome receivers: the relay still publishes everything, each
/// receiver keeps `channel_capacity` outcomes and the rest are dropped and counted.
#[tokio::test(flavor = "current_thread")]
async fn unread_receivers_never_block_the_relay() {
    let t = unique("a_unread");
    let ex = unique("ex_unread");
    let sink = {
        let ex = ex.clone();
        off(move || Sink::new(&ex, "#")).await
    };
    let outbox = outboxer::async_impl::Outbox::builder()
        .store(Pg::store(&t).await)
        .stream(off(stream).await)
        .channel_capacity(2)
        .check_interval(Duration::from_millis(20))
        .build()
        .expect("outbox");
    let relay = outbox.start().await.expect("start");
    let route = amqp::topic(&ex, "unread");
    let msgs: Vec<Message> = (0..40)
        .map(|i| Message::new(format!("{i}").into_bytes()).route(route.clone()))
        .collect();
    outbox.send_batch(&msgs).await.expect("send");
    let got = off(move || sink.collect(40, Duration::from_secs(60))).await;
    assert_eq!(counts(&got).len(), 40, "all delivered");
    relay.stop().await.expect("stop");
    let c = relay.counters();
    assert_eq!(c.published, 40);
    assert_eq!(relay.ok().len(), 2, "capacity kept");
    assert_eq!(c.dropped_ok, 38, "{c:?}");
    Pg::drop_table(&t);
}
