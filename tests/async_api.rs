//! The async API (`outboxer::async_impl`) against real servers: the store cases
//! that go through the Outbox API, for every store compiled in; the stream cases
//! through the async Outbox for AMQP; a current-thread runtime that must keep
//! ticking while the relay works; both APIs on one table in one build.
#![cfg(all(feature = "async", feature = "postgres", feature = "amqp"))]

#[path = "common/mod.rs"]
mod common;

/// The stream suite's harness trait (its cases run in tests/streams.rs).
#[path = "streams/conformance.rs"]
#[allow(dead_code)]
mod conformance;

#[path = "async_api/conformance.rs"]
#[macro_use]
mod async_conformance;

#[path = "async_api/postgres.rs"]
mod postgres;

#[cfg(feature = "async-mysql")]
#[path = "async_api/mysql.rs"]
mod mysql;

#[cfg(feature = "sqlserver")]
#[path = "async_api/sqlserver.rs"]
mod sqlserver;

#[cfg(feature = "sqlite")]
#[path = "async_api/sqlite.rs"]
mod sqlite;

#[path = "async_api/streams.rs"]
mod streams;

#[path = "async_api/runtime.rs"]
mod runtime;
