//! SQL Server (2017+) SQL text for one outbox table, and the I/O-free helpers of
//! the `sqlserver` store: statement shapes for variable-length lists, lock
//! resource names. (Its connection strings are redacted in `core::redact`.)
//!
//! Every value travels as a parameter (`@P1`, `@P2`, ...). What is spliced into the
//! text is only: the table and index names (validated identifiers, bracket-quoted),
//! the status constants (`'pending'`, `'dispatched'`, `'parked'`: literals, so that
//! the optimizer can match the filtered indexes), the argument names of
//! `sp_getapplock`, and row ordinals that outboxer itself generates.
//!
//! Only forms SQL Server 2017 accepts: `TOP (@n)` (never `LIMIT`), `OUTPUT` (never
//! `RETURNING`), `DATEDIFF_BIG` (2016). No
//! `OPENJSON`/`STRING_SPLIT` either, because those need database compatibility
//! level 130: lists are sent as `IN (@P..)` / `VALUES (..)` lists instead.
//!
//! # Schema
//!
//! ```text
//! id            BIGINT IDENTITY PRIMARY KEY   relay order
//! payload       VARBINARY(MAX) NOT NULL
//! options       VARBINARY(MAX) NULL           UTF-8 JSON object (as the Go outboxer)
//! headers       VARBINARY(MAX) NULL           UTF-8 JSON object (as the Go outboxer)
//! dispatched_at DATETIME2 NULL                UTC
//! message_id    UNIQUEIDENTIFIER NOT NULL     the message's UUIDv7
//! ordering_key  NVARCHAR(800) NULL
//! status        VARCHAR(16) NOT NULL          pending | dispatched | parked
//! attempts      INT NOT NULL
//! last_error    NVARCHAR(MAX) NULL
//! created_at, available_at  DATETIME2 NOT NULL (SYSUTCDATETIME())
//! locked_by     UNIQUEIDENTIFIER NULL         lease token
//! locked_until  DATETIME2 NULL                lease end
//! ```
//!
//! Headers and options are UTF-8 JSON in `VARBINARY(MAX)`, not `NVARCHAR(MAX)`: that
//! is how the Go outboxer's table stores them, so a Go table is upgraded in place
//! without rewriting its rows (turning UTF-8 bytes into `NVARCHAR` in T-SQL needs the
//! UTF-8 collations of SQL Server 2019). Read them with
//! `CAST(headers AS VARCHAR(MAX))` (exact for ASCII).
//!
//! `message_id` is a `UNIQUEIDENTIFIER`: tiberius swaps the first three groups to and
//! from SQL Server's mixed-endian GUID layout, so the value the server shows
//! (`SELECT CAST(message_id AS CHAR(36))`) is the UUID's usual text. Nothing sorts or
//! indexes by it (SQL Server orders GUIDs by their last six bytes first).
//!
//! `ordering_key` is at most 800 UTF-16 code units: the per-key index
//! `(ordering_key, id)` must stay under SQL Server's 1700-byte index key limit.

use crate::core::ident::TableName;
use std::time::Duration;

mod per_batch;
mod per_table;
#[cfg(test)]
mod tests;

/// SQL Server accepts at most 2100 parameters per request; stay below it.
pub const MAX_PARAMS: usize = 2000;
/// Parameters per inserted message (message_id, payload, headers, options,
/// ordering_key, delay ms).
pub const INSERT_PARAMS: usize = 6;
/// Rows per `INSERT` statement.
pub const MAX_INSERT_ROWS: usize = 256;
/// Ids per `IN (..)` list (marks, release, requeue).
pub const MAX_IDS: usize = 1024;
/// Rows per `mark_failed` statement ([`FAILED_PARAMS`] parameters each).
pub const MAX_FAILED_ROWS: usize = 256;
/// Parameters per failed attempt (id, error, delay, park, hold key).
pub const FAILED_PARAMS: usize = 5;
/// Rows claimed per statement. More row locks than about 5000 in one statement make
/// SQL Server escalate to a table lock, which would block every other relay and
/// every enqueue; a claim holds two or three locks per row (clustered key, pending
/// index key).
pub const MAX_CLAIM_ROWS: usize = 1500;
/// Rows deleted per cleanup statement (same lock-escalation reason).
pub const MAX_DELETE_ROWS: usize = 1000;
/// Longest ordering key, in UTF-16 code units (index key limit, see the module docs).
pub const MAX_ORDERING_KEY_UTF16: usize = 800;
/// How long `migrate` waits for another migrator's `sp_getapplock`, in milliseconds.
pub const MIGRATE_LOCK_TIMEOUT_MS: i32 = 20_000;
/// Longest delay passed to the server (lease, backoff, cleanup age): `DATEADD` takes
/// an `INT` number of seconds.
pub const MAX_DELAY_MS: i64 = i32::MAX as i64 * 1000;

// Every request stays under the parameter limit.
const _: () = assert!(MAX_INSERT_ROWS * INSERT_PARAMS <= MAX_PARAMS);
const _: () = assert!(MAX_FAILED_ROWS * FAILED_PARAMS < MAX_PARAMS && MAX_IDS < MAX_PARAMS);

/// The statements of one table, built once.
#[derive(Clone, Debug)]
pub struct SqlServerSql {
    table: String,
    plain: String,
    /// `BEGIN TRAN` etc. must run as plain SQL batches (not through `sp_executesql`,
    /// whose scope would undo `SET` and reject an unbalanced `BEGIN TRAN`).
    pub session_setup: &'static str,
    /// Take the migrate lock: (@P1 resource, @P2 timeout ms) -> one row, the
    /// `sp_getapplock` status (negative: not granted).
    pub migrate_lock: String,
    /// (@P1 quoted table name) -> one row: table exists, has `status`, has Go's
    /// `dispatched`, type of `id`, type of `dispatched_at` (0/1 ints, type names or '').
    pub inspect: String,
    /// (@P1 quoted table name)
    pub create_table: String,
    /// Widen Go's `INT` id: drop the primary key, alter the column, add the key back.
    /// Each a batch of its own; the first takes (@P1 quoted table name).
    pub widen_id: Vec<String>,
    /// Go's `DATETIME` dispatched_at to `DATETIME2`.
    pub widen_dispatched_at: String,
    /// Add every column the table lacks: (@P1 quoted table name).
    pub add_columns: String,
    /// Carry Go rows' `dispatched` flag over to `status` (only right after `status` was added).
    pub upgrade_go_rows: String,
    /// (index name, statement taking @P1 quoted table name and @P2 index name).
    pub indexes: Vec<(String, String)>,
    /// Indexes of earlier versions to drop, same shape as `indexes`.
    pub drop_indexes: Vec<(String, String)>,
    /// Claim: (@P1 limit, @P2 lease token, @P3 lease ms, @P4 payload bytes, @P5 1 when
    /// the first row fits whatever its size); the first result set holds id,
    /// message_id, payload, headers, options, ordering_key, attempts, created_at in
    /// microseconds since the Unix epoch, payload bytes.
    pub claim: String,
    /// (@P1 older than ms, @P2 limit)
    pub cleanup: String,
    /// Every parked row back to pending.
    pub requeue_all: String,
    /// (@P1 older than ms or NULL, @P2 error text or NULL) matching parked rows
    /// back to pending.
    pub requeue_matching: String,
    /// One row: pending, dispatched, parked, leased (BIGINT), oldest pending age in
    /// microseconds (BIGINT), held keys (BIGINT).
    pub stats: String,
    /// Microseconds until the earliest pending row with a future `available_at` is
    /// due (NULL: none).
    pub next_due: String,
    /// (@P1 limit) keys held by a parked head: key, id, message_id, last_error,
    /// waiting (BIGINT).
    pub held_keys: String,
    /// (attempts, count) of pending and parked rows, ascending attempts.
    pub attempts_histogram: String,
    /// (@P1 older than ms, @P2 rows) delete parked rows by created_at.
    pub purge_parked: String,
    /// (@P1 older than ms) dispatched and parked rows older than the cutoff (BIGINT, BIGINT).
    pub purgeable: String,
    /// (@P1 limit) parked rows: id, message_id, attempts, last_error, ordering_key,
    /// holds key (INT 0/1).
    pub parked: String,
    /// `sp_getapplock` resource of `migrate` for this table.
    pub migrate_resource: String,
}

/// Plain-batch statements around transactions.
pub mod batch {
    /// Begins a transaction (a plain batch, so that it outlives the request).
    pub const BEGIN: &str = "BEGIN TRAN";
    /// Commits, then restores the session settings a caller's transaction may have changed.
    pub const COMMIT: &str = "COMMIT TRAN; SET XACT_ABORT ON; SET NOCOUNT OFF; SET TRANSACTION ISOLATION LEVEL READ COMMITTED";
    /// Rolls back if a transaction is still open (`XACT_ABORT` may have ended it
    /// already), then restores the session settings.
    pub const ROLLBACK: &str = "IF @@TRANCOUNT > 0 ROLLBACK TRAN; SET XACT_ABORT ON; SET NOCOUNT OFF; SET TRANSACTION ISOLATION LEVEL READ COMMITTED";
}

/// Session settings of every new connection: errors roll the whole transaction back
/// (`XACT_ABORT`), row counts are reported (marks count what they changed, so a
/// server-wide `NOCOUNT` default must not apply), and the options that filtered
/// indexes require.
const SESSION_SETUP: &str = "SET XACT_ABORT ON; SET IMPLICIT_TRANSACTIONS OFF; SET NOCOUNT OFF; \
    SET ANSI_NULLS ON; SET ANSI_PADDING ON; SET ANSI_WARNINGS ON; SET ARITHABORT ON; \
    SET CONCAT_NULL_YIELDS_NULL ON; SET QUOTED_IDENTIFIER ON; SET NUMERIC_ROUNDABORT OFF; \
    SET TRANSACTION ISOLATION LEVEL READ COMMITTED";

/// `SYSUTCDATETIME()` plus the milliseconds in `param` (a BIGINT parameter, at most
/// [`MAX_DELAY_MS`]); `DATEADD` only takes INT, hence seconds and the rest apart.
fn utc_plus_ms(param: &str) -> String {
    format!(
        "DATEADD(MILLISECOND, CAST({param} % 1000 AS INT), DATEADD(SECOND, CAST({param} / 1000 AS INT), SYSUTCDATETIME()))"
    )
}

/// `SYSUTCDATETIME()` minus the milliseconds in `param`.
pub(crate) fn utc_minus_ms(param: &str) -> String {
    format!(
        "DATEADD(MILLISECOND, -CAST({param} % 1000 AS INT), DATEADD(SECOND, -CAST({param} / 1000 AS INT), SYSUTCDATETIME()))"
    )
}

/// Microseconds since the Unix epoch of a DATETIME2 expression.
fn epoch_micros(expr: &str) -> String {
    format!("DATEDIFF_BIG(MICROSECOND, CAST('1970-01-01T00:00:00' AS DATETIME2), {expr})")
}

/// `@Pfirst, @Pfirst+1, ..` (`count` of them).
fn placeholders(first: usize, count: usize) -> String {
    (first..first + count)
        .map(|i| format!("@P{i}"))
        .collect::<Vec<_>>()
        .join(", ")
}
impl SqlServerSql {
    /// The bracket-quoted table name (`[schema].[table]`), also the value of the
    /// `@P1` object-name parameter of the migrate statements.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The `sp_getapplock` resource that serialises enqueues of `key` in this table,
    /// so that ids follow commit order per key. Keys are hashed (FNV-1a, 64 bits):
    /// resources are limited to 255 characters, and a collision only serialises two
    /// keys' enqueues, it never reorders anything.
    pub fn key_resource(&self, key: &str) -> String {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in key.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        format!("outboxer:key:{}:{h:016x}", self.plain)
    }
}

/// `n` exclusive transaction-owned app locks on `@P1..@Pn`, each checked: a status
/// below zero (timeout, deadlock victim, error) aborts the request.
pub fn lock_keys(n: usize) -> String {
    if n == 0 {
        return String::new();
    }
    let mut sql = String::from("DECLARE @r INT;\n");
    for i in 1..=n {
        sql.push_str(&format!(
            "EXEC @r = sp_getapplock @Resource = @P{i}, @LockMode = 'Exclusive', @LockOwner = 'Transaction';\n\
             IF @r < 0 THROW 51000, 'outboxer: could not lock an ordering key (sp_getapplock)', 1;\n"
        ));
    }
    sql
}

/// The list length a statement for `n` ids is built for: the next power of two (at
/// most [`MAX_IDS`]), so that the server caches a handful of plans rather than one per
/// list length. The caller pads the list by repeating an id, which changes nothing.
pub fn id_bucket(n: usize) -> usize {
    n.clamp(1, MAX_IDS).next_power_of_two().min(MAX_IDS)
}

/// `ids` padded to [`id_bucket`] by repeating the last one.
pub fn pad_ids(ids: &[i64]) -> Vec<i64> {
    let mut v = ids.to_vec();
    if let Some(&last) = ids.last() {
        v.resize(id_bucket(ids.len()), last);
    }
    v
}

/// A delay as the BIGINT milliseconds the statements take, clamped to [`MAX_DELAY_MS`].
pub fn delay_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis())
        .unwrap_or(i64::MAX)
        .min(MAX_DELAY_MS)
}

/// Whether an ordering key fits the column (see [`MAX_ORDERING_KEY_UTF16`]).
pub fn ordering_key_fits(key: &str) -> bool {
    key.encode_utf16().count() <= MAX_ORDERING_KEY_UTF16
}

/// How a batch of `rows` messages with `locks` distinct keys is sent: as one request
/// when its parameters fit, otherwise locks first and inserts in chunks.
pub fn fits_one_request(locks: usize, rows: usize) -> bool {
    rows <= MAX_INSERT_ROWS && locks + rows * INSERT_PARAMS <= MAX_PARAMS
}

/// `[schema].[table]` or `[table]`. Parts are validated identifiers (letters, digits,
/// underscores), so no `]` can occur in them.
fn bracketed(table: &TableName) -> String {
    match table.schema() {
        Some(s) => format!("{}.{}", quote_part(s), quote_part(table.table())),
        None => quote_part(table.table()),
    }
}

fn quote_part(part: &str) -> String {
    format!("[{}]", part.replace(']', "]]"))
}
