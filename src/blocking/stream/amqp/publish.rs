//! Publishing one chunk and settling it from the broker's confirms and returns.

use super::stream::AmqpStream;
use super::AmqpRoute;
use crate::blocking::stream::Deadline;
use crate::message::{Headers, MessageId, StoredMessage, CONTENT_TYPE_HEADER, MESSAGE_ID_HEADER};
use crate::{Error, Result};
use amiquip::{AmqpProperties, AmqpValue, Channel, Confirm, FieldTable, Publish, Return};
use crossbeam_channel::{Receiver, RecvTimeoutError};
use std::collections::{BTreeMap, HashMap};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// The AMQP properties [`AmqpStream`](super::AmqpStream) publishes a message with:
/// persistent (delivery mode 2), its message id as the `message_id` property and
/// as the [`MESSAGE_ID_HEADER`] header (next to the message's own headers, which
/// travel as long-string header values), `created_at` as the timestamp, in
/// seconds since the Unix epoch, and the [`CONTENT_TYPE_HEADER`] header (set by
/// [`Message::json`](crate::Message::json)) also as the `content_type` property,
/// where AMQP consumers look for it, when it fits that short string (255 bytes).
///
/// For code that publishes the same messages without the stream, such as a
/// benchmark's raw-publish ceiling (on a connection from
/// [`open_connection`](super::open_connection), which also says how to name the
/// amiquip types), or that needs the stream's wire format.
#[cfg_attr(docsrs, doc(cfg(feature = "amqp")))]
pub fn message_properties(
    message_id: MessageId,
    headers: &Headers,
    created_at: SystemTime,
) -> AmqpProperties {
    let mut table = FieldTable::new();
    for (k, v) in headers {
        table.insert(k.clone(), AmqpValue::LongString(v.clone()));
    }
    let id = message_id.to_string();
    table.insert(
        MESSAGE_ID_HEADER.to_string(),
        AmqpValue::LongString(id.clone()),
    );
    let ts = created_at
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let props = AmqpProperties::default()
        .with_message_id(id)
        .with_delivery_mode(2)
        .with_timestamp(ts)
        .with_headers(table);
    match headers.get(CONTENT_TYPE_HEADER) {
        Some(ct) if ct.len() <= 255 => props.with_content_type(ct.clone()),
        _ => props,
    }
}

/// A channel the broker closed while a chunk of the batch was in flight.
pub(super) struct Closed {
    pub(super) code: u16,
    pub(super) text: String,
    /// Published on that channel and not confirmed, in publish order.
    pub(super) unconfirmed: Vec<usize>,
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

impl AmqpStream {
    /// Publishes `chunk` and awaits its confirms. `Some` when the broker closed
    /// the channel meanwhile.
    pub(super) fn publish_chunk(
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
            let publish = Publish::with_properties(
                &m.payload,
                route.routing_key.clone(),
                message_properties(m.message_id, &m.headers, m.created_at),
            );
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
            Some(amiquip::Error::ServerClosedChannel { code, message, .. }) => Ok(Some(Closed {
                code,
                text: message,
                unconfirmed: in_flight.tags.into_values().collect(),
            })),
            Some(e) => Err(self.target.connection_error(e)),
        }
    }
}
