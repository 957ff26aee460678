//! herald: a self-hosted real-time broadcast server.
//!
//! Module map (ARCHITECTURE.md has the long version):
//! - [`config`]: layered configuration and its validation; [`reload`]: what `SIGHUP`
//!   changes live;
//! - [`auth`]: JWT, API keys, Origin, trusted proxies;
//! - [`protocol`]: the wire types and the code tables;
//! - [`ws`]: the RFC 6455 codec and handshake (ours: frame once, share the bytes);
//! - [`outbox`]: the bounded per-connection queue (a leaf: the hub pushes, the writer
//!   drains);
//! - [`connection`]: one socket's reader, writer, rate limit and transports;
//! - [`shard`]: the worker threads connections may live on (`ws.workers`, off by
//!   default); [`wake`]: waking them once per worker per publication (a leaf, under
//!   the outbox);
//! - [`ids`]: the user and connection ids as types (a leaf);
//! - [`hub`]: the registry, channels and fan-out;
//! - [`session`]: the client protocol of one connection, above the hub and the broker;
//! - [`broker`]: the seam between nodes and the one way into the hub (memory or Redis);
//! - [`relay`]: upstream device events from Redis or NATS into `sync:` channels;
//! - [`store`]: announcements in SQLite or Postgres; [`announce`]: their rules;
//!   [`announce_sync`]: banners kept true across a bus outage;
//! - [`http`]: the accept loop, routes and endpoints;
//! - [`metrics`]: counters, refusals, latency;
//! - [`cli`]: the `herald` subcommands; [`bench`]: the load generator.

// Nothing a client, a config file or the network controls may reach a panic: these are
// denied in the library (tests may use them); each exception carries its reason.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

/// The crate version and the commit it was built from (`build.rs`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const COMMIT: &str = env!("HERALD_COMMIT");

pub mod announce;
pub mod announce_sync;
pub mod auth;
pub mod bench;
pub mod broker;
pub mod cli;
pub mod config;
pub mod connection;
pub mod http;
pub mod hub;
pub mod ids;
pub mod metrics;
pub mod outbox;
pub mod protocol;
pub mod relay;
pub mod reload;
pub mod session;
pub mod shard;
pub mod store;
pub mod wake;
pub mod webhooks;
pub mod ws;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::api_key::ApiKeys;
use crate::auth::jwt::Verifier;
use crate::config::secrets::{self, API_KEY_FILE, HMAC_SECRET_FILE};
use crate::config::{AuthMode, Config};
use crate::http::{App, AppState};
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::protocol::codes::CloseCode;

/// Test-only switches that are not configuration keys.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServeOptions {
    pub conformance_echo: bool,
}

/// A node that is up: its address, secrets (for tests and the CLI), and its stop switch.
pub struct Node {
    pub addr: SocketAddr,
    /// Where `/metrics` is served when `metrics.listen` names its own address.
    pub metrics_addr: Option<SocketAddr>,
    pub app: App,
    pub hmac_secret: String,
    pub api_key: String,
    stop: CancellationToken,
    done: tokio::task::JoinHandle<()>,
    /// Stops the connection workers when the node is dropped, shut down or not.
    _workers: tokio_util::sync::DropGuard,
}

impl Node {
    /// Starts a node on `listener`. Secrets come from config or the data dir.
    pub async fn start(
        listener: TcpListener,
        cfg: Config,
        opts: ServeOptions,
    ) -> anyhow::Result<Node> {
        http::tls::install_crypto_provider();
        let addr = listener.local_addr()?;
        // Bound before anything is started, so a taken address fails the start cleanly.
        let metrics_listener = match cfg.metrics.listen.as_str() {
            "" => None,
            at => Some(
                TcpListener::bind(at)
                    .await
                    .map_err(|e| anyhow::anyhow!("metrics.listen: cannot listen on {at}: {e}"))?,
            ),
        };
        let (hmac_secret, created_secret) = match &cfg.auth.hmac_secret {
            Some(s) => (s.clone(), false),
            None => secrets::load_or_create(&cfg.data_dir, HMAC_SECRET_FILE)?,
        };
        let (api_key, created_key) = secrets::load_or_create(&cfg.data_dir, API_KEY_FILE)?;
        for (created, name) in [
            (created_secret, HMAC_SECRET_FILE),
            (created_key, API_KEY_FILE),
        ] {
            let verb = if created { "generated" } else { "using" };
            tracing::info!(path = %secrets::path(&cfg.data_dir, name).display(), "{verb} {name}");
        }
        let api_verifier = Arc::new(Verifier::new(&cfg.auth, &hmac_secret)?);
        let verifier = (cfg.auth.mode == AuthMode::Jwt).then(|| api_verifier.clone());
        let metrics = Arc::new(Metrics::default());
        let store = store::open(&cfg.store.url, &cfg.data_dir)?;
        let (hub, inlet) = Hub::new(&cfg, metrics.clone());
        let stop = CancellationToken::new();
        let (broker, broker_tasks): (Arc<dyn broker::Broker>, Vec<_>) =
            if cfg.broker.url == "memory://" {
                (Arc::new(broker::MemoryBroker::new(inlet)), Vec::new())
            } else {
                let forget = store.clone();
                let link = announce_sync::AnnouncementSync::new(
                    store.clone(),
                    inlet.hub().clone(),
                    metrics.clone(),
                );
                let (b, tasks) = broker::redis::RedisBroker::start(
                    &cfg.broker.url,
                    &cfg.broker.prefix,
                    inlet,
                    metrics.clone(),
                    Box::new(move || forget.forget_active()),
                    Box::new(move |up| if up { link.back() } else { link.lost() }),
                    stop.clone(),
                )
                .await?;
                (b, tasks)
            };
        // With a cluster view the node whose write turned a user on or off reports it.
        let webhooks = webhooks::start(
            &cfg.webhooks,
            &hub,
            cfg.broker.url != "memory://",
            stop.clone(),
        )?;
        let tls = http::server::tls_acceptor(&cfg)?;
        let http_caps = Arc::new(http::conn_caps::HttpConnCaps::new(
            cfg.limits.http_connections,
            cfg.limits.http_connections_per_ip,
        ));
        let proxies = auth::proxy::TrustedProxies::new(&cfg.trusted_proxies);
        let workers = shard::Workers::start(shard::count(cfg.ws.workers))
            .map_err(|e| anyhow::anyhow!("ws.workers: cannot start the worker threads: {e}"))?;
        let workers_guard = workers.stop_on_drop();
        let app: App = Arc::new(AppState {
            api_keys: ArcSwap::from_pointee(ApiKeys::new(
                cfg.api.keys.iter().cloned().chain([api_key.clone()]),
            )),
            cfg: ArcSwap::from_pointee(cfg),
            hub: hub.clone(),
            broker: broker.clone(),
            store: store.clone(),
            metrics,
            verifier,
            api_verifier,
            draining: AtomicBool::new(false),
            http_caps,
            proxies: ArcSwap::from_pointee(proxies),
            store_probe: Default::default(),
            tracker: TaskTracker::new(),
            tls: tls.is_some(),
            conformance_echo: opts.conformance_echo,
            workers,
            user_rates: Default::default(),
        });
        let router = http::router::router(app.clone());
        let sweeper = tokio::spawn(hub::sweeper::run(hub.clone(), stop.clone()));
        // The first migration attempt finishes before the node accepts anything, so a
        // zero-config node (SQLite file) never answers 503 on its first requests; a
        // database that is down or slow delays the start by at most FIRST_MIGRATION_WAIT
        // and is then retried in the background (docs/decisions.md).
        let (first_attempt, attempted) = tokio::sync::oneshot::channel();
        let migrations = tokio::spawn(migrate_until_ready(store, first_attempt, stop.clone()));
        let _ = tokio::time::timeout(FIRST_MIGRATION_WAIT, attempted).await;
        let relay_cfg = app.cfg().relay.clone();
        #[cfg(feature = "nats")]
        let nats_relay = match relay_cfg.nats_url.is_empty() {
            true => None,
            false => {
                // Several nodes on one bus: each user's events are relayed by one node.
                let cfg = app.cfg();
                let affinity = broker.cluster().map(|view| relay::nats::Affinity {
                    view: view.clone(),
                    claims: view.conn(),
                    prefix: cfg.broker.prefix.clone(),
                    me: hub.node_tag().to_owned(),
                });
                Some(tokio::spawn(relay::nats::run(
                    broker.clone(),
                    relay_cfg.nats_url.clone(),
                    relay_cfg.nats_subject.clone(),
                    affinity,
                    app.metrics.clone(),
                    stop.clone(),
                )))
            }
        };
        #[cfg(not(feature = "nats"))]
        let nats_relay: Option<tokio::task::JoinHandle<()>> = None;
        let relay = (!relay_cfg.redis_url.is_empty()).then(|| {
            // Several nodes on one bus: each upstream message is relayed by one.
            let cfg = app.cfg();
            let dedup = (cfg.broker.url != "memory://").then(|| cfg.broker.prefix.clone());
            let metrics = app.metrics.clone();
            tokio::spawn(relay::redis::run(
                broker.clone(),
                relay_cfg,
                dedup,
                metrics,
                stop.clone(),
            ))
        });
        let (metrics_addr, metrics_accept) = match metrics_listener {
            None => (None, None),
            Some(l) => {
                let at = l.local_addr()?;
                tracing::info!("metrics on http://{at}/metrics");
                let routes = http::router::metrics_router(app.clone());
                let task = http::server::accept_loop(l, app.clone(), routes, None, stop.clone());
                (Some(at), Some(tokio::spawn(task)))
            }
        };
        let accept = tokio::spawn(http::server::accept_loop(
            listener,
            app.clone(),
            router,
            tls,
            stop.clone(),
        ));
        let done = tokio::spawn(async move {
            let _ = accept.await;
            if let Some(metrics) = metrics_accept {
                let _ = metrics.await;
            }
            let _ = sweeper.await;
            let _ = migrations.await;
            if let Some(relay) = nats_relay {
                let _ = relay.await;
            }
            if let Some(relay) = relay {
                let _ = relay.await;
            }
            for task in broker_tasks {
                let _ = task.await;
            }
            // Last: it delivers what the closing connections and the view reported.
            if let Some(webhooks) = webhooks {
                let _ = webhooks.await;
            }
        });
        Ok(Node {
            addr,
            metrics_addr,
            app,
            hmac_secret,
            api_key,
            stop,
            done,
            _workers: workers_guard,
        })
    }

    /// Applies a re-read configuration (`SIGHUP`): see [`reload::apply`]. Returns the
    /// keys that changed but only take effect after a restart.
    pub fn reload(&self, cfg: Config) -> Vec<&'static str> {
        reload::apply(&self.app, &self.api_key, cfg)
    }

    /// Waits (bounded) until the store is migrated; for tests and tools that need it.
    pub async fn store_ready(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < deadline {
            if self.app.store.is_ready() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// Graceful shutdown: refuse new work, close every client with 1001, wait for their
    /// tasks at most `shutdown_timeout_s`.
    pub async fn shutdown(self) {
        let app = &self.app;
        app.draining.store(true, SeqCst);
        self.stop.cancel();
        app.hub.close_all(CloseCode::GoingAway);
        app.tracker.close();
        let limit = Duration::from_secs(app.cfg().shutdown_timeout_s);
        if tokio::time::timeout(limit, app.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                remaining = app.tracker.len(),
                "shutdown timeout: leaving connections behind"
            );
        }
        let _ = self.done.await;
        // Every connection is gone (or left behind at the timeout): the workers go too.
        let app = self.app.clone();
        let _ = tokio::task::spawn_blocking(move || app.workers.stop()).await;
    }

    pub fn scheme(&self) -> &'static str {
        if self.app.tls {
            "https"
        } else {
            "http"
        }
    }
}

/// How long the start waits for the first migration attempt before accepting anyway.
const FIRST_MIGRATION_WAIT: Duration = Duration::from_secs(5);

/// Applies migrations, retrying with backoff while the database is unreachable: the node
/// serves WebSockets meanwhile and the announcement endpoints answer 503.
/// `first_attempt` fires once the first try has finished, either way.
async fn migrate_until_ready(
    store: Arc<dyn store::Store>,
    first_attempt: tokio::sync::oneshot::Sender<()>,
    stop: CancellationToken,
) {
    let mut first_attempt = Some(first_attempt);
    let mut delay = Duration::from_millis(500);
    loop {
        let result = store.migrate().await;
        if let Some(tx) = first_attempt.take() {
            let _ = tx.send(());
        }
        match result {
            Ok(()) => {
                tracing::info!("store ready");
                return;
            }
            Err(e) => tracing::error!("store not ready, retrying in {delay:?}: {e}"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}
