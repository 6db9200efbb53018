//! Two consumer processes: this test binary re-run as `inbox_child_consumer`.

use crate::{ids, ok, Backend, Cleanup, How, Place};
use outboxer::inbox::Outcome;
use outboxer::MessageId;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const ENV_KIND: &str = "OUTBOXER_INBOX_KIND";
const ENV_LOCATION: &str = "OUTBOXER_INBOX_LOCATION";
const ENV_TABLE: &str = "OUTBOXER_INBOX_TABLE";
const ENV_IDS: &str = "OUTBOXER_INBOX_IDS";
const ENV_START: &str = "OUTBOXER_INBOX_START_MS";
const ENV_WORKER: &str = "OUTBOXER_INBOX_WORKER";

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

/// Not a test: a consumer process that the two_processes_* tests spawn. It
/// processes the ids it is given, in order, from a common start time, and prints
/// its outcomes.
#[test]
#[ignore = "helper process, spawned by the two_processes_* tests"]
fn inbox_child_consumer() {
    let var =
        |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k}: only run by the inbox tests"));
    let place = Place {
        kind: match var(ENV_KIND).as_str() {
            "postgres" => "postgres",
            "mysql" => "mysql",
            "sqlite" => "sqlite",
            other => panic!("unknown kind {other}"),
        },
        location: var(ENV_LOCATION),
        table: var(ENV_TABLE),
    };
    let ids: Vec<MessageId> = var(ENV_IDS)
        .split(',')
        .map(|s| s.parse().expect("a message id"))
        .collect();
    let start: u128 = var(ENV_START).parse().expect("start ms");
    let worker = var(ENV_WORKER);
    let (processed, duplicates) = match place.kind {
        #[cfg(feature = "postgres")]
        "postgres" => child_run::<crate::postgres::Pg>(&place, &ids, start, &worker),
        #[cfg(feature = "mysql")]
        "mysql" => child_run::<crate::mysql::Maria>(&place, &ids, start, &worker),
        #[cfg(feature = "sqlite")]
        "sqlite" => child_run::<crate::sqlite::Lite>(&place, &ids, start, &worker),
        other => panic!("{other} not compiled in"),
    };
    println!("INBOX_CHILD processed={processed} duplicates={duplicates}");
}

fn child_run<B: Backend>(
    place: &Place,
    ids: &[MessageId],
    start: u128,
    worker: &str,
) -> (usize, usize) {
    let mut db = B::connect(place);
    while now_ms() < start {
        std::thread::sleep(Duration::from_millis(2));
    }
    let (mut processed, mut duplicates) = (0, 0);
    for (i, id) in ids.iter().enumerate() {
        // Every 8th handler holds its id a moment, so the other process meets it.
        let how = How {
            hold: if i % 8 == 0 {
                Duration::from_millis(5)
            } else {
                Duration::ZERO
            },
            ..How::default()
        };
        match ok(db.apply(*id, worker, how)) {
            Outcome::Processed(()) => processed += 1,
            Outcome::AlreadyProcessed => duplicates += 1,
        }
    }
    (processed, duplicates)
}

/// Two consumer processes (and the same ids twice over) racing: every effect
/// exactly once.
pub fn two_processes_race_on_the_same_ids<B: Backend>(place: Place) {
    let _c = Cleanup::<B>::new(&place);
    B::connect(&place).setup();
    let all = ids(300);
    let list = all
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let exe = std::env::current_exe().expect("test binary");
    // Far enough ahead for both processes to start and connect.
    let start = now_ms() + 1500;
    let children: Vec<_> = (0..2)
        .map(|w| {
            Command::new(&exe)
                .args([
                    "--exact",
                    "processes::inbox_child_consumer",
                    "--ignored",
                    "--nocapture",
                    "--quiet",
                    "--test-threads=1",
                ])
                .env(ENV_KIND, place.kind)
                .env(ENV_LOCATION, &place.location)
                .env(ENV_TABLE, &place.table)
                .env(ENV_IDS, &list)
                .env(ENV_START, start.to_string())
                .env(ENV_WORKER, format!("p{w}"))
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn a consumer process")
        })
        .collect();
    let mut totals = (0, 0);
    let mut splits = Vec::new();
    for c in children {
        let out = c.wait_with_output().expect("consumer process");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "consumer failed: {}\n{}\n{}",
            out.status,
            text,
            String::from_utf8_lossy(&out.stderr)
        );
        let line = text
            .lines()
            .find(|l| l.starts_with("INBOX_CHILD"))
            .unwrap_or_else(|| panic!("no outcome line in {text}"));
        let num = |k: &str| -> usize {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(k))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{k} in {line}"))
        };
        let (p, d) = (num("processed="), num("duplicates="));
        totals.0 += p;
        totals.1 += d;
        splits.push((p, d));
    }
    let mut db = B::connect(&place);
    let fx = db.effects();
    let repeated: Vec<_> = fx.iter().filter(|(_, w)| w.len() != 1).collect();
    assert!(
        repeated.is_empty(),
        "effects applied more than once: {repeated:?}"
    );
    assert_eq!(fx.len(), all.len(), "ids without an effect");
    assert_eq!(
        totals,
        (all.len(), all.len()),
        "processed and duplicates over both"
    );
    assert_eq!(db.inbox_rows(), all.len() as u64);
    println!(
        "INBOX processes store={} (processed, duplicates) per process={splits:?}",
        place.kind
    );
}
