//! Google Pub/Sub routing options (Go-compatible keys), typed builders, message
//! limits, the `pubsub://` URL form, service-account keys and JWT claims, and
//! the grouping of a batch into publish requests. No I/O.

use crate::core::options::{reject_unknown, required_string, string};
use crate::message::{Headers, Options, MESSAGE_ID_HEADER};
use crate::{Error, Result};
use serde_json::Value;

/// Go key: the topic (required): a short name, or `projects/P/topics/T`.
pub const TOPIC_NAME: &str = "topic_name";
/// Go key: the Pub/Sub ordering key; absent = the message's ordering key.
pub const ORDERING_KEY: &str = "ordering_key";

const KEYS: [&str; 2] = [TOPIC_NAME, ORDERING_KEY];

/// Pub/Sub's limit on one message (data, attributes and ordering key) and on one
/// publish request: 10 MB.
pub const MAX_MESSAGE_SIZE: usize = 10_000_000;
/// Pub/Sub's limit on the messages of one publish request.
pub const MAX_MESSAGES_PER_REQUEST: usize = 1000;
/// Pub/Sub's limit on the attributes of one message.
pub const MAX_ATTRIBUTES: usize = 100;
/// Pub/Sub's limit on an attribute key, in bytes.
pub const MAX_ATTRIBUTE_KEY: usize = 256;
/// Pub/Sub's limit on an attribute value, in bytes.
pub const MAX_ATTRIBUTE_VALUE: usize = 1024;
/// Pub/Sub's limit on an ordering key, in bytes.
pub const MAX_ORDERING_KEY: usize = 1024;

/// The OAuth scope the stream asks for.
pub const PUBSUB_SCOPE: &str = "https://www.googleapis.com/auth/pubsub";
/// Google's production Pub/Sub endpoint.
pub const PUBSUB_ENDPOINT: &str = "https://pubsub.googleapis.com";
/// The GCE/GKE/Cloud Run metadata server (only reachable inside Google Cloud).
pub const METADATA_BASE_URL: &str = "http://metadata.google.internal";
/// The metadata server's path of the default service account's access token.
pub const METADATA_TOKEN_PATH: &str = "/computeMetadata/v1/instance/service-accounts/default/token";
/// The environment variable naming an emulator (`host:port`), as in Google's clients.
pub const EMULATOR_ENV: &str = "PUBSUB_EMULATOR_HOST";
/// The environment variable naming a service-account key file, as in Google's clients.
pub const CREDENTIALS_ENV: &str = "GOOGLE_APPLICATION_CREDENTIALS";

/// Where a Pub/Sub message goes: a topic, and optionally an ordering key.
///
/// Without `ordering_key` the Pub/Sub ordering key is the message's ordering key,
/// so consumers on an ordering-enabled subscription see one key in commit order.
///
/// ```
/// use outboxer::stream::pubsub;
/// let options: outboxer::Options = pubsub::topic("orders").ordering_key("customer-7").into();
/// assert_eq!(options["topic_name"], "orders");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PubSubRoute {
    /// Topic name (short, or `projects/P/topics/T`).
    pub topic: String,
    /// Pub/Sub ordering key (overrides the message's ordering key).
    pub ordering_key: Option<String>,
}

/// A route to a topic of the stream's project (or `projects/P/topics/T`).
pub fn topic(name: &str) -> PubSubRoute {
    PubSubRoute {
        topic: name.to_string(),
        ordering_key: None,
    }
}

impl PubSubRoute {
    /// Sets the Pub/Sub ordering key (instead of the message's ordering key).
    pub fn ordering_key(mut self, key: impl Into<String>) -> Self {
        self.ordering_key = Some(key.into());
        self
    }

    /// Reads and validates the Go-compatible options of a message.
    pub fn parse(options: &Options) -> Result<Self> {
        reject_unknown(options, &KEYS, "Pub/Sub")?;
        let topic = required_string(options, TOPIC_NAME)?;
        check_topic(&topic)?;
        let ordering_key = string(options, ORDERING_KEY)?;
        if let Some(k) = &ordering_key {
            check_ordering_key(k).map_err(|r| Error::option(ORDERING_KEY, r))?;
        }
        Ok(PubSubRoute {
            topic,
            ordering_key,
        })
    }

    /// The topic's resource name, `projects/P/topics/T`.
    pub fn resource(&self, project: &str) -> String {
        if self.topic.starts_with("projects/") {
            self.topic.clone()
        } else {
            format!("projects/{project}/topics/{}", self.topic)
        }
    }
}

impl From<PubSubRoute> for Options {
    fn from(r: PubSubRoute) -> Options {
        let mut o = Options::new();
        o.insert(TOPIC_NAME.into(), Value::from(r.topic));
        if let Some(k) = r.ordering_key {
            o.insert(ORDERING_KEY.into(), Value::from(k));
        }
        o
    }
}

fn check_topic_id(t: &str) -> std::result::Result<(), &'static str> {
    if t.len() < 3 || t.len() > 255 {
        return Err("a topic name has 3..=255 characters");
    }
    if !t.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return Err("a topic name starts with a letter");
    }
    if t.to_ascii_lowercase().starts_with("goog") {
        return Err("a topic name must not start with \"goog\"");
    }
    if !t
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.~+%".contains(c))
    {
        return Err("only letters, digits and - _ . ~ + % are allowed");
    }
    Ok(())
}

/// Pub/Sub's rules for topic names; `projects/P/topics/T` is accepted too.
pub fn check_topic(t: &str) -> Result<()> {
    let id = match t.strip_prefix("projects/") {
        Some(rest) => match rest.split_once("/topics/") {
            Some((project, id)) if check_project(project).is_ok() => id,
            _ => {
                return Err(Error::option(
                    TOPIC_NAME,
                    "expected a short name or projects/PROJECT/topics/TOPIC",
                ))
            }
        },
        None => t,
    };
    check_topic_id(id).map_err(|r| Error::option(TOPIC_NAME, r))
}

/// A project id (or a domain-scoped `example.com:project`).
pub fn check_project(p: &str) -> std::result::Result<(), String> {
    if p.is_empty()
        || p.len() > 100
        || !p
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-.:_".contains(c))
    {
        return Err(format!("{p:?} is not a Google Cloud project id"));
    }
    Ok(())
}

fn check_ordering_key(k: &str) -> std::result::Result<(), String> {
    if k.len() > MAX_ORDERING_KEY {
        return Err(format!(
            "an ordering key has at most {MAX_ORDERING_KEY} bytes, this one {}",
            k.len()
        ));
    }
    Ok(())
}

/// The ordering key sent to Pub/Sub: the option, else the message's own key.
pub fn effective_ordering_key<'a>(
    route: &'a PubSubRoute,
    message_key: Option<&'a str>,
) -> Option<&'a str> {
    route
        .ordering_key
        .as_deref()
        .or(message_key)
        .filter(|k| !k.is_empty())
}

/// Checks headers as Pub/Sub attributes: the message id attribute is added, so at
/// most 99 headers; keys 1..=256 bytes, not starting with `goog`; values <= 1024 bytes.
pub fn check_attributes(headers: &Headers) -> Result<()> {
    let count = headers.len() + usize::from(!headers.contains_key(MESSAGE_ID_HEADER));
    if count > MAX_ATTRIBUTES {
        return Err(Error::InvalidHeader {
            name: String::new(),
            reason: format!(
                "Pub/Sub takes at most {MAX_ATTRIBUTES} attributes, including {MESSAGE_ID_HEADER}; \
                 this message has {} headers",
                headers.len()
            ),
        });
    }
    for (k, v) in headers {
        let reason = if k.is_empty() {
            Some("an attribute key must not be empty".to_string())
        } else if k.len() > MAX_ATTRIBUTE_KEY {
            Some(format!(
                "an attribute key has at most {MAX_ATTRIBUTE_KEY} bytes"
            ))
        } else if k.to_ascii_lowercase().starts_with("goog") {
            Some("attribute keys starting with \"goog\" are reserved by Google".to_string())
        } else if v.len() > MAX_ATTRIBUTE_VALUE {
            Some(format!(
                "an attribute value has at most {MAX_ATTRIBUTE_VALUE} bytes, this one {}",
                v.len()
            ))
        } else {
            None
        };
        if let Some(reason) = reason {
            return Err(Error::InvalidHeader {
                name: k.chars().take(64).collect(),
                reason,
            });
        }
    }
    Ok(())
}

/// The size Pub/Sub counts for a message: data, attributes (with the message id)
/// and ordering key.
pub fn message_size(payload: &[u8], headers: &Headers, ordering_key: Option<&str>) -> usize {
    payload.len()
        + headers
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
        + MESSAGE_ID_HEADER.len()
        + 36
        + ordering_key.map_or(0, str::len)
}

/// Everything checked at `send`: options, attributes, ordering key and size.
pub fn validate(
    payload: &[u8],
    headers: &Headers,
    options: &Options,
    message_key: Option<&str>,
    max_message_size: usize,
) -> Result<PubSubRoute> {
    let route = PubSubRoute::parse(options)?;
    check_attributes(headers)?;
    let key = effective_ordering_key(&route, message_key);
    if let Some(k) = key {
        check_ordering_key(k).map_err(|r| Error::option(ORDERING_KEY, r))?;
    }
    let size = message_size(payload, headers, key);
    if size > max_message_size {
        return Err(Error::PayloadTooLarge {
            size,
            limit: max_message_size,
        });
    }
    Ok(route)
}

/// One publish request of a plan: the batch indexes it carries, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedRequest {
    /// Topic resource name.
    pub topic: String,
    /// Indexes into the batch.
    pub messages: Vec<usize>,
}

/// The requests of one batch, grouped so that a request's all-or-nothing outcome
/// maps cleanly to messages.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Per ordering key (in order of first appearance), its requests, to be sent
    /// one after the other; a failed request holds back the rest of its key.
    pub keyed: Vec<(String, Vec<PlannedRequest>)>,
    /// Requests of messages without an ordering key (independent of each other).
    pub unordered: Vec<PlannedRequest>,
}

/// One message to plan: its topic resource, ordering key and size.
#[derive(Clone, Debug)]
pub struct PlanItem {
    /// Batch index.
    pub index: usize,
    /// Topic resource name.
    pub topic: String,
    /// The key the relay orders by (the message's ordering key, else the Pub/Sub one).
    pub key: Option<String>,
    /// [`message_size`] of the message.
    pub size: usize,
}

/// Groups messages into publish requests within `max_messages` / `max_bytes` each:
/// per ordering key, consecutive messages to the same topic share a request; keyless
/// messages are batched per topic.
pub fn plan(items: &[PlanItem], max_messages: usize, max_bytes: usize) -> Plan {
    fn push(
        reqs: &mut Vec<PlannedRequest>,
        sizes: &mut Vec<usize>,
        it: &PlanItem,
        max_messages: usize,
        max_bytes: usize,
        only_last: bool,
    ) {
        let slot = if only_last {
            reqs.len()
                .checked_sub(1)
                .filter(|&i| reqs[i].topic == it.topic)
        } else {
            reqs.iter().rposition(|r| r.topic == it.topic)
        };
        match slot {
            Some(i) if reqs[i].messages.len() < max_messages && sizes[i] + it.size <= max_bytes => {
                reqs[i].messages.push(it.index);
                sizes[i] += it.size;
            }
            _ => {
                reqs.push(PlannedRequest {
                    topic: it.topic.clone(),
                    messages: vec![it.index],
                });
                sizes.push(it.size);
            }
        }
    }
    let max_messages = max_messages.max(1);
    let mut plan = Plan::default();
    let mut unordered_sizes = Vec::new();
    let mut keyed_sizes: Vec<Vec<usize>> = Vec::new();
    for it in items {
        match &it.key {
            None => push(
                &mut plan.unordered,
                &mut unordered_sizes,
                it,
                max_messages,
                max_bytes,
                false,
            ),
            Some(k) => {
                let pos = match plan.keyed.iter().position(|(key, _)| key == k) {
                    Some(p) => p,
                    None => {
                        plan.keyed.push((k.clone(), Vec::new()));
                        keyed_sizes.push(Vec::new());
                        plan.keyed.len() - 1
                    }
                };
                // Only the key's last request may grow: order within the key is kept.
                push(
                    &mut plan.keyed[pos].1,
                    &mut keyed_sizes[pos],
                    it,
                    max_messages,
                    max_bytes,
                    true,
                );
            }
        }
    }
    plan
}

/// A parsed `pubsub://PROJECT[?emulator=host:port][&credentials=/path/key.json]` URL.
/// `emulator=https://host:port` reaches an emulator behind TLS; `ca_file`,
/// `client_cert`/`client_key` and `danger_accept_invalid_certs` set its TLS (and
/// that of an `https://` API endpoint).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PubSubUrl {
    /// The Google Cloud project of short topic names.
    pub project: String,
    /// `host:port` of an emulator (no auth, plain HTTP), or
    /// `https://host:port` for one behind TLS.
    pub emulator: Option<String>,
    /// Path of a service-account key file.
    pub credentials: Option<String>,
    /// TLS settings of the URL, if any.
    pub tls: Option<crate::tls::Tls>,
}

impl PubSubUrl {
    /// Parses the URL (it carries no secrets: the key stays in its file).
    pub fn parse(raw: &str) -> std::result::Result<PubSubUrl, String> {
        let rest = raw
            .strip_prefix("pubsub://")
            .ok_or("the scheme must be pubsub://")?;
        let (project, query) = match rest.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (rest, None),
        };
        let project = project.strip_suffix('/').unwrap_or(project);
        // Never echo a user:password part back (it would end up in errors and logs).
        if project.contains('@') {
            return Err(
                "credentials do not go in a pubsub:// URL: use credentials=/path/key.json".into(),
            );
        }
        check_project(project)?;
        let mut url = PubSubUrl {
            project: project.to_string(),
            emulator: None,
            credentials: None,
            tls: None,
        };
        let mut tls = crate::core::http_tls::TlsParams::default();
        if let Some(q) = query.filter(|q| !q.is_empty()) {
            for (k, v) in url::form_urlencoded::parse(q.as_bytes()) {
                match &*k {
                    "emulator" => {
                        emulator_base(&v)?;
                        url.emulator = Some(v.into_owned());
                    }
                    "credentials" if !v.is_empty() => url.credentials = Some(v.into_owned()),
                    other if tls.take(other, &v)? => {}
                    other => {
                        return Err(format!(
                            "unknown query parameter {other:?} (known: emulator, credentials, {})",
                            crate::core::http_tls::TLS_PARAMS
                        ))
                    }
                }
            }
        }
        url.tls = tls.finish()?;
        Ok(url)
    }
}

/// The base URL of an emulator given as `host:port` or `http://host:port`
/// (plaintext, as Google's clients reach `PUBSUB_EMULATOR_HOST`) or
/// `https://host:port` (TLS).
pub fn emulator_base(v: &str) -> std::result::Result<String, String> {
    let (scheme, host_port) = match v.split_once("://") {
        Some((s @ ("http" | "https"), rest)) => (s, rest.trim_end_matches('/')),
        Some(_) => {
            return Err(format!(
                "{v:?}: an emulator is host:port or http(s)://host:port"
            ))
        }
        None => ("http", v),
    };
    check_host_port(host_port)?;
    Ok(format!("{scheme}://{host_port}"))
}

/// `host:port` with a non-zero port.
pub fn check_host_port(v: &str) -> std::result::Result<(), String> {
    match v.rsplit_once(':') {
        Some((host, port))
            if !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".-_[]:".contains(c))
                && port.parse::<u16>().is_ok_and(|p| p > 0) =>
        {
            Ok(())
        }
        _ => Err(format!("{v:?} is not host:port")),
    }
}

/// The fields of a service-account JSON key that the token exchange uses.
#[derive(Clone, PartialEq, Eq)]
pub struct ServiceAccountKey {
    /// `client_email`: the JWT's issuer.
    pub client_email: String,
    /// `private_key`: PKCS#8 PEM (secret; never shown by `Debug`).
    pub private_key: String,
    /// `private_key_id`: the JWT's `kid`, if present.
    pub private_key_id: Option<String>,
    /// `token_uri`: where the JWT is exchanged for an access token.
    pub token_uri: String,
}

impl std::fmt::Debug for ServiceAccountKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccountKey")
            .field("client_email", &self.client_email)
            .field("private_key", &"***")
            .field("token_uri", &self.token_uri)
            .finish_non_exhaustive()
    }
}

impl ServiceAccountKey {
    /// Reads a key from its JSON text. Errors never quote the text.
    pub fn parse(json: &[u8]) -> std::result::Result<ServiceAccountKey, String> {
        let v: Value = serde_json::from_slice(json).map_err(|e| {
            // serde_json's message names a position, never the content.
            format!("not a JSON service-account key: {e}")
        })?;
        let field = |name: &str| v.get(name).and_then(Value::as_str).map(str::to_string);
        if let Some(t) = field("type") {
            if t != "service_account" {
                return Err(format!(
                    "credentials of type {t:?}: only service_account keys are supported"
                ));
            }
        }
        let need = |name: &str| field(name).ok_or_else(|| format!("the key has no {name:?}"));
        Ok(ServiceAccountKey {
            client_email: need("client_email")?,
            private_key: need("private_key")?,
            private_key_id: field("private_key_id"),
            token_uri: field("token_uri")
                .unwrap_or_else(|| "https://oauth2.googleapis.com/token".into()),
        })
    }
}

#[cfg(feature = "pubsub")]
/// The DER bytes of the first `-----BEGIN PRIVATE KEY-----` block (PKCS#8).
pub fn pem_pkcs8_der(pem: &str) -> std::result::Result<Vec<u8>, String> {
    use base64::Engine as _;
    const BEGIN: &str = "-----BEGIN PRIVATE KEY-----";
    const END: &str = "-----END PRIVATE KEY-----";
    let start = pem
        .find(BEGIN)
        .ok_or("the private key is not a PKCS#8 PEM block (BEGIN PRIVATE KEY)")?
        + BEGIN.len();
    let len = pem[start..]
        .find(END)
        .ok_or("the private key's PEM block has no END line")?;
    let body: String = pem[start..start + len]
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|_| "the private key's PEM block is not base64".to_string())
}

#[cfg(feature = "pubsub")]
/// base64url without padding, as JWTs use it.
pub fn b64url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(feature = "pubsub")]
/// The unsigned part `header.claims` of the JWT a service account exchanges for
/// an access token (RS256, one hour).
pub fn jwt_signing_input(key: &ServiceAccountKey, scope: &str, now_unix: u64) -> String {
    let mut header = serde_json::json!({"alg": "RS256", "typ": "JWT"});
    if let Some(kid) = &key.private_key_id {
        header["kid"] = Value::from(kid.as_str());
    }
    let claims = serde_json::json!({
        "iss": key.client_email,
        "scope": scope,
        "aud": key.token_uri,
        "iat": now_unix,
        "exp": now_unix + 3600,
    });
    format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    )
}

/// Reads `{"access_token": .., "expires_in": ..}` (OAuth and metadata server).
/// Returns the token and its lifetime in seconds.
pub fn parse_token_response(body: &[u8]) -> std::result::Result<(String, Option<u64>), String> {
    let v: Value =
        serde_json::from_slice(body).map_err(|_| "the token response is not JSON".to_string())?;
    let token = v
        .get("access_token")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .ok_or("the token response has no access_token")?;
    let expires_in = v.get("expires_in").and_then(|e| match e {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    });
    Ok((token.to_string(), expires_in))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn opts(v: serde_json::Value) -> Options {
        serde_json::from_value(v).expect("object")
    }

    #[test]
    fn go_keys_round_trip() {
        let r = topic("orders").ordering_key("k");
        assert_eq!(PubSubRoute::parse(&r.clone().into()).ok(), Some(r));
        let go = opts(json!({"topic_name": "test-topic", "ordering_key": "a"}));
        let parsed = PubSubRoute::parse(&go).expect("valid");
        assert_eq!(parsed.resource("p"), "projects/p/topics/test-topic");
        let full = opts(json!({"topic_name": "projects/other/topics/t-1"}));
        assert_eq!(
            PubSubRoute::parse(&full).expect("valid").resource("p"),
            "projects/other/topics/t-1"
        );
    }

    #[test]
    fn bad_options_are_typed_errors() {
        for (v, key) in [
            (json!({}), "topic_name"),
            (json!({"topic_name": 5}), "topic_name"),
            (json!({"topic_name": "ab"}), "topic_name"),
            (json!({"topic_name": "1abc"}), "topic_name"),
            (json!({"topic_name": "goog-topic"}), "topic_name"),
            (json!({"topic_name": "a b c"}), "topic_name"),
            (json!({"topic_name": "projects//topics/abc"}), "topic_name"),
            (json!({"topic_name": "t".repeat(256)}), "topic_name"),
            (
                json!({"topic_name": "abc", "ordering_key": 1}),
                "ordering_key",
            ),
            (
                json!({"topic_name": "abc", "ordering_key": "k".repeat(1025)}),
                "ordering_key",
            ),
            (json!({"topic_name": "abc", "topic": "x"}), "topic"),
        ] {
            match PubSubRoute::parse(&opts(v.clone())) {
                Err(Error::InvalidOption { key: k, .. }) => assert_eq!(k, key, "{v}"),
                other => panic!("{v}: {other:?}"),
            }
        }
    }

    #[test]
    fn attribute_limits() {
        let route: Options = topic("abc").into();
        let ok = |h: &Headers| validate(b"x", h, &route, None, MAX_MESSAGE_SIZE);
        let mut h = Headers::new();
        for i in 0..99 {
            h.insert(format!("h{i}"), "v".into());
        }
        assert!(ok(&h).is_ok());
        h.insert("h99".into(), "v".into());
        assert!(matches!(ok(&h), Err(Error::InvalidHeader { .. })));
        for (k, v) in [
            ("k".repeat(257), "v".to_string()),
            ("googler".to_string(), "v".to_string()),
            ("GOOG-x".to_string(), "v".to_string()),
            (String::new(), "v".to_string()),
            ("k".to_string(), "v".repeat(1025)),
        ] {
            let h = Headers::from([(k.clone(), v)]);
            assert!(matches!(ok(&h), Err(Error::InvalidHeader { .. })), "{k}");
        }
        let h = Headers::from([("k".repeat(256), "v".repeat(1024))]);
        assert!(ok(&h).is_ok());
    }

    #[test]
    fn size_limit_counts_attributes_and_key() {
        let route: Options = topic("abc").into();
        let h = Headers::from([("a".to_string(), "b".repeat(100))]);
        let base = message_size(&[], &h, Some("kk"));
        assert!(validate(&vec![0; 1000 - base], &h, &route, Some("kk"), 1000).is_ok());
        assert!(matches!(
            validate(&vec![0; 1001 - base], &h, &route, Some("kk"), 1000),
            Err(Error::PayloadTooLarge { limit: 1000, .. })
        ));
        let big = vec![0u8; MAX_MESSAGE_SIZE];
        assert!(matches!(
            validate(&big, &Headers::new(), &route, None, MAX_MESSAGE_SIZE),
            Err(Error::PayloadTooLarge { .. })
        ));
    }

    fn item(index: usize, topic: &str, key: Option<&str>, size: usize) -> PlanItem {
        PlanItem {
            index,
            topic: topic.into(),
            key: key.map(str::to_string),
            size,
        }
    }

    #[test]
    fn plan_groups_keys_in_order_and_batches_the_rest() {
        let items = vec![
            item(0, "t1", Some("a"), 10),
            item(1, "t1", None, 10),
            item(2, "t2", Some("a"), 10),
            item(3, "t1", Some("a"), 10),
            item(4, "t2", None, 10),
            item(5, "t1", None, 10),
            item(6, "t1", Some("b"), 10),
            item(7, "t1", Some("b"), 10),
        ];
        let p = plan(&items, 1000, 1000);
        let req = |t: &str, m: &[usize]| PlannedRequest {
            topic: t.into(),
            messages: m.to_vec(),
        };
        assert_eq!(
            p.keyed,
            vec![
                (
                    "a".to_string(),
                    vec![req("t1", &[0]), req("t2", &[2]), req("t1", &[3])]
                ),
                ("b".to_string(), vec![req("t1", &[6, 7])]),
            ]
        );
        assert_eq!(p.unordered, vec![req("t1", &[1, 5]), req("t2", &[4])]);
    }

    #[test]
    fn plan_respects_request_limits() {
        let items: Vec<PlanItem> = (0..7).map(|i| item(i, "t", None, 40)).collect();
        let p = plan(&items, 3, 100);
        let sizes: Vec<usize> = p.unordered.iter().map(|r| r.messages.len()).collect();
        assert_eq!(sizes, vec![2, 2, 2, 1]);
        let p = plan(&items, 3, 1000);
        let sizes: Vec<usize> = p.unordered.iter().map(|r| r.messages.len()).collect();
        assert_eq!(sizes, vec![3, 3, 1]);
        let keyed: Vec<PlanItem> = (0..5).map(|i| item(i, "t", Some("k"), 1)).collect();
        let p = plan(&keyed, 2, 1000);
        assert_eq!(p.keyed[0].1.len(), 3);
        assert_eq!(p.keyed[0].1[2].messages, vec![4]);
    }

    #[test]
    fn url_forms() {
        let u = PubSubUrl::parse("pubsub://my-project").expect("valid");
        assert_eq!(u.project, "my-project");
        assert_eq!((u.emulator, u.credentials), (None, None));
        let u =
            PubSubUrl::parse("pubsub://p1/?emulator=127.0.0.1:8086&credentials=%2Ftmp%2Fkey.json")
                .expect("valid");
        assert_eq!(u.emulator.as_deref(), Some("127.0.0.1:8086"));
        assert_eq!(u.credentials.as_deref(), Some("/tmp/key.json"));
        let u = PubSubUrl::parse("pubsub://p1?emulator=https://localhost:8096&ca_file=%2Fca.pem")
            .expect("valid");
        assert_eq!(
            emulator_base(u.emulator.as_deref().unwrap_or_default()).as_deref(),
            Ok("https://localhost:8096")
        );
        assert_eq!(
            u.tls,
            Some(crate::tls::Tls::verify_full().ca_file("/ca.pem"))
        );
        assert_eq!(emulator_base("h:1").as_deref(), Ok("http://h:1"));
        for bad in [
            "pubsub://p?emulator=ftp://h:1",
            "pubsub://p?emulator=https://h",
            "pubsub://",
            "kafka://p",
            "pubsub://p?emulator=host",
            "pubsub://p?emulator=h:0",
            "pubsub://p?nope=1",
            "pubsub://a b",
        ] {
            assert!(PubSubUrl::parse(bad).is_err(), "{bad}");
        }
        let e = PubSubUrl::parse("pubsub://KEY:s3cret@my-project").expect_err("userinfo");
        assert!(!e.contains("s3cret"), "{e}");
    }

    #[cfg(feature = "pubsub")]
    #[test]
    fn service_account_key_and_jwt() {
        let key = ServiceAccountKey::parse(
            br#"{"type":"service_account","client_email":"a@b.iam","private_key":"-----BEGIN PRIVATE KEY-----\nAAEC\n-----END PRIVATE KEY-----\n","private_key_id":"kid1","token_uri":"http://127.0.0.1:1/token"}"#,
        )
        .expect("key");
        assert!(!format!("{key:?}").contains("AAEC"));
        assert_eq!(pem_pkcs8_der(&key.private_key).ok(), Some(vec![0, 1, 2]));
        let input = jwt_signing_input(&key, PUBSUB_SCOPE, 1000);
        let (h, c) = input.split_once('.').expect("two parts");
        use base64::Engine as _;
        let dec = |s: &str| -> Value {
            serde_json::from_slice(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(s)
                    .expect("b64url"),
            )
            .expect("json")
        };
        assert_eq!(dec(h), json!({"alg":"RS256","typ":"JWT","kid":"kid1"}));
        assert_eq!(
            dec(c),
            json!({"iss":"a@b.iam","scope":PUBSUB_SCOPE,"aud":"http://127.0.0.1:1/token","iat":1000,"exp":4600})
        );
        assert!(ServiceAccountKey::parse(br#"{"type":"authorized_user"}"#).is_err());
        let err = ServiceAccountKey::parse(br#"{"private_key":"SECRET"}"#).expect_err("no email");
        assert!(!err.contains("SECRET"));
        assert!(pem_pkcs8_der("-----BEGIN RSA PRIVATE KEY-----").is_err());
    }

    #[test]
    fn token_responses() {
        assert_eq!(
            parse_token_response(br#"{"access_token":"t","expires_in":3599}"#),
            Ok(("t".into(), Some(3599)))
        );
        assert!(parse_token_response(br#"{"error":"invalid_grant"}"#).is_err());
    }
}
