//! Revoking tokens (DESIGN §13): `POST /api/users/{id}/revoke` refuses the user's tokens
//! issued before a time, `POST /api/tokens/{jti}/revoke` one token by its id — at
//! connect and on `refresh`, on every node, and closes the connections that hold such a
//! token now (4002 "token revoked", so the client fetches a new token first).

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::authorize;
use super::connections::checked_id;
use super::error::{ApiError, Param};
use super::App;
use crate::auth::jwt::now_unix;
use crate::auth::revoked::{Revocation, MAX_KEEP_S};
use crate::ids::UserId;
use crate::protocol::codes::ErrorCode;

/// How long a record is kept when the body does not say: 30 days.
pub const DEFAULT_KEEP_S: u64 = 30 * 24 * 3600;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RevokeBody {
    /// Unix seconds: tokens issued before it are refused (users only; default now).
    #[serde(default, deserialize_with = "super::body::unix_time")]
    before: Option<u64>,
    /// Unix seconds: when the record may be forgotten (default 30 days from now).
    #[serde(default, deserialize_with = "super::body::unix_time")]
    until: Option<u64>,
}

async fn body_of(app: &App, headers: &HeaderMap, body: Body) -> Result<RevokeBody, ApiError> {
    let bytes = super::body::read(app, headers, body).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(RevokeBody::default());
    }
    super::body::object(&bytes)
}

/// The record's `until`: given or the default, at most a year ahead (a later one — a
/// time in milliseconds, say — is kept for a year, and the answer says so). One that is
/// already past keeps nothing: the revocation then only closes the connections holding
/// such a token now.
fn until_of(body: &RevokeBody, now: u64) -> u64 {
    body.until
        .unwrap_or(now + DEFAULT_KEEP_S)
        .min(now.saturating_add(MAX_KEEP_S))
}

fn answered(app: &App, r: Revocation) -> Result<Json<Value>, ApiError> {
    let until = r.until();
    let ordered = app
        .broker
        .revoke(r)
        .map_err(|e| ApiError::new(ErrorCode::Unavailable, e.to_string()))?;
    Ok(Json(json!({
        "disconnected": ordered.here,
        "forwarded": ordered.forwarded,
        "until": until,
    })))
}

pub async fn revoke_user(
    State(app): State<App>,
    headers: HeaderMap,
    Param(id): Param,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    authorize(&app, &headers).map_err(ApiError::closing)?;
    checked_id(&id, "a user id")?;
    let body = body_of(&app, &headers, body).await?;
    let now = now_unix();
    let before = body.before.unwrap_or(now);
    let until = until_of(&body, now);
    answered(
        &app,
        Revocation::User {
            user: UserId::from(id.as_str()),
            before,
            until,
        },
    )
}

pub async fn revoke_token(
    State(app): State<App>,
    headers: HeaderMap,
    Param(jti): Param,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    authorize(&app, &headers).map_err(ApiError::closing)?;
    checked_id(&jti, "a token id")?;
    let body = body_of(&app, &headers, body).await?;
    if body.before.is_some() {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            "a token is revoked by its id; `before` is for users",
        ));
    }
    let until = until_of(&body, now_unix());
    answered(
        &app,
        Revocation::Token {
            id: jti.as_str().into(),
            until,
        },
    )
}
