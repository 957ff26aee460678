//! The hub: who is connected (connection → user → devices, groups, channels) and
//! fan-out to them. It never awaits a socket: delivering is pushing a shared frame into
//! each recipient's bounded [`Outbox`](crate::connection::outbox::Outbox).

pub mod budget;
pub mod channels;
pub mod fanout;
pub mod namespace;
pub mod presence;
#[cfg(test)]
mod prop_tests;
pub mod registry;
pub mod sweeper;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::metrics::Metrics;
use channels::ChannelLimits;
pub use fanout::{Delivered, Exclude, Publication, Target};
pub use namespace::Namespaces;
pub use registry::{Admission, ConnHandle, Registration, Registry};

pub struct Hub {
    pub registry: Arc<Registry>,
    pub namespaces: Namespaces,
    pub metrics: Arc<Metrics>,
    pub node: String,
    /// Random per process, so connection ids are unique across restarts and nodes.
    node_tag: String,
    next_conn: AtomicU64,
    started: Instant,
    pub heartbeat_s: u64,
    pub idle_timeout_s: u64,
    pub leeway_s: u64,
}

impl Hub {
    pub fn new(cfg: &Config, metrics: Arc<Metrics>) -> Hub {
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
            namespaces: Namespaces::new(&cfg.namespaces),
            metrics,
            node: cfg.node(),
            node_tag: format!("{:06x}", rand::random::<u32>() & 0xFF_FFFF),
            next_conn: AtomicU64::new(1),
            started: Instant::now(),
            heartbeat_s: cfg.ws.heartbeat_s,
            idle_timeout_s: cfg.ws.idle_timeout_s,
            leeway_s: cfg.auth.leeway_s,
        }
    }

    /// A fresh connection id such as `a1b2c3-17`.
    pub fn next_conn_id(&self) -> (u64, Arc<str>) {
        let n = self.next_conn.fetch_add(1, Relaxed);
        (n, Arc::from(format!("{}-{n}", self.node_tag)))
    }

    /// The local connection with this id (`<node tag>-<n>`), if it is on this node.
    pub fn local_conn(&self, conn_id: &str) -> Option<Arc<ConnHandle>> {
        let n: u64 = conn_id
            .strip_prefix(self.node_tag.as_str())?
            .strip_prefix('-')?
            .parse()
            .ok()?;
        self.registry.get(n).filter(|c| &*c.conn_id == conn_id)
    }

    /// Milliseconds since the hub started: the clock of `last_seen`.
    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}
