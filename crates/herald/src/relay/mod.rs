//! The upstream relay (DESIGN §5, seed 002): a user's device events arrive from another
//! system on a bus (a Redis channel or a NATS subject per user) and are relayed to that
//! user's `sync:` channel as if a device had published them: validated, with the
//! upstream field names converted, and not echoed to the sending device. A message that
//! is not one is dropped, logged and counted (`relay_skipped`).

#[cfg(feature = "nats")]
pub mod nats;
pub mod redis;

use std::time::Instant;

use serde_json::Value;

use crate::broker::{Broker, Submitted};
use crate::hub::{Exclude, Publication, Route, Target};
use crate::protocol::channel::validate_channel;
use crate::protocol::sync::from_upstream;

/// Why an upstream message was not relayed (logged, never fatal).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Skipped {
    #[error("bus channel `{0}` does not match the pattern")]
    Channel(String),
    #[error("user id `{0}` is not usable in a channel name")]
    User(String),
    #[error("payload is not JSON")]
    Json,
    #[error("{0}")]
    Event(String),
}

/// Relays one upstream message through the broker; the answer says what it reached.
pub fn relay(
    broker: &dyn Broker,
    prefix: &str,
    suffix: &str,
    bus_channel: &str,
    payload: &[u8],
) -> Result<Submitted, Skipped> {
    let user = bus_channel
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_suffix(suffix))
        .ok_or_else(|| Skipped::Channel(bus_channel.to_owned()))?;
    let channel = format!("sync:{user}");
    if user.is_empty() || user.contains(':') || validate_channel(&channel).is_err() {
        return Err(Skipped::User(user.to_owned()));
    }
    let value: Value = serde_json::from_slice(payload).map_err(|_| Skipped::Json)?;
    let (event, device) = from_upstream(value).map_err(Skipped::Event)?;
    let data =
        serde_json::value::to_raw_value(&event).map_err(|e| Skipped::Event(e.to_string()))?;
    let publication = Publication {
        target: Target::Channel(channel),
        exclude: Exclude {
            device,
            ..Exclude::default()
        },
        data,
        accepted: Instant::now(),
        creator: None,
        route: Route::of_sync(&event),
        idempotency_key: None,
    };
    Ok(broker.publish(publication))
}

/// Relays one upstream message and waits for its answer; counts it (relayed or skipped)
/// and logs a skip. Shared by the Redis and the NATS side.
pub async fn handle(
    broker: &dyn Broker,
    metrics: &crate::metrics::Metrics,
    (prefix, suffix): (&str, &str),
    bus_channel: &str,
    payload: &[u8],
) {
    let outcome = match relay(broker, prefix, suffix, bus_channel, payload) {
        Ok(submitted) => match submitted.wait().await {
            Ok(_) => {
                metrics.accepted(crate::metrics::Source::Relay);
                None
            }
            Err(d) => Some(d.answer().1),
        },
        Err(skipped) => Some(skipped.to_string()),
    };
    if let Some(why) = outcome {
        metrics
            .relay_skipped
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(channel = %bus_channel, "sync relay skipped a message: {why}");
    }
}

/// Splits a pattern like `user.*.sync` around its one `*`.
pub fn split_pattern(pattern: &str) -> (&str, &str) {
    pattern.split_once('*').unwrap_or((pattern, ""))
}

#[cfg(test)]
mod tests {
    #[test]
    fn patterns() {
        assert_eq!(super::split_pattern("user.*.sync"), ("user.", ".sync"));
        assert_eq!(super::split_pattern("*"), ("", ""));
    }
}
