//! Store conformance: per-key order, and a parked head that holds or gives up its key.

use super::*;

pub fn per_key_fifo<H: Harness>() {
    let t = unique("c_key");
    let s = store::<H>(&t);
    let k1a = Message::new(b"k1a".to_vec()).ordering_key("k1");
    let k1b = Message::new(b"k1b".to_vec()).ordering_key("k1");
    let k2a = Message::new(b"k2a".to_vec()).ordering_key("k2");
    let free = Message::new(b"free".to_vec());
    s.enqueue(&[k1a.clone(), k1b.clone(), k2a.clone(), free.clone()])
        .expect("enqueue");
    let l = lease(60);
    let got = s.claim(&l, 10.into()).expect("claim").messages;
    assert_eq!(
        ids(&got),
        vec![k1a.message_id(), k2a.message_id(), free.message_id()],
        "one head per key"
    );
    // While k1's head is leased (by anyone), k1's next message is not claimable.
    assert!(s
        .claim(&lease(60), 10.into())
        .expect("claim")
        .messages
        .is_empty());
    // k1's head fails and backs off: still nothing of k1, other keys unaffected.
    let k1a_id = got[0].id;
    let f = [FailedAttempt {
        id: k1a_id,
        error: "x".into(),
        retry_in: Duration::from_millis(600),
        park: false,
        hold_key: false,
    }];
    s.mark_failed(&l, &f).expect("fail");
    s.mark_dispatched(&l, &[got[1].id, got[2].id])
        .expect("mark")
        .len();
    assert!(
        s.claim(&lease(60), 10.into())
            .expect("claim")
            .messages
            .is_empty(),
        "k1b waits behind k1a"
    );
    std::thread::sleep(Duration::from_millis(700));
    let l2 = lease(60);
    let retry = s.claim(&l2, 10.into()).expect("claim").messages;
    assert_eq!(
        ids(&retry),
        vec![k1a.message_id()],
        "the head again, not k1b"
    );
    s.mark_dispatched(&l2, &[k1a_id]).expect("mark").len();
    let next = s.claim(&lease(60), 10.into()).expect("claim").messages;
    assert_eq!(ids(&next), vec![k1b.message_id()]);
    H::drop_table(&t);
}

/// A parked key head holds its key (by default): the key's later messages wait
/// while other keys and unkeyed messages flow; requeued, the head goes first and
/// the rest follow in order. Parked without holding, the key flows at once.
pub fn parked_head_holds_its_key<H: Harness>() {
    let t = unique("c_hold");
    let s = store::<H>(&t);
    s.enqueue(&[
        keyed("k1 a", "k1"),
        keyed("k1 b", "k1"),
        keyed("k1 c", "k1"),
        keyed("k2 a", "k2"),
        msg(1),
        keyed("k3 a", "k3"),
        keyed("k3 b", "k3"),
    ])
    .expect("enqueue");
    let l = lease(60);
    let got = s.claim(&l, 100.into()).expect("claim").messages;
    assert_eq!(bodies(&got), ["k1 a", "k2 a", "m1", "k3 a"]);
    let fails = [park(&got[0], true), park(&got[3], false)];
    assert_eq!(s.mark_failed(&l, &fails).expect("park"), 2);
    s.mark_dispatched(&l, &[got[1].id, got[2].id])
        .expect("mark")
        .len();
    s.enqueue(&[keyed("k2 b", "k2"), msg(2), keyed("k1 d", "k1")])
        .expect("enqueue");
    assert_eq!(
        drain(&s),
        ["k3 b", "k2 b", "m2"],
        "k1 is held by its parked head; k3's head was parked without holding"
    );
    assert!(drain(&s).is_empty(), "k1 stays held");
    let st = s.stats().expect("stats");
    assert_eq!((st.pending, st.parked), (3, 2), "{st:?}");
    let parked: Vec<i64> = s.parked(10).expect("parked").iter().map(|p| p.id).collect();
    assert_eq!(parked, vec![got[0].id, got[3].id]);
    // The head back: first, alone, then the rest of the key in order.
    assert_eq!(
        s.requeue(&Requeue::Ids(vec![got[0].id])).expect("requeue"),
        1
    );
    assert_eq!(drain(&s), ["k1 a"]);
    assert_eq!(drain(&s), ["k1 b"]);
    assert_eq!(drain(&s), ["k1 c"]);
    assert_eq!(drain(&s), ["k1 d"]);
    // A head parked without holding is still parked for the operator.
    assert_eq!(s.requeue(&Requeue::AllParked).expect("requeue"), 1);
    assert_eq!(drain(&s), ["k3 a"]);
    H::drop_table(&t);
}

/// Held keys are listed with their parked head and how many messages wait; `skip`
/// gives a head up (it stays parked, the key flows), `requeue` puts it back first.
pub fn skip_and_held_keys<H: Harness>() {
    let t = unique("c_skip");
    let s = store::<H>(&t);
    s.enqueue(&[
        keyed("k1 a", "k1"),
        keyed("k1 b", "k1"),
        keyed("k1 c", "k1"),
        keyed("k2 a", "k2"),
        keyed("k2 b", "k2"),
        msg(1),
        keyed("k4 a", "k4"),
        keyed("k4 b", "k4"),
    ])
    .expect("enqueue");
    let l = lease(60);
    let got = s.claim(&l, 100.into()).expect("claim").messages;
    assert_eq!(bodies(&got), ["k1 a", "k2 a", "m1", "k4 a"]);
    let (k1a, k2a, m1, k4a) = (&got[0], &got[1], &got[2], &got[3]);
    let fails = [
        park(k1a, true),
        park(k2a, true),
        park(m1, true),
        park(k4a, false),
    ];
    assert_eq!(s.mark_failed(&l, &fails).expect("park"), 4);
    assert_eq!(drain(&s), ["k4 b"], "k4's head was parked without holding");

    let held = s.held_keys(10).expect("held keys");
    assert_eq!(
        held.iter()
            .map(|h| (h.ordering_key.as_str(), h.parked_id, h.waiting))
            .collect::<Vec<_>>(),
        vec![("k1", k1a.id, 2), ("k2", k2a.id, 1)]
    );
    assert_eq!(held[0].message_id, Some(k1a.message_id));
    assert_eq!(held[0].last_error.as_deref(), Some("poison k1 a"));
    assert_eq!(s.held_keys(1).expect("held keys").len(), 1, "limit");
    let st = s.stats().expect("stats");
    assert_eq!((st.parked, st.held_keys, st.pending), (4, 2, 3), "{st:?}");
    let parked = s.parked(10).expect("parked");
    assert_eq!(
        parked
            .iter()
            .map(|p| (p.id, p.ordering_key.as_deref(), p.holds_key))
            .collect::<Vec<_>>(),
        vec![
            (k1a.id, Some("k1"), true),
            (k2a.id, Some("k2"), true),
            (m1.id, None, false),
            (k4a.id, Some("k4"), false)
        ]
    );

    // Skip gives k2's head up: it stays parked, k2 b flows. Only parked rows move.
    assert_eq!(
        s.skip(&[k2a.id, k4a.id, i64::MAX]).expect("skip"),
        1,
        "k4 a is skipped already; no such row"
    );
    assert_eq!(s.skip(&[k2a.id]).expect("skip"), 0, "idempotent");
    assert_eq!(s.skip(&[]).expect("skip"), 0);
    assert_eq!(drain(&s), ["k2 b"], "k1 still held");
    let st = s.stats().expect("stats");
    assert_eq!((st.parked, st.held_keys, st.pending), (4, 1, 2), "{st:?}");
    assert!(s
        .parked(10)
        .expect("parked")
        .iter()
        .any(|p| p.id == k2a.id && !p.holds_key));

    // Requeue k1's head: it goes first, then the rest of k1 in order.
    assert_eq!(s.requeue(&Requeue::Ids(vec![k1a.id])).expect("requeue"), 1);
    assert!(s.held_keys(10).expect("held keys").is_empty());
    assert_eq!(drain(&s), ["k1 a"]);
    assert_eq!(drain(&s), ["k1 b"]);
    assert_eq!(drain(&s), ["k1 c"]);
    // A skipped head can still be requeued (published after its key's later ones).
    assert_eq!(s.requeue(&Requeue::Ids(vec![k2a.id])).expect("requeue"), 1);
    assert_eq!(drain(&s), ["k2 a"]);
    let st = s.stats().expect("stats");
    assert_eq!((st.parked, st.held_keys, st.pending), (2, 0, 0), "{st:?}");
    H::drop_table(&t);
}
