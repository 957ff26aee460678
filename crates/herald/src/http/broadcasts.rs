//! Announcements over HTTP (DESIGN §6, seed 003): create, clear, acknowledge, the
//! caller's active one, limits, stats and history. Every failure is a 4xx/5xx with the
//! JSON error body; a store that cannot be reached is a 503, and the WebSocket side
//! keeps serving.

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::{authenticate, authorize, Caller};
use super::error::{ApiError, Param};
use super::App;
use crate::announce::{self, MAX_CHARACTERS, RECOMMENDED_LENGTH};
use crate::metrics::Source;
use crate::protocol::codes::ErrorCode;
use crate::protocol::server::{broadcast_cleared_frame, broadcast_frame, BroadcastBody};
use crate::store::time::{now_ms, start_of_day_ms};
use crate::store::{active_for, NewAnnouncement, StoreError};

/// A store failure as the HTTP answer; outages are counted and logged rate-limited.
fn store_failure(app: &App, e: StoreError) -> ApiError {
    if let StoreError::Unavailable(why) = &e {
        app.metrics.store_error(why);
    }
    let (code, message) = e.answer();
    ApiError::new(code, message)
}

fn default_type() -> String {
    "info".to_owned()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    message: String,
    #[serde(rename = "type", default = "default_type")]
    kind: String,
}

pub async fn create(
    State(app): State<App>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let caller = authorize(&app, &headers).map_err(ApiError::closing)?;
    let body = super::body::read(&app, &headers, body).await?;
    let req: CreateBody = super::body::object(&body)?;
    let (message, chars) = announce::validate(&req.message, &req.kind)
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, e.to_string()))?;
    let created = app
        .store
        .create(NewAnnouncement {
            message,
            message_type: req.kind,
            created_by: caller.name(),
        })
        .await
        .map_err(|e| store_failure(&app, e))?;
    app.broker
        .announce(broadcast_frame("new_broadcast", &created).payload());
    app.metrics.accepted(Source::Announcement);
    let body = json!({
        "id": created.id,
        "character_count": chars,
        "max_characters": MAX_CHARACTERS,
        "sent_to_users": connected_users(&app).await,
    });
    Ok((StatusCode::CREATED, Json(body)))
}

pub async fn clear(State(app): State<App>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    authorize(&app, &headers)?;
    match app
        .store
        .clear()
        .await
        .map_err(|e| store_failure(&app, e))?
    {
        Some(a) => {
            app.broker.announce(broadcast_cleared_frame().payload());
            app.metrics.accepted(Source::Announcement);
            Ok(Json(json!({"cleared": true, "id": a.id})))
        }
        None => Ok(Json(json!({"cleared": false}))),
    }
}

pub async fn acknowledge(
    State(app): State<App>,
    headers: HeaderMap,
    Param(id): Param,
) -> Result<Json<Value>, ApiError> {
    let Caller::User(user) = authenticate(&app, &headers)? else {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "acknowledging needs a user's token, not an API key",
        ));
    };
    if !announce::valid_id(&id) {
        return Err(ApiError::new(ErrorCode::NotFound, "no such announcement"));
    }
    app.store
        .acknowledge(&id, &user.user)
        .await
        .map_err(|e| store_failure(&app, e))?;
    Ok(Json(json!({"acknowledged": true, "broadcast_id": id})))
}

pub async fn active(State(app): State<App>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    let active = match authenticate(&app, &headers)? {
        Caller::User(user) => active_for(app.store.as_ref(), &user.user)
            .await
            .map_err(|e| store_failure(&app, e))?,
        Caller::ApiKey => app
            .store
            .active()
            .await
            .map_err(|e| store_failure(&app, e))?,
    };
    Ok(Json(
        json!({"broadcast": active.as_ref().map(BroadcastBody::of).map(|b| json!(b))}),
    ))
}

pub async fn limits(State(app): State<App>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    authenticate(&app, &headers)?;
    let active = app
        .store
        .active()
        .await
        .map_err(|e| store_failure(&app, e))?;
    Ok(Json(json!({
        "max_characters": MAX_CHARACTERS,
        "recommended_length": RECOMMENDED_LENGTH,
        "current_active_broadcasts": usize::from(active.is_some()),
    })))
}

pub async fn stats(State(app): State<App>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    authorize(&app, &headers)?;
    let today = app
        .store
        .count_since(start_of_day_ms(now_ms()))
        .await
        .map_err(|e| store_failure(&app, e))?;
    let active = app
        .store
        .active()
        .await
        .map_err(|e| store_failure(&app, e))?;
    Ok(Json(json!({"stats": {
        "broadcasts_today": today,
        "active_broadcast": active.is_some(),
        "connected_users": connected_users(&app).await,
        "max_characters": MAX_CHARACTERS,
    }})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Page {
    limit: Option<u32>,
    before: Option<String>,
}

pub async fn history(
    State(app): State<App>,
    headers: HeaderMap,
    page: Result<Query<Page>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    authorize(&app, &headers)?;
    let Query(page) = page.map_err(|e| ApiError::new(ErrorCode::BadRequest, e.body_text()))?;
    let limit = page.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            "limit must be 1 to 100",
        ));
    }
    let rows = app
        .store
        .history(limit, page.before.as_deref())
        .await
        .map_err(|e| store_failure(&app, e))?;
    let next = (rows.len() == limit as usize)
        .then(|| rows.last().map(|(a, _)| a.id.clone()))
        .flatten();
    let list: Vec<Value> = rows
        .iter()
        .map(|(a, acks)| {
            let mut v = json!(BroadcastBody::of(a));
            if let Some(o) = v.as_object_mut() {
                o.insert("active".into(), json!(a.active));
                o.insert("acknowledgements".into(), json!(acks));
            }
            v
        })
        .collect();
    Ok(Json(json!({"broadcasts": list, "next": next})))
}

/// Users connected on all nodes (this node's count when Redis cannot say).
async fn connected_users(app: &App) -> u64 {
    let local = app.hub.registry.users() as u64;
    match app.broker.cluster() {
        Some(view) => view.totals().await.map_or(local, |t| t.users),
        None => local,
    }
}
