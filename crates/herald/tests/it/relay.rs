//! The upstream sync relay against the real Redis on this machine (`REDIS_URL`, default
//! `redis://127.0.0.1:6379`): seed 002's events, published by another system, reach the
//! user's other devices converted, and never the device that sent them.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

async fn redis_publish(
    conn: &mut redis::aio::MultiplexedConnection,
    channel: &str,
    payload: &Value,
) {
    let _: i64 = redis::cmd("PUBLISH")
        .arg(channel)
        .arg(payload.to_string())
        .query_async(conn)
        .await
        .unwrap();
}

#[tokio::test]
async fn upstream_events_are_converted_and_relayed_to_the_other_devices() {
    // A pattern of our own, so parallel tests and other users of this Redis never interfere.
    let tag = format!("herald-it-{:08x}", rand::random::<u32>());
    let pattern = format!("{tag}.user.*.sync");
    let s = TestServer::start_with(|c| {
        c.relay.redis_url = redis_url();
        c.relay.redis_pattern = pattern.clone();
    })
    .await;
    let mut tv = sync_device(&s, "42", "tv").await;
    let mut phone = sync_device(&s, "42", "phone").await;
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("the test Redis is reachable (scripts/test starts it)");
    let bus = format!("{tag}.user.42.sync");

    // The relay subscribes asynchronously: probe until a message makes it through.
    let probe = json!({"type": "watchlist_update", "content_id": "probe", "action": "add"});
    let mut through = false;
    for _ in 0..100 {
        redis_publish(&mut conn, &bus, &probe).await;
        if let Ok(m) = tokio::time::timeout(Duration::from_millis(100), next_json(&mut tv)).await {
            assert_eq!(m["data"]["content_id"], "probe");
            through = true;
            break;
        }
    }
    assert!(through, "the relay subscribed to Redis");
    // Drain any extra probes that were in flight, on both devices.
    for ws in [&mut tv, &mut phone] {
        while tokio::time::timeout(Duration::from_millis(300), next_json(ws))
            .await
            .is_ok()
        {}
    }

    // Seed 002's example: from device A ("phone") to B; converted field names.
    let upstream = json!({"type": "progress_update", "content_id": "uuid-123", "position_seconds": 1234,
                          "duration_seconds": 7200, "timestamp": {}, "device_id": "phone"});
    redis_publish(&mut conn, &bus, &upstream).await;
    let m = next_json(&mut tv).await;
    assert_eq!(m["channel"], "sync:42");
    assert_eq!(
        m["data"],
        json!({"type": "progress_update", "content_id": "uuid-123", "position": 1234.0, "duration": 7200.0})
    );
    assert!(
        m["offset"].as_u64().is_some(),
        "kept in history like any sync event"
    );

    // Invalid upstream messages are skipped; the relay keeps going.
    redis_publish(&mut conn, &bus, &json!({"type": "progress_update"})).await;
    redis_publish(&mut conn, &format!("{tag}.user.a:b.sync"), &probe).await;
    let _: i64 = redis::cmd("PUBLISH")
        .arg(&bus)
        .arg("not json")
        .query_async(&mut conn)
        .await
        .unwrap();
    let cmd = json!({"type": "device_handoff", "command": "play", "target_device": "phone", "device_id": "tv"});
    redis_publish(&mut conn, &bus, &cmd).await;
    let m = next_json(&mut phone).await;
    assert_eq!(
        m["data"],
        json!({"type": "device_command", "command": "play", "target_device": "phone"})
    );
    // The phone never saw its own progress update: the command was its next frame.
    s.shutdown().await;
}

/// A `nats-server` of this test's own on `port`, so it can be stopped and started again.
pub struct OwnNats {
    child: std::process::Child,
    port: u16,
}

impl OwnNats {
    pub fn start_on(port: u16) -> OwnNats {
        let binary = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .unwrap_or("nats-server");
        let child = std::process::Command::new(binary)
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nats-server is installed (scripts/test installs it)");
        OwnNats { child, port }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub async fn client(&self) -> async_nats::Client {
        let up = poll_until(WAIT, || async {
            async_nats::connect(self.url()).await.is_ok()
        });
        assert!(up.await, "own nats-server up");
        async_nats::connect(self.url())
            .await
            .expect("own nats-server up")
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OwnNats {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Publishes `probe` on `subject` until `ws` receives it (the relay subscribes in the
/// background), then drains what else arrives on `others`.
pub async fn probe_through(
    nats: &async_nats::Client,
    subject: &str,
    ws: &mut Ws,
    others: &mut [&mut Ws],
) {
    let probe = json!({"type": "watchlist_update", "content_id": "probe", "action": "add"});
    let mut through = false;
    for _ in 0..100 {
        nats.publish(subject.to_owned(), probe.to_string().into())
            .await
            .unwrap();
        if let Ok(m) = tokio::time::timeout(Duration::from_millis(100), next_json(ws)).await {
            assert_eq!(m["data"]["content_id"], "probe");
            through = true;
            break;
        }
    }
    assert!(through, "the relay subscribed to NATS");
    for w in std::iter::once(ws).chain(others.iter_mut().map(|w| &mut **w)) {
        while tokio::time::timeout(Duration::from_millis(300), next_json(w))
            .await
            .is_ok()
        {}
    }
}

#[tokio::test]
async fn nats_events_are_converted_relayed_counted_when_bad_and_survive_a_server_restart() {
    let port = free_port();
    let mut nats = OwnNats::start_on(port);
    let client = nats.client().await;
    let tag = format!("it{:08x}", rand::random::<u32>());
    let s = TestServer::start_with(|c| {
        c.relay.nats_url = nats.url();
        c.relay.nats_subject = format!("{tag}.user.*.sync");
    })
    .await;
    let mut tv = sync_device(&s, "42", "tv").await;
    let mut phone = sync_device(&s, "42", "phone").await;
    let subject = format!("{tag}.user.42.sync");
    probe_through(&client, &subject, &mut tv, &mut [&mut phone]).await;

    let upstream = json!({"type": "progress_update", "content_id": "uuid-123", "position_seconds": 1234,
                          "duration_seconds": 7200, "device_id": "phone"});
    client
        .publish(subject.clone(), upstream.to_string().into())
        .await
        .unwrap();
    let m = next_json(&mut tv).await;
    assert_eq!(m["channel"], "sync:42");
    assert_eq!(
        m["data"],
        json!({"type": "progress_update", "content_id": "uuid-123", "position": 1234.0, "duration": 7200.0})
    );
    // Not JSON, not an event: dropped and counted; the relay goes on.
    for bad in ["not json", r#"{"type":"progress_update"}"#] {
        client.publish(subject.clone(), bad.into()).await.unwrap();
    }
    let counted = poll_until(WAIT, || async {
        s.stats().await["relay_skipped"].as_u64() == Some(2)
    });
    assert!(counted.await, "{}", s.stats().await);
    let cmd = json!({"type": "device_handoff", "command": "play", "target_device": "phone", "device_id": "tv"});
    client
        .publish(subject.clone(), cmd.to_string().into())
        .await
        .unwrap();
    let m = next_json(&mut phone).await;
    assert_eq!(m["data"]["type"], "device_command", "{m}");
    // The phone never saw its own progress update: the command was its next frame.

    // The NATS server goes away and comes back: the relay reconnects by itself.
    nats.stop();
    let not_ready = poll_until(WAIT, || async {
        s.get_json("/readyz").await.1["relay"] == "connecting"
    });
    assert!(not_ready.await, "readyz says the relay is connecting");
    let nats = OwnNats::start_on(port);
    let client = nats.client().await;
    probe_through(&client, &subject, &mut tv, &mut [&mut phone]).await;
    assert_eq!(s.get_json("/readyz").await.1["relay"], "ok");
    s.shutdown().await;
}

#[test]
fn a_nats_relay_that_cannot_work_is_a_config_error() {
    let mut cfg = herald::config::Config::default();
    cfg.relay.nats_url = "http://nats:4222".into();
    cfg.relay.nats_subject = "user.>".into();
    let err = cfg.validate().unwrap_err().to_string();
    assert!(
        err.contains("relay.nats_url") && err.contains("relay.nats_subject"),
        "{err}"
    );
    cfg.relay.nats_url = "nats://127.0.0.1:4222".into();
    cfg.relay.redis_url = "redis://127.0.0.1:6379".into();
    cfg.relay.nats_subject = "user.*.sync".into();
    let err = cfg.validate().unwrap_err().to_string();
    assert!(err.contains("one bus"), "{err}");
    cfg.relay.redis_url.clear();
    assert!(cfg.validate().is_ok());
}
