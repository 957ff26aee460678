//! Floods (DESIGN §12): `error rate_limited`, then close 1008 if it persists. Inbound
//! control frames (Ping, Pong, empty continuations) count as messages.

use herald::ws::frame::{OP_CONTINUATION, OP_PING, OP_PONG, OP_TEXT};
use serde_json::json;

use super::wire::{flood, raw, Ended};
use super::MAX_SUBSCRIPTIONS;
use crate::support::*;

pub(super) async fn subscribe_flood_is_rate_limited(s: &TestServer) {
    let (mut ws, _) = s.connect("subscriber").await;
    for i in 0..MAX_SUBSCRIPTIONS {
        send_text(
            &mut ws,
            &json!({"type": "subscribe", "channel": format!("flood.{i}")}).to_string(),
        )
        .await;
        let m = next_json(&mut ws).await;
        assert_eq!(m["type"], "subscribed", "subscription {i}: {m}");
    }
    send_text(
        &mut ws,
        r#"{"type":"subscribe","channel":"flood.over","ref":"over"}"#,
    )
    .await;
    let e = next_json(&mut ws).await;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str(), e["ref"].as_str()),
        (Some("error"), Some("rate_limited"), Some("over")),
        "one subscription over ws.max_subscriptions: {e}"
    );
    send_text(&mut ws, r#"{"type":"ping"}"#).await;
    assert_eq!(
        next_json(&mut ws).await,
        json!({"type": "pong"}),
        "still up"
    );
}

pub(super) async fn publish_flood_is_rate_limited_then_1008(s: &TestServer) {
    let f = masked(
        true,
        OP_TEXT,
        br#"{"type":"publish","channel":"chat:flood","data":{"n":1}}"#,
    );
    let got = flood(raw(s, "publisher").await, vec![], f).await;
    assert_eq!(got, (true, Ended::Close(Some(1008))), "publish flood");
}

pub(super) async fn ping_flood_is_rate_limited_then_1008(s: &TestServer) {
    let f = masked(true, OP_PING, b"are you there");
    let got = flood(raw(s, "pinger").await, vec![], f).await;
    assert_eq!(
        got,
        (true, Ended::Close(Some(1008))),
        "WebSocket Ping flood"
    );
}

pub(super) async fn pong_flood_is_rate_limited_then_1008(s: &TestServer) {
    let f = masked(true, OP_PONG, b"");
    let got = flood(raw(s, "ponger").await, vec![], f).await;
    assert_eq!(
        got,
        (true, Ended::Close(Some(1008))),
        "WebSocket Pong flood"
    );
}

pub(super) async fn empty_continuation_flood_is_rate_limited_then_1008(s: &TestServer) {
    let start = masked(false, OP_TEXT, b"{");
    let f = masked(false, OP_CONTINUATION, b"");
    let got = flood(raw(s, "continuer").await, start, f).await;
    assert_eq!(
        got,
        (true, Ended::Close(Some(1008))),
        "empty continuation flood"
    );
}

pub(super) async fn message_floods(s: &TestServer) {
    subscribe_flood_is_rate_limited(s).await;
    publish_flood_is_rate_limited_then_1008(s).await;
}

pub(super) async fn control_frame_floods(s: &TestServer) {
    ping_flood_is_rate_limited_then_1008(s).await;
    pong_flood_is_rate_limited_then_1008(s).await;
    empty_continuation_flood_is_rate_limited_then_1008(s).await;
}
