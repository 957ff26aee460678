//! Lifecycle: no leaks across rapid connect/close, graceful shutdown with 1001.

use std::process::{Command, Stdio};
use std::time::Duration;

use futures_util::SinkExt;

use crate::support::*;

#[tokio::test]
async fn rapid_connect_close_cycles_leave_nothing_behind() {
    let s = TestServer::start().await;
    let hub = s.node().app.hub.clone();
    let tracker = s.node().app.tracker.clone();
    let baseline_tasks = tracker.len();
    let token = s.token("cycler");
    for i in 0..1000 {
        let (mut ws, _) = tokio_tungstenite::connect_async(s.ws_url(&token))
            .await
            .unwrap();
        if i % 2 == 0 {
            ws.close(None).await.unwrap(); // polite close
        } // else: just drop the TCP connection
    }
    eventually("registry back to empty", || async {
        hub.registry.connections() == 0 && hub.registry.users() == 0
    })
    .await;
    eventually("caps released", || async { hub.registry.admitted() == 0 }).await;
    eventually("tasks back to baseline", || async {
        tracker.len() <= baseline_tasks
    })
    .await;
    s.shutdown().await;
}

#[tokio::test]
async fn concurrent_connects_and_closes_do_not_race() {
    let s = TestServer::start().await;
    let hub = s.node().app.hub.clone();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let url = s.ws_url(&s.token(&format!("u{}", i % 3)));
        tasks.push(tokio::spawn(async move {
            for _ in 0..25 {
                let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
                let _ = ws
                    .send(tokio_tungstenite::tungstenite::Message::text("ping"))
                    .await;
                drop(ws);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    eventually("registry empty", || async {
        hub.registry.connections() == 0 && hub.registry.admitted() == 0
    })
    .await;
    s.shutdown().await;
}

#[tokio::test]
async fn in_process_shutdown_closes_clients_with_1001() {
    let s = TestServer::start().await;
    let (mut a, _) = s.connect("1").await;
    let (mut b, _) = s.connect("2").await;
    let stopping = tokio::spawn(s.shutdown());
    assert_eq!(close_code(&mut a).await, Some(1001));
    assert_eq!(close_code(&mut b).await, Some(1001));
    tokio::time::timeout(WAIT, stopping)
        .await
        .expect("shutdown is bounded")
        .unwrap();
}

#[tokio::test]
async fn sigterm_closes_clients_with_1001_and_exits() {
    let dir = TempDir::new();
    let Served {
        mut child,
        addr,
        secret,
    } = serve_binary(&dir, &[], Stdio::null());
    let token = mint(&secret, "1");
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws?token={token}"))
        .await
        .unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "connected");
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(close_code(&mut ws).await, Some(1001));
    let exited = tokio::task::spawn_blocking(move || {
        for _ in 0..150 {
            if let Ok(Some(st)) = child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        None
    })
    .await
    .unwrap();
    assert!(exited.expect("exits within 15 s").success());
}

#[tokio::test]
async fn stats_and_health_have_the_documented_shape() {
    let s = TestServer::start().await;
    let (_ws, _) = s.connect("1").await;
    let (_ws2, _) = s.connect("1").await;
    s.publish(serde_json::json!({"all": true, "data": 1})).await;
    let st = s.stats().await;
    assert_eq!(st["node"]["connections"], 2);
    assert_eq!(st["node"]["users"], 1);
    assert_eq!(st["cluster"]["connections"], 2);
    assert_eq!(st["cluster"]["nodes"], 1);
    assert_eq!(st["cluster"]["per_node"][0]["connections"], 2);
    assert_eq!(st["publications"], 1);
    assert_eq!(st["deliveries"], 2);
    // Frames were written (`connected`, the publication), so latency was recorded: the
    // quantiles are positive and ordered.
    let quantile = |q: &str| st["latency_ms"][q].as_f64().unwrap_or(f64::NAN);
    let (p50, p95, p99) = (quantile("p50"), quantile("p95"), quantile("p99"));
    assert!(
        0.0 < p50 && p50 <= p95 && p95 <= p99,
        "{}",
        st["latency_ms"]
    );
    let res = s
        .http
        .get(format!("http://{}/healthz", s.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    assert_eq!(
        res.json::<serde_json::Value>().await.unwrap(),
        serde_json::json!({"status": "ok"})
    );
    let res = s
        .http
        .get(format!("http://{}/readyz", s.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    assert_eq!(
        res.json::<serde_json::Value>().await.unwrap(),
        serde_json::json!({"status": "ready", "broker": "ok", "store": "ok"})
    );
    let res = s
        .http
        .get(format!("http://{}/nope", s.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 404);
    assert_eq!(
        res.json::<serde_json::Value>().await.unwrap()["error"],
        "not_found"
    );
    let res = s
        .http
        .get(format!("http://{}/api/stats", s.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 401);
    s.shutdown().await;
}

#[tokio::test]
async fn an_upgraded_connection_is_one_task_not_two() {
    // After the 101 the HTTP connection task must end (it held hyper's buffers); the
    // WebSocket connection then lives in exactly one tracked task (plus its writer).
    let s = TestServer::start().await;
    let tracker = s.node().app.tracker.clone();
    let mut clients = Vec::new();
    for i in 0..20 {
        clients.push(s.connect(&format!("u{i}")).await.0);
    }
    eventually("one tracked task per connection", || async {
        tracker.len() == 20
    })
    .await;
    drop(clients);
    s.shutdown().await;
}
