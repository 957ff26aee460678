//! Server → client frames. Each is serialized once; `pub` frames carry the publisher's
//! `data` verbatim (`RawValue`), so a publication is never re-encoded per recipient.

use std::sync::Arc;

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::Value;

use super::codes::ErrorCode;

use crate::ws::frame::{Frame, Tag};

#[derive(Serialize)]
pub struct Connected<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub conn_id: &'a str,
    pub user_id: &'a str,
    pub node: &'a str,
    pub heartbeat_s: u64,
    pub message: &'static str,
}

impl<'a> Connected<'a> {
    pub fn new(conn_id: &'a str, user_id: &'a str, node: &'a str, heartbeat_s: u64) -> Self {
        Connected {
            kind: "connected",
            conn_id,
            user_id,
            node,
            heartbeat_s,
            message: "Connected to broadcast live updates",
        }
    }
}

/// Where a publication sits in its channel's history.
#[derive(Debug, Clone, Copy)]
pub struct Position<'a> {
    pub offset: u64,
    pub epoch: &'a str,
}

#[derive(Serialize)]
struct Pub<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    epoch: Option<&'a str>,
    data: &'a RawValue,
}

/// The `pub` frame for a publication: built once, shared by every recipient. A
/// channel's is tagged with its channel and position, so a queue that drops it can
/// tell the client what it missed ([`skipped_frame`]).
pub fn pub_frame(channel: Option<&str>, position: Option<Position<'_>>, data: &RawValue) -> Frame {
    let frame = frame_of(&Pub {
        kind: "pub",
        channel,
        offset: position.map(|p| p.offset),
        epoch: position.map(|p| p.epoch),
        data,
    });
    match channel {
        Some(channel) => frame.tagged(Tag {
            channel: Arc::from(channel),
            position: position.map(|p| (p.offset, Arc::from(p.epoch))),
            skipped: 0,
        }),
        None => frame,
    }
}

/// `{"type":"skipped","channel","count","offset"?,"epoch"?}`: `count` publications of
/// `channel` did not reach this connection; where the channel keeps history, `offset`
/// and `epoch` are what to recover from (`subscribe` with that `since`). Tagged, so a
/// later notice for the same channel can be merged into it.
pub fn skipped_frame(channel: &Arc<str>, count: u64, position: Option<&(u64, Arc<str>)>) -> Frame {
    #[derive(Serialize)]
    struct Skipped<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        channel: &'a str,
        count: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        epoch: Option<&'a str>,
    }
    frame_of(&Skipped {
        kind: "skipped",
        channel,
        count,
        offset: position.map(|p| p.0),
        epoch: position.map(|p| &*p.1),
    })
    .tagged(Tag {
        channel: channel.clone(),
        position: position.cloned(),
        skipped: count,
    })
}

pub fn presence_frame(channel: &str, event: &'static str, user_id: &str) -> Frame {
    #[derive(Serialize)]
    struct Presence<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        channel: &'a str,
        event: &'static str,
        user_id: &'a str,
    }
    frame_of(&Presence {
        kind: "presence",
        channel,
        event,
        user_id,
    })
}

pub fn ack_frame(reference: Option<&Value>, offset: Option<u64>) -> Frame {
    #[derive(Serialize)]
    struct Ack<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        #[serde(rename = "ref")]
        reference: Option<&'a Value>,
        #[serde(skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
    }
    frame_of(&Ack {
        kind: "ack",
        reference,
        offset,
    })
}

pub fn error_frame(code: ErrorCode, message: &str, reference: Option<&Value>) -> Frame {
    error_frame_about(code, message, reference, None)
}

/// An `error` that also names the channel it is about: the refusal of a subscription
/// the transport asked for (`/sse?channels=`), which has no `ref` of the client's.
pub fn error_frame_about(
    code: ErrorCode,
    message: &str,
    reference: Option<&Value>,
    channel: Option<&str>,
) -> Frame {
    #[derive(Serialize)]
    struct Error<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        code: &'static str,
        message: &'a str,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a Value>,
        #[serde(skip_serializing_if = "Option::is_none")]
        channel: Option<&'a str>,
    }
    frame_of(&Error {
        kind: "error",
        code: code.as_str(),
        message,
        reference,
        channel,
    })
}

pub fn pong_frame() -> Frame {
    Frame::text(br#"{"type":"pong"}"#)
}

pub fn text_pong_frame() -> Frame {
    Frame::text(b"pong")
}

pub fn subscribed_frame(
    channel: &str,
    offset: u64,
    epoch: &str,
    recovered: bool,
    reference: Option<&Value>,
) -> Frame {
    #[derive(Serialize)]
    struct Subscribed<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        channel: &'a str,
        offset: u64,
        epoch: &'a str,
        recovered: bool,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a Value>,
    }
    frame_of(&Subscribed {
        kind: "subscribed",
        channel,
        offset,
        epoch,
        recovered,
        reference,
    })
}

pub fn unsubscribed_frame(channel: &str, reference: Option<&Value>) -> Frame {
    #[derive(Serialize)]
    struct Unsubscribed<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        channel: &'a str,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a Value>,
    }
    frame_of(&Unsubscribed {
        kind: "unsubscribed",
        channel,
        reference,
    })
}

/// Serializes a server message into a text frame. Our own types always serialize;
/// should one ever fail, the client gets an `internal` error instead of a panic.
pub fn frame_of<T: Serialize>(msg: &T) -> Frame {
    match serde_json::to_vec(msg) {
        Ok(json) => Frame::text(&json),
        Err(_) => Frame::text(
            br#"{"type":"error","code":"internal","message":"could not encode a reply"}"#,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(f: &Frame) -> String {
        let b = f.as_bytes();
        String::from_utf8(b[2..].to_vec()).unwrap()
    }

    #[test]
    fn pub_keeps_data_verbatim() {
        let raw = RawValue::from_string(r#"{"n": 1}"#.to_owned()).unwrap();
        assert_eq!(
            payload(&pub_frame(Some("news"), None, &raw)),
            r#"{"type":"pub","channel":"news","data":{"n": 1}}"#
        );
        assert_eq!(
            payload(&pub_frame(None, None, &raw)),
            r#"{"type":"pub","data":{"n": 1}}"#
        );
        let at = Position {
            offset: 7,
            epoch: "e1",
        };
        let framed = pub_frame(Some("c"), Some(at), &raw);
        assert_eq!(
            payload(&framed),
            r#"{"type":"pub","channel":"c","offset":7,"epoch":"e1","data":{"n": 1}}"#
        );
    }

    #[test]
    fn error_carries_ref() {
        let f = error_frame(ErrorCode::BadRequest, "nope", Some(&Value::from(3)));
        assert_eq!(
            payload(&f),
            r#"{"type":"error","code":"bad_request","message":"nope","ref":3}"#
        );
    }
}

/// The `broadcast` object of `new_broadcast` / `active_broadcast` (seed 003's names).
#[derive(Serialize)]
pub struct BroadcastBody<'a> {
    pub id: &'a str,
    pub message: &'a str,
    pub message_type: &'a str,
    pub created_by: &'a str,
    pub created_at: String,
}

impl<'a> BroadcastBody<'a> {
    pub fn of(a: &'a crate::store::Announcement) -> BroadcastBody<'a> {
        BroadcastBody {
            id: &a.id,
            message: &a.message,
            message_type: &a.message_type,
            created_by: &a.created_by,
            created_at: crate::store::time::rfc3339(a.created_at_ms),
        }
    }
}

/// `new_broadcast` (`kind = "new_broadcast"`) or `active_broadcast`.
pub fn broadcast_frame(kind: &'static str, a: &crate::store::Announcement) -> Frame {
    #[derive(Serialize)]
    struct Broadcast<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        broadcast: BroadcastBody<'a>,
    }
    frame_of(&Broadcast {
        kind,
        broadcast: BroadcastBody::of(a),
    })
}

pub fn broadcast_cleared_frame() -> Frame {
    Frame::text(br#"{"type":"broadcast_cleared","message":"Active broadcast has been cleared"}"#)
}
