//! Idempotent publish (DESIGN §13): a publication that repeats an `idempotency_key`
//! within the window is answered as the first was and delivers nothing — over
//! `/api/publish`, its batches, the backend publisher and a client's `publish` frame.
//! Across nodes in `scale_out.rs`.

use futures_util::SinkExt;
use herald::config::{NamespaceConfig, PublishRule};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

#[tokio::test]
async fn a_repeated_key_is_answered_as_the_first_and_delivered_once() {
    let s = TestServer::start().await;
    let (mut ws, _) = s.connect("reader").await;
    subscribe_to(&mut ws, "news").await;
    let first = s
        .publish(json!({"channel": "news", "data": 1, "idempotency_key": "order-7"}))
        .await;
    assert_eq!(first.0, 200, "{}", first.1);
    assert_eq!(first.1["offset"], 1);
    // The retry carries other data on purpose: it is the key that makes it a repeat.
    let again = s
        .publish(json!({"channel": "news", "data": 2, "idempotency_key": "order-7"}))
        .await;
    assert_eq!(again, first, "the first answer, given again");
    // The same key on another target, or by another publisher, is another publication.
    let other = s
        .publish(json!({"channel": "sport", "data": 3, "idempotency_key": "order-7"}))
        .await;
    assert_eq!(other.0, 200);
    let plain = s.publish(json!({"channel": "news", "data": 4})).await;
    assert_eq!(plain.1["offset"], 2, "the repeat took no offset");
    assert_eq!(next_pub(&mut ws).await["data"], 1);
    assert_eq!(
        next_pub(&mut ws).await["data"],
        4,
        "the repeat was not delivered"
    );
    assert!(maybe_pub(&mut ws).await.is_none());
    let stats = s.stats().await;
    assert_eq!(stats["publications_repeated"], 1, "{stats}");
    assert_publications_counted(&s, "api", 3).await;
    // To a user: the first answer is its count of queued frames.
    let to_user = json!({"user": "reader", "data": "hi", "idempotency_key": "u-1"});
    let first = s.publish(to_user.clone()).await;
    assert_eq!(first.1, json!({"queued": 1}));
    assert_eq!(s.publish(to_user).await, first);
    assert_eq!(next_pub(&mut ws).await["data"], "hi");
    assert!(maybe_pub(&mut ws).await.is_none(), "once");
    s.shutdown().await;
}

#[tokio::test]
async fn a_bad_idempotency_key_is_a_bad_request() {
    let s = TestServer::start().await;
    for key in [json!(""), json!("k".repeat(65)), json!(7), json!(null)] {
        let (status, body) = s
            .publish(json!({"channel": "news", "data": 1, "idempotency_key": key}))
            .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("bad_request")),
            "{key}: {body}"
        );
    }
    let (status, body) = s
        .publish(json!({"channel": "news", "data": 1, "idempotency_key": "é".repeat(64)}))
        .await;
    assert_eq!(
        status, 200,
        "64 characters are fine, whatever their bytes: {body}"
    );
    let mut backend = s.connect_backend().await;
    let long = "k".repeat(65);
    send_text(
        &mut backend,
        &json!({"type": "publish", "channel": "news", "data": 1, "idempotency_key": long, "ref": 1})
            .to_string(),
    )
    .await;
    let answer = next_answer(&mut backend).await;
    assert_eq!(
        (answer["code"].as_str(), &answer["ref"]),
        (Some("bad_request"), &json!(1)),
        "{answer}"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn a_batch_and_the_backend_publisher_repeat_first_answers() {
    let s = TestServer::start().await;
    let (mut ws, _) = s.connect("reader").await;
    subscribe_to(&mut ws, "news").await;
    let (status, body) = s
        .post_json(
            "/api/publish/batch",
            &s.api_key.clone(),
            json!({"publications": [
                {"channel": "news", "data": "a", "idempotency_key": "k1"},
                {"channel": "news", "data": "a again", "idempotency_key": "k1"},
                {"channel": "news", "data": "b", "idempotency_key": "k2"},
            ]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let results = &body["results"];
    assert_eq!(results[0]["offset"], 1);
    assert_eq!(results[1], results[0], "a repeat inside the batch");
    assert_eq!(results[2]["offset"], 2);
    // The backend publisher over /ws shares the keys of the HTTP API (both are backends).
    let mut backend = s.connect_backend().await;
    for f in [
        json!({"type": "publish", "channel": "news", "data": "b again", "idempotency_key": "k2", "ref": "r1"}),
        json!({"type": "publish", "channel": "news", "data": "c", "idempotency_key": "k3", "ref": "r2"}),
        json!({"type": "publish", "channel": "news", "data": "c again", "idempotency_key": "k3", "ref": "r3"}),
    ] {
        backend.feed(Message::text(f.to_string())).await.unwrap();
    }
    backend.flush().await.unwrap();
    assert_eq!(
        next_answer(&mut backend).await,
        json!({"type": "ack", "ref": "r1", "offset": 2})
    );
    assert_eq!(
        next_answer(&mut backend).await,
        json!({"type": "ack", "ref": "r2", "offset": 3})
    );
    assert_eq!(
        next_answer(&mut backend).await,
        json!({"type": "ack", "ref": "r3", "offset": 3})
    );
    for want in ["a", "b", "c"] {
        assert_eq!(next_pub(&mut ws).await["data"], want);
    }
    assert!(maybe_pub(&mut ws).await.is_none(), "each delivered once");
    s.shutdown().await;
}

#[tokio::test]
async fn a_client_s_keys_are_its_own() {
    let s = TestServer::start_with(|c| {
        c.namespaces.insert(
            "room".into(),
            NamespaceConfig {
                publish: PublishRule::Any,
                ..NamespaceConfig::default()
            },
        );
    })
    .await;
    let (mut reader, _) = s.connect("reader").await;
    subscribe_to(&mut reader, "room:1").await;
    let (mut alice, _) = s.connect("alice").await;
    let (mut bob, _) = s.connect("bob").await;
    let publish = |data: &str, r: u64| {
        json!({"type": "publish", "channel": "room:1", "data": data, "idempotency_key": "m-1", "ref": r})
            .to_string()
    };
    send_text(&mut alice, &publish("from alice", 1)).await;
    let first = next_answer(&mut alice).await;
    assert_eq!(first["type"], "ack", "{first}");
    send_text(&mut alice, &publish("alice retries", 2)).await;
    let again = next_answer(&mut alice).await;
    assert_eq!(
        (&again["type"], &again["offset"]),
        (&first["type"], &first["offset"])
    );
    // Another user's key of the same name is another publication, and so is a backend's.
    send_text(&mut bob, &publish("from bob", 3)).await;
    assert_eq!(next_answer(&mut bob).await["offset"], 2);
    let backend = s
        .publish(json!({"channel": "room:1", "data": "backend", "idempotency_key": "m-1"}))
        .await;
    assert_eq!(backend.1["offset"], 3);
    for want in ["from alice", "from bob", "backend"] {
        assert_eq!(next_pub(&mut reader).await["data"], want);
    }
    assert!(maybe_pub(&mut reader).await.is_none());
    s.shutdown().await;
}
