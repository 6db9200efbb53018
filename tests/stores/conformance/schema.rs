//! Store conformance: the caller's transaction, cleanup, migrations (and the Go table), bad input.

use super::*;

pub fn rollback_stores_nothing<H: Harness>() {
    let t = unique("c_rb");
    let s = store::<H>(&t);
    let r: Result<(), Error> = s.with_transaction(|tx| {
        s.enqueue_in_tx(tx, &[msg(1), msg(2)])?;
        Err(Error::Rejected("user error".into()))
    });
    assert!(matches!(r, Err(Error::Rejected(_))));
    let kept = msg(3);
    let r: Result<(), Error> =
        s.with_transaction(|tx| s.enqueue_in_tx(tx, std::slice::from_ref(&kept)));
    r.expect("commit");
    let got = s.claim(&lease(30), 10.into()).expect("claim").messages;
    assert_eq!(ids(&got), vec![kept.message_id()]);
    H::drop_table(&t);
}

pub fn cleanup_only_old_dispatched<H: Harness>() {
    let t = unique("c_clean");
    let s = store::<H>(&t);
    s.enqueue(&(0..6).map(msg).collect::<Vec<_>>())
        .expect("enqueue");
    let l = lease(60);
    let got = s.claim(&l, 10.into()).expect("claim").messages;
    let old: Vec<i64> = got[..3].iter().map(|m| m.id).collect();
    s.mark_dispatched(&l, &old).expect("mark").len();
    let park = [FailedAttempt {
        id: got[3].id,
        error: "x".into(),
        retry_in: Duration::ZERO,
        park: true,
        hold_key: false,
    }];
    s.mark_failed(&l, &park).expect("park");
    std::thread::sleep(Duration::from_millis(2100));
    s.mark_dispatched(&l, &[got[4].id]).expect("mark").len();
    // Batches of 2: the cutoff is the database clock at each call.
    assert_eq!(s.cleanup(Duration::from_secs(2), 2).expect("cleanup"), 2);
    assert_eq!(s.cleanup(Duration::from_secs(2), 2).expect("cleanup"), 1);
    assert_eq!(s.cleanup(Duration::from_secs(2), 2).expect("cleanup"), 0);
    let st = s.stats().expect("stats");
    assert_eq!((st.dispatched, st.parked, st.pending), (1, 1, 1), "{st:?}");
    H::drop_table(&t);
}

pub fn migrate_concurrently_and_upgrade_go_table<H: Harness>() {
    let t = unique("c_mig");
    std::thread::scope(|sc| {
        let hs: Vec<_> = (0..4)
            .map(|_| {
                let t = t.clone();
                sc.spawn(move || {
                    let s = H::try_store(&t)?;
                    s.migrate()?;
                    s.migrate()
                })
            })
            .collect();
        for h in hs {
            h.join().expect("thread").expect("migrate");
        }
    });
    H::drop_table(&t);

    let g = unique("c_go");
    H::exec(&H::go_table(&g));
    let s = store::<H>(&g);
    s.migrate().expect("migrate again");
    let got = s.claim(&lease(30), 10.into()).expect("claim").messages;
    assert_eq!(got.len(), 1, "only the undispatched Go row");
    assert_eq!(got[0].payload, b"from go");
    assert_eq!(got[0].headers.get("n").map(String::as_str), Some("1"));
    let st = s.stats().expect("stats");
    assert_eq!((st.dispatched, st.pending), (1, 1));
    H::drop_table(&g);
}

pub fn bad_names_and_unreachable_servers_are_typed_errors<H: Harness>() {
    for bad in ["x; DROP TABLE users", "a\"b", "", "1x", "a.b.c", "a-b"] {
        match H::try_store(bad) {
            Err(Error::InvalidIdentifier { .. }) => {}
            Err(e) => panic!("{bad:?}: {e}"),
            Ok(_) => panic!("{bad:?} accepted"),
        }
    }
    match H::unreachable() {
        Err(Error::Database { .. }) => {}
        Err(e) => panic!("unreachable: {e}"),
        Ok(s) => match s.migrate() {
            Err(Error::Database { .. }) => {}
            other => panic!("unreachable server: {other:?}"),
        },
    }
}

/// `missing_indexes` lists every index `migrate` makes before it ran and none
/// after; `migrate` puts a dropped one back.
pub fn missing_indexes_until_migrated<H: Harness>() {
    let t = unique("c_indexes");
    let s = H::try_store(&t).expect("store");
    let before = s
        .missing_indexes()
        .expect("indexes")
        .expect("this store can tell");
    assert!(before.len() >= 3, "{before:?}");
    s.migrate().expect("migrate");
    assert_eq!(s.missing_indexes().expect("indexes"), Some(vec![]));
    H::exec(&[format!("DROP INDEX {}", H::index_ref(&t, &before[0]))]);
    assert_eq!(
        s.missing_indexes().expect("indexes"),
        Some(vec![before[0].clone()])
    );
    s.migrate().expect("migrate again");
    assert_eq!(s.missing_indexes().expect("indexes"), Some(vec![]));
    H::drop_table(&t);
}
