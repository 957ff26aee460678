//! `GET /api/openapi.json`: the OpenAPI 3.1 document of the HTTP API, written by hand
//! in `assets/openapi.json` and embedded. It cannot drift from the code: a test reads
//! the router's table (`router::endpoints`) and the document, requires each to list the
//! other, and sends every documented operation a good and a bad request, checking the
//! status codes it answers are the documented ones.

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

/// The document's text.
pub const DOCUMENT: &str = include_str!("../../assets/openapi.json");

pub async fn document() -> Response {
    let mut res = DOCUMENT.into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}
