//! A publication as a publisher asks for it, in the two shapes it arrives in: the body
//! of `POST /api/publish` (and each entry of a batch), and the `publish` frame on `/ws`
//! (a client's, or a backend publisher's with any target, DESIGN §7). `data` stays raw
//! (`RawValue`): it is checked to be JSON here and never re-encoded.

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

/// For optional fields of a request: absent is `None`, and `null` is refused like any
/// other wrong type (the documented schema says a string or a number, not null), so a
/// request means one thing. Use with `#[serde(default, deserialize_with = "present")]`.
pub fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

/// The deepest nesting of arrays and objects a publication's `data` may have: serde_json's
/// own recursion limit, which every other client message is decoded under. `data` is kept
/// raw (never decoded into a tree), so the limit is checked on its own: many recipients'
/// JSON parsers (Python's among them) fail on far less than a 5,000-deep document.
pub const MAX_DEPTH: usize = 128;

/// Whether `data` (valid JSON, as a `RawValue` is) nests at most [`MAX_DEPTH`] deep. One
/// pass over the bytes, brackets inside strings ignored.
pub fn within_depth(data: &RawValue) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in data.get().as_bytes() {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return false;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    true
}

/// The refusal of data nested deeper than [`MAX_DEPTH`].
pub fn too_deep() -> String {
    format!("data nests deeper than {MAX_DEPTH} arrays and objects")
}

/// The body of `POST /api/publish`: one of `channel`, `user`, `group`, `all: true`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    #[serde(default, deserialize_with = "present")]
    pub channel: Option<String>,
    #[serde(default, deserialize_with = "present")]
    pub user: Option<String>,
    #[serde(default, deserialize_with = "present")]
    pub group: Option<String>,
    #[serde(default, deserialize_with = "present")]
    pub all: Option<bool>,
    pub data: Box<RawValue>,
    #[serde(default, deserialize_with = "present")]
    pub exclude_user: Option<String>,
    #[serde(default, deserialize_with = "present")]
    pub exclude_conn: Option<String>,
    /// A retry of a publication with the same key (same publisher, same target) within
    /// the window is answered as the first was and delivers nothing (DESIGN §13).
    #[serde(default, deserialize_with = "present")]
    pub idempotency_key: Option<String>,
}

/// The most characters an `idempotency_key` may have (DESIGN §13).
pub const MAX_IDEMPOTENCY_KEY_CHARS: usize = 64;

/// Checks an `idempotency_key`: 1 to [`MAX_IDEMPOTENCY_KEY_CHARS`] characters.
pub fn check_idempotency_key(key: &str) -> Result<(), String> {
    let n = key.chars().count();
    if (1..=MAX_IDEMPOTENCY_KEY_CHARS).contains(&n) {
        Ok(())
    } else {
        Err(format!(
            "idempotency_key must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} characters, not {n}"
        ))
    }
}

/// The `type` of a [`PublishFrame`]: only `"publish"` parses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum PublishType {
    Publish,
}

/// `{"type":"publish", <the fields of PublishRequest>, "ref"?}` on `/ws`. Decoded on its
/// own rather than as a variant of `ClientMessage`: serde buffers the fields of an
/// internally tagged enum, which a `RawValue` cannot come through. Like the other
/// client frames, unknown fields are ignored.
#[derive(Debug, Deserialize)]
pub struct PublishFrame {
    #[serde(rename = "type")]
    #[allow(dead_code)] // only `publish` parses; the value itself says nothing more
    kind: PublishType,
    #[serde(default, rename = "ref")]
    pub reference: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    pub channel: Option<String>,
    #[serde(default, deserialize_with = "present")]
    pub user: Option<String>,
    #[serde(default, deserialize_with = "present")]
    pub group: Option<String>,
    #[serde(default, deserialize_with = "present")]
    pub all: Option<bool>,
    pub data: Box<RawValue>,
    #[serde(default, deserialize_with = "present")]
    pub exclude_user: Option<String>,
    #[serde(default, deserialize_with = "present")]
    pub exclude_conn: Option<String>,
    #[serde(default, deserialize_with = "present")]
    pub idempotency_key: Option<String>,
}

impl PublishFrame {
    /// Whether it asks for more than a client may: a target other than a channel, or
    /// exclusions (a client's own publication is never echoed to it; that is all).
    pub fn needs_backend(&self) -> bool {
        self.user.is_some()
            || self.group.is_some()
            || self.all.is_some()
            || self.exclude_user.is_some()
            || self.exclude_conn.is_some()
    }

    /// The request it makes, as the HTTP API would take it, and its `ref`.
    pub fn into_request(self) -> (PublishRequest, Option<Value>) {
        let request = PublishRequest {
            channel: self.channel,
            user: self.user,
            group: self.group,
            all: self.all,
            data: self.data,
            exclude_user: self.exclude_user,
            exclude_conn: self.exclude_conn,
            idempotency_key: self.idempotency_key,
        };
        (request, self.reference)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_keeps_its_data_verbatim_and_its_ref() {
        let f: PublishFrame = serde_json::from_str(
            r#"{"type":"publish","user":"42","data":{"b":1,  "a":[2]},"exclude_conn":"n-1","ref":9,"extra":0}"#,
        )
        .unwrap();
        assert!(f.needs_backend());
        let (req, reference) = f.into_request();
        assert_eq!(req.data.get(), r#"{"b":1,  "a":[2]}"#);
        assert_eq!(req.user.as_deref(), Some("42"));
        assert_eq!(req.exclude_conn.as_deref(), Some("n-1"));
        assert_eq!(reference, Some(serde_json::json!(9)));
    }

    #[test]
    fn only_publish_frames_parse_and_null_is_not_absent() {
        assert!(serde_json::from_str::<PublishFrame>(r#"{"type":"subscribe","data":1}"#).is_err());
        assert!(
            serde_json::from_str::<PublishFrame>(r#"{"type":"publish","channel":"x"}"#).is_err()
        );
        assert!(
            serde_json::from_str::<PublishFrame>(r#"{"type":"publish","user":null,"data":1}"#)
                .is_err()
        );
        let plain: PublishFrame =
            serde_json::from_str(r#"{"type":"publish","channel":"news","data":"hi"}"#).unwrap();
        assert!(!plain.needs_backend());
    }

    #[test]
    fn nesting_is_counted_outside_strings_only() {
        let raw = |s: String| RawValue::from_string(s).unwrap();
        let deep = |n: usize| "[".repeat(n) + &"]".repeat(n);
        assert!(within_depth(&raw(deep(MAX_DEPTH))));
        assert!(!within_depth(&raw(deep(MAX_DEPTH + 1))));
        let objects = r#"{"a":"#.repeat(MAX_DEPTH + 1) + "1" + &"}".repeat(MAX_DEPTH + 1);
        assert!(!within_depth(&raw(objects)));
        let in_string = format!(r#"["{}\"{}"]"#, "[".repeat(500), "{".repeat(500));
        assert!(within_depth(&raw(in_string)));
        // Siblings do not add up: depth is nesting, not count.
        assert!(within_depth(&raw(format!(
            "[{}]",
            vec![deep(100); 50].join(",")
        ))));
    }

    #[test]
    fn an_idempotency_key_is_1_to_64_characters() {
        assert!(check_idempotency_key("").is_err());
        assert!(check_idempotency_key("a").is_ok());
        assert!(check_idempotency_key(&"é".repeat(64)).is_ok());
        let long = check_idempotency_key(&"k".repeat(65)).unwrap_err();
        assert!(long.contains("not 65"), "{long}");
    }

    #[test]
    fn a_request_refuses_unknown_fields() {
        assert!(
            serde_json::from_str::<PublishRequest>(r#"{"channel":"x","data":1,"ref":1}"#).is_err()
        );
    }
}
