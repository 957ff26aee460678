//! The HTTP face of a node: the accept loop (plain or TLS, with the slowloris guard),
//! the router, and one file per endpoint group.

pub mod assets;
pub mod auth;
pub mod batch;
pub mod body;
pub mod broadcasts;
pub mod conformance;
pub mod conn_caps;
pub mod connections;
pub mod cors;
pub mod error;
pub mod head_guard;
pub mod openapi;
pub mod presence;
pub mod prometheus;
pub mod publish;
pub mod revoke;
pub mod router;
pub mod server;
pub mod sse;
pub mod stats;
pub mod tls;
pub mod user_rate;
pub mod ws_upgrade;

use std::sync::atomic::AtomicBool;

use arc_swap::ArcSwap;
use std::sync::Arc;

use tokio_util::task::TaskTracker;

use crate::auth::api_key::ApiKeys;
use crate::auth::jwt::Verifier;
use crate::auth::proxy::TrustedProxies;
use crate::broker::Broker;
use crate::config::Config;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::store::Store;

/// Everything a request handler may need, shared by reference count.
pub struct AppState {
    /// The configuration in force: swapped whole by `SIGHUP` (see [`crate::reload`]);
    /// keys that need a restart keep their start-up values.
    pub cfg: ArcSwap<Config>,
    pub hub: Arc<Hub>,
    /// Where publications go: the local hub on one node, every node with Redis.
    pub broker: Arc<dyn Broker>,
    /// Announcements and acknowledgements (SQLite or Postgres).
    pub store: Arc<dyn Store>,
    pub metrics: Arc<Metrics>,
    /// None when `auth.mode = "none"`.
    pub verifier: Option<Arc<Verifier>>,
    /// Verifies admin JWTs on the HTTP API even when WebSocket auth is off.
    pub api_verifier: Arc<Verifier>,
    pub api_keys: ArcSwap<ApiKeys>,
    pub draining: AtomicBool,
    /// Open HTTP connections, per node and per IP.
    pub http_caps: Arc<conn_caps::HttpConnCaps>,
    /// Whose forwarded headers are believed.
    pub proxies: ArcSwap<TrustedProxies>,
    /// The last `/readyz` store probe.
    pub store_probe: stats::StoreProbe,
    /// Every connection task, so shutdown can wait for them.
    pub tracker: TaskTracker,
    pub tls: bool,
    /// Serve `/conformance/echo` (tests only).
    pub conformance_echo: bool,
    /// The worker threads connections live on (none by default, or on one core).
    pub workers: crate::shard::Workers,
    /// Users publishing with their token on the HTTP API, held to a connection's rate.
    pub user_rates: user_rate::UserRates,
}

pub type App = Arc<AppState>;

impl AppState {
    /// The configuration now; hold it for one request or connection set-up, not longer.
    pub fn cfg(&self) -> Arc<Config> {
        self.cfg.load_full()
    }
}
