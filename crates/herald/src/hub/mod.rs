//! The hub: who is connected (connection → user → devices, groups, channels) and
//! fan-out to them. It never awaits a socket: delivering is pushing a shared frame into
//! each recipient's bounded [`Outbox`](crate::outbox::Outbox).

pub mod budget;
pub mod channels;
pub mod disconnect;
pub mod fanout;
pub mod listing;
pub mod namespace;
pub mod presence;
pub mod presence_events;
#[cfg(test)]
mod prop_tests;
pub mod registry;
pub mod request;
pub mod sweeper;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use arc_swap::ArcSwap;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::ids::ConnId;
use crate::metrics::Metrics;
use channels::ChannelLimits;
pub use fanout::{Delivered, Exclude, Inlet, Publication, Route, Target};
pub use namespace::Namespaces;
pub use registry::{Admission, ConnHandle, Registration, Registry};

pub struct Hub {
    pub registry: Arc<Registry>,
    /// Swapped by a config reload; a resolve sees one consistent set.
    namespaces: ArcSwap<Namespaces>,
    pub metrics: Arc<Metrics>,
    pub node: String,
    /// Random per process, so connection ids are unique across restarts and nodes.
    node_tag: String,
    next_conn: AtomicU64,
    /// tokio's clock, so idle timeouts are testable with paused time.
    started: tokio::time::Instant,
    pub heartbeat_s: AtomicU64,
    pub idle_timeout_s: AtomicU64,
    pub leeway_s: u64,
    /// Tokens refused at connect and on `refresh` (DESIGN §13), the cluster's records.
    pub revoked: crate::auth::revoked::Revocations,
    /// `presence.redis_keys`: the cluster view also keeps `P:online:<user>` and
    /// publishes user events on `P:presence`.
    pub redis_presence_keys: bool,
}

impl Hub {
    /// The hub, and the one [`Inlet`] that publishes into it (for the broker).
    pub fn new(cfg: &Config, metrics: Arc<Metrics>) -> (Arc<Hub>, Inlet) {
        let hub = Arc::new(Hub::build(cfg, metrics));
        (hub.clone(), Inlet::new(hub))
    }

    fn build(cfg: &Config, metrics: Arc<Metrics>) -> Hub {
        Hub {
            registry: Arc::new(Registry::new(
                cfg.limits.connections_per_user,
                cfg.limits.connections_per_ip,
                Duration::from_millis(cfg.presence.grace_ms),
                ChannelLimits {
                    max_frame: cfg.ws.queue_bytes,
                    history_bytes: cfg.limits.history_bytes,
                    channels_per_user: cfg.limits.channels_per_user,
                },
            )),
            namespaces: ArcSwap::from_pointee(Namespaces::new(
                &cfg.namespaces,
                &cfg.ws.compression,
            )),
            metrics,
            node: cfg.node(),
            node_tag: format!("{:06x}", rand::random::<u32>() & 0xFF_FFFF),
            next_conn: AtomicU64::new(1),
            started: tokio::time::Instant::now(),
            heartbeat_s: AtomicU64::new(cfg.ws.heartbeat_s),
            idle_timeout_s: AtomicU64::new(cfg.ws.idle_timeout_s),
            leeway_s: cfg.auth.leeway_s,
            revoked: crate::auth::revoked::Revocations::default(),
            redis_presence_keys: cfg.presence.redis_keys,
        }
    }

    /// The namespaces in force now.
    pub fn namespaces(&self) -> Arc<Namespaces> {
        self.namespaces.load_full()
    }

    /// Applies what a reloaded config may change live: namespaces, connection caps,
    /// channel budgets, heartbeat and idle timeout. Existing channels keep the
    /// namespace settings they were created with until they are forgotten.
    pub fn apply(&self, cfg: &Config) {
        self.namespaces.store(Arc::new(Namespaces::new(
            &cfg.namespaces,
            &cfg.ws.compression,
        )));
        self.registry.set_caps(
            cfg.limits.connections_per_user,
            cfg.limits.connections_per_ip,
        );
        self.registry.channels.set_limits(ChannelLimits {
            max_frame: cfg.ws.queue_bytes,
            history_bytes: cfg.limits.history_bytes,
            channels_per_user: cfg.limits.channels_per_user,
        });
        self.heartbeat_s.store(cfg.ws.heartbeat_s, Relaxed);
        self.idle_timeout_s.store(cfg.ws.idle_timeout_s, Relaxed);
    }

    /// A fresh connection id such as `a1b2c3-17`.
    pub fn next_conn_id(&self) -> (u64, ConnId) {
        let n = self.next_conn.fetch_add(1, Relaxed);
        (n, ConnId::new(&self.node_tag, n))
    }

    /// This process's random tag (the prefix of its connection ids).
    pub fn node_tag(&self) -> &str {
        &self.node_tag
    }

    /// The local connection with this id (`<node tag>-<n>`), if it is on this node.
    pub fn local_conn(&self, conn_id: &str) -> Option<Arc<ConnHandle>> {
        let n = ConnId::local_number(conn_id, &self.node_tag)?;
        self.registry.get(n).filter(|c| c.conn_id == conn_id)
    }

    /// Milliseconds since the hub started: the clock of `last_seen`.
    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}
