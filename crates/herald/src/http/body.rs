//! Reading a request body, only after the caller is known (DESIGN §12): at most
//! `limits.http_body_bytes`, arriving within `limits.http_body_timeout_s`. A handler that
//! takes a body authorizes from the head first, so an anonymous client that announces a
//! body and never sends it is answered 401 at once instead of holding a connection.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::Deserialize;

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

pub use crate::protocol::publish::present;

/// A close code that may be written as an integer-valued float (`4004.0` is the integer
/// 4004 in JSON Schema); anything else that is not a `u16` is refused.
pub fn close_code<'de, D>(d: D) -> Result<Option<u16>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    use serde::de::Error;
    let n = serde_json::Number::deserialize(d)?;
    let whole = n.as_u64().or_else(|| {
        n.as_f64()
            .filter(|f| f.fract() == 0.0 && (0.0..=f64::from(u16::MAX)).contains(f))
            .map(|f| f as u64)
    });
    whole
        .and_then(|w| u16::try_from(w).ok())
        .map(Some)
        .ok_or_else(|| D::Error::custom(format!("invalid close code {n}: expected an integer")))
}

/// The largest Unix time a body may give: 2^53 - 1, the largest integer every JSON
/// implementation holds exactly (the OpenAPI document says so as the `maximum`).
pub const MAX_UNIX_TIME: u64 = (1 << 53) - 1;

/// A Unix time in seconds, also written as an integer-valued float (JSON Schema's
/// integer), 0 to [`MAX_UNIX_TIME`]; anything else is refused.
pub fn unix_time<'de, D>(d: D) -> Result<Option<u64>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    use serde::de::Error;
    let n = serde_json::Number::deserialize(d)?;
    let whole = n.as_u64().or_else(|| {
        n.as_f64()
            .filter(|f| f.fract() == 0.0 && (0.0..=MAX_UNIX_TIME as f64).contains(f))
            .map(|f| f as u64)
    });
    whole
        .filter(|w| *w <= MAX_UNIX_TIME)
        .map(Some)
        .ok_or_else(|| {
            D::Error::custom(format!(
                "invalid time {n}: expected Unix seconds, 0 to {MAX_UNIX_TIME}"
            ))
        })
}

/// A request body as `T`, which must be a JSON object: serde would also fill a struct
/// from an array, positionally, which no documented request is.
pub fn object<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let invalid =
        |why: String| ApiError::new(ErrorCode::BadRequest, format!("invalid body: {why}"));
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string())),
        _ => Err(invalid("expected a JSON object".into())),
    }
}
