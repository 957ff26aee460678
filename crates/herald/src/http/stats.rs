//! `/api/stats`, `/api/refusals`, `/healthz`, `/readyz` (DESIGN §7, CRATES §6 #6).

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde_json::{json, Value};

use super::auth::authorize;
use super::error::ApiError;
use super::App;

pub async fn stats(State(app): State<App>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    authorize(&app, &headers)?;
    let hub = &app.hub;
    let (connections, users) = (hub.registry.connections(), hub.registry.users());
    let m = &app.metrics;
    let lat = &m.latency;
    let cluster = match app.broker.cluster() {
        None => json!({"nodes": 1, "connections": connections, "users": users,
            "per_node": [{"tag": hub.node_tag(), "name": hub.node, "connections": connections, "users": users}]}),
        Some(view) => match view.totals().await {
            Ok(t) => {
                json!({"nodes": t.nodes, "connections": t.connections, "users": t.users, "per_node": t.per_node})
            }
            Err(e) => json!({"error": format!("the cluster view (Redis) is unreachable: {e}")}),
        },
    };
    Ok(Json(json!({
        "node": {"name": hub.node, "connections": connections, "users": users, "channels": hub.registry.channels.len(), "history_bytes": hub.registry.channels.ledger.bytes(), "http_connections": app.http_caps.open(), "workers": app.workers.load()},
        "cluster": cluster,
        "publications": m.publications.load(Relaxed),
        "publications_repeated": m.repeated.load(Relaxed),
        "deliveries": m.deliveries.load(Relaxed),
        "dropped": m.dropped.load(Relaxed),
        "slow_consumer_disconnects": m.slow_consumer_disconnects.load(Relaxed),
        "compression": {"deliveries": m.compressed_deliveries.load(Relaxed), "saved_bytes": m.compression_saved_bytes.load(Relaxed)},
        "refused": crate::metrics::Refusal::ALL.iter().map(|r| (r.as_str().to_owned(), Value::from(m.refusals(*r)))).collect::<serde_json::Map<_, _>>(),
        "latency_ms": {"p50": lat.quantile_ms(0.50), "p95": lat.quantile_ms(0.95), "p99": lat.quantile_ms(0.99)},
        "latency_ms_recent": m.recent_latency().map(|r| json!({"p50": r.p50, "p95": r.p95, "p99": r.p99, "count": r.count, "window_s": r.window_s})),
        "relay_skipped": m.relay_skipped.load(Relaxed),
        "webhooks": {"sent": m.webhooks.sent.load(Relaxed), "retries": m.webhooks.retries.load(Relaxed), "failed": m.webhooks.failed.load(Relaxed), "dropped": hub.registry.events.dropped.load(Relaxed)},
        "broker": {"degraded": m.degraded.load(Relaxed), "outages": m.broker_outages.load(Relaxed), "malformed": m.broker_malformed.load(Relaxed), "following": app.broker.following()},
    })))
}

/// `GET /api/refusals`: the last refusals, newest first, a flood of one reason within a
/// second folded into one row with its count (`/api/stats` `refused` has the totals).
pub async fn refusals(State(app): State<App>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    authorize(&app, &headers)?;
    let rows: Vec<Value> = app
        .metrics
        .recent_refusals()
        .iter()
        .map(|r| {
            json!({
                "at": crate::store::time::rfc3339(r.at_ms),
                "reason": r.reason.as_str(),
                "count": r.count,
            })
        })
        .collect();
    Ok(Json(json!({"refusals": rows})))
}

pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// How long a `/readyz` store probe is reused: probes from load balancers (or anyone,
/// the endpoint is public) cost the database at most one query per second.
const PROBE_TTL: Duration = Duration::from_secs(1);
/// A store that does not answer within this is unavailable.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Whether the store answers now, probed at most once per [`PROBE_TTL`].
async fn store_ok(app: &App) -> bool {
    if let Some(ok) = app.store_probe.get(PROBE_TTL) {
        return ok;
    }
    let ok = matches!(
        tokio::time::timeout(PROBE_TIMEOUT, app.store.ping()).await,
        Ok(Ok(()))
    );
    app.store_probe.set(ok);
    ok
}

pub async fn readyz(State(app): State<App>) -> (StatusCode, Json<Value>) {
    let store = if store_ok(&app).await {
        "ok"
    } else {
        "unavailable"
    };
    let broker = match app.broker.health() {
        crate::broker::Health::Up => "ok".to_owned(),
        crate::broker::Health::Degraded(why) => format!("degraded: {why}"),
    };
    // A broker outage leaves the node serving its own clients: still ready (taking
    // every node out of the balancer at once would turn it into a full outage).
    let status = if app.draining.load(Relaxed) {
        "draining"
    } else if store != "ok" {
        "not_ready"
    } else if broker != "ok" {
        "degraded"
    } else {
        "ready"
    };
    let code = if matches!(status, "ready" | "degraded") {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut body = serde_json::Map::new();
    body.insert("status".into(), json!(status));
    body.insert("broker".into(), json!(broker));
    body.insert("store".into(), json!(store));
    let relay = &app.cfg().relay;
    if !relay.redis_url.is_empty() || !relay.nats_url.is_empty() {
        let subscribed = app.metrics.relay_subscribed.load(Relaxed);
        let relay = if subscribed { "ok" } else { "connecting" };
        body.insert("relay".into(), json!(relay));
    }
    (code, Json(Value::Object(body)))
}

/// The last store probe and when it was taken.
#[derive(Default)]
pub struct StoreProbe(std::sync::Mutex<Option<(std::time::Instant, bool)>>);

impl StoreProbe {
    fn get(&self, ttl: Duration) -> Option<bool> {
        let p = self.0.lock().unwrap_or_else(|p| p.into_inner());
        p.filter(|(at, _)| at.elapsed() < ttl).map(|(_, ok)| ok)
    }

    fn set(&self, ok: bool) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some((std::time::Instant::now(), ok));
    }
}
