//! Kafka over TLS against the local TLS listeners of `scripts/tls/kafka.sh`: a
//! socat TLS terminator with the test CA's server certificate (localhost and
//! 127.0.0.1 only) on 127.0.0.1:9093 in front of an in-memory Tansu that
//! advertises 9093, and on 9095 in front of a Tansu that requires a SASL login.
//! 9093 and 9095 speak nothing but TLS: a record that reached the broker through
//! them went over TLS (a plaintext client is refused there, see below).
//!
//! Tansu has no SCRAM user that a test could create (see scripts/tls/kafka.sh):
//! the SASL case is a real refused login over TLS, not a successful one.

use crate::common::{pg, store, unique};
use crate::fixtures::{ca, other_ca, WrongHost};
use outboxer::stream::kafka::{self, KafkaStream, SaslMechanism};
use outboxer::tls::{Tls, TlsCause};
use outboxer::{Error, Message, Outbox, Stream, MESSAGE_ID_HEADER};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::{Headers as _, Message as _};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// TLS in front of a Tansu broker (plaintext on 9094, never used by clients).
const TLS: &str = "127.0.0.1:9093";
const TLS_BACKEND_PORT: &str = "9094";
/// TLS in front of a Tansu broker that requires a SASL login.
const SASL_TLS: &str = "127.0.0.1:9095";

/// The plaintext test broker (OUTBOXER_KAFKA_URL's first host, default 9092).
fn plaintext_broker() -> String {
    std::env::var("OUTBOXER_KAFKA_URL")
        .ok()
        .and_then(|u| {
            u.trim_start_matches("kafka://")
                .split([',', '?', '/'])
                .next()
                .map(str::to_string)
        })
        .unwrap_or_else(|| "127.0.0.1:9092".into())
}

/// Fails loudly when a listener is missing: a TLS test never passes without it.
fn require(addr: &str) {
    let sa: SocketAddr = addr.parse().expect("socket address");
    if let Err(e) = TcpStream::connect_timeout(&sa, Duration::from_secs(2)) {
        panic!("nothing listens on {addr} ({e}): run `bash scripts/test-services up`");
    }
}

/// A one-partition topic on the TLS broker, created on its plaintext backend
/// (Tansu creates no topics by itself).
fn create_topic(name: &str) {
    let script = format!("{}/scripts/kafka-broker", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("bash")
        .args([&script, "topic", name, "1"])
        .env("OUTBOXER_KAFKA_PORT", TLS_BACKEND_PORT)
        .output()
        .expect("run scripts/kafka-broker");
    assert!(
        out.status.success(),
        "creating topic {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn tls_url() -> String {
    format!(
        "kafka://{TLS}?security.protocol=ssl&ssl.ca.location={}",
        ca().display()
    )
}

/// The message ids of the first `n` records of `topic`, read over verified TLS.
fn consume_over_tls(topic: &str, n: usize, within: Duration) -> BTreeSet<String> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", TLS)
        .set("security.protocol", "ssl")
        .set("ssl.ca.location", ca().display().to_string())
        .set("group.id", unique("tls_consumer"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("TLS consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .expect("partition");
    c.assign(&tpl).expect("assign");
    let deadline = Instant::now() + within;
    let mut ids = BTreeSet::new();
    while ids.len() < n && Instant::now() < deadline {
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let id = m.headers().and_then(|h| {
                    h.iter()
                        .find(|h| h.key == MESSAGE_ID_HEADER)
                        .and_then(|h| h.value)
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                });
                ids.insert(id.expect("every record carries its message id"));
            }
            Some(Err(e)) => eprintln!("consumer: {e}"),
            None => {}
        }
    }
    ids
}

/// The TLS terminator's log (socat -d -d), where each accepted session's TLS
/// version and cipher are written.
fn terminator_log() -> PathBuf {
    let cache = std::env::var_os("OUTBOXER_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                        .join(".cache")
                })
                .join("outboxer")
        });
    cache.join("kafka-tls-9093.log")
}

fn log_len() -> u64 {
    std::fs::metadata(terminator_log()).map_or(0, |m| m.len())
}

/// The terminator's word on the sessions it accepted since `offset`: its lines
/// naming the TLS version and the cipher.
fn tls_sessions_since(offset: u64) -> Vec<String> {
    let text = std::fs::read(terminator_log()).unwrap_or_default();
    let from = usize::try_from(offset).unwrap_or(0).min(text.len());
    String::from_utf8_lossy(&text[from..])
        .lines()
        .filter(|l| l.contains("SSL proto version used") || l.contains("SSL connection using"))
        .map(str::to_string)
        .collect()
}

fn drop_table(table: &str) {
    let _ = pg().batch_execute(&format!("DROP TABLE IF EXISTS \"{table}\""));
}

fn outbox(table: &str, stream: KafkaStream) -> Outbox<outboxer::store::PostgresStore> {
    Outbox::builder()
        .store(store(table))
        .stream(stream)
        .check_interval(Duration::from_millis(50))
        .build()
        .expect("outbox")
}

/// `Outbox::start` refused with `Error::Tls` of `cause`.
fn refused_at_start(stream: KafkaStream, cause: TlsCause) -> String {
    let table = unique("tls_kafka_refused");
    let outbox = outbox(&table, stream);
    let err = match outbox.start() {
        Err(e) => e,
        Ok(relay) => {
            let _ = relay.stop();
            drop_table(&table);
            panic!("the relay started; expected {cause:?}");
        }
    };
    drop_table(&table);
    match &err {
        Error::Tls { cause: c, .. } if *c == cause => err.to_string(),
        other => panic!("expected Error::Tls {cause:?}, got {other:?}"),
    }
}

#[test]
fn relay_delivers_over_verified_tls() {
    require(TLS);
    let topic = unique("tls_kafka");
    create_topic(&topic);
    let table = unique("tls_kafka");
    let stream = KafkaStream::builder(&format!("kafka://{TLS}"))
        .tls(Tls::verify_full().ca_file(ca()))
        .build()
        .expect("TLS stream");
    let outbox = outbox(&table, stream);
    let offset = log_len();
    let relay = outbox.start().expect("the relay starts over verified TLS");
    let mut sent = BTreeSet::new();
    for i in 0..20 {
        let id = outbox
            .send(Message::new(format!("m{i}").into_bytes()).route(kafka::topic(&topic)))
            .expect("send");
        sent.insert(id.to_string());
    }
    let got = consume_over_tls(&topic, sent.len(), Duration::from_secs(60));
    relay.stop().expect("stop");
    drop_table(&table);
    assert_eq!(got, sent, "every message delivered over TLS");
    // The server side's word: the sessions it accepted were TLS 1.2+ with a cipher.
    let sessions = tls_sessions_since(offset);
    assert!(
        sessions
            .iter()
            .any(|l| l.contains("TLSv1.3") || l.contains("TLSv1.2")),
        "no TLS session in {}: {sessions:?}",
        terminator_log().display()
    );
    assert!(
        sessions
            .iter()
            .any(|l| l.contains("SSL connection using TLS_")
                || l.contains("SSL connection using ECDHE")),
        "{sessions:?}"
    );
}

#[test]
fn the_url_form_connects_over_verified_tls() {
    require(TLS);
    let mut s = KafkaStream::connect(&tls_url()).expect("TLS from the URL's own settings");
    s.close();
}

#[test]
fn a_wrong_ca_is_refused_at_start() {
    require(TLS);
    let stream = KafkaStream::builder(&format!("kafka://{TLS}"))
        .tls(Tls::verify_full().ca_file(other_ca()))
        .build()
        .expect("stream");
    let text = refused_at_start(stream, TlsCause::CertificateNotTrusted);
    assert!(text.contains("certificate"), "{text}");
    // The URL form says the same.
    let url = format!(
        "kafka://{TLS}?security.protocol=ssl&ssl.ca.location={}",
        other_ca().display()
    );
    assert!(matches!(
        KafkaStream::connect(&url),
        Err(Error::Tls {
            cause: TlsCause::CertificateNotTrusted,
            ..
        })
    ));
}

#[test]
fn a_wrong_host_name_is_refused_at_start() {
    require(TLS);
    let wrong = WrongHost::to(TLS);
    let stream = KafkaStream::builder(&format!("kafka://{}", wrong.addr()))
        .tls(Tls::verify_full().ca_file(ca()))
        .build()
        .expect("stream");
    refused_at_start(stream, TlsCause::HostnameMismatch);
}

#[test]
fn verify_ca_and_the_danger_switch_do_what_they_say() {
    require(TLS);
    let wrong = WrongHost::to(TLS);
    // The chain checked, the name not: the bootstrap through 127.0.0.2 passes (the
    // broker then advertises 127.0.0.1:9093).
    let mut s = KafkaStream::builder(&format!("kafka://{}", wrong.addr()))
        .tls(Tls::verify_ca().ca_file(ca()))
        .build()
        .expect("stream");
    s.connect()
        .expect("verify-ca accepts a certificate for another name");
    s.close();
    // An unrelated CA is still refused by verify-ca.
    let mut s = KafkaStream::builder(&format!("kafka://{TLS}"))
        .tls(Tls::verify_ca().ca_file(other_ca()))
        .build()
        .expect("stream");
    assert!(matches!(
        s.connect(),
        Err(Error::Tls {
            cause: TlsCause::CertificateNotTrusted,
            ..
        })
    ));
    // Only the loud switch accepts anything.
    let url = format!(
        "kafka://{}?security.protocol=ssl&ssl.ca.location={}&danger_accept_invalid_certs=true",
        wrong.addr(),
        other_ca().display()
    );
    let mut s = KafkaStream::connect(&url).expect("the danger switch accepts anything");
    s.close();
    // Turning verification off by librdkafka's own name alone is refused.
    for off in [
        "enable.ssl.certificate.verification=false",
        "ssl.endpoint.identification.algorithm=none",
    ] {
        let url = format!("{}&{off}", tls_url());
        assert!(
            matches!(
                KafkaStream::builder(&url).build(),
                Err(Error::Config { .. })
            ),
            "{off}"
        );
    }
}

#[test]
fn tls_to_a_plaintext_listener_is_refused_at_start() {
    let plain = plaintext_broker();
    require(&plain);
    let stream = KafkaStream::builder(&format!("kafka://{plain}"))
        .tls(Tls::verify_full().ca_file(ca()))
        .build()
        .expect("stream");
    refused_at_start(stream, TlsCause::ServerWithoutTls);
}

#[test]
fn plaintext_to_a_tls_listener_is_refused_at_start() {
    require(TLS);
    let stream = KafkaStream::builder(&format!("kafka://{TLS}"))
        .build()
        .expect("stream");
    refused_at_start(stream, TlsCause::ServerRequiresTls);
}

#[test]
fn a_refused_sasl_login_over_tls_is_unauthorized_and_keeps_its_secret() {
    require(SASL_TLS);
    for mechanism in [SaslMechanism::ScramSha256, SaslMechanism::ScramSha512] {
        let mut s = KafkaStream::builder(&format!("kafka://{SASL_TLS}"))
            .tls(Tls::verify_full().ca_file(ca()))
            .sasl(mechanism, "outboxer", "sasl-s3cret-pw")
            .build()
            .expect("stream");
        match s.connect() {
            Err(e @ Error::Unauthorized { .. }) => {
                let text = format!("{e} {e:?}");
                assert!(!text.contains("sasl-s3cret-pw"), "{text}");
                assert!(text.contains("SASL"), "{text}");
            }
            other => panic!("{mechanism:?}: expected Unauthorized, got {other:?}"),
        }
        s.close();
    }
    // The URL form: user and password in the userinfo, the rest by librdkafka's names.
    let url = format!(
        "kafka://outboxer:sasl-s3cret-pw@{SASL_TLS}?security.protocol=sasl_ssl&sasl.mechanisms=SCRAM-SHA-512&ssl.ca.location={}",
        ca().display()
    );
    match KafkaStream::connect(&url) {
        Err(e @ Error::Unauthorized { .. }) => {
            let text = format!("{e} {e:?}");
            assert!(!text.contains("sasl-s3cret-pw"), "{text}");
        }
        other => panic!("expected Unauthorized, got {other:?}"),
    }
}

/// The async API: the same stream, started and refused by `async_impl::Outbox`.
#[cfg(feature = "async")]
#[tokio::test]
async fn the_async_outbox_relays_over_tls_and_refuses_a_wrong_ca() {
    use outboxer::async_impl::store::PostgresStore;
    use outboxer::async_impl::Outbox as AsyncOutbox;
    require(TLS);
    let topic = unique("tls_kafka_async");
    let t = topic.clone();
    tokio::task::spawn_blocking(move || create_topic(&t))
        .await
        .expect("create topic");
    let table = unique("tls_kafka_async");
    let store = PostgresStore::builder(&crate::common::pg_url())
        .table(&table)
        .build()
        .await
        .expect("store");
    store.migrate().await.expect("migrate");
    let wrong = KafkaStream::builder(&format!("kafka://{TLS}"))
        .tls(Tls::verify_full().ca_file(other_ca()))
        .build()
        .expect("stream");
    let refused = AsyncOutbox::builder()
        .store(store.clone())
        .stream(wrong)
        .build()
        .expect("outbox");
    assert!(matches!(
        refused.start().await,
        Err(Error::Tls {
            cause: TlsCause::CertificateNotTrusted,
            ..
        })
    ));
    let stream = KafkaStream::builder(&format!("kafka://{TLS}"))
        .tls(Tls::verify_full().ca_file(ca()))
        .build()
        .expect("stream");
    let outbox = AsyncOutbox::builder()
        .store(store)
        .stream(stream)
        .check_interval(Duration::from_millis(50))
        .build()
        .expect("outbox");
    let relay = outbox.start().await.expect("starts over verified TLS");
    let mut sent = BTreeSet::new();
    for i in 0..5 {
        let id = outbox
            .send(Message::new(format!("a{i}").into_bytes()).route(kafka::topic(&topic)))
            .await
            .expect("send");
        sent.insert(id.to_string());
    }
    let t = topic.clone();
    let got = tokio::task::spawn_blocking(move || consume_over_tls(&t, 5, Duration::from_secs(60)))
        .await
        .expect("consume");
    relay.stop().await.expect("stop");
    tokio::task::spawn_blocking(move || drop_table(&table))
        .await
        .expect("drop table");
    assert_eq!(got, sent, "every message delivered over TLS");
}

/// The `outboxer` command over TLS (tests/cli.rs runs the binary the same way).
#[cfg(feature = "cli")]
mod cli {
    use super::*;
    use std::process::{Output, Stdio};

    use crate::fixtures::outboxer;

    fn insert(table: &str, topic: &str, n: i64) {
        pg().execute(
            &format!(
                "INSERT INTO \"{table}\" (payload, options)
                 SELECT convert_to('m' || g, 'UTF8'), jsonb_build_object('topic', $1::text)
                 FROM generate_series(1, $2::bigint) AS g"
            ),
            &[&topic, &n],
        )
        .expect("plain SQL insert");
    }

    /// Runs to completion within 60 s (else kills it and fails).
    fn run(cmd: Command) -> Output {
        crate::common::run_to_end(cmd, Duration::from_secs(60))
    }

    fn relay(table: &str, stream: &str) -> Command {
        let mut c = outboxer();
        c.args([
            "relay",
            "--store",
            &crate::common::pg_url(),
            "--table",
            table,
            "--stream",
            stream,
            "--check-interval",
            "50ms",
        ]);
        c
    }

    #[test]
    fn outboxer_relay_delivers_over_verified_tls() {
        require(TLS);
        let topic = unique("tls_kafka_cli");
        create_topic(&topic);
        let table = unique("tls_kafka_cli");
        drop(store(&table));
        insert(&table, &topic, 10);
        let mut child = relay(&table, &tls_url())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn relay");
        let got = consume_over_tls(&topic, 10, Duration::from_secs(60));
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(s) = child.try_wait().expect("wait") {
                break Some(s);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut log = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut log);
        }
        drop_table(&table);
        assert_eq!(got.len(), 10, "delivered over TLS by the command:\n{log}");
        assert!(
            status.is_some_and(|s| s.success()),
            "clean exit on SIGTERM: {status:?}\n{log}"
        );
    }

    #[test]
    fn outboxer_relay_with_a_wrong_ca_exits_non_zero_at_start() {
        require(TLS);
        let table = unique("tls_kafka_cli_ca");
        drop(store(&table));
        let url = format!(
            "kafka://{TLS}?security.protocol=ssl&ssl.ca.location={}",
            other_ca().display()
        );
        let out = run(relay(&table, &url));
        drop_table(&table);
        let text = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "{text}");
        assert!(!text.contains("relay started"), "{text}");
        assert!(text.contains("not trusted"), "{text}");
    }
}
