//! One bench client: a plain `TcpStream`, a hand-written upgrade, herald's own
//! [`MessageReader`] in the client role, and a private latency histogram.

use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

use base64::Engine;
use bytes::{Buf, BytesMut};
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::stamp::parse_stamp;
use crate::auth::jwt::{mint_hs256, now_unix, Claims};
use crate::ws::frame::{apply_mask, put_header, OP_CLOSE, OP_PONG};
use crate::ws::handshake::derive_accept;
use crate::ws::message::{Message, MessageReader};

/// Bytes asked of the kernel per read (and the buffer's steady-state size): a read drains
/// every frame queued so far, so one wake-up handles a whole burst.
const READ_CHUNK: usize = 8 * 1024;
/// Largest response head we accept for the 101.
const MAX_HEAD: usize = 16 * 1024;
/// Largest message the client accepts (pubs are `--payload` plus ~25 bytes).
const MAX_MESSAGE: usize = 1024 * 1024;

/// Where and how the clients connect; shared by all of them.
pub struct Target {
    pub addr: SocketAddr,
    /// The `Host` header (the URL's authority).
    pub host: String,
    pub hmac_secret: String,
}

/// What one client saw, merged by the caller.
pub struct ClientStats {
    /// Created on the first delivery, so idle clients hold no histogram.
    pub latency_us: Option<Histogram<u64>>,
    pub received: u64,
    pub last_delivery_ns: u64,
    pub other_text: u64,
    pub pings: u64,
    pub end: End,
}

/// How a connected client's read loop ended.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum End {
    /// Told to stop by the bench (the normal end).
    Stopped,
    /// The server sent a close frame with this code.
    ServerClose(Option<u16>),
    /// EOF or an I/O error without a close frame.
    Io(String),
    /// The server broke RFC 6455 (as judged by our codec).
    Protocol(&'static str),
}

/// An open, upgraded connection that has received its `connected` frame.
pub struct Conn {
    stream: TcpStream,
    buf: BytesMut,
    reader: MessageReader,
}

/// Mints a token for `bench-{i}`, connects, upgrades, and waits for `connected`.
/// The caller bounds the whole thing with a timeout.
pub async fn connect(target: &Target, i: usize) -> Result<Conn, String> {
    let claims = Claims {
        sub: format!("bench-{i}"),
        exp: now_unix() + 3600,
        device: None,
        groups: Vec::new(),
        admin: false,
        iss: None,
        aud: None,
    };
    let token = mint_hs256(&target.hmac_secret, &claims).map_err(|e| format!("mint token: {e}"))?;
    let mut stream = TcpStream::connect(target.addr)
        .await
        .map_err(|e| format!("connect: {}", e.kind()))?;
    stream
        .set_nodelay(true)
        .map_err(|e| format!("nodelay: {}", e.kind()))?;
    let key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>());
    // A JWT is base64url and dots: safe in a query string as is.
    let request = format!(
        "GET /ws?token={token} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n",
        target.host
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("send upgrade: {}", e.kind()))?;

    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let head_len = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        if buf.len() > MAX_HEAD {
            return Err("response head too large".into());
        }
        buf.reserve(READ_CHUNK);
        match stream.read_buf(&mut buf).await {
            Ok(0) => return Err("closed during handshake".into()),
            Ok(_) => {}
            Err(e) => return Err(format!("read upgrade: {}", e.kind())),
        }
    };
    check_101(&buf[..head_len], &derive_accept(key.as_bytes()))?;
    buf.advance(head_len);

    let mut conn = Conn {
        stream,
        buf,
        reader: MessageReader::new(MAX_MESSAGE, false),
    };
    // The first text message must be `connected`: only then is the client in the hub.
    loop {
        match conn.reader.next_message(&mut conn.buf) {
            Ok(Some(Message::Text(t))) => {
                if find(&t, br#""type":"connected""#) {
                    return Ok(conn);
                }
                return Err("first message is not `connected`".into());
            }
            Ok(Some(Message::Ping(p))) => send_control(&mut conn.stream, OP_PONG, &p)
                .await
                .map_err(|e| format!("pong: {}", e.kind()))?,
            Ok(Some(Message::Close(code))) => {
                return Err(format!("closed by server before `connected` ({code:?})"))
            }
            Ok(Some(_)) => {}
            Ok(None) => {
                conn.buf.reserve(READ_CHUNK);
                match conn.stream.read_buf(&mut conn.buf).await {
                    Ok(0) => return Err("closed before `connected`".into()),
                    Ok(_) => {}
                    Err(e) => return Err(format!("read: {}", e.kind())),
                }
            }
            Err(v) => return Err(format!("protocol: {}", v.why)),
        }
    }
}

/// Checks the status line and `Sec-WebSocket-Accept` of a response head.
fn check_101(head: &[u8], expected_accept: &str) -> Result<(), String> {
    let head = std::str::from_utf8(head).map_err(|_| "response head is not UTF-8".to_owned())?;
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    let code = status.split(' ').nth(1).unwrap_or("?");
    if !status.starts_with("HTTP/1.1 ") || code != "101" {
        return Err(format!("HTTP {code}"));
    }
    let accept = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("sec-websocket-accept"))
        .map(|(_, v)| v.trim());
    match accept {
        Some(v) if v == expected_accept => Ok(()),
        Some(_) => Err("wrong Sec-WebSocket-Accept".into()),
        None => Err("no Sec-WebSocket-Accept".into()),
    }
}

impl Conn {
    /// Reads until `stop`, recording each delivery's latency (µs) against `base`.
    /// `received_total` is bumped once per read, not per message.
    pub async fn run(
        mut self,
        base: Instant,
        template: Arc<Histogram<u64>>,
        received_total: Arc<AtomicU64>,
        stop: CancellationToken,
    ) -> ClientStats {
        let mut stats = ClientStats {
            latency_us: None,
            received: 0,
            last_delivery_ns: 0,
            other_text: 0,
            pings: 0,
            end: End::Stopped,
        };
        let mut stopped = pin!(stop.cancelled());
        stats.end = 'read: loop {
            // Frames already buffered (e.g. arrived with `connected`) are handled first.
            let now_ns = base.elapsed().as_nanos() as u64;
            let mut batch = 0u64;
            loop {
                match self.reader.next_message(&mut self.buf) {
                    Ok(Some(Message::Text(t))) => match parse_stamp(&t) {
                        Some(sent_ns) => {
                            let h = stats
                                .latency_us
                                .get_or_insert_with(|| Histogram::new_from(&template));
                            h.saturating_record(now_ns.saturating_sub(sent_ns) / 1000);
                            batch += 1;
                        }
                        None => stats.other_text += 1,
                    },
                    Ok(Some(Message::Ping(p))) => {
                        stats.pings += 1;
                        if let Err(e) = send_control(&mut self.stream, OP_PONG, &p).await {
                            break 'read End::Io(format!("pong: {}", e.kind()));
                        }
                    }
                    Ok(Some(Message::Close(code))) => break 'read End::ServerClose(code),
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(v) => break 'read End::Protocol(v.why),
                }
            }
            if batch > 0 {
                stats.received += batch;
                stats.last_delivery_ns = now_ns;
                received_total.fetch_add(batch, Relaxed);
            }
            if self.buf.capacity() - self.buf.len() < READ_CHUNK / 2 {
                self.buf.reserve(READ_CHUNK);
            }
            tokio::select! {
                biased;
                _ = &mut stopped => break End::Stopped,
                r = self.stream.read_buf(&mut self.buf) => match r {
                    Ok(0) => break End::Io("closed without a close frame".into()),
                    Ok(_) => {}
                    Err(e) => break End::Io(e.kind().to_string()),
                },
            }
        };
        if stats.end == End::Stopped {
            // A polite 1000, best effort and without waiting: the socket is dropped next.
            let mut frame = BytesMut::with_capacity(8);
            masked(&mut frame, OP_CLOSE, &1000u16.to_be_bytes());
            let _ = self.stream.try_write(&frame);
        }
        stats
    }
}

/// Sends a masked control frame (`payload` ≤ 125 bytes, as the codec guarantees).
async fn send_control(stream: &mut TcpStream, opcode: u8, payload: &[u8]) -> std::io::Result<()> {
    let mut frame = BytesMut::with_capacity(6 + payload.len());
    masked(&mut frame, opcode, payload);
    stream.write_all(&frame).await
}

/// Appends a final, masked client frame.
fn masked(out: &mut BytesMut, opcode: u8, payload: &[u8]) {
    let key = rand::random::<[u8; 4]>();
    put_header(out, true, opcode, payload.len(), Some(key));
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], key, 0);
}

fn find(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upgrade_response_is_checked() {
        let accept = derive_accept(b"dGhlIHNhbXBsZSBub25jZQ==");
        let ok = format!("HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nsec-websocket-accept: {accept}\r\n\r\n");
        assert_eq!(check_101(ok.as_bytes(), &accept), Ok(()));
        assert_eq!(
            check_101(ok.as_bytes(), "other"),
            Err("wrong Sec-WebSocket-Accept".into())
        );
        assert_eq!(
            check_101(b"HTTP/1.1 429 Too Many Requests\r\n\r\n", &accept),
            Err("HTTP 429".into())
        );
        assert_eq!(
            check_101(b"HTTP/1.1 101 OK\r\n\r\n", &accept),
            Err("no Sec-WebSocket-Accept".into())
        );
    }
}
