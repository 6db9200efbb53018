//! The relay's metrics against the real PostgreSQL and RabbitMQ: the library's
//! series read through a Prometheus recorder installed in this test process, and
//! the command's `/metrics`, `/healthz` and `/readyz` scraped over HTTP. Counters
//! are checked against what a consumer received and what the table parked.

mod common;

use common::prom::{free_addr, get, sample, series};
use common::*;
use outboxer::stream::amqp;
use outboxer::{FailureAction, Message, Outbox};
use std::collections::HashSet;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// One recorder per process: the tests of this file share it and tell their
/// series apart by the `table` label.
fn recorder() -> &'static metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: OnceLock<metrics_exporter_prometheus::PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .install_recorder()
            .expect("the only recorder of this process")
    })
}

/// Waits until `f` is true or `within` passed; returns its last answer.
fn until(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn library_counters_match_the_consumer_and_the_parked_row() {
    let handle = recorder();
    let table = unique("metrics_lib");
    let ex = unique("ex");
    let sink = Sink::new(&ex, "#");
    let outbox = Outbox::builder()
        .store(store(&table))
        .stream(stream())
        .check_interval(Duration::from_millis(50))
        .max_attempts(3)
        .backoff(Duration::from_millis(50), Duration::from_millis(100))
        .metrics_interval(Duration::from_millis(100))
        .build()
        .expect("outbox");
    let relay = outbox.start().expect("start");
    const N: usize = 40;
    let bad = outbox
        .send(Message::new(b"bad".to_vec()).route(amqp::topic("amq.nope", "k")))
        .expect("send bad");
    for i in 0..N {
        outbox
            .send(Message::new(format!("m{i}").into_bytes()).route(amqp::topic(&ex, "k")))
            .expect("send");
    }
    let got = sink.collect(N, Duration::from_secs(30));
    let received: HashSet<_> = got.iter().map(|g| g.message_id.clone()).collect();
    assert_eq!(
        received.len(),
        N,
        "the consumer received every good message"
    );
    assert!(
        until(Duration::from_secs(20), || {
            let s = outbox.stats().expect("stats");
            s.parked == 1 && s.pending == 0
        }),
        "the bad message parks: {:?}",
        outbox.stats()
    );
    // The gauges follow within a few metrics intervals.
    let t = table.as_str();
    assert!(
        until(Duration::from_secs(5), || {
            let text = handle.render();
            sample(&text, "outboxer_pending_messages", &[("table", t)]) == Some(0.0)
                && sample(&text, "outboxer_parked_messages", &[("table", t)]) == Some(1.0)
        }),
        "gauges: {}",
        handle.render()
    );
    relay.stop().expect("stop");
    let text = handle.render();
    let value = |name: &str, labels: &[(&str, &str)]| {
        let mut all = vec![("table", t)];
        all.extend_from_slice(labels);
        sample(&text, name, &all).unwrap_or(-1.0)
    };
    let good = [("stream", "amqp"), ("route", ex.as_str())];
    let nope = [("stream", "amqp"), ("route", "amq.nope")];
    assert_eq!(
        value("outboxer_messages_published_total", &good),
        N as f64,
        "published == received"
    );
    assert_eq!(value("outboxer_messages_published_total", &nope), 0.0);
    assert_eq!(value("outboxer_messages_parked_total", &nope), 1.0);
    assert_eq!(value("outboxer_messages_parked_total", &good), 0.0);
    // Every failed attempt of the bad message, as the err() channel reported them.
    let attempts = relay
        .err()
        .try_iter()
        .filter(|f| f.message_id == Some(bad))
        .filter(|f| matches!(f.action, FailureAction::Retry | FailureAction::Parked))
        .count();
    assert!(attempts >= 1);
    assert_eq!(
        value("outboxer_messages_failed_total", &nope),
        attempts as f64
    );
    assert_eq!(value("outboxer_messages_failed_total", &good), 0.0);
    assert_eq!(
        value("outboxer_messages_failed_total", &[]),
        relay.counters().failed as f64,
        "failed_total agrees with Relay::counters"
    );
    assert_eq!(value("outboxer_messages_released_total", &[]), 0.0);
    assert_eq!(value("outboxer_relay_starts_total", &[]), 1.0);
    assert_eq!(value("outboxer_outcomes_dropped_total", &[]), 0.0);
    // One lag sample per confirmed message; every claim and publish is timed.
    assert_eq!(
        value("outboxer_commit_to_publish_lag_seconds_count", &[]),
        N as f64
    );
    assert!(value("outboxer_claim_duration_seconds_count", &[]) >= 1.0);
    assert!(
        value(
            "outboxer_publish_duration_seconds_count",
            &[("stream", "amqp")]
        ) >= 1.0
    );
    assert!(value("outboxer_mark_duration_seconds_count", &[]) >= 1.0);
    assert_eq!(
        value("outboxer_batch_messages_sum", &[]),
        // The bad message is claimed once per attempt.
        (N + attempts) as f64,
        "batch sizes add up to the messages claimed"
    );
    assert_eq!(value("outboxer_oldest_pending_age_seconds", &[]), 0.0);
    drop_table(&table);
}

#[test]
fn the_route_label_can_be_turned_off() {
    let handle = recorder();
    let table = unique("metrics_noroute");
    let ex = unique("ex");
    let sink = Sink::new(&ex, "#");
    let outbox = Outbox::builder()
        .store(store(&table))
        .stream(stream())
        .check_interval(Duration::from_millis(50))
        .metrics_route_label(false)
        .build()
        .expect("outbox");
    let relay = outbox.start().expect("start");
    for i in 0..5 {
        outbox
            .send(Message::new(format!("m{i}").into_bytes()).route(amqp::topic(&ex, "k")))
            .expect("send");
    }
    assert_eq!(sink.collect(5, Duration::from_secs(30)).len(), 5);
    relay.stop().expect("stop");
    let text = handle.render();
    let mine: Vec<&str> = series(&text, "outboxer_messages_published_total")
        .into_iter()
        .filter(|l| l.contains(&format!("table=\"{table}\"")))
        .collect();
    assert_eq!(
        mine,
        vec![format!("table=\"{table}\",stream=\"amqp\"")],
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "outboxer_messages_published_total",
            &[("table", &table)]
        ),
        Some(5.0)
    );
    drop_table(&table);
}

/// `outboxer relay --listen`: the counters on /metrics equal what the consumer
/// received and what was parked; /healthz and /readyz answer 200 meanwhile.
#[cfg(feature = "cli")]
#[test]
fn the_command_serves_metrics_and_health() {
    use std::process::{Command, Stdio};
    let table = unique("metrics_cli");
    let ex = unique("ex");
    let sink = Sink::new(&ex, "#");
    let outbox = outbox(&table);
    let addr = free_addr();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_outboxer"));
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("OUTBOXER_")) {
        cmd.env_remove(k);
    }
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Kill(
        cmd.args(["relay", "--store", &pg_url(), "--table", &table])
            .args(["--stream", &amqp_url(), "--check-interval", "100ms"])
            .args([
                "--max-attempts",
                "2",
                "--backoff-base",
                "50ms",
                "--backoff-max",
                "100ms",
            ])
            .args(["--metrics-interval", "200ms"])
            .env("OUTBOXER_LISTEN", &addr)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn outboxer relay"),
    );
    assert!(
        until(Duration::from_secs(30), || get(&addr, "/healthz")
            .is_some_and(|(s, _)| s == 200)),
        "/healthz 200"
    );
    assert!(
        until(Duration::from_secs(10), || get(&addr, "/readyz")
            .is_some_and(|(s, _)| s == 200)),
        "/readyz 200: {:?}",
        get(&addr, "/readyz")
    );
    const N: usize = 60;
    outbox
        .send(Message::new(b"bad".to_vec()).route(amqp::topic("amq.nope", "k")))
        .expect("send bad");
    for i in 0..N {
        outbox
            .send(Message::new(format!("m{i}").into_bytes()).route(amqp::topic(&ex, "k")))
            .expect("send");
        if i == N / 2 {
            // A scrape during the run.
            let (status, text) = get(&addr, "/metrics").expect("/metrics");
            assert_eq!(status, 200);
            assert_eq!(
                sample(&text, "outboxer_up", &[("table", &table)]),
                Some(1.0)
            );
        }
    }
    let got = sink.collect(N, Duration::from_secs(30));
    let received: HashSet<_> = got.iter().map(|g| g.message_id.clone()).collect();
    assert_eq!(received.len(), N);
    assert!(
        until(Duration::from_secs(20), || {
            let s = outbox.stats().expect("stats");
            s.parked == 1 && s.pending == 0
        }),
        "the bad message parks"
    );
    let t = table.as_str();
    let scrape = || get(&addr, "/metrics").map(|(_, b)| b).unwrap_or_default();
    assert!(
        until(Duration::from_secs(5), || {
            let text = scrape();
            sample(&text, "outboxer_messages_published_total", &[("table", t)]) == Some(N as f64)
                && sample(&text, "outboxer_parked_messages", &[("table", t)]) == Some(1.0)
                && sample(&text, "outboxer_pending_messages", &[("table", t)]) == Some(0.0)
        }),
        "{}",
        scrape()
    );
    let text = scrape();
    fn labels<'a>(t: &'a str, r: &'a str) -> [(&'static str, &'a str); 3] {
        [("table", t), ("stream", "amqp"), ("route", r)]
    }
    let route = |r| labels(t, r);
    assert_eq!(
        sample(&text, "outboxer_messages_published_total", &route(&ex)),
        Some(received.len() as f64),
        "published == received"
    );
    assert_eq!(
        sample(&text, "outboxer_messages_parked_total", &route("amq.nope")),
        Some(1.0)
    );
    let failed = sample(&text, "outboxer_messages_failed_total", &route("amq.nope"));
    assert!(
        failed.is_some_and(|f| (1.0..=2.0).contains(&f)),
        "{failed:?}"
    );
    assert!(
        text.contains("outboxer_claim_duration_seconds_bucket{"),
        "histograms have buckets"
    );
    assert_eq!(get(&addr, "/healthz").map(|(s, _)| s), Some(200));
    assert_eq!(get(&addr, "/nope").map(|(s, _)| s), Some(404));
    let st = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .expect("kill");
    assert!(st.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.0.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "relay did not stop");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    assert!(
        get(&addr, "/healthz").is_none(),
        "the server stopped with the relay"
    );
    drop_table(&table);
}

/// The series a healthy run against real servers leaves at zero: released
/// (an outage), dropped outcomes, panics. On the in-memory store and the
/// scripted broker of `outboxer::testing` (table label `outbox`, stream
/// `custom`), in this process's recorder.
#[cfg(feature = "testing")]
#[test]
fn outages_dropped_outcomes_and_panics_are_counted() {
    use outboxer::testing::{MemoryStore, PublishFault, ScriptedStream};
    let handle = recorder();
    let (store, stream) = (MemoryStore::new(), ScriptedStream::new());
    let outbox = Outbox::builder()
        .store(store.clone())
        .stream(stream.clone())
        .check_interval(Duration::from_millis(5))
        .channel_capacity(1)
        .build()
        .expect("outbox");
    let relay = outbox.start().expect("start");
    let value = |name: &str, labels: &[(&str, &str)]| {
        let mut all = vec![("table", "outbox")];
        all.extend_from_slice(labels);
        sample(&handle.render(), name, &all).unwrap_or(0.0)
    };
    // An outage: released without an attempt, counted as failed and released.
    stream.fail_where(|_| true, PublishFault::Unavailable);
    outbox.send(Message::new(b"a".to_vec())).expect("send");
    assert!(until(Duration::from_secs(5), || value(
        "outboxer_messages_released_total",
        &[("stream", "custom")]
    ) >= 1.0));
    assert!(value("outboxer_messages_failed_total", &[]) >= 1.0);
    assert_eq!(value("outboxer_messages_parked_total", &[]), 0.0);
    stream.clear();
    // Nobody reads ok() (capacity 1) and err() is full of the outage: the rest drop.
    for i in 0..5u8 {
        outbox.send(Message::new(vec![i])).expect("send");
    }
    assert_eq!(stream.wait_for(6, Duration::from_secs(10)).len(), 6);
    assert!(until(Duration::from_secs(5), || value(
        "outboxer_outcomes_dropped_total",
        &[("channel", "ok")]
    ) == 5.0));
    assert_eq!(
        value("outboxer_outcomes_dropped_total", &[("channel", "ok")]),
        relay.counters().dropped_ok as f64
    );
    // A panicking publisher stops the relay and is counted by thread.
    stream.fail_next(PublishFault::CrashAfterPublish);
    outbox.send(Message::new(b"boom".to_vec())).expect("send");
    assert!(until(Duration::from_secs(5), || value(
        "outboxer_relay_panics_total",
        &[("thread", "publisher")]
    ) == 1.0));
    assert!(relay.stop().is_err(), "stop reports the panic");
    assert_eq!(value("outboxer_relay_starts_total", &[]), 1.0);
}
