//! `/conformance/echo`: herald's real reader and writer with an echo handler, for the
//! Autobahn run in `scripts/test`. Enabled only by `serve --conformance-echo`; it has
//! no auth, so it must never be on in production.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use super::error::ApiError;
use super::ws_upgrade::{spawn_upgraded, switching_protocols};
use super::App;
use crate::connection::driver::{Flow, Handler, Limits};
use crate::outbox::{Outbox, Push};
use crate::protocol::codes::ErrorCode;
use crate::ws::deflate::Policy;
use crate::ws::frame::{Frame, OP_BINARY, OP_TEXT};
use crate::ws::handshake;

/// Autobahn sends messages up to 16 MiB and bursts of 1,000.
const ECHO_MAX_MESSAGE: usize = 64 * 1024 * 1024;

struct Echo;

impl Echo {
    fn send(outbox: &Outbox, frame: Frame) -> Flow {
        match outbox.try_push(frame, std::time::Instant::now()) {
            Push::Full => Flow::Close(
                crate::protocol::codes::CloseCode::SlowConsumer,
                "slow consumer",
            ),
            Push::Queued | Push::Closed => Flow::Continue,
        }
    }
}

/// Every echo is compressed (for a client that negotiated it): the conformance run
/// exercises the write path of permessage-deflate, not only the read path.
const ECHO_DEFLATE: Policy = Policy {
    threshold: 0,
    level: 6,
    always: true,
};

impl Handler for Echo {
    fn on_text(&mut self, text: Bytes, outbox: &Outbox) -> Flow {
        Echo::send(
            outbox,
            Frame::new(OP_TEXT, &text).deflatable(Some(&ECHO_DEFLATE)),
        )
    }

    fn on_binary(&mut self, data: Bytes, outbox: &Outbox) -> Flow {
        Echo::send(
            outbox,
            Frame::new(OP_BINARY, &data).deflatable(Some(&ECHO_DEFLATE)),
        )
    }
}

pub async fn echo(State(app): State<App>, mut req: Request) -> Response {
    let key = match handshake::accept_key(req.method(), req.headers()) {
        Ok(k) => k,
        Err(e) => return ApiError::new(ErrorCode::BadRequest, e.to_string()).into_response(),
    };
    let deflate = handshake::deflate_agreement(req.headers());
    let Some(on_upgrade) = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() else {
        return ApiError::new(ErrorCode::BadRequest, "cannot upgrade").into_response();
    };
    let metrics = app.metrics.clone();
    let tracker = app.tracker.clone();
    app.tracker.spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let outbox = Arc::new(Outbox::new(100_000, 256 * 1024 * 1024));
        let limits = Limits {
            max_message: ECHO_MAX_MESSAGE,
            write_timeout: std::time::Duration::from_secs(30),
            deflate: deflate.map(|a| a.server_window),
        };
        let span = tracing::Span::none();
        spawn_upgraded(&tracker, upgraded, outbox, Echo, limits, metrics, span);
    });
    switching_protocols(&key, deflate.as_ref())
}
