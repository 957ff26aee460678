//! Channels with history: recovery with `since`, races, permissions, drop_oldest.

use std::time::Duration;

use herald::config::{NamespaceConfig, SlowConsumerPolicy, SubscribeRule};
use serde_json::{json, Value};

use crate::support::*;

async fn subscribe(ws: &mut Ws, channel: &str, since: Option<(u64, &str)>) -> Value {
    let mut msg = json!({"type": "subscribe", "channel": channel});
    if let Some((offset, epoch)) = since {
        msg["since"] = json!({"offset": offset, "epoch": epoch});
    }
    send_text(ws, &msg.to_string()).await;
    let reply = next_json(ws).await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    reply
}

#[tokio::test]
async fn reconnect_with_since_gets_exactly_the_missed_publications() {
    let s = TestServer::start().await;
    let (mut a, _) = s.connect("1").await;
    let sub = subscribe(&mut a, "news", None).await;
    assert_eq!(
        (sub["offset"].as_u64(), sub["recovered"].as_bool()),
        (Some(0), Some(false))
    );
    let epoch = sub["epoch"].as_str().unwrap().to_owned();
    assert!(!epoch.is_empty());
    let (_, body) = s.publish(json!({"channel": "news", "data": 1})).await;
    assert_eq!(
        (body["offset"].as_u64(), body["epoch"].as_str()),
        (Some(1), Some(epoch.as_str()))
    );
    let first = next_pub(&mut a).await;
    assert_eq!(
        (first["offset"].as_u64(), first["epoch"].as_str()),
        (Some(1), Some(epoch.as_str()))
    );
    drop(a);

    for n in 2..=6 {
        s.publish(json!({"channel": "news", "data": n})).await;
    }
    let (mut a, _) = s.connect("1").await;
    let sub = subscribe(&mut a, "news", Some((1, &epoch))).await;
    assert_eq!(
        (sub["recovered"].as_bool(), sub["offset"].as_u64()),
        (Some(true), Some(6))
    );
    for n in 2..=6 {
        let m = next_pub(&mut a).await;
        assert_eq!(
            (m["offset"].as_u64(), m["data"].as_u64()),
            (Some(n), Some(n))
        );
    }
    s.publish(json!({"channel": "news", "data": 7})).await;
    assert_eq!(next_pub(&mut a).await["offset"], 7, "live after the replay");

    // Nothing missed is also a recovery.
    let (mut b, _) = s.connect("2").await;
    let sub = subscribe(&mut b, "news", Some((7, &epoch))).await;
    assert_eq!(sub["recovered"], true);
    s.shutdown().await;
}

#[tokio::test]
async fn wrong_epoch_or_trimmed_history_is_not_recovered() {
    let s = TestServer::start_with(|c| {
        c.namespaces.insert(
            "short".into(),
            NamespaceConfig {
                history_size: 3,
                ..NamespaceConfig::default()
            },
        );
    })
    .await;
    let (mut a, _) = s.connect("1").await;
    let epoch = subscribe(&mut a, "short:x", None).await["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    for n in 1..=10 {
        s.publish(json!({"channel": "short:x", "data": n})).await;
    }
    let (mut b, _) = s.connect("2").await;
    let sub = subscribe(&mut b, "short:x", Some((2, &epoch))).await;
    assert_eq!(
        (sub["recovered"].as_bool(), sub["offset"].as_u64()),
        (Some(false), Some(10)),
        "offsets 3..7 were trimmed"
    );
    let sub = subscribe(&mut b, "news", Some((0, "another-epoch"))).await;
    assert_eq!(sub["recovered"], false);
    // Within the kept window it recovers.
    let (mut c, _) = s.connect("3").await;
    let sub = subscribe(&mut c, "short:x", Some((7, &epoch))).await;
    assert_eq!(sub["recovered"], true);
    for n in 8..=10 {
        assert_eq!(next_pub(&mut c).await["offset"], n);
    }
    s.shutdown().await;
}

#[tokio::test]
async fn a_publish_storm_during_subscribe_loses_and_duplicates_nothing() {
    let s = TestServer::start_with(|c| {
        if let Some(d) = c.namespaces.get_mut("default") {
            d.history_size = 1000;
        }
    })
    .await;
    let total: u64 = 200;
    for round in 0..10 {
        let channel = format!("storm-{round}");
        let (mut watcher, _) = s.connect("w").await;
        let epoch = subscribe(&mut watcher, &channel, None).await["epoch"]
            .as_str()
            .unwrap()
            .to_owned();
        let (http, addr, key, ch) = (s.http.clone(), s.addr, s.api_key.clone(), channel.clone());
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
        // Subscribe mid-storm with a `since` a few offsets back.
        let mut seen = 0;
        while seen < 10 + round {
            seen = next_pub(&mut watcher).await["offset"].as_u64().unwrap();
        }
        let since = seen - 5;
        let (mut late, _) = s.connect("late").await;
        let sub = subscribe(&mut late, &channel, Some((since, &epoch))).await;
        assert_eq!(sub["recovered"], true, "round {round}");
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
        // And nothing after the last one: a marker on another target arrives next.
        s.publish(json!({"user": "late", "data": "marker"})).await;
        assert_eq!(
            next_json(&mut late).await["data"],
            "marker",
            "round {round}: duplicate after the end"
        );
    }
    s.shutdown().await;
}

#[tokio::test]
async fn namespace_rules_are_enforced() {
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
    let (mut u42, _) = s.connect("42").await;
    for (msg, code) in [
        (
            json!({"type": "subscribe", "channel": "sync:420", "ref": 1}),
            "forbidden",
        ),
        (
            json!({"type": "subscribe", "channel": "sync:4", "ref": 2}),
            "forbidden",
        ),
        (
            json!({"type": "subscribe", "channel": "staff:room", "ref": 3}),
            "forbidden",
        ),
        (
            json!({"type": "subscribe", "channel": "nowhere:x", "ref": 4}),
            "not_found",
        ),
        (
            json!({"type": "publish", "channel": "news", "data": 1, "ref": 5}),
            "forbidden",
        ),
        (
            json!({"type": "publish", "channel": "sync:420", "data": {"type": "watchlist_update", "content_id": "c", "action": "add"}, "ref": 6}),
            "forbidden",
        ),
    ] {
        send_text(&mut u42, &msg.to_string()).await;
        let e = next_json(&mut u42).await;
        assert_eq!(
            (e["type"].as_str(), e["code"].as_str(), &e["ref"]),
            (Some("error"), Some(code), &msg["ref"]),
            "{msg}"
        );
    }
    assert_eq!(
        subscribe(&mut u42, "sync:42", None).await["channel"],
        "sync:42"
    );
    let (mut admin, _) = s
        .connect_token(&s.token_with("boss", |c| c.admin = true))
        .await;
    subscribe(&mut admin, "staff:room", None).await;
    let (status, body) = s.publish(json!({"channel": "nowhere:x", "data": 1})).await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));
    s.shutdown().await;
}

#[tokio::test]
async fn drop_oldest_keeps_the_newest_for_a_stalled_client_without_closing_it() {
    let s = TestServer::start_with(|c| {
        c.ws.queue_messages = 8;
        c.namespaces.insert(
            "ticker".into(),
            NamespaceConfig {
                slow_consumer: SlowConsumerPolicy::DropOldest,
                history_size: 0,
                ..NamespaceConfig::default()
            },
        );
    })
    .await;
    let (mut stalled, _) = s.connect("1").await;
    subscribe(&mut stalled, "ticker:btc", None).await;
    let pad = "x".repeat(32 * 1024);
    let total = 300;
    for n in 1..=total {
        let (status, _) = s
            .publish(json!({"channel": "ticker:btc", "data": {"n": n, "pad": pad}}))
            .await;
        assert_eq!(status, 200);
    }
    let stats = s.stats().await;
    assert!(stats["dropped"].as_u64().unwrap() > 0, "{stats}");
    assert_eq!(stats["slow_consumer_disconnects"], 0);
    assert_eq!(s.node().app.hub.registry.connections(), 1, "not closed");
    // Reading now: numbers only increase, and the last one published arrives.
    let mut last = 0;
    while last < total {
        let m = tokio::time::timeout(Duration::from_secs(10), next_pub(&mut stalled))
            .await
            .expect("the newest arrives");
        let n = m["data"]["n"].as_u64().unwrap();
        assert!(n > last, "latest-wins keeps order");
        last = n;
    }
    s.shutdown().await;
}

#[tokio::test]
async fn what_drop_oldest_drops_is_told_with_where_to_recover_from() {
    let s = TestServer::start_with(|c| {
        c.ws.queue_messages = 8;
        c.namespaces.insert(
            "ticker".into(),
            NamespaceConfig {
                slow_consumer: SlowConsumerPolicy::DropOldest,
                history_size: 1000,
                ..NamespaceConfig::default()
            },
        );
    })
    .await;
    let (mut stalled, _) = s.connect("1").await;
    let sub = subscribe(&mut stalled, "ticker:eth", None).await;
    let epoch = sub["epoch"].clone();
    let pad = "x".repeat(32 * 1024);
    let total = 300;
    for n in 1..=total {
        let (status, _) = s
            .publish(json!({"channel": "ticker:eth", "data": {"n": n, "pad": pad}}))
            .await;
        assert_eq!(status, 200);
    }
    assert!(s.stats().await["dropped"].as_u64() > Some(0));
    // Reading now: every offset arrives or is named by a notice, in order, once; each
    // notice says where to recover from.
    let mut next = 1;
    let mut notices = Vec::new();
    while next <= total {
        let m = tokio::time::timeout(Duration::from_secs(10), next_json(&mut stalled))
            .await
            .expect("the rest arrives");
        match m["type"].as_str() {
            Some("pub") => {
                assert_eq!(m["offset"], next, "a pub out of order");
                next += 1;
            }
            Some("skipped") => {
                assert_eq!(
                    (&m["channel"], &m["offset"], &m["epoch"]),
                    (&json!("ticker:eth"), &json!(next - 1), &epoch),
                    "{m}"
                );
                next += m["count"].as_u64().unwrap();
                notices.push(m);
            }
            _ => panic!("{m}"),
        }
    }
    assert_eq!(next, total + 1, "nothing double-counted");
    assert!(!notices.is_empty(), "what was dropped was told");
    s.shutdown().await;
}

#[tokio::test]
async fn latest_on_subscribe_sends_the_last_publication_right_after_subscribed() {
    let s = TestServer::start_with(|c| {
        c.namespaces.insert(
            "now".into(),
            NamespaceConfig {
                latest_on_subscribe: true,
                ..NamespaceConfig::default()
            },
        );
    })
    .await;
    // Nothing published yet: `subscribed` alone.
    let (mut early, _) = s.connect("early").await;
    subscribe(&mut early, "now:radio", None).await;
    assert!(maybe_pub(&mut early).await.is_none());
    for song in ["one", "two", "three"] {
        s.publish(json!({"channel": "now:radio", "data": {"song": song}}))
            .await;
    }
    for song in ["one", "two", "three"] {
        assert_eq!(next_pub(&mut early).await["data"]["song"], song);
    }
    // A tab opened mid-song sees what is playing now, then what comes next.
    let (mut tab, _) = s.connect("tab").await;
    let sub = subscribe(&mut tab, "now:radio", None).await;
    assert_eq!(
        (&sub["offset"], &sub["recovered"]),
        (&json!(3), &json!(false))
    );
    let m = next_pub(&mut tab).await;
    assert_eq!(
        (&m["data"]["song"], &m["offset"]),
        (&json!("three"), &json!(3))
    );
    s.publish(json!({"channel": "now:radio", "data": {"song": "four"}}))
        .await;
    assert_eq!(next_pub(&mut tab).await["data"]["song"], "four");
    assert!(maybe_pub(&mut tab).await.is_none(), "nothing twice");
    // A `since` means recovery as usual, not the latest on top of it.
    let epoch = sub["epoch"].as_str().unwrap().to_owned();
    let (mut back, _) = s.connect("back").await;
    let sub = subscribe(&mut back, "now:radio", Some((4, &epoch))).await;
    assert_eq!(sub["recovered"], true);
    assert!(maybe_pub(&mut back).await.is_none());
    // The last publication excluded a user: that user's new tab does not get it.
    s.publish(json!({"channel": "now:radio", "data": {"song": "five"}, "exclude_user": "muted"}))
        .await;
    let (mut muted, _) = s.connect("muted").await;
    subscribe(&mut muted, "now:radio", None).await;
    assert!(maybe_pub(&mut muted).await.is_none());
    // A namespace without the option: `subscribed` alone.
    s.publish(json!({"channel": "news", "data": 1})).await;
    let (mut plain, _) = s.connect("plain").await;
    subscribe(&mut plain, "news", None).await;
    assert!(maybe_pub(&mut plain).await.is_none());
    s.shutdown().await;
}

#[tokio::test]
async fn server_side_subscriptions_come_from_the_config_and_the_token_and_obey_the_rules() {
    let s = TestServer::start_with(|c| {
        c.ws.subscribe_on_connect = vec!["news".into(), "sync:{user}".into()];
        c.namespaces
            .insert("room".into(), NamespaceConfig::default());
    })
    .await;
    let token = s.token_with("42", |c| {
        c.channels = vec![
            "room:1".into(),
            "sync:7".into(),
            "news".into(),
            "bad name".into(),
        ];
    });
    let (mut ws, _) = s.connect_token(&token).await;
    let mut frames = Vec::new();
    for _ in 0..5 {
        frames.push(next_json(&mut ws).await);
    }
    let subscribed: Vec<&str> = frames
        .iter()
        .filter(|f| f["type"] == "subscribed")
        .map(|f| f["channel"].as_str().unwrap())
        .collect();
    assert_eq!(subscribed, ["news", "sync:42", "room:1"], "{frames:?}");
    let errors: Vec<(&str, &str)> = frames
        .iter()
        .filter(|f| f["type"] == "error")
        .map(|f| (f["code"].as_str().unwrap(), f["message"].as_str().unwrap()))
        .collect();
    assert_eq!(errors.len(), 2, "{frames:?}");
    assert_eq!(errors[0].0, "forbidden");
    assert!(errors[0].1.contains("`sync:7`"), "{}", errors[0].1);
    assert_eq!(errors[1].0, "bad_request");
    assert!(errors[1].1.contains("`bad name`"), "{}", errors[1].1);
    for channel in ["news", "room:1"] {
        s.publish(json!({"channel": channel, "data": channel}))
            .await;
        assert_eq!(next_pub(&mut ws).await["data"], channel);
    }
    // They are ordinary subscriptions: the client may leave one.
    send_text(&mut ws, r#"{"type":"unsubscribe","channel":"news"}"#).await;
    assert_eq!(next_json(&mut ws).await["type"], "unsubscribed");
    // Another user gets the configured ones with its own id; a backend gets none.
    let (mut other, _) = s.connect("7").await;
    assert_eq!(next_json(&mut other).await["channel"], "news");
    assert_eq!(next_json(&mut other).await["channel"], "sync:7");
    let mut backend = s.connect_backend().await;
    send_text(&mut backend, r#"{"type":"ping"}"#).await;
    assert_eq!(
        next_json(&mut backend).await["type"],
        "pong",
        "no subscriptions first"
    );
    s.shutdown().await;
}

#[test]
fn a_server_side_subscription_the_config_cannot_make_is_a_config_error() {
    let mut cfg = herald::config::Config::default();
    cfg.ws.subscribe_on_connect = vec![
        "nowhere:{user}".into(),
        "bad name".into(),
        "sync:{user}".into(),
    ];
    let err = cfg.validate().unwrap_err().to_string();
    assert!(
        err.contains("ws.subscribe_on_connect[0]") && err.contains("nowhere"),
        "{err}"
    );
    assert!(err.contains("ws.subscribe_on_connect[1]"), "{err}");
    assert!(!err.contains("ws.subscribe_on_connect[2]"), "{err}");
}
