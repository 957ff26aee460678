//! What a bench run measured ([`Report`]) and how it is told: the human summary
//! ([`Report::render`]).

use std::collections::HashMap;
use std::time::Duration;

use hdrhistogram::Histogram;

use super::client::End;
use super::{publisher, stamp, ws_publisher, BenchArgs, PublisherKind};

/// What a run measured.
pub struct Report {
    pub requested: usize,
    pub connected: usize,
    pub connect_errors: HashMap<String, u64>,
    pub connect_time: Duration,
    pub publisher: publisher::Outcome,
    pub received: u64,
    pub other_text: u64,
    pub pings: u64,
    pub ends: HashMap<End, u64>,
    pub unreported: usize,
    pub latency_us: Histogram<u64>,
    /// First publication → last delivery.
    pub delivery_window: Option<Duration>,
    /// RSS (KiB) before and after the clients connected, and whose.
    pub rss: Option<(u64, u64, &'static str)>,
    pub server_stats: Option<serde_json::Value>,
    /// CPU seconds used during the publishing phase: (this process, server, wall).
    pub cpu: Option<(f64, Option<f64>, f64)>,
}

/// How publications are sent, for the report.
fn publisher_name(args: &BenchArgs) -> String {
    match (args.publisher, args.batch) {
        (PublisherKind::Ws, _) => format!(
            "pipelined over /ws (up to {} in flight)",
            ws_publisher::WINDOW
        ),
        (PublisherKind::Http, 1) => "one per POST /api/publish".to_owned(),
        (PublisherKind::Http, n) => format!("{n} per POST /api/publish/batch"),
    }
}

/// What the publisher targets, for messages: `all` or `channel NAME`.
pub fn target_name(args: &BenchArgs) -> String {
    match &args.channel {
        Some(c) => format!("channel {c}"),
        None => "all".to_owned(),
    }
}

impl Report {
    /// The human summary, one line per figure (`scripts/bench-peers` reads some of them).
    pub fn render(&self, args: &BenchArgs, url: &str) -> String {
        use std::fmt::Write;
        let mut o = String::new();
        let p = &self.publisher;
        let where_ = if args.spawn_server {
            "in-process node"
        } else {
            "external"
        };
        let _ = writeln!(o, "herald bench — fan-out to {}", target_name(args));
        let _ = writeln!(o, "  server          {url} ({where_})");
        let _ = writeln!(
            o,
            "  clients         {} connected of {} in {:.2} s{}",
            self.connected,
            self.requested,
            self.connect_time.as_secs_f64(),
            if args.channel.is_some() {
                " (each subscribed)"
            } else {
                ""
            }
        );
        let mut errors: Vec<_> = self.connect_errors.iter().collect();
        errors.sort_by(|a, b| b.1.cmp(a.1));
        for (e, n) in errors.iter().take(5) {
            let _ = writeln!(o, "    failed        {n} × {e}");
        }
        let _ =
            writeln!(
            o,
            "  publications    {} sent ({} ok, {} failed) at {}/s for {} s, in {:.2} s; data {} B; {}",
            p.sent,
            p.ok,
            p.failed,
            args.rate,
            args.duration,
            p.elapsed.as_secs_f64(),
            stamp::encode_data(0, args.payload as usize).len().max(args.payload as usize),
            publisher_name(args)
        );
        if let Some(e) = &p.first_error {
            let _ = writeln!(o, "    first error   {e}");
        }
        if p.cap_waits > 0 || p.skipped > 0 {
            let _ = writeln!(o, "    pacing        {} ticks waited for a free request slot, {} skipped at the deadline", p.cap_waits, p.skipped);
        }
        let _ = writeln!(
            o,
            "  expected        {} deliveries (sum of `queued`)",
            p.queued
        );
        let pct = if p.queued > 0 {
            100.0 * self.received as f64 / p.queued as f64
        } else {
            0.0
        };
        let _ = writeln!(
            o,
            "  received        {} deliveries ({pct:.2} % of expected)",
            self.received
        );
        match self.delivery_window {
            Some(w) => {
                let _ = writeln!(
                    o,
                    "  throughput      {:.0} deliveries/s (over {:.2} s, first publication → last delivery)",
                    self.received as f64 / w.as_secs_f64(),
                    w.as_secs_f64()
                );
            }
            None => {
                let _ = writeln!(o, "  throughput      n/a (nothing received)");
            }
        }
        let h = &self.latency_us;
        if h.is_empty() {
            let _ = writeln!(o, "  latency         n/a");
        } else {
            let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
            let _ = writeln!(
                o,
                "  latency (ms)    p50 {:.2}  p95 {:.2}  p99 {:.2}  max {:.2}  (publish request → client read)",
                ms(0.50),
                ms(0.95),
                ms(0.99),
                h.max() as f64 / 1000.0
            );
        }
        if self.other_text > 0 || self.pings > 0 {
            let _ = writeln!(
                o,
                "  other frames    {} unstamped text, {} pings answered",
                self.other_text, self.pings
            );
        }
        let mut ends: Vec<_> = self.ends.iter().collect();
        ends.sort_by(|a, b| b.1.cmp(a.1));
        for (end, n) in ends.iter().take(5) {
            let _ = writeln!(o, "  ended early     {n} × {end:?}");
        }
        if self.unreported > 0 {
            let _ = writeln!(
                o,
                "  unreported      {} clients did not hand back stats in time",
                self.unreported
            );
        }
        if let Some(s) = &self.server_stats {
            #[allow(
                clippy::indexing_slicing,
                reason = "reading serde_json::Value by key yields Null when absent; never panics"
            )]
            let _ = writeln!(
                o,
                "  server stats    deliveries {}, dropped {}, slow-consumer disconnects {}, fan-out latency p99 {} ms",
                s["deliveries"], s["dropped"], s["slow_consumer_disconnects"], s["latency_ms"]["p99"]
            );
            #[allow(
                clippy::indexing_slicing,
                reason = "reading serde_json::Value by key yields Null when absent; never panics"
            )]
            let (compressed, saved) = (
                s["compression"]["deliveries"].as_u64().unwrap_or(0),
                s["compression"]["saved_bytes"].as_u64().unwrap_or(0),
            );
            if let Some(each) = saved.checked_div(compressed) {
                let _ = writeln!(
                    o,
                    "  compression     {compressed} deliveries compressed, {saved} bytes saved ({each} per delivery)",
                );
            }
        }
        if let Some((ours, theirs, wall)) = self.cpu {
            let share = |s: f64| 100.0 * s / wall;
            let us_per = |s: f64| {
                if self.received > 0 {
                    1e6 * s / self.received as f64
                } else {
                    0.0
                }
            };
            match theirs {
                Some(t) => {
                    let _ = writeln!(
                        o,
                        "  cpu (publish)   server {t:.2} s ({:.0} % of a core, {:.2} µs/delivery); bench {ours:.2} s ({:.0} %, {:.2} µs/delivery) over {wall:.2} s",
                        share(t),
                        us_per(t),
                        share(ours),
                        us_per(ours)
                    );
                }
                None => {
                    let whose = if args.spawn_server {
                        "server + bench, one process"
                    } else {
                        "bench only"
                    };
                    let _ = writeln!(o, "  cpu (publish)   {ours:.2} s ({:.0} % of a core, {:.2} µs/delivery) over {wall:.2} s ({whose})", share(ours), us_per(ours));
                }
            }
        }
        match self.rss {
            Some((before, after, whose)) => {
                let per = if self.connected > 0 {
                    after.saturating_sub(before) as f64 / self.connected as f64
                } else {
                    0.0
                };
                let _ = writeln!(
                    o,
                    "  memory          RSS {:.1} MiB → {:.1} MiB with {} idle connections: {per:.1} KiB per connection ({whose})",
                    before as f64 / 1024.0,
                    after as f64 / 1024.0,
                    self.connected
                );
                if args.spawn_server {
                    let _ = writeln!(o, "                  (in-process: includes the bench clients' own sockets and buffers, so it overstates the server)");
                }
            }
            None if !args.spawn_server => {
                let _ = writeln!(
                    o,
                    "  memory          n/a (give --server-pid to read the server's RSS)"
                );
            }
            None => {}
        }
        o
    }
}
