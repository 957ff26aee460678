//! Channels: subscribers, history with offsets and epochs, presence membership.
//!
//! Each channel has one mutex. A publication takes it to assign the next offset, append
//! to history and queue the (once-built) frame to every subscriber; a subscribe takes it
//! to compute what a `since` missed, queue `subscribed` plus the replay, and join. The
//! two therefore cannot interleave: every publication is either in the replay or
//! delivered live, never both and never neither, however they race. Queuing never
//! blocks, so the lock is held for a fan-out's worth of pushes and no `.await`.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use serde_json::value::RawValue;
use serde_json::Value;

use super::fanout::Exclude;
use super::registry::ConnHandle;
use crate::config::{NamespaceConfig, SlowConsumerPolicy};
use crate::connection::outbox::Push;
use crate::protocol::client::Since;
use crate::protocol::server::{presence_frame, pub_frame, subscribed_frame, Position};
use crate::ws::frame::Frame;

const SHARDS: usize = 16;

struct Stored {
    offset: u64,
    at: Instant,
    frame: Frame,
}

struct State {
    /// Set when the channel was removed from the map; holders of a stale `Arc` retry.
    dead: bool,
    epoch: Arc<str>,
    last_offset: u64,
    history: VecDeque<Stored>,
    subscribers: HashMap<u64, Arc<ConnHandle>>,
    /// Presence: user → how many of their connections are subscribed.
    members: HashMap<Arc<str>, usize>,
    /// Presence: users whose last connection left, and when (leave is announced after the grace).
    leaving: HashMap<Arc<str>, Instant>,
}

pub struct Channel {
    name: Arc<str>,
    cfg: Arc<NamespaceConfig>,
    state: Mutex<State>,
}

impl Channel {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn new_epoch() -> Arc<str> {
    Arc::from(format!("{:08x}", rand::random::<u32>()))
}

/// How a publication is delivered within its channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane<'a> {
    /// Into history (if the namespace keeps it) and to every subscriber.
    Normal,
    /// Only to subscribers whose token names this device, ahead of queued traffic, and
    /// not into history (a replay must not re-run a command on another device).
    Device(&'a str),
}

#[derive(Default)]
pub struct Published {
    pub queued: usize,
    pub position: Option<(u64, Arc<str>)>,
    /// Frames dropped by the `drop_oldest` policy.
    pub dropped: usize,
    /// Connections whose queue overflowed under the `disconnect` policy.
    pub slow: Vec<Arc<ConnHandle>>,
}

#[derive(Default)]
pub struct Subscribed {
    pub recovered: bool,
    pub replayed: usize,
    pub slow: bool,
}

pub struct Channels {
    shards: Vec<RwLock<HashMap<Arc<str>, Arc<Channel>>>>,
}

fn shard_of(name: &str) -> usize {
    let mut h = DefaultHasher::new();
    name.hash(&mut h);
    (h.finish() as usize) % SHARDS
}

impl Default for Channels {
    fn default() -> Self {
        Channels {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
        }
    }
}

impl Channels {
    fn shard(&self, name: &str) -> &RwLock<HashMap<Arc<str>, Arc<Channel>>> {
        // shard_of is taken modulo SHARDS, the length of `shards`.
        &self.shards[shard_of(name)]
    }

    fn get(&self, name: &str) -> Option<Arc<Channel>> {
        self.shard(name)
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    fn get_or_create(&self, name: &str, cfg: &Arc<NamespaceConfig>) -> Arc<Channel> {
        if let Some(c) = self.get(name) {
            return c;
        }
        let mut shard = self.shard(name).write().unwrap_or_else(|p| p.into_inner());
        shard
            .entry(Arc::from(name))
            .or_insert_with(|| {
                Arc::new(Channel {
                    name: Arc::from(name),
                    cfg: cfg.clone(),
                    state: Mutex::new(State {
                        dead: false,
                        epoch: new_epoch(),
                        last_offset: 0,
                        history: VecDeque::new(),
                        subscribers: HashMap::new(),
                        members: HashMap::new(),
                        leaving: HashMap::new(),
                    }),
                })
            })
            .clone()
    }

    /// Publishes `data` on `name`: offset, history, one frame for all subscribers.
    pub fn publish(
        &self,
        name: &str,
        cfg: &Arc<NamespaceConfig>,
        data: &RawValue,
        exclude: &Exclude,
        lane: Lane<'_>,
        accepted: Instant,
    ) -> Published {
        let keep = cfg.has_history() && lane == Lane::Normal;
        loop {
            let channel = if keep {
                self.get_or_create(name, cfg)
            } else {
                match self.get(name) {
                    Some(c) => c,
                    None => return Published::default(),
                }
            };
            let mut st = channel.lock();
            if st.dead {
                continue;
            }
            let mut out = Published::default();
            let frame = if keep {
                st.last_offset += 1;
                let position = Position {
                    offset: st.last_offset,
                    epoch: &st.epoch,
                };
                let frame = pub_frame(Some(name), Some(position), data);
                trim(&mut st, cfg, Instant::now());
                if st.history.len() >= cfg.history_size {
                    st.history.pop_front();
                }
                let offset = st.last_offset;
                st.history.push_back(Stored {
                    offset,
                    at: accepted,
                    frame: frame.clone(),
                });
                out.position = Some((offset, st.epoch.clone()));
                frame
            } else {
                pub_frame(Some(name), None, data)
            };
            for c in st.subscribers.values() {
                if exclude.excludes(c) {
                    continue;
                }
                let push = match lane {
                    Lane::Device(d) if c.identity.device.as_deref() != Some(d) => continue,
                    Lane::Device(_) => c.outbox.try_push_priority(frame.clone(), accepted),
                    Lane::Normal => c.outbox.try_push(frame.clone(), accepted),
                };
                match push {
                    Push::Queued => out.queued += 1,
                    Push::Closed => {}
                    Push::Full => match cfg.slow_consumer {
                        SlowConsumerPolicy::Disconnect => out.slow.push(c.clone()),
                        SlowConsumerPolicy::DropOldest => {
                            out.dropped += c.outbox.push_drop_oldest(frame.clone(), accepted);
                            out.queued += 1;
                        }
                    },
                }
            }
            return out;
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
        loop {
            let channel = self.get_or_create(name, cfg);
            let mut st = channel.lock();
            if st.dead {
                continue;
            }
            let now = Instant::now();
            trim(&mut st, cfg, now);
            let top = st.last_offset;
            let missed: Option<Vec<Frame>> = since.and_then(|s| {
                if !cfg.has_history() || s.epoch != *st.epoch || s.offset > top {
                    return None;
                }
                if s.offset == top {
                    return Some(Vec::new());
                }
                // Recoverable only if history still starts at or before the first missed offset.
                let first = st.history.front()?.offset;
                (first <= s.offset + 1).then(|| {
                    st.history
                        .iter()
                        .filter(|h| h.offset > s.offset)
                        .map(|h| h.frame.clone())
                        .collect()
                })
            });
            let mut out = Subscribed {
                recovered: missed.is_some(),
                ..Subscribed::default()
            };
            let epoch: &str = if cfg.has_history() { &st.epoch } else { "" };
            let mut frames = vec![subscribed_frame(name, top, epoch, out.recovered, reference)];
            frames.extend(missed.unwrap_or_default());
            out.replayed = frames.len() - 1;
            for f in frames {
                if conn.outbox.try_push(f, now) == Push::Full {
                    out.slow = true;
                    break;
                }
            }
            if st.subscribers.insert(conn.id, conn.clone()).is_none() && cfg.presence {
                join(&mut st, &channel.name, conn);
            }
            return out;
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
            st.leaving.insert(user.clone(), Instant::now());
        }
    }

    /// Users present on `name` (subscribed now, or left less than the grace ago).
    pub fn presence(&self, name: &str) -> Vec<Arc<str>> {
        let Some(channel) = self.get(name) else {
            return Vec::new();
        };
        let st = channel.lock();
        let mut users: Vec<Arc<str>> = st
            .members
            .keys()
            .chain(st.leaving.keys())
            .cloned()
            .collect();
        users.sort();
        users
    }

    pub fn subscriber_count(&self, name: &str) -> usize {
        self.get(name).map_or(0, |c| c.lock().subscribers.len())
    }

    /// Periodic upkeep: expire history, announce leaves whose grace ran out, and forget
    /// channels with nothing left in them.
    pub fn sweep(&self, grace: Duration) {
        let now = Instant::now();
        for shard in &self.shards {
            let channels: Vec<Arc<Channel>> = shard
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .cloned()
                .collect();
            let mut empty = Vec::new();
            for channel in channels {
                let mut st = channel.lock();
                trim(&mut st, &channel.cfg, now);
                let gone: Vec<Arc<str>> = st
                    .leaving
                    .iter()
                    .filter(|(_, at)| now.saturating_duration_since(**at) >= grace)
                    .map(|(u, _)| u.clone())
                    .collect();
                for user in gone {
                    st.leaving.remove(&user);
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
fn trim(st: &mut State, cfg: &NamespaceConfig, now: Instant) {
    let ttl = Duration::from_secs(cfg.history_ttl_s);
    while st
        .history
        .front()
        .is_some_and(|h| now.saturating_duration_since(h.at) > ttl)
    {
        st.history.pop_front();
    }
}

/// Presence bookkeeping for a new subscriber; announces a join unless the user was only
/// away for less than the grace (a reload).
fn join(st: &mut State, channel: &str, conn: &ConnHandle) {
    let user = &conn.identity.user;
    let n = st.members.entry(user.clone()).or_insert(0);
    *n += 1;
    if *n > 1 || st.leaving.remove(user).is_some() {
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
