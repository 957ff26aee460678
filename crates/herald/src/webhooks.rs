//! Presence webhooks (DESIGN §13, seed 004): the events the hub and the cluster view
//! report (`hub::presence_events`) POSTed to `webhooks.url`, one at a time in the order
//! they happened, each signed so the receiver can tell it came from herald and is fresh.
//!
//! The signature is Stripe's scheme: `X-Herald-Signature: t=<unix seconds>,v1=<hex of
//! HMAC-SHA256(secret, "<t>.<body>")>`, made again for every attempt, so a receiver can
//! refuse old timestamps (a replayed request). `X-Herald-Delivery` is the same on every
//! attempt of one event, so a receiver that answered too slowly can tell a retry from a
//! new event.
//!
//! A failed attempt — no answer within `timeout_ms`, a 5xx, 408 or 429 — is retried after
//! 0.5 s, 1 s, 2 s … (at most 30 s, with jitter) up to `max_attempts`; any other answer
//! outside 2xx is final. One event at a time keeps a user's online before their offline;
//! while the receiver is down the queue fills, and what does not fit is dropped and
//! counted (`webhooks.dropped`), never waited for.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::hmac;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::webhooks::WebhooksConfig;
use crate::hub::presence_events::PresenceEvent;
use crate::hub::Hub;
use crate::metrics::Metrics;

/// After shutdown starts, queued events (the connections closing) get this long.
const DRAIN: Duration = Duration::from_secs(3);
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// `X-Herald-Signature` for `body` sent at Unix second `t`.
pub fn signature(secret: &[u8], t: u64, body: &str) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(t.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body.as_bytes());
    let tag = ctx.sign();
    let mut hex = String::with_capacity(64);
    for b in tag.as_ref() {
        hex.push_str(&format!("{b:02x}"));
    }
    format!("t={t},v1={hex}")
}

/// Whether a failed attempt is worth another.
fn retryable(status: reqwest::StatusCode) -> bool {
    status.is_server_error()
        || status == reqwest::StatusCode::REQUEST_TIMEOUT
        || status == reqwest::StatusCode::TOO_MANY_REQUESTS
}

/// The wait before attempt `n + 1` (n ≥ 1): doubling from 0.5 s, at most 30 s, plus up
/// to a fifth more so many nodes' retries do not arrive together.
fn backoff(n: u32) -> Duration {
    let base = FIRST_BACKOFF
        .saturating_mul(1u32 << n.saturating_sub(1).min(16))
        .min(MAX_BACKOFF);
    base + base.mul_f64(rand::random::<f64>() / 5.0)
}

struct Sender {
    client: reqwest::Client,
    url: reqwest::Url,
    secret: Vec<u8>,
    max_attempts: u32,
    metrics: Arc<Metrics>,
}

/// Attaches the hub's presence events to a sender for `cfg`, if `cfg.url` is set.
/// `cluster`: a cluster view decides user events (so this node does not).
pub fn start(
    cfg: &WebhooksConfig,
    hub: &Hub,
    cluster: bool,
    stop: CancellationToken,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    if cfg.url.is_empty() {
        return Ok(None);
    }
    let url = reqwest::Url::parse(&cfg.url).map_err(|e| anyhow::anyhow!("webhooks.url: {e}"))?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(cfg.timeout_ms))
        .user_agent(concat!("herald/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| anyhow::anyhow!("webhooks: cannot build the HTTP client: {e}"))?;
    let (tx, rx) = mpsc::channel(cfg.queue.max(1));
    hub.registry
        .events
        .attach(tx, &cfg.kinds(), !cluster, &hub.node);
    let sender = Sender {
        client,
        url,
        secret: cfg.secret.as_bytes().to_vec(),
        max_attempts: cfg.max_attempts.max(1),
        metrics: hub.metrics.clone(),
    };
    Ok(Some(tokio::spawn(sender.run(rx, stop))))
}

impl Sender {
    async fn run(self, mut rx: mpsc::Receiver<PresenceEvent>, stop: CancellationToken) {
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                ev = rx.recv() => match ev {
                    Some(ev) => self.deliver(&ev, &stop).await,
                    None => return,
                },
            }
        }
        // Shutting down: the events of connections closing now, once each, for a while.
        let _ = tokio::time::timeout(DRAIN, async {
            while let Ok(Some(ev)) =
                tokio::time::timeout(Duration::from_millis(500), rx.recv()).await
            {
                self.attempt(&ev, &uuid::Uuid::now_v7().to_string()).await;
            }
        })
        .await;
    }

    /// Sends `ev` until it is taken, refused for good, out of attempts, or shutdown.
    async fn deliver(&self, ev: &PresenceEvent, stop: &CancellationToken) {
        let delivery = uuid::Uuid::now_v7().to_string();
        for n in 1..=self.max_attempts {
            let outcome = tokio::select! {
                // Shutdown does not wait for a receiver that does not answer.
                _ = stop.cancelled() => break,
                o = self.attempt(ev, &delivery) => o,
            };
            match outcome {
                Outcome::Taken => return,
                Outcome::Refused(status) => {
                    tracing::warn!(event = ev.event.as_str(), user_id = %ev.user_id, %status, "webhook refused by the receiver, not retried");
                    break;
                }
                Outcome::Failed(why) if n == self.max_attempts => {
                    tracing::warn!(event = ev.event.as_str(), user_id = %ev.user_id, attempts = n, "webhook given up: {why}");
                    break;
                }
                Outcome::Failed(why) => {
                    tracing::debug!(attempt = n, "webhook attempt failed: {why}");
                    self.metrics.webhooks.retries.fetch_add(1, Relaxed);
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(backoff(n)) => {}
                    }
                }
            }
        }
        self.metrics.webhooks.failed.fetch_add(1, Relaxed);
    }

    async fn attempt(&self, ev: &PresenceEvent, delivery: &str) -> Outcome {
        let body = ev.body();
        let t = crate::auth::jwt::now_unix();
        let sent = self
            .client
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("X-Herald-Signature", signature(&self.secret, t, &body))
            .header("X-Herald-Event", ev.event.as_str())
            .header("X-Herald-Delivery", delivery)
            .body(body)
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => {
                self.metrics.webhooks.sent.fetch_add(1, Relaxed);
                Outcome::Taken
            }
            Ok(r) if retryable(r.status()) => Outcome::Failed(format!("answered {}", r.status())),
            Ok(r) => Outcome::Refused(r.status()),
            Err(e) => Outcome::Failed(e.to_string()),
        }
    }
}

enum Outcome {
    Taken,
    Refused(reqwest::StatusCode),
    Failed(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_dot_body() {
        // Computed independently with Python's hmac module:
        // hmac.new(b"Jefe", b"1700000000.{}", hashlib.sha256).hexdigest()
        let s = signature(b"Jefe", 1_700_000_000, "{}");
        assert_eq!(
            s,
            "t=1700000000,v1=d3793e2b4103edfbd98cc19591832f5fad701d413db9fcae0ae7dab8184ed207"
        );
    }

    #[test]
    fn retries_back_off_to_a_ceiling() {
        assert!(backoff(1) >= FIRST_BACKOFF && backoff(1) <= FIRST_BACKOFF.mul_f64(1.2));
        assert!(backoff(2) >= Duration::from_secs(1));
        assert!(
            backoff(40) <= MAX_BACKOFF.mul_f64(1.2),
            "no overflow, capped"
        );
        assert!(retryable(reqwest::StatusCode::BAD_GATEWAY));
        assert!(retryable(reqwest::StatusCode::TOO_MANY_REQUESTS));
        assert!(!retryable(reqwest::StatusCode::BAD_REQUEST));
        assert!(!retryable(reqwest::StatusCode::GONE));
    }
}
