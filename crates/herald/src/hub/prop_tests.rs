//! A property test of channels (DESIGN §4): random sequences of subscribe, unsubscribe,
//! publish, disconnect and reconnect, reads and sweeps against the real [`Channels`],
//! [`ConnHandle`]s and [`Outbox`]es. Each connection slot has a client that reads the
//! JSON frames it was sent, remembers the last position per channel across reconnects
//! (like a real client sending `since`), and checks, with a model of each channel:
//!
//! 1. after `subscribed` with `recovered:true` and `since` = S the `pub`s are S+1, S+2, …
//!    — the missed ones right behind it, whole, then the live ones; after
//!    `recovered:false` they start right after the frame's `offset`; once the client has
//!    read everything, each subscription is caught up with its channel (no lost tail);
//! 2. a client never reads the same (channel, epoch, offset) twice;
//! 3. `recovered:true` exactly when the history still holds everything missed and the
//!    queue takes all of it: a small queue gets `recovered:false`, never part of a replay;
//! 4. the history ledger is what the stored publications cost, at most one publication
//!    over the budget after a publish, and zero once no history is left.
//!
//! The model learns evictions from the ledger instead of copying the low-water rule: it
//! only checks that whole publications went, globally oldest first, and after a publish
//! only when the budget was exceeded.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::collection::vec;
use proptest::prelude::*;
use serde_json::value::RawValue;
use serde_json::Value;

use super::budget::STORED_OVERHEAD;
use super::channels::{ChannelLimits, Channels, Lane, Outgoing};
use super::fanout::Exclude;
use super::registry::ConnHandle;
use crate::auth::Identity;
use crate::config::NamespaceConfig;
use crate::outbox::Outbox;
use crate::protocol::client::Since;
use crate::protocol::codes::CloseCode;
use crate::protocol::server::{pub_frame, Position};
use crate::ws::frame::{parse_header, Frame};

const CHANNELS: [&str; 3] = ["feed:a", "feed:b", "feed:c"];
const SLOTS: usize = 4;
/// A queue that never fills in one case, in messages.
const ROOMY: usize = 1024;
/// Bytes never limit a queue here (a case queues well under this): messages do.
const QUEUE_BYTES: usize = 1 << 20;

type Check = Result<(), TestCaseError>;

fn need<T>(v: Option<T>, what: &str) -> Result<T, TestCaseError> {
    v.ok_or_else(|| TestCaseError::fail(what.to_owned()))
}

#[derive(Debug, Clone)]
enum Op {
    /// `since` is the last position this slot's client read on the channel, when asked
    /// for and known. On a disconnected slot this is a fresh connection.
    Subscribe {
        conn: usize,
        channel: usize,
        with_since: bool,
    },
    Unsubscribe {
        conn: usize,
        channel: usize,
    },
    /// `size` pads the data, so publications cost different amounts of history.
    Publish {
        channel: usize,
        size: usize,
    },
    /// The socket goes away; what was queued for it is lost.
    Disconnect {
        conn: usize,
    },
    /// The client reads everything queued for it.
    Drain {
        conn: usize,
    },
    Sweep,
    Evict,
}

#[derive(Debug, Clone)]
struct Setup {
    history_size: usize,
    history_bytes: usize,
    /// Each slot's queue limit, in messages.
    queues: Vec<usize>,
}

fn setup() -> impl Strategy<Value = Setup> {
    (
        3..=12usize,
        prop_oneof![Just(64 << 20), 300..2_000usize],
        vec(prop_oneof![3 => Just(ROOMY), 1 => 1..6usize], SLOTS),
    )
        .prop_map(|(history_size, history_bytes, queues)| Setup {
            history_size,
            history_bytes,
            queues,
        })
}

fn op() -> impl Strategy<Value = Op> {
    let conn = 0..SLOTS;
    let channel = 0..CHANNELS.len();
    prop_oneof![
        5 => (conn.clone(), channel.clone(), proptest::bool::weighted(0.75)).prop_map(
            |(conn, channel, with_since)| Op::Subscribe { conn, channel, with_since }
        ),
        2 => (conn.clone(), channel.clone())
            .prop_map(|(conn, channel)| Op::Unsubscribe { conn, channel }),
        6 => (channel, 0..4usize).prop_map(|(channel, size)| Op::Publish { channel, size }),
        2 => conn.clone().prop_map(|conn| Op::Disconnect { conn }),
        3 => conn.prop_map(|conn| Op::Drain { conn }),
        1 => Just(Op::Sweep),
        1 => Just(Op::Evict),
    ]
}

/// A stored publication as the model sees it.
struct Entry {
    /// Publish order across all channels (eviction goes oldest first).
    seq: u64,
    offset: u64,
    cost: usize,
}

/// One channel's current life, as the model knows it.
#[derive(Default)]
struct ModelChannel {
    exists: bool,
    /// Bumped on every (re)creation: a frame from an earlier life teaches no epoch.
    life: u64,
    /// Unknown until a publication or a `subscribed` of this life tells it.
    epoch: Option<String>,
    top: u64,
    history: VecDeque<Entry>,
    subscribers: BTreeSet<usize>,
}

impl ModelChannel {
    fn create(&mut self) {
        self.exists = true;
        self.life += 1;
        self.epoch = None;
        self.top = 0;
    }
}

/// A subscribe whose `subscribed` the client has not read yet.
struct Pending {
    since: Option<Since>,
    recovered: bool,
    life: u64,
    /// The channel's top when this subscription was ended, if it was.
    until: Option<u64>,
}

/// What the client expects next on a subscription it has read the `subscribed` of.
struct Stream {
    epoch: String,
    next: u64,
    until: Option<u64>,
}

#[derive(Default)]
struct Client {
    /// Last position read per channel; kept across reconnects.
    last: HashMap<usize, (u64, String)>,
    /// Everything ever read; kept across reconnects (a duplicate is one either way).
    seen: HashSet<(usize, String, u64)>,
    pending: HashMap<usize, VecDeque<Pending>>,
    streams: HashMap<usize, Stream>,
    /// A replay in progress: its channel and its last offset.
    replay: Option<(usize, u64)>,
}

impl Client {
    fn new_connection(&mut self) {
        self.pending.clear();
        self.streams.clear();
        self.replay = None;
    }
}

struct Slot {
    conn: Option<Arc<ConnHandle>>,
    queue: usize,
    /// The channels the session tracks for this connection.
    subscribed: BTreeSet<usize>,
    client: Client,
}

struct World {
    channels: Channels,
    cfg: Arc<NamespaceConfig>,
    budget: usize,
    model: Vec<ModelChannel>,
    slots: Vec<Slot>,
    next_id: u64,
    seq: u64,
    base: Instant,
}

impl World {
    fn new(setup: &Setup) -> World {
        World {
            channels: Channels::new(ChannelLimits {
                history_bytes: setup.history_bytes,
                ..ChannelLimits::default()
            }),
            cfg: Arc::new(NamespaceConfig {
                history_size: setup.history_size,
                ..NamespaceConfig::default()
            }),
            budget: setup.history_bytes,
            model: CHANNELS.iter().map(|_| ModelChannel::default()).collect(),
            slots: setup
                .queues
                .iter()
                .map(|&queue| Slot {
                    conn: None,
                    queue,
                    subscribed: BTreeSet::new(),
                    client: Client::default(),
                })
                .collect(),
            next_id: 0,
            seq: 0,
            base: Instant::now(),
        }
    }

    fn step(&mut self, op: &Op) -> Check {
        match *op {
            Op::Subscribe {
                conn,
                channel,
                with_since,
            } => self.subscribe(conn, channel, with_since),
            Op::Unsubscribe { conn, channel } => {
                self.unsubscribe(conn, channel);
                Ok(())
            }
            Op::Publish { channel, size } => self.publish(channel, size),
            Op::Disconnect { conn } => {
                self.disconnect(conn, false);
                Ok(())
            }
            Op::Drain { conn } => self.drain(conn),
            Op::Sweep => {
                self.channels.sweep(Duration::ZERO);
                for m in &mut self.model {
                    if m.exists && m.subscribers.is_empty() && m.history.is_empty() {
                        m.exists = false;
                    }
                }
                Ok(())
            }
            Op::Evict => {
                self.channels.evict_oldest();
                self.follow_evictions(true)
            }
        }
    }

    fn connect(&mut self, slot: usize) -> Arc<ConnHandle> {
        self.next_id += 1;
        let id = self.next_id;
        let s = &mut self.slots[slot];
        let identity = Identity {
            user: crate::ids::UserId::from(format!("u{slot}")),
            device: None,
            groups: Vec::new(),
            admin: false,
            backend: false,
            expires_at: None,
            token: None,
        };
        let conn = Arc::new(ConnHandle::new(
            id,
            crate::ids::ConnId::from(format!("c{id}")),
            identity,
            Arc::new(Outbox::new(s.queue, QUEUE_BYTES)),
            std::net::IpAddr::from([127, 0, 0, 1]),
            0,
            0,
        ));
        s.conn = Some(conn.clone());
        s.client.new_connection();
        conn
    }

    /// The connection goes away and is unsubscribed from everything, as
    /// `Registration::drop` does; `slow` closes it first as the hub does a slow consumer.
    fn disconnect(&mut self, slot: usize, slow: bool) {
        let Some(conn) = self.slots[slot].conn.take() else {
            return;
        };
        if slow {
            let code = CloseCode::SlowConsumer;
            conn.outbox
                .close(Some(Frame::close(code.code(), code.reason())), true);
        }
        for ch in std::mem::take(&mut self.slots[slot].subscribed) {
            self.channels.unsubscribe(&conn, CHANNELS[ch]);
            self.model[ch].subscribers.remove(&slot);
        }
        self.slots[slot].client.new_connection();
    }

    fn subscribe(&mut self, slot: usize, ch: usize, with_since: bool) -> Check {
        if self.slots[slot].subscribed.contains(&ch) {
            return Ok(()); // a client subscribes to a channel once
        }
        let conn = match self.slots[slot].conn.clone() {
            Some(c) => c,
            None => self.connect(slot),
        };
        // A client sending `since` has read what was sent before it, as it reads up to
        // the `unsubscribed` of an earlier subscription.
        if with_since {
            self.drain(slot)?;
        }
        let since = with_since
            .then(|| self.slots[slot].client.last.get(&ch))
            .flatten()
            .map(|(offset, epoch)| Since {
                offset: *offset,
                epoch: epoch.clone(),
            });
        let m = &mut self.model[ch];
        if !m.exists {
            m.create();
        }
        let missed = since.as_ref().and_then(|s| {
            let kept = m.epoch.as_deref() == Some(s.epoch.as_str())
                && s.offset <= m.top
                && (s.offset == m.top
                    || m.history.front().is_some_and(|h| h.offset <= s.offset + 1));
            kept.then(|| m.top - s.offset)
        });
        let depth = conn.outbox.depth() as u64;
        let room = |frames: u64| depth + frames <= self.slots[slot].queue as u64;
        let recovered = missed.is_some_and(|n| room(n + 1));
        let want = (
            recovered,
            if recovered { missed.unwrap_or(0) } else { 0 },
            missed.is_some() && !recovered,
            !recovered && !room(1),
        );
        let out = self
            .channels
            .subscribe(&conn, CHANNELS[ch], &self.cfg, since.as_ref(), None);
        prop_assert_eq!(
            (out.recovered, out.replayed as u64, out.too_big, out.slow),
            want,
            "subscribe to {} with since {:?}, {} queued of {}: (recovered, replayed, too_big, slow)",
            CHANNELS[ch],
            since,
            depth,
            self.slots[slot].queue
        );
        m.subscribers.insert(slot);
        let pending = Pending {
            since,
            recovered: out.recovered,
            life: m.life,
            until: None,
        };
        let s = &mut self.slots[slot];
        s.subscribed.insert(ch);
        s.client.pending.entry(ch).or_default().push_back(pending);
        if out.slow {
            self.disconnect(slot, true);
        }
        Ok(())
    }

    fn unsubscribe(&mut self, slot: usize, ch: usize) {
        let s = &mut self.slots[slot];
        if !s.subscribed.remove(&ch) {
            return;
        }
        let Some(conn) = s.conn.as_ref() else {
            return;
        };
        self.channels.unsubscribe(conn, CHANNELS[ch]);
        self.model[ch].subscribers.remove(&slot);
        let top = self.model[ch].top;
        let client = &mut s.client;
        match client.pending.get_mut(&ch).and_then(VecDeque::back_mut) {
            Some(p) => p.until = Some(top),
            None => {
                if let Some(stream) = client.streams.get_mut(&ch) {
                    stream.until = Some(top);
                }
            }
        }
    }

    fn publish(&mut self, ch: usize, size: usize) -> Check {
        self.seq += 1;
        let seq = self.seq;
        let data = RawValue::from_string(format!(
            r#"{{"seq":{seq},"pad":"{}"}}"#,
            "x".repeat(size * 40)
        ))
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
        // Strictly increasing, so eviction order is publish order.
        let accepted = self.base + Duration::from_micros(seq);
        let mut want_queued = 0;
        let mut want_slow = BTreeSet::new();
        for &slot in &self.model[ch].subscribers {
            let conn = need(self.slots[slot].conn.as_ref(), "a subscriber is connected")?;
            if conn.outbox.depth() < self.slots[slot].queue {
                want_queued += 1;
            } else {
                want_slow.insert(conn.id);
            }
        }
        let exclude = Exclude::default();
        let out = Outgoing {
            data: &data,
            exclude: &exclude,
            kept: None,
            lane: Lane::Normal,
            accepted,
            creator: None,
            position: None,
        };
        let published = self
            .channels
            .publish(CHANNELS[ch], &self.cfg, &out)
            .map_err(|e| TestCaseError::fail(format!("publish refused: {e:?}")))?;
        let (offset, epoch) = need(published.position.clone(), "a position")?;
        let m = &mut self.model[ch];
        if !m.exists {
            m.create();
        }
        match &m.epoch {
            Some(e) => prop_assert_eq!(e.as_str(), &*epoch, "epoch of a live channel"),
            None => m.epoch = Some(epoch.to_string()),
        }
        prop_assert_eq!(offset, m.top + 1, "offsets go up by one");
        m.top = offset;
        while m.history.len() >= self.cfg.history_size {
            m.history.pop_front();
        }
        let position = Position {
            offset,
            epoch: &epoch,
        };
        let cost = pub_frame(Some(CHANNELS[ch]), Some(position), &data).len() + STORED_OVERHEAD;
        m.history.push_back(Entry { seq, offset, cost });
        let stored = self.history_bytes();
        self.follow_evictions(stored > self.budget)?;
        let bytes = self.channels.ledger.bytes();
        prop_assert!(
            bytes <= self.budget + cost,
            "ledger {} over the budget {} by more than one publication ({})",
            bytes,
            self.budget,
            cost
        );
        let slow: BTreeSet<u64> = published.slow.iter().map(|c| c.id).collect();
        prop_assert_eq!(
            (published.queued, published.dropped, &slow),
            (want_queued, 0, &want_slow),
            "publish {} on {}: (queued, dropped, slow)",
            offset,
            CHANNELS[ch]
        );
        for slot in 0..self.slots.len() {
            if self.slots[slot]
                .conn
                .as_ref()
                .is_some_and(|c| slow.contains(&c.id))
            {
                self.disconnect(slot, true);
            }
        }
        Ok(())
    }

    fn history_bytes(&self) -> usize {
        self.model
            .iter()
            .flat_map(|m| &m.history)
            .map(|e| e.cost)
            .sum()
    }

    /// Follows the evictions the node made: drops the model's globally oldest entries
    /// down to what the ledger says; anything but whole oldest entries is a failure.
    fn follow_evictions(&mut self, allowed: bool) -> Check {
        let bytes = self.channels.ledger.bytes();
        let mut stored = self.history_bytes();
        prop_assert!(bytes <= stored, "ledger {} above history {}", bytes, stored);
        prop_assert!(
            allowed || bytes == stored,
            "evicted at {} bytes, within the budget {}",
            stored,
            self.budget
        );
        while stored > bytes {
            let oldest = self
                .model
                .iter_mut()
                .filter(|m| !m.history.is_empty())
                .min_by_key(|m| m.history.front().map(|e| e.seq));
            let gone = need(oldest.and_then(|m| m.history.pop_front()), "history")?;
            stored -= gone.cost;
        }
        prop_assert_eq!(stored, bytes, "eviction took part of a publication");
        Ok(())
    }

    /// The client reads everything queued for it; then every subscribe must have been
    /// answered, every replay be whole and every subscription be caught up.
    fn drain(&mut self, slot: usize) -> Check {
        let Some(conn) = self.slots[slot].conn.clone() else {
            return Ok(());
        };
        for frame in conn.outbox.take_all_now() {
            self.read(slot, &frame)?;
        }
        let client = &mut self.slots[slot].client;
        prop_assert!(
            client.pending.values().all(VecDeque::is_empty),
            "a subscribe went unanswered"
        );
        prop_assert_eq!(client.replay, None, "a replay was cut short");
        for (ch, stream) in &client.streams {
            let end = stream.until.unwrap_or(self.model[*ch].top);
            prop_assert_eq!(
                stream.next - 1,
                end,
                "{} read up to {}, published up to {}",
                CHANNELS[*ch],
                stream.next - 1,
                end
            );
        }
        client.streams.retain(|_, s| s.until.is_none());
        Ok(())
    }

    fn read(&mut self, slot: usize, frame: &Frame) -> Check {
        let bytes = frame.as_bytes();
        let header = need(parse_header(bytes, false).ok().flatten(), "a frame header")?;
        let msg: Value = serde_json::from_slice(&bytes[header.header_len..])
            .map_err(|e| TestCaseError::fail(format!("frame is not JSON: {e}")))?;
        let name = need(msg["channel"].as_str(), "a channel")?;
        let ch = need(CHANNELS.iter().position(|c| *c == name), "a known channel")?;
        let offset = need(msg["offset"].as_u64(), "an offset")?;
        let epoch = need(msg["epoch"].as_str(), "an epoch")?.to_owned();
        let client = &mut self.slots[slot].client;
        match msg["type"].as_str() {
            Some("subscribed") => {
                prop_assert_eq!(client.replay, None, "a replay was interrupted");
                let recovered = need(msg["recovered"].as_bool(), "recovered")?;
                let asked = client.pending.get_mut(&ch).and_then(VecDeque::pop_front);
                let p = need(asked, "a subscribe for this subscribed")?;
                prop_assert_eq!(recovered, p.recovered, "frame and subscribe disagree");
                let next = if recovered {
                    let s = need(p.since.as_ref(), "a since behind recovered:true")?;
                    prop_assert_eq!(&s.epoch, &epoch, "recovered across epochs");
                    prop_assert!(s.offset <= offset, "recovered from the future");
                    if offset > s.offset {
                        client.replay = Some((ch, offset));
                    }
                    s.offset + 1
                } else {
                    client.last.insert(ch, (offset, epoch.clone()));
                    offset + 1
                };
                let m = &mut self.model[ch];
                if m.exists && m.life == p.life {
                    match &m.epoch {
                        Some(e) => prop_assert_eq!(e, &epoch, "subscribed epoch"),
                        None => m.epoch = Some(epoch.clone()),
                    }
                }
                let stream = Stream {
                    epoch,
                    next,
                    until: p.until,
                };
                client.streams.insert(ch, stream);
            }
            Some("pub") => {
                if let Some((replaying, last)) = client.replay {
                    prop_assert_eq!(replaying, ch, "another channel inside a replay");
                    if offset >= last {
                        client.replay = None;
                    }
                }
                let stream = need(client.streams.get_mut(&ch), "a subscribed before a pub")?;
                prop_assert_eq!(&stream.epoch, &epoch, "pub epoch");
                prop_assert_eq!(offset, stream.next, "{}: a gap or a duplicate", name);
                if let Some(until) = stream.until {
                    prop_assert!(offset <= until, "pub after unsubscribe");
                }
                prop_assert!(
                    client.seen.insert((ch, epoch.clone(), offset)),
                    "{} offset {} read twice",
                    name,
                    offset
                );
                stream.next += 1;
                client.last.insert(ch, (offset, epoch));
            }
            other => {
                return Err(TestCaseError::fail(format!("unexpected frame {other:?}")));
            }
        }
        Ok(())
    }

    /// What must hold between any two steps.
    fn check_node(&self) -> Check {
        let bytes = self.channels.ledger.bytes();
        prop_assert_eq!(bytes, self.history_bytes(), "ledger vs stored publications");
        if self.model.iter().all(|m| m.history.is_empty()) {
            prop_assert_eq!(bytes, 0, "no history left, yet the ledger holds some");
        }
        let live = self.model.iter().filter(|m| m.exists).count();
        prop_assert_eq!(self.channels.len(), live, "channels alive");
        for (ch, m) in self.model.iter().enumerate() {
            prop_assert_eq!(
                self.channels.subscriber_count(CHANNELS[ch]),
                m.subscribers.len(),
                "subscribers of {}",
                CHANNELS[ch]
            );
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn prop_recovery_is_exact_and_history_stays_in_budget(
        setup in setup(),
        ops in vec(op(), 1..100),
    ) {
        let mut world = World::new(&setup);
        for op in &ops {
            world.step(op)?;
            world.check_node()?;
        }
        for slot in 0..SLOTS {
            world.drain(slot)?;
        }
    }
}
