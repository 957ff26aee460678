//! The hostile-input battery (DESIGN §3 close codes, §12 limits): every hostile input gets
//! its documented answer, while a canary client on another connection misses nothing, the
//! node never panics and its memory comes back.
//!
//! Each case is a small function that opens its own connection, so a case can run alone
//! (the `hostile_*` group tests) or in sequence against one node under a canary
//! (`hostile_battery_canary_misses_nothing`). The cases live in `frames`, `json`, `floods`
//! and `http`; `wire` reads and floods raw sockets.

mod floods;
mod frames;
mod http;
mod json;
mod wire;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use herald::config::{Config, NamespaceConfig, PublishRule};
use herald::ws::frame::OP_TEXT;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;
use floods::{
    control_frame_floods, empty_continuation_flood_is_rate_limited_then_1008, message_floods,
    ping_flood_is_rate_limited_then_1008, pong_flood_is_rate_limited_then_1008,
};
use frames::frame_cases;
use json::json_cases;
use wire::{raw, Ended, Frames, Got};

/// `ws.max_message_bytes` as shipped (DESIGN §12: 64 KiB); the battery keeps the default.
const MAX_MESSAGE: usize = 64 * 1024;
/// `ws.max_subscriptions` on the hostile node (small, so the flood is quick).
const MAX_SUBSCRIPTIONS: usize = 10;

/// One node for every case: short timers and small limits so each case is quick.
fn hostile_config(c: &mut Config) {
    c.ws.heartbeat_s = 1;
    c.ws.idle_timeout_s = 2;
    c.ws.max_subscriptions = MAX_SUBSCRIPTIONS;
    c.ws.rate_per_s = 10;
    c.ws.rate_burst = 20;
    c.ws.rate_limit_close_after_s = 2;
    c.limits.handshake_timeout_s = 1;
    // Clients may publish on `chat:*`, so the publish flood really publishes.
    c.namespaces.insert(
        "chat".into(),
        NamespaceConfig {
            publish: PublishRule::Any,
            ..NamespaceConfig::default()
        },
    );
}

async fn hostile_node() -> TestServer {
    assert_eq!(
        Config::default().ws.max_message_bytes,
        MAX_MESSAGE,
        "DESIGN §12 default"
    );
    TestServer::start_with(hostile_config).await
}

// ---------------------------------------------------------------------------------------
// The group tests: each group alone on a fresh node.

#[tokio::test]
async fn hostile_frames() {
    let s = hostile_node().await;
    frame_cases(&s).await;
    s.shutdown().await;
}

#[tokio::test]
async fn hostile_json() {
    let s = hostile_node().await;
    json_cases(&s).await;
    s.shutdown().await;
}

#[tokio::test]
async fn hostile_floods() {
    let s = hostile_node().await;
    message_floods(&s).await;
    s.shutdown().await;
}

#[tokio::test]
async fn hostile_flood_of_pings_is_rate_limited_then_1008() {
    let s = hostile_node().await;
    ping_flood_is_rate_limited_then_1008(&s).await;
    s.shutdown().await;
}

#[tokio::test]
async fn hostile_flood_of_pongs_is_rate_limited_then_1008() {
    let s = hostile_node().await;
    pong_flood_is_rate_limited_then_1008(&s).await;
    s.shutdown().await;
}

#[tokio::test]
async fn hostile_flood_of_empty_continuations_is_rate_limited_then_1008() {
    let s = hostile_node().await;
    empty_continuation_flood_is_rate_limited_then_1008(&s).await;
    s.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Idle: only complete frames (and Pongs) count as activity (DESIGN §12).

#[tokio::test]
async fn hostile_idle_drip_is_closed() {
    let s = hostile_node().await;
    let r = raw(&s, "dripper").await;
    let (rd, mut wr) = r.tcp.into_split();
    // One byte a second of a frame that needs 1,008: it never finishes.
    let frame = masked(true, OP_TEXT, &[b'a'; 1000]);
    let drip = tokio::spawn(async move {
        for b in frame {
            if wr.write_all(&[b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        std::future::pending::<()>().await;
    });
    let mut frames = Frames::new(rd);
    // idle_timeout_s = 2, checked each second: closed 2 to 3 s in; 8 s is generous.
    let deadline = Instant::now() + Duration::from_secs(8);
    let ended = loop {
        match tokio::time::timeout_at(deadline, frames.next()).await {
            Err(_) => break Ended::StillOpen,
            Ok(Got::Eof) => break Ended::Eof,
            Ok(Got::Close(c)) => break Ended::Close(c),
            Ok(Got::Text(t)) => assert!(t.contains(r#""type":"connected""#), "{t}"),
        }
    };
    drip.abort();
    assert_eq!(
        ended,
        Ended::Close(Some(1001)),
        "a dripped frame is not activity"
    );
    eventually("the dripper is unregistered", || async {
        s.node().app.hub.registry.connections() == 0
    })
    .await;
    s.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// The battery: everything above, in sequence, on one node, under a canary.

/// Panics on this test's thread (which runs every task of the node: a current-thread
/// runtime), counted by a hook. Tokio catches a task's panic, so without this a
/// connection task that panicked would go unnoticed.
static PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_panics_on_this_thread() {
    let me = std::thread::current().id();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().id() == me {
            PANICS.fetch_add(1, Relaxed);
        }
        previous(info);
    }));
}

/// A subscriber on `news` that collects every `n` published to it until `{"done":true}`.
async fn canary(s: &TestServer) -> tokio::task::JoinHandle<Vec<u64>> {
    let (mut ws, _) = s.connect("canary").await;
    send_text(&mut ws, r#"{"type":"subscribe","channel":"news"}"#).await;
    assert_eq!(next_json(&mut ws).await["type"], "subscribed");
    tokio::spawn(async move {
        let mut seen = Vec::new();
        loop {
            let msg = tokio::time::timeout(WAIT, ws.next())
                .await
                .expect("the canary hears something at least every 10 s")
                .expect("the canary's connection stays open")
                .expect("the canary's frames are fine");
            let v: Value = match msg {
                Message::Text(t) => serde_json::from_str(&t).unwrap(),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("the canary got {other:?}"),
            };
            assert_eq!(v["type"], "pub", "the canary got {v}");
            if v["data"]["done"] == true {
                return seen;
            }
            seen.push(v["data"]["n"].as_u64().expect("a numbered publication"));
        }
    })
}

/// Publishes `{"n": 0, 1, 2, …}` on `news` every 10 ms until `stop`; returns how many.
fn publisher(s: &TestServer, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    let (http, url, key) = (
        s.http.clone(),
        format!("http://{}/api/publish", s.addr),
        s.api_key.clone(),
    );
    tokio::spawn(async move {
        let mut n = 0u64;
        while !stop.load(Relaxed) {
            let res = http
                .post(&url)
                .bearer_auth(&key)
                .json(&json!({"channel": "news", "data": {"n": n}}))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status().as_u16(), 200, "publication {n}");
            n += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        n
    })
}

#[tokio::test]
async fn hostile_battery_canary_misses_nothing() {
    battery(true).await;
}

/// Every frame, JSON and message-flood case in sequence on one node while a canary on
/// `news` receives a numbered publication every 10 ms; then: the canary got every number
/// once and in order, nothing panicked, the node still serves, and memory came back.
async fn battery(with_control_floods: bool) {
    count_panics_on_this_thread();
    let s = hostile_node().await;
    let listening = canary(&s).await;
    let rss_before = rss_bytes();
    let stop = Arc::new(AtomicBool::new(false));
    let publishing = publisher(&s, stop.clone());

    frame_cases(&s).await;
    json_cases(&s).await;
    message_floods(&s).await;
    if with_control_floods {
        control_frame_floods(&s).await;
    }

    stop.store(true, Relaxed);
    let published = publishing.await.unwrap();
    assert_eq!(
        s.publish(json!({"channel": "news", "data": {"done": true}}))
            .await
            .0,
        200
    );
    let seen = listening.await.expect("the canary did not fail");
    assert!(published > 100, "the publisher kept going: {published}");
    assert_eq!(
        seen,
        (0..published).collect::<Vec<_>>(),
        "the canary got every number exactly once, in order"
    );

    // Still serving: health, and a fresh client.
    let (status, body) = s.get_json("/healthz").await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
    let (mut fresh, _) = s.connect("fresh").await;
    send_text(&mut fresh, r#"{"type":"ping"}"#).await;
    assert_eq!(next_json(&mut fresh).await, json!({"type": "pong"}));
    drop(fresh);
    eventually("every hostile connection is cleaned up", || async {
        s.node().app.hub.registry.connections() == 0
    })
    .await;

    // Memory comes back (freeing is asynchronous: poll for a while).
    let limit = rss_before + 20 * 1024 * 1024;
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut rss = rss_bytes();
    while rss > limit && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        rss = rss_bytes();
    }
    assert!(
        rss <= limit,
        "RSS {} MiB, started at {} MiB",
        rss >> 20,
        rss_before >> 20
    );
    assert_eq!(PANICS.load(Relaxed), 0, "a task of the node panicked");
    s.shutdown().await;
}
