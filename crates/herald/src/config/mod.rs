//! Configuration: one typed tree with the defaults of DESIGN §11–12, layered from a TOML
//! file, `HERALD_…` environment variables and flags (later wins), then validated with
//! errors that name the key.
//!
//! The structs double as the "raw" layer because every key has a default: a missing key
//! is the default, an unknown key is an error (a typo must not silently do nothing).

pub mod load;
pub mod secrets;
pub mod template;
pub mod webhooks;

pub mod namespaces;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

pub use namespaces::{
    NamespaceConfig, PresenceConfig, PublishRule, SlowConsumerPolicy, SubscribeRule,
};

use serde::{Deserialize, Deserializer};

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub listen: String,
    pub data_dir: PathBuf,
    pub node_name: String,
    #[serde(deserialize_with = "string_list")]
    pub allowed_origins: Vec<String>,
    /// Load balancers / proxies (addresses or CIDRs) whose `Forwarded` / `X-Forwarded-*`
    /// headers are believed (DESIGN §11).
    #[serde(deserialize_with = "string_list")]
    pub trusted_proxies: Vec<String>,
    pub shutdown_timeout_s: u64,
    pub auth: AuthConfig,
    pub api: ApiConfig,
    pub ws: WsConfig,
    pub limits: LimitsConfig,
    pub tls: TlsConfig,
    pub broker: BrokerConfig,
    pub store: StoreConfig,
    pub log: LogConfig,
    pub metrics: MetricsConfig,
    /// Channel namespaces by name; `default` holds channels without a `ns:` prefix.
    /// `default` and `sync` always exist (built in unless overridden).
    pub namespaces: BTreeMap<String, NamespaceConfig>,
    pub presence: PresenceConfig,
    /// Upstream sync events from an external bus (seed 002).
    pub relay: RelayConfig,
    /// Presence events POSTed to another system.
    pub webhooks: webhooks::WebhooksConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8080".into(),
            data_dir: PathBuf::from("./herald-data"),
            node_name: String::new(),
            allowed_origins: Vec::new(),
            trusted_proxies: Vec::new(),
            shutdown_timeout_s: 10,
            auth: AuthConfig::default(),
            api: ApiConfig::default(),
            ws: WsConfig::default(),
            limits: LimitsConfig::default(),
            tls: TlsConfig::default(),
            broker: BrokerConfig::default(),
            store: StoreConfig::default(),
            log: LogConfig::default(),
            metrics: MetricsConfig::default(),
            namespaces: namespaces::builtin(),
            presence: PresenceConfig::default(),
            relay: RelayConfig::default(),
            webhooks: webhooks::WebhooksConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    Jwt,
    None,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    pub mode: AuthMode,
    pub hmac_secret: Option<String>,
    pub public_key_file: Option<PathBuf>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub leeway_s: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            mode: AuthMode::Jwt,
            hmac_secret: None,
            public_key_file: None,
            issuer: None,
            audience: None,
            leeway_s: 5,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    #[serde(deserialize_with = "string_list")]
    pub keys: Vec<String>,
}

/// The most connection workers (threads) `ws.workers` may ask for.
pub const MAX_WORKERS: usize = 256;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WsConfig {
    pub heartbeat_s: u64,
    pub idle_timeout_s: u64,
    pub max_message_bytes: usize,
    pub queue_messages: usize,
    pub queue_bytes: usize,
    pub rate_per_s: u32,
    pub rate_burst: u32,
    pub rate_limit_close_after_s: u64,
    pub max_subscriptions: usize,
    /// A socket that accepts no bytes for this long is closed (slow consumer).
    pub write_timeout_s: u64,
    /// `publish` frames one connection may have waiting for their answer (a pipelined
    /// backend's window); past it a publish is refused with `rate_limited`.
    pub max_in_flight: usize,
    /// Worker threads connections live on, each connection on one for its life; 0 is
    /// one per core this process may use. One (the default, or one core) runs them on
    /// the main runtime. Needs a restart.
    pub workers: usize,
    pub compression: CompressionConfig,
    /// Channels every client connection is subscribed to on connect (server-side
    /// subscriptions, checked against the namespace rules like a `subscribe`); `{user}`
    /// stands for the connection's user id: `["announcements", "personal:{user}"]`.
    #[serde(deserialize_with = "string_list")]
    pub subscribe_on_connect: Vec<String>,
}

/// permessage-deflate (RFC 7692): off unless enabled here or by a namespace.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CompressionConfig {
    /// Compress publications of every namespace that does not say otherwise, and those
    /// to users, groups and everyone.
    pub enabled: bool,
    /// Frames whose payload is shorter than this go uncompressed.
    pub threshold_bytes: usize,
    /// zlib level, 1 (fastest) to 9 (smallest).
    pub level: u32,
}

impl Default for CompressionConfig {
    fn default() -> Self {
        CompressionConfig {
            enabled: false,
            threshold_bytes: 512,
            level: 6,
        }
    }
}

impl CompressionConfig {
    /// How frames are compressed when compression is on for them.
    pub fn policy(&self) -> crate::ws::deflate::Policy {
        crate::ws::deflate::Policy {
            threshold: self.threshold_bytes,
            level: self.level,
            always: false,
        }
    }
}

impl Default for WsConfig {
    fn default() -> Self {
        WsConfig {
            heartbeat_s: 25,
            idle_timeout_s: 60,
            max_message_bytes: 64 * 1024,
            queue_messages: 256,
            queue_bytes: 1024 * 1024,
            rate_per_s: 50,
            rate_burst: 100,
            rate_limit_close_after_s: 10,
            max_subscriptions: 1000,
            write_timeout_s: 30,
            max_in_flight: 1000,
            // Off until the fan-out itself runs per worker: measured here, sharded
            // connections with one thread fanning out deliver less (docs/benchmarks.md).
            workers: 1,
            compression: CompressionConfig::default(),
            subscribe_on_connect: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    pub connections_per_user: usize,
    pub connections_per_ip: usize,
    pub http_body_bytes: usize,
    pub handshake_timeout_s: u64,
    /// Time for a request body to arrive once its head is in (slow POST → 408).
    pub http_body_timeout_s: u64,
    /// Open HTTP (non-WebSocket) connections, per node and per client IP.
    pub http_connections: usize,
    pub http_connections_per_ip: usize,
    /// History held by all channels of the node together; oldest evicted first.
    pub history_bytes: usize,
    /// Channels one user's clients may create by publishing.
    pub channels_per_user: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            connections_per_user: 100,
            connections_per_ip: 1000,
            http_body_bytes: 1024 * 1024,
            handshake_timeout_s: 10,
            http_body_timeout_s: 10,
            http_connections: 10_000,
            http_connections_per_ip: 256,
            history_bytes: 64 * 1024 * 1024,
            channels_per_user: 100,
        }
    }
}

/// The longest any duration setting may be: beyond it timers and deadline arithmetic in
/// our dependencies overflow (and panic), and nothing sensible needs more.
pub const MAX_DURATION_S: u64 = 30 * 24 * 3600;

/// What a `pub` frame adds to a payload at most: the JSON envelope with a 256-byte
/// channel name, a 20-digit offset, a 16-hex-digit epoch, and the frame header.
pub const PUB_ENVELOPE_MAX: usize = 512;

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// `memory://` (one node) or `redis://[:password@]host:port[/db]` / `rediss://…`.
    pub url: String,
    /// Prefix of every Redis key and channel herald uses (several deployments can share
    /// one Redis).
    pub prefix: String,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            url: "memory://".into(),
            prefix: "herald".into(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Empty means `sqlite://<data_dir>/herald.db`.
    pub url: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Pretty,
            level: "info".into(),
        }
    }
}

/// `GET /metrics` (DESIGN §10).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Serve `/metrics` without the API key (for a scraper inside a trusted network).
    pub public: bool,
    /// Serve `/metrics` (with `/healthz`, `/readyz`) on this address instead of the main
    /// listener, e.g. an internal interface; empty: on the main listener.
    pub listen: String,
}

/// A list given as a TOML array, or (from an environment variable) as one string of
/// comma- or space-separated items, as Centrifugo users write them.
fn string_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum List {
        One(String),
        Many(Vec<String>),
    }
    Ok(match List::deserialize(d)? {
        List::Many(v) => v,
        List::One(s) => s
            .split([',', ' '])
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

/// Everything wrong with a configuration, each naming its key.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.join("\n"))]
pub struct Invalid(pub Vec<String>);

impl Config {
    /// Checks what types alone cannot; every problem is reported, not just the first.
    pub fn validate(&self) -> Result<(), Invalid> {
        let mut errs = Vec::new();
        if self.listen.parse::<SocketAddr>().is_err() {
            errs.push(format!(
                "listen: expected an address like 127.0.0.1:8080, got `{}`",
                self.listen
            ));
        }
        if self.auth.leeway_s > 30 {
            errs.push(format!(
                "auth.leeway_s: at most 30 seconds, got {}",
                self.auth.leeway_s
            ));
        }
        if let Some(s) = &self.auth.hmac_secret {
            if s.len() < 32 {
                errs.push("auth.hmac_secret: must be at least 32 bytes".into());
            }
        }
        if let Some(p) = &self.auth.public_key_file {
            if !p.is_file() {
                errs.push(format!(
                    "auth.public_key_file: no such file `{}`",
                    p.display()
                ));
            }
        }
        for k in &self.api.keys {
            if k.len() < 16 {
                errs.push("api.keys: every key must be at least 16 characters".into());
                break;
            }
        }
        for o in &self.allowed_origins {
            if o != "*" && !(o.starts_with("http://") || o.starts_with("https://")) {
                errs.push(format!(
                    "allowed_origins: `{o}` must be \"*\" or start with http:// or https://"
                ));
            }
        }
        let ws = &self.ws;
        if ws.heartbeat_s == 0 {
            errs.push("ws.heartbeat_s: must be at least 1".into());
        }
        if ws.idle_timeout_s <= ws.heartbeat_s {
            errs.push(format!(
                "ws.idle_timeout_s: must be greater than ws.heartbeat_s ({})",
                ws.heartbeat_s
            ));
        }
        // A thread each: a typo must not try to start a hundred thousand of them.
        if ws.workers > MAX_WORKERS {
            errs.push(format!(
                "ws.workers: at most {MAX_WORKERS} (0 is one per core), got {}",
                ws.workers
            ));
        }
        if !(1..=9).contains(&ws.compression.level) {
            errs.push(format!(
                "ws.compression.level: must be 1 (fastest) to 9 (smallest), got {}",
                ws.compression.level
            ));
        }
        for (key, v) in [
            ("ws.max_message_bytes", ws.max_message_bytes),
            ("ws.queue_messages", ws.queue_messages),
            ("ws.queue_bytes", ws.queue_bytes),
            ("ws.rate_per_s", ws.rate_per_s as usize),
            ("ws.rate_burst", ws.rate_burst as usize),
            ("ws.max_subscriptions", ws.max_subscriptions),
            ("ws.max_in_flight", ws.max_in_flight),
            (
                "limits.connections_per_user",
                self.limits.connections_per_user,
            ),
            ("limits.connections_per_ip", self.limits.connections_per_ip),
            ("limits.http_body_bytes", self.limits.http_body_bytes),
            (
                "limits.handshake_timeout_s",
                self.limits.handshake_timeout_s as usize,
            ),
            (
                "limits.http_body_timeout_s",
                self.limits.http_body_timeout_s as usize,
            ),
            ("limits.http_connections", self.limits.http_connections),
            (
                "limits.http_connections_per_ip",
                self.limits.http_connections_per_ip,
            ),
            ("limits.history_bytes", self.limits.history_bytes),
            ("ws.write_timeout_s", ws.write_timeout_s as usize),
        ] {
            if v == 0 {
                errs.push(format!("{key}: must be at least 1"));
            }
        }
        for (key, v) in [
            ("shutdown_timeout_s", self.shutdown_timeout_s),
            ("ws.heartbeat_s", ws.heartbeat_s),
            ("ws.idle_timeout_s", ws.idle_timeout_s),
            ("ws.rate_limit_close_after_s", ws.rate_limit_close_after_s),
            ("ws.write_timeout_s", ws.write_timeout_s),
            (
                "limits.handshake_timeout_s",
                self.limits.handshake_timeout_s,
            ),
            (
                "limits.http_body_timeout_s",
                self.limits.http_body_timeout_s,
            ),
            ("presence.grace_ms", self.presence.grace_ms / 1000),
        ] {
            if v > MAX_DURATION_S {
                errs.push(format!(
                    "{key}: at most {MAX_DURATION_S} seconds (30 days), got {v}{}",
                    if key.ends_with("_ms") { " s" } else { "" }
                ));
            }
        }
        // A publication the limits let in must fit a connection's queue, or it could
        // never be delivered (DESIGN §12).
        if ws.queue_bytes < ws.max_message_bytes.saturating_add(PUB_ENVELOPE_MAX) {
            errs.push(format!(
                "ws.queue_bytes: must hold the largest client message plus its envelope (ws.max_message_bytes + {PUB_ENVELOPE_MAX} = {}), got {}",
                ws.max_message_bytes.saturating_add(PUB_ENVELOPE_MAX),
                ws.queue_bytes
            ));
        }
        if ws.queue_bytes < self.limits.http_body_bytes {
            errs.push(format!(
                "ws.queue_bytes: must be at least limits.http_body_bytes ({}), got {}: an accepted body could never be delivered",
                self.limits.http_body_bytes, ws.queue_bytes
            ));
        }
        for p in &self.trusted_proxies {
            if let Err(e) = crate::auth::proxy::Cidr::parse(p) {
                errs.push(format!("trusted_proxies: `{p}`: {e}"));
            }
        }
        match (&self.tls.cert_file, &self.tls.key_file) {
            (None, None) => {}
            (Some(c), Some(k)) => {
                for (key, p) in [("tls.cert_file", c), ("tls.key_file", k)] {
                    if !p.is_file() {
                        errs.push(format!("{key}: no such file `{}`", p.display()));
                    }
                }
            }
            _ => errs.push("tls: set both tls.cert_file and tls.key_file, or neither".into()),
        }
        if self.broker.url != "memory://" {
            if let Err(why) = crate::broker::redis::validate_url(&self.broker.url) {
                errs.push(format!("broker.url: {why}"));
            }
        }
        if self.broker.prefix.is_empty() || self.broker.prefix.contains(char::is_whitespace) {
            errs.push("broker.prefix: must be non-empty, without spaces".into());
        }
        if !(self.store.url.is_empty()
            || self.store.url.starts_with("sqlite://")
            || self.store.url.starts_with("postgres://"))
        {
            errs.push(format!(
                "store.url: expected sqlite://… or postgres://…, got `{}`",
                self.store.url
            ));
        }
        namespaces::validate(&self.namespaces, &mut errs);
        for (i, template) in self.ws.subscribe_on_connect.iter().enumerate() {
            let example = template.replace("{user}", "42");
            let ns = example
                .split_once(':')
                .map_or(namespaces::DEFAULT, |(ns, _)| ns);
            let known = self.namespaces.contains_key(ns)
                || ns == namespaces::DEFAULT
                || ns == namespaces::SYNC;
            if let Err(why) = crate::protocol::channel::validate_channel(&example) {
                errs.push(format!("ws.subscribe_on_connect[{i}]: `{template}`: {why}"));
            } else if !known {
                errs.push(format!(
                    "ws.subscribe_on_connect[{i}]: `{template}`: namespace `{ns}` is not configured"
                ));
            }
        }
        self.relay.validate(&mut errs);
        self.webhooks.validate(&mut errs);
        if self.presence.redis_keys && self.broker.url == "memory://" {
            errs.push(
                "presence.redis_keys: needs a Redis broker (broker.url = \"redis://…\")".into(),
            );
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            errs.push(format!(
                "log.level: `{}` is not a log filter (try info or herald=debug)",
                self.log.level
            ));
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(Invalid(errs))
        }
    }

    /// Adds the built-in namespaces a file or the environment did not define.
    pub fn with_builtin_namespaces(mut self) -> Config {
        for (name, ns) in namespaces::builtin() {
            self.namespaces.entry(name).or_insert(ns);
        }
        self
    }

    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
            .parse()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 8080)))
    }

    /// A short node name: the configured one, or the host name.
    pub fn node(&self) -> String {
        if !self.node_name.is_empty() {
            return self.node_name.clone();
        }
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "herald".into())
    }
}

/// The upstream relay (DESIGN §5): device events published by other systems on a Redis
/// channel per user are validated, converted and relayed to `sync:<user>`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayConfig {
    /// `redis://…`; empty = no relay.
    pub redis_url: String,
    /// A Redis pattern with one `*` standing for the user id.
    pub redis_pattern: String,
    /// `nats://host:port`; empty = no NATS relay (one bus or the other, not both).
    pub nats_url: String,
    /// A NATS subject with one `*` token standing for the user id.
    pub nats_subject: String,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            redis_url: String::new(),
            redis_pattern: "user.*.sync".into(),
            nats_url: String::new(),
            nats_subject: "user.*.sync".into(),
        }
    }
}

impl RelayConfig {
    fn validate(&self, errs: &mut Vec<String>) {
        if !(self.redis_url.is_empty()
            || self.redis_url.starts_with("redis://")
            || self.redis_url.starts_with("rediss://"))
        {
            errs.push(format!(
                "relay.redis_url: expected redis://… (or empty for no relay), got `{}`",
                self.redis_url
            ));
        }
        if self.redis_pattern.matches('*').count() != 1 {
            errs.push(format!(
                "relay.redis_pattern: needs exactly one `*` (the user id), got `{}`",
                self.redis_pattern
            ));
        }
        if !self.nats_url.is_empty() {
            if !(self.nats_url.starts_with("nats://") || self.nats_url.starts_with("tls://")) {
                errs.push(format!(
                    "relay.nats_url: expected nats://host:port (or tls://, or empty for no relay), got `{}`",
                    self.nats_url
                ));
            }
            if !self.redis_url.is_empty() {
                errs.push(
                    "relay.nats_url: relay from one bus, Redis or NATS; relay.redis_url is set too"
                        .to_owned(),
                );
            }
            if cfg!(not(feature = "nats")) {
                errs.push(
                    "relay.nats_url: this build has no NATS support (cargo feature `nats`)"
                        .to_owned(),
                );
            }
        }
        let tokens: Vec<&str> = self.nats_subject.split('.').collect();
        let wildcards = tokens.iter().filter(|t| **t == "*").count();
        if wildcards != 1
            || tokens
                .iter()
                .any(|t| t.is_empty() || t.contains(['>', ' ']) || (t.contains('*') && *t != "*"))
        {
            errs.push(format!(
                "relay.nats_subject: needs exactly one `*` token (the user id) and no `>`, got `{}`",
                self.nats_subject
            ));
        }
    }
}
