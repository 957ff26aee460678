//! Raw connections for frames tungstenite will not send, and a reader for what the
//! server sends back on them.

use std::time::Duration;

use bytes::BytesMut;
use herald::ws::frame::{parse_header, put_header, OP_CLOSE, OP_TEXT};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use crate::support::*;

/// How long a flood keeps going at most; the node should close it after about
/// `rate_limit_close_after_s` (2 s here) plus the time to drain the burst.
const FLOOD_FOR: Duration = Duration::from_secs(10);
/// One frame per 20 ms: 50 messages/s against a limit of 10/s.
const FLOOD_EVERY: Duration = Duration::from_millis(20);

/// A raw, upgraded connection for a hostile user.
pub(super) async fn raw(s: &TestServer, who: &str) -> Raw {
    Raw::upgrade(s.addr, &format!("/ws?token={}", s.token(who))).await
}

/// Sends `bytes` on a fresh connection and asserts the server's close code.
pub(super) async fn expect_close(s: &TestServer, case: &str, bytes: &[u8], code: u16) {
    let mut r = raw(s, "hostile").await;
    r.send(bytes).await;
    assert_eq!(r.close_code().await, Some(code), "{case}");
}

/// A masked client frame header announcing `len` payload bytes (the payload is not sent).
pub(super) fn header_only(fin: bool, opcode: u8, len: usize) -> Vec<u8> {
    let mut out = BytesMut::new();
    put_header(&mut out, fin, opcode, len, Some([1, 2, 3, 4]));
    out.to_vec()
}

/// What a raw client reads from the server (Pings, Pongs and binary frames are skipped).
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Got {
    Text(String),
    Close(Option<u16>),
    Eof,
}

/// Reads server frames from any byte stream. Cancel-safe: a partial frame stays in `buf`.
pub(super) struct Frames<R> {
    rd: R,
    buf: Vec<u8>,
}

impl<R: AsyncRead + Unpin> Frames<R> {
    pub(super) fn new(rd: R) -> Self {
        Frames {
            rd,
            buf: Vec::new(),
        }
    }

    pub(super) async fn next(&mut self) -> Got {
        loop {
            while let Some(h) = parse_header(&self.buf, false).expect("a valid server frame") {
                let end = h.header_len + h.payload_len as usize;
                if self.buf.len() < end {
                    break;
                }
                let payload = self.buf[h.header_len..end].to_vec();
                self.buf.drain(..end);
                match h.opcode {
                    OP_TEXT => return Got::Text(String::from_utf8(payload).expect("utf-8 text")),
                    OP_CLOSE => {
                        return Got::Close(
                            (payload.len() >= 2)
                                .then(|| u16::from_be_bytes([payload[0], payload[1]])),
                        )
                    }
                    _ => {}
                }
            }
            let mut chunk = [0u8; 4096];
            match self.rd.read(&mut chunk).await {
                Ok(0) | Err(_) => return Got::Eof,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

/// How a flood ended, as seen by the flooder.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Ended {
    Close(Option<u16>),
    Eof,
    StillOpen,
}

/// Sends `prelude` once, then `frame` every [`FLOOD_EVERY`] for up to [`FLOOD_FOR`],
/// reading meanwhile. Returns whether an `error rate_limited` arrived before the end, and
/// how the connection ended.
pub(super) async fn flood(r: Raw, prelude: Vec<u8>, frame: Vec<u8>) -> (bool, Ended) {
    let (rd, mut wr) = r.tcp.into_split();
    // The writer never ends on its own: dropping the write half would be an EOF, which
    // is a clean goodbye, not a flood.
    let writer = tokio::spawn(async move {
        if wr.write_all(&prelude).await.is_err() {
            return;
        }
        while wr.write_all(&frame).await.is_ok() {
            tokio::time::sleep(FLOOD_EVERY).await;
        }
        std::future::pending::<()>().await;
    });
    let mut frames = Frames::new(rd);
    let deadline = Instant::now() + FLOOD_FOR;
    let mut limited = false;
    let ended = loop {
        match tokio::time::timeout_at(deadline, frames.next()).await {
            Err(_) => break Ended::StillOpen,
            Ok(Got::Eof) => break Ended::Eof,
            Ok(Got::Close(code)) => break Ended::Close(code),
            Ok(Got::Text(t)) => {
                let v: Value = serde_json::from_str(&t).unwrap_or(Value::String(t));
                if v["type"] == "error" {
                    assert_eq!(
                        v["code"], "rate_limited",
                        "the only error a flood gets: {v}"
                    );
                    limited = true;
                }
            }
        }
    };
    writer.abort();
    (limited, ended)
}
