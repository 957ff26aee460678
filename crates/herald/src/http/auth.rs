//! Who is calling the HTTP API: a backend with an API key, or a user with a JWT
//! (`Authorization: Bearer …`, or `X-API-Key` for keys, as Centrifugo users expect).

use axum::http::HeaderMap;

use super::error::ApiError;
use super::App;
use crate::auth::Identity;
use crate::metrics::Refusal;
use crate::protocol::codes::ErrorCode;

pub enum Caller {
    ApiKey,
    User(Identity),
}

impl Caller {
    pub fn is_admin(&self) -> bool {
        match self {
            Caller::ApiKey => true,
            Caller::User(id) => id.admin,
        }
    }

    /// Who to name as the author of something this caller created.
    pub fn name(&self) -> String {
        match self {
            Caller::ApiKey => "api".to_owned(),
            Caller::User(id) => id.user.to_string(),
        }
    }
}

/// Any valid API key or token; 401 otherwise.
pub fn authenticate(app: &App, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(crate::auth::token::bearer);
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
            "missing API key or token",
        ));
    };
    if app.api_keys.load().accepts(key) {
        return Ok(Caller::ApiKey);
    }
    let identity = app.api_verifier.verify(key).map_err(|_| {
        app.metrics.refuse(Refusal::BadApiKey);
        ApiError::new(ErrorCode::Unauthorized, "invalid API key or token")
    })?;
    // A revoked token is refused here as on `/ws` (DESIGN §13): an admin's too.
    if app
        .hub
        .revoked
        .refuses(&identity, crate::auth::jwt::now_unix())
    {
        app.metrics.refuse(Refusal::RevokedToken);
        return Err(ApiError::new(ErrorCode::Unauthorized, "token revoked"));
    }
    Ok(Caller::User(identity))
}

/// An API key or an admin token; 401 without credentials, 403 for a user token.
pub fn authorize(app: &App, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let caller = authenticate(app, headers)?;
    if caller.is_admin() {
        Ok(caller)
    } else {
        Err(ApiError::new(
            ErrorCode::Forbidden,
            "this needs an API key or an admin token",
        ))
    }
}
