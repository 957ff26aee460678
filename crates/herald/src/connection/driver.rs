//! The read side of every WebSocket connection: bytes in, messages out, the control
//! protocol (ping, close) answered here so each handler only sees data messages.
//!
//! The task running [`drive`] owns the socket and runs its writer too (polled beside the
//! reader, not spawned: one task per connection).
//! Whoever closes the connection (the peer, a protocol error, the hub with 4000/4002,
//! shutdown with 1001) goes through [`Outbox::close`], which only the first caller wins.

use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWrite;

use super::transport::WsRead;
use super::writer::run_writer;
use crate::metrics::{Metrics, Refusal};
use crate::outbox::Outbox;
use crate::protocol::codes::CloseCode;
use crate::ws::deflate::WindowBits;
use crate::ws::frame::{Frame, OP_PONG};
use crate::ws::message::{Message, MessageReader, ViolationKind};

/// After we sent a close frame, how long we wait for the peer's close or EOF.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// What a handler wants after a data message.
pub enum Flow {
    Continue,
    Close(CloseCode, &'static str),
}

/// A handler's verdict on an inbound control frame.
pub enum Admit {
    Yes,
    /// Over the rate limit: not answered (a refused Ping gets no Pong).
    No,
    Close(CloseCode, &'static str),
}

/// The application side of a connection.
pub trait Handler: Send {
    fn on_text(&mut self, text: Bytes, outbox: &Outbox) -> Flow;
    fn on_binary(&mut self, data: Bytes, outbox: &Outbox) -> Flow;
    /// A Ping, a Pong or an empty fragment arrived; a rate-limiting handler counts it
    /// like a message (DESIGN §12), so control frames cannot flood us for free.
    fn on_control(&mut self) -> Admit {
        Admit::Yes
    }
    /// A complete frame arrived (liveness for idle timeouts). Bytes of an unfinished
    /// frame do not count: dripping a frame that never ends is idleness.
    fn on_activity(&mut self) {}
}

pub struct Limits {
    pub max_message: usize,
    /// A socket that takes no bytes for this long is closed.
    pub write_timeout: Duration,
    /// permessage-deflate was agreed in the handshake: the window our frames may use.
    pub deflate: Option<WindowBits>,
}

/// Runs a connection until it is closed and both directions are done.
pub async fn drive<R, W, H>(
    mut reader: R,
    writer: W,
    mut buf: BytesMut,
    outbox: Arc<Outbox>,
    handler: &mut H,
    limits: Limits,
    metrics: Arc<Metrics>,
) where
    R: WsRead,
    W: AsyncWrite + Unpin + Send + 'static,
    H: Handler,
{
    // The writer runs inside this task, polled beside the reader: one task (and one
    // allocation) per connection, and a wake-up for queued frames resumes it directly.
    let writer = run_writer(
        writer,
        outbox.clone(),
        metrics.clone(),
        limits.write_timeout,
        limits.deflate,
    );
    let mut writer = pin!(writer);
    let mut writer_done = false;
    let mut messages =
        MessageReader::new(limits.max_message, true).with_deflate(limits.deflate.is_some());
    let mut peer_closed = false;

    // Bytes that arrived with the upgrade request are processed first.
    let mut pending = !buf.is_empty();
    'read: loop {
        if !pending {
            tokio::select! {
                biased;
                _ = outbox.closed() => break 'read,
                // It ends only once the outbox is closing (or after closing it itself).
                () = &mut writer, if !writer_done => { writer_done = true; continue 'read }
                r = reader.read_into(&mut buf) => match r {
                    Ok(0) | Err(_) => { peer_closed = true; break 'read }
                    Ok(_) => {}
                },
            }
        }
        pending = false;
        loop {
            let (frames, empties) = (messages.frames(), messages.empty_fragments());
            let next = messages.next_message(&mut buf);
            if messages.frames() > frames {
                handler.on_activity();
            }
            for _ in empties..messages.empty_fragments() {
                if let Admit::Close(code, why) = handler.on_control() {
                    outbox.close(Some(Frame::close(code.code(), why)), false);
                    break 'read;
                }
            }
            match next {
                Ok(None) => break,
                Ok(Some(msg)) => {
                    let flow = match msg {
                        Message::Text(t) => handler.on_text(t, &outbox),
                        Message::Binary(b) => handler.on_binary(b, &outbox),
                        Message::Ping(p) => match handler.on_control() {
                            Admit::Yes => {
                                outbox.push_control(Frame::new(OP_PONG, &p));
                                Flow::Continue
                            }
                            Admit::No => Flow::Continue,
                            Admit::Close(code, why) => Flow::Close(code, why),
                        },
                        Message::Pong(_) => match handler.on_control() {
                            Admit::Close(code, why) => Flow::Close(code, why),
                            Admit::Yes | Admit::No => Flow::Continue,
                        },
                        Message::Close(code) => {
                            // Echo the peer's code (RFC 6455 §5.5.1), then we are done.
                            let frame = match code {
                                Some(c) => Frame::close(c, ""),
                                None => Frame::new(crate::ws::frame::OP_CLOSE, b""),
                            };
                            outbox.close(Some(frame), false);
                            peer_closed = true;
                            break 'read;
                        }
                    };
                    if let Flow::Close(code, why) = flow {
                        outbox.close(Some(Frame::close(code.code(), why)), false);
                        break 'read;
                    }
                }
                Err(v) => {
                    metrics.refuse(match v.code {
                        ViolationKind::TooBig => Refusal::TooLarge,
                        _ => Refusal::ProtocolError,
                    });
                    // Replies to the messages before the violation still go out first.
                    outbox.close(Some(Frame::close(v.code.code(), v.why)), false);
                    break 'read;
                }
            }
        }
        if buf.is_empty() && buf.capacity() > 0 {
            buf = BytesMut::new(); // an idle connection keeps no read buffer
        }
    }

    // Closed from our side: the peer gets a moment to answer with its own close, while
    // the writer sends ours.
    if !peer_closed {
        let mut drain = pin!(tokio::time::timeout(
            CLOSE_GRACE,
            drain_until_close(&mut reader, &mut buf, &mut messages),
        ));
        loop {
            tokio::select! {
                _ = &mut drain => break,
                () = &mut writer, if !writer_done => writer_done = true,
            }
        }
    }
    outbox.close(None, true);
    if !writer_done {
        // Past this the socket is dropped with whatever was not written.
        let _ = tokio::time::timeout(CLOSE_GRACE * 2, &mut writer).await;
    }
}

async fn drain_until_close<R: WsRead>(
    reader: &mut R,
    buf: &mut BytesMut,
    messages: &mut MessageReader,
) {
    loop {
        loop {
            match messages.next_message(buf) {
                Ok(Some(Message::Close(_))) | Err(_) => return,
                Ok(Some(_)) => {}
                Ok(None) => break,
            }
        }
        match reader.read_into(buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}
