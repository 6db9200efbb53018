//! Store conformance: failed attempts, parking and requeue, rows that cannot be decoded.

use super::*;

pub fn mark_fail_park_requeue<H: Harness>() {
    let t = unique("c_fail");
    let s = store::<H>(&t);
    s.enqueue(&[msg(1), msg(2), msg(3)]).expect("enqueue");
    let l = lease(30);
    let got = s.claim(&l, 10.into()).expect("claim").messages;
    let (a, b, c) = (got[0].id, got[1].id, got[2].id);
    assert_eq!(s.mark_dispatched(&l, &[a]).expect("mark").len(), 1);
    let fails = [
        FailedAttempt {
            id: b,
            error: "nack".into(),
            retry_in: Duration::ZERO,
            park: false,
            hold_key: false,
        },
        FailedAttempt {
            id: c,
            error: "poison".into(),
            retry_in: Duration::ZERO,
            park: true,
            hold_key: false,
        },
    ];
    assert_eq!(s.mark_failed(&l, &fails).expect("fail"), 2);
    let st = s.stats().expect("stats");
    assert_eq!(
        (st.pending, st.dispatched, st.parked, st.leased),
        (1, 1, 1, 0),
        "{st:?}"
    );
    let l2 = lease(30);
    let again = s.claim(&l2, 10.into()).expect("claim").messages;
    assert_eq!(
        again.iter().map(|m| (m.id, m.attempts)).collect::<Vec<_>>(),
        vec![(b, 1)]
    );
    // Backoff: a retry scheduled later is not claimable before its time.
    let later = [FailedAttempt {
        id: b,
        error: "again".into(),
        retry_in: Duration::from_secs(3600),
        park: false,
        hold_key: false,
    }];
    assert_eq!(s.mark_failed(&l2, &later).expect("fail"), 1);
    assert!(
        s.claim(&lease(30), 10.into())
            .expect("claim")
            .messages
            .is_empty(),
        "backing off"
    );
    // Requeue brings the parked one back with a fresh budget; only parked rows move.
    assert_eq!(s.requeue(&Requeue::Ids(vec![a, b, c])).expect("requeue"), 1);
    let back = s.claim(&lease(30), 10.into()).expect("claim").messages;
    assert_eq!(
        back.iter().map(|m| (m.id, m.attempts)).collect::<Vec<_>>(),
        vec![(c, 0)]
    );
    let st = s.stats().expect("stats");
    assert_eq!((st.pending, st.dispatched, st.parked), (2, 1, 0), "{st:?}");
    assert!(st.oldest_pending_age < Duration::from_secs(600));
    H::drop_table(&t);
}

/// The operator's view: attempts histogram of undelivered rows and the parked list.
pub fn attempts_histogram_and_parked_list<H: Harness>() {
    let t = unique("c_hist");
    let s = store::<H>(&t);
    assert!(s.attempts_histogram().expect("histogram").is_empty());
    assert!(s.parked(10).expect("parked").is_empty());
    let sent: Vec<Message> = (0..5).map(msg).collect();
    s.enqueue(&sent).expect("enqueue");
    let l = lease(30);
    let got = s.claim(&l, 10.into()).expect("claim").messages;
    assert_eq!(got.len(), 5);
    let fail = |m: &StoredMessage, error: &str, park: bool| FailedAttempt {
        id: m.id,
        error: error.into(),
        retry_in: Duration::from_secs(3600),
        park,
        hold_key: false,
    };
    // m0 dispatched (not counted), m1 pending with 0 attempts, m2 one failure,
    // m3 and m4 parked after one failure each.
    assert_eq!(s.mark_dispatched(&l, &[got[0].id]).expect("mark").len(), 1);
    assert_eq!(
        s.release(&l, &[got[1].id], Duration::ZERO)
            .expect("release"),
        1
    );
    let fails = [
        fail(&got[2], "nack", false),
        fail(&got[3], "poison: exchange 'x' not found", true),
        fail(&got[4], "too big ✗", true),
    ];
    assert_eq!(s.mark_failed(&l, &fails).expect("fail"), 3);
    assert_eq!(
        s.attempts_histogram().expect("histogram"),
        vec![(0, 1), (1, 3)]
    );
    let parked = s.parked(10).expect("parked");
    assert_eq!(
        parked
            .iter()
            .map(|p| (p.id, p.message_id, p.attempts, p.last_error.clone()))
            .collect::<Vec<_>>(),
        vec![
            (
                got[3].id,
                Some(got[3].message_id),
                1,
                Some("poison: exchange 'x' not found".to_string())
            ),
            (
                got[4].id,
                Some(got[4].message_id),
                1,
                Some("too big ✗".to_string())
            ),
        ]
    );
    assert_eq!(s.parked(1).expect("parked").len(), 1, "limit");
    assert_eq!(s.requeue(&Requeue::AllParked).expect("requeue"), 2);
    assert!(s.parked(10).expect("parked").is_empty());
    assert_eq!(
        s.attempts_histogram().expect("histogram"),
        vec![(0, 3), (1, 1)]
    );
    H::drop_table(&t);
}

/// Parked rows are deleted only on request, by age and in batches; nothing else is.
pub fn purge_parked_only_touches_parked<H: Harness>() {
    let t = unique("c_purge");
    let s = store::<H>(&t);
    s.enqueue(&(0..5).map(msg).collect::<Vec<_>>())
        .expect("enqueue");
    let l = lease(30);
    let got = s.claim(&l, 10.into()).expect("claim").messages;
    assert_eq!(s.mark_dispatched(&l, &[got[0].id]).expect("mark").len(), 1);
    let park = |m: &StoredMessage| FailedAttempt {
        id: m.id,
        error: "poison".into(),
        retry_in: Duration::ZERO,
        park: true,
        hold_key: false,
    };
    let parks = [park(&got[1]), park(&got[2]), park(&got[3])];
    assert_eq!(s.mark_failed(&l, &parks).expect("park"), 3);
    assert_eq!(
        s.release(&l, &[got[4].id], Duration::ZERO)
            .expect("release"),
        1
    );
    std::thread::sleep(Duration::from_millis(20));
    // What a dry run counts: nothing younger than an hour; with no age, the one
    // dispatched row and the three parked ones (pending rows never).
    let none = s.purgeable(Duration::from_secs(3600)).expect("purgeable");
    assert_eq!((none.dispatched, none.parked), (0, 0));
    let all = s.purgeable(Duration::ZERO).expect("purgeable");
    assert_eq!((all.dispatched, all.parked), (1, 3));
    // Younger than an hour: nothing goes.
    assert_eq!(
        s.purge_parked(Duration::from_secs(3600), 100)
            .expect("purge"),
        0
    );
    assert_eq!(
        s.purge_parked(Duration::ZERO, 2).expect("purge"),
        2,
        "limit"
    );
    assert_eq!(s.purge_parked(Duration::ZERO, 100).expect("purge"), 1);
    let st = s.stats().expect("stats");
    assert_eq!((st.pending, st.dispatched, st.parked), (1, 1, 0), "{st:?}");
    H::drop_table(&t);
}

/// Rows written by plain SQL whose headers or options are JSON but not an object
/// (`'[]'` is what PHP's `json_encode([])` writes) are leased with the claim and
/// returned apart, with the column named; they never fail the claim, and every
/// other row of it is returned.
pub fn undecodable_rows_are_claimed_apart<H: Harness>() {
    let t = unique("c_undec");
    let s = store::<H>(&t);
    let route = Some(r#"{"exchange.name": "x", "routing_key": "r"}"#);
    let rows: [(&str, Option<&str>, Option<&str>); 7] = [
        ("g1", Some(r#"{"n": "1"}"#), route),
        ("bad headers []", Some("[]"), route),
        ("g2", None, None),
        ("bad headers string", Some(r#""x""#), None),
        ("bad headers number", Some("1"), None),
        ("bad options []", None, Some("[]")),
        ("g3", Some("{}"), Some("{}")),
    ];
    let inserts: Vec<String> = rows
        .iter()
        .map(|(p, h, o)| H::insert_sql(&t, p, *h, *o, None))
        .collect();
    H::exec(&inserts);
    let l = lease(30);
    let claim = s
        .claim(&l, 100.into())
        .expect("a bad row never fails the claim");
    let payloads: Vec<&[u8]> = claim
        .messages
        .iter()
        .map(|m| m.payload.as_slice())
        .collect();
    assert_eq!(payloads, [&b"g1"[..], b"g2", b"g3"], "every good row");
    let reasons: Vec<&str> = claim
        .undecodable
        .iter()
        .map(|u| u.reason.as_str())
        .collect();
    assert_eq!(reasons.len(), 4, "{reasons:?}");
    for (reason, column) in reasons
        .iter()
        .zip(["headers", "headers", "headers", "options"])
    {
        assert!(reason.contains(column), "{reason:?} names {column}");
    }
    let (good, bad): (Vec<i64>, Vec<i64>) = (
        claim.messages.iter().map(|m| m.id).collect(),
        claim.undecodable.iter().map(|u| u.id).collect(),
    );
    assert!(
        good[0] < bad[0] && bad[0] < good[1] && bad[3] < good[2],
        "{good:?} {bad:?}"
    );
    assert_eq!(claim.len(), 7);
    assert!(
        s.claim(&lease(30), 100.into()).expect("claim").is_empty(),
        "the bad rows are leased too"
    );
    // What the relay does with them: a permanent failure, parked with the reason.
    let park: Vec<FailedAttempt> = claim
        .undecodable
        .iter()
        .map(|u| FailedAttempt {
            id: u.id,
            error: u.reason.clone(),
            retry_in: Duration::ZERO,
            park: true,
            hold_key: true,
        })
        .collect();
    assert_eq!(s.mark_failed(&l, &park).expect("park"), 4);
    assert_eq!(s.mark_dispatched(&l, &good).expect("mark").len(), 3);
    let parked = s.parked(10).expect("parked");
    assert_eq!(parked.iter().map(|p| p.id).collect::<Vec<_>>(), bad);
    let st = s.stats().expect("stats");
    assert_eq!((st.pending, st.dispatched, st.parked), (0, 3, 4), "{st:?}");
    H::drop_table(&t);
}

/// `Requeue::Matching`: parked messages selected by age (`created_at`, database
/// clock) and by text in `last_error` (ignoring ASCII case), both at once; pending
/// rows never move; requeued rows come back with a fresh budget.
pub fn requeue_by_age_and_error_text<H: Harness>() {
    use outboxer::store::ParkedFilter;
    let t = unique("c_requeue_match");
    let s = store::<H>(&t);
    let fail = |l: &Lease, m: &StoredMessage, error: &str| {
        let f = FailedAttempt {
            id: m.id,
            error: error.into(),
            retry_in: Duration::ZERO,
            park: true,
            hold_key: false,
        };
        assert_eq!(s.mark_failed(l, &[f]).expect("park"), 1);
    };
    s.enqueue(&[msg(1), msg(2)]).expect("enqueue");
    let l = lease(30);
    let old = s.claim(&l, 10.into()).expect("claim").messages;
    fail(
        &l,
        &old[0],
        "broker rejected the message: NOT_FOUND - no exchange 'a'",
    );
    fail(&l, &old[1], "message unroutable: 312 NO_ROUTE");
    std::thread::sleep(Duration::from_millis(1500));
    s.enqueue(&[msg(3), msg(4)]).expect("enqueue");
    let l = lease(30);
    let new = s.claim(&l, 10.into()).expect("claim").messages;
    fail(
        &l,
        &new[0],
        "broker rejected the message: NOT_FOUND - no exchange 'b'",
    );
    s.release(&l, &[new[1].id], Duration::ZERO)
        .expect("release"); // m4 stays pending
    let requeue = |f: ParkedFilter| s.requeue(&Requeue::Matching(f)).expect("requeue");

    assert_eq!(
        requeue(ParkedFilter::new().older_than(Duration::from_secs(3600))),
        0
    );
    assert_eq!(
        requeue(ParkedFilter::new().error_contains("no such text")),
        0
    );
    // Old and about a missing exchange: m1 only (m3 is too young, m2 another error).
    let moved = requeue(
        ParkedFilter::new()
            .older_than(Duration::from_secs(1))
            .error_contains("No Exchange"),
    );
    assert_eq!(moved, 1);
    let st = s.stats().expect("stats");
    assert_eq!((st.pending, st.parked), (2, 2), "{st:?}");
    // By text alone, whatever the age: m3.
    assert_eq!(requeue(ParkedFilter::new().error_contains("NOT_FOUND")), 1);
    // By age alone: m2 (m3 is back already).
    assert_eq!(
        requeue(ParkedFilter::new().older_than(Duration::from_secs(1))),
        1
    );
    assert_eq!(requeue(ParkedFilter::new()), 0, "nothing parked is left");
    let back = s.claim(&lease(30), 10.into()).expect("claim").messages;
    let mut got: Vec<(String, u32)> = back
        .iter()
        .map(|m| (String::from_utf8_lossy(&m.payload).into_owned(), m.attempts))
        .collect();
    got.sort();
    assert_eq!(
        got,
        [("m1", 0), ("m2", 0), ("m3", 0), ("m4", 0)].map(|(b, a)| (b.to_string(), a))
    );
    H::drop_table(&t);
}
