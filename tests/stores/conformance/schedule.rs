//! Store conformance: delayed and scheduled messages (`Message::delay`,
//! `Message::deliver_at`, `available_at` written by plain SQL).

use super::*;
use std::time::{Instant, SystemTime};

const DELAY: Duration = Duration::from_millis(1500);

/// Sleeps until `d` after `began`, plus a margin for the database clock.
fn sleep_past(began: Instant, d: Duration) {
    std::thread::sleep(d.saturating_sub(began.elapsed()) + Duration::from_millis(100));
}

/// A delayed message (own transaction, batch, caller's transaction) is not
/// claimable before its delay, is counted as scheduled with its due time in the
/// stats and `next_due`, and is claimed once due; a time in the past is now.
pub fn delayed_messages_are_claimed_when_due<H: Harness>() {
    let t = unique("c_delay");
    let s = store::<H>(&t);
    assert_eq!(s.next_due().expect("next_due"), None);
    let began = Instant::now();
    let later = msg(1).delay(DELAY);
    let at = msg(2).deliver_at(SystemTime::now() + DELAY);
    let now = msg(3);
    let past = msg(4).deliver_at(SystemTime::now() - Duration::from_secs(3600));
    s.enqueue(std::slice::from_ref(&later)).expect("enqueue");
    s.enqueue(&[at.clone(), now.clone(), past.clone()])
        .expect("enqueue");
    let in_tx = msg(5).delay(DELAY);
    let r: Result<(), Error> =
        s.with_transaction(|tx| s.enqueue_in_tx(tx, std::slice::from_ref(&in_tx)));
    r.expect("commit");
    let st = s.stats().expect("stats");
    assert_eq!((st.pending, st.scheduled), (5, 3), "{st:?}");
    let due = st.next_due_in.expect("a next due time");
    assert!(
        due <= DELAY && due >= DELAY - Duration::from_millis(700),
        "{due:?}"
    );
    let due = s.next_due().expect("next_due").expect("a next due time");
    assert!(due <= DELAY, "{due:?}");
    let first = s.claim(&lease(60), 10.into()).expect("claim").messages;
    assert_eq!(
        ids(&first),
        vec![now.message_id(), past.message_id()],
        "only the undelayed ones"
    );
    assert!(
        began.elapsed() < DELAY - Duration::from_millis(200),
        "too slow to tell"
    );
    sleep_past(began, DELAY);
    let due = s.claim(&lease(60), 10.into()).expect("claim").messages;
    assert_eq!(
        ids(&due),
        vec![later.message_id(), at.message_id(), in_tx.message_id()],
        "due now, in id order"
    );
    let st = s.stats().expect("stats");
    assert_eq!((st.scheduled, st.next_due_in), (0, None), "{st:?}");
    assert_eq!(s.next_due().expect("next_due"), None);
    H::drop_table(&t);
}

/// A delayed message holds the later messages of its key until it is sent (it is
/// the key's earliest pending message); other keys and unkeyed messages flow.
pub fn a_delayed_head_holds_its_key<H: Harness>() {
    let t = unique("c_delay_key");
    let s = store::<H>(&t);
    let began = Instant::now();
    let head = keyed("k head", "k").delay(DELAY);
    let next = keyed("k next", "k");
    let other = keyed("j", "j");
    let free = msg(1);
    s.enqueue(&[head.clone(), next.clone(), other.clone(), free.clone()])
        .expect("enqueue");
    let l = lease(60);
    let got = s.claim(&l, 10.into()).expect("claim").messages;
    assert_eq!(
        ids(&got),
        vec![other.message_id(), free.message_id()],
        "k waits for its delayed head"
    );
    let done: Vec<i64> = got.iter().map(|m| m.id).collect();
    s.mark_dispatched(&l, &done).expect("mark");
    assert!(began.elapsed() < DELAY, "too slow to tell");
    sleep_past(began, DELAY);
    let l = lease(60);
    let got = s.claim(&l, 10.into()).expect("claim").messages;
    assert_eq!(ids(&got), vec![head.message_id()], "the head, not k next");
    assert!(s
        .claim(&lease(60), 10.into())
        .expect("claim")
        .messages
        .is_empty());
    s.mark_dispatched(&l, &[got[0].id]).expect("mark");
    let got = s.claim(&lease(60), 10.into()).expect("claim").messages;
    assert_eq!(ids(&got), vec![next.message_id()]);
    H::drop_table(&t);
}

/// A time before the Unix epoch or more than `MAX_DELAY` ahead is a typed error and
/// the whole batch (or the caller's transaction) stores nothing; `MAX_DELAY`
/// itself fits the store's time column and reads back as about ten years.
pub fn bad_schedules_store_nothing_and_ten_years_fit<H: Harness>() {
    let t = unique("c_delay_bad");
    let s = store::<H>(&t);
    let bad = [
        msg(1).delay(outboxer::MAX_DELAY + Duration::from_secs(1)),
        msg(2).delay(Duration::MAX),
        msg(3).deliver_at(SystemTime::now() + outboxer::MAX_DELAY + Duration::from_secs(60)),
        msg(4).deliver_at(SystemTime::UNIX_EPOCH - Duration::from_secs(1)),
    ];
    for b in &bad {
        let r = s.enqueue(&[msg(0), b.clone()]);
        assert!(matches!(r, Err(Error::InvalidSchedule { .. })), "{r:?}");
        let r: Result<(), Error> = s.with_transaction(|tx| {
            s.enqueue_in_tx(tx, &[msg(0)])?;
            s.enqueue_in_tx(tx, std::slice::from_ref(b))
        });
        assert!(matches!(r, Err(Error::InvalidSchedule { .. })), "{r:?}");
    }
    let st = s.stats().expect("stats");
    assert_eq!(st.pending, 0, "nothing stored: {st:?}");
    s.enqueue(&[msg(5).delay(outboxer::MAX_DELAY)])
        .expect("ten years fit");
    let due = s.next_due().expect("next_due").expect("due");
    assert!(
        due <= outboxer::MAX_DELAY && due > outboxer::MAX_DELAY - Duration::from_secs(60),
        "{due:?}"
    );
    assert!(s
        .claim(&lease(60), 10.into())
        .expect("claim")
        .messages
        .is_empty());
    H::drop_table(&t);
}

/// A row written with plain SQL that sets `available_at` itself (the statement
/// docs/stores.md shows) waits until then, and counts as scheduled.
pub fn plain_sql_delayed_row_waits<H: Harness>() {
    let t = unique("c_delay_sql");
    let s = store::<H>(&t);
    let began = Instant::now();
    H::exec(&[H::delayed_insert_sql(&t, "plain later", 1)]);
    let st = s.stats().expect("stats");
    assert_eq!((st.pending, st.scheduled), (1, 1), "{st:?}");
    assert!(s
        .claim(&lease(60), 10.into())
        .expect("claim")
        .messages
        .is_empty());
    assert!(
        began.elapsed() < Duration::from_millis(900),
        "too slow to tell"
    );
    sleep_past(began, Duration::from_secs(1));
    let got = s.claim(&lease(60), 10.into()).expect("claim").messages;
    assert_eq!(bodies(&got), vec!["plain later".to_string()]);
    H::drop_table(&t);
}
