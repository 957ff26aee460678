//! The `sync` namespace (seed 002): validated device events relayed to the user's other
//! devices; `device_command` with `target_device` reaches that device only.

use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn events_are_validated_and_relayed_to_the_other_devices_only() {
    let s = TestServer::start().await;
    let mut phone = sync_device(&s, "42", "phone").await;
    let mut tv = sync_device(&s, "42", "tv").await;
    let mut laptop = sync_device(&s, "42", "laptop").await;
    let event = json!({"type": "progress_update", "content_id": "c-123", "position": 1234, "duration": 7200});
    send_text(
        &mut phone,
        &json!({"type": "publish", "channel": "sync:42", "data": event, "ref": "p1"}).to_string(),
    )
    .await;
    let ack = next_json(&mut phone).await;
    assert_eq!(
        (
            ack["type"].as_str(),
            ack["ref"].as_str(),
            ack["offset"].as_u64()
        ),
        (Some("ack"), Some("p1"), Some(1))
    );
    for ws in [&mut tv, &mut laptop] {
        let m = next_json(ws).await;
        assert_eq!(
            (m["type"].as_str(), m["channel"].as_str()),
            (Some("pub"), Some("sync:42"))
        );
        assert_eq!(m["data"], event);
    }
    // Not echoed to the phone: its next frame is the reply to its next request.
    send_text(&mut phone, r#"{"type":"ping"}"#).await;
    assert_eq!(next_json(&mut phone).await["type"], "pong");

    for bad in [
        json!({"type": "progress_update", "content_id": "c", "position": 1}),
        json!({"type": "progress_update", "content_id": "c", "position": "1", "duration": 2}),
        json!({"type": "watchlist_update", "content_id": 5, "action": "add"}),
        json!({"type": "rewind_time"}),
        json!("not an object"),
    ] {
        send_text(
            &mut phone,
            &json!({"type": "publish", "channel": "sync:42", "data": bad, "ref": 9}).to_string(),
        )
        .await;
        let e = next_json(&mut phone).await;
        assert_eq!(
            (e["code"].as_str(), e["ref"].as_u64()),
            (Some("bad_request"), Some(9)),
            "{bad} → {e}"
        );
    }
    s.shutdown().await;
}

#[tokio::test]
async fn device_command_with_target_reaches_that_device_only() {
    let s = TestServer::start().await;
    let mut phone = sync_device(&s, "7", "phone").await;
    let mut tv = sync_device(&s, "7", "tv").await;
    let mut laptop = sync_device(&s, "7", "laptop").await;
    let cmd = json!({"type": "device_command", "command": "play", "target_device": "tv"});
    send_text(
        &mut phone,
        &json!({"type": "publish", "channel": "sync:7", "data": cmd, "ref": 1}).to_string(),
    )
    .await;
    let ack = next_json(&mut phone).await;
    assert_eq!(ack["type"], "ack");
    assert!(
        ack.get("offset").is_none(),
        "a targeted command is not kept in history"
    );
    let m = next_json(&mut tv).await;
    assert_eq!(m["data"]["command"], "play");
    // The laptop saw nothing: the next thing it gets is a later broadcast.
    let wl = json!({"type": "watchlist_update", "content_id": "c", "action": "add"});
    send_text(
        &mut phone,
        &json!({"type": "publish", "channel": "sync:7", "data": wl}).to_string(),
    )
    .await;
    assert_eq!(
        next_json(&mut laptop).await["data"]["type"],
        "watchlist_update"
    );
    assert_eq!(next_json(&mut tv).await["data"]["type"], "watchlist_update");
    // Someone else may not publish into user 7's sync channel.
    let (mut other, _) = s.connect("70").await;
    send_text(
        &mut other,
        &json!({"type": "publish", "channel": "sync:7", "data": wl}).to_string(),
    )
    .await;
    assert_eq!(next_json(&mut other).await["code"], "forbidden");
    s.shutdown().await;
}
