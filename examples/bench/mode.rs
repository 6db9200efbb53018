//! The relay modes measured side by side (`--modes old,new`).

use outboxer::store::{BatchLimit, Lease};
use outboxer::{ClaimMode, OutboxBuilder, Store};
use std::time::Duration;

/// How the relay claims and what it does with a dispatched row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Before issue 16: leases (`ClaimMode::Leases`), dispatched rows kept for the
    /// default 5 days and deleted later by the cleanup thread (default settings).
    Old,
    /// The default since issue 16: row-lock claims (`ClaimMode::RowLocks`, where the
    /// store can hold them; else leases) and the mark deletes the row
    /// (`cleanup_before(Duration::ZERO)`).
    New,
}

impl Mode {
    /// `old,new`, `new`, ...: each mode once, in the order given.
    pub fn parse_list(list: &str) -> Result<Vec<Mode>, String> {
        let mut modes = Vec::new();
        for name in list.split(',').map(str::trim) {
            let mode = match name {
                "old" => Mode::Old,
                "new" => Mode::New,
                _ => return Err(format!("--modes {list:?}: expected old, new or old,new")),
            };
            if !modes.contains(&mode) {
                modes.push(mode);
            }
        }
        Ok(modes)
    }

    pub fn name(self) -> &'static str {
        match self {
            Mode::Old => "old",
            Mode::New => "new",
        }
    }

    /// The mode's settings on an outbox builder (both set explicitly: the
    /// defaults are the new mode's).
    pub fn configure<S: Store>(self, b: OutboxBuilder<S>) -> OutboxBuilder<S> {
        match self {
            Mode::Old => b
                .claim_mode(ClaimMode::Leases)
                .cleanup_before(OLD_RETENTION),
            Mode::New => b
                .claim_mode(ClaimMode::RowLocks)
                .cleanup_before(Duration::ZERO),
        }
    }

    /// Whether dispatched rows are deleted by the mark (else kept as dispatched).
    pub fn deletes(self) -> bool {
        self == Mode::New
    }

    /// How this mode's claims should run on `store`: row locks only in the new mode
    /// and only if the store can hold them (asked on its empty table).
    pub fn expected_claims(self, store: &impl Store) -> outboxer::Result<Claims> {
        if self == Mode::Old {
            return Ok(Claims::Leases);
        }
        let probe =
            store.claim_locked(&Lease::new(Duration::from_secs(30)), BatchLimit::from(1))?;
        // Dropping the held claim rolls its (empty) transaction back.
        Ok(match probe {
            Some(_) => Claims::RowLocks,
            None => Claims::Leases,
        })
    }
}

/// How the relay's claims actually ran (counted by the timing store).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claims {
    RowLocks,
    Leases,
    /// Both kinds in one run: the relay fell back from row locks to leases.
    Mixed,
    /// No claim at all.
    None,
}

impl Claims {
    pub fn from_counts(locked: u64, leased: u64) -> Claims {
        match (locked > 0, leased > 0) {
            (true, false) => Claims::RowLocks,
            (false, true) => Claims::Leases,
            (true, true) => Claims::Mixed,
            (false, false) => Claims::None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Claims::RowLocks => "row_locks",
            Claims::Leases => "leases",
            Claims::Mixed => "mixed",
            Claims::None => "none",
        }
    }
}

/// The old mode's retention of dispatched rows (the default before issue 16).
pub const OLD_RETENTION: Duration = Duration::from_secs(5 * 24 * 3600);
