//! TLS to every server, against TLS servers on this machine (issue 14):
//! `scripts/test-services up` makes a throwaway CA (`scripts/tls-certs`) and
//! serves TLS beside the plaintext ports. Each server's module runs a relay end
//! to end over verified TLS and checks that a wrong CA, a wrong host name and a
//! plaintext/TLS mismatch are refused with `Error::Tls` naming the cause.

// The helpers every integration test shares (tests/common), where their
// features are on, and the TLS fixtures (CA paths, wrong-host forwarder) always.
#[cfg(all(feature = "postgres", feature = "amqp"))]
#[path = "../common/mod.rs"]
mod common;
#[cfg(all(feature = "postgres", feature = "amqp"))]
#[allow(unused_imports)]
use common::tls as fixtures;
#[cfg(not(all(feature = "postgres", feature = "amqp")))]
#[allow(dead_code)]
#[path = "../common/tls.rs"]
mod fixtures;

#[cfg(all(feature = "postgres", feature = "amqp"))]
mod amqp;
#[cfg(all(feature = "kafka", feature = "postgres", feature = "amqp"))]
mod kafka;
#[cfg(feature = "mysql")]
mod mysql;
#[cfg(feature = "postgres")]
mod postgres;

#[cfg(all(
    feature = "postgres",
    feature = "amqp",
    feature = "sqs",
    feature = "kinesis",
    feature = "pubsub"
))]
mod http;
