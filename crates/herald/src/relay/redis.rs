//! The Redis side of the relay: `PSUBSCRIBE` to the configured pattern on a managed
//! connection (`ConnectionManager` with a push sender: it reconnects with jittered
//! backoff and resubscribes by itself) and relay each message. Messages published while
//! disconnected are lost by Redis pub/sub; devices recover them from channel history
//! with `since`.
//!
//! Every node of a cluster subscribes, so every node receives each upstream message.
//! Only one relays it: the first to `SET <prefix>:relay:<digest> NX` (kept 10 s) wins,
//! so each event reaches each device once, not once per node, and no node is special
//! (one that dies loses nothing the others do not relay). The cost: the same event,
//! byte for byte, on the same bus channel twice within 10 s is relayed once — harmless
//! for sync state, which such a repeat would not change.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{PushInfo, PushKind, Value};
use sha1::{Digest, Sha1};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::split_pattern;
use crate::broker::Broker;
use crate::config::RelayConfig;
use crate::metrics::Metrics;

/// How long an upstream message is remembered as relayed.
const DEDUP_MS: u64 = 10_000;

/// Runs the relay until `stop`. `dedup_prefix` is set when several nodes share the
/// bus (a Redis broker): the key prefix for the once-per-cluster claim.
pub async fn run(
    broker: Arc<dyn Broker>,
    cfg: RelayConfig,
    dedup_prefix: Option<String>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let (tx, mut pushes) = mpsc::unbounded_channel::<PushInfo>();
    let manager = crate::broker::redis::client(&cfg.redis_url).and_then(|client| {
        let config = crate::broker::redis::manager_config()
            .set_push_sender(tx)
            .set_automatic_resubscription();
        ConnectionManager::new_lazy_with_config(client, config)
    });
    let mut conn = match manager {
        Ok(conn) => conn,
        Err(e) => {
            tracing::error!("sync relay: {e}; not relaying");
            return;
        }
    };
    // Subscribe, retrying until Redis is there; the manager resubscribes after that.
    let mut delay = Duration::from_millis(250);
    loop {
        let subscribed = tokio::select! {
            _ = stop.cancelled() => return,
            r = conn.psubscribe(&cfg.redis_pattern) => r,
        };
        match subscribed {
            Ok(()) => break,
            Err(e) => tracing::warn!("sync relay: {e}; retrying in {delay:?}"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    }
    tracing::info!(pattern = %cfg.redis_pattern, "sync relay subscribed");
    metrics.relay_subscribed.store(true, Relaxed);
    let (prefix, suffix) = split_pattern(&cfg.redis_pattern);
    loop {
        let push = tokio::select! {
            _ = stop.cancelled() => return,
            p = pushes.recv() => match p { Some(p) => p, None => return },
        };
        match push.kind {
            PushKind::PMessage => {}
            PushKind::PSubscribe => {
                metrics.relay_subscribed.store(true, Relaxed);
                continue;
            }
            PushKind::Disconnection => {
                metrics.relay_subscribed.store(false, Relaxed);
                tracing::warn!("sync relay: connection lost; reconnecting");
                crate::broker::redis::reconnect(conn.clone(), stop.clone());
                continue;
            }
            _ => continue,
        }
        // [pattern, channel, payload]
        let (Some(Value::BulkString(channel)), Some(Value::BulkString(payload))) =
            (push.data.get(1), push.data.get(2))
        else {
            continue;
        };
        let channel = String::from_utf8_lossy(channel);
        if let Some(p) = &dedup_prefix {
            if !claim(&mut conn, p, &channel, payload).await {
                continue;
            }
        }
        super::handle(
            broker.as_ref(),
            &metrics,
            (prefix, suffix),
            &channel,
            payload,
        )
        .await;
    }
}

/// Whether this node is the one to relay this message (first to claim it). A claim
/// that cannot be made (Redis trouble) relays: a duplicate beats a loss.
pub(super) async fn claim(
    conn: &mut impl redis::aio::ConnectionLike,
    prefix: &str,
    channel: &str,
    payload: &[u8],
) -> bool {
    let mut digest = Sha1::new();
    digest.update(channel.as_bytes());
    digest.update([0u8]);
    digest.update(payload);
    let key = format!("{prefix}:relay:{:x}", digest.finalize());
    let set: redis::RedisResult<Option<String>> = redis::cmd("SET")
        .arg(key)
        .arg(1)
        .arg("NX")
        .arg("PX")
        .arg(DEDUP_MS)
        .query_async(conn)
        .await;
    !matches!(set, Ok(None))
}
