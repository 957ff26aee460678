//! Turns raw inbound bytes into whole messages: reassembly, unmasking, validation.
//!
//! Every rule whose breach the contract answers with a close code is enforced here, once,
//! for both the hub's connections and the conformance echo route: reserved bits and
//! opcodes, control-frame rules, continuation order (1002), UTF-8 checked incrementally
//! so a bad fragment fails fast (1007), and the message size cap checked from the header
//! before any payload is buffered (1009). With permessage-deflate negotiated, a message
//! whose first frame has RSV1 is inflated once complete, the cap applying to what it
//! inflates to, and its UTF-8 checked after inflation.

use bytes::{Buf, Bytes, BytesMut};

use super::deflate::{self, InflateError};
use super::frame::{self, apply_mask, parse_header, HeaderError};

/// A complete inbound message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Text(Bytes),
    Binary(Bytes),
    Ping(Bytes),
    Pong(Bytes),
    /// The peer's close code (None when the close frame had no payload).
    Close(Option<u16>),
}

/// A breach of RFC 6455 or of our size limit, answered with `code` before the TCP close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Violation {
    pub code: ViolationKind,
    pub why: &'static str,
}

/// The kinds of breach, with their RFC 6455 close codes: the codec reports its own
/// violations and knows nothing of the application's code table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ViolationKind {
    /// 1002: framing or protocol rules broken.
    Protocol,
    /// 1007: text that is not UTF-8.
    InvalidPayload,
    /// 1009: larger than the message limit.
    TooBig,
}

impl ViolationKind {
    pub const fn code(self) -> u16 {
        match self {
            ViolationKind::Protocol => 1002,
            ViolationKind::InvalidPayload => 1007,
            ViolationKind::TooBig => 1009,
        }
    }
}

impl Violation {
    const fn protocol(why: &'static str) -> Violation {
        Violation {
            code: ViolationKind::Protocol,
            why,
        }
    }
}

impl From<HeaderError> for Violation {
    fn from(e: HeaderError) -> Violation {
        Violation::protocol(match e {
            HeaderError::ReservedBits => "reserved bits set",
            HeaderError::ReservedOpcode => "reserved opcode",
            HeaderError::BadControl => "bad control frame",
            HeaderError::Unmasked => "client frame not masked",
            HeaderError::Masked => "server frame masked",
            HeaderError::BadLength => "bad payload length",
        })
    }
}

struct Partial {
    text: bool,
    /// RSV1 on the first frame: the data is deflated (UTF-8 is checked after inflation).
    compressed: bool,
    data: BytesMut,
    utf8_checked: usize,
}

/// Reassembles messages for one connection. Holds only an unfinished fragmented message.
pub struct MessageReader {
    max_message: usize,
    expect_masked: bool,
    /// permessage-deflate was negotiated: RSV1 may mark a message as compressed.
    deflate: bool,
    /// Boxed: most connections never send a fragmented message.
    partial: Option<Box<Partial>>,
    /// Of the current, still incomplete text frame: payload bytes already unmasked in
    /// place, and how many of those are known to be valid UTF-8 (fail fast, RFC 6455 §8.1).
    frame_unmasked: usize,
    frame_checked: usize,
    /// Complete frames taken so far (liveness: only complete frames count as activity).
    frames: u64,
    /// Of those, data frames that carried nothing and completed no message (an empty
    /// fragment): a flood of them costs us work, so they count for the rate limit.
    empty_fragments: u64,
}

impl MessageReader {
    /// `expect_masked`: true for the server role.
    pub fn new(max_message: usize, expect_masked: bool) -> MessageReader {
        MessageReader {
            max_message,
            expect_masked,
            deflate: false,
            partial: None,
            frame_unmasked: 0,
            frame_checked: 0,
            frames: 0,
            empty_fragments: 0,
        }
    }

    /// Accepts compressed messages (permessage-deflate was negotiated).
    pub fn with_deflate(mut self, on: bool) -> MessageReader {
        self.deflate = on;
        self
    }

    /// The most compressed bytes a message may bring: a little over the limit, as
    /// deflate adds a few bytes to data it cannot shrink.
    fn max_compressed(&self) -> usize {
        self.max_message + self.max_message / 64 + 64
    }

    /// Complete frames taken out of the buffer so far.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Empty fragments (non-final data frames or continuations without payload) so far.
    pub fn empty_fragments(&self) -> u64 {
        self.empty_fragments
    }

    /// Takes the next complete message out of `buf`, or `Ok(None)` when more bytes are needed.
    pub fn next_message(&mut self, buf: &mut BytesMut) -> Result<Option<Message>, Violation> {
        loop {
            let Some(h) = parse_header(buf, self.expect_masked)? else {
                return Ok(None);
            };
            let is_control = h.opcode >= frame::OP_CLOSE;
            let rsv1 = h.rsv & 0b100 != 0;
            let starts_message = matches!(h.opcode, frame::OP_TEXT | frame::OP_BINARY);
            if rsv1 && !(self.deflate && starts_message) {
                return Err(HeaderError::ReservedBits.into());
            }
            let compressed = rsv1 || self.partial.as_ref().is_some_and(|p| p.compressed);
            let cap = if compressed {
                self.max_compressed()
            } else {
                self.max_message
            };
            let already = self.partial.as_ref().map_or(0, |p| p.data.len()) as u64;
            if !is_control && already + h.payload_len > cap as u64 {
                return Err(Violation {
                    code: ViolationKind::TooBig,
                    why: "message too big",
                });
            }
            // Fail ordering errors as soon as the header is known, before buffering payload.
            match (h.opcode, self.partial.is_some()) {
                (frame::OP_CONTINUATION, false) => {
                    return Err(Violation::protocol("continuation without a message"))
                }
                (frame::OP_TEXT | frame::OP_BINARY, true) => {
                    return Err(Violation::protocol("new message inside a fragmented one"))
                }
                _ => {}
            }
            let len = h.payload_len as usize; // bounded by max_message or 125 above
            if buf.len() < h.header_len + len {
                if !compressed {
                    self.check_incomplete_text(&h, buf)?;
                }
                return Ok(None);
            }
            buf.advance(h.header_len);
            let mut payload = buf.split_to(len);
            self.frames += 1;
            if len == 0 && !is_control && !(h.fin && h.opcode != frame::OP_CONTINUATION) {
                self.empty_fragments += 1;
            }
            let done = std::mem::take(&mut self.frame_unmasked);
            self.frame_checked = 0;
            if let Some(key) = h.mask {
                apply_mask(payload.get_mut(done..).unwrap_or_default(), key, done);
            }
            match h.opcode {
                frame::OP_PING => return Ok(Some(Message::Ping(payload.freeze()))),
                frame::OP_PONG => return Ok(Some(Message::Pong(payload.freeze()))),
                frame::OP_CLOSE => return parse_close(&payload).map(|c| Some(Message::Close(c))),
                frame::OP_TEXT | frame::OP_BINARY if h.fin => {
                    let text = h.opcode == frame::OP_TEXT;
                    return self.complete(text, rsv1, payload.freeze()).map(Some);
                }
                frame::OP_TEXT | frame::OP_BINARY => {
                    let mut p = Box::new(Partial {
                        text: h.opcode == frame::OP_TEXT,
                        compressed: rsv1,
                        data: payload,
                        utf8_checked: 0,
                    });
                    check_utf8_prefix(&mut p)?;
                    self.partial = Some(p);
                }
                _ => {
                    // OP_CONTINUATION with a message in progress (ordering checked above).
                    let Some(mut p) = self.partial.take() else {
                        return Err(Violation::protocol("continuation without a message"));
                    };
                    p.data.extend_from_slice(&payload);
                    check_utf8_prefix(&mut p)?;
                    if h.fin {
                        if p.compressed {
                            return self.complete(p.text, true, p.data.freeze()).map(Some);
                        }
                        if p.text && p.utf8_checked != p.data.len() {
                            return Err(invalid_utf8());
                        }
                        let msg = if p.text {
                            Message::Text(p.data.freeze())
                        } else {
                            Message::Binary(p.data.freeze())
                        };
                        return Ok(Some(msg));
                    }
                    self.partial = Some(p);
                }
            }
        }
    }
}

impl MessageReader {
    /// Validates what has arrived of an incomplete text frame, so invalid UTF-8 fails
    /// before the rest of a large frame is even received. Skipped when the previous
    /// fragment ended mid-character (that case is checked when the frame completes).
    fn check_incomplete_text(
        &mut self,
        h: &frame::Header,
        buf: &mut BytesMut,
    ) -> Result<(), Violation> {
        let text = match (h.opcode, &self.partial) {
            (frame::OP_TEXT, None) => true,
            (frame::OP_CONTINUATION, Some(p)) => p.text && p.utf8_checked == p.data.len(),
            _ => false,
        };
        if !text {
            return Ok(());
        }
        let arrived = buf.len().saturating_sub(h.header_len);
        let Some(payload) = buf.get_mut(h.header_len..h.header_len + arrived) else {
            return Ok(());
        };
        if let Some(key) = h.mask {
            apply_mask(
                payload.get_mut(self.frame_unmasked..).unwrap_or_default(),
                key,
                self.frame_unmasked,
            );
        }
        self.frame_unmasked = arrived;
        let fresh = payload.get(self.frame_checked..).unwrap_or_default();
        match simdutf8::compat::from_utf8(fresh) {
            Ok(_) => self.frame_checked = arrived,
            Err(e) if e.error_len().is_some() => return Err(invalid_utf8()),
            Err(e) => self.frame_checked += e.valid_up_to(),
        }
        Ok(())
    }
}

const fn invalid_utf8() -> Violation {
    Violation {
        code: ViolationKind::InvalidPayload,
        why: "invalid utf-8",
    }
}

impl MessageReader {
    /// A whole message: inflated first if it came compressed, then checked.
    fn complete(&self, text: bool, compressed: bool, payload: Bytes) -> Result<Message, Violation> {
        if !compressed {
            return complete(text, payload);
        }
        match deflate::inflate(&payload, self.max_message) {
            Ok(plain) => complete(text, Bytes::from(plain)),
            Err(InflateError::TooBig) => Err(Violation {
                code: ViolationKind::TooBig,
                why: "message too big",
            }),
            Err(InflateError::Corrupt) => Err(Violation {
                code: ViolationKind::InvalidPayload,
                why: "invalid deflate data",
            }),
        }
    }
}

fn complete(text: bool, payload: Bytes) -> Result<Message, Violation> {
    if text {
        simdutf8::basic::from_utf8(&payload).map_err(|_| invalid_utf8())?;
        Ok(Message::Text(payload))
    } else {
        Ok(Message::Binary(payload))
    }
}

/// Validates the not-yet-checked part of a fragmented text message; an incomplete
/// trailing sequence is fine until the final fragment.
fn check_utf8_prefix(p: &mut Partial) -> Result<(), Violation> {
    if !p.text || p.compressed {
        return Ok(());
    }
    let rest = p.data.get(p.utf8_checked..).unwrap_or_default();
    match simdutf8::compat::from_utf8(rest) {
        Ok(_) => p.utf8_checked = p.data.len(),
        Err(e) if e.error_len().is_some() => return Err(invalid_utf8()),
        Err(e) => p.utf8_checked += e.valid_up_to(),
    }
    Ok(())
}

/// A close code a peer may send (RFC 6455 §7.4, IANA registry).
pub fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

fn parse_close(payload: &[u8]) -> Result<Option<u16>, Violation> {
    match payload {
        [] => Ok(None),
        [_] => Err(Violation::protocol("close payload of one byte")),
        [a, b, reason @ ..] => {
            let code = u16::from_be_bytes([*a, *b]);
            if !is_valid_close_code(code) {
                return Err(Violation::protocol("invalid close code"));
            }
            simdutf8::basic::from_utf8(reason).map_err(|_| invalid_utf8())?;
            Ok(Some(code))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::frame::{put_header, OP_BINARY, OP_CLOSE, OP_CONTINUATION, OP_PING, OP_TEXT};

    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let key = [9, 8, 7, 6];
        let mut out = BytesMut::new();
        put_header(&mut out, fin, opcode, payload.len(), Some(key));
        let mut p = payload.to_vec();
        apply_mask(&mut p, key, 0);
        out.extend_from_slice(&p);
        out.to_vec()
    }

    fn read_all(bytes: &[u8]) -> Vec<Result<Message, Violation>> {
        read_with(MessageReader::new(1024, true), bytes)
    }

    /// Every message `r` takes from `bytes`, ending with the violation if there is one.
    fn read_with(mut r: MessageReader, bytes: &[u8]) -> Vec<Result<Message, Violation>> {
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        loop {
            match r.next_message(&mut buf) {
                Ok(Some(m)) => out.push(Ok(m)),
                Ok(None) => return out,
                Err(v) => {
                    out.push(Err(v));
                    return out;
                }
            }
        }
    }

    #[test]
    fn reassembles_fragments_with_interleaved_ping() {
        let mut bytes = client_frame(false, OP_TEXT, "hé".as_bytes());
        bytes.extend(client_frame(true, OP_PING, b"p"));
        bytes.extend(client_frame(true, OP_CONTINUATION, b"llo"));
        let got = read_all(&bytes);
        assert_eq!(got[0], Ok(Message::Ping(Bytes::from_static(b"p"))));
        assert_eq!(got[1], Ok(Message::Text(Bytes::from("héllo"))));
    }

    #[test]
    fn utf8_split_across_fragments_is_accepted() {
        let e = "é".as_bytes();
        let mut bytes = client_frame(false, OP_TEXT, &e[..1]);
        bytes.extend(client_frame(true, OP_CONTINUATION, &e[1..]));
        assert_eq!(read_all(&bytes), vec![Ok(Message::Text(Bytes::from("é")))]);
    }

    #[test]
    fn invalid_utf8_fails_fast_with_1007() {
        let bytes = client_frame(false, OP_TEXT, &[0xce, 0xba, 0xff]);
        assert_eq!(
            read_all(&bytes)[0].clone().unwrap_err().code,
            ViolationKind::InvalidPayload
        );
        let truncated = client_frame(true, OP_TEXT, &[0xce]);
        assert_eq!(
            read_all(&truncated)[0].clone().unwrap_err().code,
            ViolationKind::InvalidPayload
        );
    }

    #[test]
    fn oversize_message_is_refused_from_the_header() {
        let mut r = MessageReader::new(10, true);
        let mut out = BytesMut::new();
        put_header(&mut out, true, OP_BINARY, 11, Some([0; 4]));
        assert_eq!(
            r.next_message(&mut out).unwrap_err().code,
            ViolationKind::TooBig
        );
    }

    #[test]
    fn fragment_order_violations_are_protocol_errors() {
        let c = read_all(&client_frame(true, OP_CONTINUATION, b"x"));
        assert_eq!(c[0].clone().unwrap_err().code, ViolationKind::Protocol);
        let mut bytes = client_frame(false, OP_TEXT, b"a");
        bytes.extend(client_frame(true, OP_TEXT, b"b"));
        assert_eq!(
            read_all(&bytes)[0].clone().unwrap_err().code,
            ViolationKind::Protocol
        );
    }

    #[test]
    fn close_codes_are_validated() {
        let ok = client_frame(true, OP_CLOSE, &1000u16.to_be_bytes());
        assert_eq!(read_all(&ok), vec![Ok(Message::Close(Some(1000)))]);
        for bad in [0u16, 999, 1005, 1006, 1016, 2999, 5000] {
            let f = client_frame(true, OP_CLOSE, &bad.to_be_bytes());
            assert_eq!(
                read_all(&f)[0].clone().unwrap_err().code,
                ViolationKind::Protocol,
                "{bad}"
            );
        }
        assert_eq!(
            read_all(&client_frame(true, OP_CLOSE, &[3]))[0]
                .clone()
                .unwrap_err()
                .code,
            ViolationKind::Protocol
        );
    }

    #[test]
    fn invalid_utf8_in_an_incomplete_frame_fails_before_the_rest_arrives() {
        let f = client_frame(
            true,
            OP_TEXT,
            b"hello \xff world, and much more text to come",
        );
        let mut r = MessageReader::new(1024, true);
        let mut buf = BytesMut::from(&f[..14]); // header (6) + "hello \xff" + 1
        assert_eq!(
            r.next_message(&mut buf).unwrap_err().code,
            ViolationKind::InvalidPayload
        );
    }

    #[test]
    fn a_frame_arriving_in_chunks_is_unmasked_exactly_once() {
        let text = "héllo wörld — ünïcode split across reads";
        let f = client_frame(true, OP_TEXT, text.as_bytes());
        for step in 1..8 {
            let mut r = MessageReader::new(1024, true);
            let mut buf = BytesMut::new();
            let mut got = None;
            for chunk in f.chunks(step) {
                buf.extend_from_slice(chunk);
                if let Some(m) = r.next_message(&mut buf).unwrap() {
                    got = Some(m);
                }
            }
            assert_eq!(got, Some(Message::Text(Bytes::from(text))), "step {step}");
        }
    }

    #[test]
    fn partial_input_waits_for_more() {
        let f = client_frame(true, OP_TEXT, b"hello");
        let mut r = MessageReader::new(1024, true);
        let mut buf = BytesMut::from(&f[..4]);
        assert_eq!(r.next_message(&mut buf), Ok(None));
        buf.extend_from_slice(&f[4..]);
        assert_eq!(
            r.next_message(&mut buf),
            Ok(Some(Message::Text(Bytes::from("hello"))))
        );
        assert!(buf.is_empty());
    }

    /// A masked client frame with RSV1 set on the first byte when `rsv1`.
    fn deflated_frame(fin: bool, opcode: u8, rsv1: bool, payload: &[u8]) -> Vec<u8> {
        let mut f = client_frame(fin, opcode, payload);
        if rsv1 {
            f[0] |= frame::RSV1;
        }
        f
    }

    fn read_deflate(bytes: &[u8], max: usize) -> Vec<Result<Message, Violation>> {
        read_with(MessageReader::new(max, true).with_deflate(true), bytes)
    }

    fn packed(plain: &[u8]) -> Vec<u8> {
        deflate::compress(plain, 6, deflate::WindowBits::MAX, false).unwrap()
    }

    #[test]
    fn a_compressed_message_is_inflated_whole_or_in_fragments() {
        let text = "héllo compressed wörld ".repeat(20);
        let z = packed(text.as_bytes());
        let got = read_deflate(&deflated_frame(true, OP_TEXT, true, &z), 1024);
        assert_eq!(got, vec![Ok(Message::Text(Bytes::from(text.clone())))]);
        // Fragments cut through the compressed bytes (and a character), a ping between.
        let (a, b) = z.split_at(z.len() / 2);
        let mut bytes = deflated_frame(false, OP_TEXT, true, a);
        bytes.extend(client_frame(true, OP_PING, b"p"));
        bytes.extend(deflated_frame(true, OP_CONTINUATION, false, b));
        let got = read_deflate(&bytes, 1024);
        assert_eq!(got[1], Ok(Message::Text(Bytes::from(text))));
        // Uncompressed messages still pass on a deflate connection.
        let got = read_deflate(&client_frame(true, OP_BINARY, b"raw"), 1024);
        assert_eq!(got, vec![Ok(Message::Binary(Bytes::from_static(b"raw")))]);
    }

    #[test]
    fn rsv1_is_a_protocol_error_unless_negotiated_and_on_a_first_frame() {
        let z = packed(&b"abc".repeat(50));
        let protocol = |got: &[Result<Message, Violation>]| matches!(got.last(), Some(Err(v)) if v.code == ViolationKind::Protocol);
        assert!(protocol(&read_all(&deflated_frame(
            true, OP_TEXT, true, &z
        ))));
        let mut cont = deflated_frame(false, OP_TEXT, true, &z[..2]);
        cont.extend(deflated_frame(true, OP_CONTINUATION, true, &z[2..]));
        assert!(protocol(&read_deflate(&cont, 1024)));
        assert!(protocol(&read_deflate(
            &deflated_frame(true, OP_PING, true, b""),
            1024
        )));
    }

    #[test]
    fn the_limit_applies_after_inflation() {
        let zeros = vec![b'0'; 100_000];
        let bomb = packed(&zeros);
        assert!(bomb.len() < 1024);
        let got = read_deflate(&deflated_frame(true, OP_TEXT, true, &bomb), 64 * 1024);
        assert!(matches!(got[..], [Err(v)] if v.code == ViolationKind::TooBig));
        let fits = packed(&zeros[..64 * 1024]);
        let got = read_deflate(&deflated_frame(true, OP_TEXT, true, &fits), 64 * 1024);
        assert!(matches!(&got[..], [Ok(Message::Text(t))] if t.len() == 64 * 1024));
    }

    #[test]
    fn bad_deflate_data_and_bad_utf8_inside_are_1007() {
        let invalid = |got: &[Result<Message, Violation>]| matches!(got.last(), Some(Err(v)) if v.code == ViolationKind::InvalidPayload);
        let garbage = read_deflate(&deflated_frame(true, OP_TEXT, true, &[0xff; 40]), 1024);
        assert!(invalid(&garbage), "{garbage:?}");
        let latin1 =
            packed(&[b'a', 0xE9, b'b', b'c', b'a', b'b', b'c', b'a', b'b', b'c'].repeat(10));
        let got = read_deflate(&deflated_frame(true, OP_TEXT, true, &latin1), 1024);
        assert!(invalid(&got), "{got:?}");
    }
}
