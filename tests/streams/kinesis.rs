//! Kinesis against moto (`scripts/moto-server start`; OUTBOXER_AWS_URL), with
//! the conformance streams behind the shared fault proxy (see `sqs.rs`).

use crate::aws::{client, cut_shared_proxy, endpoint, own_proxy, shared_proxy, url};
use crate::conformance::{read, stored, unique, Consumer, Received, StreamHarness};
use crate::fault_proxy::Fault;
use outboxer::stream::aws::{AwsClient, Service};
use outboxer::stream::kinesis::{self, KinesisStream, MAX_RECORD_SIZE};
use outboxer::{Error, Headers, Options, Stream, MESSAGE_ID_HEADER};
use serde_json::json;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const SHARDS: u64 = 2;

fn create_stream(name: &str) {
    let c = client(Service::Kinesis);
    c.call_json(
        "CreateStream",
        &json!({"StreamName": name, "ShardCount": SHARDS}),
    )
    .expect("CreateStream");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let d = c
            .call_json("DescribeStreamSummary", &json!({"StreamName": name}))
            .expect("DescribeStreamSummary");
        if d["StreamDescriptionSummary"]["StreamStatus"] == "ACTIVE" {
            return;
        }
        assert!(Instant::now() < deadline, "stream {name} not ACTIVE");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Reads every shard of a stream from the start.
pub struct ShardReader {
    client: AwsClient,
    name: String,
    /// Shard iterators, created at the first read.
    iterators: RefCell<Vec<String>>,
}

impl ShardReader {
    fn new(name: &str) -> Self {
        ShardReader {
            client: client(Service::Kinesis),
            name: name.to_string(),
            iterators: RefCell::new(Vec::new()),
        }
    }

    /// Decoded records with their partition keys.
    fn records(&self, n: usize, within: Duration) -> Vec<(String, kinesis::KinesisRecord)> {
        self.raw_records(n, within)
            .into_iter()
            .map(|(key, data)| {
                let r = kinesis::decode_record(&data).expect("outboxer envelope");
                (key, r)
            })
            .collect()
    }

    /// Records' data (base64-decoded, as an SDK hands it over) with their partition keys.
    fn raw_records(&self, n: usize, within: Duration) -> Vec<(String, Vec<u8>)> {
        let mut its = self.iterators.borrow_mut();
        if its.is_empty() {
            let shards = self
                .client
                .call_json("ListShards", &json!({"StreamName": self.name}))
                .expect("ListShards");
            for s in shards["Shards"].as_array().expect("shards") {
                let it = self
                    .client
                    .call_json(
                        "GetShardIterator",
                        &json!({"StreamName": self.name, "ShardId": s["ShardId"],
                                "ShardIteratorType": "TRIM_HORIZON"}),
                    )
                    .expect("GetShardIterator");
                its.push(it["ShardIterator"].as_str().expect("iterator").to_string());
            }
        }
        let deadline = Instant::now() + within;
        let mut got = Vec::new();
        while got.len() < n && Instant::now() < deadline {
            for it in its.iter_mut() {
                let r = self
                    .client
                    .call_json("GetRecords", &json!({"ShardIterator": it, "Limit": 1000}))
                    .expect("GetRecords");
                for rec in r["Records"].as_array().into_iter().flatten() {
                    let data = base64_decode(rec["Data"].as_str().expect("data"));
                    let key = rec["PartitionKey"].as_str().unwrap_or("").to_string();
                    got.push((key, data));
                }
                if let Some(next) = r["NextShardIterator"].as_str() {
                    *it = next.to_string();
                }
            }
            if got.len() < n {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        got
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .expect("base64")
}

impl Consumer for ShardReader {
    fn receive(&self, n: usize, within: Duration) -> Vec<Received> {
        self.raw_records(n, within)
            .into_iter()
            .map(|(partition_key, data)| {
                let decoded = outboxer::decode::kinesis(&data);
                // Another producer's record is received as it is, without headers.
                let (payload, headers) = match kinesis::decode_record(&data) {
                    Ok(r) => {
                        let mut headers = r.headers;
                        headers.insert(MESSAGE_ID_HEADER.to_string(), r.message_id);
                        (r.payload, headers)
                    }
                    Err(_) => (data, BTreeMap::new()),
                };
                Received {
                    decoded,
                    payload,
                    headers,
                    key: Some(partition_key),
                }
            })
            .collect()
    }
}

pub struct Kinesis;

impl StreamHarness for Kinesis {
    type S = KinesisStream;
    type C = ShardReader;
    fn stream() -> KinesisStream {
        KinesisStream::builder(&url("kinesis", &shared_proxy().url()))
            .request_timeout(Duration::from_secs(5))
            .build()
            .expect("Kinesis stream")
    }
    fn unreachable() -> KinesisStream {
        KinesisStream::builder("kinesis://AKID:hunter2@us-east-1?endpoint=http://127.0.0.1:1")
            .request_attempts(2)
            .build()
            .expect("valid URL")
    }
    fn destination(name: &str) -> (Options, ShardReader) {
        create_stream(name);
        (kinesis::stream(name).into(), ShardReader::new(name))
    }
    fn refused_destination(name: &str) -> Options {
        kinesis::stream(name).into() // never created
    }
    fn invalid_options() -> Options {
        Options::from([
            ("stream_name".to_string(), json!("s")),
            ("partition_key".to_string(), json!(5)),
        ])
    }
    fn max_message_size() -> usize {
        MAX_RECORD_SIZE
    }
    fn cut_connections() {
        cut_shared_proxy();
    }
    fn publish_foreign(dest: &Options, payload: &[u8]) {
        use base64::Engine as _;
        let name = dest["stream_name"].as_str().expect("stream_name");
        client(Service::Kinesis)
            .call_json(
                "PutRecord",
                &json!({"StreamName": name, "PartitionKey": "foreign",
                        "Data": base64::engine::general_purpose::STANDARD.encode(payload)}),
            )
            .expect("PutRecord");
    }
}

stream_conformance!(Kinesis);

/// moto never throttles, so throttled records are injected: the first
/// PutRecords answer says record 0 went in and record 1 was throttled. The
/// stream must send record 1 again, and only it: moto then holds exactly
/// record 1 (record 0's "success" was the proxy's).
#[test]
fn only_throttled_records_are_sent_again() {
    let _g = read();
    let name = unique("k_thr");
    create_stream(&name);
    let reader = ShardReader::new(&name);
    let proxy = own_proxy();
    let mut s = KinesisStream::builder(&url("kinesis", &proxy.url()))
        .build()
        .expect("stream");
    proxy.inject([Fault::Status(
        200,
        r#"{"FailedRecordCount":1,"Records":[
            {"SequenceNumber":"1","ShardId":"shardId-000000000000"},
            {"ErrorCode":"ProvisionedThroughputExceededException","ErrorMessage":"slow down"}]}"#,
    )]);
    let dest: Options = kinesis::stream(&name).into();
    let out = s.publish(
        &[stored(1, b"r0", &dest, None), stored(2, b"r1", &dest, None)],
        &crate::common::deadline(),
    );
    assert!(out.iter().all(Result::is_ok), "{out:?}");
    assert_eq!(proxy.requests(), 2);
    let got = reader.records(2, Duration::from_secs(3));
    let payloads: Vec<&[u8]> = got.iter().map(|(_, r)| r.payload.as_slice()).collect();
    assert_eq!(payloads, [b"r1".as_slice()]);
}

/// A key whose record stays throttled holds back its later records, which are
/// never sent; other keys go through.
#[test]
fn a_failing_key_holds_back_its_later_records() {
    let _g = read();
    let name = unique("k_hold");
    create_stream(&name);
    let reader = ShardReader::new(&name);
    let proxy = own_proxy();
    let mut s = KinesisStream::builder(&url("kinesis", &proxy.url()))
        .record_attempts(2)
        .build()
        .expect("stream");
    let throttled_a = r#"{"FailedRecordCount":1,"Records":[
        {"ErrorCode":"ProvisionedThroughputExceededException","ErrorMessage":"hot shard"},
        {"ErrorCode":"InternalFailure","ErrorMessage":"oops"}]}"#;
    let throttled_a_only = r#"{"FailedRecordCount":1,"Records":[
        {"ErrorCode":"ProvisionedThroughputExceededException","ErrorMessage":"hot shard"},
        {"SequenceNumber":"2","ShardId":"shardId-000000000001"}]}"#;
    // Wave 0 = [a1, b1]: both fail, both are sent again; a1 fails again, b1 goes in.
    proxy.inject([
        Fault::Status(200, throttled_a),
        Fault::Status(200, throttled_a_only),
    ]);
    let dest: Options = kinesis::stream(&name).into();
    let batch = [
        stored(1, b"a1", &dest, Some("a")),
        stored(2, b"b1", &dest, Some("b")),
        stored(3, b"a2", &dest, Some("a")),
        stored(4, b"b2", &dest, Some("b")),
    ];
    let out = s.publish(&batch, &crate::common::deadline());
    assert!(
        matches!(&out[0], Err(e) if e.is_transient()),
        "{:?}",
        out[0]
    );
    assert!(
        matches!(&out[2], Err(e) if e.is_transient() && e.to_string().contains("held back")),
        "{:?}",
        out[2]
    );
    assert!(out[1].is_ok() && out[3].is_ok(), "{out:?}");
    // Only b2 reached moto (a1 and b1 were answered by the proxy).
    let got = reader.records(2, Duration::from_secs(3));
    let payloads: Vec<&[u8]> = got.iter().map(|(_, r)| r.payload.as_slice()).collect();
    assert!(!payloads.contains(&b"a2".as_slice()), "{payloads:?}");
    assert_eq!(payloads, [b"b2".as_slice()]);
    assert_eq!(
        proxy.requests(),
        3,
        "two tries of wave 0, one of wave 1 (b2 only)"
    );
}

#[test]
fn server_errors_are_retried_then_delivered_once() {
    let _g = read();
    let name = unique("k_retry");
    create_stream(&name);
    let reader = ShardReader::new(&name);
    let proxy = own_proxy();
    let mut s = KinesisStream::builder(&url("kinesis", &proxy.url()))
        .build()
        .expect("stream");
    proxy.inject([
        Fault::Status(500, "{}"),
        Fault::Status(
            400,
            r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#,
        ),
        Fault::Drop,
    ]);
    let out = s.publish(
        &[stored(1, b"once", &kinesis::stream(&name).into(), None)],
        &crate::common::deadline(),
    );
    assert!(out[0].is_ok(), "{out:?}");
    assert_eq!(proxy.requests(), 4);
    let got = reader.records(2, Duration::from_secs(3));
    assert_eq!(got.len(), 1);
}

#[test]
fn partition_keys_follow_options_and_ordering_keys() {
    let _g = read();
    let name = unique("k_pk");
    create_stream(&name);
    let reader = ShardReader::new(&name);
    let mut s = KinesisStream::connect(&url("kinesis", &endpoint())).expect("stream");
    let plain: Options = kinesis::stream(&name).into();
    let keyed: Options = kinesis::stream(&name).partition_key("explicit").into();
    let a = stored(1, b"by-key", &plain, Some("order-1"));
    let b = stored(2, b"by-option", &keyed, Some("order-2"));
    let c = stored(3, b"by-id", &plain, None);
    let out = s.publish(&[a.clone(), b, c.clone()], &crate::common::deadline());
    assert!(out.iter().all(Result::is_ok), "{out:?}");
    let got: BTreeMap<Vec<u8>, String> = reader
        .records(3, Duration::from_secs(10))
        .into_iter()
        .map(|(k, r)| (r.payload, k))
        .collect();
    assert_eq!(got[b"by-key".as_slice()], "order-1");
    assert_eq!(got[b"by-option".as_slice()], "explicit");
    assert_eq!(got[b"by-id".as_slice()], c.message_id.to_string());
}

#[test]
fn bad_input_is_refused_at_send() {
    let s = KinesisStream::connect(&url("kinesis", &endpoint())).expect("stream");
    let v = s.validator();
    let h = Headers::new();
    for (o, what) in [
        (
            json!({"stream_name": "s", "partition_key": ""}),
            "empty key",
        ),
        (
            json!({"stream_name": "s", "explicit_hash_key": "x"}),
            "hash key",
        ),
        (json!({"stream_nam": "s"}), "unknown"),
        (json!({"stream_name": ["s"]}), "type"),
    ] {
        let o: Options = serde_json::from_value(o).expect("object");
        assert!(
            matches!(v.validate(b"x", &h, &o), Err(Error::InvalidOption { .. })),
            "{what}"
        );
    }
    // Binary payloads are base64 in the envelope: 800 KiB of them no longer fit.
    assert!(matches!(
        v.validate(&vec![0xff; 800 * 1024], &h, &kinesis::stream("s").into()),
        Err(Error::PayloadTooLarge { .. })
    ));
    for bad in [
        "kinesis://AKID:hunter2@eu_west",
        "sqs://AKID:hunter2@us-east-1",
    ] {
        let e = KinesisStream::connect(bad).expect_err(bad);
        assert!(matches!(e, Error::InvalidUrl { .. }) && !format!("{e}{e:?}").contains("hunter2"));
    }
}

/// Against the signature-checking moto: a wrong secret or a failing credentials
/// provider is `Unauthorized` (an outage, never counted) for every record, a
/// missing stream is still the message's own failure once the credentials work.
#[test]
fn credentials_failures_are_outages_and_missing_streams_are_not() {
    use crate::aws::{auth_endpoint, signed_admin, signer, FailingProvider, Switchable};
    use outboxer::stream::aws::Credentials;
    use std::sync::{Arc, Mutex};
    let admin = signed_admin(Service::Kinesis);
    let name = unique("k_auth");
    admin
        .call_json(
            "CreateStream",
            &json!({"StreamName": name, "ShardCount": 1}),
        )
        .expect("a signed CreateStream");
    let signer = signer().clone();
    let provider = Arc::new(Switchable(Mutex::new(Credentials::new(
        signer.access_key_id(),
        "not-the-secret",
        None,
    ))));
    let base =
        || KinesisStream::builder(&format!("kinesis://us-east-1?endpoint={}", auth_endpoint()));
    let mut s = base()
        .credentials_provider(provider.clone())
        .build()
        .expect("stream");
    let batch = [
        stored(1, b"a", &kinesis::stream(&name).into(), None),
        stored(2, b"b", &kinesis::stream(&unique("k_missing")).into(), None),
    ];
    let out = s.publish(&batch, &crate::common::deadline());
    for o in &out {
        match o {
            Err(
                e @ Error::Unauthorized {
                    what: "kinesis", ..
                },
            ) => {
                assert!(e.is_transient());
                assert!(!format!("{e} {e:?}").contains("not-the-secret"), "{e:?}");
            }
            other => panic!("a wrong secret is Unauthorized: {other:?}"),
        }
    }
    let mut failing = base()
        .credentials_provider(FailingProvider)
        .build()
        .expect("stream");
    let out = failing.publish(&batch, &crate::common::deadline());
    for o in &out {
        assert!(matches!(o, Err(Error::Unauthorized { .. })), "{o:?}");
    }
    // Fixed: the record goes in, the missing stream counts as a message failure.
    *provider.0.lock().unwrap_or_else(|e| e.into_inner()) = signer;
    let out = s.publish(&batch, &crate::common::deadline());
    assert!(out[0].is_ok(), "{out:?}");
    assert!(
        matches!(&out[1], Err(e @ Error::Rejected(_)) if !e.is_transient()),
        "{:?}",
        out[1]
    );
}

/// Issue 12, item 7: a publish to a server that never answers returns by its
/// deadline, and a relay stops within one request timeout.
#[test]
fn a_silent_server_holds_a_publish_no_longer_than_its_deadline() {
    let silent = crate::fault_proxy::SilentServer::start();
    let timeout = Duration::from_secs(1);
    let stream = || {
        KinesisStream::builder(&url("kinesis", &silent.url()))
            .request_timeout(timeout)
            .request_attempts(11)
            .build()
            .expect("stream")
    };
    crate::conformance::publish_returns_by_the_deadline(
        stream(),
        &kinesis::stream("k_silent").into(),
        Duration::from_secs(2),
        timeout,
    );
    assert!(silent.accepted() > 0, "the server was reached");
    crate::conformance::relay_stops_within_one_request_timeout(
        stream(),
        &kinesis::stream("k_silent").into(),
        timeout,
    );
}
