//! What a bench run measured ([`Report`]) and how it is told: the human summary
//! ([`Report::render`]) and, with `--json`, one line of JSON for scripts
//! (`scripts/plot-bench`, `scripts/bench-peers`).

use std::collections::HashMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use super::client::End;
use super::{publisher, stamp, ws_publisher, Audience, BenchArgs, PublisherKind};

/// What a run measured.
pub struct Report {
    pub requested: usize,
    pub connected: usize,
    pub connect_errors: HashMap<String, u64>,
    pub connect_time: Duration,
    pub publisher: publisher::Outcome,
    pub received: u64,
    /// Deliveries stamped lower than their client's previous one, over all clients.
    pub reordered: u64,
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

/// What the publisher targets, for messages: `all`, `channel NAME` or `user ID`.
pub fn target_name(args: &BenchArgs) -> String {
    match Audience::of(args) {
        Audience::All => "all".to_owned(),
        Audience::Channel(c) => format!("channel {c}"),
        Audience::User(u) => format!("user {u}"),
    }
}

/// What the JSON line says about the run besides the report: who, when, which build.
pub struct Run<'a> {
    pub label: &'a str,
    /// RFC 3339, UTC, when the run started.
    pub started_at: &'a str,
    pub url: &'a str,
    pub version: &'a str,
    pub commit: &'a str,
}

/// The quantiles the report gives, as (JSON name, quantile).
const QUANTILES: [(&str, f64); 5] = [
    ("p50", 0.50),
    ("p90", 0.90),
    ("p95", 0.95),
    ("p99", 0.99),
    ("p99_9", 0.999),
];

/// Rounds to 3 decimals: the JSON carries what the measurement resolves, not float noise.
fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The size of each publication's `data` string: `--payload`, or the stamp alone if
/// that is longer.
fn data_bytes(args: &BenchArgs) -> usize {
    let payload = args.payload as usize;
    stamp::encode_data(0, payload).len().max(payload)
}

/// A count map (`connect_errors`, `ended_early`) as a JSON object.
fn counts<K: std::fmt::Debug>(map: &HashMap<K, u64>, key: impl Fn(&K) -> String) -> Value {
    Value::Object(map.iter().map(|(k, n)| (key(k), Value::from(*n))).collect())
}

impl Report {
    /// The deliveries the server said it queued: the sum of `queued`, or with the WS
    /// publisher or `--spread-url` acked publications × connected clients.
    fn expected(&self) -> u64 {
        self.publisher.queued
    }

    /// Latency quantile `q` in ms, `None` without deliveries.
    fn latency_ms(&self, q: f64) -> Option<f64> {
        let h = &self.latency_us;
        (!h.is_empty()).then(|| h.value_at_quantile(q) as f64 / 1000.0)
    }

    /// Deliveries per second over first publication → last delivery.
    fn deliveries_per_s(&self) -> Option<f64> {
        self.delivery_window
            .map(|w| self.received as f64 / w.as_secs_f64())
    }

    /// Server CPU seconds over the publishing phase (`--server-pid` only).
    fn server_cpu(&self) -> Option<f64> {
        self.cpu.and_then(|(_, theirs, _)| theirs)
    }

    /// RSS growth per connected client, KiB.
    fn kib_per_connection(&self) -> Option<f64> {
        let (before, after, _) = self.rss?;
        (self.connected > 0).then(|| after.saturating_sub(before) as f64 / self.connected as f64)
    }

    /// A field of `/api/stats`, if the server answered it (a peer server does not).
    fn stat(&self, path: &[&str]) -> Value {
        let mut v = self.server_stats.as_ref();
        for key in path {
            v = v.and_then(|v| v.get(key));
        }
        v.cloned().unwrap_or(Value::Null)
    }

    /// What the connect errors suggest the operator change, if they name a server cap:
    /// herald refuses the upgrade with `too many connections for this user` (or `…this
    /// address`), which `--user` and one source address run into first.
    pub fn refusal_hint(&self, args: &BenchArgs) -> Option<String> {
        let seen = |what: &str| self.connect_errors.keys().any(|e| e.contains(what));
        if seen("for this user") || (args.user.is_some() && seen("HTTP 429")) {
            return Some(format!(
                "the server caps connections per user (limits.connections_per_user, default \
                 100) and every client is user {:?}: raise it to at least {}, e.g. \
                 HERALD_LIMITS__CONNECTIONS_PER_USER={}",
                args.user.as_deref().unwrap_or("?"),
                self.requested,
                self.requested
            ));
        }
        if seen("for this address") {
            return Some(format!(
                "the server caps connections per client address (limits.connections_per_ip): \
                 raise it (HERALD_LIMITS__CONNECTIONS_PER_IP={}), or spread the clients with \
                 --source-addrs",
                self.requested
            ));
        }
        None
    }

    /// The JSON line: one object with every figure of the report, `null` where a figure
    /// is not known (no `--server-pid`, nothing received, a server without `/api/stats`).
    /// Field names are documented in docs/bench.md; add, never rename.
    pub fn json(&self, args: &BenchArgs, run: &Run<'_>) -> Value {
        let p = &self.publisher;
        let audience = Audience::of(args);
        let latency: serde_json::Map<String, Value> = QUANTILES
            .iter()
            .map(|(name, q)| ((*name).to_owned(), json!(self.latency_ms(*q))))
            .chain(std::iter::once((
                "max".to_owned(),
                json!((!self.latency_us.is_empty()).then(|| self.latency_us.max() as f64 / 1000.0)),
            )))
            .collect();
        let server_cpu = self.server_cpu();
        let per_server_cpu_s = server_cpu
            .filter(|c| *c > 0.0)
            .map(|c| (self.received as f64 / c).round());
        let (rss_before, rss_after, rss_of) = match self.rss {
            Some((b, a, whose)) => (Some(b), Some(a), Some(whose)),
            None => (None, None, None),
        };
        // In parts: one `json!` this long exceeds the macro's recursion limit.
        let the_run = json!({
            "label": run.label,
            "herald_version": run.version,
            "herald_commit": run.commit,
            "timestamp": run.started_at,
            "server_url": run.url,
            "server": if args.spawn_server { "in-process" } else { "external" },
            "nodes": 1 + args.spread_urls.len(),
            "clients_requested": self.requested,
            "clients_connected": self.connected,
            "connect_s": round3(self.connect_time.as_secs_f64()),
            "connect_errors": counts(&self.connect_errors, String::clone),
        });
        let the_load = json!({
            "source_addrs": args.source_addrs,
            "deflate": args.deflate,
            "publisher": match args.publisher {
                PublisherKind::Http => "http",
                PublisherKind::Ws => "ws",
            },
            "batch": args.batch,
            "target": audience.kind(),
            "target_name": audience.name(),
            "payload_bytes": data_bytes(args),
            "rate": args.rate,
            "duration_s": args.duration,
            "publications_sent": p.sent,
            "publications_ok": p.ok,
            "publications_failed": p.failed,
            "publications_skipped": p.skipped,
            "publish_s": round3(p.elapsed.as_secs_f64()),
            "publish_cap_waits": p.cap_waits,
            "first_error": p.first_error,
        });
        let deliveries = json!({
            "deliveries_expected": self.expected(),
            "deliveries_received": self.received,
            "loss": i128::from(self.expected()) - i128::from(self.received),
            "reorderings": self.reordered,
            "latency_ms": latency,
            "deliveries_per_s": self.deliveries_per_s().map(f64::round),
            "delivery_window_s": self.delivery_window.map(|w| round3(w.as_secs_f64())),
            "other_text": self.other_text,
            "pings": self.pings,
            "ended_early": counts(&self.ends, |e| format!("{e:?}")),
            "unreported": self.unreported,
        });
        let costs = json!({
            "publish_wall_s": self.cpu.map(|(_, _, wall)| round3(wall)),
            "bench_cpu_s": self.cpu.map(|(ours, _, _)| round3(ours)),
            "server_cpu_s": server_cpu.map(round3),
            "deliveries_per_server_cpu_s": per_server_cpu_s,
            "server_rss_before_kib": rss_before,
            "server_rss_after_kib": rss_after,
            "rss_kib_per_connection": self.kib_per_connection().map(round3),
            "rss_of": rss_of,
            "server_deliveries": self.stat(&["deliveries"]),
            "server_dropped": self.stat(&["dropped"]),
            "server_slow_consumer_disconnects": self.stat(&["slow_consumer_disconnects"]),
            "server_fanout_p99_ms": self.stat(&["latency_ms", "p99"]),
            "compression_deliveries": self.stat(&["compression", "deliveries"]),
            "compression_saved_bytes": self.stat(&["compression", "saved_bytes"]),
        });
        let mut all = serde_json::Map::new();
        for part in [the_run, the_load, deliveries, costs] {
            if let Value::Object(fields) = part {
                all.extend(fields);
            }
        }
        Value::Object(all)
    }

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
            "  clients         {} connected of {} in {:.2} s{}{}",
            self.connected,
            self.requested,
            self.connect_time.as_secs_f64(),
            match Audience::of(args) {
                Audience::Channel(_) => " (each subscribed)".to_owned(),
                Audience::User(u) => format!(" (all as user {u})"),
                Audience::All => String::new(),
            },
            if args.source_addrs > 1 {
                format!(", from 127.0.0.1–127.0.0.{}", args.source_addrs)
            } else {
                String::new()
            }
        );
        let mut errors: Vec<_> = self.connect_errors.iter().collect();
        errors.sort_by(|a, b| b.1.cmp(a.1));
        for (e, n) in errors.iter().take(5) {
            let _ = writeln!(o, "    failed        {n} × {e}");
        }
        if let Some(hint) = self.refusal_hint(args) {
            let _ = writeln!(o, "    hint          {hint}");
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
            data_bytes(args),
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
            "  expected        {} deliveries ({})",
            p.queued,
            if args.publisher == PublisherKind::Ws || !args.spread_urls.is_empty() {
                "acked publications × connected clients"
            } else {
                "sum of `queued`"
            }
        );
        let pct = if p.queued > 0 {
            100.0 * self.received as f64 / p.queued as f64
        } else {
            0.0
        };
        let loss = i128::from(p.queued) - i128::from(self.received);
        let _ = writeln!(
            o,
            "  received        {} deliveries ({pct:.2} % of expected, loss {loss})",
            self.received
        );
        let _ = writeln!(
            o,
            "  order           {} reorderings (deliveries stamped before their client's previous one){}",
            self.reordered,
            if self.reordered > 0 && args.publisher == PublisherKind::Http {
                "; HTTP requests in flight together may overtake each other on the way in"
            } else {
                ""
            }
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
                "  latency (ms)    p50 {:.2}  p90 {:.2}  p95 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}  (publish request → client read)",
                ms(0.50),
                ms(0.90),
                ms(0.95),
                ms(0.99),
                ms(0.999),
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn args(flags: &[&str]) -> BenchArgs {
        Cli::try_parse_from(std::iter::once("bench").chain(flags.iter().copied()))
            .unwrap()
            .bench
    }

    /// Every field of the JSON line, as docs/bench.md lists them.
    const FIELDS: &[&str] = &[
        "label",
        "herald_version",
        "herald_commit",
        "timestamp",
        "server_url",
        "server",
        "nodes",
        "clients_requested",
        "clients_connected",
        "connect_s",
        "connect_errors",
        "source_addrs",
        "deflate",
        "publisher",
        "batch",
        "target",
        "target_name",
        "payload_bytes",
        "rate",
        "duration_s",
        "publications_sent",
        "publications_ok",
        "publications_failed",
        "publications_skipped",
        "publish_s",
        "publish_cap_waits",
        "first_error",
        "deliveries_expected",
        "deliveries_received",
        "loss",
        "reorderings",
        "latency_ms",
        "deliveries_per_s",
        "delivery_window_s",
        "other_text",
        "pings",
        "ended_early",
        "unreported",
        "publish_wall_s",
        "bench_cpu_s",
        "server_cpu_s",
        "deliveries_per_server_cpu_s",
        "server_rss_before_kib",
        "server_rss_after_kib",
        "rss_kib_per_connection",
        "rss_of",
        "server_deliveries",
        "server_dropped",
        "server_slow_consumer_disconnects",
        "server_fanout_p99_ms",
        "compression_deliveries",
        "compression_saved_bytes",
    ];

    const RUN: Run<'static> = Run {
        label: "uws",
        started_at: "2026-12-03T10:00:00.000Z",
        url: "http://127.0.0.1:9",
        version: "0.1.0",
        commit: "abc1234",
    };

    fn empty() -> Report {
        Report {
            requested: 10,
            connected: 0,
            connect_errors: HashMap::from([("HTTP 429".to_owned(), 10)]),
            connect_time: Duration::from_millis(1500),
            publisher: publisher::Outcome::default(),
            received: 0,
            reordered: 0,
            other_text: 0,
            pings: 0,
            ends: HashMap::new(),
            unreported: 0,
            latency_us: Histogram::new_with_bounds(1, 60_000_000, 2).unwrap(),
            delivery_window: None,
            rss: None,
            server_stats: None,
            cpu: None,
        }
    }

    /// 4 clients × 250 publications, 990 received, 3 reordered; 1 000 µs latency each
    /// but one of 9 ms; server and bench CPU, RSS, herald's `/api/stats`.
    fn full() -> Report {
        let mut latency_us = Histogram::new_with_bounds(1, 60_000_000, 2).unwrap();
        latency_us.record_n(1000, 989).unwrap();
        latency_us.record(9000).unwrap();
        Report {
            requested: 4,
            connected: 4,
            connect_errors: HashMap::new(),
            connect_time: Duration::from_millis(12),
            publisher: publisher::Outcome {
                sent: 250,
                ok: 250,
                queued: 1000,
                elapsed: Duration::from_secs(5),
                ..Default::default()
            },
            received: 990,
            reordered: 3,
            other_text: 0,
            pings: 1,
            ends: HashMap::from([(End::ServerClose(Some(1008)), 1)]),
            unreported: 0,
            latency_us,
            delivery_window: Some(Duration::from_millis(4950)),
            rss: Some((8000, 8020, "server process")),
            server_stats: Some(json!({
                "deliveries": 990, "dropped": 10, "slow_consumer_disconnects": 1,
                "latency_ms": {"p99": 1.5},
                "compression": {"deliveries": 900, "saved_bytes": 45000},
            })),
            cpu: Some((0.5, Some(0.25), 5.0)),
        }
    }

    fn keys(v: &Value) -> Vec<String> {
        let mut k: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    }

    #[test]
    fn the_json_line_has_every_field_even_when_unknown() {
        let mut want: Vec<String> = FIELDS.iter().map(|f| (*f).to_owned()).collect();
        want.sort();
        let a = args(&["--clients", "4", "--json"]);
        let full = full().json(&a, &RUN);
        let empty = empty().json(&a, &RUN);
        assert_eq!(keys(&full), want);
        assert_eq!(keys(&empty), want);
        let quantiles = ["max", "p50", "p90", "p95", "p99", "p99_9"];
        assert_eq!(keys(&full["latency_ms"]), quantiles);
        assert_eq!(keys(&empty["latency_ms"]), quantiles);
        // One line: what scripts read with `grep '^{'` and `json.loads` per line.
        let line = full.to_string();
        assert!(!line.contains('\n') && line.starts_with('{') && line.ends_with('}'));
        assert_eq!(serde_json::from_str::<Value>(&line).unwrap(), full);
    }

    #[test]
    fn the_json_line_holds_the_figures() {
        let a = args(&[
            "--clients",
            "4",
            "--user",
            "u1",
            "--label",
            "x",
            "--rate",
            "50",
        ]);
        let v = full().json(&a, &RUN);
        assert_eq!(v["label"], "uws", "the label comes from the run");
        assert_eq!(
            (&v["herald_version"], &v["herald_commit"]),
            (&json!("0.1.0"), &json!("abc1234"))
        );
        assert_eq!(v["timestamp"], "2026-12-03T10:00:00.000Z");
        assert_eq!(
            (&v["target"], &v["target_name"]),
            (&json!("user"), &json!("u1"))
        );
        assert_eq!((&v["publisher"], &v["batch"]), (&json!("http"), &json!(1)));
        assert_eq!((&v["rate"], &v["duration_s"]), (&json!(50), &json!(10)));
        assert_eq!(v["payload_bytes"], 100);
        assert_eq!(v["clients_connected"], 4);
        assert_eq!(v["connect_s"], 0.012);
        assert_eq!(v["deliveries_expected"], 1000);
        assert_eq!(v["deliveries_received"], 990);
        assert_eq!(v["loss"], 10);
        assert_eq!(v["reorderings"], 3);
        // Two significant digits: within 1 % of what was recorded.
        let near = |v: &Value, want: f64| (v.as_f64().unwrap() - want).abs() <= want / 100.0;
        assert!(near(&v["latency_ms"]["p50"], 1.0), "{}", v["latency_ms"]);
        assert!(near(&v["latency_ms"]["p99"], 1.0), "{}", v["latency_ms"]);
        assert!(near(&v["latency_ms"]["p99_9"], 9.0), "{}", v["latency_ms"]);
        assert!(near(&v["latency_ms"]["max"], 9.0), "{}", v["latency_ms"]);
        assert_eq!(v["deliveries_per_s"], 200.0);
        assert_eq!(
            (&v["bench_cpu_s"], &v["server_cpu_s"]),
            (&json!(0.5), &json!(0.25))
        );
        assert_eq!(v["deliveries_per_server_cpu_s"], 3960.0);
        assert_eq!(v["rss_kib_per_connection"], 5.0);
        assert_eq!(
            (&v["server_rss_before_kib"], &v["server_rss_after_kib"]),
            (&json!(8000), &json!(8020))
        );
        assert_eq!(v["server_dropped"], 10);
        assert_eq!(v["server_fanout_p99_ms"], 1.5);
        assert_eq!(v["compression_saved_bytes"], 45000);
        assert_eq!(v["ended_early"], json!({"ServerClose(Some(1008))": 1}));
        assert_eq!(v["server"], "external");
    }

    #[test]
    fn unknown_figures_are_null() {
        let v = empty().json(&args(&["--channel", "news"]), &RUN);
        for field in [
            "target_name",
            "deliveries_per_s",
            "server_cpu_s",
            "bench_cpu_s",
            "deliveries_per_server_cpu_s",
            "server_rss_before_kib",
            "rss_kib_per_connection",
            "server_dropped",
            "compression_deliveries",
            "first_error",
        ] {
            let want = if field == "target_name" {
                json!("news")
            } else {
                Value::Null
            };
            assert_eq!(v[field], want, "{field}");
        }
        assert!(v["latency_ms"]
            .as_object()
            .unwrap()
            .values()
            .all(Value::is_null));
        assert_eq!(v["connect_errors"], json!({"HTTP 429": 10}));
        assert_eq!((&v["loss"], &v["reorderings"]), (&json!(0), &json!(0)));
        // Server CPU known but zero: no ratio rather than an infinite one.
        let mut idle = full();
        idle.cpu = Some((0.1, Some(0.0), 5.0));
        assert_eq!(
            idle.json(&args(&[]), &RUN)["deliveries_per_server_cpu_s"],
            Value::Null
        );
    }

    #[test]
    fn docs_list_every_field() {
        let doc =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/bench.md"))
                .unwrap();
        for field in FIELDS.iter().chain(&["p99_9", "p90"]) {
            assert!(
                doc.contains(&format!("`{field}`")),
                "docs/bench.md does not describe `{field}`"
            );
        }
    }

    #[test]
    fn the_summary_gives_p90_p99_9_and_reorderings() {
        let text = full().render(&args(&[]), "http://x");
        let latency = text
            .lines()
            .find(|l| l.starts_with("  latency (ms)"))
            .unwrap();
        for q in [
            "p50 1.00",
            "p90 1.00",
            "p95 1.00",
            "p99 1.00",
            "p99.9 9.0",
            "max 9.0",
        ] {
            assert!(latency.contains(q), "{latency}");
        }
        assert!(text.contains("  order           3 reorderings"), "{text}");
        assert!(text.contains("loss 10"), "{text}");
    }

    #[test]
    fn a_full_user_cap_says_what_to_raise() {
        let a = args(&["--clients", "10", "--user", "u1"]);
        let text = empty().render(&a, "http://x");
        assert!(
            text.contains("hint") && text.contains("HERALD_LIMITS__CONNECTIONS_PER_USER=10"),
            "{text}"
        );
        let mut r = empty();
        r.connect_errors = HashMap::from([(
            "HTTP 429: too many connections for this address".to_owned(),
            10,
        )]);
        assert!(r
            .refusal_hint(&args(&[]))
            .unwrap()
            .contains("connections_per_ip"));
        r.connect_errors = HashMap::from([("timeout".to_owned(), 10)]);
        assert_eq!(r.refusal_hint(&a), None);
        // Without --user a bare 429 is not pinned on the user cap.
        r.connect_errors = HashMap::from([("HTTP 429".to_owned(), 10)]);
        assert_eq!(r.refusal_hint(&args(&[])), None);
    }
}
