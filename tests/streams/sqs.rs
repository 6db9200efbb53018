//! SQS against moto (`scripts/moto-server start`; OUTBOXER_AWS_URL). The
//! conformance streams go through a process-wide fault proxy in front of moto:
//! moto keeps its queues in memory, so `cut_connections` makes the proxy drop
//! connections instead of restarting the server.

use crate::aws::{
    auth_endpoint, client, cut_shared_proxy, endpoint, own_proxy, shared_proxy, signed_admin,
    signer, url, FailingProvider, Switchable,
};
use crate::conformance::{read, stored, unique, Consumer, Received, StreamHarness};
use crate::fault_proxy::{Fault, SilentServer};
use outboxer::stream::aws::{AwsClient, Credentials, Service};
use outboxer::stream::sqs::{self, SqsStream, DEFAULT_MAX_MESSAGE_SIZE};
use outboxer::{Error, Options, Stream, MESSAGE_ID_HEADER};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Creates a queue (FIFO when the name ends in `.fifo`) and returns its URL.
fn create_queue(name: &str) -> String {
    let mut body = json!({"QueueName": name});
    if name.ends_with(".fifo") {
        body["Attributes"] = json!({"FifoQueue": "true"});
    }
    let answer = client(Service::Sqs)
        .call_json("CreateQueue", &body)
        .expect("CreateQueue");
    answer["QueueUrl"].as_str().expect("QueueUrl").to_string()
}

/// Receives (and deletes) messages of one queue, decoding outboxer's wire format.
pub struct QueueReader {
    client: AwsClient,
    url: String,
}

impl QueueReader {
    fn new(url: String) -> Self {
        QueueReader {
            client: client(Service::Sqs),
            url,
        }
    }

    /// Raw messages: body and string attributes.
    fn raw(&self, n: usize, within: Duration) -> Vec<(String, BTreeMap<String, String>)> {
        let deadline = Instant::now() + within;
        let mut got = Vec::new();
        while got.len() < n && Instant::now() < deadline {
            let answer = self
                .client
                .call_json(
                    "ReceiveMessage",
                    &json!({"QueueUrl": self.url, "MaxNumberOfMessages": 10,
                            "MessageAttributeNames": ["All"], "WaitTimeSeconds": 1}),
                )
                .expect("ReceiveMessage");
            let msgs = answer["Messages"].as_array().cloned().unwrap_or_default();
            let mut receipts = Vec::new();
            for (j, m) in msgs.iter().enumerate() {
                let attrs: BTreeMap<String, String> = m["MessageAttributes"]
                    .as_object()
                    .map(|o| {
                        o.iter()
                            .map(|(k, v)| {
                                (
                                    k.clone(),
                                    v["StringValue"].as_str().unwrap_or("").to_string(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                got.push((m["Body"].as_str().unwrap_or("").to_string(), attrs));
                receipts.push(json!({"Id": j.to_string(), "ReceiptHandle": m["ReceiptHandle"]}));
            }
            if !receipts.is_empty() {
                // Deleted at once: a FIFO group is blocked while it has messages in flight.
                self.client
                    .call_json(
                        "DeleteMessageBatch",
                        &json!({"QueueUrl": self.url, "Entries": receipts}),
                    )
                    .expect("DeleteMessageBatch");
            }
        }
        got
    }
}

impl Consumer for QueueReader {
    fn receive(&self, n: usize, within: Duration) -> Vec<Received> {
        self.raw(n, within)
            .into_iter()
            .map(|(body, attrs)| {
                let decoded = outboxer::decode::sqs(&body, &attrs);
                let d = sqs::decode(&body, &attrs).expect("outboxer wire format");
                let mut headers = d.headers;
                if let Some(id) = d.message_id {
                    headers.insert(MESSAGE_ID_HEADER.to_string(), id);
                }
                Received {
                    decoded,
                    payload: d.payload,
                    headers,
                    // The FIFO message group is not read back here.
                    key: None,
                }
            })
            .collect()
    }
}

/// SendMessage with a plain body and no attributes (FIFO: a group and a dedup id).
fn send_foreign(dest: &Options, payload: &[u8]) {
    let name = dest["queue_name"].as_str().expect("queue_name");
    let c = client(Service::Sqs);
    let url = c
        .call_json("GetQueueUrl", &json!({"QueueName": name}))
        .expect("GetQueueUrl")["QueueUrl"]
        .as_str()
        .expect("QueueUrl")
        .to_string();
    let mut body = json!({"QueueUrl": url,
                          "MessageBody": String::from_utf8_lossy(payload)});
    if name.ends_with(".fifo") {
        body["MessageGroupId"] = json!("foreign");
        body["MessageDeduplicationId"] = json!(unique("dedup"));
    }
    c.call_json("SendMessage", &body).expect("SendMessage");
}

fn through_proxy() -> SqsStream {
    SqsStream::builder(&url("sqs", &shared_proxy().url()))
        .request_timeout(Duration::from_secs(5))
        .build()
        .expect("SQS stream")
}

fn unreachable_stream() -> SqsStream {
    SqsStream::builder("sqs://AKID:hunter2@us-east-1?endpoint=http://127.0.0.1:1")
        .request_attempts(2)
        .build()
        .expect("valid URL")
}

/// A standard queue.
pub struct Sqs;

impl StreamHarness for Sqs {
    type S = SqsStream;
    type C = QueueReader;
    fn stream() -> SqsStream {
        through_proxy()
    }
    fn unreachable() -> SqsStream {
        unreachable_stream()
    }
    fn destination(name: &str) -> (Options, QueueReader) {
        let url = create_queue(name);
        (sqs::queue(name).into(), QueueReader::new(url))
    }
    fn refused_destination(name: &str) -> Options {
        sqs::queue(name).into() // never created
    }
    fn invalid_options() -> Options {
        Options::from([
            ("queue_name".to_string(), json!("q")),
            ("delay_second".to_string(), json!(1)),
        ])
    }
    fn max_message_size() -> usize {
        DEFAULT_MAX_MESSAGE_SIZE
    }
    fn publish_foreign(dest: &Options, payload: &[u8]) {
        send_foreign(dest, payload);
    }
    fn cut_connections() {
        cut_shared_proxy();
    }
}

/// A FIFO queue: message group = ordering key, dedup id = message id.
pub struct SqsFifo;

impl StreamHarness for SqsFifo {
    type S = SqsStream;
    type C = QueueReader;
    fn stream() -> SqsStream {
        through_proxy()
    }
    fn unreachable() -> SqsStream {
        unreachable_stream()
    }
    fn destination(name: &str) -> (Options, QueueReader) {
        let name = format!("{name}.fifo");
        let url = create_queue(&name);
        (sqs::queue(&name).into(), QueueReader::new(url))
    }
    fn refused_destination(name: &str) -> Options {
        sqs::queue(&format!("{name}.fifo")).into()
    }
    fn invalid_options() -> Options {
        sqs::queue("q.fifo").group("has space").into()
    }
    fn max_message_size() -> usize {
        DEFAULT_MAX_MESSAGE_SIZE
    }
    fn publish_foreign(dest: &Options, payload: &[u8]) {
        send_foreign(dest, payload);
    }
    fn cut_connections() {
        cut_shared_proxy();
    }
}

/// The relay case runs with `fifo` only (key order needs a FIFO queue).
mod standard {
    use super::*;
    stream_conformance!(Sqs, publish_only);
}

mod fifo {
    use super::*;
    stream_conformance!(SqsFifo);
}

// SQS-specific cases.

/// SQS allows 10 attributes a message: with more headers than slots, the trace
/// context still travels as attributes of its own (not inside `outboxer-headers`),
/// where SQS consumers and OpenTelemetry's SQS instrumentations read it.
#[test]
fn trace_context_is_a_real_message_attribute() {
    let url = create_queue(&unique("q_tc"));
    let reader = QueueReader::new(url.clone());
    let mut s = Sqs::stream();
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut m = stored(1, b"traced", &sqs::queue(&url).into(), None);
    for i in 0..12 {
        m.headers.insert(format!("a{i:02}"), "v".into());
    }
    m.headers.insert("traceparent".into(), tp.into());
    m.headers
        .insert("tracestate".into(), "congo=t61rcWkgMzE".into());
    let out = s.publish(&[m.clone()], &crate::common::deadline());
    assert!(out[0].is_ok(), "{out:?}");
    let got = reader.raw(1, Duration::from_secs(20));
    assert_eq!(got.len(), 1);
    let (body, attrs) = &got[0];
    assert!(attrs.len() <= 10, "{attrs:?}");
    assert_eq!(attrs.get("traceparent").map(String::as_str), Some(tp));
    assert_eq!(
        attrs.get("tracestate").map(String::as_str),
        Some("congo=t61rcWkgMzE")
    );
    let d = sqs::decode(body, attrs).expect("decodes");
    assert_eq!(d.headers, m.headers);
    assert_eq!(
        d.trace_context().map(|c| c.traceparent().to_string()),
        Some(tp.to_string())
    );
    s.close();
}

#[test]
fn throttling_and_server_errors_are_retried_then_delivered_once() {
    let name = unique("q_retry");
    let url = create_queue(&name);
    let reader = QueueReader::new(url.clone());
    let proxy = own_proxy();
    let mut s = SqsStream::builder(&crate::aws::url("sqs", &proxy.url()))
        .request_attempts(5)
        .build()
        .expect("stream");
    proxy.inject([
        Fault::Status(429, "{}"),
        Fault::Status(500, "{}"),
        Fault::Status(503, "{}"),
        Fault::Status(
            400,
            r#"{"__type":"com.amazonaws.sqs#ThrottlingException","message":"slow down"}"#,
        ),
    ]);
    // The queue URL skips GetQueueUrl: every request counted is the batch call.
    let out = s.publish(
        &[stored(1, b"once", &sqs::queue(&url).into(), None)],
        &crate::common::deadline(),
    );
    assert!(out[0].is_ok(), "{out:?}");
    assert_eq!(
        proxy.requests(),
        5,
        "four faults, then the call that got through"
    );
    let got = reader.receive(2, Duration::from_secs(3));
    assert_eq!(got.len(), 1, "delivered once");
    assert_eq!(got[0].payload, b"once");
}

#[test]
fn exhausted_retries_are_transient() {
    let url = create_queue(&unique("q_busy"));
    let proxy = own_proxy();
    let mut s = SqsStream::builder(&crate::aws::url("sqs", &proxy.url()))
        .request_attempts(2)
        .build()
        .expect("stream");
    proxy.inject([Fault::Status(503, "{}"), Fault::Status(503, "{}")]);
    let out = s.publish(
        &[stored(1, b"x", &sqs::queue(&url).into(), None)],
        &crate::common::deadline(),
    );
    assert!(matches!(&out[0], Err(Error::Unavailable { .. })), "{out:?}");
    assert_eq!(proxy.requests(), 2);
}

#[test]
fn slow_answers_are_a_transient_timeout() {
    let url = create_queue(&unique("q_slow"));
    let proxy = own_proxy();
    let mut s = SqsStream::builder(&crate::aws::url("sqs", &proxy.url()))
        .request_timeout(Duration::from_millis(300))
        .request_attempts(2)
        .build()
        .expect("stream");
    proxy.inject([
        Fault::Delay(Duration::from_secs(2)),
        Fault::Delay(Duration::from_secs(2)),
    ]);
    let started = Instant::now();
    let out = s.publish(
        &[
            stored(1, b"a", &sqs::queue(&url).into(), None),
            stored(2, b"b", &sqs::queue(&url).into(), None),
        ],
        &crate::common::deadline(),
    );
    for o in &out {
        assert!(matches!(o, Err(Error::Timeout(_))), "{o:?}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

/// moto fails no entry of a batch we would send (our validation refuses what it
/// refuses per entry), so the partial answer is injected by the proxy: the
/// stream must map each `Failed` entry to its message, and hold back the rest of
/// a key whose message failed without another call.
#[test]
fn partial_batch_failure_fails_only_those_entries() {
    let url = create_queue(&unique("q_part"));
    let dest: Options = sqs::queue(&url).into();
    let proxy = own_proxy();
    let mut s = SqsStream::builder(&crate::aws::url("sqs", &proxy.url()))
        .build()
        .expect("stream");
    proxy.inject([Fault::Status(
        200,
        r#"{"Successful":[{"Id":"1","MessageId":"m1","MD5OfMessageBody":"x"}],
            "Failed":[{"Id":"0","SenderFault":false,"Code":"InternalError","Message":"try again"},
                      {"Id":"2","SenderFault":true,"Code":"InvalidParameterValue","Message":"bad"}]}"#,
    )]);
    let out = s.publish(
        &[
            stored(1, b"a1", &dest, Some("a")),
            stored(2, b"free", &dest, None),
            stored(3, b"b1", &dest, Some("b")),
            stored(4, b"a2", &dest, Some("a")),
        ],
        &crate::common::deadline(),
    );
    assert!(
        matches!(&out[0], Err(e) if e.is_transient()),
        "{:?}",
        out[0]
    );
    assert!(out[1].is_ok(), "{:?}", out[1]);
    assert!(matches!(&out[2], Err(Error::Rejected(_))), "{:?}", out[2]);
    assert!(
        matches!(&out[3], Err(e) if e.is_transient() && e.to_string().contains("held back")),
        "a2 must not overtake a1: {:?}",
        out[3]
    );
    assert_eq!(proxy.requests(), 1, "a2 was never sent");
}

#[test]
fn queue_names_resolve_once_and_urls_work() {
    let _g = read();
    let name = unique("q_name");
    let url = create_queue(&name);
    let reader = QueueReader::new(url.clone());
    let proxy = own_proxy();
    let mut s = SqsStream::builder(&crate::aws::url("sqs", &proxy.url()))
        .build()
        .expect("stream");
    for i in 0..3 {
        assert!(s.publish(
            &[stored(i, b"n", &sqs::queue(&name).into(), None)],
            &crate::common::deadline()
        )[0]
        .is_ok());
    }
    assert_eq!(proxy.requests(), 4, "one GetQueueUrl, three sends");
    assert!(s.publish(
        &[stored(
            9,
            b"u",
            &sqs::queue(&url).delay_seconds(0).into(),
            None
        )],
        &crate::common::deadline()
    )[0]
    .is_ok());
    assert_eq!(reader.receive(4, Duration::from_secs(10)).len(), 4);
}

#[test]
fn fifo_deduplicates_a_republished_message() {
    let _g = read();
    let name = format!("{}.fifo", unique("q_dedup"));
    let url = create_queue(&name);
    let reader = QueueReader::new(url);
    let mut s = SqsStream::connect(&crate::aws::url("sqs", &endpoint())).expect("stream");
    let m = stored(1, b"twice", &sqs::queue(&name).into(), Some("k"));
    // A relay that crashed after the publish publishes the same row again.
    assert!(s.publish(std::slice::from_ref(&m), &crate::common::deadline())[0].is_ok());
    assert!(s.publish(std::slice::from_ref(&m), &crate::common::deadline())[0].is_ok());
    let got = reader.receive(2, Duration::from_secs(3));
    assert_eq!(
        got.len(),
        1,
        "SQS dropped the duplicate by its dedup id (the message id)"
    );
    assert_eq!(got[0].headers[MESSAGE_ID_HEADER], m.message_id.to_string());
}

#[test]
fn bad_input_is_refused_at_send_and_nothing_is_stored() {
    use crate::common::{store, unique as table_name};
    use outboxer::{Message, Outbox};
    let table = table_name("sqs_bad");
    let outbox = Outbox::builder()
        .store(store(&table))
        .stream(SqsStream::connect(&crate::aws::url("sqs", &endpoint())).expect("stream"))
        .build()
        .expect("outbox");
    let q = unique("q_bad");
    let bad: Vec<(Message, &str)> = vec![
        (
            Message::new(b"x".to_vec()).route(sqs::queue(&q).delay_seconds(901)),
            "delay",
        ),
        (
            Message::new(b"x".to_vec())
                .option("queue_name", q.as_str())
                .option("queue_nam", "x"),
            "unknown",
        ),
        (Message::new(b"x".to_vec()).option("queue_name", 7), "type"),
        (
            Message::new(b"x".to_vec())
                .option("queue_name", q.as_str())
                .option("delay_seconds", "soon"),
            "type",
        ),
        (
            Message::new(b"x".to_vec()).route(sqs::queue(&q).group("g")),
            "group on standard",
        ),
        (
            Message::new(vec![b'a'; 256 * 1024]).route(sqs::queue(&q)),
            "oversize",
        ),
        (
            Message::new(b"x".to_vec())
                .route(sqs::queue(&q))
                .header(MESSAGE_ID_HEADER, "forged"),
            "reserved",
        ),
    ];
    for (m, what) in bad {
        match outbox.send(m) {
            Err(
                Error::InvalidOption { .. }
                | Error::PayloadTooLarge { .. }
                | Error::InvalidHeader { .. },
            ) => {}
            other => panic!("{what}: {other:?}"),
        }
    }
    let n: i64 = crate::common::pg()
        .query_one(&format!("SELECT count(*) FROM \"{table}\""), &[])
        .expect("count")
        .get(0);
    assert_eq!(n, 0, "nothing stored");
    let _ = crate::common::pg().batch_execute(&format!("DROP TABLE IF EXISTS \"{table}\""));
}

#[test]
fn urls_and_settings_are_checked_and_secrets_redacted() {
    for bad in [
        "sqs://AKID:hunter2@US_EAST",
        "sqs://AKID:hunter2@us-east-1/path",
        "sqs://AKID:hunter2@us-east-1?endpoint=ftp://h",
        "sqs://AKID:hunter2@us-east-1?secret=1",
        "kinesis://AKID:hunter2@us-east-1",
    ] {
        let err = SqsStream::connect(bad).expect_err(bad);
        assert!(matches!(err, Error::InvalidUrl { .. }), "{bad}: {err}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        assert!(!format!("{err:?}").contains("hunter2"), "{err:?}");
    }
    let s = SqsStream::connect("sqs://AKID:hunter2@us-east-1?endpoint=http://127.0.0.1:4566")
        .expect("valid");
    assert!(!format!("{s:?}").contains("hunter2"), "{s:?}");
    assert!(matches!(
        SqsStream::builder("sqs://us-east-1")
            .max_message_size(2 << 20)
            .build(),
        Err(Error::Config { .. })
    ));
    // Errors of a publish never carry the secret either.
    let mut s = unreachable_stream();
    let out = s.publish(
        &[stored(1, b"x", &sqs::queue("q").into(), None)],
        &crate::common::deadline(),
    );
    let e = out[0].as_ref().expect_err("unreachable");
    assert!(!format!("{e} {e:?}").contains("hunter2"), "{e:?}");
}

#[test]
fn signatures_are_checked_by_the_server() {
    let signer = signer().clone();
    let name = unique("q_signed");
    let base = || SqsStream::builder(&format!("sqs://us-east-1?endpoint={}", auth_endpoint()));
    let admin = AwsClient::connect(
        &format!(
            "sqs://{}:{}@us-east-1?endpoint={}",
            signer.access_key_id(),
            signer.secret_access_key().replace('/', "%2F"),
            auth_endpoint()
        ),
        Service::Sqs,
    )
    .expect("client");
    let created: Value = admin
        .call_json("CreateQueue", &json!({"QueueName": name}))
        .expect("a signed CreateQueue with the right key");
    let queue_url = created["QueueUrl"].as_str().expect("url").to_string();
    let dest: Options = sqs::queue(&name).into();

    let mut good = base().credentials(signer.clone()).build().expect("stream");
    let out = good.publish(
        &[stored(1, b"signed", &dest, None)],
        &crate::common::deadline(),
    );
    assert!(out[0].is_ok(), "{out:?}");

    let wrong = Credentials::new(signer.access_key_id(), "not-the-secret", None);
    let mut bad = base().credentials(wrong).build().expect("stream");
    let out = bad.publish(
        &[stored(2, b"forged", &dest, None)],
        &crate::common::deadline(),
    );
    // A wrong secret is an outage of the credentials, not a bad message: transient
    // (released without counting an attempt, never parked).
    match &out[0] {
        Err(
            e @ Error::Unauthorized {
                what: "sqs",
                reason,
            },
        ) => {
            assert!(e.is_transient());
            assert!(reason.contains("403"), "{reason}");
            assert!(!format!("{e} {e:?}").contains("not-the-secret"), "{e:?}");
        }
        other => panic!("a wrong secret must be refused as Unauthorized: {other:?}"),
    }
    let got = admin
        .call_json(
            "ReceiveMessage",
            &json!({"QueueUrl": queue_url, "MaxNumberOfMessages": 10, "WaitTimeSeconds": 1}),
        )
        .expect("receive");
    let bodies: Vec<&str> = got["Messages"]
        .as_array()
        .map(|a| a.iter().filter_map(|m| m["Body"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(bodies, ["signed"]);
}

/// A provider is asked before every request; the environment works as one.
#[test]
fn credentials_from_a_provider_and_the_environment() {
    use outboxer::stream::aws::CredentialsProvider;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[derive(Debug)]
    struct Counting(Credentials, AtomicUsize);
    impl CredentialsProvider for Counting {
        fn credentials(&self) -> outboxer::Result<Credentials> {
            self.1.fetch_add(1, Ordering::SeqCst);
            Ok(self.0.clone())
        }
    }

    let signer = signer().clone();
    let name = unique("q_creds");
    let provider = Arc::new(Counting(signer.clone(), AtomicUsize::new(0)));
    let mut s = SqsStream::builder(&format!("sqs://us-east-1?endpoint={}", auth_endpoint()))
        .credentials_provider(provider.clone())
        .build()
        .expect("stream");
    let created = AwsClient::connect(
        &format!(
            "sqs://{}:{}@us-east-1?endpoint={}",
            signer.access_key_id(),
            signer.secret_access_key().replace('/', "%2F"),
            auth_endpoint()
        ),
        Service::Sqs,
    )
    .expect("client")
    .call_json("CreateQueue", &json!({"QueueName": name}))
    .expect("CreateQueue");
    assert!(created["QueueUrl"].is_string());
    let dest: Options = sqs::queue(&name).into();
    for i in 0..2 {
        assert!(s.publish(&[stored(i, b"p", &dest, None)], &crate::common::deadline())[0].is_ok());
    }
    // GetQueueUrl once, then two sends: each request signed with fresh credentials.
    assert_eq!(provider.1.load(Ordering::SeqCst), 3);

    // The service-specific variables only: other tests give their endpoints in URLs.
    std::env::set_var("AWS_ACCESS_KEY_ID", signer.access_key_id());
    std::env::set_var("AWS_SECRET_ACCESS_KEY", signer.secret_access_key());
    std::env::set_var("AWS_DEFAULT_REGION", "us-east-1");
    std::env::set_var("AWS_ENDPOINT_URL_SQS", auth_endpoint());
    let mut from_env = SqsStream::connect("sqs://").expect("all from the environment");
    let out = from_env.publish(
        &[stored(9, b"env", &dest, None)],
        &crate::common::deadline(),
    );
    std::env::remove_var("AWS_ENDPOINT_URL_SQS");
    assert!(out[0].is_ok(), "{out:?}");
    assert!(!format!("{from_env:?}").contains(signer.secret_access_key()));
}

/// A provider that fails is an outage of the credentials: every message of the
/// batch (on any queue) is `Unauthorized`, and nothing is sent.
#[test]
fn a_failing_credentials_provider_is_an_outage() {
    let proxy = own_proxy();
    let mut s = SqsStream::builder(&format!("sqs://us-east-1?endpoint={}", proxy.url()))
        .credentials_provider(FailingProvider)
        .build()
        .expect("stream");
    let out = s.publish(
        &[
            stored(1, b"a", &sqs::queue("q_one").into(), None),
            stored(2, b"b", &sqs::queue("q_two").into(), Some("k")),
            stored(3, b"c", &sqs::queue("http://127.0.0.1:1/1/q").into(), None),
        ],
        &crate::common::deadline(),
    );
    for o in &out {
        assert!(
            matches!(o, Err(Error::Unauthorized { what: "sqs", .. })),
            "{o:?}"
        );
    }
    assert_eq!(proxy.requests(), 0, "nothing unsigned was sent");
}

/// Item 5 of issue 12 against the signature-checking moto: with a wrong secret a
/// relay (max_attempts 2) parks nothing and counts no attempt for 10 s; once the
/// provider has the right secret, every message is delivered.
#[test]
fn wrong_credentials_park_nothing_and_delivery_resumes_once_fixed() {
    use crate::common::{store, unique as table_name};
    use outboxer::{FailureAction, Message, Outbox};
    use std::sync::{Arc, Mutex};
    let signer = signer().clone();
    let admin = signed_admin(Service::Sqs);
    let name = unique("q_outage");
    let queue_url = admin
        .call_json("CreateQueue", &json!({"QueueName": name}))
        .expect("CreateQueue")["QueueUrl"]
        .as_str()
        .expect("url")
        .to_string();
    let provider = Arc::new(Switchable(Mutex::new(Credentials::new(
        signer.access_key_id(),
        "not-the-secret",
        None,
    ))));
    let table = table_name("sqs_unauth");
    let outbox = Outbox::builder()
        .store(store(&table))
        .stream(
            SqsStream::builder(&format!("sqs://us-east-1?endpoint={}", auth_endpoint()))
                .credentials_provider(provider.clone())
                .build()
                .expect("stream"),
        )
        .max_attempts(2)
        .backoff(Duration::from_millis(50), Duration::from_millis(200))
        .check_interval(Duration::from_millis(50))
        .build()
        .expect("outbox");
    const N: usize = 5;
    let msgs: Vec<Message> = (0..N)
        .map(|i| Message::new(format!("m{i}").into_bytes()).route(sqs::queue(&name)))
        .collect();
    outbox.send_batch(&msgs).expect("send");
    let relay = outbox.start().expect("start");
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        let stats = outbox.stats().expect("stats");
        assert_eq!(stats.parked, 0, "a credentials outage parked a message");
        std::thread::sleep(Duration::from_millis(500));
    }
    let attempts: i32 = crate::common::pg()
        .query_one(
            &format!("SELECT coalesce(max(attempts), 0)::int FROM \"{table}\""),
            &[],
        )
        .expect("attempts")
        .get(0);
    assert_eq!(attempts, 0, "no attempt counted during the outage");
    let failures: Vec<_> = relay.err().try_iter().collect();
    assert!(
        failures
            .iter()
            .any(|f| matches!(f.error, Error::Unauthorized { .. })),
        "the outage is reported as Unauthorized: {failures:?}"
    );
    assert!(
        failures.iter().all(|f| f.action != FailureAction::Parked),
        "{failures:?}"
    );
    *provider.0.lock().unwrap_or_else(|e| e.into_inner()) = signer.clone();
    let mut bodies = Vec::new();
    let until = Instant::now() + Duration::from_secs(30);
    while bodies.len() < N && Instant::now() < until {
        let got = admin
            .call_json(
                "ReceiveMessage",
                &json!({"QueueUrl": queue_url, "MaxNumberOfMessages": 10, "WaitTimeSeconds": 1}),
            )
            .expect("receive");
        for m in got["Messages"].as_array().into_iter().flatten() {
            bodies.push(m["Body"].as_str().unwrap_or_default().to_string());
        }
    }
    bodies.sort();
    assert_eq!(bodies, (0..N).map(|i| format!("m{i}")).collect::<Vec<_>>());
    relay.stop().expect("stop");
    let stats = outbox.stats().expect("stats");
    assert_eq!((stats.parked, stats.pending), (0, 0), "{stats:?}");
    crate::common::drop_table(&table);
}

/// Issue 12, item 7: against a server that never answers, a publish returns by its
/// deadline (retries stop, each request's timeout is cut to what is left), and a
/// relay stops within one request timeout.
#[test]
fn a_silent_server_holds_a_publish_no_longer_than_its_deadline() {
    let silent = SilentServer::start();
    let timeout = Duration::from_secs(1);
    let stream = || {
        SqsStream::builder(&crate::aws::url("sqs", &silent.url()))
            .request_timeout(timeout)
            .request_attempts(11)
            .build()
            .expect("stream")
    };
    crate::conformance::publish_returns_by_the_deadline(
        stream(),
        &sqs::queue("q_silent").into(),
        Duration::from_secs(2),
        timeout,
    );
    assert!(silent.accepted() > 0, "the server was reached");
    crate::conformance::relay_stops_within_one_request_timeout(
        stream(),
        &sqs::queue("q_silent").into(),
        timeout,
    );
}

/// The same through the fault proxy's slow mode in front of moto: every answer
/// comes 5 s late, the request timeout is 1 s, the deadline 2 s.
#[test]
fn slow_answers_hold_a_publish_no_longer_than_its_deadline() {
    let url = create_queue(&unique("q_late"));
    let proxy = own_proxy();
    proxy.inject(std::iter::repeat_n(
        Fault::Delay(Duration::from_secs(5)),
        20,
    ));
    let timeout = Duration::from_secs(1);
    crate::conformance::publish_returns_by_the_deadline(
        SqsStream::builder(&crate::aws::url("sqs", &proxy.url()))
            .request_timeout(timeout)
            .request_attempts(11)
            .build()
            .expect("stream"),
        &sqs::queue(&url).into(),
        Duration::from_secs(2),
        timeout,
    );
}
