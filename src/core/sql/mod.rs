//! SQL text per dialect, built once per table name: the statements each store
//! runs, and the schema `migrate` creates.

pub mod inbox;
pub mod mysql;
pub mod postgres;
pub mod sqlite;
pub mod sqlserver;
