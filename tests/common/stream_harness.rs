//! The stream conformance suite's harness (its cases are in tests/streams/conformance.rs;
//! tests/async_api/streams.rs runs cases of its own on the same harness): what a
//! stream's test module provides, what a consumer received, and the AMQP harness
//! both targets use.

use outboxer::stream::amqp::{self, AmqpStream, DEFAULT_MAX_MESSAGE_SIZE};
use outboxer::{Options, Stream};
use std::collections::BTreeMap;
use std::sync::RwLock;
use std::time::Duration;

/// Cases that cut every connection take this lock for writing; all others for reading.
pub static DISRUPTION: RwLock<()> = RwLock::new(());

/// What a consumer received.
#[derive(Debug)]
pub struct Received {
    pub payload: Vec<u8>,
    pub headers: BTreeMap<String, String>,
    /// The key the broker filed the message under (Kafka record key, Kinesis partition
    /// key, Pub/Sub ordering key), where the consumer sees one.
    pub key: Option<String>,
    /// The stream's `outboxer::decode` entry point applied to what the broker's
    /// client delivered (the raw delivery, record or message).
    pub decoded: outboxer::Result<outboxer::decode::Incoming>,
}

/// A consumer on one destination.
pub trait Consumer {
    /// Receives until `n` messages arrived or `within` passed.
    fn receive(&self, n: usize, within: Duration) -> Vec<Received>;
}

/// What the suite needs from a stream's test module.
pub trait StreamHarness {
    type S: Stream;
    type C: Consumer;
    /// A connected stream.
    fn stream() -> Self::S;
    /// The same stream type pointed at a server that is not there (not yet connected).
    fn unreachable() -> Self::S;
    /// A fresh destination with a consumer attached; returns its routing options.
    /// The consumer sees each ordering key's messages in the order they were published.
    fn destination(name: &str) -> (Options, Self::C);
    /// Routing options that this broker refuses per message (e.g. unroutable).
    fn refused_destination(name: &str) -> Options;
    /// Options the stream rejects as invalid (unknown key or wrong type).
    fn invalid_options() -> Options;
    /// The stream's size limit at `send`.
    fn max_message_size() -> usize;
    /// Cuts every connection the broker has (the stream must reconnect by itself).
    fn cut_connections();
    /// Publishes `payload` to the destination with the broker's own client, as
    /// another producer would: no outboxer message id, headers or envelope.
    fn publish_foreign(dest: &Options, payload: &[u8]);
}

impl Consumer for super::Sink {
    fn receive(&self, n: usize, within: Duration) -> Vec<Received> {
        self.collect(n, within)
            .into_iter()
            .map(|g| Received {
                decoded: outboxer::decode::amqp(&g.delivery),
                payload: g.body,
                headers: g.headers,
                key: None,
            })
            .collect()
    }
}

/// RabbitMQ (OUTBOXER_AMQP_URL, default the local broker).
pub struct Amqp;

impl StreamHarness for Amqp {
    type S = AmqpStream;
    type C = super::Sink;
    fn stream() -> AmqpStream {
        AmqpStream::connect(&super::amqp_url()).expect("RabbitMQ on 127.0.0.1:5672")
    }
    fn unreachable() -> AmqpStream {
        AmqpStream::builder("amqp://guest:secret@127.0.0.1:1/%2f")
            .build()
            .expect("valid URL")
    }
    fn destination(name: &str) -> (Options, super::Sink) {
        let sink = super::Sink::new(name, "#");
        (amqp::topic(name, "k").into(), sink)
    }
    fn refused_destination(name: &str) -> Options {
        // An exchange with no queue bound: the mandatory publish comes back.
        amqp::topic(name, "nobody.listens").into()
    }
    fn invalid_options() -> Options {
        Options::from([("exchange.nam".to_string(), serde_json::json!("typo"))])
    }
    fn max_message_size() -> usize {
        DEFAULT_MAX_MESSAGE_SIZE
    }
    fn cut_connections() {
        let ok = std::process::Command::new("rabbitmqctl")
            .args(["-q", "close_all_connections", "outboxer stream conformance"])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "rabbitmqctl close_all_connections");
    }
    fn publish_foreign(dest: &Options, payload: &[u8]) {
        let option = |k: &str| dest.get(k).and_then(|v| v.as_str()).unwrap_or_default();
        let mut conn = amiquip::Connection::insecure_open(&super::amqp_url()).expect("RabbitMQ");
        let ch = conn.open_channel(None).expect("channel");
        ch.basic_publish(
            option("exchange.name"),
            amiquip::Publish::new(payload, option("routing_key")),
        )
        .expect("publish");
        conn.close().expect("close");
    }
}
