//! The inbound WebSocket path: `parse_header` and `MessageReader` on arbitrary bytes
//! that arrive in arbitrary pieces, as a client's TCP reads would.
//!
//! Input layout (so seeds stay plain frames with a short prefix):
//! `[small_max: u8] [k: u8] [k split offsets: u16 LE each] [stream...]`.
//! Each input runs with `small_max` and with the default `ws.max_message_bytes`, and
//! with permessage-deflate off and on (RSV1 messages inflated, bounded by the max).
//!
//! Checked: no panic; every call returns (a message consumes bytes, so the caller's
//! loop ends); a `Violation` is 1002, 1007 or 1009; what comes out obeys RFC 6455
//! (text is UTF-8, control payloads ≤ 125, data ≤ max, close codes valid); and the
//! split points change nothing: the messages and the final violation are those of
//! the whole stream read at once.
#![no_main]

use bytes::BytesMut;
use herald::config::WsConfig;
use herald::ws::frame::{self, parse_header, put_header};
use herald::ws::message::{is_valid_close_code, Message, MessageReader, Violation};
use libfuzzer_sys::fuzz_target;

/// Split points beyond this many add nothing but run time.
const MAX_SPLITS: usize = 64;

fuzz_target!(|data: &[u8]| {
    let Some((&small_max, rest)) = data.split_first() else {
        return;
    };
    let Some((&k, rest)) = rest.split_first() else {
        return;
    };
    let k = usize::from(k).min(MAX_SPLITS);
    let (offsets, stream) = rest.split_at((k * 2).min(rest.len()));
    let mut cuts: Vec<usize> = offsets
        .chunks_exact(2)
        .map(|b| usize::from(u16::from_le_bytes([b[0], b[1]])) % (stream.len() + 1))
        .collect();
    cuts.sort_unstable();
    cuts.dedup();

    check_headers(stream);
    for max in [
        usize::from(small_max),
        WsConfig::default().max_message_bytes,
    ] {
        for deflate in [false, true] {
            let whole = read(stream, &[], max, deflate);
            let split = read(stream, &cuts, max, deflate);
            assert_eq!(
                whole, split,
                "split at {cuts:?} changed the result (max {max}, deflate {deflate})"
            );
        }
    }
});

/// What a connection sees: the messages, then how it ended.
#[derive(Debug, PartialEq)]
struct Outcome {
    messages: Vec<Message>,
    violation: Option<Violation>,
}

/// Feeds `stream` cut at `cuts` into one reader, draining after every piece, as the
/// connection driver does after each read.
fn read(stream: &[u8], cuts: &[usize], max: usize, deflate: bool) -> Outcome {
    let mut reader = MessageReader::new(max, true).with_deflate(deflate);
    let mut buf = BytesMut::new();
    let mut messages = Vec::new();
    let mut start = 0;
    for end in cuts.iter().copied().chain([stream.len()]) {
        buf.extend_from_slice(&stream[start..end]);
        start = end;
        loop {
            let before = buf.len();
            match reader.next_message(&mut buf) {
                Ok(Some(m)) => {
                    assert!(buf.len() < before, "a message consumed no bytes");
                    check_message(&m, max);
                    messages.push(m);
                }
                Ok(None) => break,
                Err(v) => {
                    assert!(
                        matches!(v.code.code(), 1002 | 1007 | 1009),
                        "violation {v:?} has close code {}",
                        v.code.code()
                    );
                    return Outcome {
                        messages,
                        violation: Some(v),
                    };
                }
            }
        }
    }
    Outcome {
        messages,
        violation: None,
    }
}

fn check_message(m: &Message, max: usize) {
    match m {
        Message::Text(t) => {
            assert!(std::str::from_utf8(t).is_ok(), "text message is not UTF-8");
            assert!(t.len() <= max, "text of {} bytes over max {max}", t.len());
        }
        Message::Binary(b) => assert!(b.len() <= max, "binary of {} over max {max}", b.len()),
        Message::Ping(p) | Message::Pong(p) => assert!(p.len() <= 125, "control payload > 125"),
        Message::Close(Some(code)) => assert!(is_valid_close_code(*code), "close code {code}"),
        Message::Close(None) => {}
    }
}

/// `parse_header` in both roles: a header it returns is well formed, is found again in
/// exactly its own bytes, and survives a round trip through `put_header`.
fn check_headers(buf: &[u8]) {
    for expect_masked in [true, false] {
        let h = match parse_header(buf, expect_masked) {
            Ok(Some(h)) => h,
            // The longest header is 14 bytes: with that many, the answer is never "more".
            Ok(None) => {
                assert!(buf.len() < 14, "no header in {} bytes", buf.len());
                continue;
            }
            Err(_) => continue,
        };
        assert!(h.header_len <= buf.len() && h.header_len <= 14);
        assert_eq!(h.rsv & 0b011, 0, "RSV2/RSV3 are never accepted");
        assert_eq!(h.mask.is_some(), expect_masked);
        assert!(h.payload_len >> 63 == 0);
        if h.opcode >= frame::OP_CLOSE {
            assert!(
                h.fin && h.payload_len <= 125,
                "bad control header accepted: {h:?}"
            );
        }
        assert_eq!(
            parse_header(&buf[..h.header_len], expect_masked),
            Ok(Some(h)),
            "header not self-delimiting"
        );
        assert_eq!(
            parse_header(&buf[..h.header_len - 1], expect_masked),
            Ok(None),
            "header parsed from fewer bytes than its length"
        );
        let Ok(len) = usize::try_from(h.payload_len) else {
            continue;
        };
        let mut out = BytesMut::new();
        put_header(&mut out, h.fin, h.opcode, len, h.mask);
        let again = parse_header(&out, expect_masked)
            .expect("put_header wrote a header parse_header refuses")
            .expect("put_header wrote a short header");
        assert_eq!(again.header_len, out.len());
        assert_eq!(
            (again.fin, again.opcode, again.mask, again.payload_len),
            (h.fin, h.opcode, h.mask, h.payload_len)
        );
    }
}
