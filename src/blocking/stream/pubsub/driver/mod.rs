//! The stream on the Pub/Sub REST API: where it publishes (emulator, endpoint,
//! Google) and with which credentials.

use super::*;
use crate::blocking::stream::http::{status_error, HttpClient, HttpRequest, HttpTls, RetryPolicy};
use crate::blocking::stream::{Deadline, Stream};
use crate::core::pubsub::{
    effective_ordering_key, jwt_signing_input, message_size, parse_token_response, pem_pkcs8_der,
    plan, PlanItem, PlannedRequest, ServiceAccountKey, MAX_MESSAGES_PER_REQUEST,
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

mod auth;
mod builder;
mod publish;
#[cfg(test)]
mod tests;

use self::auth::TokenCache;
pub use self::auth::{AccessToken, MetadataServer, ServiceAccount, StaticToken, TokenProvider};

/// The CA bundle variable of Google's gRPC client libraries, used when neither
/// the builder nor the URL gives TLS settings (for `https://` only).
pub const CA_BUNDLE_ENV: &str = "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH";

/// A token fetched outside a publish (at `connect`, or through
/// [`TokenProvider::fetch_token`]) is bounded by the client's own timeouts only.
const UNBOUNDED: Duration = Duration::from_secs(3600);

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
    tls: Option<crate::tls::Tls>,
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
            tls: None,
        }
    }

    /// The project of short topic names.
    pub fn project(&self) -> &str {
        &self.project
    }
}
