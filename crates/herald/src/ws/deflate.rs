//! permessage-deflate (RFC 7692): the offer we accept, compression once per frame, and
//! bounded inflation of what clients send.
//!
//! herald answers every accepted offer with `server_no_context_takeover` and
//! `client_no_context_takeover`: each message is a deflate stream of its own in both
//! directions. That is what lets one compressed copy of a publication serve every
//! recipient that negotiated the extension (a context per connection would need a
//! compression per recipient), and it means a connection keeps no zlib state at all —
//! compressors and the inflater live once per worker thread and are reset per message.
//! Inflation stops at the inbound message limit, so a deflate bomb costs at most that
//! much memory and the work to produce it.

use std::cell::RefCell;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The four bytes a sync flush ends with, left off on the wire (RFC 7692 §7.2.1).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// A deflate window size in bits, 9..=15 (zlib cannot make raw 8-bit windows).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct WindowBits(u8);

impl WindowBits {
    pub const MAX: WindowBits = WindowBits(15);
    pub const MIN: WindowBits = WindowBits(9);

    pub fn new(bits: u8) -> Option<WindowBits> {
        (9..=15).contains(&bits).then_some(WindowBits(bits))
    }

    pub const fn get(self) -> u8 {
        self.0
    }

    /// 0 for 9 bits … 6 for 15.
    pub const fn index(self) -> usize {
        (self.0 - 9) as usize
    }
}

/// What one connection agreed to: the largest window our frames to it may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agreement {
    pub server_window: WindowBits,
}

impl Agreement {
    /// The `Sec-WebSocket-Extensions` value of the 101 answer.
    pub fn response(&self) -> String {
        let mut s = String::from(
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
        );
        if self.server_window != WindowBits::MAX {
            s.push_str(&format!(
                "; server_max_window_bits={}",
                self.server_window.0
            ));
        }
        s
    }
}

/// The first acceptable `permessage-deflate` offer among the request's
/// `Sec-WebSocket-Extensions` values, in the client's order of preference. An offer
/// with an unknown, repeated or malformed parameter is declined (RFC 7692 §7.1), and so
/// is one that limits our window below 9 bits; the next one may still be taken.
pub fn negotiate<'a>(values: impl IntoIterator<Item = &'a str>) -> Option<Agreement> {
    values
        .into_iter()
        .flat_map(|v| v.split(','))
        .find_map(accept_offer)
}

fn accept_offer(offer: &str) -> Option<Agreement> {
    let mut parts = offer.split(';').map(str::trim);
    if !parts.next()?.eq_ignore_ascii_case("permessage-deflate") {
        return None;
    }
    let mut seen: Vec<String> = Vec::new();
    let mut server_window = WindowBits::MAX;
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
            None => (param, None),
        };
        let name = name.to_ascii_lowercase();
        if seen.contains(&name) {
            return None;
        }
        match (name.as_str(), value) {
            ("server_no_context_takeover" | "client_no_context_takeover", None) => {}
            // We inflate with the largest window, which reads any smaller one.
            ("client_max_window_bits", None) => {}
            ("client_max_window_bits", Some(v)) => {
                window_value(v).and_then(WindowBits::new)?;
            }
            ("server_max_window_bits", Some(v)) => {
                server_window = WindowBits::new(window_value(v)?)?;
            }
            _ => return None,
        }
        seen.push(name);
    }
    Some(Agreement { server_window })
}

/// A window-bits value: 1 or 2 decimal digits, 8..=15 (RFC 7692 §7.1.2).
fn window_value(v: &str) -> Option<u8> {
    if v.is_empty() || v.len() > 2 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse::<u8>().ok().filter(|b| (8..=15).contains(b))
}

/// How publications are compressed: frames whose payload is shorter than `threshold`
/// go out as they are (compressing them costs more than it saves).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub threshold: usize,
    pub level: u32,
    /// Send compressed even what does not shrink (the conformance echo: Autobahn's
    /// client expects every echo of a compressed message compressed).
    pub always: bool,
}

thread_local! {
    /// Compressors of this worker thread, one per (level, window) in use.
    static COMPRESSORS: RefCell<Vec<(u32, WindowBits, Compress)>> = const { RefCell::new(Vec::new()) };
    static INFLATER: RefCell<Option<Decompress>> = const { RefCell::new(None) };
}

/// `payload` as one raw-deflate message (sync-flushed, tail removed), or None when that
/// would not be smaller than the payload itself (unless `always`).
pub fn compress(payload: &[u8], level: u32, window: WindowBits, always: bool) -> Option<Vec<u8>> {
    if payload.is_empty() {
        return None;
    }
    COMPRESSORS.with(|cell| {
        let mut all = cell.borrow_mut();
        let pos = match all.iter().position(|(l, w, _)| *l == level && *w == window) {
            Some(p) => p,
            None => {
                let c = Compress::new_with_window_bits(
                    Compression::new(level.min(9)),
                    false,
                    window.get(),
                );
                all.push((level, window, c));
                all.len() - 1
            }
        };
        let (_, _, c) = all.get_mut(pos)?;
        c.reset();
        let out = deflate_all(c, payload);
        // A failed compression (never expected) must not leave state for the next one.
        if out.is_none() {
            c.reset();
        }
        out.filter(|o| always || o.len() < payload.len())
    })
}

fn deflate_all(c: &mut Compress, payload: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(payload.len() / 2 + 64);
    let mut input = payload;
    loop {
        if out.len() == out.capacity() {
            out.reserve(out.capacity().max(64));
        }
        let before = c.total_in();
        c.compress_vec(input, &mut out, FlushCompress::Sync).ok()?;
        let used = usize::try_from(c.total_in() - before).ok()?;
        input = input.get(used..)?;
        // Done when everything went in and the flush did not run out of room.
        if input.is_empty() && out.len() < out.capacity() {
            break;
        }
    }
    if out.ends_with(&TAIL) {
        out.truncate(out.len() - TAIL.len());
    }
    Some(out)
}

/// Why a compressed client message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InflateError {
    /// It inflates to more than the message limit (1009).
    TooBig,
    /// It is not a deflate stream (1007).
    Corrupt,
}

/// Inflates one client message (`no_context_takeover`: a stream of its own), refusing
/// to produce more than `max` bytes.
pub fn inflate(data: &[u8], max: usize) -> Result<Vec<u8>, InflateError> {
    INFLATER.with(|cell| {
        let mut slot = cell.borrow_mut();
        let d = slot.get_or_insert_with(|| Decompress::new_with_window_bits(false, 15));
        d.reset(false);
        // Never more than the limit allows, however small the limit is.
        let mut out = Vec::with_capacity((data.len() * 3).max(64).min(max.saturating_add(1)));
        let result = inflate_part(d, data, &mut out, max).and_then(|end| {
            if end {
                Ok(true)
            } else {
                inflate_part(d, &TAIL, &mut out, max)
            }
        });
        if result.is_err() {
            d.reset(false);
        }
        result.map(|_| out)
    })
}

/// Feeds `input` to the inflater; Ok(true) when the stream ended (a final block).
fn inflate_part(
    d: &mut Decompress,
    mut input: &[u8],
    out: &mut Vec<u8>,
    max: usize,
) -> Result<bool, InflateError> {
    loop {
        if out.len() == out.capacity() {
            if out.len() > max {
                return Err(InflateError::TooBig);
            }
            let room = (max + 1 - out.len()).min(out.capacity().max(1024));
            out.reserve_exact(room);
        }
        let (before_in, before_out) = (d.total_in(), d.total_out());
        let status = d
            .decompress_vec(input, out, FlushDecompress::Sync)
            .map_err(|_| InflateError::Corrupt)?;
        if out.len() > max {
            return Err(InflateError::TooBig);
        }
        let used = usize::try_from(d.total_in() - before_in).map_err(|_| InflateError::Corrupt)?;
        input = input.get(used..).ok_or(InflateError::Corrupt)?;
        match status {
            Status::StreamEnd => return Ok(true),
            _ if input.is_empty() && out.len() < out.capacity() => return Ok(false),
            _ if used == 0 && d.total_out() == before_out && out.len() < out.capacity() => {
                // No progress with room to spare: the input is unusable.
                return Err(InflateError::Corrupt);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agreed(v: &str) -> Option<Agreement> {
        negotiate([v])
    }

    #[test]
    fn the_usual_browser_offer_is_taken() {
        let a = agreed("permessage-deflate; client_max_window_bits").unwrap();
        assert_eq!(a.server_window, WindowBits::MAX);
        assert_eq!(
            a.response(),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
    }

    #[test]
    fn a_smaller_server_window_is_honoured_and_echoed() {
        let a = agreed("permessage-deflate; server_max_window_bits=10").unwrap();
        assert_eq!(a.server_window.get(), 10);
        assert!(a.response().ends_with("; server_max_window_bits=10"));
        let quoted = agreed("permessage-deflate; server_max_window_bits=\"12\"").unwrap();
        assert_eq!(quoted.server_window.get(), 12);
    }

    #[test]
    fn bad_offers_are_declined_and_the_next_one_taken() {
        for bad in [
            "x-webkit-deflate-frame",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=8",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=010",
            "permessage-deflate; client_max_window_bits=7",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; foo",
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
        ] {
            assert_eq!(agreed(bad), None, "{bad}");
        }
        let a = negotiate([
            "permessage-deflate; server_max_window_bits=8, permessage-deflate; server_no_context_takeover",
        ])
        .unwrap();
        assert_eq!(a.server_window, WindowBits::MAX);
        let split = negotiate(["foo", "permessage-deflate"]);
        assert!(split.is_some(), "offers may come in several header lines");
    }

    #[test]
    fn compress_then_inflate_round_trips_at_every_window() {
        let payload =
            br#"{"type":"pub","channel":"news","data":{"text":"hello hello hello hello"}}"#
                .repeat(40);
        for bits in 9..=15 {
            let w = WindowBits::new(bits).unwrap();
            let c = compress(&payload, 6, w, false).unwrap();
            assert!(c.len() < payload.len() / 4, "{bits}: {}", c.len());
            assert!(!c.ends_with(&TAIL));
            assert_eq!(inflate(&c, payload.len()).unwrap(), payload);
        }
    }

    #[test]
    fn what_does_not_shrink_is_not_compressed() {
        let noise: Vec<u8> = (0..200u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
            .collect();
        assert_eq!(compress(&noise, 6, WindowBits::MAX, false), None);
        let forced = compress(&noise, 6, WindowBits::MAX, true).unwrap();
        assert_eq!(inflate(&forced, 1024).unwrap(), noise);
        assert_eq!(compress(b"", 6, WindowBits::MAX, true), None);
    }

    #[test]
    fn a_bomb_stops_at_the_limit() {
        let zeros = vec![0u8; 1 << 20];
        let bomb = compress(&zeros, 9, WindowBits::MAX, false).unwrap();
        assert!(bomb.len() < 2048);
        assert_eq!(inflate(&bomb, 64 * 1024), Err(InflateError::TooBig));
        // Exactly at the limit is fine; the inflater is usable afterwards.
        let at = compress(&zeros[..64 * 1024], 9, WindowBits::MAX, false).unwrap();
        assert_eq!(inflate(&at, 64 * 1024).unwrap().len(), 64 * 1024);
    }

    #[test]
    fn a_limit_below_the_initial_buffer_is_kept() {
        // Found by fuzzing: a 15-byte limit met a 64-byte first buffer (`clamp` panicked).
        let packed = compress(
            &b"hello hello hello hello".repeat(4),
            6,
            WindowBits::MAX,
            false,
        );
        let packed = packed.unwrap();
        assert_eq!(inflate(&packed, 15), Err(InflateError::TooBig));
        assert_eq!(inflate(&packed, 0), Err(InflateError::TooBig));
        let small = compress(b"aaaaaaaaaaaa", 6, WindowBits::MAX, true).unwrap();
        assert_eq!(inflate(&small, 12).unwrap(), b"aaaaaaaaaaaa");
    }

    #[test]
    fn garbage_is_corrupt_and_the_next_message_still_inflates() {
        assert_eq!(inflate(&[0xff; 32], 1024), Err(InflateError::Corrupt));
        let ok = compress(&b"abcabcabc".repeat(20), 6, WindowBits::MAX, false).unwrap();
        assert_eq!(inflate(&ok, 1024).unwrap(), b"abcabcabc".repeat(20));
    }

    #[test]
    fn a_final_block_from_the_client_is_accepted() {
        // A client may end each message with BFINAL instead of a sync flush.
        let mut c = Compress::new_with_window_bits(Compression::new(6), false, 15);
        let mut out = Vec::with_capacity(256);
        c.compress_vec(b"hello hello hello", &mut out, FlushCompress::Finish)
            .unwrap();
        assert_eq!(inflate(&out, 1024).unwrap(), b"hello hello hello");
    }
}
