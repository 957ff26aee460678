//! `GET /api/presence/users/{id}` and `GET /api/channels/{name}/presence` (DESIGN §7–8).

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use serde_json::{json, Value};

use super::auth::authorize;
use super::error::{ApiError, Param};
use super::publish::denied;
use super::App;
use crate::protocol::channel::validate_channel;
use crate::protocol::codes::ErrorCode;

pub async fn user(
    State(app): State<App>,
    headers: HeaderMap,
    Param(id): Param,
) -> Result<Json<Value>, ApiError> {
    authorize(&app, &headers)?;
    super::connections::checked_id(&id, "a user id")?;
    if let Some(cluster) = app.broker.cluster() {
        let (online, connections) = cluster.user(&id).await.map_err(unavailable)?;
        return Ok(Json(
            json!({"user_id": id, "online": online, "connections": connections}),
        ));
    }
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
    Param(name): Param,
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
    if let Some(cluster) = app.broker.cluster() {
        let users = cluster.channel(&name).await.map_err(unavailable)?;
        // Connections are this node's: a count over nodes would need a key per
        // connection; users are the cluster's.
        return Ok(Json(
            json!({"channel": name, "users": users, "connections": channels.subscriber_count(&name)}),
        ));
    }
    let users: Vec<String> = channels
        .presence(&name)
        .iter()
        .map(|u| u.to_string())
        .collect();
    Ok(Json(
        json!({"channel": name, "users": users, "connections": channels.subscriber_count(&name)}),
    ))
}

/// The cluster view could not be read (Redis is down): 503, never a wrong "offline".
pub fn unavailable(e: redis::RedisError) -> ApiError {
    ApiError::new(
        ErrorCode::Unavailable,
        format!("the cluster view (Redis) is unreachable: {e}"),
    )
}
