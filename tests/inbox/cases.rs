//! The cases, generic over the store: one process, one or more threads.

use crate::{ids, ok, Backend, Cleanup, Fail, How, Place};
use outboxer::inbox::Outcome;
use outboxer::MessageId;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

pub fn duplicates_are_already_processed<B: Backend>(place: Place) {
    let _c = Cleanup::<B>::new(&place);
    let mut db = B::connect(&place);
    db.setup();
    db.setup(); // migrate is idempotent
    let (a, b) = (MessageId::new(), MessageId::new());
    assert_eq!(
        ok(db.apply(a, "w1", How::default())),
        Outcome::Processed(())
    );
    assert_eq!(
        ok(db.apply(b, "w1", How::default())),
        Outcome::Processed(())
    );
    for _ in 0..3 {
        assert_eq!(
            ok(db.apply(a, "w2", How::default())),
            Outcome::AlreadyProcessed
        );
    }
    let fx = db.effects();
    assert_eq!(fx[&a.to_string()], vec!["w1".to_string()], "{fx:?}");
    assert_eq!(fx[&b.to_string()], vec!["w1".to_string()], "{fx:?}");
    assert!(db.recorded(a) && db.recorded(b));
    assert_eq!(db.inbox_rows(), 2);
}

pub fn failing_handler_leaves_nothing_recorded<B: Backend>(place: Place) {
    let _c = Cleanup::<B>::new(&place);
    let mut db = B::connect(&place);
    db.setup();
    let id = MessageId::new();
    let failing = How {
        fail: true,
        ..How::default()
    };
    assert!(matches!(db.apply(id, "w1", failing), Err(Fail::Deliberate)));
    assert!(!db.recorded(id), "a failed handler's id is recorded");
    let aborted = How {
        abort: true,
        ..How::default()
    };
    assert_eq!(ok(db.apply(id, "w2", aborted)), Outcome::Processed(()));
    assert!(
        !db.recorded(id),
        "a rolled-back transaction's id is recorded"
    );
    assert!(
        db.effects().is_empty(),
        "effects of a failed handler or a rolled-back transaction: {:?}",
        db.effects()
    );
    // The retry runs the handler, once.
    assert_eq!(
        ok(db.apply(id, "w3", How::default())),
        Outcome::Processed(())
    );
    assert_eq!(
        ok(db.apply(id, "w4", How::default())),
        Outcome::AlreadyProcessed
    );
    assert_eq!(db.effects()[&id.to_string()], vec!["w3".to_string()]);
}

/// `apply` variant that keeps the caller's transaction after the handler fails
/// and commits it: the caller's own row stays, the handler's effect and the id go.
pub fn caller_writes_survive_a_failing_handler<B: Backend + CallerRow>(place: Place) {
    let _c = Cleanup::<B>::new(&place);
    let mut db = B::connect(&place);
    db.setup();
    let id = MessageId::new();
    let outcome = db.fail_then_commit(id);
    assert!(matches!(outcome, Err(Fail::Deliberate)), "{outcome:?}");
    assert!(!db.recorded(id));
    let fx = db.effects();
    assert_eq!(
        fx.get(&id.to_string()),
        Some(&vec!["caller".to_string()]),
        "only the caller's own row commits: {fx:?}"
    );
}

/// The caller's transaction stays usable after a failing handler.
pub trait CallerRow {
    /// Creates the effects table only (no inbox table).
    fn create_effects_only(&mut self);
    /// Writes a row as `caller`, runs a failing handler that writes an effect,
    /// commits anyway; returns the handler's error.
    fn fail_then_commit(&mut self, id: MessageId) -> Result<Outcome<()>, Fail>;
}

/// Two threads, one id at a time behind a barrier. For every id exactly one of
/// them runs the handler. On every 4th id the first handler holds its
/// uncommitted id for `HOLD`: the other one's `process` must wait for the commit
/// and return `AlreadyProcessed` (it cannot have finished before the holder
/// committed).
pub fn two_threads_race_on_the_same_ids<B: Backend>(place: Place) {
    const HOLD: Duration = Duration::from_millis(300);
    const HEAD_START: Duration = Duration::from_millis(80);
    let _c = Cleanup::<B>::new(&place);
    B::connect(&place).setup();
    let all = Arc::new(ids(40));
    let barrier = Arc::new(Barrier::new(2));
    let workers: Vec<_> = (0..2)
        .map(|w| {
            let (place, all, barrier) = (place.clone(), Arc::clone(&all), Arc::clone(&barrier));
            std::thread::spawn(move || {
                let mut db = B::connect(&place);
                let mut out = Vec::new();
                for (i, id) in all.iter().enumerate() {
                    barrier.wait();
                    // Worker 0 goes first on held ids: its handler holds the id.
                    let held = i % 4 == 0;
                    if held && w == 1 {
                        std::thread::sleep(HEAD_START);
                    }
                    let how = How {
                        hold: if held && w == 0 { HOLD } else { Duration::ZERO },
                        ..How::default()
                    };
                    let began = Instant::now();
                    let r = ok(db.apply(*id, &format!("w{w}"), how));
                    out.push((r, began.elapsed()));
                }
                out
            })
        })
        .collect();
    let results: Vec<Vec<(Outcome<()>, Duration)>> = workers
        .into_iter()
        .map(|h| h.join().expect("worker"))
        .collect();
    let mut db = B::connect(&place);
    let fx = db.effects();
    let mut waited = Vec::new();
    for (i, id) in all.iter().enumerate() {
        let (a, b) = (&results[0][i], &results[1][i]);
        assert_eq!(
            a.0.is_processed() as u8 + b.0.is_processed() as u8,
            1,
            "id {i}: {a:?} {b:?}"
        );
        assert_eq!(
            fx.get(&id.to_string()).map(Vec::len),
            Some(1),
            "id {i}: {fx:?}"
        );
        if i % 4 == 0 {
            assert!(a.0.is_processed(), "id {i}: the holder runs it: {a:?}");
            assert!(b.0.is_duplicate(), "id {i}: {b:?}");
            // Started HEAD_START after the holder, returned after its commit.
            assert!(
                b.1 >= HOLD - HEAD_START - Duration::from_millis(20),
                "id {i}: the duplicate returned after {:?}, before the holder committed",
                b.1
            );
            waited.push(b.1);
        }
    }
    assert_eq!(db.inbox_rows(), all.len() as u64);
    println!("INBOX race store={} waits={waited:?}", place.kind);
}

/// The first consumer's handler fails while the second waits on its id: the
/// second runs the handler (its effect is the only one), nothing is lost.
pub fn a_waiter_takes_over_when_the_handler_fails<B: Backend>(place: Place) {
    const HOLD: Duration = Duration::from_millis(300);
    let _c = Cleanup::<B>::new(&place);
    B::connect(&place).setup();
    let id = MessageId::new();
    let barrier = Arc::new(Barrier::new(2));
    let first = {
        let (place, barrier) = (place.clone(), Arc::clone(&barrier));
        std::thread::spawn(move || {
            let mut db = B::connect(&place);
            barrier.wait();
            let how = How {
                hold: HOLD,
                fail: true,
                ..How::default()
            };
            db.apply(id, "first", how)
        })
    };
    let mut db = B::connect(&place);
    barrier.wait();
    std::thread::sleep(Duration::from_millis(80));
    let began = Instant::now();
    let second = db.apply(id, "second", How::default());
    let waited = began.elapsed();
    let first = first.join().expect("first");
    assert!(matches!(first, Err(Fail::Deliberate)), "{first:?}");
    assert_eq!(ok(second), Outcome::Processed(()));
    assert!(
        waited >= Duration::from_millis(150),
        "did not wait for the first: {waited:?}"
    );
    assert_eq!(db.effects()[&id.to_string()], vec!["second".to_string()]);
    assert_eq!(
        ok(db.apply(id, "third", How::default())),
        Outcome::AlreadyProcessed
    );
}

/// Three consumers of one id, the first one's handler failing while the other
/// two wait: exactly one of them runs the handler. The third either sees the
/// duplicate or, on InnoDB, may be chosen as a deadlock victim (a typed database
/// error: the delivery is retried); never a second effect.
pub fn two_waiters_on_a_failing_handler<B: Backend>(place: Place) {
    const HOLD: Duration = Duration::from_millis(300);
    let _c = Cleanup::<B>::new(&place);
    B::connect(&place).setup();
    let id = MessageId::new();
    let barrier = Arc::new(Barrier::new(3));
    let workers: Vec<_> = (0..3)
        .map(|w| {
            let (place, barrier) = (place.clone(), Arc::clone(&barrier));
            std::thread::spawn(move || {
                let mut db = B::connect(&place);
                barrier.wait();
                let how = if w == 0 {
                    How {
                        hold: HOLD,
                        fail: true,
                        ..How::default()
                    }
                } else {
                    std::thread::sleep(Duration::from_millis(80));
                    How::default()
                };
                db.apply(id, &format!("w{w}"), how)
            })
        })
        .collect();
    let results: Vec<_> = workers
        .into_iter()
        .map(|h| h.join().expect("worker"))
        .collect();
    assert!(matches!(results[0], Err(Fail::Deliberate)), "{results:?}");
    let processed = results[1..]
        .iter()
        .filter(|r| matches!(r, Ok(Outcome::Processed(()))))
        .count();
    let others_ok = results[1..]
        .iter()
        .all(|r| matches!(r, Ok(_) | Err(Fail::Db(outboxer::Error::Database { .. }))));
    assert!(others_ok, "{results:?}");
    let mut db = B::connect(&place);
    let fx = db.effects();
    assert_eq!(
        fx.get(&id.to_string()).map(Vec::len),
        Some(1),
        "{fx:?} {results:?}"
    );
    assert!(processed <= 1, "{results:?}");
    if processed == 0 {
        // Both waiters failed (deadlock victims): the redelivery processes it.
        assert_eq!(
            ok(db.apply(id, "retry", How::default())),
            Outcome::Processed(())
        );
    }
    println!(
        "INBOX two waiters store={} outcomes={results:?}",
        place.kind
    );
}

/// Before `migrate`, `process` is a typed database error and the caller's
/// transaction stays usable.
pub fn unmigrated_table_is_a_database_error<B: Backend + CallerRow>(place: Place) {
    let _c = Cleanup::<B>::new(&place);
    let mut db = B::connect(&place);
    db.create_effects_only();
    let id = MessageId::new();
    let r = db.apply(id, "w", How::default());
    assert!(
        matches!(r, Err(Fail::Db(outboxer::Error::Database { .. }))),
        "{r:?}"
    );
    assert!(
        db.effects().is_empty(),
        "the handler ran: {:?}",
        db.effects()
    );
}

/// Sequential consumption, one transaction per message: new ids, then the same
/// ids again (duplicates). Prints messages per second (`--ignored --nocapture`).
pub fn throughput<B: Backend>(place: Place) {
    const N: usize = 500;
    let _c = Cleanup::<B>::new(&place);
    let mut db = B::connect(&place);
    db.setup();
    let all = ids(N);
    let t = Instant::now();
    for id in &all {
        assert!(ok(db.apply(*id, "w", How::default())).is_processed());
    }
    let new = t.elapsed();
    let t = Instant::now();
    for id in &all {
        assert!(ok(db.apply(*id, "w", How::default())).is_duplicate());
    }
    let dup = t.elapsed();
    println!(
        "INBOX throughput store={} new={:.0}/s duplicates={:.0}/s",
        place.kind,
        N as f64 / new.as_secs_f64(),
        N as f64 / dup.as_secs_f64()
    );
}

pub fn retention_deletes_old_ids_in_batches<B: Backend>(place: Place) {
    let _c = Cleanup::<B>::new(&place);
    let mut db = B::connect(&place);
    db.setup();
    let day = Duration::from_secs(24 * 3600);
    let old = ids(7);
    let new = ids(3);
    for id in old.iter().chain(&new) {
        assert!(ok(db.apply(*id, "w", How::default())).is_processed());
    }
    for id in &old {
        db.backdate(*id, 2 * day);
    }
    let mut batches = Vec::new();
    loop {
        let n = db.cleanup(day, 3);
        batches.push(n);
        if n < 3 {
            break;
        }
    }
    assert_eq!(batches, vec![3, 3, 1], "batches of at most 3");
    assert!(old.iter().all(|id| !db.recorded(*id)));
    assert!(new.iter().all(|id| db.recorded(*id)));
    assert_eq!(db.inbox_rows(), 3);
    // A limit of 0 still makes progress (at least one row per call).
    db.backdate(new[0], 2 * day);
    assert_eq!(db.cleanup(day, 0), 1);
    // A deleted id is processed again: retention must outlast redeliveries.
    assert!(ok(db.apply(old[0], "again", How::default())).is_processed());
}
