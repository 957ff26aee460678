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
    /// HTTP only: a known path asked with a method it does not answer (405).
    MethodNotAllowed,
    /// A publication repeating an idempotency key whose first publication has not been
    /// answered yet (409): retry shortly.
    Conflict,
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
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::Conflict => "conflict",
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
            ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::Conflict => StatusCode::CONFLICT,
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
    /// An admin or a revocation closed it: clients do not reconnect with the same
    /// credentials.
    Disconnected,
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
            CloseCode::Disconnected => 4004,
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
            CloseCode::Disconnected => "disconnected by the server",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// DESIGN §2, §3 and §7 written out, independently of the tables above. A `match`
    /// without a wildcard: a new variant does not compile until the contract for it is
    /// written here (and added to the list in the test).
    fn error_contract(c: ErrorCode) -> (&'static str, u16) {
        match c {
            ErrorCode::BadRequest => ("bad_request", 400),
            ErrorCode::Unauthorized => ("unauthorized", 401),
            ErrorCode::Forbidden => ("forbidden", 403),
            ErrorCode::NotFound => ("not_found", 404),
            ErrorCode::RateLimited => ("rate_limited", 429),
            ErrorCode::TooLarge => ("too_large", 413),
            ErrorCode::Internal => ("internal", 500),
            ErrorCode::Unavailable => ("unavailable", 503),
            ErrorCode::Timeout => ("timeout", 408),
            ErrorCode::MethodNotAllowed => ("method_not_allowed", 405),
            ErrorCode::Conflict => ("conflict", 409),
        }
    }

    fn close_contract(c: CloseCode) -> u16 {
        match c {
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
            CloseCode::Disconnected => 4004,
        }
    }

    #[test]
    fn error_codes_match_the_contract() {
        use ErrorCode::*;
        for c in [
            BadRequest,
            Unauthorized,
            Forbidden,
            NotFound,
            RateLimited,
            TooLarge,
            Internal,
            Unavailable,
            Timeout,
            MethodNotAllowed,
            Conflict,
        ] {
            assert_eq!((c.as_str(), c.http_status().as_u16()), error_contract(c));
        }
    }

    #[test]
    fn close_codes_match_the_contract() {
        use CloseCode::*;
        let all = [
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
            Disconnected,
        ];
        for c in all {
            assert_eq!(c.code(), close_contract(c), "{c:?}");
            // A close frame's reason fits in a control frame next to the code.
            assert!(!c.reason().is_empty() && c.reason().len() <= 123, "{c:?}");
        }
        let mut codes: Vec<u16> = all.iter().map(|c| c.code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), all.len(), "two variants share a code");
    }
}
