//! One WebSocket connection: a reader (the task that owns the socket), a writer task
//! draining the bounded [`outbox::Outbox`], and the session logic between them.

pub mod driver;
pub mod outbox;
pub mod rate;
pub mod session;
pub mod transport;
pub mod writer;
