//! What the SQS and Kinesis streams share: credentials, region and endpoint
//! resolution, SigV4 signing (`aws-sigv4`) and one signed AWS JSON call over
//! the shared HTTP client, with service errors read from the body.

pub use crate::core::aws::{
    AwsError, AwsErrorKind, AwsUrl, Credentials, CredentialsProvider, EnvCredentials,
};

#[cfg(feature = "_aws")]
#[doc(hidden)]
pub use self::client::{AwsClient, Service};
#[cfg(feature = "_aws")]
pub(crate) use self::client::{AwsSettings, CallError};

/// The setters both AWS stream builders have (their `aws: AwsSettings` field):
/// one definition, so that SQS and Kinesis are configured alike.
#[cfg(feature = "_aws")]
macro_rules! aws_builder_setters {
    () => {
        /// The region (instead of the URL's or the environment's).
        pub fn region(mut self, region: &str) -> Self {
            self.aws.region = Some(region.to_string());
            self
        }
        /// The endpoint, e.g. `http://127.0.0.1:4566` (moto, LocalStack, a VPC endpoint).
        pub fn endpoint(mut self, endpoint: &str) -> Self {
            self.aws.endpoint = Some(endpoint.to_string());
            self
        }
        /// TLS of an `https://` endpoint: a CA bundle that replaces the built-in
        /// webpki roots (a private endpoint, a TLS-intercepting proxy), a client
        /// certificate. The chain and the host name are always verified unless
        /// [`Tls::danger_accept_invalid_certificates`](crate::tls::Tls::danger_accept_invalid_certificates)
        /// says otherwise; [`Tls::verify_ca`](crate::tls::Tls::verify_ca) is
        /// refused (ureq checks names). Overrides the URL's `ca_file` and
        /// `AWS_CA_BUNDLE`; settings for an `http://` endpoint are refused at `build`.
        pub fn tls(mut self, tls: crate::tls::Tls) -> Self {
            self.aws.tls = Some(tls);
            self
        }
        /// Static credentials.
        pub fn credentials(mut self, credentials: Credentials) -> Self {
            self.aws.provider = Some(Arc::new(credentials));
            self
        }
        /// A credentials provider, asked before every request.
        pub fn credentials_provider(mut self, p: impl CredentialsProvider + 'static) -> Self {
            self.aws.provider = Some(Arc::new(p));
            self
        }
        /// Timeout of one HTTP request (default 10 s), cut to what is left of the
        /// batch's deadline. Also how long the relay's `stop()` waits at most for a
        /// request in flight.
        pub fn request_timeout(mut self, d: Duration) -> Self {
            self.aws.timeout = d;
            self
        }
        /// Tries per request (default 4: the first and 3 retries after throttling,
        /// 5xx or a connection failure, with backoff; 1..=20); no retry starts past
        /// the batch's deadline.
        pub fn request_attempts(mut self, n: u32) -> Self {
            self.aws.attempts = n;
            self
        }
    };
}
#[cfg(feature = "_aws")]
pub(crate) use aws_builder_setters;

#[cfg(feature = "_aws")]
mod client {
    use super::*;
    use crate::blocking::stream::http::{
        HttpClient, HttpRequest, HttpResponse, HttpTls, RetryPolicy,
    };
    use crate::blocking::stream::Deadline;
    use crate::core::aws::{check_endpoint, check_region, endpoint_from_env, region_from_env};
    use crate::core::retry::Backoff;
    use crate::{Error, Result};
    use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
    use aws_sigv4::sign::v4;
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    /// An AWS JSON service (for [`AwsClient`]; not public API, not covered by semver).
    #[doc(hidden)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Service {
        /// SQS (JSON 1.0 protocol).
        Sqs,
        /// Kinesis Data Streams (JSON 1.1 protocol).
        Kinesis,
    }

    impl Service {
        fn name(self) -> &'static str {
            match self {
                Service::Sqs => "sqs",
                Service::Kinesis => "kinesis",
            }
        }
        fn target_prefix(self) -> &'static str {
            match self {
                Service::Sqs => "AmazonSQS",
                Service::Kinesis => "Kinesis_20131202",
            }
        }
        fn content_type(self) -> &'static str {
            match self {
                Service::Sqs => "application/x-amz-json-1.0",
                Service::Kinesis => "application/x-amz-json-1.1",
            }
        }
    }

    /// The settings both stream builders share.
    #[derive(Clone, Debug)]
    pub(crate) struct AwsSettings {
        pub url: std::result::Result<AwsUrl, String>,
        pub redacted: String,
        pub region: Option<String>,
        pub endpoint: Option<String>,
        pub provider: Option<Arc<dyn CredentialsProvider>>,
        pub timeout: Duration,
        pub attempts: u32,
        pub tls: Option<crate::tls::Tls>,
    }

    /// The AWS SDKs' CA bundle variable, used when neither the builder nor the URL
    /// gives TLS settings.
    pub(crate) const CA_BUNDLE_ENV: &str = "AWS_CA_BUNDLE";

    impl AwsSettings {
        pub fn new(url: &str, service: Service) -> Self {
            AwsSettings {
                url: AwsUrl::parse(url, service.name()),
                redacted: AwsUrl::redact(url),
                region: None,
                endpoint: None,
                provider: None,
                timeout: Duration::from_secs(10),
                attempts: 4,
                tls: None,
            }
        }

        /// Builder settings first, then the URL, then the environment.
        pub fn build(self, service: Service) -> Result<AwsClient> {
            let url = self.url.map_err(|reason| Error::InvalidUrl {
                url: self.redacted.clone(),
                reason,
            })?;
            let region = self
                .region
                .or(url.region)
                .or_else(region_from_env)
                .ok_or_else(|| {
                    Error::config(
                        "region",
                        "no region: give one in the URL, the builder or AWS_REGION",
                    )
                })?;
            check_region(&region).map_err(|e| Error::config("region", e))?;
            let endpoint = match self
                .endpoint
                .or(url.endpoint)
                .or_else(|| endpoint_from_env(service.name()))
            {
                Some(e) => check_endpoint(&e).map_err(|e| Error::config("endpoint", e))?,
                // The service's public regional endpoint.
                None => format!("https://{}.{region}.amazonaws.com", service.name()),
            };
            let tls = match self.tls.or(url.tls) {
                Some(t) => HttpTls::from_settings(&t, "tls")?,
                None => HttpTls::from_env_ca(CA_BUNDLE_ENV, &endpoint)?,
            };
            tls.check_scheme("tls", &endpoint)?;
            let provider: Arc<dyn CredentialsProvider> = match (self.provider, url.credentials) {
                (Some(p), _) => p,
                (None, Some(c)) => Arc::new(c),
                (None, None) => Arc::new(EnvCredentials),
            };
            if self.timeout < Duration::from_millis(10) || self.timeout > Duration::from_secs(600) {
                return Err(Error::config(
                    "request_timeout",
                    "must be within 10ms..=600s",
                ));
            }
            if !(1..=20).contains(&self.attempts) {
                return Err(Error::config("request_attempts", "must be within 1..=20"));
            }
            let retry = RetryPolicy {
                attempts: self.attempts,
                backoff: Backoff::new(Duration::from_millis(50), Duration::from_secs(2))?,
                deadline: (self.timeout * 2).max(Duration::from_secs(20)),
            };
            Ok(AwsClient {
                http: HttpClient::new(service.name(), self.timeout, retry, &tls),
                service,
                region,
                endpoint,
                provider,
            })
        }
    }

    /// A failed call.
    #[derive(Debug)]
    pub(crate) enum CallError {
        /// No answer (transient `Unavailable`/`Timeout`) or no credentials.
        Transport(Error),
        /// The service answered with an error.
        Service { status: u16, error: AwsError },
    }

    impl CallError {
        /// The error per [`AwsError::kind`]: refused credentials or permissions are
        /// `Unauthorized`, throttling and 5xx `Unavailable` (both outages, never
        /// counted); a missing queue or stream, validation errors and the rest are
        /// `Rejected` (the message's own failure).
        pub fn into_error(self, what: &'static str) -> Error {
            match self {
                CallError::Transport(e) => e,
                CallError::Service { status, error } => {
                    error.to_error(what, error.kind(status), &format!("HTTP {status}: "))
                }
            }
        }

        /// True when no service answered (connection, timeout) or the credentials
        /// could not be had: every later call of the batch would fail alike. A
        /// service's answer (even a refusal) concerns its own route only.
        pub fn stops_batch(&self) -> bool {
            matches!(self, CallError::Transport(e) if e.is_transient())
        }

        /// The service's error code, if it answered.
        #[cfg_attr(not(feature = "sqs"), allow(dead_code))]
        pub fn code(&self) -> Option<&str> {
            match self {
                CallError::Service { error, .. } => Some(&error.code),
                CallError::Transport(_) => None,
            }
        }
    }

    /// A signed AWS JSON client. Public for outboxer's own tests and bench only:
    /// **not public API, not covered by semver**.
    #[doc(hidden)]
    #[derive(Clone)]
    pub struct AwsClient {
        http: HttpClient,
        service: Service,
        region: String,
        endpoint: String,
        provider: Arc<dyn CredentialsProvider>,
    }

    impl std::fmt::Debug for AwsClient {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("AwsClient")
                .field("service", &self.service)
                .field("region", &self.region)
                .field("endpoint", &self.endpoint)
                .field("provider", &self.provider)
                .finish()
        }
    }

    fn aws_error(resp: &HttpResponse) -> AwsError {
        AwsError::parse(&resp.body).unwrap_or_else(|| AwsError {
            code: format!("HTTP{}", resp.status),
            message: resp.body_text(),
        })
    }

    impl AwsClient {
        /// A client from a `sqs://` / `kinesis://` URL (tests and bench).
        #[doc(hidden)]
        pub fn connect(url: &str, service: Service) -> Result<AwsClient> {
            AwsSettings::new(url, service).build(service)
        }

        /// Calls `action` with a JSON body; the decoded JSON answer or the error.
        #[doc(hidden)]
        pub fn call_json(
            &self,
            action: &str,
            body: &serde_json::Value,
        ) -> Result<serde_json::Value> {
            // Bounded by the client's own timeout and retry budget only.
            let deadline = Deadline::after(Duration::from_secs(3600));
            self.call(action, body, &deadline)
                .map_err(|e| e.into_error(self.service.name()))
        }

        /// An unsigned `GET` of the endpoint (`Stream::connect`): the TLS handshake
        /// and an HTTP answer, with no side effect and no permission needed.
        pub(crate) fn probe(&self) -> Result<()> {
            self.http.probe(&format!("{}/", self.endpoint))
        }

        /// One call, retried within `deadline` (see [`HttpClient::send_with`]).
        pub(crate) fn call(
            &self,
            action: &str,
            body: &serde_json::Value,
            deadline: &Deadline,
        ) -> std::result::Result<serde_json::Value, CallError> {
            let body = body.to_string().into_bytes();
            let target = format!("{}.{action}", self.service.target_prefix());
            let resp = self
                .http
                .send_with(
                    || self.signed(&target, &body),
                    |r| r.is_retryable() || (r.status == 400 && aws_error(r).is_throttling()),
                    deadline,
                )
                .map_err(CallError::Transport)?;
            if (200..300).contains(&resp.status) {
                serde_json::from_slice(&resp.body).map_err(|e| {
                    CallError::Transport(Error::unavailable(
                        self.service.name(),
                        format!("unreadable answer to {action}: {e}"),
                    ))
                })
            } else {
                Err(CallError::Service {
                    status: resp.status,
                    error: aws_error(&resp),
                })
            }
        }

        /// A request signed now (every retry is signed again).
        fn signed(&self, target: &str, body: &[u8]) -> Result<HttpRequest> {
            let creds = self.provider.credentials().map_err(|e| match e {
                // The provider's own outage (e.g. an instance metadata timeout) stays one.
                e
                @ (Error::Unavailable { .. } | Error::Timeout(_) | Error::Unauthorized { .. }) => e,
                e => Error::unauthorized(self.service.name(), format!("credentials provider: {e}")),
            })?;
            let url = format!("{}/", self.endpoint);
            let mut headers = vec![
                (
                    "content-type".to_string(),
                    self.service.content_type().to_string(),
                ),
                ("x-amz-target".to_string(), target.to_string()),
            ];
            let identity = aws_credential_types::Credentials::new(
                creds.access_key_id(),
                creds.secret_access_key(),
                creds.session_token().map(str::to_string),
                None,
                "outboxer",
            )
            .into();
            // Unusable credentials: an outage of the credentials, like a refusal.
            let sign_error = |e: &dyn std::fmt::Display| {
                Error::unauthorized(self.service.name(), format!("signing: {e}"))
            };
            let params = v4::SigningParams::builder()
                .identity(&identity)
                .region(&self.region)
                .name(self.service.name())
                .time(SystemTime::now())
                .settings(SigningSettings::default())
                .build()
                .map_err(|e| sign_error(&e))?
                .into();
            let signable = SignableRequest::new(
                "POST",
                url.as_str(),
                headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
                SignableBody::Bytes(body),
            )
            .map_err(|e| sign_error(&e))?;
            let (instructions, _signature) = sign(signable, &params)
                .map_err(|e| sign_error(&e))?
                .into_parts();
            let (signing_headers, _) = instructions.into_parts();
            for h in signing_headers {
                headers.push((h.name().to_string(), h.value().to_string()));
            }
            Ok(HttpRequest {
                method: "POST",
                url,
                headers,
                body: body.to_vec(),
            })
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn service(status: u16, code: &str) -> Error {
            CallError::Service {
                status,
                error: AwsError {
                    code: code.to_string(),
                    message: "m".into(),
                },
            }
            .into_error("sqs")
        }

        /// Credentials and permissions are outages (`Unauthorized`, never counted):
        /// SQS and Kinesis share this one table.
        #[test]
        fn credentials_and_permission_errors_are_unauthorized() {
            for code in [
                "AccessDenied",
                "AccessDeniedException",
                "ExpiredToken",
                "ExpiredTokenException",
                "UnrecognizedClientException",
                "InvalidSignatureException",
                "SignatureDoesNotMatch",
                "InvalidClientTokenId",
                "MissingAuthenticationToken",
                "MissingAuthenticationTokenException",
                "IncompleteSignature",
                "InvalidAccessKeyId",
                "RequestExpired",
                "KMSAccessDeniedException",
                "KmsAccessDenied",
            ] {
                for status in [400, 403] {
                    let e = service(status, code);
                    assert!(
                        matches!(e, Error::Unauthorized { what: "sqs", .. }),
                        "{status} {code}: {e:?}"
                    );
                }
            }
            // Any 401/403, whatever the body says.
            for status in [401, 403] {
                let e = service(status, &format!("HTTP{status}"));
                assert!(matches!(e, Error::Unauthorized { .. }), "{status}: {e:?}");
            }
        }

        /// A route wrong for the message stays the message's own failure (counted,
        /// parked after max_attempts); throttling and 5xx stay `Unavailable`.
        #[test]
        fn wrong_routes_are_message_failures_and_throttling_is_transient() {
            for code in [
                "QueueDoesNotExist",
                "AWS.SimpleQueueService.NonExistentQueue",
                "ResourceNotFoundException",
                "InvalidParameterValue",
                "InvalidMessageContents",
                "ValidationException",
                "BatchRequestTooLong",
                "InvalidArgumentException",
            ] {
                let e = service(400, code);
                assert!(
                    matches!(e, Error::Rejected(_)) && !e.is_transient(),
                    "{code}: {e:?}"
                );
            }
            for (status, code) in [
                (400, "ThrottlingException"),
                (400, "ProvisionedThroughputExceededException"),
                (400, "KMSThrottlingException"),
                (500, "InternalFailure"),
                (503, "HTTP503"),
                (429, "HTTP429"),
            ] {
                let e = service(status, code);
                assert!(matches!(e, Error::Unavailable { .. }), "{code}: {e:?}");
            }
        }
    }
}
