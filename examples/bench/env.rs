//! Settings and names of one run, the messages and the library's streams.

use crate::args::{Args, StoreKind, StreamKind};
use crate::{BoxResult, LATENCY_MESSAGES, LATENCY_RATE_PER_S, PAYLOAD_SIZE, ROUTING_KEY};
use outboxer::stream::{amqp, kafka, pubsub, AmqpStream};
use outboxer::{Message, Stream};
use std::time::{SystemTime, UNIX_EPOCH};

/// Settings and names of this run (the store's own settings live in its [`Backend`]).
pub struct Env {
    pub amqp_url: String,
    #[cfg_attr(not(feature = "kafka"), allow(dead_code))]
    pub kafka_url: String,
    #[cfg_attr(not(feature = "pubsub"), allow(dead_code))]
    pub pubsub_emulator: String,
    /// moto's endpoint (`--stream sqs|kinesis`).
    #[cfg_attr(not(any(feature = "sqs", feature = "kinesis")), allow(dead_code))]
    pub aws_endpoint: String,
    pub stream: StreamKind,
    /// The Kafka topic (`--stream kafka`).
    pub topic: String,
    pub store: StoreKind,
    pub pid: u32,
    pub exchange: String,
    pub queue: String,
    pub messages: usize,
    /// The relay modes of phases 3d to 5 (`--modes`).
    pub modes: Vec<crate::mode::Mode>,
    /// Time the relay's store and stream calls (phases 4 and 5) and print where time goes.
    pub breakdown: bool,
    /// Phases 2, 4, 5 and 6 through `outboxer::async_impl` (`--async`).
    #[cfg_attr(not(feature = "async"), allow(dead_code))]
    pub async_api: bool,
}

impl Env {
    pub fn new(args: &Args) -> Env {
        let pid = std::process::id();
        Env {
            amqp_url: std::env::var("OUTBOXER_AMQP_URL")
                .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into()),
            kafka_url: std::env::var("OUTBOXER_KAFKA_URL")
                .unwrap_or_else(|_| "kafka://127.0.0.1:9092".into()),
            pubsub_emulator: std::env::var("OUTBOXER_PUBSUB_EMULATOR")
                .unwrap_or_else(|_| "127.0.0.1:8086".into()),
            aws_endpoint: std::env::var("OUTBOXER_AWS_URL")
                .unwrap_or_else(|_| "http://127.0.0.1:4566".into()),
            stream: args.stream,
            topic: format!("bench_{pid}_{}", unix_now()),
            store: args.store,
            pid,
            exchange: format!("bench_{pid}_ex"),
            queue: format!("bench_{pid}_q"),
            messages: args.messages,
            modes: args.modes.clone(),
            breakdown: args.breakdown,
            async_api: args.async_api,
        }
    }

    /// Every table of this run starts with this: `bench_<pid>_`.
    pub fn prefix(&self) -> String {
        format!("bench_{}_", self.pid)
    }

    /// The table of one phase: `bench_<pid>_<suffix>`.
    pub fn table(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.prefix())
    }

    /// `n` fresh messages: 200-byte payloads routed to the bench exchange.
    pub fn make_messages(&self, n: usize) -> Vec<Message> {
        (0..n)
            .map(|i| {
                let payload: Vec<u8> = (0..PAYLOAD_SIZE)
                    .map(|j| b'a' + ((i + j) % 26) as u8)
                    .collect();
                let message = Message::new(payload);
                match self.stream {
                    StreamKind::Amqp => message.route(amqp::topic(&self.exchange, ROUTING_KEY)),
                    StreamKind::Kafka => message.route(kafka::topic(&self.topic).key(ROUTING_KEY)),
                    StreamKind::PubSub => message.route(pubsub::topic(&self.topic)),
                    StreamKind::Sqs => message.route(outboxer::stream::sqs::queue(&self.topic)),
                    StreamKind::Kinesis => message.route(
                        outboxer::stream::kinesis::stream(&self.topic).partition_key(ROUTING_KEY),
                    ),
                }
            })
            .collect()
    }

    /// The library's stream for `--stream`: connected (a broker must answer), or only
    /// built (phase 2 needs just its validator).
    pub fn stream(&self, connect: bool) -> BoxResult<Box<dyn Stream>> {
        match self.stream {
            StreamKind::Amqp if connect => Ok(Box::new(AmqpStream::connect(&self.amqp_url)?)),
            StreamKind::Amqp => Ok(Box::new(AmqpStream::builder(&self.amqp_url).build()?)),
            #[cfg(feature = "kafka")]
            StreamKind::Kafka if connect => Ok(Box::new(outboxer::stream::KafkaStream::connect(
                &self.kafka_url,
            )?)),
            #[cfg(feature = "kafka")]
            StreamKind::Kafka => Ok(Box::new(
                outboxer::stream::KafkaStream::builder(&self.kafka_url).build()?,
            )),
            #[cfg(not(feature = "kafka"))]
            StreamKind::Kafka => Err("--stream kafka needs the `kafka` feature".into()),
            #[cfg(feature = "pubsub")]
            StreamKind::PubSub => Ok(Box::new(outboxer::stream::PubSubStream::connect(
                &crate::streams::pubsub::url(self),
            )?)),
            #[cfg(not(feature = "pubsub"))]
            StreamKind::PubSub => Err("--stream pubsub needs the `pubsub` feature".into()),
            // Neither needs a connection: `connect` only resolves the settings.
            #[cfg(feature = "sqs")]
            StreamKind::Sqs => Ok(Box::new(outboxer::stream::SqsStream::connect(
                &self.aws_url("sqs"),
            )?)),
            #[cfg(feature = "kinesis")]
            StreamKind::Kinesis => Ok(Box::new(outboxer::stream::KinesisStream::connect(
                &self.aws_url("kinesis"),
            )?)),
            #[allow(unreachable_patterns)]
            _ => Err("this --stream is not compiled in".into()),
        }
    }

    /// Phase 6's sends and rate: SQS on moto takes fewer (its sends slow down as
    /// a queue grows, to ~100-200 msg/s here), so it gets 500 at 50 msg/s.
    pub fn latency_plan(&self) -> (usize, u64) {
        match self.stream {
            StreamKind::Sqs => (500, 50),
            _ => (LATENCY_MESSAGES, LATENCY_RATE_PER_S),
        }
    }

    /// `sqs://test:test@us-east-1?endpoint=<moto>` (moto takes any key).
    #[cfg_attr(not(any(feature = "sqs", feature = "kinesis")), allow(dead_code))]
    pub fn aws_url(&self, scheme: &str) -> String {
        format!(
            "{scheme}://test:test@us-east-1?endpoint={}",
            self.aws_endpoint
        )
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
