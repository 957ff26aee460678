//! CORS for the endpoints a browser client calls with its own token when it is not on
//! the WebSocket — publishing (`POST /api/publish`), acknowledging and reading
//! announcements — so a page on another origin that `allowed_origins` lets open `/ws`
//! or `/sse` may also publish and ack over HTTP (the SSE transport's way, DESIGN §13).
//!
//! Only origins listed in `allowed_origins` get CORS headers: with the list empty, the
//! browser client is same-origin and needs none, and every other API endpoint (the
//! backends' and the operators') never answers a browser on another origin. A
//! preflight from such an origin is answered here (204); from any other it falls
//! through to the router (405), and the browser refuses the call.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::App;
use crate::auth::origin::origin_allowed;

/// Whether `path` is one a browser client calls with its own token.
fn for_clients(path: &str) -> bool {
    path == "/api/publish"
        || path == "/api/broadcasts/active"
        || (path.starts_with("/api/broadcasts/") && path.ends_with("/ack"))
}

/// The request's `Origin`, if `allowed_origins` lists it.
fn listed_origin(app: &App, headers: &HeaderMap) -> Option<HeaderValue> {
    let origin = headers.get(header::ORIGIN)?;
    let allowed = &app.cfg().allowed_origins;
    let text = origin.to_str().ok()?;
    (!allowed.is_empty() && origin_allowed(Some(text), None, allowed, false))
        .then(|| origin.clone())
}

fn allow(headers: &mut HeaderMap, origin: HeaderValue) {
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
        HeaderValue::from_static("true"),
    );
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
}

pub async fn layer(State(app): State<App>, req: Request, next: Next) -> Response {
    if !for_clients(req.uri().path()) {
        return next.run(req).await;
    }
    let Some(origin) = listed_origin(&app, req.headers()) else {
        return next.run(req).await;
    };
    if req.method() == Method::OPTIONS {
        let mut res = StatusCode::NO_CONTENT.into_response();
        let h = res.headers_mut();
        allow(h, origin);
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, content-type"),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        return res;
    }
    let mut res = next.run(req).await;
    allow(res.headers_mut(), origin);
    res
}

#[cfg(test)]
mod tests {
    use super::for_clients;

    #[test]
    fn only_what_a_browser_client_calls_gets_cors() {
        assert!(for_clients("/api/publish"));
        assert!(for_clients("/api/broadcasts/7/ack"));
        assert!(for_clients("/api/broadcasts/active"));
        for path in [
            "/api/publish/batch",
            "/api/stats",
            "/api/broadcasts",
            "/api/users/u/revoke",
        ] {
            assert!(!for_clients(path), "{path}");
        }
    }
}
