//! Spans for the relay's claim, publish and mark (feature `tracing`). Without the
//! feature every function here is empty and inlined away: nothing is compiled in.
//!
//! Each stage span carries `count`, `first_id`/`last_id` (row ids) and
//! `first_message_id`/`last_message_id`; `message_ids` lists every message id when
//! the batch has at most [`LISTED_IDS`] messages (a field, not an allocation per
//! message of a 1000-message batch). The publish span has one child span per
//! message (`outboxer.message`, level DEBUG) with its message id, row id, attempt
//! and the stored `traceparent`/`tracestate` as fields.

#[cfg(feature = "tracing")]
pub(super) use imp::*;
#[cfg(not(feature = "tracing"))]
pub(super) use off::*;

/// Batches up to this size list all their message ids in `message_ids`.
#[cfg_attr(not(feature = "tracing"), allow(dead_code))]
pub(super) const LISTED_IDS: usize = 32;

#[cfg(feature = "tracing")]
mod imp {
    use super::super::Sent;
    use super::LISTED_IDS;
    use crate::message::{MessageId, StoredMessage, TRACEPARENT_HEADER, TRACESTATE_HEADER};
    use crate::Result;
    use tracing::field::{display, Empty};
    use tracing::span::EnteredSpan;
    use tracing::{debug_span, info_span, Span};

    /// A target of their own: where `tracing`'s `log` feature is on somewhere in
    /// the dependency tree and no subscriber is installed, tracing writes every span
    /// as a log record, and a logger can then turn exactly these off.
    const TARGET: &str = "outboxer::spans";

    /// An entered stage span (and, for publish, its per-message spans); it ends
    /// with [`Stage::end`] or when dropped.
    pub(in super::super) struct Stage {
        // Declared first: dropped before their parent.
        children: Vec<Span>,
        span: EnteredSpan,
    }

    fn stage(span: Span) -> Stage {
        Stage {
            children: Vec::new(),
            span: span.entered(),
        }
    }

    /// Records the batch fields on `span`.
    fn batch(span: &Span, ids: impl ExactSizeIterator<Item = (i64, MessageId)> + Clone) {
        let count = ids.len();
        span.record("count", count);
        let mut all = ids.clone();
        if let Some((id, mid)) = all.next() {
            span.record("first_id", id);
            span.record("first_message_id", display(mid));
        }
        if let Some((id, mid)) = ids.clone().last() {
            span.record("last_id", id);
            span.record("last_message_id", display(mid));
        }
        if count <= LISTED_IDS {
            let list = ids
                .map(|(_, m)| m.to_string())
                .collect::<Vec<_>>()
                .join(",");
            span.record("message_ids", list.as_str());
        }
    }

    /// Around one claim statement. DEBUG, not INFO: an idle relay claims (and
    /// finds nothing) every check interval.
    pub(in super::super) fn claim(batch_limit: usize) -> Stage {
        stage(debug_span!(
            target: TARGET,
            "outboxer.claim",
            batch_limit,
            count = Empty,
            first_id = Empty,
            last_id = Empty,
            first_message_id = Empty,
            last_message_id = Empty,
            message_ids = Empty,
        ))
    }

    impl Stage {
        /// What the claim returned.
        pub(in super::super) fn claimed(&self, messages: &[StoredMessage]) {
            if self.span.is_disabled() {
                return;
            }
            batch(&self.span, messages.iter().map(|m| (m.id, m.message_id)));
        }

        /// What the stream answered.
        pub(in super::super) fn outcomes(&self, outcomes: &[Result<()>]) {
            if self.span.is_disabled() {
                return;
            }
            let failed = outcomes.iter().filter(|o| o.is_err()).count();
            self.span.record("published", outcomes.len() - failed);
            self.span.record("failed", failed);
        }

        /// Ends the span (and its per-message spans).
        pub(in super::super) fn end(self) {
            let Stage { children, span } = self;
            drop(children);
            drop(span);
        }
    }

    /// Around one publish call, with one child span per message (DEBUG).
    pub(in super::super) fn publish(messages: &[StoredMessage]) -> Stage {
        let span = info_span!(
            target: TARGET,
            "outboxer.publish",
            count = Empty,
            first_id = Empty,
            last_id = Empty,
            first_message_id = Empty,
            last_message_id = Empty,
            message_ids = Empty,
            published = Empty,
            failed = Empty,
        );
        if span.is_disabled() {
            return stage(span);
        }
        batch(&span, messages.iter().map(|m| (m.id, m.message_id)));
        let children = if tracing::enabled!(target: TARGET, tracing::Level::DEBUG) {
            messages
                .iter()
                .map(|m| {
                    debug_span!(
                        target: TARGET,
                        parent: &span,
                        "outboxer.message",
                        message_id = %m.message_id,
                        row_id = m.id,
                        attempt = m.attempts + 1,
                        traceparent = m.headers.get(TRACEPARENT_HEADER).map(String::as_str),
                        tracestate = m.headers.get(TRACESTATE_HEADER).map(String::as_str),
                    )
                })
                .collect()
        } else {
            Vec::new()
        };
        Stage {
            children,
            span: span.entered(),
        }
    }

    /// Around the statements that record one batch's outcomes.
    pub(in super::super) fn mark(
        sent: &[Sent],
        ok: usize,
        failed: usize,
        released: usize,
    ) -> Stage {
        let span = info_span!(
            target: TARGET,
            "outboxer.mark",
            dispatched = ok,
            failed,
            released,
            count = Empty,
            first_id = Empty,
            last_id = Empty,
            first_message_id = Empty,
            last_message_id = Empty,
            message_ids = Empty,
        );
        if !span.is_disabled() {
            batch(&span, sent.iter().map(|s| (s.id, s.message_id)));
        }
        stage(span)
    }
}

#[cfg(not(feature = "tracing"))]
mod off {
    use super::super::Sent;
    use crate::message::StoredMessage;
    use crate::Result;

    pub(in super::super) struct Stage;

    #[inline(always)]
    pub(in super::super) fn claim(_: usize) -> Stage {
        Stage
    }

    impl Stage {
        #[inline(always)]
        pub(in super::super) fn claimed(&self, _: &[StoredMessage]) {}
        #[inline(always)]
        pub(in super::super) fn outcomes(&self, _: &[Result<()>]) {}
        #[inline(always)]
        pub(in super::super) fn end(self) {}
    }

    #[inline(always)]
    pub(in super::super) fn publish(_: &[StoredMessage]) -> Stage {
        Stage
    }

    #[inline(always)]
    pub(in super::super) fn mark(_: &[Sent], _: usize, _: usize, _: usize) -> Stage {
        Stage
    }
}
