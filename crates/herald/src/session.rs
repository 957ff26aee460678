//! What a hub connection does with the client's messages (DESIGN §3): pings, channel
//! subscriptions, token refresh. Every refusal is an `error` frame and the connection
//! carries on; only a persistent flood closes it (1008).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;

use crate::auth::jwt::Verifier;
use crate::auth::{Identity, TokenStamp};
use crate::broker::{Broker, Reading, Ready, Submitted};
use crate::config::NamespaceConfig;
use crate::connection::driver::{Admit, Flow, Handler};
use crate::connection::rate::{InboundLimiter, Verdict};
use crate::hub::channels::Earlier;
use crate::hub::namespace::Denied;
use crate::hub::request::{client_publication_of, BACKEND_ONLY};
use crate::hub::{ConnHandle, Hub, Publication};
use crate::metrics::{Refusal, Source};
use crate::outbox::{Outbox, Push};
use crate::protocol::channel::validate_channel;
use crate::protocol::client::{self, ClientMessage, Inbound, Since};
use crate::protocol::codes::{CloseCode, ErrorCode};
use crate::protocol::publish::PublishFrame;
use crate::protocol::server;
use crate::store::{active_for, Store, StoreError};
use crate::ws::frame::Frame;

pub struct SessionLimits {
    pub rate_per_s: u32,
    pub rate_burst: u32,
    pub close_after: Duration,
    pub max_subscriptions: u32,
    /// Publications submitted and not yet answered, at most (`ws.max_in_flight`).
    pub max_in_flight: u32,
}

/// Who is on the other end, as far as publishing goes (DESIGN §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Publishes to the channels its rights allow, never echoed to itself, within the
    /// inbound rate limit. An admin token makes it a [`Role::Publisher`] instead.
    Client,
    /// An admin token: a `publish` frame is what `POST /api/publish` takes — any target,
    /// exclusions, no namespace publish rule — still within the inbound rate limit.
    Publisher,
    /// An API key on the upgrade: a publisher without the inbound rate limit.
    Backend,
}

impl Role {
    pub fn of(identity: &Identity) -> Role {
        match (identity.backend, identity.admin) {
            (true, _) => Role::Backend,
            (false, true) => Role::Publisher,
            (false, false) => Role::Client,
        }
    }
}

/// A connection's work in flight, counted where its answers are sent.
#[derive(Default)]
pub struct Waiting {
    /// Publications handed to the later-task and not answered yet.
    publications: AtomicUsize,
    /// An announcement lookup or acknowledgement is in flight (at most one at a time).
    store: AtomicBool,
}

pub struct Session {
    /// The hub is the broker's (`Broker::hub`): not kept twice in every connection.
    broker: Arc<dyn Broker>,
    /// Work whose answer comes later — publications waiting for the broker, subscribes
    /// waiting for their channel to be followed — answered in order by one task
    /// (started on the first such; an idle connection holds nothing for it).
    later: Option<tokio::sync::mpsc::UnboundedSender<Later>>,
    store: Arc<dyn Store>,
    conn: Arc<ConnHandle>,
    /// What this connection may do now, once a `refresh` replaced the first token's
    /// rights (`conn.identity`): most connections never refresh and keep no copy.
    refreshed: Option<Box<Identity>>,
    verifier: Option<Arc<Verifier>>,
    role: Role,
    limiter: InboundLimiter,
    max_subscriptions: u32,
    max_in_flight: u32,
    /// What is waiting for an answer, shared with the tasks that answer.
    waiting: Arc<Waiting>,
}

impl Session {
    pub fn new(
        broker: Arc<dyn Broker>,
        store: Arc<dyn Store>,
        conn: Arc<ConnHandle>,
        verifier: Option<Arc<Verifier>>,
        limits: &SessionLimits,
    ) -> Session {
        Session {
            broker,
            later: None,
            store,
            refreshed: None,
            role: Role::of(&conn.identity),
            conn,
            verifier,
            limiter: InboundLimiter::new(limits.rate_per_s, limits.rate_burst, limits.close_after),
            max_subscriptions: limits.max_subscriptions,
            max_in_flight: limits.max_in_flight,
            waiting: Arc::default(),
        }
    }

    /// The connection this session speaks for.
    pub fn conn(&self) -> &Arc<ConnHandle> {
        &self.conn
    }

    /// A subscription the transport asked for on the client's behalf (`/sse?channels=`),
    /// exactly as if the client had sent `subscribe` with `since`.
    pub fn subscribe_for_client(&mut self, channel: String, since: Option<&Since>) {
        // Its refusal names the channel: the client sent no `ref` to match it by.
        let about = channel.clone();
        if let Err((code, why)) = self.try_subscribe(channel, since, None) {
            self.reply(server::error_frame_about(code, &why, None, Some(&about)));
        }
    }

    /// Server-side subscriptions (DESIGN §13), right after `connected`: the configured
    /// `ws.subscribe_on_connect` (`{user}` is the user id), then the token's `channels`
    /// claim, each once. Each is a `subscribe` as the client would send it — the same
    /// namespace rules, the same `subscribed` answer — and one the rules refuse is an
    /// `error` naming it; the others go ahead. A backend is nobody's audience: none.
    pub fn subscribe_on_connect(&mut self, configured: &[String], claimed: Vec<String>) {
        if self.role == Role::Backend || (configured.is_empty() && claimed.is_empty()) {
            return;
        }
        let user = self.conn.identity.user.as_str().to_owned();
        let mut seen = std::collections::HashSet::new();
        let wanted = configured.iter().map(|t| t.replace("{user}", &user));
        for channel in wanted.chain(claimed) {
            if !seen.insert(channel.clone()) {
                continue;
            }
            let refused = validate_channel(&channel)
                .map_err(Denied::BadRequest)
                .and_then(|()| {
                    let ns = self.hub().namespaces().resolve(&channel)?;
                    ns.may_subscribe(self.rights())
                });
            if let Err(denied) = refused {
                let (code, why) = denied.answer();
                let message = format!("server-side subscription to `{channel}` refused: {why}");
                self.error(code, &message, None);
                continue;
            }
            self.subscribe(channel, None, None);
        }
    }

    /// Unsubscribes from `channel`; false when it was not subscribed.
    fn leave(&self, channel: &str) -> bool {
        let registry = &self.hub().registry;
        let was = registry.untrack_subscription(&self.conn, channel);
        if was {
            registry.channels.unsubscribe(&self.conn, channel);
        }
        was
    }

    fn hub(&self) -> &Arc<Hub> {
        self.broker.hub()
    }

    /// The rights of the token in force: the first one's or a refreshed one's.
    fn rights(&self) -> &Identity {
        self.refreshed.as_deref().unwrap_or(&self.conn.identity)
    }

    fn reply(&self, frame: Frame) {
        if self.conn.outbox.try_push(frame, Instant::now()) == Push::Full {
            self.hub().close_slow_consumer(&self.conn);
        }
    }

    fn error(&self, code: ErrorCode, message: &str, reference: Option<&Value>) {
        self.reply(server::error_frame(code, message, reference));
    }

    /// The rate limit applies to every inbound data message, except a backend's.
    fn admit(&mut self) -> Result<(), Flow> {
        if self.role == Role::Backend {
            return Ok(());
        }
        match self.limiter.check(Instant::now()) {
            Verdict::Allow => Ok(()),
            Verdict::Refuse { notify } => {
                self.hub().metrics.refuse(Refusal::RateLimited);
                if notify {
                    self.error(ErrorCode::RateLimited, "too many messages; slow down", None);
                }
                Err(Flow::Continue)
            }
            Verdict::Close => {
                tracing::info!(conn_id = %self.conn.conn_id, user_id = %self.conn.identity.user, "rate limit exceeded persistently, closing 1008");
                Err(Flow::Close(CloseCode::Policy, "rate limit exceeded"))
            }
        }
    }

    fn handle(&mut self, msg: ClientMessage) {
        match msg {
            ClientMessage::Ping => self.reply(server::pong_frame()),
            ClientMessage::Subscribe {
                channel,
                since,
                reference,
            } => self.subscribe(channel, since.as_ref(), reference.as_ref()),
            ClientMessage::Unsubscribe { channel, reference } => {
                self.leave(&channel);
                let frame = server::unsubscribed_frame(&channel, reference.as_ref());
                match &self.later {
                    // After the answers still owed (a subscribe waiting to join).
                    Some(_) => self.answer_later(Later::Reply(frame)),
                    None => self.reply(frame),
                }
            }
            ClientMessage::Refresh { token } => self.refresh(&token),
            ClientMessage::AcknowledgeBroadcast { broadcast_id } => self.acknowledge(broadcast_id),
            ClientMessage::GetActiveBroadcast => self.get_active_broadcast(),
        }
    }

    fn subscribe(&mut self, channel: String, since: Option<&Since>, reference: Option<&Value>) {
        if let Err((code, why)) = self.try_subscribe(channel, since, reference) {
            self.error(code, &why, reference);
        }
    }

    /// A subscribe, or why it is refused (the caller answers the refusal).
    fn try_subscribe(
        &mut self,
        channel: String,
        since: Option<&Since>,
        reference: Option<&Value>,
    ) -> Result<(), (ErrorCode, String)> {
        validate_channel(&channel).map_err(|why| (ErrorCode::BadRequest, why))?;
        let namespaces = self.hub().namespaces();
        let ns = namespaces.resolve(&channel).map_err(|d| d.answer())?;
        ns.may_subscribe(self.rights()).map_err(|d| d.answer())?;
        let count = self.hub().registry.subscriptions(&self.conn).len();
        if count >= self.max_subscriptions as usize {
            let why = "too many subscriptions on this connection";
            return Err((ErrorCode::RateLimited, why.to_owned()));
        }
        let config = ns.config.clone();
        let name: Arc<str> = Arc::from(channel);
        // A second subscribe on the same connection would replay what is already queued
        // or delivered: duplicates. Refused, as Centrifugo does ("already subscribed").
        if !self.hub().registry.track_subscription(&self.conn, &name) {
            let why = "already subscribed to this channel";
            return Err((ErrorCode::BadRequest, why.to_owned()));
        }
        let ready = self.broker.follow(&name);
        // Joined here unless something must be awaited first: the channel being followed,
        // or (where the node's copy is short of `since`) a read of the shared history.
        let channels = &self.hub().registry.channels;
        let short = match since {
            Some(s) => channels.missing(&name, s).is_some(),
            None => config.latest_on_subscribe && channels.latest_missing(&name).is_some(),
        };
        if ready.is_none() && self.later.is_none() && !short {
            join(
                self.hub(),
                &self.conn,
                &name,
                &config,
                since,
                reference,
                &[],
            );
            return Ok(());
        }
        self.answer_later(Later::Join {
            ready,
            channel: name,
            config,
            since: since.cloned(),
            reference: reference.cloned(),
        });
        Ok(())
    }

    /// A `publish` frame: a client's to a channel, or a publisher's with any target.
    fn publish(&mut self, frame: PublishFrame) {
        if self.waiting.publications.load(Relaxed) >= self.max_in_flight as usize {
            self.hub().metrics.refuse(Refusal::InFlight);
            let why = "too many publications waiting for their answer; wait for the acks";
            return self.error(ErrorCode::RateLimited, why, frame.reference.as_ref());
        }
        let (publication, source, reference) = match self.role {
            Role::Client => match self.client_publication(frame) {
                Ok((p, reference)) => (p, Source::Client, reference),
                Err((denied, reference)) => return self.denied(denied, reference.as_ref()),
            },
            Role::Publisher | Role::Backend => {
                let (request, reference) = frame.into_request();
                match crate::hub::request::publication_of(request, Instant::now()) {
                    Ok(p) => (p, Source::Backend, reference),
                    Err(denied) => return self.denied(denied, reference.as_ref()),
                }
            }
        };
        match (self.broker.publish(publication), &self.later) {
            (Submitted::Done(result), None) => {
                if result.is_ok() {
                    self.hub().metrics.accepted(source);
                }
                self.reply(answer_frame(result, reference.as_ref()))
            }
            (submitted, _) => {
                self.waiting.publications.fetch_add(1, Relaxed);
                self.answer_later(Later::Ack {
                    submitted,
                    source,
                    reference,
                })
            }
        }
    }

    /// A client's publication: to a channel only, under the namespace rules and `sync`
    /// validation, never echoed to the publishing connection.
    #[allow(clippy::type_complexity)] // the refusal carries the `ref` it answers
    fn client_publication(
        &self,
        frame: PublishFrame,
    ) -> Result<(Publication, Option<Value>), (Denied, Option<Value>)> {
        if frame.needs_backend() {
            return Err((Denied::Forbidden(BACKEND_ONLY), frame.reference));
        }
        let (request, reference) = frame.into_request();
        let namespaces = self.hub().namespaces();
        let mut publication =
            match client_publication_of(request, self.rights(), &namespaces, Instant::now()) {
                Ok(p) => p,
                Err(denied) => return Err((denied, reference)),
            };
        publication.exclude.conn = Some(self.conn.conn_id.clone());
        Ok((publication, reference))
    }

    /// Hands work to the connection's task for later answers, so that answers keep the
    /// order of the requests however their waits end.
    fn answer_later(&mut self, work: Later) {
        let later = self.later.get_or_insert_with(|| {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Later>();
            let (broker, conn) = (self.broker.clone(), self.conn.clone());
            let waiting = self.waiting.clone();
            tokio::spawn(async move {
                while let Some(work) = rx.recv().await {
                    let ack = matches!(work, Later::Ack { .. });
                    work.finish(&*broker, &conn).await;
                    if ack {
                        waiting.publications.fetch_sub(1, Relaxed);
                    }
                }
            });
            tx
        });
        let _ = later.send(work);
    }

    fn denied(&self, denied: Denied, reference: Option<&Value>) {
        let (code, message) = denied.answer();
        self.error(code, &message, reference);
    }

    /// Claims the connection's one store slot: a client cannot queue up store work
    /// faster than the store answers. False (and an `error`) when one is in flight.
    fn claim_store(&self) -> bool {
        if self.waiting.store.swap(true, Relaxed) {
            self.hub().metrics.refuse(Refusal::StoreBusy);
            self.error(
                ErrorCode::RateLimited,
                "one announcement request at a time; wait for the answer",
                None,
            );
            return false;
        }
        true
    }

    /// Stores the acknowledgement off the connection's task (the store may be remote);
    /// only a failure is answered, as in seed 003. An id that is not well-formed never
    /// reaches the store.
    fn acknowledge(&self, id: String) {
        if !crate::announce::valid_id(&id) {
            // Answered as the store would answer an id it does not hold.
            let (code, message) = StoreError::NotFound.answer();
            return self.error(code, message, None);
        }
        if !self.claim_store() {
            return;
        }
        let (store, conn, busy) = (self.store.clone(), self.conn.clone(), self.waiting.clone());
        let metrics = self.hub().metrics.clone();
        crate::shard::spawn_background(async move {
            let result = store.acknowledge(&id, &conn.identity.user).await;
            busy.store.store(false, Relaxed);
            let failure = match result {
                Ok(()) => return,
                Err(e) => e,
            };
            if let StoreError::Unavailable(why) = &failure {
                metrics.store_error(why);
            }
            let failure = failure.answer();
            conn.outbox.try_push(
                server::error_frame(failure.0, failure.1, None),
                Instant::now(),
            );
        });
    }

    fn get_active_broadcast(&self) {
        if self.claim_store() {
            send_active_broadcast(
                self.store.clone(),
                self.conn.clone(),
                Some(self.waiting.clone()),
                self.hub().metrics.clone(),
            );
        }
    }

    /// Replaces the connection's token: a new expiry, and the rights the new token
    /// carries (groups, admin). It must name the same user and device. Subscriptions the
    /// new rights no longer allow are ended with `unsubscribed`.
    fn refresh(&mut self, token: &str) {
        let Some(verifier) = &self.verifier else {
            return self.error(
                ErrorCode::BadRequest,
                "authentication is disabled on this server",
                None,
            );
        };
        let id = match verifier.verify(token) {
            Ok(id) => id,
            Err(e) => return self.error(ErrorCode::Unauthorized, &e.to_string(), None),
        };
        if self
            .hub()
            .revoked
            .refuses(&id, crate::auth::jwt::now_unix())
        {
            self.hub().metrics.refuse(Refusal::RevokedToken);
            return self.error(ErrorCode::Unauthorized, "token revoked", None);
        }
        if id.user != self.conn.identity.user || id.device != self.conn.identity.device {
            return self.error(
                ErrorCode::Forbidden,
                "a refreshed token must be for the same user and device",
                None,
            );
        }
        self.conn
            .expires_at
            .store(id.expires_at.unwrap_or(0), Relaxed);
        self.conn
            .stamp
            .store(TokenStamp::packed(id.token.as_deref()), Relaxed);
        self.hub().registry.set_groups(&self.conn, &id.groups);
        self.refreshed = Some(Box::new(id));
        let channels = self.hub().registry.subscriptions(&self.conn);
        for channel in channels {
            let allowed = self
                .hub()
                .namespaces()
                .resolve(&channel)
                .is_ok_and(|ns| ns.may_subscribe(self.rights()).is_ok());
            if !allowed && self.leave(&channel) {
                self.reply(server::unsubscribed_frame(&channel, None));
            }
        }
    }
}

impl Handler for Session {
    fn on_activity(&mut self) {
        self.conn.last_seen_ms.store(self.hub().now_ms(), Relaxed);
    }

    fn on_control(&mut self) -> Admit {
        match self.admit() {
            Ok(()) => Admit::Yes,
            Err(Flow::Close(code, why)) => Admit::Close(code, why),
            Err(Flow::Continue) => Admit::No,
        }
    }

    fn on_text(&mut self, text: Bytes, _outbox: &Outbox) -> Flow {
        if let Err(flow) = self.admit() {
            return flow;
        }
        match client::decode(&text) {
            Ok(Inbound::TextPing) => self.reply(server::text_pong_frame()),
            Ok(Inbound::Message(m)) => self.handle(m),
            Ok(Inbound::Publish(p)) => self.publish(p),
            Err(e) => self.error(ErrorCode::BadRequest, &e.message, e.reference.as_ref()),
        }
        Flow::Continue
    }

    fn on_binary(&mut self, _data: Bytes, _outbox: &Outbox) -> Flow {
        if let Err(flow) = self.admit() {
            return flow;
        }
        self.error(
            ErrorCode::BadRequest,
            "binary frames are not accepted; send JSON text",
            None,
        );
        Flow::Continue
    }
}

/// An answer the connection's later-task gives in order.
enum Later {
    /// A publication's `ack` or `error`, once the broker has answered.
    Ack {
        submitted: Submitted,
        source: Source,
        reference: Option<Value>,
    },
    /// A subscribe, once its channel is followed (or the wait is over).
    Join {
        ready: Option<Ready>,
        channel: Arc<str>,
        config: Arc<NamespaceConfig>,
        since: Option<Since>,
        reference: Option<Value>,
    },
    /// A frame that must not overtake the answers before it.
    Reply(Frame),
}

impl Later {
    async fn finish(self, broker: &dyn Broker, conn: &Arc<ConnHandle>) {
        let hub = broker.hub();
        let frame = match self {
            Later::Ack {
                submitted,
                source,
                reference,
            } => {
                let result = submitted.wait().await;
                if let Ok(delivered) = &result {
                    hub.metrics.answered(source, delivered);
                }
                answer_frame(result, reference.as_ref())
            }
            Later::Join {
                ready,
                channel,
                config,
                since,
                reference,
            } => {
                if let Some(ready) = ready {
                    ready.await;
                }
                let earlier = match reading(broker, &channel, &config, since.as_ref()) {
                    Some(reading) => reading.await,
                    None => Vec::new(),
                };
                return join(
                    hub,
                    conn,
                    &channel,
                    &config,
                    since.as_ref(),
                    reference.as_ref(),
                    &earlier,
                );
            }
            Later::Reply(frame) => frame,
        };
        if conn.outbox.try_push(frame, Instant::now()) == Push::Full {
            hub.close_slow_consumer(conn);
        }
    }
}

/// Joins `conn` to `channel` (its `subscribed` and replay queued), unless the
/// subscription was ended meanwhile (an unsubscribe, a refresh, the connection
/// closing): then it is left at once, so nothing is left joined that no one tracks.
fn join(
    hub: &Hub,
    conn: &Arc<ConnHandle>,
    channel: &Arc<str>,
    config: &Arc<NamespaceConfig>,
    since: Option<&Since>,
    reference: Option<&Value>,
    earlier: &[Earlier],
) {
    if !hub.registry.tracks_subscription(conn, channel) {
        return;
    }
    let out = hub
        .registry
        .channels
        .subscribe_with(conn, channel, config, since, reference, earlier);
    if !hub.registry.tracks_subscription(conn, channel) {
        hub.registry.channels.unsubscribe(conn, channel);
        return;
    }
    if out.slow {
        hub.close_slow_consumer(conn);
    }
}

/// The read of the shared history a `since` on `channel` needs, when this node's copy
/// does not reach back far enough and the broker has one; without `since`, on a
/// `latest_on_subscribe` namespace, the read of the last publication if the copy gave
/// it up.
fn reading(
    broker: &dyn Broker,
    channel: &str,
    config: &NamespaceConfig,
    since: Option<&Since>,
) -> Option<Reading> {
    let channels = &broker.hub().registry.channels;
    let Some(since) = since else {
        if !config.latest_on_subscribe {
            return None;
        }
        let (top, epoch) = channels.latest_missing(channel)?;
        return broker.history(channel, top, top, epoch);
    };
    let (from, to) = channels.missing(channel, since)?;
    broker.history(channel, from, to, Arc::from(since.epoch.as_str()))
}

/// Sends `active_broadcast` to `conn` if an announcement is active and its user has not
/// acknowledged it (on connect, and on `get_active_broadcast`). Runs off the caller's
/// task; a store outage only costs the banner, never the connection. `busy` is the
/// connection's store slot, released when the lookup is done.
pub fn send_active_broadcast(
    store: Arc<dyn Store>,
    conn: Arc<ConnHandle>,
    busy: Option<Arc<Waiting>>,
    metrics: Arc<crate::metrics::Metrics>,
) {
    crate::shard::spawn_background(async move {
        let result = active_for(store.as_ref(), &conn.identity.user).await;
        if let Some(busy) = busy {
            busy.store.store(false, Relaxed);
        }
        match result {
            Ok(Some(a)) => {
                conn.outbox.try_push(
                    server::broadcast_frame("active_broadcast", &a),
                    Instant::now(),
                );
            }
            Ok(None) => {}
            Err(e) => metrics.store_error(&e.to_string()),
        }
    });
}

/// `ack` with the offset, or the `error` a refused publication gets.
fn answer_frame(result: Result<crate::hub::Delivered, Denied>, reference: Option<&Value>) -> Frame {
    match result {
        Ok(d) => server::ack_frame(reference, d.position.map(|(offset, _)| offset)),
        Err(denied) => {
            let (code, message) = denied.answer();
            server::error_frame(code, &message, reference)
        }
    }
}
