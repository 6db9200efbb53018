//! RabbitMQ (OUTBOXER_AMQP_URL, default the local broker).

use crate::common::{amqp_url, Sink};
use crate::conformance::{Consumer, Received, StreamHarness};
use outboxer::stream::amqp::{self, AmqpStream, DEFAULT_MAX_MESSAGE_SIZE};
use outboxer::Options;
use std::time::Duration;

impl Consumer for Sink {
    fn receive(&self, n: usize, within: Duration) -> Vec<Received> {
        self.collect(n, within)
            .into_iter()
            .map(|g| Received {
                payload: g.body,
                headers: g.headers,
            })
            .collect()
    }
}

pub struct Amqp;

impl StreamHarness for Amqp {
    type S = AmqpStream;
    type C = Sink;
    fn stream() -> AmqpStream {
        AmqpStream::connect(&amqp_url()).expect("RabbitMQ on 127.0.0.1:5672")
    }
    fn unreachable() -> AmqpStream {
        AmqpStream::builder("amqp://guest:secret@127.0.0.1:1/%2f")
            .build()
            .expect("valid URL")
    }
    fn destination(name: &str) -> (Options, Sink) {
        let sink = Sink::new(name, "#");
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
}

stream_conformance!(Amqp);
