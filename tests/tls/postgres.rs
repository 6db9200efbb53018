//! PostgreSQL over verified TLS: the local server presents the test CA's
//! certificate (`scripts/tls/postgres.sh up`, run by `scripts/test-services up`).
//! The stores connect with the URL's `sslmode`/`sslrootcert`; each session is
//! checked in `pg_stat_ssl`; a wrong CA, a wrong host name, a server without TLS
//! and a server requiring TLS are refused at build with `Error::Tls` naming the
//! cause.

use crate::fixtures::{ca, client_cert, other_ca, WrongHost};
use outboxer::store::{Lease, PostgresStore, Store};
use outboxer::tls::{Tls, TlsCause};
use outboxer::{Error, Message};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

fn name(prefix: &str) -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}_{}_{n}", std::process::id())
}

/// `postgres://{user}@{host}/test?{params}`, percent-encoding the paths.
fn url(user: &str, host: &str, params: &str) -> String {
    format!("postgres://{user}@{host}/test?{params}")
}

fn enc(p: &std::path::Path) -> String {
    p.display()
        .to_string()
        .replace('%', "%25")
        .replace('/', "%2F")
}

fn verify_full(host: &str, app: &str) -> String {
    url(
        "postgres",
        host,
        &format!(
            "sslmode=verify-full&sslrootcert={}&application_name={app}",
            enc(&ca())
        ),
    )
}

/// A plaintext client, for checks and clean-up.
fn plain() -> postgres::Client {
    postgres::Client::connect(
        "host=127.0.0.1 port=5432 user=postgres dbname=test",
        postgres::NoTls,
    )
    .expect("PostgreSQL on 127.0.0.1:5432")
}

/// (sessions of `app` over TLS, all its sessions, a TLS version seen).
fn tls_sessions(app: &str) -> (i64, i64, Option<String>) {
    let row = plain()
        .query_one(
            "SELECT count(*) FILTER (WHERE s.ssl), count(*), max(s.version)
             FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
             WHERE a.application_name = $1",
            &[&app],
        )
        .expect("pg_stat_ssl");
    (row.get(0), row.get(1), row.get(2))
}

fn drop_table(table: &str) {
    let _ = plain().batch_execute(&format!("DROP TABLE IF EXISTS \"{table}\""));
}

/// The server serves the test CA's certificate: fails loudly when
/// `scripts/tls/postgres.sh up` has not run.
fn server_ready() {
    let file: String = plain()
        .query_one("SHOW ssl_cert_file", &[])
        .expect("show")
        .get(0);
    assert!(
        file.ends_with("outboxer-tls/server.pem"),
        "PostgreSQL serves {file}, not the test certificate: run `bash scripts/test-services up`"
    );
}

fn tls_cause(r: Result<PostgresStore, Error>) -> (TlsCause, String) {
    match r {
        Err(Error::Tls { cause, reason, .. }) => (cause, reason),
        Err(e) => panic!("expected Error::Tls, got {e:?}"),
        Ok(_) => panic!("expected Error::Tls, the store was built"),
    }
}

fn round_trip(store: &PostgresStore) {
    store.migrate().expect("migrate over TLS");
    let m = Message::new(b"over tls".to_vec());
    store
        .enqueue(std::slice::from_ref(&m))
        .expect("enqueue over TLS");
    let got = store
        .claim(&Lease::new(Duration::from_secs(30)), 10.into())
        .expect("claim over TLS")
        .messages;
    assert_eq!(got.first().map(|g| g.message_id), Some(m.message_id()));
}

#[test]
fn blocking_store_over_verify_full_by_name_and_by_address() {
    server_ready();
    for host in ["localhost:5432", "127.0.0.1:5432"] {
        let (app, table) = (name("tls_app"), name("tls_vf"));
        let store = PostgresStore::builder(&verify_full(host, &app))
            .table(&table)
            .build()
            .unwrap_or_else(|e| panic!("verify-full to {host}: {e}"));
        round_trip(&store);
        let (with_tls, all, version) = tls_sessions(&app);
        assert!(
            all >= 1 && with_tls == all,
            "{host}: {with_tls} of {all} sessions over TLS"
        );
        eprintln!("{host}: {with_tls} of {all} sessions over {version:?}");
        drop(store);
        drop_table(&table);
    }
}

/// The typed setter, in place of URL parameters; `sslmode=require` verifies too
/// (unlike libpq's): with the wrong CA it is refused.
#[test]
fn builder_tls_setter_and_require_verifies() {
    server_ready();
    let (app, table) = (name("tls_app"), name("tls_set"));
    let store = PostgresStore::builder(&format!(
        "postgres://postgres@localhost:5432/test?application_name={app}"
    ))
    .tls(Tls::verify_full().ca_file(ca()))
    .table(&table)
    .build()
    .expect("TLS through the builder");
    round_trip(&store);
    assert_eq!(tls_sessions(&app).0, tls_sessions(&app).1);
    drop(store);
    drop_table(&table);

    let (cause, _) = tls_cause(
        PostgresStore::builder(&url(
            "postgres",
            "localhost:5432",
            &format!("sslmode=require&sslrootcert={}", enc(&other_ca())),
        ))
        .build(),
    );
    assert_eq!(cause, TlsCause::CertificateNotTrusted);
}

#[cfg(feature = "amqp")]
#[test]
fn relay_end_to_end_over_verified_tls() {
    use crate::common::{unique, Sink};
    use outboxer::stream::{amqp, AmqpStream};
    use outboxer::Outbox;
    server_ready();
    let (app, table, ex) = (name("tls_relay"), unique("tls_relay"), unique("tls_ex"));
    let sink = Sink::new(&ex, "#");
    let store = PostgresStore::builder(&verify_full("localhost:5432", &app))
        .table(&table)
        .build()
        .expect("TLS store");
    store.migrate().expect("migrate");
    let outbox = Outbox::builder()
        .store(store)
        .stream(AmqpStream::connect(&crate::common::amqp_url()).expect("RabbitMQ"))
        .check_interval(Duration::from_millis(50))
        .build()
        .expect("outbox");
    let relay = outbox.start().expect("start");
    let mut ids = Vec::new();
    for i in 0..20 {
        let m = Message::new(format!("m{i}").into_bytes()).route(amqp::topic(&ex, "k"));
        ids.push(outbox.send(m).expect("send").to_string());
    }
    let got = sink.collect(20, Duration::from_secs(30));
    let mut seen: Vec<String> = got.iter().filter_map(|g| g.message_id.clone()).collect();
    seen.sort();
    seen.dedup();
    ids.sort();
    assert_eq!(seen, ids, "every message delivered");
    // The relay's own sessions (claims, marks, LISTEN) are TLS sessions.
    let (with_tls, all, version) = tls_sessions(&app);
    assert!(all >= 2 && with_tls == all, "{with_tls} of {all} over TLS");
    eprintln!("relay: {with_tls} of {all} sessions over {version:?}");
    relay.stop().expect("stop");
    drop(outbox);
    drop_table(&table);
}

/// verify-ca checks the chain only: the server reached as 127.0.0.2, a name its
/// certificate does not carry, is accepted; verify-full refuses it.
#[test]
fn wrong_host_name_refused_by_verify_full_accepted_by_verify_ca() {
    server_ready();
    let fwd = WrongHost::to("127.0.0.1:5432");
    let params = |mode: &str| format!("sslmode={mode}&sslrootcert={}", enc(&ca()));
    let (cause, reason) = tls_cause(
        PostgresStore::builder(&url("postgres", &fwd.addr(), &params("verify-full"))).build(),
    );
    assert_eq!(cause, TlsCause::HostnameMismatch, "{reason}");
    let table = name("tls_vca");
    let store = PostgresStore::builder(&url("postgres", &fwd.addr(), &params("verify-ca")))
        .table(&table)
        .build()
        .expect("verify-ca through 127.0.0.2");
    round_trip(&store);
    drop(store);
    drop_table(&table);
}

#[test]
fn wrong_ca_is_not_trusted() {
    server_ready();
    let (cause, reason) = tls_cause(
        PostgresStore::builder(&url(
            "postgres",
            "localhost:5432",
            &format!("sslmode=verify-full&sslrootcert={}", enc(&other_ca())),
        ))
        .build(),
    );
    assert_eq!(cause, TlsCause::CertificateNotTrusted, "{reason}");
    // Without a CA file: the webpki roots, which do not hold the test CA.
    let (cause, _) = tls_cause(
        PostgresStore::builder(&url("postgres", "localhost:5432", "sslmode=verify-full")).build(),
    );
    assert_eq!(cause, TlsCause::CertificateNotTrusted);
    // The loud switch, and only it, lets an untrusted certificate through.
    let table = name("tls_danger");
    let store = PostgresStore::builder(&url(
        "postgres",
        "localhost:5432",
        &format!(
            "sslmode=verify-full&sslrootcert={}&danger_accept_invalid_certs=true",
            enc(&other_ca())
        ),
    ))
    .table(&table)
    .build()
    .expect("verification off");
    round_trip(&store);
    drop(store);
    drop_table(&table);
}

/// A server that answers the SSLRequest with `N` (no TLS), as a PostgreSQL with
/// `ssl = off` does. Returns its address.
fn plaintext_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { break };
            let mut request = [0u8; 8];
            if conn.read_exact(&mut request).is_ok()
                && request == [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]
            {
                let _ = conn.write_all(b"N");
            }
            // Then the client gives up (or sends a startup message nobody answers).
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    addr
}

#[test]
fn server_without_tls_is_refused_never_downgraded() {
    let addr = plaintext_server();
    for mode in ["require", "verify-ca", "verify-full"] {
        let (cause, reason) = tls_cause(
            PostgresStore::builder(&url(
                "postgres",
                &addr,
                &format!("sslmode={mode}&sslrootcert={}", enc(&ca())),
            ))
            .build(),
        );
        assert_eq!(cause, TlsCause::ServerWithoutTls, "{mode}: {reason}");
    }
}

/// The role may only connect over TLS (pg_hba `hostnossl ... reject`).
#[test]
fn server_requiring_tls_refuses_plaintext() {
    server_ready();
    let (cause, reason) = tls_cause(
        PostgresStore::builder(&url(
            "outboxer_tls_only",
            "127.0.0.1:5432",
            "sslmode=disable",
        ))
        .build(),
    );
    assert_eq!(cause, TlsCause::ServerRequiresTls, "{reason}");
    // The same role over TLS is let in.
    let table = name("tls_only");
    let store = PostgresStore::builder(&url(
        "outboxer_tls_only",
        "127.0.0.1:5432",
        &format!("sslmode=verify-full&sslrootcert={}", enc(&ca())),
    ))
    .table(&table)
    .build()
    .expect("the TLS-only role over TLS");
    round_trip(&store);
    drop(store);
    drop_table(&table);
}

/// Mutual TLS: the role logs in with the test client certificate only.
#[test]
fn client_certificate_logs_in() {
    server_ready();
    let (cert, key) = client_cert();
    let base = format!("sslmode=verify-full&sslrootcert={}", enc(&ca()));
    let table = name("tls_cert");
    let store = PostgresStore::builder(&url(
        "outboxer_cert",
        "localhost:5432",
        &format!("{base}&sslcert={}&sslkey={}", enc(&cert), enc(&key)),
    ))
    .table(&table)
    .build()
    .expect("client certificate login");
    round_trip(&store);
    drop(store);
    drop_table(&table);
    let without = PostgresStore::builder(&url("outboxer_cert", "localhost:5432", &base)).build();
    assert!(without.is_err(), "no client certificate, no login");
}

#[test]
fn bad_settings_are_refused_at_build() {
    let missing = PostgresStore::builder(&url(
        "postgres",
        "localhost:5432",
        "sslmode=verify-full&sslrootcert=%2Fnonexistent%2Fca.pem",
    ))
    .build();
    assert!(
        matches!(&missing, Err(Error::Config { reason, .. }) if reason.contains("/nonexistent/ca.pem")),
        "{missing:?}"
    );
    for mode in ["prefer", "allow"] {
        let r = PostgresStore::builder(&format!(
            "postgres://u:s3cret@localhost:5432/test?sslmode={mode}"
        ))
        .build();
        match r {
            Err(Error::InvalidUrl { url, reason }) => {
                assert!(reason.contains("plaintext"), "{reason}");
                assert!(!url.contains("s3cret"), "{url}");
            }
            other => panic!("sslmode={mode}: {other:?}"),
        }
    }
}

#[cfg(feature = "async")]
mod async_store {
    use super::*;
    use outboxer::async_impl::store::PostgresStore;

    /// The blocking checks on a thread of their own: `postgres` refuses to block
    /// on a runtime thread.
    fn off<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::spawn(f).join().expect("check thread")
    }

    async fn tls_cause(url: &str) -> TlsCause {
        match PostgresStore::builder(url).build().await {
            Err(Error::Tls { cause, .. }) => cause,
            Err(e) => panic!("expected Error::Tls, got {e:?}"),
            Ok(_) => panic!("expected Error::Tls, the store was built"),
        }
    }

    #[tokio::test]
    async fn async_store_over_verify_full() {
        off(server_ready);
        let (app, table) = (name("tls_async"), name("tls_async"));
        let store = PostgresStore::builder(&verify_full("localhost:5432", &app))
            .table(&table)
            .build()
            .await
            .expect("async store over TLS");
        store.migrate().await.expect("migrate");
        let outbox = outboxer::async_impl::Outbox::builder()
            .store(store.clone())
            .build()
            .expect("outbox");
        outbox
            .send(Message::new(b"async over tls".to_vec()))
            .await
            .expect("send");
        // Both the async sends and the relay's blocking store are TLS sessions.
        let (with_tls, all, _) = off(move || tls_sessions(&app));
        assert!(all >= 2 && with_tls == all, "{with_tls} of {all} over TLS");
        drop(outbox);
        drop(store);
        off(move || drop_table(&table));
    }

    #[tokio::test]
    async fn async_store_refusals_name_the_cause() {
        off(server_ready);
        let other = format!("sslmode=verify-full&sslrootcert={}", enc(&other_ca()));
        assert_eq!(
            tls_cause(&url("postgres", "localhost:5432", &other)).await,
            TlsCause::CertificateNotTrusted
        );
        let fwd = WrongHost::to("127.0.0.1:5432");
        let right = format!("sslmode=verify-full&sslrootcert={}", enc(&ca()));
        assert_eq!(
            tls_cause(&url("postgres", &fwd.addr(), &right)).await,
            TlsCause::HostnameMismatch
        );
        assert_eq!(
            tls_cause(&url("postgres", &plaintext_server(), &right)).await,
            TlsCause::ServerWithoutTls
        );
        assert_eq!(
            tls_cause(&url(
                "outboxer_tls_only",
                "127.0.0.1:5432",
                "sslmode=disable"
            ))
            .await,
            TlsCause::ServerRequiresTls
        );
    }
}

/// The `outboxer` command over verified TLS. The store URL, with the password of
/// a role that needs it (`outboxer_pw`, scram), is read from a file
/// (`--store-file`), so that it is in neither the process list nor any output.
#[cfg(all(feature = "cli", feature = "amqp"))]
mod command {
    use super::*;
    use crate::common::{amqp_url, unique, Sink};
    use std::process::{Command, Stdio};
    use std::time::Instant;

    const PASSWORD: &str = "outboxer-pw-only-in-a-file";

    use crate::fixtures::outboxer;

    fn store_url(ca: &std::path::Path, app: &str) -> String {
        format!(
            "postgres://outboxer_pw:{PASSWORD}@localhost:5432/test?sslmode=verify-full&sslrootcert={}&application_name={app}",
            enc(ca)
        )
    }

    fn run(args: &[&str]) -> (bool, String) {
        let out = outboxer().args(args).output().expect("run outboxer");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    #[test]
    fn command_relays_over_verified_tls_with_the_url_in_a_file() {
        server_ready();
        let (app, table, ex) = (name("tls_cli"), unique("tls_cli"), unique("tls_cli_ex"));
        let dir = std::env::temp_dir().join(unique("tls_cli"));
        std::fs::create_dir_all(&dir).expect("dir");
        let (store_file, stream_file) = (dir.join("store-url"), dir.join("stream-url"));
        std::fs::write(&store_file, format!("{}\n", store_url(&ca(), &app))).expect("write");
        std::fs::write(&stream_file, amqp_url()).expect("write");
        let store_arg = store_file.display().to_string();

        let (ok, out) = run(&["migrate", "--store-file", &store_arg, "--table", &table]);
        assert!(ok, "migrate over TLS: {out}");
        assert!(!out.contains(PASSWORD), "{out}");

        let sink = Sink::new(&ex, "#");
        let mut child = outboxer()
            .args(["relay", "--store-file", &store_arg, "--table", &table])
            .args(["--check-interval", "50ms"])
            .env("OUTBOXER_STREAM_FILE", &stream_file)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn relay");
        let stderr = child.stderr.take().expect("stderr");
        let log = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::BufReader::new(stderr).read_to_string(&mut s);
            s
        });
        // What `ps` shows of the running relay: no password.
        let ps = Command::new("ps")
            .args(["-ww", "-o", "args=", "-p", &child.id().to_string()])
            .output()
            .expect("ps");
        let args = String::from_utf8_lossy(&ps.stdout).into_owned();
        assert!(args.contains("--store-file"), "ps shows: {args}");
        assert!(!args.contains(PASSWORD), "ps shows: {args}");

        plain()
            .execute(
                &format!(
                    "INSERT INTO \"{table}\" (payload, options)
                     SELECT convert_to('m' || g, 'UTF8'),
                            jsonb_build_object('exchange.name', $1::text, 'routing_key', 'k')
                     FROM generate_series(1, 50) AS g"
                ),
                &[&ex],
            )
            .expect("plain SQL insert");
        let got = sink.collect(50, Duration::from_secs(30));
        let mut bodies: Vec<Vec<u8>> = got.iter().map(|g| g.body.clone()).collect();
        bodies.sort();
        bodies.dedup();
        // The relay's sessions, while it runs, are TLS sessions.
        let (with_tls, all, version) = tls_sessions(&app);
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(s) = child.try_wait().expect("wait") {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                break child.wait().expect("wait");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let log = log.join().unwrap_or_default();
        assert_eq!(bodies.len(), 50, "every row delivered:\n{log}");
        assert!(all >= 1 && with_tls == all, "{with_tls} of {all} over TLS");
        eprintln!("outboxer relay: {with_tls} of {all} sessions over {version:?}");
        assert!(status.success(), "{status:?}\n{log}");
        assert!(!log.contains(PASSWORD), "{log}");

        let (ok, out) = run(&["stats", "--store-file", &store_arg, "--table", &table]);
        assert!(ok && !out.contains(PASSWORD), "{out}");
        drop_table(&table);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn command_refuses_to_start_on_a_wrong_ca() {
        server_ready();
        let table = unique("tls_cli_bad");
        let url = store_url(&other_ca(), &name("tls_cli_bad"));
        let started = Instant::now();
        let (ok, out) = run(&[
            "relay",
            "--store",
            &url,
            "--table",
            &table,
            "--stream",
            &amqp_url(),
        ]);
        assert!(!ok, "{out}");
        assert!(
            out.contains("certificate is not trusted") && !out.contains(PASSWORD),
            "{out}"
        );
        assert!(!out.contains("relay started"), "{out}");
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "refused at start"
        );
    }
}
