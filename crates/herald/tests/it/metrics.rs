//! `GET /metrics` (DESIGN §10): parsed as a scraper would, and watched while clients
//! connect, publish, are dropped and are refused.

use std::collections::HashMap;

use herald::config::{NamespaceConfig, PublishRule};
use serde_json::json;

use crate::support::*;

/// One scrape: `name{labels}` → value (HELP and TYPE lines checked to come first).
async fn scrape(s: &TestServer) -> HashMap<String, f64> {
    let res = s
        .http
        .get(format!("http://{}/metrics", s.addr))
        .bearer_auth(&s.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let content_type = res.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = res.text().await.unwrap();
    let mut typed = std::collections::HashSet::new();
    let mut out = HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            typed.insert(rest.split(' ').next().unwrap().to_owned());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (key, value) = line.rsplit_once(' ').expect("name value");
        let family = key.split('{').next().unwrap();
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| family.strip_suffix(s))
            .filter(|b| typed.contains(*b))
            .unwrap_or(family);
        assert!(typed.contains(base), "{family} has no TYPE line before it");
        out.insert(key.to_owned(), value.parse::<f64>().expect(line));
    }
    out
}

fn get(m: &HashMap<String, f64>, key: &str) -> f64 {
    *m.get(key).unwrap_or_else(|| panic!("{key} missing"))
}

#[tokio::test]
async fn metrics_move_as_clients_connect_publish_get_dropped_and_refused() {
    let s = TestServer::start_with(|c| {
        c.ws.queue_messages = 2;
        c.namespaces.insert(
            "room".into(),
            NamespaceConfig {
                publish: PublishRule::Any,
                ..NamespaceConfig::default()
            },
        );
    })
    .await;
    let m = scrape(&s).await;
    assert_eq!(get(&m, "herald_connections"), 0.0);
    assert_eq!(get(&m, "herald_broker_up"), 1.0);
    assert_eq!(get(&m, r#"herald_publications_total{source="api"}"#), 0.0);
    assert!(m
        .keys()
        .any(|k| k.starts_with("herald_build_info{") && k.contains(env!("CARGO_PKG_VERSION"))));

    let (mut a, _) = s.connect("a").await;
    let (mut b, _) = s.connect("b").await;
    let m = scrape(&s).await;
    assert_eq!(get(&m, "herald_connections"), 2.0);
    assert_eq!(get(&m, "herald_users"), 2.0);

    let (status, _) = s.publish(json!({"all": true, "data": 1})).await;
    assert_eq!(status, 200);
    assert_eq!(next_pub(&mut a).await["data"], 1);
    assert_eq!(next_pub(&mut b).await["data"], 1);
    // A client's publication counts under its own source.
    send_text(&mut a, r#"{"type":"subscribe","channel":"room:x"}"#).await;
    assert_eq!(next_json(&mut a).await["type"], "subscribed");
    send_text(
        &mut b,
        r#"{"type":"publish","channel":"room:x","data":2,"ref":1}"#,
    )
    .await;
    assert_eq!(next_json(&mut b).await["type"], "ack");
    assert_eq!(next_pub(&mut a).await["data"], 2);
    let filled = poll_until(WAIT, || async {
        let m = scrape(&s).await;
        get(&m, "herald_delivery_latency_seconds_count") >= 3.0
    });
    assert!(filled.await, "the latency histogram counts written frames");
    let m = scrape(&s).await;
    assert_eq!(get(&m, r#"herald_publications_total{source="api"}"#), 1.0);
    assert_eq!(
        get(&m, r#"herald_publications_total{source="client"}"#),
        1.0
    );
    assert_eq!(get(&m, "herald_deliveries_total"), 3.0);
    let count = get(&m, "herald_delivery_latency_seconds_count");
    assert_eq!(
        get(&m, r#"herald_delivery_latency_seconds_bucket{le="+Inf"}"#),
        count
    );
    let within_a_second = get(
        &m,
        r#"herald_delivery_latency_seconds_bucket{le="1.048576"}"#,
    );
    assert!(within_a_second >= 3.0 && within_a_second <= count, "{m:?}");
    assert!(get(&m, "herald_delivery_latency_seconds_sum") > 0.0);

    // Refused: an upgrade without a token.
    let url = format!("ws://{}/ws", s.addr);
    assert_eq!(s.try_upgrade(&url, &[]).await.err().unwrap().0, 401);
    let m = scrape(&s).await;
    assert_eq!(get(&m, r#"herald_refusals_total{reason="bad_token"}"#), 1.0);

    // Dropped: a client that never reads overflows its queue of 2 and is closed.
    publish_to_a_stalled_client_until_closed(&s, false).await;
    let m = scrape(&s).await;
    assert_eq!(get(&m, "herald_slow_consumer_disconnects_total"), 1.0);
    assert!(get(&m, r#"herald_dropped_total{reason="slow_consumer"}"#) >= 1.0);
    assert_eq!(
        get(&m, r#"herald_refusals_total{reason="slow_consumer"}"#),
        1.0
    );
    assert_eq!(
        get(&m, r#"herald_dropped_total{reason="drop_oldest"}"#),
        0.0
    );
    s.shutdown().await;
}

#[tokio::test]
async fn metrics_ask_for_the_api_key_unless_public() {
    let s = TestServer::start().await;
    let url = format!("http://{}/metrics", s.addr);
    let res = s.http.get(&url).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 401);
    let res = s.http.get(&url).bearer_auth("wrong").send().await.unwrap();
    assert_eq!(res.status().as_u16(), 401);
    assert_eq!(
        res.json::<serde_json::Value>().await.unwrap()["error"],
        "unauthorized"
    );
    let admin = s.token_with("boss", |c| c.admin = true);
    let res = s.http.get(&url).bearer_auth(admin).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 200, "an admin token is enough");
    s.shutdown().await;

    let open = TestServer::start_with(|c| c.metrics.public = true).await;
    let url = format!("http://{}/metrics", open.addr);
    let res = open.http.get(&url).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 200);
    assert!(res.text().await.unwrap().contains("herald_connections 0"));
    open.shutdown().await;
}

#[tokio::test]
async fn every_series_the_grafana_dashboard_plots_is_served() {
    let s = TestServer::start().await;
    let served: std::collections::HashSet<String> = scrape(&s)
        .await
        .keys()
        .map(|k| k.split('{').next().unwrap().to_owned())
        .collect();
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/grafana-dashboard.json"
    );
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut plotted = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let mut rest = expr;
            while let Some(at) = rest.find("herald_") {
                let name: String = rest[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[at + name.len()..];
                plotted.push(name);
            }
        }
    }
    assert!(plotted.len() >= 14, "{plotted:?}");
    for name in plotted {
        assert!(
            served.contains(&name),
            "the dashboard plots {name}, which /metrics lacks"
        );
    }
    s.shutdown().await;
}

#[tokio::test]
async fn metrics_move_to_their_own_listener_when_metrics_listen_is_set() {
    let s = TestServer::start_with(|c| c.metrics.listen = "127.0.0.1:0".into()).await;
    let main = format!("http://{}/metrics", s.addr);
    let res = s
        .http
        .get(&main)
        .bearer_auth(&s.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 404, "not on the main listener");
    let at = s.node().metrics_addr.expect("a metrics listener");
    let res = s
        .http
        .get(format!("http://{at}/metrics"))
        .bearer_auth(&s.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    assert!(res.text().await.unwrap().contains("herald_connections"));
    let res = s
        .http
        .get(format!("http://{at}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 401, "still asks for the key");
    let res = s
        .http
        .get(format!("http://{at}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let res = s
        .http
        .get(format!("http://{at}/api/stats"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 404, "only metrics and health there");
    s.shutdown().await;
}
