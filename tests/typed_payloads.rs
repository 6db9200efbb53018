//! Typed payloads at the producer (issue 17): `Message::json` against a real
//! PostgreSQL outbox and RabbitMQ. The round trip through every stream is in the
//! stream conformance suite (tests/streams/conformance.rs, json_payload_from_postgres).

mod common;

use common::*;
use outboxer::stream::amqp;
use outboxer::{Error, Message, CONTENT_TYPE_HEADER, JSON_CONTENT_TYPE};
use serde::ser::{Serialize, Serializer};
use std::collections::BTreeMap;
use std::time::Duration;

/// A value whose `Serialize` impl fails, as a hand-written one can.
struct Unserializable;

impl Serialize for Unserializable {
    fn serialize<S: Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("refuses to serialize"))
    }
}

fn rows(table: &str) -> i64 {
    pg().query_one(&format!("SELECT count(*) FROM \"{table}\""), &[])
        .expect("count")
        .get(0)
}

#[test]
fn a_value_that_does_not_serialize_is_a_typed_error_and_nothing_is_stored() {
    let table = unique("json_bad");
    let outbox = outbox(&table);
    let by_pair = BTreeMap::from([((1, 2), "a map with non-string keys")]);
    let sent = Message::json(&by_pair).and_then(|m| outbox.send(m));
    assert!(
        matches!(&sent, Err(Error::Serialize { reason }) if reason.contains("key")),
        "{sent:?}"
    );
    let sent = Message::json(&Unserializable).and_then(|m| outbox.send(m));
    assert!(
        matches!(&sent, Err(Error::Serialize { reason }) if reason.contains("refuses")),
        "{sent:?}"
    );
    assert!(sent.is_err_and(|e| e.is_permanent() && !e.is_transient()));

    // In the caller's transaction, `?` on the error rolls back the business row too.
    let side = format!("{table}_orders");
    pg().batch_execute(&format!("CREATE TABLE \"{side}\" (id BIGINT)"))
        .expect("create");
    let r = outbox.transaction(|tx| {
        tx.execute(&format!("INSERT INTO \"{side}\" VALUES (1)"), &[])
            .map_err(Error::from)?;
        tx.send(Message::json(&Unserializable)?)?;
        Ok::<_, Error>(())
    });
    assert!(matches!(r, Err(Error::Serialize { .. })), "{r:?}");
    assert_eq!((rows(&table), rows(&side)), (0, 0), "nothing stored");
    let s = outbox.stats().expect("stats");
    assert_eq!((s.pending, s.parked), (0, 0));

    // The same outbox stores a value that serializes, as JSON with its content type.
    outbox
        .send(Message::json(&BTreeMap::from([("order", 42)])).expect("serializes"))
        .expect("send");
    let row = pg()
        .query_one(
            &format!("SELECT payload, headers->>'{CONTENT_TYPE_HEADER}' FROM \"{table}\""),
            &[],
        )
        .expect("row");
    let (payload, ct): (Vec<u8>, Option<String>) = (row.get(0), row.get(1));
    assert_eq!(payload, br#"{"order":42}"#);
    assert_eq!(ct.as_deref(), Some(JSON_CONTENT_TYPE));
    drop_table(&side);
    drop_table(&table);
}

/// AMQP consumers look for the media type in the `content_type` property: the
/// stream sets it from the header, and `decode::amqp` reads it back either way.
#[test]
fn amqp_sends_the_content_type_as_the_property_too() {
    let table = unique("json_amqp");
    let ex = unique("ex");
    let sink = Sink::new(&ex, "#");
    let outbox = outbox(&table);
    let relay = outbox.start().expect("start");
    let id = outbox
        .send(
            Message::json(&[1, 2, 3])
                .expect("serializes")
                .route(amqp::topic(&ex, "k")),
        )
        .expect("send");
    let got = sink.collect(1, Duration::from_secs(20));
    relay.stop().expect("stop");
    assert_eq!(got.len(), 1);
    let props = &got[0].delivery.properties;
    assert_eq!(props.content_type().as_deref(), Some(JSON_CONTENT_TYPE));
    let mut without_header = props.clone();
    if let Some(h) = without_header.headers().clone() {
        let h = h
            .into_iter()
            .filter(|(k, _)| k != CONTENT_TYPE_HEADER)
            .collect();
        without_header = without_header.with_headers(h);
    }
    for p in [props, &without_header] {
        let incoming = outboxer::decode::amqp_parts(p, &got[0].body).expect("decodes");
        assert_eq!(incoming.message_id, id);
        assert_eq!(incoming.content_type(), Some(JSON_CONTENT_TYPE));
        assert_eq!(incoming.json::<Vec<u8>>().expect("typed").value, [1, 2, 3]);
    }
    drop_table(&table);
}
