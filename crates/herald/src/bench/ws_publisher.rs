//! The pipelined backend publisher (`--publisher ws`, DESIGN §7): one `/ws` connection
//! opened with the API key, `publish` frames written as they fall due — everything due
//! at once in one write — with up to [`WINDOW`] unanswered, and the acks (which come
//! back in order) counted by a reader task. Unlike the HTTP publisher, nothing waits
//! for an answer before the next publication leaves.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::Notify;

use super::client::{masked, open_with};
use super::publisher::Outcome;
use super::stamp::publish_body;
use crate::ws::frame::OP_TEXT;
use crate::ws::message::{Message, MessageReader};

/// Publications sent and not yet answered, at most: below the server's default
/// `ws.max_in_flight` (1,000), so the server never refuses one for the window.
pub const WINDOW: u64 = 512;
/// How long the answers to the last publications may take.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

pub struct WsPlan {
    pub addr: SocketAddr,
    pub host: String,
    pub api_key: String,
    pub rate: u32,
    pub duration: Duration,
    pub payload: usize,
    /// The frame's target member: [`Audience::member`](super::Audience::member).
    pub to: String,
}

/// What the reader task has seen: acks and errors, in the order they came.
#[derive(Default)]
struct Answers {
    acked: AtomicU64,
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
    /// Woken after each read that brought answers.
    arrived: Notify,
}

impl Answers {
    fn answered(&self) -> u64 {
        self.acked.load(Relaxed) + self.failed.load(Relaxed)
    }
}

/// Publishes `rate × duration` times over one backend connection; returns once every
/// publication is answered, or [`ANSWER_TIMEOUT`] after the last one left. `queued` is
/// left at 0: an `ack` does not say how many it reached (the caller expects every
/// connected client).
pub async fn run(plan: &WsPlan, base: Instant) -> Outcome {
    let total = u64::from(plan.rate) * plan.duration.as_secs();
    let mut out = Outcome::default();
    let header = format!("X-API-Key: {}\r\n", plan.api_key);
    let conn = match open_with(plan.addr, None, &plan.host, "/ws", &header).await {
        Ok((conn, _connected)) => conn,
        Err(e) => {
            out.failed = total;
            out.first_error = Some(format!("backend connection: {e}"));
            return out;
        }
    };
    let (stream, buf, reader) = conn.into_parts();
    let (read_half, mut write_half) = stream.into_split();
    let answers = Arc::new(Answers::default());
    let reading = tokio::spawn(read_answers(read_half, buf, reader, answers.clone()));

    let start = Instant::now();
    let deadline = start + plan.duration + Duration::from_secs(1);
    let mut frames = BytesMut::new();
    while out.sent < total {
        let now = Instant::now();
        if now > deadline {
            out.skipped = total - out.sent;
            break;
        }
        // Due by now at the plan's rate (at least the first one at once).
        let due = ((now - start).as_secs_f64() * f64::from(plan.rate)) as u64 + 1;
        let due = due.min(total);
        let room = WINDOW.saturating_sub(out.sent - answers.answered());
        let n = due.saturating_sub(out.sent).min(room);
        if n == 0 {
            if due > out.sent {
                // The window is full: wait for answers.
                out.cap_waits += 1;
                let _ = tokio::time::timeout(Duration::from_millis(5), answers.arrived.notified())
                    .await;
            } else {
                let next = start + Duration::from_secs_f64(due as f64 / f64::from(plan.rate));
                tokio::time::sleep_until(next.into()).await;
            }
            continue;
        }
        // Stamped as late as possible: the latency includes the trip to the server.
        let stamp = base.elapsed().as_nanos() as u64;
        let body = publish_body(stamp, plan.payload, &plan.to);
        let frame = publish_frame(&body);
        frames.clear();
        for _ in 0..n {
            masked(&mut frames, OP_TEXT, frame.as_bytes());
        }
        if let Err(e) = write_half.write_all(&frames).await {
            out.failed += total - out.sent;
            out.first_error.get_or_insert(format!("send: {}", e.kind()));
            break;
        }
        out.sent += n;
    }
    let _ = tokio::time::timeout(ANSWER_TIMEOUT, async {
        while answers.answered() < out.sent {
            let _ =
                tokio::time::timeout(Duration::from_millis(5), answers.arrived.notified()).await;
        }
    })
    .await;
    out.elapsed = start.elapsed();
    reading.abort();
    out.ok = answers.acked.load(Relaxed);
    out.failed += answers.failed.load(Relaxed);
    if let Ok(mut e) = answers.first_error.lock() {
        if let Some(e) = e.take() {
            out.first_error.get_or_insert(e);
        }
    }
    out
}

/// `{"type":"publish", …the /api/publish body…}`.
fn publish_frame(body: &str) -> String {
    format!(
        r#"{{"type":"publish",{}"#,
        body.strip_prefix('{').unwrap_or(body)
    )
}

/// Counts `ack`s and `error`s until the socket ends (or the task is aborted).
async fn read_answers(
    mut stream: OwnedReadHalf,
    mut buf: BytesMut,
    mut reader: MessageReader,
    answers: Arc<Answers>,
) {
    loop {
        let (mut acked, mut failed) = (0, 0);
        loop {
            match reader.next_message(&mut buf) {
                Ok(Some(Message::Text(t))) => {
                    if contains(&t, br#""type":"ack""#) {
                        acked += 1;
                    } else if contains(&t, br#""type":"error""#) {
                        failed += 1;
                        if let Ok(mut e) = answers.first_error.lock() {
                            e.get_or_insert_with(|| String::from_utf8_lossy(&t).into_owned());
                        }
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => return,
            }
        }
        if acked + failed > 0 {
            answers.acked.fetch_add(acked, Relaxed);
            answers.failed.fetch_add(failed, Relaxed);
            answers.arrived.notify_one();
        }
        buf.reserve(8 * 1024);
        match stream.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_publish_frame_is_the_api_body_with_its_type() {
        let f: serde_json::Value =
            serde_json::from_str(&publish_frame(&publish_body(7, 30, r#""channel":"news""#)))
                .unwrap();
        assert_eq!(f["type"], "publish");
        assert_eq!(f["channel"], "news");
        assert!(f["data"].as_str().unwrap().starts_with("t=7;"));
        let all: serde_json::Value =
            serde_json::from_str(&publish_frame(&publish_body(7, 30, r#""all":true"#))).unwrap();
        assert_eq!(
            (&all["type"], &all["all"]),
            (&"publish".into(), &true.into())
        );
        let user: serde_json::Value =
            serde_json::from_str(&publish_frame(&publish_body(7, 30, r#""user":"42""#))).unwrap();
        assert_eq!(
            (&user["type"], &user["user"]),
            (&"publish".into(), &"42".into())
        );
    }
}
