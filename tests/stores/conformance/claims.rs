//! Store conformance: claims, leases and marks.

use super::*;

pub fn send_claim_mark_roundtrip<H: Harness>() {
    let t = unique("c_rt");
    let s = store::<H>(&t);
    let big: Vec<u8> = (0..1024 * 1024).map(|i| (i * 7 % 256) as u8).collect();
    let sent = vec![
        Message::new(big.clone())
            .header("ключ", "значение 🎉")
            .header("tenant", "acme")
            .option("exchange.name", "orders")
            .option("exchange.durable", true)
            .ordering_key("k1"),
        Message::new(vec![0u8, 159, 146, 150, 255]),
        msg(3),
    ];
    s.enqueue(&sent).expect("enqueue");
    let got = s.claim(&lease(30), 10.into()).expect("claim").messages;
    assert_eq!(
        ids(&got),
        sent.iter().map(|m| m.message_id()).collect::<Vec<_>>(),
        "id order"
    );
    assert!(got.windows(2).all(|w| w[0].id < w[1].id));
    assert_eq!(got[0].payload, big, "1 MiB byte-exact");
    assert_eq!(got[0].headers, *sent[0].headers());
    assert_eq!(got[0].options, *sent[0].options());
    assert_eq!(got[0].ordering_key.as_deref(), Some("k1"));
    assert_eq!(got[1].payload, vec![0u8, 159, 146, 150, 255], "non-UTF-8");
    assert_eq!(got[0].attempts, 0);
    let st = s.stats().expect("stats");
    assert_eq!(
        (st.pending, st.leased, st.dispatched, st.parked),
        (3, 3, 0, 0)
    );
    let l = lease(30);
    assert!(
        s.claim(&l, 10.into()).expect("claim").messages.is_empty(),
        "leased rows are not claimed again"
    );
    H::drop_table(&t);
}

pub fn lease_expiry_and_token_checked_marks<H: Harness>() {
    let t = unique("c_lease");
    let s = store::<H>(&t);
    s.enqueue(&(0..10).map(msg).collect::<Vec<_>>())
        .expect("enqueue");
    let a = lease(1);
    let first = s.claim(&a, 4.into()).expect("claim").messages;
    assert_eq!(first.len(), 4);
    assert_eq!(
        s.claim(&lease(60), 100.into())
            .expect("claim")
            .messages
            .len(),
        6,
        "leased rows skipped"
    );
    std::thread::sleep(Duration::from_millis(1300));
    let c = lease(60);
    let taken = s.claim(&c, 100.into()).expect("claim").messages;
    assert_eq!(ids(&taken), ids(&first), "expired lease taken over");
    let rows: Vec<i64> = first.iter().map(|m| m.id).collect();
    assert_eq!(
        s.mark_dispatched(&a, &rows).expect("mark").len(),
        0,
        "late holder cannot mark"
    );
    let f = [FailedAttempt {
        id: rows[0],
        error: "x".into(),
        retry_in: Duration::ZERO,
        park: true,
        hold_key: false,
    }];
    assert_eq!(s.mark_failed(&a, &f).expect("fail"), 0);
    assert_eq!(s.release(&a, &rows, Duration::ZERO).expect("release"), 0);
    assert_eq!(s.mark_dispatched(&c, &rows).expect("mark").len(), 4);
    H::drop_table(&t);
}

/// A relay whose lease expired learns which of its rows it still marked, so
/// that it reports only those as delivered.
pub fn mark_reports_exactly_the_rows_still_held<H: Harness>() {
    let t = unique("c_held");
    let s = store::<H>(&t);
    s.enqueue(&(0..4).map(msg).collect::<Vec<_>>())
        .expect("enqueue");
    let a = lease(1);
    let first = s.claim(&a, 4.into()).expect("claim").messages;
    assert_eq!(first.len(), 4);
    std::thread::sleep(Duration::from_millis(1300));
    // Another relay takes two of the expired rows over.
    let b = lease(60);
    let taken = s.claim(&b, 2.into()).expect("claim").messages;
    assert_eq!(taken.len(), 2);
    let all: Vec<i64> = first.iter().map(|m| m.id).collect();
    let mut marked = s.mark_dispatched(&a, &all).expect("mark");
    marked.sort_unstable();
    let mut kept: Vec<i64> = all
        .iter()
        .copied()
        .filter(|id| !taken.iter().any(|m| m.id == *id))
        .collect();
    kept.sort_unstable();
    assert_eq!(marked, kept, "exactly the rows the late relay still held");
    let took: Vec<i64> = taken.iter().map(|m| m.id).collect();
    assert_eq!(s.mark_dispatched(&b, &took).expect("mark").len(), 2);
    H::drop_table(&t);
}

/// `release` gives rows back without counting an attempt, available again after
/// the delay it is given (by the database clock), and only under the lease's token.
pub fn release_with_a_delay<H: Harness>() {
    let t = unique("c_rel");
    let s = store::<H>(&t);
    s.enqueue(&[msg(1), msg(2)]).expect("enqueue");
    let l = lease(60);
    let got = s.claim(&l, 10.into()).expect("claim").messages;
    let (a, b) = (got[0].id, got[1].id);
    assert_eq!(
        s.release(&lease(60), &[a, b], Duration::ZERO)
            .expect("release"),
        0,
        "another token releases nothing"
    );
    assert_eq!(
        s.release(&l, &[a], Duration::from_millis(1500))
            .expect("release"),
        1
    );
    assert_eq!(s.release(&l, &[b], Duration::ZERO).expect("release"), 1);
    let l2 = lease(60);
    let now = s.claim(&l2, 10.into()).expect("claim").messages;
    assert_eq!(
        now.iter().map(|m| (m.id, m.attempts)).collect::<Vec<_>>(),
        vec![(b, 0)],
        "zero delay: at once; the delayed one waits"
    );
    let st = s.stats().expect("stats");
    assert_eq!((st.pending, st.leased), (2, 1), "{st:?}");
    std::thread::sleep(Duration::from_millis(1700));
    let later = s.claim(&lease(60), 10.into()).expect("claim").messages;
    assert_eq!(
        later.iter().map(|m| (m.id, m.attempts)).collect::<Vec<_>>(),
        vec![(a, 0)],
        "after its delay, with no attempt counted"
    );
    assert_eq!(s.attempts_histogram().expect("histogram"), vec![(0, 2)]);
    H::drop_table(&t);
}

/// A claim stops at `BatchLimit::bytes` of payload, except that its first message
/// always fits (a message larger than the cap is claimed alone); rows left out are
/// not leased.
pub fn claims_honour_the_byte_limit<H: Harness>() {
    use outboxer::store::BatchLimit;
    let t = unique("c_bytes");
    let s = store::<H>(&t);
    let kib = |n: usize| n * 1024;
    s.enqueue(
        &(0..10)
            .map(|i| Message::new(vec![i as u8; kib(100)]))
            .collect::<Vec<_>>(),
    )
    .expect("enqueue");
    let limit = BatchLimit {
        rows: 100,
        bytes: kib(250),
    };
    let mut sizes = Vec::new();
    loop {
        let got = s.claim(&lease(60), limit).expect("claim").messages;
        if got.is_empty() {
            break;
        }
        sizes.push(got.len());
        assert!(sizes.len() <= 10, "{sizes:?}");
    }
    assert_eq!(sizes, [2, 2, 2, 2, 2], "100 KiB rows under a 250 KiB cap");

    let big = Message::new(vec![7u8; kib(1024)]);
    s.enqueue(&[big.clone(), msg(1), msg(2), msg(3)])
        .expect("enqueue");
    let small = BatchLimit {
        rows: 100,
        bytes: kib(1),
    };
    let got = s.claim(&lease(60), small).expect("claim").messages;
    assert_eq!(ids(&got), vec![big.message_id()], "1 MiB alone under 1 KiB");
    let got = s.claim(&lease(60), small).expect("claim").messages;
    assert_eq!(bodies(&got), ["m1", "m2", "m3"]);
    assert_eq!(s.stats().expect("stats").leased, 14);
    H::drop_table(&t);
}

pub fn concurrent_claimers_never_share_a_row<H: Harness>() {
    let t = unique("c_conc");
    let s = store::<H>(&t);
    let msgs: Vec<Message> = (0..600).map(msg).collect();
    for chunk in msgs.chunks(200) {
        s.enqueue(chunk).expect("enqueue");
    }
    let results: Vec<Vec<i64>> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..3)
            .map(|_| {
                let s = s.clone();
                sc.spawn(move || {
                    let mut mine = Vec::new();
                    loop {
                        let l = lease(60);
                        let got = s.claim(&l, 7.into()).expect("claim").messages;
                        if got.is_empty() {
                            break;
                        }
                        let ids: Vec<i64> = got.iter().map(|m| m.id).collect();
                        assert_eq!(s.mark_dispatched(&l, &ids).expect("mark").len(), ids.len());
                        mine.extend(ids);
                    }
                    mine
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().expect("claimer")).collect()
    });
    let all: Vec<i64> = results.iter().flatten().copied().collect();
    let distinct: HashSet<i64> = all.iter().copied().collect();
    assert_eq!(all.len(), 600, "every row claimed once");
    assert_eq!(distinct.len(), 600, "no row claimed twice");
    H::drop_table(&t);
}

/// A W3C trace context written with plain SQL (the `traceparent` and `tracestate`
/// keys of the headers JSON, as docs/cli.md shows per store) is claimed byte-exact
/// with the row, for the relay to send; one from `Message::trace_context` too.
pub fn plain_sql_trace_context_is_claimed_with_the_row<H: Harness>() {
    let t = unique("c_trace");
    let s = store::<H>(&t);
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let state = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE";
    let headers = format!(r#"{{"traceparent": "{tp}", "tracestate": "{state}"}}"#);
    H::exec(&[H::insert_sql(&t, "plain", Some(&headers), None, None)]);
    s.enqueue(&[Message::new(b"api".to_vec()).trace_context(tp, None)])
        .expect("enqueue");
    let got = s.claim(&lease(30), 10.into()).expect("claim").messages;
    assert_eq!(bodies(&got), ["plain", "api"]);
    let ctx: Vec<Option<outboxer::TraceContext>> = got
        .iter()
        .map(|m| outboxer::TraceContext::from_headers(&m.headers))
        .collect();
    let plain = ctx[0].as_ref().expect("plain-SQL trace context");
    assert_eq!((plain.traceparent(), plain.tracestate()), (tp, Some(state)));
    let api = ctx[1].as_ref().expect("trace context");
    assert_eq!((api.traceparent(), api.tracestate()), (tp, None));
    H::drop_table(&t);
}
