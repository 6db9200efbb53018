//! The relay's metrics (feature `metrics`) through the `metrics` facade. Handles
//! are registered once per relay, and once per route by the publisher, so that
//! recording a message is an atomic add with no allocation; without the feature
//! every call here is an empty inline function.
//!
//! The names, types and labels are documented in docs/operations.md (Metrics).

#[cfg(feature = "metrics")]
mod imp {
    use crate::blocking::store::Stats;
    use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram, Label, SharedString};
    use std::collections::HashMap;
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    /// More distinct routes than this share the label `route="other"`: a label
    /// that grows without bound would grow the scrape without bound.
    const MAX_ROUTES: usize = 1000;

    /// The per-route counters of one stream.
    pub(crate) struct RouteMetrics {
        pub(crate) published: Counter,
        pub(crate) failed: Counter,
        pub(crate) parked: Counter,
        pub(crate) released: Counter,
    }

    impl RouteMetrics {
        fn new(table: &SharedString, stream: &SharedString, route: Option<SharedString>) -> Self {
            let mut labels = vec![
                Label::new("table", table.clone()),
                Label::new("stream", stream.clone()),
            ];
            if let Some(r) = route {
                labels.push(Label::new("route", r));
            }
            RouteMetrics {
                published: counter!("outboxer_messages_published_total", labels.iter()),
                failed: counter!("outboxer_messages_failed_total", labels.iter()),
                parked: counter!("outboxer_messages_parked_total", labels.iter()),
                released: counter!("outboxer_messages_released_total", labels),
            }
        }
    }

    /// What a message carries from the publisher to the marker.
    pub(crate) type Route = Arc<RouteMetrics>;

    /// One relay's handles.
    pub(crate) struct RelayMetrics {
        table: SharedString,
        stream: SharedString,
        route_label: bool,
        /// Messages without a route (undecodable rows, custom streams): route="".
        unrouted: Route,
        claim: Histogram,
        publish: Histogram,
        mark: Histogram,
        lag: Histogram,
        batch: Histogram,
        dropped_ok: Counter,
        dropped_err: Counter,
        pending: Gauge,
        oldest: Gauge,
        parked: Gauge,
        held: Gauge,
        scheduled: Gauge,
    }

    impl RelayMetrics {
        pub(crate) fn new(table: String, stream: String, route_label: bool) -> Self {
            let t = SharedString::from(table);
            let s = SharedString::from(stream);
            let unrouted = Arc::new(RouteMetrics::new(
                &t,
                &s,
                route_label.then(|| SharedString::const_str("")),
            ));
            RelayMetrics {
                unrouted,
                claim: histogram!("outboxer_claim_duration_seconds", "table" => t.clone()),
                publish: histogram!("outboxer_publish_duration_seconds", "table" => t.clone(), "stream" => s.clone()),
                mark: histogram!("outboxer_mark_duration_seconds", "table" => t.clone()),
                lag: histogram!("outboxer_commit_to_publish_lag_seconds", "table" => t.clone(), "stream" => s.clone()),
                batch: histogram!("outboxer_batch_messages", "table" => t.clone()),
                dropped_ok: counter!("outboxer_outcomes_dropped_total", "table" => t.clone(), "channel" => "ok"),
                dropped_err: counter!("outboxer_outcomes_dropped_total", "table" => t.clone(), "channel" => "err"),
                pending: gauge!("outboxer_pending_messages", "table" => t.clone()),
                oldest: gauge!("outboxer_oldest_pending_age_seconds", "table" => t.clone()),
                parked: gauge!("outboxer_parked_messages", "table" => t.clone()),
                held: gauge!("outboxer_held_keys", "table" => t.clone()),
                scheduled: gauge!("outboxer_scheduled_messages", "table" => t.clone()),
                table: t,
                stream: s,
                route_label,
            }
        }

        pub(crate) fn started(&self) {
            counter!("outboxer_relay_starts_total", "table" => self.table.clone()).increment(1);
        }

        pub(crate) fn panicked(&self, thread: &'static str) {
            counter!("outboxer_relay_panics_total", "table" => self.table.clone(), "thread" => thread)
                .increment(1);
        }

        pub(crate) fn claimed(&self, took: Duration, messages: usize) {
            self.claim.record(took);
            if messages > 0 {
                self.batch.record(messages as f64);
            }
        }

        pub(crate) fn published(&self, took: Duration) {
            self.publish.record(took);
        }

        /// Commit-to-publish lag of one confirmed message (`now` once per batch).
        pub(crate) fn lag(&self, now: SystemTime, created_at: SystemTime) {
            if let Ok(d) = now.duration_since(created_at) {
                self.lag.record(d);
            }
        }

        pub(crate) fn marked(&self, took: Duration) {
            self.mark.record(took);
        }

        pub(crate) fn dropped_ok(&self) {
            self.dropped_ok.increment(1);
        }

        pub(crate) fn dropped_err(&self) {
            self.dropped_err.increment(1);
        }

        pub(crate) fn stats(&self, s: &Stats) {
            self.pending.set(s.pending as f64);
            self.oldest.set(s.oldest_pending_age.as_secs_f64());
            self.parked.set(s.parked as f64);
            self.held.set(s.held_keys as f64);
            self.scheduled.set(s.scheduled as f64);
        }

        pub(crate) fn unrouted(&self) -> Route {
            Arc::clone(&self.unrouted)
        }

        /// The publisher's route cache.
        pub(crate) fn routes(&self) -> Routes {
            Routes {
                table: self.table.clone(),
                stream: self.stream.clone(),
                on: self.route_label,
                unrouted: self.unrouted(),
                other: None,
                by_name: HashMap::new(),
            }
        }
    }

    /// Route handles by route label, owned by the publisher thread.
    pub(crate) struct Routes {
        table: SharedString,
        stream: SharedString,
        on: bool,
        unrouted: Route,
        other: Option<Route>,
        by_name: HashMap<Box<str>, Route>,
    }

    impl Routes {
        /// The handles of a route; allocates only the first time a route is seen.
        /// `route` is read only when the label is on.
        pub(crate) fn get<'a>(&mut self, route: impl FnOnce() -> Option<&'a str>) -> Route {
            let name = if self.on { route() } else { None };
            let Some(name) = name else {
                return Arc::clone(&self.unrouted);
            };
            if let Some(r) = self.by_name.get(name) {
                return Arc::clone(r);
            }
            if self.by_name.len() >= MAX_ROUTES {
                let (t, s) = (&self.table, &self.stream);
                let other = self.other.get_or_insert_with(|| {
                    Arc::new(RouteMetrics::new(
                        t,
                        s,
                        Some(SharedString::const_str("other")),
                    ))
                });
                return Arc::clone(other);
            }
            let r = Arc::new(RouteMetrics::new(
                &self.table,
                &self.stream,
                Some(SharedString::from(name.to_owned())),
            ));
            self.by_name.insert(name.into(), Arc::clone(&r));
            r
        }
    }
}

#[cfg(not(feature = "metrics"))]
mod imp {
    use crate::blocking::store::Stats;
    use std::time::{Duration, SystemTime};

    /// Nothing to count without the feature.
    pub(crate) struct RouteMetrics {
        pub(crate) published: Noop,
        pub(crate) failed: Noop,
        pub(crate) parked: Noop,
        pub(crate) released: Noop,
    }

    pub(crate) struct Noop;
    impl Noop {
        #[inline(always)]
        pub(crate) fn increment(&self, _: u64) {}
    }

    const NOOP: RouteMetrics = RouteMetrics {
        published: Noop,
        failed: Noop,
        parked: Noop,
        released: Noop,
    };

    pub(crate) type Route = &'static RouteMetrics;

    pub(crate) struct RelayMetrics;

    #[allow(clippy::unused_self)]
    impl RelayMetrics {
        pub(crate) fn new(_: String, _: String, _: bool) -> Self {
            RelayMetrics
        }
        #[inline(always)]
        pub(crate) fn started(&self) {}
        #[inline(always)]
        pub(crate) fn panicked(&self, _: &'static str) {}
        #[inline(always)]
        pub(crate) fn claimed(&self, _: Duration, _: usize) {}
        #[inline(always)]
        pub(crate) fn published(&self, _: Duration) {}
        #[inline(always)]
        pub(crate) fn lag(&self, _: SystemTime, _: SystemTime) {}
        #[inline(always)]
        pub(crate) fn marked(&self, _: Duration) {}
        #[inline(always)]
        pub(crate) fn dropped_ok(&self) {}
        #[inline(always)]
        pub(crate) fn dropped_err(&self) {}
        #[inline(always)]
        pub(crate) fn stats(&self, _: &Stats) {}
        #[inline(always)]
        pub(crate) fn unrouted(&self) -> Route {
            &NOOP
        }
        pub(crate) fn routes(&self) -> Routes {
            Routes
        }
    }

    pub(crate) struct Routes;
    impl Routes {
        #[inline(always)]
        pub(crate) fn get<'a>(&mut self, _: impl FnOnce() -> Option<&'a str>) -> Route {
            &NOOP
        }
    }
}

pub(crate) use imp::{RelayMetrics, Route};
