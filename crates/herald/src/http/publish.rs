//! `POST /api/publish` (DESIGN §7): a backend publishes to a channel, a user, a group or
//! everyone. The payload stays verbatim (`RawValue`) and is framed once.

use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::auth::authorize;
use super::body::present;
use super::error::ApiError;
use super::App;
use crate::config::namespaces::SYNC;
use crate::hub::namespace::Denied;
use crate::hub::Route;
use crate::hub::{Delivered, Exclude, Publication, Target};
use crate::ids::{ConnId, UserId};
use crate::metrics::Source;
use crate::protocol::codes::ErrorCode;
use crate::protocol::sync;
use crate::session::validate_channel;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishBody {
    #[serde(default, deserialize_with = "present")]
    channel: Option<String>,
    #[serde(default, deserialize_with = "present")]
    user: Option<String>,
    #[serde(default, deserialize_with = "present")]
    group: Option<String>,
    #[serde(default, deserialize_with = "present")]
    all: Option<bool>,
    data: Box<RawValue>,
    #[serde(default, deserialize_with = "present")]
    exclude_user: Option<String>,
    #[serde(default, deserialize_with = "present")]
    exclude_conn: Option<String>,
}

pub async fn publish(
    State(app): State<App>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    authorize(&app, &headers).map_err(ApiError::closing)?;
    let body = super::body::read(&app, &headers, body).await?;
    let accepted = Instant::now();
    let req: PublishBody = super::body::object(&body)?;
    let delivered = app
        .broker
        .publish(publication_of(req, accepted)?)
        .wait()
        .await
        .map_err(denied)?;
    app.metrics.accepted(Source::Api);
    Ok(Json(answer(&delivered)))
}

/// The publication a request body asks for: exactly one target, a valid channel name,
/// and on `sync:` a valid sync event (a targeted `device_command` goes to that device's
/// priority lane and never into history, DESIGN §5).
pub fn publication_of(req: PublishBody, accepted: Instant) -> Result<Publication, ApiError> {
    let target = match (req.channel, req.user, req.group, req.all) {
        (Some(c), None, None, None | Some(false)) => {
            validate_channel(&c).map_err(|m| ApiError::new(ErrorCode::BadRequest, m))?;
            Target::Channel(c)
        }
        (None, Some(u), None, None | Some(false)) => Target::User(UserId::from(u)),
        (None, None, Some(g), None | Some(false)) => Target::Group(g),
        (None, None, None, Some(true)) => Target::All,
        _ => {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                "give exactly one target: `channel`, `user`, `group` or `all: true`",
            ));
        }
    };
    let mut event = None;
    if let Target::Channel(c) = &target {
        if c.split_once(':').is_some_and(|(ns, _)| ns == SYNC) {
            let value: Value = serde_json::from_str(req.data.get())
                .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("invalid data: {e}")))?;
            event = Some(
                sync::validate(&value).map_err(|why| ApiError::new(ErrorCode::BadRequest, why))?,
            );
        }
    }
    Ok(Publication {
        target,
        exclude: Exclude {
            user: req.exclude_user.map(UserId::from),
            conn: req.exclude_conn.map(ConnId::from),
            device: None,
            conn_device: None,
        },
        data: req.data,
        accepted,
        creator: None,
        route: event.as_ref().map_or(Route::Normal, Route::of_sync),
    })
}

/// What a delivered publication answers: the local recipients, and on a channel with
/// history its offset and epoch.
pub fn answer(delivered: &Delivered) -> Value {
    match &delivered.position {
        Some((offset, epoch)) => {
            json!({ "queued": delivered.queued, "offset": offset, "epoch": &**epoch })
        }
        None => json!({ "queued": delivered.queued }),
    }
}

/// A publication the namespace rules or the broker refuse.
pub fn denied(d: Denied) -> ApiError {
    let (code, message) = d.answer();
    ApiError::new(code, message)
}
