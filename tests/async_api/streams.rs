//! The stream conformance cases through the async Outbox and its relay (the
//! suite in tests/streams/conformance.rs drives `Stream` directly), for AMQP.
//! Generic over the stream suite's [`StreamHarness`] (tests/common/stream_harness.rs), so other streams can
//! expand them too.

use crate::common::stream_harness::{Consumer, Received, StreamHarness};
use crate::common::unique;
use crate::conformance::{off, AsyncHarness};
use crate::postgres::Pg;
use outboxer::async_impl::store::PostgresStore;
use outboxer::async_impl::Outbox;
use outboxer::{Error, FailureAction, Message, Options, MESSAGE_ID_HEADER};
use std::time::Duration;

async fn outbox<H: StreamHarness + 'static>(
    table: &str,
    stream: impl FnOnce() -> H::S + Send + 'static,
) -> Outbox<PostgresStore>
where
    H::S: Send + 'static,
{
    let stream = off(stream).await;
    Outbox::builder()
        .store(Pg::store(table).await)
        .stream(stream)
        .check_interval(Duration::from_millis(50))
        .backoff(Duration::from_millis(100), Duration::from_secs(1))
        .build()
        .expect("outbox")
}

async fn destination<H: StreamHarness + 'static>(name: &str) -> (Options, H::C)
where
    H::C: Send + 'static,
{
    let name = name.to_string();
    off(move || H::destination(&name)).await
}

async fn receive<C: Consumer + Send + 'static>(c: C, n: usize) -> Vec<Received> {
    off(move || c.receive(n, Duration::from_secs(30))).await
}

pub async fn batch_roundtrip_byte_exact<H: StreamHarness + 'static>()
where
    H::S: Send + 'static,
    H::C: Send + 'static,
{
    let t = unique("as_rt");
    let (dest, consumer) = destination::<H>(&unique("as_rt")).await;
    let o = outbox::<H>(&t, H::stream).await;
    let relay = o.start().await.expect("start");
    let with = |m: Message| m.route(dest.clone());
    let batch = vec![
        with(Message::new(vec![0, 159, 146, 150, 255, b'\n', 0]))
            .header("ключ", "значение 🎉")
            .header("tenant", "acme"),
        with(Message::new(b"plain".to_vec())),
        with(Message::new(vec![7u8; 64 * 1024])),
    ];
    o.send_batch(&batch).await.expect("send");
    for _ in 0..3 {
        let d = tokio::time::timeout(Duration::from_secs(30), relay.ok().recv())
            .await
            .expect("in time")
            .expect("open");
        assert!(batch.iter().any(|m| m.message_id() == d.message_id));
    }
    let got = receive(consumer, 3).await;
    assert_eq!(got.len(), 3);
    for m in &batch {
        let r = got
            .iter()
            .find(|r| r.headers.get(MESSAGE_ID_HEADER) == Some(&m.message_id().to_string()))
            .expect("message id on the wire");
        assert_eq!(r.payload, m.payload(), "byte-exact");
        for (k, v) in m.headers() {
            assert_eq!(r.headers.get(k), Some(v), "header {k}");
        }
    }
    relay.stop().await.expect("stop");
    Pg::drop_table(&t);
}

pub async fn per_message_outcomes_in_a_batch<H: StreamHarness + 'static>()
where
    H::S: Send + 'static,
    H::C: Send + 'static,
{
    let t = unique("as_out");
    let (dest, consumer) = destination::<H>(&unique("as_out")).await;
    let refused = H::refused_destination(&unique("as_refused"));
    let o = outbox::<H>(&t, H::stream).await;
    let route = |m: Message, opts: &Options| m.route(opts.clone());
    let a = route(Message::new(b"a".to_vec()), &dest);
    let bad = route(Message::new(b"bad".to_vec()), &refused);
    let c = route(Message::new(b"c".to_vec()), &dest);
    o.send_batch(&[a.clone(), bad.clone(), c.clone()])
        .await
        .expect("send");
    let relay = o.start().await.expect("start");
    let f = tokio::time::timeout(Duration::from_secs(30), relay.err().recv())
        .await
        .expect("in time")
        .expect("open");
    assert_eq!(f.message_id, Some(bad.message_id()), "{f:?}");
    assert_ne!(f.action, FailureAction::None);
    let mut ok = Vec::new();
    for _ in 0..2 {
        let d = tokio::time::timeout(Duration::from_secs(30), relay.ok().recv())
            .await
            .expect("in time")
            .expect("open");
        ok.push(d.message_id);
    }
    ok.sort();
    let mut want = vec![a.message_id(), c.message_id()];
    want.sort();
    assert_eq!(ok, want);
    let got = receive(consumer, 2).await;
    let mut bodies: Vec<Vec<u8>> = got.into_iter().map(|r| r.payload).collect();
    bodies.sort();
    assert_eq!(bodies, vec![b"a".to_vec(), b"c".to_vec()]);
    relay.stop().await.expect("stop");
    Pg::drop_table(&t);
}

pub async fn per_key_order<H: StreamHarness + 'static>()
where
    H::S: Send + 'static,
    H::C: Send + 'static,
{
    let t = unique("as_key");
    let (dest, consumer) = destination::<H>(&unique("as_key")).await;
    let o = outbox::<H>(&t, H::stream).await;
    let relay = o.start().await.expect("start");
    for i in 0..30 {
        let m = Message::new(format!("{i}").into_bytes())
            .ordering_key("one-key")
            .route(dest.clone());
        o.send(m).await.expect("send");
    }
    let got = receive(consumer, 30).await;
    let order: Vec<String> = got
        .iter()
        .map(|r| String::from_utf8_lossy(&r.payload).into_owned())
        .collect();
    let want: Vec<String> = (0..30).map(|i| i.to_string()).collect();
    assert_eq!(order, want);
    relay.stop().await.expect("stop");
    Pg::drop_table(&t);
}

pub async fn oversize_and_invalid_rejected_at_send<H: StreamHarness + 'static>()
where
    H::S: Send + 'static,
    H::C: Send + 'static,
{
    let t = unique("as_big");
    let (dest, _consumer) = destination::<H>(&unique("as_big")).await;
    let o = outbox::<H>(&t, H::stream).await;
    let route = |m: Message, opts: &Options| m.route(opts.clone());
    let big = route(Message::new(vec![0u8; H::max_message_size() + 1]), &dest);
    assert!(matches!(
        o.send(big).await,
        Err(Error::PayloadTooLarge { .. })
    ));
    let invalid = route(Message::new(b"x".to_vec()), &H::invalid_options());
    assert!(matches!(
        o.send_batch(&[invalid]).await,
        Err(Error::InvalidOption { .. })
    ));
    let st = o.stats().await.expect("stats");
    assert_eq!(st.pending, 0, "nothing stored");
    Pg::drop_table(&t);
}

pub async fn server_down_is_a_transient_error<H: StreamHarness + 'static>()
where
    H::S: Send + 'static,
    H::C: Send + 'static,
{
    let t = unique("as_down");
    let (dest, _consumer) = destination::<H>(&unique("as_down")).await;
    let o = outbox::<H>(&t, H::unreachable).await;
    let m = Message::new(b"x".to_vec()).route(dest);
    let id = o.send(m).await.expect("send");
    let relay = o.start().await.expect("start");
    let f = tokio::time::timeout(Duration::from_secs(30), relay.err().recv())
        .await
        .expect("in time")
        .expect("open");
    assert!(f.error.is_transient(), "{f:?}");
    assert_eq!(f.message_id, Some(id));
    assert_eq!(f.action, FailureAction::Released);
    relay.stop().await.expect("stop");
    let st = o.stats().await.expect("stats");
    assert_eq!((st.pending, st.parked), (1, 0), "kept for later");
    Pg::drop_table(&t);
}

/// Expands the cases as `#[tokio::test]`s for a stream harness.
macro_rules! async_stream_conformance {
    ($h:ty) => {
        async_stream_conformance!(@tests $h,
            batch_roundtrip_byte_exact per_message_outcomes_in_a_batch per_key_order
            oversize_and_invalid_rejected_at_send server_down_is_a_transient_error);
    };
    (@tests $h:ty, $($name:ident)*) => {
        $(
            #[tokio::test]
            async fn $name() {
                super::$name::<$h>().await;
            }
        )*
    };
}

/// RabbitMQ (OUTBOXER_AMQP_URL, default the local broker).
mod amqp_stream {
    use crate::common::stream_harness::Amqp;

    async_stream_conformance!(Amqp);
}
