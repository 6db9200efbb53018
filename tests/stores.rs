//! The store conformance suite, run against every store compiled in.

#[cfg(all(feature = "postgres", feature = "amqp"))]
#[path = "common/mod.rs"]
mod common;

#[path = "stores/conformance.rs"]
#[macro_use]
mod conformance;

#[cfg(feature = "mysql")]
#[path = "stores/mysql.rs"]
mod mysql;
#[cfg(feature = "postgres")]
#[path = "stores/postgres.rs"]
mod postgres;
#[cfg(feature = "sqlite")]
#[path = "stores/sqlite.rs"]
mod sqlite;
#[cfg(feature = "sqlserver")]
#[path = "stores/sqlserver.rs"]
mod sqlserver;
