//! Store conformance: a real relay on each store, publishing to RabbitMQ (the
//! helpers in tests/common need the postgres and amqp features).

use super::*;

/// The relay end to end on this store: two relays, keyed and unkeyed messages,
/// consumed from a bound RabbitMQ queue: all delivered once, per-key order kept.
/// One relay claims by row locks and deletes what it dispatched, the other
/// leases and keeps dispatched rows (a rolling upgrade mixes them).
#[cfg(all(feature = "postgres", feature = "amqp"))]
pub fn relay_end_to_end_with_amqp<H: Harness>() {
    use crate::common::{counts, Sink};
    use outboxer::stream::{amqp, AmqpStream};
    use outboxer::Outbox;
    let t = unique("c_e2e");
    let ex = unique("ex");
    let sink = Sink::new(&ex, "#");
    let modes = [
        (outboxer::ClaimMode::RowLocks, Duration::ZERO),
        (outboxer::ClaimMode::Leases, Duration::from_secs(3600)),
    ];
    let outboxes: Vec<_> = modes
        .iter()
        .map(|(mode, keep)| {
            Outbox::builder()
                .store(store::<H>(&t))
                .stream(AmqpStream::connect(&crate::common::amqp_url()).expect("RabbitMQ"))
                .batch_size(50)
                .check_interval(Duration::from_millis(20))
                .claim_mode(*mode)
                .cleanup_before(*keep)
                .build()
                .expect("outbox")
        })
        .collect();
    let relays: Vec<_> = outboxes.iter().map(|o| o.start().expect("start")).collect();
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
        outboxes[0].send_batch(chunk).expect("send");
    }
    let got = sink.collect(N, Duration::from_secs(120));
    let c = counts(&got);
    assert_eq!(c.len(), N, "all delivered");
    assert!(c.values().all(|n| *n == 1), "no duplicates");
    let mut last = std::collections::HashMap::new();
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
    let mut by_relay = Vec::new();
    for r in &relays {
        r.stop().expect("stop");
        by_relay.push(r.counters().published);
    }
    let st = outboxes[0].stats().expect("stats");
    assert_eq!((st.pending, st.parked), (0, 0));
    assert_eq!(by_relay.iter().sum::<u64>(), N as u64, "{by_relay:?}");
    assert_eq!(
        st.dispatched, by_relay[1],
        "the leasing relay kept its rows, the other deleted its own ({by_relay:?})"
    );
    H::drop_table(&t);
}

/// A real relay on a table where plain SQL wrote bad rows between good ones: the
/// good ones are delivered within seconds, each bad one is parked alone with a
/// `last_error` that names what is wrong.
#[cfg(all(feature = "postgres", feature = "amqp"))]
pub fn relay_parks_undecodable_rows_alone<H: Harness>() {
    use crate::common::Sink;
    use outboxer::stream::AmqpStream;
    use outboxer::Outbox;
    let t = unique("c_undec_e2e");
    let ex = unique("ex");
    let sink = Sink::new(&ex, "#");
    let s = store::<H>(&t);
    let good =
        format!(r#"{{"exchange.name": "{ex}", "exchange.type": "topic", "routing_key": "r"}}"#);
    let bad: [(&str, Option<&str>, Option<String>, &str); 5] = [
        ("bad 1", Some("[]"), Some(good.clone()), "headers"),
        ("bad 2", Some(r#""x""#), Some(good.clone()), "headers"),
        ("bad 3", Some("1"), Some(good.clone()), "headers"),
        ("bad 4", None, Some("[]".into()), "options"),
        (
            "bad 5",
            None,
            Some(format!(
                r#"{{"exchange.name": "{ex}", "routing_key": "r", "exchange.durable": "yes"}}"#
            )),
            "exchange.durable",
        ),
    ];
    let mut inserts = Vec::new();
    for i in 0..10 {
        inserts.push(H::insert_sql(
            &t,
            &format!("good {i}"),
            Some(r#"{"a": "b"}"#),
            Some(&good),
            None,
        ));
        if let Some((p, h, o, _)) = bad.get(i) {
            inserts.push(H::insert_sql(&t, p, *h, o.as_deref(), None));
        }
    }
    H::exec(&inserts);
    let outbox = Outbox::builder()
        .store(s.clone())
        .stream(AmqpStream::connect(&crate::common::amqp_url()).expect("RabbitMQ"))
        .batch_size(50)
        .check_interval(Duration::from_millis(20))
        .build()
        .expect("outbox");
    let relay = outbox.start().expect("start");
    let got = sink.collect(10, Duration::from_secs(10));
    let mut bodies: Vec<String> = got
        .iter()
        .map(|g| String::from_utf8_lossy(&g.body).into_owned())
        .collect();
    bodies.sort();
    bodies.dedup();
    assert_eq!(
        bodies,
        (0..10).map(|i| format!("good {i}")).collect::<Vec<_>>()
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let parked = loop {
        let p = s.parked(10).expect("parked");
        if p.len() >= bad.len() || std::time::Instant::now() > deadline {
            break p;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    relay.stop().expect("stop");
    assert_eq!(parked.len(), bad.len(), "{parked:?}");
    for (p, (_, _, _, names)) in parked.iter().zip(&bad) {
        let e = p.last_error.as_deref().unwrap_or("");
        assert!(e.contains(names), "row {}: {e:?} names {names}", p.id);
    }
    let st = s.stats().expect("stats");
    assert_eq!(
        (st.pending, st.dispatched, st.parked),
        (0, 0, 5),
        "the good rows dispatched and deleted: {st:?}"
    );
    H::drop_table(&t);
}

/// A real relay with a long check interval: a message delayed by 1.5 s is not
/// published before it is due, and is published soon after (the idle relay sleeps
/// until the next due time, not for its whole check interval).
#[cfg(all(feature = "postgres", feature = "amqp"))]
pub fn relay_publishes_a_delayed_message_when_due<H: Harness>() {
    use crate::common::Sink;
    use outboxer::stream::{amqp, AmqpStream};
    use outboxer::Outbox;
    use std::time::Instant;
    let t = unique("c_delay_e2e");
    let ex = unique("ex");
    let sink = Sink::new(&ex, "#");
    let check = Duration::from_secs(5);
    let delay = Duration::from_millis(1500);
    let outbox = Outbox::builder()
        .store(store::<H>(&t))
        .stream(AmqpStream::connect(&crate::common::amqp_url()).expect("RabbitMQ"))
        .check_interval(check)
        .build()
        .expect("outbox");
    let relay = outbox.start().expect("start");
    let route = || amqp::topic(&ex, "delay");
    // The relay runs and goes idle after an undelayed message.
    let first = outbox
        .send(Message::new(b"now".to_vec()).route(route()))
        .expect("send");
    let d = relay
        .ok()
        .recv_timeout(Duration::from_secs(10))
        .expect("the undelayed one");
    assert_eq!(d.message_id, first);
    let began = Instant::now();
    let later = outbox
        .send(Message::new(b"later".to_vec()).route(route()).delay(delay))
        .expect("send");
    let d = relay
        .ok()
        .recv_timeout(Duration::from_secs(10))
        .expect("the delayed one");
    let took = began.elapsed();
    eprintln!("delayed by {delay:?}: published {took:?} after send");
    assert_eq!(d.message_id, later);
    assert!(
        took >= delay,
        "published {took:?} after send, before its delay"
    );
    assert!(
        took < delay + Duration::from_millis(800),
        "published {took:?} after send: not woken when due (check interval {check:?})"
    );
    let got = sink.collect(2, Duration::from_secs(10));
    let bodies: Vec<&[u8]> = got.iter().map(|g| g.body.as_slice()).collect();
    assert_eq!(bodies, vec![&b"now"[..], &b"later"[..]]);
    relay.stop().expect("stop");
    H::drop_table(&t);
}
