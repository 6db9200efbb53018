//! The stream conformance suite, run against every stream compiled in.
#![cfg(all(feature = "postgres", feature = "amqp"))]

#[path = "common/mod.rs"]
mod common;

#[path = "streams/conformance.rs"]
#[macro_use]
mod conformance;

#[path = "streams/amqp.rs"]
mod amqp;

#[cfg(feature = "kafka")]
#[path = "streams/kafka.rs"]
mod kafka;

#[cfg(feature = "pubsub")]
#[path = "streams/pubsub.rs"]
mod pubsub;

#[cfg(any(
    feature = "sqs",
    feature = "kinesis",
    feature = "pubsub",
    feature = "kafka"
))]
#[path = "streams/fault_proxy.rs"]
mod fault_proxy;

#[cfg(any(feature = "sqs", feature = "kinesis"))]
#[path = "streams/aws.rs"]
mod aws;

#[cfg(feature = "sqs")]
#[path = "streams/sqs.rs"]
mod sqs;

#[cfg(feature = "kinesis")]
#[path = "streams/kinesis.rs"]
mod kinesis;
