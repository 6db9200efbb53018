//! `KafkaStreamBuilder`'s settings: librdkafka properties, the ones the stream's
//! guarantees need, and the checks at `build`.

use super::*;

impl KafkaStreamBuilder {
    /// Sets a librdkafka producer property (SASL, TLS, `client.id`, ...). The
    /// properties that carry the stream's guarantees (`enable.idempotence`,
    /// `acks`, `max.in.flight.requests.per.connection` > 5, brokers) are refused
    /// at `build()`, and so are `enable.ssl.certificate.verification=false` and
    /// `ssl.endpoint.identification.algorithm=none` unless
    /// `danger_accept_invalid_certs=true` is set too. Prefer the typed
    /// [`tls`](Self::tls) and [`sasl`](Self::sasl).
    pub fn set(mut self, key: &str, value: &str) -> Self {
        if let Err(e) = check_setting(key, value) {
            self.bad_setting.get_or_insert(e);
        }
        self.settings.push((key.to_string(), value.to_string()));
        self
    }
    /// TLS to the brokers: `security.protocol=ssl` (or `sasl_ssl` with
    /// [`sasl`](Self::sasl)), the CA as `ssl.ca.location` (else OpenSSL's default
    /// paths), a client certificate as `ssl.certificate.location` /
    /// `ssl.key.location`. [`Tls::verify_full`] (the default when TLS is on) checks
    /// the certificate and the host name (`ssl.endpoint.identification.algorithm=https`),
    /// [`Tls::verify_ca`] the certificate only;
    /// [`Tls::danger_accept_invalid_certificates`] turns both off. The same as the
    /// URL's `security.protocol=ssl&ssl.ca.location=..` (these typed settings win).
    ///
    /// ```no_run
    /// # fn main() -> Result<(), outboxer::Error> {
    /// use outboxer::stream::kafka::SaslMechanism;
    /// use outboxer::stream::KafkaStream;
    /// use outboxer::tls::Tls;
    ///
    /// let stream = KafkaStream::builder("kafka://broker-1.internal:9093")
    ///     .tls(Tls::verify_full().ca_file("/etc/ssl/certs/kafka-ca.pem"))
    ///     .sasl(SaslMechanism::ScramSha512, "outboxer", "s3cret")
    ///     .build()?;
    /// # Ok(()) }
    /// ```
    pub fn tls(mut self, tls: Tls) -> Self {
        self.tls = Some(tls);
        self
    }
    /// SASL login: `sasl.mechanisms`, `sasl.username`, `sasl.password` (never
    /// shown in errors or logs), and `security.protocol=sasl_ssl` with
    /// [`tls`](Self::tls) or a TLS URL, else `sasl_plaintext` (which sends a
    /// PLAIN password in the clear: use TLS).
    pub fn sasl(
        mut self,
        mechanism: SaslMechanism,
        username: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        self.sasl = Some(Sasl {
            mechanism,
            username: username.into(),
            password: password.into(),
        });
        self
    }
    /// How long librdkafka may try to deliver one message (`message.timeout.ms`,
    /// default 15 s). Keep it well below the relay's lease.
    pub fn delivery_timeout(mut self, d: Duration) -> Self {
        self.delivery_timeout = d;
        self
    }
    /// How long to wait for topic metadata (default 5 s).
    pub fn metadata_timeout(mut self, d: Duration) -> Self {
        self.metadata_timeout = d;
        self
    }
    /// `linger.ms`: how long librdkafka waits to fill a batch (librdkafka default 5 ms).
    pub fn linger(mut self, d: Duration) -> Self {
        self.linger = Some(d);
        self
    }
    /// `batch.size`: largest record batch in bytes.
    pub fn batch_size(mut self, bytes: usize) -> Self {
        self.batch_size = Some(bytes);
        self
    }
    /// `batch.num.messages`: most records in one batch.
    pub fn batch_num_messages(mut self, n: usize) -> Self {
        self.batch_num_messages = Some(n);
        self
    }
    /// `compression.type`.
    pub fn compression(mut self, c: Compression) -> Self {
        self.compression = Some(c);
        self
    }
    /// Largest message accepted at `send` (default 1 MB, Kafka's
    /// `message.max.bytes`); also sets librdkafka's `message.max.bytes`.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// Validates the settings and creates the producer; does not wait for a broker.
    pub fn build(self) -> Result<KafkaStream> {
        let url = self.url.map_err(|reason| Error::InvalidUrl {
            url: self.redacted.clone(),
            reason,
        })?;
        if let Some(reason) = self.bad_setting {
            return Err(Error::config("set", reason));
        }
        let ms = |field: &'static str, d: Duration, max: Duration| -> Result<String> {
            if d < Duration::from_millis(1) || d > max {
                return Err(Error::config(
                    field,
                    format!("must be within 1ms..={max:?}"),
                ));
            }
            Ok(d.as_millis().to_string())
        };
        let hour = Duration::from_secs(3600);
        let mut config = ClientConfig::new();
        // librdkafka's log level follows the `log` crate's at creation; the
        // connection check reads its Info lines (disconnects) whatever the logger.
        config.set_log_level(RDKafkaLogLevel::Info);
        config
            .set("bootstrap.servers", url.brokers.join(","))
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("max.in.flight.requests.per.connection", "5")
            .set(
                "message.timeout.ms",
                ms("delivery_timeout", self.delivery_timeout, hour)?,
            )
            // A message to a missing topic fails instead of creating it (a
            // producer's metadata request would, on brokers that allow it).
            // Override with `set("allow.auto.create.topics", "true")`.
            .set("allow.auto.create.topics", "false")
            .set("client.id", "outboxer");
        if let Some(d) = self.linger {
            if d > Duration::from_secs(900) {
                return Err(Error::config("linger", "must be at most 900 s"));
            }
            config.set("linger.ms", d.as_millis().to_string());
        }
        if let Some(b) = self.batch_size {
            if !(1..=2_147_483_647).contains(&b) {
                return Err(Error::config("batch_size", "must be within 1..=2^31-1"));
            }
            config.set("batch.size", b.to_string());
        }
        if let Some(n) = self.batch_num_messages {
            if !(1..=1_000_000).contains(&n) {
                return Err(Error::config(
                    "batch_num_messages",
                    "must be within 1..=1000000",
                ));
            }
            config.set("batch.num.messages", n.to_string());
        }
        if let Some(c) = self.compression {
            config.set("compression.type", c.as_str());
        }
        if !(1000..=1_000_000_000).contains(&self.max_message_size) {
            return Err(Error::config(
                "max_message_size",
                "must be within 1000..=1000000000",
            ));
        }
        config.set(
            "message.max.bytes",
            (self.max_message_size + RECORD_OVERHEAD).to_string(),
        );
        let raw: Vec<(String, String)> = url
            .settings
            .iter()
            .chain(self.settings.iter())
            .cloned()
            .collect();
        let security = security(&raw, self.tls.as_ref(), self.sasl.as_ref())?;
        // A connection not set up (TCP, TLS, SASL) within the metadata timeout is
        // given up and told, rather than after librdkafka's 30 s: a listener that
        // never answers a TLS handshake is then named at start.
        if !security
            .settings
            .iter()
            .any(|(k, _)| k == "socket.connection.setup.timeout.ms")
        {
            let ms = self.metadata_timeout.as_millis().clamp(1000, 30_000);
            config.set("socket.connection.setup.timeout.ms", ms.to_string());
        }
        for (k, v) in &security.settings {
            config.set(k, v);
        }
        let metadata_timeout =
            ms("metadata_timeout", self.metadata_timeout, hour).map(|_| self.metadata_timeout)?;
        let mut stream = KafkaStream {
            config,
            redacted: self.redacted,
            delivery_timeout: self.delivery_timeout,
            metadata_timeout,
            max_message_size: self.max_message_size,
            tls: security.tls,
            verify_host: security.verify_host,
            producer: None,
            topics: HashMap::new(),
            next_seq: 0,
        };
        // Refuses unknown or ill-typed properties now rather than at the first publish.
        stream.producer()?;
        Ok(stream)
    }
}
