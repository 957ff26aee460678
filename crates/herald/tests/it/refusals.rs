//! Every refused upgrade gets its HTTP status and JSON body before the 101; the HTTP API
//! refuses bad keys.

use herald::auth::jwt::now_unix;
use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn bad_tokens_get_401() {
    let s = TestServer::start().await;
    let url = format!("ws://{}/ws", s.addr);
    let (status, body) = s.try_upgrade(&url, &[]).await.err().unwrap();
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("unauthorized"))
    );

    let expired = s.token_with("1", |c| c.exp = now_unix() - 120);
    let (status, body) = s.try_upgrade(&s.ws_url(&expired), &[]).await.err().unwrap();
    assert_eq!(status, 401);
    assert_eq!(body["message"], "token expired");

    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let none = format!(
        "{}.{}.",
        b64.encode(r#"{"alg":"none","typ":"JWT"}"#),
        b64.encode(format!(r#"{{"sub":"1","exp":{}}}"#, now_unix() + 60))
    );
    assert_eq!(
        s.try_upgrade(&s.ws_url(&none), &[]).await.err().unwrap().0,
        401
    );

    let admin_claims = herald::auth::jwt::Claims {
        admin: true,
        ..claims("1")
    };
    let forged =
        herald::auth::jwt::mint_hs256("not-the-server-secret-not-the-server-secret", &admin_claims)
            .unwrap();
    assert_eq!(
        s.try_upgrade(&s.ws_url(&forged), &[])
            .await
            .err()
            .unwrap()
            .0,
        401
    );
    assert_eq!(
        s.try_upgrade(&s.ws_url("garbage"), &[])
            .await
            .err()
            .unwrap()
            .0,
        401
    );

    // The header and the cookie work as well as the query string.
    let good = s.token("1");
    assert!(s
        .try_upgrade(&url, &[("authorization", &format!("Bearer {good}"))])
        .await
        .is_ok());
    assert!(s
        .try_upgrade(&url, &[("cookie", &format!("herald_token={good}"))])
        .await
        .is_ok());
    s.shutdown().await;
}

#[tokio::test]
async fn cross_site_origin_is_403_same_and_configured_origins_pass() {
    let s = TestServer::start().await;
    let url = s.ws_url(&s.token("1"));
    let (status, body) = s
        .try_upgrade(&url, &[("origin", "https://evil.example")])
        .await
        .err()
        .unwrap();
    assert_eq!((status, body["error"].as_str()), (403, Some("forbidden")));
    let same = format!("http://{}", s.addr);
    assert!(s.try_upgrade(&url, &[("origin", &same)]).await.is_ok());
    s.shutdown().await;

    let s =
        TestServer::start_with(|c| c.allowed_origins = vec!["https://app.example".into()]).await;
    let url = s.ws_url(&s.token("1"));
    assert!(s
        .try_upgrade(&url, &[("origin", "https://app.example")])
        .await
        .is_ok());
    assert_eq!(
        s.try_upgrade(&url, &[("origin", "https://evil.example")])
            .await
            .err()
            .unwrap()
            .0,
        403
    );
    s.shutdown().await;
}

#[tokio::test]
async fn connection_caps_get_429() {
    let s = TestServer::start_with(|c| {
        c.limits.connections_per_user = 2;
        c.limits.connections_per_ip = 3;
    })
    .await;
    let _a = s.connect("u").await;
    let _b = s.connect("u").await;
    let (status, body) = s
        .try_upgrade(&s.ws_url(&s.token("u")), &[])
        .await
        .err()
        .unwrap();
    assert_eq!(
        (status, body["error"].as_str()),
        (429, Some("rate_limited"))
    );
    let _c = s.connect("v").await;
    assert_eq!(
        s.try_upgrade(&s.ws_url(&s.token("w")), &[])
            .await
            .err()
            .unwrap()
            .0,
        429,
        "per-IP cap"
    );
    let stats = s.stats().await;
    assert_eq!(stats["refused"]["user_cap"], 1);
    assert_eq!(stats["refused"]["ip_cap"], 1);
    s.shutdown().await;
}

#[tokio::test]
async fn malformed_upgrade_is_400_and_wrong_version_426() {
    let s = TestServer::start().await;
    let url = format!("http://{}/ws?token={}", s.addr, s.token("1"));
    let res = s.http.get(&url).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 400);
    assert_eq!(
        res.json::<serde_json::Value>().await.unwrap()["error"],
        "bad_request"
    );
    let res = s
        .http
        .get(&url)
        .header("upgrade", "websocket")
        .header("connection", "upgrade")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("sec-websocket-version", "8")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 426);
    assert_eq!(res.headers()["sec-websocket-version"], "13");
    s.shutdown().await;
}

#[tokio::test]
async fn http_api_refuses_missing_or_wrong_key_with_401() {
    let s = TestServer::start().await;
    let url = format!("http://{}/api/publish", s.addr);
    let res = s
        .http
        .post(&url)
        .json(&json!({"all": true, "data": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 401);
    assert_eq!(
        res.json::<serde_json::Value>().await.unwrap()["error"],
        "unauthorized"
    );
    let (status, _) = s
        .post_json(
            "/api/publish",
            "wrong-key-wrong-key",
            json!({"all": true, "data": 1}),
        )
        .await;
    assert_eq!(status, 401);
    // A non-admin JWT is authenticated but not allowed; an admin JWT and X-API-Key work.
    let (status, _) = s
        .post_json(
            "/api/publish",
            &s.token("1"),
            json!({"all": true, "data": 1}),
        )
        .await;
    assert_eq!(status, 403);
    let admin = s.token_with("boss", |c| c.admin = true);
    assert_eq!(
        s.post_json("/api/publish", &admin, json!({"all": true, "data": 1}))
            .await
            .0,
        200
    );
    let res = s
        .http
        .post(&url)
        .header("x-api-key", &s.api_key)
        .json(&json!({"all": true, "data": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    s.shutdown().await;
}

#[tokio::test]
async fn oversized_http_body_is_413_json() {
    let s = TestServer::start_with(|c| c.limits.http_body_bytes = 1024).await;
    let (status, body) = s
        .publish(json!({"all": true, "data": "x".repeat(2000)}))
        .await;
    assert_eq!((status, body["error"].as_str()), (413, Some("too_large")));
    s.shutdown().await;
}

#[tokio::test]
async fn anonymous_mode_accepts_without_token() {
    let s = TestServer::start_with(|c| c.auth.mode = herald::config::AuthMode::None).await;
    let url = format!("ws://{}/ws", s.addr);
    let mut ws = s.try_upgrade(&url, &[]).await.ok().unwrap();
    let hello = next_json(&mut ws).await;
    assert!(hello["user_id"].as_str().unwrap().starts_with("anon-"));
    s.shutdown().await;
}
