//! One WebSocket connection as one future: bytes in, messages out, the control protocol
//! (ping, close) answered here so each handler only sees data messages, and the queued
//! frames written out (the [`WriteSide`] polled beside the reader).
//!
//! [`Connection`] is a hand-written future, not an `async fn`: its state is exactly its
//! fields — the socket, the handler, an empty read buffer, the message reader, the write
//! side — and nothing else while the connection is idle. Nested `async fn`s and
//! `select!` kept every argument twice and laid their states side by side (1.7 KiB more
//! per idle connection, docs/benchmarks.md); the close handshake's timer is allocated only once closing starts.
//!
//! Whoever closes the connection (the peer, a protocol error, the hub with 4000/4002,
//! shutdown with 1001) goes through [`Outbox::close`], which only the first caller wins.

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use super::writer::WriteSide;
use crate::metrics::{Metrics, Refusal};
use crate::outbox::Outbox;
use crate::protocol::codes::CloseCode;
use crate::ws::deflate::WindowBits;
use crate::ws::frame::{Frame, OP_CLOSE, OP_PONG};
use crate::ws::message::{Message, MessageReader, ViolationKind};

/// After we sent a close frame, how long we wait for the peer's close or EOF.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Bytes read per readiness event: into a stack scratch, so an idle connection holds
/// no read buffer; only a partial frame is kept.
const SCRATCH: usize = 8 * 1024;

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

/// Where the read side stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading and handling messages.
    Open,
    /// We closed: reading only until the peer's close or EOF, for [`CLOSE_GRACE`].
    Draining,
    /// Reading is over; the writer gets `2 × CLOSE_GRACE` to finish.
    Closed,
}

/// What one turn of reading did.
enum Read {
    /// Bytes arrived and were handled: the writer's turn (replies go out between
    /// reads), then read again.
    More,
    End(ReadEnd),
}

/// How reading ended.
enum ReadEnd {
    /// The peer closed (close frame, EOF or a socket error).
    PeerGone,
    /// We closed the outbox (a handler's verdict or a protocol violation).
    WeClosed,
}

/// A connection until it is closed and both directions are done.
pub struct Connection<S, H> {
    io: S,
    handler: H,
    outbox: Arc<Outbox>,
    metrics: Arc<Metrics>,
    /// A partial frame; empty and unallocated while idle.
    buf: BytesMut,
    messages: MessageReader,
    writer: WriteSide,
    writer_done: bool,
    phase: Phase,
    /// Bytes that arrived with the upgrade request are processed first.
    pending: bool,
    /// The close handshake's deadline, allocated once closing starts.
    timer: Option<Pin<Box<Sleep>>>,
}

impl<S, H> Connection<S, H>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    H: Handler,
{
    /// `buf`: bytes read ahead with the upgrade request.
    pub fn new(
        io: S,
        buf: BytesMut,
        outbox: Arc<Outbox>,
        handler: H,
        limits: Limits,
        metrics: Arc<Metrics>,
    ) -> Connection<S, H> {
        Connection {
            io,
            handler,
            outbox,
            metrics,
            pending: !buf.is_empty(),
            buf,
            messages: MessageReader::new(limits.max_message, true)
                .with_deflate(limits.deflate.is_some()),
            writer: WriteSide::new(limits.write_timeout, limits.deflate),
            writer_done: false,
            phase: Phase::Open,
            timer: None,
        }
    }

    /// Reads whatever is available; `Ok(0)` is end of stream.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let mut scratch = [MaybeUninit::<u8>::uninit(); SCRATCH];
        let mut rb = ReadBuf::uninit(&mut scratch);
        match Pin::new(&mut self.io).poll_read(cx, &mut rb) {
            Poll::Ready(Ok(())) => {
                self.buf.extend_from_slice(rb.filled());
                Poll::Ready(Ok(rb.filled().len()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Reads once and handles every message that completes; `Pending` when the socket
    /// has nothing for now.
    fn poll_open(&mut self, cx: &mut Context<'_>) -> Poll<Read> {
        if self.outbox.is_closing() {
            return Poll::Ready(Read::End(ReadEnd::WeClosed));
        }
        if !std::mem::take(&mut self.pending) {
            match std::task::ready!(self.poll_read(cx)) {
                Ok(0) | Err(_) => return Poll::Ready(Read::End(ReadEnd::PeerGone)),
                Ok(_) => {}
            }
        }
        if let Some(end) = self.handle_messages() {
            return Poll::Ready(Read::End(end));
        }
        if self.buf.is_empty() && self.buf.capacity() > 0 {
            self.buf = BytesMut::new(); // an idle connection keeps no read buffer
        }
        Poll::Ready(Read::More)
    }

    /// Handles every complete message in the buffer; `Some` when reading is over.
    fn handle_messages(&mut self) -> Option<ReadEnd> {
        let outbox = &*self.outbox;
        loop {
            let (frames, empties) = (self.messages.frames(), self.messages.empty_fragments());
            let next = self.messages.next_message(&mut self.buf);
            if self.messages.frames() > frames {
                self.handler.on_activity();
            }
            for _ in empties..self.messages.empty_fragments() {
                if let Admit::Close(code, why) = self.handler.on_control() {
                    outbox.close(Some(Frame::close(code.code(), why)), false);
                    return Some(ReadEnd::WeClosed);
                }
            }
            let msg = match next {
                Ok(None) => return None,
                Ok(Some(msg)) => msg,
                Err(v) => {
                    self.metrics.refuse(match v.code {
                        ViolationKind::TooBig => Refusal::TooLarge,
                        _ => Refusal::ProtocolError,
                    });
                    // Replies to the messages before the violation still go out first.
                    outbox.close(Some(Frame::close(v.code.code(), v.why)), false);
                    return Some(ReadEnd::WeClosed);
                }
            };
            let flow = match msg {
                Message::Text(t) => self.handler.on_text(t, outbox),
                Message::Binary(b) => self.handler.on_binary(b, outbox),
                Message::Ping(p) => match self.handler.on_control() {
                    Admit::Yes => {
                        outbox.push_control(Frame::new(OP_PONG, &p));
                        Flow::Continue
                    }
                    Admit::No => Flow::Continue,
                    Admit::Close(code, why) => Flow::Close(code, why),
                },
                Message::Pong(_) => match self.handler.on_control() {
                    Admit::Close(code, why) => Flow::Close(code, why),
                    Admit::Yes | Admit::No => Flow::Continue,
                },
                Message::Close(code) => {
                    // Echo the peer's code (RFC 6455 §5.5.1), then we are done.
                    let frame = match code {
                        Some(c) => Frame::close(c, ""),
                        None => Frame::new(OP_CLOSE, b""),
                    };
                    outbox.close(Some(frame), false);
                    return Some(ReadEnd::PeerGone);
                }
            };
            if let Flow::Close(code, why) = flow {
                outbox.close(Some(Frame::close(code.code(), why)), false);
                return Some(ReadEnd::WeClosed);
            }
        }
    }

    /// While draining: `Ready` once the peer's close, EOF or an error arrived.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            loop {
                match self.messages.next_message(&mut self.buf) {
                    Ok(Some(Message::Close(_))) | Err(_) => return Poll::Ready(()),
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                }
            }
            match std::task::ready!(self.poll_read(cx)) {
                Ok(0) | Err(_) => return Poll::Ready(()),
                Ok(_) => {}
            }
        }
    }

    fn arm(&mut self, after: Duration) {
        self.timer = Some(Box::pin(tokio::time::sleep(after)));
    }

    fn poll_timer(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match &mut self.timer {
            Some(t) => t.as_mut().poll(cx),
            None => Poll::Pending,
        }
    }

    fn enter_closed(&mut self) {
        self.phase = Phase::Closed;
        // Past this whatever was not written is dropped with the socket.
        self.outbox.close(None, true);
        self.buf = BytesMut::new();
        self.arm(CLOSE_GRACE * 2);
    }
}

impl<S, H> Future for Connection<S, H>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    H: Handler + Unpin,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            let phase = this.phase;
            let mut read_more = false;
            match phase {
                // The socket's readiness (and tokio's cooperative budget) ends the
                // reading: a flooding peer yields to the other connections in time.
                Phase::Open => match this.poll_open(cx) {
                    Poll::Pending => {}
                    Poll::Ready(Read::More) => read_more = true,
                    Poll::Ready(Read::End(ReadEnd::PeerGone)) => this.enter_closed(),
                    Poll::Ready(Read::End(ReadEnd::WeClosed)) => {
                        // The peer gets a moment to answer with its own close while the
                        // writer sends ours.
                        this.phase = Phase::Draining;
                        this.arm(CLOSE_GRACE);
                    }
                },
                Phase::Draining => {
                    if this.poll_drain(cx).is_ready() || this.poll_timer(cx).is_ready() {
                        this.enter_closed();
                    }
                }
                Phase::Closed => {}
            }
            if !this.writer_done {
                let outbox = &*this.outbox;
                let io = Pin::new(&mut this.io);
                if this.writer.poll(cx, io, outbox, &this.metrics).is_ready() {
                    this.writer_done = true;
                }
            }
            if this.phase == Phase::Closed && (this.writer_done || this.poll_timer(cx).is_ready()) {
                return Poll::Ready(());
            }
            // The writer may have closed the outbox (a failed or stalled socket): the read
            // side sees it on the next turn, not at some later wake-up.
            let closed_meanwhile = this.phase == Phase::Open && this.outbox.is_closing();
            if this.phase == phase && !closed_meanwhile && !read_more {
                return Poll::Pending;
            }
        }
    }
}
