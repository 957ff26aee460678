//! `GET /metrics` (DESIGN §10): the node's numbers in the Prometheus text format, encoded
//! by `prometheus-client`. Everything is read at scrape time from the counters
//! `/api/stats` reads — the hot path gains nothing for it — and the latency histogram is
//! the same one `/api/stats` takes its percentiles from. Asks for the API key (or an
//! admin token) unless `metrics.public`.

use std::fmt;
use std::sync::atomic::Ordering::Relaxed;

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::auth::authorize;
use super::error::ApiError;
use super::App;
use crate::broker::Health;
use crate::metrics::{Refusal, Source};
use crate::protocol::codes::ErrorCode;

/// What one scrape reports, read once.
#[derive(Debug, Default)]
struct Snapshot {
    connections: u64,
    users: u64,
    channels: u64,
    history_bytes: u64,
    queued: u64,
    queued_max: u64,
    accepted: Vec<(&'static str, u64)>,
    delivered_publications: u64,
    deliveries: u64,
    dropped_slow: u64,
    dropped_oldest: u64,
    slow_consumer_disconnects: u64,
    compressed_deliveries: u64,
    compression_saved_bytes: u64,
    refusals: Vec<(&'static str, u64)>,
    latency: (Vec<(f64, u64)>, u64, f64),
    broker_up: bool,
    broker_outages: u64,
    broker_degraded: u64,
    repeated: u64,
    relay_skipped: u64,
    webhooks: [u64; 4],
    broker_malformed: u64,
    following: u64,
    store_errors: u64,
}

fn snapshot(app: &App) -> Snapshot {
    let m = &app.metrics;
    let registry = &app.hub.registry;
    let (mut queued, mut queued_max) = (0u64, 0u64);
    registry.for_each_conn(|c| {
        let depth = c.outbox.depth() as u64;
        queued += depth;
        queued_max = queued_max.max(depth);
    });
    let dropped = m.dropped.load(Relaxed);
    let dropped_oldest = m.dropped_oldest.load(Relaxed);
    let n = |v: usize| u64::try_from(v).unwrap_or(u64::MAX);
    Snapshot {
        connections: n(registry.connections()),
        users: n(registry.users()),
        channels: n(registry.channels.len()),
        history_bytes: n(registry.channels.ledger.bytes()),
        queued,
        queued_max,
        accepted: Source::ALL
            .iter()
            .map(|s| (s.as_str(), m.accepted_from(*s)))
            .collect(),
        delivered_publications: m.publications.load(Relaxed),
        deliveries: m.deliveries.load(Relaxed),
        dropped_slow: dropped.saturating_sub(dropped_oldest),
        dropped_oldest,
        slow_consumer_disconnects: m.slow_consumer_disconnects.load(Relaxed),
        compressed_deliveries: m.compressed_deliveries.load(Relaxed),
        compression_saved_bytes: m.compression_saved_bytes.load(Relaxed),
        refusals: Refusal::ALL
            .iter()
            .map(|r| (r.as_str(), m.refusals(*r)))
            .collect(),
        latency: m.latency.buckets(),
        broker_up: app.broker.health() == Health::Up,
        broker_outages: m.broker_outages.load(Relaxed),
        broker_degraded: m.degraded.load(Relaxed),
        repeated: m.repeated.load(Relaxed),
        relay_skipped: m.relay_skipped.load(Relaxed),
        webhooks: [
            m.webhooks.sent.load(Relaxed),
            m.webhooks.retries.load(Relaxed),
            m.webhooks.failed.load(Relaxed),
            registry.events.dropped.load(Relaxed),
        ],
        broker_malformed: m.broker_malformed.load(Relaxed),
        following: n(app.broker.following()),
        store_errors: m.store_errors.load(Relaxed),
    }
}

/// A histogram whose buckets were counted elsewhere (our lock-free one).
struct Buckets<'a>(&'a (Vec<(f64, u64)>, u64, f64));

impl EncodeMetric for Buckets<'_> {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), fmt::Error> {
        let (buckets, count, sum) = self.0;
        encoder.encode_histogram::<NoLabelSet>(*sum, *count, buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> fmt::Result {
    e.encode_descriptor(name, help, None, MetricType::Counter)?
        .encode_counter::<NoLabelSet, _, u64>(&v, None)
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> fmt::Result {
    let v = i64::try_from(v).unwrap_or(i64::MAX);
    e.encode_descriptor(name, help, None, MetricType::Gauge)?
        .encode_gauge(&v)
}

/// A counter family with one label.
fn counters(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &'static str,
    values: &[(&'static str, u64)],
) -> fmt::Result {
    let mut family = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value, v) in values {
        family
            .encode_family(&[(label, *value)])?
            .encode_counter::<NoLabelSet, _, u64>(v, None)?;
    }
    Ok(())
}

impl Collector for Snapshot {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), fmt::Error> {
        let e = &mut e;
        gauge(
            e,
            "herald_connections",
            "Open WebSocket connections on this node.",
            self.connections,
        )?;
        gauge(
            e,
            "herald_users",
            "Distinct users connected to this node.",
            self.users,
        )?;
        gauge(
            e,
            "herald_channels",
            "Channels this node holds (subscribers or history).",
            self.channels,
        )?;
        gauge(
            e,
            "herald_history_bytes",
            "Bytes of channel history this node caches (limits.history_bytes).",
            self.history_bytes,
        )?;
        gauge(
            e,
            "herald_queue_depth",
            "Frames queued to all connections, not yet written.",
            self.queued,
        )?;
        gauge(
            e,
            "herald_queue_depth_max",
            "Frames queued to the most backed-up connection.",
            self.queued_max,
        )?;
        counters(
            e,
            "herald_publications",
            "Publications accepted on this node, by where they entered.",
            "source",
            &self.accepted,
        )?;
        counter(
            e,
            "herald_publications_delivered",
            "Publications this node delivered to its connections (from any node).",
            self.delivered_publications,
        )?;
        counter(
            e,
            "herald_deliveries",
            "Frames queued to connections (one per recipient).",
            self.deliveries,
        )?;
        counters(
            e,
            "herald_dropped",
            "Frames dropped, by reason.",
            "reason",
            &[
                ("slow_consumer", self.dropped_slow),
                ("drop_oldest", self.dropped_oldest),
            ],
        )?;
        counters(
            e,
            "herald_refusals",
            "Refused requests, connections and messages, by reason.",
            "reason",
            &self.refusals,
        )?;
        counter(
            e,
            "herald_slow_consumer_disconnects",
            "Connections closed with 4000 because their queue was full.",
            self.slow_consumer_disconnects,
        )?;
        counter(
            e,
            "herald_compressed_deliveries",
            "Frames written compressed (permessage-deflate).",
            self.compressed_deliveries,
        )?;
        counter(
            e,
            "herald_compression_saved_bytes",
            "Bytes not written thanks to permessage-deflate.",
            self.compression_saved_bytes,
        )?;
        let latency = e.encode_descriptor(
            "herald_delivery_latency_seconds",
            "Publication accepted to frame written to the socket.",
            None,
            MetricType::Histogram,
        )?;
        Buckets(&self.latency).encode(latency)?;
        gauge(
            e,
            "herald_broker_up",
            "1 while cross-node delivery works (always 1 on one node).",
            u64::from(self.broker_up),
        )?;
        counter(
            e,
            "herald_broker_reconnects",
            "Times this node lost Redis and reconnected (each outage once).",
            self.broker_outages,
        )?;
        counter(
            e,
            "herald_publications_repeated",
            "Publications answered as repeats of an idempotency key (nothing delivered).",
            self.repeated,
        )?;
        counter(
            e,
            "herald_relay_skipped",
            "Upstream relay messages dropped: not JSON, not a sync event, no usable user id, or refused.",
            self.relay_skipped,
        )?;
        let [sent, retries, failed, dropped] = self.webhooks;
        for (name, help, v) in [
            (
                "herald_webhooks_sent",
                "Presence webhook events the receiver took (2xx).",
                sent,
            ),
            (
                "herald_webhook_retries",
                "Presence webhook attempts that failed and were tried again.",
                retries,
            ),
            (
                "herald_webhooks_failed",
                "Presence webhook events given up (out of attempts, refused, or shutdown).",
                failed,
            ),
            (
                "herald_webhooks_dropped",
                "Presence events dropped because the webhook queue was full.",
                dropped,
            ),
        ] {
            counter(e, name, help, v)?;
        }
        counter(
            e,
            "herald_broker_degraded",
            "Publications delivered on this node only while Redis was away.",
            self.broker_degraded,
        )?;
        counter(
            e,
            "herald_broker_malformed",
            "Messages from Redis dropped because they did not parse or were misaddressed.",
            self.broker_malformed,
        )?;
        gauge(
            e,
            "herald_broker_following",
            "Channels this node is subscribed to on Redis.",
            self.following,
        )?;
        counter(
            e,
            "herald_store_errors",
            "Store operations that failed.",
            self.store_errors,
        )?;
        e.encode_descriptor("herald_build", "The running build.", None, MetricType::Info)?
            .encode_info(&[("version", crate::VERSION), ("commit", crate::COMMIT)])?;
        Ok(())
    }
}

pub async fn metrics(State(app): State<App>, headers: HeaderMap) -> Result<Response, ApiError> {
    if !app.cfg().metrics.public {
        authorize(&app, &headers)?;
    }
    let mut registry = Registry::default();
    registry.register_collector(Box::new(snapshot(&app)));
    let mut body = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut body, &registry)
        .map_err(|_| ApiError::new(ErrorCode::Internal, "the metrics could not be encoded"))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        )],
        body,
    )
        .into_response())
}
