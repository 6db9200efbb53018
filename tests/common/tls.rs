//! TLS test fixtures: the throwaway CA and certificates made by `scripts/tls-certs`
//! (started by `scripts/test-services up`), and a loopback forwarder for
//! wrong-host-name cases. The server certificate names `localhost` and
//! `127.0.0.1` only, so the same server reached through 127.0.0.2 (also
//! loopback) must be refused as a host name mismatch.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Where `scripts/tls-certs` put the files. Fails loudly when they are missing:
/// a TLS test never passes without its servers.
pub fn dir() -> PathBuf {
    let dir = std::env::var_os("OUTBOXER_TLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                .join(".cache/outboxer/tls")
        });
    assert!(
        dir.join("ca.pem").is_file(),
        "no test CA in {}: run `bash scripts/test-services up` first",
        dir.display()
    );
    dir
}

/// The test CA that signed every server certificate.
pub fn ca() -> PathBuf {
    dir().join("ca.pem")
}

/// A CA that signed nothing the servers present.
pub fn other_ca() -> PathBuf {
    dir().join("other-ca.pem")
}

/// A client certificate and key signed by the test CA (mutual TLS).
pub fn client_cert() -> (PathBuf, PathBuf) {
    (dir().join("client.pem"), dir().join("client.key"))
}

/// Forwards TCP from 127.0.0.2:<port> to `upstream`, byte for byte: the server's
/// own TLS reached under a host name its certificate does not carry.
pub struct WrongHost {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl WrongHost {
    pub fn to(upstream: &str) -> WrongHost {
        let listener = TcpListener::bind("127.0.0.2:0").expect("bind 127.0.0.2");
        let port = listener.local_addr().expect("addr").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let (upstream, flag) = (upstream.to_string(), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let _ = client.set_nonblocking(false);
                        if let Ok(server) = TcpStream::connect(&upstream) {
                            pipe(client, server);
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        WrongHost { port, stop }
    }

    /// `127.0.0.2:<port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.2:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for WrongHost {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn pipe(a: TcpStream, b: TcpStream) {
    let copy = |mut from: TcpStream, mut to: TcpStream| {
        std::thread::spawn(move || {
            let mut buf = [0u8; 16 * 1024];
            loop {
                match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = to.shutdown(Shutdown::Write);
        });
    };
    if let (Ok(a2), Ok(b2)) = (a.try_clone(), b.try_clone()) {
        copy(a, b2);
        copy(b, a2);
    }
}

/// The `outboxer` command as a user runs it: none of the test environment's
/// `OUTBOXER_*` or `AWS_*` variables, and `OUTBOXER_LOG=info`.
#[cfg(feature = "cli")]
pub fn outboxer() -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_outboxer"));
    for (k, _) in std::env::vars() {
        if k.starts_with("OUTBOXER_") || k.starts_with("AWS_") {
            c.env_remove(k);
        }
    }
    c.env("OUTBOXER_LOG", "info");
    c
}
