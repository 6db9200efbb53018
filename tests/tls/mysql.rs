//! MariaDB over TLS (`scripts/tls/mariadb.sh up`: the machine's MariaDB serves the
//! test CA's certificate on its usual port 3306, beside plaintext). The stores
//! connect with `ssl-mode`/`ssl-ca` in the URL or `.tls(..)`; an account created
//! `REQUIRE SSL` proves that the server saw TLS on every session of the relay.

use crate::fixtures::{ca, other_ca, WrongHost};
use outboxer::store::mysql::{self, prelude::Queryable};
use outboxer::store::{MysqlStore, TxStore};
use outboxer::tls::{Tls, TlsCause};
use outboxer::Error;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;

/// A test-only account on the local MariaDB that the server refuses in plaintext.
const USER: &str = "outboxer_tls";
const PASSWORD: &str = "tls-test-only";

fn root_url() -> String {
    std::env::var("OUTBOXER_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into())
}

/// Checks the server serves TLS and makes the `REQUIRE SSL` account (idempotent).
/// Fails loudly without a TLS server: never a silent pass.
fn setup() {
    let pool = mysql::Pool::new(root_url().as_str()).expect("MariaDB on 127.0.0.1:3306");
    let mut c = pool.get_conn().expect("MariaDB on 127.0.0.1:3306");
    let have: Option<(String, String)> = c
        .query_first("SHOW VARIABLES LIKE 'have_ssl'")
        .expect("have_ssl");
    assert_eq!(
        have.map(|(_, v)| v).as_deref(),
        Some("YES"),
        "MariaDB serves no TLS: run `bash scripts/test-services up` (scripts/tls/mariadb.sh)"
    );
    c.query_drop(format!(
        "CREATE USER IF NOT EXISTS '{USER}'@'%' IDENTIFIED BY '{PASSWORD}' REQUIRE SSL"
    ))
    .expect("create user");
    c.query_drop(format!("GRANT ALL ON test.* TO '{USER}'@'%'"))
        .expect("grant");
}

/// The TLS account's URL to `host_port` with these extra parameters.
fn url(host_port: &str, params: &str) -> String {
    format!("mysql://{USER}:{PASSWORD}@{host_port}/test?{params}")
}

fn verify_identity(host_port: &str, ca: &Path) -> String {
    url(
        host_port,
        &format!("ssl-mode=VERIFY_IDENTITY&ssl-ca={}", ca.display()),
    )
}

fn tls_cause(r: Result<MysqlStore, Error>) -> TlsCause {
    match r {
        Err(Error::Tls { what, cause, .. }) => {
            assert_eq!(what, "mysql");
            cause
        }
        Err(e) => panic!("expected Error::Tls, got {e:?}"),
        Ok(_) => panic!("expected Error::Tls, the store connected"),
    }
}

/// The session's cipher as the server reports it (empty: plaintext).
fn session_cipher(store: &MysqlStore) -> String {
    store
        .with_transaction(|tx| {
            let row: Option<(String, String)> = tx
                .query_first("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
                .map_err(|e| Error::Database {
                    context: "Ssl_cipher",
                    source: e.into(),
                })?;
            Ok::<_, Error>(row.map(|(_, v)| v).unwrap_or_default())
        })
        .expect("Ssl_cipher")
}

#[allow(dead_code)] // used by the relay, command and async tests (their features)
fn drop_table(table: &str) {
    if let Ok(mut c) = mysql::Pool::new(root_url().as_str()).and_then(|p| p.get_conn()) {
        let _ = c.query_drop(format!("DROP TABLE IF EXISTS `{table}`, `{table}_keys`"));
    }
}

#[allow(dead_code)]
fn unique(prefix: &str) -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{prefix}_{}_{}", std::process::id(), n % 1_000_000_000_000)
}

#[test]
fn verify_identity_connects_to_127_0_0_1_and_localhost_and_the_session_is_encrypted() {
    setup();
    for host in ["127.0.0.1:3306", "localhost:3306"] {
        let store = MysqlStore::connect(&verify_identity(host, &ca())).expect(host);
        let cipher = session_cipher(&store);
        assert!(!cipher.is_empty(), "{host}: the server reports no cipher");
    }
    // The typed setter says the same as the URL.
    let store = MysqlStore::builder(&url("127.0.0.1:3306", ""))
        .tls(Tls::verify_full().ca_file(ca()))
        .build()
        .expect("typed setter");
    assert!(!session_cipher(&store).is_empty());
    // MySQL's REQUIRED is verified here too: the test CA is needed.
    let required = url(
        "127.0.0.1:3306",
        &format!("ssl-mode=REQUIRED&ssl-ca={}", ca().display()),
    );
    MysqlStore::connect(&required).expect("REQUIRED with the CA");
    let required = url("127.0.0.1:3306", "ssl-mode=REQUIRED");
    assert_eq!(
        tls_cause(MysqlStore::connect(&required)),
        TlsCause::CertificateNotTrusted
    );
}

#[cfg(all(feature = "amqp", feature = "postgres"))]
#[test]
fn a_relay_delivers_from_mariadb_over_verified_tls() {
    use crate::common::{amqp_url, Sink};
    use outboxer::stream::{amqp, AmqpStream};
    use outboxer::{Message, Outbox};
    use std::time::Duration;

    setup();
    let table = unique("tls_my");
    let ex = unique("tls_ex");
    let sink = Sink::new(&ex, "#");
    let store = MysqlStore::builder(&verify_identity("127.0.0.1:3306", &ca()))
        .table(&table)
        .build()
        .expect("store over TLS");
    store.migrate().expect("migrate over TLS");
    let outbox = Outbox::builder()
        .store(store.clone())
        .stream(AmqpStream::connect(&amqp_url()).expect("RabbitMQ"))
        .check_interval(Duration::from_millis(50))
        .build()
        .expect("outbox");
    let relay = outbox.start().expect("relay starts over TLS");
    let mut ids = std::collections::BTreeSet::new();
    for i in 0..20 {
        let m = Message::new(format!("tls {i}").into_bytes()).route(amqp::topic(&ex, "tls.k"));
        ids.insert(outbox.send(m).expect("send").to_string());
    }
    let got = sink.collect(20, Duration::from_secs(30));
    let delivered: std::collections::BTreeSet<_> =
        got.iter().filter_map(|g| g.message_id.clone()).collect();
    // The account is REQUIRE SSL: no session of the store or relay was plaintext.
    let cipher = session_cipher(&store);
    relay.stop().expect("stop");
    drop_table(&table);
    assert_eq!(delivered, ids, "every message delivered");
    assert!(!cipher.is_empty(), "the store's session is encrypted");
}

#[test]
fn a_wrong_ca_is_refused_as_not_trusted() {
    setup();
    for mode in ["VERIFY_IDENTITY", "VERIFY_CA"] {
        let u = url(
            "127.0.0.1:3306",
            &format!("ssl-mode={mode}&ssl-ca={}", other_ca().display()),
        );
        assert_eq!(
            tls_cause(MysqlStore::connect(&u)),
            TlsCause::CertificateNotTrusted,
            "{mode}"
        );
    }
    // The loudly named switch accepts it (encrypted, not verified).
    let store = MysqlStore::builder(&url("127.0.0.1:3306", ""))
        .tls(
            Tls::verify_full()
                .ca_file(other_ca())
                .danger_accept_invalid_certificates(true),
        )
        .build()
        .expect("danger switch");
    assert!(!session_cipher(&store).is_empty());
}

#[test]
fn a_wrong_host_name_is_refused_by_verify_identity_and_accepted_by_verify_ca() {
    setup();
    let wrong = WrongHost::to("127.0.0.1:3306");
    assert_eq!(
        tls_cause(MysqlStore::connect(&verify_identity(&wrong.addr(), &ca()))),
        TlsCause::HostnameMismatch
    );
    let verify_ca = url(
        &wrong.addr(),
        &format!("ssl-mode=VERIFY_CA&ssl-ca={}", ca().display()),
    );
    let store = MysqlStore::connect(&verify_ca).expect("VERIFY_CA skips the name");
    assert!(!session_cipher(&store).is_empty());
}

/// A server that speaks MySQL's handshake without the CLIENT_SSL capability, then
/// closes: a plaintext-only server.
fn plaintext_only_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let _ = conn.write_all(&handshake_v10_without_ssl());
            let mut buf = [0u8; 1024];
            let _ = conn.read(&mut buf);
        }
    });
    addr
}

fn handshake_v10_without_ssl() -> Vec<u8> {
    // LONG_PASSWORD | FOUND_ROWS | LONG_FLAG | CONNECT_WITH_DB | PROTOCOL_41 |
    // TRANSACTIONS | SECURE_CONNECTION | MULTI_* | PLUGIN_AUTH; no SSL (0x800).
    let caps: u32 = 0x0001 | 0x0002 | 0x0004 | 0x0008 | 0x0200 | 0x2000 | 0x8000 | 0x000F_0000;
    let mut p = vec![10u8];
    p.extend_from_slice(b"5.5.5-10.11.0-plaintext\0");
    p.extend_from_slice(&7u32.to_le_bytes());
    p.extend_from_slice(b"abcdefgh\0");
    p.extend_from_slice(&(caps as u16).to_le_bytes());
    p.push(0x21);
    p.extend_from_slice(&2u16.to_le_bytes());
    p.extend_from_slice(&((caps >> 16) as u16).to_le_bytes());
    p.push(21);
    p.extend_from_slice(&[0u8; 10]);
    p.extend_from_slice(b"ijklmnopqrst\0");
    p.extend_from_slice(b"mysql_native_password\0");
    let len = p.len() as u32;
    let mut packet = len.to_le_bytes()[..3].to_vec();
    packet.push(0);
    packet.extend(p);
    packet
}

#[test]
fn tls_asked_of_a_plaintext_server_is_refused() {
    let addr = plaintext_only_server();
    let u = url(
        &addr,
        &format!("ssl-mode=VERIFY_IDENTITY&ssl-ca={}", ca().display()),
    );
    assert_eq!(
        tls_cause(MysqlStore::connect(&u)),
        TlsCause::ServerWithoutTls
    );
}

#[test]
fn plaintext_to_an_account_that_requires_tls_is_refused() {
    setup();
    for u in [
        url("127.0.0.1:3306", ""),
        url("127.0.0.1:3306", "ssl-mode=DISABLED"),
    ] {
        match MysqlStore::connect(&u) {
            // MariaDB denies it like a wrong password; the context says both.
            Err(e @ Error::Database { .. }) => {
                let text = e.to_string();
                assert!(text.contains("requires TLS"), "{text}");
                assert!(!text.contains(PASSWORD), "{text}");
            }
            other => panic!("expected access denied, got {other:?}"),
        }
    }
}

#[test]
fn missing_or_unreadable_certificate_files_are_config_errors() {
    let missing = url(
        "127.0.0.1:3306",
        "ssl-mode=VERIFY_IDENTITY&ssl-ca=/nonexistent/ca.pem",
    );
    assert!(
        matches!(MysqlStore::connect(&missing), Err(Error::Config { .. })),
        "missing CA file"
    );
    let not_pem = url(
        "127.0.0.1:3306",
        "ssl-mode=VERIFY_IDENTITY&ssl-ca=/etc/hostname",
    );
    assert!(matches!(
        MysqlStore::connect(&not_pem),
        Err(Error::Config { .. })
    ));
    // A CA without ssl-mode: MySQL's clients differ on what that means; refused.
    let no_mode = url("127.0.0.1:3306", &format!("ssl-ca={}", ca().display()));
    assert!(matches!(
        MysqlStore::connect(&no_mode),
        Err(Error::Config { .. })
    ));
    let preferred = url("127.0.0.1:3306", "ssl-mode=PREFERRED");
    assert!(matches!(
        MysqlStore::connect(&preferred),
        Err(Error::InvalidUrl { .. })
    ));
}

/// The `outboxer` command over verified TLS: `migrate` and `relay` with the TLS
/// URL deliver; a wrong CA makes `relay` exit non-zero naming the cause.
#[cfg(all(feature = "cli", feature = "amqp", feature = "postgres"))]
#[test]
fn the_command_relays_over_verified_tls_and_refuses_a_wrong_ca() {
    use crate::common::{amqp_url, Sink};
    use outboxer::store::Store;
    use outboxer::stream::amqp;
    use outboxer::Message;
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    use crate::fixtures::outboxer;
    setup();
    let table = unique("tls_cli");
    let ex = unique("tls_cli_ex");
    let sink = Sink::new(&ex, "#");
    let store_url = verify_identity("localhost:3306", &ca());
    let out = outboxer()
        .args(["migrate", "--store", &store_url, "--table", &table])
        .output()
        .expect("run outboxer migrate");
    assert!(
        out.status.success(),
        "migrate over TLS: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let store = MysqlStore::builder(&store_url)
        .table(&table)
        .build()
        .expect("store");
    let messages: Vec<Message> = (0..10)
        .map(|i| Message::new(format!("cli {i}").into_bytes()).route(amqp::topic(&ex, "k")))
        .collect();
    store.enqueue(&messages).expect("enqueue");

    let mut relay = outboxer()
        .args(["relay", "--store", &store_url, "--table", &table])
        .args(["--stream", &amqp_url(), "--check-interval", "50ms"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn outboxer relay");
    let got = sink.collect(10, Duration::from_secs(30));
    let _ = Command::new("kill")
        .args(["-TERM", &relay.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Ok(Some(s)) = relay.try_wait() {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = relay.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let log: String = relay
        .stderr
        .take()
        .map(|e| {
            std::io::BufReader::new(e)
                .lines()
                .map_while(Result::ok)
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default();
    drop_table(&table);
    let ids: std::collections::BTreeSet<_> =
        got.iter().filter_map(|g| g.message_id.clone()).collect();
    assert_eq!(
        ids.len(),
        10,
        "every message delivered by the command:\n{log}"
    );
    assert!(status.is_some_and(|s| s.success()), "clean exit:\n{log}");
    assert!(
        !log.contains(PASSWORD),
        "the password is never printed:\n{log}"
    );

    // A wrong CA: the relay does not start; the error names the cause.
    let wrong = url(
        "127.0.0.1:3306",
        &format!("ssl-mode=VERIFY_IDENTITY&ssl-ca={}", other_ca().display()),
    );
    let out = outboxer()
        .args(["relay", "--store", &wrong, "--table", &table])
        .args(["--stream", &amqp_url()])
        .output()
        .expect("run outboxer relay");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a wrong CA must not start: {err}");
    assert!(
        err.contains(&TlsCause::CertificateNotTrusted.to_string()),
        "{err}"
    );
    assert!(!err.contains(PASSWORD), "{err}");
}

#[cfg(feature = "async-mysql")]
mod async_store {
    use super::*;
    use outboxer::async_impl::store::{MysqlStore, Store};
    use outboxer::Message;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    fn cause(r: Result<MysqlStore, Error>) -> TlsCause {
        match r {
            Err(Error::Tls { cause, .. }) => cause,
            Err(e) => panic!("expected Error::Tls, got {e:?}"),
            Ok(_) => panic!("expected Error::Tls, the store connected"),
        }
    }

    async fn cipher(store: &MysqlStore) -> String {
        use outboxer::async_impl::store::mysql_async::prelude::Queryable as _;
        store
            .with_transaction(async |tx| {
                let row: Option<(String, String)> = tx
                    .query_first("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
                    .await
                    .map_err(|e| Error::Database {
                        context: "Ssl_cipher",
                        source: e.into(),
                    })?;
                Ok::<_, Error>(row.map(|(_, v)| v).unwrap_or_default())
            })
            .await
            .expect("Ssl_cipher")
    }

    #[test]
    fn the_async_store_enqueues_over_verified_tls() {
        setup();
        let table = unique("tls_amy");
        rt().block_on(async {
            let store = MysqlStore::builder(&verify_identity("localhost:3306", &ca()))
                .table(&table)
                .build()
                .await
                .expect("async store over TLS");
            store.migrate().await.expect("migrate");
            store
                .enqueue(&[Message::new(b"over tls".to_vec())])
                .await
                .expect("enqueue over TLS");
            assert!(!cipher(&store).await.is_empty(), "encrypted session");
            let typed = MysqlStore::builder(&url("127.0.0.1:3306", ""))
                .table(&table)
                .tls(Tls::verify_full().ca_file(ca()))
                .build()
                .await
                .expect("typed setter");
            assert!(!cipher(&typed).await.is_empty());
        });
        drop_table(&table);
    }

    #[test]
    fn the_async_store_refuses_a_wrong_ca_a_wrong_host_and_a_plaintext_server() {
        setup();
        rt().block_on(async {
            let u = url(
                "127.0.0.1:3306",
                &format!("ssl-mode=VERIFY_IDENTITY&ssl-ca={}", other_ca().display()),
            );
            assert_eq!(
                cause(MysqlStore::connect(&u).await),
                TlsCause::CertificateNotTrusted
            );
            let wrong = WrongHost::to("127.0.0.1:3306");
            let u = verify_identity(&wrong.addr(), &ca());
            assert_eq!(
                cause(MysqlStore::connect(&u).await),
                TlsCause::HostnameMismatch
            );
            let plain = plaintext_only_server();
            let u = verify_identity(&plain, &ca());
            assert_eq!(
                cause(MysqlStore::connect(&u).await),
                TlsCause::ServerWithoutTls
            );
        });
    }

    /// `mysql_async` 0.37.1 checks the host name even when told not to (its
    /// skip-domain check matches the text "NotValidForName", which rustls 0.23
    /// no longer prints: blackbeam/mysql_async#404): VERIFY_CA to a host its
    /// certificate does not name failed as a host name mismatch. The async store
    /// refuses VERIFY_CA at build instead, saying why, until a fixed release.
    #[test]
    fn the_async_store_refuses_verify_ca_which_mysql_async_cannot_do() {
        setup();
        let wrong = WrongHost::to("127.0.0.1:3306");
        let u = url(
            &wrong.addr(),
            &format!("ssl-mode=VERIFY_CA&ssl-ca={}", ca().display()),
        );
        rt().block_on(async {
            for r in [
                MysqlStore::connect(&u).await,
                MysqlStore::builder(&url("127.0.0.1:3306", ""))
                    .tls(Tls::verify_ca().ca_file(ca()))
                    .build()
                    .await,
            ] {
                match r {
                    Err(Error::Config { field, reason }) => {
                        assert_eq!(field, "tls");
                        assert!(reason.contains("VERIFY_CA"), "{reason}");
                    }
                    other => panic!("expected Error::Config, got {other:?}"),
                }
            }
        });
    }
}
