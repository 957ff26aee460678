//! One WebSocket connection's mechanics: a reader (the task that owns the socket) that
//! hands data messages to a [`driver::Handler`], a writer task draining the bounded
//! [`Outbox`](crate::outbox::Outbox), the inbound rate limit and the transports. What the
//! messages mean is the [`session`](crate::session), above the hub; this module knows
//! neither.

pub mod driver;
pub mod rate;
pub mod transport;
pub mod writer;
