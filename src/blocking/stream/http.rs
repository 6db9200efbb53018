//! The one blocking HTTP stack of the cloud streams (SQS, Kinesis, Pub/Sub):
//! a `ureq` agent with timeouts, and retries of throttling, 5xx and connection
//! failures with backoff. Requests are rebuilt for every try, so that signed
//! requests (SigV4, OAuth tokens) are signed again with a fresh timestamp.

use crate::blocking::stream::Deadline;
use crate::core::retry::Backoff;
use crate::{Error, Result};
use std::time::{Duration, Instant};

/// One request, built by the stream for every try.
#[derive(Clone, Debug)]
pub(crate) struct HttpRequest {
    pub method: &'static str,
    pub url: String,
    /// Header values may carry secrets (Authorization): never log them.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// A response of any status (the stream reads service errors from the body).
#[derive(Clone, Debug)]
pub(crate) struct HttpResponse {
    pub status: u16,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// True for statuses worth retrying: throttling and server errors.
    pub fn is_retryable(&self) -> bool {
        retryable_status(self.status)
    }

    /// The body as lossy text, shortened, for error messages.
    pub fn body_text(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        let mut s: String = text.chars().take(300).collect();
        if text.chars().count() > 300 {
            s.push('…');
        }
        s
    }
}

/// 408, 429 and 5xx: the request may succeed later.
pub(crate) use crate::core::retry::retryable_http_status as retryable_status;

/// How often and how long to retry one call.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RetryPolicy {
    /// Tries in all (>= 1).
    pub attempts: u32,
    pub backoff: Backoff,
    /// No retry starts after this much time since the first try.
    pub deadline: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 4,
            backoff: Backoff::new(Duration::from_millis(50), Duration::from_secs(2))
                .unwrap_or_else(|_| unreachable!("constant backoff is valid")),
            deadline: Duration::from_secs(20),
        }
    }
}

/// A blocking HTTP client shared by the requests of one stream.
#[derive(Clone)]
pub(crate) struct HttpClient {
    agent: ureq::Agent,
    what: &'static str,
    /// Timeout of one request (cut to what is left of the caller's deadline).
    timeout: Duration,
    retry: RetryPolicy,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient")
            .field("what", &self.what)
            .field("timeout", &self.timeout)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

/// Headers whose values are credentials.
const SECRET_HEADERS: [&str; 3] = [
    "authorization",
    "proxy-authorization",
    "x-amz-security-token",
];

/// Largest response body read (service responses are small JSON documents;
/// Pub/Sub pulls in tests stay well below).
const MAX_RESPONSE: u64 = 64 * 1024 * 1024;

/// Less time than this left before the deadline: no request is started.
const MIN_REQUEST_TIME: Duration = Duration::from_millis(10);

/// Connections are opened within this, or the request's timeout if shorter.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl HttpClient {
    /// `what` names the service in errors (`sqs`, `kinesis`, `pubsub`).
    pub fn new(what: &'static str, timeout: Duration, retry: RetryPolicy) -> Self {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(timeout.min(CONNECT_TIMEOUT)))
            .timeout_global(Some(timeout))
            .max_idle_connections_per_host(8)
            .user_agent(concat!("outboxer/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        HttpClient {
            agent,
            what,
            timeout,
            retry,
        }
    }

    /// Sends once, within `timeout` (connect, send and read the whole answer).
    /// Transport failures are `Unavailable` / `Timeout` (transient); every HTTP
    /// status is returned as a response.
    pub fn send_once(&self, req: &HttpRequest, timeout: Duration) -> Result<HttpResponse> {
        let mut builder = ureq::http::Request::builder()
            .method(req.method)
            .uri(req.url.as_str());
        for (k, v) in &req.headers {
            let mut value =
                ureq::http::HeaderValue::from_str(v).map_err(|_| Error::InvalidUrl {
                    url: crate::core::redact::redact_url(&req.url),
                    reason: format!("header {k:?} has a value that is not valid in HTTP"),
                })?;
            // Any `Debug` of the request (ureq logs its state) shows a sensitive value
            // as `Sensitive`. ureq's trace level still dumps raw wire bytes (README).
            if SECRET_HEADERS.iter().any(|h| k.eq_ignore_ascii_case(h)) {
                value.set_sensitive(true);
            }
            builder = builder.header(k.as_str(), value);
        }
        let request = builder
            .body(req.body.clone())
            .map_err(|e| Error::InvalidUrl {
                url: crate::core::redact::redact_url(&req.url),
                reason: e.to_string(),
            })?;
        let request = self
            .agent
            .configure_request(request)
            .timeout_global(Some(timeout))
            .timeout_connect(Some(timeout.min(CONNECT_TIMEOUT)))
            .build();
        let mut resp = self
            .agent
            .run(request)
            .map_err(|e| transport_error(self.what, e))?;
        let status = resp.status().as_u16();
        let body = resp
            .body_mut()
            .with_config()
            .limit(MAX_RESPONSE)
            .read_to_vec()
            .map_err(|e| transport_error(self.what, e))?;
        Ok(HttpResponse { status, body })
    }

    /// Sends, retrying transport failures and retryable statuses with backoff.
    /// `build` is called for every try. After the last try, a transport failure
    /// is returned as its error and a retryable status as its response.
    #[cfg_attr(not(feature = "pubsub"), allow(dead_code))] // the AWS streams use send_with
    pub fn send(
        &self,
        build: impl FnMut() -> Result<HttpRequest>,
        deadline: &Deadline,
    ) -> Result<HttpResponse> {
        self.send_with(build, HttpResponse::is_retryable, deadline)
    }

    /// As [`HttpClient::send`], with the service's own notion of a retryable
    /// response (AWS reports throttling as HTTP 400 with an error code).
    ///
    /// Bounded by `deadline`: no try starts once it has expired (or the relay is
    /// stopping), no retry whose backoff would end past it, and each try's timeout
    /// is cut to what is left of it. So the call returns by the deadline, and when
    /// the relay stops, within the one request in flight.
    pub fn send_with(
        &self,
        mut build: impl FnMut() -> Result<HttpRequest>,
        retryable: impl Fn(&HttpResponse) -> bool,
        deadline: &Deadline,
    ) -> Result<HttpResponse> {
        let started = Instant::now();
        let mut attempt = 1;
        loop {
            let left = deadline.remaining();
            if deadline.expired() || left < MIN_REQUEST_TIME {
                return Err(Error::Timeout(format!(
                    "{}: the batch's deadline passed before the request was sent",
                    self.what
                )));
            }
            let req = build()?;
            let outcome = self.send_once(&req, self.timeout.min(left));
            let retry = match &outcome {
                Ok(r) => retryable(r),
                Err(e) => e.is_transient(),
            };
            let delay = self.retry.backoff.delay(attempt);
            if !retry
                || attempt >= self.retry.attempts
                || started.elapsed() + delay > self.retry.deadline
                || delay + MIN_REQUEST_TIME >= deadline.remaining()
            {
                return outcome;
            }
            match &outcome {
                Ok(r) => log::debug!(
                    "{}: HTTP {} on try {attempt}, retrying in {delay:?}",
                    self.what,
                    r.status
                ),
                Err(e) => log::debug!("{}: {e} on try {attempt}, retrying in {delay:?}", self.what),
            }
            if !deadline.wait(delay) {
                // The relay is stopping: no new try.
                return outcome;
            }
            attempt += 1;
        }
    }
}

fn transport_error(what: &'static str, e: ureq::Error) -> Error {
    match e {
        ureq::Error::Timeout(t) => Error::Timeout(format!("{what}: {t}")),
        // The error text of ureq names the host, never credentials (those are headers).
        other => Error::unavailable(what, other),
    }
}

/// The error for a non-2xx response the stream does not handle itself:
/// retryable statuses are transient (`Unavailable`), others are `Rejected`.
#[cfg_attr(not(feature = "pubsub"), allow(dead_code))] // AWS reads its own error bodies
pub(crate) fn status_error(what: &'static str, resp: &HttpResponse) -> Error {
    if resp.is_retryable() {
        Error::unavailable(what, format!("HTTP {}: {}", resp.status, resp.body_text()))
    } else {
        Error::Rejected(format!(
            "{what}: HTTP {}: {}",
            resp.status,
            resp.body_text()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttling_and_server_errors_are_retryable() {
        for s in [408, 429, 500, 502, 503, 504] {
            assert!(retryable_status(s), "{s}");
        }
        for s in [200, 400, 401, 403, 404, 413] {
            assert!(!retryable_status(s), "{s}");
        }
    }

    #[test]
    fn status_errors_are_classified() {
        let busy = HttpResponse {
            status: 503,
            body: b"slow down".to_vec(),
        };
        assert!(status_error("sqs", &busy).is_transient());
        let denied = HttpResponse {
            status: 403,
            body: b"denied".to_vec(),
        };
        let e = status_error("sqs", &denied);
        assert!(!e.is_transient() && matches!(e, Error::Rejected(_)), "{e}");
    }

    /// Sends to port 9 (discard, not served on loopback here), counting the tries.
    fn counting_send(client: &HttpClient, deadline: &Deadline) -> (usize, Result<HttpResponse>) {
        let mut tries = 0;
        let out = client.send(
            || {
                tries += 1;
                Ok(HttpRequest {
                    method: "POST",
                    url: "http://127.0.0.1:9/".into(),
                    headers: vec![],
                    body: vec![],
                })
            },
            deadline,
        );
        (tries, out)
    }

    #[test]
    fn nothing_is_sent_past_the_deadline_or_once_the_relay_stops() {
        let client = HttpClient::new("test", Duration::from_secs(2), RetryPolicy::default());
        let past = Deadline::at(Instant::now());
        let (tries, out) = counting_send(&client, &past);
        assert_eq!(tries, 0);
        assert!(matches!(out, Err(Error::Timeout(_))), "{out:?}");
        let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
        drop(stop_tx);
        let stopping = Deadline::with_stop(Instant::now() + Duration::from_secs(60), stop_rx);
        let (tries, out) = counting_send(&client, &stopping);
        assert_eq!(tries, 0);
        assert!(matches!(out, Err(Error::Timeout(_))), "{out:?}");
        // A retry whose backoff would end past the deadline is not made.
        let client = HttpClient::new(
            "test",
            Duration::from_secs(2),
            RetryPolicy {
                attempts: 5,
                backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(1))
                    .expect("backoff"),
                deadline: Duration::from_secs(60),
            },
        );
        let (tries, out) = counting_send(&client, &Deadline::after(Duration::from_millis(300)));
        assert_eq!(tries, 1);
        assert!(matches!(out, Err(e) if e.is_transient()));
    }

    #[test]
    fn connection_refused_is_transient_after_retries() {
        let client = HttpClient::new(
            "test",
            Duration::from_secs(2),
            RetryPolicy {
                attempts: 2,
                backoff: Backoff::new(Duration::from_millis(1), Duration::from_millis(2))
                    .expect("backoff"),
                deadline: Duration::from_secs(5),
            },
        );
        let (tries, out) = counting_send(&client, &Deadline::after(Duration::from_secs(60)));
        assert_eq!(tries, 2);
        assert!(matches!(out, Err(e) if e.is_transient()));
    }
}
