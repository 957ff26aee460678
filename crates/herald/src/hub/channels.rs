//! Channels: subscribers, history with offsets and epochs, presence membership.
//!
//! Each channel has one mutex. A publication takes it to assign the next offset, append
//! to history and queue the (once-built) frame to every subscriber; a subscribe takes it
//! to compute what a `since` missed, queue `subscribed` plus the replay, and join. The
//! two therefore cannot interleave: every publication is either in the replay or
//! delivered live, never both and never neither, however they race. Queuing never
//! blocks, so the lock is held for a fan-out's worth of pushes and no `.await`.
//!
//! What all channels hold together is bounded by the node's [`HistoryLedger`]: past the
//! budget the oldest history, across channels, is evicted (those channels then answer
//! `recovered:false`). A replay is queued whole or not at all: one that cannot fit the
//! connection's queue is answered `recovered:false`, never a 4000 the client would hit
//! again on every reconnect. Exclusions are stored with each publication and honoured
//! in a replay too.

use std::cmp::Reverse;
use std::collections::hash_map::DefaultHasher;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use serde_json::value::RawValue;
use serde_json::Value;

use super::budget::{Creations, HistoryLedger, EXCLUSION_OVERHEAD, STORED_OVERHEAD};
use super::fanout::{Exclude, KeptExclusion};
use super::registry::ConnHandle;
use crate::config::{NamespaceConfig, SlowConsumerPolicy};
use crate::ids::UserId;
use crate::outbox::Push;
use crate::protocol::client::Since;
use crate::protocol::server::{
    presence_frame, pub_frame, skipped_frame, subscribed_frame, Position,
};
use crate::protocol::sync::SyncEvent;
use crate::ws::frame::Frame;

const SHARDS: usize = 16;

struct Stored {
    offset: u64,
    at: Instant,
    frame: Frame,
    /// Who must not get it in a replay either.
    exclude: Option<Arc<KeptExclusion>>,
}

impl Stored {
    /// What this entry counts against the node's history budget.
    fn cost(&self) -> usize {
        self.frame.len()
            + STORED_OVERHEAD
            + if self.exclude.is_some() {
                EXCLUSION_OVERHEAD
            } else {
                0
            }
    }
}

struct State {
    /// Set when the channel was removed from the map; holders of a stale `Arc` retry.
    dead: bool,
    epoch: Arc<str>,
    last_offset: u64,
    history: VecDeque<Stored>,
    subscribers: HashMap<u64, Arc<ConnHandle>>,
    /// Presence: user → how many of their connections are subscribed.
    members: HashMap<UserId, usize>,
    /// Presence: users whose last connection left, and when (leave is announced after the grace).
    /// (tokio's clock, so the grace is testable with paused time.)
    leaving: HashMap<UserId, tokio::time::Instant>,
    /// Presence: users present on this channel on other nodes (the cluster view), so
    /// that a join or leave is announced once, when the user enters or leaves the
    /// cluster's presence, not each node's.
    remote: HashSet<UserId>,
}

pub struct Channel {
    name: Arc<str>,
    cfg: Arc<NamespaceConfig>,
    /// The user whose client publication created this channel (its creation is given
    /// back when the channel is forgotten).
    creator: Option<UserId>,
    state: Mutex<State>,
}

impl Channel {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn new_channel(name: &str, cfg: &Arc<NamespaceConfig>, creator: Option<UserId>) -> Arc<Channel> {
    Arc::new(Channel {
        name: Arc::from(name),
        cfg: cfg.clone(),
        creator,
        state: Mutex::new(State {
            dead: false,
            epoch: new_epoch(),
            last_offset: 0,
            history: VecDeque::new(),
            subscribers: HashMap::new(),
            members: HashMap::new(),
            leaving: HashMap::new(),
            remote: HashSet::new(),
        }),
    })
}

/// 64 random bits: a channel that is forgotten and recreated must not reuse an epoch a
/// client still holds (32 bits collide after ~65k lifetimes of one name).
fn new_epoch() -> Arc<str> {
    Arc::from(format!("{:016x}", rand::random::<u64>()))
}

/// How a publication is delivered within its channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane<'a> {
    /// Into history (if the namespace keeps it) and to every subscriber.
    Normal,
    /// A `device_command`: ahead of queued traffic, never into history (a replay must
    /// not re-run a command), and only to the subscribers whose token names the device
    /// when one is given.
    Command(Option<&'a str>),
}

impl<'a> Lane<'a> {
    /// Whether a publication on this lane is kept in `cfg`'s history.
    pub fn keeps_history(self, cfg: &NamespaceConfig) -> bool {
        cfg.has_history() && self == Lane::Normal
    }

    /// The lane a `sync` event travels in.
    pub fn of_sync(event: &'a SyncEvent) -> Lane<'a> {
        match event {
            SyncEvent::DeviceCommand { target_device, .. } => {
                Lane::Command(target_device.as_deref())
            }
            _ => Lane::Normal,
        }
    }
}

/// A publication as a channel sees it.
pub struct Outgoing<'a> {
    pub data: &'a RawValue,
    /// Who is left out now.
    pub exclude: &'a Exclude,
    /// Who is left out of a replay later (see [`Exclude::kept`]).
    pub kept: Option<Arc<KeptExclusion>>,
    pub lane: Lane<'a>,
    pub accepted: Instant,
    /// A client publication's user (channel creation budget).
    pub creator: Option<&'a UserId>,
    /// The offset and epoch a shared history (the Redis broker) assigned; None: this
    /// channel assigns them.
    pub position: Option<(u64, &'a Arc<str>)>,
}

#[derive(Default)]
pub struct Published {
    pub queued: usize,
    pub position: Option<(u64, Arc<str>)>,
    /// Frames dropped by the `drop_oldest` policy.
    pub dropped: usize,
    /// Connections whose queue overflowed under the `disconnect` policy.
    pub slow: Vec<Arc<ConnHandle>>,
    /// Subscribers that missed publications this node never saw (a gap in assigned
    /// offsets, or a new epoch): they are closed with 4003 to recover with `since`.
    pub resync: Vec<Arc<ConnHandle>>,
}

/// A publication older than a node's copy of its channel, read from a shared history
/// for one replay.
pub struct Earlier {
    pub offset: u64,
    pub data: Box<RawValue>,
    /// Who must not get it in a replay.
    pub kept: Option<Arc<KeptExclusion>>,
}

#[derive(Default)]
pub struct Subscribed {
    pub recovered: bool,
    pub replayed: usize,
    /// The replay was possible but did not fit the connection's queue: answered
    /// `recovered:false` instead.
    pub too_big: bool,
    pub slow: bool,
}

/// Why a publication was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// Its frame is larger than any connection's queue: it could never be delivered.
    TooLarge { frame: usize, limit: usize },
    /// Creating the channel would take its publisher's user over `channels_per_user`.
    ChannelBudget,
}

/// The node-wide limits of [`Channels`].
#[derive(Debug, Clone, Copy)]
pub struct ChannelLimits {
    /// The largest frame a connection's queue can hold (`ws.queue_bytes`).
    pub max_frame: usize,
    /// History of all channels together (`limits.history_bytes`).
    pub history_bytes: usize,
    /// Channels one user's clients may create by publishing (`limits.channels_per_user`).
    pub channels_per_user: usize,
}

impl Default for ChannelLimits {
    fn default() -> Self {
        ChannelLimits {
            max_frame: 1024 * 1024,
            history_bytes: 64 * 1024 * 1024,
            channels_per_user: 100,
        }
    }
}

pub struct Channels {
    shards: Vec<RwLock<HashMap<Arc<str>, Arc<Channel>>>>,
    max_frame: AtomicUsize,
    /// What all channels' history costs; changed only with the history it counts.
    pub(crate) ledger: HistoryLedger,
    /// Channels each user's clients created; given back when the channel is forgotten.
    pub(crate) creations: Creations,
}

fn shard_of(name: &str) -> usize {
    let mut h = DefaultHasher::new();
    name.hash(&mut h);
    (h.finish() as usize) % SHARDS
}

impl Default for Channels {
    fn default() -> Self {
        Channels::new(ChannelLimits::default())
    }
}

impl Channels {
    pub fn new(limits: ChannelLimits) -> Channels {
        Channels {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            max_frame: AtomicUsize::new(limits.max_frame),
            ledger: HistoryLedger::new(limits.history_bytes),
            creations: Creations::new(limits.channels_per_user),
        }
    }

    pub fn max_frame(&self) -> usize {
        self.max_frame.load(Relaxed)
    }

    /// New limits from a config reload (publications from now on).
    pub fn set_limits(&self, limits: ChannelLimits) {
        self.max_frame.store(limits.max_frame, Relaxed);
        self.ledger.set_budget(limits.history_bytes);
        self.creations.set_limit(limits.channels_per_user);
    }

    fn shard(&self, name: &str) -> &RwLock<HashMap<Arc<str>, Arc<Channel>>> {
        // shard_of is taken modulo SHARDS, the length of `shards`: always in range.
        #[allow(
            clippy::indexing_slicing,
            reason = "shard_of(..) < SHARDS == shards.len()"
        )]
        &self.shards[shard_of(name)]
    }

    fn get(&self, name: &str) -> Option<Arc<Channel>> {
        self.shard(name)
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    /// The channel `name`, created if needed (a subscribe, the HTTP API, the relay).
    fn get_or_create(&self, name: &str, cfg: &Arc<NamespaceConfig>) -> Arc<Channel> {
        if let Some(c) = self.get(name) {
            return c;
        }
        let mut shard = self.shard(name).write().unwrap_or_else(|p| p.into_inner());
        shard
            .entry(Arc::from(name))
            .or_insert_with(|| new_channel(name, cfg, None))
            .clone()
    }

    /// As [`Channels::get_or_create`] for a client's publication: a channel its user
    /// creates counts against the user's budget, and is refused past it.
    fn get_or_create_by(
        &self,
        name: &str,
        cfg: &Arc<NamespaceConfig>,
        creator: &UserId,
    ) -> Result<Arc<Channel>, Refused> {
        if let Some(c) = self.get(name) {
            return Ok(c);
        }
        let mut shard = self.shard(name).write().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = shard.get(name) {
            return Ok(c.clone());
        }
        if !self.creations.try_reserve(creator) {
            return Err(Refused::ChannelBudget);
        }
        let channel = new_channel(name, cfg, Some(creator.clone()));
        shard.insert(channel.name.clone(), channel.clone());
        Ok(channel)
    }

    /// Creates `name` for `creator` ahead of its first publication, so the channel
    /// budget is checked before a shared history assigns it an offset.
    pub fn reserve(
        &self,
        name: &str,
        cfg: &Arc<NamespaceConfig>,
        creator: &UserId,
    ) -> Result<(), Refused> {
        self.get_or_create_by(name, cfg, creator).map(drop)
    }

    /// Publishes on `name`: offset, history, one frame for all subscribers. A frame no
    /// queue could hold is refused before it takes an offset or enters history.
    pub fn publish(
        &self,
        name: &str,
        cfg: &Arc<NamespaceConfig>,
        out: &Outgoing<'_>,
    ) -> Result<Published, Refused> {
        let keep = out.lane.keeps_history(cfg);
        let published = loop {
            let channel = match (keep, out.creator) {
                (true, Some(user)) => self.get_or_create_by(name, cfg, user)?,
                (true, None) => self.get_or_create(name, cfg),
                (false, _) => match self.get(name) {
                    Some(c) => c,
                    None => {
                        // Nobody to deliver to, but the answer must not depend on that.
                        self.check_size(&pub_frame(Some(name), None, out.data))?;
                        return Ok(Published::default());
                    }
                },
            };
            let mut st = channel.lock();
            if st.dead {
                continue;
            }
            let mut result = Published::default();
            let mut notice = None;
            let frame = if keep {
                let offset = match out.position {
                    None => st.last_offset + 1,
                    Some((offset, epoch)) => {
                        match follow(&mut st, offset, epoch, &self.ledger) {
                            Follow::Next => {}
                            Follow::Seen => return Ok(Published::default()),
                            Follow::Gap {
                                missed: Some((count, after)),
                            } => {
                                // What the shared history could not fill: said on the
                                // live connection, ahead of this publication.
                                notice = Some(skipped_frame(
                                    &Arc::from(name),
                                    count,
                                    Some(&(after, epoch.clone())),
                                ));
                            }
                            Follow::Gap { missed: None } => {
                                result.resync = st.subscribers.values().cloned().collect();
                            }
                        }
                        offset
                    }
                };
                let position = Position {
                    offset,
                    epoch: &st.epoch,
                };
                let frame = pub_frame(Some(name), Some(position), out.data)
                    .deflatable(cfg.deflate.as_ref());
                self.check_size(&frame)?;
                st.last_offset = offset;
                trim(&mut st, cfg, Instant::now(), &self.ledger);
                while st.history.len() >= cfg.history_size {
                    let Some(old) = st.history.pop_front() else {
                        break;
                    };
                    self.ledger.sub(old.cost());
                }
                let stored = Stored {
                    offset,
                    at: out.accepted,
                    frame: frame.clone(),
                    exclude: out.kept.clone(),
                };
                self.ledger.add(stored.cost());
                st.history.push_back(stored);
                result.position = Some((offset, st.epoch.clone()));
                frame
            } else {
                let frame = pub_frame(Some(name), None, out.data).deflatable(cfg.deflate.as_ref());
                self.check_size(&frame)?;
                frame
            };
            if let Some(n) = &notice {
                result.dropped += tell(&st, cfg, n, out.accepted);
            }
            for c in st.subscribers.values() {
                if out.exclude.excludes(c) || result.resync.iter().any(|r| r.id == c.id) {
                    continue;
                }
                let push = match out.lane {
                    Lane::Command(Some(d)) if c.identity.device.as_deref() != Some(d) => continue,
                    Lane::Command(_) => c.outbox.try_push_priority(frame.clone(), out.accepted),
                    Lane::Normal => c.outbox.try_push(frame.clone(), out.accepted),
                };
                match push {
                    Push::Queued => result.queued += 1,
                    Push::Closed => {}
                    Push::Full => match cfg.slow_consumer {
                        SlowConsumerPolicy::Disconnect => result.slow.push(c.clone()),
                        SlowConsumerPolicy::DropOldest => {
                            result.dropped +=
                                c.outbox.push_drop_oldest(frame.clone(), out.accepted);
                            result.queued += 1;
                        }
                    },
                }
            }
            break result;
        };
        if keep && self.ledger.over_budget() {
            self.evict_oldest();
        }
        Ok(published)
    }

    fn check_size(&self, frame: &Frame) -> Result<(), Refused> {
        let limit = self.max_frame();
        if frame.len() > limit {
            return Err(Refused::TooLarge {
                frame: frame.len(),
                limit,
            });
        }
        Ok(())
    }

    /// Brings the node's history down to the ledger's low-water mark by dropping the
    /// oldest stored publications across all channels. Channel locks are taken one at a
    /// time, never while a shard lock is held.
    pub fn evict_oldest(&self) {
        let Some(_evicting) = self.ledger.try_evict() else {
            return;
        };
        let target = self.ledger.low_water();
        let mut heap: BinaryHeap<Reverse<(Instant, usize)>> = BinaryHeap::new();
        let mut channels: Vec<Arc<Channel>> = Vec::new();
        for shard in &self.shards {
            let list = listed(shard);
            for channel in list {
                let front = channel.lock().history.front().map(|h| h.at);
                if let Some(at) = front {
                    heap.push(Reverse((at, channels.len())));
                    channels.push(channel);
                }
            }
        }
        let mut evicted = 0usize;
        while self.ledger.bytes() > target {
            let Some(Reverse((_, i))) = heap.pop() else {
                break;
            };
            let Some(channel) = channels.get(i) else {
                continue;
            };
            let mut st = channel.lock();
            if let Some(old) = st.history.pop_front() {
                self.ledger.sub(old.cost());
                evicted += 1;
            }
            if let Some(next) = st.history.front() {
                heap.push(Reverse((next.at, i)));
            }
        }
        if evicted > 0 {
            tracing::debug!(
                evicted,
                bytes = self.ledger.bytes(),
                budget = self.ledger.budget(),
                "history over the node budget: evicted the oldest"
            );
        }
    }

    /// Subscribes `conn`: queues `subscribed`, then exactly what `since` missed, then joins.
    pub fn subscribe(
        &self,
        conn: &Arc<ConnHandle>,
        name: &str,
        cfg: &Arc<NamespaceConfig>,
        since: Option<&Since>,
        reference: Option<&Value>,
    ) -> Subscribed {
        self.subscribe_with(conn, name, cfg, since, reference, &[])
    }

    /// The offsets `since` missed that this node's copy of `name` no longer (or never)
    /// held, when they could come from a shared history: the copy is in the same epoch
    /// and holds what came after them.
    pub fn missing(&self, name: &str, since: &Since) -> Option<(u64, u64)> {
        let channel = self.get(name)?;
        let st = channel.lock();
        if !channel.cfg.has_history() || since.epoch != *st.epoch || since.offset >= st.last_offset
        {
            return None;
        }
        let first = st.history.front().map_or(st.last_offset + 1, |h| h.offset);
        (first > since.offset + 1).then(|| (since.offset + 1, first - 1))
    }

    /// The last offset of `name` and its epoch, when this node's copy no longer holds
    /// that publication (for `latest_on_subscribe`; it may still be in a shared history).
    pub fn latest_missing(&self, name: &str) -> Option<(u64, Arc<str>)> {
        let channel = self.get(name)?;
        let st = channel.lock();
        let held = st
            .history
            .back()
            .is_some_and(|h| h.offset == st.last_offset);
        (channel.cfg.has_history() && st.last_offset > 0 && !held)
            .then(|| (st.last_offset, st.epoch.clone()))
    }

    /// As [`Channels::subscribe`], with `earlier`: publications older than this node's
    /// copy, read from the shared history for this replay (see [`Channels::missing`]).
    /// They are used only if they join up with the copy; otherwise the answer is
    /// `recovered:false`, as without them.
    pub fn subscribe_with(
        &self,
        conn: &Arc<ConnHandle>,
        name: &str,
        cfg: &Arc<NamespaceConfig>,
        since: Option<&Since>,
        reference: Option<&Value>,
        earlier: &[Earlier],
    ) -> Subscribed {
        loop {
            let channel = self.get_or_create(name, cfg);
            let mut st = channel.lock();
            if st.dead {
                continue;
            }
            let now = Instant::now();
            trim(&mut st, cfg, now, &self.ledger);
            let top = st.last_offset;
            let missed: Option<Vec<Frame>> = since.and_then(|s| {
                if !cfg.has_history() || s.epoch != *st.epoch || s.offset > top {
                    return None;
                }
                if s.offset == top {
                    return Some(Vec::new());
                }
                // Recoverable only if history (with what was read for this replay) still
                // starts at or before the first missed offset; what the publisher
                // excluded this connection from stays out.
                let first = st.history.front().map_or(top + 1, |h| h.offset);
                let mut frames = Vec::new();
                let mut next = s.offset.saturating_add(1);
                if first > next {
                    let from = next;
                    for e in earlier
                        .iter()
                        .filter(|e| e.offset >= from && e.offset < first)
                    {
                        if e.offset != next {
                            return None; // a hole in what was read
                        }
                        next += 1;
                        if !e.kept.as_ref().is_some_and(|k| k.excludes(conn)) {
                            let position = Position {
                                offset: e.offset,
                                epoch: &st.epoch,
                            };
                            frames.push(
                                pub_frame(Some(name), Some(position), &e.data)
                                    .deflatable(cfg.deflate.as_ref()),
                            );
                        }
                    }
                }
                (first <= next).then(|| {
                    frames.extend(
                        st.history
                            .iter()
                            .filter(|h| h.offset > s.offset)
                            .filter(|h| !h.exclude.as_ref().is_some_and(|e| e.excludes(conn)))
                            .map(|h| h.frame.clone()),
                    );
                    frames
                })
            });
            let epoch: &str = if cfg.has_history() { &st.epoch } else { "" };
            let mut out = Subscribed::default();
            if let Some(missed) = missed {
                let count = missed.len();
                let mut frames = Vec::with_capacity(count + 1);
                frames.push(subscribed_frame(name, top, epoch, true, reference));
                frames.extend(missed);
                // Whole or not at all: a replay the queue cannot hold is `recovered:false`.
                match conn.outbox.try_push_all(frames, now) {
                    Push::Queued => {
                        out.recovered = true;
                        out.replayed = count;
                    }
                    Push::Full => out.too_big = true,
                    Push::Closed => {}
                }
            }
            if !out.recovered {
                let mut frames = vec![subscribed_frame(name, top, epoch, false, reference)];
                if since.is_none() && cfg.latest_on_subscribe {
                    // The current state: the last publication, if it is still kept (its
                    // TTL not past) and this connection was not excluded from it.
                    frames.extend(latest(&st, top, earlier, conn, name, cfg));
                }
                out.slow = conn.outbox.try_push_all(frames, now) == Push::Full;
            }
            if st.subscribers.insert(conn.id, conn.clone()).is_none() && cfg.presence {
                join(&mut st, &channel.name, conn);
            }
            return out;
        }
    }

    /// Brings this node's copy of `name` to where the shared history stands (DESIGN §9):
    /// its `epoch`, its last offset `top`, and `first`, the oldest offset about to be
    /// delivered from the stream (None: nothing is). What is held stays if it continues
    /// into that; otherwise it is dropped, the copy resumes where the stream does, and
    /// the subscribers (who may have missed something) are answered for a 4003.
    pub fn adopt(
        &self,
        name: &str,
        cfg: &Arc<NamespaceConfig>,
        epoch: &Arc<str>,
        top: u64,
        first: Option<u64>,
    ) -> Vec<Arc<ConnHandle>> {
        loop {
            let channel = self.get_or_create(name, cfg);
            let mut st = channel.lock();
            if st.dead {
                continue;
            }
            let fresh = st.last_offset == 0 && st.history.is_empty();
            let resume = first.map_or(top, |f| f.saturating_sub(1));
            let continues =
                *st.epoch == **epoch && resume <= st.last_offset && st.last_offset <= top;
            if !fresh && continues {
                return Vec::new();
            }
            // A hole within the epoch is told on the live connections; a copy past the
            // shared top, or another epoch, cannot be: those subscribers resync.
            let hole = *st.epoch == **epoch && st.last_offset < resume;
            let resync = if fresh || hole {
                Vec::new()
            } else {
                st.subscribers.values().cloned().collect()
            };
            if hole && !fresh {
                let notice = skipped_frame(
                    &Arc::from(name),
                    resume - st.last_offset,
                    Some(&(st.last_offset, epoch.clone())),
                );
                tell(&st, cfg, &notice, Instant::now());
            }
            while let Some(old) = st.history.pop_front() {
                self.ledger.sub(old.cost());
            }
            st.epoch = epoch.clone();
            st.last_offset = resume;
            return resync;
        }
    }

    /// Removes `conn` from `name` (unsubscribe, or the connection went away).
    pub fn unsubscribe(&self, conn: &ConnHandle, name: &str) {
        let Some(channel) = self.get(name) else {
            return;
        };
        let mut st = channel.lock();
        if st.subscribers.remove(&conn.id).is_none() || !channel.cfg.presence {
            return;
        }
        if st.subscribers.is_empty() {
            // Nobody here to tell; refreshed again when someone subscribes.
            st.remote.clear();
        }
        let user = &conn.identity.user;
        let left = match st.members.get_mut(user) {
            Some(n) => {
                *n = n.saturating_sub(1);
                *n == 0
            }
            None => false,
        };
        if left {
            st.members.remove(user);
            st.leaving.insert(user.clone(), tokio::time::Instant::now());
        }
    }

    /// Users present on `name` (subscribed now, or left less than the grace ago).
    pub fn presence(&self, name: &str) -> Vec<UserId> {
        let Some(channel) = self.get(name) else {
            return Vec::new();
        };
        let st = channel.lock();
        let mut users: Vec<UserId> = st
            .members
            .keys()
            .chain(st.leaving.keys())
            .cloned()
            .collect();
        users.sort();
        users
    }

    /// The connections subscribed to `name`.
    pub fn subscribers_of(&self, name: &str) -> Vec<Arc<ConnHandle>> {
        self.get(name)
            .map(|c| c.lock().subscribers.values().cloned().collect())
            .unwrap_or_default()
    }

    /// The last offset and epoch of `name` here, once it has had a publication.
    pub fn top(&self, name: &str) -> Option<(u64, Arc<str>)> {
        let channel = self.get(name)?;
        let st = channel.lock();
        (st.last_offset > 0).then(|| (st.last_offset, st.epoch.clone()))
    }

    /// Channels with subscribers and a position: their name, last offset and epoch
    /// (what a node checks against the shared history after a broker outage).
    pub fn tops(&self) -> Vec<(Arc<str>, u64, Arc<str>)> {
        let mut out = Vec::new();
        for shard in &self.shards {
            let channels = listed(shard);
            for channel in channels {
                let st = channel.lock();
                if st.last_offset > 0 && !st.subscribers.is_empty() {
                    out.push((channel.name.clone(), st.last_offset, st.epoch.clone()));
                }
            }
        }
        out
    }

    /// Channels with presence and local subscribers: those whose presence on other
    /// nodes this node must know to announce joins and leaves cluster-wide.
    pub fn presence_watched(&self) -> Vec<Arc<str>> {
        let mut out = Vec::new();
        for shard in &self.shards {
            for channel in listed(shard).into_iter().filter(|c| c.cfg.presence) {
                if !channel.lock().subscribers.is_empty() {
                    out.push(channel.name.clone());
                }
            }
        }
        out
    }

    /// Who is present on `name` on other nodes now. A user who enters or leaves the
    /// cluster's presence by this (not present here) is announced to the local
    /// subscribers as a join or leave.
    pub fn set_remote_presence(&self, name: &str, users: HashSet<UserId>) {
        let Some(channel) = self.get(name) else {
            return;
        };
        let mut st = channel.lock();
        if st.subscribers.is_empty() || !channel.cfg.presence {
            return;
        }
        let here =
            |st: &State, u: &UserId| st.members.contains_key(u) || st.leaving.contains_key(u);
        let mut frames = Vec::new();
        for u in users.difference(&st.remote) {
            if !here(&st, u) {
                frames.push(presence_frame(name, "join", u));
            }
        }
        for u in st.remote.difference(&users) {
            if !here(&st, u) {
                frames.push(presence_frame(name, "leave", u));
            }
        }
        st.remote = users;
        let now = Instant::now();
        for frame in frames {
            for c in st.subscribers.values() {
                c.outbox.try_push(frame.clone(), now);
            }
        }
    }

    /// Every channel with presence and its present users (for the cluster view).
    pub fn presence_snapshot(&self) -> Vec<(Arc<str>, Vec<UserId>)> {
        let mut out = Vec::new();
        for shard in &self.shards {
            for channel in listed(shard).into_iter().filter(|c| c.cfg.presence) {
                let st = channel.lock();
                let users: Vec<UserId> = st
                    .members
                    .keys()
                    .chain(st.leaving.keys())
                    .cloned()
                    .collect();
                if !users.is_empty() {
                    out.push((channel.name.clone(), users));
                }
            }
        }
        out
    }

    pub fn subscriber_count(&self, name: &str) -> usize {
        self.get(name).map_or(0, |c| c.lock().subscribers.len())
    }

    /// Periodic upkeep: expire history, announce leaves whose grace ran out, and forget
    /// channels with nothing left in them.
    pub fn sweep(&self, grace: Duration) {
        let now = Instant::now();
        let presence_now = tokio::time::Instant::now();
        for shard in &self.shards {
            let channels = listed(shard);
            let mut empty = Vec::new();
            for channel in channels {
                let mut st = channel.lock();
                trim(&mut st, &channel.cfg, now, &self.ledger);
                let gone: Vec<UserId> = st
                    .leaving
                    .iter()
                    .filter(|(_, at)| presence_now.saturating_duration_since(**at) >= grace)
                    .map(|(u, _)| u.clone())
                    .collect();
                for user in gone {
                    st.leaving.remove(&user);
                    if st.remote.contains(&user) {
                        continue; // still present on another node
                    }
                    let frame = presence_frame(&channel.name, "leave", &user);
                    for c in st.subscribers.values() {
                        c.outbox.try_push(frame.clone(), now);
                    }
                }
                if st.subscribers.is_empty() && st.history.is_empty() && st.leaving.is_empty() {
                    empty.push(channel.name.clone());
                }
            }
            if empty.is_empty() {
                continue;
            }
            let mut map = shard.write().unwrap_or_else(|p| p.into_inner());
            for name in empty {
                let Some(channel) = map.get(&name).cloned() else {
                    continue;
                };
                let mut st = channel.lock();
                if st.subscribers.is_empty() && st.history.is_empty() && st.leaving.is_empty() {
                    st.dead = true;
                    map.remove(&name);
                    if let Some(user) = &channel.creator {
                        self.creations.release(user);
                    }
                }
            }
        }
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Drops history older than the namespace's TTL.
/// The channels of one shard, copied out so that no channel lock is taken under the
/// shard lock.
fn listed(shard: &RwLock<HashMap<Arc<str>, Arc<Channel>>>) -> Vec<Arc<Channel>> {
    shard
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .values()
        .cloned()
        .collect()
}

/// How an assigned position relates to what this node's copy of a channel holds.
enum Follow {
    /// The next offset: append.
    Next,
    /// Already held (a duplicate): drop.
    Seen,
    /// Offsets were missed, or the epoch changed: what is held no longer continues
    /// into this publication, and the held history is dropped. Within one epoch, the
    /// missed publications are `missed` (how many, and the last offset before them):
    /// subscribers are told so on their live connection; across epochs they resync.
    Gap { missed: Option<(u64, u64)> },
}

/// Queues `notice` (a `skipped` frame) to every subscriber of `st`, as a publication
/// would be; returns how many frames `drop_oldest` dropped for it. A full queue under
/// `disconnect` is closed by the publication that follows.
fn tell(st: &State, cfg: &NamespaceConfig, notice: &Frame, accepted: Instant) -> usize {
    let mut dropped = 0;
    for c in st.subscribers.values() {
        if c.outbox.try_push(notice.clone(), accepted) == Push::Full
            && cfg.slow_consumer == SlowConsumerPolicy::DropOldest
        {
            dropped += c.outbox.push_drop_oldest(notice.clone(), accepted);
        }
    }
    dropped
}

/// Brings `st` to just before `offset` in `epoch`. A channel that never had a
/// publication here adopts the shared position without a gap.
fn follow(st: &mut State, offset: u64, epoch: &Arc<str>, ledger: &HistoryLedger) -> Follow {
    let fresh = st.last_offset == 0 && st.history.is_empty();
    if *st.epoch == **epoch && !fresh {
        if offset <= st.last_offset {
            return Follow::Seen;
        }
        if offset == st.last_offset + 1 {
            return Follow::Next;
        }
    }
    while let Some(old) = st.history.pop_front() {
        ledger.sub(old.cost());
    }
    let missed = (*st.epoch == **epoch && offset > st.last_offset + 1)
        .then(|| (offset - st.last_offset - 1, st.last_offset));
    st.epoch = epoch.clone();
    st.last_offset = offset.saturating_sub(1);
    if fresh {
        Follow::Next
    } else {
        Follow::Gap { missed }
    }
}

/// The frame of the channel's last publication (offset `top`) for `conn`: from the
/// node's copy, or from what was read from the shared history for this subscribe (the
/// copy may have given it up to the history budget). None if neither holds it or the
/// publisher excluded `conn` from it.
fn latest(
    st: &State,
    top: u64,
    earlier: &[Earlier],
    conn: &ConnHandle,
    name: &str,
    cfg: &NamespaceConfig,
) -> Option<Frame> {
    if top == 0 {
        return None;
    }
    if let Some(h) = st.history.back().filter(|h| h.offset == top) {
        let excluded = h.exclude.as_ref().is_some_and(|e| e.excludes(conn));
        return (!excluded).then(|| h.frame.clone());
    }
    let e = earlier.iter().find(|e| e.offset == top)?;
    if e.kept.as_ref().is_some_and(|k| k.excludes(conn)) {
        return None;
    }
    let position = Position {
        offset: top,
        epoch: &st.epoch,
    };
    Some(pub_frame(Some(name), Some(position), &e.data).deflatable(cfg.deflate.as_ref()))
}

fn trim(st: &mut State, cfg: &NamespaceConfig, now: Instant, ledger: &HistoryLedger) {
    let ttl = Duration::from_secs(cfg.history_ttl_s);
    while st
        .history
        .front()
        .is_some_and(|h| now.saturating_duration_since(h.at) > ttl)
    {
        if let Some(old) = st.history.pop_front() {
            ledger.sub(old.cost());
        }
    }
}

/// Presence bookkeeping for a new subscriber; announces a join unless the user was only
/// away for less than the grace (a reload).
fn join(st: &mut State, channel: &str, conn: &ConnHandle) {
    let user = &conn.identity.user;
    let n = st.members.entry(user.clone()).or_insert(0);
    *n += 1;
    if *n > 1 || st.leaving.remove(user).is_some() || st.remote.contains(user) {
        return;
    }
    let frame = presence_frame(channel, "join", user);
    let now = Instant::now();
    for c in st.subscribers.values() {
        if c.id != conn.id {
            c.outbox.try_push(frame.clone(), now);
        }
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::auth::Identity;
    use crate::outbox::Outbox;

    fn conn(id: u64) -> Arc<ConnHandle> {
        let identity = Identity {
            user: UserId::from("u"),
            device: None,
            groups: Vec::new(),
            admin: false,
            backend: false,
            expires_at: None,
            token: None,
        };
        Arc::new(ConnHandle::new(
            id,
            crate::ids::ConnId::from(format!("c{id}")),
            identity,
            Arc::new(Outbox::new(1024, 1 << 20)),
            std::net::IpAddr::from([127, 0, 0, 1]),
            0,
            0,
        ))
    }

    fn earlier(offsets: impl IntoIterator<Item = u64>) -> Vec<Earlier> {
        offsets
            .into_iter()
            .map(|offset| Earlier {
                offset,
                data: serde_json::value::to_raw_value(&offset).unwrap(),
                kept: None,
            })
            .collect()
    }

    /// A channel whose copy holds offsets 6..=10 of epoch `e` (1..=5 are elsewhere).
    fn channel_from_6() -> (Channels, Arc<NamespaceConfig>, Arc<str>) {
        let channels = Channels::default();
        let cfg = Arc::new(NamespaceConfig::default());
        let epoch: Arc<str> = Arc::from("e");
        channels.adopt("news", &cfg, &epoch, 10, Some(6));
        for offset in 6..=10 {
            let data = serde_json::value::to_raw_value(&offset).unwrap();
            let out = Outgoing {
                data: &data,
                exclude: &Exclude::default(),
                kept: None,
                lane: Lane::Normal,
                accepted: Instant::now(),
                creator: None,
                position: Some((offset, &epoch)),
            };
            channels.publish("news", &cfg, &out).unwrap();
        }
        (channels, cfg, epoch)
    }

    #[test]
    fn what_the_copy_lacks_is_named_and_a_joined_up_read_recovers_it() {
        let (channels, cfg, _) = channel_from_6();
        let since = Since {
            offset: 2,
            epoch: "e".into(),
        };
        assert_eq!(channels.missing("news", &since), Some((3, 5)));
        let held = Since {
            offset: 5,
            ..since.clone()
        };
        assert_eq!(channels.missing("news", &held), None, "the copy has it all");
        let other = Since {
            epoch: "f".into(),
            ..since.clone()
        };
        assert_eq!(channels.missing("news", &other), None, "another epoch");

        let c = conn(1);
        let out = channels.subscribe_with(&c, "news", &cfg, Some(&since), None, &earlier(3..=5));
        assert!(out.recovered);
        assert_eq!(out.replayed, 8, "3..=5 read, 6..=10 held");
    }

    #[test]
    fn a_read_with_a_hole_or_short_of_the_copy_is_not_a_recovery() {
        let (channels, cfg, _) = channel_from_6();
        let since = Since {
            offset: 2,
            epoch: "e".into(),
        };
        for read in [vec![3, 5], vec![3, 4], vec![4, 5], vec![]] {
            let c = conn(1);
            let out = channels.subscribe_with(
                &c,
                "news",
                &cfg,
                Some(&since),
                None,
                &earlier(read.clone()),
            );
            assert!(!out.recovered, "{read:?}");
            channels.unsubscribe(&c, "news");
        }
    }

    #[test]
    fn adopting_the_shared_position_keeps_a_copy_that_continues_and_resyncs_one_that_does_not() {
        let (channels, cfg, epoch) = channel_from_6();
        let c = conn(1);
        channels.subscribe(&c, "news", &cfg, None, None);
        // Redis is further on, and what it hands over starts right after the copy.
        assert!(channels
            .adopt("news", &cfg, &epoch, 12, Some(11))
            .is_empty());
        assert_eq!(channels.top("news"), Some((10, epoch.clone())));
        // Redis holds nothing past the copy but its top is further: a hole, told on
        // the live connection (the copy held 10; 11 and 12 are gone).
        c.outbox.take_all_now();
        let stale = channels.adopt("news", &cfg, &epoch, 12, None);
        assert!(stale.is_empty(), "no resync within the epoch");
        assert_eq!(channels.top("news"), Some((12, epoch.clone())));
        let told = c.outbox.take_all_now();
        let notice: Value = serde_json::from_slice(told[0].payload()).unwrap();
        assert_eq!(
            notice,
            serde_json::json!({"type": "skipped", "channel": "news", "count": 2, "offset": 10, "epoch": "e"})
        );
        // A copy ahead of the shared top cannot be told what it missed: resync.
        assert_eq!(channels.adopt("news", &cfg, &epoch, 5, None).len(), 1);
        // A new epoch (the shared history restarted).
        let new: Arc<str> = Arc::from("g");
        assert_eq!(channels.adopt("news", &cfg, &new, 3, Some(1)).len(), 1);
        let since = Since {
            offset: 12,
            epoch: "e".into(),
        };
        assert_eq!(channels.missing("news", &since), None);
    }
}
