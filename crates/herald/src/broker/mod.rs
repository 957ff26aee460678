//! The seam between nodes (DESIGN §1, §9). A publication accepted on any node goes to the
//! broker; the broker hands every publication, from this node or another, to the local
//! hub. On one node (`memory://`) that is a direct call; the Redis engine of the
//! scale-out issue implements the same trait.

use crate::hub::channels::Lane;
use crate::hub::namespace::Denied;
use crate::hub::{Delivered, Hub, Publication};

pub trait Broker: Send + Sync {
    /// Delivers a publication to every node's subscribers; returns what it reached here.
    /// `lane` sends a channel publication to one device's priority lane instead.
    fn publish(
        &self,
        hub: &Hub,
        publication: &Publication,
        lane: Lane<'_>,
    ) -> Result<Delivered, Denied>;
}

/// One process: publishing is delivering locally.
pub struct MemoryBroker;

impl Broker for MemoryBroker {
    fn publish(
        &self,
        hub: &Hub,
        publication: &Publication,
        lane: Lane<'_>,
    ) -> Result<Delivered, Denied> {
        hub.publish_on_lane(publication, lane)
    }
}
