//! Google Pub/Sub against the local emulator (OUTBOXER_PUBSUB_EMULATOR, default
//! 127.0.0.1:8086, started by `scripts/test-services up`, see
//! `scripts/pubsub-emulator`).
//!
//! Every destination is a fresh topic with an ordering-enabled pull subscription.
//! The harness's stream goes through one process-wide FaultProxy, so that
//! `cut_connections` drops its connections without disturbing other tests; the
//! auth tests put a real RS256 verifying token endpoint (and a metadata server)
//! on loopback and check the `Authorization` header that reaches the proxy.
//! The emulator client and the harness are in emulator.rs, the auth fixtures in auth.rs.

use crate::conformance::{read, stored, unique, Consumer, Received, StreamHarness};
use crate::fault_proxy::{Fault, FaultProxy};
use base64::Engine as _;
use outboxer::stream::pubsub::{
    self, MetadataServer, PubSubStream, ServiceAccount, StaticToken, MAX_MESSAGE_SIZE,
    METADATA_TOKEN_PATH, PUBSUB_SCOPE,
};
use outboxer::{Error, Options, StoredMessage, Stream, MESSAGE_ID_HEADER};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

mod auth;
mod emulator;
use auth::*;
use emulator::*;

stream_conformance!(PubSub);

// Pub/Sub-specific cases.

/// A stream through its own proxy (faults here touch no other test).
fn via(proxy: &FaultProxy) -> pubsub::PubSubStreamBuilder {
    PubSubStream::builder(&url()).emulator(&proxy.host())
}

#[test]
fn throttling_and_server_errors_are_retried_and_delivered_once() {
    let (dest, sub) = PubSub::destination(&unique("p_retry"));
    for status in [429, 500, 503] {
        let proxy = FaultProxy::start(&emulator());
        let mut s = via(&proxy).build().expect("stream");
        proxy.inject([
            Fault::Status(status, r#"{"error":{"code":0,"status":"INJECTED"}}"#),
            Fault::Status(status, r#"{"error":{"code":0,"status":"INJECTED"}}"#),
        ]);
        let m = stored(1, format!("after {status}").as_bytes(), &dest, None);
        let out = s.publish(std::slice::from_ref(&m), &crate::common::deadline());
        assert!(out[0].is_ok(), "{status}: {out:?}");
        assert_eq!(proxy.requests(), 3, "two faults, one forwarded try");
        let got = sub.pull(2, Duration::from_secs(3));
        assert_eq!(got.len(), 1, "{status}: exactly once: {got:?}");
        assert_eq!(
            got[0].attributes[MESSAGE_ID_HEADER],
            m.message_id.to_string()
        );
    }
}

#[test]
fn persistent_server_errors_are_transient_and_nothing_is_lost() {
    let (dest, _sub) = PubSub::destination(&unique("p_503"));
    let proxy = FaultProxy::start(&emulator());
    let mut s = via(&proxy).request_attempts(2).build().expect("stream");
    proxy.inject([Fault::Status(503, "busy"), Fault::Status(503, "busy")]);
    let out = s.publish(
        &[stored(1, b"x", &dest, None), stored(2, b"y", &dest, None)],
        &crate::common::deadline(),
    );
    for o in &out {
        assert!(matches!(o, Err(e) if e.is_transient()), "{o:?}");
    }
    let bad = FaultProxy::start(&emulator());
    let mut s = via(&bad).build().expect("stream");
    bad.inject([Fault::Status(
        400,
        r#"{"error":{"status":"INVALID_ARGUMENT"}}"#,
    )]);
    let out = s.publish(&[stored(1, b"x", &dest, None)], &crate::common::deadline());
    assert!(matches!(&out[0], Err(Error::Rejected(_))), "{out:?}");
    assert_eq!(bad.requests(), 1, "a 400 is not retried");
}

/// A 2xx answer is a success only with one message id per message sent: an empty
/// or short `messageIds` (a proxy, a broken gateway) must not mark anything
/// dispatched, and the failure is transient (the message is sent again, never parked).
#[test]
fn a_success_without_one_message_id_per_message_is_a_transient_failure() {
    let (dest, sub) = PubSub::destination(&unique("p_ids"));
    let proxy = FaultProxy::start(&emulator());
    let mut s = via(&proxy).request_attempts(1).build().expect("stream");
    for answer in [
        "{}",
        r#"{"messageIds":["1"]}"#,
        r#"{"messageIds":"1,2"}"#,
        "not json",
    ] {
        proxy.inject([Fault::Status(200, answer)]);
        let out = s.publish(
            &[stored(1, b"x", &dest, None), stored(2, b"y", &dest, None)],
            &crate::common::deadline(),
        );
        for o in &out {
            assert!(
                matches!(o, Err(e) if e.is_transient()),
                "{answer}: not a success: {o:?}"
            );
        }
    }
    assert_eq!(
        proxy.requests(),
        4,
        "one request per publish, none forwarded"
    );
    // With the real answer (two ids) both are delivered.
    let out = s.publish(
        &[stored(3, b"z", &dest, None), stored(4, b"w", &dest, None)],
        &crate::common::deadline(),
    );
    assert!(out.iter().all(Result::is_ok), "{out:?}");
    assert_eq!(sub.pull(2, Duration::from_secs(10)).len(), 2);
}

#[test]
fn a_slow_response_beyond_the_timeout_is_a_transient_timeout() {
    let (dest, _sub) = PubSub::destination(&unique("p_slow"));
    let proxy = FaultProxy::start(&emulator());
    let mut s = via(&proxy)
        .request_timeout(Duration::from_millis(500))
        .request_attempts(1)
        .build()
        .expect("stream");
    proxy.inject([Fault::Delay(Duration::from_secs(2))]);
    let started = Instant::now();
    let out = s.publish(
        &[stored(1, b"slow", &dest, None)],
        &crate::common::deadline(),
    );
    assert!(matches!(&out[0], Err(Error::Timeout(_))), "{out:?}");
    assert!(out[0].as_ref().is_err_and(Error::is_transient));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn a_failed_key_pauses_only_itself() {
    let _g = read();
    let (dest, sub) = PubSub::destination(&unique("p_hold"));
    let missing = PubSub::refused_destination(&unique("p_missing"));
    let mut s = PubSub::stream();
    let batch = vec![
        stored(1, b"a1", &dest, Some("a")),
        stored(2, b"b1", &missing, Some("b")),
        stored(3, b"a2", &dest, Some("a")),
        stored(4, b"b2", &dest, Some("b")),
        stored(5, b"free", &dest, None),
        stored(6, b"b3", &dest, Some("b")),
    ];
    let out = s.publish(&batch, &crate::common::deadline());
    assert!(
        out[0].is_ok() && out[2].is_ok() && out[4].is_ok(),
        "{out:?}"
    );
    assert!(
        matches!(&out[1], Err(e) if !e.is_transient()),
        "{:?}",
        out[1]
    );
    for i in [3, 5] {
        assert!(
            matches!(&out[i], Err(e) if e.is_transient()),
            "must not overtake b1: {:?}",
            out[i]
        );
    }
    let got = sub.pull(4, Duration::from_secs(3));
    let mut bodies: Vec<Vec<u8>> = got.into_iter().map(|r| r.data).collect();
    bodies.sort();
    assert_eq!(
        bodies,
        vec![b"a1".to_vec(), b"a2".to_vec(), b"free".to_vec()]
    );
}

#[test]
fn ordering_keys_arrive_in_order_across_batches() {
    let _g = read();
    let name = unique("p_order");
    let (dest, sub) = PubSub::destination(&name);
    let mut s = PubSub::stream();
    let own_key: Options = pubsub::topic(&name.replace('_', "-"))
        .ordering_key("explicit")
        .into();
    let mut n = 0;
    for _batch in 0..3 {
        let mut batch: Vec<StoredMessage> = (0..100)
            .map(|_| {
                n += 1;
                let key = format!("k{}", n % 5);
                stored(n, format!("{key}:{n}").as_bytes(), &dest, Some(&key))
            })
            .collect();
        batch.push(stored(1000 + n, b"explicit", &own_key, Some("k0")));
        let out = s.publish(&batch, &crate::common::deadline());
        assert!(out.iter().all(Result::is_ok), "{out:?}");
    }
    let got = sub.pull(303, Duration::from_secs(30));
    assert_eq!(got.len(), 303);
    let mut last: BTreeMap<String, i64> = BTreeMap::new();
    for r in got {
        if r.data == b"explicit" {
            assert_eq!(r.ordering_key.as_deref(), Some("explicit"), "option wins");
            continue;
        }
        let body = String::from_utf8(r.data).expect("utf8");
        let (k, i) = body.split_once(':').expect("k:i");
        assert_eq!(
            r.ordering_key.as_deref(),
            Some(k),
            "the message's key is sent"
        );
        let i: i64 = i.parse().expect("i");
        let prev = last.insert(k.to_string(), i).unwrap_or(-1);
        assert!(i > prev, "key {k}: {i} after {prev}");
    }
}

#[test]
fn large_batches_split_within_request_limits() {
    let _g = read();
    let (dest, sub) = PubSub::destination(&unique("p_big"));
    let mut s = PubSub::stream();
    // 1500 small messages (> 1000 per request) and 3 x 4 MB (> 10 MB per request).
    let mut batch: Vec<StoredMessage> = (0..1500)
        .map(|i| stored(i, format!("m{i}").as_bytes(), &dest, None))
        .collect();
    for i in 0..3u8 {
        batch.push(stored(3000 + i64::from(i), vec![i; 4_000_000], &dest, None));
    }
    let out = s.publish(&batch, &crate::common::deadline());
    assert!(
        out.iter().all(Result::is_ok),
        "{:?}",
        out.iter().find(|o| o.is_err())
    );
    let got = sub.pull_at_most(1503, Duration::from_secs(60), 2);
    assert_eq!(got.len(), 1503);
    let ids: HashSet<&String> = got
        .iter()
        .map(|r| &r.attributes[MESSAGE_ID_HEADER])
        .collect();
    assert_eq!(ids.len(), 1503);
    assert_eq!(got.iter().filter(|r| r.data.len() == 4_000_000).count(), 3);
}

#[test]
fn bad_input_is_refused_at_send_and_nothing_is_stored() {
    use outboxer::{Message, Outbox};
    let table = crate::common::unique("pubsub_bad");
    let outbox = Outbox::builder()
        .store(crate::common::store(&table))
        .stream(PubSub::stream())
        .build()
        .expect("outbox");
    let route = pubsub::topic("orders");
    type Expected = fn(&Error) -> bool;
    let cases: Vec<(Message, Expected)> = vec![
        (
            Message::new(b"x".to_vec())
                .route(route.clone())
                .header("goog-reserved", "v"),
            |e| matches!(e, Error::InvalidHeader { .. }),
        ),
        (
            Message::new(b"x".to_vec())
                .route(route.clone())
                .header("k".repeat(257), "v"),
            |e| matches!(e, Error::InvalidHeader { .. }),
        ),
        (
            Message::new(b"x".to_vec())
                .route(route.clone())
                .header("k", "v".repeat(1025)),
            |e| matches!(e, Error::InvalidHeader { .. }),
        ),
        (
            (0..100).fold(Message::new(b"x".to_vec()).route(route.clone()), |m, i| {
                m.header(format!("h{i}"), "v")
            }),
            |e| matches!(e, Error::InvalidHeader { .. }),
        ),
        (
            Message::new(vec![0u8; MAX_MESSAGE_SIZE]).route(route.clone()),
            |e| matches!(e, Error::PayloadTooLarge { .. }),
        ),
        (Message::new(b"x".to_vec()).option("topic_name", 5), |e| {
            matches!(e, Error::InvalidOption { .. })
        }),
        (
            Message::new(b"x".to_vec()).route(pubsub::topic("goog-topic")),
            |e| matches!(e, Error::InvalidOption { .. }),
        ),
        (
            Message::new(b"x".to_vec())
                .route(route.clone())
                .option("exchange.name", "x"),
            |e| matches!(e, Error::InvalidOption { .. }),
        ),
    ];
    for (i, (m, expected)) in cases.into_iter().enumerate() {
        match outbox.send(m) {
            Err(e) => assert!(expected(&e), "case {i}: {e:?}"),
            Ok(_) => panic!("case {i} was accepted"),
        }
    }
    let rows: i64 = crate::common::pg()
        .query_one(&format!("SELECT count(*) FROM \"{table}\""), &[])
        .expect("count")
        .get(0);
    assert_eq!(rows, 0, "nothing stored");
    crate::common::drop_table(&table);
}

// --- Auth: a real RS256-verifying token endpoint and a metadata server on loopback (auth.rs).

#[test]
fn service_account_tokens_are_exchanged_sent_and_refreshed() {
    let (pem, public) = key_pair();
    // Tokens live 2 s: the stream refreshes halfway, before they expire.
    let (token_uri, issued, _) = token_endpoint(public, 2);
    let (dest, sub) = PubSub::destination(&unique("p_auth"));
    let front = FaultProxy::start(&emulator());
    let dir = std::env::temp_dir().join(unique("outboxer_sa"));
    std::fs::create_dir_all(&dir).expect("dir");
    let key_file = dir.join("key.json");
    std::fs::write(&key_file, key_json(&pem, &token_uri)).expect("write key");
    // An explicit endpoint with a key file: the service-account path of the builder.
    let mut s = PubSubStream::builder(&url())
        .endpoint(&front.url())
        .credentials_file(&key_file)
        .build()
        .expect("stream");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(s.publish(
        &[stored(1, b"one", &dest, None)],
        &crate::common::deadline()
    )[0]
    .is_ok());
    assert!(s.publish(
        &[stored(2, b"two", &dest, None)],
        &crate::common::deadline()
    )[0]
    .is_ok());
    assert_eq!(issued.load(Ordering::SeqCst), 1, "cached");
    std::thread::sleep(Duration::from_millis(1300));
    assert!(s.publish(
        &[stored(3, b"three", &dest, None)],
        &crate::common::deadline()
    )[0]
    .is_ok());
    assert_eq!(issued.load(Ordering::SeqCst), 2, "refreshed before expiry");
    assert_eq!(
        front.authorizations(),
        vec!["Bearer tok-1", "Bearer tok-1", "Bearer tok-2"]
    );
    assert_eq!(sub.pull(3, Duration::from_secs(10)).len(), 3);
    let shown = format!("{s:?}");
    assert!(
        !shown.contains("PRIVATE KEY") && !shown.contains("tok-"),
        "{shown}"
    );
}

#[test]
fn a_wrongly_signed_jwt_is_refused_and_no_secret_leaks() {
    let (_pem, public) = key_pair();
    let (other_pem, _) = key_pair();
    let (token_uri, issued, _) = token_endpoint(public, 3600);
    let sa = ServiceAccount::from_json(key_json(&other_pem, &token_uri).as_bytes()).expect("key");
    let shown = format!("{sa:?}");
    assert!(!shown.contains("PRIVATE KEY"), "{shown}");
    let front = FaultProxy::start(&emulator());
    let err = PubSubStream::builder(&url())
        .endpoint(&front.url())
        .token_provider(sa)
        .build()
        .and_then(|mut s| {
            s.publish(
                &[stored(1, b"x", &pubsub::topic("abc").into(), None)],
                &crate::common::deadline(),
            )
            .remove(0)
        })
        .expect_err("bad signature");
    assert!(err.is_transient(), "credentials can be fixed: {err:?}");
    let text = format!("{err} {err:?}");
    assert!(text.contains("bad signature"), "{text}");
    assert!(
        !text.contains("PRIVATE KEY") && !text.contains("eyJ"),
        "{text}"
    );
    assert_eq!(issued.load(Ordering::SeqCst), 0);
    assert_eq!(front.requests(), 0, "nothing published without a token");
    // A broken key file is a typed error that does not quote the key.
    let broken = key_json(
        "-----BEGIN PRIVATE KEY-----\nSECRETSECRET\n-----END PRIVATE KEY-----\n",
        &token_uri,
    );
    let err = ServiceAccount::from_json(broken.as_bytes()).expect_err("not a key");
    assert!(
        matches!(err, Error::Config { .. }) && !err.to_string().contains("SECRET"),
        "{err}"
    );
}

#[test]
fn metadata_server_and_static_tokens_are_sent() {
    let meta = serve(|method, path, headers, _| {
        if method == "GET"
            && path == METADATA_TOKEN_PATH
            && headers.get("metadata-flavor").map(String::as_str) == Some("Google")
        {
            (
                200,
                json!({"access_token": "meta-tok", "expires_in": 3599}).to_string(),
            )
        } else {
            (403, "{}".into())
        }
    });
    let (dest, sub) = PubSub::destination(&unique("p_meta"));
    let front = FaultProxy::start(&emulator());
    let mut s = PubSubStream::builder(&url())
        .endpoint(&front.url())
        .token_provider(MetadataServer::with_base_url(&meta))
        .build()
        .expect("stream");
    assert!(s.publish(&[stored(1, b"m", &dest, None)], &crate::common::deadline())[0].is_ok());
    let mut s = PubSubStream::builder(&url())
        .endpoint(&front.url())
        .token_provider(StaticToken::new("static-tok"))
        .build()
        .expect("stream");
    assert!(s.publish(&[stored(2, b"s", &dest, None)], &crate::common::deadline())[0].is_ok());
    assert_eq!(
        front.authorizations(),
        vec!["Bearer meta-tok", "Bearer static-tok"]
    );
    assert_eq!(sub.pull(2, Duration::from_secs(10)).len(), 2);
}

#[test]
fn the_emulator_gets_no_authorization() {
    let (dest, _sub) = PubSub::destination(&unique("p_noauth"));
    let front = FaultProxy::start(&emulator());
    let mut s = PubSubStream::connect(&format!("pubsub://{PROJECT}?emulator={}", front.host()))
        .expect("stream");
    assert!(s.publish(&[stored(1, b"x", &dest, None)], &crate::common::deadline())[0].is_ok());
    assert_eq!(front.authorizations(), vec![String::new()]);
}

#[test]
fn a_refused_token_is_replaced_and_secrets_stay_out_of_logs_and_errors() {
    let logs = captured_logs();
    let (pem, public) = key_pair();
    let (token_uri, issued, aud) = token_endpoint(public, 3600);
    // The token endpoint answers 503 once (a retry that gets logged).
    let token_host = token_uri
        .trim_start_matches("http://")
        .trim_end_matches("/token")
        .to_string();
    let token_proxy = FaultProxy::start(&token_host);
    token_proxy.inject([Fault::Status(503, r#"{"error":"busy"}"#)]);
    // The key's token_uri is the proxy: that is the audience the JWT must name.
    *aud.lock().unwrap_or_else(|e| e.into_inner()) = format!("{}/token", token_proxy.url());
    let sa = ServiceAccount::from_json(
        key_json(&pem, &format!("{}/token", token_proxy.url())).as_bytes(),
    )
    .expect("key");
    let (dest, sub) = PubSub::destination(&unique("p_401"));
    let front = FaultProxy::start(&emulator());
    let mut s = PubSubStream::builder(&url())
        .endpoint(&front.url())
        .token_provider(sa)
        .build()
        .expect("stream");
    front.inject([Fault::Status(
        401,
        r#"{"error":{"status":"UNAUTHENTICATED"}}"#,
    )]);
    // A revoked token is replaced within the same publish: one refresh, one more try.
    let first = s.publish(&[stored(1, b"x", &dest, None)], &crate::common::deadline());
    assert!(first[0].is_ok(), "{first:?}");
    assert_eq!(
        issued.load(Ordering::SeqCst),
        2,
        "a new token after the 401"
    );
    assert_eq!(
        token_proxy.requests(),
        3,
        "one 503 retried, then two exchanges"
    );
    assert_eq!(front.authorizations(), vec!["Bearer tok-1", "Bearer tok-2"]);
    assert_eq!(sub.pull(1, Duration::from_secs(10)).len(), 1);
    // Refused again after the refresh: an outage of the credentials.
    front.inject([
        Fault::Status(401, r#"{"error":{"status":"UNAUTHENTICATED"}}"#),
        Fault::Status(401, r#"{"error":{"status":"UNAUTHENTICATED"}}"#),
    ]);
    let err = s
        .publish(&[stored(2, b"y", &dest, None)], &crate::common::deadline())
        .remove(0)
        .expect_err("refused twice");
    assert!(
        matches!(&err, Error::Unauthorized { .. }) && err.to_string().contains("HTTP 401"),
        "{err:?}"
    );
    let key_body: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .join("");
    let text = format!(
        "{}\n{err}\n{err:?}\n{s:?}",
        logs.0.lock().unwrap_or_else(|e| e.into_inner()).join("\n")
    );
    assert!(text.contains("HTTP 503"), "the retry was logged: {text}");
    for secret in [
        "tok-1",
        "tok-2",
        "PRIVATE KEY",
        "eyJ",
        &key_body[..40],
        &key_body[200..240],
    ] {
        assert!(!text.contains(secret), "{secret:?} leaked: {text}");
    }
}

/// A token endpoint or metadata server that refuses, and a 401/403 from the API
/// after one token refresh, are outages of the credentials (`Unauthorized`); a
/// missing topic still is the message's own failure.
#[test]
fn refused_tokens_and_permissions_are_unauthorized() {
    let (dest, _sub) = PubSub::destination(&unique("p_unauth"));
    let forbidden = serve(|_, _, _, _| (403, r#"{"error":"access_denied"}"#.into()));
    let front = FaultProxy::start(&emulator());
    let publish = |provider: Arc<dyn pubsub::TokenProvider>| {
        let mut s = PubSubStream::builder(&url())
            .endpoint(&front.url())
            .token_provider(Switch(Arc::new(std::sync::Mutex::new(provider))))
            .request_attempts(1)
            .build()
            .expect("stream");
        s.publish(
            &[
                stored(1, b"x", &dest, None),
                stored(2, b"y", &dest, Some("k")),
            ],
            &crate::common::deadline(),
        )
    };
    // The metadata server refuses (403), or is not there at all.
    for base in [forbidden.clone(), "http://127.0.0.1:1".to_string()] {
        let out = publish(Arc::new(MetadataServer::with_base_url(&base)));
        for o in &out {
            assert!(
                matches!(
                    o,
                    Err(Error::Unauthorized {
                        what: "pubsub auth",
                        ..
                    })
                ),
                "{base}: {o:?}"
            );
        }
    }
    assert_eq!(front.requests(), 0, "nothing published without a token");
    // The API refuses the token's permission twice: one refresh, then Unauthorized.
    front.inject([
        Fault::Status(403, r#"{"error":{"status":"PERMISSION_DENIED"}}"#),
        Fault::Status(403, r#"{"error":{"status":"PERMISSION_DENIED"}}"#),
    ]);
    let mut s = PubSubStream::builder(&url())
        .endpoint(&front.url())
        .token_provider(StaticToken::new("t"))
        .request_attempts(1)
        .build()
        .expect("stream");
    let out = s.publish(&[stored(3, b"z", &dest, None)], &crate::common::deadline());
    assert!(
        matches!(&out[0], Err(Error::Unauthorized { what: "pubsub", .. })),
        "{out:?}"
    );
    assert_eq!(front.requests(), 2, "one refresh, one more try");
    // A topic that does not exist stays a message failure.
    let out = s.publish(
        &[stored(
            4,
            b"w",
            &PubSub::refused_destination(&unique("p_gone")),
            None,
        )],
        &crate::common::deadline(),
    );
    assert!(
        matches!(&out[0], Err(e @ Error::Rejected(_)) if !e.is_transient()),
        "{out:?}"
    );
}

/// A relay (max_attempts 2) parks nothing and counts no attempt while the token
/// endpoint refuses (403) and while the API refuses the permission (403); once
/// both are fixed, everything is delivered.
#[test]
fn a_relay_parks_nothing_while_credentials_are_refused() {
    use crate::common::{pg, store, unique as table_name};
    use outboxer::{Message, Outbox};
    let name = unique("p_outage");
    let (_, sub) = PubSub::destination(&name);
    let topic = name.replace('_', "-");
    let forbidden = serve(|_, _, _, _| (403, r#"{"error":"access_denied"}"#.into()));
    let switch = Switch(Arc::new(std::sync::Mutex::new(Arc::new(
        MetadataServer::with_base_url(&forbidden),
    ))));
    let front = FaultProxy::start(&emulator());
    let table = table_name("pubsub_unauth");
    let outbox = Outbox::builder()
        .store(store(&table))
        .stream(
            PubSubStream::builder(&url())
                .endpoint(&front.url())
                .token_provider(switch.clone())
                .build()
                .expect("stream"),
        )
        .max_attempts(2)
        .backoff(Duration::from_millis(50), Duration::from_millis(200))
        .check_interval(Duration::from_millis(50))
        .build()
        .expect("outbox");
    const N: usize = 4;
    let msgs: Vec<Message> = (0..N)
        .map(|i| Message::new(format!("m{i}").into_bytes()).route(pubsub::topic(&topic)))
        .collect();
    outbox.send_batch(&msgs).expect("send");
    let relay = outbox.start().expect("start");
    // Stream::connect's one unauthenticated GET (the TLS check at start); no
    // publish is sent without a token.
    let at_start = front.requests();
    assert!(at_start <= 1, "{at_start} requests at start");
    let attempts = || -> i32 {
        pg().query_one(
            &format!("SELECT coalesce(max(attempts), 0)::int FROM \"{table}\""),
            &[],
        )
        .expect("attempts")
        .get(0)
    };
    let hold = |what: &str| {
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            assert_eq!(outbox.stats().expect("stats").parked, 0, "{what}: parked");
            std::thread::sleep(Duration::from_millis(250));
        }
        assert_eq!(attempts(), 0, "{what}: an attempt was counted");
    };
    hold("token endpoint 403");
    assert_eq!(front.requests(), at_start);
    // Tokens again, but the API refuses the permission.
    front.inject(std::iter::repeat_n(
        Fault::Status(403, r#"{"error":{"status":"PERMISSION_DENIED"}}"#),
        100_000,
    ));
    *switch.0.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(StaticToken::new("t"));
    // Released rows come back after the relay's outage delay (at most 10 s).
    let until = Instant::now() + Duration::from_secs(15);
    while front.requests() == at_start && Instant::now() < until {
        assert_eq!(outbox.stats().expect("stats").parked, 0, "parked");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(front.requests() > at_start, "the API was called");
    hold("API 403");
    let failures: Vec<_> = relay.err().try_iter().collect();
    assert!(
        failures
            .iter()
            .any(|f| matches!(f.error, Error::Unauthorized { .. })),
        "{failures:?}"
    );
    front.clear();
    assert_eq!(sub.pull(N, Duration::from_secs(30)).len(), N);
    relay.stop().expect("stop");
    let stats = outbox.stats().expect("stats");
    assert_eq!((stats.parked, stats.pending), (0, 0), "{stats:?}");
    crate::common::drop_table(&table);
}

/// Issue 12, item 7: a publish to a server that never answers returns by its
/// deadline, the per-key jobs included (one thread, several keys: without the
/// deadline each key would wait its own request timeout), and a relay stops within
/// one request timeout.
#[test]
fn a_silent_server_holds_a_publish_no_longer_than_its_deadline() {
    let silent = crate::fault_proxy::SilentServer::start();
    let timeout = Duration::from_secs(1);
    let stream = || {
        PubSubStream::builder(&url())
            .emulator(&silent.host())
            .request_timeout(timeout)
            .request_attempts(10)
            .concurrency(1)
            .build()
            .expect("stream")
    };
    crate::conformance::publish_returns_by_the_deadline(
        stream(),
        &pubsub::topic("p-silent").into(),
        Duration::from_secs(2),
        timeout,
    );
    // Six keys on one thread, one attempt each: six request timeouts without the
    // deadline.
    let mut s = PubSubStream::builder(&url())
        .emulator(&silent.host())
        .request_timeout(timeout)
        .request_attempts(1)
        .concurrency(1)
        .build()
        .expect("stream");
    let dest: Options = pubsub::topic("p-silent").into();
    let batch: Vec<StoredMessage> = (0..6)
        .map(|i| stored(i, b"k", &dest, Some(&format!("key-{i}"))))
        .collect();
    let started = Instant::now();
    let out = s.publish(
        &batch,
        &outboxer::stream::Deadline::after(Duration::from_secs(2)),
    );
    let took = started.elapsed();
    assert!(took <= Duration::from_millis(3500), "{took:?}");
    assert!(
        out.iter().all(|o| matches!(o, Err(e) if e.is_transient())),
        "{out:?}"
    );
    crate::conformance::relay_stops_within_one_request_timeout(
        stream(),
        &pubsub::topic("p-silent").into(),
        timeout,
    );
}

/// The same through the fault proxy's slow mode in front of the emulator.
#[test]
fn slow_answers_hold_a_publish_no_longer_than_its_deadline() {
    let (dest, _sub) = PubSub::destination(&unique("p_late"));
    let proxy = FaultProxy::start(&emulator());
    proxy.inject(std::iter::repeat_n(
        Fault::Delay(Duration::from_secs(5)),
        20,
    ));
    let timeout = Duration::from_secs(1);
    crate::conformance::publish_returns_by_the_deadline(
        via(&proxy)
            .request_timeout(timeout)
            .request_attempts(10)
            .build()
            .expect("stream"),
        &dest,
        Duration::from_secs(2),
        timeout,
    );
}
