//! herald's own RFC 6455 layer.
//!
//! We own framing because the fan-out contract needs what no crate offers together: a
//! server frame built once and shared by every recipient as `Bytes`, a writer that
//! flushes a whole queue in one vectored write, and no read buffer held by an idle
//! connection (see docs/decisions.md). The handshake lives here too so refusals can be
//! answered with JSON before the 101.

pub mod deflate;
pub mod frame;
pub mod handshake;
pub mod message;
