//! The stream conformance suite, run against every stream compiled in
//! (`required-features` in Cargo.toml: postgres, amqp).

// The helpers every integration test shares (tests/common); each directory target
// includes them this one way.
#[path = "../common/mod.rs"]
mod common;

#[macro_use]
mod conformance;

mod amqp;

#[cfg(feature = "kafka")]
mod kafka;

#[cfg(feature = "pubsub")]
mod pubsub;

#[cfg(any(
    feature = "sqs",
    feature = "kinesis",
    feature = "pubsub",
    feature = "kafka"
))]
mod fault_proxy;

#[cfg(any(feature = "sqs", feature = "kinesis"))]
mod aws;

#[cfg(feature = "sqs")]
mod sqs;

#[cfg(feature = "kinesis")]
mod kinesis;
