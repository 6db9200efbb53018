//! Property tests of the I/O-free parts: option parsing, identifiers, row JSON,
//! redaction, backoff, relay settings, size limits, message ids, AMQP URLs.
//! No servers needed. Every property checks a result, not only "no panic".

use outboxer::__private::rows::{
    headers_from_json, headers_to_json, options_from_json, options_to_json,
};
use outboxer::__private::{Backoff, RelayConfig, TableName};
use outboxer::redact_url;
use outboxer::stream::amqp::{AmqpRoute, AmqpValidator};
use outboxer::stream::Validate;
use outboxer::{Error, Headers, MessageId, Options};
use proptest::prelude::*;
use serde_json::Value;
use std::time::Duration;

const CASES: u32 = 256;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: CASES,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------- strategies

/// Arbitrary JSON, including strings with quotes, NULs and non-ASCII.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        any::<String>().prop_map(Value::from),
        "(true|false|topic|direct|fanout|headers|[a-z.:_-]{0,12})".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(any::<String>(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// AMQP option keys: mostly the known ones, sometimes near misses or junk.
fn option_key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec![
            "exchange.name",
            "exchange.type",
            "exchange.durable",
            "exchange.auto_delete",
            "exchange.internal",
            "exchange.no_wait",
            "routing_key",
        ])
        .prop_map(String::from),
        1 => prop::sample::select(vec!["exchange.nam", "Routing_key", "exchange", "topic", ""])
            .prop_map(String::from),
        1 => any::<String>(),
    ]
}

/// Values that are often well-typed for the known keys.
fn option_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => "[A-Za-z0-9._:-]{0,20}".prop_map(Value::from),
        2 => any::<bool>().prop_map(Value::from),
        1 => prop::sample::select(vec!["topic", "direct", "fanout", "headers", "true", "false", "amq.topic"])
            .prop_map(Value::from),
        1 => Just(Value::Null),
        1 => "[a-z]{250,260}".prop_map(Value::from),
        1 => json_value(),
    ]
}

fn option_map() -> impl Strategy<Value = Options> {
    prop::collection::btree_map(option_key(), option_value(), 0..6)
}

fn duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        // Around the documented boundaries.
        prop::sample::select(vec![
            Duration::ZERO,
            Duration::from_nanos(1),
            Duration::from_micros(999),
            Duration::from_millis(1),
            Duration::from_millis(9),
            Duration::from_millis(10),
            Duration::from_millis(999),
            Duration::from_secs(1),
            Duration::from_secs(24 * 3600),
            Duration::from_secs(24 * 3600) + Duration::from_nanos(1),
            Duration::from_secs(7 * 24 * 3600),
            Duration::from_secs(7 * 24 * 3600) + Duration::from_nanos(1),
            Duration::from_secs(30 * 24 * 3600),
            Duration::from_secs(30 * 24 * 3600) + Duration::from_nanos(1),
            Duration::from_secs(3650 * 24 * 3600),
            Duration::from_secs(3650 * 24 * 3600) + Duration::from_nanos(1),
            Duration::MAX,
        ]),
        (0u64..40 * 24 * 3600, 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
        (any::<u64>(), 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
        (0u64..10_000_000).prop_map(Duration::from_nanos),
    ]
}

fn count() -> impl Strategy<Value = usize> {
    prop_oneof![
        prop::sample::select(vec![
            0usize,
            1,
            10_000,
            10_001,
            100_000,
            100_001,
            10_000_000,
            10_000_001,
            usize::MAX
        ]),
        any::<usize>(),
        0usize..200_000,
    ]
}

/// A password that is distinctive enough to search for in output.
fn password() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Za-z0-9]{10,20}",
        // Anything, with a fixed distinctive prefix: quotes, spaces, '@', '/', '#', '%', unicode.
        any::<String>().prop_map(|s| format!("Pw{s}x9")),
        "[ -~]{8,20}".prop_map(|s| format!("Zq{s}")),
    ]
}

/// Characters that need no escape in URL userinfo (unreserved and sub-delims but ':').
fn raw_userinfo_password() -> impl Strategy<Value = String> {
    "Zq[A-Za-z0-9._~!$&'()*+,;=-]{8,20}"
}

/// Percent-encodes everything but unreserved characters.
fn pct(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

// ---------------------------------------------------------------- references

/// The documented grammar of table names: `table` or `schema.table`, each part
/// `[A-Za-z_][A-Za-z0-9_]*` and at most 40 bytes.
fn valid_table_name(name: &str) -> bool {
    let part = |p: &str| {
        let b = p.as_bytes();
        !b.is_empty()
            && b.len() <= 40
            && (b[0].is_ascii_alphabetic() || b[0] == b'_')
            && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
    };
    let parts: Vec<&str> = name.split('.').collect();
    parts.len() <= 2 && parts.iter().all(|p| part(p))
}

/// The first field `RelayConfig::validate` must name, per its documented ranges.
fn first_bad_field(c: &RelayConfig) -> Option<&'static str> {
    const DAY: Duration = Duration::from_secs(24 * 3600);
    let within = |v: Duration, lo: Duration, hi: Duration| v >= lo && v <= hi;
    if !within(c.check_interval, Duration::from_millis(1), DAY) {
        return Some("check_interval");
    }
    if !(1..=10_000).contains(&c.batch_size) {
        return Some("batch_size");
    }
    if !within(c.lease, Duration::from_secs(1), DAY) {
        return Some("lease");
    }
    if c.max_attempts == 0 {
        return Some("max_attempts");
    }
    if let Some(i) = c.cleanup_interval {
        if !within(i, Duration::from_millis(10), 30 * DAY) {
            return Some("cleanup_interval");
        }
    }
    if !within(c.cleanup_before, Duration::ZERO, 3650 * DAY) {
        return Some("cleanup_before");
    }
    if !(1..=100_000).contains(&c.cleanup_batch_size) {
        return Some("cleanup_batch_size");
    }
    if !(1..=10_000_000).contains(&c.channel_capacity) {
        return Some("channel_capacity");
    }
    if c.max_batch_bytes == 0 {
        return Some("max_batch_bytes");
    }
    if !within(c.report_interval, Duration::from_millis(10), DAY) {
        return Some("report_interval");
    }
    if !within(c.metrics_interval, Duration::from_millis(10), DAY) {
        return Some("metrics_interval");
    }
    None
}

/// `min(max, base * 2^(attempt-1))`, exactly, in nanoseconds.
fn reference_ceiling(base: Duration, max: Duration, attempt: u32) -> Duration {
    let exp = attempt.saturating_sub(1);
    let full = if exp >= 64 {
        u128::MAX
    } else {
        base.as_nanos().saturating_mul(1u128 << exp)
    };
    if full >= max.as_nanos() {
        max
    } else {
        Duration::from_nanos(u64::try_from(full).unwrap_or(u64::MAX))
    }
}

// ---------------------------------------------------------------- properties

proptest! {
    #![proptest_config(config())]

    /// Either a route whose `Options` form parses back to the same route (for a
    /// named exchange; the default exchange keeps only what it uses), or a typed
    /// error naming a key of the map.
    #[test]
    fn amqp_route_parse_is_total_and_round_trips(options in option_map()) {
        match AmqpRoute::parse(&options) {
            Ok(route) => {
                prop_assert!(route.exchange.len() <= 255 && route.routing_key.len() <= 255);
                prop_assert!(route
                    .exchange
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c)));
                let back: Options = route.clone().into();
                let again = AmqpRoute::parse(&back);
                prop_assert!(again.is_ok(), "{back:?}: {again:?}");
                let again = again.unwrap();
                if route.exchange.is_empty() {
                    // The default exchange is never declared: type and flags are
                    // dropped from the options (see the report), the target is kept.
                    prop_assert_eq!(&again.exchange, &route.exchange);
                    prop_assert_eq!(&again.routing_key, &route.routing_key);
                    prop_assert!(!again.needs_declare());
                    let third: Options = again.clone().into();
                    prop_assert_eq!(AmqpRoute::parse(&third).ok(), Some(again), "idempotent");
                } else {
                    prop_assert_eq!(again, route);
                }
            }
            Err(Error::InvalidOption { key, reason }) => {
                prop_assert!(options.contains_key(&key), "{key:?} ({reason}) not in {options:?}");
            }
            Err(other) => prop_assert!(false, "untyped error {other:?} for {options:?}"),
        }
    }

    /// Routes built in code always survive the trip through options.
    #[test]
    fn named_routes_round_trip(
        exchange in "[A-Za-z0-9._:-]{1,40}",
        key in any::<String>().prop_filter("short", |s| s.len() <= 255),
        kind in 0..4usize,
        flags in any::<[bool; 4]>(),
    ) {
        use outboxer::stream::amqp;
        let r = match kind {
            0 => amqp::topic(&exchange, &key),
            1 => amqp::direct(&exchange, &key),
            2 => AmqpRoute { routing_key: key.clone(), ..amqp::fanout(&exchange) },
            _ => AmqpRoute { kind: amqp::ExchangeKind::Headers, ..amqp::topic(&exchange, &key) },
        }
        .durable(flags[0])
        .auto_delete(flags[1])
        .internal(flags[2])
        .no_wait(flags[3]);
        prop_assert_eq!(AmqpRoute::parse(&r.clone().into()).ok(), Some(r));
    }

    /// Exactly the documented grammar; the quoted forms hold no stray quote.
    #[test]
    fn table_name_grammar(name in prop_oneof![
        any::<String>(),
        "[A-Za-z_][A-Za-z0-9_]{0,45}(\\.[A-Za-z_][A-Za-z0-9_]{0,45})?",
        "[A-Za-z0-9_.\"`\\]\\[; -]{0,12}",
    ]) {
        let parsed = TableName::parse(&name);
        prop_assert_eq!(parsed.is_ok(), valid_table_name(&name), "{:?} -> {:?}", name, parsed);
        match parsed {
            Ok(t) => {
                prop_assert_eq!(t.plain(), name.clone());
                let q = t.quoted();
                let inner: Vec<&str> = match t.schema() {
                    Some(_) => {
                        prop_assert!(q.starts_with('"') && q.ends_with('"'));
                        q[1..q.len() - 1].split("\".\"").collect()
                    }
                    None => vec![&q[1..q.len() - 1]],
                };
                prop_assert_eq!(inner.len(), if t.schema().is_some() { 2 } else { 1 });
                for part in inner {
                    prop_assert!(!part.contains(['"', '`', ']', '[', ';', '\'', '\\']), "{q}");
                }
                let d = t.derived("idx");
                prop_assert_eq!(d.matches('"').count(), 2, "{}", d);
            }
            Err(Error::InvalidIdentifier { name: n, .. }) => prop_assert_eq!(n, name),
            Err(other) => prop_assert!(false, "untyped error {other:?}"),
        }
    }

    #[test]
    fn headers_round_trip(h in prop::collection::btree_map(any::<String>(), any::<String>(), 0..8)) {
        let h: Headers = h;
        let v = headers_to_json(&h);
        prop_assert_eq!(headers_from_json(Some(v.clone())), Ok(h.clone()));
        // Through JSON text, as the stores keep it.
        let text = serde_json::to_string(&v).expect("serialize");
        let back: Value = serde_json::from_str(&text).expect("parse");
        prop_assert_eq!(headers_from_json(Some(back)), Ok(h));
    }

    #[test]
    fn options_round_trip(o in prop::collection::btree_map(any::<String>(), json_value(), 0..6)) {
        let o: Options = o;
        let v = options_to_json(&o);
        prop_assert_eq!(options_from_json(Some(v)), Ok(o));
    }

    /// Arbitrary stored JSON: objects (and NULL) decode, everything else is refused.
    #[test]
    fn stored_json_decodes_or_is_refused(v in prop::option::of(json_value())) {
        let h = headers_from_json(v.clone());
        let o = options_from_json(v.clone());
        match &v {
            None | Some(Value::Null) => {
                prop_assert_eq!(h, Ok(Headers::new()));
                prop_assert_eq!(o, Ok(Options::new()));
            }
            Some(Value::Object(m)) => {
                let h = h.expect("object headers");
                prop_assert_eq!(h.len(), m.len());
                for (k, val) in m {
                    let want = match val {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    prop_assert_eq!(&h[k], &want);
                }
                let o = o.expect("object options");
                prop_assert_eq!(o.len(), m.len());
                prop_assert!(m.iter().all(|(k, val)| o.get(k) == Some(val)));
            }
            Some(_) => {
                prop_assert!(h.is_err(), "{:?}", h);
                prop_assert!(o.is_err(), "{:?}", o);
            }
        }
    }

    /// Passwords never survive redaction: raw or percent-encoded in the userinfo,
    /// in `password=` query values, or in key=value strings.
    #[test]
    fn redact_url_hides_passwords(
        pw in password(),
        raw_pw in raw_userinfo_password(),
        scheme in prop::sample::select(vec!["amqp", "postgres", "postgresql", "mysql", "sqlserver"]),
        host in prop::sample::select(vec!["127.0.0.1", "db.example.com", "[::1]", "h"]),
        port in prop::option::of(1u16..),
    ) {
        let port = port.map(|p| format!(":{p}")).unwrap_or_default();
        let enc = pct(&pw);
        let urls = [
            format!("{scheme}://user:{enc}@{host}{port}/db"),
            format!("{scheme}://user:{raw_pw}@{host}{port}/%2f"),
            format!("{scheme}://us%40er:{enc}@{host}{port}/db?sslmode=require"),
            format!("{scheme}://user@{host}{port}/db?password={enc}&application_name=x"),
            format!("{scheme}://user@{host}{port}/db?sslpassword={enc}"),
        ];
        for u in &urls {
            let r = redact_url(u);
            prop_assert!(!r.contains(&pw) && !r.contains(&enc) && !r.contains(&raw_pw), "{u} -> {r}");
            // A well-formed URL keeps its host.
            if url::Url::parse(u).is_ok() {
                prop_assert!(r.contains(host.trim_matches(['[', ']'])), "{u} -> {r}");
            }
        }
        let quoted = pw.replace('\\', "\\\\").replace('\'', "\\'");
        for kv in [
            format!("host={host} user=u password={raw_pw} dbname=test"),
            format!("host={host} user=u password='{quoted}' dbname=test"),
            format!("password={raw_pw}"),
        ] {
            let r = redact_url(&kv);
            prop_assert!(!r.contains(&pw) && !r.contains(&raw_pw), "{kv} -> {r}");
        }
    }

    /// Valid iff base > 0, base <= max <= 7 days; the delay stays within
    /// [ceiling/2, ceiling] and the ceiling never passes `max`.
    #[test]
    fn backoff_bounds(base in duration(), max in duration(), attempts in prop::collection::vec(any::<u32>(), 1..8)) {
        let ok = !base.is_zero() && max >= base && max <= Duration::from_secs(7 * 24 * 3600);
        match Backoff::new(base, max) {
            Ok(b) => {
                prop_assert!(ok, "{base:?} {max:?} accepted");
                let mut last = Duration::ZERO;
                for a in (1..=70u32).chain(attempts) {
                    let c = b.ceiling(a);
                    prop_assert!(c <= max && c >= base.min(max), "ceiling({a}) = {c:?}");
                    let d = b.delay(a);
                    prop_assert!(d >= c / 2 && d <= c, "delay({a}) = {d:?}, ceiling {c:?}");
                    if a <= 70 {
                        prop_assert!(c >= last, "not monotonic at {a}");
                        last = c;
                    }
                    // Exact up to 2^31 times the base (see backoff_ceiling_reaches_max).
                    if a <= 32 {
                        prop_assert_eq!(c, reference_ceiling(base, max, a));
                    }
                }
            }
            Err(Error::Config { field: "backoff", .. }) => prop_assert!(!ok, "{base:?} {max:?} refused"),
            Err(other) => prop_assert!(false, "{other:?}"),
        }
    }

    /// The relay settings refuse exactly the values outside the documented ranges,
    /// naming the first such field.
    #[test]
    fn relay_config_ranges(
        check_interval in duration(),
        batch_size in count(),
        lease in duration(),
        max_attempts in prop_oneof![Just(0u32), any::<u32>()],
        cleanup_interval in prop::option::of(duration()),
        cleanup_before in duration(),
        cleanup_batch_size in count(),
        channel_capacity in count(),
        max_batch_bytes in prop_oneof![Just(0usize), any::<usize>()],
        report_interval in duration(),
        metrics_interval in duration(),
    ) {
        let c = RelayConfig {
            check_interval,
            batch_size,
            lease,
            max_attempts,
            backoff: Backoff::default(),
            cleanup_interval,
            cleanup_before,
            cleanup_batch_size,
            channel_capacity,
            max_batch_bytes,
            on_park: outboxer::OnPark::HoldKey,
            report_interval,
            metrics_interval,
            metrics_route_label: true,
            claim_mode: outboxer::ClaimMode::RowLocks,
        };
        match (c.validate(), first_bad_field(&c)) {
            (Ok(()), None) => {}
            (Err(Error::Config { field, .. }), Some(want)) => prop_assert_eq!(field, want),
            (got, want) => prop_assert!(false, "{c:?}: got {got:?}, want {want:?}"),
        }
    }

    /// Size: refused with `PayloadTooLarge` iff payload plus headers exceed the limit.
    #[test]
    fn amqp_size_limit(
        payload_len in 0usize..4096,
        headers in prop::collection::btree_map(any::<String>(), any::<String>(), 0..6),
        slack in -300i64..300,
        pick_exact in any::<bool>(),
    ) {
        let payload = vec![0xA5u8; payload_len];
        let size = payload_len + headers.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
        let limit = if pick_exact { size } else { usize::try_from((size as i64 + slack).max(1)).unwrap_or(1) };
        let v = AmqpValidator { max_message_size: limit };
        let route: Options = outboxer::stream::amqp::topic("orders", "orders.paid").into();
        match v.validate(&payload, &headers, &route) {
            Ok(()) => prop_assert!(size <= limit, "{size} > {limit} accepted"),
            Err(Error::PayloadTooLarge { size: s, limit: l }) => {
                prop_assert!(size > limit, "{size} <= {limit} refused");
                prop_assert_eq!((s, l), (size, limit));
            }
            Err(other) => prop_assert!(false, "{other:?}"),
        }
    }

    #[test]
    fn message_id_round_trip(n in any::<u128>(), junk in any::<String>()) {
        let id = MessageId::from_uuid(uuid::Uuid::from_u128(n));
        let text = id.to_string();
        prop_assert_eq!(text.len(), 36);
        prop_assert!(text.chars().all(|c| c == '-' || c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        prop_assert_eq!(text.parse::<MessageId>().ok(), Some(id));
        prop_assert_eq!(text.to_uppercase().parse::<MessageId>().ok(), Some(id));
        prop_assert_eq!(format!("{id:?}"), format!("MessageId({text})"));
        // Arbitrary text: no panic; what parses prints as a canonical id.
        if let Ok(p) = junk.parse::<MessageId>() {
            prop_assert_eq!(p.to_string().parse::<MessageId>().ok(), Some(p));
        }
    }
}

#[cfg(feature = "amqp")]
mod amqp_urls {
    use super::*;
    use outboxer::stream::AmqpStream;

    fn error_texts(e: &Error) -> Vec<String> {
        let mut out = vec![e.to_string(), format!("{e:?}")];
        let mut src = std::error::Error::source(e);
        while let Some(s) = src {
            out.push(s.to_string());
            out.push(format!("{s:?}"));
            src = s.source();
        }
        out
    }

    proptest! {
        #![proptest_config(config())]

        /// Arbitrary strings: `build()` (which does not connect) either succeeds or
        /// says `InvalidUrl`.
        #[test]
        fn arbitrary_strings(raw in prop_oneof![
            any::<String>(),
            "amqps?://[ -~]{0,30}",
            "amqp://[a-z]{1,5}(:[0-9]{0,6})?(/[ -~]{0,10})?(\\?[a-z_]{1,20}=[0-9a-z]{0,7})?",
        ]) {
            match AmqpStream::builder(&raw).build() {
                Ok(s) => prop_assert!(raw.starts_with("amqp://") || raw.starts_with("amqps://"), "{raw:?} accepted: {s:?}"),
                Err(Error::InvalidUrl { url, .. }) => prop_assert_eq!(url, redact_url(&raw)),
                // A TLS file named in an amqps:// URL that cannot be read.
                Err(Error::Config { field: "tls", .. }) if raw.starts_with("amqps://") => {}
                Err(other) => prop_assert!(false, "{raw:?}: {other:?}"),
            }
        }

        /// URLs with a password: every error, in Display and Debug and its sources,
        /// and the stream's Debug, are free of the password.
        #[test]
        fn passwords_never_shown(
            pw in password(),
            raw_pw in raw_userinfo_password(),
            tail in prop::sample::select(vec![
                "", "/", "/%2f", "/vhost", "/%2f?heartbeat=10", "/%2f?heartbeat=99999",
                "/%2f?connection_timeout=0", "/%2f?bogus=1", "/%zz", ":99999/", ":5672/%C3%28",
            ]),
            scheme in prop::sample::select(vec!["amqp", "amqps", "http", "AMQP"]),
        ) {
            for raw in [
                format!("{scheme}://guest:{}@127.0.0.1{tail}", pct(&pw)),
                format!("{scheme}://guest:{raw_pw}@127.0.0.1{tail}"),
                format!("{scheme}://us%2Fer:{}@h{tail}", pct(&pw)),
            ] {
                match AmqpStream::builder(&raw).build() {
                    Ok(s) => {
                        let d = format!("{s:?}");
                        prop_assert!(!d.contains(&pw) && !d.contains(&pct(&pw)) && !d.contains(&raw_pw), "{d}");
                    }
                    Err(e @ Error::InvalidUrl { .. }) => {
                        for t in error_texts(&e) {
                            prop_assert!(!t.contains(&pw) && !t.contains(&pct(&pw)) && !t.contains(&raw_pw), "{raw} -> {t}");
                        }
                    }
                    Err(other) => prop_assert!(false, "{raw}: {other:?}"),
                }
            }
        }
    }
}

/// Documented as `min(max, base * 2^(attempt-1))`, but the multiplier stops at
/// 2^31, so with a base under ~282 µs the ceiling never reaches a large `max`.
#[test]
fn backoff_ceiling_reaches_max() {
    let b = Backoff::new(Duration::from_micros(1), Duration::from_secs(3600)).expect("valid");
    assert_eq!(b.ceiling(100), Duration::from_secs(3600));
}

proptest! {
    #![proptest_config(config())]

    /// The generated SQL of every store names the table only inside identifier
    /// quotes (or a string literal), whatever valid name it is given.
    #[test]
    fn generated_sql_quotes_the_table(
        table in "Zq[A-Za-z0-9_]{0,20}",
        schema in prop::option::of("Sx[A-Za-z0-9_]{0,10}"),
    ) {
        use outboxer::__private::sql::{mysql::MysqlSql, postgres::PostgresSql, sqlite::SqliteSql, sqlserver::SqlServerSql};
        let name = match &schema {
            Some(s) => format!("{s}.{table}"),
            None => table.clone(),
        };
        let t = TableName::parse(&name).expect("valid");
        let texts = [
            ("pg", format!("{:?}", PostgresSql::new(&t))),
            ("mysql", format!("{:?}", MysqlSql::new(&t))),
            ("sqlite", format!("{:?}", SqliteSql::new(&TableName::parse(&table).expect("valid")))),
            ("mssql", format!("{:?}", SqlServerSql::new(&t))),
        ];
        // Not SQL text: bind parameters (PostgreSQL's NOTIFY channel, SQL Server's
        // applock resource) and names the stores quote where they use them.
        let plain = t.plain();
        let safe = [
            format!("channel: \"outboxer_{}\"", plain.replace('.', "_")),
            format!("plain: \"{plain}\""),
            format!("migrate_resource: \"outboxer:migrate:{plain}\""),
        ];
        for (db, text) in texts {
            let text = safe.iter().fold(text, |acc, s| acc.replace(s.as_str(), ""));
            let mut found = 0;
            for part in std::iter::once(table.as_str()).chain(schema.as_deref()) {
                for (at, _) in text.match_indices(part) {
                    found += 1;
                    let before = &text[..at];
                    prop_assert!(
                        // `("name_idx", ..)`: index names, quoted where used.
                        ["\\\"", "`", "[", "'", "(\""]
                            .iter()
                            .any(|q| before.ends_with(q)),
                        "{db}: unquoted {part:?} at {at}: ...{}",
                        &text[at.saturating_sub(40)..(at + part.len() + 10).min(text.len())]
                    );
                }
            }
            prop_assert!(found > 0, "{db}: table not found in {text}");
        }
    }
}
