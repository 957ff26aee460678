//! JSON cases (DESIGN §3): anything else gets `error bad_request`; the connection stays up.

use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

/// Sends `input` on a fresh connection: the answer is an `error` with `code`, and the
/// connection still answers `{"type":"ping"}`.
async fn expect_error(s: &TestServer, case: &str, input: Message, code: &str) {
    let (mut ws, _) = s.connect("json").await;
    ws.send(input).await.unwrap();
    let e = next_json(&mut ws).await;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("error"), Some(code)),
        "{case}: {e}"
    );
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{case}: {e}"
    );
    send_text(&mut ws, r#"{"type":"ping"}"#).await;
    assert_eq!(
        next_json(&mut ws).await,
        json!({"type": "pong"}),
        "{case}: still up"
    );
}

async fn bad_request(s: &TestServer, case: &str, text: String) {
    expect_error(s, case, Message::text(text), "bad_request").await;
}

async fn deep_nesting_is_bad_request(s: &TestServer) {
    bad_request(s, "10,000 [", "[".repeat(10_000)).await;
    bad_request(s, "10,000 [ ]", "[".repeat(10_000) + &"]".repeat(10_000)).await;
    let deep_ref = "[".repeat(10_000) + &"]".repeat(10_000);
    bad_request(
        s,
        "subscribe with a deep ref",
        format!(r#"{{"type":"subscribe","channel":"x","ref":{deep_ref}}}"#),
    )
    .await;
    let deep_obj = r#"{"a":"#.repeat(5_000) + "1" + &"}".repeat(5_000);
    bad_request(
        s,
        "publish with deep data",
        format!(r#"{{"type":"publish","channel":"chat:x","data":{deep_obj}}}"#),
    )
    .await;
}

async fn huge_numbers_are_bad_request(s: &TestServer) {
    for offset in ["1e400", "18446744073709551616", "-1", "1.5", "1e19"] {
        bad_request(
            s,
            &format!("since.offset {offset}"),
            format!(
                r#"{{"type":"subscribe","channel":"news","since":{{"offset":{offset},"epoch":"x"}}}}"#
            ),
        )
        .await;
    }
}

async fn unknown_types_are_bad_request(s: &TestServer) {
    for t in [
        r#"{"type":"launch"}"#,
        r#"{"type":""}"#,
        r#"{"type":null}"#,
        r#"{"type":"PING"}"#,
        r#"{"type":"subscribe\u0000"}"#,
        r#"{}"#,
        "",
        "null",
    ] {
        bad_request(s, &format!("type of {t:?}"), t.to_owned()).await;
    }
}

async fn wrong_field_types_are_bad_request(s: &TestServer) {
    for t in [
        r#"{"type":"subscribe","channel":5}"#,
        r#"{"type":"subscribe","channel":["news"]}"#,
        r#"{"type":"subscribe","channel":"news","since":"yesterday"}"#,
        r#"{"type":"subscribe","channel":"news","since":{"offset":"1","epoch":"x"}}"#,
        r#"{"type":"unsubscribe","channel":null}"#,
        r#"{"type":"publish","channel":"chat:x"}"#,
        r#"{"type":"refresh","token":1}"#,
        r#"{"type":"acknowledge_broadcast","broadcast_id":{}}"#,
    ] {
        bad_request(s, t, t.to_owned()).await;
    }
    let long = "x".repeat(60 * 1024);
    bad_request(
        s,
        "60 KiB channel name",
        format!(r#"{{"type":"subscribe","channel":"{long}"}}"#),
    )
    .await;
}

async fn binary_frame_is_bad_request(s: &TestServer) {
    let m = Message::binary(br#"{"type":"ping"}"#.to_vec());
    expect_error(s, "binary frame", m, "bad_request").await;
}

pub(super) async fn json_cases(s: &TestServer) {
    deep_nesting_is_bad_request(s).await;
    huge_numbers_are_bad_request(s).await;
    unknown_types_are_bad_request(s).await;
    wrong_field_types_are_bad_request(s).await;
    binary_frame_is_bad_request(s).await;
}
