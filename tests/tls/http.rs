//! SQS, Kinesis and Pub/Sub over https with the test CA: socat terminators
//! (`scripts/tls/http.sh`) serve TLS in front of moto and the Pub/Sub emulator:
//! https 127.0.0.1:4576 -> moto 4566, 4578 -> moto 4566 with a client certificate
//! required, 8096 -> the emulator 8086. A relay delivers over verified TLS; a
//! wrong CA, a wrong host name and both plaintext/TLS mismatches are refused at
//! start with `Error::Tls` naming the cause; `AWS_CA_BUNDLE` and
//! `GRPC_DEFAULT_SSL_ROOTS_FILE_PATH` are honoured (in child processes: the
//! environment is process-wide); the `outboxer relay` command does the same.

use crate::common::{store, unique};
use crate::fixtures::{ca, client_cert, other_ca, WrongHost};
use outboxer::stream::aws::{AwsClient, Service};
use outboxer::stream::{kinesis, pubsub, sqs, KinesisStream, PubSubStream, SqsStream};
use outboxer::tls::{Tls, TlsCause};
use outboxer::{Error, Message, Outbox, Stream};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const MOTO: &str = "127.0.0.1:4566";
const MOTO_TLS: &str = "127.0.0.1:4576";
const MOTO_MTLS: &str = "127.0.0.1:4578";
const EMULATOR: &str = "127.0.0.1:8086";
const EMULATOR_TLS: &str = "127.0.0.1:8096";
const PROJECT: &str = "outboxer-tls";

/// The servers must be there: a TLS test never passes without them.
fn need(addr: &str) {
    assert!(
        TcpStream::connect_timeout(&addr.parse().expect("address"), Duration::from_secs(2)).is_ok(),
        "nothing listens on {addr}: run `bash scripts/test-services up`"
    );
}

fn path(p: std::path::PathBuf) -> String {
    p.to_str().expect("UTF-8 path").to_string()
}

/// Sessions the terminator on `port` reports as encrypted: socat (-d -d) logs
/// "SSL proto version used: TLSv1.3" for each connection it accepted over TLS.
fn encrypted_sessions(port: u16) -> usize {
    let cache = std::env::var_os("OUTBOXER_CACHE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("XDG_CACHE_HOME")
                .map(std::path::PathBuf::from)
                .unwrap_or_else(|| {
                    std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                        .join(".cache")
                })
                .join("outboxer")
        });
    let log = cache.join(format!("socat-{port}.log"));
    let text = std::fs::read_to_string(&log)
        .unwrap_or_else(|e| panic!("{}: {e} (scripts/tls/http.sh up)", log.display()));
    text.lines()
        .filter(|l| l.contains("SSL proto version used: TLSv1."))
        .count()
}

/// `sqs://` / `kinesis://` with moto's test credentials.
fn aws_url(scheme: &str, endpoint: &str, query: &str) -> String {
    need(endpoint.rsplit("//").next().unwrap_or(endpoint));
    format!("{scheme}://test:test@us-east-1?endpoint={endpoint}{query}")
}

fn ca_param() -> String {
    format!("&ca_file={}", path(ca()))
}

/// The stream's start-up check must fail with this TLS cause.
fn refused(mut stream: impl Stream, cause: TlsCause) -> String {
    match stream.connect() {
        Err(Error::Tls {
            cause: c,
            reason,
            what,
        }) => {
            assert_eq!(c, cause, "{what}: {reason}");
            reason
        }
        other => panic!("expected Error::Tls({cause:?}), got {other:?}"),
    }
}

/// A signed AWS client over https with the test CA (setup and consumers).
fn aws_client(service: Service) -> AwsClient {
    let scheme = match service {
        Service::Sqs => "sqs",
        Service::Kinesis => "kinesis",
    };
    AwsClient::connect(
        &aws_url(scheme, &format!("https://{MOTO_TLS}"), &ca_param()),
        service,
    )
    .expect("client over https")
}

/// Sends `n` messages through a relay to `stream`; the message ids.
fn relay(stream: impl Stream, route: impl Fn() -> outboxer::Options, n: usize) -> BTreeSet<String> {
    let table = unique("tls_http");
    let outbox = Outbox::builder()
        .store(store(&table))
        .stream(stream)
        .check_interval(Duration::from_millis(50))
        .build()
        .expect("outbox");
    let relay = outbox.start().expect("the relay starts over verified TLS");
    let mut ids = BTreeSet::new();
    for i in 0..n {
        let m = Message::new(format!("m{i}").into_bytes()).route(route());
        ids.insert(outbox.send(m).expect("send").to_string());
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut delivered = 0;
    while delivered < n && Instant::now() < deadline {
        if let Ok(d) = relay.ok().recv_timeout(Duration::from_millis(200)) {
            let _ = d;
            delivered += 1;
        }
        if let Ok(f) = relay.err().try_recv() {
            panic!("relay failure: {f:?}");
        }
    }
    relay.stop().expect("stop");
    assert_eq!(delivered, n, "delivered over TLS");
    crate::common::drop_table(&table);
    ids
}

// ---------------------------------------------------------------- SQS

fn create_queue(name: &str) -> String {
    aws_client(Service::Sqs)
        .call_json("CreateQueue", &json!({"QueueName": name}))
        .expect("CreateQueue")["QueueUrl"]
        .as_str()
        .expect("QueueUrl")
        .to_string()
}

/// The outboxer message ids of up to `n` messages of a queue, received over https.
fn sqs_ids(queue_url: &str, n: usize) -> BTreeSet<String> {
    let c = aws_client(Service::Sqs);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut ids = BTreeSet::new();
    while ids.len() < n && Instant::now() < deadline {
        let a = c
            .call_json(
                "ReceiveMessage",
                &json!({"QueueUrl": queue_url, "MaxNumberOfMessages": 10,
                        "MessageAttributeNames": ["All"], "WaitTimeSeconds": 1}),
            )
            .expect("ReceiveMessage");
        for m in a["Messages"].as_array().into_iter().flatten() {
            if let Some(id) =
                m["MessageAttributes"][outboxer::MESSAGE_ID_HEADER]["StringValue"].as_str()
            {
                ids.insert(id.to_string());
            }
        }
    }
    ids
}

fn sqs_tls(query: &str) -> SqsStream {
    SqsStream::connect(&aws_url("sqs", &format!("https://{MOTO_TLS}"), query)).expect("stream")
}

#[test]
fn sqs_relay_over_verified_tls() {
    let q = unique("tls_sqs");
    let queue_url = create_queue(&q);
    let before = encrypted_sessions(4576);
    let sent = relay(sqs_tls(&ca_param()), || sqs::queue(&q).into(), 25);
    // The server's side: the relay's connections were TLS sessions.
    assert!(
        encrypted_sessions(4576) > before,
        "no TLS session in the terminator's log"
    );
    assert_eq!(sqs_ids(&queue_url, 25), sent);
}

#[test]
fn sqs_builder_tls_setter_and_client_certificate() {
    let q = unique("tls_sqs_mtls");
    let queue_url = create_queue(&q);
    let (cert, key) = client_cert();
    let stream = SqsStream::builder(&aws_url("sqs", &format!("https://{MOTO_MTLS}"), ""))
        .tls(Tls::verify_full().ca_file(ca()).client_cert(&cert, &key))
        .build()
        .expect("stream");
    let sent = relay(stream, || sqs::queue(&q).into(), 5);
    assert_eq!(sqs_ids(&queue_url, 5), sent);
    // Without the client certificate the terminator ends the handshake.
    let mut no_cert = SqsStream::builder(&aws_url("sqs", &format!("https://{MOTO_MTLS}"), ""))
        .tls(Tls::verify_full().ca_file(ca()))
        .build()
        .expect("stream");
    match no_cert.connect() {
        Err(Error::Tls { .. }) => {}
        other => panic!("expected Error::Tls, got {other:?}"),
    }
    // A key that is not the certificate's: refused at build, never a panic later.
    let e = SqsStream::builder(&aws_url("sqs", &format!("https://{MOTO_MTLS}"), ""))
        .tls(
            Tls::verify_full()
                .ca_file(ca())
                .client_cert(&cert, crate::fixtures::dir().join("server.key")),
        )
        .build()
        .expect_err("mismatched key");
    assert!(matches!(e, Error::Config { .. }), "{e}");
}

#[test]
fn sqs_wrong_ca_stops_the_relay_at_start() {
    let stream = sqs_tls(&format!("&ca_file={}", path(other_ca())));
    let outbox = Outbox::builder()
        .store(store(&unique("tls_http_ca")))
        .stream(stream)
        .build()
        .expect("outbox");
    match outbox.start() {
        Err(Error::Tls { cause, what, .. }) => {
            assert_eq!((cause, what), (TlsCause::CertificateNotTrusted, "sqs"))
        }
        Err(e) => panic!("expected Error::Tls, got {e}"),
        Ok(_) => panic!("the relay started with an untrusted certificate"),
    }
    // The built-in roots do not know the test CA either.
    refused(sqs_tls(""), TlsCause::CertificateNotTrusted);
}

#[test]
fn sqs_wrong_host_name_is_refused() {
    let wrong = WrongHost::to(MOTO_TLS);
    let stream = SqsStream::connect(&aws_url(
        "sqs",
        &format!("https://{}", wrong.addr()),
        &ca_param(),
    ))
    .expect("stream");
    refused(stream, TlsCause::HostnameMismatch);
    // The loudly named switch turns every check off (a throwaway test server).
    let mut danger = SqsStream::connect(&aws_url(
        "sqs",
        &format!("https://{}", wrong.addr()),
        "&danger_accept_invalid_certs=true",
    ))
    .expect("stream");
    danger.connect().expect("verification off");
}

#[test]
fn sqs_plaintext_and_tls_mismatches_are_refused() {
    // https to moto's plaintext port.
    refused(
        SqsStream::connect(&aws_url("sqs", &format!("https://{MOTO}"), &ca_param()))
            .expect("stream"),
        TlsCause::ServerWithoutTls,
    );
    // http to the TLS port: the server answers TLS only.
    let reason = refused(
        SqsStream::connect(&aws_url("sqs", &format!("http://{MOTO_TLS}"), "")).expect("stream"),
        TlsCause::ServerRequiresTls,
    );
    assert!(reason.contains("https://"), "{reason}");
    // TLS settings for an http:// endpoint: refused, never silently plaintext.
    let e = SqsStream::connect(&aws_url("sqs", &format!("http://{MOTO}"), &ca_param()))
        .expect_err("TLS settings with http://");
    assert!(matches!(e, Error::Config { .. }), "{e}");
    // A down server is an outage, not a TLS error: the relay starts and retries.
    let mut down = SqsStream::connect("sqs://test:test@us-east-1?endpoint=https://127.0.0.1:9")
        .expect("stream");
    let e = down.connect().expect_err("nothing listens");
    assert!(!matches!(e, Error::Tls { .. }) && e.is_transient(), "{e}");
}

/// Runs one `#[ignore]`d test of this binary in a child process with `env`.
fn child(test: &str, env: &[(&str, String)]) {
    let exe = std::env::current_exe().expect("test binary");
    let mut c = Command::new(exe);
    c.args([
        "--exact",
        test,
        "--ignored",
        "--nocapture",
        "--test-threads",
        "1",
    ]);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().expect("run the child");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && text.contains("1 passed"),
        "{test} {env:?}:\n{text}"
    );
}

#[test]
fn aws_ca_bundle_is_honoured() {
    need(MOTO_TLS);
    child(
        "http::aws_ca_bundle_child",
        &[("AWS_CA_BUNDLE", path(ca())), ("EXPECT", "ok".into())],
    );
    child(
        "http::aws_ca_bundle_child",
        &[
            ("AWS_CA_BUNDLE", path(other_ca())),
            ("EXPECT", "untrusted".into()),
        ],
    );
}

#[test]
#[ignore = "run by aws_ca_bundle_is_honoured in a child process"]
fn aws_ca_bundle_child() {
    let expect = std::env::var("EXPECT").expect("EXPECT");
    for mut s in [
        Box::new(sqs_tls("")) as Box<dyn Stream>,
        Box::new(
            KinesisStream::connect(&aws_url("kinesis", &format!("https://{MOTO_TLS}"), ""))
                .expect("stream"),
        ),
    ] {
        match (expect.as_str(), s.connect()) {
            ("ok", Ok(())) => {}
            (
                "untrusted",
                Err(Error::Tls {
                    cause: TlsCause::CertificateNotTrusted,
                    ..
                }),
            ) => {}
            (e, got) => panic!("expected {e}, got {got:?}"),
        }
    }
    // An explicit CA wins over the environment's.
    let mut s = sqs_tls(&format!(
        "&ca_file={}",
        path(if expect == "ok" { other_ca() } else { ca() })
    ));
    let got = s.connect();
    assert_eq!(got.is_ok(), expect != "ok", "{got:?}");
    // A plaintext endpoint just does not use the bundle.
    SqsStream::connect(&aws_url("sqs", &format!("http://{MOTO}"), ""))
        .expect("http:// with AWS_CA_BUNDLE set")
        .connect()
        .expect("plaintext moto");
}

// ---------------------------------------------------------------- Kinesis

fn create_stream(name: &str) {
    let c = aws_client(Service::Kinesis);
    c.call_json(
        "CreateStream",
        &json!({"StreamName": name, "ShardCount": 1}),
    )
    .expect("CreateStream");
    let deadline = Instant::now() + Duration::from_secs(20);
    while c
        .call_json("DescribeStreamSummary", &json!({"StreamName": name}))
        .expect("DescribeStreamSummary")["StreamDescriptionSummary"]["StreamStatus"]
        != "ACTIVE"
    {
        assert!(Instant::now() < deadline, "stream {name} not ACTIVE");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn kinesis_ids(name: &str, n: usize) -> BTreeSet<String> {
    use base64::Engine as _;
    let c = aws_client(Service::Kinesis);
    let it = c
        .call_json(
            "GetShardIterator",
            &json!({"StreamName": name, "ShardId": "shardId-000000000000",
                    "ShardIteratorType": "TRIM_HORIZON"}),
        )
        .expect("GetShardIterator");
    let mut it = it["ShardIterator"].as_str().expect("iterator").to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut ids = BTreeSet::new();
    while ids.len() < n && Instant::now() < deadline {
        let r = c
            .call_json("GetRecords", &json!({"ShardIterator": it, "Limit": 1000}))
            .expect("GetRecords");
        for rec in r["Records"].as_array().into_iter().flatten() {
            let data = base64::engine::general_purpose::STANDARD
                .decode(rec["Data"].as_str().expect("data"))
                .expect("base64");
            ids.insert(kinesis::decode_record(&data).expect("envelope").message_id);
        }
        it = r["NextShardIterator"].as_str().expect("next").to_string();
        std::thread::sleep(Duration::from_millis(100));
    }
    ids
}

fn kinesis_tls(endpoint: &str, query: &str) -> KinesisStream {
    KinesisStream::connect(&aws_url("kinesis", endpoint, query)).expect("stream")
}

#[test]
fn kinesis_relay_over_verified_tls() {
    let name = unique("tls_kin");
    create_stream(&name);
    let sent = relay(
        kinesis_tls(&format!("https://{MOTO_TLS}"), &ca_param()),
        || kinesis::stream(&name).into(),
        25,
    );
    assert_eq!(kinesis_ids(&name, 25), sent);
}

#[test]
fn kinesis_tls_mistakes_are_refused() {
    let https = format!("https://{MOTO_TLS}");
    refused(
        kinesis_tls(&https, &format!("&ca_file={}", path(other_ca()))),
        TlsCause::CertificateNotTrusted,
    );
    let wrong = WrongHost::to(MOTO_TLS);
    refused(
        kinesis_tls(&format!("https://{}", wrong.addr()), &ca_param()),
        TlsCause::HostnameMismatch,
    );
    refused(
        kinesis_tls(&format!("https://{MOTO}"), &ca_param()),
        TlsCause::ServerWithoutTls,
    );
    refused(
        kinesis_tls(&format!("http://{MOTO_TLS}"), ""),
        TlsCause::ServerRequiresTls,
    );
}

// ---------------------------------------------------------------- Pub/Sub

/// One REST call to the emulator's plaintext port (setup and consumers).
fn rest(method: &str, p: &str, body: Value) -> Value {
    need(EMULATOR);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into();
    let req = ureq::http::Request::builder()
        .method(method)
        .uri(format!("http://{EMULATOR}/v1/{p}"))
        .header("content-type", "application/json")
        .body(body.to_string().into_bytes())
        .expect("request");
    let mut resp = agent.run(req).expect("the Pub/Sub emulator");
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    assert!(
        (200..300).contains(&status),
        "{method} {p}: {status} {text}"
    );
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

fn pubsub_tls(query: &str) -> PubSubStream {
    need(EMULATOR_TLS);
    PubSubStream::connect(&format!(
        "pubsub://{PROJECT}?emulator=https://{EMULATOR_TLS}{query}"
    ))
    .expect("stream")
}

#[test]
fn pubsub_relay_over_verified_tls() {
    let topic = unique("tls_topic");
    let sub = unique("tls_sub");
    rest(
        "PUT",
        &format!("projects/{PROJECT}/topics/{topic}"),
        json!({}),
    );
    rest(
        "PUT",
        &format!("projects/{PROJECT}/subscriptions/{sub}"),
        json!({"topic": format!("projects/{PROJECT}/topics/{topic}")}),
    );
    let before = encrypted_sessions(8096);
    let sent = relay(pubsub_tls(&ca_param()), || pubsub::topic(&topic).into(), 25);
    assert!(
        encrypted_sessions(8096) > before,
        "no TLS session in the terminator's log"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut got = BTreeSet::new();
    while got.len() < 25 && Instant::now() < deadline {
        let r = rest(
            "POST",
            &format!("projects/{PROJECT}/subscriptions/{sub}:pull"),
            json!({"maxMessages": 100}),
        );
        let mut acks = Vec::new();
        for m in r["receivedMessages"].as_array().into_iter().flatten() {
            if let Some(id) = m["message"]["attributes"][outboxer::MESSAGE_ID_HEADER].as_str() {
                got.insert(id.to_string());
            }
            acks.push(m["ackId"].clone());
        }
        if !acks.is_empty() {
            rest(
                "POST",
                &format!("projects/{PROJECT}/subscriptions/{sub}:acknowledge"),
                json!({"ackIds": acks}),
            );
        }
    }
    assert_eq!(got, sent);
}

#[test]
fn pubsub_tls_mistakes_are_refused() {
    refused(
        pubsub_tls(&format!("&ca_file={}", path(other_ca()))),
        TlsCause::CertificateNotTrusted,
    );
    let wrong = WrongHost::to(EMULATOR_TLS);
    refused(
        PubSubStream::connect(&format!(
            "pubsub://{PROJECT}?emulator=https://{}{}",
            wrong.addr(),
            ca_param()
        ))
        .expect("stream"),
        TlsCause::HostnameMismatch,
    );
    refused(
        PubSubStream::connect(&format!(
            "pubsub://{PROJECT}?emulator=https://{EMULATOR}{}",
            ca_param()
        ))
        .expect("stream"),
        TlsCause::ServerWithoutTls,
    );
    // The plain emulator form (as PUBSUB_EMULATOR_HOST) pointed at the TLS port.
    refused(
        PubSubStream::connect(&format!("pubsub://{PROJECT}?emulator={EMULATOR_TLS}"))
            .expect("stream"),
        TlsCause::ServerRequiresTls,
    );
    // TLS settings with a plaintext emulator: refused at build.
    let e = PubSubStream::connect(&format!(
        "pubsub://{PROJECT}?emulator={EMULATOR}{}",
        ca_param()
    ))
    .expect_err("TLS settings with a plaintext emulator");
    assert!(matches!(e, Error::Config { .. }), "{e}");
    // The builder's setter, and the URL's TLS replaced by it.
    let mut s = PubSubStream::builder(&format!(
        "pubsub://{PROJECT}?emulator=https://{EMULATOR_TLS}"
    ))
    .tls(Tls::verify_full().ca_file(ca()))
    .build()
    .expect("stream");
    s.connect().expect("verified");
    assert!(matches!(
        PubSubStream::builder(&format!("pubsub://{PROJECT}"))
            .emulator(&format!("https://{EMULATOR_TLS}"))
            .tls(Tls::verify_ca().ca_file(ca()))
            .build(),
        Err(Error::Config { .. })
    ));
}

#[test]
fn pubsub_ca_bundle_env_is_honoured() {
    need(EMULATOR_TLS);
    child(
        "http::pubsub_ca_bundle_child",
        &[(pubsub::CA_BUNDLE_ENV, path(ca())), ("EXPECT", "ok".into())],
    );
    child(
        "http::pubsub_ca_bundle_child",
        &[
            (pubsub::CA_BUNDLE_ENV, path(other_ca())),
            ("EXPECT", "untrusted".into()),
        ],
    );
}

#[test]
#[ignore = "run by pubsub_ca_bundle_env_is_honoured in a child process"]
fn pubsub_ca_bundle_child() {
    let expect = std::env::var("EXPECT").expect("EXPECT");
    match (expect.as_str(), pubsub_tls("").connect()) {
        ("ok", Ok(())) => {}
        (
            "untrusted",
            Err(Error::Tls {
                cause: TlsCause::CertificateNotTrusted,
                ..
            }),
        ) => {}
        (e, got) => panic!("expected {e}, got {got:?}"),
    }
}

/// A token endpoint over TLS (rustls, the test server certificate) answering
/// every request with a token; the number of requests it answered.
fn tls_token_endpoint() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let dir = crate::fixtures::dir();
    let certs = CertificateDer::pem_file_iter(dir.join("server.pem"))
        .expect("server.pem")
        .collect::<Result<Vec<_>, _>>()
        .expect("certificates");
    let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).expect("server.key");
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server config"),
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let served = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&served);
    std::thread::spawn(move || {
        for tcp in listener.incoming().map_while(Result::ok) {
            let Ok(conn) = rustls::ServerConnection::new(Arc::clone(&config)) else {
                continue;
            };
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            // The request head, then its body (Content-Length).
            let mut req = Vec::new();
            let mut buf = [0u8; 4096];
            let complete = |r: &[u8]| {
                let text = String::from_utf8_lossy(r).to_ascii_lowercase();
                let Some(end) = text.find("\r\n\r\n") else {
                    return false;
                };
                let len = text
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                r.len() >= end + 4 + len
            };
            while !complete(&req) {
                match tls.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            if !complete(&req) {
                continue;
            }
            count.fetch_add(1, Ordering::SeqCst);
            let body = r#"{"access_token":"tls-token","expires_in":3600,"token_type":"Bearer"}"#;
            let _ = write!(
                tls,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = tls.flush();
            tls.conn.send_close_notify();
            let _ = tls.flush();
        }
    });
    (format!("https://localhost:{port}/token"), served)
}

/// A service-account key file whose token endpoint is `token_uri`.
fn service_account_key(token_uri: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(unique("tls_sa"));
    std::fs::create_dir_all(&dir).expect("dir");
    let pem = dir.join("key.pem");
    let st = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&pem)
        .stderr(Stdio::null())
        .status()
        .expect("the openssl CLI");
    assert!(st.success(), "openssl genpkey");
    let key = json!({
        "type": "service_account",
        "client_email": "relay@outboxer-tls.iam.gserviceaccount.com",
        "private_key": std::fs::read_to_string(&pem).expect("key"),
        "private_key_id": "tls",
        "token_uri": token_uri,
    });
    let path = dir.join("key.json");
    std::fs::write(&path, key.to_string()).expect("write key");
    path
}

#[test]
fn pubsub_token_endpoint_uses_the_streams_ca() {
    need(EMULATOR_TLS);
    let (token_uri, served) = tls_token_endpoint();
    let key = service_account_key(&token_uri);
    let build = |ca: std::path::PathBuf| {
        PubSubStream::builder(&format!(
            "pubsub://{PROJECT}?credentials={}",
            key.to_str().expect("UTF-8 path")
        ))
        // The emulator behind TLS stands in for Google's API (it ignores the token).
        .endpoint(&format!("https://{EMULATOR_TLS}"))
        .tls(Tls::verify_full().ca_file(ca))
        .build()
        .expect("stream")
    };
    // The webpki roots do not know the test CA: the token came over the stream's.
    build(ca()).connect().expect("a token over verified TLS");
    assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 1);
    let _ = std::fs::remove_dir_all(key.parent().expect("dir"));
}

// ---------------------------------------------------------------- the command

#[cfg(feature = "cli")]
mod cli {
    use super::*;

    use crate::fixtures::outboxer;

    /// Messages in the outbox table, sent with no relay running.
    fn enqueue(table: &str, queue: &str, n: usize) -> BTreeSet<String> {
        let outbox = Outbox::builder()
            .store(store(table))
            // Never started: `send` only writes the row.
            .stream(sqs_tls(&ca_param()))
            .build()
            .expect("outbox");
        (0..n)
            .map(|i| {
                outbox
                    .send(Message::new(format!("c{i}").into_bytes()).route(sqs::queue(queue)))
                    .expect("send")
                    .to_string()
            })
            .collect()
    }

    #[test]
    fn outboxer_relay_over_verified_tls() {
        let (table, q) = (unique("tls_cli"), unique("tls_cli_q"));
        let queue_url = create_queue(&q);
        let sent = enqueue(&table, &q, 10);
        let stream = aws_url("sqs", &format!("https://{MOTO_TLS}"), &ca_param());
        let relay = outboxer()
            .args([
                "relay",
                "--store",
                &crate::common::pg_url(),
                "--table",
                &table,
            ])
            .args(["--stream", &stream, "--check-interval", "50ms"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("outboxer relay");
        let got = sqs_ids(&queue_url, 10);
        let _ = Command::new("kill")
            .args(["-TERM", &relay.id().to_string()])
            .status();
        let out = relay.wait_with_output().expect("wait");
        let log = String::from_utf8_lossy(&out.stderr);
        assert_eq!(got, sent, "{log}");
        assert!(out.status.success(), "{log}");
        assert!(!log.contains("test:test"), "{log}");
        crate::common::drop_table(&table);
    }

    #[test]
    fn outboxer_relay_refuses_a_wrong_ca_at_start() {
        let table = unique("tls_cli_ca");
        enqueue(&table, "unused", 1);
        let stream = aws_url(
            "sqs",
            &format!("https://{MOTO_TLS}"),
            &format!("&ca_file={}", path(other_ca())),
        );
        let child = outboxer()
            .args([
                "relay",
                "--store",
                &crate::common::pg_url(),
                "--table",
                &table,
            ])
            .args(["--stream", &stream])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("outboxer relay");
        let pid = child.id();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        let out = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(o) => o.expect("output"),
            Err(_) => {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
                panic!("the relay did not exit on an untrusted certificate");
            }
        };
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{log}");
        assert!(log.contains("not trusted"), "{log}");
        crate::common::drop_table(&table);
    }
}
