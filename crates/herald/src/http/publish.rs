//! `POST /api/publish` (DESIGN §7): a backend publishes to a channel, a user, a group or
//! everyone. The payload stays verbatim (`RawValue`) and is framed once.

use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::error::ApiError;
use super::App;
use crate::connection::session::validate_channel;
use crate::hub::namespace::Denied;
use crate::hub::{Exclude, Publication, Target};
use crate::metrics::Refusal;
use crate::protocol::codes::ErrorCode;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody {
    channel: Option<String>,
    user: Option<String>,
    group: Option<String>,
    all: Option<bool>,
    data: Box<RawValue>,
    exclude_user: Option<String>,
    exclude_conn: Option<String>,
}

/// Who is calling the HTTP API.
pub enum Caller {
    ApiKey,
    Admin(String),
}

/// `Authorization: Bearer <api key | admin JWT>` or `X-API-Key: <key>`.
pub fn authorize(app: &App, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    let key = bearer.or_else(|| {
        headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    });
    let Some(key) = key else {
        app.metrics.refuse(Refusal::BadApiKey);
        return Err(ApiError::new(
            ErrorCode::Unauthorized,
            "missing API key or admin token",
        ));
    };
    if app.api_keys.accepts(key) {
        return Ok(Caller::ApiKey);
    }
    match app.api_verifier.verify(key) {
        Ok(id) if id.admin => Ok(Caller::Admin(id.user.to_string())),
        Ok(_) => Err(ApiError::new(
            ErrorCode::Forbidden,
            "this token is not an admin token",
        )),
        Err(_) => {
            app.metrics.refuse(Refusal::BadApiKey);
            Err(ApiError::new(
                ErrorCode::Unauthorized,
                "invalid API key or token",
            ))
        }
    }
}

/// Turns a body-extraction failure (too large, unreadable) into our JSON error.
pub fn body_error(app: &App, e: BytesRejection) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        app.metrics.refuse(Refusal::BodyTooLarge);
        ApiError::new(
            ErrorCode::TooLarge,
            format!(
                "request body is larger than {} bytes",
                app.cfg.limits.http_body_bytes
            ),
        )
    } else {
        ApiError::new(ErrorCode::BadRequest, e.body_text())
    }
}

pub async fn publish(
    State(app): State<App>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    authorize(&app, &headers)?;
    let body = body.map_err(|e| body_error(&app, e))?;
    let accepted = Instant::now();
    let req: PublishBody = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("invalid body: {e}")))?;
    let target = match (req.channel, req.user, req.group, req.all) {
        (Some(c), None, None, None | Some(false)) => {
            validate_channel(&c).map_err(|m| ApiError::new(ErrorCode::BadRequest, m))?;
            Target::Channel(c)
        }
        (None, Some(u), None, None | Some(false)) => Target::User(u),
        (None, None, Some(g), None | Some(false)) => Target::Group(g),
        (None, None, None, Some(true)) => Target::All,
        _ => {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                "give exactly one target: `channel`, `user`, `group` or `all: true`",
            ));
        }
    };
    let publication = Publication {
        target,
        exclude: Exclude {
            user: req.exclude_user,
            conn: req.exclude_conn,
        },
        data: req.data,
        accepted,
    };
    let delivered = app.broker.publish(&app.hub, &publication).map_err(denied)?;
    let mut body = json!({ "queued": delivered.queued });
    if let Some((offset, epoch)) = delivered.position {
        body["offset"] = json!(offset);
        body["epoch"] = json!(&*epoch);
    }
    Ok(Json(body))
}

/// A publication the namespace rules refuse.
pub fn denied(d: Denied) -> ApiError {
    match d {
        Denied::UnknownNamespace(ns) => ApiError::new(
            ErrorCode::NotFound,
            format!("namespace `{ns}` is not configured"),
        ),
        Denied::Forbidden(why) => ApiError::new(ErrorCode::Forbidden, why),
    }
}
