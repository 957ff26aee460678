//! The Redis broker (DESIGN §9): one pub/sub connection and one command connection per
//! node, both `ConnectionManager`s (they reconnect with capped, jittered exponential
//! backoff, and the pub/sub one resubscribes by itself).
//!
//! Every publication goes to Redis and comes back to every node on one bus channel,
//! this one included, so all nodes see the same order. A publication on a channel with
//! history runs one script that assigns its offset, appends it to the channel's capped
//! stream and publishes it (`publish.lua`); others are a plain `PUBLISH`. Commands from
//! all publishers of the node are queued to one task that sends whatever is waiting as
//! one pipeline. The origin answers its caller when its own echo has been delivered
//! locally, so "accepted" still means "queued to this node's subscribers".
//!
//! While Redis cannot be reached, a publication without history is delivered to this
//! node's clients and counted as degraded; one with history is refused (503): it could
//! not be made durable, and is never accepted and lost.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{PushInfo, PushKind, RedisResult, Value};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::cluster::{self, ClusterView};
use super::envelope::{self, Body};
use super::gap;
use super::{Broker, Health, Submitted};
use crate::hub::fanout::conn_device;
use crate::hub::namespace::Denied;
use crate::hub::{Delivered, Hub, Inlet, Publication, Target};
use crate::metrics::Metrics;
use crate::ws::frame::Frame;

const SCRIPT: &str = include_str!("publish.lua");
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
    answer: oneshot::Sender<Result<Delivered, Denied>>,
}

/// Called when another node's announcement event arrives (the store forgets its cache).
pub type OnAnnouncement = Box<dyn Fn() + Send + Sync>;

struct Shared {
    inlet: Inlet,
    on_announcement: OnAnnouncement,
    metrics: Arc<Metrics>,
    node: String,
    bus: String,
    prefix: String,
    seq: AtomicU64,
    waiters: Mutex<HashMap<u64, Waiter>>,
    /// Pub/sub subscribed and the command connection answering.
    subscribed: AtomicBool,
    answering: AtomicBool,
    /// An outage is logged and counted once, when it starts.
    down_since_logged: AtomicBool,
}

pub struct RedisBroker {
    shared: Arc<Shared>,
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
    if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
        return Err(format!(
            "`{url}` is not memory://, redis://host:port[/db] or rediss://…"
        ));
    }
    client(url).map(drop).map_err(|e| format!("`{url}`: {e}"))
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
    pub fn start(
        url: &str,
        prefix: &str,
        inlet: Inlet,
        metrics: Arc<Metrics>,
        on_announcement: OnAnnouncement,
        stop: CancellationToken,
    ) -> anyhow::Result<(Arc<RedisBroker>, Vec<tokio::task::JoinHandle<()>>)> {
        let (push_tx, push_rx) = mpsc::unbounded_channel::<PushInfo>();
        let commands = ConnectionManager::new_lazy_with_config(client(url)?, manager_config())?;
        let pubsub = ConnectionManager::new_lazy_with_config(
            client(url)?,
            manager_config()
                .set_push_sender(push_tx)
                .set_automatic_resubscription(),
        )?;
        let (jobs, jobs_rx) = mpsc::channel(QUEUE);
        let shared = Arc::new(Shared {
            node: inlet.hub().node_tag().to_owned(),
            inlet,
            on_announcement,
            metrics,
            bus: format!("{prefix}:bus"),
            prefix: prefix.to_owned(),
            seq: AtomicU64::new(1),
            waiters: Mutex::new(HashMap::new()),
            subscribed: AtomicBool::new(false),
            answering: AtomicBool::new(false),
            down_since_logged: AtomicBool::new(false),
        });
        let view = Arc::new(ClusterView::new(commands.clone(), prefix, &shared.node));
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
            tokio::spawn(receive_loop(
                shared.clone(),
                pubsub,
                commands.clone(),
                push_rx,
                stop.clone(),
            )),
            tokio::spawn(probe_loop(shared.clone(), commands, stop)),
        ];
        let broker = RedisBroker {
            shared,
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
    fn settle(&self, w: Waiter) {
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
            p.exclude.conn_device = hub.local_conn(id).as_deref().and_then(conn_device);
        }
        if !s.up() {
            return Submitted::Done(s.local_only(&p, history.is_some()));
        }
        let seq = s.seq.fetch_add(1, Relaxed);
        let body = Body::of_publication(&s.node, seq, &p);
        let cmd = match (&p.target, history) {
            (Target::Channel(name), Some((size, ttl_s))) => {
                let mut cmd = redis::cmd("EVAL");
                cmd.arg(SCRIPT)
                    .arg(2)
                    .arg(format!("{}:meta:{name}", s.prefix))
                    .arg(format!("{}:hist:{name}", s.prefix))
                    .arg(&s.bus)
                    .arg(envelope::encode_body(&body))
                    .arg(size)
                    .arg(ttl_s)
                    .arg(format!("{:016x}", rand::random::<u64>()))
                    .arg(META_TTL_S.max(ttl_s));
                cmd
            }
            _ => {
                let mut cmd = redis::cmd("PUBLISH");
                cmd.arg(&s.bus).arg(envelope::encode(&body));
                cmd
            }
        };
        let (answer, rx) = oneshot::channel();
        let waiter = Waiter {
            publication: p,
            position: None,
            history: history.is_some(),
            answer,
        };
        s.waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(seq, waiter);
        if self.jobs.try_send(Job { seq, cmd }).is_err() {
            s.outage("the publish queue is full");
            if let Some(w) = s.claim(seq) {
                s.settle(w);
            }
        }
        let shared = self.shared.clone();
        Submitted::Pending(Box::pin(async move {
            match tokio::time::timeout(ECHO_WAIT, rx).await {
                Ok(Ok(result)) => result,
                _ => {
                    // Neither the echo nor a failure came in time.
                    if let Some(w) = shared.claim(seq) {
                        let (tx, rx) = oneshot::channel();
                        shared.settle(Waiter { answer: tx, ..w });
                        if let Ok(result) = rx.await {
                            return result;
                        }
                    }
                    Err(Denied::Unavailable("the broker did not answer in time"))
                }
            }
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
        let mut cmd = redis::cmd("PUBLISH");
        cmd.arg(&s.bus)
            .arg(envelope::encode(&Body::of_frame(&s.node, seq, text)));
        if self.jobs.try_send(Job { seq, cmd }).is_err() {
            s.metrics.degraded.fetch_add(1, Relaxed);
        }
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
    mut conn: ConnectionManager,
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
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for job in &batch {
            pipe.add_command(job.cmd.clone());
        }
        let results: RedisResult<Vec<RedisResult<Value>>> = pipe.query_async(&mut conn).await;
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
                        s.settle(w);
                    }
                }
            }
        }
    }
    // Whatever is still waiting gets its answer from here.
    let left: Vec<Waiter> = s
        .waiters
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .drain()
        .map(|(_, w)| w)
        .collect();
    for w in left {
        s.settle(w);
    }
}

/// Redis answered one command: note the assigned position, or settle a failure.
fn answered(s: &Shared, seq: u64, result: RedisResult<Value>) {
    let position = match result {
        Ok(Value::Array(items)) => match items.as_slice() {
            [Value::Int(offset), epoch] => {
                let epoch: Option<String> = redis::from_redis_value(epoch.clone()).ok();
                epoch.and_then(|e| Some((u64::try_from(*offset).ok()?, Arc::from(e))))
            }
            _ => None,
        },
        Ok(_) => return, // PUBLISH: the echo does the rest
        Err(e) => {
            tracing::warn!("broker: a publication failed in Redis: {e}");
            if let Some(w) = s.claim(seq) {
                s.settle(w);
            }
            return;
        }
    };
    let mut waiters = s.waiters.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(w) = waiters.get_mut(&seq) {
        w.position = position;
    }
}

/// Subscribes the bus (retrying until Redis is there) and delivers what arrives.
async fn receive_loop(
    s: Arc<Shared>,
    mut pubsub: ConnectionManager,
    mut commands: ConnectionManager,
    mut pushes: mpsc::UnboundedReceiver<PushInfo>,
    stop: CancellationToken,
) {
    let mut was_lost = false;
    let mut delay = Duration::from_millis(100);
    loop {
        let subscribed = tokio::select! {
            _ = stop.cancelled() => return,
            r = pubsub.subscribe(&s.bus) => r,
        };
        match subscribed {
            Ok(()) => break,
            Err(e) => {
                s.outage(&e.to_string());
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
            PushKind::Message => {
                if let [_channel, Value::BulkString(payload)] = push.data.as_slice() {
                    receive(&s, &mut commands, payload).await;
                } else {
                    s.metrics.broker_malformed.fetch_add(1, Relaxed);
                }
            }
            PushKind::Subscribe => {
                s.subscribed.store(true, Relaxed);
                s.recovered();
                if std::mem::take(&mut was_lost) {
                    // What was published while we were away is in the shared history.
                    gap::catch_up(&s.inlet, &mut commands, &s.prefix).await;
                }
            }
            PushKind::Disconnection => {
                was_lost = true;
                s.subscribed.store(false, Relaxed);
                s.outage("the pub/sub connection was lost");
                reconnect(pubsub.clone(), stop.clone());
            }
            _ => {}
        }
    }
}

/// Drives a pub/sub manager back to a connection: it only reconnects when used, and
/// gives up a round after a few attempts, while nothing else would use it. Once a PING
/// answers, the manager has reconnected and resubscribed by itself.
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

/// One message from the bus: this node's own echo settles its waiter; any other is
/// delivered to local connections. A message that does not parse is counted, dropped.
async fn receive(s: &Shared, commands: &mut ConnectionManager, payload: &[u8]) {
    let env = match envelope::decode(payload) {
        Ok(env) => env,
        Err(e) => {
            s.metrics.broker_malformed.fetch_add(1, Relaxed);
            tracing::debug!("broker: dropped a malformed message: {e}");
            return;
        }
    };
    if let (Some((offset, epoch)), Some("c"), Some(name)) =
        (&env.position, env.body.t.as_deref(), env.body.id.as_deref())
    {
        // Offsets between what we hold and this one were missed: fetch them first.
        let channels = &s.inlet.hub().registry.channels;
        if let Some((top, held)) = channels.top(name) {
            if held == *epoch && *offset > top + 1 {
                let filled = gap::fill(
                    &s.inlet,
                    commands,
                    &s.prefix,
                    name,
                    top + 1,
                    offset - 1,
                    epoch,
                )
                .await;
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
        }
        return;
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

/// Marks Redis answering or not, every `PROBE_EVERY` (a frozen Redis times out).
async fn probe_loop(s: Arc<Shared>, mut conn: ConnectionManager, stop: CancellationToken) {
    let ping = redis::cmd("PING");
    loop {
        let ok = tokio::select! {
            _ = stop.cancelled() => return,
            r = ping.query_async::<String>(&mut conn) => r.is_ok(),
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
