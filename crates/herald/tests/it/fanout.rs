//! Fan-out targets: all, user (every device), group, channel; exclusions.

use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn seed000_every_client_gets_every_message_in_order() {
    // Seed 000 handed each update to ONE client, round-robin. Every client must get all.
    let s = TestServer::start().await;
    let mut clients = Vec::new();
    for i in 0..4 {
        clients.push(s.connect(&format!("u{i}")).await.0);
    }
    for n in 0..100 {
        let (status, body) = s.publish(json!({"all": true, "data": {"n": n}})).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["queued"], 4);
    }
    for ws in &mut clients {
        let mut got = Vec::new();
        for _ in 0..100 {
            let m = next_json(ws).await;
            assert_eq!(m["type"], "pub");
            got.push(m["data"]["n"].as_i64().unwrap());
        }
        assert_eq!(got, (0..100).collect::<Vec<_>>());
    }
    s.shutdown().await;
}

#[tokio::test]
async fn user_target_reaches_every_device_of_that_user_only() {
    let s = TestServer::start().await;
    let (mut phone, _) = s
        .connect_token(&s.token_with("42", |c| c.device = Some("phone".into())))
        .await;
    let (mut tv, _) = s
        .connect_token(&s.token_with("42", |c| c.device = Some("tv".into())))
        .await;
    let (mut other, _) = s.connect("420").await;
    let (_, body) = s.publish(json!({"user": "42", "data": "for 42"})).await;
    assert_eq!(body["queued"], 2);
    assert_eq!(next_json(&mut phone).await["data"], "for 42");
    assert_eq!(next_json(&mut tv).await["data"], "for 42");
    // The other user gets the next broadcast first: nothing addressed to 42 leaked.
    s.publish(json!({"all": true, "data": "everyone"})).await;
    assert_eq!(next_json(&mut other).await["data"], "everyone");
    s.shutdown().await;
}

#[tokio::test]
async fn group_target_reaches_members_only() {
    let s = TestServer::start().await;
    let (mut admin, _) = s
        .connect_token(&s.token_with("a", |c| c.groups = vec!["admins:7".into()]))
        .await;
    let (mut user, _) = s.connect("b").await;
    let (_, body) = s
        .publish(json!({"group": "admins:7", "data": {"alert": 1}}))
        .await;
    assert_eq!(body["queued"], 1);
    assert_eq!(next_json(&mut admin).await["data"]["alert"], 1);
    s.publish(json!({"all": true, "data": "all"})).await;
    assert_eq!(next_json(&mut user).await["data"], "all");
    s.shutdown().await;
}

#[tokio::test]
async fn exclude_conn_and_exclude_user() {
    let s = TestServer::start().await;
    let (mut a, hello_a) = s
        .connect_token(&s.token_with("7", |c| c.device = Some("a".into())))
        .await;
    let (mut b, _) = s
        .connect_token(&s.token_with("7", |c| c.device = Some("b".into())))
        .await;
    let (mut c, _) = s.connect("8").await;
    let conn_a = hello_a["conn_id"].as_str().unwrap().to_owned();

    // Device A's update reaches B (and everyone else), not A.
    let (_, body) = s
        .publish(json!({"user": "7", "data": "sync", "exclude_conn": conn_a}))
        .await;
    assert_eq!(body["queued"], 1);
    assert_eq!(next_json(&mut b).await["data"], "sync");

    let (_, body) = s
        .publish(json!({"all": true, "data": "not 7", "exclude_user": "7"}))
        .await;
    assert_eq!(body["queued"], 1);
    assert_eq!(next_json(&mut c).await["data"], "not 7");

    s.publish(json!({"all": true, "data": "marker"})).await;
    assert_eq!(
        next_json(&mut a).await["data"],
        "marker",
        "A saw nothing before the marker"
    );
    assert_eq!(next_json(&mut b).await["data"], "marker");
    s.shutdown().await;
}

#[tokio::test]
async fn channel_subscribers_get_channel_publications() {
    let s = TestServer::start().await;
    let (mut sub, _) = s.connect("1").await;
    let (mut not_sub, _) = s.connect("2").await;
    send_text(&mut sub, r#"{"type":"subscribe","channel":"news","ref":1}"#).await;
    let ack = next_json(&mut sub).await;
    assert_eq!(
        (
            ack["type"].as_str(),
            ack["channel"].as_str(),
            ack["ref"].as_i64()
        ),
        (Some("subscribed"), Some("news"), Some(1))
    );
    let (_, body) = s
        .publish(json!({"channel": "news", "data": {"headline": "hi"}}))
        .await;
    assert_eq!(body["queued"], 1);
    let m = next_json(&mut sub).await;
    assert_eq!(
        (m["channel"].as_str(), m["data"]["headline"].as_str()),
        (Some("news"), Some("hi"))
    );
    send_text(&mut sub, r#"{"type":"unsubscribe","channel":"news"}"#).await;
    assert_eq!(next_json(&mut sub).await["type"], "unsubscribed");
    let (_, body) = s.publish(json!({"channel": "news", "data": 2})).await;
    assert_eq!(body["queued"], 0);
    s.publish(json!({"all": true, "data": "marker"})).await;
    // The marker is the next frame of both: nothing from `news` after the unsubscribe,
    // and nothing from `news` ever for the one who never subscribed.
    for ws in [&mut sub, &mut not_sub] {
        let m = next_json(ws).await;
        assert_eq!(
            (m["type"].as_str(), m.get("channel"), m["data"].as_str()),
            (Some("pub"), None, Some("marker")),
            "{m}"
        );
    }
    s.shutdown().await;
}

#[tokio::test]
async fn publish_body_is_validated() {
    let s = TestServer::start().await;
    for bad in [
        json!({"data": 1}),
        json!({"all": true, "user": "x", "data": 1}),
        json!({"channel": "bad name", "data": 1}),
        json!({"all": true}),
        json!({"all": true, "data": 1, "surprise": true}),
    ] {
        let (status, body) = s.publish(bad.clone()).await;
        assert_eq!(status, 400, "{bad} → {body}");
        assert_eq!(body["error"], "bad_request");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    s.shutdown().await;
}

#[tokio::test]
async fn connections_spread_over_the_workers_and_each_gets_every_publication_in_order() {
    // Three workers: a publication crosses to each once, and each wakes its own
    // connections (ARCHITECTURE.md, "Threads"). Every client, whichever worker it lives
    // on, gets every publication in order; the backend publisher lives on one too.
    let s = TestServer::start_with(|c| c.ws.workers = 3).await;
    let mut clients = Vec::new();
    for i in 0..6 {
        clients.push(s.connect(&format!("w{i}")).await.0);
    }
    // Each worker counts the connections living on it, the stats request's own HTTP
    // connection included: seven, spread as evenly as they can be.
    let stats = s.stats().await;
    let (ws, http) = connections_on_workers(&stats);
    assert_eq!((ws, http.len()), (6, 3), "{stats}");
    assert!(
        http.iter().max().unwrap() - http.iter().min().unwrap() <= 1,
        "{stats}"
    );
    let mut backend = s.connect_backend().await;
    for n in 0..50 {
        let (status, body) = s.publish(json!({"all": true, "data": {"n": n}})).await;
        assert_eq!(status, 200, "{body}");
        let frame = json!({"type": "publish", "all": true, "data": {"n": 50 + n}, "ref": n});
        send_text(&mut backend, &frame.to_string()).await;
    }
    for ws in &mut clients {
        let mut http = Vec::new();
        let mut pipelined = Vec::new();
        while http.len() + pipelined.len() < 100 {
            let m = next_pub(ws).await;
            let n = m["data"]["n"].as_i64().unwrap();
            if n < 50 {
                http.push(n)
            } else {
                pipelined.push(n)
            }
        }
        assert_eq!(http, (0..50).collect::<Vec<_>>());
        assert_eq!(pipelined, (50..100).collect::<Vec<_>>());
    }
    drop(clients.split_off(3));
    eventually("closed connections leave their worker's count", || async {
        connections_on_workers(&s.stats().await).0 == 4
    })
    .await;
    s.shutdown().await;
}

#[tokio::test]
async fn one_worker_means_connections_run_on_the_main_runtime() {
    let s = TestServer::start_with(|c| c.ws.workers = 1).await;
    let (mut ws, _) = s.connect("solo").await;
    assert_eq!(s.stats().await["node"]["workers"], json!([]));
    s.publish(json!({"all": true, "data": "here"})).await;
    assert_eq!(next_pub(&mut ws).await["data"], "here");
    s.shutdown().await;
}

/// WebSocket connections on the workers (all connections on them less the open HTTP
/// ones), and each worker's count.
fn connections_on_workers(stats: &serde_json::Value) -> (u64, Vec<u64>) {
    let per: Vec<u64> = stats["node"]["workers"]
        .as_array()
        .map(|w| w.iter().filter_map(|n| n.as_u64()).collect())
        .unwrap_or_default();
    let http = stats["node"]["http_connections"].as_u64().unwrap_or(0);
    (per.iter().sum::<u64>() - http, per)
}
