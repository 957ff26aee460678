//! `POST /api/publish` (DESIGN §7): a backend publishes to a channel, a user, a group or
//! everyone. The payload stays verbatim (`RawValue`) and is framed once.

use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use serde_json::{json, Value};

use super::auth::authorize;
use super::error::ApiError;
use super::App;
use crate::hub::namespace::Denied;
use crate::hub::{Delivered, Publication};
use crate::metrics::Source;
use crate::protocol::publish::PublishRequest;

pub async fn publish(
    State(app): State<App>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    authorize(&app, &headers).map_err(ApiError::closing)?;
    let body = super::body::read(&app, &headers, body).await?;
    let accepted = Instant::now();
    let req: PublishRequest = super::body::object(&body)?;
    let delivered = app
        .broker
        .publish(publication_of(req, accepted)?)
        .wait()
        .await
        .map_err(denied)?;
    app.metrics.answered(Source::Api, &delivered);
    Ok(Json(answer(&delivered)))
}

/// The publication a request body asks for (the checks are the hub's, shared with the
/// backend publisher over WebSocket).
pub fn publication_of(req: PublishRequest, accepted: Instant) -> Result<Publication, ApiError> {
    crate::hub::request::publication_of(req, accepted).map_err(denied)
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
