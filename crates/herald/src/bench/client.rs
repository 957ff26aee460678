//! One bench client: a plain `TcpStream`, a hand-written upgrade, herald's own
//! [`MessageReader`] in the client role, and a private latency histogram.

use std::net::{IpAddr, SocketAddr};
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

use base64::Engine;
use bytes::{Buf, Bytes, BytesMut};
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;

use super::source::source_ip;
use super::stamp::{parse_stamp, StampOrder};
use crate::auth::jwt::{mint_hs256, now_unix, Claims};
use crate::ws::frame::{apply_mask, put_header, OP_CLOSE, OP_PONG, OP_TEXT};
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
    /// `Some`: the `subscribe` message each client sends right after `connected` (to the
    /// `--channel`); the client counts as connected only once `subscribed` is back.
    pub subscribe: Option<Bytes>,
    /// Offer permessage-deflate, and fail if the server does not agree.
    pub deflate: bool,
    /// `Some`: every client is this user (`--user`); `None`: client `i` is `bench-{i}`.
    pub user: Option<String>,
    /// `--source-addrs`: client `i` binds to 127.0.0.(1 + i % K) first (K > 1).
    pub source_addrs: u32,
}

/// The offer a `--deflate` client makes (what browsers send).
pub const DEFLATE_OFFER: &str =
    "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n";

/// The `subscribe` message for `channel`, which the caller has checked against the
/// server's channel-name rule (letters, digits, `_.:@-`): nothing to escape.
pub fn subscribe_message(channel: &str) -> Bytes {
    Bytes::from(format!(r#"{{"type":"subscribe","channel":"{channel}"}}"#))
}

/// What one client saw, merged by the caller.
pub struct ClientStats {
    /// Created on the first delivery, so idle clients hold no histogram.
    pub latency_us: Option<Histogram<u64>>,
    pub received: u64,
    /// Deliveries stamped earlier than the one this client received just before.
    pub reordered: u64,
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

/// An open, upgraded connection that has received its `connected` frame (and its
/// `subscribed` frame, with a channel).
pub struct Conn {
    stream: TcpStream,
    buf: BytesMut,
    reader: MessageReader,
    /// The server agreed to permessage-deflate: its frames may come compressed.
    pub deflate: bool,
}

/// Mints a token for `bench-{i}` (or the `--user`), connects (from its `--source-addrs`
/// address), upgrades, waits for `connected`, and with a channel subscribes and waits for
/// `subscribed`. The caller bounds the whole thing with a timeout.
pub async fn connect(target: &Target, i: usize) -> Result<Conn, String> {
    let claims = Claims {
        sub: target.user.clone().unwrap_or_else(|| format!("bench-{i}")),
        exp: now_unix() + 3600,
        device: None,
        groups: Vec::new(),
        admin: false,
        iss: None,
        aud: None,
        iat: Some(now_unix()),
        jti: None,
        channels: Vec::new(),
    };
    let token = mint_hs256(&target.hmac_secret, &claims).map_err(|e| format!("mint token: {e}"))?;
    let offer = if target.deflate { DEFLATE_OFFER } else { "" };
    let (mut conn, first) = open_with(
        target.addr,
        source_ip(i, target.source_addrs),
        &target.host,
        &format!("/ws?token={token}"),
        offer,
    )
    .await?;
    if target.deflate && !conn.deflate {
        return Err("the server declined permessage-deflate (is ws.compression enabled?)".into());
    }
    if !find(&first, br#""type":"connected""#) {
        return Err("first message is not `connected`".into());
    }
    let Some(subscribe) = &target.subscribe else {
        return Ok(conn);
    };
    conn.send_text(subscribe)
        .await
        .map_err(|e| format!("send subscribe: {}", e.kind()))?;
    // Nothing is published before every client is in, so the reply is the next text
    // message; anything else (an `error` above all) means the subscription failed.
    let reply = conn.next_text("`subscribed`").await?;
    if find(&reply, br#""type":"subscribed""#) {
        return Ok(conn);
    }
    if find(&reply, br#""type":"error""#) {
        return Err(format!("subscribe refused: {}", error_code(&reply)));
    }
    Err("reply to subscribe is not `subscribed`".into())
}

/// Connects to `addr` (`host` for the `Host` header), upgrades `/ws` with `token`, and
/// reads the first text message (`connected`, unless the server says otherwise): the
/// client side of herald's own codec, for the bench and `herald listen`.
pub async fn open(addr: SocketAddr, host: &str, token: &str) -> Result<(Conn, Bytes), String> {
    // A JWT is base64url and dots: safe in a query string as is.
    open_with(addr, None, host, &format!("/ws?token={token}"), "").await
}

/// [`open`] with the local address to bind (`None`: the kernel picks), the request target
/// and extra header lines (each ending in `\r\n`) given: a backend publisher upgrades
/// with `X-API-Key` instead of a token.
pub async fn open_with(
    addr: SocketAddr,
    bind: Option<IpAddr>,
    host: &str,
    target: &str,
    headers: &str,
) -> Result<(Conn, Bytes), String> {
    let mut stream = connect_tcp(addr, bind).await?;
    stream
        .set_nodelay(true)
        .map_err(|e| format!("nodelay: {}", e.kind()))?;
    let key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>());
    let request = format!(
        "GET {target} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{headers}\r\n"
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
    let head = buf.get(..head_len).unwrap_or_default();
    if let Err(e) = check_101(head, &derive_accept(key.as_bytes())) {
        buf.advance(head_len);
        return Err(with_refusal(e, &mut stream, &mut buf).await);
    }
    let deflate = agreed_deflate(head);
    buf.advance(head_len);

    let mut conn = Conn {
        stream,
        buf,
        reader: MessageReader::new(MAX_MESSAGE, false).with_deflate(deflate),
        deflate,
    };
    // The first text message is `connected`: only then is the client in the hub.
    let first = conn.next_text("`connected`").await?;
    Ok((conn, first))
}

/// A TCP connection to `addr`, from `bind` (port chosen by the kernel) if given.
async fn connect_tcp(addr: SocketAddr, bind: Option<IpAddr>) -> Result<TcpStream, String> {
    let Some(ip) = bind else {
        return TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {}", e.kind()));
    };
    let socket = match ip {
        IpAddr::V4(_) => TcpSocket::new_v4(),
        IpAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(|e| format!("socket: {}", e.kind()))?;
    // Port 0: the kernel picks one free *for this address*, which is the point of binding.
    socket
        .bind(SocketAddr::new(ip, 0))
        .map_err(|e| format!("bind {ip}: {}", e.kind()))?;
    socket
        .connect(addr)
        .await
        .map_err(|e| format!("connect from {ip}: {}", e.kind()))
}

/// A refused upgrade's error with the server's reason appended: herald answers with
/// `{"error":…,"message":"too many connections for this user"}`, which says which limit
/// to raise where a bare `HTTP 429` does not. Best effort: the body may already be in
/// `buf`, or comes within a short wait; a body without a `message` adds nothing.
async fn with_refusal(error: String, stream: &mut TcpStream, buf: &mut BytesMut) -> String {
    const BODY_WAIT: std::time::Duration = std::time::Duration::from_millis(200);
    if string_field(buf, "message").is_none() {
        buf.reserve(1024);
        let _ = tokio::time::timeout(BODY_WAIT, stream.read_buf(buf)).await;
    }
    match string_field(buf, "message") {
        Some(why) => format!("{error}: {why}"),
        None => error,
    }
}

/// The `code` of an `error` frame (`?` if it has none): enough to group failures by.
fn error_code(frame: &[u8]) -> String {
    string_field(frame, "code").unwrap_or("?").to_owned()
}

/// The value of the first `"name":"…"` member in `json` (up to 200 bytes, without
/// escapes: the server's codes and refusal messages), found without parsing.
fn string_field<'a>(json: &'a [u8], name: &str) -> Option<&'a str> {
    let key = format!(r#""{name}":""#);
    let key = key.as_bytes();
    let start = json.windows(key.len()).position(|w| w == key)? + key.len();
    let rest = json.get(start..)?;
    let end = rest.iter().take(200).position(|&b| b == b'"')?;
    std::str::from_utf8(rest.get(..end)?).ok()
}

/// Whether a 101 head agrees to permessage-deflate.
fn agreed_deflate(head: &[u8]) -> bool {
    String::from_utf8_lossy(head).lines().any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("sec-websocket-extensions")
                && v.trim().starts_with("permessage-deflate")
        })
    })
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
    /// The socket, what was read past the last message, and the reader mid-stream: for
    /// a caller that reads and writes from two tasks.
    pub fn into_parts(self) -> (TcpStream, BytesMut, MessageReader) {
        (self.stream, self.buf, self.reader)
    }

    /// Sends one masked text message.
    pub async fn send_text(&mut self, text: &[u8]) -> std::io::Result<()> {
        let mut frame = BytesMut::with_capacity(14 + text.len());
        masked(&mut frame, OP_TEXT, text);
        self.stream.write_all(&frame).await
    }

    /// The next text message, answering pings on the way; `waiting_for` names it in
    /// errors (a close is one, with its code). Unbounded by itself: the caller bounds it.
    pub async fn next_text(&mut self, waiting_for: &str) -> Result<Bytes, String> {
        loop {
            match self.reader.next_message(&mut self.buf) {
                Ok(Some(Message::Text(t))) => return Ok(t),
                Ok(Some(Message::Ping(p))) => send_control(&mut self.stream, OP_PONG, &p)
                    .await
                    .map_err(|e| format!("pong: {}", e.kind()))?,
                Ok(Some(Message::Close(code))) => {
                    return Err(format!("closed by server before {waiting_for} ({code:?})"))
                }
                Ok(Some(_)) => {}
                Ok(None) => {
                    self.buf.reserve(READ_CHUNK);
                    match self.stream.read_buf(&mut self.buf).await {
                        Ok(0) => return Err(format!("closed before {waiting_for}")),
                        Ok(_) => {}
                        Err(e) => return Err(format!("read: {}", e.kind())),
                    }
                }
                Err(v) => return Err(format!("protocol: {}", v.why)),
            }
        }
    }

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
            reordered: 0,
            last_delivery_ns: 0,
            other_text: 0,
            pings: 0,
            end: End::Stopped,
        };
        let mut order = StampOrder::default();
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
                            order.see(sent_ns);
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
        stats.reordered = order.reordered;
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

/// Appends a final, masked client frame (any size: `put_header` picks the length form).
pub fn masked(out: &mut BytesMut, opcode: u8, payload: &[u8]) {
    let key = rand::random::<[u8; 4]>();
    put_header(out, true, opcode, payload.len(), Some(key));
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(out.get_mut(start..).unwrap_or_default(), key, 0);
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

    #[test]
    fn subscribe_message_is_a_subscribe() {
        let m: serde_json::Value = serde_json::from_slice(&subscribe_message("news")).unwrap();
        assert_eq!(m["type"], "subscribe");
        assert_eq!(m["channel"], "news");
    }

    #[test]
    fn error_codes_are_extracted() {
        assert_eq!(
            error_code(br#"{"type":"error","code":"forbidden","message":"no"}"#),
            "forbidden"
        );
        assert_eq!(error_code(br#"{"type":"error","message":"no"}"#), "?");
        assert_eq!(error_code(br#"{"type":"error","code":"unterminated"#), "?");
    }

    #[test]
    fn a_refusal_says_which_limit() {
        let body = br#"{"error":"rate_limited","message":"too many connections for this user"}"#;
        assert_eq!(
            string_field(body, "message"),
            Some("too many connections for this user")
        );
        assert_eq!(string_field(body, "error"), Some("rate_limited"));
        assert_eq!(string_field(body, "code"), None);
        assert_eq!(string_field(b"", "message"), None);
    }

    /// A server that answers every upgrade with herald's refusal for a full user cap.
    async fn refusing_server() -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let body =
                    r#"{"error":"rate_limited","message":"too many connections for this user"}"#;
                let res = format!(
                    "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\n\
                     content-length: {}\r\n\r\n{body}",
                    body.len()
                );
                let mut head = [0u8; 2048];
                let _ = s.read(&mut head).await;
                let _ = s.write_all(res.as_bytes()).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_refused_upgrade_carries_the_servers_reason() {
        let addr = refusing_server().await;
        let Err(e) = open(addr, "x", "t").await else {
            panic!("a 429 is not a connection")
        };
        assert_eq!(e, "HTTP 429: too many connections for this user");
    }

    #[tokio::test]
    async fn a_client_connects_from_its_source_address() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let from = "127.0.0.3".parse().unwrap();
        let (stream, accepted) = tokio::join!(connect_tcp(addr, Some(from)), listener.accept());
        let (_, peer) = accepted.unwrap();
        assert_eq!(peer.ip(), from);
        assert_eq!(stream.unwrap().local_addr().unwrap().ip(), from);
        let plain = connect_tcp(addr, None).await.unwrap();
        assert_eq!(plain.local_addr().unwrap().ip(), addr.ip());
    }
}
