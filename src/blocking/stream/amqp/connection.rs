//! Connecting: the socket (TCP_NODELAY), the AMQP handshake, the channel in
//! confirm mode, the watchdog that bounds amiquip's blocking calls, and the
//! stream's session (opened, dropped, its channel reopened).

use super::refusals::Declared;
use super::stream::AmqpStream;
use super::target::{parse_target, Target};
use crate::blocking::stream::Deadline;
use crate::core::amqp::refused_for_user;
use crate::core::redact::redact_url;
use crate::tls::{Tls, TlsCause, TlsMode};
use crate::{Error, Result};
use amiquip::{Auth, Channel, Confirm, Connection, ConnectionOptions, ConnectionTuning, Return};
use crossbeam_channel::{Receiver, RecvTimeoutError};
use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A connection and its channel in confirm mode.
pub(super) struct Session {
    // Field order matters: the channel closes before its connection.
    pub(super) channel: Channel,
    pub(super) confirms: Receiver<Confirm>,
    pub(super) returns: Receiver<Return>,
    pub(super) next_tag: u64,
    /// Exchanges declared on this connection (redeclared after a reconnect).
    pub(super) declared: HashSet<Declared>,
    pub(super) connection: Connection,
    /// The connection's socket (a second handle): shutting it down ends every
    /// blocking call on the connection (see [`Watchdog`]).
    pub(super) socket: TcpStream,
}

/// Ends a blocking amiquip call that outlives its bound. amiquip's calls
/// (handshake, channel open, declarations, close) have no timeout of their own;
/// shutting the connection's socket down makes its I/O thread exit and every
/// pending call return an error.
pub(super) struct Watchdog {
    disarm: Option<crossbeam_channel::Sender<()>>,
    fired: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    /// Fires after `limit`, or as soon as the relay stops when `stop` is given.
    pub(super) fn arm(
        socket: &TcpStream,
        limit: Duration,
        stop: Option<&Deadline>,
    ) -> Result<Watchdog> {
        let unavailable = |e: std::io::Error| Error::unavailable("amqp", e);
        let socket = socket.try_clone().map_err(unavailable)?;
        let (tx, rx) = crossbeam_channel::bounded::<()>(0);
        let fired = Arc::new(AtomicBool::new(false));
        let flag = fired.clone();
        let stop = stop.cloned();
        let end = Instant::now() + limit;
        let thread = std::thread::Builder::new()
            .name("outboxer-amqp-watchdog".into())
            .spawn(move || loop {
                let left = end.saturating_duration_since(Instant::now());
                let step = match stop {
                    Some(_) => left.min(Duration::from_millis(20)),
                    None => left,
                };
                match rx.recv_timeout(step) {
                    Err(RecvTimeoutError::Timeout) => {
                        if Instant::now() >= end || stop.as_ref().is_some_and(Deadline::stopping) {
                            flag.store(true, Ordering::SeqCst);
                            let _ = socket.shutdown(Shutdown::Both);
                            return;
                        }
                    }
                    _ => return, // disarmed
                }
            })
            .map_err(unavailable)?;
        Ok(Watchdog {
            disarm: Some(tx),
            fired,
            thread: Some(thread),
        })
    }

    /// Disarms it; true when it had fired (the socket is shut down).
    pub(super) fn disarm(mut self) -> bool {
        drop(self.disarm.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.fired.load(Ordering::SeqCst)
    }
}

impl Target {
    pub(super) fn unavailable(&self, e: impl std::fmt::Display) -> Error {
        Error::unavailable("amqp", format!("{}: {e}", self.redacted))
    }

    pub(super) fn timed_out(&self, what: &str, deadline: &Deadline) -> Error {
        let why = if deadline.stopping() {
            "abandoned, the relay is stopping"
        } else {
            "no answer in time"
        };
        Error::Timeout(format!("{}: {what}: {why}", self.redacted))
    }

    /// An error of the connection (not of one message): refused credentials and
    /// permissions are [`Error::Unauthorized`], the rest [`Error::Unavailable`].
    pub(super) fn connection_error(&self, e: amiquip::Error) -> Error {
        use amiquip::Error as E;
        let redacted = &self.redacted;
        match &e {
            E::InvalidCredentials => Error::unauthorized(
                "amqp",
                format!("{redacted}: login refused (user name or password)"),
            ),
            E::ServerClosedConnection { code, message }
            | E::ServerClosedChannel { code, message, .. }
                if refused_for_user(*code, message) =>
            {
                Error::unauthorized("amqp", format!("{redacted}: {e}"))
            }
            E::ConnectionTimeout => Error::Timeout(format!(
                "{redacted}: no answer from the broker within the connection timeout"
            )),
            // A setting to fix (CA, host name, a plaintext server), never an outage.
            E::TlsHandshake { .. } => Error::Tls {
                what: "amqp",
                cause: crate::core::tls::classify(&crate::core::tls::chain_text(&e))
                    .unwrap_or(TlsCause::Handshake),
                reason: format!("{redacted}: {e}"),
            },
            _ => self.unavailable(e),
        }
    }
}

/// Connects within `connection_timeout` and the deadline; abandoned when the
/// relay stops. `then` runs on the new connection within the same bound (the
/// stream opens its channel there). Returns the connection, what `then` returned
/// and a second handle on the connection's socket.
fn connect<T>(
    t: &Target,
    deadline: &Deadline,
    then: impl FnOnce(&mut Connection) -> amiquip::Result<T>,
) -> Result<(Connection, T, TcpStream)> {
    let started = Instant::now();
    let bound = t.connect_timeout.min(deadline.remaining());
    let addrs = (t.host.as_str(), t.port)
        .to_socket_addrs()
        .map_err(|e| t.unavailable(format!("resolving host: {e}")))?;
    let mut last = None;
    for addr in addrs {
        let left = bound.saturating_sub(started.elapsed());
        if left.is_zero() || deadline.expired() {
            return Err(t.timed_out("connecting", deadline));
        }
        match TcpStream::connect_timeout(&addr, left) {
            Ok(tcp) => {
                let left = bound.saturating_sub(started.elapsed());
                return handshake(t, tcp, left, deadline, then);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(t.unavailable(match last {
        Some(e) => e.to_string(),
        None => "host resolved to no address".into(),
    }))
}

/// TLS (for `amqps://`) or not, the AMQP handshake and `then` on a connected
/// socket, at most `left`.
fn handshake<T>(
    t: &Target,
    tcp: TcpStream,
    left: Duration,
    deadline: &Deadline,
    then: impl FnOnce(&mut Connection) -> amiquip::Result<T>,
) -> Result<(Connection, T, TcpStream)> {
    // amiquip never sets TCP_NODELAY; without it a confirm round trip
    // waits for delayed ACKs (~33 ms instead of ~1 ms).
    tcp.set_nodelay(true).map_err(|e| t.unavailable(e))?;
    let socket = tcp.try_clone().map_err(|e| t.unavailable(e))?;
    let connector = match t.tls.enabled() {
        true => Some(tls_connector(&t.tls)?),
        false => None,
    };
    let tcp = mio::net::TcpStream::from_stream(tcp).map_err(|e| t.unavailable(e))?;
    let options = ConnectionOptions::<Auth>::default()
        .auth(Auth::Plain {
            username: t.user.clone(),
            password: t.password.clone(),
        })
        .virtual_host(t.vhost.clone())
        .heartbeat(t.heartbeat)
        .connection_timeout(Some(left.max(Duration::from_millis(1))))
        .information(Some("outboxer".into()));
    let dog = Watchdog::arm(&socket, left, Some(deadline))?;
    let first_bytes = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let tuning = ConnectionTuning::default();
    // On an error the connection is dropped (closed) here, while the
    // watchdog still bounds it.
    let opened = match connector {
        // The certificate must name `server_name_indication` when given, else the host.
        Some(c) => Connection::open_tls_stream(
            c,
            t.server_name.as_deref().unwrap_or(&t.host),
            tcp,
            options,
            tuning,
        ),
        None => Connection::insecure_open_stream(
            FirstBytes {
                tcp,
                seen: first_bytes.clone(),
                done: false,
            },
            options,
            tuning,
        ),
    }
    .and_then(|mut connection| {
        let then = then(&mut connection)?;
        Ok((connection, then))
    });
    let fired = dog.disarm();
    match opened {
        Ok((connection, then)) if !fired => Ok((connection, then, socket)),
        Ok(_) => Err(t.timed_out("connecting", deadline)),
        Err(_) if fired => Err(t.timed_out("connecting", deadline)),
        Err(_) if is_tls_record(&first_bytes.lock()) => Err(Error::Tls {
            what: "amqp",
            cause: TlsCause::ServerRequiresTls,
            reason: format!(
                "{}: the server answered the AMQP header with TLS; use amqps://",
                t.redacted
            ),
        }),
        Err(e) => Err(t.connection_error(e)),
    }
}

/// A TLS record's header: content type (alert 21 or handshake 22), major version 3.
fn is_tls_record(b: &[u8]) -> bool {
    matches!(b, [21 | 22, 3, ..])
}

/// The plaintext socket, keeping the first bytes the server sends: a TLS-only
/// port answers the AMQP header with a TLS alert, which amiquip reports as
/// malformed data; those bytes tell [`TlsCause::ServerRequiresTls`] apart.
struct FirstBytes {
    tcp: mio::net::TcpStream,
    seen: Arc<parking_lot::Mutex<Vec<u8>>>,
    done: bool,
}

impl Read for FirstBytes {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.tcp.read(buf)?;
        if !self.done {
            let mut seen = self.seen.lock();
            let take = n.min(3 - seen.len());
            seen.extend_from_slice(&buf[..take]);
            self.done = seen.len() >= 3 || n == 0;
        }
        Ok(n)
    }
}

impl Write for FirstBytes {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.tcp.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.tcp.flush()
    }
}

impl mio::Evented for FirstBytes {
    fn register(
        &self,
        poll: &mio::Poll,
        token: mio::Token,
        interest: mio::Ready,
        opts: mio::PollOpt,
    ) -> std::io::Result<()> {
        self.tcp.register(poll, token, interest, opts)
    }
    fn reregister(
        &self,
        poll: &mio::Poll,
        token: mio::Token,
        interest: mio::Ready,
        opts: mio::PollOpt,
    ) -> std::io::Result<()> {
        self.tcp.reregister(poll, token, interest, opts)
    }
    fn deregister(&self, poll: &mio::Poll) -> std::io::Result<()> {
        self.tcp.deregister(poll)
    }
}

impl amiquip::IoStream for FirstBytes {}

/// The OpenSSL connector (through native-tls, what amiquip takes) for `tls`: the
/// CA file replaces the system's roots, the client certificate is presented, the
/// host name is checked unless [`TlsMode::VerifyCa`], and nothing is verified
/// only with [`Tls::danger_accept_invalid_certificates`]. TLS 1.2 at least.
fn tls_connector(tls: &Tls) -> Result<native_tls::TlsConnector> {
    let read = |field: &'static str, path: &std::path::Path| {
        std::fs::read(path)
            .map_err(|e| Error::config(field, format!("cannot read {}: {e}", path.display())))
    };
    let mut b = native_tls::TlsConnector::builder();
    b.min_protocol_version(Some(native_tls::Protocol::Tlsv12));
    if let Some(ca) = tls.ca_path() {
        let certs = native_tls::Certificate::stack_from_pem(&read("cacertfile", ca)?)
            .map_err(|e| Error::config("cacertfile", format!("{}: {e}", ca.display())))?;
        if certs.is_empty() {
            return Err(Error::config(
                "cacertfile",
                format!("{} holds no certificate", ca.display()),
            ));
        }
        b.disable_built_in_roots(true);
        for c in certs {
            b.add_root_certificate(c);
        }
    }
    if let Some((cert, key)) = tls.client_cert_paths() {
        let identity =
            native_tls::Identity::from_pkcs8(&read("certfile", cert)?, &read("keyfile", key)?)
                .map_err(|e| {
                    Error::config(
                        "keyfile",
                        format!(
                            "{} / {}: {e} (the key must be unencrypted PKCS#8 PEM, \
                             `openssl pkcs8 -topk8 -nocrypt` converts one)",
                            cert.display(),
                            key.display()
                        ),
                    )
                })?;
        b.identity(identity);
    }
    if tls.mode() == TlsMode::VerifyCa {
        b.danger_accept_invalid_hostnames(true);
    }
    if tls.accepts_invalid_certificates() {
        b.danger_accept_invalid_certs(true);
        b.danger_accept_invalid_hostnames(true);
    }
    b.build().map_err(|e| Error::config("tls", e))
}

impl AmqpStream {
    /// The session, connected first if there is none.
    pub(super) fn session(&mut self, deadline: &Deadline) -> Result<&mut Session> {
        if self.session.is_none() {
            let (connection, (channel, confirms, returns), socket) =
                connect(&self.target, deadline, open_confirm_channel)?;
            log::info!("outboxer: connected to {}", self.target.redacted);
            self.session = Some(Session {
                channel,
                confirms,
                returns,
                next_tag: 1,
                declared: HashSet::new(),
                connection,
                socket,
            });
        }
        self.session
            .as_mut()
            .ok_or_else(|| Error::unavailable("amqp", "no session"))
    }

    /// Drops a connection that failed or did not answer in time: its socket is
    /// shut down first, so that closing it cannot wait on a silent broker.
    pub(super) fn drop_session(&mut self, why: &str) {
        if let Some(s) = self.session.take() {
            log::warn!(
                "outboxer: dropping AMQP connection to {}: {why}",
                self.target.redacted
            );
            let _ = s.socket.shutdown(Shutdown::Both);
            drop(s);
        }
    }

    /// Replaces a channel the broker closed, at most `limit`.
    pub(super) fn reopen_channel(&mut self, limit: Duration, deadline: &Deadline) -> Result<()> {
        let opened = {
            let session = self
                .session
                .as_mut()
                .ok_or_else(|| Error::unavailable("amqp", "no session"))?;
            let dog = Watchdog::arm(&session.socket, limit, None)?;
            let opened = open_confirm_channel(&mut session.connection);
            (opened, dog.disarm())
        };
        let (channel, confirms, returns) = match opened {
            (Ok(c), false) => c,
            (_, true) => return Err(self.target.timed_out("reopening the channel", deadline)),
            (Err(e), false) => return Err(self.target.connection_error(e)),
        };
        let session = self
            .session
            .as_mut()
            .ok_or_else(|| Error::unavailable("amqp", "no session"))?;
        // The old channel is closed by the broker already: dropping it does not wait.
        drop(std::mem::replace(&mut session.channel, channel));
        session.confirms = confirms;
        session.returns = returns;
        session.next_tag = 1;
        Ok(())
    }
}

/// Opens an amiquip [`Connection`] to `url` exactly as [`AmqpStream`] opens its own.
///
/// For code that works with the broker next to the stream and must connect the
/// way the stream does: declaring or removing exchanges and queues, a consumer in
/// a test, or a benchmark's raw-publish ceiling (the crate's `examples/bench`
/// measures the stream against this connection, so that the gap it reports is
/// the relay's and not a different socket setup's).
///
/// What it shares with the stream:
/// - the URL is read as [`AmqpStream::builder`] reads it:
///   `amqp://user:password@host:port/vhost` with percent-escapes decoded, user and
///   password `guest` and vhost `/` when absent, the query parameters `heartbeat`
///   (seconds, default 60) and `connection_timeout` (milliseconds, default
///   10 000); `amqps://` connects with TLS, verified, with the TLS parameters
///   described under [`AmqpStream`]'s TLS section;
/// - the TCP socket is opened here with `TCP_NODELAY` and handed to amiquip
///   (`Connection::insecure_open_stream`, or `Connection::open_tls_stream` for
///   `amqps://`): amiquip never sets it, and without it a publisher-confirm round
///   trip waits for delayed ACKs (~33 ms instead of ~1 ms);
/// - resolving, connecting and the AMQP handshake together take at most the
///   URL's `connection_timeout`.
///
/// For a channel in the stream's publishing mode (publisher confirms, returns
/// listened to), call [`open_confirm_channel`] on the connection.
///
/// amiquip 0.4's types are in the signatures of these two functions: to use them,
/// depend on `amiquip = { version = "0.4", default-features = false }`. They
/// belong to the stream's driver and would change with it.
///
/// # Errors
///
/// [`Error::InvalidUrl`] for a URL the stream refuses (the URL is redacted in the
/// error); [`Error::Config`] for a TLS file that cannot be read; [`Error::Tls`]
/// when TLS cannot be set up (its cause named); [`Error::Unauthorized`] when the broker refuses the login or the vhost;
/// [`Error::Timeout`] when it does not answer within the connection timeout;
/// [`Error::Unavailable`] for the rest (unresolvable host, connection refused).
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use outboxer::stream::amqp;
///
/// let mut connection = amqp::open_connection("amqp://guest:guest@127.0.0.1:5672/%2f")?;
/// let (channel, confirms, returns) = amqp::open_confirm_channel(&mut connection)?;
/// // channel.basic_publish(..), then one confirms.recv() per publish; a message
/// // in `returns` was unroutable even when its ack follows.
/// # drop((channel, confirms, returns));
/// connection.close()?;
/// # Ok(()) }
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "amqp")))]
pub fn open_connection(url: &str) -> Result<Connection> {
    let target = parse_target(url).map_err(|reason| Error::InvalidUrl {
        url: redact_url(url),
        reason,
    })?;
    target.tls.check_files("tls")?;
    let deadline = Deadline::after(target.connect_timeout);
    let (connection, (), _socket) = connect(&target, &deadline, |_| Ok(()))?;
    Ok(connection)
}

/// Opens a channel on `connection` in the stream's publishing mode: publisher
/// confirms enabled, and the receivers of its confirms and of its returns
/// (`basic.return`: a `mandatory` message no queue took) registered before the
/// first publish, so that none is missed. Returns `(channel, confirms, returns)`;
/// delivery tags start at 1.
///
/// RabbitMQ sends an unroutable mandatory message back as a return FOLLOWED by an
/// ack: drain `returns` before trusting an ack, as [`AmqpStream`] does. See
/// [`open_connection`] for a connection opened as the stream opens its own.
#[cfg_attr(docsrs, doc(cfg(feature = "amqp")))]
pub fn open_confirm_channel(
    connection: &mut Connection,
) -> amiquip::Result<(Channel, Receiver<Confirm>, Receiver<Return>)> {
    let channel = connection.open_channel(None)?;
    let returns = channel.listen_for_returns()?;
    let confirms = channel.listen_for_publisher_confirms()?;
    channel.enable_publisher_confirms()?;
    Ok((channel, confirms, returns))
}
