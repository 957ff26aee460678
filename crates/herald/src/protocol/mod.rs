//! The wire contract of DESIGN §3: what clients send, what the server sends, and the
//! codes. JSON field names appear only in this module.

pub mod channel;
pub mod client;
pub mod codes;
pub mod publish;
pub mod server;
pub mod sync;
