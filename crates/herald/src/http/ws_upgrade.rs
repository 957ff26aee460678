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
use tracing::Instrument;

use super::error::ApiError;
use super::head_guard::HeadGuard;
use super::App;
use crate::auth::origin::origin_allowed;
use crate::auth::token::token_from;
use crate::auth::Identity;
use crate::connection::driver::{drive, Handler, Limits};
use crate::connection::transport::Buffered;
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
        // connection lives on in a task that holds only what it needs while idle.
        tracker.spawn(live.run());
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

/// Runs `handler` over an upgraded socket: the raw TCP fast path when the socket is
/// plain TCP, a buffered split otherwise (TLS). Each drive is boxed at its own size: an
/// inline one would make every connection's task as large as the larger of the two.
pub async fn drive_upgraded<H: Handler>(
    upgraded: Upgraded,
    outbox: Arc<Outbox>,
    handler: &mut H,
    limits: Limits,
    metrics: Arc<Metrics>,
) {
    match upgraded.downcast::<TokioIo<HeadGuard<TcpStream>>>() {
        Ok(parts) => {
            let (r, w) = parts.io.into_inner().into_inner().into_split();
            // Copy what hyper read ahead, then let go of its buffer: `read_buf` is a slice
            // of hyper's 8 KiB read buffer and would otherwise live as long as the socket.
            let buf = BytesMut::from(&parts.read_buf[..]);
            drop(parts.read_buf);
            Box::pin(drive(r, w, buf, outbox, handler, limits, metrics)).await;
        }
        Err(upgraded) => {
            let (r, w) = tokio::io::split(TokioIo::new(upgraded));
            Box::pin(drive(
                Buffered(r),
                w,
                BytesMut::new(),
                outbox,
                handler,
                limits,
                metrics,
            ))
            .await;
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
    let backend = api_key(app, headers)?;
    let identity = match &app.verifier {
        _ if backend => Identity::backend(),
        None => Identity::anonymous(ANON.fetch_add(1, Relaxed)),
        Some(v) => {
            let token = token_from(headers, req.uri().query()).ok_or_else(|| {
                app.metrics.refuse(Refusal::BadToken);
                ApiError::new(ErrorCode::Unauthorized, "missing token")
            })?;
            v.verify(&token).map_err(|e| {
                app.metrics.refuse(Refusal::BadToken);
                ApiError::new(ErrorCode::Unauthorized, e.to_string())
            })?
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
        ip: client.ip,
        deflate,
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
    session: Session,
    limits: Limits,
    registration: Registration,
    metrics: Arc<Metrics>,
    span: tracing::Span,
}

impl Live {
    /// From the upgraded socket to the last byte; unregisters when done. Not an `async
    /// fn`: its fields move into the future once instead of being kept twice (as the
    /// argument and as the locals taken from it) for the connection's whole life.
    fn run(self) -> impl std::future::Future<Output = ()> + Send {
        let Live {
            upgraded,
            outbox,
            mut session,
            limits,
            registration,
            metrics,
            span,
        } = self;
        async move {
            tracing::debug!("connected");
            drive_upgraded(upgraded, outbox, &mut session, limits, metrics).await;
            drop(registration);
            tracing::debug!("disconnected");
        }
        .instrument(span)
    }
}

/// Sets up one hub connection: its queue with `connected` (and the active announcement)
/// first, its handle registered, its session.
async fn open(
    app: App,
    upgraded: Upgraded,
    identity: Identity,
    admission: Admission,
    ip: std::net::IpAddr,
    deflate: Option<Agreement>,
) -> Live {
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
    let outbox = Arc::new(Outbox::new(queue_messages, ws.queue_bytes));
    // `connected` is queued before registration, so it is always the first frame.
    let hello = frame_of(&Connected::new(
        &conn_id,
        &identity.user,
        &hub.node,
        ws.heartbeat_s,
    ));
    outbox.try_push(hello, std::time::Instant::now());
    let handle = Arc::new(ConnHandle::new(
        id,
        conn_id.clone(),
        identity,
        outbox.clone(),
        ip,
        hub.now_ms(),
        crate::store::time::now_ms(),
    ));
    let span =
        tracing::info_span!("conn", conn_id = %conn_id, user_id = %handle.identity.user, ip = %ip);
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
        max_subscriptions: ws.max_subscriptions,
        max_in_flight: ws.max_in_flight,
    };
    let session = Session::new(
        app.broker.clone(),
        app.store.clone(),
        handle,
        app.verifier.clone(),
        &limits,
    );
    Live {
        upgraded,
        outbox,
        session,
        limits: Limits {
            max_message: ws.max_message_bytes,
            write_timeout: Duration::from_secs(ws.write_timeout_s),
            deflate: deflate.map(|a| a.server_window),
        },
        registration,
        metrics: app.metrics.clone(),
        span,
    }
}
