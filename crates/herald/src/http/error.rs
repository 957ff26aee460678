//! The one shape of every HTTP error: a status and `{"error": code, "message": …}`.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::protocol::codes::ErrorCode;

#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub status: Option<StatusCode>,
    /// Close the connection after the answer (a body we will not read, or one that
    /// took too long): nothing more from this client is worth parsing.
    pub close: bool,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
            status: None,
            close: false,
        }
    }

    /// The answer ends the connection (`Connection: close`).
    pub fn closing(mut self) -> ApiError {
        self.close = true;
        self
    }

    /// A status outside the code table (426 Upgrade Required, 503 draining).
    pub fn with_status(mut self, status: StatusCode) -> ApiError {
        self.status = Some(status);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status.unwrap_or(self.code.http_status());
        let mut res = (
            status,
            Json(json!({"error": self.code.as_str(), "message": self.message})),
        )
            .into_response();
        if status == StatusCode::UPGRADE_REQUIRED {
            res.headers_mut()
                .insert("sec-websocket-version", HeaderValue::from_static("13"));
        }
        if status == StatusCode::UNAUTHORIZED {
            res.headers_mut()
                .insert("www-authenticate", HeaderValue::from_static("Bearer"));
        }
        if self.close {
            res.headers_mut()
                .insert("connection", HeaderValue::from_static("close"));
        }
        res
    }
}

/// Unmatched routes also answer in JSON.
pub async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such endpoint")
}

/// A known path with a method it does not answer, in JSON too.
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "this endpoint does not answer that method",
    )
}

/// A path parameter (`{id}`, `{name}`) whose rejection is the JSON error: a segment that
/// does not decode (invalid UTF-8) is a 400 `bad_request` like any other bad input.
pub struct Param(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Param {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<String>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(p)) => Ok(Param(p)),
            Err(e) => Err(ApiError::new(ErrorCode::BadRequest, e.body_text())),
        }
    }
}
