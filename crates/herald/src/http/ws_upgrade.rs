//! `GET /ws`: every refusal is decided here, before the 101, with the HTTP status and
//! JSON body of DESIGN §2; then the upgraded socket is handed to a connection task.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::BytesMut;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::error::ApiError;
use super::head_guard::HeadGuard;
use super::App;
use crate::auth::jwt::now_unix;
use crate::auth::origin::origin_allowed;
use crate::auth::token::token_from;
use crate::auth::Identity;
use crate::connection::driver::{Admit, Connection, Flow, Handler, Limits};
use crate::hub::{Admission, ConnHandle, Registration};
use crate::metrics::{Metrics, Refusal};
use crate::outbox::Outbox;
use crate::protocol::codes::{CloseCode, ErrorCode};
use crate::protocol::server::{broadcast_frame, frame_of, Connected};
use crate::session::{Role, Session, SessionLimits};
use crate::store::active_for;
use crate::ws::deflate::Agreement;
use crate::ws::frame::Frame;
use crate::ws::handshake::{self, HandshakeError};

static ANON: AtomicU64 = AtomicU64::new(1);

/// How long a new connection waits for its active-announcement lookup.
const ACTIVE_LOOKUP: Duration = Duration::from_millis(500);

pub async fn upgrade(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut req: Request,
) -> Response {
    let accept = match check(&app, &req, peer) {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    let Accepted {
        key,
        identity,
        admission,
        ip,
        deflate,
    } = accept;
    let Some(on_upgrade) = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() else {
        return ApiError::new(ErrorCode::BadRequest, "this connection cannot be upgraded")
            .into_response();
    };
    let task_app = app.clone();
    app.tracker.spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => return tracing::debug!("upgrade failed: {e}"),
        };
        let tracker = task_app.tracker.clone();
        let live = open(task_app, upgraded, identity, admission, ip, deflate).await;
        // The set-up's state (its arguments, the lookup) goes with this task; the
        // connection lives on in a task that holds only what it needs while idle, on
        // this thread: the worker its HTTP connection was given (`shard`).
        live.spawn(&tracker);
    });
    switching_protocols(&key, deflate.as_ref())
}

/// The 101 answer that completes a handshake, with the permessage-deflate agreement.
pub fn switching_protocols(accept_key: &str, deflate: Option<&Agreement>) -> Response {
    let mut res = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let h = res.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(accept_key) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    if let Some(v) = deflate.and_then(|a| HeaderValue::from_str(&a.response()).ok()) {
        h.insert(header::SEC_WEBSOCKET_EXTENSIONS, v);
    }
    res
}

/// Runs `handler` over an upgraded socket in a task of its own: on the TCP stream
/// itself when the socket is plain TCP (hyper's upgrade wrapper let go), on hyper's
/// upgraded stream otherwise (TLS). Two kinds of task, each exactly its own size; each
/// on the calling thread's runtime, where its socket is registered.
pub fn spawn_upgraded<H: Handler + Unpin + 'static>(
    tracker: &TaskTracker,
    upgraded: Upgraded,
    outbox: Arc<Outbox>,
    handler: H,
    limits: Limits,
    metrics: Arc<Metrics>,
    span: tracing::Span,
) {
    match upgraded.downcast::<TokioIo<HeadGuard<TcpStream>>>() {
        Ok(parts) => {
            let tcp = parts.io.into_inner().into_inner();
            // Copy what hyper read ahead, then let go of its buffer: `read_buf` is a slice
            // of hyper's 8 KiB read buffer and would otherwise live as long as the socket.
            let buf = BytesMut::from(&parts.read_buf[..]);
            drop(parts.read_buf);
            let conn = Connection::new(tcp, buf, outbox, handler, limits, metrics);
            tracker.spawn(conn.instrument(span));
        }
        Err(upgraded) => {
            let io = TokioIo::new(upgraded);
            let conn = Connection::new(io, BytesMut::new(), outbox, handler, limits, metrics);
            tracker.spawn(conn.instrument(span));
        }
    }
}

/// An upgrade that passed every check.
struct Accepted {
    key: String,
    identity: Identity,
    admission: Admission,
    ip: std::net::IpAddr,
    /// permessage-deflate, when offered and something here would use it.
    deflate: Option<Agreement>,
}

fn check(app: &App, req: &Request, peer: SocketAddr) -> Result<Accepted, ApiError> {
    let headers = req.headers();
    let accept = handshake::accept_key(req.method(), headers).map_err(|e| {
        app.metrics.refuse(Refusal::BadHandshake);
        match e {
            HandshakeError::Version => ApiError::new(ErrorCode::BadRequest, e.to_string())
                .with_status(StatusCode::UPGRADE_REQUIRED),
            HandshakeError::Malformed(_) => ApiError::new(ErrorCode::BadRequest, e.to_string()),
        }
    })?;
    let Admitted {
        identity,
        admission,
        ip,
    } = admit(app, headers, req.uri().query(), peer, Keys::Accepted)?;
    let deflate = app
        .hub
        .namespaces()
        .negotiates_deflate()
        .then(|| handshake::deflate_agreement(headers))
        .flatten();
    Ok(Accepted {
        key: accept,
        identity,
        admission,
        ip,
        deflate,
    })
}

/// Whether an API key makes the connection a backend publisher (`/ws`) or is not a
/// credential at all (`/sse`: a backend has no use for a one-way stream).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Keys {
    Accepted,
    Ignored,
}

/// A client that passed what every transport checks (DESIGN §2), with its slot under
/// the per-user and per-IP caps.
pub(super) struct Admitted {
    pub identity: Identity,
    pub admission: Admission,
    pub ip: std::net::IpAddr,
}

/// The checks of a connecting client, in order, each refusal counted: the node
/// draining (503), the Origin (403), an API key or the token (401), a revoked token
/// (401), the connection caps (429).
pub(super) fn admit(
    app: &App,
    headers: &axum::http::HeaderMap,
    query: Option<&str>,
    peer: SocketAddr,
    keys: Keys,
) -> Result<Admitted, ApiError> {
    if app.draining.load(SeqCst) {
        return Err(ApiError::new(
            ErrorCode::Unavailable,
            "server is shutting down",
        ));
    }
    // Behind a trusted load balancer the client's address, scheme and Host are the
    // forwarded ones (DESIGN §11); from anyone else the headers are ignored.
    let client = app.proxies.load().client(peer, headers, app.tls);
    let origin = headers
        .get(header::ORIGIN)
        .map(|v| v.to_str().unwrap_or("invalid"));
    let host = client
        .host
        .as_deref()
        .or_else(|| headers.get(header::HOST).and_then(|v| v.to_str().ok()));
    if !origin_allowed(origin, host, &app.cfg().allowed_origins, client.tls) {
        app.metrics.refuse(Refusal::BadOrigin);
        return Err(ApiError::new(ErrorCode::Forbidden, "origin not allowed"));
    }
    // An API key makes the connection a backend publisher whatever `auth.mode` is
    // (DESIGN §7); a bearer that is not a key may still be a token.
    let backend = keys == Keys::Accepted && api_key(app, headers)?;
    let identity = match &app.verifier {
        _ if backend => Identity::backend(),
        None => Identity::anonymous(ANON.fetch_add(1, Relaxed)),
        Some(v) => {
            let token = token_from(headers, query).ok_or_else(|| {
                app.metrics.refuse(Refusal::BadToken);
                ApiError::new(ErrorCode::Unauthorized, "missing token")
            })?;
            let identity = v.verify(&token).map_err(|e| {
                app.metrics.refuse(Refusal::BadToken);
                ApiError::new(ErrorCode::Unauthorized, e.to_string())
            })?;
            if app.hub.revoked.refuses(&identity, now_unix()) {
                app.metrics.refuse(Refusal::RevokedToken);
                return Err(ApiError::new(ErrorCode::Unauthorized, "token revoked"));
            }
            identity
        }
    };
    let admission = app
        .hub
        .registry
        .admit(&identity.user, client.ip)
        .map_err(|why| {
            app.metrics.refuse(why);
            let what = if why == Refusal::UserCap {
                "this user"
            } else {
                "this address"
            };
            ApiError::new(
                ErrorCode::RateLimited,
                format!("too many connections for {what}"),
            )
        })?;
    Ok(Admitted {
        identity,
        admission,
        ip: client.ip,
    })
}

/// Whether the upgrade presents one of the API keys: as `Authorization: Bearer` (which
/// may instead be a token: not a key, then) or as `X-API-Key` (which must be a key: 401
/// otherwise). Never from the query or a cookie: a key is a backend's, sent in a header.
fn api_key(app: &App, headers: &axum::http::HeaderMap) -> Result<bool, ApiError> {
    let keys = app.api_keys.load();
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(crate::auth::token::bearer);
    if bearer.is_some_and(|b| keys.accepts(b)) {
        return Ok(true);
    }
    match headers.get("x-api-key") {
        None => Ok(false),
        Some(v) if v.to_str().is_ok_and(|k| keys.accepts(k.trim())) => Ok(true),
        Some(_) => {
            app.metrics.refuse(Refusal::BadApiKey);
            Err(ApiError::new(ErrorCode::Unauthorized, "invalid API key"))
        }
    }
}

/// A registered connection, ready to run: what it needs for the rest of its life.
struct Live {
    upgraded: Upgraded,
    outbox: Arc<Outbox>,
    registered: Registered,
    limits: Limits,
    metrics: Arc<Metrics>,
    span: tracing::Span,
}

impl Live {
    /// From the upgraded socket to the last byte, in a task of its own; unregisters when
    /// done.
    fn spawn(self, tracker: &TaskTracker) {
        let Live {
            upgraded,
            outbox,
            registered,
            limits,
            metrics,
            span,
        } = self;
        span.in_scope(|| tracing::debug!("connected"));
        spawn_upgraded(tracker, upgraded, outbox, registered, limits, metrics, span);
    }
}

/// A hub connection's handler: its session, and the registration that unregisters the
/// connection when its task ends (dropped first, before the session).
pub(super) struct Registered {
    pub _registration: Registration,
    pub session: Session,
}

impl Handler for Registered {
    fn on_text(&mut self, text: bytes::Bytes, outbox: &Outbox) -> Flow {
        self.session.on_text(text, outbox)
    }
    fn on_binary(&mut self, data: bytes::Bytes, outbox: &Outbox) -> Flow {
        self.session.on_binary(data, outbox)
    }
    fn on_control(&mut self) -> Admit {
        self.session.on_control()
    }
    fn on_activity(&mut self) {
        self.session.on_activity()
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        tracing::debug!("disconnected");
    }
}

/// Sets up one `/ws` connection: the hub connection ([`register`]) and its socket's limits.
async fn open(
    app: App,
    upgraded: Upgraded,
    identity: Identity,
    admission: Admission,
    ip: std::net::IpAddr,
    deflate: Option<Agreement>,
) -> Live {
    let ws = app.cfg().ws.clone();
    let admitted = Admitted {
        identity,
        admission,
        ip,
    };
    let registered = register(&app, admitted).await;
    let conn = registered.session.conn().clone();
    // A debug span: at the default level it is disabled and costs a connection nothing
    // (an enabled span keeps its formatted fields for the connection's whole life); the
    // info-level events about a connection name it themselves.
    let span = tracing::debug_span!("conn", conn_id = %conn.conn_id, user_id = %conn.identity.user, ip = %ip);
    Live {
        upgraded,
        outbox: conn.outbox.clone(),
        registered,
        limits: Limits {
            max_message: ws.max_message_bytes,
            write_timeout: Duration::from_secs(ws.write_timeout_s),
            deflate: deflate.map(|a| a.server_window),
        },
        metrics: app.metrics.clone(),
        span,
    }
}

/// Sets up one hub connection, whatever carries it: its queue with `connected` (and the
/// active announcement) first, its handle registered, its session with the server-side
/// subscriptions made.
pub(super) async fn register(app: &App, admitted: Admitted) -> Registered {
    let Admitted {
        identity,
        admission,
        ip,
    } = admitted;
    let hub = app.hub.clone();
    let (id, conn_id) = hub.next_conn_id();
    let cfg = app.cfg();
    let ws = &cfg.ws;
    // A publisher's queue also holds an answer for each publication it may have in
    // flight: a pipelined backend that reads its acks is never closed for its window.
    let queue_messages = match Role::of(&identity) {
        Role::Client => ws.queue_messages,
        Role::Publisher | Role::Backend => ws.queue_messages.saturating_add(ws.max_in_flight),
    };
    // The connection lives on the thread its HTTP connection was given, a worker or
    // the main runtime: its queue knows which, for the wakes (`crate::wake`).
    let home = crate::wake::resident_here();
    let outbox = Arc::new(Outbox::living_on(queue_messages, ws.queue_bytes, home));
    // `connected` is queued before registration, so it is always the first frame.
    let hello = frame_of(&Connected::new(
        &conn_id,
        &identity.user,
        &hub.node,
        ws.heartbeat_s,
    ));
    outbox.try_push(hello, std::time::Instant::now());
    // The token's server-side subscriptions are made below, once; the handle keeps none.
    let mut identity = identity;
    let claimed = identity
        .token
        .as_mut()
        .map(|t| std::mem::take(&mut t.channels))
        .unwrap_or_default();
    let handle = Arc::new(ConnHandle::new(
        id,
        conn_id.clone(),
        identity,
        outbox.clone(),
        ip,
        hub.now_ms(),
        crate::store::time::now_ms(),
    ));
    // `active_broadcast` comes right after `connected` (DESIGN §3): looked up before the
    // connection is registered, so nothing can be queued between the two. The lookup is
    // bounded: a slow or absent store costs the banner, not the connection.
    let lookup = active_for(app.store.as_ref(), &handle.identity.user);
    match tokio::time::timeout(ACTIVE_LOOKUP, lookup).await {
        Ok(Ok(Some(a))) => {
            outbox.try_push(
                broadcast_frame("active_broadcast", &a),
                std::time::Instant::now(),
            );
        }
        Ok(Ok(None)) => {}
        Ok(Err(e)) => app.metrics.store_error(&e.to_string()),
        Err(_) => app
            .metrics
            .store_error("active announcement lookup timed out"),
    }
    let registration = hub.registry.register(admission, handle.clone());
    // Shutdown marks the node draining before it closes every registered connection; a
    // connection that registers after that sweep sees the mark here and leaves at once,
    // so no upgrade that raced with the drain stays open (or holds the shutdown back).
    if app.draining.load(SeqCst) {
        let code = CloseCode::GoingAway;
        outbox.close(Some(Frame::close(code.code(), code.reason())), false);
    }
    let limits = SessionLimits {
        rate_per_s: ws.rate_per_s,
        rate_burst: ws.rate_burst,
        close_after: Duration::from_secs(ws.rate_limit_close_after_s),
        max_subscriptions: u32::try_from(ws.max_subscriptions).unwrap_or(u32::MAX),
        max_in_flight: u32::try_from(ws.max_in_flight).unwrap_or(u32::MAX),
    };
    let mut session = Session::new(
        app.broker.clone(),
        app.store.clone(),
        handle,
        app.verifier.clone(),
        &limits,
    );
    // Server-side subscriptions: after `connected` (and the active announcement).
    session.subscribe_on_connect(&ws.subscribe_on_connect, claimed);
    Registered {
        _registration: registration,
        session,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What every idle connection holds in its task and beside it (docs/benchmarks.md,
    /// "Memory per idle connection"): growing any of these grows every connection.
    #[test]
    fn an_idle_connection_stays_small() {
        // (what, its size, the most it may be): the task future's 488 B make a 640 B task
        // (tokio's header, trailer and 128-byte alignment); 8 more would cost 128.
        let sizes = [
            (
                "task future",
                size_of::<tracing::instrument::Instrumented<Connection<TcpStream, Registered>>>(),
                488,
            ),
            ("session", size_of::<Session>(), 144),
            (
                "writer",
                size_of::<crate::connection::writer::WriteSide>(),
                88,
            ),
            (
                "message reader",
                size_of::<crate::ws::message::MessageReader>(),
                56,
            ),
            ("registration", size_of::<Registration>(), 56),
            (
                "rate limiter",
                size_of::<crate::connection::rate::InboundLimiter>(),
                56,
            ),
            ("outbox", size_of::<Outbox>(), 192),
            // 248 until revocation gave each connection its token's stamp (one word) and
            // the identity a (dropped) box for it.
            ("handle", size_of::<ConnHandle>(), 264),
        ];
        for (what, size, most) in sizes {
            eprintln!("{what}: {size} B (at most {most})");
        }
        for (what, size, most) in sizes {
            assert!(size <= most, "{what} is {size} B, more than {most}");
        }
    }
}
