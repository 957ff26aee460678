//! Frame encoding (once, shared) and frame-header parsing (both roles).
//!
//! Server frames are unmasked, so the complete frame — header and payload — is built once
//! per publication and every recipient's queue holds a refcounted clone of it. The bench
//! client reuses the same code in the client role (masked frames).

use std::sync::{Arc, OnceLock};

use bytes::{BufMut, Bytes, BytesMut};

use super::deflate::{self, Policy, WindowBits};

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// The first-byte bit that marks a compressed message (RFC 7692 §6).
pub const RSV1: u8 = 0x40;

/// A complete, ready-to-write WebSocket frame. Cloning shares the bytes.
///
/// A frame marked [`Frame::deflatable`] also carries the place for its compressed form
/// (RFC 7692), made by the first writer whose connection negotiated deflate and shared
/// by all the others: one compression per frame per window size, never per recipient.
///
/// One pointer: a fan-out puts a clone of it in every recipient's queue, and a queue
/// slot of 8 bytes instead of 40 keeps a burst's queues in cache (docs/benchmarks.md,
/// "The queue slot").
#[derive(Clone, Debug)]
pub struct Frame(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    bytes: Bytes,
    deflated: Option<Box<Deflated>>,
    tag: Option<Box<Tag>>,
}

/// What a data frame stands for, for a queue that may have to drop it and say so: a
/// channel's publication, or a notice standing for `skipped` of them. The queue reads
/// it; the wire never carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag {
    pub channel: Arc<str>,
    /// A publication's offset and epoch where its channel keeps history; for a notice,
    /// the offset to recover from (the last before what it stands for).
    pub position: Option<(u64, Arc<str>)>,
    /// 0 for a publication; how many publications a notice stands for.
    pub skipped: u64,
}

/// The compressed forms of one frame, by window size (9..=15 bits); `None` inside once
/// compression was tried and did not shrink it.
#[derive(Debug)]
struct Deflated {
    policy: Policy,
    by_window: [OnceLock<Option<Bytes>>; 7],
}

impl PartialEq for Frame {
    fn eq(&self, other: &Frame) -> bool {
        self.0.bytes == other.0.bytes
    }
}

impl Eq for Frame {}

impl Frame {
    /// A final server (unmasked) frame with `opcode` and `payload`.
    pub fn new(opcode: u8, payload: &[u8]) -> Frame {
        let mut out = BytesMut::with_capacity(header_len(payload.len(), false) + payload.len());
        put_header(&mut out, true, opcode, payload.len(), None);
        out.extend_from_slice(payload);
        Frame(Arc::new(Inner {
            bytes: out.freeze(),
            deflated: None,
            tag: None,
        }))
    }

    /// This frame, labelled with what it stands for ([`Tag`]).
    pub fn tagged(self, tag: Tag) -> Frame {
        let mut frame = self;
        match Arc::get_mut(&mut frame.0) {
            Some(inner) => inner.tag = Some(Box::new(tag)),
            None => {
                frame = Frame(Arc::new(Inner {
                    bytes: frame.0.bytes.clone(),
                    deflated: None,
                    tag: Some(Box::new(tag)),
                }))
            }
        }
        frame
    }

    /// What this frame stands for, if it was tagged.
    pub fn tag(&self) -> Option<&Tag> {
        self.0.tag.as_deref()
    }

    /// This frame, to be sent compressed to connections that negotiated deflate when
    /// `policy` says so: a data frame whose payload reaches the threshold.
    pub fn deflatable(self, policy: Option<&Policy>) -> Frame {
        let data = matches!(
            self.0.bytes.first().map(|b| b & 0x0F),
            Some(OP_TEXT | OP_BINARY)
        );
        let Some(p) = policy else { return self };
        if !data || self.payload().is_empty() || self.payload().len() < p.threshold {
            return self;
        }
        let deflated = Some(Box::new(Deflated {
            policy: *p,
            by_window: Default::default(),
        }));
        let mut frame = self;
        match Arc::get_mut(&mut frame.0) {
            Some(inner) => inner.deflated = deflated,
            // Shared already: a frame of its own with the same bytes.
            None => {
                frame = Frame(Arc::new(Inner {
                    bytes: frame.0.bytes.clone(),
                    deflated,
                    tag: frame.0.tag.clone(),
                }))
            }
        }
        frame
    }

    /// The bytes to write to a connection; `deflate` is the window it agreed to, if
    /// it negotiated compression. The compressed form is made once, on first use.
    pub fn wire(&self, deflate: Option<WindowBits>) -> &Bytes {
        let Inner {
            bytes, deflated, ..
        } = &*self.0;
        let (Some(window), Some(d)) = (deflate, deflated) else {
            return bytes;
        };
        let Some(cell) = d.by_window.get(window.index()) else {
            return bytes;
        };
        cell.get_or_init(|| {
            let packed =
                deflate::compress(self.payload(), d.policy.level, window, d.policy.always)?;
            let first = bytes.first().copied().unwrap_or(0x80 | OP_TEXT);
            let mut out = BytesMut::with_capacity(header_len(packed.len(), false) + packed.len());
            put_header(&mut out, true, first & 0x0F, packed.len(), None);
            if let Some(b0) = out.first_mut() {
                *b0 |= RSV1;
            }
            out.extend_from_slice(&packed);
            Some(out.freeze())
        })
        .as_ref()
        .unwrap_or(bytes)
    }

    pub fn text(payload: &[u8]) -> Frame {
        Frame::new(OP_TEXT, payload)
    }

    /// A close frame with `code` and a short reason (truncated to fit in 125 bytes).
    pub fn close(code: u16, reason: &str) -> Frame {
        let mut payload = Vec::with_capacity(2 + reason.len());
        payload.extend_from_slice(&code.to_be_bytes());
        let mut cut = reason.len().min(123);
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        payload.extend_from_slice(reason.as_bytes().get(..cut).unwrap_or_default());
        Frame::new(OP_CLOSE, &payload)
    }

    /// The uncompressed frame.
    pub fn as_bytes(&self) -> &Bytes {
        &self.0.bytes
    }

    /// The payload after the (unmasked, server) header.
    pub fn payload(&self) -> &[u8] {
        let bytes = &self.0.bytes;
        let header = match bytes.get(1).map(|b| b & 0x7f) {
            Some(126) => 4,
            Some(127) => 10,
            _ => 2,
        };
        bytes.get(header..).unwrap_or_default()
    }

    /// Length of the uncompressed frame (what queue limits count).
    pub fn len(&self) -> usize {
        self.0.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.bytes.is_empty()
    }
}

/// Length of a frame header for a payload of `len` bytes.
pub const fn header_len(len: usize, masked: bool) -> usize {
    let base = if len < 126 {
        2
    } else if len <= u16::MAX as usize {
        4
    } else {
        10
    };
    if masked {
        base + 4
    } else {
        base
    }
}

/// Writes a frame header; with `mask`, sets the mask bit and appends the key.
pub fn put_header(out: &mut BytesMut, fin: bool, opcode: u8, len: usize, mask: Option<[u8; 4]>) {
    let first = if fin { 0x80 } else { 0 } | (opcode & 0x0F);
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    out.put_u8(first);
    if len < 126 {
        out.put_u8(mask_bit | len as u8);
    } else if len <= u16::MAX as usize {
        out.put_u8(mask_bit | 126);
        out.put_u16(len as u16);
    } else {
        out.put_u8(mask_bit | 127);
        out.put_u64(len as u64);
    }
    if let Some(key) = mask {
        out.extend_from_slice(&key);
    }
}

/// XORs `data` with the mask `key`, starting at payload offset `offset`.
pub fn apply_mask(data: &mut [u8], key: [u8; 4], offset: usize) {
    let mut k = key;
    k.rotate_left(offset & 3);
    for (b, m) in data.iter_mut().zip(k.iter().cycle()) {
        *b ^= m;
    }
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub fin: bool,
    pub rsv: u8,
    pub opcode: u8,
    pub mask: Option<[u8; 4]>,
    pub payload_len: u64,
    pub header_len: usize,
}

/// Why a header is unacceptable: all of these are RFC 6455 protocol errors (1002).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("reserved bits set")]
    ReservedBits,
    #[error("reserved opcode")]
    ReservedOpcode,
    #[error("control frame fragmented or longer than 125 bytes")]
    BadControl,
    #[error("client frame not masked")]
    Unmasked,
    #[error("server frame masked")]
    Masked,
    #[error("payload length has the most significant bit set")]
    BadLength,
}

/// Parses a header from the start of `buf`; `Ok(None)` if more bytes are needed.
/// `expect_masked` is true in the server role (client frames must be masked).
pub fn parse_header(buf: &[u8], expect_masked: bool) -> Result<Option<Header>, HeaderError> {
    let (b0, b1) = match buf {
        [b0, b1, ..] => (*b0, *b1),
        _ => return Ok(None),
    };
    let fin = b0 & 0x80 != 0;
    let rsv = (b0 >> 4) & 0x07;
    let opcode = b0 & 0x0F;
    // RSV1 means "compressed" under permessage-deflate; whether it may appear is the
    // reader's to say. RSV2 and RSV3 are never ours.
    if rsv & 0b011 != 0 {
        return Err(HeaderError::ReservedBits);
    }
    match opcode {
        OP_CONTINUATION | OP_TEXT | OP_BINARY => {}
        OP_CLOSE | OP_PING | OP_PONG => {
            if !fin || (b1 & 0x7F) > 125 {
                return Err(HeaderError::BadControl);
            }
        }
        _ => return Err(HeaderError::ReservedOpcode),
    }
    let masked = b1 & 0x80 != 0;
    if masked != expect_masked {
        return Err(if expect_masked {
            HeaderError::Unmasked
        } else {
            HeaderError::Masked
        });
    }
    let (payload_len, mut pos) = match b1 & 0x7F {
        126 => match buf.get(2..4).and_then(|b| <[u8; 2]>::try_from(b).ok()) {
            Some(b) => (u64::from(u16::from_be_bytes(b)), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => {
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                let len = u64::from_be_bytes(a);
                if len >> 63 != 0 {
                    return Err(HeaderError::BadLength);
                }
                (len, 10)
            }
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    let mask = if masked {
        match buf
            .get(pos..pos + 4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
        {
            Some(key) => {
                pos += 4;
                Some(key)
            }
            None => return Ok(None),
        }
    } else {
        None
    };
    Ok(Some(Header {
        fin,
        rsv,
        opcode,
        mask,
        payload_len,
        header_len: pos,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_text_frame_is_header_plus_payload() {
        let f = Frame::text(b"hi");
        assert_eq!(f.as_bytes().as_ref(), &[0x81, 2, b'h', b'i']);
    }

    #[test]
    fn lengths_use_the_shortest_encoding() {
        for len in [0usize, 125, 126, 65535, 65536, 1 << 20] {
            let payload = vec![b'a'; len];
            let f = Frame::new(OP_BINARY, &payload);
            let h = parse_header(f.as_bytes(), false).unwrap().unwrap();
            assert_eq!(h.payload_len as usize, len);
            assert_eq!(h.header_len, header_len(len, false));
            assert_eq!(f.len(), h.header_len + len);
        }
    }

    #[test]
    fn masked_round_trip() {
        let key = [1, 2, 3, 4];
        let mut out = BytesMut::new();
        put_header(&mut out, true, OP_TEXT, 5, Some(key));
        let mut payload = *b"hello";
        apply_mask(&mut payload, key, 0);
        out.extend_from_slice(&payload);
        let h = parse_header(&out, true).unwrap().unwrap();
        assert_eq!(h.mask, Some(key));
        let mut body = out[h.header_len..].to_vec();
        apply_mask(&mut body, key, 0);
        assert_eq!(&body, b"hello");
    }

    #[test]
    fn protocol_violations_are_refused() {
        assert_eq!(
            parse_header(&[0x81, 0x00], true),
            Err(HeaderError::Unmasked)
        );
        assert_eq!(
            parse_header(&[0xA1, 0x80], true),
            Err(HeaderError::ReservedBits)
        );
        // RSV1 is the reader's call (permessage-deflate).
        let rsv1 = parse_header(&[0xC1, 0x80, 1, 2, 3, 4], true)
            .unwrap()
            .unwrap();
        assert_eq!(rsv1.rsv, 0b100);
        assert_eq!(
            parse_header(&[0x83, 0x80], true),
            Err(HeaderError::ReservedOpcode)
        );
        assert_eq!(
            parse_header(&[0x09, 0x80], true),
            Err(HeaderError::BadControl)
        );
        assert_eq!(
            parse_header(&[0x89, 0xFE], true),
            Err(HeaderError::BadControl)
        );
        assert_eq!(parse_header(&[0x81], true), Ok(None));
    }

    #[test]
    fn a_deflatable_frame_is_compressed_once_per_window_and_shared() {
        let payload =
            br#"{"type":"pub","data":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}"#.repeat(8);
        let policy = Policy {
            threshold: 100,
            level: 6,
            always: false,
        };
        let f = Frame::text(&payload).deflatable(Some(&policy));
        let copy = f.clone();
        assert_eq!(f.wire(None), f.as_bytes(), "not negotiated: as it is");
        let z = f.wire(Some(WindowBits::MAX));
        assert_eq!(z[0], 0x80 | RSV1 | OP_TEXT);
        let h = parse_header(z, false).unwrap().unwrap();
        let plain = deflate::inflate(&z[h.header_len..], payload.len()).unwrap();
        assert_eq!(plain, payload);
        assert_eq!(
            copy.wire(Some(WindowBits::MAX)).as_ptr(),
            z.as_ptr(),
            "every clone shares the one compression"
        );
        let small = copy.wire(WindowBits::new(9));
        assert_ne!(
            small.as_ptr(),
            z.as_ptr(),
            "another window, another compression"
        );
        // Below the threshold, without a policy, or a control frame: never compressed.
        let short = Frame::text(b"{}").deflatable(Some(&policy));
        assert_eq!(short.wire(Some(WindowBits::MAX)), short.as_bytes());
        let plain = Frame::text(&payload).deflatable(None);
        assert_eq!(plain.wire(Some(WindowBits::MAX)), plain.as_bytes());
        let ping = Frame::new(OP_PING, &[b'a'; 120]).deflatable(Some(&Policy {
            threshold: 0,
            level: 6,
            always: true,
        }));
        assert_eq!(ping.wire(Some(WindowBits::MAX)), ping.as_bytes());
    }

    #[test]
    fn close_reason_is_truncated_on_a_char_boundary() {
        let f = Frame::close(1000, &"é".repeat(100));
        assert!(f.len() <= 2 + 125);
        let h = parse_header(f.as_bytes(), false).unwrap().unwrap();
        let reason = &f.as_bytes()[h.header_len + 2..];
        assert!(std::str::from_utf8(reason).is_ok());
    }
}
