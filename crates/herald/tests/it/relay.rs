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
