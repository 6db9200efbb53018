//! Amazon Kinesis Data Streams stream: `PutRecords` over the AWS JSON
//! protocol, signed with SigV4, on the shared blocking HTTP client.
//!
//! The routing builder ([`stream`]), the record envelope ([`encode_record`],
//! [`decode_record`]) and the validator are available without the `kinesis`
//! feature.
//!
//! # Record envelope (version 1)
//! Kinesis records have no attributes, so the message id and headers travel
//! with the payload in a small JSON object, the record's data:
//!
//! ```json
//! {"v":1,"id":"0190…","headers":{"tenant":"acme"},"payload":"text"}
//! ```
//!
//! `payload` holds the payload when it is UTF-8; otherwise `payload_b64` holds
//! it in standard base64. [`decode_record`] reads it back; any other `v` is
//! refused, so a future format can be told apart.

pub use crate::core::kinesis::{
    decode_record, encode_record, stream, KinesisRecord, KinesisRoute, EXPLICIT_HASH_KEY,
    MAX_BATCH_BYTES, MAX_BATCH_RECORDS, MAX_RECORD_SIZE, PARTITION_KEY, STREAM_NAME,
};

use super::Validate;
use crate::message::{Headers, Options};
use crate::{Error, Result};

/// Checks Kinesis options and the record size (envelope plus partition key) at `send`.
#[derive(Clone, Debug)]
pub struct KinesisValidator;

fn record_size(payload: &[u8], headers: &Headers, route: &KinesisRoute) -> usize {
    // The partition key is at most 256 characters (1 KiB in UTF-8) and counts too.
    let key = route.partition_key.as_ref().map_or(256 * 4, String::len);
    encode_record(&"0".repeat(36), payload, headers).len() + key
}

impl Validate for KinesisValidator {
    fn validate(&self, payload: &[u8], headers: &Headers, options: &Options) -> Result<()> {
        let route = KinesisRoute::parse(options)?;
        let size = record_size(payload, headers, &route);
        if size > MAX_RECORD_SIZE {
            return Err(Error::PayloadTooLarge {
                size,
                limit: MAX_RECORD_SIZE,
            });
        }
        Ok(())
    }
}

#[cfg(feature = "kinesis")]
#[cfg_attr(docsrs, doc(cfg(feature = "kinesis")))]
pub use self::driver::{KinesisStream, KinesisStreamBuilder};

#[cfg(feature = "kinesis")]
mod driver {
    use super::*;
    use crate::blocking::stream::aws::{
        AwsClient, AwsError, AwsErrorKind, AwsSettings, Credentials, CredentialsProvider, Service,
    };
    use crate::blocking::stream::{Deadline, Stream};
    use crate::core::kinesis::partition_key;
    use crate::core::waves::{held_back, waves};
    use crate::message::StoredMessage;
    use base64::Engine as _;
    use serde_json::{json, Value};
    use std::collections::HashSet;
    use std::sync::Arc;
    use std::time::Duration;

    /// Settings of a [`KinesisStream`].
    #[derive(Clone, Debug)]
    pub struct KinesisStreamBuilder {
        aws: AwsSettings,
        record_attempts: u32,
    }

    /// Publishes to Kinesis Data Streams with `PutRecords` (up to 500 records /
    /// 5 MiB a call), one outcome per record.
    ///
    /// URL: `kinesis://[ACCESS_KEY:SECRET@]REGION[?endpoint=http://127.0.0.1:4566]`,
    /// with credentials, region and endpoint from the environment when not given
    /// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
    /// `AWS_REGION`/`AWS_DEFAULT_REGION`, `AWS_ENDPOINT_URL_KINESIS`/`AWS_ENDPOINT_URL`).
    ///
    /// Each record's data is the [record envelope](crate::stream::kinesis) (message id,
    /// headers, payload); consumers read it with [`decode_record`]. The partition
    /// key is `partition_key`, else the ordering key, else the message id.
    /// Records that fail with `ProvisionedThroughputExceededException` or
    /// `InternalFailure` are sent again, only those, a few times with backoff,
    /// inside `publish`. A later record of an ordering key is sent only after
    /// the earlier one was accepted; if that failed, the later ones fail as
    /// transient (held back).
    ///
    /// Refused credentials or permissions (HTTP 401/403, `AccessDeniedException`,
    /// `ExpiredTokenException`, `UnrecognizedClientException`, ..., the table of
    /// [`AwsError::kind`](crate::stream::aws::AwsError::kind), shared with SQS), a
    /// KMS key that cannot be used and a failing [`CredentialsProvider`] are
    /// outages ([`Error::Unauthorized`] / [`Error::Unavailable`]): released without
    /// counting an attempt. A stream that does not exist stays the message's own
    /// failure.
    ///
    /// Bounds: `publish` ends by the relay's deadline: no call, retry or re-send of
    /// throttled records starts after it, and each request's timeout is cut to what
    /// is left of it; records without an outcome get a transient [`Error::Timeout`].
    /// Against a server that never answers, `stop()` waits at most for the request
    /// in flight: one [`request_timeout`](KinesisStreamBuilder::request_timeout) (default 10 s).
    ///
    /// ```no_run
    /// # fn main() -> Result<(), outboxer::Error> {
    /// use outboxer::stream::{kinesis, KinesisStream};
    /// use outboxer::Message;
    /// let s = KinesisStream::connect("kinesis://eu-west-1?endpoint=http://127.0.0.1:4566")?;
    /// let msg = Message::new(b"hi".to_vec()).route(kinesis::stream("events"));
    /// let back = kinesis::decode_record(br#"{"v":1,"id":"x","headers":{},"payload":"hi"}"#)?;
    /// # Ok(()) }
    /// ```
    pub struct KinesisStream {
        client: AwsClient,
        redacted: String,
        record_attempts: u32,
    }

    impl std::fmt::Debug for KinesisStream {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("KinesisStream")
                .field("url", &self.redacted)
                .field("client", &self.client)
                .finish_non_exhaustive()
        }
    }

    impl KinesisStream {
        /// Parses the URL and resolves region, endpoint and credentials. Kinesis
        /// itself is first called at the first publish.
        pub fn connect(url: &str) -> Result<Self> {
            Self::builder(url).build()
        }

        /// A builder for the settings beyond the URL.
        pub fn builder(url: &str) -> KinesisStreamBuilder {
            KinesisStreamBuilder {
                aws: AwsSettings::new(url, Service::Kinesis),
                record_attempts: 4,
            }
        }
    }

    impl KinesisStreamBuilder {
        crate::blocking::stream::aws::aws_builder_setters!();
        /// Tries of a record that failed with a throttling error (default 4, 1..=10).
        pub fn record_attempts(mut self, n: u32) -> Self {
            self.record_attempts = n;
            self
        }

        /// Validates the settings. Does not call Kinesis.
        pub fn build(self) -> Result<KinesisStream> {
            if !(1..=10).contains(&self.record_attempts) {
                return Err(Error::config("record_attempts", "must be within 1..=10"));
            }
            let redacted = self.aws.redacted.clone();
            Ok(KinesisStream {
                client: self.aws.build(Service::Kinesis)?,
                redacted,
                record_attempts: self.record_attempts,
            })
        }
    }

    struct Prepared {
        stream: String,
        record: Value,
        size: usize,
    }

    fn prepare(m: &StoredMessage) -> Result<Prepared> {
        KinesisValidator.validate(&m.payload, &m.headers, &m.options)?;
        let route = KinesisRoute::parse(&m.options)?;
        let id = m.message_id.to_string();
        let data = encode_record(&id, &m.payload, &m.headers);
        let key = partition_key(&route, m.ordering_key.as_deref(), &id);
        let size = data.len() + key.len();
        let mut record = json!({
            "Data": base64::engine::general_purpose::STANDARD.encode(&data),
            "PartitionKey": key,
        });
        if let Some(h) = &route.explicit_hash_key {
            record["ExplicitHashKey"] = json!(h);
        }
        Ok(Prepared {
            stream: route.stream,
            record,
            size,
        })
    }

    impl KinesisStream {
        /// Puts `entries` (at most one per ordering key), sending the failed ones
        /// again while their error is transient. `Err` = connection-level failure.
        fn put(
            &self,
            stream: &str,
            entries: &[usize],
            prepared: &[Option<Prepared>],
            out: &mut [Option<Result<()>>],
            deadline: &Deadline,
        ) -> std::result::Result<(), Error> {
            let mut pending: Vec<usize> = entries.to_vec();
            for attempt in 1..=self.record_attempts {
                let records: Vec<&Value> = pending
                    .iter()
                    .filter_map(|&i| prepared[i].as_ref().map(|p| &p.record))
                    .collect();
                let answer = match self.client.call(
                    "PutRecords",
                    &json!({"StreamName": stream, "Records": records}),
                    deadline,
                ) {
                    Ok(a) => a,
                    Err(e) => {
                        // Only a transient failure (no answer) stops the rest of the batch;
                        // e.g. a credentials provider error is this chunk's alone.
                        let stops = e.stops_batch();
                        let err = e.into_error("kinesis");
                        for &i in &pending {
                            out[i] = Some(Err(err.duplicate("kinesis")));
                        }
                        return if stops { Err(err) } else { Ok(()) };
                    }
                };
                let results = answer
                    .get("Records")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                let mut again = Vec::new();
                for (j, &i) in pending.iter().enumerate() {
                    let Some(r) = results.get(j) else {
                        out[i] = Some(Err(Error::unavailable(
                            "kinesis",
                            "record missing from the answer",
                        )));
                        continue;
                    };
                    match r.get("ErrorCode").and_then(Value::as_str) {
                        None => out[i] = Some(Ok(())),
                        Some(code) => {
                            let error = AwsError {
                                code: code.to_string(),
                                message: r
                                    .get("ErrorMessage")
                                    .and_then(Value::as_str)
                                    .unwrap_or("")
                                    .to_string(),
                            };
                            match error.entry_kind(true) {
                                // Throttled or failed inside Kinesis: worth sending again.
                                AwsErrorKind::Transient if error.is_throttling() => {
                                    out[i] = Some(Err(Error::unavailable(
                                        "kinesis",
                                        format!("{error} (after {attempt} tries)"),
                                    )));
                                    again.push(i);
                                }
                                kind => out[i] = Some(Err(error.to_error("kinesis", kind, ""))),
                            }
                        }
                    }
                }
                let pause = Duration::from_millis(100 << (attempt - 1).min(4));
                // No new try past the deadline: the throttled records keep their
                // transient error and go back to the relay.
                if again.is_empty()
                    || attempt == self.record_attempts
                    || pause >= deadline.remaining()
                {
                    break;
                }
                log::debug!(
                    "kinesis: {} record(s) throttled, sending them again",
                    again.len()
                );
                if !deadline.wait(pause) {
                    break;
                }
                pending = again;
            }
            Ok(())
        }
    }

    impl Stream for KinesisStream {
        fn name(&self) -> &str {
            "kinesis"
        }

        fn route_label<'a>(&self, options: &'a crate::message::Options) -> Option<&'a str> {
            crate::blocking::stream::route_option(options, crate::core::kinesis::STREAM_NAME)
        }

        /// An unsigned `GET` of the endpoint: a TLS mistake (untrusted
        /// certificate, wrong host name, TLS/plaintext mismatch) stops
        /// `Outbox::start` with [`Error::Tls`]; nothing is sent.
        fn connect(&mut self) -> Result<()> {
            self.client.probe()
        }

        fn validator(&self) -> Arc<dyn Validate> {
            Arc::new(KinesisValidator)
        }

        fn publish(&mut self, batch: &[StoredMessage], deadline: &Deadline) -> Vec<Result<()>> {
            let mut out: Vec<Option<Result<()>>> = (0..batch.len()).map(|_| None).collect();
            let prepared: Vec<Option<Prepared>> = batch
                .iter()
                .enumerate()
                .map(|(i, m)| match prepare(m) {
                    Ok(p) => Some(p),
                    Err(e) => {
                        out[i] = Some(Err(e));
                        None
                    }
                })
                .collect();
            let mut failed_keys: HashSet<&str> = HashSet::new();
            let mut down: Option<Error> = None;
            for wave in waves(batch.iter().map(|m| m.ordering_key.as_deref())) {
                let mut by_stream: Vec<(&str, Vec<usize>)> = Vec::new();
                for &i in &wave {
                    if out[i].is_some() {
                        continue;
                    }
                    if let Some(k) = batch[i].ordering_key.as_deref() {
                        if failed_keys.contains(k) {
                            out[i] = Some(Err(held_back("kinesis", k)));
                            continue;
                        }
                    }
                    let Some(p) = prepared[i].as_ref() else {
                        continue;
                    };
                    match by_stream.iter_mut().find(|(s, _)| *s == p.stream) {
                        Some((_, v)) => v.push(i),
                        None => by_stream.push((p.stream.as_str(), vec![i])),
                    }
                }
                for (stream, entries) in by_stream {
                    let mut chunks: Vec<Vec<usize>> = vec![Vec::new()];
                    let mut bytes = 0;
                    for i in entries {
                        let size = prepared[i].as_ref().map_or(0, |p| p.size);
                        let last = chunks.last().map_or(0, Vec::len);
                        if last > 0 && (last == MAX_BATCH_RECORDS || bytes + size > MAX_BATCH_BYTES)
                        {
                            chunks.push(Vec::new());
                            bytes = 0;
                        }
                        if let Some(c) = chunks.last_mut() {
                            c.push(i);
                        }
                        bytes += size;
                    }
                    for chunk in chunks.into_iter().filter(|c| !c.is_empty()) {
                        if let Some(e) = &down {
                            for i in chunk {
                                out[i] = Some(Err(e.duplicate("kinesis")));
                            }
                            continue;
                        }
                        if let Err(e) = self.put(stream, &chunk, &prepared, &mut out, deadline) {
                            down = Some(e);
                        }
                    }
                }
                for &i in &wave {
                    if let (Some(Err(_)), Some(k)) = (&out[i], batch[i].ordering_key.as_deref()) {
                        failed_keys.insert(k);
                    }
                }
            }
            out.into_iter()
                .map(|o| o.unwrap_or_else(|| Err(Error::unavailable("kinesis", "not published"))))
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validator_counts_the_envelope() {
        let route: Options = stream("s").into();
        let h = Headers::new();
        assert!(KinesisValidator
            .validate(&vec![b'a'; 1000 * 1024], &h, &route)
            .is_ok());
        assert!(matches!(
            KinesisValidator.validate(&vec![b'a'; MAX_RECORD_SIZE], &h, &route),
            Err(Error::PayloadTooLarge { .. })
        ));
        assert!(matches!(
            KinesisValidator.validate(&vec![0xff; 800 * 1024], &h, &route),
            Err(Error::PayloadTooLarge { .. })
        ));
    }
}
