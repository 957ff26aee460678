//! The Redis Cluster broker (DESIGN §13 item 1: `broker.url = "redis+cluster://…"`)
//! against a real cluster of 3 masters and 3 replicas on loopback, started for each
//! test by `scripts/redis-cluster` and stopped when the test ends.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::scale_out::{cluster_at, subscribe};
use crate::support::*;

/// A Redis Cluster of this test's own.
struct RedisCluster {
    dir: TempDir,
    base: u16,
}

fn script() -> String {
    format!("{}/../../scripts/redis-cluster", env!("CARGO_MANIFEST_DIR"))
}

fn port_free(p: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()
}

impl RedisCluster {
    fn start() -> RedisCluster {
        let dir = TempDir::new();
        for _ in 0..50 {
            let base = 20_000 + (rand::random::<u16>() % 9_000);
            if !(base..base + 6).all(|p| port_free(p) && port_free(p + 10_000)) {
                continue;
            }
            let out = Command::new("bash")
                .arg(script())
                .arg("start")
                .arg(&dir.0)
                .arg(base.to_string())
                .output()
                .expect("scripts/redis-cluster runs");
            if out.status.success() {
                return RedisCluster { dir, base };
            }
            eprintln!(
                "redis-cluster start at {base} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        panic!("could not start a Redis Cluster");
    }

    fn url(&self) -> String {
        format!(
            "redis+cluster://127.0.0.1:{},127.0.0.1:{}",
            self.base,
            self.base + 1
        )
    }

    fn cli(&self, port: u16, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .arg("-p")
            .arg(port.to_string())
            .args(args)
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Each master's port and the slot ranges it serves, as a surviving node sees it.
    fn masters(&self, ask: u16) -> Vec<(u16, Vec<(u16, u16)>)> {
        self.cli(ask, &["cluster", "nodes"])
            .lines()
            .filter(|l| l.contains("master") && !l.contains("fail"))
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let port = f
                    .get(1)?
                    .split('@')
                    .next()?
                    .rsplit(':')
                    .next()?
                    .parse()
                    .ok()?;
                let ranges = f
                    .iter()
                    .skip(8)
                    .filter_map(|r| {
                        let (a, b) = r.split_once('-').unwrap_or((r, r));
                        Some((a.parse().ok()?, b.parse().ok()?))
                    })
                    .collect();
                Some((port, ranges))
            })
            .collect()
    }

    /// The port of the master that owns `key`'s slot.
    fn owner_of(&self, key: &str, ask: u16) -> u16 {
        self.maybe_owner_of(key, ask).expect("an owner")
    }

    /// The port of the master that owns `key`'s slot, if one does (none mid-failover).
    fn maybe_owner_of(&self, key: &str, ask: u16) -> Option<u16> {
        let slot: u16 = self
            .cli(ask, &["cluster", "keyslot", key])
            .trim()
            .parse()
            .unwrap();
        self.masters(ask)
            .into_iter()
            .find(|(_, ranges)| ranges.iter().any(|(a, b)| (*a..=*b).contains(&slot)))
            .map(|(port, _)| port)
    }

    fn pid_of(&self, port: u16) -> u32 {
        let pids = std::fs::read_to_string(self.dir.0.join("pids")).unwrap();
        pids.lines()
            .find_map(|l| {
                let (pid, p) = l.split_once(' ')?;
                (p.trim() == port.to_string()).then(|| pid.parse().ok())?
            })
            .expect("a pid for the port")
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .arg("stop")
            .arg(&self.dir.0)
            .output();
    }
}

#[tokio::test]
async fn channels_live_on_their_own_shard_and_every_target_reaches_every_node() {
    let redis = RedisCluster::start();
    let nodes = cluster_at(&redis.url(), 2).await;
    let prefix = nodes[0].node().app.cfg().broker.prefix.clone();
    // Two channels whose slots two different masters own.
    let topic = |c: &str| format!("{prefix}:ch:{{{c}}}");
    let a = "news";
    let b = (0..100)
        .map(|i| format!("feed{i}"))
        .find(|c| redis.owner_of(&topic(c), redis.base) != redis.owner_of(&topic(a), redis.base))
        .unwrap();
    let (mut alice, _) = nodes[0].connect("alice").await;
    let (mut bob, _) = nodes[1].connect("bob").await;
    for ws in [&mut alice, &mut bob] {
        subscribe(ws, a, None).await;
        subscribe(ws, &b, None).await;
    }
    // Each channel's publication travels on its shard only: only its owner knows the
    // shard channel.
    for c in [a, b.as_str()] {
        let owner = redis.owner_of(&topic(c), redis.base);
        for (port, _) in redis.masters(redis.base) {
            let listed = redis.cli(port, &["pubsub", "shardchannels", &topic(c)]);
            assert_eq!(
                listed.trim() == topic(c),
                port == owner,
                "{c} on :{port} (owner :{owner}): {listed:?}"
            );
        }
    }
    for n in 1..=20u64 {
        let (s1, _) = nodes[1].publish(json!({"channel": a, "data": n})).await;
        let (s2, _) = nodes[0].publish(json!({"channel": b, "data": n})).await;
        assert_eq!((s1, s2), (200, 200));
    }
    for ws in [&mut alice, &mut bob] {
        let (mut na, mut nb) = (0, 0);
        while na < 20 || nb < 20 {
            let m = next_pub(ws).await;
            let got = if m["channel"] == a { &mut na } else { &mut nb };
            *got += 1;
            assert_eq!(m["offset"].as_u64(), Some(*got), "in order, once: {m}");
            assert_eq!(m["data"].as_u64(), Some(*got));
        }
    }
    // Users and everyone travel on the bus, to every node.
    let (status, _) = nodes[0]
        .publish(json!({"user": "bob", "data": "to bob"}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(next_pub(&mut bob).await["data"], "to bob");
    nodes[1].publish(json!({"all": true, "data": "all"})).await;
    for ws in [&mut alice, &mut bob] {
        assert_eq!(next_pub(ws).await["data"], "all");
    }
    // The shared history on the channel's shard: a client that was away recovers on
    // the other node.
    let epoch = nodes[0].node().app.hub.registry.channels.top(a).unwrap().1;
    let (mut late, _) = nodes[1].connect("late").await;
    let sub = subscribe(&mut late, a, Some((15, &epoch))).await;
    assert_eq!(sub["recovered"], true, "{sub}");
    for n in 16..=20 {
        assert_eq!(next_pub(&mut late).await["offset"], n);
    }
    // The cluster view lives on the cluster too.
    let stats = nodes[0].stats().await;
    assert_eq!(stats["cluster"]["nodes"], 2, "{stats}");
    for s in nodes {
        s.shutdown().await;
    }
}

#[tokio::test]
async fn a_master_killed_during_a_publish_load_loses_nothing_on_a_history_channel() {
    let redis = RedisCluster::start();
    let nodes = cluster_at(&redis.url(), 2).await;
    let prefix = nodes[0].node().app.cfg().broker.prefix.clone();
    let channel = "orders";
    let owner = redis.owner_of(&format!("{prefix}:ch:{{{channel}}}"), redis.base);
    let (mut watcher, _) = nodes[0].connect("w").await;
    subscribe(&mut watcher, channel, None).await;
    let total: u64 = 150;
    let (http, addr, key) = (
        nodes[1].http.clone(),
        nodes[1].addr,
        nodes[1].api_key.clone(),
    );
    // A publisher as the docs advise: a refused publication (503 while the shard fails
    // over) is sent again with the same idempotency key until it is accepted.
    let publisher = tokio::spawn(async move {
        let mut refused = 0;
        for n in 1..=total {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let sent = http
                    .post(format!("http://{addr}/api/publish"))
                    .bearer_auth(&key)
                    .json(
                        &json!({"channel": channel, "data": n, "idempotency_key": format!("o{n}")}),
                    )
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await;
                if matches!(&sent, Ok(r) if r.status().as_u16() == 200) {
                    break;
                }
                refused += 1;
                assert!(Instant::now() < deadline, "publication {n} never accepted");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        refused
    });
    let mut seen = Vec::new();
    while seen.len() < 30 {
        seen.push(next_pub(&mut watcher).await);
    }
    let killed = Command::new("kill")
        .arg("-9")
        .arg(redis.pid_of(owner).to_string())
        .status()
        .unwrap();
    assert!(killed.success());
    let ask = if owner == redis.base {
        redis.base + 1
    } else {
        redis.base
    };
    let failed_over = poll_until(Duration::from_secs(20), || async {
        let now = redis.maybe_owner_of(&format!("{prefix}:ch:{{{channel}}}"), ask);
        now.is_some_and(|p| p != owner)
    });
    assert!(failed_over.await, "a replica took over");
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.last().and_then(|m| m["data"].as_u64()) != Some(total) {
        assert!(
            Instant::now() < deadline,
            "the rest arrived: {} so far, the last {:?}; publisher's node: {}; new owner :{:?} has {:?}",
            seen.len(),
            seen.last(),
            nodes[1].stats().await["publications"],
            redis.maybe_owner_of(&format!("{prefix}:ch:{{{channel}}}"), ask),
            redis.maybe_owner_of(&format!("{prefix}:ch:{{{channel}}}"), ask).map(|p| redis.cli(p, &["pubsub", "shardnumsub", &format!("{prefix}:ch:{{{channel}}}")]))
        );
        if let Some(m) = maybe_pub(&mut watcher).await {
            seen.push(m);
        }
    }
    let refused = publisher.await.unwrap();
    // Nothing lost, nothing twice, in order: every publication once, offsets without a gap.
    let data: Vec<u64> = seen.iter().filter_map(|m| m["data"].as_u64()).collect();
    assert_eq!(
        data,
        (1..=total).collect::<Vec<_>>(),
        "refused and retried: {refused}"
    );
    let offsets: Vec<u64> = seen.iter().filter_map(|m| m["offset"].as_u64()).collect();
    assert!(offsets.windows(2).all(|w| w[1] == w[0] + 1), "{offsets:?}");
    eprintln!("failover: {refused} refusals retried, {total} delivered once each");
    for s in nodes {
        s.shutdown().await;
    }
}

impl RedisCluster {
    /// The node id of the master on `port`.
    fn id_of(&self, port: u16) -> String {
        self.cli(port, &["cluster", "myid"]).trim().to_owned()
    }

    /// Moves `key`'s slot, and the keys in it, from its master to the master on `to`
    /// (the steps `redis-cli --cluster reshard` takes, for one slot).
    fn move_slot_of(&self, key: &str, to: u16) {
        let from = self.owner_of(key, self.base);
        let slot = self
            .cli(from, &["cluster", "keyslot", key])
            .trim()
            .to_owned();
        let (from_id, to_id) = (self.id_of(from), self.id_of(to));
        self.cli(to, &["cluster", "setslot", &slot, "importing", &from_id]);
        self.cli(from, &["cluster", "setslot", &slot, "migrating", &to_id]);
        loop {
            let keys = self.cli(from, &["cluster", "getkeysinslot", &slot, "100"]);
            let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
            if keys.is_empty() {
                break;
            }
            let mut args = vec!["migrate", "127.0.0.1", "", "", "0", "5000", "keys"];
            let port = to.to_string();
            args[2] = &port;
            args.extend(keys);
            let out = self.cli(from, &args);
            assert!(out.contains("OK"), "MIGRATE: {out}");
        }
        for (port, _) in self.masters(self.base) {
            self.cli(port, &["cluster", "setslot", &slot, "node", &to_id]);
        }
    }
}

#[tokio::test]
async fn a_channel_whose_slot_moves_to_another_shard_is_followed_there() {
    let redis = RedisCluster::start();
    let nodes = cluster_at(&redis.url(), 2).await;
    let prefix = nodes[0].node().app.cfg().broker.prefix.clone();
    let channel = "moving";
    let topic = format!("{prefix}:ch:{{{channel}}}");
    let (mut watcher, _) = nodes[0].connect("w").await;
    subscribe(&mut watcher, channel, None).await;
    for n in 1..=5u64 {
        assert_eq!(
            nodes[1]
                .publish(json!({"channel": channel, "data": n}))
                .await
                .0,
            200
        );
    }
    for n in 1..=5u64 {
        assert_eq!(next_pub(&mut watcher).await["offset"], n);
    }
    let from = redis.owner_of(&topic, redis.base);
    let to = redis
        .masters(redis.base)
        .into_iter()
        .map(|(p, _)| p)
        .find(|p| *p != from)
        .unwrap();
    redis.move_slot_of(&topic, to);
    // The old owner dropped the shard channel's subscribers; the node follows it again
    // at the new owner.
    let followed = poll_until(Duration::from_secs(15), || async {
        let listed = redis.cli(to, &["pubsub", "shardnumsub", &topic]);
        listed.lines().nth(1).is_some_and(|n| n.trim() != "0")
    });
    assert!(followed.await, "followed again at :{to}");
    // History moved with the slot: offsets go on, nothing is lost or repeated.
    for n in 6..=10u64 {
        let (status, body) = nodes[1]
            .publish(json!({"channel": channel, "data": n}))
            .await;
        assert_eq!(status, 200, "{body}");
    }
    for n in 6..=10u64 {
        let m = next_pub(&mut watcher).await;
        assert_eq!(
            (m["offset"].as_u64(), m["data"].as_u64()),
            (Some(n), Some(n)),
            "{m}"
        );
    }
    for s in nodes {
        s.shutdown().await;
    }
}
