//! The one error type of the crate.

use std::fmt;

/// A boxed error from a driver crate (postgres, amiquip, ...), kept as the source.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong in outboxer.
///
/// Errors never carry secrets: URLs are redacted before they are stored here.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A builder or relay setting is out of range (zero interval, empty batch, ...).
    #[error("invalid setting `{field}`: {reason}")]
    Config {
        /// The setting's name, as on the builder.
        field: &'static str,
        /// Why it was refused.
        reason: String,
    },
    /// A table or schema name that is not a plain SQL identifier.
    #[error("invalid identifier {name:?}: {reason}")]
    InvalidIdentifier {
        /// The refused name.
        name: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A message option that is unknown to the stream or has the wrong type or value.
    #[error("invalid option `{key}`: {reason}")]
    InvalidOption {
        /// The option key (Go-compatible name, e.g. `exchange.name`).
        key: String,
        /// Why it was refused.
        reason: String,
    },
    /// A message header the stream cannot carry (name too long, headers too large).
    #[error("invalid header `{name}`: {reason}")]
    InvalidHeader {
        /// The header name (shortened), empty when it is about all headers.
        name: String,
        /// Why it was refused.
        reason: String,
    },
    /// A delivery time ([`Message::delay`](crate::Message::delay),
    /// [`Message::deliver_at`](crate::Message::deliver_at)) that cannot be stored:
    /// before the Unix epoch or further ahead than
    /// [`MAX_DELAY`](crate::MAX_DELAY). Refused at `send`; nothing is stored.
    #[error("invalid delivery time: {reason}")]
    InvalidSchedule {
        /// Why it was refused.
        reason: String,
    },
    /// A connection URL that cannot be used. The URL is shown with its password redacted.
    #[error("invalid url `{url}`: {reason}")]
    InvalidUrl {
        /// The URL, password redacted.
        url: String,
        /// Why it was refused.
        reason: String,
    },
    /// The message is larger than the stream accepts.
    #[error("message too large: {size} bytes, the limit is {limit} bytes")]
    PayloadTooLarge {
        /// Payload plus headers, in bytes.
        size: usize,
        /// The stream's limit, in bytes.
        limit: usize,
    },
    /// The database refused a statement or could not be reached.
    #[error("database error while {context}: {source}")]
    Database {
        /// What outboxer was doing.
        context: &'static str,
        /// The driver's error.
        #[source]
        source: BoxError,
    },
    /// The broker could not be reached or dropped the connection. Messages are retried
    /// without counting an attempt.
    #[error("{what} unavailable: {reason}")]
    Unavailable {
        /// Which server (e.g. `amqp`).
        what: &'static str,
        /// What happened, without secrets.
        reason: String,
    },
    /// The server refused the credentials or the permission (expired token, wrong
    /// secret, missing grant). An outage, not a bad message: the relay releases the
    /// messages without counting an attempt and retries after a backoff, so that
    /// nothing parks while credentials are being fixed.
    #[error("{what} refused the credentials or permission: {reason}")]
    Unauthorized {
        /// Which server (e.g. `sqs`).
        what: &'static str,
        /// What the server said, without secrets.
        reason: String,
    },
    /// TLS could not be set up with the server: its certificate is not trusted or
    /// does not name the host, or one side wants TLS and the other does not. A
    /// setting to fix, never a downgrade to plaintext: `Outbox::start` and the
    /// store builders refuse to go on with it. Should it happen to a running relay
    /// (a certificate rotated badly), the relay treats it as an outage: messages
    /// are released, nothing parks, and it is reported on `err()`.
    #[error("{what}: {cause}: {reason}")]
    Tls {
        /// Which server (e.g. `postgres`, `amqp`).
        what: &'static str,
        /// What is wrong.
        cause: crate::tls::TlsCause,
        /// The TLS library's words, without secrets.
        reason: String,
    },
    /// The broker negatively acknowledged (nacked) the message.
    #[error("broker rejected the message: {0}")]
    Rejected(String),
    /// The broker could not route the message (AMQP `basic.return` of a mandatory publish).
    #[error("message unroutable: {code} {text}")]
    Unroutable {
        /// The broker's reply code (312 NO_ROUTE, ...).
        code: u16,
        /// The broker's reply text.
        text: String,
    },
    /// The broker did not confirm in time, or no pooled database connection came
    /// free in time (`PostgresStoreBuilder::pool_timeout`).
    #[error("timed out: {0}")]
    Timeout(String),
    /// The relay's lease on these rows expired and another relay took them over.
    #[error("lease lost on {count} message(s): another relay owns them now")]
    LeaseLost {
        /// How many rows were not updated.
        count: usize,
    },
    /// `start()` was called while a relay of this outbox is running.
    #[error("the relay of this outbox is already running")]
    AlreadyStarted,
    /// A relay thread panicked (a bug in outboxer or in a user-supplied stream or store).
    #[error("relay thread `{0}` panicked")]
    RelayPanicked(&'static str),
    /// The operating system refused to start a relay thread.
    #[error("cannot start relay thread `{name}`: {reason}")]
    ThreadSpawn {
        /// The thread's role (`claimer`, `publisher`, ...).
        name: &'static str,
        /// The operating system's error.
        reason: String,
    },
    /// [`Message::json`](crate::Message::json) could not serialize the value (a map
    /// with non-string keys, a `Serialize` impl that failed). Nothing was stored.
    #[error("cannot serialize the payload as JSON: {reason}")]
    Serialize {
        /// serde_json's words.
        reason: String,
    },
    /// A consumer-side [`crate::decode`] helper could not read what a stream
    /// delivered: no outboxer message id, a broken wire format, a content type
    /// that is not JSON, or a payload that is not the expected JSON.
    #[error("cannot decode a {stream} delivery ({cause}): {reason}")]
    Undecodable {
        /// The stream (`amqp`, `kafka`, `sqs`, `pubsub`, `kinesis`).
        stream: &'static str,
        /// What is wrong, for code to act on (e.g. dead-letter a foreign message).
        cause: crate::decode::DecodeCause,
        /// The details.
        reason: String,
    },
    /// A stored row could not be decoded (hand-edited or corrupt data).
    #[error("cannot decode stored message {id}: {reason}")]
    Decode {
        /// The row id.
        id: i64,
        /// What is wrong with it.
        reason: String,
    },
}

impl Error {
    /// True for failures of the connection rather than of the message: the relay
    /// releases such messages and retries later without counting an attempt.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Unavailable { .. }
                | Error::Unauthorized { .. }
                | Error::Tls { .. }
                | Error::Timeout(_)
                | Error::Database { .. }
        )
    }

    /// True when retrying the same message can never succeed (bad options, too large).
    /// The relay parks such messages at once.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            Error::InvalidOption { .. }
                | Error::InvalidHeader { .. }
                | Error::PayloadTooLarge { .. }
                | Error::Decode { .. }
                | Error::Serialize { .. }
                | Error::Undecodable { .. }
                | Error::InvalidSchedule { .. }
        )
    }

    pub(crate) fn config(field: &'static str, reason: impl fmt::Display) -> Self {
        Error::Config {
            field,
            reason: reason.to_string(),
        }
    }

    pub(crate) fn option(key: impl Into<String>, reason: impl fmt::Display) -> Self {
        Error::InvalidOption {
            key: key.into(),
            reason: reason.to_string(),
        }
    }

    #[allow(dead_code)] // used by the store drivers, which are behind features
    pub(crate) fn db(context: &'static str, source: impl Into<BoxError>) -> Self {
        Error::Database {
            context,
            source: source.into(),
        }
    }

    #[allow(dead_code)]
    pub(crate) fn unauthorized(what: &'static str, reason: impl fmt::Display) -> Self {
        Error::Unauthorized {
            what,
            reason: reason.to_string(),
        }
    }

    #[allow(dead_code)]
    pub(crate) fn unavailable(what: &'static str, reason: impl fmt::Display) -> Self {
        Error::Unavailable {
            what,
            reason: reason.to_string(),
        }
    }

    /// A TLS failure of `what`, its cause read from the driver's error text; `None`
    /// when the error is not about TLS.
    #[allow(dead_code)]
    pub(crate) fn tls_from(
        what: &'static str,
        e: &(dyn std::error::Error + 'static),
    ) -> Option<Self> {
        let text = crate::core::tls::chain_text(e);
        crate::core::tls::classify(&text).map(|cause| Error::Tls {
            what,
            cause,
            reason: e.to_string(),
        })
    }

    /// A copy of one call's error for each message the call carried (`Error` is not
    /// `Clone`: `Database` holds a driver error). The kind is kept, so an outage
    /// stays an outage; other variants become `Unavailable` under `what` when
    /// transient, else `Rejected` with their text.
    #[allow(dead_code)] // used by the stream drivers, which are behind features
    pub(crate) fn duplicate(&self, what: &'static str) -> Self {
        match self {
            Error::Timeout(t) => Error::Timeout(t.clone()),
            Error::Unavailable { what, reason } => Error::Unavailable {
                what,
                reason: reason.clone(),
            },
            Error::Unauthorized { what, reason } => Error::Unauthorized {
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
            Error::Rejected(r) => Error::Rejected(r.clone()),
            Error::Config { field, reason } => Error::Config {
                field,
                reason: reason.clone(),
            },
            other if other.is_transient() => Error::unavailable(what, other),
            other => Error::Rejected(format!("{what}: {other}")),
        }
    }
}

#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
impl From<postgres::Error> for Error {
    fn from(e: postgres::Error) -> Self {
        Error::db("running a statement", e)
    }
}

/// `?` on sqlx calls inside [`crate::async_impl::Outbox::transaction`].
#[cfg(feature = "_sqlx")]
impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        Error::db("running a statement", e)
    }
}

/// `Result` with outboxer's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
