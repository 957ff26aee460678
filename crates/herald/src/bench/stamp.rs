//! The send timestamp carried in each publication's `data`.
//!
//! The publisher sends `data = "t=<nanos>;…"` (a JSON string padded to `--payload` bytes
//! with words, so that it compresses like text rather than like one repeated byte), where `<nanos>` is measured from an `Instant` shared by the publisher and every
//! client of this process. The server copies `data` verbatim into the `pub` frame, after
//! whatever else it carries (`{"type":"pub","data":"t=…;…"}` for `all`,
//! `{"type":"pub","channel":…,"offset":…,"epoch":…,"data":"t=…;…"}` for a channel), so a
//! client finds the stamp with one short search and a decimal parse — no JSON decoding on
//! the hot path.

/// The marker that precedes the stamp inside a `pub` frame.
const MARKER: &[u8] = b"\"data\":\"t=";

/// Most digits a `u64` can have.
const MAX_DIGITS: usize = 20;

/// Words the padding is made of: what a now-playing or feed update says.
const WORDS: [&str; 16] = [
    "id", "title", "artist", "album", "track", "played", "queue", "volume", "position", "duration",
    "genre", "year", "cover", "lyrics", "next", "shuffle",
];

/// The `data` string (without its JSON quotes) for a publication sent at `stamp_ns`,
/// padded to `size` bytes (never shorter than the stamp itself) with pseudo-random words
/// and numbers — the same for every publication of a size, and nothing to escape.
pub fn encode_data(stamp_ns: u64, size: usize) -> String {
    let mut s = format!("t={stamp_ns};");
    let mut x: u32 = 0x9E37_79B9;
    while s.len() < size {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let word = WORDS.get((x % 16) as usize).copied().unwrap_or("id");
        s.push_str(word);
        s.push(' ');
        s.push_str(&(x % 1000).to_string());
        s.push(' ');
    }
    s.truncate(size.max(s.find(';').map_or(0, |p| p + 1)));
    s
}

/// The JSON body of `POST /api/publish`: to everyone, or to `channel`'s subscribers.
/// `channel` is spliced in as is: the caller has checked it against the server's
/// channel-name rule (letters, digits and `_.:@-`), which leaves nothing to escape.
pub fn publish_body(stamp_ns: u64, size: usize, channel: Option<&str>) -> String {
    // `encode_data` yields only ASCII letters, digits, spaces and `t=;`: nothing to escape.
    let data = encode_data(stamp_ns, size);
    match channel {
        Some(c) => format!(r#"{{"channel":"{c}","data":"{data}"}}"#),
        None => format!(r#"{{"all":true,"data":"{data}"}}"#),
    }
}

/// The stamp of a received text frame, or `None` if it is not one of ours (the
/// `connected` frame, an error, anything malformed).
pub fn parse_stamp(text: &[u8]) -> Option<u64> {
    let start = find(text, MARKER)? + MARKER.len();
    let rest = text.get(start..)?;
    let end = rest.iter().take(MAX_DIGITS + 1).position(|&b| b == b';')?;
    if end == 0 {
        return None;
    }
    let mut n: u64 = 0;
    for &b in rest.get(..end)? {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(n)
}

/// Position of `needle` in `hay` (the marker sits ~14 bytes in for `all`, after the
/// channel, offset and epoch — ~70 bytes for a short name — for a channel).
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_round_trips_through_a_pub_frame() {
        for (stamp, size) in [
            (0u64, 100usize),
            (123_456_789, 100),
            (u64::MAX, 10),
            (42, 4096),
        ] {
            let data = encode_data(stamp, size);
            assert_eq!(data.len(), size.max(format!("t={stamp};").len()));
            // What the server sends for an `all` publication: `data` verbatim.
            let frame = format!(r#"{{"type":"pub","data":"{data}"}}"#);
            assert_eq!(parse_stamp(frame.as_bytes()), Some(stamp));
            let body: serde_json::Value =
                serde_json::from_str(&publish_body(stamp, size, None)).unwrap();
            assert_eq!(body["data"], serde_json::Value::String(data.clone()));
            assert_eq!(body["all"], serde_json::Value::Bool(true));
            assert!(body.get("channel").is_none());
        }
    }

    #[test]
    fn stamp_round_trips_through_a_channel_pub_frame() {
        for (stamp, size) in [(0u64, 100usize), (987_654_321, 100), (u64::MAX, 10)] {
            let data = encode_data(stamp, size);
            // What the server sends for a channel with history: position before `data`.
            let frame = format!(
                r#"{{"type":"pub","channel":"news","offset":42,"epoch":"a1b2c3d4","data":"{data}"}}"#
            );
            assert_eq!(parse_stamp(frame.as_bytes()), Some(stamp));
            let body: serde_json::Value =
                serde_json::from_str(&publish_body(stamp, size, Some("team:a.b@c-d_e"))).unwrap();
            assert_eq!(body["channel"], "team:a.b@c-d_e");
            assert_eq!(body["data"], serde_json::Value::String(data));
            assert!(body.get("all").is_none());
        }
        let subscribed =
            br#"{"type":"subscribed","channel":"news","offset":0,"epoch":"e","recovered":false}"#;
        assert_eq!(parse_stamp(subscribed), None);
    }

    #[test]
    fn other_frames_have_no_stamp() {
        let connected = br#"{"type":"connected","conn_id":"c1","user_id":"bench-1","node":"n","heartbeat_s":25,"message":"Connected to broadcast live updates"}"#;
        assert_eq!(parse_stamp(connected), None);
        assert_eq!(parse_stamp(br#"{"type":"pub","data":"t=;x"}"#), None);
        assert_eq!(parse_stamp(br#"{"type":"pub","data":"t=12a;x"}"#), None);
        assert_eq!(parse_stamp(br#"{"type":"pub","data":"t=123"}"#), None);
        assert_eq!(
            parse_stamp(br#"{"type":"pub","data":"t=99999999999999999999;"}"#),
            None
        );
        assert_eq!(parse_stamp(b""), None);
    }
}
