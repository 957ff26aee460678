//! Presence (seed 004): online with a grace period; channel join/leave.
//!
//! "No flap on reload" is a claim about an absence, so these tests watch the whole grace
//! window: every presence poll answered inside it must say online, and a channel member
//! must see no presence frame at all between a reload and a marker sent after the grace
//! has run out.

use std::time::Duration;

use herald::config::NamespaceConfig;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::support::*;

/// Polls `/api/presence/users/{user}` until `until`. Every answer received before `until`
/// must say online: the server's grace starts when it sees the close, which is after the
/// caller dropped the socket, so an answer that arrives before `dropped + grace` was
/// computed inside the grace. Returns how many polls were checked.
async fn online_throughout(s: &TestServer, user: &str, until: Instant) -> usize {
    let mut polls = 0;
    loop {
        let body = s.get_json(&format!("/api/presence/users/{user}")).await.1;
        let now = Instant::now();
        if now >= until {
            return polls;
        }
        assert_eq!(
            body["online"],
            true,
            "offline {:?} before the grace ran out: {body}",
            until - now
        );
        polls += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_user_goes_offline_only_after_the_grace_period() {
    let grace = Duration::from_millis(1500);
    let s = TestServer::start_with(|c| c.presence.grace_ms = 1500).await;
    let (_, body) = s.get_json("/api/presence/users/5").await;
    assert_eq!(
        body,
        json!({"user_id": "5", "online": false, "connections": 0})
    );
    let (ws, _) = s.connect("5").await;
    let (_, body) = s.get_json("/api/presence/users/5").await;
    assert_eq!(
        body,
        json!({"user_id": "5", "online": true, "connections": 1})
    );
    let dropped = Instant::now();
    drop(ws);
    eventually("the connection is gone", || async {
        s.get_json("/api/presence/users/5").await.1["connections"] == 0
    })
    .await;
    // Online for the first half of the grace; then a reload.
    let polls = online_throughout(&s, "5", dropped + grace / 2).await;
    assert!(polls > 0, "the grace was observed");
    let (ws, _) = s.connect("5").await;
    let reloaded = Instant::now();
    drop(ws);
    eventually("the reloaded connection is gone", || async {
        s.get_json("/api/presence/users/5").await.1["connections"] == 0
    })
    .await;
    // The grace restarts from the reload's close: online past the first close's grace,
    // at every poll, until the second one's runs out.
    let polls = online_throughout(&s, "5", reloaded + grace).await;
    assert!(polls > 0, "the grace after the reload was observed");
    eventually("offline after the grace", || async {
        s.get_json("/api/presence/users/5").await.1
            == json!({"user_id": "5", "online": false, "connections": 0})
    })
    .await;
    s.shutdown().await;
}

fn presence(event: &str, user: &str) -> Value {
    json!({"type": "presence", "channel": "room:lobby", "event": event, "user_id": user})
}

async fn members(s: &TestServer) -> (Value, Value) {
    let (status, body) = s.get_json("/api/channels/room:lobby/presence").await;
    assert_eq!(status, 200, "{body}");
    (body["users"].clone(), body["connections"].clone())
}

#[tokio::test]
async fn channel_presence_lists_members_and_announces_join_and_leave() {
    let grace = Duration::from_millis(1500);
    let s = TestServer::start_with(|c| {
        c.presence.grace_ms = 1500;
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
    // Alice watches; Bob will reload; Carol leaves for good while Bob reloads, so her
    // leave tells us when the sweeper has gone past the grace of Bob's first close.
    let (mut alice, _) = s.connect("alice").await;
    send_text(&mut alice, sub).await;
    assert_eq!(next_json(&mut alice).await["type"], "subscribed");
    let (mut bob, _) = s.connect("bob").await;
    send_text(&mut bob, sub).await;
    assert_eq!(next_json(&mut bob).await["type"], "subscribed");
    assert_eq!(next_json(&mut alice).await, presence("join", "bob"));
    let (mut carol, _) = s.connect("carol").await;
    send_text(&mut carol, sub).await;
    assert_eq!(next_json(&mut carol).await["type"], "subscribed");
    assert_eq!(next_json(&mut alice).await, presence("join", "carol"));
    assert_eq!(
        members(&s).await,
        (json!(["alice", "bob", "carol"]), json!(3))
    );

    // Bob reloads: his old connection is gone before the new one subscribes.
    let bob_dropped = Instant::now();
    drop(bob);
    eventually("bob's old connection is gone", || async {
        members(&s).await.1 == 2
    })
    .await;
    assert_eq!(
        members(&s).await.0,
        json!(["alice", "bob", "carol"]),
        "bob is still listed during the grace"
    );
    let carol_dropped = Instant::now();
    drop(carol);
    eventually("carol's connection is gone", || async {
        members(&s).await.1 == 1
    })
    .await;
    let (mut bob, _) = s.connect("bob").await;
    send_text(&mut bob, sub).await;
    assert_eq!(next_json(&mut bob).await["type"], "subscribed");
    assert!(
        bob_dropped.elapsed() < grace,
        "the reload took {:?}, longer than the grace: this machine is too slow for the test",
        bob_dropped.elapsed()
    );

    // Alice's next frame is Carol's leave, after the grace: no leave or join for Bob's
    // reload came first. Carol's grace started after Bob's, so by the time the sweeper
    // announces her, any leave still pending for Bob's first close has been sent too;
    // a marker published now must be the very next thing Alice gets.
    assert_eq!(next_json(&mut alice).await, presence("leave", "carol"));
    assert!(
        carol_dropped.elapsed() >= grace,
        "carol's leave came {:?} after she left, before the grace",
        carol_dropped.elapsed()
    );
    let (status, _) = s
        .publish(json!({"channel": "room:lobby", "data": "marker"}))
        .await;
    assert_eq!(status, 200);
    let next = next_json(&mut alice).await;
    assert_eq!(
        (next["type"].as_str(), next["data"].as_str()),
        (Some("pub"), Some("marker")),
        "no presence frame for bob's reload: {next}"
    );
    assert_eq!(members(&s).await, (json!(["alice", "bob"]), json!(2)));

    // Bob leaves for good: Alice hears it once the grace is over, and the list agrees.
    let bob_left = Instant::now();
    drop(bob);
    assert_eq!(next_json(&mut alice).await, presence("leave", "bob"));
    assert!(
        bob_left.elapsed() >= grace,
        "bob's leave came {:?} after he left, before the grace",
        bob_left.elapsed()
    );
    assert_eq!(members(&s).await, (json!(["alice"]), json!(1)));
    // Presence is off in the default namespace.
    let (status, body) = s.get_json("/api/channels/news/presence").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("not_found")),
        "{body}"
    );
    s.shutdown().await;
}
