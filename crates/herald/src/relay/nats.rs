//! The NATS side of the relay (`relay.nats_url`, `relay.nats_subject`): a subscription
//! on the subject pattern (`user.*.sync`; the `*` token is the user id). The client
//! (async-nats) reconnects and resubscribes by itself, also when the server is not there
//! at start; messages published while no node is connected are lost by NATS core, and
//! devices recover them from channel history with `since`, as on the Redis side.
//!
//! Once per cluster, in order: every node receives every message (a NATS queue group
//! would hand consecutive events of one user to different nodes, whose publications can
//! then overtake each other). Each user has one node that relays its events — the first
//! of the live nodes by rendezvous hash of (user, node tag), from the cluster view
//! refreshed every second — so one user's events go through one node, in the order NATS
//! delivered them. That node claims each message in Redis before relaying it (the claim
//! of the Redis relay); every other node claims it [`FALLBACK`] later, so a message the
//! chosen node missed (it died, or the nodes disagree while one joins or leaves) is still
//! relayed once.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::broker::conn::Conn;

use super::split_pattern;
use crate::broker::cluster::ClusterView;
use crate::broker::Broker;
use crate::metrics::Metrics;

/// How long a node that is not a user's relayer waits before it claims the message.
pub const FALLBACK: Duration = Duration::from_millis(300);
/// Fallback claims waiting at once, at most (past it, a node relies on the chosen one).
const MAX_FALLBACKS: usize = 10_000;

/// What a node of a cluster needs to relay each user's events on one node.
pub struct Affinity {
    pub view: Arc<ClusterView>,
    pub claims: Conn,
    pub prefix: String,
    pub me: String,
}

/// The node that relays `user`'s events: the highest rendezvous hash of (user, tag).
fn chosen<'a>(user: &str, nodes: &'a [String]) -> Option<&'a str> {
    use std::hash::{Hash, Hasher};
    nodes
        .iter()
        .max_by_key(|tag| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (user, tag.as_str()).hash(&mut h);
            h.finish()
        })
        .map(String::as_str)
}

/// Runs the relay until `stop`.
pub async fn run(
    broker: Arc<dyn Broker>,
    url: String,
    subject: String,
    affinity: Option<Affinity>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let events = metrics.clone();
    let options = async_nats::ConnectOptions::new()
        .name("herald relay")
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(2))
        .reconnect_delay_callback(|attempts| {
            let ms = 100u64.saturating_mul(1 << attempts.min(7));
            Duration::from_millis(ms.min(5_000) + rand::random::<u64>() % 100)
        })
        .event_callback(move |event| {
            let metrics = events.clone();
            async move {
                match event {
                    async_nats::Event::Connected => {
                        metrics.relay_subscribed.store(true, Relaxed);
                        tracing::info!("sync relay: NATS connected");
                    }
                    async_nats::Event::Disconnected => {
                        metrics.relay_subscribed.store(false, Relaxed);
                        tracing::warn!("sync relay: NATS connection lost; reconnecting");
                    }
                    other => tracing::debug!("sync relay: NATS {other}"),
                }
            }
        });
    let client = tokio::select! {
        _ = stop.cancelled() => return,
        c = options.connect(url.as_str()) => c,
    };
    let client = match client {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("sync relay: NATS `{url}`: {e}; not relaying");
            return;
        }
    };
    let mut messages = match client.subscribe(subject.clone()).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("sync relay: cannot subscribe to `{subject}`: {e}; not relaying");
            return;
        }
    };
    tracing::info!(subject = %subject, "sync relay subscribed (NATS)");
    let pattern = split_pattern(&subject);
    let (prefix, suffix) = pattern;
    let mut nodes: Vec<String> = Vec::new();
    let mut refresh = tokio::time::interval(Duration::from_secs(1));
    let fallbacks = Arc::new(tokio::sync::Semaphore::new(MAX_FALLBACKS));
    loop {
        let message = tokio::select! {
            _ = stop.cancelled() => break,
            _ = refresh.tick(), if affinity.is_some() => {
                if let Some(a) = &affinity {
                    if let Ok(totals) = a.view.totals().await {
                        nodes = totals.per_node.into_iter().map(|n| n.tag).collect();
                    }
                }
                continue;
            }
            m = messages.next() => match m { Some(m) => m, None => break },
        };
        let bus_channel = message.subject.as_str();
        let Some(a) = &affinity else {
            super::handle(
                broker.as_ref(),
                &metrics,
                pattern,
                bus_channel,
                &message.payload,
            )
            .await;
            continue;
        };
        let user = bus_channel
            .strip_prefix(prefix)
            .and_then(|r| r.strip_suffix(suffix))
            .unwrap_or("");
        // Not knowing the nodes yet (Redis slow at start), every node is the chosen one:
        // the claim still makes it once.
        let mine = chosen(user, &nodes).is_none_or(|tag| tag == a.me);
        if mine {
            let mut claims = a.claims.clone();
            let claim = (&mut claims, a.prefix.as_str());
            relay_claimed(
                broker.as_ref(),
                &metrics,
                claim,
                pattern,
                bus_channel,
                &message.payload,
            )
            .await;
            continue;
        }
        let Ok(permit) = fallbacks.clone().try_acquire_owned() else {
            continue;
        };
        let (broker, metrics, mut claims) = (broker.clone(), metrics.clone(), a.claims.clone());
        let claim_prefix = a.prefix.clone();
        let (prefix, suffix) = (prefix.to_owned(), suffix.to_owned());
        tokio::spawn(async move {
            let _permit = permit;
            tokio::time::sleep(FALLBACK).await;
            let channel = message.subject.as_str();
            let claim = (&mut claims, claim_prefix.as_str());
            let pattern = (prefix.as_str(), suffix.as_str());
            if relay_claimed(
                broker.as_ref(),
                &metrics,
                claim,
                pattern,
                channel,
                &message.payload,
            )
            .await
            {
                tracing::debug!(
                    channel,
                    "sync relay: relayed a message its chosen node missed"
                );
            }
        });
    }
    metrics.relay_subscribed.store(false, Relaxed);
    let _ = messages.unsubscribe().await;
}

/// Relays `payload` if this node wins its once-per-cluster claim; answers whether it did.
async fn relay_claimed(
    broker: &dyn Broker,
    metrics: &Metrics,
    (claims, claim_prefix): (&mut Conn, &str),
    pattern: (&str, &str),
    subject: &str,
    payload: &[u8],
) -> bool {
    let won = super::redis::claim(claims, claim_prefix, subject, payload).await;
    if won {
        super::handle(broker, metrics, pattern, subject, payload).await;
    }
    won
}

#[cfg(test)]
mod tests {
    use super::chosen;

    #[test]
    fn each_user_has_one_node_and_most_users_keep_theirs_when_a_node_joins() {
        let three: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let four: Vec<String> = ["a", "b", "c", "d"].map(String::from).to_vec();
        assert_eq!(chosen("u", &[]), None);
        let mut kept = 0;
        let mut per_node = std::collections::HashMap::new();
        for i in 0..1000 {
            let user = format!("user-{i}");
            let before = chosen(&user, &three).unwrap();
            assert_eq!(before, chosen(&user, &three).unwrap(), "stable");
            *per_node.entry(before).or_insert(0) += 1;
            let after = chosen(&user, &four).unwrap();
            // A user moves only to the new node.
            assert!(after == before || after == "d");
            kept += usize::from(after == before);
        }
        assert!(per_node.values().all(|n| *n > 200), "{per_node:?}");
        assert!(kept > 600, "{kept}");
    }
}
