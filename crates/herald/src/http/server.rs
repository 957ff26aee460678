//! The accept loop. We drive hyper ourselves (not `axum::serve`) for three reasons: the
//! request-head timeout that drops slowloris clients, a TLS handshake off the accept
//! loop, and connection tasks tracked so shutdown can wait for upgraded sockets (axum
//! does not wait for them, tokio-rs/axum#3003).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::error::ApiError;
use super::head_guard::{self, HeadGuard};
use super::App;
use crate::metrics::Refusal;
use crate::protocol::codes::ErrorCode;
use axum::http::StatusCode;
use axum::response::IntoResponse;

pub async fn accept_loop(
    listener: TcpListener,
    app: App,
    router: Router,
    tls: Option<TlsAcceptor>,
    stop: CancellationToken,
) {
    loop {
        let (tcp, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Trusted proxies carry many clients: only the per-node cap applies to them.
        let ip = (!app.proxies.load().trusts(peer.ip())).then_some(peer.ip());
        let slot = match app.http_caps.admit(ip) {
            Ok(slot) => slot,
            Err(why) => {
                app.metrics.refuse(why);
                drop(tcp);
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        // The connection goes to the least loaded worker (`crate::shard`), its socket
        // registered with that worker's reactor; it stays there, and so does the
        // WebSocket it may become. Without workers it runs here, on the main runtime.
        let worker = app.workers.pick();
        let tcp = match worker {
            None => tcp,
            Some(w) => match w.adopt(tcp) {
                Ok(tcp) => tcp,
                Err(e) => {
                    tracing::debug!(%peer, "cannot hand the connection to a worker: {e}");
                    continue;
                }
            },
        };
        let here = worker.map(crate::shard::Worker::join);
        let handshake_timeout = Duration::from_secs(app.cfg().limits.handshake_timeout_s);
        let (app, router, tls, stop) = (app.clone(), router.clone(), tls.clone(), stop.clone());
        let tracker = app.tracker.clone();
        // Boxed: the task cell is then a pointer-sized shell. A finished task's cell can
        // outlive it while a stale waker still points at it (hyper's registrations on
        // the socket we take over), and an unboxed cell holds the whole ~5 KiB HTTP
        // state machine for as long as the WebSocket lives.
        let task = Box::pin(async move {
            // Held until this HTTP connection ends or is upgraded to a WebSocket.
            let (_slot, _here) = (slot, here);
            match tls {
                None => {
                    serve_http(
                        TokioIo::new(HeadGuard::new(tcp, app.metrics.clone())),
                        peer,
                        app,
                        router,
                        handshake_timeout,
                        stop,
                    )
                    .await
                }
                Some(acceptor) => {
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let guarded = HeadGuard::new(stream, app.metrics.clone());
                            serve_http(
                                TokioIo::new(guarded),
                                peer,
                                app,
                                router,
                                handshake_timeout,
                                stop,
                            )
                            .await
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
                        Err(_) => {
                            app.metrics.refuse(Refusal::HandshakeTimeout);
                            tracing::debug!(%peer, "TLS handshake timed out");
                        }
                    }
                }
            }
        });
        match worker {
            Some(w) => w.spawn(tracker.track_future(task)),
            None => drop(tracker.spawn(task)),
        }
    }
}

async fn serve_http<I>(
    io: TokioIo<I>,
    peer: SocketAddr,
    app: App,
    router: Router,
    head_timeout: Duration,
    stop: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let metrics = app.metrics.clone();
    // Whether a request came on this connection: the head-read timeout then ends an
    // idle keep-alive connection, which is no refusal (browsers keep spare ones).
    let served = Arc::new(AtomicBool::new(false));
    let seen = served.clone();
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        seen.store(true, Relaxed);
        req.extensions_mut().insert(ConnectInfo(peer));
        let router = router.clone();
        let oversized = head_guard::oversized(&req);
        let metrics = metrics.clone();
        async move {
            if let Some(size) = oversized {
                // A keep-alive head the guard under hyper did not count.
                metrics.refuse(Refusal::HeadTooLarge);
                let msg = format!(
                    "request head of {size} bytes exceeds {}",
                    head_guard::HEAD_MAX
                );
                return Ok(ApiError::new(ErrorCode::TooLarge, msg)
                    .with_status(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
                    .closing()
                    .into_response());
            }
            router.oneshot(req.map(axum::body::Body::new)).await
        }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(head_timeout)
        .max_buf_size(64 * 1024)
        .serve_connection(io, svc)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        if e.is_timeout() && served.load(Relaxed) {
            tracing::debug!(%peer, "idle keep-alive connection closed");
        } else if e.is_timeout() {
            app.metrics.refuse(Refusal::HandshakeTimeout);
            tracing::debug!(%peer, "request head not received in time; dropped");
        } else {
            tracing::debug!(%peer, "http connection error: {e}");
        }
    }
}

/// The TLS acceptor when `tls.cert_file` and `tls.key_file` are set.
pub fn tls_acceptor(cfg: &crate::config::Config) -> anyhow::Result<Option<TlsAcceptor>> {
    match (&cfg.tls.cert_file, &cfg.tls.key_file) {
        (Some(c), Some(k)) => Ok(Some(TlsAcceptor::from(super::tls::server_config(c, k)?))),
        _ => Ok(None),
    }
}
