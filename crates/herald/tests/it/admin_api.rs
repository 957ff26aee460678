//! The endpoints behind the admin page: the connection list and its search, disconnect
//! of a connection or a user (4004, or the code asked for), recent refusals.

use serde_json::{json, Value};

use crate::support::*;

fn ids(list: &Value) -> Vec<String> {
    list["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["conn_id"].as_str().unwrap().to_owned())
        .collect()
}

async fn get_with(s: &TestServer, path: &str, key: Option<&str>) -> u16 {
    let mut req = reqwest::Client::new().get(format!("http://{}{path}", s.addr));
    if let Some(key) = key {
        req = req.bearer_auth(key);
    }
    req.send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn connections_are_listed_newest_first_and_found_by_search() {
    let s = TestServer::start().await;
    let phone = s.token_with("alice", |c| c.device = Some("phone".into()));
    let (_alice, hello_a) = s.connect_token(&phone).await;
    let (mut bob, hello_b) = s.connect("bob").await;
    subscribe_to(&mut bob, "news-today").await;
    let (a, b) = (
        hello_a["conn_id"].as_str().unwrap(),
        hello_b["conn_id"].as_str().unwrap(),
    );

    let (status, list) = s.get_json("/api/connections").await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(
        (list["total"].clone(), list["matched"].clone()),
        (json!(2), json!(2))
    );
    assert_eq!(list["node"], s.node().app.hub.node);
    assert_eq!(list["nodes"], json!({"asked": 1, "answered": 1}));
    assert_eq!(ids(&list), [b, a], "newest first");
    let row = &list["connections"][1];
    assert_eq!(row["user_id"], "alice");
    assert_eq!(row["device"], "phone");
    assert_eq!(row["ip"], "127.0.0.1");
    assert_eq!(row["subscriptions"], json!([]));
    assert!(row["queue_depth"].is_u64(), "{row}");
    assert!(
        row["connected_at"].as_str().unwrap().ends_with('Z'),
        "{row}"
    );
    assert_eq!(
        list["connections"][0]["subscriptions"],
        json!(["news-today"])
    );

    for (q, want) in [
        ("ALI", vec![a]),
        ("news", vec![b]),
        ("phone", vec![a]),
        (b, vec![b]),
    ] {
        let (_, found) = s.get_json(&format!("/api/connections?q={q}")).await;
        assert_eq!(ids(&found), want, "q={q}: {found}");
        assert_eq!(found["total"], 2);
    }
    let (_, none) = s.get_json("/api/connections?q=nobody").await;
    assert_eq!((ids(&none).len(), none["matched"].clone()), (0, json!(0)));
    let (_, one) = s.get_json("/api/connections?limit=1").await;
    assert_eq!(
        (ids(&one), one["matched"].clone()),
        (vec![b.to_owned()], json!(2))
    );

    for bad in ["limit=0", "limit=1001", "limit=x", "colour=red"] {
        let (status, body) = s.get_json(&format!("/api/connections?{bad}")).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("bad_request")),
            "{bad}"
        );
    }
    let long = "q".repeat(257);
    assert_eq!(
        s.get_json(&format!("/api/connections?q={long}")).await.0,
        400
    );
    assert_eq!(get_with(&s, "/api/connections", None).await, 401);
    assert_eq!(
        get_with(&s, "/api/connections", Some(&s.token("alice"))).await,
        403
    );
    s.shutdown().await;
}

#[tokio::test]
async fn an_operator_disconnects_a_connection_and_a_user_with_4004_or_the_code_given() {
    let s = TestServer::start().await;
    let (mut bob, hello) = s.connect("bob").await;
    let (mut alice1, _) = s.connect("alice").await;
    let (mut alice2, _) = s.connect("alice").await;
    let (mut carol, _) = s.connect("carol").await;
    let bob_id = hello["conn_id"].as_str().unwrap().to_owned();
    let key = s.api_key.clone();

    let path = format!("/api/connections/{bob_id}/disconnect");
    let (status, body) = s.post_json(&path, &key, json!({})).await;
    assert_eq!((status, body), (200, json!({"disconnected": 1})));
    assert_eq!(close_code(&mut bob).await, Some(4004));
    eventually("bob's connection is gone", || async {
        s.node().app.hub.registry.users.count("bob") == 0
    })
    .await;
    let (status, body) = s.post_json(&path, &key, json!({})).await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));
    let (status, _) = s
        .post_json("/api/connections/nope-1/disconnect", &key, json!({}))
        .await;
    assert_eq!(status, 404, "another node's id with no cluster to ask");

    for bad in [
        json!({"code": 1002}),
        json!({"code": 3999}),
        json!({"reason": "x".repeat(124)}),
        json!({"colour": "red"}),
        json!({"reason": null}),
        json!({"code": 4004.5}),
        json!([]),
    ] {
        let (status, body) = s
            .post_json("/api/users/alice/disconnect", &key, bad.clone())
            .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("bad_request")),
            "{bad}"
        );
    }
    let (status, _) = s
        .post_json("/api/users/alice/disconnect", &s.token("alice"), json!({}))
        .await;
    assert_eq!(status, 403, "a user cannot disconnect anyone");
    // 4321.0 is the integer 4321 in JSON Schema; the API takes it as such.
    let order = json!({"code": 4321.0, "reason": "maintenance"});
    let (status, body) = s
        .post_json("/api/users/alice/disconnect", &key, order)
        .await;
    assert_eq!(
        (status, body),
        (200, json!({"disconnected": 2, "forwarded": false}))
    );
    assert_eq!(close_code(&mut alice1).await, Some(4321));
    assert_eq!(close_code(&mut alice2).await, Some(4321));

    let (status, body) = s
        .publish(json!({"channel": "news", "data": 1, "exclude_user": null}))
        .await;
    assert_eq!(status, 400, "null is not an absent field: {body}");

    // Everyone else is still served.
    send_text(&mut carol, r#"{"type":"ping"}"#).await;
    assert_eq!(next_json(&mut carol).await["type"], "pong");
    s.shutdown().await;
}

#[tokio::test]
async fn recent_refusals_are_listed_newest_first_with_counts() {
    let s = TestServer::start().await;
    let (empty_status, empty) = s.get_json("/api/refusals").await;
    assert_eq!((empty_status, empty), (200, json!({"refusals": []})));
    for _ in 0..3 {
        let (status, _) = s
            .try_upgrade(&s.ws_url("not-a-token"), &[])
            .await
            .err()
            .unwrap();
        assert_eq!(status, 401);
    }
    assert_eq!(
        get_with(&s, "/api/stats", Some("wrong-key-0123456789")).await,
        401
    );
    let (_, body) = s.get_json("/api/refusals").await;
    let rows = body["refusals"].as_array().unwrap();
    assert_eq!(rows[0]["reason"], "bad_api_key", "{body}");
    assert_eq!(
        (rows[1]["reason"].clone(), rows[1]["count"].clone()),
        (json!("bad_token"), json!(3)),
        "{body}"
    );
    assert!(rows[0]["at"].as_str().unwrap().ends_with('Z'));
    s.shutdown().await;
}
