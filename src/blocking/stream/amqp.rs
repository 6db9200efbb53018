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
    use crate::blocking::stream::Stream;
    use crate::core::redact::redact_url;
    use crate::message::{StoredMessage, MESSAGE_ID_HEADER};
    use amiquip::{
        AmqpProperties, AmqpValue, Auth, Channel, Confirm, Connection, ConnectionOptions,
        ConnectionTuning, ExchangeDeclareOptions, ExchangeType, FieldTable, Publish, Return,
    };
    use crossbeam_channel::{Receiver, RecvTimeoutError};
    use std::collections::{BTreeMap, HashMap, HashSet};
    use std::net::ToSocketAddrs;
    use std::sync::Arc;
    use std::time::{Duration, Instant, UNIX_EPOCH};

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
    }

    impl std::fmt::Debug for AmqpStream {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("AmqpStream")
                .field("url", &self.target.redacted)
                .field("connected", &self.session.is_some())
                .finish()
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
            s.session()?;
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

        fn open(&self) -> Result<Session> {
            let t = &self.target;
            let addrs = (t.host.as_str(), t.port)
                .to_socket_addrs()
                .map_err(|e| self.unavailable(format!("resolving host: {e}")))?;
            let mut last = None;
            for addr in addrs {
                match std::net::TcpStream::connect_timeout(&addr, t.connect_timeout) {
                    Ok(tcp) => {
                        // amiquip never sets TCP_NODELAY; without it a confirm round trip
                        // waits for delayed ACKs (~33 ms instead of ~1 ms).
                        tcp.set_nodelay(true).map_err(|e| self.unavailable(e))?;
                        let tcp = mio::net::TcpStream::from_stream(tcp)
                            .map_err(|e| self.unavailable(e))?;
                        let options = ConnectionOptions::<Auth>::default()
                            .auth(Auth::Plain {
                                username: t.user.clone(),
                                password: t.password.clone(),
                            })
                            .virtual_host(t.vhost.clone())
                            .heartbeat(t.heartbeat)
                            .connection_timeout(Some(t.connect_timeout))
                            .information(Some("outboxer".into()));
                        let mut connection = Connection::insecure_open_stream(
                            tcp,
                            options,
                            ConnectionTuning::default(),
                        )
                        .map_err(|e| self.unavailable(e))?;
                        let (channel, confirms, returns) =
                            open_channel(&mut connection).map_err(|e| self.unavailable(e))?;
                        return Ok(Session {
                            channel,
                            confirms,
                            returns,
                            next_tag: 1,
                            declared: HashSet::new(),
                            connection,
                        });
                    }
                    Err(e) => last = Some(e),
                }
            }
            Err(self.unavailable(match last {
                Some(e) => e.to_string(),
                None => "host resolved to no address".into(),
            }))
        }

        fn session(&mut self) -> Result<&mut Session> {
            if self.session.is_none() {
                let s = self.open()?;
                log::info!("outboxer: connected to {}", self.target.redacted);
                self.session = Some(s);
            }
            self.session
                .as_mut()
                .ok_or_else(|| Error::unavailable("amqp", "no session"))
        }

        fn drop_session(&mut self, why: &str) {
            if let Some(s) = self.session.take() {
                log::warn!(
                    "outboxer: dropping AMQP connection to {}: {why}",
                    self.target.redacted
                );
                let Session {
                    channel,
                    connection,
                    ..
                } = s;
                drop(channel);
                drop(connection);
            }
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
        /// How long to wait for the broker's confirms of one batch (default 15 s).
        /// Keep it well below the relay's lease.
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

    impl Stream for AmqpStream {
        fn validator(&self) -> Arc<dyn Validate> {
            Arc::new(AmqpValidator {
                max_message_size: self.max_message_size,
            })
        }

        fn publish(
            &mut self,
            batch: &[StoredMessage],
            _deadline: &crate::blocking::stream::Deadline,
        ) -> Vec<Result<()>> {
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
            if let Err(e) = self.publish_routed(batch, &routes, &mut out) {
                let why = e.to_string();
                self.drop_session(&why);
                for o in out.iter_mut().filter(|o| o.is_none()) {
                    *o = Some(Err(Error::unavailable("amqp", &why)));
                }
            }
            out.into_iter()
                .map(|o| o.unwrap_or_else(|| Err(Error::unavailable("amqp", "not published"))))
                .collect()
        }

        fn close(&mut self) {
            if let Some(s) = self.session.take() {
                let Session {
                    channel,
                    connection,
                    ..
                } = s;
                let _ = channel.close();
                let _ = connection.close();
            }
        }
    }

    impl AmqpStream {
        /// Declares, publishes and awaits confirms. An `Err` means the connection is
        /// unusable: every message without an outcome yet gets a transient error.
        fn publish_routed(
            &mut self,
            batch: &[StoredMessage],
            routes: &[Option<AmqpRoute>],
            out: &mut [Option<Result<()>>],
        ) -> Result<()> {
            self.declare_exchanges(routes, out)?;
            let mandatory = self.mandatory;
            let timeout = self.confirm_timeout;
            let session = self.session()?;
            // Returns of an earlier batch were handled then; anything left is stale.
            while session.returns.try_recv().is_ok() {}
            let mut by_tag: BTreeMap<u64, usize> = BTreeMap::new();
            let mut by_id: HashMap<String, usize> = HashMap::new();
            for (i, m) in batch.iter().enumerate() {
                let Some(route) = routes[i].as_ref().filter(|_| out[i].is_none()) else {
                    continue;
                };
                let publish =
                    Publish::with_properties(&m.payload, route.routing_key.clone(), properties(m));
                let publish = Publish {
                    mandatory,
                    ..publish
                };
                session
                    .channel
                    .basic_publish(route.exchange.clone(), publish)
                    .map_err(|e| Error::unavailable("amqp", e))?;
                by_tag.insert(session.next_tag, i);
                by_id.insert(m.message_id.to_string(), i);
                session.next_tag += 1;
            }
            let deadline = Instant::now() + timeout;
            while let Some((&first, _)) = by_tag.first_key_value() {
                let left = deadline.saturating_duration_since(Instant::now());
                let confirm = match session.confirms.recv_timeout(left) {
                    Ok(c) => c,
                    Err(RecvTimeoutError::Timeout) => {
                        for i in by_tag.into_values() {
                            out[i] = Some(Err(Error::Timeout(format!(
                                "no publisher confirm within {timeout:?}"
                            ))));
                        }
                        return Err(Error::Timeout("publisher confirms".into()));
                    }
                    Err(RecvTimeoutError::Disconnected) => {
                        return Err(Error::unavailable(
                            "amqp",
                            "connection closed while awaiting confirms",
                        ))
                    }
                };
                let (payload, ok) = match confirm {
                    Confirm::Ack(p) => (p, true),
                    Confirm::Nack(p) => (p, false),
                };
                let tags: Vec<u64> = if payload.multiple {
                    by_tag
                        .range(first..=payload.delivery_tag)
                        .map(|(t, _)| *t)
                        .collect()
                } else {
                    vec![payload.delivery_tag]
                };
                for t in tags {
                    if let Some(i) = by_tag.remove(&t) {
                        out[i] = Some(if ok {
                            Ok(())
                        } else {
                            Err(Error::Rejected("broker nacked the publish".into()))
                        });
                    }
                }
            }
            // A mandatory message nobody could receive comes back as basic.return
            // BEFORE its ack: the ack alone does not mean delivered.
            while let Ok(ret) = session.returns.try_recv() {
                let idx = ret
                    .properties
                    .message_id()
                    .as_ref()
                    .and_then(|id| by_id.get(id));
                if let Some(&i) = idx {
                    out[i] = Some(Err(Error::Unroutable {
                        code: ret.reply_code,
                        text: ret.reply_text,
                    }));
                }
            }
            Ok(())
        }

        /// Declares each exchange of the batch once per connection. A refused
        /// declaration (e.g. a type clash) fails its messages and reopens the channel.
        fn declare_exchanges(
            &mut self,
            routes: &[Option<AmqpRoute>],
            out: &mut [Option<Result<()>>],
        ) -> Result<()> {
            let mut wanted: Vec<&AmqpRoute> = Vec::new();
            let mut seen = HashSet::new();
            for r in routes.iter().flatten() {
                if r.needs_declare() && seen.insert(declared_key(r)) {
                    wanted.push(r);
                }
            }
            if wanted.is_empty() {
                return Ok(());
            }
            for r in wanted {
                let key = declared_key(r);
                let session = self.session()?;
                if session.declared.contains(&key) {
                    continue;
                }
                let opts = ExchangeDeclareOptions {
                    durable: r.durable,
                    auto_delete: r.auto_delete,
                    internal: r.internal,
                    arguments: FieldTable::new(),
                };
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
                match res {
                    Ok(()) => {
                        session.declared.insert(key);
                    }
                    Err(amiquip::Error::ServerClosedChannel { code, message, .. }) => {
                        for (i, route) in routes.iter().enumerate() {
                            if route.as_ref().map(declared_key).as_ref() == Some(&key) {
                                out[i] = Some(Err(Error::Rejected(format!(
                                    "exchange {:?} declaration refused: {code} {message}",
                                    r.exchange
                                ))));
                            }
                        }
                        let session = self.session()?;
                        let (channel, confirms, returns) = open_channel(&mut session.connection)
                            .map_err(|e| Error::unavailable("amqp", e))?;
                        session.channel = channel;
                        session.confirms = confirms;
                        session.returns = returns;
                        session.next_tag = 1;
                    }
                    Err(e) => return Err(Error::unavailable("amqp", e)),
                }
            }
            Ok(())
        }
    }
}
