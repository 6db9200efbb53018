//! Auth fixtures: a real RS256-verifying token endpoint and a metadata server on
//! loopback, service-account keys, a switchable token provider, and a logger that
//! captures what the stream logs (to check that no secret leaks).

use super::*;

/// A fresh RSA key pair from the openssl CLI: (PKCS#8 PEM, PKCS#1 public key DER).
pub fn key_pair() -> (String, Vec<u8>) {
    let dir = std::env::temp_dir().join(unique("outboxer_key"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let key = dir.join("key.pem");
    let run = |args: &[&str]| {
        let st = std::process::Command::new("openssl")
            .args(args)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("the openssl CLI (the auth tests generate their key pair with it)");
        assert!(st.success(), "openssl {args:?}");
    };
    let key_s = key.to_str().expect("utf8 path");
    let public = dir.join("pub.der");
    let public_s = public.to_str().expect("utf8 path");
    run(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        key_s,
    ]);
    run(&[
        "rsa",
        "-in",
        key_s,
        "-RSAPublicKey_out",
        "-outform",
        "DER",
        "-out",
        public_s,
    ]);
    let pem = std::fs::read_to_string(&key).expect("key");
    let der = std::fs::read(&public).expect("public key");
    let _ = std::fs::remove_dir_all(&dir);
    (pem, der)
}

pub const EMAIL: &str = "relay@outboxer-test.iam.gserviceaccount.com";

/// A tiny HTTP server: `handle(method, path, headers, body) -> (status, body)`.
pub fn serve(
    handle: impl Fn(&str, &str, &BTreeMap<String, String>, &[u8]) -> (u16, String)
        + Send
        + Sync
        + 'static,
) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let handle = Arc::new(handle);
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let handle = handle.clone();
            std::thread::spawn(move || {
                let mut writer = conn.try_clone().expect("clone");
                let mut reader = BufReader::new(conn);
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut parts = line.split_whitespace();
                    let method = parts.next().unwrap_or_default().to_string();
                    let path = parts.next().unwrap_or_default().to_string();
                    let mut headers = BTreeMap::new();
                    loop {
                        let mut h = String::new();
                        if reader.read_line(&mut h).unwrap_or(0) == 0 {
                            return;
                        }
                        if h.trim().is_empty() {
                            break;
                        }
                        if let Some((k, v)) = h.split_once(':') {
                            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
                        }
                    }
                    let len = headers
                        .get("content-length")
                        .and_then(|l| l.parse().ok())
                        .unwrap_or(0);
                    let mut body = vec![0u8; len];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    let (status, text) = handle(&method, &path, &headers, &body);
                    let answer = format!(
                        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{text}",
                        text.len()
                    );
                    if writer.write_all(answer.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    format!("http://{addr}")
}

/// A token endpoint that verifies the JWT like Google's: RS256 signature with the
/// given public key, and iss / scope / aud / iat / exp. Tokens are `tok-N`.
/// Returns the token URI, the count of issued tokens and the expected `aud` (the
/// token URI unless a test puts a proxy in front).
pub fn token_endpoint(
    public_der: Vec<u8>,
    lifetime: u64,
) -> (String, Arc<AtomicUsize>, Arc<std::sync::Mutex<String>>) {
    let issued = Arc::new(AtomicUsize::new(0));
    let count = issued.clone();
    let aud: Arc<std::sync::Mutex<String>> = Arc::default();
    let aud2 = aud.clone();
    let base = serve(move |method, path, headers, body| {
        let verdict = (|| -> Result<(), String> {
            if method != "POST" || path != "/token" {
                return Err(format!("{method} {path}"));
            }
            if headers.get("content-type").map(String::as_str)
                != Some("application/x-www-form-urlencoded")
            {
                return Err("content-type".into());
            }
            let form: BTreeMap<String, String> = String::from_utf8_lossy(body)
                .split('&')
                .filter_map(|p| p.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            if form.get("grant_type").map(String::as_str)
                != Some("urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer")
            {
                return Err("grant_type".into());
            }
            let jwt = form.get("assertion").ok_or("assertion")?;
            let (input, sig) = jwt.rsplit_once('.').ok_or("jwt")?;
            let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
            let sig = b64.decode(sig).map_err(|_| "sig b64")?;
            ring::signature::UnparsedPublicKey::new(
                &ring::signature::RSA_PKCS1_2048_8192_SHA256,
                &public_der,
            )
            .verify(input.as_bytes(), &sig)
            .map_err(|_| "bad signature")?;
            let (h, c) = input.split_once('.').ok_or("jwt parts")?;
            let header: Value = serde_json::from_slice(&b64.decode(h).map_err(|_| "h")?)
                .map_err(|_| "header json")?;
            let claims: Value = serde_json::from_slice(&b64.decode(c).map_err(|_| "c")?)
                .map_err(|_| "claims json")?;
            if header["alg"] != "RS256" {
                return Err("alg".into());
            }
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let (iat, exp) = (
                claims["iat"].as_u64().ok_or("iat")?,
                claims["exp"].as_u64().ok_or("exp")?,
            );
            if claims["iss"] != EMAIL
                || claims["scope"] != PUBSUB_SCOPE
                || claims["aud"].as_str()
                    != Some(aud2.lock().unwrap_or_else(|e| e.into_inner()).as_str())
                || iat > now + 5
                || exp <= now
                || exp - iat > 3600
            {
                return Err(format!("claims {claims}"));
            }
            Ok(())
        })();
        match verdict {
            Ok(()) => {
                let n = count.fetch_add(1, Ordering::SeqCst) + 1;
                (
                    200,
                    json!({"access_token": format!("tok-{n}"), "expires_in": lifetime, "token_type": "Bearer"})
                        .to_string(),
                )
            }
            Err(why) => (
                400,
                json!({"error": "invalid_grant", "error_description": why}).to_string(),
            ),
        }
    });
    let token_uri = format!("{base}/token");
    *aud.lock().unwrap_or_else(|e| e.into_inner()) = token_uri.clone();
    (token_uri, issued, aud)
}

pub fn key_json(pem: &str, token_uri: &str) -> String {
    json!({
        "type": "service_account",
        "project_id": PROJECT,
        "private_key_id": "test-key-1",
        "private_key": pem,
        "client_email": EMAIL,
        "token_uri": token_uri,
    })
    .to_string()
}

/// Every log record of this test process up to debug level (the tests of this binary
/// set no other logger).
pub struct Capture(pub std::sync::Mutex<Vec<String>>);

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(format!("{} {}", record.target(), record.args()));
    }
    fn flush(&self) {}
}

pub fn captured_logs() -> &'static Capture {
    static CAPTURE: OnceLock<&'static Capture> = OnceLock::new();
    CAPTURE.get_or_init(|| {
        let c: &'static Capture = Box::leak(Box::new(Capture(std::sync::Mutex::new(Vec::new()))));
        log::set_logger(c).expect("the only logger of this test binary");
        // Debug: ureq's trace level dumps raw wire bytes (tokens included); see README.
        log::set_max_level(log::LevelFilter::Debug);
        c
    })
}

/// A token provider the test switches at run time.
#[derive(Clone, Debug)]
pub struct Switch(pub Arc<std::sync::Mutex<Arc<dyn pubsub::TokenProvider>>>);

impl pubsub::TokenProvider for Switch {
    fn fetch_token(&self) -> outboxer::Result<pubsub::AccessToken> {
        let p = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        p.fetch_token()
    }
}
