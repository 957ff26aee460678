//! `POST /api/publish` (DESIGN §7): a backend publishes to a channel, a user, a group or
//! everyone; a user's own token publishes to a channel as their client would (how a
//! client on the SSE transport publishes, DESIGN §13). The payload stays verbatim
//! (`RawValue`) and is framed once.

use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use serde_json::{json, Value};

use super::auth::{authenticate, Caller};
use super::error::ApiError;
use super::App;
use crate::hub::namespace::Denied;
use crate::hub::request::client_publication_of;
use crate::hub::{Delivered, Publication};
use crate::metrics::{Refusal, Source};
use crate::protocol::codes::ErrorCode;
use crate::protocol::publish::PublishRequest;

pub async fn publish(
    State(app): State<App>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let caller = authenticate(&app, &headers).map_err(ApiError::closing)?;
    let user = match caller {
        Caller::User(who) if !who.admin => Some(who),
        _ => None,
    };
    if let Some(who) = &user {
        let ws = &app.cfg().ws;
        if !app
            .user_rates
            .try_take(&who.user, ws.rate_per_s, ws.rate_burst, Instant::now())
        {
            app.metrics.refuse(Refusal::RateLimited);
            return Err(ApiError::new(
                ErrorCode::RateLimited,
                "over ws.rate_per_s: a user publishes over HTTP at a connection's rate",
            ));
        }
    }
    let body = super::body::read(&app, &headers, body).await?;
    let accepted = Instant::now();
    let req: PublishRequest = super::body::object(&body)?;
    let (publication, source) = match &user {
        // A user's token publishes as that user's client would (the SSE transport's
        // way to publish): a channel, the namespace's `publish` rule.
        Some(who) => {
            let namespaces = app.hub.namespaces();
            let p = client_publication_of(req, who, &namespaces, accepted).map_err(denied)?;
            (p, Source::Client)
        }
        None => (publication_of(req, accepted)?, Source::Api),
    };
    let delivered = app
        .broker
        .publish(publication)
        .wait()
        .await
        .map_err(denied)?;
    app.metrics.answered(source, &delivered);
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
