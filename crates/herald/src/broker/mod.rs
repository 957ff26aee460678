//! The seam between nodes (DESIGN §1, §9) and the one way into the hub: every
//! publication — HTTP API, client `publish`, upstream relay, announcements — is handed to
//! a [`Broker`], which alone holds the hub's [`Inlet`]. On one node (`memory://`) that is
//! a direct call; the Redis broker carries each publication to every node, including
//! this one, and each node frames it once for its own connections.

pub mod cluster;
pub mod conn;
pub mod envelope;
pub mod follow;
pub mod gap;
pub mod gather;
pub mod idempotency;
pub mod keys;
pub mod redis;
pub mod revoke;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::auth::revoked::{NotKept, Revocation};
use crate::hub::channels::Earlier;
use crate::hub::disconnect::Disconnect;
use crate::hub::namespace::Denied;
use crate::hub::{Delivered, Hub, Inlet, Publication};
use crate::ws::frame::Frame;
pub use gather::Gathered;

/// A publication whose answer comes later (it went to another process first).
pub type Pending = Pin<Box<dyn Future<Output = Result<Delivered, Denied>> + Send + 'static>>;

/// Resolves when a local subscriber may join a channel (see [`Broker::follow`]).
pub type Ready = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Publications read from a shared history for one replay (see [`Broker::history`]).
pub type Reading = Pin<Box<dyn Future<Output = Vec<Earlier>> + Send + 'static>>;

/// What a disconnect order did: connections closed on this node, and whether it was
/// sent to the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ordered {
    pub here: usize,
    pub forwarded: bool,
}

/// What other nodes answered a question (`Broker::gather_connections`).
pub type Gathering = Pin<Box<dyn Future<Output = Result<Gathered, String>> + Send + 'static>>;

/// The answer to a publication: now, or once the broker has it.
pub enum Submitted {
    Done(Result<Delivered, Denied>),
    Pending(Pending),
}

impl Submitted {
    pub async fn wait(self) -> Result<Delivered, Denied> {
        match self {
            Submitted::Done(r) => r,
            Submitted::Pending(f) => f.await,
        }
    }
}

/// Whether cross-node delivery works right now (`/readyz`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Up,
    /// Only this node's clients are reached; the reason is for operators.
    Degraded(&'static str),
}

pub trait Broker: Send + Sync {
    /// Delivers `p` to the connections it targets on every node; the answer says what
    /// it reached here and, on a channel with history, its offset and epoch.
    fn publish(&self, p: Publication) -> Submitted;

    /// Queues an announcement event's frame to every connection on every node.
    fn announce(&self, frame_text: &[u8]);

    /// Closes the connections `order` names on every node; answers how many were
    /// closed here and whether the order went to the other nodes (they act when it
    /// reaches them).
    fn disconnect(&self, order: Disconnect) -> Ordered {
        Ordered {
            here: self.hub().disconnect(&order),
            forwarded: false,
        }
    }

    /// Keeps `r` on every node (and where nodes share state, for nodes that start
    /// later) and closes the connections whose current token it refuses; answers how
    /// many were closed here and whether it went to the other nodes.
    fn revoke(&self, r: Revocation) -> Result<Ordered, NotKept> {
        Ok(Ordered {
            here: self.hub().revoke(&r)?,
            forwarded: false,
        })
    }

    /// The other nodes' connections matching `search` (each node's newest `limit`),
    /// bounded in time ([`gather::DEADLINE`]); None on one node.
    fn gather_connections(&self, _search: &str, _limit: usize) -> Option<Gathering> {
        None
    }

    /// A local subscriber is about to join `channel`: None when it may join now, or
    /// what to wait for first (the node starting to follow the channel across nodes,
    /// its copy brought to the shared history's top). Bounded: it resolves whatever
    /// happens. On one node there is nothing to wait for.
    fn follow(&self, _channel: &str) -> Option<Ready> {
        None
    }

    /// Reads offsets `from..=to` of `channel` in `epoch` from the shared history, for a
    /// replay that reaches further back than this node's copy (evicted by the node's
    /// history budget). None where there is no shared history; bounded in time, and
    /// empty if the read failed (the replay is then `recovered:false`).
    fn history(&self, _channel: &str, _from: u64, _to: u64, _epoch: Arc<str>) -> Option<Reading> {
        None
    }

    /// How many channels this node follows across nodes (`/api/stats`).
    fn following(&self) -> usize {
        0
    }

    fn health(&self) -> Health {
        Health::Up
    }

    /// The view of all nodes (presence, totals); None on one node, where the hub's
    /// own view is the cluster's.
    fn cluster(&self) -> Option<&Arc<cluster::ClusterView>> {
        None
    }

    /// The hub this broker delivers into.
    fn hub(&self) -> &Arc<Hub>;
}

/// One process: publishing is delivering locally.
pub struct MemoryBroker {
    inlet: Inlet,
    seen: idempotency::Seen,
}

impl MemoryBroker {
    pub fn new(inlet: Inlet) -> MemoryBroker {
        MemoryBroker {
            inlet,
            seen: idempotency::Seen::default(),
        }
    }
}

impl Broker for MemoryBroker {
    fn publish(&self, p: Publication) -> Submitted {
        let Some(key) = p.idempotency_key.as_deref() else {
            return Submitted::Done(self.inlet.deliver(&p, None));
        };
        let scope = idempotency::scope(&p, key);
        match self.seen.claim(&scope, std::time::Instant::now()) {
            idempotency::Claim::Repeat(first) => Submitted::Done(Ok(first)),
            idempotency::Claim::InProgress => Submitted::Done(Err(Denied::InProgress)),
            idempotency::Claim::New => {
                let result = self.inlet.deliver(&p, None);
                self.seen.settle(&scope, result.as_ref().ok());
                Submitted::Done(result)
            }
        }
    }

    fn announce(&self, frame_text: &[u8]) {
        self.inlet.send_to_all(&Frame::text(frame_text));
    }

    fn hub(&self) -> &Arc<Hub> {
        self.inlet.hub()
    }
}
