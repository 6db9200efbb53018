//! Amazon SQS stream: `SendMessageBatch` over the AWS JSON protocol, signed
//! with SigV4, on the shared blocking HTTP client (no SDK, no rusoto).
//!
//! The routing builder ([`queue`]), the wire format ([`encode`], [`decode`])
//! and the validator are available without the `sqs` feature.
//!
//! # Wire format
//! - Body: the payload as text when it is UTF-8 made only of the characters SQS
//!   accepts (XML 1.0); otherwise the payload in standard base64 and the string
//!   attribute `outboxer-body-encoding` = `base64`.
//! - `outboxer-message-id`: the message id (string attribute).
//! - Headers: each one a string attribute when its name is a valid SQS attribute
//!   name (`A-Za-z0-9_-.`, at most 256 bytes, not `aws.`/`amazon.`, no `..`),
//!   its value non-empty and made of XML characters, and one of the first
//!   [`MAX_HEADER_ATTRIBUTES`] such headers (SQS allows 10 attributes a
//!   message), the trace context's `traceparent` and `tracestate` taking the
//!   first places. All other headers travel as one JSON object (string to
//!   string) in the string attribute `outboxer-headers`.
//!
//! [`decode`] turns a received body and its attributes back into payload and
//! headers; [`Decoded::trace_context`] reads the W3C trace context.

pub use crate::core::sqs::{
    decode, encode, queue, Decoded, Encoded, SqsRoute, BODY_ENCODING_ATTRIBUTE,
    DEFAULT_MAX_MESSAGE_SIZE, DELAY_SECONDS, HEADERS_ATTRIBUTE, MAX_BATCH_ENTRIES,
    MAX_HEADER_ATTRIBUTES, MESSAGE_DEDUP_ID, MESSAGE_GROUP_ID, QUEUE_NAME,
};

use super::Validate;
use crate::message::{Headers, Options};
use crate::{Error, Result};

/// SQS's largest message (raised by AWS in 2025 from 256 KiB): the upper bound
/// of [`SqsValidator::max_message_size`].
pub const MAX_MESSAGE_SIZE_LIMIT: usize = 1024 * 1024;

/// Checks SQS options, headers and size at `send`.
#[derive(Clone, Debug)]
pub struct SqsValidator {
    /// Largest body plus attributes accepted (as SQS counts them), in bytes.
    pub max_message_size: usize,
}

/// A message id's length on the wire (a hyphenated UUID).
const ID_LEN: usize = 36;

impl Validate for SqsValidator {
    fn validate(&self, payload: &[u8], headers: &Headers, options: &Options) -> Result<()> {
        SqsRoute::parse(options)?;
        let size = encode(&"0".repeat(ID_LEN), payload, headers)?.size();
        if size > self.max_message_size {
            return Err(Error::PayloadTooLarge {
                size,
                limit: self.max_message_size,
            });
        }
        Ok(())
    }
}

#[cfg(feature = "sqs")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqs")))]
pub use self::driver::{SqsStream, SqsStreamBuilder};

#[cfg(feature = "sqs")]
mod driver {
    use super::*;
    use crate::blocking::stream::aws::{
        AwsClient, AwsError, AwsSettings, CallError, Credentials, CredentialsProvider, Service,
    };
    use crate::blocking::stream::{Deadline, Stream};
    use crate::core::sqs::group_for_key;
    use crate::core::waves::{held_back, waves};
    use crate::message::StoredMessage;
    use serde_json::{json, Map, Value};
    use std::collections::{HashMap, HashSet};
    use std::sync::Arc;
    use std::time::Duration;

    /// Settings of an [`SqsStream`].
    #[derive(Clone, Debug)]
    pub struct SqsStreamBuilder {
        aws: AwsSettings,
        max_message_size: usize,
    }

    /// Publishes to Amazon SQS with `SendMessageBatch` (10 entries a call), one
    /// outcome per message from the answer's `Successful` / `Failed` lists.
    ///
    /// URL: `sqs://[ACCESS_KEY:SECRET@]REGION[?endpoint=http://127.0.0.1:4566]`.
    /// Without userinfo the credentials come from `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN`; without a region from
    /// `AWS_REGION` / `AWS_DEFAULT_REGION`; without an endpoint from
    /// `AWS_ENDPOINT_URL_SQS` / `AWS_ENDPOINT_URL`, else AWS's regional endpoint.
    /// Percent-encode `/` in a secret as `%2F`. Secrets never appear in errors.
    ///
    /// Queue names are resolved once with `GetQueueUrl` and cached. For FIFO
    /// queues (`.fifo`) the message group is `message_group_id`, else the
    /// ordering key (else the message id), and the deduplication id is
    /// `message_dedup_id`, else the message id, so that SQS drops a relay's
    /// retry of an already accepted message (within its 5-minute window). A
    /// later message of an ordering key is sent only after the earlier one
    /// was accepted; if that failed, the later ones fail as transient (held back).
    ///
    /// Refused credentials or permissions (HTTP 401/403, `AccessDenied`,
    /// `ExpiredToken`, `InvalidSignatureException`, ..., the table of
    /// [`AwsError::kind`](crate::stream::aws::AwsError::kind)) and a failing
    /// [`CredentialsProvider`] are [`Error::Unauthorized`]: an outage, so the relay
    /// releases the messages without counting an attempt and nothing parks while the
    /// credentials are fixed. A queue that does not exist, an invalid attribute or
    /// an oversized message stays the message's own failure (counted, parked after
    /// `max_attempts`).
    ///
    /// Bounds: `publish` ends by the relay's deadline (the batch's lease, less a
    /// margin). No request or retry starts after it, no retry is made whose backoff
    /// would end past it, and each request's timeout is cut to what is left of it;
    /// messages without an outcome by then get a transient [`Error::Timeout`] and
    /// are sent again later. Against a server that accepts connections and never
    /// answers, a publish lasts at most until its deadline, and the relay's `stop()`
    /// waits at most for the request in flight: one
    /// [`request_timeout`](SqsStreamBuilder::request_timeout) (default 10 s).
    ///
    /// ```no_run
    /// # fn main() -> Result<(), outboxer::Error> {
    /// use outboxer::stream::{sqs, SqsStream};
    /// use outboxer::Message;
    /// let stream = SqsStream::connect("sqs://eu-west-1?endpoint=http://127.0.0.1:4566")?;
    /// let msg = Message::new(b"hi".to_vec()).route(sqs::queue("orders").delay_seconds(5));
    /// # Ok(()) }
    /// ```
    pub struct SqsStream {
        client: AwsClient,
        redacted: String,
        max_message_size: usize,
        /// Queue name -> queue URL.
        urls: HashMap<String, String>,
    }

    impl std::fmt::Debug for SqsStream {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("SqsStream")
                .field("url", &self.redacted)
                .field("client", &self.client)
                .finish_non_exhaustive()
        }
    }

    impl SqsStream {
        /// Parses the URL and resolves region, endpoint and credentials. SQS itself
        /// is first called at the first publish (so no extra IAM permission is needed).
        pub fn connect(url: &str) -> Result<Self> {
            Self::builder(url).build()
        }

        /// A builder for the settings beyond the URL.
        pub fn builder(url: &str) -> SqsStreamBuilder {
            SqsStreamBuilder {
                aws: AwsSettings::new(url, Service::Sqs),
                max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            }
        }
    }

    impl SqsStreamBuilder {
        crate::blocking::stream::aws::aws_builder_setters!();
        /// Largest message (body plus attributes) accepted at `send`; default 256 KiB,
        /// at most 1 MiB (raise it only for queues whose `MaximumMessageSize` allows).
        /// Also the limit of one `SendMessageBatch` call, as SQS counts it.
        pub fn max_message_size(mut self, bytes: usize) -> Self {
            self.max_message_size = bytes;
            self
        }

        /// Validates the settings. Does not call SQS.
        pub fn build(self) -> Result<SqsStream> {
            if !(1024..=MAX_MESSAGE_SIZE_LIMIT).contains(&self.max_message_size) {
                return Err(Error::config(
                    "max_message_size",
                    "must be within 1 KiB..=1 MiB",
                ));
            }
            let redacted = self.aws.redacted.clone();
            Ok(SqsStream {
                client: self.aws.build(Service::Sqs)?,
                redacted,
                max_message_size: self.max_message_size,
                urls: HashMap::new(),
            })
        }
    }

    /// One message ready to send.
    struct Prepared {
        route: SqsRoute,
        entry: Value,
        size: usize,
    }

    impl SqsStream {
        fn prepare(&self, i: usize, m: &StoredMessage) -> Result<Prepared> {
            let validator = SqsValidator {
                max_message_size: self.max_message_size,
            };
            validator.validate(&m.payload, &m.headers, &m.options)?;
            let route = SqsRoute::parse(&m.options)?;
            let id = m.message_id.to_string();
            let enc = encode(&id, &m.payload, &m.headers)?;
            let size = enc.size();
            let attributes: Map<String, Value> = enc
                .attributes
                .into_iter()
                .map(|(k, v)| (k, json!({"DataType": "String", "StringValue": v})))
                .collect();
            let mut entry = json!({
                "Id": i.to_string(),
                "MessageBody": enc.body,
                "MessageAttributes": attributes,
            });
            if let Some(d) = route.delay_seconds {
                entry["DelaySeconds"] = json!(d);
            }
            if route.is_fifo() {
                let group = match (&route.group, m.ordering_key.as_deref()) {
                    (Some(g), _) => g.clone(),
                    (None, Some(k)) => group_for_key(k),
                    // Keyless messages are not ordered: each is its own group.
                    (None, None) => id.clone(),
                };
                entry["MessageGroupId"] = json!(group);
                entry["MessageDeduplicationId"] = json!(route.dedup_id.clone().unwrap_or(id));
            }
            Ok(Prepared { route, entry, size })
        }

        /// The queue URL of a route, from the cache or `GetQueueUrl`.
        fn queue_url(
            &mut self,
            route: &SqsRoute,
            deadline: &Deadline,
        ) -> std::result::Result<String, CallError> {
            if route.queue.starts_with("http://") || route.queue.starts_with("https://") {
                return Ok(route.queue.clone());
            }
            if let Some(u) = self.urls.get(&route.queue) {
                return Ok(u.clone());
            }
            let answer =
                self.client
                    .call("GetQueueUrl", &json!({"QueueName": route.queue}), deadline)?;
            let url = answer
                .get("QueueUrl")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    CallError::Transport(Error::unavailable(
                        "sqs",
                        "GetQueueUrl answered without QueueUrl",
                    ))
                })?
                .to_string();
            self.urls.insert(route.queue.clone(), url.clone());
            Ok(url)
        }

        /// Sends one `SendMessageBatch` call; fills the outcomes of `entries`.
        /// `Err` = the call as a whole failed with a connection-level error.
        fn send_batch(
            &mut self,
            route: &SqsRoute,
            url: &str,
            entries: &[usize],
            prepared: &[Option<Prepared>],
            out: &mut [Option<Result<()>>],
            deadline: &Deadline,
        ) -> std::result::Result<(), Error> {
            let list: Vec<&Value> = entries
                .iter()
                .filter_map(|&i| prepared[i].as_ref().map(|p| &p.entry))
                .collect();
            let answer = match self.client.call(
                "SendMessageBatch",
                &json!({"QueueUrl": url, "Entries": list}),
                deadline,
            ) {
                Ok(a) => a,
                Err(e) => {
                    if e.code() == Some("QueueDoesNotExist") {
                        // Deleted since it was resolved: resolve again next time.
                        self.urls.remove(&route.queue);
                    }
                    // Only a transient failure (no answer) stops the rest of the batch;
                    // e.g. a credentials provider error is this chunk's alone.
                    let stops = e.stops_batch();
                    let err = e.into_error("sqs");
                    for &i in entries {
                        out[i] = Some(Err(err.duplicate("sqs")));
                    }
                    return if stops { Err(err) } else { Ok(()) };
                }
            };
            let mut ok: HashSet<usize> = HashSet::new();
            for s in answer
                .get("Successful")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(i) = s
                    .get("Id")
                    .and_then(Value::as_str)
                    .and_then(|s| s.parse().ok())
                {
                    ok.insert(i);
                }
            }
            let mut failed: HashMap<usize, Error> = HashMap::new();
            for f in answer
                .get("Failed")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let Some(i) = f
                    .get("Id")
                    .and_then(Value::as_str)
                    .and_then(|s| s.parse().ok())
                else {
                    continue;
                };
                let error = AwsError {
                    code: f
                        .get("Code")
                        .and_then(Value::as_str)
                        .unwrap_or("unknown")
                        .to_string(),
                    message: f
                        .get("Message")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                };
                let sender = f
                    .get("SenderFault")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                failed.insert(i, error.to_error("sqs", error.entry_kind(sender), ""));
            }
            for &i in entries {
                out[i] = Some(match failed.remove(&i) {
                    Some(e) => Err(e),
                    None if ok.contains(&i) => Ok(()),
                    None => Err(Error::unavailable("sqs", "entry missing from the answer")),
                });
            }
            Ok(())
        }
    }

    impl Stream for SqsStream {
        fn name(&self) -> &str {
            "sqs"
        }

        fn route_label<'a>(&self, options: &'a crate::message::Options) -> Option<&'a str> {
            crate::blocking::stream::route_option(options, crate::core::sqs::QUEUE_NAME)
        }

        /// An unsigned `GET` of the endpoint: a TLS mistake (untrusted
        /// certificate, wrong host name, TLS/plaintext mismatch) stops
        /// `Outbox::start` with [`Error::Tls`]; nothing is sent.
        fn connect(&mut self) -> Result<()> {
            self.client.probe()
        }

        fn validator(&self) -> Arc<dyn Validate> {
            Arc::new(SqsValidator {
                max_message_size: self.max_message_size,
            })
        }

        fn publish(&mut self, batch: &[StoredMessage], deadline: &Deadline) -> Vec<Result<()>> {
            let mut out: Vec<Option<Result<()>>> = (0..batch.len()).map(|_| None).collect();
            let mut prepared: Vec<Option<Prepared>> = Vec::with_capacity(batch.len());
            for (i, m) in batch.iter().enumerate() {
                match self.prepare(i, m) {
                    Ok(p) => prepared.push(Some(p)),
                    Err(e) => {
                        out[i] = Some(Err(e));
                        prepared.push(None);
                    }
                }
            }
            let mut failed_keys: HashSet<&str> = HashSet::new();
            // A connection failure: every later message gets it without another call.
            let mut down: Option<Error> = None;
            for wave in waves(batch.iter().map(|m| m.ordering_key.as_deref())) {
                // Per queue, in batch order.
                let mut by_queue: Vec<(SqsRoute, Vec<usize>)> = Vec::new();
                for &i in &wave {
                    if out[i].is_some() {
                        continue;
                    }
                    if let Some(k) = batch[i].ordering_key.as_deref() {
                        if failed_keys.contains(k) {
                            out[i] = Some(Err(held_back("sqs", k)));
                            continue;
                        }
                    }
                    if let Some(e) = &down {
                        out[i] = Some(Err(e.duplicate("sqs")));
                        continue;
                    }
                    let Some(p) = prepared[i].as_ref() else {
                        continue;
                    };
                    match by_queue.iter_mut().find(|(r, _)| r.queue == p.route.queue) {
                        Some((_, v)) => v.push(i),
                        None => by_queue.push((p.route.clone(), vec![i])),
                    }
                }
                for (route, entries) in by_queue {
                    if let Some(e) = &down {
                        for i in entries {
                            out[i] = Some(Err(e.duplicate("sqs")));
                        }
                        continue;
                    }
                    let url = match self.queue_url(&route, deadline) {
                        Ok(u) => u,
                        Err(e) => {
                            let stops = e.stops_batch();
                            let e = e.into_error("sqs");
                            for &i in &entries {
                                out[i] = Some(Err(e.duplicate("sqs")));
                            }
                            if stops {
                                down = Some(e);
                            }
                            continue;
                        }
                    };
                    // Chunks of 10 entries and at most max_message_size bytes.
                    let mut chunk: Vec<usize> = Vec::new();
                    let mut bytes = 0;
                    let mut chunks = Vec::new();
                    for i in entries {
                        let size = prepared[i].as_ref().map_or(0, |p| p.size);
                        if !chunk.is_empty()
                            && (chunk.len() == MAX_BATCH_ENTRIES
                                || bytes + size > self.max_message_size)
                        {
                            chunks.push(std::mem::take(&mut chunk));
                            bytes = 0;
                        }
                        chunk.push(i);
                        bytes += size;
                    }
                    chunks.push(chunk);
                    for chunk in chunks.into_iter().filter(|c| !c.is_empty()) {
                        if let Some(e) = &down {
                            for i in chunk {
                                out[i] = Some(Err(e.duplicate("sqs")));
                            }
                            continue;
                        }
                        if let Err(e) =
                            self.send_batch(&route, &url, &chunk, &prepared, &mut out, deadline)
                        {
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
                .map(|o| o.unwrap_or_else(|| Err(Error::unavailable("sqs", "not published"))))
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validator_counts_what_sqs_counts() {
        let v = SqsValidator {
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
        };
        let route: Options = queue("q").into();
        let mut headers = Headers::new();
        headers.insert("h".into(), "v".repeat(100));
        assert!(v
            .validate(&vec![b'a'; 200 * 1024], &headers, &route)
            .is_ok());
        assert!(matches!(
            v.validate(&vec![b'a'; 256 * 1024], &headers, &route),
            Err(Error::PayloadTooLarge { .. })
        ));
        // Binary payloads travel as base64: 4/3 of their size.
        assert!(matches!(
            v.validate(&vec![0xff; 200 * 1024], &Headers::new(), &route),
            Err(Error::PayloadTooLarge { .. })
        ));
        assert!(matches!(
            v.validate(b"x", &Headers::new(), &queue("q").delay_seconds(901).into()),
            Err(Error::InvalidOption { .. })
        ));
    }
}
