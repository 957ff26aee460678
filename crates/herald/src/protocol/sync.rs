//! The `sync` namespace's events (DESIGN §5, seed 002): validated before they are relayed
//! to the user's other devices. Extra fields are allowed (clients add timestamps and
//! device ids); a missing or mistyped required field, or an unknown type, is refused.

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SyncEvent {
    WatchlistUpdate {
        content_id: String,
        action: String,
    },
    ProgressUpdate {
        content_id: String,
        position: f64,
        duration: f64,
    },
    DeviceCommand {
        command: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        target_device: Option<String>,
    },
}

impl SyncEvent {
    /// The device a command is addressed to, if any.
    pub fn target_device(&self) -> Option<&str> {
        match self {
            SyncEvent::DeviceCommand {
                target_device: Some(d),
                ..
            } => Some(d),
            _ => None,
        }
    }
}

pub fn validate(data: &Value) -> Result<SyncEvent, String> {
    if !data.is_object() {
        return Err("a sync event is a JSON object with a `type`".into());
    }
    SyncEvent::deserialize(data).map_err(|e| format!("invalid sync event: {e}"))
}

/// An event from the upstream bus (seed 002's PubNub relay): the same types, with the
/// upstream names `position_seconds` / `duration_seconds` and `device_handoff` accepted
/// and converted, and the sending device (`device_id`) returned so it can be left out.
pub fn from_upstream(mut data: Value) -> Result<(SyncEvent, Option<String>), String> {
    let Some(obj) = data.as_object_mut() else {
        return Err("a sync event is a JSON object with a `type`".into());
    };
    for (upstream, ours) in [
        ("position_seconds", "position"),
        ("duration_seconds", "duration"),
    ] {
        if !obj.contains_key(ours) {
            if let Some(v) = obj.remove(upstream) {
                obj.insert(ours.to_owned(), v);
            }
        }
    }
    if obj.get("type").and_then(Value::as_str) == Some("device_handoff") {
        obj.insert("type".into(), Value::from("device_command"));
    }
    let device = obj
        .get("device_id")
        .and_then(Value::as_str)
        .map(str::to_owned);
    Ok((validate(&data)?, device))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn valid_events() {
        let w = validate(
            &json!({"type":"watchlist_update","content_id":"c1","action":"add","device_id":"a"}),
        )
        .unwrap();
        assert_eq!(
            w,
            SyncEvent::WatchlistUpdate {
                content_id: "c1".into(),
                action: "add".into()
            }
        );
        let p = validate(
            &json!({"type":"progress_update","content_id":"c1","position":12.5,"duration":7200}),
        )
        .unwrap();
        assert!(matches!(p, SyncEvent::ProgressUpdate { .. }));
        let d = validate(&json!({"type":"device_command","command":"play","target_device":"tv"}))
            .unwrap();
        assert_eq!(d.target_device(), Some("tv"));
    }

    #[test]
    fn upstream_names_are_converted() {
        let up = json!({"type":"progress_update","content_id":"uuid-123","position_seconds":1234,"duration_seconds":7200,"timestamp":{},"device_id":"device-a"});
        let (event, device) = from_upstream(up).unwrap();
        assert_eq!(device.as_deref(), Some("device-a"));
        let canonical = json!({"type":"progress_update","content_id":"uuid-123","position":1234.0,"duration":7200.0});
        assert_eq!(serde_json::to_value(&event).unwrap(), canonical);
        let (cmd, _) =
            from_upstream(json!({"type":"device_handoff","command":"play","target_device":"tv"}))
                .unwrap();
        assert_eq!(cmd.target_device(), Some("tv"));
        assert!(from_upstream(json!({"type":"progress_update","content_id":"c"})).is_err());
    }

    #[test]
    fn invalid_events_say_why() {
        let missing = validate(&json!({"type":"progress_update","content_id":"c1","position":1}))
            .unwrap_err();
        assert!(missing.contains("duration"), "{missing}");
        let mistyped = validate(
            &json!({"type":"progress_update","content_id":"c1","position":"1","duration":2}),
        )
        .unwrap_err();
        assert!(mistyped.contains("invalid type"), "{mistyped}");
        let unknown = validate(&json!({"type":"teleport"})).unwrap_err();
        assert!(unknown.contains("teleport"), "{unknown}");
        assert!(validate(&json!("hi")).is_err());
    }
}
