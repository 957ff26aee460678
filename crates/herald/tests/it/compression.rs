//! permessage-deflate (RFC 7692) on `/ws`: what is negotiated, which frames go out
//! compressed, and what a compressed client message may do. The client here frames by
//! hand (tungstenite has no deflate) and inflates with flate2, the reference codec;
//! Autobahn 12/13 and the browser test cover independent client implementations.

use std::net::SocketAddr;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use herald::config::NamespaceConfig;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

/// A raw WebSocket client that may offer permessage-deflate.
struct Client {
    tcp: TcpStream,
    buf: Vec<u8>,
    /// The `Sec-WebSocket-Extensions` of the 101, if any.
    extensions: Option<String>,
    window: u8,
}

/// One server message: whether it came compressed, and its (inflated) text.
#[derive(Debug)]
struct Got {
    compressed: bool,
    /// Payload bytes on the wire (compressed, if it was).
    wire_len: usize,
    opcode: u8,
    payload: Vec<u8>,
}

impl Got {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.payload).expect("a JSON frame")
    }
}

impl Client {
    async fn connect(addr: SocketAddr, token: &str, offer: Option<&str>) -> Client {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let ext = offer
            .map(|o| format!("Sec-WebSocket-Extensions: {o}\r\n"))
            .unwrap_or_default();
        let req = format!(
            "GET /ws?token={token} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{ext}\r\n"
        );
        tcp.write_all(req.as_bytes()).await.unwrap();
        let head = read_head(&mut tcp).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        let extensions = head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("sec-websocket-extensions")
                .then(|| v.trim().to_owned())
        });
        let window = extensions
            .as_deref()
            .and_then(|e| e.split("server_max_window_bits=").nth(1))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(15);
        let mut c = Client {
            tcp,
            buf: Vec::new(),
            extensions,
            window,
        };
        assert_eq!(c.next().await.json()["type"], "connected");
        c
    }

    /// The next complete server frame (no fragmentation from herald).
    async fn next(&mut self) -> Got {
        loop {
            if let Some((b0, payload, used)) = parse(&self.buf) {
                self.buf.drain(..used);
                let compressed = b0 & 0x40 != 0;
                let wire_len = payload.len();
                let payload = if compressed {
                    inflate(&payload, self.window)
                } else {
                    payload
                };
                return Got {
                    compressed,
                    wire_len,
                    opcode: b0 & 0x0F,
                    payload,
                };
            }
            let mut chunk = [0u8; 16384];
            let n = tokio::time::timeout(WAIT, self.tcp.read(&mut chunk))
                .await
                .expect("a frame in time")
                .unwrap();
            assert!(n > 0, "the server closed the socket");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The next `pub` frame, skipping anything else.
    async fn next_pub(&mut self) -> Got {
        loop {
            let got = self.next().await;
            if got.opcode == 0x1 && got.json()["type"] == "pub" {
                return got;
            }
        }
    }

    /// Sends a text message, compressed (RSV1, raw deflate, tail removed) if asked.
    async fn send(&mut self, text: &[u8], compressed: bool) {
        let payload = if compressed {
            deflate(text)
        } else {
            text.to_vec()
        };
        let mut frame = masked(true, 0x1, &payload);
        if compressed {
            frame[0] |= 0x40;
        }
        self.tcp.write_all(&frame).await.unwrap();
    }

    async fn subscribe(&mut self, channel: &str, compressed: bool) {
        let msg = json!({"type": "subscribe", "channel": channel}).to_string();
        self.send(msg.as_bytes(), compressed).await;
        loop {
            let got = self.next().await;
            let v = got.json();
            assert_ne!(v["type"], "error", "{v}");
            if v["type"] == "subscribed" {
                return;
            }
        }
    }

    /// Reads until the close frame; its code.
    async fn close_code(&mut self) -> u16 {
        loop {
            let got = self.next().await;
            if got.opcode == 0x8 {
                return u16::from_be_bytes([got.payload[0], got.payload[1]]);
            }
        }
    }
}

/// (first byte, payload, bytes used) of the first complete unmasked frame in `buf`.
fn parse(buf: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    let (len, hl) = match *buf.get(1)? & 0x7F {
        126 => (u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?]) as usize, 4),
        127 => (
            u64::from_be_bytes(buf.get(2..10)?.try_into().unwrap()) as usize,
            10,
        ),
        n => (n as usize, 2),
    };
    let payload = buf.get(hl..hl + len)?.to_vec();
    Some((buf[0], payload, hl + len))
}

/// Inflates one message through a small output buffer, as a streaming client would.
/// (zlib's inflater does not refuse a match farther back than `window` allows, so the
/// window test below checks what the agreed window can and cannot find instead.)
fn inflate(data: &[u8], window: u8) -> Vec<u8> {
    let mut d = Decompress::new_with_window_bits(false, window);
    let mut input = data.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        let mut chunk = [0u8; 256];
        let before = (d.total_in(), d.total_out());
        d.decompress(&input[pos..], &mut chunk, FlushDecompress::Sync)
            .expect("herald's compressed frame inflates with the agreed window");
        pos += (d.total_in() - before.0) as usize;
        let made = (d.total_out() - before.1) as usize;
        out.extend_from_slice(&chunk[..made]);
        if pos == input.len() && made < chunk.len() {
            return out;
        }
    }
}

fn deflate(data: &[u8]) -> Vec<u8> {
    let mut c = Compress::new_with_window_bits(Compression::new(6), false, 15);
    let mut out = Vec::with_capacity(data.len() + 64);
    c.compress_vec(data, &mut out, FlushCompress::Sync).unwrap();
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
    out.truncate(out.len() - 4);
    out
}

/// JSON of about `n` bytes that deflate shrinks well only with a large window: a block
/// of 700 pseudo-random letters, repeated. Its repeats are farther apart than a 9-bit
/// window (512 bytes) reaches: with one, it shrinks to the letters' entropy only.
fn payload(n: usize) -> Value {
    let mut x: u32 = 2463534242;
    let block: String = (0..700)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            char::from(b'a' + (x % 26) as u8)
        })
        .collect();
    json!({"text": block.repeat(n / 700 + 1)})
}

fn with_live_namespace(cfg: &mut herald::config::Config) {
    cfg.namespaces.insert(
        "live".into(),
        NamespaceConfig {
            compression: Some(true),
            ..NamespaceConfig::default()
        },
    );
}

const OFFER: &str = "permessage-deflate; client_max_window_bits";

#[tokio::test]
async fn a_namespace_with_compression_sends_its_publications_compressed_once_for_all() {
    let s = TestServer::start_with(with_live_namespace).await;
    let mut a = Client::connect(s.addr, &s.token("a"), Some(OFFER)).await;
    let mut b = Client::connect(s.addr, &s.token("b"), Some(OFFER)).await;
    let mut plain = Client::connect(s.addr, &s.token("c"), None).await;
    assert_eq!(
        a.extensions.as_deref(),
        Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover")
    );
    assert_eq!(plain.extensions, None, "no offer, no extension");
    for c in [&mut a, &mut b, &mut plain] {
        c.subscribe("live:feed", false).await;
        c.subscribe("news", false).await;
    }

    let big = payload(4096);
    let (status, _) = s
        .publish(json!({"channel": "live:feed", "data": big}))
        .await;
    assert_eq!(status, 200);
    let (ga, gb, gp) = (
        a.next_pub().await,
        b.next_pub().await,
        plain.next_pub().await,
    );
    assert!(
        ga.compressed && gb.compressed,
        "both deflate clients get it compressed"
    );
    assert!(
        !gp.compressed,
        "a client that did not negotiate gets it as it is"
    );
    assert_eq!(ga.payload, gp.payload, "the same frame, inflated");
    assert_eq!(gb.payload, gp.payload);
    assert_eq!(gp.json()["data"], big);

    // Under the threshold, and in a namespace without compression: as they are.
    s.publish(json!({"channel": "live:feed", "data": "short"}))
        .await;
    assert!(!a.next_pub().await.compressed, "under threshold_bytes");
    s.publish(json!({"channel": "news", "data": big})).await;
    let news = a.next_pub().await;
    assert!(
        !news.compressed,
        "`default` has compression unset, and it is off globally"
    );
    assert_eq!(news.json()["data"], big);

    let stats = s.stats().await;
    assert_eq!(stats["compression"]["deliveries"], 2, "{stats}");
    let saved = stats["compression"]["saved_bytes"].as_u64().unwrap();
    assert!(
        saved > 2 * 2000,
        "3 KiB of repetitive JSON shrinks a lot: {saved}"
    );
}

#[tokio::test]
async fn a_client_window_limit_is_kept_and_global_compression_covers_users() {
    let s = TestServer::start_with(|cfg| cfg.ws.compression.enabled = true).await;
    let offer = "permessage-deflate; server_max_window_bits=9; client_max_window_bits";
    let mut small = Client::connect(s.addr, &s.token("u"), Some(offer)).await;
    let mut full = Client::connect(s.addr, &s.token("u"), Some(OFFER)).await;
    assert_eq!(
        small.extensions.as_deref(),
        Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=9")
    );
    let big = payload(8192);
    let (status, _) = s.publish(json!({"user": "u", "data": big})).await;
    assert_eq!(status, 200);
    // Repeats 700 bytes apart are out of a 9-bit window's reach: `small` gets its own,
    // larger compression (letters only), `full` the one that uses them.
    let (gs, gf) = (small.next_pub().await, full.next_pub().await);
    assert!(gs.compressed && gf.compressed);
    let plain = gs.payload.len();
    assert!(
        gf.wire_len < plain / 5,
        "a 15-bit window finds the repeats: {} of {plain}",
        gf.wire_len
    );
    assert!(
        gs.wire_len > plain / 2,
        "a 9-bit window cannot: {} of {plain}",
        gs.wire_len
    );
    assert_eq!(gs.json()["data"], big);
    assert_eq!(gf.json()["data"], big);
}

#[tokio::test]
async fn compressed_client_messages_are_read_and_bounded_after_inflation() {
    let s = TestServer::start_with(with_live_namespace).await;
    let mut c = Client::connect(s.addr, &s.token("a"), Some(OFFER)).await;
    c.subscribe("news", true).await;

    // A bomb: 1 MiB of zeros in a few hundred bytes, over the 64 KiB limit once inflated.
    let mut bomb = Client::connect(s.addr, &s.token("b"), Some(OFFER)).await;
    let zeros = vec![b' '; 1 << 20];
    bomb.send(&zeros, true).await;
    assert_eq!(bomb.close_code().await, 1009);

    let mut garbage = Client::connect(s.addr, &s.token("g"), Some(OFFER)).await;
    let mut frame = masked(true, 0x1, &[0xff; 40]);
    frame[0] |= 0x40;
    garbage.tcp.write_all(&frame).await.unwrap();
    assert_eq!(garbage.close_code().await, 1007);

    // The first client was not disturbed.
    s.publish(json!({"channel": "news", "data": 1})).await;
    assert_eq!(c.next_pub().await.json()["data"], 1);
    let stats = s.stats().await;
    assert_eq!(stats["refused"]["too_large"], 1, "{stats}");
}

#[tokio::test]
async fn without_compression_configured_the_offer_is_declined_and_rsv1_refused() {
    let s = TestServer::start().await;
    let mut c = Client::connect(s.addr, &s.token("a"), Some(OFFER)).await;
    assert_eq!(c.extensions, None, "nothing would use it: not negotiated");
    c.send(br#"{"type":"subscribe","channel":"news"}"#, true)
        .await;
    assert_eq!(c.close_code().await, 1002);
}
