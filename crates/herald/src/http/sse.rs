//! `GET /sse` (DESIGN §13): the frames of `/ws`, one way, as Server-Sent Events — for
//! clients behind proxies that break WebSockets. The connection is an ordinary hub
//! connection (registered, counted, capped, closed by operators like any other); only
//! its writer differs: instead of WebSocket frames it writes each queued frame's JSON as
//! an event named by its `type`.
//!
//! Subscriptions are the server-side ones (`ws.subscribe_on_connect`, the token's
//! `channels`) and those in the query (`channels=a,b`), each made as a client's
//! `subscribe` would be, answered by the same `subscribed` (or `error`) event. A
//! channel publication's event `id` is `<epoch>:<offset>`; a reconnecting EventSource
//! sends the last one as `Last-Event-ID`, which recovers that channel — epochs are one
//! per channel history, so the id names its channel among those asked for (or the only
//! one). Several channels recover with `since=<epoch>:<offset>,…`, one entry per
//! channel in the order of `channels` (an empty entry: none). Publishing and acks go
//! over the HTTP API; this stream only listens.
//!
//! Heartbeats are comments (`: ping`), one per `ws.heartbeat_s` from the sweeper's
//! pings; a stream that keeps being written to counts as alive for the idle timeout.
//! A close (a slow consumer, token expiry, an operator's order, shutdown) is a `close`
//! event with the code and reason, then the end of the stream. Proxies are told not to
//! buffer (`X-Accel-Buffering: no`) and nothing to cache.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};

use super::error::ApiError;
use super::ws_upgrade::{admit, register, Keys, Registered};
use super::App;
use crate::hub::{ConnHandle, Hub};
use crate::metrics::Metrics;
use crate::outbox::{Batch, Queued};
use crate::protocol::client::Since;
use crate::protocol::codes::ErrorCode;
use crate::ws::frame::{Frame, OP_CLOSE, OP_PING, OP_TEXT};

/// What the query asks for.
#[derive(serde::Deserialize, Default)]
struct Query {
    #[serde(default)]
    channels: String,
    #[serde(default)]
    since: String,
}

/// `<epoch>:<offset>`, the id of a channel publication's event.
fn position(s: &str) -> Option<Since> {
    let (epoch, offset) = s.trim().rsplit_once(':')?;
    let offset = offset.parse().ok()?;
    (!epoch.is_empty()).then(|| Since {
        offset,
        epoch: epoch.to_owned(),
    })
}

/// The channels asked for, each with the position to recover from: the query's
/// `since` by place, and `Last-Event-ID` for the channel its epoch names (or the only
/// channel). A malformed position is a 400: a client that sends one expects recovery.
fn wanted(
    app: &App,
    query: &Query,
    headers: &HeaderMap,
) -> Result<Vec<(String, Option<Since>)>, ApiError> {
    let bad = |what: &str| ApiError::new(ErrorCode::BadRequest, what.to_owned());
    let channels: Vec<String> = query
        .channels
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(str::to_owned)
        .collect();
    let cap = app.cfg().ws.max_subscriptions;
    if channels.len() > cap {
        return Err(ApiError::new(
            ErrorCode::RateLimited,
            format!("at most {cap} channels per connection (ws.max_subscriptions)"),
        ));
    }
    let mut out: Vec<(String, Option<Since>)> = channels.into_iter().map(|c| (c, None)).collect();
    if !query.since.is_empty() {
        let given: Vec<&str> = query.since.split(',').collect();
        if given.len() > out.len() {
            return Err(bad("since: one `<epoch>:<offset>` (or nothing) per channel, in the order of `channels`"));
        }
        for (slot, p) in out.iter_mut().zip(given) {
            if p.trim().is_empty() {
                continue;
            }
            slot.1 =
                Some(position(p).ok_or_else(|| bad("since: expected `<epoch>:<offset>` entries"))?);
        }
    }
    if let Some(last) = headers.get("last-event-id") {
        // An id that is not a position (another event's, or none) recovers nothing.
        if let Some(p) = last.to_str().ok().and_then(position) {
            let only = out.len() == 1;
            let channels = &app.hub.registry.channels;
            if let Some(slot) = out
                .iter_mut()
                .find(|(c, _)| only || channels.top(c).is_some_and(|(_, epoch)| *epoch == *p.epoch))
            {
                slot.1 = Some(p);
            }
        }
    }
    Ok(out)
}

pub async fn events(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let headers = req.headers();
    let query = match axum::extract::Query::<Query>::try_from_uri(req.uri()) {
        Ok(q) => q.0,
        Err(e) => return ApiError::new(ErrorCode::BadRequest, e.body_text()).into_response(),
    };
    let wanted = match wanted(&app, &query, headers) {
        Ok(w) => w,
        Err(e) => return e.into_response(),
    };
    let admitted = match admit(&app, headers, req.uri().query(), peer, Keys::Ignored) {
        Ok(a) => a,
        Err(e) => return e.into_response(),
    };
    // A cross-origin EventSource (already allowed by `admit`) may read the stream.
    let cors = headers.get(header::ORIGIN).cloned();
    let mut registered = register(&app, admitted).await;
    for (channel, since) in wanted {
        registered
            .session
            .subscribe_for_client(channel, since.as_ref());
    }
    let conn = registered.session.conn().clone();
    tracing::debug!(conn_id = %conn.conn_id, user_id = %conn.identity.user, "sse connected");
    let stream = Events {
        conn,
        hub: app.hub.clone(),
        metrics: app.metrics.clone(),
        live: Some(registered),
        control: Vec::new(),
        data: Vec::new(),
    };
    let mut res = Response::new(Body::from_stream(stream));
    *res.status_mut() = StatusCode::OK;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-transform"),
    );
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    if let Some(origin) = cors {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
    }
    res
}

/// The response body: the connection's queue drained as events, one chunk per batch.
/// Dropped by hyper when the client goes away, which unregisters the connection.
struct Events {
    conn: Arc<ConnHandle>,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    /// The registration and session; let go as soon as the connection closes, so a
    /// client that stops reading cannot keep a closed connection registered.
    live: Option<Registered>,
    control: Vec<Frame>,
    data: Vec<Queued>,
}

impl futures_util::Stream for Events {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.live.is_none() {
            return Poll::Ready(None);
        }
        let batch = match this
            .conn
            .outbox
            .poll_next_batch(cx, &mut this.control, &mut this.data)
        {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(b) => b,
        };
        let mut out = BytesMut::new();
        let mut closed = batch == Batch::Finish;
        for f in this.control.drain(..) {
            match opcode(&f) {
                // The sweeper's heartbeat: a comment, and proof the stream is written.
                OP_PING => {
                    out.extend_from_slice(b": ping\n\n");
                    this.conn.last_seen_ms.store(this.hub.now_ms(), Relaxed);
                }
                OP_TEXT => write_event(&mut out, &f),
                _ => {}
            }
        }
        if !this.data.is_empty() {
            this.metrics
                .latency
                .record_batch(Instant::now(), this.data.iter().map(|q| q.accepted));
        }
        for q in this.data.drain(..) {
            if opcode(&q.frame) == OP_CLOSE {
                write_close(&mut out, q.frame.payload());
                closed = true;
            } else {
                write_event(&mut out, &q.frame);
            }
        }
        if closed {
            tracing::debug!(conn_id = %this.conn.conn_id, "sse disconnected");
            this.live = None;
        }
        if out.is_empty() {
            // Nothing to say (a pong, say): ask again at once; an ended stream says None.
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        Poll::Ready(Some(Ok(out.freeze())))
    }
}

fn opcode(f: &Frame) -> u8 {
    f.as_bytes().first().map_or(0, |b| b & 0x0F)
}

/// One frame as an event: `event: <type>`, `id: <epoch>:<offset>` for a channel
/// publication, and the JSON as `data` lines (a publisher's raw JSON may hold line
/// breaks; each line is its own `data:` and the client joins them back).
fn write_event(out: &mut BytesMut, f: &Frame) {
    let json = f.payload();
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(frame_type(json).as_bytes());
    out.extend_from_slice(b"\n");
    if let Some((offset, epoch)) = f
        .tag()
        .filter(|t| t.skipped == 0)
        .and_then(|t| t.position.as_ref())
    {
        out.extend_from_slice(format!("id: {epoch}:{offset}\n").as_bytes());
    }
    for line in json.split(|b| *b == b'\n') {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line.strip_suffix(b"\r").unwrap_or(line));
        out.extend_from_slice(b"\n");
    }
    out.extend_from_slice(b"\n");
}

/// `event: close` with `{"code","reason"}` from a close frame's payload.
fn write_close(out: &mut BytesMut, payload: &[u8]) {
    let code = match payload {
        [a, b, ..] => u16::from_be_bytes([*a, *b]),
        _ => 1000,
    };
    let reason = payload
        .get(2..)
        .map(String::from_utf8_lossy)
        .unwrap_or_default();
    let body = serde_json::json!({"code": code, "reason": reason});
    out.extend_from_slice(format!("event: close\ndata: {body}\n\n").as_bytes());
}

/// The `type` of one of herald's frames: its first key, as every server frame is
/// serialized; anything else is read as JSON (and `message` if it has none).
fn frame_type(json: &[u8]) -> String {
    let quick = json
        .strip_prefix(br#"{"type":""#)
        .and_then(|rest| {
            rest.iter()
                .position(|b| *b == b'"')
                .and_then(|n| rest.get(..n))
        })
        .filter(|t| t.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'_'));
    if let Some(t) = quick {
        return String::from_utf8_lossy(t).into_owned();
    }
    #[derive(serde::Deserialize)]
    struct Typed {
        #[serde(rename = "type")]
        kind: Option<String>,
    }
    serde_json::from_slice::<Typed>(json)
        .ok()
        .and_then(|t| t.kind)
        .filter(|k| !k.is_empty() && !k.contains(['\n', '\r']))
        .unwrap_or_else(|| "message".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_named_by_type_and_publications_carry_their_position() {
        let data =
            serde_json::value::to_raw_value(&serde_json::json!({"a": 1})).unwrap_or_default();
        let f = crate::protocol::server::pub_frame(
            Some("news"),
            Some(crate::protocol::server::Position {
                offset: 7,
                epoch: "9f2c",
            }),
            &data,
        );
        let mut out = BytesMut::new();
        write_event(&mut out, &f);
        assert_eq!(
            &out[..],
            &b"event: pub\nid: 9f2c:7\ndata: {\"type\":\"pub\",\"channel\":\"news\",\"offset\":7,\"epoch\":\"9f2c\",\"data\":{\"a\":1}}\n\n"[..]
        );
        // A publisher's raw JSON with a line break stays one event.
        let raw = serde_json::value::RawValue::from_string("{\"a\":\n1}".into())
            .unwrap_or_else(|_| data.clone());
        let mut out = BytesMut::new();
        write_event(
            &mut out,
            &crate::protocol::server::pub_frame(None, None, &raw),
        );
        assert_eq!(
            &out[..],
            &b"event: pub\ndata: {\"type\":\"pub\",\"data\":{\"a\":\ndata: 1}}\n\n"[..]
        );
        let mut out = BytesMut::new();
        write_close(&mut out, Frame::close(4000, "slow consumer").payload());
        assert_eq!(
            &out[..],
            &b"event: close\ndata: {\"code\":4000,\"reason\":\"slow consumer\"}\n\n"[..]
        );
        assert_eq!(frame_type(br#"{"kind":1,"type":"odd"}"#), "odd");
        assert_eq!(frame_type(br#"{"type":"a\nb"}"#), "message");
    }

    #[test]
    fn positions_parse_as_epoch_colon_offset() {
        let p = position("9f2c01ab5d3e7a10:41").unwrap_or_else(|| Since {
            offset: 0,
            epoch: String::new(),
        });
        assert_eq!((p.offset, p.epoch.as_str()), (41, "9f2c01ab5d3e7a10"));
        assert!(position("41").is_none());
        assert!(position(":41").is_none());
        assert!(position("e:x").is_none());
    }
}
