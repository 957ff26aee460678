//! `GET /api/presence/users/{id}` and `GET /api/channels/{name}/presence` (DESIGN §7–8).

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::Json;
use serde_json::{json, Value};

use super::auth::authorize;
use super::error::ApiError;
use super::publish::denied;
use super::App;
use crate::connection::session::validate_channel;
use crate::protocol::codes::ErrorCode;

pub async fn user(
    State(app): State<App>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    authorize(&app, &headers)?;
    let registry = &app.hub.registry;
    let connections = registry.users.count(&id);
    let online = registry.presence.online(&id, connections);
    Ok(Json(
        json!({"user_id": id, "online": online, "connections": connections}),
    ))
}

pub async fn channel(
    State(app): State<App>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    authorize(&app, &headers)?;
    validate_channel(&name).map_err(|m| ApiError::new(ErrorCode::BadRequest, m))?;
    let ns = app.hub.namespaces().resolve(&name).map_err(denied)?;
    if !ns.config.presence {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            format!("presence is off in namespace `{}`", ns.namespace),
        ));
    }
    let channels = &app.hub.registry.channels;
    let users: Vec<String> = channels
        .presence(&name)
        .iter()
        .map(|u| u.to_string())
        .collect();
    Ok(Json(
        json!({"channel": name, "users": users, "connections": channels.subscriber_count(&name)}),
    ))
}
