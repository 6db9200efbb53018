//! Feature `tracing` and the relay's log key-values, against real PostgreSQL and
//! RabbitMQ: a capturing `tracing::Subscriber` (written here, no subscriber crate)
//! sees the claim, publish and mark spans with the message ids and, on the
//! per-message publish spans, the stored traceparent; a capturing `log::Log` sees
//! the message id, row id and attempt as key-values of a per-message failure.
//! Both are process-wide, hence a test binary of their own.

mod common;

use common::*;
use outboxer::stream::amqp;
use outboxer::{Message, Outbox};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

/// A span as the capturing subscriber saw it.
#[derive(Clone, Debug)]
struct Captured {
    name: &'static str,
    parent: Option<u64>,
    fields: BTreeMap<String, String>,
}

#[derive(Default)]
struct Capture {
    next: AtomicU64,
    spans: Mutex<BTreeMap<u64, Captured>>,
}

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_string(), value.to_string());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().to_string(), format!("{value:?}"));
    }
}

impl Subscriber for &'static Capture {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, attrs: &Attributes<'_>) -> Id {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let mut fields = BTreeMap::new();
        attrs.record(&mut Fields(&mut fields));
        let parent = attrs.parent().map(Id::into_u64);
        self.spans.lock().unwrap_or_else(|e| e.into_inner()).insert(
            id,
            Captured {
                name: attrs.metadata().name(),
                parent,
                fields,
            },
        );
        Id::from_u64(id)
    }
    fn record(&self, span: &Id, values: &Record<'_>) {
        if let Some(s) = self
            .spans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(&span.into_u64())
        {
            values.record(&mut Fields(&mut s.fields));
        }
    }
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, _: &Event<'_>) {}
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

fn capture() -> &'static Capture {
    static CAPTURE: OnceLock<&'static Capture> = OnceLock::new();
    CAPTURE.get_or_init(|| {
        let c: &'static Capture = Box::leak(Box::default());
        tracing::subscriber::set_global_default(c).expect("the only global subscriber");
        c
    })
}

fn spans_named(name: &str) -> Vec<(u64, Captured)> {
    capture()
        .spans
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|(_, s)| s.name == name)
        .map(|(id, s)| (*id, s.clone()))
        .collect()
}

#[test]
fn relay_spans_carry_message_ids_and_traceparent() {
    capture();
    let table = unique("tr_spans");
    let ex = unique("ex");
    let sink = Sink::new(&ex, "#");
    let outbox = outbox(&table);
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let msgs = vec![
        Message::new(b"one".to_vec())
            .route(amqp::topic(&ex, "k"))
            .trace_context(tp, Some("congo=t61rcWkgMzE")),
        Message::new(b"two".to_vec()).route(amqp::topic(&ex, "k")),
        Message::new(b"three".to_vec()).route(amqp::topic(&ex, "k")),
    ];
    let ids: Vec<String> = outbox
        .send_batch(&msgs)
        .expect("send")
        .iter()
        .map(|i| i.to_string())
        .collect();
    let relay = outbox.start().expect("start");
    assert_eq!(sink.collect(3, Duration::from_secs(20)).len(), 3);
    relay.stop().expect("stop");

    // One transaction, one claim: each stage span lists all three ids.
    for stage in ["outboxer.claim", "outboxer.publish", "outboxer.mark"] {
        let spans = spans_named(stage);
        let (_, s) = spans
            .iter()
            .find(|(_, s)| s.fields.get("message_ids") == Some(&ids.join(",")))
            .unwrap_or_else(|| panic!("{stage} with ids {ids:?}: {spans:?}"));
        assert_eq!(
            s.fields.get("count").map(String::as_str),
            Some("3"),
            "{stage}"
        );
        assert_eq!(s.fields.get("first_message_id"), Some(&ids[0]), "{stage}");
        assert_eq!(s.fields.get("last_message_id"), Some(&ids[2]), "{stage}");
        assert!(s.fields.contains_key("first_id") && s.fields.contains_key("last_id"));
        if stage == "outboxer.mark" {
            assert_eq!(s.fields.get("dispatched").map(String::as_str), Some("3"));
        }
    }
    let publish: Vec<u64> = spans_named("outboxer.publish")
        .into_iter()
        .filter(|(_, s)| s.fields.get("message_ids") == Some(&ids.join(",")))
        .map(|(id, _)| id)
        .collect();
    let per_message: Vec<Captured> = spans_named("outboxer.message")
        .into_iter()
        .map(|(_, s)| s)
        .filter(|s| s.parent.is_some_and(|p| publish.contains(&p)))
        .collect();
    assert_eq!(per_message.len(), 3, "{per_message:?}");
    let traced = per_message
        .iter()
        .find(|s| s.fields.get("message_id") == Some(&ids[0]))
        .expect("the traced message's span");
    assert_eq!(
        traced.fields.get("traceparent").map(String::as_str),
        Some(tp)
    );
    assert_eq!(
        traced.fields.get("tracestate").map(String::as_str),
        Some("congo=t61rcWkgMzE")
    );
    assert_eq!(traced.fields.get("attempt").map(String::as_str), Some("1"));
    assert!(per_message
        .iter()
        .filter(|s| s.fields.get("message_id") != Some(&ids[0]))
        .all(|s| !s.fields.contains_key("traceparent")));
    drop_table(&table);
}

/// Log records with their key-values.
struct Logs(Mutex<Vec<(String, BTreeMap<String, String>)>>);

struct Kv<'a>(&'a mut BTreeMap<String, String>);

impl<'kvs> log::kv::VisitSource<'kvs> for Kv<'_> {
    fn visit_pair(
        &mut self,
        key: log::kv::Key<'kvs>,
        value: log::kv::Value<'kvs>,
    ) -> Result<(), log::kv::Error> {
        self.0.insert(key.to_string(), value.to_string());
        Ok(())
    }
}

impl log::Log for Logs {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        if !record.target().starts_with("outboxer") {
            return;
        }
        let mut kv = BTreeMap::new();
        let _ = record.key_values().visit(&mut Kv(&mut kv));
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((record.args().to_string(), kv));
    }
    fn flush(&self) {}
}

#[test]
fn per_message_failure_logs_carry_key_values() {
    static LOGS: OnceLock<&'static Logs> = OnceLock::new();
    let logs = *LOGS.get_or_init(|| {
        let l: &'static Logs = Box::leak(Box::new(Logs(Mutex::new(Vec::new()))));
        log::set_logger(l).expect("the only logger");
        log::set_max_level(log::LevelFilter::Debug);
        l
    });
    let table = unique("tr_logs");
    let ex = unique("ex");
    let _sink = Sink::new(&ex, "good.#");
    let outbox = Outbox::builder()
        .store(store(&table))
        .stream(stream())
        .check_interval(Duration::from_millis(20))
        .max_attempts(2)
        .backoff(Duration::from_millis(50), Duration::from_millis(100))
        .build()
        .expect("outbox");
    let relay = outbox.start().expect("start");
    // Unroutable (no queue bound to bad.*): refused, retried once, then parked.
    let id = outbox
        .send(Message::new(b"bad".to_vec()).route(amqp::topic(&ex, "bad.x")))
        .expect("send")
        .to_string();
    let mut seen = Vec::new();
    for _ in 0..100 {
        seen = logs
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, kv)| kv.get("message_id") == Some(&id))
            .cloned()
            .collect();
        if seen.len() >= 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    relay.stop().expect("stop");
    assert_eq!(seen.len(), 2, "{seen:?}");
    for ((text, kv), (attempt, action)) in seen.iter().zip([("1", "Retry"), ("2", "Parked")]) {
        assert!(text.contains(&id), "{text}");
        assert_eq!(
            kv.get("attempt").map(String::as_str),
            Some(attempt),
            "{kv:?}"
        );
        assert_eq!(kv.get("action").map(String::as_str), Some(action), "{kv:?}");
        assert!(
            kv.get("row_id").is_some_and(|r| r.parse::<i64>().is_ok()),
            "{kv:?}"
        );
    }
    drop_table(&table);
}
