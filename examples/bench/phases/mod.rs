//! The phases that are the same for every store and stream: 1 (plain inserts), 2
//! (enqueue), 3d (the database ceiling), 4 and 5 (relays), 6 (latency), generic
//! over [`Backend`]. Phases 2 and
//! 4 to 6 run through the blocking API or, with `--async`, through
//! `outboxer::async_impl` (same tables, messages, settings and checks). Phase 3, the
//! broker's raw ceiling, is in each `streams/` module.

#[cfg(feature = "async")]
mod async_api;
mod db_ceiling;
mod enqueue;
mod insert;
mod latency;
mod relay;

pub use db_ceiling::db_ceiling_phase as db_ceiling;
pub use insert::insert;
pub use relay::{us, RelayRun};

use crate::mode::Mode;
use crate::{Backend, BoxResult, Broker, Env};
use std::time::Duration;

pub fn enqueue<B: Backend>(env: &Env, db: &B) -> BoxResult<Duration> {
    #[cfg(feature = "async")]
    if env.async_api {
        return async_api::enqueue_phase(env, db);
    }
    enqueue::enqueue_phase(env, db)
}

pub fn relay<B: Backend>(
    env: &Env,
    db: &B,
    broker: &Broker,
    relays: usize,
    batch: usize,
    mode: Mode,
) -> BoxResult<RelayRun> {
    #[cfg(feature = "async")]
    if env.async_api {
        return async_api::relay_phase(env, db, broker, relays, batch, mode);
    }
    relay::relay_phase(env, db, broker, relays, batch, mode)
}

pub fn latency<B: Backend>(env: &Env, db: &B, broker: &Broker) -> BoxResult<(f64, f64)> {
    #[cfg(feature = "async")]
    if env.async_api {
        return async_api::latency_phase(env, db, broker);
    }
    latency::latency_phase(env, db, broker)
}
