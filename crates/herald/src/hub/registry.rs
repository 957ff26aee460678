//! Connection bookkeeping with lifecycle by ownership.
//!
//! A connection is admitted (caps reserved) before the upgrade and registered after it;
//! both return guards whose `Drop` undoes exactly what was done, once. The task that owns
//! the socket owns the guards, so "unregister twice" or "forget to unregister" cannot be
//! written (seed 004's double close). Indexes are sharded `RwLock<HashMap>`s, locked for
//! a few instructions and never across an `.await`.

use std::borrow::Borrow;
use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};

use super::channels::{ChannelLimits, Channels};
use super::presence::UserPresence;
use super::presence_events::{EventKind, PresenceEvents};
use crate::auth::{jti_hash, Identity, TokenStamp};
use crate::ids::{ConnId, UserId};
use crate::metrics::Refusal;
use crate::outbox::Outbox;

/// The hub's view of one connection: identity, its queue, liveness clocks.
pub struct ConnHandle {
    pub id: u64,
    pub conn_id: ConnId,
    pub identity: Identity,
    pub outbox: Arc<Outbox>,
    /// `Hub::now_ms` of the last bytes received.
    pub last_seen_ms: AtomicU64,
    /// Unix milliseconds when it was accepted (for `GET /api/connections`).
    pub connected_at_ms: i64,
    /// The client's address (after `trusted_proxies`).
    pub ip: IpAddr,
    /// Unix seconds when the token expires (0 = never); replaced by `refresh`.
    pub expires_at: AtomicU64,
    /// The current token's `iat` and `jti` hash ([`TokenStamp::packed`]), for closing
    /// connections whose token is revoked; replaced by `refresh`. (`identity.token` is
    /// dropped once this holds it.)
    pub stamp: AtomicU64,
    /// The channels this connection is subscribed to; changed only through
    /// `Registry::{track,untrack}_subscription`, so it always matches what the channels
    /// hold (the drop guard unsubscribes exactly these).
    pub(crate) channels: Mutex<HashSet<Arc<str>>>,
    /// The groups this connection is indexed under now: the token's, until a `refresh`
    /// brings a token with others (`identity.groups` stays what the first token said).
    /// Changed only through `Registry::set_groups`, which moves the index with it.
    pub(crate) groups: Mutex<Vec<Arc<str>>>,
}

impl ConnHandle {
    /// A connection's handle as it is accepted: subscribed to nothing, indexed under its
    /// token's groups, last seen `now_ms` (the hub's clock), connected at
    /// `connected_at_ms` (Unix milliseconds).
    pub fn new(
        id: u64,
        conn_id: ConnId,
        mut identity: Identity,
        outbox: Arc<Outbox>,
        ip: IpAddr,
        now_ms: u64,
        connected_at_ms: i64,
    ) -> ConnHandle {
        let stamp = AtomicU64::new(TokenStamp::packed(identity.token.as_deref()));
        identity.token = None;
        ConnHandle {
            id,
            conn_id,
            expires_at: AtomicU64::new(identity.expires_at.unwrap_or(0)),
            stamp,
            groups: Mutex::new(identity.groups.clone()),
            identity,
            outbox,
            last_seen_ms: AtomicU64::new(now_ms),
            connected_at_ms,
            ip,
            channels: Mutex::new(HashSet::new()),
        }
    }
}

impl ConnHandle {
    /// Whether `r` refuses the token the connection holds now (its first, or the one
    /// its last `refresh` brought). A backend (API key) has no token to revoke.
    pub fn refused_by(&self, r: &crate::auth::revoked::Revocation) -> bool {
        use crate::auth::revoked::Revocation;
        use std::sync::atomic::Ordering::Relaxed;
        match r {
            Revocation::User { user, before, .. } => {
                let iat = TokenStamp::packed_issued_at(self.stamp.load(Relaxed));
                *user == self.identity.user && !self.identity.backend && iat < *before
            }
            Revocation::Token { id, .. } => {
                let h = TokenStamp::packed_jti(self.stamp.load(Relaxed));
                h != 0 && h == jti_hash(Some(id))
            }
        }
    }
}

const SHARDS: usize = 16;

type ConnMap = HashMap<u64, Arc<ConnHandle>>;

/// key → connections, sharded by key hash (users by [`UserId`], groups by name).
pub struct Index<K = Arc<str>> {
    shards: Vec<RwLock<HashMap<K, Conns>>>,
}

/// The connections under one key. Most users hold one connection: it is kept inline,
/// without a map of its own (a one-entry map is a 100-byte allocation per user).
enum Conns {
    One(Arc<ConnHandle>),
    Many(ConnMap),
}

impl Conns {
    fn insert(&mut self, conn: &Arc<ConnHandle>) {
        match self {
            Conns::One(c) if c.id == conn.id => *c = conn.clone(),
            Conns::One(c) => {
                let mut m = ConnMap::with_capacity(2);
                m.insert(c.id, c.clone());
                m.insert(conn.id, conn.clone());
                *self = Conns::Many(m);
            }
            Conns::Many(m) => {
                m.insert(conn.id, conn.clone());
            }
        }
    }

    /// Removes `id`; true when nothing is left.
    fn remove(&mut self, id: u64) -> bool {
        match self {
            Conns::One(c) => c.id == id,
            Conns::Many(m) => {
                m.remove(&id);
                m.is_empty()
            }
        }
    }

    fn len(&self) -> usize {
        match self {
            Conns::One(_) => 1,
            Conns::Many(m) => m.len(),
        }
    }

    fn for_each(&self, f: &mut impl FnMut(&Arc<ConnHandle>)) {
        match self {
            Conns::One(c) => f(c),
            Conns::Many(m) => m.values().for_each(f),
        }
    }
}

fn shard_of<K: Hash + ?Sized>(k: &K) -> usize {
    let mut h = DefaultHasher::new();
    k.hash(&mut h);
    (h.finish() as usize) % SHARDS
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

impl<K: Borrow<str> + Hash + Eq + Clone> Index<K> {
    fn new() -> Index<K> {
        Index {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
        }
    }

    fn shard(&self, key: &str) -> &RwLock<HashMap<K, Conns>> {
        // SHARDS is non-zero and shard_of is taken modulo SHARDS.
        #[allow(
            clippy::indexing_slicing,
            reason = "shard_of(..) < SHARDS == shards.len()"
        )]
        &self.shards[shard_of(key)]
    }

    /// Adds `conn` under `key`; true if it is the key's first connection (decided under
    /// the shard's lock, so of two racing inserts exactly one is first).
    pub fn insert(&self, key: &K, conn: &Arc<ConnHandle>) -> bool {
        let mut shard = write(self.shard(key.borrow()));
        match shard.get_mut(key.borrow()) {
            Some(conns) => {
                conns.insert(conn);
                false
            }
            None => {
                shard.insert(key.clone(), Conns::One(conn.clone()));
                true
            }
        }
    }

    pub fn remove(&self, key: &str, id: u64) {
        let mut shard = write(self.shard(key));
        if shard.get_mut(key).is_some_and(|conns| conns.remove(id)) {
            shard.remove(key);
        }
    }

    /// Calls `f` for every connection under `key`, under a read lock (`f` must not block).
    pub fn for_each(&self, key: &str, mut f: impl FnMut(&Arc<ConnHandle>)) {
        if let Some(m) = read(self.shard(key)).get(key) {
            m.for_each(&mut f);
        }
    }

    pub fn count(&self, key: &str) -> usize {
        read(self.shard(key)).get(key).map_or(0, Conns::len)
    }

    pub fn keys(&self) -> usize {
        self.shards.iter().map(|s| read(s).len()).sum()
    }

    /// Every key with its number of connections (one shard locked at a time).
    pub fn counts(&self) -> Vec<(K, usize)> {
        let mut out = Vec::with_capacity(self.keys());
        for shard in &self.shards {
            out.extend(read(shard).iter().map(|(k, m)| (k.clone(), m.len())));
        }
        out
    }
}

pub struct Registry {
    conns: Vec<RwLock<ConnMap>>,
    pub users: Index<UserId>,
    pub groups: Index,
    pub channels: Channels,
    pub presence: UserPresence,
    /// Presence events for other systems (webhooks), inert unless attached.
    pub events: PresenceEvents,
    counts: Mutex<Counts>,
    max_per_user: AtomicUsize,
    max_per_ip: AtomicUsize,
    /// Registered backend connections: while there are none (the usual case), a
    /// publication to everyone need not look at each recipient's identity.
    backends: AtomicUsize,
}

#[derive(Default)]
struct Counts {
    per_user: HashMap<UserId, usize>,
    per_ip: HashMap<IpAddr, usize>,
}

/// Reserved slots under the per-user and per-IP caps; released on drop.
pub struct Admission {
    registry: Arc<Registry>,
    user: UserId,
    ip: IpAddr,
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut c = self
            .registry
            .counts
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        decrement(&mut c.per_user, &self.user);
        decrement(&mut c.per_ip, &self.ip);
    }
}

fn decrement<K: Hash + Eq>(m: &mut HashMap<K, usize>, k: &K) {
    if let Some(n) = m.get_mut(k) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            m.remove(k);
        }
    }
}

/// A registered connection; dropping it removes the connection from every index.
pub struct Registration {
    pub handle: Arc<ConnHandle>,
    /// Released after the indexes are cleaned (its registry is the one to clean).
    admission: Admission,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let h = &self.handle;
        let r = &self.admission.registry;
        write(r.conn_shard(h.id)).remove(&h.id);
        if h.identity.backend {
            r.backends.fetch_sub(1, Relaxed);
        }
        r.users.remove(&h.identity.user, h.id);
        for g in h.groups.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            r.groups.remove(g, h.id);
        }
        let channels = std::mem::take(&mut *h.channels.lock().unwrap_or_else(|p| p.into_inner()));
        for c in channels {
            r.channels.unsubscribe(h, &c);
        }
        if r.users.count(&h.identity.user) == 0 {
            r.presence.last_disconnected(&h.identity.user);
        }
        r.events
            .connection(EventKind::ConnectionClose, &h.identity.user, &h.conn_id);
    }
}

impl Registry {
    pub fn new(
        max_per_user: usize,
        max_per_ip: usize,
        presence_grace: std::time::Duration,
        channel_limits: ChannelLimits,
    ) -> Registry {
        Registry {
            conns: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            users: Index::new(),
            groups: Index::new(),
            channels: Channels::new(channel_limits),
            presence: UserPresence::new(presence_grace),
            events: PresenceEvents::default(),
            counts: Mutex::new(Counts::default()),
            max_per_user: AtomicUsize::new(max_per_user),
            max_per_ip: AtomicUsize::new(max_per_ip),
            backends: AtomicUsize::new(0),
        }
    }

    /// New caps for connections admitted from now on (a config reload).
    pub fn set_caps(&self, per_user: usize, per_ip: usize) {
        self.max_per_user.store(per_user, Relaxed);
        self.max_per_ip.store(per_ip, Relaxed);
    }

    fn conn_shard(&self, id: u64) -> &RwLock<ConnMap> {
        #[allow(
            clippy::indexing_slicing,
            reason = "shard_of(..) < SHARDS == conns.len()"
        )]
        &self.conns[shard_of(&id)]
    }

    /// Reserves a slot for `user` from `ip`, or says which cap is full. Check and
    /// reservation happen under one lock, so concurrent upgrades cannot overshoot.
    pub fn admit(self: &Arc<Self>, user: &UserId, ip: IpAddr) -> Result<Admission, Refusal> {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if c.per_user.get(user).copied().unwrap_or(0) >= self.max_per_user.load(Relaxed) {
            return Err(Refusal::UserCap);
        }
        if c.per_ip.get(&ip).copied().unwrap_or(0) >= self.max_per_ip.load(Relaxed) {
            return Err(Refusal::IpCap);
        }
        *c.per_user.entry(user.clone()).or_default() += 1;
        *c.per_ip.entry(ip).or_default() += 1;
        Ok(Admission {
            registry: self.clone(),
            user: user.clone(),
            ip,
        })
    }

    pub fn register(
        self: &Arc<Self>,
        admission: Admission,
        handle: Arc<ConnHandle>,
    ) -> Registration {
        if handle.identity.backend {
            self.backends.fetch_add(1, Relaxed);
        }
        write(self.conn_shard(handle.id)).insert(handle.id, handle.clone());
        let first = self.users.insert(&handle.identity.user, &handle);
        let was_in_grace = self.presence.connected(&handle.identity.user);
        let user = &handle.identity.user;
        self.events
            .connection(EventKind::ConnectionOpen, user, &handle.conn_id);
        if first && !was_in_grace && self.events.local_users() {
            self.events.user(EventKind::UserOnline, user);
        }
        for g in handle
            .groups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            self.groups.insert(g, &handle);
        }
        Registration { handle, admission }
    }

    /// Re-indexes `conn` under `groups` (a refreshed token with other groups).
    pub fn set_groups(&self, conn: &Arc<ConnHandle>, groups: &[Arc<str>]) {
        let mut current = conn.groups.lock().unwrap_or_else(|p| p.into_inner());
        for g in current.iter().filter(|g| !groups.contains(g)) {
            self.groups.remove(g, conn.id);
        }
        for g in groups.iter().filter(|g| !current.contains(g)) {
            self.groups.insert(g, conn);
        }
        *current = groups.to_vec();
    }

    /// Records that `conn` subscribed to `channel`; false if it already was.
    pub fn track_subscription(&self, conn: &ConnHandle, channel: &Arc<str>) -> bool {
        conn.channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(channel.clone())
    }

    /// The channels `conn` is subscribed to.
    pub fn subscriptions(&self, conn: &ConnHandle) -> Vec<Arc<str>> {
        conn.channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// Whether `conn` holds a subscription to `channel`.
    pub fn tracks_subscription(&self, conn: &ConnHandle, channel: &str) -> bool {
        conn.channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(channel)
    }

    /// Forgets `conn`'s subscription to `channel`; false if there was none.
    pub fn untrack_subscription(&self, conn: &ConnHandle, channel: &str) -> bool {
        conn.channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(channel)
    }

    /// Calls `f` for every connection (under per-shard read locks; `f` must not block).
    pub fn for_each_conn(&self, mut f: impl FnMut(&Arc<ConnHandle>)) {
        for shard in &self.conns {
            read(shard).values().for_each(&mut f);
        }
    }

    pub fn get(&self, id: u64) -> Option<Arc<ConnHandle>> {
        read(self.conn_shard(id)).get(&id).cloned()
    }

    /// Whether any backend connection is registered (see `backends`).
    pub fn has_backends(&self) -> bool {
        self.backends.load(Relaxed) > 0
    }

    pub fn connections(&self) -> usize {
        self.conns.iter().map(|s| read(s).len()).sum()
    }

    pub fn users(&self) -> usize {
        self.users.keys()
    }

    /// Connections admitted but possibly not yet registered (for leak checks).
    pub fn admitted(&self) -> usize {
        self.counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .per_ip
            .values()
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle(id: u64, user: &str) -> Arc<ConnHandle> {
        let identity = Identity {
            user: UserId::from(user),
            device: None,
            groups: vec![Arc::from("g")],
            admin: false,
            backend: false,
            expires_at: None,
            token: None,
        };
        Arc::new(ConnHandle::new(
            id,
            ConnId::from(id.to_string()),
            identity,
            Arc::new(Outbox::new(4, 1024)),
            std::net::IpAddr::from([127, 0, 0, 1]),
            0,
            0,
        ))
    }

    #[test]
    fn caps_and_drop_guards_restore_everything() {
        let r = Arc::new(Registry::new(
            2,
            3,
            std::time::Duration::from_secs(2),
            ChannelLimits::default(),
        ));
        let ip: IpAddr = [127, 0, 0, 1].into();
        let u = UserId::from("u");
        let a1 = r.admit(&u, ip).unwrap();
        let a2 = r.admit(&u, ip).unwrap();
        assert_eq!(r.admit(&u, ip).err(), Some(Refusal::UserCap));
        let a3 = r.admit(&UserId::from("v"), ip).unwrap();
        assert_eq!(r.admit(&UserId::from("w"), ip).err(), Some(Refusal::IpCap));
        let reg = r.register(a1, handle(1, "u"));
        let ns = Arc::new(crate::config::NamespaceConfig::default());
        assert!(r.track_subscription(&reg.handle, &Arc::from("news")));
        assert!(!r.track_subscription(&reg.handle, &Arc::from("news")));
        r.channels.subscribe(&reg.handle, "news", &ns, None, None);
        assert_eq!(
            (
                r.connections(),
                r.users(),
                r.channels.subscriber_count("news"),
                r.groups.count("g")
            ),
            (1, 1, 1, 1)
        );
        drop(reg);
        drop((a2, a3));
        assert_eq!(
            (
                r.connections(),
                r.users(),
                r.channels.subscriber_count("news"),
                r.groups.keys(),
                r.admitted()
            ),
            (0, 0, 0, 0, 0)
        );
        assert!(r.presence.online("u", 0), "offline only after the grace");
    }
}
