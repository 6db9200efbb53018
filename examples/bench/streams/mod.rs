//! The brokers.

pub mod amqp;
#[cfg(any(feature = "sqs", feature = "kinesis"))]
pub mod aws;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "pubsub")]
pub mod pubsub;

use crate::{BoxResult, Env, StreamKind};
use amqp::AmqpBroker;
use std::time::Duration;

/// The broker of `--stream`: set up, ceiling (phase 3), end-to-end check, teardown.
/// One per run: its size does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Broker {
    Amqp(AmqpBroker),
    #[cfg(feature = "kafka")]
    Kafka(kafka::KafkaBroker),
    #[cfg(feature = "pubsub")]
    PubSub(pubsub::PubSubBroker),
    #[cfg(any(feature = "sqs", feature = "kinesis"))]
    Aws(aws::AwsBroker),
}

impl Broker {
    pub fn setup(env: &Env) -> BoxResult<Broker> {
        match env.stream {
            StreamKind::Amqp => Ok(Broker::Amqp(AmqpBroker::setup(env)?)),
            #[cfg(feature = "kafka")]
            StreamKind::Kafka => Ok(Broker::Kafka(kafka::KafkaBroker::setup(env)?)),
            #[cfg(not(feature = "kafka"))]
            StreamKind::Kafka => Err("--stream kafka needs the `kafka` feature".into()),
            #[cfg(feature = "pubsub")]
            StreamKind::PubSub => Ok(Broker::PubSub(pubsub::PubSubBroker::setup(env)?)),
            #[cfg(not(feature = "pubsub"))]
            StreamKind::PubSub => Err("--stream pubsub needs the `pubsub` feature".into()),
            #[cfg(any(feature = "sqs", feature = "kinesis"))]
            StreamKind::Sqs | StreamKind::Kinesis => Ok(Broker::Aws(aws::AwsBroker::setup(env)?)),
            #[allow(unreachable_patterns)]
            _ => Err("this --stream is not compiled in".into()),
        }
    }

    /// Phase 3's timed part.
    pub fn ceiling(&self, env: &Env) -> BoxResult<Duration> {
        match self {
            Broker::Amqp(_) => amqp::ceiling_phase(env),
            #[cfg(feature = "kafka")]
            Broker::Kafka(k) => k.ceiling(env),
            #[cfg(feature = "pubsub")]
            Broker::PubSub(p) => p.ceiling(env),
            #[cfg(any(feature = "sqs", feature = "kinesis"))]
            Broker::Aws(a) => a.ceiling(env),
        }
    }

    /// Waits until the broker has everything published so far (`published` more).
    pub fn settle(&self, published: u64) -> BoxResult<()> {
        match self {
            Broker::Amqp(a) => a.settle(published),
            #[cfg(feature = "kafka")]
            Broker::Kafka(k) => k.settle(published),
            #[cfg(feature = "pubsub")]
            Broker::PubSub(p) => p.settle(published),
            #[cfg(any(feature = "sqs", feature = "kinesis"))]
            Broker::Aws(a) => a.settle(published),
        }
    }

    pub fn teardown(self) -> BoxResult<()> {
        match self {
            Broker::Amqp(a) => a.teardown(),
            #[cfg(feature = "kafka")]
            Broker::Kafka(k) => k.teardown(),
            #[cfg(feature = "pubsub")]
            Broker::PubSub(p) => p.teardown(),
            #[cfg(any(feature = "sqs", feature = "kinesis"))]
            Broker::Aws(a) => a.teardown(),
        }
    }
}
