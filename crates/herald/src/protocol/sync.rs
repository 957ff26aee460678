//! The `sync` namespace's events (DESIGN §5, seed 002): validated before they are relayed
//! to the user's other devices. Extra fields are allowed (clients add timestamps and
//! device ids); a missing or mistyped required field, or an unknown type, is refused.

use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Deserialize)]
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
