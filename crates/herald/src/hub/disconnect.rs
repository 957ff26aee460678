//! Closing connections on an operator's order (`POST /api/connections/{id}/disconnect`,
//! `POST /api/users/{id}/disconnect`, DESIGN §13): one connection, or every connection
//! of a user, with the close code and reason the client sees — 4004 "disconnected by
//! the server" unless the order says otherwise. Clients do not reconnect on 4004 with
//! the same credentials. What is queued is still flushed before the close frame.
//!
//! A revocation (`POST /api/users/{id}/revoke`, `POST /api/tokens/{jti}/revoke`) is kept
//! in the hub's [`Revocations`](crate::auth::revoked::Revocations) and closes the local
//! connections whose current token it refuses with 4002 "token revoked": the client
//! fetches a new token before it reconnects, as it does when its token expires.

use crate::auth::revoked::{NotKept, Revocation};
use crate::ids::{ConnId, UserId};
use crate::protocol::codes::CloseCode;
use crate::ws::frame::Frame;

use super::Hub;

/// Whom an order closes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Whom {
    Conn(ConnId),
    User(UserId),
}

/// An order to close connections, as it travels between nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnect {
    pub whom: Whom,
    pub code: u16,
    pub reason: String,
}

/// The longest close reason: a close frame's payload is at most 125 bytes, two of
/// them the code.
pub const MAX_REASON_BYTES: usize = 123;

impl Disconnect {
    /// An order with the default code and reason (4004).
    pub fn of(whom: Whom) -> Disconnect {
        let code = CloseCode::Disconnected;
        Disconnect {
            whom,
            code: code.code(),
            reason: code.reason().to_owned(),
        }
    }

    /// Whether `code` may be sent by an order: an application code (4000–4999) or
    /// 1000 (normal) — never one that claims a protocol error the client did not make.
    pub fn valid_code(code: u16) -> bool {
        code == 1000 || (4000..=4999).contains(&code)
    }
}

impl Hub {
    /// Closes the local connections `order` names; answers how many it closed (a
    /// connection already closing is not counted again).
    pub fn disconnect(&self, order: &Disconnect) -> usize {
        let frame = Frame::close(order.code, &order.reason);
        let close = |c: &super::ConnHandle| {
            let closed = c.outbox.close(Some(frame.clone()), false);
            if closed {
                tracing::info!(conn_id = %c.conn_id, user_id = %c.identity.user, code = order.code, "disconnected by order");
            }
            closed
        };
        match &order.whom {
            Whom::Conn(id) => self.local_conn(id).is_some_and(|c| close(&c)).into(),
            Whom::User(user) => {
                let mut n = 0;
                self.registry
                    .users
                    .for_each(user, |c| n += usize::from(close(c)));
                n
            }
        }
    }
}

impl Hub {
    /// Keeps `r` and closes the local connections whose current token it refuses (4002
    /// "token revoked"); answers how many it closed.
    pub fn revoke(&self, r: &Revocation) -> Result<usize, NotKept> {
        self.revoked.apply(r, crate::auth::jwt::now_unix())?;
        let frame = Frame::close(CloseCode::TokenExpired.code(), REVOKED_REASON);
        let mut n = 0;
        let mut close = |c: &std::sync::Arc<super::ConnHandle>| {
            if c.refused_by(r) && c.outbox.close(Some(frame.clone()), false) {
                tracing::info!(conn_id = %c.conn_id, user_id = %c.identity.user, "token revoked: closed with 4002");
                n += 1;
            }
        };
        match r {
            Revocation::User { user, .. } => self.registry.users.for_each(user, &mut close),
            Revocation::Token { .. } => self.registry.for_each_conn(&mut close),
        }
        Ok(n)
    }
}

/// The close reason of a connection whose token was revoked.
pub const REVOKED_REASON: &str = "token revoked";
