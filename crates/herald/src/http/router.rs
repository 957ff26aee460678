//! Routes. Handlers get the shared [`AppState`](super::AppState).
//!
//! The routes are one table ([`endpoints`]): the router is built from it, and the test
//! of the OpenAPI document (`/api/openapi.json`) reads the same table, so a route cannot
//! exist without being documented, nor be documented without existing.

use axum::extract::DefaultBodyLimit;
use axum::http::Method;
use axum::routing::{get, post, MethodRouter};
use axum::Router;

use super::{
    assets, batch, broadcasts, conformance, connections, cors, error, openapi, presence,
    prometheus, publish, revoke, sse, stats, ws_upgrade, App,
};

/// One route: its method, its path (axum's `{param}` syntax, as in OpenAPI) and what
/// answers it.
pub struct Endpoint {
    pub method: Method,
    pub path: &'static str,
    handler: MethodRouter<App>,
}

fn at(method: Method, path: &'static str, handler: MethodRouter<App>) -> Endpoint {
    Endpoint {
        method,
        path,
        handler,
    }
}

/// Every route of the main listener for this configuration.
pub fn endpoints(app: &App) -> Vec<Endpoint> {
    let mut e = vec![
        at(Method::GET, "/ws", get(ws_upgrade::upgrade)),
        at(Method::GET, "/sse", get(sse::events)),
        at(Method::POST, "/api/publish", post(publish::publish)),
        at(
            Method::POST,
            "/api/publish/batch",
            post(batch::publish_batch),
        ),
        at(Method::GET, "/api/stats", get(stats::stats)),
        at(Method::GET, "/api/refusals", get(stats::refusals)),
        at(Method::GET, "/api/connections", get(connections::list)),
        at(
            Method::POST,
            "/api/connections/{id}/disconnect",
            post(connections::disconnect_conn),
        ),
        at(
            Method::POST,
            "/api/users/{id}/disconnect",
            post(connections::disconnect_user),
        ),
        at(
            Method::POST,
            "/api/users/{id}/revoke",
            post(revoke::revoke_user),
        ),
        at(
            Method::POST,
            "/api/tokens/{jti}/revoke",
            post(revoke::revoke_token),
        ),
        at(Method::POST, "/api/broadcasts", post(broadcasts::create)),
        at(Method::GET, "/api/broadcasts", get(broadcasts::history)),
        at(
            Method::POST,
            "/api/broadcasts/clear",
            post(broadcasts::clear),
        ),
        at(
            Method::GET,
            "/api/broadcasts/active",
            get(broadcasts::active),
        ),
        at(
            Method::GET,
            "/api/broadcasts/limits",
            get(broadcasts::limits),
        ),
        at(Method::GET, "/api/broadcasts/stats", get(broadcasts::stats)),
        at(
            Method::POST,
            "/api/broadcasts/{id}/ack",
            post(broadcasts::acknowledge),
        ),
        at(Method::GET, "/api/presence/users/{id}", get(presence::user)),
        at(
            Method::GET,
            "/api/channels/{name}/presence",
            get(presence::channel),
        ),
        at(Method::GET, "/api/openapi.json", get(openapi::document)),
        at(Method::GET, "/healthz", get(stats::healthz)),
        at(Method::GET, "/readyz", get(stats::readyz)),
    ];
    // `/metrics` moves to its own listener when `metrics.listen` names one.
    if app.cfg().metrics.listen.is_empty() {
        e.push(at(Method::GET, "/metrics", get(prometheus::metrics)));
    }
    for asset in assets::ASSETS {
        e.push(at(
            Method::GET,
            asset.path,
            get(|| async { assets::serve(asset) }),
        ));
    }
    // The pages' folders, as people type them.
    for (from, to) in [("/admin/", "/admin"), ("/demo/", "/demo")] {
        e.push(at(
            Method::GET,
            from,
            get(move || async move { axum::response::Redirect::permanent(to) }),
        ));
    }
    e
}

/// The routes of the `metrics.listen` listener: `/metrics` and the health probes.
pub fn metrics_router(app: App) -> Router {
    Router::new()
        .route("/metrics", get(prometheus::metrics))
        .route("/healthz", get(stats::healthz))
        .route("/readyz", get(stats::readyz))
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .with_state(app)
}

pub fn router(app: App) -> Router {
    let mut r = Router::new();
    for e in endpoints(&app) {
        r = r.route(e.path, e.handler);
    }
    if app.conformance_echo {
        r = r.route("/conformance/echo", get(conformance::echo));
    }
    r.fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            cors::layer,
        ))
        .layer(DefaultBodyLimit::max(app.cfg().limits.http_body_bytes))
        .with_state(app)
}
