//! The Redis broker (DESIGN §9): one pub/sub connection and one command connection per
//! node, both `ConnectionManager`s (they reconnect with capped, jittered exponential
//! backoff, and the pub/sub one resubscribes by itself) — or, on a Redis Cluster
//! (`redis+cluster://`, DESIGN §13), both the cluster client's connections: channels
//! become shard channels (`SPUBLISH`/`SSUBSCRIBE`) on the shard of their slot
//! ([`super::keys`]), pipelines are split per slot, and the bus is resubscribed here
//! after a failover, which the client does not do reliably.
//!
//! Every publication goes to Redis and comes back, on one pub/sub connection, to every
//! node that wants it, this one included, so all nodes see the same order. A channel's
//! publications travel on the channel's own pub/sub channel, which a node follows only
//! while it has local subscribers ([`follow`](super::follow)); publications to users,
//! groups and everyone, and announcements, travel on one bus channel every node
//! follows. A publication on a channel with history runs one script that assigns its
//! offset, appends it to the channel's capped stream and publishes it (`publish.lua`);
//! others are a plain `PUBLISH`. Commands from all publishers of the node are queued to
//! one task that sends whatever is waiting as one pipeline. Where its publication comes
//! back here, the origin answers its caller once that echo has been delivered locally,
//! so "accepted" still means "queued to this node's subscribers"; where it does not (a
//! channel this node does not follow), Redis's answer is the acceptance.
//!
//! While Redis cannot be reached, a publication without history is delivered to this
//! node's clients and counted as degraded; one with history is refused (503): it could
//! not be made durable, and is never accepted and lost.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_routing::Slot;
use redis::{PushInfo, PushKind, RedisResult, Value};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::cluster::{self, ClusterView};
use super::conn::{self, Conn, PubSub};
use super::envelope::{self, Body};
use super::follow::{Ask, Following, Join};
use super::gap;
use super::gather;
use super::idempotency;
use super::keys::Keys;
use super::revoke;
use super::Gathering;
use super::{Broker, Health, Ordered, Reading, Ready, Submitted};
use crate::auth::revoked::{NotKept, Revocation};
use crate::hub::disconnect::Disconnect;
use crate::hub::fanout::conn_device;
use crate::hub::namespace::Denied;
use crate::hub::{Delivered, Hub, Inlet, Publication, Target};
use crate::metrics::Metrics;
use crate::ws::frame::Frame;

const SCRIPT: &str = include_str!("publish.lua");

/// A publication without history that carries an idempotency key: claimed and published
/// in one step, like the history script does it (KEYS[1] = the key; ARGV[1] = topic,
/// ARGV[2] = message, ARGV[3] = claim TTL). Rare enough to be sent as text (`EVAL`).
const IDEMPOTENT_PUBLISH: &str = "local seen = redis.call('GET', KEYS[1]) \
if seen then return {'seen', seen} end \
redis.call('SET', KEYS[1], '-', 'EX', ARGV[3]) \
redis.call('PUBLISH', ARGV[1], ARGV[2]) \
return 1";

/// A script as a Redis Cluster runs it: publishing on the shard channel of its keys'
/// slot (`SPUBLISH`), so the publication stays on that shard.
fn sharded(script: &str) -> String {
    script.replace("redis.call('PUBLISH'", "redis.call('SPUBLISH'")
}

/// The publish script's text, for one Redis or a cluster.
fn script(cluster: bool) -> &'static str {
    static SHARDED: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    if cluster {
        SHARDED.get_or_init(|| sharded(SCRIPT))
    } else {
        SCRIPT
    }
}

/// The idempotent publish without history, for one Redis or a cluster.
fn idempotent_publish(cluster: bool) -> &'static str {
    static SHARDED: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    if cluster {
        SHARDED.get_or_init(|| sharded(IDEMPOTENT_PUBLISH))
    } else {
        IDEMPOTENT_PUBLISH
    }
}

/// The publish script's SHA-1, as `EVALSHA` names it: the script's text is sent once
/// (`SCRIPT LOAD`, again whenever Redis answers that it does not know it), not with
/// every publication — ~20% more publications per Redis second (docs/benchmarks.md).
fn script_sha(cluster: bool) -> &'static str {
    static SHA: [std::sync::OnceLock<String>; 2] =
        [std::sync::OnceLock::new(), std::sync::OnceLock::new()];
    let Some(cell) = SHA.get(usize::from(cluster)) else {
        return "";
    };
    cell.get_or_init(|| {
        use sha1::{Digest, Sha1};
        format!("{:x}", Sha1::digest(script(cluster).as_bytes()))
    })
}
/// Publications waiting for Redis; past this the node treats Redis as unreachable.
const QUEUE: usize = 65_536;
/// Commands sent as one pipeline at most.
const BATCH: usize = 512;
/// How long a publisher waits for its own publication to come back.
const ECHO_WAIT: Duration = Duration::from_secs(2);
/// Redis answers within this or counts as down (a frozen Redis is detected too).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);
const PROBE_EVERY: Duration = Duration::from_millis(500);
/// A channel's offset and epoch outlive its history by at least this.
const META_TTL_S: u64 = 24 * 3600;
/// A subscriber waits at most this for its channel to be followed, then joins with
/// what the node has (a Redis that does not answer must not stall subscribes).
const FOLLOW_WAIT: Duration = Duration::from_secs(3);
/// How often followed channels are checked for idleness and unanswered SUBSCRIBEs.
const UPKEEP_EVERY: Duration = Duration::from_secs(1);
/// A claim of a publication with history older than this was given up by its node
/// (it waits [`ECHO_WAIT`] at most): a repeat is answered with the claim's position.
const CLAIM_STALE: Duration = Duration::from_secs(3);
/// Own publications settled here without their echo, remembered so that a late echo
/// is not delivered a second time.
const SETTLED_KEPT: usize = 4096;

struct Job {
    seq: u64,
    cmd: redis::Cmd,
}

/// A publication of this node waiting for its echo (or for the answer that it failed).
struct Waiter {
    publication: Publication,
    /// Assigned by the script, once Redis answered.
    position: Option<(u64, Arc<str>)>,
    history: bool,
    /// Its publication comes back to this node (the bus, or a channel followed here):
    /// answered when that echo is delivered. Otherwise Redis's answer settles it.
    echo: bool,
    answer: oneshot::Sender<Result<Delivered, Denied>>,
}

/// Called when another node's announcement event arrives (the store forgets its cache).
pub type OnAnnouncement = Box<dyn Fn() + Send + Sync>;

/// Called with false when the pub/sub connection is lost and with true when the bus is
/// subscribed again: announcement events of the outage may have passed this node's
/// clients by.
pub type OnLink = Box<dyn Fn(bool) + Send + Sync>;

struct Shared {
    inlet: Inlet,
    on_announcement: OnAnnouncement,
    on_link: OnLink,
    metrics: Arc<Metrics>,
    node: String,
    bus: String,
    keys: Keys,
    seq: AtomicU64,
    waiters: Mutex<HashMap<u64, Waiter>>,
    /// Own publications without history delivered here before (or without) their echo.
    settled: Mutex<VecDeque<u64>>,
    following: Following,
    /// To the task that sends SUBSCRIBE / UNSUBSCRIBE on the pub/sub connection.
    asks: mpsc::UnboundedSender<Ask>,
    /// Pub/sub subscribed and the command connection answering.
    subscribed: AtomicBool,
    answering: AtomicBool,
    /// An outage is logged and counted once, when it starts.
    down_since_logged: AtomicBool,
    /// A cluster's bus is being subscribed again ([`resubscribe_bus`]).
    resubscribing: AtomicBool,
}

pub struct RedisBroker {
    shared: Arc<Shared>,
    /// For reads a session waits on (history older than the node's copy).
    commands: Conn,
    jobs: mpsc::Sender<Job>,
    cluster: Arc<ClusterView>,
}

/// A client for `url` speaking RESP3 (pub/sub on a managed connection needs it).
pub fn client(url: &str) -> RedisResult<redis::Client> {
    let info = redis::IntoConnectionInfo::into_connection_info(url)?;
    let settings = info
        .redis_settings()
        .clone()
        .set_protocol(redis::ProtocolVersion::RESP3);
    redis::Client::open(info.set_redis_settings(settings))
}

/// Checks a broker URL as `check-config` does: a scheme herald knows, and one the
/// Redis client can parse.
pub fn validate_url(url: &str) -> Result<(), String> {
    if conn::is_cluster(url) {
        return conn::seeds(url).map(drop);
    }
    if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
        return Err(format!(
            "`{url}` is not memory://, redis://host:port[/db], rediss://… or redis+cluster://host:port,host:port"
        ));
    }
    client(url).map(drop).map_err(|e| format!("`{url}`: {e}"))
}

/// How long a cluster command may take in all, its retries and redirections included:
/// a master's failover takes a few seconds, and a publication rides through it rather
/// than fail at the first try (docs/redis-cluster-findings.md).
const CLUSTER_OVERALL_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a node waits for the cluster at start.
const CLUSTER_CONNECT_WAIT: Duration = Duration::from_secs(10);

/// The command and pub/sub connections for `url`, and where the pub/sub connection's
/// pushes arrive. One Redis: managed connections, lazy (a node starts while Redis is
/// away). A cluster: connected now (the slot map comes from the seeds), retried for
/// [`CLUSTER_CONNECT_WAIT`].
async fn connect(url: &str) -> anyhow::Result<(Conn, PubSub, mpsc::UnboundedReceiver<PushInfo>)> {
    let (push_tx, push_rx) = mpsc::unbounded_channel::<PushInfo>();
    if !conn::is_cluster(url) {
        let commands = ConnectionManager::new_lazy_with_config(client(url)?, manager_config())?;
        let pubsub = ConnectionManager::new_lazy_with_config(
            client(url)?,
            manager_config()
                .set_push_sender(push_tx)
                .set_automatic_resubscription(),
        )?;
        return Ok((Conn::One(commands), PubSub::One(pubsub), push_rx));
    }
    let commands = conn::cluster_client(url, None, RESPONSE_TIMEOUT, CLUSTER_OVERALL_TIMEOUT)?;
    let pubsub = conn::cluster_client(
        url,
        Some(push_tx),
        RESPONSE_TIMEOUT,
        CLUSTER_OVERALL_TIMEOUT,
    )?;
    let started = Instant::now();
    loop {
        let both = async {
            let c = commands.get_async_connection().await?;
            let p = pubsub.get_async_connection().await?;
            RedisResult::Ok((c, p))
        };
        match both.await {
            Ok((c, p)) => return Ok((Conn::Cluster(c), PubSub::Cluster(p), push_rx)),
            Err(e) if started.elapsed() >= CLUSTER_CONNECT_WAIT => {
                anyhow::bail!("broker.url: cannot reach the Redis Cluster: {e}")
            }
            Err(e) => {
                tracing::warn!("broker: the Redis Cluster does not answer yet: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Reconnects with jittered exponential backoff capped at 5 s; 1 s to answer.
pub fn manager_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_min_delay(Duration::from_millis(100))
        .set_max_delay(Duration::from_secs(5))
        .set_exponent_base(2.0)
        .set_number_of_retries(6)
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_connection_timeout(Some(RESPONSE_TIMEOUT))
}

impl RedisBroker {
    /// Starts the broker's tasks (publisher, receiver, probe) under `stop`.
    pub async fn start(
        url: &str,
        prefix: &str,
        inlet: Inlet,
        metrics: Arc<Metrics>,
        on_announcement: OnAnnouncement,
        on_link: OnLink,
        stop: CancellationToken,
    ) -> anyhow::Result<(Arc<RedisBroker>, Vec<tokio::task::JoinHandle<()>>)> {
        let (commands, pubsub, push_rx) = connect(url).await?;
        let keys = Keys::new(prefix, conn::is_cluster(url));
        let (jobs, jobs_rx) = mpsc::channel(QUEUE);
        let (asks, asks_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            node: inlet.hub().node_tag().to_owned(),
            inlet,
            on_announcement,
            on_link,
            metrics,
            bus: keys.bus(),
            keys,
            seq: AtomicU64::new(1),
            waiters: Mutex::new(HashMap::new()),
            settled: Mutex::new(VecDeque::new()),
            following: Following::default(),
            asks,
            subscribed: AtomicBool::new(false),
            answering: AtomicBool::new(false),
            down_since_logged: AtomicBool::new(false),
            resubscribing: AtomicBool::new(false),
        });
        let view = Arc::new(ClusterView::new(
            commands.clone(),
            shared.keys.common(),
            &shared.node,
        ));
        let tasks = vec![
            tokio::spawn(cluster::sync_loop(
                shared.inlet.hub().clone(),
                view.clone(),
                stop.clone(),
            )),
            tokio::spawn(send_loop(
                shared.clone(),
                commands.clone(),
                jobs_rx,
                stop.clone(),
            )),
            tokio::spawn(subscribe_loop(
                shared.clone(),
                pubsub.clone(),
                asks_rx,
                stop.clone(),
            )),
            tokio::spawn(receive_loop(
                shared.clone(),
                pubsub,
                commands.clone(),
                push_rx,
                stop.clone(),
            )),
            tokio::spawn(probe_loop(shared.clone(), commands.clone(), stop)),
        ];
        let broker = RedisBroker {
            shared,
            commands,
            jobs,
            cluster: view,
        };
        Ok((Arc::new(broker), tasks))
    }
}

impl Shared {
    fn up(&self) -> bool {
        self.subscribed.load(Relaxed) && self.answering.load(Relaxed)
    }

    fn claim(&self, seq: u64) -> Option<Waiter> {
        self.waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&seq)
    }

    /// Redis could not take `p`: deliver it here only, or refuse it if it needed history.
    fn local_only(&self, p: &Publication, history: bool) -> Result<Delivered, Denied> {
        if history {
            return Err(Denied::Unavailable(
                "the shared history (Redis) is unreachable; the publication was not accepted",
            ));
        }
        self.metrics.degraded.fetch_add(1, Relaxed);
        self.inlet.deliver(p, None)
    }

    /// A waiter that will hear nothing more from Redis: answer it from what is known.
    fn settle(&self, w: Waiter, seq: u64) {
        if !w.history {
            let mut settled = self.settled.lock().unwrap_or_else(|p| p.into_inner());
            if settled.len() >= SETTLED_KEPT {
                settled.pop_front();
            }
            settled.push_back(seq);
        }
        let result = match (&w.position, w.history) {
            // The script ran, the echo never came: deliver here with the assigned position.
            (Some((offset, epoch)), true) => {
                self.inlet.deliver(&w.publication, Some((*offset, epoch)))
            }
            (None, history) => self.local_only(&w.publication, history),
            (Some(_), false) => self.inlet.deliver(&w.publication, None),
        };
        let _ = w.answer.send(result);
    }

    /// Whether an own publication without history was already delivered here.
    fn was_settled(&self, seq: u64) -> bool {
        self.settled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&seq)
    }

    /// The pub/sub channel a publication to `target` travels on.
    fn topic(&self, target: &Target) -> String {
        match target {
            Target::Channel(name) => self.keys.topic(name),
            _ => self.bus.clone(),
        }
    }

    fn outage(&self, why: &str) {
        if !self.down_since_logged.swap(true, Relaxed) {
            self.metrics.broker_outages.fetch_add(1, Relaxed);
            tracing::warn!("broker: Redis unreachable ({why}); delivering to local clients only");
        }
    }

    fn recovered(&self) {
        if self.up() && self.down_since_logged.swap(false, Relaxed) {
            tracing::info!("broker: Redis reachable again; cross-node delivery resumed");
        }
    }
}

impl Broker for RedisBroker {
    fn publish(&self, mut p: Publication) -> Submitted {
        let s = &self.shared;
        let hub = s.inlet.hub();
        let history = match hub.admit(&p) {
            Ok(history) => history,
            Err(denied) => return Submitted::Done(Err(denied)),
        };
        if let Some(id) = &p.exclude.conn {
            p.exclude.conn_device = hub
                .local_conn(id)
                .as_deref()
                .filter(|c| p.exclude.owned(c))
                .and_then(conn_device);
        }
        if !s.up() {
            return Submitted::Done(s.local_only(&p, history.is_some()));
        }
        let seq = s.seq.fetch_add(1, Relaxed);
        let body = Body::of_publication(&s.node, seq, &p);
        let topic = s.topic(&p.target);
        let echo = match &p.target {
            Target::Channel(name) => s.following.is_live(name),
            _ => true,
        };
        let idem = p.idempotency_key.as_deref().map(|key| {
            let channel = match &p.target {
                Target::Channel(name) => Some(name.as_str()),
                _ => None,
            };
            s.keys.idem(channel, &idempotency::scope(&p, key))
        });
        let cluster = s.keys.cluster();
        let claim_ttl = idempotency::CLAIM_TTL.as_secs();
        let cmd = match (&p.target, history) {
            (Target::Channel(name), Some((size, ttl_s))) => {
                let mut cmd = redis::cmd("EVALSHA");
                cmd.arg(script_sha(cluster))
                    .arg(if idem.is_some() { 3 } else { 2 })
                    .arg(s.keys.meta(name))
                    .arg(s.keys.hist(name));
                if let Some(key) = &idem {
                    cmd.arg(key);
                }
                cmd.arg(&topic)
                    .arg(envelope::encode_body(&body))
                    .arg(size)
                    .arg(ttl_s)
                    .arg(format!("{:016x}", rand::random::<u64>()))
                    .arg(META_TTL_S.max(ttl_s))
                    .arg(idempotency::WINDOW.as_secs())
                    .arg(CLAIM_STALE.as_millis() as u64);
                cmd
            }
            _ => match &idem {
                Some(key) => {
                    let mut cmd = redis::cmd("EVAL");
                    cmd.arg(idempotent_publish(cluster))
                        .arg(1)
                        .arg(key)
                        .arg(&topic)
                        .arg(envelope::encode(&body))
                        .arg(claim_ttl);
                    cmd
                }
                None => {
                    let mut cmd = redis::cmd(s.keys.publish_command());
                    cmd.arg(&topic).arg(envelope::encode(&body));
                    cmd
                }
            },
        };
        let (answer, rx) = oneshot::channel();
        let waiter = Waiter {
            publication: p,
            position: None,
            history: history.is_some(),
            echo,
            answer,
        };
        s.waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(seq, waiter);
        if self.jobs.try_send(Job { seq, cmd }).is_err() {
            s.outage("the publish queue is full");
            if let Some(w) = s.claim(seq) {
                s.settle(w, seq);
            }
        }
        let shared = self.shared.clone();
        let keep = idem.map(|key| (key, self.jobs.clone()));
        Submitted::Pending(Box::pin(async move {
            let result = match tokio::time::timeout(ECHO_WAIT, rx).await {
                Ok(Ok(result)) => result,
                _ => {
                    // Neither the echo nor a failure came in time.
                    let mut result = Err(Denied::Unavailable("the broker did not answer in time"));
                    if let Some(w) = shared.claim(seq) {
                        let (tx, rx) = oneshot::channel();
                        shared.settle(Waiter { answer: tx, ..w }, seq);
                        if let Ok(r) = rx.await {
                            result = r;
                        }
                    }
                    result
                }
            };
            if let (Some((key, jobs)), Ok(first)) = (keep, &result) {
                if !first.repeated {
                    // The claim becomes the answer repeats get (if it has not lapsed).
                    let mut cmd = redis::cmd("SET");
                    cmd.arg(key)
                        .arg(idempotency::encode(first))
                        .arg("XX")
                        .arg("EX")
                        .arg(idempotency::WINDOW.as_secs());
                    let seq = shared.seq.fetch_add(1, Relaxed);
                    let _ = jobs.try_send(Job { seq, cmd });
                }
            }
            result
        }))
    }

    fn announce(&self, frame_text: &[u8]) {
        // Here at once; to the other nodes over the bus (an announcement keeps no order
        // with publications, and the store holds it for clients that connect later).
        let s = &self.shared;
        s.inlet.send_to_all(&Frame::text(frame_text));
        if !s.up() {
            s.metrics.degraded.fetch_add(1, Relaxed);
            return;
        }
        let seq = s.seq.fetch_add(1, Relaxed);
        let text = String::from_utf8_lossy(frame_text).into_owned();
        let mut cmd = redis::cmd(s.keys.publish_command());
        cmd.arg(&s.bus)
            .arg(envelope::encode(&Body::of_frame(&s.node, seq, text)));
        if self.jobs.try_send(Job { seq, cmd }).is_err() {
            s.metrics.degraded.fetch_add(1, Relaxed);
        }
    }

    fn disconnect(&self, order: Disconnect) -> Ordered {
        // Here at once; to the other nodes over the bus. During an outage only this
        // node's connections are closed (counted as degraded, and said in the answer).
        let s = &self.shared;
        let here = s.inlet.hub().disconnect(&order);
        let mut forwarded = false;
        if s.up() {
            let seq = s.seq.fetch_add(1, Relaxed);
            let mut cmd = redis::cmd(s.keys.publish_command());
            cmd.arg(&s.bus)
                .arg(envelope::encode(&Body::of_order(&s.node, seq, &order)));
            forwarded = self.jobs.try_send(Job { seq, cmd }).is_ok();
        }
        if !forwarded {
            s.metrics.degraded.fetch_add(1, Relaxed);
        }
        Ordered { here, forwarded }
    }

    fn revoke(&self, r: Revocation) -> Result<Ordered, NotKept> {
        // Here at once; into the shared hash for nodes that start later, and to the
        // other nodes over the bus. During an outage only this node keeps it (counted as
        // degraded, and said in the answer); the others read the hash when they are back,
        // so a revocation made here while Redis is away reaches them only if it is
        // given again.
        let s = &self.shared;
        let here = s.inlet.hub().revoke(&r)?;
        let mut forwarded = false;
        if s.up() {
            let now = crate::auth::jwt::now_unix();
            let store = revoke::store_cmd(s.keys.common(), &r, now);
            let seq = s.seq.fetch_add(1, Relaxed);
            let stored = self.jobs.try_send(Job { seq, cmd: store }).is_ok();
            let seq = s.seq.fetch_add(1, Relaxed);
            let mut cmd = redis::cmd(s.keys.publish_command());
            cmd.arg(&s.bus)
                .arg(envelope::encode(&Body::of_revocation(&s.node, seq, &r)));
            forwarded = stored && self.jobs.try_send(Job { seq, cmd }).is_ok();
        }
        if !forwarded {
            s.metrics.degraded.fetch_add(1, Relaxed);
        }
        Ok(Ordered { here, forwarded })
    }

    fn gather_connections(&self, search: &str, limit: usize) -> Option<Gathering> {
        let s = self.shared.clone();
        let jobs = self.jobs.clone();
        let cluster = self.cluster.clone();
        let commands = self.commands.clone();
        let search = search.to_owned();
        Some(Box::pin(async move {
            if !s.up() {
                return Err("the broker (Redis) is unreachable".to_owned());
            }
            let alive = cluster
                .totals()
                .await
                .map_err(|e| format!("the cluster view (Redis) is unreachable: {e}"))?
                .nodes;
            let seq = s.seq.fetch_add(1, Relaxed);
            let id = format!("{}-{seq}", s.node);
            let key = gather::reply_key(s.keys.common(), &id);
            let query = gather::Query {
                id,
                q: search,
                l: limit,
            };
            let mut cmd = redis::cmd(s.keys.publish_command());
            cmd.arg(&s.bus)
                .arg(envelope::encode(&Body::of_query(&s.node, seq, query)));
            if jobs.try_send(Job { seq, cmd }).is_err() {
                return Err("the broker's queue is full".to_owned());
            }
            let others = alive.saturating_sub(1);
            Ok(gather::collect(commands, key, others, limit).await)
        }))
    }

    fn follow(&self, channel: &str) -> Option<Ready> {
        let s = &self.shared;
        let connected = s.subscribed.load(Relaxed);
        let (join, ask) = s.following.follow(channel, connected, Instant::now());
        if ask {
            let _ = s.asks.send(Ask::Subscribe(vec![Arc::from(channel)]));
        }
        match join {
            Join::Now => None,
            Join::When(rx) => Some(Box::pin(async move {
                if tokio::time::timeout(FOLLOW_WAIT, rx).await.is_err() {
                    tracing::debug!(
                        "a channel was not followed in time; joining with what is here"
                    );
                }
            })),
        }
    }

    fn history(&self, channel: &str, from: u64, to: u64, epoch: Arc<str>) -> Option<Reading> {
        let (s, mut conn) = (self.shared.clone(), self.commands.clone());
        let channel = channel.to_owned();
        Some(Box::pin(async move {
            let span = gap::Span {
                channel: &channel,
                from,
                to,
                epoch: &epoch,
            };
            let read = gap::read(&s.inlet, &mut conn, &s.keys, span);
            match tokio::time::timeout(FOLLOW_WAIT, read).await {
                Ok(Ok(earlier)) => earlier,
                Ok(Err(e)) => {
                    tracing::debug!(channel, "could not read the shared history: {e}");
                    Vec::new()
                }
                Err(_) => Vec::new(),
            }
        }))
    }

    fn following(&self) -> usize {
        self.shared.following.len()
    }

    fn health(&self) -> Health {
        let s = &self.shared;
        if !s.subscribed.load(Relaxed) {
            Health::Degraded("redis pub/sub is not subscribed")
        } else if !s.answering.load(Relaxed) {
            Health::Degraded("redis does not answer")
        } else {
            Health::Up
        }
    }

    fn hub(&self) -> &Arc<Hub> {
        self.shared.inlet.hub()
    }

    fn cluster(&self) -> Option<&Arc<ClusterView>> {
        Some(&self.cluster)
    }
}

/// Sends queued commands, whatever is waiting as one pipeline, in order.
async fn send_loop(
    s: Arc<Shared>,
    mut conn: Conn,
    mut jobs: mpsc::Receiver<Job>,
    stop: CancellationToken,
) {
    let mut batch: Vec<Job> = Vec::with_capacity(BATCH);
    loop {
        let first = tokio::select! {
            _ = stop.cancelled() => break,
            job = jobs.recv() => match job { Some(j) => j, None => break },
        };
        batch.push(first);
        while batch.len() < BATCH {
            match jobs.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let results = match s.keys.cluster() {
            false => send_jobs(&mut conn, &batch.iter().collect::<Vec<_>>(), false).await,
            true => Ok(send_by_slot(&conn, &batch).await),
        };
        match results {
            Ok(results) => {
                for (job, result) in batch.drain(..).zip(results) {
                    answered(&s, job.seq, result);
                }
            }
            Err(e) => {
                s.answering.store(false, Relaxed);
                s.outage(&e.to_string());
                for job in batch.drain(..) {
                    if let Some(w) = s.claim(job.seq) {
                        s.settle(w, job.seq);
                    }
                }
            }
        }
    }
    // Whatever is still waiting gets its answer from here.
    let left: Vec<(u64, Waiter)> = s
        .waiters
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .drain()
        .collect();
    for (seq, w) in left {
        s.settle(w, seq);
    }
}

/// The slot a command goes to on a cluster: its first key's (a script's first key; the
/// channel of a `SPUBLISH`). None for a command without one.
fn slot_of(cmd: &redis::Cmd) -> Option<Slot> {
    let mut args = cmd.args_iter().filter_map(|a| match a {
        redis::Arg::Simple(b) => Some(b),
        _ => None,
    });
    let name = args.next()?.to_ascii_uppercase();
    let key = match name.as_slice() {
        b"EVAL" | b"EVALSHA" => {
            let _script = args.next()?;
            if args.next()? == b"0" {
                return None;
            }
            args.next()?
        }
        _ => args.next()?,
    };
    Some(Slot::for_key(key))
}

/// Sends `batch` to a cluster: one pipeline per slot (a cluster pipeline cannot span
/// slots), all slots at once. Each slot keeps its order — a channel is one slot, and
/// so is the bus — and a shard that does not answer (a failover) fails only its own.
async fn send_by_slot(conn: &Conn, batch: &[Job]) -> Vec<RedisResult<Value>> {
    let mut groups: Vec<(Option<Slot>, Vec<&Job>, Vec<usize>)> = Vec::new();
    for (i, job) in batch.iter().enumerate() {
        let slot = slot_of(&job.cmd);
        match groups.iter_mut().find(|(s, _, _)| *s == slot) {
            Some((_, jobs, at)) => {
                jobs.push(job);
                at.push(i);
            }
            None => groups.push((slot, vec![job], vec![i])),
        }
    }
    let sent = futures_util::future::join_all(groups.iter().map(|(_, jobs, _)| {
        let mut conn = conn.clone();
        async move { send_jobs(&mut conn, jobs, true).await }
    }))
    .await;
    let mut results: Vec<Option<RedisResult<Value>>> = batch.iter().map(|_| None).collect();
    for ((_, _, at), answers) in groups.iter().zip(sent) {
        match answers {
            Ok(answers) => {
                for (i, answer) in at.iter().zip(answers) {
                    if let Some(slot) = results.get_mut(*i) {
                        *slot = Some(answer);
                    }
                }
            }
            Err(e) => {
                for i in at {
                    if let Some(slot) = results.get_mut(*i) {
                        *slot = Some(Err(redis::RedisError::from((
                            redis::ErrorKind::Io,
                            "the shard did not answer",
                            e.to_string(),
                        ))));
                    }
                }
            }
        }
    }
    results
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|| Err(redis::RedisError::from((redis::ErrorKind::Io, "no answer"))))
        })
        .collect()
}

/// Sends `batch` as one pipeline. If Redis did not know the publish script (it restarted,
/// or was flushed), none of those commands ran: the script is loaded and they are sent
/// again, in the same order, before anything newer.
async fn send_jobs(
    conn: &mut Conn,
    batch: &[&Job],
    cluster: bool,
) -> RedisResult<Vec<RedisResult<Value>>> {
    let pipeline = |jobs: &mut dyn Iterator<Item = &&Job>| {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for job in jobs {
            pipe.add_command(job.cmd.clone());
        }
        pipe
    };
    let mut results: Vec<RedisResult<Value>> =
        pipeline(&mut batch.iter()).query_async(conn).await?;
    let unknown = |r: &RedisResult<Value>| {
        r.as_ref()
            .is_err_and(|e| e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript))
    };
    if results.iter().any(unknown) {
        let _: String = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(script(cluster))
            .query_async(conn)
            .await?;
        let again: Vec<usize> = (0..results.len())
            .filter(|i| results.get(*i).is_some_and(unknown))
            .collect();
        let mut jobs = again.iter().filter_map(|i| batch.get(*i));
        let answers: Vec<RedisResult<Value>> = pipeline(&mut jobs).query_async(conn).await?;
        for (i, answer) in again.into_iter().zip(answers) {
            if let Some(slot) = results.get_mut(i) {
                *slot = answer;
            }
        }
    }
    Ok(results)
}

/// Redis answered one command: note the assigned position, or settle a failure.
fn answered(s: &Shared, seq: u64, result: RedisResult<Value>) {
    if let Some(seen) = repeat_of(&result) {
        // An idempotency key seen before: nothing was published; the first answer (or,
        // while it is unanswered, a conflict) is this one's.
        if let Some(w) = s.claim(seq) {
            let answer = seen.ok_or(Denied::InProgress);
            let _ = w.answer.send(answer);
        }
        return;
    }
    let position = match result {
        Ok(Value::Array(items)) => match items.as_slice() {
            [Value::Int(offset), epoch] => {
                let epoch: Option<String> = redis::from_redis_value(epoch.clone()).ok();
                epoch.and_then(|e| Some((u64::try_from(*offset).ok()?, Arc::from(e))))
            }
            _ => None,
        },
        Ok(_) => None, // PUBLISH
        Err(e) => {
            tracing::warn!("broker: a publication failed in Redis: {e}");
            if let Some(w) = s.claim(seq) {
                s.settle(w, seq);
            }
            return;
        }
    };
    let mut waiters = s.waiters.lock().unwrap_or_else(|p| p.into_inner());
    let Some(w) = waiters.get_mut(&seq) else {
        return;
    };
    if w.echo {
        // The echo does the rest.
        w.position = position;
        return;
    }
    w.position = position;
    let Some(w) = waiters.remove(&seq) else {
        return;
    };
    drop(waiters);
    let local = match &w.publication.target {
        Target::Channel(name) => s.inlet.hub().registry.channels.subscriber_count(name),
        _ => 0,
    };
    if local > 0 {
        // Joined before the channel was followed (Redis was slow): served from here.
        s.settle(w, seq);
    } else {
        // Not followed here: nothing local to reach; Redis has it, that is the answer.
        let position = w.position;
        let _ = w.answer.send(Ok(Delivered {
            queued: 0,
            position,
            repeated: false,
        }));
    }
}

/// A script's `{'seen', v}`: the publication repeats an idempotency key; `v` decoded as
/// the first answer, None while that is still unanswered.
fn repeat_of(result: &RedisResult<Value>) -> Option<Option<Delivered>> {
    let Ok(Value::Array(items)) = result else {
        return None;
    };
    let [Value::BulkString(tag), seen] = items.as_slice() else {
        return None;
    };
    if tag.as_slice() != b"seen" {
        return None;
    }
    let text: Option<String> = redis::from_redis_value(seen.clone()).ok();
    Some(text.as_deref().and_then(idempotency::decode))
}

/// Subscribes the bus (retrying until Redis is there) and delivers what arrives.
async fn receive_loop(
    s: Arc<Shared>,
    mut pubsub: PubSub,
    mut commands: Conn,
    mut pushes: mpsc::UnboundedReceiver<PushInfo>,
    stop: CancellationToken,
) {
    let mut delay = Duration::from_millis(100);
    let mut lost = false;
    loop {
        let subscribed = tokio::select! {
            _ = stop.cancelled() => return,
            r = pubsub.follow(std::slice::from_ref(&s.bus)) => r,
        };
        match subscribed {
            Ok(()) => break,
            Err(e) => {
                s.outage(&e.to_string());
                lost = true;
                let jitter = Duration::from_millis(rand::random::<u64>() % 100);
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(delay + jitter) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
    loop {
        let push = tokio::select! {
            _ = stop.cancelled() => return,
            p = pushes.recv() => match p { Some(p) => p, None => return },
        };
        match push.kind {
            PushKind::Message | PushKind::SMessage => match push.data.as_slice() {
                [Value::BulkString(topic), Value::BulkString(payload)] => {
                    receive(&s, &mut commands, topic, payload).await;
                }
                _ => {
                    s.metrics.broker_malformed.fetch_add(1, Relaxed);
                }
            },
            PushKind::Subscribe | PushKind::SSubscribe => {
                let topic = match push.data.first() {
                    Some(Value::BulkString(t)) => t.as_slice(),
                    _ => &[],
                };
                if topic == s.bus.as_bytes() {
                    s.subscribed.store(true, Relaxed);
                    s.recovered();
                    // Revocations given while this node was away (or before it started).
                    let (hub, mut conn) = (s.inlet.hub().clone(), commands.clone());
                    let prefix = s.keys.common().to_owned();
                    tokio::spawn(async move {
                        if let Err(e) = revoke::load(&hub, &mut conn, &prefix).await {
                            tracing::warn!("broker: could not read the revocations: {e}");
                        }
                    });
                    if std::mem::take(&mut lost) {
                        (s.on_link)(true);
                    }
                } else if let Some(name) = s.keys.channel_of(topic) {
                    primed(&s, &mut commands, name).await;
                }
            }
            PushKind::Disconnection => {
                if !std::mem::replace(&mut lost, true) {
                    (s.on_link)(false);
                }
                s.subscribed.store(false, Relaxed);
                s.following.lost_all();
                s.outage("the pub/sub connection was lost");
                relink(&s, pubsub.clone(), stop.clone());
            }
            PushKind::SUnsubscribe => {
                // Not asked for (a slot moved to another shard, DESIGN §13): the channel
                // is followed again from its new owner and primed, the bus at once.
                let topic = match push.data.first() {
                    Some(Value::BulkString(t)) => t.as_slice(),
                    _ => &[],
                };
                if topic == s.bus.as_bytes() {
                    s.subscribed.store(false, Relaxed);
                    relink(&s, pubsub.clone(), stop.clone());
                } else if let Some(name) = s.keys.channel_of(topic) {
                    s.following.lost(name);
                }
            }
            _ => {}
        }
    }
}

/// `channel`'s subscription is live: bring the node's copy up to the shared history,
/// then let its waiting subscribers join. A channel without history has nothing to
/// catch up with; if it was followed when the connection dropped, its subscribers may
/// have missed publications that nothing can replay, and are closed with 4003 (resync).
async fn primed(s: &Shared, commands: &mut Conn, channel: &str) {
    if !s.following.is_followed(channel) {
        return; // a late confirmation for a channel dropped since
    }
    let history = s
        .inlet
        .hub()
        .namespaces()
        .resolve(channel)
        .is_ok_and(|ns| ns.config.has_history());
    if history {
        if let Err(e) = gap::prime(&s.inlet, commands, &s.keys, channel, META_TTL_S).await {
            // Its subscribers join with what is here; the next publication's offset
            // shows any gap, which is filled then.
            tracing::warn!(channel, "could not catch up with the shared history: {e}");
        }
    }
    if s.following.primed(channel) == Some(true) && !history {
        s.inlet.resync(channel);
    }
}

/// Sends the SUBSCRIBE / UNSUBSCRIBE commands the followed channels need, on the
/// pub/sub connection, and runs the upkeep that drops idle channels and asks again
/// for unanswered ones.
async fn subscribe_loop(
    s: Arc<Shared>,
    mut pubsub: PubSub,
    mut asks: mpsc::UnboundedReceiver<Ask>,
    stop: CancellationToken,
) {
    let mut upkeep = tokio::time::interval(UPKEEP_EVERY);
    upkeep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut batch = tokio::select! {
            _ = stop.cancelled() => return,
            ask = asks.recv() => match ask { Some(a) => vec![a], None => return },
            _ = upkeep.tick() => {
                let channels = &s.inlet.hub().registry.channels;
                s.following.upkeep(s.subscribed.load(Relaxed), Instant::now(), |name| {
                    channels.subscriber_count(name)
                })
            }
        };
        while let Ok(a) = asks.try_recv() {
            batch.push(a);
        }
        let (mut sub, mut unsub) = (Vec::new(), Vec::new());
        for ask in batch {
            match ask {
                Ask::Subscribe(names) => sub.extend(names),
                Ask::Unsubscribe(names) => unsub.extend(names),
            }
        }
        // Unsubscribes first: a channel dropped and followed again within one batch
        // ends subscribed.
        let topics =
            |names: &[Arc<str>]| -> Vec<String> { names.iter().map(|n| s.keys.topic(n)).collect() };
        for (what, names) in [("UNSUBSCRIBE", &unsub), ("SUBSCRIBE", &sub)] {
            if names.is_empty() {
                continue;
            }
            let result = tokio::select! {
                _ = stop.cancelled() => return,
                r = async {
                    if what == "SUBSCRIBE" {
                        pubsub.follow(&topics(names)).await
                    } else {
                        pubsub.unfollow(&topics(names)).await
                    }
                } => r,
            };
            if let Err(e) = result {
                // Asked again by the upkeep once the connection is back.
                tracing::debug!("broker: {what} of {} channels failed: {e}", names.len());
            }
        }
    }
}

/// Brings the pub/sub side back after a lost connection. One Redis: drives the manager
/// back to a connection (it only reconnects when used, and gives up a round after a few
/// attempts, while nothing else would use it); once a PING answers, it has reconnected
/// and resubscribed by itself. A cluster: the client neither refreshes its slot map nor
/// resubscribes reliably after a master fails over (docs/redis-cluster-findings.md), so
/// the bus is subscribed again explicitly until its confirmation arrives; the channels
/// follow through the upkeep, each primed from its history.
fn relink(s: &Arc<Shared>, pubsub: PubSub, stop: CancellationToken) {
    match pubsub {
        PubSub::One(c) => reconnect(c, stop),
        PubSub::Cluster(c) => resubscribe_bus(s.clone(), PubSub::Cluster(c), stop),
    }
}

/// Drives a pub/sub manager back to a connection (see [`relink`]).
pub fn reconnect(mut conn: ConnectionManager, stop: CancellationToken) {
    tokio::spawn(async move {
        let ping = redis::cmd("PING");
        loop {
            let answered = tokio::select! {
                _ = stop.cancelled() => return,
                r = ping.query_async::<Value>(&mut conn) => r.is_ok(),
            };
            if answered {
                return;
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(PROBE_EVERY) => {}
            }
        }
    });
}

/// How often a cluster's bus is subscribed again while unconfirmed.
const RESUBSCRIBE_EVERY: Duration = Duration::from_millis(250);

/// Subscribes the bus on a cluster again every [`RESUBSCRIBE_EVERY`] until it is
/// confirmed (`SSUBSCRIBE` is idempotent on the server; a duplicate confirmation is
/// harmless). One at a time: a second loss while one runs is covered by it.
fn resubscribe_bus(s: Arc<Shared>, mut pubsub: PubSub, stop: CancellationToken) {
    if s.resubscribing.swap(true, Relaxed) {
        return;
    }
    tokio::spawn(async move {
        while !s.subscribed.load(Relaxed) && !stop.is_cancelled() {
            let bus = std::slice::from_ref(&s.bus);
            let _ = tokio::time::timeout(RESUBSCRIBE_EVERY * 4, pubsub.follow(bus)).await;
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(RESUBSCRIBE_EVERY) => {}
            }
        }
        s.resubscribing.store(false, Relaxed);
    });
}

/// One message from the bus: this node's own echo settles its waiter; any other is
/// delivered to local connections. A message that does not parse is counted, dropped.
async fn receive(s: &Shared, commands: &mut Conn, topic: &[u8], payload: &[u8]) {
    let env = match envelope::decode(payload) {
        Ok(env) => env,
        Err(e) => {
            s.metrics.broker_malformed.fetch_add(1, Relaxed);
            tracing::debug!("broker: dropped a malformed message: {e}");
            return;
        }
    };
    // A channel's pub/sub channel carries that channel's publications only.
    let fits = match s.keys.channel_of(topic) {
        Some(name) => env.body.t.as_deref() == Some("c") && env.body.id.as_deref() == Some(name),
        None => env.body.t.as_deref() != Some("c"),
    };
    if !fits {
        s.metrics.broker_malformed.fetch_add(1, Relaxed);
        tracing::debug!("broker: dropped a message on the wrong pub/sub channel");
        return;
    }
    if let Some(query) = env.body.lq {
        // Answered off the receive task: listing many connections must not hold up
        // the deliveries behind it. The answer is bounded in time (`gather::answer`).
        if env.body.n != s.node {
            let hub = s.inlet.hub().clone();
            tokio::spawn(gather::answer(
                hub,
                commands.clone(),
                s.keys.common().to_owned(),
                query,
            ));
        }
        return;
    }
    if let Some(order) = env.body.rv {
        // Ours was kept here when it was given.
        if env.body.n != s.node {
            match order.into_revocation() {
                Some(r) => {
                    if let Err(e) = s.inlet.hub().revoke(&r) {
                        tracing::warn!("broker: a revocation was not kept: {e}");
                    }
                }
                None => {
                    s.metrics.broker_malformed.fetch_add(1, Relaxed);
                    tracing::debug!("broker: dropped a malformed revocation");
                }
            }
        }
        return;
    }
    if let Some(order) = env.body.x {
        // Ours was carried out here when it was given.
        if env.body.n != s.node {
            match order.into_disconnect() {
                Ok(d) => {
                    s.inlet.hub().disconnect(&d);
                }
                Err(e) => {
                    s.metrics.broker_malformed.fetch_add(1, Relaxed);
                    tracing::debug!("broker: dropped a malformed order: {e}");
                }
            }
        }
        return;
    }
    if let (Some((offset, epoch)), Some("c"), Some(name)) =
        (&env.position, env.body.t.as_deref(), env.body.id.as_deref())
    {
        // Offsets between what we hold and this one were missed: fetch them first.
        let channels = &s.inlet.hub().registry.channels;
        if let Some((top, held)) = channels.top(name) {
            if held == *epoch && *offset > top + 1 {
                let span = gap::Span {
                    channel: name,
                    from: top + 1,
                    to: offset - 1,
                    epoch,
                };
                let filled = gap::fill(&s.inlet, commands, &s.keys, span).await;
                if let Err(e) = filled {
                    tracing::warn!(channel = %name, "could not fill a gap: {e}");
                }
            }
        }
    }
    let position = env.position.as_ref().map(|(o, e)| (*o, e));
    if env.body.n == s.node {
        // Ours: deliver the original (it keeps its creator and accept time), once. Our
        // announcements were delivered here when they were made.
        if let Some(w) = s.claim(env.body.s) {
            let result = s.inlet.deliver(&w.publication, position);
            let _ = w.answer.send(result);
            return;
        }
        // Already answered: settled here (its offset, or the settled list, keeps it
        // from being delivered twice), or answered by Redis on a channel this node
        // started following since, whose new subscribers should have it.
        if env.body.f.is_some() || (position.is_none() && s.was_settled(env.body.s)) {
            return;
        }
    }
    if let Some(text) = &env.body.f {
        (s.on_announcement)();
        s.inlet.send_to_all(&Frame::text(text.as_bytes()));
        return;
    }
    match env.body.into_publication() {
        Ok(Some(p)) => {
            let _ = s.inlet.deliver(&p, position);
        }
        Ok(None) => {}
        Err(e) => {
            s.metrics.broker_malformed.fetch_add(1, Relaxed);
            tracing::debug!("broker: dropped a malformed message: {e}");
        }
    }
}

/// Whether Redis answers a PING. On a cluster, the shard of the bus and the cluster
/// view is asked (a plain PING would go to every master and fail while any one of them
/// fails over, though the others serve their channels).
async fn probe(s: &Shared, conn: &mut Conn, ping: &redis::Cmd) -> bool {
    use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
    match conn {
        Conn::One(c) => ping.query_async::<String>(c).await.is_ok(),
        Conn::Cluster(c) => {
            let at = Route::with_key(s.bus.as_bytes(), SlotAddr::Master);
            let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(at));
            c.route_command(ping.clone(), routing).await.is_ok()
        }
    }
}

/// Marks Redis answering or not, every `PROBE_EVERY` (a frozen Redis times out).
async fn probe_loop(s: Arc<Shared>, mut conn: Conn, stop: CancellationToken) {
    let ping = redis::cmd("PING");
    loop {
        let ok = tokio::select! {
            _ = stop.cancelled() => return,
            r = probe(&s, &mut conn, &ping) => r,
        };
        s.answering.store(ok, Relaxed);
        if ok {
            s.recovered();
        } else {
            s.outage("PING failed");
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(PROBE_EVERY) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::validate_url;

    #[test]
    fn broker_urls_are_checked_without_connecting() {
        for ok in [
            "redis://127.0.0.1:6379",
            "redis://:secret@10.0.0.5:6380/2",
            "rediss://cache.example.com:6380",
        ] {
            assert_eq!(validate_url(ok), Ok(()), "{ok}");
        }
        for bad in [
            "nats://x:4222",
            "redis//nohost",
            "http://x",
            "redis://h:notaport",
        ] {
            assert!(validate_url(bad).is_err(), "{bad}");
        }
    }
}
