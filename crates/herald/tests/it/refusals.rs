//! Every refused upgrade gets its HTTP status and JSON body before the 101; the HTTP API
//! refuses bad keys.

use std::time::Duration;

use herald::auth::jwt::now_unix;
use herald::config::Config;
use herald::metrics::Refusal;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

/// A refusal's status and the contract's JSON body: `error` is `code`, `message` says why.
#[track_caller]
fn assert_refused(got: (u16, Value), status: u16, code: &str) {
    let (got_status, body) = got;
    assert_eq!(
        (got_status, body["error"].as_str()),
        (status, Some(code)),
        "{body}"
    );
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "a refusal says why: {body}"
    );
}

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
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("unauthorized"))
    );
    assert_eq!(body["message"], "token expired");

    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let none = format!(
        "{}.{}.",
        b64.encode(r#"{"alg":"none","typ":"JWT"}"#),
        b64.encode(format!(r#"{{"sub":"1","exp":{}}}"#, now_unix() + 60))
    );
    assert_refused(
        s.try_upgrade(&s.ws_url(&none), &[]).await.err().unwrap(),
        401,
        "unauthorized",
    );

    let admin_claims = herald::auth::jwt::Claims {
        admin: true,
        ..claims("1")
    };
    let forged =
        herald::auth::jwt::mint_hs256("not-the-server-secret-not-the-server-secret", &admin_claims)
            .unwrap();
    assert_refused(
        s.try_upgrade(&s.ws_url(&forged), &[]).await.err().unwrap(),
        401,
        "unauthorized",
    );
    assert_refused(
        s.try_upgrade(&s.ws_url("garbage"), &[])
            .await
            .err()
            .unwrap(),
        401,
        "unauthorized",
    );
    // Each refused upgrade was counted, and none of them under another reason.
    let refused = &s.stats().await["refused"];
    assert_eq!(
        (
            refused["bad_token"].as_u64(),
            refused["bad_origin"].as_u64()
        ),
        (Some(5), Some(0)),
        "{refused}"
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
    assert_refused(
        s.try_upgrade(&url, &[("origin", "https://evil.example")])
            .await
            .err()
            .unwrap(),
        403,
        "forbidden",
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
    assert_refused(
        s.try_upgrade(&s.ws_url(&s.token("w")), &[])
            .await
            .err()
            .unwrap(),
        429,
        "rate_limited",
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
    assert_refused(
        (426, res.json::<Value>().await.unwrap()),
        426,
        "bad_request",
    );
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
    assert_refused(
        s.post_json(
            "/api/publish",
            "wrong-key-wrong-key",
            json!({"all": true, "data": 1}),
        )
        .await,
        401,
        "unauthorized",
    );
    // A non-admin JWT is authenticated but not allowed; an admin JWT and X-API-Key work.
    assert_refused(
        s.post_json(
            "/api/publish",
            &s.token("1"),
            json!({"all": true, "data": 1}),
        )
        .await,
        403,
        "forbidden",
    );
    let admin = s.token_with("boss", |c| c.admin = true);
    assert_eq!(
        s.post_json("/api/publish", &admin, json!({"all": true, "data": 1}))
            .await,
        (200, json!({"queued": 0})),
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
    assert_refused(
        s.publish(json!({"all": true, "data": "x".repeat(2000)}))
            .await,
        413,
        "too_large",
    );
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

/// The contract name of each refusal in `/api/stats` `refused`, and the settings its
/// provocation needs. A `match` without a wildcard: a new `Refusal` (and `Refusal::ALL`
/// holds every variant by construction) does not compile until this test knows its name
/// and how to provoke it.
fn refusal_case(r: Refusal) -> (&'static str, fn(&mut Config)) {
    match r {
        Refusal::BadHandshake => ("bad_handshake", |_| {}),
        Refusal::BadOrigin => ("bad_origin", |_| {}),
        Refusal::BadToken => ("bad_token", |_| {}),
        Refusal::UserCap => ("user_cap", |c| c.limits.connections_per_user = 1),
        Refusal::IpCap => ("ip_cap", |c| c.limits.connections_per_ip = 1),
        Refusal::HandshakeTimeout => ("handshake_timeout", |c| c.limits.handshake_timeout_s = 1),
        Refusal::SlowConsumer => ("slow_consumer", |c| c.ws.queue_messages = 2),
        Refusal::RateLimited => ("rate_limited", |c| {
            c.ws.rate_per_s = 1;
            c.ws.rate_burst = 1;
        }),
        Refusal::TooLarge => ("too_large", |c| c.ws.max_message_bytes = 1024),
        Refusal::ProtocolError => ("protocol_error", |_| {}),
        Refusal::BadApiKey => ("bad_api_key", |_| {}),
        Refusal::BodyTooLarge => ("body_too_large", |c| c.limits.http_body_bytes = 1024),
        Refusal::PublicationTooLarge => ("publication_too_large", |c| {
            c.ws.max_message_bytes = 1024;
            c.ws.queue_bytes = 2048;
            c.limits.http_body_bytes = 2048;
        }),
        Refusal::ChannelBudget => ("channel_budget", |c| {
            c.limits.channels_per_user = 1;
            c.namespaces.insert(
                "room".into(),
                herald::config::NamespaceConfig {
                    publish: herald::config::PublishRule::Any,
                    ..Default::default()
                },
            );
        }),
        Refusal::WriteStalled => ("write_stalled", |c| {
            c.ws.write_timeout_s = 1;
            c.ws.queue_messages = 100_000;
            c.ws.queue_bytes = 256 * 1024 * 1024;
        }),
        Refusal::StoreBusy => ("store_busy", |_| {}),
        Refusal::HttpConnCap => ("http_conn_cap", |c| c.limits.http_connections_per_ip = 2),
        Refusal::BodyTimeout => ("body_timeout", |c| c.limits.http_body_timeout_s = 1),
        Refusal::HeadTooLarge => ("head_too_large", |_| {}),
        // Over Redis a publication waits for its echo: the second of two in one write
        // arrives while the first is in flight.
        Refusal::InFlight => ("in_flight", |c| {
            c.broker.url = std::env::var("REDIS_URL").unwrap_or("redis://127.0.0.1:6379".into());
            c.broker.prefix = format!("herald-it-in-flight-{}", std::process::id());
            c.ws.max_in_flight = 1;
        }),
        Refusal::RevokedToken => ("revoked_token", |_| {}),
    }
}

/// Provokes exactly one refusal of kind `r` on `s`.
async fn provoke(r: Refusal, s: &TestServer) {
    match r {
        Refusal::BadHandshake => {
            let url = format!("http://{}/ws?token={}", s.addr, s.token("1"));
            let res = s.http.get(&url).send().await.unwrap();
            assert_eq!(res.status().as_u16(), 400);
        }
        Refusal::BadOrigin => {
            let url = s.ws_url(&s.token("1"));
            let refused = s.try_upgrade(&url, &[("origin", "https://evil.example")]);
            assert_eq!(refused.await.err().unwrap().0, 403);
        }
        Refusal::BadToken => {
            let url = format!("ws://{}/ws", s.addr);
            assert_eq!(s.try_upgrade(&url, &[]).await.err().unwrap().0, 401);
        }
        Refusal::UserCap => {
            let _held = s.connect("u").await;
            let refused = s.try_upgrade(&s.ws_url(&s.token("u")), &[]).await;
            assert_eq!(refused.err().unwrap().0, 429);
        }
        Refusal::IpCap => {
            let _held = s.connect("a").await;
            let refused = s.try_upgrade(&s.ws_url(&s.token("b")), &[]).await;
            assert_eq!(refused.err().unwrap().0, 429);
        }
        Refusal::HandshakeTimeout => {
            let mut tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
            tcp.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
                .await
                .unwrap();
            let mut buf = [0u8; 512];
            while tokio::time::timeout(WAIT, tcp.read(&mut buf))
                .await
                .expect("dropped in time")
                .unwrap_or(0)
                > 0
            {}
        }
        Refusal::SlowConsumer => {
            // Never read: once the socket buffers are full, the queue of 2 overflows.
            publish_to_a_stalled_client_until_closed(s, false).await;
        }
        Refusal::RateLimited => {
            let (mut ws, _) = s.connect("1").await;
            send_text(&mut ws, r#"{"type":"ping"}"#).await;
            send_text(&mut ws, r#"{"type":"ping"}"#).await;
            assert_eq!(next_json(&mut ws).await["type"], "pong");
            assert_eq!(next_json(&mut ws).await["code"], "rate_limited");
        }
        Refusal::TooLarge => {
            let (mut ws, _) = s.connect("1").await;
            send_text(&mut ws, &"a".repeat(2000)).await;
            assert_eq!(close_code(&mut ws).await, Some(1009));
        }
        Refusal::ProtocolError => {
            let path = format!("/ws?token={}", s.token("1"));
            let mut raw = Raw::upgrade(s.addr, &path).await;
            raw.send(&[0x81, 0x02, b'h', b'i']).await; // unmasked
            assert_eq!(raw.close_code().await, Some(1002));
        }
        Refusal::BadApiKey => {
            let refused = s
                .post_json("/api/publish", "wrong-key", json!({"all": true, "data": 1}))
                .await;
            assert_eq!(refused.0, 401);
        }
        Refusal::BodyTooLarge => {
            let refused = s
                .publish(json!({"all": true, "data": "x".repeat(2000)}))
                .await;
            assert_eq!(refused.0, 413);
        }
        Refusal::PublicationTooLarge => {
            let refused = s
                .publish(json!({"channel": "news", "data": "x".repeat(2000)}))
                .await;
            assert_eq!(
                (refused.0, refused.1["error"].as_str()),
                (413, Some("too_large"))
            );
        }
        Refusal::ChannelBudget => {
            let (mut ws, _) = s.connect("1").await;
            for (channel, answer) in [("room:a", "ack"), ("room:b", "error")] {
                let msg = json!({"type": "publish", "channel": channel, "data": 1, "ref": 1});
                send_text(&mut ws, &msg.to_string()).await;
                assert_eq!(next_json(&mut ws).await["type"], answer);
            }
        }
        Refusal::WriteStalled => {
            // Never read, with a queue too large to overflow: the socket stops taking
            // bytes and the write deadline closes it.
            publish_to_a_stalled_client_until_closed(s, true).await;
        }
        Refusal::StoreBusy => {
            use futures_util::SinkExt;
            let (mut ws, _) = s.connect("1").await;
            // Two lookups in one write: the second arrives while the first is in flight.
            for _ in 0..2 {
                let m = tokio_tungstenite::tungstenite::Message::text(
                    r#"{"type":"get_active_broadcast"}"#,
                );
                ws.feed(m).await.unwrap();
            }
            ws.flush().await.unwrap();
            assert_eq!(next_json(&mut ws).await["code"], "rate_limited");
        }
        Refusal::HttpConnCap => {
            // The stats request before this one may still hold its slot for a moment.
            let caps = s.node().app.http_caps.clone();
            eventually("no HTTP connection is open", || {
                let open = caps.open();
                async move { open == 0 }
            })
            .await;
            let held = [
                tokio::net::TcpStream::connect(s.addr).await.unwrap(),
                tokio::net::TcpStream::connect(s.addr).await.unwrap(),
            ];
            let mut third = tokio::net::TcpStream::connect(s.addr).await.unwrap();
            let mut buf = [0u8; 8];
            let n = tokio::time::timeout(WAIT, third.read(&mut buf))
                .await
                .unwrap();
            assert!(matches!(n, Ok(0) | Err(_)), "closed at accept");
            drop(held);
            eventually("the held slots come back", || {
                let open = caps.open();
                async move { open == 0 }
            })
            .await;
        }
        Refusal::BodyTimeout => {
            let mut tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
            let head = format!(
                "POST /api/publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Length: 50\r\n\r\n{{",
                s.api_key
            );
            tcp.write_all(head.as_bytes()).await.unwrap();
            let mut got = Vec::new();
            let _ = tokio::time::timeout(WAIT, tcp.read_to_end(&mut got)).await;
            assert!(
                got.starts_with(b"HTTP/1.1 408"),
                "{}",
                String::from_utf8_lossy(&got)
            );
        }
        Refusal::HeadTooLarge => {
            let mut tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
            let head = format!(
                "GET /healthz HTTP/1.1\r\nHost: x\r\nCookie: {}\r\n\r\n",
                "c".repeat(40_000)
            );
            let _ = tcp.write_all(head.as_bytes()).await;
            let mut got = Vec::new();
            let _ = tokio::time::timeout(WAIT, tcp.read_to_end(&mut got)).await;
            assert!(
                got.starts_with(b"HTTP/1.1 431"),
                "{}",
                String::from_utf8_lossy(&got)
            );
        }
        Refusal::InFlight => {
            use futures_util::SinkExt;
            let ready = poll_until(WAIT, || async {
                s.get_json("/readyz").await.1["broker"] == "ok"
            });
            assert!(ready.await, "the node reached Redis");
            let mut ws = s.connect_backend().await;
            for r in 1..=2 {
                let m = tokio_tungstenite::tungstenite::Message::text(
                    json!({"type":"publish","all":true,"data":r,"ref":r}).to_string(),
                );
                ws.feed(m).await.unwrap();
            }
            ws.flush().await.unwrap();
            let refused = next_json(&mut ws).await;
            assert_eq!(
                (refused["code"].as_str(), refused["ref"].as_i64()),
                (Some("rate_limited"), Some(2)),
                "{refused}"
            );
            let acked = next_json(&mut ws).await;
            assert_eq!(
                (acked["type"].as_str(), acked["ref"].as_i64()),
                (Some("ack"), Some(1)),
                "{acked}"
            );
        }
        Refusal::RevokedToken => {
            let token = s.token_with("r", |c| c.jti = Some("revoked-1".into()));
            let (status, _) = s
                .post_json(
                    "/api/tokens/revoked-1/revoke",
                    &s.api_key.clone(),
                    json!({}),
                )
                .await;
            assert_eq!(status, 200);
            let refused = s.try_upgrade(&s.ws_url(&token), &[]).await;
            assert_eq!(refused.err().unwrap().0, 401);
        }
    }
}

/// `/api/stats` `refused`, over a connection of its own, so no pooled connection of the
/// test's own client is in play while refusals are counted.
async fn refused(s: &TestServer) -> Value {
    let res = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
        .get(format!("http://{}/api/stats", s.addr))
        .bearer_auth(&s.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    res.json::<Value>().await.unwrap()["refused"].clone()
}

#[tokio::test]
async fn every_refusal_is_counted_in_stats_under_its_own_name() {
    let names: Vec<&str> = Refusal::ALL.iter().map(|r| refusal_case(*r).0).collect();
    for r in Refusal::ALL {
        let (name, configure) = refusal_case(r);
        assert_eq!(r.as_str(), name, "{r:?}");
        let s = TestServer::start_with(configure).await;
        let zero: serde_json::Map<String, Value> =
            names.iter().map(|n| (n.to_string(), json!(0))).collect();
        assert_eq!(
            refused(&s).await,
            Value::Object(zero.clone()),
            "every reason is listed, at 0, on a fresh node"
        );
        provoke(r, &s).await;
        eventually(&format!("{name} is counted"), || async {
            refused(&s).await[name] != 0
        })
        .await;
        let mut expected = zero;
        expected.insert(name.to_owned(), json!(1));
        // Counts that land late (a connection task, a timer) get a moment to show up.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            refused(&s).await,
            Value::Object(expected),
            "provoking {name} counts it once, and nothing else"
        );
        s.shutdown().await;
    }
}
