//! Store conformance: claims held by row locks in an open transaction
//! (`ClaimMode::RowLocks`). Stores that cannot hold them say so with
//! `Harness::ROW_LOCKS = false`, and the cases check that they decline.

use super::*;
use outboxer::store::LockedClaim;

/// A held claim of up to `limit` rows, or `None` when the store declines (which
/// it may only when its harness says so).
fn locked<H: Harness>(s: &H::S, lease_secs: u64, limit: usize) -> Option<LockedClaim> {
    let got = s
        .claim_locked(&lease(lease_secs), limit.into())
        .expect("claim_locked");
    assert_eq!(
        got.is_some(),
        H::ROW_LOCKS,
        "claim_locked answers as the harness declares (ROW_LOCKS = {})",
        H::ROW_LOCKS
    );
    got
}

fn row_ids(v: &[StoredMessage]) -> Vec<i64> {
    v.iter().map(|m| m.id).collect()
}

pub fn row_locks_hold_rows_until_commit<H: Harness>() {
    let t = unique("c_rl");
    let s = store::<H>(&t);
    s.enqueue(&(0..10).map(msg).collect::<Vec<_>>())
        .expect("enqueue");
    let Some(LockedClaim { claim, mut held }) = locked::<H>(&s, 30, 4) else {
        H::drop_table(&t);
        return;
    };
    let a = claim.messages;
    assert_eq!(bodies(&a), ["m0", "m1", "m2", "m3"]);
    // Another relay, by locks or by leases, skips the held rows.
    let other = locked::<H>(&s, 30, 100).expect("held");
    assert_eq!(bodies(&other.claim.messages).len(), 6);
    assert_eq!(other.claim.messages[0].id, a[3].id + 1);
    drop(other.held);
    let l = lease(30);
    let leased = s.claim(&l, 100.into()).expect("claim").messages;
    assert_eq!(
        leased.len(),
        6,
        "a rolled-back claim's rows are claimable at once"
    );
    assert_eq!(
        s.release(&l, &row_ids(&leased), Duration::ZERO)
            .expect("release"),
        6
    );

    // Outcomes: m0 published, m1 failed (retry), m2 released for a minute, m3
    // untouched: one commit.
    let fail = FailedAttempt {
        id: a[1].id,
        error: "nack".into(),
        retry_in: Duration::ZERO,
        park: false,
        hold_key: true,
    };
    assert_eq!(held.mark_failed(&[fail]).expect("mark_failed"), 1);
    assert_eq!(
        held.release(&[a[2].id], Duration::from_secs(60))
            .expect("release"),
        1
    );
    assert_eq!(
        held.commit(&[a[0].id], false).expect("commit"),
        vec![a[0].id]
    );
    let st = s.stats().expect("stats");
    assert_eq!((st.pending, st.dispatched, st.parked), (9, 1, 0));
    let again = s.claim(&lease(30), 100.into()).expect("claim").messages;
    let got = bodies(&again);
    assert!(got.contains(&"m1".to_string()) && got.contains(&"m3".to_string()));
    assert!(!got.contains(&"m2".to_string()), "released for a minute");
    assert!(!got.contains(&"m0".to_string()), "dispatched");
    let m1 = again.iter().find(|m| m.payload == b"m1").expect("m1");
    assert_eq!(m1.attempts, 1, "the failure counted");
    H::drop_table(&t);
}

pub fn row_locks_commit_deletes_with_zero_retention<H: Harness>() {
    let t = unique("c_rld");
    let s = store::<H>(&t);
    s.enqueue(&(0..5).map(msg).collect::<Vec<_>>())
        .expect("enqueue");
    let Some(LockedClaim { claim, mut held }) = locked::<H>(&s, 30, 3) else {
        H::drop_table(&t);
        return;
    };
    let park_it = park(&claim.messages[2], false);
    held.mark_failed(&[park_it]).expect("park");
    let ids = row_ids(&claim.messages[..2]);
    assert_eq!(held.commit(&ids, true).expect("commit"), ids);
    let st = s.stats().expect("stats");
    assert_eq!(
        (st.pending, st.dispatched, st.parked),
        (2, 0, 1),
        "published rows deleted, the parked one kept"
    );
    assert_eq!(drain(&s), ["m3", "m4"]);
    H::drop_table(&t);
}

pub fn row_locks_keep_key_order<H: Harness>() {
    let t = unique("c_rlk");
    let s = store::<H>(&t);
    s.enqueue(&[keyed("a1", "k"), keyed("a2", "k"), keyed("b1", "j")])
        .expect("enqueue");
    let Some(first) = locked::<H>(&s, 30, 100) else {
        H::drop_table(&t);
        return;
    };
    assert_eq!(bodies(&first.claim.messages), ["a1", "b1"]);
    let second = locked::<H>(&s, 30, 100).expect("held");
    assert!(
        second.claim.messages.is_empty(),
        "a2 waits while a1 is held: {:?}",
        bodies(&second.claim.messages)
    );
    drop(second);
    let a1 = first.claim.messages[0].id;
    first.held.commit(&[a1], true).expect("commit");
    let third = locked::<H>(&s, 30, 100).expect("held");
    assert_eq!(
        bodies(&third.claim.messages),
        ["a2", "b1"],
        "a2 after a1's commit; b1 was only unlocked"
    );
    drop(third);
    H::drop_table(&t);
}

pub fn row_locks_end_when_idle_longer_than_the_lease<H: Harness>() {
    let t = unique("c_rli");
    let s = store::<H>(&t);
    s.enqueue(&(0..3).map(msg).collect::<Vec<_>>())
        .expect("enqueue");
    let Some(LockedClaim { claim, held }) = locked::<H>(&s, 1, 100) else {
        H::drop_table(&t);
        return;
    };
    assert_eq!(claim.messages.len(), 3);
    // A relay that hangs past its lease: the server ends its transaction, and
    // another relay takes the rows.
    std::thread::sleep(Duration::from_millis(2500));
    let taken = locked::<H>(&s, 30, 100).expect("held");
    assert_eq!(bodies(&taken.claim.messages), ["m0", "m1", "m2"]);
    let ids = row_ids(&claim.messages);
    let late = held.commit(&ids, true);
    assert!(late.is_err(), "a commit after the lease fails: {late:?}");
    let ids = row_ids(&taken.claim.messages);
    assert_eq!(taken.held.commit(&ids, true).expect("commit"), ids);
    assert_eq!(s.stats().expect("stats").pending, 0);
    H::drop_table(&t);
}
