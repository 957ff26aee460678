//! Presence webhooks and Redis presence keys (DESIGN §13, seed 004): a real HTTP receiver
//! in the test, real nodes — one on the memory broker, three on the real Redis, one of
//! them a child process that is SIGKILLed.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use futures_util::StreamExt;
use herald::config::Config;
use serde_json::{json, Value};

use crate::scale_out::{cluster_config, redis_url, serve_in_cluster_at};
use crate::support::*;

const SECRET: &str = "webhook-secret-for-tests";

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    headers: HeaderMap,
    body: String,
}

impl Received {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// An HTTP server on an ephemeral port that records every POST and answers each with
/// the next status of `script` (then 200).
#[derive(Clone)]
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    async fn start(script: Vec<u16>) -> Receiver {
        let got: Arc<Mutex<Vec<Received>>> = Arc::default();
        let script = Arc::new(Mutex::new(std::collections::VecDeque::from(script)));
        let (g, sc) = (got.clone(), script.clone());
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: String| {
                let (g, sc) = (g.clone(), sc.clone());
                async move {
                    g.lock().unwrap().push(Received { headers, body });
                    let code = sc.lock().unwrap().pop_front().unwrap_or(200);
                    StatusCode::from_u16(code).unwrap()
                }
            }),
        );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", l.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(l, app).await });
        Receiver { url, got }
    }

    fn all(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// The bodies of the events named `event` for `user`.
    fn events(&self, event: &str, user: &str) -> Vec<Value> {
        self.all()
            .iter()
            .map(Received::json)
            .filter(|v| v["event"] == event && v["user_id"] == user)
            .collect()
    }

    async fn wait_for(&self, event: &str, user: &str, n: usize) {
        let arrived = poll_until(WAIT, || async { self.events(event, user).len() >= n });
        assert!(
            arrived.await,
            "{n} × {event} for {user}; got {:?}",
            self.all().iter().map(Received::json).collect::<Vec<_>>()
        );
    }
}

fn hooked(c: &mut Config, url: &str, events: &[&str]) {
    c.webhooks.url = url.to_owned();
    c.webhooks.secret = SECRET.to_owned();
    c.webhooks.events = events.iter().map(|e| (*e).to_owned()).collect();
}

/// The signature check a receiver makes, written from the contract (not herald's code):
/// `t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`, t within a minute of now.
fn signed(r: &Received) -> bool {
    let sig = r.header("x-herald-signature");
    let Some((t, v1)) = sig
        .strip_prefix("t=")
        .and_then(|rest| rest.split_once(",v1="))
    else {
        return false;
    };
    let Ok(t) = t.parse::<u64>() else {
        return false;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, SECRET.as_bytes());
    let tag = aws_lc_rs::hmac::sign(&key, format!("{t}.{}", r.body).as_bytes());
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    now.abs_diff(t) <= 60 && hex == v1
}

#[tokio::test]
async fn one_node_reports_each_user_once_after_the_grace_signed() {
    let hook = Receiver::start(Vec::new()).await;
    let s = TestServer::start_with(|c| {
        hooked(
            c,
            &hook.url,
            &[
                "user_online",
                "user_offline",
                "connection_open",
                "connection_close",
            ],
        );
        c.presence.grace_ms = 800;
    })
    .await;
    let (a1, _) = s.connect("alice").await;
    let (a2, _) = s.connect("alice").await;
    let _api = s.connect_backend().await;
    hook.wait_for("user_online", "alice", 1).await;
    hook.wait_for("connection_open", "alice", 2).await;
    // A reload: both tabs close and one comes back within the grace.
    drop((a1, a2));
    hook.wait_for("connection_close", "alice", 2).await;
    let (a3, _) = s.connect("alice").await;
    hook.wait_for("connection_open", "alice", 3).await;
    drop(a3);
    let closed = std::time::SystemTime::now();
    hook.wait_for("user_offline", "alice", 1).await;
    let waited = closed.elapsed().unwrap();
    assert!(
        waited >= Duration::from_millis(700),
        "offline only after the grace: {waited:?}"
    );
    assert_eq!(
        hook.events("user_online", "alice").len(),
        1,
        "the reload was not news"
    );
    assert_eq!(hook.events("user_offline", "alice").len(), 1);
    let all = hook.all();
    assert!(
        all.iter().all(|r| r.json()["user_id"] != "api"),
        "a backend is not a person coming and going"
    );
    let node = s.node().app.hub.node.clone();
    for r in &all {
        let v = r.json();
        assert!(
            signed(r),
            "signature of {v} ({:?})",
            r.header("x-herald-signature")
        );
        assert_eq!(r.header("x-herald-event"), v["event"], "{v}");
        assert_eq!(r.header("content-type"), "application/json");
        assert!(!r.header("x-herald-delivery").is_empty());
        assert_eq!(v["node"], node.as_str());
        assert!(
            v["at"].as_i64().is_some_and(|t| t > 1_700_000_000_000),
            "{v}"
        );
        let is_conn = v["event"].as_str().unwrap().starts_with("connection_");
        assert_eq!(v["conn_id"].is_string(), is_conn, "{v}");
    }
    // In the order they happened.
    let order: Vec<Value> = all.iter().map(|r| r.json()["event"].clone()).collect();
    assert_eq!(order.first(), Some(&json!("connection_open")));
    assert_eq!(order.last(), Some(&json!("user_offline")));
    let st = s.stats().await;
    assert_eq!(st["webhooks"]["sent"], all.len(), "{st}");
    s.shutdown().await;
}

#[tokio::test]
async fn a_failing_receiver_is_retried_and_a_refusing_one_is_not() {
    // Two 503s, then taken; then a 400 for the next event, final.
    let hook = Receiver::start(vec![503, 503, 200, 400]).await;
    let s = TestServer::start_with(|c| hooked(c, &hook.url, &["user_online"])).await;
    let (_a, _) = s.connect("alice").await;
    let arrived = poll_until(WAIT, || async { hook.all().len() >= 3 });
    assert!(arrived.await, "three attempts: {:?}", hook.all());
    let tries = hook.all();
    let ids: Vec<&str> = tries
        .iter()
        .map(|r| r.header("x-herald-delivery"))
        .collect();
    assert!(
        ids.iter().all(|i| *i == ids[0]),
        "one delivery id for the retries: {ids:?}"
    );
    assert!(tries.iter().all(signed), "every attempt signed afresh");
    let (_b, _) = s.connect("bob").await;
    hook.wait_for("user_online", "bob", 1).await;
    let counted = poll_until(WAIT, || async {
        let w = &s.stats().await["webhooks"];
        w["sent"] == 1 && w["retries"] == 2 && w["failed"] == 1
    });
    assert!(counted.await, "{}", s.stats().await["webhooks"]);
    // A refusal is final: no second attempt for bob.
    assert_eq!(hook.events("user_online", "bob").len(), 1);
    let text = s
        .http
        .get(format!("http://{}/metrics", s.addr))
        .bearer_auth(&s.api_key)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("herald_webhook_retries_total 2"), "{text}");
    s.shutdown().await;
}

#[tokio::test]
async fn a_receiver_that_never_answers_fills_the_queue_and_the_rest_are_dropped_counted() {
    // Accepts connections and never answers a byte.
    let stuck = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", stuck.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut keep = Vec::new();
        while let Ok((tcp, _)) = stuck.accept().await {
            keep.push(tcp);
        }
    });
    let s = TestServer::start_with(|c| {
        hooked(c, &url, &["connection_open"]);
        c.webhooks.queue = 2;
        c.webhooks.timeout_ms = 60_000;
    })
    .await;
    let mut conns = Vec::new();
    for i in 0..6 {
        conns.push(s.connect(&format!("u{i}")).await.0);
    }
    // One in flight, two queued, three dropped; the node serves on meanwhile.
    let dropped = poll_until(WAIT, || async {
        s.stats().await["webhooks"]["dropped"] == 3
    });
    assert!(dropped.await, "{}", s.stats().await["webhooks"]);
    let (status, _) = s.publish(json!({"user": "u0", "data": "still here"})).await;
    assert_eq!(status, 200);
    assert_eq!(next_pub(&mut conns[0]).await["data"], "still here");
    s.shutdown().await;
    held.abort();
}

async fn presence_messages(prefix: &str) -> Arc<Mutex<Vec<Value>>> {
    let client = redis::Client::open(redis_url()).unwrap();
    let mut sub = client.get_async_pubsub().await.unwrap();
    sub.subscribe(format!("{prefix}:presence")).await.unwrap();
    let got: Arc<Mutex<Vec<Value>>> = Arc::default();
    let g = got.clone();
    tokio::spawn(async move {
        let mut stream = sub.into_on_message();
        while let Some(m) = stream.next().await {
            let text: String = m.get_payload().unwrap_or_default();
            g.lock()
                .unwrap()
                .push(serde_json::from_str(&text).unwrap_or(Value::Null));
        }
    });
    got
}

async fn exists(prefix: &str, user: &str) -> bool {
    let client = redis::Client::open(redis_url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("EXISTS")
        .arg(format!("{prefix}:online:{user}"))
        .query_async::<i64>(&mut c)
        .await
        .unwrap()
        == 1
}

#[tokio::test]
async fn each_user_event_is_sent_once_per_cluster_and_kept_in_redis() {
    let hook = Receiver::start(Vec::new()).await;
    let prefix = format!("herald-it-{:08x}", rand::random::<u32>());
    let said = presence_messages(&prefix).await;
    let url = redis_url();
    let mut nodes = Vec::new();
    for _ in 0..2 {
        nodes.push(
            TestServer::start_with(|c| {
                cluster_config(c, &url, &prefix);
                hooked(c, &hook.url, &["user_online", "user_offline"]);
                c.presence.redis_keys = true;
                c.presence.grace_ms = 500;
            })
            .await,
        );
    }
    // The third is a child process, so it can be SIGKILLed.
    let dir = TempDir::new();
    let env = [
        ("HERALD_WEBHOOKS__URL", hook.url.as_str()),
        ("HERALD_WEBHOOKS__SECRET", SECRET),
        ("HERALD_PRESENCE__REDIS_KEYS", "true"),
        ("HERALD_PRESENCE__GRACE_MS", "500"),
    ];
    let mut doomed = serve_in_cluster_at(&dir, &url, &prefix, &env);
    // alice on two nodes at once, bob on the doomed one.
    let (a0, _) = nodes[0].connect("alice").await;
    let (a1, _) = nodes[1].connect("alice").await;
    let bob_url = format!(
        "ws://{}/ws?token={}",
        doomed.addr,
        mint(&doomed.secret, "bob")
    );
    let (mut bob, _) = tokio_tungstenite::connect_async(bob_url.as_str())
        .await
        .unwrap();
    let _ = next_json(&mut bob).await; // connected
    hook.wait_for("user_online", "alice", 1).await;
    hook.wait_for("user_online", "bob", 1).await;
    assert!(exists(&prefix, "alice").await && exists(&prefix, "bob").await);
    // alice leaves one node: still online in the cluster, nothing to report.
    drop(a0);
    let left = poll_until(WAIT, || async {
        nodes[0].stats().await["node"]["users"] == 0
    });
    assert!(left.await);
    drop(a1);
    hook.wait_for("user_offline", "alice", 1).await;
    assert!(
        !exists(&prefix, "alice").await,
        "the key goes with the user"
    );
    // bob's node dies: a survivor's heartbeat clears it, and reports bob once.
    let _ = doomed.child.kill();
    let _ = doomed.child.wait();
    hook.wait_for("user_offline", "bob", 1).await;
    assert!(!exists(&prefix, "bob").await);
    // Duplicates from the other nodes would come in the same sync round (0.5 s): give
    // two rounds for them to show.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    for (event, user) in [
        ("user_online", "alice"),
        ("user_offline", "alice"),
        ("user_online", "bob"),
        ("user_offline", "bob"),
    ] {
        assert_eq!(
            hook.events(event, user).len(),
            1,
            "{event} {user}: {:?}",
            hook.all()
        );
        let on_redis = said
            .lock()
            .unwrap()
            .iter()
            .filter(|v| v["event"] == event && v["user_id"] == user)
            .count();
        assert_eq!(on_redis, 1, "{event} {user} on {prefix}:presence");
    }
    assert!(hook.all().iter().all(signed));
    for s in nodes {
        s.shutdown().await;
    }
}

#[test]
fn webhooks_that_cannot_work_are_config_errors() {
    let mut cfg = Config::default();
    cfg.webhooks.url = "ftp://hooks.example/x".into();
    cfg.webhooks.events = vec!["user_online".into(), "user_gone".into()];
    let err = cfg.validate().unwrap_err().to_string();
    assert!(err.contains("webhooks.url"), "{err}");
    assert!(err.contains("webhooks.secret"), "no secret: {err}");
    assert!(err.contains("user_gone"), "{err}");
    cfg.webhooks.url = "not a url".into();
    assert!(cfg
        .validate()
        .unwrap_err()
        .to_string()
        .contains("webhooks.url"));
    cfg.webhooks.url = "https://hooks.example/herald".into();
    cfg.webhooks.secret = "short".into();
    cfg.webhooks.events = vec!["connection_close".into()];
    assert!(cfg
        .validate()
        .unwrap_err()
        .to_string()
        .contains("webhooks.secret"));
    cfg.webhooks.secret = SECRET.into();
    cfg.webhooks.queue = 0;
    assert!(cfg
        .validate()
        .unwrap_err()
        .to_string()
        .contains("webhooks.queue"));
    cfg.webhooks.queue = 10;
    assert!(cfg.validate().is_ok());
    cfg.presence.redis_keys = true;
    let err = cfg.validate().unwrap_err().to_string();
    assert!(err.contains("presence.redis_keys"), "memory broker: {err}");
    cfg.broker.url = "redis://127.0.0.1:6379".into();
    assert!(cfg.validate().is_ok());
}
