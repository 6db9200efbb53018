//! AMQP routing options: Go-compatible keys, typed builders, validation.

use crate::core::options::{reject_unknown, string};
use crate::message::Options;
use crate::{Error, Result};
use serde_json::Value;

/// Go key: exchange name (absent or empty = the default exchange).
pub const EXCHANGE_NAME: &str = "exchange.name";
/// Go key: exchange type (`topic` by default).
pub const EXCHANGE_TYPE: &str = "exchange.type";
/// Go key: durable exchange (default true).
pub const EXCHANGE_DURABLE: &str = "exchange.durable";
/// Go key: auto-delete exchange (default false).
pub const EXCHANGE_AUTO_DELETE: &str = "exchange.auto_delete";
/// Go key: internal exchange (default false).
pub const EXCHANGE_INTERNAL: &str = "exchange.internal";
/// Go key: declare without waiting for the broker's answer (default false).
pub const EXCHANGE_NO_WAIT: &str = "exchange.no_wait";
/// Go key: routing key.
pub const ROUTING_KEY: &str = "routing_key";

const KEYS: [&str; 7] = [
    EXCHANGE_NAME,
    EXCHANGE_TYPE,
    EXCHANGE_DURABLE,
    EXCHANGE_AUTO_DELETE,
    EXCHANGE_INTERNAL,
    EXCHANGE_NO_WAIT,
    ROUTING_KEY,
];

/// AMQP exchange types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExchangeKind {
    /// `direct`
    Direct,
    /// `fanout`
    Fanout,
    /// `topic` (the Go default)
    Topic,
    /// `headers`
    Headers,
}

impl ExchangeKind {
    /// The AMQP name of the type.
    pub fn as_str(&self) -> &'static str {
        match self {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Fanout => "fanout",
            ExchangeKind::Topic => "topic",
            ExchangeKind::Headers => "headers",
        }
    }
}

/// Where an AMQP message goes: an exchange (declared once, then cached) and a routing key.
///
/// ```
/// use outboxer::stream::amqp;
/// let route = amqp::topic("orders", "orders.paid").durable(true);
/// let options: outboxer::Options = route.into();
/// assert_eq!(options["exchange.type"], "topic");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AmqpRoute {
    /// Exchange name; empty for the default exchange.
    pub exchange: String,
    /// Exchange type.
    pub kind: ExchangeKind,
    /// Durable exchange.
    pub durable: bool,
    /// Auto-delete exchange.
    pub auto_delete: bool,
    /// Internal exchange.
    pub internal: bool,
    /// Declare without waiting.
    pub no_wait: bool,
    /// Routing key.
    pub routing_key: String,
}

fn route(exchange: &str, kind: ExchangeKind, routing_key: &str) -> AmqpRoute {
    AmqpRoute {
        exchange: exchange.to_string(),
        kind,
        durable: true,
        auto_delete: false,
        internal: false,
        no_wait: false,
        routing_key: routing_key.to_string(),
    }
}

/// A durable topic exchange and a routing key (Go's default exchange type).
pub fn topic(exchange: &str, routing_key: &str) -> AmqpRoute {
    route(exchange, ExchangeKind::Topic, routing_key)
}
/// A durable direct exchange and a routing key.
pub fn direct(exchange: &str, routing_key: &str) -> AmqpRoute {
    route(exchange, ExchangeKind::Direct, routing_key)
}
/// A durable fanout exchange.
pub fn fanout(exchange: &str) -> AmqpRoute {
    route(exchange, ExchangeKind::Fanout, "")
}
/// Straight to a queue through the default exchange.
pub fn queue(name: &str) -> AmqpRoute {
    route("", ExchangeKind::Direct, name)
}

impl AmqpRoute {
    /// Sets `exchange.durable`.
    pub fn durable(mut self, v: bool) -> Self {
        self.durable = v;
        self
    }
    /// Sets `exchange.auto_delete`.
    pub fn auto_delete(mut self, v: bool) -> Self {
        self.auto_delete = v;
        self
    }
    /// Sets `exchange.internal`.
    pub fn internal(mut self, v: bool) -> Self {
        self.internal = v;
        self
    }
    /// Sets `exchange.no_wait`.
    pub fn no_wait(mut self, v: bool) -> Self {
        self.no_wait = v;
        self
    }

    /// True when the exchange must be declared (not the default or a built-in `amq.*` one).
    pub fn needs_declare(&self) -> bool {
        !self.exchange.is_empty() && !self.exchange.starts_with("amq.")
    }

    /// Reads and validates the Go-compatible options of a message.
    pub fn parse(options: &Options) -> Result<Self> {
        reject_unknown(options, &KEYS, "AMQP")?;
        let exchange = string(options, EXCHANGE_NAME)?.unwrap_or_default();
        check_short_str(EXCHANGE_NAME, &exchange)?;
        if !exchange
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
        {
            return Err(Error::option(
                EXCHANGE_NAME,
                "only letters, digits, '-', '_', '.' and ':' are allowed",
            ));
        }
        let kind = match string(options, EXCHANGE_TYPE)?.as_deref() {
            None | Some("topic") => ExchangeKind::Topic,
            Some("direct") => ExchangeKind::Direct,
            Some("fanout") => ExchangeKind::Fanout,
            Some("headers") => ExchangeKind::Headers,
            Some(other) => {
                return Err(Error::option(
                    EXCHANGE_TYPE,
                    format!("{other:?} is not one of topic, direct, fanout, headers"),
                ))
            }
        };
        let routing_key = string(options, ROUTING_KEY)?.unwrap_or_default();
        check_short_str(ROUTING_KEY, &routing_key)?;
        Ok(AmqpRoute {
            exchange,
            kind,
            durable: boolean(options, EXCHANGE_DURABLE)?.unwrap_or(true),
            auto_delete: boolean(options, EXCHANGE_AUTO_DELETE)?.unwrap_or(false),
            internal: boolean(options, EXCHANGE_INTERNAL)?.unwrap_or(false),
            no_wait: boolean(options, EXCHANGE_NO_WAIT)?.unwrap_or(false),
            routing_key,
        })
    }
}

impl From<AmqpRoute> for Options {
    fn from(r: AmqpRoute) -> Options {
        let mut o = Options::new();
        if !r.exchange.is_empty() {
            o.insert(EXCHANGE_NAME.into(), Value::from(r.exchange));
            o.insert(EXCHANGE_TYPE.into(), Value::from(r.kind.as_str()));
            o.insert(EXCHANGE_DURABLE.into(), Value::from(r.durable));
            if r.auto_delete {
                o.insert(EXCHANGE_AUTO_DELETE.into(), Value::from(true));
            }
            if r.internal {
                o.insert(EXCHANGE_INTERNAL.into(), Value::from(true));
            }
            if r.no_wait {
                o.insert(EXCHANGE_NO_WAIT.into(), Value::from(true));
            }
        }
        o.insert(ROUTING_KEY.into(), Value::from(r.routing_key));
        o
    }
}

/// What a channel close by the broker says about the publish that caused it.
///
/// RabbitMQ processes a channel's publishes in order and closes the channel at the
/// first one it refuses; its reply text names the exchange or the size limit.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(not(feature = "amqp"), allow(dead_code))]
pub(crate) enum Refusal {
    /// The named exchange refuses publishes: missing (404), internal or a write
    /// permission refused (403), or a declaration that clashes with it (406).
    Exchange {
        /// The exchange, as named in the reply (`amq.default` is the default exchange).
        name: String,
        /// The cached declaration of the exchange is stale (missing or clashing).
        forget_declaration: bool,
    },
    /// The message body is larger than the broker's `max_message_size`.
    TooLarge {
        /// The broker's limit, in bytes.
        max: usize,
    },
    /// The reply names neither: the culprit is found by publishing one at a time.
    Unknown,
}

#[cfg_attr(not(feature = "amqp"), allow(dead_code))]
impl Refusal {
    /// Reads a channel close (`code`, reply text).
    pub(crate) fn parse(code: u16, text: &str) -> Refusal {
        if code == 406 {
            // "PRECONDITION_FAILED - message size 3145728 is larger than configured max size 2097152"
            if let Some(max) = text
                .split_once("max size ")
                .and_then(|(_, rest)| rest.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|n| n.parse().ok())
            {
                return Refusal::TooLarge { max };
            }
        }
        if !matches!(code, 403..=406) {
            return Refusal::Unknown;
        }
        // "NOT_FOUND - no exchange 'x' in vhost '/'", "ACCESS_REFUSED - cannot publish to
        // internal exchange 'x' ...", "... write access to exchange 'x' in vhost '/' refused
        // for user 'u'", "PRECONDITION_FAILED - inequivalent arg 'type' for exchange 'x' ...".
        // Exchange names never contain a quote (see `AmqpRoute::parse`).
        match text
            .split_once("exchange '")
            .and_then(|(_, rest)| rest.split_once('\''))
        {
            Some((name, _)) => Refusal::Exchange {
                name: name.to_string(),
                forget_declaration: code == 404
                    || (code == 406 && text.contains("inequivalent arg")),
            },
            None => Refusal::Unknown,
        }
    }

    /// True when `route` goes to the exchange this refusal names.
    pub(crate) fn names_exchange_of(&self, route: &AmqpRoute) -> bool {
        match self {
            Refusal::Exchange { name, .. } => {
                *name == route.exchange || (name == "amq.default" && route.exchange.is_empty())
            }
            _ => false,
        }
    }
}

/// True when a close (of the channel or the connection) refuses the user, not the
/// message: login, vhost access or a permission. An outage for the operator to fix.
#[cfg_attr(not(feature = "amqp"), allow(dead_code))]
pub(crate) fn refused_for_user(code: u16, text: &str) -> bool {
    matches!(code, 403 | 530)
        && (text.contains("refused for user") || text.contains("Login was refused"))
}

fn check_short_str(key: &str, v: &str) -> Result<()> {
    if v.len() > 255 {
        return Err(Error::option(key, "longer than 255 bytes"));
    }
    Ok(())
}

fn boolean(options: &Options, key: &str) -> Result<Option<bool>> {
    match options.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        // Rows written by hand in SQL often carry "true"/"false" strings.
        Some(Value::String(s)) if s == "true" => Ok(Some(true)),
        Some(Value::String(s)) if s == "false" => Ok(Some(false)),
        Some(other) => Err(Error::option(
            key,
            format!("expected a boolean, got {other}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn opts(v: serde_json::Value) -> Options {
        serde_json::from_value(v).expect("object")
    }

    #[test]
    fn go_keys_round_trip() {
        let r = topic("orders", "orders.paid").auto_delete(true);
        let parsed = AmqpRoute::parse(&r.clone().into()).expect("valid");
        assert_eq!(parsed, r);
        let go = opts(
            json!({"exchange.name": "test", "exchange.type": "topic", "routing_key": "test.send"}),
        );
        let parsed = AmqpRoute::parse(&go).expect("valid");
        assert!(parsed.durable && parsed.needs_declare());
        assert_eq!(
            AmqpRoute::parse(&Options::new())
                .map(|r| r.needs_declare())
                .ok(),
            Some(false)
        );
    }

    #[test]
    fn channel_closes_name_their_culprit() {
        let missing = Refusal::parse(404, "NOT_FOUND - no exchange 'amq.nope' in vhost '/'");
        assert_eq!(
            missing,
            Refusal::Exchange {
                name: "amq.nope".into(),
                forget_declaration: true
            }
        );
        assert!(missing.names_exchange_of(&topic("amq.nope", "k")));
        assert!(!missing.names_exchange_of(&topic("amq.nope2", "k")));
        let internal = Refusal::parse(
            403,
            "ACCESS_REFUSED - cannot publish to internal exchange 'int' in vhost '/'",
        );
        assert!(internal.names_exchange_of(&topic("int", "k")));
        assert!(matches!(
            internal,
            Refusal::Exchange {
                forget_declaration: false,
                ..
            }
        ));
        let clash = Refusal::parse(
            406,
            "PRECONDITION_FAILED - inequivalent arg 'type' for exchange 'c' in vhost '/': \
             received 'topic' but current is 'direct'",
        );
        assert_eq!(
            clash,
            Refusal::Exchange {
                name: "c".into(),
                forget_declaration: true
            }
        );
        assert_eq!(
            Refusal::parse(
                406,
                "PRECONDITION_FAILED - message size 3145728 is larger than configured max size 2097152"
            ),
            Refusal::TooLarge { max: 2097152 }
        );
        let write = "ACCESS_REFUSED - write access to exchange 'amq.default' in vhost '/' refused for user 'u'";
        assert!(refused_for_user(403, write));
        assert!(Refusal::parse(403, write).names_exchange_of(&queue("q")));
        assert!(refused_for_user(
            530,
            "NOT_ALLOWED - access to vhost '/' refused for user 'u'"
        ));
        assert!(!refused_for_user(
            403,
            "ACCESS_REFUSED - cannot publish to internal exchange 'x' in vhost '/'"
        ));
        assert_eq!(Refusal::parse(541, "INTERNAL_ERROR"), Refusal::Unknown);
        assert_eq!(
            Refusal::parse(406, "PRECONDITION_FAILED - something else"),
            Refusal::Unknown
        );
    }

    #[test]
    fn bad_options_are_typed_errors() {
        for (v, key) in [
            (json!({"exchange.nam": "x"}), "exchange.nam"),
            (json!({"exchange.name": 5}), "exchange.name"),
            (json!({"exchange.name": "a b"}), "exchange.name"),
            (json!({"exchange.type": "fan"}), "exchange.type"),
            (json!({"exchange.durable": "yes"}), "exchange.durable"),
            (json!({"routing_key": ["a"]}), "routing_key"),
            (json!({"routing_key": "k".repeat(256)}), "routing_key"),
        ] {
            match AmqpRoute::parse(&opts(v.clone())) {
                Err(Error::InvalidOption { key: k, .. }) => assert_eq!(k, key, "{v}"),
                other => panic!("{v}: {other:?}"),
            }
        }
    }
}
