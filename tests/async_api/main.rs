//! The async API (`outboxer::async_impl`) against real servers: the store cases
//! that go through the Outbox API, for every store compiled in; the stream cases
//! through the async Outbox for AMQP; a current-thread runtime that must keep
//! ticking while the relay works; both APIs on one table in one build
//! (`required-features` in Cargo.toml: async, postgres, amqp).

// The helpers every integration test shares (tests/common); each directory target
// includes them this one way.
#[path = "../common/mod.rs"]
mod common;

#[macro_use]
mod conformance;

mod postgres;

#[cfg(feature = "async-mysql")]
mod mysql;

#[cfg(feature = "sqlserver")]
mod sqlserver;

#[cfg(feature = "sqlite")]
mod sqlite;

#[cfg(feature = "sqlx-postgres")]
mod sqlx_postgres;

#[cfg(feature = "sqlx-mysql")]
mod sqlx_mysql;

mod streams;

mod runtime;
