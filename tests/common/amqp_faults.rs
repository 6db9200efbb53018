//! RabbitMQ fault helpers: a user with chosen permissions (deleted on drop), a
//! lowered `max_message_size` (restored on drop), a server that accepts TCP
//! connections and never answers, and an AMQP-aware TCP proxy that cuts the
//! connection right after the broker's Nth publisher confirm.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// `host:port` of the test broker.
pub fn broker_addr() -> String {
    crate::common::amqp_url()
        .split_once('@')
        .and_then(|(_, r)| r.split('/').next().map(str::to_string))
        .unwrap_or_else(|| "127.0.0.1:5672".into())
}

/// Runs `rabbitmqctl -q args..`; true on success.
pub fn rabbitmqctl(args: &[&str]) -> bool {
    Command::new("rabbitmqctl")
        .arg("-q")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A RabbitMQ user created for one test; deleted when dropped, also on panic.
pub struct RabbitUser {
    pub name: String,
    pub password: String,
}

impl RabbitUser {
    /// A new user. `permissions` are the (configure, write, read) regexes on vhost `/`;
    /// `None` leaves the user without any access to the vhost.
    pub fn new(prefix: &str, permissions: Option<(&str, &str, &str)>) -> RabbitUser {
        let user = RabbitUser {
            name: crate::common::unique(prefix),
            password: "s3cret-pw".into(),
        };
        assert!(
            rabbitmqctl(&["add_user", &user.name, &user.password]),
            "rabbitmqctl add_user"
        );
        if let Some((configure, write, read)) = permissions {
            assert!(
                rabbitmqctl(&[
                    "set_permissions",
                    "-p",
                    "/",
                    &user.name,
                    configure,
                    write,
                    read
                ]),
                "rabbitmqctl set_permissions"
            );
        }
        user
    }

    /// `amqp://user:password@host:port/%2f` on the test broker.
    pub fn url(&self) -> String {
        let base = crate::common::amqp_url();
        let rest = base
            .split_once('@')
            .map(|(_, r)| r)
            .unwrap_or("127.0.0.1:5672/%2f");
        format!("amqp://{}:{}@{rest}", self.name, self.password)
    }
}

impl Drop for RabbitUser {
    fn drop(&mut self) {
        rabbitmqctl(&["delete_user", &self.name]);
    }
}

fn set_max_message_size(bytes: u64) -> bool {
    rabbitmqctl(&[
        "eval",
        &format!("application:set_env(rabbit, max_message_size, {bytes})."),
    ])
}

/// The broker's `max_message_size` (RabbitMQ 3.10 has it only as a global
/// setting, no per-vhost limit or policy), read by each channel when it opens.
pub fn max_message_size() -> Option<u64> {
    let out = Command::new("rabbitmqctl")
        .args([
            "-q",
            "eval",
            "application:get_env(rabbit, max_message_size).",
        ])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .trim_start_matches("{ok,")
        .trim_end_matches('}')
        .parse()
        .ok()
}

/// Lowers the broker's global `max_message_size` while it lives; restores the old
/// value when dropped, also on panic. Channels opened meanwhile keep the low limit.
pub struct MaxMessageSize {
    old: u64,
}

impl MaxMessageSize {
    pub fn set(bytes: u64) -> MaxMessageSize {
        let old = max_message_size().expect("read max_message_size");
        let guard = MaxMessageSize { old };
        assert!(set_max_message_size(bytes), "set max_message_size");
        guard
    }
}

impl Drop for MaxMessageSize {
    fn drop(&mut self) {
        set_max_message_size(self.old);
    }
}

/// Accepts TCP connections and never sends a byte (a hung broker).
pub struct SilentServer {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl SilentServer {
    pub fn start() -> SilentServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind silent server");
        let addr = listener.local_addr().expect("local addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, s) = (accepted.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut open = Vec::new();
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(c) = conn {
                    a.fetch_add(1, Ordering::SeqCst);
                    open.push(c); // kept open, never answered
                }
            }
        });
        SilentServer {
            addr,
            accepted,
            stop,
        }
    }

    /// An AMQP URL to it with the given connection timeout.
    pub fn url(&self, connection_timeout: Duration) -> String {
        format!(
            "amqp://guest:guest@{}/%2f?connection_timeout={}",
            self.addr,
            connection_timeout.as_millis()
        )
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for SilentServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

/// What the proxy does once the broker's Nth `basic.ack` frame has passed.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Forward nothing more from the broker, wait 300 ms, then cut both sides.
    Cut(usize),
    /// Withhold the ack after the Nth and everything after it, keep the connection
    /// open (a hung broker).
    Freeze(usize),
}

/// A TCP proxy to the broker that forwards bytes unchanged and, once armed, cuts
/// or freezes the connection after passing on the broker's Nth `basic.ack` frame.
pub struct AmqpCutProxy {
    addr: SocketAddr,
    fault: Arc<Mutex<Option<Fault>>>,
    cuts: Arc<AtomicUsize>,
}

impl AmqpCutProxy {
    /// A proxy to `upstream` (`host:port`); it cuts nothing until [`Self::cut_after_acks`].
    pub fn start(upstream: &str) -> AmqpCutProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().expect("local addr");
        let fault = Arc::new(Mutex::new(None));
        let cuts = Arc::new(AtomicUsize::new(0));
        let (arm, c, up) = (fault.clone(), cuts.clone(), upstream.to_string());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(&up) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (arm, c) = (arm.clone(), c.clone());
                std::thread::spawn(move || relay_connection(client, server, &arm, &c));
            }
        });
        AmqpCutProxy { addr, fault, cuts }
    }

    /// From now on, a connection that passes on its `n`th ack is cut after it.
    pub fn cut_after_acks(&self, n: usize) {
        *self.fault.lock().unwrap_or_else(|e| e.into_inner()) = Some(Fault::Cut(n));
    }

    /// From now on, a connection that has passed on `n` acks hears nothing more.
    pub fn freeze_after_acks(&self, n: usize) {
        *self.fault.lock().unwrap_or_else(|e| e.into_inner()) = Some(Fault::Freeze(n));
    }

    /// Connections cut or frozen so far.
    pub fn cuts(&self) -> usize {
        self.cuts.load(Ordering::SeqCst)
    }

    /// The AMQP URL (guest) through the proxy.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.addr)
    }
}

fn relay_connection(
    client: TcpStream,
    server: TcpStream,
    arm: &Mutex<Option<Fault>>,
    cuts: &AtomicUsize,
) {
    let (Ok(mut client_r), Ok(mut server_w)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    // Client to server: bytes as they come.
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        while let Ok(n) = client_r.read(&mut buf) {
            if n == 0 || server_w.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = server_w.shutdown(Shutdown::Both);
    });
    // Server to client: frame by frame (type, channel, size, payload, 0xCE).
    let (mut server_r, mut client_w) = (server, client);
    let mut acks = 0usize;
    loop {
        let mut head = [0u8; 7];
        if server_r.read_exact(&mut head).is_err() {
            break;
        }
        let size = u32::from_be_bytes([head[3], head[4], head[5], head[6]]) as usize;
        let mut rest = vec![0u8; size + 1];
        if server_r.read_exact(&mut rest).is_err() {
            break;
        }
        let mut frame = head.to_vec();
        frame.extend_from_slice(&rest);
        // A method frame (1) of class basic (60), method ack (80).
        let ack = head[0] == 1 && rest.len() >= 4 && rest[..4] == [0, 60, 0, 80];
        acks += usize::from(ack);
        let fault = *arm.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(Fault::Freeze(n)) = fault {
            if ack && acks > n {
                // This ack and everything after it is withheld; the connection stays open.
                cuts.fetch_add(1, Ordering::SeqCst);
                let mut sink = [0u8; 16 * 1024];
                while matches!(server_r.read(&mut sink), Ok(n) if n > 0) {}
                std::thread::sleep(Duration::from_secs(120));
                break;
            }
        }
        if client_w.write_all(&frame).is_err() {
            break;
        }
        if let Some(Fault::Cut(n)) = fault {
            if ack && acks >= n {
                // Nothing more reaches the client; let it finish sending its batch,
                // then cut (a connection lost while it awaits the other confirms).
                std::thread::sleep(Duration::from_millis(300));
                cuts.fetch_add(1, Ordering::SeqCst);
                break;
            }
        }
    }
    let _ = client_w.shutdown(Shutdown::Both);
    let _ = server_r.shutdown(Shutdown::Both);
}
