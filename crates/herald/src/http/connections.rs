//! The operator's view of connections (the admin page, DESIGN §13): `GET
//! /api/connections` lists the connections of every node (this one's, and with Redis
//! what the others answer within a second), newest first, filtered by a search; `POST /api/connections/{id}/disconnect` and `POST /api/users/{id}/disconnect`
//! close them with 4004 (or the code the body gives) on whichever node holds them.

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::authorize;
use super::error::{ApiError, Param};
use super::App;
use crate::hub::disconnect::{Disconnect, Whom, MAX_REASON_BYTES};
use crate::hub::listing::ConnRow;
use crate::ids::{ConnId, UserId};
use crate::protocol::codes::ErrorCode;
use crate::store::time::rfc3339;

/// Rows one listing answers at most.
pub const MAX_LIMIT: u32 = crate::broker::gather::MAX_ROWS as u32;
/// The longest search text.
const MAX_QUERY: usize = crate::broker::gather::MAX_SEARCH;
/// The longest id a path may name (user ids and connection ids are short).
const MAX_ID: usize = 256;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listing {
    q: Option<String>,
    limit: Option<u32>,
}

pub async fn list(
    State(app): State<App>,
    headers: HeaderMap,
    listing: Result<Query<Listing>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    authorize(&app, &headers)?;
    let Query(listing) =
        listing.map_err(|e| ApiError::new(ErrorCode::BadRequest, e.body_text()))?;
    let limit = listing.limit.unwrap_or(100);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            format!("limit must be 1 to {MAX_LIMIT}"),
        ));
    }
    let q = listing.q.unwrap_or_default();
    if q.len() > MAX_QUERY {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            format!("q is longer than {MAX_QUERY} bytes"),
        ));
    }
    let limit = limit as usize;
    let mut listing = app.hub.list_connections(&q, limit);
    let mut nodes = json!({"asked": 1, "answered": 1});
    if let Some(gathering) = app.broker.gather_connections(&q, limit) {
        let gathered = gathering
            .await
            .map_err(|why| ApiError::new(ErrorCode::Unavailable, why))?;
        nodes = json!({"asked": gathered.expected + 1, "answered": gathered.answered + 1});
        listing.merge(gathered.listing, limit);
    }
    let list: Vec<Value> = listing.rows.iter().map(row).collect();
    Ok(Json(json!({
        "node": app.hub.node,
        "nodes": nodes,
        "total": listing.total,
        "matched": listing.matched,
        "connections": list,
    })))
}

fn row(r: &ConnRow) -> Value {
    json!({
        "conn_id": r.conn_id,
        "user_id": r.user_id,
        "device": r.device,
        "node": r.node,
        "connected_at": rfc3339(r.connected_at_ms),
        "queue_depth": r.queue_depth,
        "subscriptions": r.subscriptions,
        "admin": r.admin,
        "ip": r.ip,
    })
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct OrderBody {
    #[serde(default, deserialize_with = "super::body::close_code")]
    code: Option<u16>,
    #[serde(default, deserialize_with = "super::body::present")]
    reason: Option<String>,
}

/// The order the body asks for (an empty body: 4004 "disconnected by the server").
async fn order(
    app: &App,
    headers: &HeaderMap,
    body: Body,
    whom: Whom,
) -> Result<Disconnect, ApiError> {
    let bytes = super::body::read(app, headers, body).await?;
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    let req: OrderBody = match first {
        None => OrderBody::default(),
        Some(_) => super::body::object(&bytes)?,
    };
    let mut order = Disconnect::of(whom);
    if let Some(code) = req.code {
        if !Disconnect::valid_code(code) {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                "code must be 1000 or 4000 to 4999",
            ));
        }
        order.code = code;
    }
    if let Some(reason) = req.reason {
        if reason.len() > MAX_REASON_BYTES {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                format!("reason is longer than {MAX_REASON_BYTES} bytes"),
            ));
        }
        order.reason = reason;
    }
    Ok(order)
}

/// An id named in a path: 1 to 256 bytes.
pub(super) fn checked_id(id: &str, what: &str) -> Result<(), ApiError> {
    if id.is_empty() || id.len() > MAX_ID {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            format!("{what} must be 1 to {MAX_ID} bytes"),
        ));
    }
    Ok(())
}

pub async fn disconnect_conn(
    State(app): State<App>,
    headers: HeaderMap,
    Param(id): Param,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    authorize(&app, &headers).map_err(ApiError::closing)?;
    checked_id(&id, "a connection id")?;
    let order = order(&app, &headers, body, Whom::Conn(ConnId::from(id.as_str()))).await?;
    if app.hub.local_conn(&id).is_some() {
        let n = app.hub.disconnect(&order);
        return Ok((StatusCode::OK, Json(json!({"disconnected": n}))));
    }
    // Not here: another node's (its tag is not ours) is told over the broker.
    let ours = ConnId::local_number(&id, app.hub.node_tag()).is_some();
    if ours || app.broker.cluster().is_none() {
        return Err(ApiError::new(ErrorCode::NotFound, "no such connection"));
    }
    let ordered = app.broker.disconnect(order);
    if !ordered.forwarded {
        return Err(ApiError::new(
            ErrorCode::Unavailable,
            "the connection is on another node and the broker (Redis) is unreachable",
        ));
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"disconnected": ordered.here, "forwarded": true})),
    ))
}

pub async fn disconnect_user(
    State(app): State<App>,
    headers: HeaderMap,
    Param(id): Param,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    authorize(&app, &headers).map_err(ApiError::closing)?;
    checked_id(&id, "a user id")?;
    let order = order(&app, &headers, body, Whom::User(UserId::from(id.as_str()))).await?;
    let ordered = app.broker.disconnect(order);
    Ok(Json(
        json!({"disconnected": ordered.here, "forwarded": ordered.forwarded}),
    ))
}
