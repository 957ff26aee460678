//! Bad input gets the documented answer; the connection (and everyone else) goes on.

use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

async fn expect_error(ws: &mut Ws, input: &str, code: &str) -> serde_json::Value {
    send_text(ws, input).await;
    let e = next_json(ws).await;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("error"), Some(code)),
        "{input} → {e}"
    );
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()));
    e
}

#[tokio::test]
async fn malformed_messages_get_bad_request_and_the_connection_goes_on() {
    let s = TestServer::start().await;
    let (mut ws, _) = s.connect("1").await;
    expect_error(&mut ws, "{not json", "bad_request").await;
    expect_error(&mut ws, r#"{"type":"launch"}"#, "bad_request").await;
    let e = expect_error(
        &mut ws,
        r#"{"type":"subscribe","channel":7,"ref":"r9"}"#,
        "bad_request",
    )
    .await;
    assert_eq!(
        e["ref"], "r9",
        "the ref is echoed even when the message is invalid"
    );
    expect_error(&mut ws, r#"{"no_type":1}"#, "bad_request").await;
    expect_error(&mut ws, "[1,2,3]", "bad_request").await;
    expect_error(
        &mut ws,
        r#"{"type":"subscribe","channel":"has space"}"#,
        "bad_request",
    )
    .await;
    expect_error(
        &mut ws,
        r#"{"type":"publish","channel":"news","data":1}"#,
        "forbidden",
    )
    .await;
    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    assert_eq!(next_json(&mut ws).await["code"], "bad_request");
    // Still alive: both ping forms answered.
    send_text(&mut ws, "ping").await;
    assert_eq!(
        next_json(&mut ws).await,
        serde_json::Value::String("pong".into())
    );
    send_text(&mut ws, r#"{"type":"ping"}"#).await;
    assert_eq!(next_json(&mut ws).await["type"], "pong");
    s.shutdown().await;
}

#[tokio::test]
async fn protocol_violations_get_their_close_codes_and_others_are_unaffected() {
    let s = TestServer::start_with(|c| {
        c.auth.mode = herald::config::AuthMode::None;
        c.ws.max_message_bytes = 1024;
    })
    .await;
    let (mut bystander, _) = s.connect_token("unused").await;

    let mut raw = Raw::upgrade(s.addr, "/ws").await;
    raw.send(&masked(true, 0x1, &[0x68, 0xff, 0x69])).await;
    assert_eq!(raw.close_code().await, Some(1007), "invalid UTF-8");

    let mut raw = Raw::upgrade(s.addr, "/ws").await;
    raw.send(&masked(true, 0x1, &vec![b'a'; 2000])).await;
    assert_eq!(raw.close_code().await, Some(1009), "too big");

    let mut raw = Raw::upgrade(s.addr, "/ws").await;
    raw.send(&[0x81, 0x02, b'h', b'i']).await; // unmasked
    assert_eq!(raw.close_code().await, Some(1002), "unmasked client frame");

    let mut raw = Raw::upgrade(s.addr, "/ws").await;
    raw.send(&masked(true, 0x3, b"")).await; // reserved opcode
    assert_eq!(raw.close_code().await, Some(1002));

    let mut raw = Raw::upgrade(s.addr, "/ws").await;
    raw.send(&masked(false, 0x9, b"")).await; // fragmented ping
    assert_eq!(raw.close_code().await, Some(1002));

    send_text(&mut bystander, r#"{"type":"ping"}"#).await;
    assert_eq!(next_json(&mut bystander).await["type"], "pong");
    let stats = s.stats().await;
    // One count per violation: 1007 and the three 1002s; 1009 is `too_large`.
    assert_eq!(stats["refused"]["protocol_error"], 4, "{stats}");
    assert_eq!(stats["refused"]["too_large"], 1, "{stats}");
    s.shutdown().await;
}

#[tokio::test]
async fn client_close_is_echoed() {
    let s = TestServer::start().await;
    let (mut ws, _) = s.connect("1").await;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    }))
    .await
    .unwrap();
    assert_eq!(close_code(&mut ws).await, Some(1000));
    eventually("unregistered", || async {
        s.node().app.hub.registry.connections() == 0
    })
    .await;
    s.shutdown().await;
}

#[tokio::test]
async fn subscriptions_per_connection_are_capped() {
    let s = TestServer::start_with(|c| c.ws.max_subscriptions = 2).await;
    let (mut ws, _) = s.connect("1").await;
    for ch in ["a", "b"] {
        send_text(
            &mut ws,
            &format!(r#"{{"type":"subscribe","channel":"{ch}"}}"#),
        )
        .await;
        assert_eq!(next_json(&mut ws).await["type"], "subscribed");
    }
    expect_error(
        &mut ws,
        r#"{"type":"subscribe","channel":"c","ref":3}"#,
        "rate_limited",
    )
    .await;
    // Unsubscribing frees a slot.
    send_text(&mut ws, r#"{"type":"unsubscribe","channel":"a"}"#).await;
    assert_eq!(next_json(&mut ws).await["type"], "unsubscribed");
    send_text(&mut ws, r#"{"type":"subscribe","channel":"c"}"#).await;
    assert_eq!(next_json(&mut ws).await["type"], "subscribed");
    expect_error(
        &mut ws,
        &format!(r#"{{"type":"subscribe","channel":"{}"}}"#, "x".repeat(257)),
        "bad_request",
    )
    .await;
    expect_error(
        &mut ws,
        r#"{"type":"subscribe","channel":"nope:1"}"#,
        "not_found",
    )
    .await;
    s.shutdown().await;
}
