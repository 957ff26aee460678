//! Announcements (seed 003) against both stores: SQLite in a temp data dir, and the real
//! Postgres on this machine in a throwaway database per test (`DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`).

use herald::config::Config;
use serde_json::{json, Value};

use crate::support::*;

#[derive(Clone, Copy, Debug)]
pub enum Engine {
    Sqlite,
    Postgres,
}

/// A store for one test: its config and, for Postgres, the database to drop afterwards.
pub struct TestStore {
    pub data_dir: TempDir,
    pub url: String,
    pg: Option<(String, String)>, // (admin url, database name)
}

fn base_pg_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

impl TestStore {
    pub async fn new(engine: Engine) -> TestStore {
        let data_dir = TempDir::new();
        match engine {
            Engine::Sqlite => TestStore {
                data_dir,
                url: String::new(),
                pg: None,
            },
            Engine::Postgres => {
                let admin = base_pg_url();
                let name = format!("herald_it_{:016x}", rand::random::<u64>());
                let pool = sqlx::PgPool::connect(&admin)
                    .await
                    .expect("the test Postgres is reachable (scripts/test starts it)");
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&pool)
                    .await
                    .unwrap();
                pool.close().await;
                let url = match admin.rsplit_once('/') {
                    Some((base, _)) => format!("{base}/{name}"),
                    None => panic!("DATABASE_URL needs a database path: {admin}"),
                };
                TestStore {
                    data_dir,
                    url,
                    pg: Some((admin, name)),
                }
            }
        }
    }

    pub fn config(&self) -> Config {
        let mut cfg = test_config(&self.data_dir);
        cfg.store.url = self.url.clone();
        cfg
    }

    pub async fn server(&self) -> TestServer {
        TestServer::start_cfg(self.config(), TempDir::new()).await
    }

    pub async fn drop_database(self) {
        if let Some((admin, name)) = &self.pg {
            let pool = sqlx::PgPool::connect(admin).await.unwrap();
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .execute(&pool)
            .await
            .unwrap();
            pool.close().await;
        }
    }
}

macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        $(mod $name {
            #[tokio::test]
            async fn sqlite() {
                let store = super::TestStore::new(super::Engine::Sqlite).await;
                super::$name(&store).await;
                store.drop_database().await;
            }
            #[tokio::test]
            async fn postgres() {
                let store = super::TestStore::new(super::Engine::Postgres).await;
                super::$name(&store).await;
                store.drop_database().await;
            }
        })*
    };
}

on_both_stores!(
    seed_test_1_create_ack_clear,
    validation,
    seed_test_6_acks_survive_restarts,
    seed_test_3_stats_and_history
);

fn admin(s: &TestServer) -> String {
    s.token_with("boss", |c| c.admin = true)
}

async fn create(s: &TestServer, message: &str, kind: &str) -> (u16, Value) {
    s.post_json(
        "/api/broadcasts",
        &admin(s),
        json!({"message": message, "type": kind}),
    )
    .await
}

async fn get_as(s: &TestServer, path: &str, token: &str) -> (u16, Value) {
    let res = s
        .http
        .get(format!("http://{}{path}", s.addr))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

async fn seed_test_1_create_ack_clear(store: &TestStore) {
    let s = store.server().await;
    let (mut ws, hello) = s.connect("1").await;
    assert_eq!(hello["message"], "Connected to broadcast live updates");
    let (status, body) = create(&s, "  Test broadcast  ", "info").await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        (
            body["character_count"].as_u64(),
            body["max_characters"].as_u64(),
            body["sent_to_users"].as_u64()
        ),
        (Some(14), Some(280), Some(1))
    );
    let id = body["id"].as_str().unwrap().to_owned();
    let m = next_json(&mut ws).await;
    assert_eq!(m["type"], "new_broadcast");
    let b = &m["broadcast"];
    assert_eq!(
        (
            b["id"].as_str(),
            b["message"].as_str(),
            b["message_type"].as_str(),
            b["created_by"].as_str()
        ),
        (
            Some(id.as_str()),
            Some("Test broadcast"),
            Some("info"),
            Some("boss")
        )
    );
    assert!(b["created_at"].as_str().unwrap().ends_with('Z'));

    // Acknowledge over WS; the caller's view of "active" is then empty.
    let user1 = s.token("1");
    assert_eq!(
        get_as(&s, "/api/broadcasts/active", &user1).await.1["broadcast"]["id"],
        id.as_str()
    );
    send_text(
        &mut ws,
        &json!({"type": "acknowledge_broadcast", "broadcast_id": id}).to_string(),
    )
    .await;
    eventually("the ack is stored", || async {
        get_as(&s, "/api/broadcasts/active", &user1).await.1["broadcast"].is_null()
    })
    .await;
    // Another user still sees it; an unknown id is not_found both ways.
    assert_eq!(
        get_as(&s, "/api/broadcasts/active", &s.token("2")).await.1["broadcast"]["id"],
        id.as_str()
    );
    send_text(
        &mut ws,
        r#"{"type":"acknowledge_broadcast","broadcast_id":"nope"}"#,
    )
    .await;
    assert_eq!(next_json(&mut ws).await["code"], "not_found");
    assert_eq!(
        s.post_json("/api/broadcasts/nope/ack", &user1, json!({}))
            .await
            .0,
        404
    );

    // Clear: everyone hears it, and nothing is active.
    let (status, body) = s
        .post_json("/api/broadcasts/clear", &admin(&s), json!({}))
        .await;
    assert_eq!((status, body["cleared"].as_bool()), (200, Some(true)));
    assert_eq!(
        next_json(&mut ws).await,
        json!({"type": "broadcast_cleared", "message": "Active broadcast has been cleared"})
    );
    assert!(get_as(&s, "/api/broadcasts/active", &s.token("2")).await.1["broadcast"].is_null());
    let (_, limits) = get_as(&s, "/api/broadcasts/limits", &user1).await;
    assert_eq!(
        limits,
        json!({"max_characters": 280, "recommended_length": 120, "current_active_broadcasts": 0})
    );
    s.shutdown().await;
}

async fn validation(store: &TestStore) {
    let s = store.server().await;
    let (status, body) = create(&s, &"x".repeat(281), "info").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("bad_request")),
        "{body}"
    );
    assert!(body["message"].as_str().unwrap().contains("281"));
    let (status, body) = create(&s, &"é".repeat(280), "warning").await;
    assert_eq!(
        (status, body["character_count"].as_u64()),
        (201, Some(280)),
        "280 characters, 560 bytes"
    );
    assert_eq!(create(&s, "   ", "info").await.0, 400);
    assert_eq!(create(&s, "hi", "urgent").await.0, 400);
    let (status, body) = s
        .post_json(
            "/api/broadcasts",
            &s.token("1"),
            json!({"message": "hi", "type": "info"}),
        )
        .await;
    assert_eq!((status, body["error"].as_str()), (403, Some("forbidden")));
    let res = s
        .http
        .post(format!("http://{}/api/broadcasts", s.addr))
        .json(&json!({"message": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 401);
    let (status, _) = s
        .post_json(
            "/api/broadcasts",
            &s.api_key,
            json!({"message": "by key", "type": "alert"}),
        )
        .await;
    assert_eq!(status, 201, "the API key may announce too");
    assert_eq!(
        s.post_json(
            "/api/broadcasts",
            &s.api_key,
            json!({"message": "x", "type": "info", "extra": 1})
        )
        .await
        .0,
        400
    );
    // Acknowledging needs a user: an API key is nobody to acknowledge for (403).
    assert_eq!(
        s.post_json("/api/broadcasts/whatever/ack", &s.api_key, json!({}))
            .await
            .0,
        403
    );
    s.shutdown().await;
}

async fn seed_test_6_acks_survive_restarts(store: &TestStore) {
    let s = store.server().await;
    let (_, body) = create(&s, "Acknowledgment test", "info").await;
    let id = body["id"].as_str().unwrap().to_owned();
    // A user connecting now gets it right after `connected`.
    let (mut one, _) = s.connect("1").await;
    let m = next_json(&mut one).await;
    assert_eq!(
        (m["type"].as_str(), m["broadcast"]["id"].as_str()),
        (Some("active_broadcast"), Some(id.as_str()))
    );
    send_text(
        &mut one,
        &json!({"type": "acknowledge_broadcast", "broadcast_id": id}).to_string(),
    )
    .await;
    let user1 = s.token("1");
    eventually("ack stored", || async {
        get_as(&s, "/api/broadcasts/active", &user1).await.1["broadcast"].is_null()
    })
    .await;
    // User 3 acknowledges over HTTP.
    let (status, body) = s
        .post_json(
            &format!("/api/broadcasts/{id}/ack"),
            &s.token("3"),
            json!({}),
        )
        .await;
    assert_eq!((status, body["acknowledged"].as_bool()), (200, Some(true)));
    drop(one);
    s.shutdown().await;

    // Same store, new process state.
    let s = store.server().await;
    for (user, expect_banner) in [("1", false), ("3", false), ("2", true)] {
        let (mut ws, _) = s.connect(user).await;
        // A marker sent to this user after `connected`: `active_broadcast`, when due,
        // is queued before the connection is registered, so it always comes first.
        s.publish(json!({"user": user, "data": "marker"})).await;
        let first = next_json(&mut ws).await;
        if expect_banner {
            assert_eq!(
                (first["type"].as_str(), first["broadcast"]["id"].as_str()),
                (Some("active_broadcast"), Some(id.as_str())),
                "user {user}"
            );
            assert_eq!(next_json(&mut ws).await["data"], "marker");
        } else {
            assert_eq!(
                first["data"], "marker",
                "user {user} acknowledged it before the restart"
            );
        }
        // get_active_broadcast answers the same way. It has no reply when there is
        // nothing to show, so for those users a marker sent after giving the store
        // lookup 300 ms must be the next frame (a wrong banner slower than that would
        // slip past: a bounded check, but one that never fails a correct server).
        send_text(&mut ws, r#"{"type":"get_active_broadcast"}"#).await;
        if expect_banner {
            let m = next_json(&mut ws).await;
            assert_eq!(
                (m["type"].as_str(), m["broadcast"]["id"].as_str()),
                (Some("active_broadcast"), Some(id.as_str())),
                "user {user}"
            );
        } else {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            s.publish(json!({"user": user, "data": "marker 2"})).await;
            assert_eq!(
                next_json(&mut ws).await["data"],
                "marker 2",
                "user {user} acknowledged it: no banner on request either"
            );
        }
    }
    s.shutdown().await;
}

async fn seed_test_3_stats_and_history(store: &TestStore) {
    let s = store.server().await;
    let _a = s.connect("1").await;
    let _b = s.connect("1").await;
    let _c = s.connect("2").await;
    let (status, body) = get_as(&s, "/api/broadcasts/stats", &admin(&s)).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"stats": {"broadcasts_today": 0, "active_broadcast": false, "connected_users": 2, "max_characters": 280}})
    );
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(
            create(&s, &format!("number {n}"), "info").await.1["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    s.post_json(
        &format!("/api/broadcasts/{}/ack", ids[4]),
        &s.token("1"),
        json!({}),
    )
    .await;
    let (_, body) = get_as(&s, "/api/broadcasts/stats", &admin(&s)).await;
    assert_eq!(
        (
            body["stats"]["broadcasts_today"].as_u64(),
            body["stats"]["active_broadcast"].as_bool()
        ),
        (Some(5), Some(true))
    );

    let (status, page) = get_as(&s, "/api/broadcasts?limit=2", &admin(&s)).await;
    assert_eq!(status, 200, "{page}");
    let got: Vec<&str> = page["broadcasts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap())
        .collect();
    assert_eq!(got, vec![ids[4].as_str(), ids[3].as_str()], "newest first");
    assert_eq!(page["broadcasts"][0]["acknowledgements"], 1);
    assert_eq!(
        (
            page["broadcasts"][0]["active"].as_bool(),
            page["broadcasts"][1]["active"].as_bool()
        ),
        (Some(true), Some(false)),
        "creating deactivates the previous"
    );
    let next = page["next"].as_str().unwrap().to_owned();
    let (_, page2) = get_as(
        &s,
        &format!("/api/broadcasts?limit=2&before={next}"),
        &admin(&s),
    )
    .await;
    let got: Vec<&str> = page2["broadcasts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap())
        .collect();
    assert_eq!(got, vec![ids[2].as_str(), ids[1].as_str()]);
    let (_, last) = get_as(
        &s,
        &format!("/api/broadcasts?limit=2&before={}", ids[1]),
        &admin(&s),
    )
    .await;
    assert_eq!(
        (
            last["broadcasts"].as_array().unwrap().len(),
            last["next"].is_null()
        ),
        (1, true)
    );
    assert_eq!(
        get_as(&s, "/api/broadcasts?limit=0", &admin(&s)).await.0,
        400
    );
    assert_eq!(
        get_as(&s, "/api/broadcasts", &s.token("1")).await.0,
        403,
        "non-admins get 403"
    );
    assert_eq!(
        get_as(&s, "/api/broadcasts/stats", &s.token("1")).await.0,
        403
    );
    s.shutdown().await;
}

#[tokio::test]
async fn a_fresh_node_serves_announcements_from_its_first_request() {
    // No store_ready() wait here: once Node::start returns (when `listening on` is
    // printed), a reachable store is migrated, so the first request is never a 503.
    let dir = TempDir::new();
    let cfg = test_config(&dir);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let node = herald::Node::start(listener, cfg, herald::ServeOptions::default())
        .await
        .unwrap();
    let admin = herald::auth::jwt::mint_hs256(
        &node.hmac_secret,
        &herald::auth::jwt::Claims {
            admin: true,
            ..claims("boss")
        },
    )
    .unwrap();
    let res = reqwest::Client::new()
        .post(format!("http://{}/api/broadcasts", node.addr))
        .bearer_auth(&admin)
        .json(&json!({"message": "first"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 201);
    node.shutdown().await;
}

#[tokio::test]
async fn an_unreachable_store_is_503_and_websockets_keep_serving() {
    let dir = TempDir::new();
    let mut cfg = test_config(&dir);
    cfg.store.url = "postgres://postgres@127.0.0.1:1/nowhere".into();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let node = herald::Node::start(listener, cfg, herald::ServeOptions::default())
        .await
        .unwrap();
    let addr = node.addr;
    let http = reqwest::Client::new();
    let admin = herald::auth::jwt::mint_hs256(
        &node.hmac_secret,
        &herald::auth::jwt::Claims {
            admin: true,
            ..claims("boss")
        },
    )
    .unwrap();
    let res = http
        .post(format!("http://{addr}/api/broadcasts"))
        .bearer_auth(&admin)
        .json(&json!({"message": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 503);
    assert_eq!(res.json::<Value>().await.unwrap()["error"], "unavailable");
    let res = http
        .get(format!("http://{addr}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 503);
    assert_eq!(res.json::<Value>().await.unwrap()["store"], "unavailable");
    // WebSockets and publishing are unaffected.
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws?token={admin}"))
        .await
        .unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "connected");
    let res = http
        .post(format!("http://{addr}/api/publish"))
        .bearer_auth(&node.api_key)
        .json(&json!({"all": true, "data": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    assert_eq!(next_json(&mut ws).await["data"], 1);
    // A store failure is the same answer over WebSocket as over HTTP.
    let ack = json!({"type": "acknowledge_broadcast", "broadcast_id": "6f1d8a0e-3b7c-4e51-9a2d-0c4b8e7f1a23"});
    send_text(&mut ws, &ack.to_string()).await;
    let err = next_json(&mut ws).await;
    assert_eq!(
        (&err["type"], &err["code"]),
        (&json!("error"), &json!("unavailable")),
        "{err}"
    );
    node.shutdown().await;
}
