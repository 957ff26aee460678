//! The hardening issue, item by item: each test reproduces what an attacker, a proxy or
//! a stock machine found in the build before it, against a real node.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use herald::auth::jwt::Audience;
use herald::config::{NamespaceConfig, PublishRule, SubscribeRule};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

async fn subscribe(ws: &mut Ws, channel: &str, since: Option<Value>) -> Value {
    let mut msg = json!({"type": "subscribe", "channel": channel});
    if let Some(s) = since {
        msg["since"] = s;
    }
    send_text(ws, &msg.to_string()).await;
    next_json(ws).await
}

/// The next frame that is not a `pub` of `channel` (skips live traffic).
async fn answer(ws: &mut Ws) -> Value {
    next_json(ws).await
}

/// Reads whatever arrives within `d`; returns the JSON frames.
async fn drain_for(ws: &mut Ws, d: Duration) -> Vec<Value> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + d;
    while let Ok(Some(Ok(m))) = tokio::time::timeout_at(deadline, ws.next()).await {
        if let Message::Text(t) = m {
            out.push(serde_json::from_str(&t).unwrap_or(Value::Null));
        }
    }
    out
}

fn room(history: usize) -> NamespaceConfig {
    NamespaceConfig {
        subscribe: SubscribeRule::Any,
        publish: PublishRule::Any,
        history_size: history,
        ..NamespaceConfig::default()
    }
}

// 1 ─────────────────────────────────────────────────────────────────────────────────

#[tokio::test]
async fn owner_channels_match_the_whole_user_id() {
    let s = TestServer::start().await;
    let event = json!({"type": "watchlist_update", "content_id": "c", "action": "add"});
    for (user, theirs) in [
        ("john", "sync:john.doe"),
        ("bob", "sync:bob.smith@example.com"),
        ("42", "sync:420"),
        ("42", "sync:42.tv"),
    ] {
        let (mut ws, _) = s.connect(user).await;
        let e = subscribe(&mut ws, theirs, None).await;
        assert_eq!(
            (e["type"].as_str(), e["code"].as_str()),
            (Some("error"), Some("forbidden")),
            "{user} → {theirs}: {e}"
        );
        send_text(
            &mut ws,
            &json!({"type": "publish", "channel": theirs, "data": event, "ref": 1}).to_string(),
        )
        .await;
        let e = answer(&mut ws).await;
        assert_eq!(e["code"], "forbidden", "{user} publishing to {theirs}: {e}");
    }
    // The owners themselves, with `.` and `@` in their ids.
    for user in ["john.doe", "bob.smith@example.com"] {
        let (mut ws, _) = s.connect(user).await;
        let ok = subscribe(&mut ws, &format!("sync:{user}"), None).await;
        assert_eq!(ok["type"], "subscribed", "{ok}");
    }
    s.shutdown().await;
}

// 2 ─────────────────────────────────────────────────────────────────────────────────

#[tokio::test]
async fn history_is_bounded_per_node_oldest_evicted_first() {
    const BUDGET: usize = 2 * 1024 * 1024;
    let s = TestServer::start_with(|c| {
        c.limits.history_bytes = BUDGET;
        c.namespaces.insert("room".into(), room(100));
    })
    .await;
    let payload = "x".repeat(16 * 1024);
    let before = rss_bytes() / 1024;
    let mut first = None;
    let mut last = None;
    // 1,500 channels × 16 KiB = 24 MiB offered, twelve times the budget.
    for i in 0..1500 {
        let (status, body) = s
            .publish(json!({"channel": format!("room:c{i}"), "data": payload}))
            .await;
        assert_eq!(status, 200, "{body}");
        let pos = (
            body["offset"].as_u64(),
            body["epoch"].as_str().map(str::to_owned),
        );
        if i == 0 {
            first = Some(pos.clone());
        }
        last = Some(pos);
    }
    let stats = s.stats().await;
    let held = stats["node"]["history_bytes"].as_u64().unwrap();
    assert!(
        held as usize <= BUDGET,
        "history held {held} > budget {BUDGET}"
    );
    assert!(held > 0);
    let grown_mib = ((rss_bytes() / 1024).saturating_sub(before)) / 1024;
    assert!(
        grown_mib < 2 + 20,
        "RSS grew {grown_mib} MiB for a 2 MiB history budget"
    );
    // The oldest channel lost its history: recovery says so. The newest still has it.
    let (Some((Some(_), Some(epoch0))), Some((Some(_), Some(epoch_n)))) = (first, last) else {
        panic!("publications on a history namespace carry offset and epoch");
    };
    let (mut ws, _) = s.connect("u").await;
    let old = subscribe(
        &mut ws,
        "room:c0",
        Some(json!({"offset": 0, "epoch": epoch0})),
    )
    .await;
    assert_eq!(old["recovered"], false, "{old}");
    let new = subscribe(
        &mut ws,
        "room:c1499",
        Some(json!({"offset": 0, "epoch": epoch_n})),
    )
    .await;
    assert_eq!(new["recovered"], true, "{new}");
    assert_eq!(next_json(&mut ws).await["channel"], "room:c1499");
    s.shutdown().await;
}

#[tokio::test]
async fn a_client_may_create_only_so_many_channels_by_publishing() {
    let s = TestServer::start_with(|c| {
        c.limits.channels_per_user = 3;
        c.namespaces.insert("room".into(), room(10));
    })
    .await;
    let (mut ws, _) = s.connect("mallory").await;
    let mut codes = Vec::new();
    for i in 0..5 {
        send_text(
            &mut ws,
            &json!({"type": "publish", "channel": format!("room:m{i}"), "data": i, "ref": i})
                .to_string(),
        )
        .await;
        let a = answer(&mut ws).await;
        codes.push(
            a["code"]
                .as_str()
                .unwrap_or(a["type"].as_str().unwrap_or("?"))
                .to_owned(),
        );
    }
    assert_eq!(codes, ["ack", "ack", "ack", "rate_limited", "rate_limited"]);
    // Publishing to a channel that exists is fine; another user has their own budget.
    send_text(
        &mut ws,
        &json!({"type": "publish", "channel": "room:m0", "data": 9, "ref": 9}).to_string(),
    )
    .await;
    assert_eq!(answer(&mut ws).await["type"], "ack");
    let (mut other, _) = s.connect("alice").await;
    send_text(
        &mut other,
        &json!({"type": "publish", "channel": "room:a0", "data": 1, "ref": 1}).to_string(),
    )
    .await;
    assert_eq!(answer(&mut other).await["type"], "ack");
    assert_eq!(s.stats().await["refused"]["channel_budget"], 2);
    s.shutdown().await;
}

// 3 ─────────────────────────────────────────────────────────────────────────────────

#[tokio::test]
async fn a_publication_larger_than_the_queue_is_refused_not_accepted() {
    let s = TestServer::start_with(|c| {
        c.ws.max_message_bytes = 2048;
        c.ws.queue_bytes = 8192;
        c.limits.http_body_bytes = 8192;
    })
    .await;
    let (mut sub, _) = s.connect("reader").await;
    let top = subscribe(&mut sub, "news", None).await;
    let epoch = top["epoch"].as_str().unwrap().to_owned();
    // A body within the HTTP limit whose frame (with its envelope) exceeds the queue.
    let data = "y".repeat(8192 - 40);
    let (status, body) = s.publish(json!({"channel": "news", "data": data})).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (413, Some("too_large")),
        "{body}"
    );
    // The subscriber was not closed, and the refused publication is not in history.
    let (status, ok) = s.publish(json!({"channel": "news", "data": "small"})).await;
    assert_eq!((status, ok["offset"].as_u64()), (200, Some(1)), "{ok}");
    let got = next_json(&mut sub).await;
    assert_eq!(
        (got["data"].as_str(), got["offset"].as_u64()),
        (Some("small"), Some(1))
    );
    let (mut late, _) = s.connect("late").await;
    let r = subscribe(
        &mut late,
        "news",
        Some(json!({"offset": 0, "epoch": epoch})),
    )
    .await;
    assert_eq!(
        (r["recovered"].as_bool(), r["offset"].as_u64()),
        (Some(true), Some(1))
    );
    assert_eq!(next_json(&mut late).await["data"], "small");
    assert_eq!(s.stats().await["refused"]["publication_too_large"], 1);
    s.shutdown().await;
}

// 4 ─────────────────────────────────────────────────────────────────────────────────

#[tokio::test]
async fn a_replay_larger_than_the_queue_is_recovered_false_not_a_4000_loop() {
    let s = TestServer::start_with(|c| {
        c.ws.max_message_bytes = 16 * 1024;
        c.ws.queue_bytes = 64 * 1024;
        c.limits.http_body_bytes = 64 * 1024;
    })
    .await;
    let (mut sub, _) = s.connect("u").await;
    let first = subscribe(&mut sub, "news", None).await;
    let epoch = first["epoch"].as_str().unwrap().to_owned();
    drop(sub);
    let data = "z".repeat(10 * 1024);
    for _ in 0..10 {
        assert_eq!(
            s.publish(json!({"channel": "news", "data": data})).await.0,
            200
        );
    }
    // 100 KiB of history cannot fit a 64 KiB queue: every reconnect gets the same
    // clear answer, and the connection stays up.
    for _ in 0..3 {
        let (mut ws, _) = s.connect("u").await;
        let r = subscribe(&mut ws, "news", Some(json!({"offset": 0, "epoch": epoch}))).await;
        assert_eq!(
            (
                r["type"].as_str(),
                r["recovered"].as_bool(),
                r["offset"].as_u64()
            ),
            (Some("subscribed"), Some(false), Some(10)),
            "{r}"
        );
        send_text(&mut ws, r#"{"type":"ping"}"#).await;
        assert_eq!(next_json(&mut ws).await["type"], "pong");
    }
    // A replay that fits is delivered whole.
    let (mut ws, _) = s.connect("u").await;
    let r = subscribe(&mut ws, "news", Some(json!({"offset": 7, "epoch": epoch}))).await;
    assert_eq!(r["recovered"], true);
    for offset in 8..=10 {
        assert_eq!(next_json(&mut ws).await["offset"], offset);
    }
    assert_eq!(s.stats().await["slow_consumer_disconnects"], 0);
    s.shutdown().await;
}

#[tokio::test]
async fn exclusions_survive_recovery() {
    let s = TestServer::start_with(|c| {
        c.namespaces.insert("room".into(), room(100));
    })
    .await;
    let device = |user: &str, d: &str| s.token_with(user, |c| c.device = Some(d.into()));
    let (mut a, hello) = s.connect_token(&device("u", "phone")).await;
    let top = subscribe(&mut a, "room:r", None).await;
    let epoch = top["epoch"].as_str().unwrap().to_owned();
    let a_conn = hello["conn_id"].as_str().unwrap().to_owned();
    // 1: by user through the API; 2: by connection (device A) through the API;
    // 3: device A's own client publication; 4: for everyone.
    s.publish(json!({"channel": "room:r", "data": 1, "exclude_user": "u"}))
        .await;
    s.publish(json!({"channel": "room:r", "data": 2, "exclude_conn": a_conn}))
        .await;
    send_text(
        &mut a,
        &json!({"type": "publish", "channel": "room:r", "data": 3, "ref": 1}).to_string(),
    )
    .await;
    assert_eq!(next_json(&mut a).await["type"], "ack");
    s.publish(json!({"channel": "room:r", "data": 4})).await;
    assert_eq!(next_json(&mut a).await["data"], 4);
    drop(a);
    let since = json!({"offset": 0, "epoch": epoch});
    let replay = |frames: Vec<Value>| -> Vec<i64> {
        frames
            .iter()
            .filter(|f| f["type"] == "pub")
            .filter_map(|f| f["data"].as_i64())
            .collect()
    };
    // Device A comes back: nothing it was excluded from, by user or as the device.
    let (mut a2, _) = s.connect_token(&device("u", "phone")).await;
    assert_eq!(
        subscribe(&mut a2, "room:r", Some(since.clone())).await["recovered"],
        true
    );
    assert_eq!(
        replay(drain_for(&mut a2, Duration::from_millis(300)).await),
        [4]
    );
    // Device B of the same user: excluded by user only.
    let (mut b, _) = s.connect_token(&device("u", "tablet")).await;
    subscribe(&mut b, "room:r", Some(since.clone())).await;
    assert_eq!(
        replay(drain_for(&mut b, Duration::from_millis(300)).await),
        [2, 3, 4]
    );
    // Someone else gets everything.
    let (mut other, _) = s.connect("v").await;
    subscribe(&mut other, "room:r", Some(since)).await;
    assert_eq!(
        replay(drain_for(&mut other, Duration::from_millis(300)).await),
        [1, 2, 3, 4]
    );
    s.shutdown().await;
}

// 5 ─────────────────────────────────────────────────────────────────────────────────

/// Sends `head` and reads the answer until the server closes; None if it stays open.
async fn raw_http(addr: std::net::SocketAddr, head: &str, within: Duration) -> Option<String> {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    match tokio::time::timeout(within, tcp.read_to_end(&mut got)).await {
        Ok(_) => Some(String::from_utf8_lossy(&got).into_owned()),
        Err(_) => None,
    }
}

#[tokio::test]
async fn slow_and_unauthenticated_bodies_are_answered_and_closed() {
    let s = TestServer::start_with(|c| c.limits.http_body_timeout_s = 1).await;
    let partial = |auth: &str| {
        format!(
            "POST /api/publish HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"all\":tr"
        )
    };
    // No credentials: 401 at once, before any body is read, and the connection ends.
    let t0 = std::time::Instant::now();
    let res = raw_http(s.addr, &partial(""), Duration::from_secs(5))
        .await
        .expect("an unauthenticated body is not waited for");
    assert!(res.starts_with("HTTP/1.1 401"), "{res}");
    assert!(res.contains("\"error\":\"unauthorized\""), "{res}");
    assert!(
        t0.elapsed() < Duration::from_millis(900),
        "answered before the body timeout"
    );
    // With a key: 408 with the JSON body once the body timeout passes.
    let auth = format!("Authorization: Bearer {}\r\n", s.api_key);
    let res = raw_http(s.addr, &partial(&auth), Duration::from_secs(5))
        .await
        .expect("a slow body is cut off");
    assert!(res.starts_with("HTTP/1.1 408"), "{res}");
    assert!(res.contains("\"error\":\"timeout\""), "{res}");
    assert_eq!(s.stats().await["refused"]["body_timeout"], 1);
    s.shutdown().await;
}

#[tokio::test]
async fn open_http_connections_are_capped_per_ip() {
    let s = TestServer::start_with(|c| c.limits.http_connections_per_ip = 3).await;
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(TcpStream::connect(s.addr).await.unwrap());
    }
    // The fourth is closed at accept without an answer.
    let mut fourth = TcpStream::connect(s.addr).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(WAIT, fourth.read(&mut buf))
        .await
        .expect("closed at once");
    assert!(matches!(n, Ok(0) | Err(_)), "refused at accept");
    // Giving one back frees a slot.
    drop(idle.pop());
    eventually("a slot comes back", || async {
        let Ok(mut tcp) = TcpStream::connect(s.addr).await else {
            return false;
        };
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .is_ok()
            && {
                let mut got = Vec::new();
                let _ = tcp.read_to_end(&mut got).await;
                got.starts_with(b"HTTP/1.1 200")
            }
    })
    .await;
    drop(idle);
    eventually("refusals counted", || async {
        s.stats().await["refused"]["http_conn_cap"].as_u64() >= Some(1)
    })
    .await;
    s.shutdown().await;
}

// 6, 7 ──────────────────────────────────────────────────────────────────────────────

/// An anonymous node with a tight inbound limit: 5/s, burst 5, closed after 1 s of it.
async fn flood_node() -> TestServer {
    TestServer::start_with(|c| {
        c.auth.mode = herald::config::AuthMode::None;
        c.ws.rate_per_s = 5;
        c.ws.rate_burst = 5;
        c.ws.rate_limit_close_after_s = 1;
    })
    .await
}

/// Writes `unit` × `per_write` every 50 ms (far over the limit, for longer than
/// `close_after`) until the server stops reading, then returns its close code.
async fn flood(raw: &mut Raw, unit: &[u8], per_write: usize) -> Option<u16> {
    let burst = unit.repeat(per_write);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::time::Instant::now() < deadline {
        if raw.tcp.write_all(&burst).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    raw.close_code().await
}

#[tokio::test]
async fn a_ping_flood_is_rate_limited_and_closed_with_1008() {
    let s = flood_node().await;
    let mut raw = Raw::upgrade(s.addr, "/ws").await;
    assert_eq!(
        flood(&mut raw, &masked(true, 0x9, b"p"), 50).await,
        Some(1008)
    );
    assert!(s.stats().await["refused"]["rate_limited"].as_u64() > Some(100));
    s.shutdown().await;
}

#[tokio::test]
async fn empty_continuation_floods_count_too() {
    let s = flood_node().await;
    let mut raw = Raw::upgrade(s.addr, "/ws").await;
    raw.send(&masked(false, 0x1, b"")).await;
    assert_eq!(
        flood(&mut raw, &masked(false, 0x0, b""), 100).await,
        Some(1008)
    );
    s.shutdown().await;
}

#[tokio::test]
async fn dripping_a_frame_that_never_ends_is_idle() {
    let s = TestServer::start_with(|c| {
        c.auth.mode = herald::config::AuthMode::None;
        c.ws.heartbeat_s = 1;
        c.ws.idle_timeout_s = 2;
    })
    .await;
    let mut raw = Raw::upgrade(s.addr, "/ws").await;
    // A 200-byte text frame, one byte every 200 ms: 40 s to finish, never idle in bytes.
    let frame = masked(true, 0x1, &[b'a'; 200]);
    let mut closed = false;
    let start = std::time::Instant::now();
    for b in frame.iter().take(60) {
        if raw.tcp.write_all(&[*b]).await.is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 256];
        match tokio::time::timeout(Duration::from_millis(200), raw.tcp.read(&mut buf)).await {
            // A close frame (0x88 …) or EOF: the server gave up on us.
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) if buf.get(..n).is_some_and(|b| b.contains(&0x88)) => {
                closed = true;
                break;
            }
            _ => {}
        }
    }
    assert!(closed, "the drip must be closed by the idle timeout");
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "closed by the 2 s idle timeout"
    );
    s.shutdown().await;
}

// 8 ─────────────────────────────────────────────────────────────────────────────────

#[tokio::test]
async fn store_work_per_connection_is_bounded_and_ids_checked_first() {
    let s = TestServer::start().await;
    let (mut ws, _) = s.connect("u").await;
    // Not an announcement id: refused without asking the store.
    send_text(
        &mut ws,
        r#"{"type":"acknowledge_broadcast","broadcast_id":"../../etc"}"#,
    )
    .await;
    let e = next_json(&mut ws).await;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("error"), Some("not_found")),
        "{e}"
    );
    // Twenty lookups in one write: one goes to the store, the others are refused until
    // it answers.
    let burst = (0..20).map(|_| Message::text(r#"{"type":"get_active_broadcast"}"#));
    for m in burst {
        ws.feed(m).await.unwrap();
    }
    ws.flush().await.unwrap();
    let frames = drain_for(&mut ws, Duration::from_millis(500)).await;
    let limited = frames
        .iter()
        .filter(|f| f["code"] == "rate_limited")
        .count();
    assert!(limited >= 15, "{frames:?}");
    assert!(s.stats().await["refused"]["store_busy"].as_u64() >= Some(15));
    // Over HTTP too, a malformed id is answered without the store.
    let (status, body) = s
        .post_json("/api/broadcasts/not-an-id/ack", &s.token("u"), json!({}))
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("not_found")),
        "{body}"
    );
    s.shutdown().await;
}

// 9 ─────────────────────────────────────────────────────────────────────────────────

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_racing_with_shutdown_get_1001_and_do_not_hold_it_back() {
    let s = TestServer::start_with(|c| {
        c.auth.mode = herald::config::AuthMode::None;
        c.shutdown_timeout_s = 20;
    })
    .await;
    let addr = s.addr;
    let mut clients = Vec::new();
    for _ in 0..300 {
        clients.push(tokio::spawn(async move {
            let Ok((mut ws, _)) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws")).await
            else {
                return None; // refused (503 draining) or reset: fine
            };
            loop {
                match tokio::time::timeout(Duration::from_secs(15), ws.next()).await {
                    Ok(Some(Ok(Message::Close(f)))) => return Some(f.map(|f| u16::from(f.code))),
                    Ok(Some(Ok(_))) => continue,
                    Ok(_) => return Some(None),
                    Err(_) => return Some(Some(0)), // still open after 15 s
                }
            }
        }));
    }
    // Shut down while upgrades are still streaming in.
    let registry = s.node().app.hub.registry.clone();
    eventually("some clients are connected", || {
        let n = registry.connections();
        async move { n >= 20 }
    })
    .await;
    let t0 = std::time::Instant::now();
    s.shutdown().await;
    let took = t0.elapsed();
    let mut upgraded = 0;
    for c in clients {
        if let Some(code) = c.await.unwrap() {
            upgraded += 1;
            assert_ne!(code, Some(0), "a connection outlived the shutdown");
            assert!(matches!(code, Some(1001) | None), "got {code:?}");
        }
    }
    assert!(upgraded > 0, "some upgrades completed");
    assert!(
        took < Duration::from_secs(10),
        "shutdown waited {took:?} for a racing upgrade"
    );
}

// 10 ────────────────────────────────────────────────────────────────────────────────

#[tokio::test]
async fn trusted_proxies_decide_the_client_address_and_scheme() {
    let s = TestServer::start_with(|c| {
        c.limits.connections_per_ip = 2;
        c.trusted_proxies = vec!["127.0.0.1".into()];
    })
    .await;
    let url = s.ws_url(&s.token("u"));
    let from = |ip: &'static str| [("x-forwarded-for", ip)];
    let mut open = Vec::new();
    for _ in 0..2 {
        open.push(
            s.try_upgrade(&url, &from("203.0.113.1"))
                .await
                .expect("under the cap"),
        );
    }
    let (status, _) = s
        .try_upgrade(&url, &from("203.0.113.1"))
        .await
        .err()
        .unwrap();
    assert_eq!(
        status, 429,
        "the forwarded address is what the per-IP cap counts"
    );
    open.push(
        s.try_upgrade(&url, &from("203.0.113.2"))
            .await
            .expect("another client"),
    );
    // An https page behind a TLS-terminating balancer is same-origin.
    let tls_page = [
        ("origin", "https://app.example"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "app.example"),
        ("x-forwarded-for", "203.0.113.3"),
    ];
    open.push(
        s.try_upgrade(&url, &tls_page)
            .await
            .expect("same origin via the proxy"),
    );
    drop(open);
    s.shutdown().await;

    // The same headers from a peer we do not trust are ignored.
    let s = TestServer::start_with(|c| c.limits.connections_per_ip = 2).await;
    let url = s.ws_url(&s.token("u"));
    let (status, _) = s.try_upgrade(&url, &tls_page).await.err().unwrap();
    assert_eq!(
        status, 403,
        "forwarded Host/Proto are not believed from anyone"
    );
    let a = s.try_upgrade(&url, &from("203.0.113.1")).await.unwrap();
    let b = s.try_upgrade(&url, &from("203.0.113.2")).await.unwrap();
    let (status, _) = s
        .try_upgrade(&url, &from("203.0.113.3"))
        .await
        .err()
        .unwrap();
    assert_eq!(
        status, 429,
        "spoofed X-Forwarded-For does not dodge the cap"
    );
    drop((a, b));
    s.shutdown().await;
}

#[tokio::test]
async fn an_audience_array_containing_ours_is_accepted() {
    let s = TestServer::start_with(|c| c.auth.audience = Some("herald".into())).await;
    let good = s.token_with("u", |c| {
        c.aud = Some(Audience::Many(vec!["account".into(), "herald".into()]))
    });
    let (_ws, hello) = s.connect_token(&good).await;
    assert_eq!(hello["user_id"], "u");
    let wrong = s.token_with("u", |c| {
        c.aud = Some(Audience::Many(vec!["account".into()]))
    });
    assert_eq!(
        s.try_upgrade(&s.ws_url(&wrong), &[]).await.err().unwrap().0,
        401
    );
    s.shutdown().await;
}

#[tokio::test]
async fn refresh_rederives_the_connections_rights() {
    let s = TestServer::start_with(|c| {
        c.namespaces.insert(
            "staff".into(),
            NamespaceConfig {
                subscribe: SubscribeRule::Admin,
                ..NamespaceConfig::default()
            },
        );
    })
    .await;
    let (mut ws, _) = s.connect("7").await;
    assert_eq!(
        subscribe(&mut ws, "staff:room", None).await["code"],
        "forbidden"
    );
    // Promoted: admin and a group.
    let promoted = s.token_with("7", |c| {
        c.admin = true;
        c.groups = vec!["ops".into()];
    });
    send_text(
        &mut ws,
        &json!({"type": "refresh", "token": promoted}).to_string(),
    )
    .await;
    assert_eq!(
        subscribe(&mut ws, "staff:room", None).await["type"],
        "subscribed"
    );
    s.publish(json!({"group": "ops", "data": "to ops"})).await;
    assert_eq!(next_json(&mut ws).await["data"], "to ops");
    // Demoted: the admin-only subscription ends, the group no longer reaches it.
    send_text(
        &mut ws,
        &json!({"type": "refresh", "token": s.token("7")}).to_string(),
    )
    .await;
    let gone = next_json(&mut ws).await;
    assert_eq!(
        (gone["type"].as_str(), gone["channel"].as_str()),
        (Some("unsubscribed"), Some("staff:room"))
    );
    let (_, body) = s.publish(json!({"group": "ops", "data": "again"})).await;
    assert_eq!(body["queued"], 0);
    // Another user's token is refused.
    send_text(
        &mut ws,
        &json!({"type": "refresh", "token": s.token("8")}).to_string(),
    )
    .await;
    assert_eq!(next_json(&mut ws).await["code"], "forbidden");
    s.shutdown().await;
}

#[tokio::test]
async fn serve_raises_open_files_and_tolerates_unknown_environment() {
    let dir = TempDir::new();
    let bin = env!("CARGO_BIN_EXE_herald");
    let script = format!(
        "ulimit -Sn 1024; exec {bin} serve --listen 127.0.0.1:0 --data-dir {}",
        dir.0.display()
    );
    let mut child = std::process::Command::new("sh")
        .args(["-c", &script])
        .env("HERALD_SERVICE_HOST", "10.0.0.7")
        .env("HERALD_PORT_8080_TCP", "tcp://10.0.0.7:8080")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stdout)
            .lines()
            .find_map(|l| l.ok().filter(|l| l.contains("listening on")))
    })
    .await
    .unwrap();
    assert!(
        line.is_some(),
        "started despite HERALD_SERVICE_HOST / HERALD_PORT_…"
    );
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap();
    let row = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let nums: Vec<&str> = row.split_whitespace().skip(3).take(2).collect();
    assert_eq!(nums.first(), nums.get(1), "soft raised to hard: {row}");
    assert_ne!(nums.first(), Some(&"1024"), "{row}");
    unsafe_free_kill(&mut child);
    let mut err = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(
        err.contains("HERALD_SERVICE_HOST") && err.contains("HERALD_PORT_8080_TCP"),
        "{err}"
    );
}

fn unsafe_free_kill(child: &mut std::process::Child) {
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

// 11 ────────────────────────────────────────────────────────────────────────────────

#[tokio::test]
async fn an_http_device_command_is_validated_targeted_and_not_kept() {
    let s = TestServer::start().await;
    let mut tv = sync_device(&s, "42", "tv").await;
    let mut phone = sync_device(&s, "42", "phone").await;
    let (status, body) = s
        .publish(json!({"channel": "sync:42", "data": {"type": "device_command", "target_device": "tv"}}))
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("bad_request")),
        "missing command: {body}"
    );
    let cmd = json!({"type": "device_command", "command": "pause", "target_device": "tv"});
    let (status, body) = s.publish(json!({"channel": "sync:42", "data": cmd})).await;
    assert_eq!(
        (status, body.get("offset")),
        (200, None),
        "not in history: {body}"
    );
    assert_eq!(next_json(&mut tv).await["data"], cmd);
    assert!(drain_for(&mut phone, Duration::from_millis(300))
        .await
        .is_empty());
    s.shutdown().await;
}

#[tokio::test]
async fn a_second_subscribe_is_refused_not_replayed_twice() {
    let s = TestServer::start().await;
    let (mut ws, _) = s.connect("u").await;
    let first = subscribe(&mut ws, "news", None).await;
    let epoch = first["epoch"].as_str().unwrap().to_owned();
    s.publish(json!({"channel": "news", "data": 1})).await;
    assert_eq!(next_json(&mut ws).await["offset"], 1);
    let again = subscribe(&mut ws, "news", Some(json!({"offset": 0, "epoch": epoch}))).await;
    assert_eq!(
        (again["type"].as_str(), again["code"].as_str()),
        (Some("error"), Some("bad_request")),
        "{again}"
    );
    assert!(
        drain_for(&mut ws, Duration::from_millis(300))
            .await
            .is_empty(),
        "nothing replayed twice"
    );
    // `default:news` is not a second name for `news`.
    let e = subscribe(&mut ws, "default:news", None).await;
    assert_eq!(e["code"], "bad_request", "{e}");
    s.shutdown().await;
}

#[tokio::test]
async fn epochs_are_64_bit() {
    let s = TestServer::start().await;
    let (mut ws, _) = s.connect("u").await;
    let epoch = subscribe(&mut ws, "news", None).await["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(epoch.len(), 16, "{epoch}");
    assert!(u64::from_str_radix(&epoch, 16).is_ok());
    s.shutdown().await;
}

#[tokio::test]
async fn readyz_follows_a_store_outage_after_start_up() {
    use crate::announcements::{Engine, TestStore};
    let store = TestStore::new(Engine::Postgres).await;
    // The node reaches Postgres through a forwarder we can cut.
    let upstream = store
        .url
        .split('@')
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap()
        .to_owned();
    let (proxy_addr, cut) = forwarder(upstream).await;
    let mut cfg = store.config();
    let (head, tail) = store.url.split_once('@').unwrap();
    let db = tail.split_once('/').unwrap().1;
    cfg.store.url = format!("{head}@{proxy_addr}/{db}");
    let s = TestServer::start_cfg(cfg, TempDir::new()).await;
    let ready = |s: &TestServer| {
        let url = format!("http://{}/readyz", s.addr);
        let http = s.http.clone();
        async move {
            http.get(url)
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }
    };
    assert_eq!(ready(&s).await, 200);
    cut.cancel();
    eventually("readyz turns 503 when the store goes away", || async {
        ready(&s).await == 503
    })
    .await;
    // The WebSocket side keeps serving meanwhile.
    let (_ws, hello) = s.connect("u").await;
    assert_eq!(hello["type"], "connected");
    s.shutdown().await;
    store.drop_database().await;
}

/// A TCP forwarder to `upstream`; cancelling the token drops every connection and stops
/// accepting.
async fn forwarder(
    upstream: String,
) -> (std::net::SocketAddr, tokio_util::sync::CancellationToken) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cut = tokio_util::sync::CancellationToken::new();
    let stop = cut.clone();
    tokio::spawn(async move {
        loop {
            let (mut inbound, _) = tokio::select! {
                _ = stop.cancelled() => return,
                r = listener.accept() => match r { Ok(x) => x, Err(_) => return },
            };
            let upstream = upstream.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let Ok(mut out) = TcpStream::connect(&upstream).await else {
                    return;
                };
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = tokio::io::copy_bidirectional(&mut inbound, &mut out) => {}
                }
            });
        }
    });
    (addr, cut)
}

#[tokio::test]
async fn sighup_reloads_what_can_change_live_and_refuses_a_bad_file() {
    let dir = TempDir::new();
    let file = dir.0.join("herald.toml");
    let first_key = "key-one-0123456789abcdef";
    std::fs::write(&file, format!("[api]\nkeys = [\"{first_key}\"]\n")).unwrap();
    let served = serve_binary(
        &dir,
        &["--config", file.to_str().unwrap()],
        std::process::Stdio::piped(),
    );
    let mut child = served.child;
    // The node's log, collected as it is written, so the test can wait for a line.
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let reader = {
        let (log, stderr) = (log.clone(), child.stderr.take().unwrap());
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let mut l = log.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        })
    };
    let http = reqwest::Client::new();
    let publish = |key: &'static str| {
        let (http, url) = (http.clone(), format!("http://{}/api/publish", served.addr));
        async move {
            http.post(url)
                .bearer_auth(key)
                .json(&json!({"channel": "room:x", "data": 1}))
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }
    };
    let hup = |pid: u32| {
        std::process::Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap()
    };
    assert_eq!(
        publish(first_key).await,
        404,
        "namespace `room` not configured yet"
    );
    // A new key and a new namespace, live; `node_name` needs a restart and stays.
    let second_key = "key-two-0123456789abcdef";
    std::fs::write(
        &file,
        format!(
            "node_name = \"renamed\"\n[api]\nkeys = [\"{second_key}\"]\n[namespaces.room]\nhistory_size = 10\n"
        ),
    )
    .unwrap();
    assert!(hup(child.id()).success());
    eventually("the new key is accepted", || async {
        publish(second_key).await == 200
    })
    .await;
    assert_eq!(publish(first_key).await, 401, "the removed key is refused");
    // An invalid file is refused; the node keeps running on what it had.
    std::fs::write(&file, "[ws]\nheartbeat = \"typo\"\n").unwrap();
    assert!(hup(child.id()).success());
    eventually("the bad file is refused in the log", || {
        let seen = log.lock().unwrap().contains("configuration refused");
        async move { seen }
    })
    .await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "SIGHUP must not kill the node"
    );
    assert_eq!(publish(second_key).await, 200);
    unsafe_free_kill(&mut child);
    let _ = reader.join();
    let err = log.lock().unwrap().clone();
    assert!(
        err.contains("`node_name` changed but needs a restart"),
        "{err}"
    );
    assert!(
        err.contains("configuration refused, the running one stays"),
        "{err}"
    );
}
