//! The send timestamp carried in each publication's `data`.
//!
//! The publisher sends `data = "t=<nanos>;…"` (a JSON string padded to `--payload` bytes
//! with words, so that it compresses like text rather than like one repeated byte), where `<nanos>` is measured from an `Instant` shared by the publisher and every
//! client of this process. The server copies `data` verbatim into the `pub` frame, after
//! whatever else it carries (`{"type":"pub","data":"t=…;…"}` for `all`,
//! `{"type":"pub","channel":…,"offset":…,"epoch":…,"data":"t=…;…"}` for a channel), so a
//! client finds the stamp with one short search and a decimal parse — no JSON decoding on
//! the hot path.
//!
//! Stamps also tell order. The publisher takes them from one monotonic clock, one request
//! (or one write of due frames) after another, so they never decrease in the order
//! publications leave; a delivery stamped *lower* than the one the same client received
//! just before arrived out of that order ([`StampOrder`]). Publications that leave
//! together (a batch, or the frames one write of the WS publisher carries) share a stamp,
//! so order among them cannot be seen and is not counted. With the HTTP publisher, up to
//! 32 requests are in flight on separate connections and may reach the server in another
//! order than they left: a reordering there is the requests overtaking each other, not
//! necessarily the server; the WS publisher's frames share one connection, which the
//! server reads and submits in order, so there a reordering is the server's (or its
//! broker's). Stamps of two bench
//! processes come from two clocks: run one bench per server (or per channel/user) or the
//! count means nothing.

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

/// The JSON body of `POST /api/publish`, with `to` its target member, already JSON
/// (`"all":true`, `"channel":"news"`, `"user":"42"`: [`Audience::member`]).
///
/// [`Audience::member`]: super::Audience::member
pub fn publish_body(stamp_ns: u64, size: usize, to: &str) -> String {
    // `encode_data` yields only ASCII letters, digits, spaces and `t=;`: nothing to escape.
    let data = encode_data(stamp_ns, size);
    format!(r#"{{{to},"data":"{data}"}}"#)
}

/// Counts the deliveries of one client that arrive stamped lower than the delivery
/// before them (see the module docs for what that does and does not catch). A
/// publication overtaken by `n` later ones counts once, where it lands.
#[derive(Debug, Default)]
pub struct StampOrder {
    last: Option<u64>,
    pub reordered: u64,
}

impl StampOrder {
    /// Records the next delivery's stamp.
    pub fn see(&mut self, stamp_ns: u64) {
        if self.last.is_some_and(|last| stamp_ns < last) {
            self.reordered += 1;
        }
        self.last = Some(stamp_ns);
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
                serde_json::from_str(&publish_body(stamp, size, r#""all":true"#)).unwrap();
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
                serde_json::from_str(&publish_body(stamp, size, r#""channel":"team:a.b@c-d_e""#))
                    .unwrap();
            assert_eq!(body["channel"], "team:a.b@c-d_e");
            assert_eq!(body["data"], serde_json::Value::String(data));
            assert!(body.get("all").is_none());
        }
        let subscribed =
            br#"{"type":"subscribed","channel":"news","offset":0,"epoch":"e","recovered":false}"#;
        assert_eq!(parse_stamp(subscribed), None);
    }

    #[test]
    fn only_a_lower_stamp_than_the_previous_is_a_reordering() {
        let count = |stamps: &[u64]| {
            let mut o = StampOrder::default();
            stamps.iter().for_each(|&s| o.see(s));
            o.reordered
        };
        assert_eq!(count(&[]), 0);
        assert_eq!(count(&[5]), 0);
        assert_eq!(count(&[1, 2, 3, 4]), 0);
        // Equal stamps (a batch, one write of the WS publisher) are not out of order.
        assert_eq!(count(&[1, 1, 1, 2, 2]), 0);
        assert_eq!(count(&[1, 3, 2, 4]), 1);
        // One late publication counts once, however many overtook it.
        assert_eq!(count(&[2, 3, 4, 5, 1, 6]), 1);
        // One early one: each later delivery is measured against its predecessor only.
        assert_eq!(count(&[1, 5, 2, 3, 4]), 1);
        assert_eq!(count(&[4, 3, 2, 1]), 3);
        assert_eq!(count(&[0, u64::MAX, 0]), 1);
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
