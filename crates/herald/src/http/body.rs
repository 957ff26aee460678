//! Reading a request body, only after the caller is known (DESIGN §12): at most
//! `limits.http_body_bytes`, arriving within `limits.http_body_timeout_s`. A handler that
//! takes a body authorizes from the head first, so an anonymous client that announces a
//! body and never sends it is answered 401 at once instead of holding a connection.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap};
use http_body_util::{BodyExt, LengthLimitError, Limited};

use super::error::ApiError;
use super::App;
use crate::metrics::Refusal;
use crate::protocol::codes::ErrorCode;

pub async fn read(app: &App, headers: &HeaderMap, body: Body) -> Result<Bytes, ApiError> {
    let limit = app.cfg().limits.http_body_bytes;
    let too_large = || {
        app.metrics.refuse(Refusal::BodyTooLarge);
        ApiError::new(
            ErrorCode::TooLarge,
            format!("request body is larger than {limit} bytes"),
        )
        .closing()
    };
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let wait = Duration::from_secs(app.cfg().limits.http_body_timeout_s);
    match tokio::time::timeout(wait, Limited::new(body, limit).collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Ok(Err(e)) => Err(ApiError::new(
            ErrorCode::BadRequest,
            format!("could not read the request body: {e}"),
        )
        .closing()),
        Err(_) => {
            app.metrics.refuse(Refusal::BodyTimeout);
            Err(ApiError::new(
                ErrorCode::Timeout,
                format!(
                    "the request body did not arrive within {} s",
                    wait.as_secs()
                ),
            )
            .closing())
        }
    }
}
