//! HTTP: half-sent requests (DESIGN §12, slowloris and slow POST).

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::{hostile_config, hostile_node};
use crate::support::*;

/// Reads until the server ends the connection; returns how long that took and the bytes.
async fn read_until_dropped(
    tcp: &mut (impl AsyncRead + Unpin),
    within: Duration,
) -> (Duration, Vec<u8>) {
    let started = Instant::now();
    let mut got = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        match tokio::time::timeout_at(started + within, tcp.read(&mut chunk)).await {
            Err(_) => panic!(
                "still open after {within:?}; received {:?}",
                String::from_utf8_lossy(&got)
            ),
            Ok(Ok(0) | Err(_)) => return (started.elapsed(), got),
            Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A dropped half-sent head: nothing, or hyper's bare 408, then the end.
fn assert_dropped_head(case: &str, got: &[u8], elapsed: Duration) {
    assert!(
        got.is_empty() || got.starts_with(b"HTTP/1.1 408"),
        "{case}: {}",
        String::from_utf8_lossy(got)
    );
    assert!(
        elapsed >= Duration::from_millis(800),
        "{case}: dropped after limits.handshake_timeout_s (1 s), not at once: {elapsed:?}"
    );
}

#[tokio::test]
async fn hostile_http_half_sent_upgrade_is_dropped() {
    let s = hostile_node().await;
    let head = format!(
        "GET /ws?token={} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\n",
        s.token("slow"),
        s.addr
    );
    // Stalled: a head that stops half way.
    let mut tcp = TcpStream::connect(s.addr).await.unwrap();
    tcp.write_all(head.as_bytes()).await.unwrap();
    let (elapsed, got) = read_until_dropped(&mut tcp, Duration::from_secs(4)).await;
    assert_dropped_head("stalled upgrade head", &got, elapsed);

    // Dripped: a header byte every 100 ms keeps bytes coming but never ends the head.
    let tcp = TcpStream::connect(s.addr).await.unwrap();
    let (mut rd, mut wr) = tcp.into_split();
    wr.write_all(head.as_bytes()).await.unwrap();
    let drip = tokio::spawn(async move {
        for b in b"Connection: Upgrade".iter().cycle() {
            if wr.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        std::future::pending::<()>().await;
    });
    let (elapsed, got) = read_until_dropped(&mut rd, Duration::from_secs(4)).await;
    assert_dropped_head("dripped upgrade head", &got, elapsed);
    drip.abort();
    eventually("both drops are counted", || async {
        s.stats().await["refused"]["handshake_timeout"] == 2
    })
    .await;
    s.shutdown().await;
}

/// DESIGN §12 "HTTP request body arrival (slow POST)", shortened for the test.
const BODY_TIMEOUT: Duration = Duration::from_secs(1);

async fn slow_body_node() -> TestServer {
    TestServer::start_with(|c| {
        hostile_config(c);
        c.limits.http_body_timeout_s = BODY_TIMEOUT.as_secs();
    })
    .await
}

/// Sends the head of `POST /api/publish` announcing 100 bytes of body, and only 10.
async fn half_sent_publish(s: &TestServer, auth: Option<&str>) -> TcpStream {
    let mut tcp = TcpStream::connect(s.addr).await.unwrap();
    let auth = auth.map_or(String::new(), |k| format!("Authorization: Bearer {k}\r\n"));
    let head = format!(
        "POST /api/publish HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n{auth}Content-Length: 100\r\n\r\n",
        s.addr
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(br#"{"all":tru"#).await.unwrap();
    tcp
}

/// Reads one HTTP response (head and `Content-Length` body) within `within`: its
/// status, its JSON body and how long it took.
async fn read_response(tcp: &mut TcpStream, within: Duration) -> (u16, Value, Duration) {
    let started = Instant::now();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    let (head_end, body_len) = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..i]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            if buf.len() >= i + 4 + len {
                break (i, len);
            }
        }
        let n = tokio::time::timeout_at(started + within, tcp.read(&mut chunk))
            .await
            .unwrap_or_else(|_| panic!("no response within {within:?}"))
            .unwrap_or(0);
        assert!(
            n > 0,
            "closed without a response: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let status = std::str::from_utf8(&buf[9..12]).unwrap().parse().unwrap();
    let body =
        serde_json::from_slice(&buf[head_end + 4..head_end + 4 + body_len]).unwrap_or(Value::Null);
    (status, body, started.elapsed())
}

#[tokio::test]
async fn hostile_http_slow_body_without_credentials_is_401_and_closed() {
    let s = slow_body_node().await;
    let mut tcp = half_sent_publish(&s, None).await;
    // Credentials are checked before the body is read: the answer does not wait for it.
    let (status, body, _) = read_response(&mut tcp, Duration::from_secs(3)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("unauthorized")),
        "{body}"
    );
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    let (_, rest) = read_until_dropped(&mut tcp, Duration::from_secs(3)).await;
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    s.shutdown().await;
}

#[tokio::test]
async fn hostile_http_slow_body_with_a_key_is_408_and_closed() {
    let s = slow_body_node().await;
    let mut tcp = half_sent_publish(&s, Some(&s.api_key)).await;
    let (status, body, took) = read_response(&mut tcp, BODY_TIMEOUT + Duration::from_secs(5)).await;
    assert_eq!(status, 408, "{body}");
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{body}"
    );
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(
        took >= BODY_TIMEOUT / 2,
        "answered after the body timeout, not before it: {took:?}"
    );
    let (_, rest) = read_until_dropped(&mut tcp, Duration::from_secs(3)).await;
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    s.shutdown().await;
}

/// A request head of `cookie_bytes` of cookie, complete with its blank line.
fn head_with_cookie(s: &TestServer, cookie_bytes: usize) -> Vec<u8> {
    let mut head = format!("GET /healthz HTTP/1.1\r\nHost: {}\r\nCookie: ", s.addr).into_bytes();
    head.extend(std::iter::repeat_n(b'c', cookie_bytes));
    head.extend(b"\r\n\r\n");
    head
}

async fn assert_json_431(case: &str, tcp: &mut TcpStream) {
    let (status, body, _) = read_response(tcp, Duration::from_secs(5)).await;
    assert_eq!(status, 431, "{case}: {body}");
    assert_eq!(body["error"], "too_large", "{case}: {body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("32768")),
        "{case}: {body}"
    );
    let (_, rest) = read_until_dropped(tcp, Duration::from_secs(3)).await;
    assert!(
        rest.is_empty(),
        "{case}: {}",
        String::from_utf8_lossy(&rest)
    );
}

#[tokio::test]
async fn hostile_http_oversized_heads_get_a_json_431() {
    let s = hostile_node().await;
    // Just over the limit, far over hyper's own buffer, and one that never ends: each
    // on a fresh connection, each answered 431 with our JSON body and closed.
    for (case, cookie) in [("40 KiB", 40 * 1024), ("1 MiB", 1 << 20)] {
        let mut tcp = TcpStream::connect(s.addr).await.unwrap();
        // The guard answers before the client is done sending; a reset write is fine.
        let _ = tcp.write_all(&head_with_cookie(&s, cookie)).await;
        assert_json_431(case, &mut tcp).await;
    }
    // A keep-alive head over the limit after an ordinary request on the same connection.
    let mut tcp = TcpStream::connect(s.addr).await.unwrap();
    tcp.write_all(&head_with_cookie(&s, 100)).await.unwrap();
    let (status, _, _) = read_response(&mut tcp, Duration::from_secs(5)).await;
    assert_eq!(status, 200);
    tcp.write_all(&head_with_cookie(&s, 40 * 1024))
        .await
        .unwrap();
    assert_json_431("keep-alive 40 KiB", &mut tcp).await;
    // Just under the limit passes.
    let mut tcp = TcpStream::connect(s.addr).await.unwrap();
    tcp.write_all(&head_with_cookie(&s, 30 * 1024))
        .await
        .unwrap();
    let (status, _, _) = read_response(&mut tcp, Duration::from_secs(5)).await;
    assert_eq!(status, 200);
    s.shutdown().await;
}
