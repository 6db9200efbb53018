//! One conformance suite for every store. A store's test module implements
//! [`Harness`] and expands `store_conformance!(TheHarness)`.

use outboxer::store::{FailedAttempt, Lease, Requeue, Store, TxStore};
use outboxer::{Error, Message, MessageId, StoredMessage};
use std::collections::HashSet;
use std::time::Duration;

/// What the suite needs from a store's test module.
pub trait Harness {
    type S: TxStore + Clone;
    /// A store on `table` (not migrated), or the error its builder gives.
    fn try_store(table: &str) -> Result<Self::S, Error>;
    /// The same store type pointed at a server that is not there.
    fn unreachable() -> Result<Self::S, Error>;
    /// Runs raw SQL statements (to create a Go outboxer table, to drop tables).
    fn exec(statements: &[String]);
    /// Statements creating the Go outboxer's table for this database, with one
    /// dispatched and one pending row (payload 'from go', headers {"n": 1}).
    fn go_table(table: &str) -> Vec<String>;
    /// Drops the table.
    fn drop_table(table: &str);
    /// One `INSERT` of a row as another language writes it with plain SQL: the
    /// payload text as bytes, headers and options as JSON text (or NULL), an
    /// optional ordering key; every other column from its default (or "now").
    fn insert_sql(
        table: &str,
        payload: &str,
        headers: Option<&str>,
        options: Option<&str>,
        key: Option<&str>,
    ) -> String;
}

/// An SQL string literal (single quotes doubled).
pub fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// [`lit`], or NULL.
pub fn lit_or_null(v: Option<&str>) -> String {
    v.map_or("NULL".to_string(), lit)
}

pub fn unique(prefix: &str) -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{prefix}_{}_{}", std::process::id(), n % 1_000_000_000_000)
}

pub fn store<H: Harness>(table: &str) -> H::S {
    let s = H::try_store(table).expect("store");
    s.migrate().expect("migrate");
    s
}

fn lease(secs: u64) -> Lease {
    Lease::new(Duration::from_secs(secs))
}

fn msg(i: usize) -> Message {
    Message::new(format!("m{i}").into_bytes())
}

fn ids(v: &[StoredMessage]) -> Vec<MessageId> {
    v.iter().map(|m| m.message_id).collect()
}

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

fn keyed(body: &str, key: &str) -> Message {
    Message::new(body.as_bytes().to_vec()).ordering_key(key)
}

fn park(m: &StoredMessage, hold_key: bool) -> FailedAttempt {
    FailedAttempt {
        id: m.id,
        error: format!("poison {}", String::from_utf8_lossy(&m.payload)),
        retry_in: Duration::ZERO,
        park: true,
        hold_key,
    }
}

fn bodies(v: &[StoredMessage]) -> Vec<String> {
    v.iter()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect()
}

/// Claims everything claimable, marks it dispatched, returns the bodies.
fn drain<S: Store>(s: &S) -> Vec<String> {
    let l = lease(60);
    let got = s.claim(&l, 100.into()).expect("claim").messages;
    let ids: Vec<i64> = got.iter().map(|m| m.id).collect();
    assert_eq!(s.mark_dispatched(&l, &ids).expect("mark").len(), ids.len());
    bodies(&got)
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

/// The relay end to end on this store: two relays, keyed and unkeyed messages,
/// consumed from a bound RabbitMQ queue: all delivered once, per-key order kept.
#[cfg(all(feature = "postgres", feature = "amqp"))]
pub fn relay_end_to_end_with_amqp<H: Harness>() {
    use crate::common::{counts, Sink};
    use outboxer::stream::{amqp, AmqpStream};
    use outboxer::Outbox;
    let t = unique("c_e2e");
    let ex = unique("ex");
    let sink = Sink::new(&ex, "#");
    let outboxes: Vec<_> = (0..2)
        .map(|_| {
            Outbox::builder()
                .store(store::<H>(&t))
                .stream(AmqpStream::connect(&crate::common::amqp_url()).expect("RabbitMQ"))
                .batch_size(50)
                .check_interval(Duration::from_millis(20))
                .build()
                .expect("outbox")
        })
        .collect();
    let relays: Vec<_> = outboxes.iter().map(|o| o.start().expect("start")).collect();
    const N: usize = 400;
    let msgs: Vec<Message> = (0..N)
        .map(|i| {
            let m = Message::new(format!("{}:{i}", i % 8).into_bytes())
                .route(amqp::topic(&ex, "e2e"))
                .header("n", i.to_string());
            if i % 2 == 0 {
                m.ordering_key(format!("key-{}", i % 8))
            } else {
                m
            }
        })
        .collect();
    for chunk in msgs.chunks(40) {
        outboxes[0].send_batch(chunk).expect("send");
    }
    let got = sink.collect(N, Duration::from_secs(120));
    let c = counts(&got);
    assert_eq!(c.len(), N, "all delivered");
    assert!(c.values().all(|n| *n == 1), "no duplicates");
    let mut last = std::collections::HashMap::new();
    for g in &got {
        let body = String::from_utf8(g.body.clone()).expect("utf8");
        let (k, i) = body.split_once(':').expect("k:i");
        let i: usize = i.parse().expect("i");
        assert_eq!(g.headers.get("n"), Some(&i.to_string()));
        if i % 2 == 0 {
            let prev = last.insert(k.to_string(), i);
            assert!(prev.is_none_or(|p| p < i), "key {k}: {i} after {prev:?}");
        }
    }
    for r in &relays {
        r.stop().expect("stop");
    }
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

/// A real relay on a table where plain SQL wrote bad rows between good ones: the
/// good ones are delivered within seconds, each bad one is parked alone with a
/// `last_error` that names what is wrong.
#[cfg(all(feature = "postgres", feature = "amqp"))]
pub fn relay_parks_undecodable_rows_alone<H: Harness>() {
    use crate::common::Sink;
    use outboxer::stream::AmqpStream;
    use outboxer::Outbox;
    let t = unique("c_undec_e2e");
    let ex = unique("ex");
    let sink = Sink::new(&ex, "#");
    let s = store::<H>(&t);
    let good =
        format!(r#"{{"exchange.name": "{ex}", "exchange.type": "topic", "routing_key": "r"}}"#);
    let bad: [(&str, Option<&str>, Option<String>, &str); 5] = [
        ("bad 1", Some("[]"), Some(good.clone()), "headers"),
        ("bad 2", Some(r#""x""#), Some(good.clone()), "headers"),
        ("bad 3", Some("1"), Some(good.clone()), "headers"),
        ("bad 4", None, Some("[]".into()), "options"),
        (
            "bad 5",
            None,
            Some(format!(
                r#"{{"exchange.name": "{ex}", "routing_key": "r", "exchange.durable": "yes"}}"#
            )),
            "exchange.durable",
        ),
    ];
    let mut inserts = Vec::new();
    for i in 0..10 {
        inserts.push(H::insert_sql(
            &t,
            &format!("good {i}"),
            Some(r#"{"a": "b"}"#),
            Some(&good),
            None,
        ));
        if let Some((p, h, o, _)) = bad.get(i) {
            inserts.push(H::insert_sql(&t, p, *h, o.as_deref(), None));
        }
    }
    H::exec(&inserts);
    let outbox = Outbox::builder()
        .store(s.clone())
        .stream(AmqpStream::connect(&crate::common::amqp_url()).expect("RabbitMQ"))
        .batch_size(50)
        .check_interval(Duration::from_millis(20))
        .build()
        .expect("outbox");
    let relay = outbox.start().expect("start");
    let got = sink.collect(10, Duration::from_secs(10));
    let mut bodies: Vec<String> = got
        .iter()
        .map(|g| String::from_utf8_lossy(&g.body).into_owned())
        .collect();
    bodies.sort();
    bodies.dedup();
    assert_eq!(
        bodies,
        (0..10).map(|i| format!("good {i}")).collect::<Vec<_>>()
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let parked = loop {
        let p = s.parked(10).expect("parked");
        if p.len() >= bad.len() || std::time::Instant::now() > deadline {
            break p;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    relay.stop().expect("stop");
    assert_eq!(parked.len(), bad.len(), "{parked:?}");
    for (p, (_, _, _, names)) in parked.iter().zip(&bad) {
        let e = p.last_error.as_deref().unwrap_or("");
        assert!(e.contains(names), "row {}: {e:?} names {names}", p.id);
    }
    let st = s.stats().expect("stats");
    assert_eq!((st.pending, st.dispatched, st.parked), (0, 10, 5), "{st:?}");
    H::drop_table(&t);
}

/// Expands the whole suite as `#[test]`s for a harness; extra attributes (e.g. `#[ignore]`) mark tests
/// that need a server this machine may not have.
#[macro_export]
macro_rules! store_conformance {
    ($h:ty $(, #[$attr:meta])*) => {
        $crate::store_conformance!(@tests $h, [$(#[$attr])*],
            send_claim_mark_roundtrip mark_fail_park_requeue attempts_histogram_and_parked_list
            purge_parked_only_touches_parked
            lease_expiry_and_token_checked_marks mark_reports_exactly_the_rows_still_held
            concurrent_claimers_never_share_a_row per_key_fifo rollback_stores_nothing
            cleanup_only_old_dispatched migrate_concurrently_and_upgrade_go_table
            bad_names_and_unreachable_servers_are_typed_errors
            undecodable_rows_are_claimed_apart release_with_a_delay parked_head_holds_its_key
            skip_and_held_keys claims_honour_the_byte_limit);
    };
    (@tests $h:ty, $attrs:tt, $($name:ident)*) => {
        #[cfg(all(feature = "postgres", feature = "amqp"))]
        $crate::store_conformance!(@one $h, $attrs, relay_end_to_end_with_amqp);
        #[cfg(all(feature = "postgres", feature = "amqp"))]
        $crate::store_conformance!(@one $h, $attrs, relay_parks_undecodable_rows_alone);
        $( $crate::store_conformance!(@one $h, $attrs, $name); )*
    };
    (@one $h:ty, [$(#[$m:meta])*], $name:ident) => {
        #[test]
        $(#[$m])*
        fn $name() {
            $crate::conformance::$name::<$h>();
        }
    };
}
