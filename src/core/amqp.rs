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
