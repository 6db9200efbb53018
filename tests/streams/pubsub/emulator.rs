//! The Pub/Sub emulator as the tests see it: its address, REST calls for setup, and
//! a pull subscription (message ordering on) that decodes what the stream sent, and
//! the conformance harness.

use super::*;

pub const PROJECT: &str = "outboxer-test";

pub fn emulator() -> String {
    std::env::var("OUTBOXER_PUBSUB_EMULATOR").unwrap_or_else(|_| "127.0.0.1:8086".into())
}

pub fn url() -> String {
    format!("pubsub://{PROJECT}")
}

/// The harness's proxy in front of the emulator (one per test process).
pub fn proxy() -> &'static FaultProxy {
    static PROXY: OnceLock<FaultProxy> = OnceLock::new();
    PROXY.get_or_init(|| FaultProxy::start(&emulator()))
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into()
}

/// One REST call to the emulator; panics unless it answers 2xx.
pub fn rest(method: &str, path: &str, body: Value) -> Value {
    let url = format!("http://{}/v1/{path}", emulator());
    let req = ureq::http::Request::builder()
        .method(method)
        .uri(url.as_str())
        .header("content-type", "application/json")
        .body(body.to_string().into_bytes())
        .expect("request");
    let mut resp = agent().run(req).unwrap_or_else(|e| {
        panic!(
            "Pub/Sub emulator on {} ({e}); see scripts/pubsub-emulator",
            emulator()
        )
    });
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    assert!(
        (200..300).contains(&status),
        "{method} {path}: {status} {text}"
    );
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

/// A pull subscription (message ordering on) of a new topic.
pub struct Sub {
    name: String,
}

pub fn create_topic(name: &str) {
    rest(
        "PUT",
        &format!("projects/{PROJECT}/topics/{name}"),
        json!({}),
    );
}

impl Sub {
    fn new(topic: &str) -> Sub {
        let name = format!("{topic}-sub");
        rest(
            "PUT",
            &format!("projects/{PROJECT}/subscriptions/{name}"),
            json!({
                "topic": format!("projects/{PROJECT}/topics/{topic}"),
                "enableMessageOrdering": true,
                "ackDeadlineSeconds": 60,
            }),
        );
        Sub { name }
    }

    /// Pulls (and acks) until `n` messages arrived or `within` passed.
    pub fn pull(&self, n: usize, within: Duration) -> Vec<Pulled> {
        self.pull_at_most(n, within, 1000)
    }

    /// `pull` with `max` messages per pull request (the emulator returns nothing
    /// when a pull response would be too large).
    pub fn pull_at_most(&self, n: usize, within: Duration, max: usize) -> Vec<Pulled> {
        let deadline = Instant::now() + within;
        let mut got = Vec::new();
        while got.len() < n && Instant::now() < deadline {
            let v = rest(
                "POST",
                &format!("projects/{PROJECT}/subscriptions/{}:pull", self.name),
                json!({"maxMessages": max, "returnImmediately": true}),
            );
            let received = v["receivedMessages"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if received.is_empty() {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            let mut acks = Vec::new();
            for r in received {
                acks.push(r["ackId"].clone());
                let m = &r["message"];
                let data = base64::engine::general_purpose::STANDARD
                    .decode(m["data"].as_str().unwrap_or_default())
                    .expect("base64 data");
                let attributes = m["attributes"]
                    .as_object()
                    .map(|a| {
                        a.iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                            .collect()
                    })
                    .unwrap_or_default();
                got.push(Pulled {
                    raw: r.clone(),
                    data,
                    attributes,
                    ordering_key: m["orderingKey"].as_str().map(str::to_string),
                });
            }
            rest(
                "POST",
                &format!("projects/{PROJECT}/subscriptions/{}:acknowledge", self.name),
                json!({ "ackIds": acks }),
            );
        }
        got
    }
}

/// A message as the subscriber got it.
#[derive(Clone, Debug)]
pub struct Pulled {
    /// The `ReceivedMessage` as pulled (`ackId` and `message`), for `outboxer::decode::pubsub`.
    pub raw: Value,
    pub data: Vec<u8>,
    pub attributes: BTreeMap<String, String>,
    pub ordering_key: Option<String>,
}

impl Consumer for Sub {
    fn receive(&self, n: usize, within: Duration) -> Vec<Received> {
        self.pull(n, within)
            .into_iter()
            .map(|p| Received {
                decoded: outboxer::decode::pubsub(&p.raw),
                payload: p.data,
                headers: p.attributes,
                key: p.ordering_key,
            })
            .collect()
    }
}

pub struct PubSub;

impl StreamHarness for PubSub {
    type S = PubSubStream;
    type C = Sub;
    fn stream() -> PubSubStream {
        PubSubStream::builder(&url())
            .emulator(&proxy().host())
            .build()
            .expect("Pub/Sub stream")
    }
    fn unreachable() -> PubSubStream {
        PubSubStream::builder("pubsub://outboxer-test?emulator=127.0.0.1:1")
            .request_attempts(2)
            .build()
            .expect("valid URL")
    }
    fn destination(name: &str) -> (Options, Sub) {
        let topic = name.replace('_', "-");
        create_topic(&topic);
        let sub = Sub::new(&topic);
        (pubsub::topic(&topic).into(), sub)
    }
    fn refused_destination(name: &str) -> Options {
        // Never created: NOT_FOUND.
        pubsub::topic(&name.replace('_', "-")).into()
    }
    fn invalid_options() -> Options {
        Options::from([
            ("topic_name".to_string(), json!("abc")),
            ("topik".to_string(), json!("typo")),
        ])
    }
    fn max_message_size() -> usize {
        MAX_MESSAGE_SIZE
    }
    fn cut_connections() {
        // More drops than one publish has tries: the next publish fails (transient),
        // a later one gets through on new connections.
        proxy().inject(std::iter::repeat_n(Fault::Drop, 6));
    }
    fn publish_foreign(dest: &Options, payload: &[u8]) {
        let topic = dest["topic_name"].as_str().expect("topic_name");
        let data = base64::engine::general_purpose::STANDARD.encode(payload);
        rest(
            "POST",
            &format!("projects/{PROJECT}/topics/{topic}:publish"),
            json!({"messages": [{"data": data}]}),
        );
    }
}
