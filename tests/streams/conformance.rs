//! One conformance suite for every stream. A stream's test module implements
//! [`StreamHarness`] (tests/common/stream_harness.rs) and expands `stream_conformance!(TheHarness)`. The cases
//! drive the `Stream` trait directly (as the relay does) and check what a real
//! consumer of the broker received.

pub use crate::common::stream_harness::{Consumer, Received, StreamHarness, DISRUPTION};
pub use crate::common::unique;
use outboxer::{Error, Headers, MessageId, Options, StoredMessage, Stream, MESSAGE_ID_HEADER};
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

/// A stored message as the relay hands it to `publish` (a fresh message id, no headers).
pub fn stored(
    id: i64,
    payload: impl AsRef<[u8]>,
    options: &Options,
    key: Option<&str>,
) -> StoredMessage {
    StoredMessage {
        id,
        message_id: MessageId::new(),
        payload: payload.as_ref().to_vec(),
        headers: Headers::new(),
        options: options.clone(),
        ordering_key: key.map(str::to_string),
        attempts: 0,
        created_at: SystemTime::now(),
    }
}

/// Taken by every case that does not cut connections (see [`DISRUPTION`]).
pub fn read() -> std::sync::RwLockReadGuard<'static, ()> {
    DISRUPTION.read().unwrap_or_else(|e| e.into_inner())
}

pub fn batch_roundtrip_byte_exact<H: StreamHarness>() {
    let _g = read();
    let (dest, consumer) = H::destination(&unique("s_rt"));
    let mut s = H::stream();
    let mut a = stored(1, vec![0, 159, 146, 150, 255, b'\n', 0], &dest, None);
    a.headers.insert("ключ".into(), "значение 🎉".into());
    a.headers.insert("tenant".into(), "acme".into());
    let b = stored(2, b"plain", &dest, None);
    let c = stored(3, vec![7u8; 64 * 1024], &dest, None);
    let batch = vec![a.clone(), b.clone(), c.clone()];
    let out = s.publish(&batch, &crate::common::deadline());
    assert!(out.iter().all(|o| o.is_ok()), "{out:?}");
    let got = consumer.receive(3, Duration::from_secs(20));
    assert_eq!(got.len(), 3);
    for m in &batch {
        let r = got
            .iter()
            .find(|r| r.headers.get(MESSAGE_ID_HEADER) == Some(&m.message_id.to_string()))
            .expect("message id on the wire");
        assert_eq!(r.payload, m.payload, "byte-exact");
        for (k, v) in &m.headers {
            assert_eq!(r.headers.get(k), Some(v), "header {k}");
        }
    }
    s.close();
}

pub fn per_message_outcomes_in_a_batch<H: StreamHarness>() {
    let _g = read();
    let (dest, consumer) = H::destination(&unique("s_out"));
    let refused = H::refused_destination(&unique("s_ref"));
    let mut s = H::stream();
    let batch = vec![
        stored(1, b"ok 1", &dest, None),
        stored(2, b"refused", &refused, None),
        stored(3, b"invalid", &H::invalid_options(), None),
        stored(4, b"ok 2", &dest, None),
    ];
    let out = s.publish(&batch, &crate::common::deadline());
    assert_eq!(out.len(), 4);
    assert!(out[0].is_ok() && out[3].is_ok(), "{out:?}");
    assert!(
        matches!(&out[1], Err(e) if !e.is_transient()),
        "refused: {:?}",
        out[1]
    );
    assert!(
        matches!(&out[2], Err(Error::InvalidOption { .. })),
        "invalid: {:?}",
        out[2]
    );
    let got = consumer.receive(2, Duration::from_secs(20));
    let mut bodies: Vec<Vec<u8>> = got.into_iter().map(|r| r.payload).collect();
    bodies.sort();
    assert_eq!(bodies, vec![b"ok 1".to_vec(), b"ok 2".to_vec()]);
    // The stream stays usable after refusals.
    let again = s.publish(
        &[stored(5, b"after", &dest, None)],
        &crate::common::deadline(),
    );
    assert!(again[0].is_ok(), "{again:?}");
    s.close();
}

pub fn per_key_order_in_a_batch<H: StreamHarness>() {
    let _g = read();
    let (dest, consumer) = H::destination(&unique("s_key"));
    let mut s = H::stream();
    let batch: Vec<StoredMessage> = (0..60)
        .map(|i| {
            let key = format!("k{}", i % 3);
            stored(i, format!("{key}:{i}").into_bytes(), &dest, Some(&key))
        })
        .collect();
    assert!(s
        .publish(&batch, &crate::common::deadline())
        .iter()
        .all(|o| o.is_ok()));
    let got = consumer.receive(60, Duration::from_secs(20));
    assert_eq!(got.len(), 60);
    let mut last: BTreeMap<String, i64> = BTreeMap::new();
    for r in got {
        let body = String::from_utf8(r.payload).expect("utf8");
        let (k, i) = body.split_once(':').expect("k:i");
        let i: i64 = i.parse().expect("i");
        let prev = last.insert(k.to_string(), i).unwrap_or(-1);
        assert!(i > prev, "key {k}: {i} after {prev}");
    }
    s.close();
}

pub fn oversize_and_invalid_rejected_at_send<H: StreamHarness>() {
    let s = H::stream();
    let v = s.validator();
    let (dest, _consumer) = H::destination(&unique("s_big"));
    let limit = H::max_message_size();
    let ok = vec![0u8; limit.min(1024)];
    assert!(v.validate(&ok, &Headers::new(), &dest).is_ok());
    let big = vec![0u8; limit + 1];
    assert!(matches!(
        v.validate(&big, &Headers::new(), &dest),
        Err(Error::PayloadTooLarge { .. })
    ));
    assert!(matches!(
        v.validate(b"x", &Headers::new(), &H::invalid_options()),
        Err(Error::InvalidOption { .. })
    ));
}

pub fn server_down_is_a_transient_error<H: StreamHarness>() {
    let (dest, _consumer) = H::destination(&unique("s_down"));
    let mut s = H::unreachable();
    let out = s.publish(
        &[stored(1, b"x", &dest, None), stored(2, b"y", &dest, None)],
        &crate::common::deadline(),
    );
    assert_eq!(out.len(), 2);
    for o in &out {
        assert!(matches!(o, Err(e) if e.is_transient()), "{o:?}");
    }
}

pub fn delivery_resumes_after_connections_are_cut<H: StreamHarness>() {
    let _g = DISRUPTION.write().unwrap_or_else(|e| e.into_inner());
    let (dest, consumer) = H::destination(&unique("s_cut"));
    let mut s = H::stream();
    assert!(s.publish(
        &[stored(1, b"before", &dest, None)],
        &crate::common::deadline()
    )[0]
    .is_ok());
    H::cut_connections();
    std::thread::sleep(Duration::from_millis(500));
    // The first publish after the cut may fail (transient); the stream reconnects by itself.
    let mut delivered = false;
    let mut failures = 0;
    for i in 0..20 {
        match &s.publish(
            &[stored(2 + i, b"after", &dest, None)],
            &crate::common::deadline(),
        )[0]
        {
            Ok(()) => {
                delivered = true;
                break;
            }
            Err(e) => {
                assert!(e.is_transient(), "a cut connection is transient: {e}");
                failures += 1;
                std::thread::sleep(Duration::from_millis(300));
            }
        }
    }
    assert!(
        delivered,
        "delivery resumed ({failures} transient failures first)"
    );
    let got = consumer.receive(2, Duration::from_secs(30));
    let bodies: Vec<&[u8]> = got.iter().map(|r| r.payload.as_slice()).collect();
    assert!(
        bodies.contains(&b"before".as_slice()) && bodies.contains(&b"after".as_slice()),
        "{bodies:?}"
    );
    s.close();
}

/// The whole path, the same for every stream: messages committed in PostgreSQL,
/// two relays on one table, a consumer of the destination. Keyed and unkeyed
/// messages: every message arrives exactly once (by message id, and nothing more
/// shows up later), with its headers, each key's messages in key order and, where
/// the consumer sees the broker's key (Kafka record key, Kinesis partition key,
/// Pub/Sub ordering key), under that key.
pub fn relay_end_to_end_from_postgres<H: StreamHarness>() {
    use outboxer::{Message, Outbox};
    let _g = read();
    let (dest, consumer) = H::destination(&unique("s_e2e"));
    let table = unique("e2e");
    let outboxes: Vec<_> = (0..2)
        .map(|_| {
            Outbox::builder()
                .store(crate::common::store(&table))
                .stream(H::stream())
                .batch_size(50)
                .check_interval(Duration::from_millis(20))
                .build()
                .expect("outbox")
        })
        .collect();
    let relays: Vec<_> = outboxes.iter().map(|o| o.start().expect("start")).collect();
    const N: usize = 300;
    // Body "<key>:<n>", or "-:<n>" for the unkeyed quarter.
    let msgs: Vec<Message> = (0..N)
        .map(|i| {
            let key = (i % 4 != 3).then(|| format!("key-{}", i % 6));
            let body = format!("{}:{i}", key.as_deref().unwrap_or("-"));
            let m = Message::new(body.into_bytes())
                .route(dest.clone())
                .header("n", i.to_string());
            match key {
                Some(k) => m.ordering_key(k),
                None => m,
            }
        })
        .collect();
    let mut sent = Vec::new();
    for chunk in msgs.chunks(30) {
        sent.extend(outboxes[0].send_batch(chunk).expect("send"));
    }
    let got = consumer.receive(N, Duration::from_secs(120));
    // Anything beyond N would be a duplicate: wait a little for one to show up.
    let extra = consumer.receive(1, Duration::from_secs(2));
    assert!(extra.is_empty(), "duplicate: {extra:?}");
    let ids: std::collections::HashSet<&str> = got
        .iter()
        .map(|r| r.headers.get(MESSAGE_ID_HEADER).map_or("", String::as_str))
        .collect();
    assert_eq!(got.len(), N, "every message delivered");
    assert_eq!(ids.len(), N, "no duplicates");
    assert!(sent.iter().all(|id| ids.contains(id.to_string().as_str())));
    let mut last: BTreeMap<String, usize> = BTreeMap::new();
    let mut keyed = 0;
    for r in &got {
        let body = String::from_utf8(r.payload.clone()).expect("utf8");
        let (k, i) = body.split_once(':').expect("key:n");
        let i: usize = i.parse().expect("n");
        assert_eq!(r.headers.get("n"), Some(&i.to_string()));
        if k == "-" {
            continue;
        }
        keyed += 1;
        if let Some(broker_key) = &r.key {
            assert_eq!(broker_key, k, "message {i} under its key");
        }
        if let Some(prev) = last.insert(k.to_string(), i) {
            assert!(i > prev, "key {k}: {i} after {prev}");
        }
    }
    assert_eq!((last.len(), keyed), (6, N - N / 4), "keyed and unkeyed");
    for r in &relays {
        r.stop().expect("stop");
    }
    crate::common::drop_table(&table);
}

/// W3C trace context end to end, the same for every stream: messages sent with
/// `Message::trace_context` (one with more headers than SQS has attribute slots)
/// and a row written with plain SQL whose headers hold `traceparent`/`tracestate`,
/// relayed from PostgreSQL; the consumer reads both values byte-exact where that
/// broker's consumers look for them (AMQP headers, Kafka record headers, SQS and
/// Pub/Sub attributes, the Kinesis envelope's headers).
pub fn trace_context_from_postgres<H: StreamHarness>() {
    use outboxer::{Message, Outbox, TraceContext};
    let _g = read();
    let (dest, consumer) = H::destination(&unique("s_tc"));
    let table = unique("tc");
    let outbox = Outbox::builder()
        .store(crate::common::store(&table))
        .stream(H::stream())
        .check_interval(Duration::from_millis(20))
        .build()
        .expect("outbox");
    let tp = |n: u8| format!("00-4bf92f3577b34da6a3ce929d0e0e47{n:02x}-00f067aa0ba902b7-01");
    let state = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE";
    let mut crowded = Message::new(b"crowded".to_vec())
        .route(dest.clone())
        .trace_context(tp(1), Some(state));
    for i in 0..9 {
        crowded = crowded.header(format!("a{i}"), "v");
    }
    let sent = vec![
        crowded,
        Message::new(b"no state".to_vec())
            .route(dest.clone())
            .trace_context(tp(2), None),
        Message::new(b"none".to_vec()).route(dest.clone()),
    ];
    outbox.send_batch(&sent).expect("send");
    // A writer in another language: the same headers, set with plain SQL.
    let headers = serde_json::json!({"traceparent": tp(3), "tracestate": state});
    let options = serde_json::Value::Object(dest.clone().into_iter().collect());
    crate::common::pg()
        .execute(
            &format!("INSERT INTO \"{table}\" (payload, options, headers) VALUES ($1, $2, $3)"),
            &[&b"plain sql".to_vec(), &options, &headers],
        )
        .expect("plain-SQL insert");
    let relay = outbox.start().expect("start");
    let got = consumer.receive(4, Duration::from_secs(60));
    relay.stop().expect("stop");
    assert_eq!(got.len(), 4, "{got:?}");
    let by_body = |b: &[u8]| {
        got.iter()
            .find(|r| r.payload == b)
            .unwrap_or_else(|| panic!("{:?} received", String::from_utf8_lossy(b)))
    };
    for (body, want_tp, want_state) in [
        (&b"crowded"[..], Some(tp(1)), Some(state)),
        (b"no state", Some(tp(2)), None),
        (b"none", None, None),
        (b"plain sql", Some(tp(3)), Some(state)),
    ] {
        let r = by_body(body);
        let what = String::from_utf8_lossy(body);
        assert_eq!(r.headers.get("traceparent"), want_tp.as_ref(), "{what}");
        assert_eq!(
            r.headers.get("tracestate").map(String::as_str),
            want_state,
            "{what}"
        );
        let ctx = TraceContext::from_headers(&r.headers);
        assert_eq!(ctx.map(|c| c.traceparent().to_string()), want_tp, "{what}");
    }
    assert_eq!(
        by_body(b"crowded").headers.get("a8").map(String::as_str),
        Some("v")
    );
    crate::common::drop_table(&table);
}

/// Typed payloads end to end, the same for every stream: a struct sent with
/// `Message::json` through the relay from PostgreSQL comes back equal through the
/// stream's `outboxer::decode` entry point, with its message id and exactly its
/// headers; a payload that is not JSON, a content type that is not JSON and
/// another producer's message (no outboxer id) are typed errors naming the stream.
pub fn json_payload_from_postgres<H: StreamHarness>() {
    use outboxer::decode::DecodeCause;
    use outboxer::{Message, Outbox, CONTENT_TYPE_HEADER, JSON_CONTENT_TYPE};
    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct OrderPaid {
        order: u64,
        customer: String,
        lines: Vec<(String, u32)>,
        note: Option<String>,
    }
    let _g = read();
    let (dest, consumer) = H::destination(&unique("s_json"));
    let table = unique("json");
    let stream = H::stream();
    let name = stream.name().to_string();
    let outbox = Outbox::builder()
        .store(crate::common::store(&table))
        .stream(stream)
        .check_interval(Duration::from_millis(20))
        .build()
        .expect("outbox");
    let order = OrderPaid {
        order: 42,
        customer: "Zoë \"Ω\" Ünal 🎉".into(),
        lines: vec![("tea".into(), 2), ("cake".into(), 1)],
        note: None,
    };
    let typed = Message::json(&order)
        .expect("serializes")
        .route(dest.clone())
        .header("tenant", "acme");
    let not_json = Message::new(b"{not json".to_vec())
        .route(dest.clone())
        .header(CONTENT_TYPE_HEADER, JSON_CONTENT_TYPE);
    let text = Message::new(br#"{"order":1}"#.to_vec())
        .route(dest.clone())
        .header(CONTENT_TYPE_HEADER, "text/plain");
    let ids = outbox.send_batch(&[typed, not_json, text]).expect("send");
    H::publish_foreign(&dest, br#"{"order":2}"#);
    let relay = outbox.start().expect("start");
    let got = consumer.receive(4, Duration::from_secs(60));
    relay.stop().expect("stop");
    assert_eq!(got.len(), 4, "{got:?}");
    let by_payload = |p: &[u8]| {
        got.iter()
            .find(|r| r.payload.starts_with(p))
            .unwrap_or_else(|| panic!("{:?} received", String::from_utf8_lossy(p)))
    };
    let cause_of = |e: &Error| match e {
        Error::Undecodable { stream, cause, .. } => {
            assert_eq!(*stream, name, "{e}");
            *cause
        }
        other => panic!("{other:?}"),
    };

    let incoming = by_payload(br#"{"order":42"#)
        .decoded
        .as_ref()
        .expect("decodes");
    let paid = incoming.json::<OrderPaid>().expect("typed");
    assert_eq!(paid.value, order);
    assert_eq!(paid.message_id, ids[0]);
    let headers = BTreeMap::from([
        (
            CONTENT_TYPE_HEADER.to_string(),
            JSON_CONTENT_TYPE.to_string(),
        ),
        ("tenant".to_string(), "acme".to_string()),
    ]);
    assert_eq!(paid.headers, headers, "exactly the headers enqueued");

    let incoming = by_payload(b"{not json").decoded.as_ref().expect("an id");
    assert_eq!(
        incoming.message_id, ids[1],
        "the id reads without the payload"
    );
    let e = incoming.json::<OrderPaid>().expect_err("not JSON");
    assert_eq!(cause_of(&e), DecodeCause::Payload);

    let incoming = by_payload(br#"{"order":1}"#)
        .decoded
        .as_ref()
        .expect("an id");
    assert_eq!(incoming.message_id, ids[2]);
    let e = incoming.json::<OrderPaid>().expect_err("text/plain");
    assert_eq!(cause_of(&e), DecodeCause::ContentType);

    let foreign = by_payload(br#"{"order":2}"#).decoded.as_ref();
    assert_eq!(
        cause_of(foreign.expect_err("no outboxer id")),
        DecodeCause::MessageId
    );
    crate::common::drop_table(&table);
}

/// A publish to a server that accepts connections and never answers returns by its
/// deadline, plus at most one request timeout, with a transient error for every
/// message (nothing lost, nothing parked).
pub fn publish_returns_by_the_deadline(
    mut stream: impl Stream,
    route: &Options,
    deadline: Duration,
    request_timeout: Duration,
) {
    let batch: Vec<StoredMessage> = (0..4)
        .map(|i| {
            let key = (i % 2 == 0).then_some("k");
            stored(i, vec![i as u8], route, key)
        })
        .collect();
    let started = std::time::Instant::now();
    let out = stream.publish(&batch, &outboxer::stream::Deadline::after(deadline));
    let took = started.elapsed();
    assert!(
        took <= deadline + request_timeout + Duration::from_millis(500),
        "publish took {took:?} (deadline {deadline:?}, request timeout {request_timeout:?})"
    );
    assert_eq!(out.len(), batch.len());
    for o in &out {
        assert!(matches!(o, Err(e) if e.is_transient()), "{o:?}");
    }
}

/// A relay (PostgreSQL store) whose stream talks to a server that never answers:
/// `stop()` returns within one request timeout (plus slack for the marks), the
/// claimed messages are released, none is parked and no attempt is counted.
pub fn relay_stops_within_one_request_timeout(
    stream: impl Stream,
    route: &Options,
    request_timeout: Duration,
) {
    use outboxer::{Message, Outbox};
    let table = unique("hung");
    let outbox = Outbox::builder()
        .store(crate::common::store(&table))
        .stream(stream)
        .lease(Duration::from_secs(60))
        .check_interval(Duration::from_millis(50))
        .build()
        .expect("outbox");
    let msgs: Vec<Message> = (0..3u8)
        .map(|i| Message::new(vec![i]).route(route.clone()))
        .collect();
    outbox.send_batch(&msgs).expect("send");
    let relay = outbox.start().expect("start");
    // The publish is under way: past the first request timeout, retrying.
    std::thread::sleep(request_timeout + Duration::from_millis(500));
    let started = std::time::Instant::now();
    relay.stop().expect("stop");
    let took = started.elapsed();
    assert!(
        took <= request_timeout + Duration::from_millis(1500),
        "stop took {took:?} (request timeout {request_timeout:?})"
    );
    let stats = outbox.stats().expect("stats");
    assert_eq!(
        (stats.pending, stats.parked, stats.leased),
        (3, 0, 0),
        "{stats:?}"
    );
    let attempts: i32 = crate::common::pg()
        .query_one(
            &format!("SELECT coalesce(max(attempts), 0)::int FROM \"{table}\""),
            &[],
        )
        .expect("attempts")
        .get(0);
    assert_eq!(attempts, 0, "no attempt counted");
    crate::common::drop_table(&table);
}

/// Expands the suite as `#[test]`s for a harness: the cases that drive `Stream`
/// directly and the relay case. `stream_conformance!(H, publish_only)` leaves the
/// relay case out, for a second destination kind of a stream whose relay case runs
/// with its first (SQS standard queues; it runs on FIFO queues, which keep key order).
#[macro_export]
macro_rules! stream_conformance {
    ($h:ty) => {
        $crate::stream_conformance!($h, publish_only);
        $crate::stream_conformance!(@tests $h,
            relay_end_to_end_from_postgres trace_context_from_postgres json_payload_from_postgres);
    };
    ($h:ty, publish_only) => {
        $crate::stream_conformance!(@tests $h,
            batch_roundtrip_byte_exact per_message_outcomes_in_a_batch per_key_order_in_a_batch
            oversize_and_invalid_rejected_at_send server_down_is_a_transient_error
            delivery_resumes_after_connections_are_cut);
    };
    (@tests $h:ty, $($name:ident)*) => {
        $(
            #[test]
            fn $name() {
                $crate::conformance::$name::<$h>();
            }
        )*
    };
}
