//! Presence (seed 004): online with a grace period; channel join/leave.

use std::time::Duration;

use herald::config::NamespaceConfig;
use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn a_user_goes_offline_only_after_the_grace_period() {
    let s = TestServer::start_with(|c| c.presence.grace_ms = 1500).await;
    let (_, body) = s.get_json("/api/presence/users/5").await;
    assert_eq!(
        body,
        json!({"user_id": "5", "online": false, "connections": 0})
    );
    let (ws, _) = s.connect("5").await;
    let (_, body) = s.get_json("/api/presence/users/5").await;
    assert_eq!(
        (body["online"].as_bool(), body["connections"].as_u64()),
        (Some(true), Some(1))
    );
    drop(ws);
    eventually("the connection is gone", || async {
        s.get_json("/api/presence/users/5").await.1["connections"] == 0
    })
    .await;
    assert_eq!(
        s.get_json("/api/presence/users/5").await.1["online"],
        true,
        "still online during the grace"
    );
    // A reload within the grace: online throughout.
    let (ws, _) = s.connect("5").await;
    drop(ws);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(s.get_json("/api/presence/users/5").await.1["online"], true);
    eventually("offline after the grace", || async {
        s.get_json("/api/presence/users/5").await.1["online"] == false
    })
    .await;
    s.shutdown().await;
}

#[tokio::test]
async fn channel_presence_lists_members_and_announces_join_and_leave() {
    let s = TestServer::start_with(|c| {
        c.presence.grace_ms = 500;
        c.namespaces.insert(
            "room".into(),
            NamespaceConfig {
                presence: true,
                ..NamespaceConfig::default()
            },
        );
    })
    .await;
    let sub = r#"{"type":"subscribe","channel":"room:lobby"}"#;
    let (mut alice, _) = s.connect("alice").await;
    send_text(&mut alice, sub).await;
    assert_eq!(next_json(&mut alice).await["type"], "subscribed");
    let (mut bob, _) = s.connect("bob").await;
    send_text(&mut bob, sub).await;
    assert_eq!(next_json(&mut bob).await["type"], "subscribed");
    let join = next_json(&mut alice).await;
    assert_eq!(
        join,
        json!({"type": "presence", "channel": "room:lobby", "event": "join", "user_id": "bob"})
    );
    let (status, body) = s.get_json("/api/channels/room:lobby/presence").await;
    assert_eq!(status, 200);
    assert_eq!(body["users"], json!(["alice", "bob"]));

    // Bob reloads within the grace: no leave, no join.
    drop(bob);
    let (mut bob, _) = s.connect("bob").await;
    send_text(&mut bob, sub).await;
    assert_eq!(next_json(&mut bob).await["type"], "subscribed");
    // Bob leaves for good: after the grace, alice hears it.
    drop(bob);
    let leave = next_json(&mut alice).await;
    assert_eq!(
        leave,
        json!({"type": "presence", "channel": "room:lobby", "event": "leave", "user_id": "bob"}),
        "no join/leave for the reload came first"
    );
    eventually("bob is gone from the list", || async {
        s.get_json("/api/channels/room:lobby/presence").await.1["users"] == json!(["alice"])
    })
    .await;
    // Presence is off in the default namespace.
    assert_eq!(s.get_json("/api/channels/news/presence").await.0, 404);
    s.shutdown().await;
}
