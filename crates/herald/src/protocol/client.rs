//! Client → server messages, decoded strictly: an unknown `type`, a missing field or a
//! field of the wrong type is a `bad_request` with a message naming the problem.

use serde::Deserialize;
use serde_json::Value;

use super::publish::PublishFrame;

/// `since` on a subscribe: the last position the client saw.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Since {
    pub offset: u64,
    pub epoch: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    Ping,
    Subscribe {
        channel: String,
        #[serde(default)]
        since: Option<Since>,
        #[serde(default, rename = "ref")]
        reference: Option<Value>,
    },
    Unsubscribe {
        channel: String,
        #[serde(default, rename = "ref")]
        reference: Option<Value>,
    },
    Refresh {
        token: String,
    },
    AcknowledgeBroadcast {
        broadcast_id: String,
    },
    GetActiveBroadcast,
}

/// A text frame, decoded: the bare text `"ping"` is its own message (seed 000 clients),
/// and a `publish` keeps its `data` raw.
#[derive(Debug)]
pub enum Inbound {
    TextPing,
    Message(ClientMessage),
    Publish(PublishFrame),
}

/// Why a client frame was not understood, with the `ref` if one could be recovered.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeError {
    pub message: String,
    pub reference: Option<Value>,
}

pub fn decode(text: &[u8]) -> Result<Inbound, DecodeError> {
    let trimmed = text.trim_ascii();
    if trimmed == b"ping" || trimmed == b"\"ping\"" {
        return Ok(Inbound::TextPing);
    }
    // A publish first: it is the frame a busy publisher sends most.
    let publish_error = match serde_json::from_slice::<PublishFrame>(trimmed) {
        Ok(p) => return Ok(Inbound::Publish(p)),
        Err(e) => e,
    };
    match serde_json::from_slice::<ClientMessage>(trimmed) {
        Ok(m) => Ok(Inbound::Message(m)),
        Err(e) => {
            // Recover `ref` (if the frame was at least a JSON object) so the client can
            // correlate the error.
            let loose: Option<Value> = serde_json::from_slice(trimmed).ok();
            let reference = loose.as_ref().and_then(|v| v.get("ref")).cloned();
            // A publish that did not parse is explained by the publish decoder.
            let is_publish = loose
                .as_ref()
                .and_then(|v| v.get("type"))
                .is_some_and(|t| t == "publish");
            let e = if is_publish { publish_error } else { e };
            let message = match loose {
                None => format!("not valid JSON: {e}"),
                Some(Value::Object(o)) if !o.contains_key("type") => {
                    "missing field `type`".to_owned()
                }
                Some(Value::Object(_)) => format!("invalid message: {e}"),
                Some(_) => "a message must be a JSON object with a `type`".to_owned(),
            };
            Err(DecodeError { message, reference })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn decodes_every_client_type() {
        assert!(matches!(decode(b"ping"), Ok(Inbound::TextPing)));
        assert!(matches!(
            decode(br#"{"type":"ping"}"#),
            Ok(Inbound::Message(ClientMessage::Ping))
        ));
        let Ok(Inbound::Publish(p)) =
            decode(br#"{"type":"publish","channel":"news","data":[1, 2],"ref":"a"}"#)
        else {
            panic!("a publish frame")
        };
        assert_eq!(
            (p.channel.as_deref(), p.data.get()),
            (Some("news"), "[1, 2]")
        );
        let sub = decode(
            br#"{"type":"subscribe","channel":"news","since":{"offset":3,"epoch":"e"},"ref":7}"#,
        );
        let Ok(Inbound::Message(sub)) = sub else {
            panic!("a subscribe")
        };
        assert_eq!(
            sub,
            ClientMessage::Subscribe {
                channel: "news".into(),
                since: Some(Since {
                    offset: 3,
                    epoch: "e".into()
                }),
                reference: Some(json!(7)),
            }
        );
        assert!(matches!(
            decode(br#"{"type":"get_active_broadcast"}"#),
            Ok(Inbound::Message(ClientMessage::GetActiveBroadcast))
        ));
    }

    #[test]
    fn bad_input_is_explained() {
        let e = decode(br#"{"type":"launch_rockets","ref":"r1"}"#).unwrap_err();
        assert!(e.message.contains("launch_rockets"), "{}", e.message);
        assert_eq!(e.reference, Some(json!("r1")));
        assert!(decode(b"{not json")
            .unwrap_err()
            .message
            .starts_with("not valid JSON"));
        assert_eq!(
            decode(br#"{"channel":"x"}"#).unwrap_err().message,
            "missing field `type`"
        );
        let wrong = decode(br#"{"type":"subscribe","channel":5}"#).unwrap_err();
        assert!(wrong.message.contains("invalid type"), "{}", wrong.message);
        assert!(decode(b"[1,2]").is_err());
        let publish = decode(br#"{"type":"publish","channel":"x","ref":3}"#).unwrap_err();
        assert!(publish.message.contains("`data`"), "{}", publish.message);
        assert_eq!(publish.reference, Some(json!(3)));
    }
}
