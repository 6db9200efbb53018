//! Google Pub/Sub stream over the REST API (`projects/P/topics/T:publish`) on the
//! shared blocking HTTP stack: headers as attributes plus `outboxer-message-id`,
//! the payload byte-exact in `data`, batches within Pub/Sub's 1000 messages /
//! 10 MB, ordering keys published in sequence, and OAuth tokens from a
//! service-account key, a static token or the GCE metadata server (none for an
//! emulator).
//!
//! The routing builders ([`topic`]) and the validator are available without the
//! `pubsub` feature, for services that only enqueue.

pub use crate::core::pubsub::{
    topic, PubSubRoute, PubSubUrl, CREDENTIALS_ENV, EMULATOR_ENV, MAX_MESSAGE_SIZE,
    METADATA_BASE_URL, METADATA_TOKEN_PATH, ORDERING_KEY, PUBSUB_ENDPOINT, PUBSUB_SCOPE,
    TOPIC_NAME,
};

use super::Validate;
use crate::message::{Headers, Options};
use crate::Result;

/// Checks Pub/Sub options, attributes and size at `send`.
///
/// The message's own ordering key is not known here; it is checked (length) and
/// counted (size) again at publish.
#[derive(Clone, Debug)]
pub struct PubSubValidator {
    /// Largest data plus attributes (and ordering key) accepted, in bytes.
    pub max_message_size: usize,
}

impl Default for PubSubValidator {
    fn default() -> Self {
        PubSubValidator {
            max_message_size: MAX_MESSAGE_SIZE,
        }
    }
}

impl Validate for PubSubValidator {
    fn validate(&self, payload: &[u8], headers: &Headers, options: &Options) -> Result<()> {
        crate::core::pubsub::validate(payload, headers, options, None, self.max_message_size)
            .map(|_| ())
    }
}

#[cfg(feature = "pubsub")]
pub use self::driver::{
    AccessToken, MetadataServer, PubSubStream, PubSubStreamBuilder, ServiceAccount, StaticToken,
    TokenProvider,
};

#[cfg(feature = "pubsub")]
mod driver {
    use super::*;
    use crate::blocking::stream::http::{status_error, HttpClient, HttpRequest, RetryPolicy};
    use crate::blocking::stream::{Deadline, Stream};
    use crate::core::pubsub::{
        effective_ordering_key, jwt_signing_input, message_size, parse_token_response,
        pem_pkcs8_der, plan, PlanItem, PlannedRequest, ServiceAccountKey, MAX_MESSAGES_PER_REQUEST,
    };
    use crate::core::retry::Backoff;
    use crate::core::waves::held_back;
    use crate::message::{StoredMessage, MESSAGE_ID_HEADER};
    use crate::Error;
    use base64::Engine as _;
    use parking_lot::Mutex;
    use serde_json::{Map, Value};
    use std::collections::HashSet;
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

    /// An OAuth access token and its lifetime. `Debug` never shows the token.
    #[derive(Clone)]
    pub struct AccessToken {
        secret: String,
        expires_in: Option<Duration>,
    }

    impl AccessToken {
        /// A token valid for `expires_in` (`None`: until the server refuses it).
        pub fn new(secret: impl Into<String>, expires_in: Option<Duration>) -> Self {
            AccessToken {
                secret: secret.into(),
                expires_in,
            }
        }
        /// The token itself (a secret: never log it).
        pub fn secret(&self) -> &str {
            &self.secret
        }
        /// How long the token is valid from when it was fetched.
        pub fn expires_in(&self) -> Option<Duration> {
            self.expires_in
        }
    }

    impl std::fmt::Debug for AccessToken {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("AccessToken")
                .field("secret", &"***")
                .field("expires_in", &self.expires_in)
                .finish()
        }
    }

    /// Where the stream gets OAuth access tokens. The stream caches the token and
    /// calls `fetch_token` again shortly before it expires (or after a 401).
    ///
    /// Errors should be transient ([`Error::Unavailable`]) unless retrying can never
    /// help: the relay then keeps the messages and tries again later.
    pub trait TokenProvider: Send + Sync + std::fmt::Debug {
        /// Fetches a new token.
        fn fetch_token(&self) -> Result<AccessToken>;

        /// Fetches a new token for a publish that must end by `deadline` (the stream
        /// calls this one). The default ignores the deadline and calls
        /// [`TokenProvider::fetch_token`]; the providers of this crate that fetch over
        /// HTTP stop retrying at the deadline and cut their request timeout to it.
        fn fetch_token_within(&self, deadline: &Deadline) -> Result<AccessToken> {
            let _ = deadline;
            self.fetch_token()
        }
    }

    fn token_http(timeout: Duration) -> HttpClient {
        HttpClient::new("pubsub auth", timeout, RetryPolicy::default())
    }

    /// A token that never changes (e.g. from `gcloud auth print-access-token`).
    #[derive(Clone)]
    pub struct StaticToken(String);

    impl StaticToken {
        /// Wraps a token.
        pub fn new(token: impl Into<String>) -> Self {
            StaticToken(token.into())
        }
    }

    impl std::fmt::Debug for StaticToken {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("StaticToken(***)")
        }
    }

    impl TokenProvider for StaticToken {
        fn fetch_token(&self) -> Result<AccessToken> {
            Ok(AccessToken::new(self.0.clone(), None))
        }
    }

    /// A service-account key: signs an RS256 JWT and exchanges it at the key's
    /// `token_uri` (grant type `jwt-bearer`) for an access token.
    pub struct ServiceAccount {
        key: ServiceAccountKey,
        signer: ring::signature::RsaKeyPair,
        scope: String,
        http: HttpClient,
    }

    impl std::fmt::Debug for ServiceAccount {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("ServiceAccount")
                .field("client_email", &self.key.client_email)
                .field("token_uri", &self.key.token_uri)
                .field("scope", &self.scope)
                .finish_non_exhaustive()
        }
    }

    fn credentials_error(reason: impl std::fmt::Display) -> Error {
        Error::config("credentials", reason)
    }

    impl ServiceAccount {
        /// Reads a service-account JSON key file (as downloaded from the console).
        pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
            let path = path.as_ref();
            let text = std::fs::read(path)
                .map_err(|e| credentials_error(format!("reading {}: {e}", path.display())))?;
            Self::from_json(&text)
        }

        /// Reads a service-account JSON key. Errors never quote the key.
        pub fn from_json(json: &[u8]) -> Result<Self> {
            let key = ServiceAccountKey::parse(json).map_err(credentials_error)?;
            let der = pem_pkcs8_der(&key.private_key).map_err(credentials_error)?;
            let signer = ring::signature::RsaKeyPair::from_pkcs8(&der).map_err(|e| {
                credentials_error(format!("the private key is not a usable RSA key: {e}"))
            })?;
            Ok(ServiceAccount {
                key,
                signer,
                scope: PUBSUB_SCOPE.to_string(),
                http: token_http(Duration::from_secs(30)),
            })
        }

        /// The OAuth scope asked for (default [`PUBSUB_SCOPE`]).
        pub fn scope(mut self, scope: impl Into<String>) -> Self {
            self.scope = scope.into();
            self
        }

        /// The signed JWT (`header.claims.signature`).
        fn assertion(&self) -> Result<String> {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let input = jwt_signing_input(&self.key, &self.scope, now);
            let mut sig = vec![0u8; self.signer.public().modulus_len()];
            self.signer
                .sign(
                    &ring::signature::RSA_PKCS1_SHA256,
                    &ring::rand::SystemRandom::new(),
                    input.as_bytes(),
                    &mut sig,
                )
                .map_err(|_| credentials_error("signing the JWT failed"))?;
            Ok(format!("{input}.{}", crate::core::pubsub::b64url(&sig)))
        }
    }

    impl TokenProvider for ServiceAccount {
        fn fetch_token(&self) -> Result<AccessToken> {
            self.fetch_token_within(&Deadline::after(UNBOUNDED))
        }

        fn fetch_token_within(&self, deadline: &Deadline) -> Result<AccessToken> {
            let assertion = self.assertion()?;
            let body = format!(
                "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={assertion}"
            );
            let resp = self.http.send(
                || {
                    Ok(HttpRequest {
                        method: "POST",
                        url: self.key.token_uri.clone(),
                        headers: vec![(
                            "content-type".into(),
                            "application/x-www-form-urlencoded".into(),
                        )],
                        body: body.clone().into_bytes(),
                    })
                },
                deadline,
            )?;
            token_from(&resp, "token exchange")
        }
    }

    /// Reads a token response. A refusal (4xx) is `Unauthorized`, a busy server
    /// (408/429/5xx) `Unavailable`: both transient, since credentials or clock may be
    /// fixed without touching the messages.
    fn token_from(
        resp: &crate::blocking::stream::http::HttpResponse,
        what: &str,
    ) -> Result<AccessToken> {
        if !(200..300).contains(&resp.status) {
            // The body of an OAuth error names the error, never the assertion.
            let reason = format!("{what}: HTTP {}: {}", resp.status, resp.body_text());
            return Err(if resp.is_retryable() {
                Error::unavailable("pubsub auth", reason)
            } else {
                Error::unauthorized("pubsub auth", reason)
            });
        }
        let (token, expires_in) = parse_token_response(&resp.body)
            .map_err(|e| Error::unavailable("pubsub auth", format!("{what}: {e}")))?;
        Ok(AccessToken::new(token, expires_in.map(Duration::from_secs)))
    }

    /// The metadata server of GCE, GKE and Cloud Run: the attached service
    /// account's token, from [`METADATA_BASE_URL`] unless overridden.
    #[derive(Clone, Debug)]
    pub struct MetadataServer {
        base_url: String,
        http: HttpClient,
    }

    impl Default for MetadataServer {
        fn default() -> Self {
            Self::new()
        }
    }

    impl MetadataServer {
        /// The metadata server at [`METADATA_BASE_URL`].
        pub fn new() -> Self {
            Self::with_base_url(METADATA_BASE_URL)
        }
        /// A metadata server elsewhere (e.g. `http://127.0.0.1:8080`, or
        /// `GCE_METADATA_HOST` of a proxy).
        pub fn with_base_url(base_url: &str) -> Self {
            MetadataServer {
                base_url: base_url.trim_end_matches('/').to_string(),
                http: token_http(Duration::from_secs(10)),
            }
        }
    }

    impl TokenProvider for MetadataServer {
        /// Any failure is `Unauthorized`: without its metadata server (absent outside
        /// Google Cloud, or failing) the workload has no credentials.
        fn fetch_token(&self) -> Result<AccessToken> {
            self.fetch_token_within(&Deadline::after(UNBOUNDED))
        }

        fn fetch_token_within(&self, deadline: &Deadline) -> Result<AccessToken> {
            let url = format!("{}{METADATA_TOKEN_PATH}", self.base_url);
            self.http
                .send(
                    || {
                        Ok(HttpRequest {
                            method: "GET",
                            url: url.clone(),
                            headers: vec![("metadata-flavor".into(), "Google".into())],
                            body: Vec::new(),
                        })
                    },
                    deadline,
                )
                .and_then(|resp| token_from(&resp, "metadata server"))
                .map_err(|e| match e {
                    e @ Error::Unauthorized { .. } => e,
                    e => Error::unauthorized("pubsub auth", format!("metadata server: {e}")),
                })
        }
    }

    /// The current token, refreshed shortly before it expires.
    #[derive(Debug)]
    struct TokenCache {
        provider: Arc<dyn TokenProvider>,
        current: Mutex<Option<(AccessToken, Option<Instant>)>>,
    }

    impl TokenCache {
        fn new(provider: Arc<dyn TokenProvider>) -> Self {
            TokenCache {
                provider,
                current: Mutex::new(None),
            }
        }

        fn bearer(&self, deadline: &Deadline) -> Result<String> {
            let mut cur = self.current.lock();
            let fresh = matches!(&*cur, Some((_, refresh_at)) if refresh_at.is_none_or(|r| Instant::now() < r));
            if !fresh {
                let fetched_at = Instant::now();
                let token = self.provider.fetch_token_within(deadline).map_err(|e| {
                    if e.is_transient() {
                        e
                    } else {
                        // No token, e.g. a key that cannot sign: an outage of the
                        // credentials, never the messages' fault.
                        Error::unauthorized("pubsub auth", e)
                    }
                })?;
                // Refresh before expiry: 5 minutes early, or halfway for short tokens.
                // A server's absurd lifetime must not overflow the clock: at most a day.
                let refresh_at = token.expires_in().map(|life| {
                    let life = life.min(Duration::from_secs(86_400));
                    fetched_at + (life - (life / 2).min(Duration::from_secs(300)))
                });
                *cur = Some((token, refresh_at));
            }
            match &*cur {
                Some((t, _)) => Ok(format!("Bearer {}", t.secret())),
                None => Err(Error::unavailable("pubsub auth", "no token")),
            }
        }

        fn invalidate(&self) {
            *self.current.lock() = None;
        }
    }

    /// Settings of a [`PubSubStream`].
    #[derive(Clone, Debug)]
    pub struct PubSubStreamBuilder {
        url: std::result::Result<PubSubUrl, String>,
        raw: String,
        emulator: Option<String>,
        endpoint: Option<String>,
        credentials: Option<PathBuf>,
        provider: Option<Arc<dyn TokenProvider>>,
        timeout: Duration,
        attempts: u32,
        concurrency: usize,
        max_message_size: usize,
    }

    /// Publishes to Google Pub/Sub over REST, with a per-message outcome.
    ///
    /// Every message carries its headers as attributes plus `outboxer-message-id`;
    /// its Pub/Sub ordering key is the `ordering_key` option, else the message's
    /// ordering key. Messages of one key are published one request after the
    /// other; if one fails, the later ones of that key in the batch are not sent
    /// (transient error). Keyless messages are batched per topic. Requests run on
    /// up to `concurrency` threads.
    ///
    /// A publish succeeds only with one `messageIds` entry per message sent. A token
    /// endpoint that refuses (4xx), a metadata server that fails, and a 401/403 from
    /// the API that persists after one token refresh are [`Error::Unauthorized`]: an
    /// outage, released without counting an attempt. A topic that does not exist
    /// (404) stays the message's own failure.
    ///
    /// Bounds: `publish` ends by the relay's deadline: no request, retry or token
    /// fetch (of this crate's providers, see [`TokenProvider::fetch_token_within`])
    /// starts after it, each request's timeout is cut to what is left of it, and the
    /// per-key jobs stop; messages without an outcome get a transient
    /// [`Error::Timeout`]. Against a server that never answers, `stop()` waits at
    /// most for the requests in flight: one [`request_timeout`](PubSubStreamBuilder::request_timeout)
    /// (default 30 s).
    ///
    /// ```no_run
    /// # fn main() -> Result<(), outboxer::Error> {
    /// use outboxer::stream::PubSubStream;
    /// // The emulator: no auth, plain HTTP.
    /// let stream = PubSubStream::connect("pubsub://my-project?emulator=127.0.0.1:8086")?;
    /// // Google: a service-account key file (else GOOGLE_APPLICATION_CREDENTIALS,
    /// // else the metadata server).
    /// let stream = PubSubStream::connect("pubsub://my-project?credentials=/etc/key.json")?;
    /// # Ok(()) }
    /// ```
    pub struct PubSubStream {
        project: String,
        base: String,
        auth: Option<Arc<TokenCache>>,
        http: HttpClient,
        concurrency: usize,
        max_message_size: usize,
    }

    impl std::fmt::Debug for PubSubStream {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("PubSubStream")
                .field("project", &self.project)
                .field("endpoint", &self.base)
                .field("auth", &self.auth.as_ref().map(|a| &a.provider))
                .finish()
        }
    }

    /// Where requests go and how they are authorized, from settings and environment.
    #[derive(Debug, PartialEq, Eq)]
    enum Target {
        Emulator(String),
        Google {
            endpoint: String,
            credentials: Option<PathBuf>,
            explicit_provider: bool,
        },
    }

    /// The precedence of the URL form: an explicit emulator; an explicit endpoint or
    /// token provider; `PUBSUB_EMULATOR_HOST`; credentials (setting, then
    /// `GOOGLE_APPLICATION_CREDENTIALS`, then the metadata server).
    fn resolve(
        b: &PubSubStreamBuilder,
        url: &PubSubUrl,
        env_emulator: Option<String>,
        env_credentials: Option<String>,
    ) -> Target {
        if let Some(e) = b.emulator.clone().or_else(|| url.emulator.clone()) {
            return Target::Emulator(e);
        }
        let explicit = b.endpoint.is_some() || b.provider.is_some();
        if !explicit {
            if let Some(e) = env_emulator.filter(|e| !e.is_empty()) {
                return Target::Emulator(e);
            }
        }
        let credentials = b
            .credentials
            .clone()
            .or_else(|| url.credentials.as_ref().map(PathBuf::from))
            .or_else(|| env_credentials.filter(|c| !c.is_empty()).map(PathBuf::from));
        Target::Google {
            endpoint: b
                .endpoint
                .clone()
                .unwrap_or_else(|| PUBSUB_ENDPOINT.to_string()),
            credentials,
            explicit_provider: b.provider.is_some(),
        }
    }

    impl PubSubStream {
        /// Parses the URL and, when a token is needed, fetches one, so that bad
        /// credentials are reported at start-up. An emulator is not contacted.
        pub fn connect(url: &str) -> Result<Self> {
            let s = Self::builder(url).build()?;
            if let Some(auth) = &s.auth {
                auth.bearer(&Deadline::after(UNBOUNDED))?;
            }
            Ok(s)
        }

        /// A builder from `pubsub://PROJECT[?emulator=host:port][&credentials=path]`.
        pub fn builder(url: &str) -> PubSubStreamBuilder {
            PubSubStreamBuilder {
                url: PubSubUrl::parse(url),
                raw: url.to_string(),
                emulator: None,
                endpoint: None,
                credentials: None,
                provider: None,
                timeout: Duration::from_secs(30),
                attempts: RetryPolicy::default().attempts,
                concurrency: 8,
                max_message_size: MAX_MESSAGE_SIZE,
            }
        }

        /// The project of short topic names.
        pub fn project(&self) -> &str {
            &self.project
        }
    }

    impl PubSubStreamBuilder {
        /// An emulator at `host:port`: plain HTTP, no auth (overrides everything else).
        pub fn emulator(mut self, host_port: &str) -> Self {
            self.emulator = Some(host_port.to_string());
            self
        }
        /// The API base URL (default [`PUBSUB_ENDPOINT`]), e.g. a regional endpoint or
        /// a proxy; requests are authorized.
        pub fn endpoint(mut self, base_url: &str) -> Self {
            self.endpoint = Some(base_url.trim_end_matches('/').to_string());
            self
        }
        /// A service-account JSON key file.
        pub fn credentials_file(mut self, path: impl Into<PathBuf>) -> Self {
            self.credentials = Some(path.into());
            self
        }
        /// Where tokens come from ([`ServiceAccount`], [`StaticToken`],
        /// [`MetadataServer`] or your own).
        pub fn token_provider(mut self, provider: impl TokenProvider + 'static) -> Self {
            self.provider = Some(Arc::new(provider));
            self
        }
        /// Timeout of one HTTP request (default 30 s), cut to what is left of the
        /// batch's deadline; also how long `stop()` waits at most for requests in flight.
        pub fn request_timeout(mut self, t: Duration) -> Self {
            self.timeout = t;
            self
        }
        /// Tries per request for throttling, 5xx and connection failures (default 4,
        /// with backoff; 1 = no retry).
        pub fn request_attempts(mut self, n: u32) -> Self {
            self.attempts = n;
            self
        }
        /// Publish requests in flight at once (default 8).
        pub fn concurrency(mut self, n: usize) -> Self {
            self.concurrency = n;
            self
        }
        /// Largest message accepted (default and maximum [`MAX_MESSAGE_SIZE`]).
        pub fn max_message_size(mut self, n: usize) -> Self {
            self.max_message_size = n;
            self
        }

        /// Builds the stream; reads a key file now. Nothing is contacted.
        pub fn build(self) -> Result<PubSubStream> {
            let url = self.url.clone().map_err(|reason| Error::InvalidUrl {
                url: crate::core::redact::redact_url(&self.raw),
                reason,
            })?;
            if self.timeout.is_zero() || self.timeout > Duration::from_secs(600) {
                return Err(Error::config(
                    "request_timeout",
                    "must be within 1 ms..=600 s",
                ));
            }
            if !(1..=20).contains(&self.attempts) {
                return Err(Error::config("request_attempts", "must be within 1..=20"));
            }
            if !(1..=64).contains(&self.concurrency) {
                return Err(Error::config("concurrency", "must be within 1..=64"));
            }
            if !(1..=MAX_MESSAGE_SIZE).contains(&self.max_message_size) {
                return Err(Error::config(
                    "max_message_size",
                    format!("must be within 1..={MAX_MESSAGE_SIZE}"),
                ));
            }
            let target = resolve(
                &self,
                &url,
                std::env::var(EMULATOR_ENV).ok(),
                std::env::var(CREDENTIALS_ENV).ok(),
            );
            let (base, auth) = match target {
                Target::Emulator(host) => {
                    crate::core::pubsub::check_host_port(&host)
                        .map_err(|r| Error::config("emulator", r))?;
                    (format!("http://{host}"), None)
                }
                Target::Google {
                    endpoint,
                    credentials,
                    explicit_provider,
                } => {
                    if !(endpoint.starts_with("https://") || endpoint.starts_with("http://")) {
                        return Err(Error::config("endpoint", "must be an http(s):// URL"));
                    }
                    let provider: Arc<dyn TokenProvider> = match (&self.provider, credentials) {
                        (Some(p), _) if explicit_provider => p.clone(),
                        (_, Some(path)) => Arc::new(ServiceAccount::from_file(path)?),
                        _ => Arc::new(MetadataServer::new()),
                    };
                    (endpoint, Some(Arc::new(TokenCache::new(provider))))
                }
            };
            let retry = RetryPolicy {
                attempts: self.attempts,
                backoff: Backoff::new(Duration::from_millis(50), Duration::from_secs(2))?,
                deadline: (self.timeout * 2).max(Duration::from_secs(20)),
            };
            Ok(PubSubStream {
                project: url.project,
                base,
                auth,
                http: HttpClient::new("pubsub", self.timeout, retry),
                concurrency: self.concurrency,
                max_message_size: self.max_message_size,
            })
        }
    }

    /// `%` and `+` are legal in topic names but not literal in a URL path.
    fn path_escape(s: &str) -> String {
        s.replace('%', "%25").replace('+', "%2B")
    }

    /// One unit of work: a key's requests in sequence, or one keyless request.
    enum Job<'a> {
        Keyed(&'a str, &'a [PlannedRequest]),
        Unordered(&'a PlannedRequest),
    }

    impl Job<'_> {
        /// The batch indexes of the job's messages.
        fn messages(&self) -> impl Iterator<Item = usize> + '_ {
            let reqs: &[PlannedRequest] = match self {
                Job::Keyed(_, reqs) => reqs,
                Job::Unordered(req) => std::slice::from_ref(*req),
            };
            reqs.iter().flat_map(|r| r.messages.iter().copied())
        }
    }

    /// A token fetched outside a publish (at `connect`, or through
    /// [`TokenProvider::fetch_token`]) is bounded by the client's own timeouts only.
    const UNBOUNDED: Duration = Duration::from_secs(3600);

    /// The error of a message whose request was not sent before the deadline.
    fn too_late() -> Error {
        Error::Timeout("pubsub: not sent, the batch's deadline passed".into())
    }

    impl Stream for PubSubStream {
        fn validator(&self) -> Arc<dyn Validate> {
            Arc::new(PubSubValidator {
                max_message_size: self.max_message_size,
            })
        }

        fn publish(&mut self, batch: &[StoredMessage], deadline: &Deadline) -> Vec<Result<()>> {
            let mut out: Vec<Option<Result<()>>> = (0..batch.len()).map(|_| None).collect();
            let mut items = Vec::with_capacity(batch.len());
            let mut failed_keys: HashSet<String> = HashSet::new();
            for (i, m) in batch.iter().enumerate() {
                let parsed = crate::core::pubsub::validate(
                    &m.payload,
                    &m.headers,
                    &m.options,
                    m.ordering_key.as_deref(),
                    self.max_message_size,
                );
                // The relay's order is by the message's key; the Pub/Sub ordering key
                // (the option, if set) only labels the message on the wire.
                let key = m
                    .ordering_key
                    .as_deref()
                    .filter(|k| !k.is_empty())
                    .or_else(|| parsed.as_ref().ok().and_then(|r| r.ordering_key.as_deref()))
                    .map(str::to_string);
                if let Some(k) = key.as_ref().filter(|k| failed_keys.contains(*k)) {
                    out[i] = Some(Err(held_back("pubsub", k)));
                    continue;
                }
                match parsed {
                    Ok(route) => items.push(PlanItem {
                        index: i,
                        topic: route.resource(&self.project),
                        size: message_size(
                            &m.payload,
                            &m.headers,
                            effective_ordering_key(&route, m.ordering_key.as_deref()),
                        ),
                        key,
                    }),
                    Err(e) => {
                        // Refused before sending; it still holds back its key.
                        failed_keys.extend(key);
                        out[i] = Some(Err(e));
                    }
                }
            }
            let plan = plan(&items, MAX_MESSAGES_PER_REQUEST, MAX_MESSAGE_SIZE);
            let jobs: Vec<Job<'_>> = plan
                .keyed
                .iter()
                .map(|(key, reqs)| Job::Keyed(key, reqs))
                .chain(plan.unordered.iter().map(Job::Unordered))
                .collect();
            let next = AtomicUsize::new(0);
            let results: Vec<(usize, Result<()>)> = std::thread::scope(|scope| {
                let workers: Vec<_> = (0..self.concurrency.min(jobs.len()))
                    .map(|_| {
                        scope.spawn(|| {
                            let mut done = Vec::new();
                            loop {
                                let j = next.fetch_add(1, Ordering::Relaxed);
                                let Some(job) = jobs.get(j) else { break };
                                if deadline.expired() {
                                    // No new request: the batch's time is up.
                                    done.extend(job.messages().map(|i| (i, Err(too_late()))));
                                } else {
                                    self.run(job, batch, &mut done, deadline);
                                }
                            }
                            done
                        })
                    })
                    .collect();
                workers
                    .into_iter()
                    .flat_map(|w| {
                        w.join().unwrap_or_else(|_| {
                            log::error!("outboxer: a Pub/Sub publish thread panicked");
                            Vec::new()
                        })
                    })
                    .collect()
            });
            for (i, r) in results {
                out[i] = Some(r);
            }
            out.into_iter()
                .map(|o| o.unwrap_or_else(|| Err(Error::unavailable("pubsub", "not published"))))
                .collect()
        }
    }

    impl PubSubStream {
        fn run(
            &self,
            job: &Job<'_>,
            batch: &[StoredMessage],
            done: &mut Vec<(usize, Result<()>)>,
            deadline: &Deadline,
        ) {
            match job {
                Job::Unordered(req) => {
                    let r = self.send_request(req, batch, deadline);
                    done.extend(
                        req.messages.iter().map(|&i| {
                            (i, r.as_ref().map(|_| ()).map_err(|e| e.duplicate("pubsub")))
                        }),
                    );
                }
                Job::Keyed(key, reqs) => {
                    let mut failed = false;
                    for req in reqs.iter() {
                        if failed {
                            done.extend(
                                req.messages
                                    .iter()
                                    .map(|&i| (i, Err(held_back("pubsub", key)))),
                            );
                            continue;
                        }
                        if deadline.expired() {
                            done.extend(req.messages.iter().map(|&i| (i, Err(too_late()))));
                            failed = true;
                            continue;
                        }
                        let r = self.send_request(req, batch, deadline);
                        failed = r.is_err();
                        done.extend(req.messages.iter().map(|&i| {
                            (i, r.as_ref().map(|_| ()).map_err(|e| e.duplicate("pubsub")))
                        }));
                    }
                }
            }
        }

        /// One publish request; its outcome holds for all of its messages.
        fn send_request(
            &self,
            req: &PlannedRequest,
            batch: &[StoredMessage],
            deadline: &Deadline,
        ) -> Result<()> {
            let messages: Vec<Value> = req
                .messages
                .iter()
                .filter_map(|&i| batch.get(i))
                .map(|m| {
                    let mut attributes: Map<String, Value> = m
                        .headers
                        .iter()
                        .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
                        .collect();
                    attributes.insert(
                        MESSAGE_ID_HEADER.to_string(),
                        Value::from(m.message_id.to_string()),
                    );
                    let mut msg = Map::new();
                    msg.insert(
                        "data".into(),
                        Value::from(base64::engine::general_purpose::STANDARD.encode(&m.payload)),
                    );
                    msg.insert("attributes".into(), Value::Object(attributes));
                    let key = PubSubRoute::parse(&m.options).ok().and_then(|r| {
                        effective_ordering_key(&r, m.ordering_key.as_deref()).map(str::to_string)
                    });
                    if let Some(k) = key {
                        msg.insert("orderingKey".into(), Value::from(k));
                    }
                    Value::Object(msg)
                })
                .collect();
            let body = serde_json::json!({ "messages": messages })
                .to_string()
                .into_bytes();
            let url = format!("{}/v1/{}:publish", self.base, path_escape(&req.topic));
            let send = || {
                self.http.send(
                    || {
                        let mut headers =
                            vec![("content-type".to_string(), "application/json".to_string())];
                        if let Some(auth) = &self.auth {
                            headers.push(("authorization".to_string(), auth.bearer(deadline)?));
                        }
                        Ok(HttpRequest {
                            method: "POST",
                            url: url.clone(),
                            headers,
                            body: body.clone(),
                        })
                    },
                    deadline,
                )
            };
            let mut resp = send()?;
            if matches!(resp.status, 401 | 403) {
                if let Some(auth) = &self.auth {
                    // An expired or revoked token: one more try with a fresh one.
                    auth.invalidate();
                    resp = send()?;
                    if matches!(resp.status, 401 | 403) {
                        // Refused again: fetch a new token at the next publish too.
                        auth.invalidate();
                    }
                }
            }
            match resp.status {
                200..=299 => check_message_ids(&resp.body, req.messages.len()),
                404 => Err(Error::Rejected(format!(
                    "pubsub: topic {} not found: {}",
                    req.topic,
                    resp.body_text()
                ))),
                // The credentials or the permission: an outage, never the message's fault.
                401 | 403 => Err(Error::unauthorized(
                    "pubsub",
                    format!("HTTP {}: {}", resp.status, resp.body_text()),
                )),
                _ => Err(status_error("pubsub", &resp)),
            }
        }
    }

    /// A publish succeeded only if its answer names one message id per message sent;
    /// anything else (an empty object from a proxy, too few ids) is transient: the
    /// messages are sent again rather than marked dispatched.
    fn check_message_ids(body: &[u8], sent: usize) -> Result<()> {
        let ids = serde_json::from_slice::<Value>(body).ok().and_then(|v| {
            v.get("messageIds")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter(|id| id.is_string()).count())
        });
        match ids {
            Some(n) if n == sent => Ok(()),
            Some(n) => Err(Error::unavailable(
                "pubsub",
                format!("the publish answer has {n} message id(s) for {sent} message(s)"),
            )),
            None => Err(Error::unavailable(
                "pubsub",
                "the publish answer has no messageIds list",
            )),
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn success_needs_one_message_id_per_message() {
            assert!(check_message_ids(br#"{"messageIds":["1","2"]}"#, 2).is_ok());
            for (body, sent) in [
                (&b"{}"[..], 1),
                (br#"{"messageIds":["1"]}"#, 2),
                (br#"{"messageIds":["1","2"]}"#, 1),
                (br#"{"messageIds":[1,2]}"#, 2),
                (b"", 1),
            ] {
                let e = check_message_ids(body, sent).expect_err("not a success");
                assert!(e.is_transient(), "{e}");
            }
        }

        fn builder() -> PubSubStreamBuilder {
            PubSubStream::builder("pubsub://proj")
        }

        #[test]
        fn target_precedence() {
            let url = PubSubUrl::parse("pubsub://p?credentials=/k.json").expect("url");
            let env = |s: &str| Some(s.to_string());
            assert_eq!(
                resolve(&builder().emulator("h:1"), &url, env("e:2"), None),
                Target::Emulator("h:1".into())
            );
            assert_eq!(
                resolve(&builder(), &url, env("e:2"), env("/g.json")),
                Target::Emulator("e:2".into())
            );
            assert_eq!(
                resolve(&builder(), &url, None, env("/g.json")),
                Target::Google {
                    endpoint: PUBSUB_ENDPOINT.into(),
                    credentials: Some("/k.json".into()),
                    explicit_provider: false
                }
            );
            let bare = PubSubUrl::parse("pubsub://p").expect("url");
            assert_eq!(
                resolve(&builder(), &bare, None, env("/g.json")),
                Target::Google {
                    endpoint: PUBSUB_ENDPOINT.into(),
                    credentials: Some("/g.json".into()),
                    explicit_provider: false
                }
            );
            assert_eq!(
                resolve(&builder(), &bare, None, None),
                Target::Google {
                    endpoint: PUBSUB_ENDPOINT.into(),
                    credentials: None,
                    explicit_provider: false
                }
            );
            // An explicit endpoint wins over the environment's emulator.
            assert!(matches!(
                resolve(
                    &builder().endpoint("http://127.0.0.1:9"),
                    &bare,
                    env("e:2"),
                    None
                ),
                Target::Google { .. }
            ));
        }

        #[test]
        fn bad_settings_are_typed_errors() {
            assert!(matches!(
                PubSubStream::builder("pubsub://").build(),
                Err(Error::InvalidUrl { .. })
            ));
            for b in [
                builder().emulator("h:1").request_timeout(Duration::ZERO),
                builder().emulator("h:1").request_attempts(0),
                builder().emulator("h:1").concurrency(0),
                builder()
                    .emulator("h:1")
                    .max_message_size(MAX_MESSAGE_SIZE + 1),
                builder().emulator("nope"),
                builder()
                    .endpoint("ftp://x")
                    .token_provider(StaticToken::new("t")),
                builder().credentials_file("/nonexistent/key.json"),
            ] {
                assert!(matches!(b.build(), Err(Error::Config { .. })));
            }
        }

        #[derive(Debug)]
        struct Forever;
        impl TokenProvider for Forever {
            fn fetch_token(&self) -> Result<AccessToken> {
                Ok(AccessToken::new("t", Some(Duration::MAX)))
            }
        }

        #[test]
        fn an_absurd_token_lifetime_does_not_panic() {
            let cache = TokenCache::new(Arc::new(Forever));
            assert_eq!(
                cache.bearer(&Deadline::after(UNBOUNDED)).ok().as_deref(),
                Some("Bearer t")
            );
            assert_eq!(
                cache.bearer(&Deadline::after(UNBOUNDED)).ok().as_deref(),
                Some("Bearer t")
            );
        }

        #[test]
        fn secrets_stay_out_of_debug() {
            let s = builder()
                .endpoint("http://127.0.0.1:9")
                .token_provider(StaticToken::new("tok-SECRET"))
                .build()
                .expect("stream");
            let auth = s.auth.as_ref().expect("auth");
            assert_eq!(
                auth.bearer(&Deadline::after(UNBOUNDED)).ok().as_deref(),
                Some("Bearer tok-SECRET")
            );
            let shown = format!("{s:?} {auth:?} {:?}", AccessToken::new("tok-SECRET", None));
            assert!(!shown.contains("SECRET"), "{shown}");
        }
    }
}
