//! Refusals: a channel the broker closed on a publish (which messages it
//! refused), and exchange declarations (declared once per connection; a refused
//! one settles the messages to that exchange).

use super::connection::Watchdog;
use super::publish::Closed;
use super::stream::{AmqpStream, Attempt};
use super::{AmqpRoute, ExchangeKind};
use crate::blocking::stream::Deadline;
use crate::core::amqp::{refused_for_user, Refusal};
use crate::message::StoredMessage;
use crate::{Error, Result};
use amiquip::{ExchangeDeclareOptions, ExchangeType, FieldTable};
use std::collections::HashSet;

fn exchange_type(k: ExchangeKind) -> ExchangeType {
    match k {
        ExchangeKind::Direct => ExchangeType::Direct,
        ExchangeKind::Fanout => ExchangeType::Fanout,
        ExchangeKind::Topic => ExchangeType::Topic,
        ExchangeKind::Headers => ExchangeType::Headers,
    }
}

/// The key under which a declared exchange is cached: name, type and flags.
pub(super) type Declared = (String, ExchangeKind, bool, bool, bool);

fn declared_key(r: &AmqpRoute) -> Declared {
    (
        r.exchange.clone(),
        r.kind,
        r.durable,
        r.auto_delete,
        r.internal,
    )
}

impl AmqpStream {
    /// Settles the messages a channel close refused: the ones the broker's reply
    /// names (an exchange, or a body above its size limit), or, in one-at-a-time
    /// mode, the one in flight. When the reply names none, switches to one at a time.
    pub(super) fn refused(
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
    pub(super) fn declare_exchanges(
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
                return Err(self.target.timed_out("declaring an exchange", deadline));
            }
            let (code, message) = match res {
                Ok(()) => {
                    session.declared.insert(key);
                    continue;
                }
                Err(amiquip::Error::ServerClosedChannel { code, message, .. }) => (code, message),
                Err(e) => return Err(self.target.connection_error(e)),
            };
            attempt.channel_closes += 1;
            refusals += 1;
            if refusals > routes.len() + 1 {
                return Err(self
                    .target
                    .unavailable("the broker keeps closing the channel"));
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
