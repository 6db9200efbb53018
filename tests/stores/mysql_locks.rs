//! MySQL / MariaDB row-lock claims: what the conformance cases cannot see (the
//! transaction's isolation and snapshot, the pooled connection's state, Go rows).

use crate::conformance::{store, unique, Harness};
use crate::mysql::{url, My};
use mysql::prelude::Queryable;
use outboxer::store::{Lease, LockedClaim, MysqlStore, Store, TxStore};
use outboxer::Message;
use std::time::{Duration, Instant};

fn lease(secs: u64) -> Lease {
    Lease::new(Duration::from_secs(secs))
}

fn held(s: &MysqlStore, rows: usize) -> LockedClaim {
    s.claim_locked(&lease(30), rows.into())
        .expect("claim_locked")
        .expect("MySQL holds claims by row locks")
}

fn conn() -> mysql::PooledConn {
    mysql::Pool::new(url().as_str())
        .expect("pool")
        .get_conn()
        .expect("conn")
}

fn bodies(c: &LockedClaim) -> Vec<String> {
    c.claim
        .messages
        .iter()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect()
}

/// The held transaction is READ COMMITTED: its scan to the end of the pending
/// rows takes no gap lock, so enqueues (the store's own, a caller's REPEATABLE
/// READ transaction, plain SQL) go on while a batch is held. Under REPEATABLE READ
/// the same scan blocks every INSERT until the batch commits.
#[test]
fn a_held_batch_never_blocks_an_enqueue() {
    let t = unique("c_rlgap");
    let s = store::<My>(&t);
    s.enqueue(&[Message::new(b"a".to_vec()), Message::new(b"b".to_vec())])
        .expect("enqueue");
    let claim = held(&s, 100);
    assert_eq!(bodies(&claim), ["a", "b"]);

    let began = Instant::now();
    s.enqueue(&[Message::new(b"c".to_vec())])
        .expect("enqueue while held");
    s.with_transaction(|tx| s.enqueue_in_tx(tx, &[Message::new(b"d".to_vec())]))
        .expect("enqueue in a caller's REPEATABLE READ transaction");
    let mut c = conn();
    c.query_drop("SET SESSION innodb_lock_wait_timeout = 2")
        .expect("set");
    c.query_drop(My::insert_sql(&t, "e", None, None, Some("k")))
        .expect("plain INSERT while held");
    assert!(began.elapsed() < Duration::from_secs(1), "no lock wait");

    // The next claim takes the rows enqueued meanwhile, not the held ones.
    let next = held(&s, 100);
    assert_eq!(bodies(&next), ["c", "d", "e"]);
    let ids: Vec<i64> = claim.claim.messages.iter().map(|m| m.id).collect();
    claim.held.commit(&ids, true).expect("commit");
    drop(next);
    My::drop_table(&t);
}

/// The key check reads a snapshot, the claimed row is read locking (its newest
/// version). Under a snapshot older than a key's rows, with the key's first row
/// held by another claim, the second row must not be claimed: the snapshot does
/// not see the first one, so the claim checks that the row itself is in it.
/// (REPEATABLE READ makes the old snapshot easy to hold; READ COMMITTED has the
/// same race within one statement.)
#[test]
fn a_claim_never_passes_a_key_row_its_snapshot_misses() {
    use outboxer::__private::sql::mysql::MysqlSql;
    use outboxer::__private::TableName;
    let t = unique("c_rlsnap");
    let s = store::<My>(&t);
    let sql = MysqlSql::new(&TableName::parse(&t).expect("name"));
    let mut old = conn();
    old.query_drop("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .expect("iso");
    old.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT")
        .expect("snapshot");
    s.enqueue(&[
        Message::new(b"a1".to_vec()).ordering_key("k"),
        Message::new(b"a2".to_vec()).ordering_key("k"),
    ])
    .expect("enqueue");
    let first = held(&s, 1);
    assert_eq!(bodies(&first), ["a1"]);
    let rows: Vec<mysql::Row> = old.query(sql.claim_locked(100)).expect("claim");
    assert!(
        rows.is_empty(),
        "a2 claimed past a1, which the snapshot does not see: {} rows",
        rows.len()
    );
    old.query_drop("ROLLBACK").expect("rollback");
    drop(first);
    My::drop_table(&t);
}

/// A held claim's connection goes back to the pool as it came: the idle bound
/// and the isolation level of a caller's transaction are the server's defaults
/// (MariaDB's variables: MySQL 8 has no idle_transaction_timeout).
#[test]
fn held_claims_leave_pooled_connections_clean() {
    let t = unique("c_rlconn");
    let s = MysqlStore::builder(&url())
        .table(&t)
        .max_connections(1)
        .build()
        .expect("store");
    s.migrate().expect("migrate");
    s.enqueue(&[Message::new(b"a".to_vec()), Message::new(b"b".to_vec())])
        .expect("enqueue");
    let mut c = conn();
    let defaults: (String, u64) = c
        .query_first("SELECT @@GLOBAL.tx_isolation, @@GLOBAL.idle_transaction_timeout")
        .expect("defaults")
        .expect("row");
    let session = |s: &MysqlStore| -> (String, u64) {
        s.with_transaction(|tx| {
            let r: Option<(String, u64)> = tx
                .query_first("SELECT @@SESSION.tx_isolation, @@SESSION.idle_transaction_timeout")
                .expect("reading the session");
            Ok::<_, outboxer::Error>(r.expect("row"))
        })
        .expect("session")
    };
    // Committed, rolled back (dropped), and empty claims.
    let a = held(&s, 1);
    let id = a.claim.messages[0].id;
    a.held.commit(&[id], false).expect("commit");
    assert_eq!(session(&s), defaults);
    drop(held(&s, 1));
    assert_eq!(session(&s), defaults);
    let b = held(&s, 10);
    assert_eq!(bodies(&b), ["b"]);
    let id = b.claim.messages[0].id;
    b.held.commit(&[id], true).expect("commit");
    let empty = held(&s, 10);
    assert!(empty.claim.messages.is_empty());
    empty.held.commit(&[], false).expect("commit");
    assert_eq!(session(&s), defaults);
    let st = s.stats().expect("stats");
    assert_eq!((st.pending, st.dispatched), (0, 1));
    My::drop_table(&t);
}

/// Rows the Go outboxer wrote have no message_id: a held claim gives them one,
/// committed before they are published, so a redelivery after a rollback
/// carries the same id.
#[test]
fn held_claims_give_go_rows_a_lasting_message_id() {
    let t = unique("c_rlgo");
    My::exec(&My::go_table(&t));
    let s = store::<My>(&t);
    let first = held(&s, 10);
    assert_eq!(bodies(&first), ["from go"]);
    let id = first.claim.messages[0].message_id;
    drop(first);
    let again = held(&s, 10);
    assert_eq!(again.claim.messages[0].message_id, id, "the same id again");
    let ids: Vec<i64> = again.claim.messages.iter().map(|m| m.id).collect();
    again.held.commit(&ids, false).expect("commit");
    My::drop_table(&t);
}

/// Deleting a batch's rows never waits for the rows other claims hold: on a
/// small table `DELETE .. WHERE id IN (..)` scanned the table and waited for
/// every row lock on its way (a DELETE reads no committed version past a lock,
/// an UPDATE does), so a relay's commit waited for its own next batch, held
/// until the idle limit ended it (duplicates). Both the held commit and the
/// lease-mode delete.
#[test]
fn deleting_a_batch_never_waits_for_other_held_batches() {
    let t = unique("c_rldel");
    let s = store::<My>(&t);
    s.enqueue(
        &(0..60)
            .map(|i| Message::new(format!("m{i}").into_bytes()))
            .collect::<Vec<_>>(),
    )
    .expect("enqueue");
    let l = lease(30);
    let leased = s.claim(&l, 20.into()).expect("claim").messages;
    let first = held(&s, 20);
    // The last rows, held with a short lease: a wait would last until it ends.
    let other = s
        .claim_locked(&lease(3), 20.into())
        .expect("claim_locked")
        .expect("held");
    assert_eq!(other.claim.messages.len(), 20);
    let began = Instant::now();
    let ids: Vec<i64> = first.claim.messages.iter().map(|m| m.id).collect();
    assert_eq!(first.held.commit(&ids, true).expect("commit"), ids);
    let ids: Vec<i64> = leased.iter().map(|m| m.id).collect();
    assert_eq!(s.delete_dispatched(&l, &ids).expect("delete"), ids);
    assert!(
        began.elapsed() < Duration::from_secs(1),
        "the deletes waited {:?} for the other held batch",
        began.elapsed()
    );
    let ids: Vec<i64> = other.claim.messages.iter().map(|m| m.id).collect();
    assert_eq!(other.held.commit(&ids, true).expect("commit"), ids);
    assert_eq!(s.stats().expect("stats").pending, 0);
    My::drop_table(&t);
}
