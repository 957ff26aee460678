//! Scale-out (DESIGN §9): three nodes on ephemeral ports sharing the real Redis on this
//! machine (`REDIS_URL`, default `redis://127.0.0.1:6379`), each test under its own key
//! prefix. The outage test runs its own `redis-server` on a free port so it can kill it.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use herald::config::{Config, NamespaceConfig, PublishRule};
use serde_json::{json, Value};

use crate::support::*;

pub(crate) fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// The settings every node of one test cluster shares: Redis, a prefix of its own, one
/// signing secret, and two extra namespaces (`live` without history, `room` where
/// clients publish).
pub(crate) fn cluster_config(c: &mut Config, url: &str, prefix: &str) {
    c.broker.url = url.to_owned();
    c.broker.prefix = prefix.to_owned();
    c.auth.hmac_secret = Some(format!("{prefix}-secret-for-tests-only-0123456789"));
    c.namespaces.insert(
        "live".into(),
        NamespaceConfig {
            history_size: 0,
            ..NamespaceConfig::default()
        },
    );
    c.namespaces.insert(
        "lobby".into(),
        NamespaceConfig {
            presence: true,
            ..NamespaceConfig::default()
        },
    );
    c.namespaces.insert(
        "room".into(),
        NamespaceConfig {
            publish: PublishRule::Any,
            ..NamespaceConfig::default()
        },
    );
    c.namespaces.insert(
        "now".into(),
        NamespaceConfig {
            latest_on_subscribe: true,
            ..NamespaceConfig::default()
        },
    );
}

pub(crate) async fn cluster_at(url: &str, n: usize) -> Vec<TestServer> {
    let prefix = format!("herald-it-{:08x}", rand::random::<u32>());
    let mut nodes = Vec::new();
    for _ in 0..n {
        nodes.push(TestServer::start_with(|c| cluster_config(c, url, &prefix)).await);
    }
    for s in &nodes {
        let ready = poll_until(WAIT, || async {
            s.get_json("/readyz").await.1["broker"] == "ok"
        });
        assert!(ready.await, "node subscribed to the bus");
    }
    nodes
}

/// One more node for the cluster `like` belongs to.
async fn join_cluster(like: &TestServer) -> TestServer {
    join_cluster_with(like, |_| {}).await
}

/// One more node for `like`'s cluster whose history budget holds only a few publications.
async fn small_budget_node(like: &TestServer) -> TestServer {
    join_cluster_with(like, |c| c.limits.history_bytes = 2048).await
}

/// One more node for `like`'s cluster, with `f` applied to its settings.
async fn join_cluster_with(like: &TestServer, f: impl FnOnce(&mut Config)) -> TestServer {
    let broker = like.node().app.cfg().broker.clone();
    let s = TestServer::start_with(|c| {
        cluster_config(c, &broker.url, &broker.prefix);
        f(c);
    })
    .await;
    let ready = poll_until(WAIT, || async {
        s.get_json("/readyz").await.1["broker"] == "ok"
    });
    assert!(ready.await, "node subscribed to the bus");
    s
}

async fn cluster(n: usize) -> Vec<TestServer> {
    cluster_at(&redis_url(), n).await
}

pub(crate) async fn subscribe(ws: &mut Ws, channel: &str, since: Option<(u64, &str)>) -> Value {
    let mut msg = json!({"type": "subscribe", "channel": channel});
    if let Some((offset, epoch)) = since {
        msg["since"] = json!({"offset": offset, "epoch": epoch});
    }
    send_text(ws, &msg.to_string()).await;
    loop {
        let reply = next_json(ws).await;
        if reply["type"] == "subscribed" {
            return reply;
        }
        assert_ne!(reply["type"], "error", "{reply}");
    }
}

/// Publishes through `s` and a marker to `user` after it; the marker arriving first
/// proves `ws` got nothing before it.
async fn assert_nothing_before_marker(s: &TestServer, ws: &mut Ws, user: &str) {
    let (status, _) = s.publish(json!({"user": user, "data": "marker"})).await;
    assert_eq!(status, 200);
    assert_eq!(
        next_pub(ws).await["data"],
        "marker",
        "{user} got nothing else"
    );
}

#[tokio::test]
async fn a_publication_on_one_node_reaches_every_node_for_every_target() {
    let nodes = cluster(3).await;
    let token = |s: &TestServer, user: &str, groups: &[&str]| {
        let groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        s.token_with(user, |c| c.groups = groups)
    };
    // alice on nodes 0 and 1, bob (group ops) on node 2, carol (ops) on node 0.
    let (mut alice0, hello) = nodes[0]
        .connect_token(&token(&nodes[0], "alice", &[]))
        .await;
    let alice0_conn = hello["conn_id"].as_str().unwrap().to_owned();
    let (mut alice1, _) = nodes[1]
        .connect_token(&token(&nodes[1], "alice", &[]))
        .await;
    let (mut bob2, _) = nodes[2]
        .connect_token(&token(&nodes[2], "bob", &["ops"]))
        .await;
    let (mut carol0, _) = nodes[0]
        .connect_token(&token(&nodes[0], "carol", &["ops"]))
        .await;
    for ws in [&mut alice0, &mut alice1, &mut bob2, &mut carol0] {
        subscribe(ws, "news", None).await;
        subscribe(ws, "live:x", None).await;
    }
    let origin = &nodes[1];

    // all
    let (status, body) = origin.publish(json!({"all": true, "data": "to all"})).await;
    assert_eq!(status, 200, "{body}");
    for ws in [&mut alice0, &mut alice1, &mut bob2, &mut carol0] {
        assert_eq!(next_pub(ws).await["data"], "to all");
    }
    // user: both of alice's connections, on two nodes, and nobody else
    origin
        .publish(json!({"user": "alice", "data": "to alice"}))
        .await;
    assert_eq!(next_pub(&mut alice0).await["data"], "to alice");
    assert_eq!(next_pub(&mut alice1).await["data"], "to alice");
    // group
    origin
        .publish(json!({"group": "ops", "data": "to ops"}))
        .await;
    assert_eq!(next_pub(&mut bob2).await["data"], "to ops");
    assert_eq!(next_pub(&mut carol0).await["data"], "to ops");
    assert_nothing_before_marker(origin, &mut alice0, "alice").await;
    assert_eq!(next_pub(&mut alice1).await["data"], "marker");
    // a channel with history: the same offset and epoch on every node
    let (status, body) = origin
        .publish(json!({"channel": "news", "data": "n1"}))
        .await;
    assert_eq!(status, 200, "{body}");
    let (offset, epoch) = (body["offset"].clone(), body["epoch"].clone());
    assert_eq!(offset, 1, "{body}");
    for ws in [&mut alice0, &mut alice1, &mut bob2, &mut carol0] {
        let m = next_pub(ws).await;
        assert_eq!(
            (&m["data"], &m["offset"], &m["epoch"]),
            (&json!("n1"), &offset, &epoch)
        );
    }
    // a channel without history, excluding a user and a connection on another node
    origin
        .publish(json!({"channel": "live:x", "data": "l1", "exclude_user": "bob", "exclude_conn": alice0_conn}))
        .await;
    assert_eq!(next_pub(&mut alice1).await["data"], "l1");
    assert_eq!(next_pub(&mut carol0).await["data"], "l1");
    assert!(maybe_pub(&mut bob2).await.is_none(), "bob was excluded");
    assert_nothing_before_marker(origin, &mut alice0, "alice").await;
    assert_eq!(next_pub(&mut alice1).await["data"], "marker");

    // A client's `publish` on node 1 reaches subscribers on nodes 0 and 2.
    let (mut dave1, _) = nodes[1].connect("dave").await;
    let (mut erin0, _) = nodes[0].connect("erin").await;
    let (mut fay2, _) = nodes[2].connect("fay").await;
    for ws in [&mut dave1, &mut erin0, &mut fay2] {
        subscribe(ws, "room:1", None).await;
    }
    send_text(
        &mut dave1,
        &json!({"type": "publish", "channel": "room:1", "data": "hi", "ref": 9}).to_string(),
    )
    .await;
    let ack = next_json(&mut dave1).await;
    assert_eq!(
        (&ack["type"], &ack["ref"]),
        (&json!("ack"), &json!(9)),
        "{ack}"
    );
    assert_eq!(ack["offset"], 1, "{ack}");
    assert!(
        maybe_pub(&mut dave1).await.is_none(),
        "not echoed to its publisher"
    );
    assert_eq!(next_pub(&mut erin0).await["data"], "hi");
    assert_eq!(next_pub(&mut fay2).await["data"], "hi");
    for s in nodes {
        s.shutdown().await;
    }
}

#[tokio::test]
async fn recovery_on_another_node_under_a_publish_storm_is_exact() {
    let nodes = cluster(3).await;
    let total: u64 = 200;
    for round in 0..10u64 {
        let channel = format!("storm-{round}");
        let (mut watcher, _) = nodes[0].connect("w").await;
        subscribe(&mut watcher, &channel, None).await;
        let (http, addr, key, ch) = (
            nodes[1].http.clone(),
            nodes[1].addr,
            nodes[1].api_key.clone(),
            channel.clone(),
        );
        let publisher = tokio::spawn(async move {
            for n in 1..=total {
                let res = http
                    .post(format!("http://{addr}/api/publish"))
                    .bearer_auth(&key)
                    .json(&json!({"channel": ch, "data": n}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(res.status().as_u16(), 200);
            }
        });
        // Mid-storm, a client that was on node 0 comes back on node 2 with `since`.
        let mut seen = next_pub(&mut watcher).await;
        while seen["offset"].as_u64().unwrap() < 10 + round {
            seen = next_pub(&mut watcher).await;
        }
        let since = seen["offset"].as_u64().unwrap() - 5;
        let epoch = seen["epoch"].as_str().unwrap().to_owned();
        let other = &nodes[2 - (round as usize % 2)];
        let (mut late, _) = other.connect("late").await;
        let sub = subscribe(&mut late, &channel, Some((since, &epoch))).await;
        assert_eq!(sub["recovered"], true, "round {round}: {sub}");
        let mut expect = since + 1;
        while expect <= total {
            let m = next_pub(&mut late).await;
            assert_eq!(
                m["offset"].as_u64(),
                Some(expect),
                "round {round}: gap or duplicate"
            );
            expect += 1;
        }
        publisher.await.unwrap();
        assert_nothing_before_marker(other, &mut late, "late").await;
    }
    for s in nodes {
        s.shutdown().await;
    }
}

#[tokio::test]
async fn a_malformed_message_on_the_bus_is_dropped_and_counted() {
    let nodes = cluster(2).await;
    let prefix = nodes[0].node().app.cfg().broker.prefix.clone();
    let (mut a, _) = nodes[0].connect("a").await;
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    for junk in [
        "",
        "v2|||{}",
        "v1|x||{}",
        "v1|||not json",
        "v1|||{\"n\":\"x\",\"s\":1,\"t\":\"q\",\"d\":1}",
        // The bus never carries a channel's publications.
        "v1|||{\"n\":\"x\",\"s\":1,\"t\":\"c\",\"id\":\"news\",\"d\":1}",
    ] {
        let _: i64 = redis::cmd("PUBLISH")
            .arg(format!("{prefix}:bus"))
            .arg(junk)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    // A channel's pub/sub channel carries that channel only.
    subscribe(&mut a, "news", None).await;
    let _: i64 = redis::cmd("PUBLISH")
        .arg(format!("{prefix}:ch:news"))
        .arg("v1|||{\"n\":\"x\",\"s\":2,\"t\":\"c\",\"id\":\"other\",\"d\":1}")
        .query_async(&mut conn)
        .await
        .unwrap();
    let counted = poll_until(WAIT, || async {
        nodes[0].stats().await["broker"]["malformed"] == 7
    });
    assert!(counted.await, "{}", nodes[0].stats().await);
    // And the node still carries real publications from the other one.
    nodes[1].publish(json!({"user": "a", "data": "ok"})).await;
    assert_eq!(next_pub(&mut a).await["data"], "ok");
    for s in nodes {
        s.shutdown().await;
    }
}

#[tokio::test]
async fn a_node_that_never_saw_a_channel_recovers_it_from_the_shared_history() {
    let mut nodes = cluster(1).await;
    // Nobody follows `news` while it is published: no node holds a copy of it, and
    // node 1 is not even running yet.
    let mut epoch = String::new();
    for n in 1..=20u64 {
        let (status, body) = nodes[0]
            .publish(json!({"channel": "news", "data": n}))
            .await;
        assert_eq!((status, &body["queued"]), (200, &json!(0)), "{body}");
        assert_eq!(body["offset"], n, "{body}");
        epoch = body["epoch"].as_str().unwrap().to_owned();
    }
    assert_eq!(nodes[0].stats().await["broker"]["following"], 0);
    nodes.push(join_cluster(&nodes[0]).await);
    // A client last saw offset 7 (on some node); it comes back on node 1.
    let (mut ws, _) = nodes[1].connect("u").await;
    let sub = subscribe(&mut ws, "news", Some((7, &epoch))).await;
    assert_eq!(sub["recovered"], true, "{sub}");
    assert_eq!((&sub["offset"], &sub["epoch"]), (&json!(20), &json!(epoch)));
    for n in 8..=20u64 {
        let m = next_pub(&mut ws).await;
        assert_eq!((&m["offset"], &m["data"]), (&json!(n), &json!(n)), "{m}");
    }
    // A plain subscribe on a node that never saw it gets the shared position too, and
    // a publication from the other node follows it.
    let (mut fresh, _) = nodes[0].connect("v").await;
    let sub = subscribe(&mut fresh, "news", None).await;
    assert_eq!((&sub["offset"], &sub["epoch"]), (&json!(20), &json!(epoch)));
    nodes[1]
        .publish(json!({"channel": "news", "data": 21}))
        .await;
    for ws in [&mut ws, &mut fresh] {
        let m = next_pub(ws).await;
        assert_eq!((&m["offset"], &m["epoch"]), (&json!(21), &json!(epoch)));
    }
    for s in nodes {
        s.shutdown().await;
    }
}

#[tokio::test]
async fn a_since_older_than_the_node_s_copy_is_read_from_the_shared_history() {
    let first = cluster(1).await;
    let small = small_budget_node(&first[0]).await;
    let (mut watcher, _) = small.connect("w").await;
    subscribe(&mut watcher, "news", None).await;
    let pad = "x".repeat(200);
    let mut epoch = String::new();
    for n in 1..=40u64 {
        let (status, body) = first[0]
            .publish(json!({"channel": "news", "data": {"n": n, "pad": pad}}))
            .await;
        assert_eq!(status, 200, "{body}");
        epoch = body["epoch"].as_str().unwrap().to_owned();
    }
    for n in 1..=40u64 {
        assert_eq!(next_pub(&mut watcher).await["data"]["n"], n);
    }
    // The node's copy has dropped the oldest; Redis still holds all 40.
    let (mut back, _) = small.connect("u").await;
    let sub = subscribe(&mut back, "news", Some((3, &epoch))).await;
    assert_eq!(sub["recovered"], true, "{sub}");
    for n in 4..=40u64 {
        let m = next_pub(&mut back).await;
        assert_eq!(
            (&m["offset"], &m["data"]["n"]),
            (&json!(n), &json!(n)),
            "{m}"
        );
    }
    assert_nothing_before_marker(&small, &mut back, "u").await;
    small.shutdown().await;
    for s in first {
        s.shutdown().await;
    }
}

/// The next `presence` frame on `ws`.
async fn next_presence(ws: &mut Ws) -> Value {
    loop {
        let m = next_json(ws).await;
        if m["type"] == "presence" {
            return m;
        }
    }
}

#[tokio::test]
async fn channel_joins_and_leaves_are_announced_once_for_the_cluster() {
    let nodes = cluster(3).await;
    let (mut w0, _) = nodes[0].connect("watcher0").await;
    let (mut w2, _) = nodes[2].connect("watcher2").await;
    subscribe(&mut w0, "lobby:x", None).await;
    subscribe(&mut w2, "lobby:x", None).await;
    for ws in [&mut w0, &mut w2] {
        // Each watcher sees the other join (they are on different nodes).
        let m = next_presence(ws).await;
        assert_eq!(m["event"], "join", "{m}");
    }
    // alice joins on node 1: both watchers, on other nodes, are told once.
    let (mut alice, _) = nodes[1].connect("alice").await;
    subscribe(&mut alice, "lobby:x", None).await;
    for ws in [&mut w0, &mut w2] {
        let m = next_presence(ws).await;
        assert_eq!(
            (&m["event"], &m["user_id"]),
            (&json!("join"), &json!("alice")),
            "{m}"
        );
    }
    // A reload that lands on node 2 within the grace: no leave, no second join.
    drop(alice);
    let (mut alice, _) = nodes[2].connect("alice").await;
    subscribe(&mut alice, "lobby:x", None).await;
    // Once node 1's grace for her has run out (its presence entry is gone from Redis),
    // nothing may have been sent about alice; then she leaves for good, and that is the
    // next thing each watcher hears.
    let broker = nodes[1].node().app.cfg().broker.clone();
    let key = format!("{}:chp:lobby:x", broker.prefix);
    let field = format!("{}|alice", nodes[1].node().app.hub.node_tag());
    let client = redis::Client::open(broker.url.as_str()).unwrap();
    let conn = client.get_multiplexed_async_connection().await.unwrap();
    let gone = poll_until(WAIT, || {
        let (mut conn, key, field) = (conn.clone(), key.clone(), field.clone());
        async move {
            let there: bool = redis::cmd("HEXISTS")
                .arg(key)
                .arg(field)
                .query_async(&mut conn)
                .await
                .unwrap();
            !there
        }
    });
    assert!(gone.await, "node 1 let alice go after its grace");
    // The watchers' nodes read that at their next sync; a frame it caused (there must be
    // none) is an absence that cannot be polled for, so two syncs are waited out.
    tokio::time::sleep(herald::broker::cluster::SYNC_EVERY * 2).await;
    drop(alice);
    for ws in [&mut w0, &mut w2] {
        let m = next_presence(ws).await;
        assert_eq!(
            (&m["event"], &m["user_id"]),
            (&json!("leave"), &json!("alice")),
            "{m}"
        );
    }
    for s in nodes {
        s.shutdown().await;
    }
}

#[tokio::test]
async fn a_node_follows_a_channel_only_while_it_has_subscribers() {
    let nodes = cluster(2).await;
    let prefix = nodes[0].node().app.cfg().broker.prefix.clone();
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let topic = format!("{prefix}:ch:live:x");
    let numsub = |mut conn: redis::aio::MultiplexedConnection, topic: String| async move {
        let (_, n): (String, u64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(&topic)
            .query_async(&mut conn)
            .await
            .unwrap();
        n
    };
    assert_eq!(numsub(conn.clone(), topic.clone()).await, 0);
    // Three subscribers on node 1, one pub/sub subscription.
    let mut clients = Vec::new();
    for user in ["a", "b", "c"] {
        let (mut ws, _) = nodes[1].connect(user).await;
        subscribe(&mut ws, "live:x", None).await;
        clients.push(ws);
    }
    assert_eq!(numsub(conn.clone(), topic.clone()).await, 1);
    assert_eq!(nodes[1].stats().await["broker"]["following"], 1);
    assert_eq!(nodes[0].stats().await["broker"]["following"], 0);
    // Node 0 follows nothing, so a publication there reaches node 1 only; its answer
    // comes from Redis.
    let (status, body) = nodes[0]
        .publish(json!({"channel": "live:x", "data": "hi"}))
        .await;
    assert_eq!((status, &body["queued"]), (200, &json!(0)), "{body}");
    for ws in &mut clients {
        assert_eq!(next_pub(ws).await["data"], "hi");
    }
    // The last subscriber leaving ends the subscription after the idle grace.
    for ws in &mut clients {
        send_text(ws, r#"{"type":"unsubscribe","channel":"live:x"}"#).await;
    }
    let dropped = poll_until(Duration::from_secs(10), || {
        let (conn, topic) = (conn.clone(), topic.clone());
        async move { numsub(conn, topic).await == 0 }
    });
    assert!(dropped.await, "unsubscribed once idle");
    assert_eq!(nodes[1].stats().await["broker"]["following"], 0);
    let _: () = redis::cmd("PING").query_async(&mut conn).await.unwrap();
    for s in nodes {
        s.shutdown().await;
    }
}

/// A `redis-server` of this test's own on a free port, so it can be killed.
struct OwnRedis {
    child: Child,
    port: u16,
}

impl OwnRedis {
    fn start_on(port: u16) -> OwnRedis {
        OwnRedis::start_with(&["--port", &port.to_string()], port)
    }

    /// A `redis-server` with `args` (which name its port); `port` is where it answers.
    fn start_with(args: &[&str], port: u16) -> OwnRedis {
        let child = Command::new("redis-server")
            .args(args)
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/test installs it)");
        OwnRedis { child, port }
    }

    fn start() -> OwnRedis {
        OwnRedis::start_on(free_port())
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn wait_up(&self) {
        let url = self.url();
        let up = poll_until(WAIT, || async {
            match redis::Client::open(url.as_str()) {
                Ok(c) => c.get_multiplexed_async_connection().await.is_ok(),
                Err(_) => false,
            }
        });
        assert!(up.await, "own redis-server up");
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test]
async fn a_redis_outage_is_not_an_outage() {
    let mut redis = OwnRedis::start();
    redis.wait_up().await;
    let nodes = cluster_at(&redis.url(), 2).await;
    let (mut a0, _) = nodes[0].connect("a").await;
    let (mut b1, _) = nodes[1].connect("b").await;
    subscribe(&mut a0, "live:x", None).await;
    subscribe(&mut b1, "live:x", None).await;
    nodes[0]
        .publish(json!({"channel": "live:x", "data": "before"}))
        .await;
    assert_eq!(next_pub(&mut a0).await["data"], "before");
    assert_eq!(next_pub(&mut b1).await["data"], "before");

    redis.kill();
    let degraded = poll_until(WAIT, || async {
        nodes[0].get_json("/readyz").await.1["status"] == "degraded"
    });
    assert!(degraded.await, "{}", nodes[0].get_json("/readyz").await.1);
    let (status, _) = nodes[0].get_json("/healthz").await;
    assert_eq!(status, 200);
    let (status, _) = nodes[0].get_json("/readyz").await;
    assert_eq!(status, 200, "degraded is still serving");
    // Local delivery goes on; a channel with history refuses what it cannot keep.
    let (status, body) = nodes[0]
        .publish(json!({"channel": "live:x", "data": "during"}))
        .await;
    assert_eq!((status, &body["queued"]), (200, &json!(1)), "{body}");
    assert_eq!(next_pub(&mut a0).await["data"], "during");
    let (status, body) = nodes[0]
        .publish(json!({"channel": "news", "data": "kept?"}))
        .await;
    assert_eq!(
        (status, &body["error"]),
        (503, &json!("unavailable")),
        "{body}"
    );
    let stats = nodes[0].stats().await;
    assert!(stats["broker"]["degraded"].as_u64() >= Some(1), "{stats}");
    assert_eq!(stats["broker"]["outages"], 1, "{stats}");

    // Redis returns on the same port: cross-node delivery resumes without a restart.
    let redis = OwnRedis::start_on(redis.port);
    redis.wait_up().await;
    let resumed = poll_until(Duration::from_secs(20), || async {
        nodes[0].get_json("/readyz").await.1["status"] == "ready"
            && nodes[1].get_json("/readyz").await.1["status"] == "ready"
    });
    assert!(resumed.await, "{}", nodes[0].get_json("/readyz").await.1);
    // b1 missed "during", and nothing can replay a channel without history: both
    // nodes' subscribers of it are told to resync (DESIGN §9).
    assert_eq!(close_code(&mut a0).await, Some(4003));
    assert_eq!(close_code(&mut b1).await, Some(4003));
    let (mut a0, _) = nodes[0].connect("a").await;
    let (mut b1, _) = nodes[1].connect("b").await;
    subscribe(&mut a0, "live:x", None).await;
    subscribe(&mut b1, "live:x", None).await;
    nodes[0]
        .publish(json!({"channel": "live:x", "data": "after"}))
        .await;
    assert_eq!(next_pub(&mut a0).await["data"], "after");
    assert_eq!(next_pub(&mut b1).await["data"], "after");
    let (status, body) = nodes[1]
        .publish(json!({"channel": "news", "data": "kept"}))
        .await;
    assert_eq!(status, 200, "{body}");

    // Frozen, not closed: detected by the probe's timeout.
    redis.signal("-STOP");
    let frozen = poll_until(WAIT, || async {
        nodes[0].get_json("/readyz").await.1["status"] == "degraded"
    });
    let detected = frozen.await;
    redis.signal("-CONT");
    assert!(detected, "a frozen Redis is detected");
    for s in nodes {
        s.shutdown().await;
    }
}

#[tokio::test]
async fn an_announcement_made_during_an_outage_reaches_the_other_nodes_clients_after_it() {
    use crate::announcements::{Engine, TestStore};
    let store = TestStore::new(Engine::Postgres).await;
    let mut redis = OwnRedis::start();
    redis.wait_up().await;
    let prefix = format!("herald-it-{:08x}", rand::random::<u32>());
    let mut nodes = Vec::new();
    for _ in 0..2 {
        let mut cfg = store.config();
        cluster_config(&mut cfg, &redis.url(), &prefix);
        let dir = TempDir::new();
        cfg.data_dir = dir.0.clone();
        nodes.push(TestServer::start_cfg(cfg, dir).await);
    }
    for s in &nodes {
        let ready = poll_until(WAIT, || async {
            s.get_json("/readyz").await.1["broker"] == "ok"
        });
        assert!(ready.await);
    }
    let (mut far, _) = nodes[1].connect("far").await;
    redis.kill();
    let degraded = poll_until(WAIT, || async {
        nodes[1].get_json("/readyz").await.1["status"] == "degraded"
    });
    assert!(degraded.await);
    // Made on node 0 while the bus is down: node 1's client cannot hear of it now.
    let admin = nodes[0].token_with("boss", |c| c.admin = true);
    let (status, body) = nodes[0]
        .post_json(
            "/api/broadcasts",
            &admin,
            json!({"message": "during", "type": "info"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].clone();
    let _redis = OwnRedis::start_on(redis.port);
    let back = poll_until(Duration::from_secs(20), || async {
        nodes[1].get_json("/readyz").await.1["status"] == "ready"
    });
    assert!(back.await);
    // Once node 1 has the bus again, its client is given the state it missed.
    let m = next_json(&mut far).await;
    assert_eq!(
        (&m["type"], &m["broadcast"]["id"]),
        (&json!("active_broadcast"), &id),
        "{m}"
    );
    for s in nodes {
        s.shutdown().await;
    }
}

async fn presence_of(s: &TestServer, user: &str) -> Value {
    let (status, body) = s.get_json(&format!("/api/presence/users/{user}")).await;
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test]
async fn presence_and_stats_answer_for_every_node() {
    let nodes = cluster(3).await;
    let (alice, _) = nodes[0].connect("alice").await;
    let (_alice_too, _) = nodes[1].connect("alice").await;
    let (_bob, _) = nodes[1].connect("bob").await;
    let seen = poll_until(WAIT, || async {
        let p = presence_of(&nodes[2], "alice").await;
        p["online"] == true && p["connections"] == 2
    });
    assert!(seen.await, "{}", presence_of(&nodes[2], "alice").await);
    let totals = poll_until(WAIT, || async {
        let c = &nodes[2].stats().await["cluster"];
        c["nodes"] == 3 && c["connections"] == 3 && c["users"] == 2
    });
    assert!(totals.await, "{}", nodes[2].stats().await);
    // Each node's own row, for the admin page's per-node view.
    let per_node = nodes[0].stats().await["cluster"]["per_node"].clone();
    let mut rows: Vec<(String, u64)> = per_node
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["tag"].as_str().unwrap().to_owned(),
                r["connections"].as_u64().unwrap(),
            )
        })
        .collect();
    rows.sort();
    let mut want: Vec<(String, u64)> = nodes
        .iter()
        .zip([1, 2, 0])
        .map(|(s, n)| (s.node().app.hub.node_tag().to_owned(), n))
        .collect();
    want.sort();
    assert_eq!(rows, want, "{per_node}");

    // A reload that lands on another node never reads offline anywhere.
    drop(alice);
    drop(_alice_too);
    let (_back, _) = nodes[2].connect("alice").await;
    let started = tokio::time::Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        for s in &nodes {
            assert_eq!(presence_of(s, "alice").await["online"], true, "no flap");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Gone for good: offline on every node after the grace (2 s), not before.
    drop(_back);
    let left = tokio::time::Instant::now();
    let offline = poll_until(WAIT, || async {
        presence_of(&nodes[0], "alice").await["online"] == false
    });
    assert!(offline.await, "offline after the grace");
    assert!(
        left.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        left.elapsed()
    );

    // Channel presence lists the users of every node.
    let (mut c0, _) = nodes[0].connect("carol").await;
    let (mut d1, _) = nodes[1].connect("dave").await;
    for ws in [&mut c0, &mut d1] {
        subscribe(ws, "lobby:1", None).await;
    }
    let listed = poll_until(WAIT, || async {
        let (_, body) = nodes[2].get_json("/api/channels/lobby:1/presence").await;
        body["users"] == json!(["carol", "dave"])
    });
    assert!(
        listed.await,
        "{}",
        nodes[2].get_json("/api/channels/lobby:1/presence").await.1
    );
    for s in nodes {
        s.shutdown().await;
    }
}

/// `herald serve` as a child process in the cluster, so it can be SIGKILLed.
fn serve_in_cluster(dir: &TempDir, prefix: &str) -> Served {
    serve_in_cluster_at(dir, &redis_url(), prefix, &[])
}

/// The binary as one node of the cluster over `url`, with more environment `env`.
pub(crate) fn serve_in_cluster_at(
    dir: &TempDir,
    url: &str,
    prefix: &str,
    env: &[(&str, &str)],
) -> Served {
    let secret = format!("{prefix}-secret-for-tests-only-0123456789");
    let mut env = env.to_vec();
    env.extend([
        ("HERALD_BROKER__URL", url),
        ("HERALD_BROKER__PREFIX", prefix),
        ("HERALD_AUTH__HMAC_SECRET", secret.as_str()),
    ]);
    let (child, addr) = spawn_binary(dir, &[], &env, Stdio::null());
    Served {
        child,
        addr,
        secret,
    }
}

#[tokio::test]
async fn nodes_reach_each_other_over_a_redis_with_tls_and_a_password() {
    let certs = TempDir::new();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert, key) = (certs.0.join("redis.pem"), certs.0.join("redis.key"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let port = free_port();
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let redis = OwnRedis::start_with(
        &[
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--tls-cert-file",
            cert,
            "--tls-key-file",
            key,
            "--tls-ca-cert-file",
            cert,
            "--tls-auth-clients",
            "no",
            "--requirepass",
            "s3cret-pass",
        ],
        port,
    );
    // Nothing plain answers; the nodes trust the test's certificate (SSL_CERT_FILE, as
    // an operator would point them at a private CA).
    let url = format!("rediss://:s3cret-pass@localhost:{port}");
    let prefix = format!("herald-it-{:08x}", rand::random::<u32>());
    let env = [("SSL_CERT_FILE", cert)];
    let (da, db) = (TempDir::new(), TempDir::new());
    let mut a = serve_in_cluster_at(&da, &url, &prefix, &env);
    let mut b = serve_in_cluster_at(&db, &url, &prefix, &env);
    let http = reqwest::Client::new();
    for node in [&a, &b] {
        let ready = poll_until(WAIT, || async {
            let res = http
                .get(format!("http://{}/readyz", node.addr))
                .send()
                .await;
            match res {
                Ok(r) => r.json::<Value>().await.is_ok_and(|v| v["broker"] == "ok"),
                Err(_) => false,
            }
        });
        assert!(
            ready.await,
            "a node reached Redis over TLS with the password"
        );
    }
    let url = format!("ws://{}/ws?token={}", b.addr, mint(&b.secret, "u"));
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap();
    let _ = next_json(&mut ws).await; // connected
    let key = std::fs::read_to_string(da.0.join("api_key")).unwrap();
    let res = http
        .post(format!("http://{}/api/publish", a.addr))
        .bearer_auth(key.trim())
        .json(&json!({"user": "u", "data": "over rediss"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    assert_eq!(next_pub(&mut ws).await["data"], "over rediss");
    for node in [&mut a, &mut b] {
        let _ = node.child.kill();
        let _ = node.child.wait();
    }
    drop(redis);
}

#[tokio::test]
async fn a_sigkilled_node_s_users_go_offline_within_the_bound() {
    let nodes = cluster(1).await;
    let prefix = nodes[0].node().app.cfg().broker.prefix.clone();
    let dir = TempDir::new();
    let mut doomed = serve_in_cluster(&dir, &prefix);
    let url = format!(
        "ws://{}/ws?token={}",
        doomed.addr,
        mint(&doomed.secret, "ghost")
    );
    let (mut ghost, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap();
    let _ = next_json(&mut ghost).await; // connected
    let online = poll_until(WAIT, || async {
        presence_of(&nodes[0], "ghost").await["online"] == true
    });
    assert!(online.await, "the other node sees the ghost");
    let status = Command::new("kill")
        .args(["-KILL", &doomed.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let _ = doomed.child.wait();
    let killed = tokio::time::Instant::now();
    // Stated bound (docs/scaling.md): node TTL 5 s + one sync (0.5 s).
    let offline = poll_until(Duration::from_secs(8), || async {
        presence_of(&nodes[0], "ghost").await["online"] == false
    });
    assert!(offline.await, "offline within the bound");
    assert!(
        killed.elapsed() <= Duration::from_millis(6_500),
        "{:?}",
        killed.elapsed()
    );
    let c = &nodes[0].stats().await["cluster"];
    assert_eq!(c["nodes"], 1, "{c}");
    for s in nodes {
        s.shutdown().await;
    }
}

#[tokio::test]
async fn announcements_across_three_nodes_on_postgres() {
    use crate::announcements::{Engine, TestStore};
    let store = TestStore::new(Engine::Postgres).await;
    let prefix = format!("herald-it-{:08x}", rand::random::<u32>());
    let mut nodes = Vec::new();
    for _ in 0..3 {
        let mut cfg = store.config();
        cluster_config(&mut cfg, &redis_url(), &prefix);
        let dir = TempDir::new();
        cfg.data_dir = dir.0.clone();
        nodes.push(TestServer::start_cfg(cfg, dir).await);
    }
    let mut users = Vec::new();
    for (i, s) in nodes.iter().enumerate() {
        users.push(s.connect(&format!("u{i}")).await.0);
    }
    let admin = nodes[0].token_with("boss", |c| c.admin = true);
    let (status, body) = nodes[0]
        .post_json(
            "/api/broadcasts",
            &admin,
            json!({"message": "hello all", "type": "info"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_str().unwrap().to_owned();
    for ws in &mut users {
        let m = next_json(ws).await;
        assert_eq!(
            (&m["type"], &m["broadcast"]["id"]),
            (&json!("new_broadcast"), &json!(id))
        );
    }
    // u1 acknowledges on node 1; reconnecting on node 2 it is not shown again.
    send_text(
        &mut users[1],
        &json!({"type": "acknowledge_broadcast", "broadcast_id": id}).to_string(),
    )
    .await;
    let acked = poll_until(WAIT, || async {
        let (mut again, _) = nodes[2].connect("u1").await;
        send_text(&mut again, r#"{"type":"get_active_broadcast"}"#).await;
        nodes[2]
            .publish(json!({"user": "u1", "data": "marker"}))
            .await;
        // Each connection first gets u1's marker or the announcement.
        loop {
            let m = next_json(&mut again).await;
            match m["type"].as_str() {
                Some("pub") => return true,
                Some("active_broadcast") => return false,
                _ => {}
            }
        }
    });
    assert!(acked.await, "the ack made on node 1 holds on node 2");
    // And a user who did not acknowledge still gets it on connect, on any node.
    let (mut fresh, _) = nodes[1].connect("u9").await;
    let m = next_json(&mut fresh).await;
    assert_eq!(m["type"], "active_broadcast", "{m}");
    // Cleared on node 2: every node's users hear it.
    let (status, body) = nodes[2]
        .post_json("/api/broadcasts/clear", &admin, json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    for ws in users.iter_mut().chain([&mut fresh]) {
        loop {
            let m = next_json(ws).await;
            if m["type"] == "broadcast_cleared" {
                break;
            }
        }
    }
    // u0, u1 (on two nodes), u2, u9: four users over three nodes, within a sync.
    let counted = poll_until(WAIT, || async {
        nodes[0].get_json("/api/broadcasts/stats").await.1["stats"]["connected_users"] == 4
    });
    assert!(
        counted.await,
        "{}",
        nodes[0].get_json("/api/broadcasts/stats").await.1
    );
    for s in nodes {
        s.shutdown().await;
    }
    store.drop_database().await;
}

#[tokio::test]
async fn an_upstream_event_reaches_each_device_once_not_once_per_node() {
    let tag = format!("herald-it-{:08x}", rand::random::<u32>());
    let pattern = format!("{tag}.user.*.sync");
    let prefix = format!("{tag}-cluster");
    let mut nodes = Vec::new();
    for _ in 0..3 {
        let (p, pat) = (prefix.clone(), pattern.clone());
        nodes.push(
            TestServer::start_with(move |c| {
                cluster_config(c, &redis_url(), &p);
                c.relay.redis_url = redis_url();
                c.relay.redis_pattern = pat;
            })
            .await,
        );
    }
    let mut tv = sync_device(&nodes[0], "42", "tv").await;
    let mut phone = sync_device(&nodes[1], "42", "phone").await;
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let bus = format!("{tag}.user.42.sync");
    // Every node's relay subscribes asynchronously: wait until all three say so.
    for s in &nodes {
        let ok = poll_until(WAIT, || async {
            s.get_json("/readyz").await.1["relay"] == "ok"
        });
        assert!(ok.await, "relay subscribed");
    }
    // Probe until a message makes it through to both devices, then drain.
    let mut through = false;
    for n in 0..100 {
        let probe = json!({"type": "watchlist_update", "content_id": format!("probe-{n}"), "action": "add"});
        let _: i64 = redis::cmd("PUBLISH")
            .arg(&bus)
            .arg(probe.to_string())
            .query_async(&mut conn)
            .await
            .unwrap();
        if tokio::time::timeout(Duration::from_millis(100), next_pub(&mut tv))
            .await
            .is_ok()
        {
            through = true;
            break;
        }
    }
    assert!(through, "the relays subscribed");
    for ws in [&mut tv, &mut phone] {
        while maybe_pub(ws).await.is_some() {}
    }
    for n in 0..5 {
        let event =
            json!({"type": "watchlist_update", "content_id": format!("c{n}"), "action": "add"});
        let _: i64 = redis::cmd("PUBLISH")
            .arg(&bus)
            .arg(event.to_string())
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    for ws in [&mut tv, &mut phone] {
        for n in 0..5 {
            assert_eq!(next_pub(ws).await["data"]["content_id"], format!("c{n}"));
        }
    }
    let (status, _) = nodes[2]
        .publish(json!({"channel": "sync:42", "data": {"type": "watchlist_update", "content_id": "marker", "action": "add"}}))
        .await;
    assert_eq!(status, 200);
    for ws in [&mut tv, &mut phone] {
        assert_eq!(
            next_pub(ws).await["data"]["content_id"],
            "marker",
            "each event once, not once per node"
        );
    }
    for s in nodes {
        s.shutdown().await;
    }
}

#[tokio::test]
async fn a_lost_pub_sub_connection_is_caught_up_from_the_shared_history() {
    let redis = OwnRedis::start();
    redis.wait_up().await;
    let nodes = cluster_at(&redis.url(), 2).await;
    let (mut watcher, _) = nodes[1].connect("w").await;
    subscribe(&mut watcher, "news", None).await;
    let (http, addr, key) = (
        nodes[0].http.clone(),
        nodes[0].addr,
        nodes[0].api_key.clone(),
    );
    let publisher = tokio::spawn(async move {
        let mut accepted = 0u64;
        for n in 0..300 {
            let res = http
                .post(format!("http://{addr}/api/publish"))
                .bearer_auth(&key)
                .json(&json!({"channel": "news", "data": n}))
                .send()
                .await
                .unwrap();
            match res.status().as_u16() {
                200 => accepted += 1,
                503 => {} // refused while the node saw Redis as down: never accepted
                other => panic!("unexpected {other}"),
            }
        }
        accepted
    });
    // Mid-storm, node 1's pub/sub connection is killed (its commands keep working, and
    // node 0 keeps accepting): node 1 misses what is published until it is back. Node 1
    // started second, so its pub/sub client has the larger id.
    let first = next_pub(&mut watcher).await;
    assert_eq!(first["offset"], 1);
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut conn)
        .await
        .unwrap();
    let ids: Vec<u64> = list
        .lines()
        .filter_map(|l| l.strip_prefix("id=")?.split(' ').next()?.parse().ok())
        .collect();
    assert_eq!(ids.len(), 2, "{list}");
    let _: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(*ids.iter().max().unwrap())
        .query_async(&mut conn)
        .await
        .unwrap();
    let accepted = publisher.await.unwrap();
    assert!(
        accepted > 100,
        "most publications were accepted: {accepted}"
    );
    // Every accepted offset arrives once, in order, on a connection that stayed open.
    for expect in 2..=accepted {
        let m = tokio::time::timeout(WAIT, next_json(&mut watcher))
            .await
            .expect("caught up in time");
        assert_eq!(m["type"], "pub", "still connected: {m}");
        assert_eq!(m["offset"].as_u64(), Some(expect), "gap or duplicate");
    }
    assert_nothing_before_marker(&nodes[0], &mut watcher, "w").await;
    for s in nodes {
        s.shutdown().await;
    }
}

#[tokio::test]
async fn what_the_shared_history_cannot_fill_is_told_on_the_live_connection() {
    let redis = OwnRedis::start();
    redis.wait_up().await;
    let prefix = format!("herald-it-{:08x}", rand::random::<u32>());
    let url = redis.url();
    let mut nodes = Vec::new();
    for _ in 0..2 {
        nodes.push(
            TestServer::start_with(|c| {
                cluster_config(c, &url, &prefix);
                c.namespaces.insert(
                    "short".into(),
                    NamespaceConfig {
                        history_size: 3,
                        ..NamespaceConfig::default()
                    },
                );
            })
            .await,
        );
    }
    for s in &nodes {
        let ready = poll_until(WAIT, || async {
            s.get_json("/readyz").await.1["broker"] == "ok"
        });
        assert!(ready.await);
    }
    let (mut watcher, _) = nodes[1].connect("w").await;
    let sub = subscribe(&mut watcher, "short:x", None).await;
    nodes[0]
        .publish(json!({"channel": "short:x", "data": 1}))
        .await;
    assert_eq!(next_pub(&mut watcher).await["offset"], 1);
    // Node 1 loses its pub/sub connection and cannot make a new one (Redis is at its
    // client limit) while node 0 publishes 2..=11; the stream keeps only 9..=11.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut conn)
        .await
        .unwrap();
    let all = list.lines().count();
    let ids: Vec<u64> = {
        let typed: String = redis::cmd("CLIENT")
            .arg("LIST")
            .arg("TYPE")
            .arg("pubsub")
            .query_async(&mut conn)
            .await
            .unwrap();
        typed
            .lines()
            .filter_map(|l| l.strip_prefix("id=")?.split(' ').next()?.parse().ok())
            .collect()
    };
    assert_eq!(ids.len(), 2, "{list}");
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxclients")
        .arg(all - 1)
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(*ids.iter().max().unwrap())
        .query_async(&mut conn)
        .await
        .unwrap();
    for n in 2..=11 {
        let (status, body) = nodes[0]
            .publish(json!({"channel": "short:x", "data": n}))
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxclients")
        .arg(10_000)
        .query_async(&mut conn)
        .await
        .unwrap();
    // Back: 2..=8 are gone for good, and the connection is told so instead of being
    // closed; 9..=11 follow from the stream.
    let told = tokio::time::timeout(Duration::from_secs(20), next_json(&mut watcher))
        .await
        .expect("told in time");
    assert_eq!(
        told,
        json!({"type": "skipped", "channel": "short:x", "count": 7, "offset": 1, "epoch": sub["epoch"]})
    );
    for expect in 9..=11 {
        assert_eq!(next_pub(&mut watcher).await["offset"], expect);
    }
    // What it could recover from is gone: `since` says so.
    send_text(
        &mut watcher,
        r#"{"type":"unsubscribe","channel":"short:x"}"#,
    )
    .await;
    let again = subscribe(
        &mut watcher,
        "short:x",
        Some((1, sub["epoch"].as_str().unwrap())),
    )
    .await;
    assert_eq!(again["recovered"], false, "{again}");
    for s in nodes {
        s.shutdown().await;
    }
}

#[tokio::test]
async fn a_disconnect_order_reaches_the_node_that_holds_the_connection() {
    let nodes = cluster(3).await;
    let (mut on1, _) = nodes[1].connect("dave").await;
    let (mut on2, _) = nodes[2].connect("dave").await;
    let (mut erin, hello) = nodes[2].connect("erin").await;
    let (mut bystander, _) = nodes[1].connect("frank").await;
    let key = nodes[0].api_key.clone();

    // A user: every node closes that user's connections.
    let (status, body) = nodes[0]
        .post_json("/api/users/dave/disconnect", &key, json!({}))
        .await;
    assert_eq!(
        (status, body),
        (200, json!({"disconnected": 0, "forwarded": true}))
    );
    assert_eq!(close_code(&mut on1).await, Some(4004));
    assert_eq!(close_code(&mut on2).await, Some(4004));

    // A connection held by another node: forwarded there, closed there.
    let path = format!(
        "/api/connections/{}/disconnect",
        hello["conn_id"].as_str().unwrap()
    );
    let (status, body) = nodes[0].post_json(&path, &key, json!({"code": 4010})).await;
    assert_eq!(
        (status, body),
        (202, json!({"disconnected": 0, "forwarded": true}))
    );
    assert_eq!(close_code(&mut erin).await, Some(4010));

    send_text(&mut bystander, r#"{"type":"ping"}"#).await;
    assert_eq!(next_json(&mut bystander).await["type"], "pong");
    for s in nodes {
        s.shutdown().await;
    }
}

#[tokio::test]
async fn the_connection_list_of_any_node_holds_every_nodes_connections() {
    let nodes = cluster(3).await;
    let mut held = Vec::new();
    for (i, user) in [(1, "gina"), (2, "hank"), (2, "gina")] {
        let (ws, hello) = nodes[i].connect(user).await;
        held.push((ws, hello["conn_id"].as_str().unwrap().to_owned()));
    }
    let (status, list) = nodes[0].get_json("/api/connections").await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["nodes"], json!({"asked": 3, "answered": 3}), "{list}");
    assert_eq!(
        (list["total"].clone(), list["matched"].clone()),
        (json!(3), json!(3))
    );
    let mut got: Vec<String> = list["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["conn_id"].as_str().unwrap().to_owned())
        .collect();
    got.sort();
    let mut want: Vec<String> = held.iter().map(|(_, id)| id.clone()).collect();
    want.sort();
    assert_eq!(got, want);

    let (_, found) = nodes[0].get_json("/api/connections?q=gina&limit=1").await;
    assert_eq!(found["matched"], 2, "{found}");
    assert_eq!(
        found["connections"][0]["conn_id"],
        held[2].1.as_str(),
        "newest first"
    );
    for s in nodes {
        s.shutdown().await;
    }
}

#[tokio::test]
async fn a_batch_over_redis_keeps_its_order_on_every_node() {
    let nodes = cluster(3).await;
    let (mut far, _) = nodes[2].connect("ivy").await;
    subscribe(&mut far, "news", None).await;
    let (mut near, _) = nodes[0].connect("jon").await;
    subscribe(&mut near, "news", None).await;
    let publications: Vec<Value> = (0..200)
        .map(|i| json!({"channel": "news", "data": i}))
        .collect();
    let (status, body) = nodes[0]
        .post_json(
            "/api/publish/batch",
            &nodes[0].api_key.clone(),
            json!({"publications": publications}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let offsets: Vec<u64> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, (1..=200).collect::<Vec<u64>>());
    for ws in [&mut far, &mut near] {
        for i in 0..200u64 {
            let m = next_pub(ws).await;
            assert_eq!(
                (m["offset"].as_u64(), m["data"].as_u64()),
                (Some(i + 1), Some(i))
            );
        }
    }
    for s in nodes {
        s.shutdown().await;
    }
}

#[tokio::test]
async fn a_pipelined_backend_over_redis_is_acked_in_order_and_delivered_in_order_everywhere() {
    use futures_util::SinkExt;
    let nodes = cluster(3).await;
    let (mut far, _) = nodes[2].connect("ivy").await;
    subscribe(&mut far, "news", None).await;
    let (mut near, _) = nodes[0].connect("jon").await;
    subscribe(&mut near, "news", None).await;
    let mut backend = nodes[0].connect_backend().await;
    // Every publication is sent before the first ack can come back from Redis.
    for i in 0..300 {
        let f = json!({"type": "publish", "channel": "news", "data": i, "ref": i});
        backend
            .feed(tokio_tungstenite::tungstenite::Message::text(f.to_string()))
            .await
            .unwrap();
    }
    let f = json!({"type": "publish", "user": "ivy", "data": "direct", "ref": "u"});
    backend
        .feed(tokio_tungstenite::tungstenite::Message::text(f.to_string()))
        .await
        .unwrap();
    backend.flush().await.unwrap();
    for i in 0..300u64 {
        let ack = next_json(&mut backend).await;
        assert_eq!(ack, json!({"type": "ack", "ref": i, "offset": i + 1}));
    }
    assert_eq!(
        next_json(&mut backend).await,
        json!({"type": "ack", "ref": "u"})
    );
    for ws in [&mut far, &mut near] {
        for i in 0..300u64 {
            let m = next_pub(ws).await;
            assert_eq!(
                (m["offset"].as_u64(), m["data"].as_u64()),
                (Some(i + 1), Some(i))
            );
        }
    }
    assert_eq!(next_pub(&mut far).await["data"], "direct");
    for s in nodes {
        s.shutdown().await;
    }
}

#[tokio::test]
async fn a_retry_sent_to_another_node_is_answered_as_the_first_and_delivered_once() {
    let nodes = cluster(2).await;
    let (mut on0, _) = nodes[0].connect("reader0").await;
    let (mut on1, _) = nodes[1].connect("reader1").await;
    for ws in [&mut on0, &mut on1] {
        subscribe(ws, "news", None).await;
        subscribe(ws, "live:x", None).await;
    }
    for (body, what) in [
        (
            json!({"channel": "news", "data": "h"}),
            "a channel with history",
        ),
        (
            json!({"channel": "live:x", "data": "l"}),
            "a channel without history",
        ),
        (json!({"all": true, "data": "a"}), "everyone"),
    ] {
        let mut first = body.clone();
        first["idempotency_key"] = json!(format!("key-{what}"));
        let answer = nodes[0].publish(first.clone()).await;
        assert_eq!(answer.0, 200, "{what}: {}", answer.1);
        for ws in [&mut on0, &mut on1] {
            assert_eq!(next_pub(ws).await["data"], body["data"], "{what}");
        }
        // The retry goes to the other node, with other data: the key makes it a repeat.
        let answered_again = poll_until(WAIT, || {
            let mut retry = first.clone();
            retry["data"] = json!("retried");
            let node = &nodes[1];
            let want = answer.clone();
            async move { node.publish(retry).await == want }
        });
        assert!(
            answered_again.await,
            "{what}: the first answer, from the other node"
        );
        for ws in [&mut on0, &mut on1] {
            assert!(maybe_pub(ws).await.is_none(), "{what}: delivered once");
        }
    }
    let repeated: u64 = nodes[1].stats().await["publications_repeated"]
        .as_u64()
        .unwrap();
    assert!(repeated >= 3, "{repeated}");
    for s in nodes {
        s.shutdown().await;
    }
}

#[tokio::test]
async fn a_revocation_reaches_every_node_and_nodes_that_start_later() {
    use crate::revoke::{close_of, refusal};
    let nodes = cluster(2).await;
    let now = herald::auth::jwt::now_unix();
    let old = nodes[0].token_with("mallory", |c| c.iat = Some(now - 60));
    let (mut on1, _) = nodes[1].connect_token(&old).await;
    let (status, body) = nodes[0]
        .post_json(
            "/api/users/mallory/revoke",
            &nodes[0].api_key.clone(),
            json!({"before": now}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["forwarded"], true, "{body}");
    assert_eq!(
        close_of(&mut on1).await.map(|c| c.0),
        Some(4002),
        "closed on the other node"
    );
    assert_eq!(refusal(&nodes[1], &old).await.map(|r| r.0), Some(401));
    let (status, _) = nodes[1]
        .post_json(
            "/api/tokens/stolen-1/revoke",
            &nodes[1].api_key.clone(),
            json!({}),
        )
        .await;
    assert_eq!(status, 200);
    let stolen = nodes[0].token_with("eve", |c| c.jti = Some("stolen-1".into()));
    let refused_on_0 = poll_until(WAIT, || async {
        refusal(&nodes[0], &stolen).await.is_some()
    });
    assert!(
        refused_on_0.await,
        "the token id is refused on the other node"
    );
    // A node that starts now reads both from Redis.
    let late = join_cluster(&nodes[0]).await;
    let refused_late = poll_until(WAIT, || async {
        refusal(&late, &old).await.is_some() && refusal(&late, &stolen).await.is_some()
    });
    assert!(refused_late.await, "a node started later refuses them too");
    assert!(
        refusal(&late, &late.token("mallory")).await.is_none(),
        "a new token is fine"
    );
    late.shutdown().await;
    for s in nodes {
        s.shutdown().await;
    }
}

#[tokio::test]
async fn the_latest_publication_follows_subscribed_on_a_node_that_never_saw_the_channel() {
    let first = cluster(1).await;
    let small = small_budget_node(&first[0]).await;
    for song in ["one", "two"] {
        first[0]
            .publish(json!({"channel": "now:radio", "data": {"song": song}}))
            .await;
    }
    // Never followed on `small`: the subscribe primes its copy from Redis.
    let (mut tab, _) = small.connect("tab").await;
    assert_eq!(
        subscribe(&mut tab, "now:radio", None).await["recovered"],
        false
    );
    let m = next_pub(&mut tab).await;
    assert_eq!(
        (&m["data"]["song"], &m["offset"]),
        (&json!("two"), &json!(2)),
        "{m}"
    );
    // Its copy gives the latest up to the budget (publications elsewhere push it out):
    // the next tab still gets it, read from the shared history.
    let (mut w, _) = small.connect("w").await;
    subscribe(&mut w, "news", None).await;
    let pad = "x".repeat(200);
    for n in 1..=20u64 {
        first[0]
            .publish(json!({"channel": "news", "data": {"n": n, "pad": pad}}))
            .await;
    }
    for n in 1..=20u64 {
        assert_eq!(next_pub(&mut w).await["data"]["n"], n);
    }
    let (mut later, _) = small.connect("later").await;
    subscribe(&mut later, "now:radio", None).await;
    let m = next_pub(&mut later).await;
    assert_eq!(
        (&m["data"]["song"], &m["offset"]),
        (&json!("two"), &json!(2)),
        "{m}"
    );
    assert!(
        maybe_pub(&mut tab).await.is_none(),
        "the first tab got it once"
    );
    small.shutdown().await;
    for s in first {
        s.shutdown().await;
    }
}

#[tokio::test]
async fn a_server_side_subscription_follows_the_channel_across_nodes() {
    let nodes = cluster(2).await;
    let token = nodes[1].token_with("viewer", |c| c.channels = vec!["news".into()]);
    let (mut ws, _) = nodes[1].connect_token(&token).await;
    // `subscribed` comes once the node follows the channel (as for a client's own
    // subscribe): a publication on the other node reaches it from then on.
    assert_eq!(next_json(&mut ws).await["type"], "subscribed");
    nodes[0]
        .publish(json!({"channel": "news", "data": "x"}))
        .await;
    assert_eq!(next_pub(&mut ws).await["data"], "x");
    for s in nodes {
        s.shutdown().await;
    }
}

#[tokio::test]
async fn each_nats_message_is_relayed_once_per_cluster() {
    use crate::relay::{probe_through, OwnNats};
    let nats = OwnNats::start_on(free_port());
    let client = nats.client().await;
    let prefix = format!("herald-it-{:08x}", rand::random::<u32>());
    let subject_pattern = format!("{prefix}.user.*.sync");
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(
            TestServer::start_with(|c| {
                cluster_config(c, &redis_url(), &prefix);
                c.relay.nats_url = nats.url();
                c.relay.nats_subject = subject_pattern.clone();
            })
            .await,
        );
    }
    for s in &nodes {
        let ready = poll_until(WAIT, || async {
            let r = s.get_json("/readyz").await.1;
            r["broker"] == "ok" && r["relay"] == "ok"
        });
        assert!(ready.await, "node subscribed to the bus and to NATS");
    }
    let mut tv = sync_device(&nodes[0], "42", "tv").await;
    let mut phone = sync_device(&nodes[2], "42", "phone").await;
    let subject = format!("{prefix}.user.42.sync");
    probe_through(&client, &subject, &mut tv, &mut [&mut phone]).await;
    for i in 0..20 {
        let event =
            json!({"type": "watchlist_update", "content_id": format!("c{i}"), "action": "add"});
        client
            .publish(subject.clone(), event.to_string().into())
            .await
            .unwrap();
    }
    for ws in [&mut tv, &mut phone] {
        for i in 0..20 {
            assert_eq!(
                next_pub(ws).await["data"]["content_id"],
                format!("c{i}"),
                "in order, once"
            );
        }
        assert!(
            maybe_pub(ws).await.is_none(),
            "once per cluster, not once per node"
        );
    }
    let relayed: u64 = {
        let mut n = 0;
        for s in &nodes {
            n += s.stats().await["publications"].as_u64().unwrap_or(0);
        }
        n
    };
    assert!(relayed > 0);
    for s in nodes {
        s.shutdown().await;
    }
}

#[tokio::test]
async fn a_user_s_events_are_relayed_even_when_their_chosen_node_does_not_relay() {
    use crate::relay::OwnNats;
    let nats = OwnNats::start_on(free_port());
    let client = nats.client().await;
    let prefix = format!("herald-it-{:08x}", rand::random::<u32>());
    let pattern = format!("{prefix}.user.*.sync");
    let relaying = TestServer::start_with(|c| {
        cluster_config(c, &redis_url(), &prefix);
        c.relay.nats_url = nats.url();
        c.relay.nats_subject = pattern.clone();
    })
    .await;
    // In the cluster, and chosen for about half the users, but relays nothing.
    let silent = TestServer::start_with(|c| cluster_config(c, &redis_url(), &prefix)).await;
    let both = poll_until(WAIT, || async {
        relaying.stats().await["cluster"]["nodes"] == 2
            && silent.get_json("/readyz").await.1["broker"] == "ok"
    });
    assert!(both.await, "two nodes in the cluster view");
    let ready = poll_until(WAIT, || async {
        relaying.get_json("/readyz").await.1["relay"] == "ok"
    });
    assert!(ready.await);
    // The relay refreshes its view of the nodes every second and does not show it; until
    // it has seen `silent`, it relays everything itself (the test would pass without
    // exercising the fallback), so this waits out one refresh — the one sleep here.
    let mut devices = Vec::new();
    for u in 0..12 {
        devices.push(sync_device(&relaying, &format!("u{u}"), "tv").await);
    }
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    for round in 0..2 {
        for u in 0..12 {
            let event = json!({"type": "watchlist_update", "content_id": format!("r{round}"), "action": "add"});
            client
                .publish(format!("{prefix}.user.u{u}.sync"), event.to_string().into())
                .await
                .unwrap();
        }
        for ws in devices.iter_mut() {
            assert_eq!(
                next_pub(ws).await["data"]["content_id"],
                format!("r{round}")
            );
        }
    }
    for ws in devices.iter_mut() {
        assert!(maybe_pub(ws).await.is_none(), "once");
    }
    relaying.shutdown().await;
    silent.shutdown().await;
}
