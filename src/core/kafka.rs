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
        "security.protocol"
            if !matches!(
                value.to_ascii_lowercase().as_str(),
                "plaintext" | "ssl" | "sasl_plaintext" | "sasl_ssl"
            ) =>
        {
            Err(format!(
                "security.protocol {value:?} is not plaintext, ssl, sasl_plaintext or sasl_ssl"
            ))
        }
        _ => Ok(()),
    }
}

/// The URL key that turns certificate and host name verification off
/// (`danger_accept_invalid_certs=true`): it sets librdkafka's
/// `enable.ssl.certificate.verification=false` and
/// `ssl.endpoint.identification.algorithm=none`. Those two are refused as raw
/// settings without it, so that verification is never turned off by accident.
pub const DANGER_ACCEPT_INVALID_CERTS: &str = "danger_accept_invalid_certs";

/// A SASL mechanism of this build's librdkafka (built with OpenSSL; GSSAPI would
/// need cyrus-sasl and is not built in).
///
/// ```
/// use outboxer::stream::kafka::SaslMechanism;
/// assert_eq!(SaslMechanism::ScramSha512.as_str(), "SCRAM-SHA-512");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SaslMechanism {
    /// `PLAIN`: the password is sent as is, so only over TLS (`sasl_ssl`).
    Plain,
    /// `SCRAM-SHA-256`.
    ScramSha256,
    /// `SCRAM-SHA-512`.
    ScramSha512,
}

impl SaslMechanism {
    /// librdkafka's name (`sasl.mechanisms`).
    pub fn as_str(&self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// SASL credentials given to a builder; the password never shows in `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Sasl {
    pub mechanism: SaslMechanism,
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Sasl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sasl")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .field("password", &"***")
            .finish()
    }
}

/// The settings a connection is made with, once the URL's, the raw settings and
/// the typed `tls`/`sasl` ones are put together and checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Security {
    /// librdkafka properties, in order (the last of a key wins).
    pub settings: Vec<(String, String)>,
    /// `security.protocol` is `ssl` or `sasl_ssl`.
    pub tls: bool,
    /// TLS, and the host name checked (`ssl.endpoint.identification.algorithm`
    /// is not `none`; librdkafka's default is `https`).
    pub verify_host: bool,
}

fn last<'a>(settings: &'a [(String, String)], key: &str) -> Option<&'a str> {
    settings
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn push(settings: &mut Vec<(String, String)>, key: &str, value: impl Into<String>) {
    settings.push((key.to_string(), value.into()));
}

/// Puts the URL's and raw settings (`raw`, in order) together with the typed
/// [`Tls`](crate::tls::Tls) and SASL ones (which win), and refuses what would
/// silently weaken TLS: verification turned off without
/// [`DANGER_ACCEPT_INVALID_CERTS`], a CA or client certificate with TLS off, a
/// certificate file that is missing or not PEM.
pub(crate) fn security(
    raw: &[(String, String)],
    tls: Option<&crate::tls::Tls>,
    sasl: Option<&Sasl>,
) -> Result<Security> {
    use crate::tls::TlsMode;
    let mut danger = false;
    let mut settings = Vec::with_capacity(raw.len() + 8);
    for (k, v) in raw {
        if k == DANGER_ACCEPT_INVALID_CERTS {
            danger = match v.to_ascii_lowercase().as_str() {
                "true" | "1" => true,
                "false" | "0" => false,
                _ => {
                    return Err(Error::config(
                        DANGER_ACCEPT_INVALID_CERTS,
                        "must be true or false",
                    ))
                }
            };
        } else {
            settings.push((k.clone(), v.clone()));
        }
    }
    let raw_protocol = last(&settings, "security.protocol")
        .map(str::to_ascii_lowercase)
        .unwrap_or_else(|| "plaintext".into());
    let (mut tls_on, mut sasl_on) = match raw_protocol.as_str() {
        "plaintext" => (false, false),
        "ssl" => (true, false),
        "sasl_plaintext" => (false, true),
        "sasl_ssl" => (true, true),
        other => {
            return Err(Error::config(
                "security.protocol",
                format!("{other:?} is not plaintext, ssl, sasl_plaintext or sasl_ssl"),
            ))
        }
    };
    let mut verify_ca_only = false;
    if let Some(t) = tls {
        tls_on = t.enabled();
        danger |= t.accepts_invalid_certificates();
        if tls_on {
            verify_ca_only = t.mode() == TlsMode::VerifyCa;
            push(
                &mut settings,
                "ssl.endpoint.identification.algorithm",
                if verify_ca_only { "none" } else { "https" },
            );
            push(&mut settings, "enable.ssl.certificate.verification", "true");
        }
        if let Some(ca) = t.ca_path() {
            push(&mut settings, "ssl.ca.location", ca.to_string_lossy());
        }
        if let Some((cert, key)) = t.client_cert_paths() {
            push(
                &mut settings,
                "ssl.certificate.location",
                cert.to_string_lossy(),
            );
            push(&mut settings, "ssl.key.location", key.to_string_lossy());
        }
    }
    if let Some(s) = sasl {
        sasl_on = true;
        push(&mut settings, "sasl.mechanisms", s.mechanism.as_str());
        push(&mut settings, "sasl.username", s.username.as_str());
        push(&mut settings, "sasl.password", s.password.as_str());
    }
    if tls.is_some() || sasl.is_some() {
        let protocol = match (sasl_on, tls_on) {
            (false, false) => "plaintext",
            (false, true) => "ssl",
            (true, false) => "sasl_plaintext",
            (true, true) => "sasl_ssl",
        };
        push(&mut settings, "security.protocol", protocol);
    }
    if danger {
        if !tls_on {
            return Err(Error::config(
                DANGER_ACCEPT_INVALID_CERTS,
                "is set but TLS is not (security.protocol is not ssl or sasl_ssl)",
            ));
        }
        push(
            &mut settings,
            "enable.ssl.certificate.verification",
            "false",
        );
        push(
            &mut settings,
            "ssl.endpoint.identification.algorithm",
            "none",
        );
    }
    let off = |v: Option<&str>, no: &[&str]| {
        v.is_some_and(|v| no.contains(&v.to_ascii_lowercase().as_str()))
    };
    if !danger
        && off(
            last(&settings, "enable.ssl.certificate.verification"),
            &["false", "0"],
        )
    {
        return Err(Error::config(
            "enable.ssl.certificate.verification",
            format!("false accepts any certificate: set {DANGER_ACCEPT_INVALID_CERTS}=true (or Tls::danger_accept_invalid_certificates(true)) if that is really meant"),
        ));
    }
    if !danger
        && !verify_ca_only
        && off(
            last(&settings, "ssl.endpoint.identification.algorithm"),
            &["none"],
        )
    {
        return Err(Error::config(
            "ssl.endpoint.identification.algorithm",
            format!("none accepts a certificate of any host: use .tls(Tls::verify_ca()) to check the CA only, or {DANGER_ACCEPT_INVALID_CERTS}=true"),
        ));
    }
    // The files, checked now: a typo is a setting error, not a handshake failure later.
    let mut files = if tls_on {
        crate::tls::Tls::verify_full()
    } else {
        crate::tls::Tls::disabled()
    };
    let ca = last(&settings, "ssl.ca.location");
    if let Some(ca) = ca.filter(|ca| *ca != "probe" && !std::path::Path::new(ca).is_dir()) {
        files = files.ca_file(ca);
    }
    match (
        last(&settings, "ssl.certificate.location"),
        last(&settings, "ssl.key.location"),
    ) {
        (Some(c), Some(k)) => files = files.client_cert(c, k),
        (None, None) => {}
        _ => {
            return Err(Error::config(
                "ssl.certificate.location",
                "a client certificate needs both ssl.certificate.location and ssl.key.location",
            ))
        }
    }
    if !tls_on && ca.is_some() {
        return Err(Error::config(
            "ssl.ca.location",
            "a CA was given but TLS is off: set security.protocol=ssl (or sasl_ssl)",
        ));
    }
    files.check_files("ssl.*.location")?;
    let verify_host = tls_on
        && !last(&settings, "ssl.endpoint.identification.algorithm")
            .is_some_and(|v| v.eq_ignore_ascii_case("none"))
        && !last(&settings, "enable.ssl.certificate.verification")
            .is_some_and(|v| v.eq_ignore_ascii_case("false") || v == "0");
    Ok(Security {
        settings,
        tls: tls_on,
        verify_host,
    })
}

/// A parsed `kafka://host:port[,host:port][?property=value&...]` URL.
///
/// `user:password@` sets `sasl.username` / `sasl.password` (and, unless given,
/// `security.protocol=sasl_ssl`, `sasl.mechanisms=PLAIN`: the password never goes
/// in the clear unless `security.protocol=sasl_plaintext` is given). Query pairs are
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
            // The password goes over TLS unless plaintext is asked for by name.
            settings.push(("security.protocol".into(), "sasl_ssl".into()));
            if !settings
                .iter()
                .any(|(k, _)| k == "sasl.mechanisms" || k == "sasl.mechanism")
            {
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

    fn pairs(raw: &[(&str, &str)]) -> Vec<(String, String)> {
        raw.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn setting<'a>(s: &'a Security, key: &str) -> Option<&'a str> {
        last(&s.settings, key)
    }

    fn refused_field(r: Result<Security>) -> &'static str {
        match r {
            Err(Error::Config { field, .. }) => field,
            other => panic!("expected a Config error, got {other:?}"),
        }
    }

    /// The typed settings map to librdkafka's names and verify the host by default.
    #[test]
    fn typed_tls_and_sasl_map_to_librdkafka_settings() {
        use crate::tls::Tls;
        let ca = std::env::temp_dir().join(format!("outboxer-kafka-ca-{}.pem", std::process::id()));
        std::fs::write(
            &ca,
            "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        let sasl = Sasl {
            mechanism: SaslMechanism::ScramSha256,
            username: "me".into(),
            password: "hunter2".into(),
        };
        let s = security(&[], Some(&Tls::verify_full().ca_file(&ca)), Some(&sasl)).expect("valid");
        assert!(s.tls);
        assert_eq!(setting(&s, "security.protocol"), Some("sasl_ssl"));
        assert_eq!(
            setting(&s, "ssl.endpoint.identification.algorithm"),
            Some("https")
        );
        assert_eq!(
            setting(&s, "enable.ssl.certificate.verification"),
            Some("true")
        );
        assert_eq!(setting(&s, "ssl.ca.location"), ca.to_str());
        assert_eq!(setting(&s, "sasl.mechanisms"), Some("SCRAM-SHA-256"));
        assert!(!format!("{sasl:?}").contains("hunter2"));
        let s = security(&[], Some(&Tls::verify_ca().ca_file(&ca)), None).expect("valid");
        assert_eq!(setting(&s, "security.protocol"), Some("ssl"));
        assert_eq!(
            setting(&s, "ssl.endpoint.identification.algorithm"),
            Some("none")
        );
        // A userinfo URL asking for plaintext; a typed Tls turns it into sasl_ssl.
        let url =
            KafkaUrl::parse("kafka://me:pw@h?security.protocol=sasl_plaintext").expect("valid");
        let s = security(&url.settings, Some(&Tls::verify_full()), None).expect("valid");
        assert_eq!(setting(&s, "security.protocol"), Some("sasl_ssl"));
        // The URL's own names, as librdkafka reads them.
        let url = KafkaUrl::parse(&format!(
            "kafka://h?security.protocol=SSL&ssl.ca.location={}",
            ca.display()
        ))
        .expect("valid");
        let s = security(&url.settings, None, None).expect("valid");
        assert!(s.tls);
        // The loud switch turns both checks off, and only with TLS on.
        let s = security(
            &pairs(&[
                ("security.protocol", "ssl"),
                (DANGER_ACCEPT_INVALID_CERTS, "true"),
            ]),
            None,
            None,
        )
        .expect("valid");
        assert_eq!(
            setting(&s, "enable.ssl.certificate.verification"),
            Some("false")
        );
        assert_eq!(
            setting(&s, "ssl.endpoint.identification.algorithm"),
            Some("none")
        );
        assert!(!s
            .settings
            .iter()
            .any(|(k, _)| k == DANGER_ACCEPT_INVALID_CERTS));
        let s = security(
            &[],
            Some(&Tls::verify_full().danger_accept_invalid_certificates(true)),
            None,
        )
        .expect("valid");
        assert_eq!(
            setting(&s, "enable.ssl.certificate.verification"),
            Some("false")
        );
        let _ = std::fs::remove_file(&ca);
    }

    /// Nothing turns verification off, or TLS silently off, by accident.
    #[test]
    fn weakening_tls_by_accident_is_refused() {
        use crate::tls::Tls;
        let ssl = ("security.protocol", "ssl");
        for (raw, field) in [
            (
                vec![ssl, ("enable.ssl.certificate.verification", "false")],
                "enable.ssl.certificate.verification",
            ),
            (
                vec![ssl, ("ssl.endpoint.identification.algorithm", "none")],
                "ssl.endpoint.identification.algorithm",
            ),
            (
                vec![ssl, (DANGER_ACCEPT_INVALID_CERTS, "yes")],
                DANGER_ACCEPT_INVALID_CERTS,
            ),
            (
                vec![(DANGER_ACCEPT_INVALID_CERTS, "true")],
                DANGER_ACCEPT_INVALID_CERTS,
            ),
            (
                vec![("ssl.ca.location", "/etc/hostname")],
                "ssl.ca.location",
            ),
            (
                vec![ssl, ("ssl.ca.location", "/no/such/ca.pem")],
                "ssl.*.location",
            ),
            (
                vec![ssl, ("ssl.ca.location", "/etc/hostname")],
                "ssl.*.location",
            ),
            (
                vec![ssl, ("ssl.certificate.location", "/etc/hostname")],
                "ssl.certificate.location",
            ),
            (vec![("security.protocol", "tls")], "security.protocol"),
        ] {
            assert_eq!(
                refused_field(security(&pairs(&raw), None, None)),
                field,
                "{raw:?}"
            );
        }
        // A typed Tls::disabled() with a raw CA is TLS off with a CA: refused.
        assert_eq!(
            refused_field(security(
                &pairs(&[ssl, ("ssl.ca.location", "/etc/hostname")]),
                Some(&Tls::disabled()),
                None
            )),
            "ssl.ca.location"
        );
        assert!(KafkaUrl::parse("kafka://h?security.protocol=tls").is_err());
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
        // A password in the URL goes over TLS unless plaintext is asked for by name.
        let protocol = |u: &KafkaUrl| last(&u.settings, "security.protocol").map(str::to_string);
        let u = KafkaUrl::parse("kafka://me:pw@h").expect("valid");
        assert_eq!(protocol(&u).as_deref(), Some("sasl_ssl"));
        assert_eq!(last(&u.settings, "sasl.mechanisms"), Some("PLAIN"));
        let u = KafkaUrl::parse("kafka://me:pw@h?security.protocol=sasl_plaintext").expect("valid");
        assert_eq!(protocol(&u).as_deref(), Some("sasl_plaintext"));
        let u = KafkaUrl::parse("kafka://me:pw@h?sasl.mechanism=SCRAM-SHA-256").expect("valid");
        assert!(!u.settings.iter().any(|(k, _)| k == "sasl.mechanisms"));
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
