use super::publish::check_message_ids;
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
