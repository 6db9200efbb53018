//! The stream: its settings, `publish` round by round, and closing.

use super::connection::{Session, Watchdog};
use super::target::{parse_target, Target};
use super::{AmqpRoute, AmqpValidator, DEFAULT_MAX_MESSAGE_SIZE};
use crate::blocking::stream::{Deadline, Stream, Validate};
use crate::core::redact::redact_url;
use crate::message::StoredMessage;
use crate::tls::Tls;
use crate::{Error, Result};
use std::net::Shutdown;
use std::sync::Arc;
use std::time::Duration;

/// The longest `close()` waits for the broker to acknowledge a graceful close.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Settings of an [`AmqpStream`].
#[derive(Clone)]
#[cfg_attr(docsrs, doc(cfg(feature = "amqp")))]
pub struct AmqpStreamBuilder {
    target: Result<Target, String>,
    raw_redacted: String,
    mandatory: bool,
    confirm_timeout: Duration,
    max_message_size: usize,
    tls: Option<Tls>,
    server_name: Option<String>,
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
/// - TLS cannot be set up (see below): [`Error::Tls`]; `Outbox::start` refuses to
///   start on it (it connects through [`Stream::connect`]).
///
/// # TLS
///
/// `amqps://` connects with TLS (port 5671 by default), verifying the broker's
/// certificate chain **and** its host name, with RabbitMQ's URI query
/// parameters: `cacertfile=<PEM>` (trusted instead of the system's roots),
/// `certfile=<PEM>&keyfile=<PKCS#8 PEM>` (a client certificate, mutual TLS),
/// `server_name_indication=<name>` (the name checked, e.g. when the URL's host
/// is an address), `verify=verify_peer` (the default; `verify_none` is refused).
/// Verification is turned off only by `danger_accept_invalid_certs=true`, or
/// [`Tls::danger_accept_invalid_certificates`] given to
/// [`tls`](AmqpStreamBuilder::tls). An `amqp://` URL with a TLS parameter is
/// refused, never connected in plaintext. TLS is OpenSSL's (through native-tls,
/// amiquip's TLS), at least TLS 1.2.
///
/// ```no_run
/// # fn main() -> Result<(), outboxer::Error> {
/// use outboxer::stream::AmqpStream;
/// let stream = AmqpStream::connect(
///     "amqps://app:secret@rabbit.internal/%2f?cacertfile=/etc/ssl/certs/rabbit-ca.pem",
/// )?;
/// # Ok(()) }
/// ```
///
/// A failure is [`Error::Tls`] naming its [`TlsCause`](crate::tls::TlsCause):
/// `CertificateNotTrusted` (wrong CA), `HostnameMismatch`, `ServerWithoutTls`
/// (`amqps://` to a plaintext port), `ServerRequiresTls` (`amqp://` to a TLS
/// port). A running relay treats one as an outage (released, never parked).
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
#[cfg_attr(docsrs, doc(cfg(feature = "amqp")))]
pub struct AmqpStream {
    pub(super) target: Target,
    pub(super) mandatory: bool,
    pub(super) confirm_timeout: Duration,
    pub(super) max_message_size: usize,
    pub(super) session: Option<Session>,
}

impl std::fmt::Debug for AmqpStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpStream")
            .field("url", &self.target.redacted)
            .field("connected", &self.session.is_some())
            .finish()
    }
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
            tls: None,
            server_name: None,
        }
    }
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
    /// TLS settings in code, in place of the URL's TLS query parameters (its
    /// scheme must agree: an enabled [`Tls`] needs `amqps://`, [`Tls::disabled`]
    /// needs `amqp://`). [`TlsMode::VerifyFull`](crate::tls::TlsMode::VerifyFull)
    /// checks the chain and the host name, `VerifyCa` the chain only.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), outboxer::Error> {
    /// use outboxer::stream::AmqpStream;
    /// use outboxer::tls::Tls;
    /// let stream = AmqpStream::builder("amqps://app:secret@rabbit.internal/%2f")
    ///     .tls(
    ///         Tls::verify_full()
    ///             .ca_file("/etc/ssl/certs/rabbit-ca.pem")
    ///             .client_cert("/etc/outboxer/client.pem", "/etc/outboxer/client.key"),
    ///     )
    ///     .build()?;
    /// # Ok(()) }
    /// ```
    pub fn tls(mut self, tls: Tls) -> Self {
        self.tls = Some(tls);
        self
    }
    /// The name the broker's certificate must carry when it is not the URL's host
    /// (the URL's `server_name_indication`), e.g. a broker reached by an address.
    pub fn tls_server_name(mut self, name: &str) -> Self {
        self.server_name = Some(name.to_string());
        self
    }
    /// Validates the settings (and reads the TLS files); does not connect.
    pub fn build(self) -> Result<AmqpStream> {
        let mut target = self.target.map_err(|reason| Error::InvalidUrl {
            url: self.raw_redacted.clone(),
            reason,
        })?;
        if let Some(tls) = self.tls {
            let secure = target.tls.enabled();
            if tls.enabled() && !secure {
                return Err(Error::config(
                    "tls",
                    "TLS settings for an amqp:// (plaintext) URL: use amqps://",
                ));
            }
            if !tls.enabled() && secure {
                return Err(Error::config(
                    "tls",
                    "Tls::disabled() for an amqps:// URL: use amqp:// for plaintext",
                ));
            }
            target.tls = tls;
        }
        if let Some(name) = self.server_name {
            if !target.tls.enabled() {
                return Err(Error::config(
                    "tls_server_name",
                    "a TLS server name for an amqp:// (plaintext) URL: use amqps://",
                ));
            }
            target.server_name = Some(name);
        }
        target.tls.check_files("tls")?;
        if target.tls.accepts_invalid_certificates() {
            log::warn!(
                "outboxer: TLS verification is OFF for {} (danger_accept_invalid_certs): \
                 anyone on the path can read and change the traffic",
                target.redacted
            );
        }
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

/// The state of one `publish` call across its rounds.
#[derive(Default)]
pub(super) struct Attempt {
    /// Publish one message at a time (a close named no culprit).
    pub(super) one_at_a_time: bool,
    /// Channels the broker closed on a refusal during this call.
    pub(super) channel_closes: usize,
    /// Connections replaced during this call after a channel close.
    pub(super) reconnects: usize,
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
        Error::Tls {
            what,
            cause,
            reason,
        } => Error::Tls {
            what,
            cause: *cause,
            reason: reason.clone(),
        },
        other => Error::unavailable("amqp", other),
    }
}

impl Stream for AmqpStream {
    fn name(&self) -> &str {
        "amqp"
    }

    fn route_label<'a>(&self, options: &'a crate::message::Options) -> Option<&'a str> {
        crate::blocking::stream::route_option(options, crate::core::amqp::EXCHANGE_NAME)
    }

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
                self.target
                    .unavailable("not published: the broker kept closing the channel")
            }
        };
        out.into_iter()
            .map(|o| o.unwrap_or_else(|| Err(unsettled())))
            .collect()
    }

    /// Connects and opens the confirm channel, so that `Outbox::start` refuses a
    /// TLS mistake at once (a broker that is merely down lets the relay start and
    /// retry).
    fn connect(&mut self) -> Result<()> {
        self.session(&Deadline::after(self.target.connect_timeout))
            .map(|_| ())
    }

    /// Connects if there is no connection, then a passive declare of
    /// `amq.direct` (which exists on every vhost and needs no permission): one
    /// round trip that fails on a connection the broker closed or a silent one.
    fn check(&mut self, deadline: &Deadline) -> Option<Result<()>> {
        Some(self.check_connection(deadline))
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
    /// [`Stream::check`]: connects if needed, then the passive declare.
    fn check_connection(&mut self, deadline: &Deadline) -> Result<()> {
        let limit = self.confirm_timeout.min(deadline.remaining());
        let session = self.session(deadline)?;
        let dog = Watchdog::arm(&session.socket, limit, Some(deadline))?;
        let res = session.channel.exchange_declare_passive("amq.direct");
        if dog.disarm() {
            let e = self.target.timed_out("checking the connection", deadline);
            self.drop_session(&e.to_string());
            return Err(e);
        }
        match res {
            Ok(_) => Ok(()),
            Err(e) => {
                let e = self.target.connection_error(e);
                self.drop_session(&e.to_string());
                Err(e)
            }
        }
    }

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
}
