//! The Redis side of the relay: `PSUBSCRIBE` to the configured pattern, relay each
//! message, and on any connection loss reconnect with capped backoff (a dedicated pub/sub
//! connection does not reconnect by itself). Messages published while disconnected are
//! lost by Redis pub/sub; devices recover them from channel history with `since`.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::{relay, split_pattern};
use crate::broker::Broker;
use crate::config::RelayConfig;

pub async fn run(broker: Arc<dyn Broker>, cfg: RelayConfig, stop: CancellationToken) {
    let mut delay = Duration::from_millis(250);
    loop {
        match session(broker.as_ref(), &cfg, &stop).await {
            Ok(()) => return,
            Err(e) => tracing::warn!("sync relay: {e}; reconnecting in {delay:?}"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

/// One connection's life; `Ok` only when asked to stop.
async fn session(
    broker: &dyn Broker,
    cfg: &RelayConfig,
    stop: &CancellationToken,
) -> Result<(), redis::RedisError> {
    let client = redis::Client::open(cfg.redis_url.as_str())?;
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.psubscribe(&cfg.redis_pattern).await?;
    tracing::info!(pattern = %cfg.redis_pattern, "sync relay subscribed");
    let (prefix, suffix) = split_pattern(&cfg.redis_pattern);
    let mut messages = pubsub.on_message();
    loop {
        let msg = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            msg = messages.next() => msg,
        };
        let Some(msg) = msg else {
            return Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "pub/sub connection closed",
            )));
        };
        let relayed = relay(
            broker,
            prefix,
            suffix,
            msg.get_channel_name(),
            msg.get_payload_bytes(),
        );
        let outcome = match relayed {
            Ok(submitted) => submitted.wait().await.err().map(|d| d.answer().1),
            Err(skipped) => Some(skipped.to_string()),
        };
        if let Some(why) = outcome {
            tracing::info!(
                channel = msg.get_channel_name(),
                "sync relay skipped a message: {why}"
            );
        }
    }
}
