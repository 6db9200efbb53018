//! Publishing a batch: per-key waves, delivery reports, the deadline and the purge.

use super::errors::{map_error, same_transient};
use super::*;

/// Moves the delivery reports received so far into `out`: (any delivered, any
/// transient failure). A message purged from librdkafka's queue at the deadline
/// was never sent: a transient `Timeout`.
fn take_reports(
    producer: &Producer_,
    pending: &mut HashMap<usize, usize>,
    batch: &[StoredMessage],
    out: &mut [Option<Result<()>>],
) -> (bool, bool) {
    let (mut delivered, mut transient) = (false, false);
    let done = std::mem::take(&mut *producer.context().done.lock());
    for (seq, err) in done {
        // Reports of an earlier, abandoned batch are ignored.
        let Some(i) = pending.remove(&seq) else {
            continue;
        };
        out[i] = Some(match err {
            None => {
                delivered = true;
                Ok(())
            }
            Some(e) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::PurgeQueue) => {
                transient = true;
                Err(Error::Timeout(format!(
                    "message {} not sent by the batch's deadline (purged from the producer's queue)",
                    batch[i].message_id
                )))
            }
            Some(e) => {
                let e = map_error(&e);
                transient |= e.is_transient();
                Err(e)
            }
        });
    }
    (delivered, transient)
}

fn record_headers(m: &StoredMessage) -> OwnedHeaders {
    let id = m.message_id.to_string();
    let mut h = OwnedHeaders::new_with_capacity(m.headers.len() + 1);
    for (k, v) in &m.headers {
        h = h.insert(Header {
            key: k,
            value: Some(v.as_bytes()),
        });
    }
    h.insert(Header {
        key: MESSAGE_ID_HEADER,
        value: Some(id.as_bytes()),
    })
}

impl Stream for KafkaStream {
    fn name(&self) -> &str {
        "kafka"
    }

    fn route_label<'a>(&self, options: &'a crate::message::Options) -> Option<&'a str> {
        crate::blocking::stream::route_option(options, crate::core::kafka::TOPIC)
    }

    fn validator(&self) -> Arc<dyn Validate> {
        Arc::new(KafkaValidator {
            max_message_size: self.max_message_size,
        })
    }

    fn publish(&mut self, batch: &[StoredMessage], deadline: &Deadline) -> Vec<Result<()>> {
        let mut out: Vec<Option<Result<()>>> = (0..batch.len()).map(|_| None).collect();
        if deadline.expired() {
            return batch.iter().map(|_| Err(not_sent())).collect();
        }
        let validator = KafkaValidator {
            max_message_size: self.max_message_size,
        };
        let mut routes: Vec<Option<KafkaRoute>> = Vec::with_capacity(batch.len());
        for (i, m) in batch.iter().enumerate() {
            match validator
                .validate(&m.payload, &m.headers, &m.options)
                .and_then(|()| KafkaRoute::parse(&m.options))
            {
                Ok(r) => routes.push(Some(r)),
                Err(e) => {
                    out[i] = Some(Err(e));
                    routes.push(None);
                }
            }
        }
        // Topics and partitions must exist: Kafka would otherwise hold the records
        // until the delivery timeout. This is also where an absent broker shows.
        let mut checked: HashMap<String, TopicState> = HashMap::new();
        for i in 0..batch.len() {
            let Some(route) = routes[i].as_ref().filter(|_| out[i].is_none()) else {
                continue;
            };
            if !checked.contains_key(&route.topic) {
                match self.partitions(&route.topic, deadline) {
                    Ok(state) => {
                        checked.insert(route.topic.clone(), state);
                    }
                    Err(e) => {
                        for o in out.iter_mut().filter(|o| o.is_none()) {
                            *o = Some(Err(same_transient(&e)));
                        }
                        break;
                    }
                }
            }
            out[i] = match (checked.get(&route.topic), route.partition) {
                (Some(TopicState::Missing) | None, _) => Some(Err(Error::Rejected(format!(
                    "topic {:?} does not exist",
                    route.topic
                )))),
                (Some(TopicState::Outage(e)), _) => Some(Err(e.duplicate("kafka"))),
                (Some(TopicState::Partitions(n)), Some(p)) if p as usize >= *n => {
                    Some(Err(Error::Rejected(format!(
                        "topic {:?} has {n} partitions, no partition {p}",
                        route.topic
                    ))))
                }
                _ => None,
            };
        }
        if let Err(e) = self.send_in_waves(batch, &routes, &mut out, deadline) {
            let why = e.to_string();
            self.drop_producer(&why);
            for o in out.iter_mut().filter(|o| o.is_none()) {
                *o = Some(Err(same_transient(&e)));
            }
        }
        out.into_iter()
            .map(|o| o.unwrap_or_else(|| Err(Error::unavailable("kafka", "not published"))))
            .collect()
    }

    /// Fetches the cluster's metadata within the metadata timeout, so that
    /// `Outbox::start` refuses a TLS mistake ([`Error::Tls`]).
    fn connect(&mut self) -> Result<()> {
        self.check_connection()
    }

    fn close(&mut self) {
        if let Some(p) = self.producer.take() {
            if let Err(e) = p.flush(self.delivery_timeout) {
                log::warn!("outboxer: flushing Kafka producer {}: {e}", self.redacted);
            }
        }
    }
}

impl KafkaStream {
    /// Sends the routable messages and waits for their delivery reports. Wave `k`
    /// holds the k-th message of each ordering key (and wave 0 all keyless ones),
    /// so a later message of a key is sent only after the earlier one was
    /// delivered. An `Err` means the producer is unusable: every message without
    /// an outcome yet gets that (transient) error.
    fn send_in_waves(
        &mut self,
        batch: &[StoredMessage],
        routes: &[Option<KafkaRoute>],
        out: &mut [Option<Result<()>>],
        deadline: &Deadline,
    ) -> Result<()> {
        let waves = waves(batch.iter().map(|m| m.ordering_key.as_deref()));
        // Reports are awaited until the batch's deadline, and never longer than
        // librdkafka's own delivery timeout (plus a margin for its report).
        let until = (Instant::now() + self.delivery_timeout + Duration::from_secs(2))
            .min(deadline.instant());
        let mut failed_keys: HashSet<&str> = HashSet::new();
        for wave in waves {
            if deadline.expired() {
                // No new wave: the batch's time is up (or the relay stops).
                for &i in &wave {
                    if out[i].is_none() && routes[i].is_some() {
                        out[i] = Some(Err(not_sent()));
                    }
                }
                continue;
            }
            let mut pending: HashMap<usize, usize> = HashMap::new();
            for &i in &wave {
                let m = &batch[i];
                if out[i].is_some() {
                    // Refused before sending; it still holds back its key.
                    continue;
                }
                if let Some(k) = m.ordering_key.as_deref() {
                    if failed_keys.contains(k) {
                        out[i] = Some(Err(held_back("kafka", k)));
                        continue;
                    }
                }
                let Some(route) = routes[i].as_ref() else {
                    continue;
                };
                let seq = self.next_seq;
                self.next_seq = self.next_seq.wrapping_add(1);
                let key = route.key.as_deref().or(m.ordering_key.as_deref());
                let ts = m
                    .created_at
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_millis() as i64)
                    .unwrap_or(0);
                let producer = self.producer()?;
                let mut record: BaseRecord<'_, str, [u8], usize> =
                    BaseRecord::with_opaque_to(&route.topic, seq)
                        .payload(m.payload.as_slice())
                        .headers(record_headers(m))
                        .timestamp(ts);
                if let Some(k) = key {
                    record = record.key(k);
                }
                if let Some(p) = route.partition {
                    record = record.partition(p);
                }
                loop {
                    match producer.send(record) {
                        Ok(()) => {
                            pending.insert(seq, i);
                            break;
                        }
                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r))
                            if Instant::now() < until && !deadline.stopping() =>
                        {
                            record = r;
                            producer.poll(Duration::from_millis(50));
                        }
                        Err((e, _)) => {
                            out[i] = Some(Err(map_error(&e)));
                            break;
                        }
                    }
                }
            }
            self.await_reports(&mut pending, batch, out, until, deadline)?;
            for &i in &wave {
                if let (Some(Err(_)), Some(k)) = (&out[i], batch[i].ordering_key.as_deref()) {
                    failed_keys.insert(k);
                }
            }
        }
        Ok(())
    }

    /// Waits for the reports of `pending` until `until` (or, once the relay stops,
    /// [`STOP_GRACE`]). At that point the messages still queued in librdkafka are
    /// purged, so that they cannot be delivered after the relay released them
    /// (and sent them again, out of order); they and the ones in flight get a
    /// transient `Timeout`, and `Err` has the producer replaced.
    fn await_reports(
        &mut self,
        pending: &mut HashMap<usize, usize>,
        batch: &[StoredMessage],
        out: &mut [Option<Result<()>>],
        until: Instant,
        deadline: &Deadline,
    ) -> Result<()> {
        let producer = self.producer()?;
        let (mut delivered, mut transient) = (pending.is_empty(), false);
        let mut until = until;
        let mut stop_seen = false;
        while !pending.is_empty() {
            if !stop_seen && deadline.stopping() {
                stop_seen = true;
                until = until.min(Instant::now() + STOP_GRACE);
            }
            if Instant::now() >= until {
                producer.purge(PurgeConfig::default().queue());
                let collect_until = Instant::now() + PURGE_REPORTS_WAIT;
                while !pending.is_empty() && Instant::now() < collect_until {
                    producer.poll(Duration::from_millis(1));
                    take_reports(producer, pending, batch, out);
                }
                for (_, i) in pending.drain() {
                    out[i] = Some(Err(Error::Timeout(format!(
                        "no delivery report for message {} by the batch's deadline",
                        batch[i].message_id
                    ))));
                }
                // Late reports and retries of what was in flight are the old producer's.
                return Err(Error::Timeout(
                    "Kafka delivery reports by the batch's deadline".into(),
                ));
            }
            // rdkafka 0.39's poll blocks for its whole timeout even after the
            // reports arrived: short polls (measured: 100 ms polls capped a
            // relay at batch_size x 10 msg/s and a p50 of 350 ms).
            producer.poll(Duration::from_millis(1));
            let (d, t) = take_reports(producer, pending, batch, out);
            delivered |= d;
            transient |= t;
        }
        if transient && !delivered {
            // Nothing got through: start over with a new producer (and producer id)
            // rather than trust one that may be stuck, e.g. on a broker that lost
            // its producer state.
            return Err(Error::unavailable(
                "kafka",
                "no message of the batch was delivered",
            ));
        }
        if let Some((code, reason)) = producer.client().fatal_error() {
            return Err(Error::unavailable(
                "kafka",
                format!("fatal producer error {code:?}: {reason}"),
            ));
        }
        Ok(())
    }
}
