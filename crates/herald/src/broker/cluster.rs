//! The cluster-wide view over Redis (DESIGN §8, §9): which users are online and with how
//! many connections, who is present on a channel, and the node, connection and user
//! totals — on every node, for all nodes.
//!
//! Each node writes its own state and reads everyone's. Every [`SYNC_EVERY`] it compares
//! what its hub holds (users with their connection counts, users in their offline
//! grace, channel members) with what it last wrote, writes the difference, and beats its
//! heart (`P:nodes`, a sorted set scored by Redis's clock). A node whose heart has not
//! beaten for [`NODE_TTL_MS`] is dead: readers ignore it at once, and the next heartbeat
//! of any node removes what it left behind. So a SIGKILLed node's users read offline
//! within `NODE_TTL_MS` plus one sync. A Redis that lost its data (restarted without
//! persistence) is noticed by the heartbeat, and the node writes everything again.
//!
//! Keys (`P` = `broker.prefix`): `P:nodes`; `P:node:<tag>:users` (set) and
//! `P:node:<tag>:stats` (hash); `P:user:<id>` (hash node tag → connections, 0 in the
//! grace); `P:online` (hash user → nodes it is on); `P:chp:<channel>` (hash
//! `<tag>|<user>` → 1).
//!
//! Each sync also reads, for every channel with presence and local subscribers, who is on
//! it on the other nodes, so a join or leave frame is sent when a user enters or leaves
//! the cluster's presence of the channel, on every node, and a reload onto another node
//! within the grace sends none.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use crate::broker::conn::Conn;
use redis::{RedisResult, Value};
use tokio_util::sync::CancellationToken;

use crate::hub::presence_events::{EventKind, PresenceEvent};
use crate::hub::Hub;
use crate::ids::UserId;

pub const SYNC_EVERY: Duration = Duration::from_millis(500);
pub const NODE_TTL_MS: u64 = 5_000;
const KEY_TTL_S: u64 = 24 * 3600;

/// This node holds the user (with ARGV[2] connections, 0 in the grace); 2 if that made
/// the user online in the cluster (then, with ARGV[5] set, `P:online:<user>` is set and
/// ARGV[5] published on ARGV[6]).
const USER_UP: &str = r"
local added = redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[4])
if added == 1 then
  redis.call('SADD', KEYS[2], ARGV[3])
  if redis.call('HINCRBY', KEYS[3], ARGV[3], 1) == 1 then
    if ARGV[5] ~= '' then
      redis.call('SET', KEYS[4], 1)
      redis.call('PUBLISH', ARGV[6], ARGV[5])
    end
    return 2
  end
end
return added";

/// This node no longer holds the user; 1 if that made the user offline in the cluster
/// (then, with ARGV[3] set, `P:online:<user>` is deleted and ARGV[3] published on ARGV[4]).
const USER_DOWN: &str = r"
if redis.call('HDEL', KEYS[1], ARGV[1]) == 1 then
  redis.call('SREM', KEYS[2], ARGV[2])
  if redis.call('HINCRBY', KEYS[3], ARGV[2], -1) <= 0 then
    redis.call('HDEL', KEYS[3], ARGV[2])
    if ARGV[3] ~= '' then
      redis.call('DEL', KEYS[4])
      redis.call('PUBLISH', ARGV[4], ARGV[3])
    end
    return 1
  end
end
return 0";

/// Beats this node's heart, writes its totals, clears dead nodes: `{1 if Redis knew us,
/// the users that clearing made offline in the cluster}` (with ARGV[7] set, their
/// `P:online:<user>` deleted and a `user_offline` published on `P:presence`).
const HEARTBEAT: &str = r"
local p, tag, ttl = ARGV[1], ARGV[2], tonumber(ARGV[5])
local gone = {}
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local known = redis.call('ZSCORE', p .. ':nodes', tag)
redis.call('ZADD', p .. ':nodes', now, tag)
local stats = p .. ':node:' .. tag .. ':stats'
redis.call('HSET', stats, 'connections', ARGV[3], 'users', ARGV[4], 'name', ARGV[6])
redis.call('PEXPIRE', stats, ttl)
for _, dead in ipairs(redis.call('ZRANGEBYSCORE', p .. ':nodes', '-inf', now - ttl)) do
  local set = p .. ':node:' .. dead .. ':users'
  for _, user in ipairs(redis.call('SMEMBERS', set)) do
    redis.call('HDEL', p .. ':user:' .. user, dead)
    if redis.call('HINCRBY', p .. ':online', user, -1) <= 0 then
      redis.call('HDEL', p .. ':online', user)
      table.insert(gone, user)
      if ARGV[7] ~= '' then
        redis.call('DEL', p .. ':online:' .. user)
        redis.call('PUBLISH', p .. ':presence', cjson.encode({event = 'user_offline',
          user_id = user, node = ARGV[6], at = now}))
      end
    end
  end
  redis.call('DEL', set)
  redis.call('ZREM', p .. ':nodes', dead)
end
if known then return {1, gone} else return {0, gone} end";

/// Lua: `alive`, the set of node tags whose heartbeat (`p .. ':nodes'`, by Redis's clock)
/// is younger than `ttl` ms. Needs `p` and `ttl`.
macro_rules! alive_nodes {
    () => {
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local alive = {}
for _, tag in ipairs(redis.call('ZRANGEBYSCORE', p .. ':nodes', now - ttl, '+inf')) do
  alive[tag] = true
end
"
    };
}

/// The fields of hash KEYS[1] whose node (the field up to `|`) is alive.
const ALIVE_FIELDS: &str = concat!(
    r"
local p, ttl = ARGV[1], tonumber(ARGV[2])",
    alive_nodes!(),
    r"local out = {}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local tag = string.match(all[i], '^[^|]+')
  if alive[tag] then
    table.insert(out, all[i])
    table.insert(out, all[i + 1])
  end
end
return out"
);

/// Alive nodes, their connections summed, and the distinct users online.
const TOTALS: &str = r"
local p, ttl = ARGV[1], tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local nodes = redis.call('ZRANGEBYSCORE', p .. ':nodes', now - ttl, '+inf')
local connections = 0
local each = {}
for _, tag in ipairs(nodes) do
  local s = redis.call('HMGET', p .. ':node:' .. tag .. ':stats', 'connections', 'users', 'name')
  connections = connections + tonumber(s[1] or '0')
  table.insert(each, {tag, s[3] or '', tonumber(s[1] or '0'), tonumber(s[2] or '0')})
end
return {#nodes, connections, redis.call('HLEN', p .. ':online'), each}";

/// For each channel presence hash in KEYS, the users on it on alive nodes other than
/// ARGV[3] (this node).
const PRESENT_ELSEWHERE: &str = concat!(
    r"
local p, ttl, me = ARGV[1], tonumber(ARGV[2]), ARGV[3]",
    alive_nodes!(),
    r"local out = {}
for i, key in ipairs(KEYS) do
  local users = {}
  for _, field in ipairs(redis.call('HKEYS', key)) do
    local tag, user = string.match(field, '^([^|]+)|(.*)$')
    if tag and tag ~= me and alive[tag] then
      table.insert(users, user)
    end
  end
  out[i] = users
end
return out"
);

/// Totals for `/api/stats` `cluster` and announcement stats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Totals {
    pub nodes: u64,
    pub connections: u64,
    pub users: u64,
    /// Each alive node: its tag, name, connections and users (as of its last beat).
    pub per_node: Vec<NodeTotals>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NodeTotals {
    pub tag: String,
    pub name: String,
    pub connections: u64,
    pub users: u64,
}

pub struct ClusterView {
    conn: Conn,
    prefix: String,
    tag: String,
}

fn eval(script: &str, keys: &[&str], args: &[&str]) -> redis::Cmd {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(script).arg(keys.len());
    for k in keys {
        cmd.arg(*k);
    }
    for a in args {
        cmd.arg(*a);
    }
    cmd
}

impl ClusterView {
    pub fn new(conn: Conn, prefix: &str, tag: &str) -> ClusterView {
        ClusterView {
            conn,
            prefix: prefix.to_owned(),
            tag: tag.to_owned(),
        }
    }

    /// The connection it reads and writes through (shared: a clone is a handle).
    pub fn conn(&self) -> Conn {
        self.conn.clone()
    }

    fn ttl(&self) -> String {
        NODE_TTL_MS.to_string()
    }

    /// Online anywhere, and the connections on all nodes.
    pub async fn user(&self, user: &str) -> RedisResult<(bool, u64)> {
        let key = format!("{}:user:{user}", self.prefix);
        let fields: Vec<String> = eval(ALIVE_FIELDS, &[&key], &[&self.prefix, &self.ttl()])
            .query_async(&mut self.conn.clone())
            .await?;
        let connections = fields
            .chunks(2)
            .filter_map(|kv| kv.get(1)?.parse::<u64>().ok())
            .sum();
        Ok((!fields.is_empty(), connections))
    }

    /// The users present on `channel` on any node, sorted.
    pub async fn channel(&self, channel: &str) -> RedisResult<Vec<String>> {
        let key = format!("{}:chp:{channel}", self.prefix);
        let fields: Vec<String> = eval(ALIVE_FIELDS, &[&key], &[&self.prefix, &self.ttl()])
            .query_async(&mut self.conn.clone())
            .await?;
        let mut users: Vec<String> = fields
            .chunks(2)
            .filter_map(|kv| Some(kv.first()?.split_once('|')?.1.to_owned()))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        users.sort();
        Ok(users)
    }

    pub async fn totals(&self) -> RedisResult<Totals> {
        type Each = Vec<(String, String, u64, u64)>;
        let (nodes, connections, users, each): (u64, u64, u64, Each) =
            // KEYS[1] is not read: it routes the script to the view's slot on a cluster.
            eval(TOTALS, &[&format!("{}:nodes", self.prefix)], &[&self.prefix, &self.ttl()])
                .query_async(&mut self.conn.clone())
                .await?;
        let mut per_node: Vec<NodeTotals> = each
            .into_iter()
            .map(|(tag, name, connections, users)| NodeTotals {
                tag,
                name,
                connections,
                users,
            })
            .collect();
        per_node.sort_by(|a, b| (&a.name, &a.tag).cmp(&(&b.name, &b.tag)));
        Ok(Totals {
            nodes,
            connections,
            users,
            per_node,
        })
    }
}

/// What this node last wrote to Redis.
#[derive(Default)]
struct Written {
    users: HashMap<UserId, usize>,
    members: HashSet<(Arc<str>, UserId)>,
    /// Redis may not hold it (a failed round, or Redis lost its data): write all of it
    /// again, and remove what went away meanwhile. The users written before were
    /// announced online already; a rewrite does not announce them again.
    resend: bool,
}

/// What a command of the round may report: the user it turned online or offline.
enum Watch {
    Nothing,
    Up(UserId),
    Down(UserId),
}

/// Writes this node's presence and totals every [`SYNC_EVERY`] until `stop`.
pub async fn sync_loop(hub: Arc<Hub>, view: Arc<ClusterView>, stop: CancellationToken) {
    let mut written = Written::default();
    let mut conn = view.conn.clone();
    loop {
        let synced = sync_once(&hub, &view, &mut conn, &mut written).await;
        if synced.is_ok() {
            if let Err(e) = refresh_presence(&hub, &view, &mut conn).await {
                tracing::debug!("cluster view: channel presence not refreshed: {e}");
            }
        }
        match synced {
            Ok(true) => {}
            // Redis did not know us (first beat, or it lost its data): write it all.
            Ok(false) => written.resend = true,
            Err(e) => {
                tracing::debug!("cluster view: sync failed: {e}");
                written.resend = true;
            }
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(SYNC_EVERY) => {}
        }
    }
    // Leaving cleanly: what this node held is gone at once, not after the TTL.
    let mut pipe = redis::pipe();
    let mut watch = Vec::new();
    for user in written.users.keys() {
        pipe.add_command(user_down(&hub, &view, user));
        watch.push(Watch::Down(user.clone()));
    }
    for (channel, user) in &written.members {
        pipe.add_command(member(&view, channel, user, false));
        watch.push(Watch::Nothing);
    }
    pipe.zrem(format!("{}:nodes", view.prefix), &view.tag);
    if let Ok(results) = pipe.query_async::<Vec<Value>>(&mut conn).await {
        report(&hub, watch, &results);
    }
}

/// The body of a user event as Redis subscribers get it, when `presence.redis_keys`
/// is on ('' tells the script not to write the key nor publish).
fn redis_body(hub: &Hub, kind: EventKind, user: &UserId) -> String {
    if hub.redis_presence_keys {
        PresenceEvent::new(kind, user, None, &hub.node).body()
    } else {
        String::new()
    }
}

fn user_keys(view: &ClusterView, user: &str) -> [String; 4] {
    let p = &view.prefix;
    [
        format!("{p}:user:{user}"),
        format!("{p}:node:{}:users", view.tag),
        format!("{p}:online"),
        format!("{p}:online:{user}"),
    ]
}

fn user_up(hub: &Hub, view: &ClusterView, user: &UserId, connections: usize) -> redis::Cmd {
    let keys = user_keys(view, user);
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    eval(
        USER_UP,
        &keys,
        &[
            &view.tag,
            &connections.to_string(),
            user,
            &KEY_TTL_S.to_string(),
            &redis_body(hub, EventKind::UserOnline, user),
            &format!("{}:presence", view.prefix),
        ],
    )
}

fn user_down(hub: &Hub, view: &ClusterView, user: &UserId) -> redis::Cmd {
    let keys = user_keys(view, user);
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    eval(
        USER_DOWN,
        &keys,
        &[
            &view.tag,
            user,
            &redis_body(hub, EventKind::UserOffline, user),
            &format!("{}:presence", view.prefix),
        ],
    )
}

/// Hands the users this round turned online or offline in the cluster to the presence
/// events: the node whose script made the change is the one that reports it, so each
/// is reported once per cluster.
fn report(hub: &Hub, watch: Vec<Watch>, results: &[Value]) {
    let events = &hub.registry.events;
    for (w, r) in watch.into_iter().zip(results) {
        match (w, r) {
            (Watch::Up(user), Value::Int(2)) => events.user(EventKind::UserOnline, &user),
            (Watch::Down(user), Value::Int(1)) => events.user(EventKind::UserOffline, &user),
            _ => {}
        }
    }
}

const MEMBER_UP: &str = r"
redis.call('HSET', KEYS[1], ARGV[1], 1)
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 0";

fn member(view: &ClusterView, channel: &str, user: &str, present: bool) -> redis::Cmd {
    let key = format!("{}:chp:{channel}", view.prefix);
    let field = format!("{}|{user}", view.tag);
    if present {
        // The key's lifetime is refreshed with every join: a channel idle for a day is
        // forgotten.
        eval(MEMBER_UP, &[&key], &[&field, &KEY_TTL_S.to_string()])
    } else {
        let mut c = redis::cmd("HDEL");
        c.arg(&key).arg(field);
        c
    }
}

/// Tells each channel with presence and local subscribers who is present on it on the
/// other nodes, so joins and leaves are announced once for the cluster (one script for
/// all such channels, every sync).
async fn refresh_presence(hub: &Hub, view: &ClusterView, conn: &mut Conn) -> RedisResult<()> {
    let channels = hub.registry.channels.presence_watched();
    if channels.is_empty() {
        return Ok(());
    }
    let keys: Vec<String> = channels
        .iter()
        .map(|c| format!("{}:chp:{c}", view.prefix))
        .collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let elsewhere: Vec<Vec<String>> = eval(
        PRESENT_ELSEWHERE,
        &keys,
        &[&view.prefix, &view.ttl(), &view.tag],
    )
    .query_async(conn)
    .await?;
    for (channel, users) in channels.iter().zip(elsewhere) {
        let users = users.into_iter().map(UserId::from).collect();
        hub.registry.channels.set_remote_presence(channel, users);
    }
    Ok(())
}

/// One round: returns whether Redis already knew this node.
async fn sync_once(
    hub: &Hub,
    view: &ClusterView,
    conn: &mut Conn,
    written: &mut Written,
) -> RedisResult<bool> {
    let p = &view.prefix;
    let registry = &hub.registry;
    let mut users: HashMap<UserId, usize> = registry.users.counts().into_iter().collect();
    for user in registry.presence.in_grace() {
        users.entry(user).or_insert(0);
    }
    let members: HashSet<(Arc<str>, UserId)> = registry
        .channels
        .presence_snapshot()
        .into_iter()
        .flat_map(|(c, us)| us.into_iter().map(move |u| (c.clone(), u)))
        .collect();
    let resend = written.resend;
    let mut pipe = redis::pipe();
    let mut watch = Vec::new();
    for (user, n) in &users {
        if resend || written.users.get(user) != Some(n) {
            pipe.add_command(user_up(hub, view, user, *n));
            // Rewritten after a loss, a user written before is not news.
            watch.push(if resend && written.users.contains_key(user) {
                Watch::Nothing
            } else {
                Watch::Up(user.clone())
            });
        }
    }
    for user in written.users.keys().filter(|u| !users.contains_key(*u)) {
        pipe.add_command(user_down(hub, view, user));
        watch.push(Watch::Down(user.clone()));
    }
    for (channel, user) in &members {
        if resend || !written.members.contains(&(channel.clone(), user.clone())) {
            pipe.add_command(member(view, channel, user, true));
            watch.push(Watch::Nothing);
        }
    }
    for (channel, user) in written.members.difference(&members) {
        pipe.add_command(member(view, channel, user, false));
        watch.push(Watch::Nothing);
    }
    pipe.add_command(eval(
        HEARTBEAT,
        &[&format!("{p}:nodes")],
        &[
            p,
            &view.tag,
            &registry.connections().to_string(),
            &users.len().to_string(),
            &NODE_TTL_MS.to_string(),
            &hub.node,
            if hub.redis_presence_keys { "1" } else { "" },
        ],
    ));
    let results: Vec<Value> = pipe.query_async(conn).await?;
    report(hub, watch, &results);
    let (known, gone) = match results.last() {
        Some(Value::Array(beat)) => (matches!(beat.first(), Some(Value::Int(1))), beat.get(1)),
        _ => (false, None),
    };
    // Users of dead nodes that this node's heartbeat cleared, now offline everywhere.
    if let Some(Value::Array(gone)) = gone {
        for user in gone {
            if let Ok(user) = redis::from_redis_value_ref::<String>(user) {
                registry
                    .events
                    .user(EventKind::UserOffline, &UserId::from(user));
            }
        }
    }
    written.users = users;
    written.members = members;
    written.resend = false;
    Ok(known)
}
