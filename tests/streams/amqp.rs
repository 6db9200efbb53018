//! RabbitMQ (OUTBOXER_AMQP_URL, default the local broker).

use crate::common::stream_harness::{Amqp, StreamHarness as _};
use crate::common::{amqp_url, Sink};
use outboxer::stream::amqp::{self, AmqpStream};
use outboxer::Options;
use std::time::Duration;

stream_conformance!(Amqp);

/// The same suite over `amqps://` (issue 14): the broker's TLS listener on
/// 127.0.0.1:5671 (scripts/tls/rabbitmq.sh), verified against the test CA;
/// the consumers stay on the plaintext port.
mod over_tls {
    use crate::common::stream_harness::{Amqp, StreamHarness};
    use crate::common::{tls, Sink};
    use outboxer::stream::AmqpStream;
    use outboxer::Options;

    pub struct AmqpTls;

    fn url(port: u16) -> String {
        format!(
            "amqps://guest:guest@localhost:{port}/%2f?cacertfile={}",
            tls::ca().display()
        )
    }

    impl StreamHarness for AmqpTls {
        type S = AmqpStream;
        type C = Sink;
        fn stream() -> AmqpStream {
            AmqpStream::connect(&url(5671))
                .expect("RabbitMQ's TLS listener on 127.0.0.1:5671 (scripts/test-services up)")
        }
        fn unreachable() -> AmqpStream {
            AmqpStream::builder(&url(1)).build().expect("valid URL")
        }
        fn destination(name: &str) -> (Options, Sink) {
            Amqp::destination(name)
        }
        fn refused_destination(name: &str) -> Options {
            Amqp::refused_destination(name)
        }
        fn invalid_options() -> Options {
            Amqp::invalid_options()
        }
        fn max_message_size() -> usize {
            Amqp::max_message_size()
        }
        fn cut_connections() {
            Amqp::cut_connections()
        }
        fn publish_foreign(dest: &Options, payload: &[u8]) {
            Amqp::publish_foreign(dest, payload)
        }
    }

    stream_conformance!(AmqpTls);
}

// ---- Issue 12: refusals that close the channel, returns, credentials, deadlines ----

use crate::common::amqp_faults::{broker_addr, AmqpCutProxy, RabbitUser, SilentServer};
use crate::common::{deadline, unique};
use outboxer::stream::Deadline;
use outboxer::{Error, MessageId, StoredMessage, Stream};
use std::time::{Instant, SystemTime};

/// Cases that cut every connection (`delivery_resumes_after_connections_are_cut`)
/// run alone; these share the broker with each other.
fn shared() -> std::sync::RwLockReadGuard<'static, ()> {
    crate::conformance::DISRUPTION
        .read()
        .unwrap_or_else(|e| e.into_inner())
}

fn msg(id: i64, payload: &[u8], options: &Options) -> StoredMessage {
    StoredMessage {
        id,
        message_id: MessageId::new(),
        payload: payload.to_vec(),
        headers: Default::default(),
        options: options.clone(),
        ordering_key: None,
        attempts: 0,
        created_at: SystemTime::now(),
    }
}

/// Runs `f` on a channel of a connection of its own (test setup).
fn admin<T>(f: impl FnOnce(&amiquip::Channel) -> amiquip::Result<T>) -> T {
    let mut conn = amiquip::Connection::insecure_open(&amqp_url()).expect("admin connection");
    let ch = conn.open_channel(None).expect("admin channel");
    let out = f(&ch).expect("admin call");
    let _ = conn.close();
    out
}

/// A durable direct exchange, so that a topic declaration of the same name clashes.
pub fn direct_exchange(name: &str) {
    admin(|ch| {
        ch.exchange_declare(
            amiquip::ExchangeType::Direct,
            name,
            amiquip::ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
        )
        .map(|_| ())
    })
}

/// `bad` ahead of ten good messages in one batch: the bad one fails alone as a
/// message failure (Rejected), the ten are confirmed and delivered, and the stream
/// keeps publishing afterwards.
fn refused_ahead_of_ten_good(bad: Options) {
    let _shared = shared();
    let ex = unique("s_refused");
    let sink = Sink::new(&ex, "#");
    let good: Options = amqp::topic(&ex, "k").into();
    let mut s = Amqp::stream();
    let mut batch = vec![msg(1, b"bad", &bad)];
    batch.extend((0..10).map(|i| msg(2 + i, format!("good {i}").as_bytes(), &good)));
    let started = Instant::now();
    let out = s.publish(&batch, &deadline());
    assert!(
        matches!(&out[0], Err(Error::Rejected(_))),
        "the refused message fails as a message failure: {:?}",
        out[0]
    );
    assert!(
        out[1..].iter().all(|o| o.is_ok()),
        "the rest of the batch is republished on a new channel: {out:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "promptly: {:?}",
        started.elapsed()
    );
    let got = sink.collect(10, Duration::from_secs(10));
    assert_eq!(crate::common::counts(&got).len(), 10, "the ten arrived");
    let again = s.publish(&[msg(20, b"after", &good)], &deadline());
    assert!(again[0].is_ok(), "later batches flow: {again:?}");
    s.close();
}

#[test]
fn missing_amq_exchange_fails_alone() {
    // amq.* exchanges are never declared; RabbitMQ closes the channel on the publish.
    refused_ahead_of_ten_good(amqp::topic("amq.nope", "k").into());
}

#[test]
fn internal_exchange_fails_alone() {
    refused_ahead_of_ten_good(
        amqp::topic(&unique("s_internal"), "k")
            .internal(true)
            .into(),
    );
}

#[test]
fn exchange_type_clash_fails_alone() {
    let name = unique("s_clash");
    direct_exchange(&name);
    refused_ahead_of_ten_good(amqp::topic(&name, "k").into());
}

#[test]
fn exchange_type_clash_declared_no_wait_fails_alone() {
    let name = unique("s_clash_nw");
    direct_exchange(&name);
    refused_ahead_of_ten_good(amqp::topic(&name, "k").no_wait(true).into());
}

#[test]
fn several_refusals_in_one_batch_each_fail_alone() {
    let _shared = shared();
    let ex = unique("s_several");
    let sink = Sink::new(&ex, "#");
    let good: Options = amqp::topic(&ex, "k").into();
    let clash = unique("s_sev_clash");
    direct_exchange(&clash);
    let bad: Vec<Options> = vec![
        amqp::topic("amq.nope", "k").into(),
        amqp::topic(&unique("s_sev_int"), "k").internal(true).into(),
        amqp::topic(&clash, "k").no_wait(true).into(),
        amqp::topic("amq.nope.too", "k").into(),
    ];
    let mut s = Amqp::stream();
    let mut batch = Vec::new();
    for (i, b) in bad.iter().enumerate() {
        batch.push(msg(
            batch.len() as i64,
            format!("good {i}").as_bytes(),
            &good,
        ));
        batch.push(msg(batch.len() as i64, b"bad", b));
    }
    batch.push(msg(batch.len() as i64, b"good last", &good));
    let out = s.publish(&batch, &deadline());
    for (m, o) in batch.iter().zip(&out) {
        if m.payload == b"bad" {
            assert!(matches!(o, Err(Error::Rejected(_))), "bad: {o:?}");
        } else {
            assert!(o.is_ok(), "good: {o:?}");
        }
    }
    let got = sink.collect(5, Duration::from_secs(10));
    assert_eq!(crate::common::counts(&got).len(), 5);
    s.close();
}

#[test]
fn a_return_counts_when_the_connection_drops_after_the_first_confirm() {
    let _shared = shared();
    let ex = unique("s_cut_ret");
    let sink = Sink::new(&ex, "good.#");
    let proxy = AmqpCutProxy::start(&broker_addr());
    let mut s = AmqpStream::builder(&proxy.url()).build().expect("stream");
    // Connect (and declare) before arming the proxy.
    let warm = s.publish(
        &[msg(0, b"warm", &amqp::topic(&ex, "good.w").into())],
        &deadline(),
    );
    assert!(warm[0].is_ok(), "{warm:?}");
    proxy.cut_after_acks(2); // the warm-up ack was the first
    let returned = msg(1, b"nobody listens", &amqp::topic(&ex, "bad.x").into());
    let mut batch = vec![returned];
    batch.extend((0..20).map(|i| msg(2 + i, b"good", &amqp::topic(&ex, "good.x").into())));
    let out = s.publish(&batch, &deadline());
    assert_eq!(
        proxy.cuts(),
        1,
        "the connection was cut after the first confirm"
    );
    assert!(
        out[0].is_err(),
        "returned then acked, the connection lost before the batch ended: never Ok: {:?}",
        out[0]
    );
    // Every message reported Ok did arrive.
    let oks: Vec<String> = batch
        .iter()
        .zip(&out)
        .filter(|(_, o)| o.is_ok())
        .map(|(m, _)| m.message_id.to_string())
        .collect();
    let got = sink.collect(oks.len() + 1, Duration::from_secs(5));
    let c = crate::common::counts(&got);
    for id in &oks {
        assert!(c.contains_key(id), "reported Ok but not delivered: {id}");
    }
    s.close();
}

#[test]
fn a_return_does_not_hit_another_message_with_the_same_id() {
    let _shared = shared();
    let ex = unique("s_dup_id");
    let sink = Sink::new(&ex, "good.#");
    let mut s = Amqp::stream();
    let returned = msg(1, b"nobody listens", &amqp::topic(&ex, "bad.x").into());
    let mut twin = msg(2, b"delivered", &amqp::topic(&ex, "good.x").into());
    twin.message_id = returned.message_id;
    let out = s.publish(&[returned, twin], &deadline());
    assert!(
        matches!(&out[0], Err(Error::Unroutable { .. })),
        "the returned copy is never Ok: {:?}",
        out[0]
    );
    if out[1].is_ok() {
        assert_eq!(sink.collect(1, Duration::from_secs(5)).len(), 1);
    }
    s.close();
}

#[test]
fn wrong_password_is_unauthorized_for_every_message() {
    let _shared = shared();
    let ex = unique("s_badpw");
    let _sink = Sink::new(&ex, "#");
    let url = amqp_url().replacen("guest:guest", "guest:wrong-password", 1);
    let mut s = AmqpStream::builder(&url).build().expect("stream");
    let batch: Vec<StoredMessage> = (0..3)
        .map(|i| msg(i, b"x", &amqp::topic(&ex, "k").into()))
        .collect();
    let out = s.publish(&batch, &deadline());
    for o in &out {
        assert!(
            matches!(o, Err(e @ Error::Unauthorized { .. }) if e.is_transient()),
            "{o:?}"
        );
        assert!(
            !format!("{o:?}").contains("wrong-password"),
            "no secret in {o:?}"
        );
    }
}

#[test]
fn no_access_to_the_vhost_is_unauthorized() {
    let _shared = shared();
    let user = RabbitUser::new("ob_novhost", None);
    let ex = unique("s_novhost");
    let _sink = Sink::new(&ex, "#");
    let mut s = AmqpStream::builder(&user.url()).build().expect("stream");
    let out = s.publish(&[msg(1, b"x", &amqp::topic(&ex, "k").into())], &deadline());
    assert!(
        matches!(&out[0], Err(Error::Unauthorized { .. })),
        "{out:?}"
    );
}

/// The idle check (`Stream::check`) needs no permission: a user allowed nothing
/// on the vhost but in it passes, and the stream knows its name and routes.
#[test]
fn the_idle_check_passes_with_no_permissions_and_fails_on_a_dead_broker() {
    use outboxer::Stream as _;
    let _shared = shared();
    let user = RabbitUser::new("ob_noperm", Some(("^$", "^$", "^$")));
    let mut s = AmqpStream::builder(&user.url()).build().expect("stream");
    let check = |s: &mut AmqpStream| s.check(&deadline()).expect("AMQP checks");
    check(&mut s).expect("a passive declare of amq.direct needs no permission");
    check(&mut s).expect("again, on the same connection");
    assert_eq!(s.name(), "amqp");
    let o: Options = amqp::topic("orders", "orders.paid").into();
    assert_eq!(s.route_label(&o), Some("orders"));
    let mut down = AmqpStream::builder("amqp://guest:guest@127.0.0.1:1/%2f")
        .build()
        .expect("stream");
    let e = check(&mut down).expect_err("nothing listens on port 1");
    assert!(e.is_transient(), "{e:?}");
}

#[test]
fn write_refused_on_one_exchange_is_an_outage_for_its_messages_only() {
    let _shared = shared();
    let allowed = unique("ob_ok");
    let denied = unique("ob_denied");
    let user = RabbitUser::new("ob_nowrite", Some((".*", &format!("^{allowed}$"), ".*")));
    let sink = Sink::new(&allowed, "#");
    let _denied_sink = Sink::new(&denied, "#");
    let mut s = AmqpStream::builder(&user.url()).build().expect("stream");
    let batch = vec![
        msg(1, b"denied", &amqp::topic(&denied, "k").into()),
        msg(2, b"allowed", &amqp::topic(&allowed, "k").into()),
        msg(3, b"denied too", &amqp::topic(&denied, "k").into()),
        msg(4, b"allowed too", &amqp::topic(&allowed, "k").into()),
    ];
    let out = s.publish(&batch, &deadline());
    for i in [0, 2] {
        assert!(
            matches!(&out[i], Err(e @ Error::Unauthorized { .. }) if e.is_transient()),
            "a refused permission is an outage, not a bad message: {:?}",
            out[i]
        );
    }
    assert!(
        out[1].is_ok() && out[3].is_ok(),
        "other exchanges flow: {out:?}"
    );
    assert_eq!(sink.collect(2, Duration::from_secs(10)).len(), 2);
    s.close();
}

#[test]
fn a_silent_server_costs_at_most_the_connection_timeout() {
    let _shared = shared();
    let server = SilentServer::start();
    let mut s = AmqpStream::builder(&server.url(Duration::from_millis(500)))
        .build()
        .expect("stream");
    let batch = vec![msg(1, b"x", &amqp::queue("q").into())];
    let started = Instant::now();
    let out = s.publish(&batch, &deadline());
    let took = started.elapsed();
    assert!(matches!(&out[0], Err(e) if e.is_transient()), "{out:?}");
    assert!(
        took < Duration::from_millis(1500),
        "bounded by the connection timeout: {took:?}"
    );
    assert_eq!(server.accepted(), 1);
    // The publish deadline bounds the connect too, below the connection timeout.
    let mut s = AmqpStream::builder(&server.url(Duration::from_secs(20)))
        .build()
        .expect("stream");
    let started = Instant::now();
    let out = s.publish(&batch, &Deadline::after(Duration::from_millis(300)));
    let took = started.elapsed();
    assert!(matches!(&out[0], Err(Error::Timeout(_))), "{out:?}");
    assert!(
        took < Duration::from_millis(1300),
        "bounded by the deadline: {took:?}"
    );
}

#[test]
fn an_expired_deadline_starts_no_connection() {
    let _shared = shared();
    let server = SilentServer::start();
    let mut s = AmqpStream::builder(&server.url(Duration::from_secs(20)))
        .build()
        .expect("stream");
    let out = s.publish(
        &[msg(1, b"x", &amqp::queue("q").into())],
        &Deadline::after(Duration::ZERO),
    );
    assert!(matches!(&out[0], Err(Error::Timeout(_))), "{out:?}");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        server.accepted(),
        0,
        "no connection attempt after the deadline"
    );
}

#[test]
fn a_broker_silent_mid_batch_costs_at_most_the_confirm_timeout() {
    let _shared = shared();
    let ex = unique("s_frozen");
    let _sink = Sink::new(&ex, "#");
    let proxy = AmqpCutProxy::start(&broker_addr());
    let mut s = AmqpStream::builder(&proxy.url())
        .confirm_timeout(Duration::from_secs(1))
        .build()
        .expect("stream");
    let route: Options = amqp::topic(&ex, "k").into();
    assert!(s.publish(&[msg(0, b"warm", &route)], &deadline())[0].is_ok());
    proxy.freeze_after_acks(1);
    let batch: Vec<StoredMessage> = (1..4).map(|i| msg(i, b"x", &route)).collect();
    let started = Instant::now();
    let out = s.publish(&batch, &deadline());
    let took = started.elapsed();
    for o in &out {
        assert!(matches!(o, Err(Error::Timeout(_))), "{o:?}");
    }
    assert!(
        took < Duration::from_millis(2500),
        "one confirm timeout, the hung connection dropped without waiting: {took:?}"
    );
    let started = Instant::now();
    s.close();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "close is bounded"
    );
}

// ---- Issue 13: the stream's connection setup and wire format, exported ----

/// `open_connection` + `open_confirm_channel` + `message_properties` publish as the
/// stream does: acked, not returned, with the message id as property and header.
#[test]
fn open_connection_publishes_with_confirms_and_the_streams_properties() {
    let _shared = shared();
    let mut conn = amqp::open_connection(&amqp_url()).expect("open_connection");
    let (channel, confirms, returns) = amqp::open_confirm_channel(&mut conn).expect("channel");
    let queue = channel
        .queue_declare(
            unique("open_conn"),
            amiquip::QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
        )
        .expect("queue");
    let id = MessageId::new();
    let headers = [("h".to_string(), "v".to_string())].into_iter().collect();
    let props = amqp::message_properties(id, &headers, SystemTime::now());
    let publish = amiquip::Publish {
        mandatory: true,
        ..amiquip::Publish::with_properties(b"p", queue.name(), props)
    };
    channel.basic_publish("", publish).expect("publish");
    match confirms.recv_timeout(Duration::from_secs(10)) {
        Ok(amiquip::Confirm::Ack(a)) => assert_eq!(a.delivery_tag, 1),
        other => panic!("expected an ack: {other:?}"),
    }
    assert!(returns.try_recv().is_err(), "routable: not returned");
    let got = (0..100)
        .find_map(|_| {
            let g = queue.get(true).expect("get");
            if g.is_none() {
                std::thread::sleep(Duration::from_millis(20));
            }
            g
        })
        .expect("the message is in the queue");
    let p = &got.delivery.properties;
    assert_eq!(p.message_id().as_deref(), Some(id.to_string().as_str()));
    assert_eq!(*p.delivery_mode(), Some(2));
    let h = p.headers().as_ref().expect("headers");
    for (k, v) in [
        ("h", "v".to_string()),
        (outboxer::MESSAGE_ID_HEADER, id.to_string()),
    ] {
        assert!(
            matches!(h.get(k), Some(amiquip::AmqpValue::LongString(s)) if *s == v),
            "{k}: {h:?}"
        );
    }
    conn.close().expect("close");
}

/// A URL the stream refuses is refused alike, with its password redacted.
#[test]
fn open_connection_refuses_what_the_stream_refuses() {
    for url in [
        "amqp://u:s3cret@127.0.0.1:5672/%zz",
        "amqps://u:s3cret@127.0.0.1:5671/%2f?verify=verify_none",
        "amqp://u:s3cret@127.0.0.1:5672/%2f?cacertfile=/ca.pem",
        "amqp://u:s3cret@127.0.0.1:5672/%2f?frame_max=1",
    ] {
        match amqp::open_connection(url) {
            Err(Error::InvalidUrl { url: shown, .. }) => {
                assert!(!shown.contains("s3cret"), "{shown}")
            }
            other => panic!("{url}: expected InvalidUrl, got {:?}", other.map(|_| ())),
        }
        assert!(matches!(
            AmqpStream::builder(url).build(),
            Err(Error::InvalidUrl { .. })
        ));
    }
}
