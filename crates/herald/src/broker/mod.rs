//! The seam between nodes (DESIGN §1, §9). A publication accepted on any node goes to the
//! broker; the broker hands every publication, from this node or another, to the local
//! hub. On one node (`memory://`) that is a direct call; the Redis engine of the
//! scale-out issue implements the same trait.

use std::time::Instant;

use crate::hub::{Exclude, Hub, Target};
use crate::ws::frame::Frame;

pub trait Broker: Send + Sync {
    /// Delivers a publication to every node's subscribers; returns the local count.
    fn publish(
        &self,
        hub: &Hub,
        target: &Target,
        exclude: &Exclude,
        frame: &Frame,
        accepted: Instant,
    ) -> usize;
}

/// One process: publishing is delivering locally.
pub struct MemoryBroker;

impl Broker for MemoryBroker {
    fn publish(
        &self,
        hub: &Hub,
        target: &Target,
        exclude: &Exclude,
        frame: &Frame,
        accepted: Instant,
    ) -> usize {
        hub.deliver(target, exclude, frame, accepted)
    }
}
