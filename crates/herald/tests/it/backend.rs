//! The backend publisher over WebSocket (DESIGN §7): an API key on the upgrade makes a
//! `/ws` connection a publisher with every target of `POST /api/publish`, many
//! publications in flight, each acked with its `ref`, in order, without the clients'
//! inbound rate limit. An admin token may publish the same way; a client may not.

use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

/// Sends every frame in `frames` in one flush: all of them in flight at once.
async fn pipeline(ws: &mut Ws, frames: impl IntoIterator<Item = Value>) {
    for f in frames {
        ws.feed(Message::text(f.to_string())).await.unwrap();
    }
    ws.flush().await.unwrap();
}

#[tokio::test]
async fn a_backend_publishes_to_every_target_and_is_acked_in_order() {
    let s = TestServer::start_with(|c| c.ws.queue_messages = 1024).await;
    let mut backend = s.connect_backend().await;
    let (mut reader, _) = s
        .connect_token(&s.token_with("reader", |c| c.groups = vec!["staff".into()]))
        .await;
    let (mut other, hello) = s.connect("other").await;
    let other_conn = hello["conn_id"].as_str().unwrap().to_owned();
    subscribe_to(&mut reader, "news").await;
    let mut frames: Vec<Value> = (0..500)
        .map(|i| json!({"type": "publish", "channel": "news", "data": {"i": i}, "ref": i}))
        .collect();
    frames.push(json!({"type": "publish", "user": "reader", "data": "to the user", "ref": "u"}));
    frames.push(json!({"type": "publish", "group": "staff", "data": "to the group", "ref": "g"}));
    frames.push(json!({"type": "publish", "all": true, "data": "to all", "exclude_conn": other_conn, "ref": "a"}));
    frames.push(json!({"type": "publish", "all": true, "data": "to all but reader", "exclude_user": "reader", "ref": "b"}));
    pipeline(&mut backend, frames).await;
    for i in 0..500u64 {
        let ack = next_answer(&mut backend).await;
        assert_eq!(
            ack,
            json!({"type": "ack", "ref": i, "offset": i + 1}),
            "in order, one each"
        );
    }
    for r in ["u", "g", "a", "b"] {
        assert_eq!(
            next_answer(&mut backend).await,
            json!({"type": "ack", "ref": r})
        );
    }
    for i in 0..500u64 {
        let m = next_pub(&mut reader).await;
        assert_eq!(
            (m["offset"].as_u64(), m["data"]["i"].as_u64()),
            (Some(i + 1), Some(i))
        );
    }
    for data in ["to the user", "to the group", "to all"] {
        assert_eq!(next_pub(&mut reader).await["data"], data);
    }
    // `other` was excluded from "to all" by connection, `reader` from the last by user.
    assert_eq!(next_pub(&mut other).await["data"], "to all but reader");
    // A publication to everyone passes the backend itself by: its first frame after the
    // acks is the answer to the next request.
    send_text(&mut backend, r#"{"type":"ping"}"#).await;
    assert_eq!(next_json(&mut backend).await["type"], "pong");
    s.shutdown().await;
}

#[tokio::test]
async fn a_backend_is_not_rate_limited_and_its_publications_are_counted_as_backend() {
    let s = TestServer::start_with(|c| {
        c.ws.rate_per_s = 1;
        c.ws.rate_burst = 1;
    })
    .await;
    let mut backend = s.connect_backend().await;
    let (mut reader, _) = s.connect("reader").await;
    pipeline(
        &mut backend,
        (0..200).map(|i| json!({"type": "publish", "user": "reader", "data": i, "ref": i})),
    )
    .await;
    for i in 0..200 {
        assert_eq!(
            next_answer(&mut backend).await,
            json!({"type": "ack", "ref": i})
        );
        assert_eq!(next_pub(&mut reader).await["data"], i);
    }
    assert_publications_counted(&s, "backend", 200).await;
    assert_eq!(s.stats().await["refused"]["rate_limited"], 0);
    s.shutdown().await;
}

#[tokio::test]
async fn bad_publications_from_a_backend_are_answered_in_place() {
    let s = TestServer::start().await;
    let mut backend = s.connect_backend().await;
    pipeline(
        &mut backend,
        [
            json!({"type": "publish", "all": true, "data": 1, "ref": 1}),
            json!({"type": "publish", "channel": "news", "user": "x", "data": 1, "ref": 2}),
            json!({"type": "publish", "channel": "nowhere:x", "data": 1, "ref": 3}),
            json!({"type": "publish", "channel": "a b", "data": 1, "ref": 4}),
            json!({"type": "publish", "user": null, "data": 1, "ref": 5}),
            json!({"type": "publish", "all": true, "ref": 6}),
            json!({"type": "publish", "channel": "sync:42", "data": {"type": "bogus"}, "ref": 7}),
            json!({"type": "publish", "all": true, "data": 8, "ref": 8}),
        ],
    )
    .await;
    let deep = "[".repeat(200) + &"]".repeat(200);
    let frame = format!(r#"{{"type":"publish","all":true,"data":{deep},"ref":9}}"#);
    backend.send(Message::text(frame)).await.unwrap();
    let expected = [
        (1, None),
        (2, Some("bad_request")),
        (3, Some("not_found")),
        (4, Some("bad_request")),
        (5, Some("bad_request")),
        (6, Some("bad_request")),
        (7, Some("bad_request")),
        (8, None),
        (9, Some("bad_request")),
    ];
    for (r, code) in expected {
        let a = next_answer(&mut backend).await;
        assert_eq!(
            (a["ref"].as_i64(), a["code"].as_str()),
            (Some(r), code),
            "{a}"
        );
        if code.is_some() {
            assert!(!a["message"].as_str().unwrap().is_empty(), "{a}");
        }
    }
    s.shutdown().await;
}

#[tokio::test]
async fn only_a_backend_or_an_admin_may_publish_beyond_a_channel() {
    let s = TestServer::start().await;
    let (mut client, _) = s.connect("1").await;
    let (mut target, _) = s.connect("2").await;
    for (frame, code) in [
        (
            json!({"type": "publish", "user": "2", "data": 1, "ref": 1}),
            "forbidden",
        ),
        (
            json!({"type": "publish", "all": true, "data": 1, "ref": 2}),
            "forbidden",
        ),
        (
            json!({"type": "publish", "channel": "news", "exclude_user": "2", "data": 1, "ref": 3}),
            "forbidden",
        ),
        (
            json!({"type": "publish", "data": 1, "ref": 4}),
            "bad_request",
        ),
    ] {
        send_text(&mut client, &frame.to_string()).await;
        let e = next_answer(&mut client).await;
        assert_eq!(
            (e["code"].as_str(), &e["ref"]),
            (Some(code), &frame["ref"]),
            "{e}"
        );
    }
    // An admin token may, as on the HTTP API.
    let (mut admin, _) = s
        .connect_token(&s.token_with("ops", |c| c.admin = true))
        .await;
    send_text(
        &mut admin,
        &json!({"type": "publish", "user": "2", "data": "hi", "ref": 9}).to_string(),
    )
    .await;
    assert_eq!(
        next_answer(&mut admin).await,
        json!({"type": "ack", "ref": 9})
    );
    assert_eq!(next_pub(&mut target).await["data"], "hi");
    s.shutdown().await;
}

#[tokio::test]
async fn the_api_key_decides_the_upgrade_whatever_the_auth_mode() {
    // With tokens required, a wrong X-API-Key is refused (and not tried as a token).
    let s = TestServer::start().await;
    let url = format!("ws://{}/ws", s.addr);
    let refused = s.try_upgrade(&url, &[("x-api-key", "not-the-key")]).await;
    let (status, body) = refused.err().unwrap();
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("unauthorized")),
        "{body}"
    );
    assert_eq!(s.stats().await["refused"]["bad_api_key"], 1);
    // The key as a bearer works too; the connection goes by the user id `api`.
    let bearer = format!("Bearer {}", s.api_key);
    let mut ws = s
        .try_upgrade(&url, &[("authorization", &bearer)])
        .await
        .ok()
        .unwrap();
    let hello = next_json(&mut ws).await;
    assert_eq!(hello["user_id"], "api", "{hello}");
    // A key is never taken from the query string.
    let query = format!("ws://{}/ws?token={}", s.addr, s.api_key);
    assert_eq!(s.try_upgrade(&query, &[]).await.err().unwrap().0, 401);
    s.shutdown().await;

    // Without authentication a key still makes a backend, and a client still may not.
    let s = TestServer::start_with(|c| c.auth.mode = herald::config::AuthMode::None).await;
    let mut backend = s.connect_backend().await;
    let mut anon = s.try_upgrade(&url_of(&s), &[]).await.ok().unwrap();
    assert_eq!(next_json(&mut anon).await["type"], "connected");
    send_text(
        &mut backend,
        &json!({"type": "publish", "all": true, "data": "x", "ref": 1}).to_string(),
    )
    .await;
    assert_eq!(
        next_answer(&mut backend).await,
        json!({"type": "ack", "ref": 1})
    );
    assert_eq!(next_pub(&mut anon).await["data"], "x");
    send_text(
        &mut anon,
        &json!({"type": "publish", "all": true, "data": "x", "ref": 1}).to_string(),
    )
    .await;
    assert_eq!(next_answer(&mut anon).await["code"], "forbidden");
    s.shutdown().await;
}

fn url_of(s: &TestServer) -> String {
    format!("ws://{}/ws", s.addr)
}

#[tokio::test]
async fn a_backend_s_window_of_acks_does_not_overflow_its_queue() {
    // The acks of a window larger than `ws.queue_messages` are all queued at once.
    let s = TestServer::start_with(|c| {
        c.ws.queue_messages = 8;
        c.ws.max_in_flight = 200;
    })
    .await;
    let mut backend = s.connect_backend().await;
    pipeline(
        &mut backend,
        (0..200).map(|i| json!({"type": "publish", "user": "nobody", "data": i, "ref": i})),
    )
    .await;
    for i in 0..200 {
        assert_eq!(
            next_answer(&mut backend).await,
            json!({"type": "ack", "ref": i})
        );
    }
    assert_eq!(s.stats().await["refused"]["slow_consumer"], 0);
    s.shutdown().await;
}
