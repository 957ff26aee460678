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

use super::auth::authorize;
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
            device: None,
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
