//! OAuth access tokens, apart from publishing: the `TokenProvider` seam, a static
//! token, a service-account key (a signed JWT exchanged for a token), the GCE
//! metadata server, and the cache the stream asks before each request.

use super::*;

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

fn token_http(timeout: Duration, tls: &HttpTls) -> HttpClient {
    HttpClient::new("pubsub auth", timeout, RetryPolicy::default(), tls)
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
            http: token_http(Duration::from_secs(30), &HttpTls::none()),
        })
    }

    /// The token endpoint's TLS: the stream's, when it builds the provider.
    pub(super) fn with_http_tls(mut self, tls: &HttpTls) -> Self {
        self.http = token_http(Duration::from_secs(30), tls);
        self
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
            // The metadata server is plain HTTP on a link-local address.
            http: token_http(Duration::from_secs(10), &HttpTls::none()),
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
pub(super) struct TokenCache {
    pub(super) provider: Arc<dyn TokenProvider>,
    current: Mutex<Option<(AccessToken, Option<Instant>)>>,
}

impl TokenCache {
    pub(super) fn new(provider: Arc<dyn TokenProvider>) -> Self {
        TokenCache {
            provider,
            current: Mutex::new(None),
        }
    }

    pub(super) fn bearer(&self, deadline: &Deadline) -> Result<String> {
        let mut cur = self.current.lock();
        let fresh =
            matches!(&*cur, Some((_, refresh_at)) if refresh_at.is_none_or(|r| Instant::now() < r));
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

    pub(super) fn invalidate(&self) {
        *self.current.lock() = None;
    }
}
