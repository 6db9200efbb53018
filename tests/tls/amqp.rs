//! RabbitMQ over TLS (`amqps://`): the broker's TLS listener on 127.0.0.1:5671
//! (scripts/tls/rabbitmq.sh, the test CA's certificate for `localhost` and
//! `127.0.0.1`) beside the plaintext 5672. A relay publishes over verified TLS
//! (the broker lists its connection as TLS); a wrong CA, a wrong host name and
//! both plaintext/TLS mismatches are refused at `Outbox::start` with
//! `Error::Tls` naming the cause; the same through `outboxer relay`. The
//! consumers stay on the plaintext port (tests/common's `Sink`).

use crate::common::{drop_table, store, unique, Sink};
use crate::fixtures::{ca, client_cert, other_ca, WrongHost};
use outboxer::stream::{amqp, AmqpStream};
use outboxer::tls::{Tls, TlsCause};
use outboxer::{Error, Message, Outbox};
use std::path::Path;
use std::time::Duration;

const TLS_PORT: u16 = 5671;

/// `amqps://` to `host:port` trusting `ca`, with extra query parameters.
fn amqps(host: &str, port: u16, ca: &Path, extra: &str) -> String {
    format!(
        "amqps://guest:guest@{host}:{port}/%2f?cacertfile={}&connection_timeout=5000{extra}",
        ca.display()
    )
}

/// Fails loudly when the broker has no TLS listener (never a silent pass).
fn tls_listener() {
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", TLS_PORT)).is_ok(),
        "no RabbitMQ TLS listener on 127.0.0.1:{TLS_PORT}: run `bash scripts/test-services up`"
    );
}

/// The broker's view of its TLS connections: `(peer_port, ssl, protocol,
/// client certificate subject)` of every connection on the TLS listener.
fn broker_tls_connections() -> Vec<(String, String, String, String)> {
    let out = std::process::Command::new("rabbitmqctl")
        .args([
            "-q",
            "list_connections",
            "port",
            "peer_port",
            "ssl",
            "ssl_protocol",
            "peer_cert_subject",
        ])
        .output()
        .expect("rabbitmqctl");
    assert!(out.status.success(), "rabbitmqctl list_connections");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f.len() == 5 && f[0] == TLS_PORT.to_string()).then(|| {
                (
                    f[1].to_string(),
                    f[2].to_string(),
                    f[3].to_string(),
                    f[4].to_string(),
                )
            })
        })
        .collect()
}

/// What `Outbox::start` says with this stream (the store's table is dropped after).
fn start_with(stream: AmqpStream) -> outboxer::Result<()> {
    let table = unique("tls_amqp_start");
    let outbox = Outbox::builder()
        .store(store(&table))
        .stream(stream)
        .check_interval(Duration::from_millis(50))
        .build()
        .expect("outbox");
    let started = outbox.start().and_then(|relay| relay.stop());
    drop(outbox);
    drop_table(&table);
    started
}

fn refused_with(url: &str, cause: TlsCause) {
    let stream = AmqpStream::builder(url).build().expect("valid URL");
    match start_with(stream) {
        Err(Error::Tls {
            what,
            cause: c,
            reason,
        }) => {
            assert_eq!((what, c), ("amqp", cause), "{url}: {reason}");
            assert!(!reason.contains("guest:guest"), "password shown: {reason}");
            println!("{cause:?}: {reason}");
        }
        other => panic!("{url}: expected Error::Tls({cause:?}) at start, got {other:?}"),
    }
}

#[test]
fn relay_publishes_over_verified_tls_and_the_broker_lists_it_as_tls() {
    tls_listener();
    let table = unique("tls_amqp_relay");
    let ex = unique("tls_ex");
    let sink = Sink::new(&ex, "#");
    // By name (localhost) and by address (127.0.0.1): the certificate carries both.
    for host in ["localhost", "127.0.0.1"] {
        let stream = AmqpStream::builder(&amqps(host, TLS_PORT, &ca(), ""))
            .build()
            .expect("valid URL");
        let outbox = Outbox::builder()
            .store(store(&table))
            .stream(stream)
            .check_interval(Duration::from_millis(50))
            .build()
            .expect("outbox");
        let relay = outbox.start().expect("start over TLS");
        let ids: Vec<_> = (0..20)
            .map(|i| {
                outbox
                    .send(Message::new(format!("{host}-{i}")).route(amqp::topic(&ex, "k")))
                    .expect("send")
            })
            .collect();
        let got = sink.collect(ids.len(), Duration::from_secs(30));
        let bodies: std::collections::BTreeSet<_> = got
            .iter()
            .map(|g| String::from_utf8_lossy(&g.body).into_owned())
            .collect();
        for i in 0..20 {
            assert!(
                bodies.contains(&format!("{host}-{i}")),
                "{host}-{i} not delivered: {bodies:?}"
            );
        }
        // While the relay is connected, the broker says its session is TLS.
        let conns = broker_tls_connections();
        assert!(!conns.is_empty(), "no connection on the TLS listener");
        for (peer, ssl, protocol, _) in &conns {
            assert_eq!(ssl, "true", "connection from port {peer} is not TLS");
            assert!(protocol.starts_with("tlsv1."), "{peer}: {protocol}");
        }
        println!("{host}: the broker lists {conns:?}");
        relay.stop().expect("stop");
    }
    drop_table(&table);
}

#[test]
fn a_wrong_ca_is_refused_at_start() {
    tls_listener();
    refused_with(
        &amqps("localhost", TLS_PORT, &other_ca(), ""),
        TlsCause::CertificateNotTrusted,
    );
    // The system's roots do not know the test CA either.
    refused_with(
        "amqps://guest:guest@localhost:5671/%2f?connection_timeout=5000",
        TlsCause::CertificateNotTrusted,
    );
}

#[test]
fn a_host_name_the_certificate_does_not_carry_is_refused_at_start() {
    tls_listener();
    let wrong = WrongHost::to(&format!("127.0.0.1:{TLS_PORT}"));
    refused_with(
        &amqps("127.0.0.2", wrong.port(), &ca(), ""),
        TlsCause::HostnameMismatch,
    );
    // The same address with the name the certificate carries (RabbitMQ's
    // server_name_indication, or the builder's tls_server_name) connects.
    let mut s = AmqpStream::connect(&amqps(
        "127.0.0.2",
        wrong.port(),
        &ca(),
        "&server_name_indication=localhost",
    ))
    .expect("server_name_indication=localhost");
    outboxer::stream::Stream::close(&mut s);
    let built = AmqpStream::builder(&amqps("127.0.0.2", wrong.port(), &ca(), ""))
        .tls_server_name("localhost")
        .build()
        .expect("valid");
    start_with(built).expect("tls_server_name(localhost)");
    // verify-ca checks the chain only: the address is accepted, a wrong CA is not.
    let verify_ca = |ca: &Path| {
        AmqpStream::builder(&format!(
            "amqps://guest:guest@127.0.0.2:{}/%2f",
            wrong.port()
        ))
        .tls(Tls::verify_ca().ca_file(ca))
        .build()
        .expect("valid")
    };
    start_with(verify_ca(&ca())).expect("verify-ca by address");
    assert!(matches!(
        start_with(verify_ca(&other_ca())),
        Err(Error::Tls {
            cause: TlsCause::CertificateNotTrusted,
            ..
        })
    ));
}

#[test]
fn tls_to_the_plaintext_port_is_refused_at_start() {
    tls_listener();
    refused_with(
        &amqps("127.0.0.1", 5672, &ca(), ""),
        TlsCause::ServerWithoutTls,
    );
}

#[test]
fn plaintext_to_the_tls_port_is_refused_at_start() {
    tls_listener();
    refused_with(
        &format!("amqp://guest:guest@127.0.0.1:{TLS_PORT}/%2f?connection_timeout=5000"),
        TlsCause::ServerRequiresTls,
    );
}

#[test]
fn a_broker_that_is_down_at_start_is_an_outage_not_a_tls_error() {
    // Nothing listens on port 1: the relay starts and retries (today's behaviour).
    let stream = AmqpStream::builder(&amqps("127.0.0.1", 1, &ca(), ""))
        .build()
        .expect("valid");
    start_with(stream).expect("a broker that is down does not refuse the start");
}

#[test]
fn verification_is_off_only_when_loudly_asked() {
    tls_listener();
    match AmqpStream::builder(&amqps(
        "localhost",
        TLS_PORT,
        &other_ca(),
        "&verify=verify_none",
    ))
    .build()
    {
        Err(Error::InvalidUrl { reason, .. }) => {
            assert!(
                reason.contains("danger_accept_invalid_certs=true"),
                "{reason}"
            )
        }
        other => panic!("verify_none must be refused: {other:?}"),
    }
    // The danger switch: the untrusted certificate, by an address it does not name.
    let wrong = WrongHost::to(&format!("127.0.0.1:{TLS_PORT}"));
    let url = amqps(
        "127.0.0.2",
        wrong.port(),
        &other_ca(),
        "&danger_accept_invalid_certs=true",
    );
    start_with(AmqpStream::builder(&url).build().expect("valid")).expect("danger switch (URL)");
    let built = AmqpStream::builder(&format!(
        "amqps://guest:guest@127.0.0.2:{}/%2f",
        wrong.port()
    ))
    .tls(Tls::verify_full().danger_accept_invalid_certificates(true))
    .build()
    .expect("valid");
    start_with(built).expect("danger switch (builder)");
    // TLS parameters never make a plaintext connection.
    for url in [
        "amqp://guest:guest@127.0.0.1:5672/%2f?cacertfile=/etc/ssl/certs/ca.pem",
        "amqp://guest:guest@127.0.0.1:5672/%2f?danger_accept_invalid_certs=true",
    ] {
        assert!(
            matches!(
                AmqpStream::builder(url).build(),
                Err(Error::InvalidUrl { .. })
            ),
            "{url}"
        );
        assert!(
            matches!(amqp::open_connection(url), Err(Error::InvalidUrl { .. })),
            "{url}"
        );
    }
    assert!(matches!(
        AmqpStream::builder("amqp://guest:guest@127.0.0.1:5672/%2f")
            .tls(Tls::verify_full())
            .build(),
        Err(Error::Config { .. })
    ));
    assert!(matches!(
        AmqpStream::builder("amqps://guest:guest@127.0.0.1/%2f")
            .tls(Tls::disabled())
            .build(),
        Err(Error::Config { .. })
    ));
    // A CA file that is not there is a setting error at build.
    assert!(matches!(
        AmqpStream::builder("amqps://guest:guest@localhost/%2f?cacertfile=/nonexistent/ca.pem")
            .build(),
        Err(Error::Config { .. })
    ));
}

#[test]
fn mutual_tls_presents_the_client_certificate() {
    tls_listener();
    let (cert, key) = client_cert();
    let url = amqps(
        "localhost",
        TLS_PORT,
        &ca(),
        &format!("&certfile={}&keyfile={}", cert.display(), key.display()),
    );
    let mut stream = AmqpStream::connect(&url).expect("mutual TLS");
    let conns = broker_tls_connections();
    assert!(
        conns
            .iter()
            .any(|(_, ssl, _, subject)| ssl == "true" && subject.contains("CN=outboxer")),
        "the broker saw no client certificate: {conns:?}"
    );
    outboxer::stream::Stream::close(&mut stream);
    // open_connection, the bench's connection, takes the same path.
    let connection = amqp::open_connection(&url).expect("open_connection over mutual TLS");
    connection.close().expect("close");
    // The builder's typed form.
    let built = AmqpStream::builder("amqps://guest:guest@localhost/%2f")
        .tls(Tls::verify_full().ca_file(ca()).client_cert(&cert, &key))
        .build()
        .expect("valid");
    start_with(built).expect("mutual TLS through the builder");
}

/// The TLS socket is ours with TCP_NODELAY, as the plaintext one: a one-message
/// publish waits for its confirm ~1 ms, not the ~40 ms of a delayed ACK.
#[test]
fn one_message_confirm_round_trips_over_tls_are_not_held_by_delayed_acks() {
    use outboxer::{Headers, MessageId, StoredMessage, Stream};
    tls_listener();
    let ex = unique("tls_rtt_ex");
    let sink = Sink::new(&ex, "#");
    let options: outboxer::Options = amqp::topic(&ex, "k").into();
    let mut stream =
        AmqpStream::connect(&amqps("localhost", TLS_PORT, &ca(), "")).expect("connect");
    let mut took = Vec::new();
    for i in 0..41 {
        let m = StoredMessage {
            id: i,
            message_id: MessageId::new(),
            payload: vec![b'x'; 64],
            headers: Headers::new(),
            options: options.clone(),
            ordering_key: None,
            attempts: 0,
            created_at: std::time::SystemTime::now(),
        };
        let started = std::time::Instant::now();
        let out = stream.publish(&[m], &crate::common::deadline());
        took.push(started.elapsed());
        assert!(matches!(out.as_slice(), [Ok(())]), "{out:?}");
    }
    stream.close();
    took.sort();
    let median = took[took.len() / 2];
    println!(
        "one-message publish over TLS: median {median:?}, max {:?}",
        took[took.len() - 1]
    );
    assert!(
        median < Duration::from_millis(20),
        "median {median:?}: {took:?}"
    );
    assert_eq!(sink.collect(41, Duration::from_secs(20)).len(), 41);
}

/// `outboxer relay --stream 'amqps://..'`, run as a user runs it.
#[cfg(feature = "cli")]
mod cli {
    use super::*;
    use crate::common::{pg, pg_url};
    use std::io::Read;
    use std::process::{Command, Stdio};
    use std::time::Instant;

    use crate::fixtures::outboxer;

    fn relay(table: &str, stream: &str) -> std::process::Child {
        outboxer()
            .args(["relay", "--store", &pg_url(), "--table", table])
            .args(["--stream", stream, "--check-interval", "50ms"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run outboxer")
    }

    /// Waits at most `within` for the process to end; kills it if it does not.
    fn wait(mut child: std::process::Child, within: Duration) -> (Option<i32>, String) {
        let deadline = Instant::now() + within;
        let status = loop {
            if let Some(s) = child.try_wait().expect("wait") {
                break Some(s);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut log = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut log);
        }
        assert!(
            status.is_some(),
            "outboxer relay still running after {within:?}:\n{log}"
        );
        (status.and_then(|s| s.code()), log)
    }

    #[test]
    fn outboxer_relay_delivers_over_amqps() {
        tls_listener();
        let table = unique("tls_amqp_cli");
        let ex = unique("tls_cli_ex");
        let sink = Sink::new(&ex, "#");
        drop(store(&table)); // migrated
        pg().execute(
            &format!(
                "INSERT INTO \"{table}\" (payload, options)
                 SELECT convert_to('m' || g, 'UTF8'),
                        jsonb_build_object('exchange.name', $1::text, 'routing_key', 'k')
                 FROM generate_series(1, 30) AS g"
            ),
            &[&ex],
        )
        .expect("plain SQL insert");
        let child = relay(&table, &amqps("localhost", TLS_PORT, &ca(), ""));
        let got = sink.collect(30, Duration::from_secs(60));
        let pid = child.id().to_string();
        let stopped = Command::new("kill").args(["-TERM", &pid]).status();
        let (code, log) = wait(child, Duration::from_secs(60));
        assert!(stopped.map(|s| s.success()).unwrap_or(false), "kill -TERM");
        let bodies: std::collections::BTreeSet<_> = got.iter().map(|g| g.body.clone()).collect();
        assert_eq!(bodies.len(), 30, "delivered {} of 30:\n{log}", bodies.len());
        assert_eq!(code, Some(0), "{log}");
        assert!(!log.contains("guest:guest"), "password shown:\n{log}");
        drop_table(&table);
    }

    #[test]
    fn outboxer_relay_with_a_wrong_ca_exits_at_start_naming_the_cause() {
        tls_listener();
        let table = unique("tls_amqp_cli_bad");
        drop(store(&table));
        let child = relay(&table, &amqps("localhost", TLS_PORT, &other_ca(), ""));
        let (code, log) = wait(child, Duration::from_secs(30));
        drop_table(&table);
        assert_eq!(code, Some(1), "{log}");
        assert!(log.contains("certificate is not trusted"), "{log}");
        assert!(!log.contains("relay started"), "{log}");
    }
}

/// The async API runs the same stream: `start().await` refuses a TLS mistake and
/// the relay publishes over verified TLS.
#[cfg(feature = "async")]
mod async_api {
    use super::*;
    use crate::common::pg_url;
    use outboxer::async_impl::store::PostgresStore;
    use outboxer::async_impl::Outbox;

    #[tokio::test]
    async fn the_async_relay_publishes_over_tls_and_refuses_a_wrong_ca() {
        tls_listener();
        let table = unique("tls_amqp_async");
        let ex = unique("tls_async_ex");
        let store = PostgresStore::builder(&pg_url())
            .table(&table)
            .build()
            .await
            .expect("store");
        store.migrate().await.expect("migrate");
        let outbox = |ca: &Path| {
            Outbox::builder()
                .store(store.clone())
                .stream(
                    AmqpStream::builder(&amqps("localhost", TLS_PORT, ca, ""))
                        .build()
                        .expect("valid URL"),
                )
                .check_interval(Duration::from_millis(50))
                .build()
                .expect("outbox")
        };
        match outbox(&other_ca()).start().await {
            Err(Error::Tls {
                cause: TlsCause::CertificateNotTrusted,
                ..
            }) => {}
            other => panic!(
                "expected CertificateNotTrusted, got {:?}",
                other.map(|_| ())
            ),
        }
        let (sink, ex2) = tokio::task::spawn_blocking(move || (Sink::new(&ex, "#"), ex))
            .await
            .expect("sink");
        let outbox = outbox(&ca());
        let relay = outbox.start().await.expect("start over TLS");
        for i in 0..10 {
            outbox
                .send(Message::new(format!("a{i}")).route(amqp::topic(&ex2, "k")))
                .await
                .expect("send");
        }
        let got = tokio::task::spawn_blocking(move || sink.collect(10, Duration::from_secs(30)))
            .await
            .expect("collect");
        relay.stop().await.expect("stop");
        assert_eq!(got.len(), 10, "{got:?}");
        tokio::task::spawn_blocking(move || drop_table(&table))
            .await
            .expect("drop table");
    }
}
