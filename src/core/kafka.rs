//! Kafka routing options (Go-compatible keys), typed builders, the
//! `kafka://` URL form and its validation. No I/O.

use crate::core::options::{reject_unknown, required_string, string};
use crate::core::percent;
use crate::message::Options;
use crate::{Error, Result};
use serde_json::Value;

/// Go key: the topic (required).
pub const TOPIC: &str = "topic";
/// Go key: an explicit partition (integer >= 0); absent = chosen by the key's hash.
pub const PARTITION: &str = "partition";
/// Go key: the record key; absent = the message's ordering key.
pub const KEY: &str = "key";

const KEYS: [&str; 3] = [TOPIC, PARTITION, KEY];

/// Kafka's own limit on a topic name.
const MAX_TOPIC_LEN: usize = 249;

/// Where a Kafka record goes: a topic, and optionally a partition and a record key.
///
/// Without `key` the record key is the message's ordering key, so every message
/// of one ordering key lands in one partition (and keeps its order there).
///
/// ```
/// use outboxer::stream::kafka;
/// let options: outboxer::Options = kafka::topic("orders").key("customer-7").into();
/// assert_eq!(options["topic"], "orders");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KafkaRoute {
    /// Topic name.
    pub topic: String,
    /// Explicit partition.
    pub partition: Option<i32>,
    /// Record key (overrides the ordering key).
    pub key: Option<String>,
}

/// A route to a topic; partition chosen by the record key's hash.
pub fn topic(name: &str) -> KafkaRoute {
    KafkaRoute {
        topic: name.to_string(),
        partition: None,
        key: None,
    }
}

impl KafkaRoute {
    /// Sets an explicit partition.
    pub fn partition(mut self, p: i32) -> Self {
        self.partition = Some(p);
        self
    }
    /// Sets the record key (instead of the ordering key).
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Reads and validates the Go-compatible options of a message.
    pub fn parse(options: &Options) -> Result<Self> {
        reject_unknown(options, &KEYS, "Kafka")?;
        let topic = required_string(options, TOPIC)?;
        check_topic(&topic)?;
        let partition = match options.get(PARTITION) {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => Some(partition_value(n.as_i64())?),
            // Rows written by hand in SQL often carry numbers as strings.
            Some(Value::String(s)) => Some(partition_value(s.trim().parse::<i64>().ok())?),
            Some(other) => {
                return Err(Error::option(
                    PARTITION,
                    format!("expected an integer >= 0, got {other}"),
                ))
            }
        };
        let key = string(options, KEY)?;
        Ok(KafkaRoute {
            topic,
            partition,
            key,
        })
    }
}

fn partition_value(v: Option<i64>) -> Result<i32> {
    match v {
        Some(p) if (0..=i64::from(i32::MAX)).contains(&p) => Ok(p as i32),
        _ => Err(Error::option(PARTITION, "expected an integer >= 0")),
    }
}

/// Kafka's rules for topic names: 1..=249 of `[A-Za-z0-9._-]`, not `.` or `..`.
pub fn check_topic(t: &str) -> Result<()> {
    if t.is_empty() || t.len() > MAX_TOPIC_LEN {
        return Err(Error::option(TOPIC, "must be 1..=249 characters"));
    }
    if t == "." || t == ".." {
        return Err(Error::option(TOPIC, "`.` and `..` are not topic names"));
    }
    if !t
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    {
        return Err(Error::option(
            TOPIC,
            "only letters, digits, '.', '_' and '-' are allowed",
        ));
    }
    Ok(())
}

impl From<KafkaRoute> for Options {
    fn from(r: KafkaRoute) -> Options {
        let mut o = Options::new();
        o.insert(TOPIC.into(), Value::from(r.topic));
        if let Some(p) = r.partition {
            o.insert(PARTITION.into(), Value::from(p));
        }
        if let Some(k) = r.key {
            o.insert(KEY.into(), Value::from(k));
        }
        o
    }
}

/// Record compression (`compression.type`). zstd is not compiled into the bundled
/// librdkafka of this build.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Compression {
    /// No compression (librdkafka's default).
    #[default]
    None,
    /// gzip (zlib).
    Gzip,
    /// Snappy (built into librdkafka).
    Snappy,
    /// LZ4 (built into librdkafka).
    Lz4,
}

impl Compression {
    /// The librdkafka name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
        }
    }
}

/// librdkafka settings the stream owns: they carry its delivery guarantees.
pub const MANAGED_SETTINGS: [&str; 6] = [
    "enable.idempotence",
    "acks",
    "request.required.acks",
    "bootstrap.servers",
    "metadata.broker.list",
    "max.in.flight.requests.per.connection",
];

/// Checks one producer setting passed through to librdkafka: the keys that carry
/// the stream's guarantees (idempotence, acks=all, in-flight <= 5) are refused.
pub fn check_setting(key: &str, value: &str) -> std::result::Result<(), String> {
    if key.is_empty()
        || !key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    {
        return Err(format!("{key:?} is not a librdkafka property name"));
    }
    match key {
        "enable.idempotence" if value != "true" => {
            Err("enable.idempotence is always true (per-key order and no duplicates)".into())
        }
        "acks" | "request.required.acks" if value != "all" && value != "-1" => Err(format!(
            "{key} is always all (a confirm means fully replicated)"
        )),
        "max.in.flight.requests.per.connection" if !matches!(value.parse::<u32>(), Ok(1..=5)) => {
            Err("max.in.flight.requests.per.connection must be 1..=5 with idempotence".into())
        }
        "bootstrap.servers" | "metadata.broker.list" => {
            Err(format!("{key} comes from the URL / the builder's brokers"))
        }
        _ => Ok(()),
    }
}

/// A parsed `kafka://host:port[,host:port][?property=value&...]` URL.
///
/// `user:password@` sets `sasl.username` / `sasl.password` (and, unless given,
/// `security.protocol=sasl_plaintext`, `sasl.mechanisms=PLAIN`). Query pairs are
/// librdkafka producer properties (`linger.ms`, `compression.type`, ...).
#[derive(Clone, PartialEq, Eq)]
pub struct KafkaUrl {
    /// `host:port` of each bootstrap broker (port defaults to 9092).
    pub brokers: Vec<String>,
    /// librdkafka properties, in URL order.
    pub settings: Vec<(String, String)>,
}

impl std::fmt::Debug for KafkaUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let settings: Vec<(String, String)> = self
            .settings
            .iter()
            .map(|(k, v)| (k.clone(), crate::core::redact::redact_value(k, v)))
            .collect();
        f.debug_struct("KafkaUrl")
            .field("brokers", &self.brokers)
            .field("settings", &settings)
            .finish()
    }
}

impl KafkaUrl {
    /// Parses the URL. Errors never contain the password.
    pub fn parse(raw: &str) -> std::result::Result<KafkaUrl, String> {
        let rest = raw
            .strip_prefix("kafka://")
            .ok_or("the scheme must be kafka://")?;
        let (authority, query) = match rest.split_once('?') {
            Some((a, q)) => (a, Some(q)),
            None => (rest, None),
        };
        let authority = authority.strip_suffix('/').unwrap_or(authority);
        if authority.contains('/') {
            return Err("a kafka:// URL has no path".into());
        }
        let mut settings = Vec::new();
        let hosts = match authority.rsplit_once('@') {
            Some((userinfo, hosts)) => {
                let (user, pass) = userinfo.split_once(':').unwrap_or((userinfo, ""));
                settings.push(("sasl.username".to_string(), percent::decode(user)?));
                settings.push(("sasl.password".to_string(), percent::decode(pass)?));
                hosts
            }
            None => authority,
        };
        let mut brokers = Vec::new();
        for h in hosts.split(',') {
            if h.is_empty() {
                return Err("empty broker address".into());
            }
            let (host, port) = match h.rsplit_once(':') {
                // [::1]:9092 or host:9092
                Some((host, port)) if !port.contains(']') => {
                    let port: u16 = port
                        .parse()
                        .ok()
                        .filter(|p| *p > 0)
                        .ok_or_else(|| format!("bad port {port:?}"))?;
                    (host, port)
                }
                _ => (h, 9092),
            };
            if host.is_empty()
                || !host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".-_[]:".contains(c))
            {
                return Err(format!("bad host {host:?}"));
            }
            brokers.push(format!("{host}:{port}"));
        }
        if let Some(q) = query.filter(|q| !q.is_empty()) {
            for pair in q.split('&') {
                let (k, v) = pair
                    .split_once('=')
                    .ok_or_else(|| format!("query pair {:?} has no '='", pair.split('=').next()))?;
                let k = percent::decode_form(k)?;
                let v = percent::decode_form(v)?;
                check_setting(&k, &v)?;
                settings.push((k, v));
            }
        }
        if settings.iter().any(|(k, _)| k == "sasl.username")
            && !settings.iter().any(|(k, _)| k == "security.protocol")
        {
            settings.push(("security.protocol".into(), "sasl_plaintext".into()));
            if !settings.iter().any(|(k, _)| k == "sasl.mechanisms") {
                settings.push(("sasl.mechanisms".into(), "PLAIN".into()));
            }
        }
        Ok(KafkaUrl { brokers, settings })
    }

    /// The URL with secrets (the password, secret-looking properties) replaced by
    /// `***`, for errors and logs.
    pub fn redact(raw: &str) -> String {
        crate::core::redact::redact_raw_url(raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn opts(v: serde_json::Value) -> Options {
        serde_json::from_value(v).expect("object")
    }

    #[test]
    fn go_keys_round_trip() {
        let r = topic("orders").partition(2).key("k");
        assert_eq!(KafkaRoute::parse(&r.clone().into()).ok(), Some(r));
        let go = opts(json!({"topic": "test", "partition": "1", "key": "a"}));
        let parsed = KafkaRoute::parse(&go).expect("valid");
        assert_eq!(parsed.partition, Some(1));
        assert_eq!(
            KafkaRoute::parse(&opts(json!({"topic": "t"}))).ok(),
            Some(topic("t"))
        );
    }

    #[test]
    fn bad_options_are_typed_errors() {
        for (v, key) in [
            (json!({}), "topic"),
            (json!({"topic": 5}), "topic"),
            (json!({"topic": ""}), "topic"),
            (json!({"topic": "a b"}), "topic"),
            (json!({"topic": "t".repeat(250)}), "topic"),
            (json!({"topic": "t", "partition": -1}), "partition"),
            (json!({"topic": "t", "partition": 1.5}), "partition"),
            (json!({"topic": "t", "partition": "x"}), "partition"),
            (
                json!({"topic": "t", "partition": 4_000_000_000u64}),
                "partition",
            ),
            (json!({"topic": "t", "key": 1}), "key"),
            (json!({"topic": "t", "topik": "x"}), "topik"),
        ] {
            match KafkaRoute::parse(&opts(v.clone())) {
                Err(Error::InvalidOption { key: k, .. }) => assert_eq!(k, key, "{v}"),
                other => panic!("{v}: {other:?}"),
            }
        }
    }

    #[test]
    fn url_forms() {
        let u = KafkaUrl::parse("kafka://a:9092,b:9093,c?linger.ms=5").expect("valid");
        assert_eq!(u.brokers, ["a:9092", "b:9093", "c:9092"]);
        assert_eq!(u.settings, [("linger.ms".to_string(), "5".to_string())]);
        let u = KafkaUrl::parse("kafka://me:p%40ss@h:1/").expect("valid");
        assert!(u
            .settings
            .contains(&("sasl.password".to_string(), "p@ss".to_string())));
        // In the userinfo `+` is the password's own (RFC 3986); in the query a space.
        let u = KafkaUrl::parse("kafka://me:p+ss@h?client.id=a+b").expect("valid");
        assert!(u
            .settings
            .contains(&("sasl.password".to_string(), "p+ss".to_string())));
        assert!(u
            .settings
            .contains(&("client.id".to_string(), "a b".to_string())));
        assert!(!format!("{u:?}").contains("p@ss"));
        for bad in [
            "amqp://h",
            "kafka://",
            "kafka://h:0",
            "kafka://h:x",
            "kafka://h,",
            "kafka://h/path",
            "kafka://h?acks=1",
            "kafka://h?enable.idempotence=false",
            "kafka://h?nokey",
        ] {
            assert!(KafkaUrl::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            KafkaUrl::redact("kafka://me:secret@h:1?sasl.password=x&linger.ms=5"),
            "kafka://me:***@h:1?sasl.password=***&linger.ms=5"
        );
    }
}
