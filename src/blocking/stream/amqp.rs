//! AMQP 0-9-1 (RabbitMQ) stream on `amiquip`: publisher confirms, persistent
//! delivery, `mandatory` publishes, exchanges declared once and cached.
//!
//! The routing builders ([`topic`], [`direct`], ...) are available without the
//! `amqp` feature, for services that only enqueue.

pub use crate::core::amqp::{
    direct, fanout, queue, topic, AmqpRoute, ExchangeKind, EXCHANGE_AUTO_DELETE, EXCHANGE_DURABLE,
    EXCHANGE_INTERNAL, EXCHANGE_NAME, EXCHANGE_NO_WAIT, EXCHANGE_TYPE, ROUTING_KEY,
};

use super::Validate;
use crate::core::rows::wire_size;
use crate::message::{Headers, Options};
use crate::{Error, Result};

/// RabbitMQ 3.x refuses messages above `max_message_size`, 128 MiB by default.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 128 * 1024 * 1024;

/// Headers travel in the content header frame, which must fit one frame
/// (amiquip negotiates 128 KiB); keep well below it for the other properties.
pub const MAX_HEADERS_SIZE: usize = 64 * 1024;

/// Checks AMQP options and size at `send`.
#[derive(Clone, Debug)]
pub struct AmqpValidator {
    /// Largest payload plus headers accepted, in bytes.
    pub max_message_size: usize,
}

impl Validate for AmqpValidator {
    fn validate(&self, payload: &[u8], headers: &Headers, options: &Options) -> Result<()> {
        AmqpRoute::parse(options)?;
        // A header the broker cannot take would fail every publish and, counted as a
        // connection failure, be retried forever: refuse it here, as a permanent error.
        if let Some(name) = headers.keys().find(|k| k.len() > 255) {
            return Err(Error::InvalidHeader {
                name: name.chars().take(64).collect(),
                reason: "AMQP header names are at most 255 bytes".into(),
            });
        }
        let headers_size: usize = headers.iter().map(|(k, v)| k.len() + v.len() + 6).sum();
        if headers_size > MAX_HEADERS_SIZE {
            return Err(Error::InvalidHeader {
                name: String::new(),
                reason: format!(
                    "headers take {headers_size} bytes, AMQP allows {MAX_HEADERS_SIZE} (one frame)"
                ),
            });
        }
        let size = wire_size(payload, headers);
        if size > self.max_message_size {
            return Err(Error::PayloadTooLarge {
                size,
                limit: self.max_message_size,
            });
        }
        Ok(())
    }
}

#[cfg(feature = "amqp")]
pub use self::driver::{AmqpStream, AmqpStreamBuilder};

#[cfg(feature = "amqp")]
mod driver {
    use super::*;
    use crate::blocking::stream::{Deadline, Stream};
    use crate::core::amqp::{refused_for_user, Refusal};
    use crate::core::redact::redact_url;
    use crate::message::{StoredMessage, MESSAGE_ID_HEADER};
    use amiquip::{
        AmqpProperties, AmqpValue, Auth, Channel, Confirm, Connection, ConnectionOptions,
        ConnectionTuning, ExchangeDeclareOptions, ExchangeType, FieldTable, Publish, Return,
    };
    use crossbeam_channel::{Receiver, RecvTimeoutError};
    use std::collections::{BTreeMap, HashMap, HashSet};
    use std::net::{Shutdown, TcpStream, ToSocketAddrs};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant, UNIX_EPOCH};

    /// The longest `close()` waits for the broker to acknowledge a graceful close.
    const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

    /// Where and how to connect, parsed from the URL.
    #[derive(Clone)]
    struct Target {
        host: String,
        port: u16,
        user: String,
        password: String,
        vhost: String,
        heartbeat: u16,
        connect_timeout: Duration,
        redacted: String,
    }

    /// Settings of an [`AmqpStream`].
    #[derive(Clone)]
    pub struct AmqpStreamBuilder {
        target: Result<Target, String>,
        raw_redacted: String,
        mandatory: bool,
        confirm_timeout: Duration,
        max_message_size: usize,
    }

    /// Publishes to RabbitMQ (AMQP 0-9-1) with publisher confirms.
    ///
    /// Every message is persistent (delivery mode 2), carries its message id as the
    /// AMQP `message_id` property and as the `outboxer-message-id` header, and is
    /// published `mandatory`: a message no queue receives is a failure, not a drop.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), outboxer::Error> {
    /// use outboxer::stream::AmqpStream;
    /// let stream = AmqpStream::connect("amqp://guest:guest@127.0.0.1:5672/%2f")?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Outcomes
    ///
    /// - Confirmed (acked) and not returned: `Ok`.
    /// - Returned by the broker (`basic.return`: no queue bound for a mandatory
    ///   message): [`Error::Unroutable`], also when its ack followed. Returns are
    ///   collected before every ack is trusted, so a connection lost mid-batch
    ///   never turns a returned message into `Ok`.
    /// - Refused by a channel close: a publish to an exchange that does not exist
    ///   (`amq.*` names are never declared) or is `internal`, a declaration that
    ///   clashes with an existing exchange's type or flags, a body above the broker's
    ///   `max_message_size`: [`Error::Rejected`] for that message (a message failure:
    ///   it counts an attempt and parks after `max_attempts`). The channel is
    ///   reopened and the rest of the batch is published again on it. The culprit
    ///   is the message the broker's reply names (exchange or size): RabbitMQ
    ///   handles a channel's publishes in order and closes the channel at the first
    ///   one it refuses. When the reply names neither, the rest of the batch is
    ///   published one message at a time, so that the next close pins its culprit.
    ///   Messages ahead of the culprit whose confirms had not arrived are published
    ///   again: a consumer may see them twice (at-least-once, de-duplicate by id).
    /// - Login refused, no access to the vhost, or a permission refused to the user
    ///   (`... refused for user ...`): [`Error::Unauthorized`], an outage: the relay
    ///   releases the messages without counting an attempt. A refused write on one
    ///   exchange fails only the messages to that exchange.
    /// - Broker unreachable, connection lost: [`Error::Unavailable`]; no answer in
    ///   time: [`Error::Timeout`] (both transient).
    ///
    /// # Time bounds
    ///
    /// `publish` honours the relay's [`Deadline`]: connecting waits at most the URL's
    /// `connection_timeout` (default 10 s) and is abandoned as soon as the relay
    /// stops; every other answer of the broker (channel open, exchange declaration,
    /// publisher confirms) is awaited at most
    /// [`confirm_timeout`](AmqpStreamBuilder::confirm_timeout); every wait is also
    /// cut at the deadline, and no reconnect or republish starts once it has
    /// passed. A broker that does not answer in time loses its connection (dropped
    /// without a graceful close), and messages without an outcome get a transient
    /// [`Error::Timeout`]. So `Relay::stop()` waits for this stream at most one
    /// confirm timeout (a batch awaiting confirms) plus up to 5 s for a graceful
    /// close of a live connection; a connect in progress ends within ~20 ms.
    pub struct AmqpStream {
        target: Target,
        mandatory: bool,
        confirm_timeout: Duration,
        max_message_size: usize,
        session: Option<Session>,
    }

    struct Session {
        // Field order matters: the channel closes before its connection.
        channel: Channel,
        confirms: Receiver<Confirm>,
        returns: Receiver<Return>,
        next_tag: u64,
        /// Exchanges declared on this connection (redeclared after a reconnect).
        declared: HashSet<Declared>,
        connection: Connection,
        /// The connection's socket (a second handle): shutting it down ends every
        /// blocking call on the connection (see [`Watchdog`]).
        socket: TcpStream,
    }

    impl std::fmt::Debug for AmqpStream {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("AmqpStream")
                .field("url", &self.target.redacted)
                .field("connected", &self.session.is_some())
                .finish()
        }
    }

    /// Ends a blocking amiquip call that outlives its bound. amiquip's calls
    /// (handshake, channel open, declarations, close) have no timeout of their own;
    /// shutting the connection's socket down makes its I/O thread exit and every
    /// pending call return an error.
    struct Watchdog {
        disarm: Option<crossbeam_channel::Sender<()>>,
        fired: Arc<AtomicBool>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl Watchdog {
        /// Fires after `limit`, or as soon as the relay stops when `stop` is given.
        fn arm(socket: &TcpStream, limit: Duration, stop: Option<&Deadline>) -> Result<Watchdog> {
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
                            if Instant::now() >= end
                                || stop.as_ref().is_some_and(Deadline::stopping)
                            {
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
        fn disarm(mut self) -> bool {
            drop(self.disarm.take());
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
            self.fired.load(Ordering::SeqCst)
        }
    }

    fn percent_decode(s: &str) -> Result<String, String> {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' {
                let hex = s
                    .get(i + 1..i + 3)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("bad percent-escape at byte {i}"))?;
                out.push(hex);
                i += 3;
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        String::from_utf8(out).map_err(|_| "percent-escapes are not UTF-8".to_string())
    }

    fn parse_target(raw: &str) -> Result<Target, String> {
        let url = url::Url::parse(raw).map_err(|e| e.to_string())?;
        match url.scheme() {
            "amqp" => {}
            "amqps" => {
                return Err("amqps (TLS) is not supported by this build; use amqp:// on a trusted network or a TLS tunnel".into())
            }
            other => return Err(format!("scheme {other:?} is not amqp")),
        }
        let host = url.host_str().ok_or("no host")?.to_string();
        let user = match url.username() {
            "" => "guest".to_string(),
            u => percent_decode(u)?,
        };
        let password = match url.password() {
            None => "guest".to_string(),
            Some(p) => percent_decode(p)?,
        };
        let vhost = match url.path() {
            "" | "/" => "/".to_string(),
            p => percent_decode(&p[1..])?,
        };
        let mut heartbeat = 60u16;
        let mut connect_timeout = Duration::from_secs(10);
        for (k, v) in url.query_pairs() {
            match k.as_ref() {
                "heartbeat" => {
                    heartbeat = v
                        .parse()
                        .map_err(|_| format!("heartbeat {v:?} is not 0..=65535"))?
                }
                "connection_timeout" => {
                    let ms: u64 = v
                        .parse()
                        .map_err(|_| format!("connection_timeout {v:?} is not milliseconds"))?;
                    if ms == 0 {
                        return Err("connection_timeout must be > 0".into());
                    }
                    connect_timeout = Duration::from_millis(ms);
                }
                other => {
                    return Err(format!(
                        "unknown query parameter {other:?} (known: heartbeat, connection_timeout)"
                    ))
                }
            }
        }
        Ok(Target {
            host,
            port: url.port().unwrap_or(5672),
            user,
            password,
            vhost,
            heartbeat,
            connect_timeout,
            redacted: redact_url(raw),
        })
    }

    impl AmqpStream {
        /// Parses the URL and connects once, so a wrong URL or an absent broker is
        /// reported at start-up. Use [`AmqpStream::builder`] for settings or a lazy connect.
        pub fn connect(url: &str) -> Result<Self> {
            let mut s = Self::builder(url).build()?;
            s.session(&Deadline::after(s.target.connect_timeout))?;
            Ok(s)
        }

        /// A builder; `build()` does not connect (the relay connects on first publish
        /// and reconnects after failures).
        pub fn builder(url: &str) -> AmqpStreamBuilder {
            AmqpStreamBuilder {
                target: parse_target(url),
                raw_redacted: redact_url(url),
                mandatory: true,
                confirm_timeout: Duration::from_secs(15),
                max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            }
        }

        fn unavailable(&self, e: impl std::fmt::Display) -> Error {
            Error::unavailable("amqp", format!("{}: {e}", self.target.redacted))
        }

        fn timed_out(&self, what: &str, deadline: &Deadline) -> Error {
            let why = if deadline.stopping() {
                "abandoned, the relay is stopping"
            } else {
                "no answer in time"
            };
            Error::Timeout(format!("{}: {what}: {why}", self.target.redacted))
        }

        /// An error of the connection (not of one message): refused credentials and
        /// permissions are [`Error::Unauthorized`], the rest [`Error::Unavailable`].
        fn connection_error(&self, e: amiquip::Error) -> Error {
            use amiquip::Error as E;
            let redacted = &self.target.redacted;
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
                _ => self.unavailable(e),
            }
        }

        /// Connects within `connection_timeout` and the deadline; abandoned when the
        /// relay stops.
        fn open(&self, deadline: &Deadline) -> Result<Session> {
            let t = &self.target;
            let started = Instant::now();
            let bound = t.connect_timeout.min(deadline.remaining());
            let addrs = (t.host.as_str(), t.port)
                .to_socket_addrs()
                .map_err(|e| self.unavailable(format!("resolving host: {e}")))?;
            let mut last = None;
            for addr in addrs {
                let left = bound.saturating_sub(started.elapsed());
                if left.is_zero() || deadline.expired() {
                    return Err(self.timed_out("connecting", deadline));
                }
                match TcpStream::connect_timeout(&addr, left) {
                    Ok(tcp) => {
                        let left = bound.saturating_sub(started.elapsed());
                        return self.handshake(tcp, left, deadline);
                    }
                    Err(e) => last = Some(e),
                }
            }
            Err(self.unavailable(match last {
                Some(e) => e.to_string(),
                None => "host resolved to no address".into(),
            }))
        }

        /// AMQP handshake and the first channel on a connected socket, at most `left`.
        fn handshake(
            &self,
            tcp: TcpStream,
            left: Duration,
            deadline: &Deadline,
        ) -> Result<Session> {
            let t = &self.target;
            // amiquip never sets TCP_NODELAY; without it a confirm round trip
            // waits for delayed ACKs (~33 ms instead of ~1 ms).
            tcp.set_nodelay(true).map_err(|e| self.unavailable(e))?;
            let socket = tcp.try_clone().map_err(|e| self.unavailable(e))?;
            let tcp = mio::net::TcpStream::from_stream(tcp).map_err(|e| self.unavailable(e))?;
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
            // On an error the connection is dropped (closed) here, while the
            // watchdog still bounds it.
            let opened =
                Connection::insecure_open_stream(tcp, options, ConnectionTuning::default())
                    .and_then(|mut connection| {
                        let (channel, confirms, returns) = open_channel(&mut connection)?;
                        Ok((connection, channel, confirms, returns))
                    });
            let fired = dog.disarm();
            match opened {
                Ok((connection, channel, confirms, returns)) if !fired => Ok(Session {
                    channel,
                    confirms,
                    returns,
                    next_tag: 1,
                    declared: HashSet::new(),
                    connection,
                    socket,
                }),
                Ok(_) => Err(self.timed_out("connecting", deadline)),
                Err(_) if fired => Err(self.timed_out("connecting", deadline)),
                Err(e) => Err(self.connection_error(e)),
            }
        }

        fn session(&mut self, deadline: &Deadline) -> Result<&mut Session> {
            if self.session.is_none() {
                let s = self.open(deadline)?;
                log::info!("outboxer: connected to {}", self.target.redacted);
                self.session = Some(s);
            }
            self.session
                .as_mut()
                .ok_or_else(|| Error::unavailable("amqp", "no session"))
        }

        /// Drops a connection that failed or did not answer in time: its socket is
        /// shut down first, so that closing it cannot wait on a silent broker.
        fn drop_session(&mut self, why: &str) {
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
        fn reopen_channel(&mut self, limit: Duration, deadline: &Deadline) -> Result<()> {
            let opened = {
                let session = self
                    .session
                    .as_mut()
                    .ok_or_else(|| Error::unavailable("amqp", "no session"))?;
                let dog = Watchdog::arm(&session.socket, limit, None)?;
                let opened = open_channel(&mut session.connection);
                (opened, dog.disarm())
            };
            let (channel, confirms, returns) = match opened {
                (Ok(c), false) => c,
                (_, true) => return Err(self.timed_out("reopening the channel", deadline)),
                (Err(e), false) => return Err(self.connection_error(e)),
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

    fn open_channel(
        connection: &mut Connection,
    ) -> amiquip::Result<(Channel, Receiver<Confirm>, Receiver<Return>)> {
        let channel = connection.open_channel(None)?;
        let returns = channel.listen_for_returns()?;
        let confirms = channel.listen_for_publisher_confirms()?;
        channel.enable_publisher_confirms()?;
        Ok((channel, confirms, returns))
    }

    impl AmqpStreamBuilder {
        /// Publish `mandatory` (default true): unroutable messages fail and are retried
        /// or parked instead of being dropped by the broker.
        pub fn mandatory(mut self, on: bool) -> Self {
            self.mandatory = on;
            self
        }
        /// How long to wait for the broker's confirms of one batch, and for any other
        /// answer while publishing (channel open, exchange declaration); default 15 s.
        /// Every wait is also cut at the relay's publish deadline (the batch's lease,
        /// less a margin). A broker silent for this long loses its connection and the
        /// unconfirmed messages get a transient [`Error::Timeout`].
        ///
        /// This is the bound of `Relay::stop()` for this stream: a batch awaiting
        /// confirms is waited for at most one confirm timeout, then a live
        /// connection is closed gracefully within at most 5 s; a connect in progress
        /// (bounded by the URL's `connection_timeout`, default 10 s) is abandoned at
        /// once. Keep it well below the relay's lease.
        pub fn confirm_timeout(mut self, d: Duration) -> Self {
            self.confirm_timeout = d;
            self
        }
        /// Largest payload plus headers accepted at `send` (default 128 MiB).
        pub fn max_message_size(mut self, bytes: usize) -> Self {
            self.max_message_size = bytes;
            self
        }
        /// Validates the settings; does not connect.
        pub fn build(self) -> Result<AmqpStream> {
            let target = self.target.map_err(|reason| Error::InvalidUrl {
                url: self.raw_redacted.clone(),
                reason,
            })?;
            if self.confirm_timeout.is_zero() || self.confirm_timeout > Duration::from_secs(3600) {
                return Err(Error::config("confirm_timeout", "must be within 1ns..=1h"));
            }
            if self.max_message_size == 0 {
                return Err(Error::config(
                    "max_message_size",
                    "must be greater than zero",
                ));
            }
            Ok(AmqpStream {
                target,
                mandatory: self.mandatory,
                confirm_timeout: self.confirm_timeout,
                max_message_size: self.max_message_size,
                session: None,
            })
        }
    }

    fn exchange_type(k: ExchangeKind) -> ExchangeType {
        match k {
            ExchangeKind::Direct => ExchangeType::Direct,
            ExchangeKind::Fanout => ExchangeType::Fanout,
            ExchangeKind::Topic => ExchangeType::Topic,
            ExchangeKind::Headers => ExchangeType::Headers,
        }
    }

    fn properties(m: &StoredMessage) -> AmqpProperties {
        let mut headers = FieldTable::new();
        for (k, v) in &m.headers {
            headers.insert(k.clone(), AmqpValue::LongString(v.clone()));
        }
        let id = m.message_id.to_string();
        headers.insert(
            MESSAGE_ID_HEADER.to_string(),
            AmqpValue::LongString(id.clone()),
        );
        let ts = m
            .created_at
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        AmqpProperties::default()
            .with_message_id(id)
            .with_delivery_mode(2)
            .with_timestamp(ts)
            .with_headers(headers)
    }

    /// The key under which a declared exchange is cached: name, type and flags.
    type Declared = (String, ExchangeKind, bool, bool, bool);

    fn declared_key(r: &AmqpRoute) -> Declared {
        (
            r.exchange.clone(),
            r.kind,
            r.durable,
            r.auto_delete,
            r.internal,
        )
    }

    /// The state of one `publish` call across its rounds.
    #[derive(Default)]
    struct Attempt {
        /// Publish one message at a time (a close named no culprit).
        one_at_a_time: bool,
        /// Channels the broker closed on a refusal during this call.
        channel_closes: usize,
        /// Connections replaced during this call after a channel close.
        reconnects: usize,
    }

    /// A channel the broker closed while a chunk of the batch was in flight.
    struct Closed {
        code: u16,
        text: String,
        /// Published on that channel and not confirmed, in publish order.
        unconfirmed: Vec<usize>,
    }

    /// The publishes of one chunk awaiting their confirms.
    #[derive(Default)]
    struct InFlight {
        /// Delivery tag -> index in the batch.
        tags: BTreeMap<u64, usize>,
        /// Messages the broker returned (unroutable), by index in the batch.
        returned: HashMap<usize, (u16, String)>,
    }

    impl InFlight {
        /// Applies a confirm. A mandatory message nobody could receive comes back
        /// (basic.return) BEFORE its ack: the returns that arrived first are
        /// collected before the ack is trusted.
        fn settle(
            &mut self,
            confirm: Confirm,
            returns: &Receiver<Return>,
            batch: &[StoredMessage],
            routes: &[Option<AmqpRoute>],
            out: &mut [Option<Result<()>>],
        ) {
            self.collect_returns(returns, batch, routes);
            let (payload, ok) = match confirm {
                Confirm::Ack(p) => (p, true),
                Confirm::Nack(p) => (p, false),
            };
            let tags: Vec<u64> = if payload.multiple {
                self.tags
                    .range(..=payload.delivery_tag)
                    .map(|(t, _)| *t)
                    .collect()
            } else {
                vec![payload.delivery_tag]
            };
            for t in tags {
                if let Some(i) = self.tags.remove(&t) {
                    out[i] = Some(match (ok, self.returned.remove(&i)) {
                        (true, None) => Ok(()),
                        (true, Some((code, text))) => Err(Error::Unroutable { code, text }),
                        (false, _) => Err(Error::Rejected("broker nacked the publish".into())),
                    });
                }
            }
        }

        /// Marks the returned messages. A return names the message id, exchange and
        /// routing key; it can only be for a message not acked yet. When several
        /// unacked messages share all three, all of them are marked (they are
        /// retried: at-least-once), never one that was not returned.
        fn collect_returns(
            &mut self,
            returns: &Receiver<Return>,
            batch: &[StoredMessage],
            routes: &[Option<AmqpRoute>],
        ) {
            for ret in returns.try_iter() {
                let id = ret.properties.message_id().clone();
                let same_id: Vec<usize> = self
                    .tags
                    .values()
                    .copied()
                    .filter(|&i| Some(batch[i].message_id.to_string()) == id)
                    .collect();
                let same_route: Vec<usize> = same_id
                    .iter()
                    .copied()
                    .filter(|&i| {
                        routes[i].as_ref().is_some_and(|r| {
                            r.exchange == ret.exchange && r.routing_key == ret.routing_key
                        })
                    })
                    .collect();
                let hit = if same_route.is_empty() {
                    same_id
                } else {
                    same_route
                };
                if hit.is_empty() {
                    log::warn!(
                        "outboxer: a basic.return (message id {id:?}) matches no message in flight"
                    );
                }
                for i in hit {
                    self.returned
                        .insert(i, (ret.reply_code, ret.reply_text.clone()));
                }
            }
        }
    }

    /// The error a closed channel or connection left for the next call on the channel
    /// (the channel is gone: the call returns at once).
    fn why_closed(channel: &Channel) -> amiquip::Error {
        match channel.qos(0, 0, false) {
            Err(e) => e,
            Ok(()) => amiquip::Error::ClientClosedChannel,
        }
    }

    /// The same failure for another message (an outage hits the rest of the batch).
    fn like(e: &Error) -> Error {
        match e {
            Error::Timeout(r) => Error::Timeout(r.clone()),
            Error::Unauthorized { what, reason } => Error::Unauthorized {
                what,
                reason: reason.clone(),
            },
            Error::Unavailable { what, reason } => Error::Unavailable {
                what,
                reason: reason.clone(),
            },
            other => Error::unavailable("amqp", other),
        }
    }

    impl Stream for AmqpStream {
        fn validator(&self) -> Arc<dyn Validate> {
            Arc::new(AmqpValidator {
                max_message_size: self.max_message_size,
            })
        }

        fn publish(&mut self, batch: &[StoredMessage], deadline: &Deadline) -> Vec<Result<()>> {
            let mut out: Vec<Option<Result<()>>> = (0..batch.len()).map(|_| None).collect();
            let validator = AmqpValidator {
                max_message_size: self.max_message_size,
            };
            let mut routes: Vec<Option<AmqpRoute>> = Vec::with_capacity(batch.len());
            for (i, m) in batch.iter().enumerate() {
                match validator
                    .validate(&m.payload, &m.headers, &m.options)
                    .and_then(|()| AmqpRoute::parse(&m.options))
                {
                    Ok(r) => routes.push(Some(r)),
                    Err(e) => {
                        out[i] = Some(Err(e));
                        routes.push(None);
                    }
                }
            }
            // Each round settles every message, or ends at a channel closed by a
            // refusal having settled at least one message (or switched to one at a
            // time, which then settles one per close).
            let mut attempt = Attempt::default();
            for _ in 0..batch.len() + 4 {
                if out.iter().all(Option::is_some) || deadline.expired() {
                    break;
                }
                if let Err(e) = self.round(batch, &routes, &mut out, deadline, &mut attempt) {
                    self.drop_session(&e.to_string());
                    // While a channel closes, amiquip may drop the rest of a publish it
                    // was writing, and RabbitMQ may then close the whole connection
                    // (505 UNEXPECTED_FRAME): caused by the refusal, not an outage, so
                    // reconnect (once per channel close) and publish the rest again.
                    let caused_by_refusal = attempt.channel_closes > attempt.reconnects
                        && matches!(e, Error::Unavailable { .. });
                    if caused_by_refusal {
                        attempt.reconnects += 1;
                        continue;
                    }
                    for o in out.iter_mut().filter(|o| o.is_none()) {
                        *o = Some(Err(like(&e)));
                    }
                }
            }
            let unsettled = || {
                if deadline.stopping() {
                    Error::Timeout("not published: the relay is stopping".into())
                } else if deadline.expired() {
                    Error::Timeout("not published: the publish deadline passed".into())
                } else {
                    self.unavailable("not published: the broker kept closing the channel")
                }
            };
            out.into_iter()
                .map(|o| o.unwrap_or_else(|| Err(unsettled())))
                .collect()
        }

        fn close(&mut self) {
            if let Some(s) = self.session.take() {
                let Session {
                    channel,
                    connection,
                    socket,
                    ..
                } = s;
                let limit = self.target.connect_timeout.min(CLOSE_TIMEOUT);
                match Watchdog::arm(&socket, limit, None) {
                    Ok(dog) => {
                        let _ = channel.close();
                        let _ = connection.close();
                        dog.disarm();
                    }
                    Err(_) => {
                        // No watchdog: do not risk waiting on a silent broker.
                        let _ = socket.shutdown(Shutdown::Both);
                        drop(channel);
                        drop(connection);
                    }
                }
            }
        }
    }

    impl Drop for AmqpStream {
        fn drop(&mut self) {
            self.close();
        }
    }

    impl AmqpStream {
        /// Connects if needed, declares, publishes what has no outcome yet and awaits
        /// the confirms. Ends early when the broker closes the channel (the culprits
        /// are settled, the channel reopened); `Err` when the connection is unusable.
        fn round(
            &mut self,
            batch: &[StoredMessage],
            routes: &[Option<AmqpRoute>],
            out: &mut [Option<Result<()>>],
            deadline: &Deadline,
            attempt: &mut Attempt,
        ) -> Result<()> {
            self.session(deadline)?;
            self.declare_exchanges(routes, out, deadline, attempt)?;
            let pending: Vec<usize> = (0..batch.len()).filter(|&i| out[i].is_none()).collect();
            let chunks: Vec<&[usize]> = if attempt.one_at_a_time {
                pending.chunks(1).collect()
            } else {
                vec![&pending[..]]
            };
            for chunk in chunks {
                if chunk.is_empty() || deadline.expired() {
                    break;
                }
                if let Some(closed) = self.publish_chunk(batch, routes, chunk, out, deadline)? {
                    let limit = self.confirm_timeout.min(deadline.remaining());
                    attempt.channel_closes += 1;
                    // Settle the culprits first: they keep their outcome even when the
                    // channel cannot be reopened.
                    self.refused(batch, routes, out, closed, &mut attempt.one_at_a_time);
                    self.reopen_channel(limit, deadline)?;
                    return Ok(());
                }
            }
            Ok(())
        }

        /// Publishes `chunk` and awaits its confirms. `Some` when the broker closed
        /// the channel meanwhile.
        fn publish_chunk(
            &mut self,
            batch: &[StoredMessage],
            routes: &[Option<AmqpRoute>],
            chunk: &[usize],
            out: &mut [Option<Result<()>>],
            deadline: &Deadline,
        ) -> Result<Option<Closed>> {
            let mandatory = self.mandatory;
            let wait = self.confirm_timeout.min(deadline.remaining());
            let Some(session) = self.session.as_mut() else {
                return Err(Error::unavailable("amqp", "no session"));
            };
            // Returns of an earlier batch were handled then; anything left is stale.
            while session.returns.try_recv().is_ok() {}
            let mut in_flight = InFlight::default();
            let mut failed = None;
            for &i in chunk {
                let (Some(route), m) = (routes[i].as_ref(), &batch[i]) else {
                    continue;
                };
                let publish =
                    Publish::with_properties(&m.payload, route.routing_key.clone(), properties(m));
                let publish = Publish {
                    mandatory,
                    ..publish
                };
                match session
                    .channel
                    .basic_publish(route.exchange.clone(), publish)
                {
                    Ok(()) => {
                        in_flight.tags.insert(session.next_tag, i);
                        session.next_tag += 1;
                    }
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            if failed.is_some() {
                // The channel or connection is gone; confirms that came before still count.
                for c in session.confirms.try_iter().collect::<Vec<_>>() {
                    in_flight.settle(c, &session.returns, batch, routes, out);
                }
            } else {
                let end = Instant::now() + wait;
                while !in_flight.tags.is_empty() {
                    let left = end.saturating_duration_since(Instant::now());
                    match session.confirms.recv_timeout(left) {
                        Ok(c) => in_flight.settle(c, &session.returns, batch, routes, out),
                        Err(RecvTimeoutError::Timeout) => {
                            return Err(Error::Timeout(format!(
                                "{}: no publisher confirm within {wait:?}",
                                self.target.redacted
                            )))
                        }
                        Err(RecvTimeoutError::Disconnected) => {
                            failed = Some(why_closed(&session.channel));
                            break;
                        }
                    }
                }
            }
            match failed {
                None => Ok(None),
                Some(amiquip::Error::ServerClosedChannel { code, message, .. }) => {
                    Ok(Some(Closed {
                        code,
                        text: message,
                        unconfirmed: in_flight.tags.into_values().collect(),
                    }))
                }
                Some(e) => Err(self.connection_error(e)),
            }
        }

        /// Settles the messages a channel close refused: the ones the broker's reply
        /// names (an exchange, or a body above its size limit), or, in one-at-a-time
        /// mode, the one in flight. When the reply names none, switches to one at a time.
        fn refused(
            &mut self,
            batch: &[StoredMessage],
            routes: &[Option<AmqpRoute>],
            out: &mut [Option<Result<()>>],
            closed: Closed,
            one_at_a_time: &mut bool,
        ) {
            let Closed {
                code,
                text,
                unconfirmed,
            } = closed;
            let outage = refused_for_user(code, &text);
            let refusal = Refusal::parse(code, &text);
            if let Refusal::Exchange {
                name,
                forget_declaration: true,
            } = &refusal
            {
                if let Some(s) = self.session.as_mut() {
                    s.declared.retain(|d| d.0 != *name);
                }
            }
            let mut culprits: Vec<usize> = match &refusal {
                Refusal::Exchange { .. } => (0..batch.len())
                    .filter(|&i| {
                        out[i].is_none()
                            && routes[i]
                                .as_ref()
                                .is_some_and(|r| refusal.names_exchange_of(r))
                    })
                    .collect(),
                // The broker checks the body size; every pending body above it fails.
                Refusal::TooLarge { max } => (0..batch.len())
                    .filter(|&i| out[i].is_none() && batch[i].payload.len() > *max)
                    .collect(),
                Refusal::Unknown => Vec::new(),
            };
            if *one_at_a_time {
                // Only one message was in flight: it caused the close.
                for &i in &unconfirmed {
                    if !culprits.contains(&i) {
                        culprits.push(i);
                    }
                }
            }
            if culprits.is_empty() {
                if outage {
                    // A permission refused without naming the exchange: all of it waits.
                    culprits = (0..batch.len()).filter(|&i| out[i].is_none()).collect();
                } else {
                    log::warn!(
                        "outboxer: {} closed the channel ({code} {text}) naming no message; \
                         publishing the rest of the batch one at a time",
                        self.target.redacted
                    );
                    *one_at_a_time = true;
                    return;
                }
            }
            let reason = format!("broker closed the channel: {code} {text}");
            for i in culprits {
                out[i] = Some(Err(if outage {
                    Error::unauthorized("amqp", &reason)
                } else {
                    Error::Rejected(reason.clone())
                }));
            }
        }

        /// Declares each exchange the pending messages need, once per connection. A
        /// refused declaration (a type or flag clash, a permission) settles the
        /// messages to that exchange and reopens the channel.
        fn declare_exchanges(
            &mut self,
            routes: &[Option<AmqpRoute>],
            out: &mut [Option<Result<()>>],
            deadline: &Deadline,
            attempt: &mut Attempt,
        ) -> Result<()> {
            let mut wanted: Vec<&AmqpRoute> = Vec::new();
            let mut seen = HashSet::new();
            for (i, r) in routes.iter().enumerate() {
                if let (Some(r), None) = (r, &out[i]) {
                    if r.needs_declare() && seen.insert(declared_key(r)) {
                        wanted.push(r);
                    }
                }
            }
            let mut queue: std::collections::VecDeque<AmqpRoute> =
                wanted.into_iter().cloned().collect();
            let mut refusals = 0;
            while let Some(r) = queue.pop_front() {
                let key = declared_key(&r);
                let limit = self.confirm_timeout.min(deadline.remaining());
                let Some(session) = self.session.as_mut() else {
                    return Err(Error::unavailable("amqp", "no session"));
                };
                if session.declared.contains(&key) {
                    continue;
                }
                let opts = ExchangeDeclareOptions {
                    durable: r.durable,
                    auto_delete: r.auto_delete,
                    internal: r.internal,
                    arguments: FieldTable::new(),
                };
                let dog = Watchdog::arm(&session.socket, limit, None)?;
                let res = if r.no_wait {
                    session
                        .channel
                        .exchange_declare_nowait(exchange_type(r.kind), r.exchange.clone(), opts)
                        .map(|_| ())
                } else {
                    session
                        .channel
                        .exchange_declare(exchange_type(r.kind), r.exchange.clone(), opts)
                        .map(|_| ())
                };
                if dog.disarm() {
                    return Err(self.timed_out("declaring an exchange", deadline));
                }
                let (code, message) = match res {
                    Ok(()) => {
                        session.declared.insert(key);
                        continue;
                    }
                    Err(amiquip::Error::ServerClosedChannel { code, message, .. }) => {
                        (code, message)
                    }
                    Err(e) => return Err(self.connection_error(e)),
                };
                attempt.channel_closes += 1;
                refusals += 1;
                if refusals > routes.len() + 1 {
                    return Err(self.unavailable("the broker keeps closing the channel"));
                }
                // A `no_wait` declaration refused earlier surfaces on the next call: the
                // reply names the exchange it is about, which may not be this one.
                let refusal = Refusal::parse(code, &message);
                let named = |route: &AmqpRoute| match &refusal {
                    Refusal::Exchange { .. } => refusal.names_exchange_of(route),
                    _ => declared_key(route) == key,
                };
                let hits: Vec<usize> = (0..routes.len())
                    .filter(|&i| out[i].is_none() && routes[i].as_ref().is_some_and(named))
                    .collect();
                let hits = if hits.is_empty() {
                    (0..routes.len())
                        .filter(|&i| {
                            out[i].is_none()
                                && routes[i].as_ref().map(declared_key).as_ref() == Some(&key)
                        })
                        .collect()
                } else {
                    hits
                };
                let outage = refused_for_user(code, &message);
                let reason = format!("exchange declaration refused: {code} {message}");
                for &i in &hits {
                    if let Some(route) = &routes[i] {
                        session.declared.remove(&declared_key(route));
                    }
                    out[i] = Some(Err(if outage {
                        Error::unauthorized("amqp", &reason)
                    } else {
                        Error::Rejected(reason.clone())
                    }));
                }
                if out.iter().zip(routes).any(|(o, route)| {
                    o.is_none() && route.as_ref().map(declared_key) == Some(key.clone())
                }) {
                    queue.push_front(r); // refused for another exchange: declare it again
                }
                self.reopen_channel(limit, deadline)?;
            }
            Ok(())
        }
    }
}
