//! `PubSubStreamBuilder`'s settings and the checks at `build`.

use super::*;

impl PubSubStreamBuilder {
    /// An emulator at `host:port` (plain HTTP, like `PUBSUB_EMULATOR_HOST`), or at
    /// `https://host:port` behind TLS (verified with [`tls`](Self::tls) or the URL's
    /// `ca_file`); no auth. Overrides everything else.
    pub fn emulator(mut self, host_port: &str) -> Self {
        self.emulator = Some(host_port.to_string());
        self
    }
    /// TLS of an `https://` endpoint or emulator and of the service account's
    /// token endpoint: a CA bundle that replaces the built-in webpki roots (a
    /// TLS-intercepting proxy, a private endpoint), a client certificate. Chain
    /// and host name are always verified unless
    /// [`Tls::danger_accept_invalid_certificates`](crate::tls::Tls::danger_accept_invalid_certificates)
    /// says otherwise; [`Tls::verify_ca`](crate::tls::Tls::verify_ca) is refused.
    /// Overrides the URL's `ca_file` and [`CA_BUNDLE_ENV`]. Settings for a
    /// plaintext endpoint or emulator are refused at `build`.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), outboxer::Error> {
    /// use outboxer::stream::PubSubStream;
    /// use outboxer::tls::Tls;
    /// let stream = PubSubStream::builder("pubsub://my-project")
    ///     .endpoint("https://pubsub.internal.example:8443")
    ///     .tls(Tls::verify_full().ca_file("/etc/ssl/certs/corp-ca.pem"))
    ///     .build()?;
    /// # Ok(()) }
    /// ```
    pub fn tls(mut self, tls: crate::tls::Tls) -> Self {
        self.tls = Some(tls);
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
        let explicit_tls = match self.tls.clone().or(url.tls.clone()) {
            Some(t) => Some(HttpTls::from_settings(&t, "tls")?),
            None => None,
        };
        // The URL's or builder's settings, else the environment's CA bundle.
        let tls_for = |base: &str| -> Result<HttpTls> {
            match &explicit_tls {
                Some(t) => {
                    t.check_scheme("tls", base)?;
                    Ok(t.clone())
                }
                None => HttpTls::from_env_ca(CA_BUNDLE_ENV, base),
            }
        };
        let (base, auth, tls) = match target {
            Target::Emulator(host) => {
                let base = crate::core::pubsub::emulator_base(&host)
                    .map_err(|r| Error::config("emulator", r))?;
                let tls = tls_for(&base)?;
                (base, None, tls)
            }
            Target::Google {
                endpoint,
                credentials,
                explicit_provider,
            } => {
                if !(endpoint.starts_with("https://") || endpoint.starts_with("http://")) {
                    return Err(Error::config("endpoint", "must be an http(s):// URL"));
                }
                let tls = tls_for(&endpoint)?;
                let provider: Arc<dyn TokenProvider> = match (&self.provider, credentials) {
                    (Some(p), _) if explicit_provider => p.clone(),
                    // Its token endpoint (https by default) trusts the same CA.
                    (_, Some(path)) => {
                        Arc::new(ServiceAccount::from_file(path)?.with_http_tls(&tls))
                    }
                    _ => Arc::new(MetadataServer::new()),
                };
                (endpoint, Some(Arc::new(TokenCache::new(provider))), tls)
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
            http: HttpClient::new("pubsub", self.timeout, retry, &tls),
            concurrency: self.concurrency,
            max_message_size: self.max_message_size,
        })
    }
}
