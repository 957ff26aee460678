//! Fan-out: one frame per publication, a refcount per recipient, never a wait.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use serde_json::value::RawValue;

use super::channels::{Lane, Outgoing, Published, Refused};
use super::namespace::Denied;
use super::registry::ConnHandle;
use super::Hub;
use crate::ids::{ConnId, UserId};
use crate::metrics::Refusal;
use crate::outbox::Push;
use crate::protocol::codes::CloseCode;
use crate::protocol::server::pub_frame;
use crate::ws::frame::Frame;

/// Who a publication is for (DESIGN §4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    All,
    User(UserId),
    Group(String),
    Channel(String),
}

/// Recipients to leave out: a user (all their devices) and/or one connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Exclude {
    pub user: Option<UserId>,
    pub conn: Option<ConnId>,
    /// Connections whose token names this device (the upstream relay's sender).
    pub device: Option<String>,
    /// The user and device of the connection `conn` names, resolved where it lives, so a
    /// node that does not hold it can still keep it out of a replay.
    pub conn_device: Option<(UserId, Arc<str>)>,
    /// When set, `conn` leaves out only a connection of this user: a user publishing over
    /// the HTTP API names their own connection so as not to hear their echo, and may not
    /// silence anyone else's. Checked wherever the exclusion is applied, on every node.
    pub conn_owner: Option<UserId>,
}

impl Exclude {
    pub fn excludes(&self, c: &ConnHandle) -> bool {
        self.user.as_ref().is_some_and(|u| *u == c.identity.user)
            || (self.conn.as_ref().is_some_and(|id| *id == c.conn_id) && self.owned(c))
            || (self.device.is_some() && self.device.as_deref() == c.identity.device.as_deref())
    }

    /// Whether `c` may be the excluded connection (see `conn_owner`).
    pub fn owned(&self, c: &ConnHandle) -> bool {
        self.conn_owner
            .as_ref()
            .is_none_or(|u| *u == c.identity.user)
    }

    /// What of this exclusion must outlive the excluded connection, to be kept with the
    /// publication in history (DESIGN §4: exclusions survive replay). `origin` is the
    /// connection `conn` names, if it is on this node: its next connection is the same
    /// user on the same device. None when nothing needs keeping.
    pub fn kept(&self, origin: Option<&ConnHandle>) -> Option<Arc<KeptExclusion>> {
        let conn_device = origin
            .filter(|c| self.owned(c))
            .and_then(conn_device)
            .or_else(|| self.conn_device.clone());
        let kept = KeptExclusion {
            user: self.user.clone(),
            device: self.device.as_deref().map(Arc::from),
            conn_device,
        };
        (kept != KeptExclusion::default()).then(|| Arc::new(kept))
    }
}

/// A connection's user and device, when its token names a device.
pub fn conn_device(c: &ConnHandle) -> Option<(UserId, Arc<str>)> {
    c.identity
        .device
        .as_ref()
        .map(|d| (c.identity.user.clone(), d.clone()))
}

/// The exclusions of a stored publication, applied again when it is replayed: by user,
/// by device name (the relay's sender), and by the excluded connection's user + device.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct KeptExclusion {
    user: Option<UserId>,
    device: Option<Arc<str>>,
    conn_device: Option<(UserId, Arc<str>)>,
}

impl KeptExclusion {
    pub fn excludes(&self, c: &ConnHandle) -> bool {
        let id = &c.identity;
        self.user.as_ref().is_some_and(|u| *u == id.user)
            || (self.device.is_some() && self.device.as_deref() == id.device.as_deref())
            || self
                .conn_device
                .as_ref()
                .is_some_and(|(u, d)| *u == id.user && Some(d) == id.device.as_ref())
    }
}

/// A publication as accepted from the HTTP API or a client.
#[derive(Debug)]
pub struct Publication {
    pub target: Target,
    pub exclude: Exclude,
    /// The publisher's payload, verbatim.
    pub data: Box<RawValue>,
    pub accepted: Instant,
    /// The user whose client published it: a channel it creates counts against that
    /// user's `limits.channels_per_user`. None for the HTTP API and the relay.
    pub creator: Option<UserId>,
    pub route: Route,
    /// The publisher's `idempotency_key`, checked by the broker (it never travels to
    /// other nodes: the origin decides whether a publication is a repeat).
    pub idempotency_key: Option<Box<str>>,
}

/// How a channel publication travels: the normal way, or as a `device_command` on the
/// priority lane (optionally to one device). The owned form of [`Lane`], so it can cross
/// nodes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Route {
    #[default]
    Normal,
    Command(Option<String>),
}

impl Route {
    pub fn lane(&self) -> Lane<'_> {
        match self {
            Route::Normal => Lane::Normal,
            Route::Command(d) => Lane::Command(d.as_deref()),
        }
    }

    /// The route a `sync` event travels.
    pub fn of_sync(event: &crate::protocol::sync::SyncEvent) -> Route {
        match Lane::of_sync(event) {
            Lane::Normal => Route::Normal,
            Lane::Command(d) => Route::Command(d.map(str::to_owned)),
        }
    }
}

/// The one way into the hub's fan-out, held by the broker alone (DESIGN §9: every
/// publication enters through the broker). [`Hub::new`] hands it out once; nothing else
/// can publish, so no path can stay node-local by mistake.
pub struct Inlet {
    hub: Arc<Hub>,
}

impl Inlet {
    pub(super) fn new(hub: Arc<Hub>) -> Inlet {
        Inlet { hub }
    }

    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// Delivers a publication to every local connection its target names. `position`
    /// is the offset and epoch the broker assigned (a shared history); None lets this
    /// node's channel assign them.
    pub fn deliver(
        &self,
        p: &Publication,
        position: Option<(u64, &Arc<str>)>,
    ) -> Result<Delivered, Denied> {
        // Recipients on other workers are woken once per worker, when this ends.
        let _wakes = crate::wake::Scope::begin();
        self.hub.deliver(p, position)
    }

    /// Brings `channel` to the shared history: its epoch, its last offset `top`, and
    /// the stored publications past what this node holds, delivered in order (to the
    /// subscribers it has, and into its copy of the history). Subscribers that may have
    /// missed something that cannot be delivered are closed with 4003.
    pub fn prime(
        &self,
        channel: &str,
        epoch: &Arc<str>,
        top: u64,
        stored: &[(u64, Publication)],
    ) -> Result<(), Denied> {
        let ns = self.hub.namespaces().resolve(channel)?;
        let _wakes = crate::wake::Scope::begin();
        let first = stored.first().map(|(offset, _)| *offset);
        let stale = self
            .hub
            .registry
            .channels
            .adopt(channel, &ns.config, epoch, top, first);
        for c in &stale {
            self.hub.close_for_resync(c);
        }
        for (offset, p) in stored {
            // One that no longer fits (a reload shrank the queues) is skipped, as it
            // would be live; the rest still follow in order.
            let _ = self.hub.deliver(p, Some((*offset, epoch)));
        }
        Ok(())
    }

    /// Closes the subscribers of `channel` with 4003: the shared history they follow
    /// restarted (a new epoch), so they must recover with `since` or start over.
    pub fn resync(&self, channel: &str) {
        for c in self.hub.registry.channels.subscribers_of(channel) {
            self.hub.close_for_resync(&c);
        }
    }

    /// Queues a server frame (an announcement event) to every local connection.
    pub fn send_to_all(&self, frame: &Frame) -> usize {
        let _wakes = crate::wake::Scope::begin();
        let frame = frame
            .clone()
            .deflatable(self.hub.namespaces().broadcast_deflate());
        self.hub
            .deliver_to(&Target::All, &Exclude::default(), &frame, Instant::now())
    }
}

/// What a publication reached on this node.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// Local connections it was queued to.
    pub queued: usize,
    /// Its offset and epoch, on a channel with history.
    pub position: Option<(u64, Arc<str>)>,
    /// A repeat of an idempotency key: this is the first publication's answer, and
    /// nothing was delivered this time.
    pub repeated: bool,
}

impl Hub {
    /// What a broker checks before a publication leaves this node, so that no node
    /// refuses what another accepted: the namespace, the frame size (with the widest
    /// position) and the creator's channel budget.
    /// Answers the history the publication needs (size, TTL in seconds), if any.
    pub fn admit(&self, p: &Publication) -> Result<Option<(usize, u64)>, Denied> {
        let Target::Channel(name) = &p.target else {
            let frame = pub_frame(None, None, &p.data);
            return self.fits(&frame).map(|()| None);
        };
        let ns = self.namespaces().resolve(name)?;
        let keep = p.route.lane().keeps_history(&ns.config);
        let widest = "f".repeat(16);
        let position = keep.then_some(crate::protocol::server::Position {
            offset: u64::MAX,
            epoch: &widest,
        });
        self.fits(&pub_frame(Some(name), position, &p.data))?;
        if let (true, Some(user)) = (keep, &p.creator) {
            self.registry
                .channels
                .reserve(name, &ns.config, user)
                .map_err(|r| self.refused(r))?;
        }
        Ok(keep.then_some((ns.config.history_size, ns.config.history_ttl_s)))
    }

    fn fits(&self, frame: &Frame) -> Result<(), Denied> {
        let limit = self.registry.channels.max_frame();
        if frame.len() > limit {
            return Err(self.refused(Refused::TooLarge {
                frame: frame.len(),
                limit,
            }));
        }
        Ok(())
    }

    /// Delivers a publication to every local connection its target names (through the
    /// [`Inlet`] only).
    fn deliver(
        &self,
        p: &Publication,
        position: Option<(u64, &Arc<str>)>,
    ) -> Result<Delivered, Denied> {
        let lane = p.route.lane();
        let delivered = match &p.target {
            Target::Channel(name) => {
                let ns = self.namespaces().resolve(name)?;
                // Where the publication is stored, its exclusions are stored with it (the
                // excluded connection's device too), so a replay leaves out the same.
                let kept = if lane.keeps_history(&ns.config) {
                    let origin = p.exclude.conn.as_deref().and_then(|id| self.local_conn(id));
                    p.exclude.kept(origin.as_deref())
                } else {
                    None
                };
                let out = Outgoing {
                    data: &p.data,
                    exclude: &p.exclude,
                    kept,
                    lane,
                    accepted: p.accepted,
                    creator: p.creator.as_ref(),
                    position,
                };
                let out: Published = self
                    .registry
                    .channels
                    .publish(name, &ns.config, &out)
                    .map_err(|r| self.refused(r))?;
                for c in &out.slow {
                    self.close_slow_consumer(c);
                }
                for c in &out.resync {
                    self.close_for_resync(c);
                }
                if out.dropped > 0 {
                    self.metrics.dropped.fetch_add(out.dropped as u64, Relaxed);
                    self.metrics
                        .dropped_oldest
                        .fetch_add(out.dropped as u64, Relaxed);
                }
                Delivered {
                    queued: out.queued,
                    position: out.position,
                    repeated: false,
                }
            }
            other => {
                let frame = pub_frame(None, None, &p.data)
                    .deflatable(self.namespaces().broadcast_deflate());
                let limit = self.registry.channels.max_frame();
                if frame.len() > limit {
                    return Err(self.refused(Refused::TooLarge {
                        frame: frame.len(),
                        limit,
                    }));
                }
                Delivered {
                    queued: self.deliver_to(other, &p.exclude, &frame, p.accepted),
                    position: None,
                    repeated: false,
                }
            }
        };
        self.metrics.publications.fetch_add(1, Relaxed);
        self.metrics
            .deliveries
            .fetch_add(delivered.queued as u64, Relaxed);
        Ok(delivered)
    }

    /// Counts a refused publication and says why, for the caller's answer.
    fn refused(&self, r: Refused) -> Denied {
        match r {
            Refused::TooLarge { frame, limit } => {
                self.metrics.refuse(Refusal::PublicationTooLarge);
                Denied::TooLarge(format!(
                    "the publication's frame is {frame} bytes; connections queue at most {limit} (ws.queue_bytes)"
                ))
            }
            Refused::ChannelBudget => {
                self.metrics.refuse(Refusal::ChannelBudget);
                Denied::ChannelBudget
            }
        }
    }

    /// Queues `frame` to every local connection `target` names (not channels, which
    /// go through [`Hub::deliver`] for offsets and history), except `exclude`.
    /// Connections whose queue is full are closed with 4000 (slow consumer) and counted.
    fn deliver_to(
        &self,
        target: &Target,
        exclude: &Exclude,
        frame: &Frame,
        accepted: Instant,
    ) -> usize {
        let mut queued = 0usize;
        let mut slow: Vec<Arc<ConnHandle>> = Vec::new();
        // A backend publisher is not an audience: "everyone" means every client. (Its
        // identity is looked at only while some backend is connected.)
        let skip_backends = *target == Target::All && self.registry.has_backends();
        let mut visit = |c: &Arc<ConnHandle>| {
            if exclude.excludes(c) || (skip_backends && c.identity.backend) {
                return;
            }
            match c.outbox.try_push(frame.clone(), accepted) {
                Push::Queued => queued += 1,
                Push::Full => slow.push(c.clone()),
                Push::Closed => {}
            }
        };
        match target {
            Target::All => self.registry.for_each_conn(&mut visit),
            Target::User(u) => self.registry.users.for_each(u, &mut visit),
            Target::Group(g) => self.registry.groups.for_each(g, &mut visit),
            Target::Channel(_) => {}
        }
        for c in slow {
            self.close_slow_consumer(&c);
        }
        queued
    }

    /// Closes a subscriber that missed publications this node can no longer replay
    /// (a gap in a shared history's offsets): 4003, so it reconnects with `since`.
    fn close_for_resync(&self, c: &ConnHandle) {
        let code = CloseCode::Resync;
        if c.outbox
            .close(Some(Frame::close(code.code(), code.reason())), false)
        {
            tracing::info!(conn_id = %c.conn_id, "missed publications on a channel: closed with 4003");
        }
    }

    /// Closes a connection whose queue overflowed: queued data is dropped, 4000 is sent.
    pub fn close_slow_consumer(&self, c: &ConnHandle) {
        let dropped = c.outbox.depth() as u64;
        let code = CloseCode::SlowConsumer;
        if c.outbox
            .close(Some(Frame::close(code.code(), code.reason())), true)
        {
            self.metrics.dropped.fetch_add(dropped + 1, Relaxed);
            self.metrics.slow_consumer_disconnects.fetch_add(1, Relaxed);
            self.metrics.refuse(Refusal::SlowConsumer);
            tracing::info!(conn_id = %c.conn_id, user_id = %c.identity.user, "slow consumer closed with 4000");
        }
    }

    /// Closes every connection with `code` (shutdown: 1001), flushing what is queued.
    pub fn close_all(&self, code: CloseCode) {
        let frame = Frame::close(code.code(), code.reason());
        let _wakes = crate::wake::Scope::begin();
        self.registry.for_each_conn(|c| {
            c.outbox.close(Some(frame.clone()), false);
        });
    }
}
