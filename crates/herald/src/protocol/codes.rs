//! Every error code and close code of the wire contract (DESIGN §3), in one table.
//!
//! Mappings are exhaustive matches so a new variant cannot be forgotten in the HTTP
//! status table or the wire string table.

use axum::http::StatusCode;

/// The `code` of an `error` frame and of an HTTP JSON error body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    RateLimited,
    TooLarge,
    Internal,
    Unavailable,
    /// HTTP only: a request body that did not arrive in time (408).
    Timeout,
}

impl ErrorCode {
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Internal => "internal",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Timeout => "timeout",
        }
    }

    pub const fn http_status(self) -> StatusCode {
        match self {
            ErrorCode::BadRequest => StatusCode::BAD_REQUEST,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Timeout => StatusCode::REQUEST_TIMEOUT,
        }
    }
}

/// WebSocket close codes the server sends (DESIGN §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCode {
    Normal,
    GoingAway,
    Protocol,
    InvalidPayload,
    Policy,
    TooBig,
    Internal,
    SlowConsumer,
    Replaced,
    TokenExpired,
    Resync,
}

impl CloseCode {
    pub const fn code(self) -> u16 {
        match self {
            CloseCode::Normal => 1000,
            CloseCode::GoingAway => 1001,
            CloseCode::Protocol => 1002,
            CloseCode::InvalidPayload => 1007,
            CloseCode::Policy => 1008,
            CloseCode::TooBig => 1009,
            CloseCode::Internal => 1011,
            CloseCode::SlowConsumer => 4000,
            CloseCode::Replaced => 4001,
            CloseCode::TokenExpired => 4002,
            CloseCode::Resync => 4003,
        }
    }

    /// The short reason text carried in the close frame and used as a metric label.
    pub const fn reason(self) -> &'static str {
        match self {
            CloseCode::Normal => "normal",
            CloseCode::GoingAway => "going away",
            CloseCode::Protocol => "protocol error",
            CloseCode::InvalidPayload => "invalid utf-8",
            CloseCode::Policy => "policy violation",
            CloseCode::TooBig => "message too big",
            CloseCode::Internal => "internal error",
            CloseCode::SlowConsumer => "slow consumer",
            CloseCode::Replaced => "connection limit",
            CloseCode::TokenExpired => "token expired",
            CloseCode::Resync => "resync",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_match_the_contract() {
        assert_eq!(ErrorCode::RateLimited.as_str(), "rate_limited");
        assert_eq!(
            ErrorCode::RateLimited.http_status(),
            StatusCode::TOO_MANY_REQUESTS
        );
        assert_eq!(CloseCode::SlowConsumer.code(), 4000);
        assert_eq!(CloseCode::TokenExpired.code(), 4002);
    }
}
