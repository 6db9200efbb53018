//! Fault tests that stop and start shared servers. They run serially (one lock),
//! in their own test binary so no other test binary runs meanwhile, and always
//! start the server again, even when the test fails.

mod common;

use common::*;
use outboxer::stream::amqp;
use outboxer::{FailureAction, Message, Outbox};
use std::collections::HashSet;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

static SERIAL: Mutex<()> = Mutex::new(());

fn run(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn rabbit_up() {
    if !run("rabbitmqctl", &["-q", "status"]) {
        run("rabbitmq-server", &["-detached"]);
    }
    assert!(
        run("rabbitmqctl", &["-q", "await_startup", "--timeout", "120"]),
        "RabbitMQ did not come back"
    );
}

/// Starts RabbitMQ again when dropped, also when the test panics.
struct RabbitGuard;
impl Drop for RabbitGuard {
    fn drop(&mut self) {
        rabbit_up();
    }
}

#[test]
fn rabbitmq_restart_mid_stream_loses_nothing() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let table = unique("restart");
    let ex = unique("ex");
    let sink = Sink::new(&ex, "#");
    let outbox = Outbox::builder()
        .store(store(&table))
        .stream(stream())
        .check_interval(Duration::from_millis(50))
        .backoff(Duration::from_millis(100), Duration::from_secs(2))
        .build()
        .expect("outbox");
    let relay = outbox.start().expect("start");
    const N: usize = 3000;
    let sender = {
        let outbox = outbox.clone();
        let ex = ex.clone();
        std::thread::spawn(move || {
            let mut ids = Vec::new();
            for i in 0..N {
                let m = Message::new(format!("m{i}").into_bytes()).route(amqp::topic(&ex, "k"));
                ids.push(outbox.send(m).expect("send: PostgreSQL stays up"));
                if i % 100 == 0 {
                    std::thread::sleep(Duration::from_millis(40));
                }
            }
            ids
        })
    };
    let early = sink.collect(200, Duration::from_secs(30));
    assert!(early.len() >= 200, "relay publishes before the restart");
    {
        let _guard = RabbitGuard;
        assert!(run("rabbitmqctl", &["-q", "stop_app"]), "stop RabbitMQ");
        std::thread::sleep(Duration::from_secs(2));
        assert!(run("rabbitmqctl", &["-q", "start_app"]), "start RabbitMQ");
    }
    let sent = sender.join().expect("sender");
    let mut all = early;
    sink.collect_into(&mut all, N, Duration::from_secs(120));
    let c = counts(&all);
    let got: HashSet<String> = c.keys().cloned().collect();
    let missing = ids_of(&sent)
        .into_iter()
        .filter(|i| !got.contains(i))
        .count();
    assert_eq!(missing, 0, "all {N} delivered after the restart");
    // The outage was reported on err(), as released (not counted) attempts.
    let mut released = 0;
    while let Ok(f) = relay.err().try_recv() {
        if f.action == FailureAction::Released {
            released += 1;
        }
    }
    let stats = outbox.stats().expect("stats");
    assert_eq!(stats.parked, 0, "an outage never parks messages");
    assert!(
        released > 0 || relay.counters().failed > 0,
        "the outage was reported"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while outbox.stats().expect("stats").dispatched < N as u64 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    relay.stop().expect("stop");
    drop_table(&table);
}
