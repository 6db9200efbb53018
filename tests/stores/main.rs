//! The store conformance suite, run against every store compiled in.

// The helpers every integration test shares (tests/common); each directory target
// includes them this one way.
#[cfg(all(feature = "postgres", feature = "amqp"))]
#[path = "../common/mod.rs"]
mod common;

#[macro_use]
mod conformance;

#[cfg(feature = "mysql")]
mod mysql;
#[cfg(feature = "mysql")]
mod mysql_locks;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;
#[cfg(feature = "sqlserver")]
mod sqlserver;
