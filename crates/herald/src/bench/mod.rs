//! `herald bench`: the load generator — N WebSocket clients, one publisher fanning out to
//! all of them at a fixed rate, then deliveries/s, latency percentiles and memory.
//! With `--channel NAME` every client subscribes to `NAME` right after `connected`, and the
//! publisher targets that channel instead of `all` (channel fan-out: history, offsets);
//! with `--user ID` every client connects as `ID` and the publisher targets that user.
//!
//! A load generator that costs more per message than the server measures itself, not the
//! server: on a small machine the two share the cores. So the clients use no WebSocket
//! library: a plain `TcpStream`, the upgrade written by hand, and herald's own codec in the
//! client role ([`MessageReader`](crate::ws::message::MessageReader) with
//! `expect_masked = false`, masked frames built with
//! [`put_header`](crate::ws::frame::put_header) and
//! [`apply_mask`](crate::ws::frame::apply_mask)). A client reads whatever the kernel has
//! (up to 8 KiB) per wake-up, decodes frames in place, finds the send stamp with a byte
//! search (no JSON parsing), and records into its own histogram: nothing is shared on the
//! hot path but one relaxed counter bumped once per read.
//!
//! Latency is end to end: the publisher stamps `data` with the time since an `Instant`
//! shared with the clients just before `POST /api/publish`, so it includes the HTTP request,
//! the fan-out, the socket and the client's wake-up. Histograms keep two significant
//! digits (1 % resolution), which keeps them at ~20 KiB each for thousands of clients.
//!
//! Everything is bounded: connects (64 at a time, 5 s each, 120 s for the phase), the
//! publications (`rate × duration`), the wait for stragglers (2 s) and the teardown.
//! The open-files soft limit is raised to the hard limit at start, as `herald serve` does
//! ([`open_files`]); a run that needs more than the hard limit is refused up front.

pub mod client;
mod publisher;
mod report;
mod source;
mod stamp;
mod sys;
mod ws_publisher;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use hdrhistogram::Histogram;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::cli::open_files;
use crate::config::secrets::{self, API_KEY_FILE, HMAC_SECRET_FILE};
use crate::config::{Config, LimitsConfig};
use crate::{Node, ServeOptions};
use client::{ClientStats, End, Target};
use report::{target_name, Report};

/// Connects in progress at once.
const CONNECT_CONCURRENCY: usize = 64;
/// One connect: TCP, upgrade and the `connected` frame.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The whole connect phase.
const CONNECT_PHASE_LIMIT: Duration = Duration::from_secs(120);
/// Let the server settle before the "after" RSS reading.
const SETTLE: Duration = Duration::from_millis(500);
/// How long to wait for deliveries still in flight after the last publication.
const STRAGGLERS: Duration = Duration::from_secs(2);
/// How long clients get to hand back their stats.
const TEARDOWN: Duration = Duration::from_secs(5);
/// File descriptors kept free for the runtime, the publisher's pool and the like.
const FD_MARGIN: u64 = 100;
/// Latency histogram range, µs (larger values are clamped).
const MAX_LATENCY_US: u64 = 60_000_000;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Server base URL (plain http); clients connect to ws://<host:port>/ws.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Data directory with the server's `api_key` and `hmac_secret`.
    #[arg(long, default_value = "./herald-data")]
    pub data_dir: PathBuf,
    /// WebSocket clients to connect (each is its own user, bench-<i>, unless --user).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub clients: u32,
    /// Publications per second (each to everyone, to every `--channel` subscriber, or to
    /// every connection of the `--user`).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub rate: u32,
    /// Seconds to publish for.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub duration: u64,
    /// Size of each publication's `data` string, in bytes (at least the stamp).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=512 * 1024))]
    pub payload: u32,
    /// Start an in-process node (temporary data dir) instead of using --url.
    #[arg(long)]
    pub spawn_server: bool,
    /// PID of an external server, to read its RSS before and after the clients connect
    /// and its CPU time; repeat it for every node of a cluster (CPU is summed, RSS is the
    /// first one's).
    #[arg(long, conflicts_with = "spawn_server")]
    pub server_pid: Vec<u32>,
    /// Other nodes of the same cluster (`http://host:port`, repeatable): clients are
    /// spread round-robin over `--url` and these; publications go to `--url`, so most
    /// deliveries cross nodes. Expected deliveries are then publications × clients (a
    /// node's `queued` counts only its own clients).
    #[arg(long = "spread-url", value_name = "URL")]
    pub spread_urls: Vec<String>,
    /// Channel fan-out: every client subscribes to this channel (and counts as connected
    /// once `subscribed` is back), and the publisher publishes to it instead of `all`.
    #[arg(long, value_name = "NAME", value_parser = parse_channel)]
    pub channel: Option<String>,
    /// User fan-out: every client connects as this one user (instead of bench-<i>), and
    /// every publication targets `{"user": ID}`. The server admits at most
    /// `limits.connections_per_user` (default 100) connections per user: raise it for
    /// more clients (`HERALD_LIMITS__CONNECTIONS_PER_USER`).
    #[arg(long, value_name = "ID", value_parser = parse_user, conflicts_with = "channel")]
    pub user: Option<String>,
    /// Source addresses on loopback: client i binds to 127.0.0.(1 + i % K) before
    /// connecting, so that more clients than one address has ephemeral ports (~28k) can
    /// connect. 1 to 254; above 1 only for a server on an IPv4 loopback address.
    #[arg(long, value_name = "K", default_value_t = 1, value_parser = source::parse_source_addrs)]
    pub source_addrs: u32,
    /// After the summary, print one line of JSON with every figure of the report (for
    /// scripts/plot-bench; fields that are not known are null).
    #[arg(long)]
    pub json: bool,
    /// The run's name in the JSON line (scripts/plot-bench draws one line per label).
    #[arg(long, value_name = "TEXT", default_value = "herald")]
    pub label: String,
    /// Publications per request: 1 posts each to `/api/publish`; more posts them in
    /// groups to `/api/publish/batch` (at the same publication rate), as a backend that
    /// has many at once would.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub batch: u32,
    /// How publications are sent: `http` (`/api/publish`, or batches with `--batch`) or
    /// `ws` — the pipelined backend publisher: one `/ws` connection with the API key,
    /// many publications in flight, acks in order (DESIGN §7).
    #[arg(long, value_enum, default_value_t = PublisherKind::Http, conflicts_with = "batch")]
    pub publisher: PublisherKind,
    /// Clients offer permessage-deflate (as browsers do) and inflate what comes
    /// compressed; a client the server does not agree with counts as failed to connect.
    /// The server needs `ws.compression.enabled` (or a namespace with compression).
    #[arg(long)]
    pub deflate: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PublisherKind {
    Http,
    Ws,
}

/// `--channel`: the server's own channel-name rule, so that a name that passes needs no
/// JSON escaping and the server will not refuse it as malformed.
fn parse_channel(name: &str) -> Result<String, String> {
    crate::protocol::channel::validate_channel(name)?;
    Ok(name.to_owned())
}

/// `--user`: any text a token's `sub` may be (it is JSON-escaped where it is spliced), but
/// not empty, which the server refuses, nor control characters, which no real id has.
fn parse_user(id: &str) -> Result<String, String> {
    if id.is_empty() {
        return Err("a user id cannot be empty (the server refuses an empty `sub`)".into());
    }
    if id.chars().any(char::is_control) {
        return Err("a user id cannot hold control characters".into());
    }
    Ok(id.to_owned())
}

/// Who the publications are for: `--channel`, `--user`, or everyone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Audience {
    All,
    Channel(String),
    User(String),
}

impl Audience {
    /// From the flags (clap keeps `--channel` and `--user` apart).
    pub fn of(args: &BenchArgs) -> Audience {
        match (&args.channel, &args.user) {
            (Some(c), _) => Audience::Channel(c.clone()),
            (None, Some(u)) => Audience::User(u.clone()),
            (None, None) => Audience::All,
        }
    }

    /// `all`, `channel` or `user`: the JSON line's `target`.
    pub fn kind(&self) -> &'static str {
        match self {
            Audience::All => "all",
            Audience::Channel(_) => "channel",
            Audience::User(_) => "user",
        }
    }

    /// The channel or user, if any: the JSON line's `target_name`.
    pub fn name(&self) -> Option<&str> {
        match self {
            Audience::All => None,
            Audience::Channel(n) | Audience::User(n) => Some(n),
        }
    }

    /// The target member of a publication's JSON, built once per run: `"all":true`,
    /// `"channel":"news"` (a checked name: nothing to escape) or `"user":"…"` (escaped).
    pub fn member(&self) -> String {
        match self {
            Audience::All => r#""all":true"#.to_owned(),
            Audience::Channel(c) => format!(r#""channel":"{c}""#),
            Audience::User(u) => format!(r#""user":{}"#, serde_json::Value::from(u.as_str())),
        }
    }
}

/// Where the server is and what it takes to talk to it.
struct Server {
    base_url: String,
    authority: String,
    api_key: String,
    hmac_secret: String,
    spawned: Option<(Node, PathBuf)>,
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let started_at = crate::store::time::rfc3339(crate::store::time::now_ms());
    prepare_open_files(args.clients, args.spawn_server)?;
    let server = if args.spawn_server {
        spawn_server(&args).await?
    } else {
        external_server(&args)?
    };
    let result = bench(&args, &server).await;
    if let Some((node, dir)) = server.spawned {
        node.shutdown().await;
        let _ = std::fs::remove_dir_all(dir);
    }
    let report = result?;
    print!("{}", report.render(&args, &server.base_url));
    if args.json {
        let run = report::Run {
            label: &args.label,
            started_at: &started_at,
            url: &server.base_url,
            version: crate::VERSION,
            commit: crate::COMMIT,
        };
        println!("{}", report.json(&args, &run));
    }
    if report.connected == 0 {
        match report.refusal_hint(&args) {
            Some(hint) => anyhow::bail!("no client could connect: {hint}"),
            None => anyhow::bail!("no client could connect"),
        }
    }
    Ok(())
}

/// Raises our open-files limit to the hard limit (as `herald serve` does), says so, and
/// refuses a run that cannot fit under it: connects past the limit fail with EMFILE and
/// the publisher's own sockets with them, which would read as a server failing.
fn prepare_open_files(clients: u32, spawn_server: bool) -> anyhow::Result<()> {
    let limits = match open_files::raise() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("note: could not raise the open-files limit: {e}");
            match open_files::current() {
                Ok((soft, hard)) => open_files::OpenFiles {
                    before: soft,
                    soft,
                    hard,
                },
                Err(_) => return Ok(()),
            }
        }
    };
    if limits.raised() {
        eprintln!(
            "open-files limit raised from {} to {} (the hard limit)",
            limits.before, limits.soft
        );
    }
    open_files_verdict(clients, spawn_server, &limits).map_err(anyhow::Error::msg)
}

/// Whether `clients` fit under the open-files limits, and if not, what to do about it.
fn open_files_verdict(
    clients: u32,
    spawn_server: bool,
    limits: &open_files::OpenFiles,
) -> Result<(), String> {
    // In-process, each connection costs two descriptors: ours and the server's.
    let per_client = if spawn_server { 2 } else { 1 };
    let needed = u64::from(clients) * per_client + FD_MARGIN;
    let (soft, hard) = (limits.soft, limits.hard);
    if needed <= soft {
        return Ok(());
    }
    if soft < hard {
        return Err(format!(
            "--clients {clients} needs about {needed} open files; the soft limit is {soft} \
             and could not be raised to the hard limit {hard}: run `ulimit -n {hard}` in \
             this shell first (or lower --clients)"
        ));
    }
    Err(format!(
        "--clients {clients} needs about {needed} open files ({per_client} per client + \
         {FD_MARGIN}) but the hard limit is {hard}: lower --clients, or raise the hard limit \
         as root (`ulimit -Hn`, `LimitNOFILE=` for a systemd unit, /etc/security/limits.conf)"
    ))
}

/// A node in this process, on a temporary data dir, with the per-IP cap (and with
/// `--user` the per-user cap) raised to fit every client.
async fn spawn_server(args: &BenchArgs) -> anyhow::Result<Server> {
    let clients = args.clients as usize;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("herald-bench-{}-{stamp}", std::process::id()));
    let defaults = LimitsConfig::default();
    let cfg = Config {
        data_dir: dir.clone(),
        limits: LimitsConfig {
            connections_per_ip: defaults.connections_per_ip.max(clients + 10),
            connections_per_user: if args.user.is_some() {
                defaults.connections_per_user.max(clients + 10)
            } else {
                defaults.connections_per_user
            },
            ..defaults
        },
        ..Config::default()
    };
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot bind 127.0.0.1:0")?;
    let node = Node::start(listener, cfg, ServeOptions::default())
        .await
        .context("cannot start the in-process node")?;
    let authority = node.addr.to_string();
    Ok(Server {
        base_url: format!("http://{authority}"),
        authority,
        api_key: node.api_key.clone(),
        hmac_secret: node.hmac_secret.clone(),
        spawned: Some((node, dir)),
    })
}

/// `host:port` of a plain `http://` URL.
fn authority_of(url: &str) -> anyhow::Result<String> {
    let authority = match url.trim_end_matches('/').split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => {
            rest.split('/').next().unwrap_or_default().to_owned()
        }
        Some((scheme, _)) => {
            anyhow::bail!("{url}: the bench speaks plain http/ws only, not {scheme}")
        }
        None => anyhow::bail!("{url} must look like http://host:port"),
    };
    if authority.is_empty() {
        anyhow::bail!("{url} has no host");
    }
    Ok(authority)
}

fn external_server(args: &BenchArgs) -> anyhow::Result<Server> {
    let base_url = args.url.trim_end_matches('/').to_owned();
    let authority = authority_of(&base_url)?;
    let read = |name: &str| {
        secrets::read(&args.data_dir, name).with_context(|| {
            format!(
                "cannot read {}",
                secrets::path(&args.data_dir, name).display()
            )
        })
    };
    Ok(Server {
        base_url,
        authority,
        api_key: read(API_KEY_FILE)?,
        hmac_secret: read(HMAC_SECRET_FILE)?,
        spawned: None,
    })
}

async fn resolve(authority: &str) -> anyhow::Result<SocketAddr> {
    // No port (`host`, `[::1]`): http's 80.
    let with_port = if authority.ends_with(']') || !authority.contains(':') {
        format!("{authority}:80")
    } else {
        authority.to_owned()
    };
    let mut addrs = tokio::net::lookup_host(with_port.as_str())
        .await
        .with_context(|| format!("cannot resolve {with_port}"))?;
    addrs
        .next()
        .with_context(|| format!("{with_port} resolves to no address"))
}

async fn bench(args: &BenchArgs, server: &Server) -> anyhow::Result<Report> {
    let clients = args.clients as usize;
    let mut authorities = vec![server.authority.clone()];
    for url in &args.spread_urls {
        authorities.push(authority_of(url)?);
    }
    let audience = Audience::of(args);
    let mut targets = Vec::new();
    for authority in &authorities {
        let addr = resolve(authority).await?;
        source::check_reachable(args.source_addrs, addr).map_err(anyhow::Error::msg)?;
        targets.push(Arc::new(Target {
            addr,
            host: authority.clone(),
            hmac_secret: server.hmac_secret.clone(),
            subscribe: args.channel.as_deref().map(client::subscribe_message),
            deflate: args.deflate,
            user: args.user.clone(),
            source_addrs: args.source_addrs,
        }));
    }
    warn_if_short_of_ports(args);
    let http = reqwest::Client::builder()
        .build()
        .context("cannot build the HTTP client")?;
    let template = Arc::new(
        Histogram::<u64>::new_with_bounds(1, MAX_LATENCY_US, 2).context("histogram bounds")?,
    );
    let base = Instant::now();
    let received_total = Arc::new(AtomicU64::new(0));
    let stop = CancellationToken::new();

    let rss_pid = match (args.spawn_server, args.server_pid.first().copied()) {
        (true, _) => Some((None, "this process: in-process server + clients")),
        (false, Some(pid)) => Some((Some(pid), "server process")),
        (false, None) => None,
    };
    let rss_before = rss_pid.and_then(|(pid, _)| sys::rss_kib(pid));

    // Connect, at most CONNECT_CONCURRENCY at a time; each client reports once, then reads.
    eprintln!(
        "connecting {clients} clients to ws://{}/ws …",
        server.authority
    );
    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let (tx, mut rx) = mpsc::unbounded_channel::<Result<(), String>>();
    let mut tasks: JoinSet<Option<ClientStats>> = JoinSet::new();
    for i in 0..clients {
        let target = targets
            .get(i % targets.len())
            .cloned()
            .context("at least one target")?;
        let (gate, tx) = (gate.clone(), tx.clone());
        let (template, received_total, stop) =
            (template.clone(), received_total.clone(), stop.clone());
        tasks.spawn(async move {
            let attempt = {
                let _permit = gate.acquire().await.ok()?;
                tokio::time::timeout(CONNECT_TIMEOUT, client::connect(&target, i)).await
            };
            let conn = match attempt {
                // Too late: the phase is over and this client is not counted.
                Ok(Ok(_)) if gate.is_closed() => return None,
                Ok(Ok(conn)) => conn,
                Ok(Err(e)) => {
                    let _ = tx.send(Err(e));
                    return None;
                }
                Err(_) => {
                    let _ = tx.send(Err("timeout".into()));
                    return None;
                }
            };
            let _ = tx.send(Ok(()));
            drop((tx, gate));
            Some(conn.run(base, template, received_total, stop).await)
        });
    }
    drop(tx);
    let (mut connected, mut connect_errors) = (0usize, HashMap::<String, u64>::new());
    let phase_end = tokio::time::Instant::now() + CONNECT_PHASE_LIMIT;
    for _ in 0..clients {
        match tokio::time::timeout_at(phase_end, rx.recv()).await {
            Ok(Some(Ok(()))) => connected += 1,
            Ok(Some(Err(e))) => *connect_errors.entry(e).or_default() += 1,
            Ok(None) => break,
            Err(_) => {
                *connect_errors
                    .entry("connect phase over (120 s)".into())
                    .or_default() += 1;
                break;
            }
        }
    }
    gate.close();
    let connect_time = started.elapsed();
    eprintln!(
        "{connected}/{clients} connected in {:.2} s",
        connect_time.as_secs_f64()
    );

    tokio::time::sleep(SETTLE).await;
    let rss = match (rss_pid, rss_before) {
        (Some((pid, whose)), Some(before)) => sys::rss_kib(pid).map(|after| (before, after, whose)),
        _ => None,
    };

    let mut outcome = publisher::Outcome::default();
    let mut pub_start_ns = 0u64;
    let mut cpu = None;
    if connected > 0 {
        let plan = publisher::Plan {
            url: if args.batch > 1 {
                format!("{}/api/publish/batch", server.base_url)
            } else {
                format!("{}/api/publish", server.base_url)
            },
            batch: args.batch as usize,
            api_key: server.api_key.clone(),
            rate: args.rate,
            duration: Duration::from_secs(args.duration),
            payload: args.payload as usize,
            to: audience.member(),
        };
        eprintln!(
            "publishing to {} at {}/s for {} s …",
            target_name(args),
            args.rate,
            args.duration
        );
        let server_pids: &[u32] = if args.spawn_server {
            &[]
        } else {
            &args.server_pid
        };
        let servers_cpu = || -> Option<f64> {
            if server_pids.is_empty() {
                return None;
            }
            server_pids.iter().map(|p| sys::cpu_seconds(Some(*p))).sum()
        };
        let cpu_before = (sys::cpu_seconds(None), servers_cpu());
        pub_start_ns = base.elapsed().as_nanos() as u64;
        outcome = match args.publisher {
            PublisherKind::Http => publisher::run(&http, &plan, base).await,
            PublisherKind::Ws => {
                let first = targets.first().context("no target")?;
                let ws_plan = ws_publisher::WsPlan {
                    addr: first.addr,
                    host: first.host.clone(),
                    api_key: plan.api_key.clone(),
                    rate: plan.rate,
                    duration: plan.duration,
                    payload: plan.payload,
                    to: plan.to.clone(),
                };
                ws_publisher::run(&ws_plan, base).await
            }
        };
        let wall =
            Duration::from_nanos(base.elapsed().as_nanos() as u64 - pub_start_ns).as_secs_f64();
        let ours = cpu_before.0.zip(sys::cpu_seconds(None)).map(|(a, b)| b - a);
        let theirs = cpu_before.1.zip(servers_cpu()).map(|(a, b)| b - a);
        cpu = ours.map(|o| (o, theirs, wall));
        // Stragglers: until every queued delivery has arrived, at most STRAGGLERS.
        let give_up = Instant::now() + STRAGGLERS;
        if !args.spread_urls.is_empty() || args.publisher == PublisherKind::Ws {
            // Each node's `queued` counts its own clients only, and an `ack` carries no
            // count: expect every client.
            outcome.queued = outcome.ok * connected as u64;
        }
        while received_total.load(Relaxed) < outcome.queued && Instant::now() < give_up {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    stop.cancel();

    let mut latency_us = Histogram::new_from(&template);
    let (mut received, mut other_text, mut pings, mut last_ns) = (0u64, 0u64, 0u64, 0u64);
    let mut reordered = 0u64;
    let mut ends = HashMap::<End, u64>::new();
    let mut reported = 0usize;
    let _ = tokio::time::timeout(TEARDOWN, async {
        while let Some(joined) = tasks.join_next().await {
            let Ok(Some(s)) = joined else { continue };
            reported += 1;
            received += s.received;
            reordered += s.reordered;
            other_text += s.other_text;
            pings += s.pings;
            last_ns = last_ns.max(s.last_delivery_ns);
            if let Some(h) = &s.latency_us {
                // Same bounds as the template: cannot fail, but never panic over it.
                let _ = latency_us.add(h);
            }
            if s.end != End::Stopped {
                *ends.entry(s.end).or_default() += 1;
            }
        }
    })
    .await;
    tasks.abort_all();

    let server_stats = fetch_stats(&http, server).await;
    let delivery_window = (received > 0 && last_ns > pub_start_ns)
        .then(|| Duration::from_nanos(last_ns - pub_start_ns));
    Ok(Report {
        requested: clients,
        connected,
        connect_errors,
        connect_time,
        publisher: outcome,
        received,
        reordered,
        other_text,
        pings,
        ends,
        unreported: connected.saturating_sub(reported),
        latency_us,
        delivery_window,
        rss,
        server_stats,
        cpu,
    })
}

/// Says so on stderr when the clients per source address exceed the ephemeral port
/// range, and how many `--source-addrs` would do: the connects past it would fail with
/// `AddrNotAvailable`, which is the bench's limit, not the server's.
fn warn_if_short_of_ports(args: &BenchArgs) {
    let Some(ports) = sys::ephemeral_ports() else {
        return;
    };
    let needed = source::addrs_needed(u64::from(args.clients), ports);
    if needed > u64::from(args.source_addrs) {
        eprintln!(
            "note: {} clients on {} source address(es) exceed the {ports} ephemeral ports of \
             each (net.ipv4.ip_local_port_range): give --source-addrs {needed} or more",
            args.clients, args.source_addrs
        );
    }
}

/// `/api/stats`, best effort: the server's own count of drops and slow consumers.
async fn fetch_stats(http: &reqwest::Client, server: &Server) -> Option<serde_json::Value> {
    let res = http
        .get(format!("{}/api/stats", server.base_url))
        .bearer_auth(&server.api_key)
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    res.json().await.ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn parse(flags: &[&str]) -> Result<BenchArgs, String> {
        Cli::try_parse_from(std::iter::once("bench").chain(flags.iter().copied()))
            .map(|c| c.bench)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_new_flags() {
        let a = parse(&[]).unwrap();
        assert_eq!(
            (a.json, a.label.as_str(), a.source_addrs),
            (false, "herald", 1)
        );
        assert_eq!(Audience::of(&a), Audience::All);
        let a = parse(&[
            "--json",
            "--label",
            "uws 2",
            "--source-addrs",
            "4",
            "--user",
            "7",
        ])
        .unwrap();
        assert_eq!(
            (a.json, a.label.as_str(), a.source_addrs),
            (true, "uws 2", 4)
        );
        assert_eq!(Audience::of(&a), Audience::User("7".into()));
        let a = parse(&["--channel", "news"]).unwrap();
        assert_eq!(Audience::of(&a), Audience::Channel("news".into()));
    }

    #[test]
    fn bad_flags_are_refused_with_a_reason() {
        let e = parse(&["--user", "u", "--channel", "news"]).unwrap_err();
        assert!(e.contains("cannot be used with"), "{e}");
        let e = parse(&["--source-addrs", "0"]).unwrap_err();
        assert!(e.contains("1 to 254"), "{e}");
        let e = parse(&["--source-addrs", "255"]).unwrap_err();
        assert!(e.contains("1 to 254"), "{e}");
        let e = parse(&["--user", ""]).unwrap_err();
        assert!(e.contains("empty"), "{e}");
        assert!(parse(&["--user", "a\nb"]).is_err());
    }

    #[test]
    fn each_audience_is_one_json_member() {
        let body = |a: &Audience| -> serde_json::Value {
            serde_json::from_str(&format!("{{{},\"data\":1}}", a.member())).unwrap()
        };
        assert_eq!(body(&Audience::All)["all"], true);
        assert_eq!(body(&Audience::Channel("a:b".into()))["channel"], "a:b");
        let tricky = r#"quote" back\ é"#;
        let v = body(&Audience::User(tricky.into()));
        assert_eq!(v["user"], tricky);
        assert_eq!(v.as_object().unwrap().len(), 2);
        assert_eq!(
            (
                Audience::User("u".into()).kind(),
                Audience::User("u".into()).name()
            ),
            ("user", Some("u"))
        );
        assert_eq!((Audience::All.kind(), Audience::All.name()), ("all", None));
    }

    #[test]
    fn clients_must_fit_under_the_open_files_limit() {
        let at = |soft, hard| open_files::OpenFiles {
            before: 1024,
            soft,
            hard,
        };
        assert_eq!(open_files_verdict(900, false, &at(1000, 1000)), Ok(()));
        assert_eq!(open_files_verdict(450, true, &at(1000, 1000)), Ok(()));
        // clients + 100 over the hard limit: nothing this process can do.
        let e = open_files_verdict(901, false, &at(1000, 1000)).unwrap_err();
        assert!(
            e.contains("hard limit is 1000") && e.contains("1001"),
            "{e}"
        );
        // In-process, two descriptors per client.
        assert!(open_files_verdict(451, true, &at(1000, 1000)).is_err());
        // The raise failed and the shell can still do it.
        let e = open_files_verdict(5000, false, &at(1024, 20000)).unwrap_err();
        assert!(e.contains("ulimit -n 20000"), "{e}");
    }
}
