//! The pages a node serves from its own binary: `/admin` (the operator's live page),
//! `/demo` (announcements and a synced "now playing" position, built on the JS client)
//! and the JS client itself at `/client/herald.js`. Embedded at compile time, so they
//! work offline and match the server they came with; no CDN, no inline script, and a
//! Content-Security-Policy that says so. The pages carry no secret: everything they
//! show is read from the HTTP API with the key or token the user types in.

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

/// Only our own files, our own API and our own WebSocket; no framing by other sites.
const CSP: &str = "default-src 'self'; connect-src 'self'; img-src 'self' data:; \
                   object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// One embedded file: its path, its media type and its bytes.
pub struct Asset {
    pub path: &'static str,
    pub media_type: &'static str,
    pub body: &'static str,
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// Every embedded file, by the path it is served at.
pub const ASSETS: &[Asset] = &[
    Asset {
        path: "/admin",
        media_type: HTML,
        body: include_str!("../../assets/admin/index.html"),
    },
    Asset {
        path: "/admin/admin.js",
        media_type: JS,
        body: include_str!("../../assets/admin/admin.js"),
    },
    Asset {
        path: "/admin/admin.css",
        media_type: CSS,
        body: include_str!("../../assets/admin/admin.css"),
    },
    Asset {
        path: "/demo",
        media_type: HTML,
        body: include_str!("../../assets/demo/index.html"),
    },
    Asset {
        path: "/demo/demo.js",
        media_type: JS,
        body: include_str!("../../assets/demo/demo.js"),
    },
    Asset {
        path: "/demo/demo.css",
        media_type: CSS,
        body: include_str!("../../assets/demo/demo.css"),
    },
    Asset {
        path: "/client/herald.js",
        media_type: JS,
        body: include_str!("../../../../clients/js/src/herald.js"),
    },
];

/// The answer for one asset, with the security headers every page carries.
pub fn serve(asset: &'static Asset) -> Response {
    let mut res = asset.body.into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.media_type),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // The build is the version: a browser revalidates, never runs a stale client.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    res
}
