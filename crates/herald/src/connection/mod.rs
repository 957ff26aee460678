//! One WebSocket connection's mechanics: one future per connection
//! ([`driver::Connection`]) that owns the socket, hands data messages to a
//! [`driver::Handler`] and writes what the bounded [`Outbox`](crate::outbox::Outbox)
//! holds ([`writer::WriteSide`]), and the inbound rate limit. What the
//! messages mean is the [`session`](crate::session), above the hub; this module knows
//! neither.

pub mod driver;
pub mod rate;
pub mod writer;
