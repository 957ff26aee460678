//! Limits and timers: slow consumers, inbound rate, heartbeats, idle and token expiry,
//! slowloris.

use std::time::Duration;

use futures_util::StreamExt;
use herald::auth::jwt::now_unix;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

#[tokio::test]
async fn slow_consumer_is_closed_with_4000_while_readers_get_everything() {
    let s = TestServer::start_with(|c| c.ws.queue_messages = 16).await;
    let (mut stalled, _) = s.connect("stalled").await;
    let (mut reader, _) = s.connect("reader").await;
    let total = 400;
    let reading = tokio::spawn(async move {
        let mut n = 0;
        while n < total {
            let m = next_json(&mut reader).await;
            assert_eq!(m["data"]["n"], n, "in order, none lost");
            n += 1;
        }
        (n, reader)
    });
    let big = "x".repeat(64 * 1024);
    for n in 0..total {
        // The publisher never waits on the stalled client: each call returns at once.
        let (status, _) = s
            .publish(json!({"all": true, "data": {"n": n, "pad": big}}))
            .await;
        assert_eq!(status, 200);
    }
    let (received, _reader) = reading.await.unwrap();
    assert_eq!(received, total);
    let stats = s.stats().await;
    assert_eq!(stats["slow_consumer_disconnects"], 1, "{stats}");
    // The stalled client finally reads: what was written, then close 4000.
    assert_eq!(close_code(&mut stalled).await, Some(4000));
    eventually("the slow consumer is unregistered", || async {
        s.node().app.hub.registry.connections() == 1
    })
    .await;
    s.shutdown().await;
}

#[tokio::test]
async fn flood_gets_rate_limited_then_closed_with_1008() {
    let s = TestServer::start_with(|c| {
        c.ws.rate_per_s = 5;
        c.ws.rate_burst = 5;
        c.ws.rate_limit_close_after_s = 2;
    })
    .await;
    let (mut ws, _) = s.connect("1").await;
    // The server's streak starts at its first refusal, after this instant.
    let flood_began = tokio::time::Instant::now();
    for _ in 0..10 {
        send_text(&mut ws, r#"{"type":"ping"}"#).await;
    }
    let mut pongs = 0;
    let limited = loop {
        let m = next_json(&mut ws).await;
        match m["type"].as_str() {
            Some("pong") => pongs += 1,
            Some("error") => break m,
            _ => panic!("{m}"),
        }
    };
    assert_eq!(limited["code"], "rate_limited");
    assert!(pongs >= 5);
    // Keep flooding: after rate_limit_close_after_s the connection is closed with 1008.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    let (mut tx, mut rx) = ws.split();
    let flood = tokio::spawn(async move {
        use futures_util::SinkExt;
        while tokio::time::Instant::now() < deadline {
            if tx.send(Message::text(r#"{"type":"ping"}"#)).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let code = loop {
        match tokio::time::timeout(WAIT, rx.next()).await.unwrap() {
            Some(Ok(Message::Close(f))) => break f.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            _ => break None,
        }
    };
    assert_eq!(code, Some(1008));
    assert!(
        flood_began.elapsed() >= Duration::from_secs(2),
        "closed {:?} into the flood, before rate_limit_close_after_s",
        flood_began.elapsed()
    );
    flood.abort();
    s.shutdown().await;
}

#[tokio::test]
async fn server_pings_and_idle_clients_are_closed() {
    let s = TestServer::start_with(|c| {
        c.ws.heartbeat_s = 1;
        c.ws.idle_timeout_s = 2;
    })
    .await;
    let (mut ws, hello) = s.connect("1").await;
    assert_eq!(hello["heartbeat_s"], 1);
    // Not reading means not answering pings: after ~2 s of silence we are closed.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let mut saw_ping = false;
    let code = loop {
        match tokio::time::timeout(WAIT, ws.next()).await.unwrap() {
            Some(Ok(Message::Ping(_))) => saw_ping = true,
            Some(Ok(Message::Close(f))) => break f.map(|f| u16::from(f.code)),
            Some(Ok(other)) => panic!("{other:?}"),
            _ => break None,
        }
    };
    assert!(saw_ping, "the server sent WebSocket pings");
    assert_eq!(code, Some(1001));
    s.shutdown().await;
}

#[tokio::test]
async fn answering_pings_keeps_a_connection_alive() {
    let s = TestServer::start_with(|c| {
        c.ws.heartbeat_s = 1;
        c.ws.idle_timeout_s = 2;
    })
    .await;
    let (mut ws, _) = s.connect("1").await;
    // Reading lets tungstenite answer each Ping with a Pong.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(4500);
    while let Ok(m) = tokio::time::timeout_at(deadline, ws.next()).await {
        assert!(matches!(m, Some(Ok(Message::Ping(_)))), "{m:?}");
    }
    send_text(&mut ws, r#"{"type":"ping"}"#).await;
    assert_eq!(next_json(&mut ws).await["type"], "pong");
    s.shutdown().await;
}

#[tokio::test]
async fn expired_token_closes_with_4002_unless_refreshed() {
    let s = TestServer::start_with(|c| c.auth.leeway_s = 0).await;
    let short = s.token_with("1", |c| c.exp = now_unix() + 2);
    let (mut expiring, _) = s.connect_token(&short).await;
    let (mut refreshed, _) = s.connect_token(&short).await;
    let fresh = s.token_with("1", |c| c.exp = now_unix() + 600);
    send_text(
        &mut refreshed,
        &json!({"type": "refresh", "token": fresh}).to_string(),
    )
    .await;
    // A token for someone else is refused and changes nothing.
    send_text(
        &mut refreshed,
        &json!({"type": "refresh", "token": s.token("2")}).to_string(),
    )
    .await;
    assert_eq!(next_json(&mut refreshed).await["code"], "forbidden");
    assert_eq!(close_code(&mut expiring).await, Some(4002));
    send_text(&mut refreshed, r#"{"type":"ping"}"#).await;
    assert_eq!(
        next_json(&mut refreshed).await["type"],
        "pong",
        "the refreshed connection is still up"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_but_not_counted_as_a_refusal() {
    let s = TestServer::start_with(|c| c.limits.handshake_timeout_s = 1).await;
    let mut tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    // The answer, then the close of the idle connection after the head-read timeout.
    loop {
        let n = tokio::time::timeout(WAIT, tcp.read(&mut buf))
            .await
            .expect("closed in time")
            .unwrap_or(0);
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    // A connection that never sends a head still is a refusal (the control); both
    // are counted, if at all, before their sockets close.
    let mut silent = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let n = tokio::time::timeout(WAIT, silent.read(&mut buf))
        .await
        .expect("dropped in time")
        .unwrap_or(0);
    assert!(n == 0 || buf.starts_with(b"HTTP/1.1 408"));
    eventually("the silent one is counted", || async {
        s.stats().await["refused"]["handshake_timeout"] != 0
    })
    .await;
    assert_eq!(
        s.stats().await["refused"]["handshake_timeout"],
        1,
        "only the silent one"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn slowloris_upgrade_is_dropped_after_the_handshake_timeout() {
    let s = TestServer::start_with(|c| c.limits.handshake_timeout_s = 1).await;
    // The server's clock starts at accept, after this instant.
    let started = tokio::time::Instant::now();
    let mut tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    tcp.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let n = tokio::time::timeout(WAIT, tcp.read(&mut buf))
        .await
        .expect("dropped in time")
        .unwrap_or(0);
    // hyper may answer 408 before closing; either way the connection ends.
    if n > 0 {
        assert!(
            buf.starts_with(b"HTTP/1.1 408"),
            "{}",
            String::from_utf8_lossy(&buf[..n])
        );
        let rest = tokio::time::timeout(WAIT, tcp.read(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0);
        assert_eq!(rest, 0);
    }
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "dropped after {:?}, before the handshake timeout",
        started.elapsed()
    );
    eventually("the drop is counted", || async {
        s.stats().await["refused"]["handshake_timeout"] == 1
    })
    .await;
    s.shutdown().await;
}
