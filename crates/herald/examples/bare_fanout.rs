//! The floor herald's fan-out is measured against (issue #11): the least a tokio program
//! can do to broadcast over WebSocket, with none of herald's features.
//!
//! It speaks exactly the part of herald's protocol that `herald bench` uses — the same
//! subset as the Node peers in `scripts/peers/` (their README lists it) — so the same
//! bench run can be pointed at it: `GET /ws` (a `connected` frame on open; `subscribe`,
//! `unsubscribe`, `ping`; with `X-API-Key`, a backend whose `publish` frames are acked in
//! order), `POST /api/publish`, `POST /api/publish/batch`, `GET /healthz`.
//!
//! What it does per publication is what herald's hot path aims at and nothing more: the
//! frame is built once, each recipient gets a refcount of it pushed onto a plain
//! `Vec` under its own mutex and its writer woken, and a writer writes everything
//! waiting in one `writev`. No auth, no origin check, no limits but a 1 MiB
//! per-connection backlog (over it a copy is skipped, as uWS does), no heartbeats, no
//! history, no metrics, no compression. Not part of herald; run by
//! `SERVERS=bare scripts/bench-peers`.
//!
//!   cargo run --release --example bare_fanout -- [--port 0] [--max-backpressure BYTES]

use std::collections::HashMap;
use std::io::IoSlice;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};

use base64::Engine as _;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use sha1::{Digest, Sha1};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

const EPOCH: &str = "0000000000000000";
const MAX_HEAD: usize = 16 * 1024;
const MAX_BODY: usize = 1024 * 1024;
const MAX_MESSAGE: usize = 64 * 1024;
/// At most this many slices per `writev` (Linux's IOV_MAX is 1024).
const MAX_IOV: usize = 512;

/// A connection's outbound side: frames waiting, and its writer's wake-up.
struct Conn {
    out: Mutex<Out>,
    wake: Notify,
    /// The socket, for `--uring`'s direct sends (valid while the connection is in the
    /// hub: its read half is dropped only after it is forgotten).
    fd: i32,
}

#[derive(Default)]
struct Out {
    frames: Vec<Bytes>,
    bytes: usize,
    closed: bool,
    /// Someone is writing to the socket (the writer with a batch, or a `--uring` send):
    /// nobody else may, so frames keep their order.
    writing: bool,
}

impl Conn {
    fn lock(&self) -> MutexGuard<'_, Out> {
        self.out.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `frame` unless the backlog is over `limit`; never waits.
    fn push(&self, frame: &Bytes, limit: usize) -> bool {
        let mut out = self.lock();
        if out.closed || out.bytes + frame.len() > limit {
            return false;
        }
        out.bytes += frame.len();
        out.frames.push(frame.clone());
        drop(out);
        self.wake.notify_one();
        true
    }

    fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_one();
    }
}

#[derive(Default)]
struct Channel {
    offset: u64,
    subscribers: HashMap<u64, Arc<Conn>>,
}

struct Hub {
    everyone: Mutex<HashMap<u64, Arc<Conn>>>,
    channels: Mutex<HashMap<String, Channel>>,
    next_id: AtomicU64,
    max_backlog: usize,
    uring: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A publish body (`/api/publish`, a batch entry, or a backend's `publish` frame).
#[derive(Deserialize)]
struct Publish<'a> {
    #[serde(default)]
    all: bool,
    #[serde(borrow, default)]
    channel: Option<&'a str>,
    #[serde(borrow)]
    data: &'a RawValue,
    #[serde(borrow, rename = "ref", default)]
    reference: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Batch<'a> {
    #[serde(borrow)]
    publications: Vec<Publish<'a>>,
}

#[derive(Deserialize)]
struct ClientMessage<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(borrow, default)]
    channel: Option<&'a str>,
    #[serde(borrow, rename = "ref", default)]
    reference: Option<&'a RawValue>,
}

impl Hub {
    /// Publishes one publication: how many it was queued to, and its channel offset.
    fn publish(&self, p: &Publish<'_>) -> Option<Published> {
        match (p.all, p.channel) {
            (true, None) => {
                let frame = text_frame(&format!(r#"{{"type":"pub","data":{}}}"#, p.data.get()));
                let everyone = lock(&self.everyone);
                #[cfg(target_os = "linux")]
                if self.uring {
                    let queued = uring::send_to_all(&everyone, &frame, self.max_backlog);
                    return Some(Published {
                        queued,
                        offset: None,
                    });
                }
                let queued = everyone
                    .values()
                    .filter(|c| c.push(&frame, self.max_backlog))
                    .count();
                Some(Published {
                    queued,
                    offset: None,
                })
            }
            (false, Some(name)) if valid_channel(name) => {
                let mut channels = lock(&self.channels);
                let ch = channels.entry(name.to_owned()).or_default();
                ch.offset += 1;
                let frame = text_frame(&format!(
                    r#"{{"type":"pub","channel":"{name}","offset":{},"epoch":"{EPOCH}","data":{}}}"#,
                    ch.offset,
                    p.data.get()
                ));
                let queued = ch
                    .subscribers
                    .values()
                    .filter(|c| c.push(&frame, self.max_backlog))
                    .count();
                Some(Published {
                    queued,
                    offset: Some(ch.offset),
                })
            }
            _ => None,
        }
    }

    /// The reply to a client's text message.
    fn client_message(&self, id: u64, conn: &Arc<Conn>, text: &str) -> String {
        let Ok(m) = serde_json::from_str::<ClientMessage<'_>>(text) else {
            return error_frame("messages are JSON objects", None);
        };
        let reference = m.reference.map(|r| format!(r#","ref":{}"#, r.get()));
        let reference = reference.as_deref().unwrap_or("");
        match (m.kind, m.channel) {
            ("ping", _) => r#"{"type":"pong"}"#.to_owned(),
            ("subscribe", Some(name)) if valid_channel(name) => {
                let mut channels = lock(&self.channels);
                let ch = channels.entry(name.to_owned()).or_default();
                ch.subscribers.insert(id, conn.clone());
                format!(
                    r#"{{"type":"subscribed","channel":"{name}","offset":{},"epoch":"{EPOCH}","recovered":false{reference}}}"#,
                    ch.offset
                )
            }
            ("unsubscribe", Some(name)) if valid_channel(name) => {
                if let Some(ch) = lock(&self.channels).get_mut(name) {
                    ch.subscribers.remove(&id);
                }
                format!(r#"{{"type":"unsubscribed","channel":"{name}"{reference}}}"#)
            }
            _ => error_frame(
                "this server knows subscribe, unsubscribe and ping",
                m.reference,
            ),
        }
    }

    fn forget(&self, id: u64) {
        lock(&self.everyone).remove(&id);
        for ch in lock(&self.channels).values_mut() {
            ch.subscribers.remove(&id);
        }
    }
}

struct Published {
    queued: usize,
    offset: Option<u64>,
}

impl Published {
    /// The HTTP API's answer: `{"queued":N}`, with the offset and epoch on a channel.
    fn answer(&self) -> String {
        match self.offset {
            None => format!(r#"{{"queued":{}}}"#, self.queued),
            Some(o) => format!(
                r#"{{"queued":{},"offset":{o},"epoch":"{EPOCH}"}}"#,
                self.queued
            ),
        }
    }
}

fn error_frame(message: &str, reference: Option<&RawValue>) -> String {
    let reference = reference.map(|r| format!(r#","ref":{}"#, r.get()));
    format!(
        r#"{{"type":"error","code":"bad_request","message":"{message}"{}}}"#,
        reference.as_deref().unwrap_or("")
    )
}

fn valid_channel(name: &str) -> bool {
    (1..=256).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:@-".contains(&b))
}

/// An unmasked server frame: FIN + `opcode`, the length, the payload, in one buffer.
fn frame(opcode: u8, payload: &[u8]) -> Bytes {
    let mut f = Vec::with_capacity(payload.len() + 10);
    f.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => f.push(n as u8),
        n if n <= 0xffff => {
            f.push(126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(payload);
    Bytes::from(f)
}

fn text_frame(text: &str) -> Bytes {
    frame(0x1, text.as_bytes())
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut port = 0u16;
    let mut max_backlog = 1024 * 1024;
    let mut uring = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--uring" {
            uring = cfg!(target_os = "linux");
            continue;
        }
        let value = args.next().unwrap_or_default();
        match a.as_str() {
            "--port" => port = value.parse().map_err(invalid)?,
            "--max-backpressure" => max_backlog = value.parse().map_err(invalid)?,
            other => return Err(invalid(format!("unknown argument {other}"))),
        }
    }
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    println!("listening on http://{}", listener.local_addr()?);
    let hub = Arc::new(Hub {
        everyone: Mutex::default(),
        channels: Mutex::default(),
        next_id: AtomicU64::new(1),
        max_backlog,
        uring,
    });
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve(hub.clone(), stream));
    }
}

fn invalid(e: impl ToString) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string())
}

/// One HTTP/1.1 connection: requests until it closes, or an upgrade to WebSocket.
async fn serve(hub: Arc<Hub>, mut stream: TcpStream) {
    let mut buf = Vec::with_capacity(4096);
    loop {
        let Some(end) = read_head(&mut stream, &mut buf).await else {
            return;
        };
        let head = String::from_utf8_lossy(buf.get(..end).unwrap_or_default()).into_owned();
        buf.drain(..end);
        let mut lines = head.split("\r\n");
        let mut request = lines.next().unwrap_or_default().split(' ');
        let (method, path) = (request.next().unwrap_or(""), request.next().unwrap_or(""));
        let header = |name: &str| {
            head.split("\r\n").skip(1).find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
            })
        };
        let path = path.split('?').next().unwrap_or("");
        if method == "GET" && path == "/ws" {
            if let Some(key) = header("sec-websocket-key") {
                let backend = header("x-api-key").is_some();
                let accept = accept_key(key);
                let answer = format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n");
                if stream.write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
                return websocket(hub, stream, buf, backend).await;
            }
        }
        let length: usize = header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if length > MAX_BODY {
            let _ = respond(&mut stream, "413 Payload Too Large", "{}").await;
            return;
        }
        while buf.len() < length {
            match stream.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
        let body: Vec<u8> = buf.drain(..length).collect();
        let (status, answer) = match (method, path) {
            ("GET", "/healthz") => ("200 OK", r#"{"status":"ok"}"#.to_owned()),
            ("POST", "/api/publish") => match serde_json::from_slice::<Publish<'_>>(&body)
                .ok()
                .and_then(|p| hub.publish(&p))
            {
                Some(published) => ("200 OK", published.answer()),
                None => ("400 Bad Request", error_frame("one target and data", None)),
            },
            ("POST", "/api/publish/batch") => {
                let results = serde_json::from_slice::<Batch<'_>>(&body)
                    .ok()
                    .and_then(|b| {
                        b.publications
                            .iter()
                            .map(|p| hub.publish(p).map(|done| done.answer()))
                            .collect::<Option<Vec<_>>>()
                    });
                match results {
                    Some(r) => ("200 OK", format!(r#"{{"results":[{}]}}"#, r.join(","))),
                    None => ("400 Bad Request", error_frame("publications", None)),
                }
            }
            _ => ("404 Not Found", r#"{"error":"not_found"}"#.to_owned()),
        };
        if respond(&mut stream, status, &answer).await.is_err() {
            return;
        }
    }
}

/// Reads until `buf` holds a whole request head; answers its length (with the blank line).
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(i + 4);
        }
        if buf.len() > MAX_HEAD {
            return None;
        }
        match stream.read_buf(buf).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

async fn respond(stream: &mut TcpStream, status: &str, body: &str) -> std::io::Result<()> {
    let r = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(r.as_bytes()).await
}

fn accept_key(key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// A WebSocket connection: a writer task draining the queue, this task reading.
async fn websocket(hub: Arc<Hub>, stream: TcpStream, buf: Vec<u8>, backend: bool) {
    let id = hub.next_id.fetch_add(1, Relaxed);
    let conn = Arc::new(Conn {
        out: Mutex::default(),
        wake: Notify::new(),
        fd: std::os::fd::AsRawFd::as_raw_fd(&stream),
    });
    let (mut reader, writer) = stream.into_split();
    let writing = tokio::spawn(write_loop(conn.clone(), writer));
    let hello = format!(
        r#"{{"type":"connected","conn_id":"b-{id}","user_id":"u","node":"bare","heartbeat_s":25}}"#
    );
    conn.push(&text_frame(&hello), usize::MAX);
    if !backend {
        lock(&hub.everyone).insert(id, conn.clone());
    }
    read_loop(&hub, id, &conn, &mut reader, buf, backend).await;
    hub.forget(id);
    drop(reader); // only now may the descriptor close (and its number be reused)
    conn.close();
    let _ = writing.await;
}

/// Writes everything queued in one `writev` per wake-up (more if the kernel takes less).
async fn write_loop(conn: Arc<Conn>, mut writer: OwnedWriteHalf) {
    let mut batch: Vec<Bytes> = Vec::new();
    loop {
        let (closed, busy) = {
            let mut out = conn.lock();
            if out.writing {
                (false, true)
            } else {
                std::mem::swap(&mut batch, &mut out.frames);
                out.bytes = 0;
                out.writing = !batch.is_empty();
                (out.closed, false)
            }
        };
        if busy {
            // A `--uring` send is under way; it wakes us when it is done.
            conn.wake.notified().await;
            continue;
        }
        if batch.is_empty() {
            if closed {
                return;
            }
            conn.wake.notified().await;
            continue;
        }
        let written = write_all(&mut writer, &batch).await;
        conn.lock().writing = false;
        if written.is_err() {
            conn.close();
            return;
        }
        batch.clear();
    }
}

async fn write_all(writer: &mut OwnedWriteHalf, frames: &[Bytes]) -> std::io::Result<()> {
    let (mut first, mut skip) = (0usize, 0usize);
    while first < frames.len() {
        let rest = frames.get(first..).unwrap_or_default();
        let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(rest.len().min(MAX_IOV));
        for (i, f) in rest.iter().take(MAX_IOV).enumerate() {
            let from = if i == 0 { skip } else { 0 };
            slices.push(IoSlice::new(f.get(from..).unwrap_or_default()));
        }
        let mut n = writer.write_vectored(&slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while let Some(f) = frames.get(first) {
            let left = f.len() - skip;
            if n < left {
                skip += n;
                break;
            }
            n -= left;
            first += 1;
            skip = 0;
        }
    }
    Ok(())
}

/// Reads client frames (masked; control frames answered; fragments not expected from
/// the bench and refused) until the peer closes.
async fn read_loop(
    hub: &Hub,
    id: u64,
    conn: &Arc<Conn>,
    reader: &mut OwnedReadHalf,
    mut buf: Vec<u8>,
    backend: bool,
) {
    loop {
        while let Some((opcode, payload, used)) = parse_frame(&buf) {
            buf.drain(..used);
            match opcode {
                0x1 => {
                    let text = String::from_utf8_lossy(&payload);
                    let reply = if backend {
                        backend_publish(hub, &text)
                    } else {
                        hub.client_message(id, conn, &text)
                    };
                    conn.push(&text_frame(&reply), usize::MAX);
                }
                0x9 => {
                    conn.push(&frame(0xA, &payload), usize::MAX);
                }
                0xA => {}
                _ => {
                    conn.push(&frame(0x8, &1000u16.to_be_bytes()), usize::MAX);
                    return;
                }
            }
        }
        if buf.len() > MAX_MESSAGE + 14 {
            return;
        }
        match reader.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// A backend's `publish` frame applied; its `ack` (or `error`).
fn backend_publish(hub: &Hub, text: &str) -> String {
    let Ok(p) = serde_json::from_str::<Publish<'_>>(text) else {
        return error_frame("publish frames only", None);
    };
    let reference = p.reference.map(|r| format!(r#","ref":{}"#, r.get()));
    match hub.publish(&p) {
        Some(published) => {
            let offset = published.offset.map(|o| format!(r#","offset":{o}"#));
            format!(
                r#"{{"type":"ack"{}{}}}"#,
                reference.as_deref().unwrap_or(""),
                offset.as_deref().unwrap_or("")
            )
        }
        None => error_frame("publish all or a channel", p.reference),
    }
}

/// One whole frame at the start of `buf`: its opcode, unmasked payload and length.
fn parse_frame(buf: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    let (&b0, &b1) = (buf.first()?, buf.get(1)?);
    let (len, mut at) = match b1 & 0x7f {
        126 => (
            u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?) as usize,
            4,
        ),
        127 => (
            u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize,
            10,
        ),
        n => (n as usize, 2),
    };
    let mask: [u8; 4] = buf.get(at..at + 4)?.try_into().ok()?;
    at += 4;
    let payload = buf.get(at..at.checked_add(len)?)?;
    let payload = payload
        .iter()
        .enumerate()
        .map(|(i, b)| b ^ mask.get(i % 4).copied().unwrap_or(0))
        .collect();
    Some((b0 & 0x0f, payload, at + len))
}

/// `--uring`: a publication to everyone is sent to every idle connection with ONE
/// `io_uring_enter` per 4,096 sockets instead of a `writev` each. Each send is
/// non-blocking (`MSG_DONTWAIT`); a socket that is busy (its writer holds a batch, or
/// frames wait) or that takes less than the whole frame gets the frame (or its rest)
/// queued for its writer as usual, so order and completeness are the same as without.
#[cfg(target_os = "linux")]
mod uring {
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::sync::Arc;

    use bytes::Bytes;
    use io_uring::{opcode, types, IoUring};

    use super::Conn;

    const ENTRIES: u32 = 4096;

    thread_local! {
        static RING: RefCell<Option<IoUring>> = const { RefCell::new(None) };
    }

    pub fn send_to_all(everyone: &HashMap<u64, Arc<Conn>>, frame: &Bytes, limit: usize) -> usize {
        let mut queued = 0usize;
        // The connections this send claimed (their `writing` flag set by us).
        let mut claimed: Vec<&Arc<Conn>> = Vec::with_capacity(everyone.len());
        for c in everyone.values() {
            let mut out = c.lock();
            if out.closed {
                continue;
            }
            if out.writing || !out.frames.is_empty() {
                if out.bytes + frame.len() <= limit {
                    out.bytes += frame.len();
                    out.frames.push(frame.clone());
                    queued += 1;
                }
                continue;
            }
            out.writing = true;
            claimed.push(c);
        }
        queued += claimed.len();
        let results = RING.with(|ring| {
            let mut ring = ring.borrow_mut();
            if ring.is_none() {
                *ring = IoUring::new(ENTRIES).ok();
            }
            ring.as_mut().map(|r| send_all(r, &claimed, frame))
        });
        let results = results.unwrap_or_else(|| vec![-1; claimed.len()]);
        for (c, sent) in claimed.iter().zip(results) {
            let sent = usize::try_from(sent).unwrap_or(0);
            let mut out = c.lock();
            out.writing = false;
            if sent < frame.len() {
                // Busy socket or a short send: the rest goes the usual way.
                out.bytes += frame.len() - sent;
                out.frames.insert(0, frame.slice(sent..));
            }
            let wake = !out.frames.is_empty();
            drop(out);
            if wake {
                c.wake.notify_one();
            }
        }
        queued
    }

    /// One `send` per connection, submitted ENTRIES at a time; the bytes each took (or a
    /// negative errno), in order.
    fn send_all(ring: &mut IoUring, conns: &[&Arc<Conn>], frame: &Bytes) -> Vec<i32> {
        let mut results = vec![-1i32; conns.len()];
        for (chunk_no, chunk) in conns.chunks(ENTRIES as usize).enumerate() {
            let base = chunk_no * ENTRIES as usize;
            let mut pushed = 0usize;
            for (i, c) in chunk.iter().enumerate() {
                let len = u32::try_from(frame.len()).unwrap_or(u32::MAX);
                let sqe = opcode::Send::new(types::Fd(c.fd), frame.as_ptr(), len)
                    .flags(libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
                    .build()
                    .user_data((base + i) as u64);
                // SAFETY: `frame` outlives the submission: we wait for every completion
                // below before returning, and the descriptor stays open meanwhile (the
                // hub's lock is held, and a connection closes its socket only after it
                // left the hub).
                if unsafe { ring.submission().push(&sqe) }.is_ok() {
                    pushed += 1;
                }
            }
            if ring.submit_and_wait(pushed).is_err() {
                continue;
            }
            for cqe in ring.completion() {
                if let Some(r) = usize::try_from(cqe.user_data())
                    .ok()
                    .and_then(|i| results.get_mut(i))
                {
                    *r = cqe.result();
                }
            }
        }
        results
    }
}
