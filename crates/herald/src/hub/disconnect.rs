//! Closing connections on an operator's order (`POST /api/connections/{id}/disconnect`,
//! `POST /api/users/{id}/disconnect`, DESIGN §13): one connection, or every connection
//! of a user, with the close code and reason the client sees — 4004 "disconnected by
//! the server" unless the order says otherwise. Clients do not reconnect on 4004 with
//! the same credentials. What is queued is still flushed before the close frame.

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
