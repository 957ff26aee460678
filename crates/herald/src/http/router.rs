//! Routes. Handlers get the shared [`AppState`](super::AppState).

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;

use super::{
    broadcasts, conformance, error, presence, prometheus, publish, stats, ws_upgrade, App,
};

/// The routes of the `metrics.listen` listener: `/metrics` and the health probes.
pub fn metrics_router(app: App) -> Router {
    Router::new()
        .route("/metrics", get(prometheus::metrics))
        .route("/healthz", get(stats::healthz))
        .route("/readyz", get(stats::readyz))
        .fallback(error::not_found)
        .with_state(app)
}

pub fn router(app: App) -> Router {
    let mut r = Router::new()
        .route("/ws", get(ws_upgrade::upgrade))
        .route("/api/publish", post(publish::publish))
        .route("/api/stats", get(stats::stats))
        .route(
            "/api/broadcasts",
            post(broadcasts::create).get(broadcasts::history),
        )
        .route("/api/broadcasts/clear", post(broadcasts::clear))
        .route("/api/broadcasts/active", get(broadcasts::active))
        .route("/api/broadcasts/limits", get(broadcasts::limits))
        .route("/api/broadcasts/stats", get(broadcasts::stats))
        .route("/api/broadcasts/{id}/ack", post(broadcasts::acknowledge))
        .route("/api/presence/users/{id}", get(presence::user))
        .route("/api/channels/{name}/presence", get(presence::channel))
        .route("/healthz", get(stats::healthz))
        .route("/readyz", get(stats::readyz));
    if app.conformance_echo {
        r = r.route("/conformance/echo", get(conformance::echo));
    }
    // `/metrics` moves to its own listener when `metrics.listen` names one.
    if app.cfg().metrics.listen.is_empty() {
        r = r.route("/metrics", get(prometheus::metrics));
    }
    r.fallback(error::not_found)
        .layer(DefaultBodyLimit::max(app.cfg().limits.http_body_bytes))
        .with_state(app)
}
