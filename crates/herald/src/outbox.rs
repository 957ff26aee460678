//! A connection's bounded outbound queue: the only place the hub and a socket meet.
//!
//! Publishers push without ever waiting: a push takes a plain mutex for a few
//! instructions and wakes the connection's task (one waker: the task that reads and
//! writes the socket is the outbox's only consumer). The queue is bounded in messages
//! AND bytes, and the bound counts the batch the writer is still writing (so a stalled socket holds at
//! most one queue's worth, not two); a full queue is reported to the caller, which
//! applies the slow-consumer policy. Control
//! frames (pong, ping) and the final close frame skip the queue and its limits, so a
//! client stuck behind a backlog still gets its pong or its close code.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Instant;

use futures_util::task::AtomicWaker;

use crate::protocol::server::skipped_frame;
use crate::wake::Resident;
use crate::ws::frame::{Frame, Tag};

/// A queued frame and when its publication was accepted (for delivery latency).
pub struct Queued {
    pub frame: Frame,
    pub accepted: Instant,
}

/// The result of a non-blocking push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    Queued,
    /// The queue is at its message or byte limit: the frame was not queued.
    Full,
    /// The connection is closing: the frame was not queued.
    Closed,
}

/// How many pending control frames we keep; a peer that pings faster than it reads
/// gets pongs for the most recent pings only (RFC 6455 §5.5.3 allows that).
const MAX_CONTROL: usize = 64;

#[derive(Default)]
struct State {
    /// Data that jumps the queue (targeted `device_command`): written before `frames`.
    priority: VecDeque<Queued>,
    frames: VecDeque<Queued>,
    /// Bytes of `priority` + `frames`.
    bytes: usize,
    /// The batch handed to the writer and not yet written: it still counts.
    inflight_messages: usize,
    inflight_bytes: usize,
    control: VecDeque<Frame>,
    close: Option<Frame>,
    closing: bool,
    close_taken: bool,
    /// The writer found nothing and waits: the next push wakes it. While it writes, a
    /// push only queues (the writer takes it when it comes back), so frames pushed
    /// meanwhile coalesce into its next `writev` instead of costing a wake-up each.
    waiting: bool,
}

pub struct Outbox {
    state: Mutex<State>,
    /// Set once closing starts; read without the lock by the connection's task, which
    /// polls for it on every wake-up (a cancellation token took two locks per poll).
    closing: AtomicBool,
    /// The connection's task, woken when something is queued or closing starts. One
    /// consumer, so one waker: no waiter list (a `Notify` kept one, and its waiting
    /// future lived in every idle connection).
    waker: AtomicWaker,
    /// The limits, as u32 (a queue of 4 GiB is more than any configuration means): an
    /// outbox sits beside every connection, and its size is theirs.
    max_messages: u32,
    max_bytes: u32,
    /// The worker the connection lives on (None: the main runtime): a push from
    /// another thread's fan-out wakes it with that worker's other connections.
    home: Option<Resident>,
}

/// Adds what `dropped` stood for to the notices being gathered: a publication counts
/// one, a notice what it stood for; per channel, the earliest offset to recover from.
fn note(skipped: &mut Vec<Tag>, dropped: &Frame) {
    let Some(t) = dropped.tag() else { return };
    let count = t.skipped.max(1);
    // A publication's recovery point is the offset before it; a notice's is its own.
    let from = |t: &Tag| match (&t.position, t.skipped) {
        (Some((o, e)), 0) => Some((o.saturating_sub(1), e.clone())),
        (p, _) => p.clone(),
    };
    match skipped.iter_mut().find(|n| n.channel == t.channel) {
        Some(n) => {
            n.skipped += count;
            let earlier = match (&n.position, from(t)) {
                (Some(a), Some(b)) if b.0 < a.0 => Some(b),
                (Some(a), _) => Some(a.clone()),
                (None, b) => b,
            };
            n.position = earlier;
        }
        None => skipped.push(Tag {
            channel: t.channel.clone(),
            position: from(t),
            skipped: count,
        }),
    }
}

/// Takes the oldest queued channel frame (a publication or a notice: what a `skipped`
/// notice can stand for) out of `lane`. Replies (`subscribed`, `ack`, `error`) and
/// user-addressed publications stay: dropping those would be a loss nobody is told of.
fn oldest_channel_frame(lane: &mut VecDeque<Queued>) -> Option<Queued> {
    let i = lane.iter().position(|q| q.frame.tag().is_some())?;
    lane.remove(i)
}

/// Queues the gathered notices on the control lane — written before any data still
/// queued, which is all newer than what was dropped — each merged with a notice for
/// its channel that is still waiting there.
fn notify(s: &mut State, skipped: Vec<Tag>) {
    for mut n in skipped {
        if let Some(i) = s
            .control
            .iter()
            .position(|f| f.tag().is_some_and(|t| t.channel == n.channel))
        {
            if let Some(waiting) = s.control.remove(i) {
                let mut merged = vec![n];
                note(&mut merged, &waiting);
                let Some(m) = merged.pop() else { continue };
                n = m;
            }
        }
        s.control
            .push_back(skipped_frame(&n.channel, n.skipped, n.position.as_ref()));
    }
}

/// What the writer should do with the batch it was handed.
#[derive(Debug, PartialEq, Eq)]
pub enum Batch {
    /// Write the frames, then ask again.
    Write,
    /// Write the frames (ending with the close frame, if any), then shut the socket.
    Finish,
}

impl Outbox {
    pub fn new(max_messages: usize, max_bytes: usize) -> Outbox {
        Outbox::living_on(max_messages, max_bytes, None)
    }

    /// An outbox whose connection lives on the worker `home` ([`crate::shard`]).
    pub fn living_on(max_messages: usize, max_bytes: usize, home: Option<Resident>) -> Outbox {
        Outbox {
            state: Mutex::new(State::default()),
            closing: AtomicBool::new(false),
            waker: AtomicWaker::new(),
            max_messages: u32::try_from(max_messages).unwrap_or(u32::MAX),
            max_bytes: u32::try_from(max_bytes).unwrap_or(u32::MAX),
            home,
        }
    }

    fn wake(&self) {
        crate::wake::wake(&self.waker, self.home.as_ref().map(Resident::inbox));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock only means another thread panicked mid-push; the queue itself
        // is still a valid VecDeque, so keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a data frame unless the queue is full or closing. Never waits.
    pub fn try_push(&self, frame: Frame, accepted: Instant) -> Push {
        self.push_to(frame, accepted, false)
    }

    /// Queues a data frame ahead of everything already queued (the priority lane). It
    /// counts against the same limits as any data frame.
    pub fn try_push_priority(&self, frame: Frame, accepted: Instant) -> Push {
        self.push_to(frame, accepted, true)
    }

    /// Ends a push: lets go of the lock, then wakes the writer if it waits for work.
    fn unlock_and_wake(&self, mut s: std::sync::MutexGuard<'_, State>) {
        let wake = std::mem::take(&mut s.waiting);
        drop(s);
        if wake {
            self.wake();
        }
    }

    fn has_room(&self, s: &State, messages: usize, bytes: usize) -> bool {
        s.frames.len() + s.priority.len() + s.inflight_messages + messages
            <= self.max_messages as usize
            && s.bytes + s.inflight_bytes + bytes <= self.max_bytes as usize
    }

    /// Queues all of `frames`, in order, or none of them (a replay is whole or absent).
    pub fn try_push_all(&self, frames: Vec<Frame>, accepted: Instant) -> Push {
        let mut s = self.lock();
        if s.closing {
            return Push::Closed;
        }
        let bytes: usize = frames.iter().map(Frame::len).sum();
        if !self.has_room(&s, frames.len(), bytes) {
            return Push::Full;
        }
        s.bytes += bytes;
        s.frames
            .extend(frames.into_iter().map(|frame| Queued { frame, accepted }));
        self.unlock_and_wake(s);
        Push::Queued
    }

    fn push_to(&self, frame: Frame, accepted: Instant, priority: bool) -> Push {
        let mut s = self.lock();
        if s.closing {
            return Push::Closed;
        }
        if !self.has_room(&s, 1, frame.len()) {
            return Push::Full;
        }
        s.bytes += frame.len();
        let lane = if priority {
            &mut s.priority
        } else {
            &mut s.frames
        };
        lane.push_back(Queued { frame, accepted });
        self.unlock_and_wake(s);
        Push::Queued
    }

    /// The `drop_oldest` policy: makes room by discarding the oldest queued channel
    /// frames (never a reply or a user-addressed frame), then queues `frame` — or,
    /// when nothing else could go, drops `frame` itself. Returns how many frames were dropped (the new one counts if
    /// it alone is larger than the byte limit). What a dropped channel publication was
    /// is not lost in silence: a `skipped` notice per channel goes ahead of what is
    /// still queued (all of it newer), merged with one not yet written.
    pub fn push_drop_oldest(&self, frame: Frame, accepted: Instant) -> usize {
        let mut s = self.lock();
        if s.closing {
            return 0;
        }
        if frame.len() > self.max_bytes as usize {
            let mut skipped = Vec::new();
            note(&mut skipped, &frame);
            notify(&mut s, skipped);
            self.unlock_and_wake(s);
            return 1;
        }
        let mut dropped = 0;
        let mut skipped = Vec::new();
        while !self.has_room(&s, 1, frame.len()) {
            let Some(old) = oldest_channel_frame(&mut s.frames)
                .or_else(|| oldest_channel_frame(&mut s.priority))
            else {
                if s.frames.is_empty() && s.priority.is_empty() {
                    // Only the batch in flight is left: it is written or the socket
                    // dies soon (write deadline); one frame beyond it is the bound.
                    break;
                }
                // What is queued is replies and user-addressed frames, which no notice
                // could stand for: the new publication is the one that goes, told.
                note(&mut skipped, &frame);
                notify(&mut s, skipped);
                self.unlock_and_wake(s);
                return dropped + usize::from(frame.tag().is_none_or(|t| t.skipped == 0));
            };
            s.bytes -= old.frame.len();
            note(&mut skipped, &old.frame);
            dropped += usize::from(old.frame.tag().is_none_or(|t| t.skipped == 0));
        }
        notify(&mut s, skipped);
        s.bytes += frame.len();
        s.frames.push_back(Queued { frame, accepted });
        self.unlock_and_wake(s);
        dropped
    }

    /// Queues a control frame (pong, ping) ahead of data.
    pub fn push_control(&self, frame: Frame) {
        let mut s = self.lock();
        if s.closing {
            return;
        }
        if s.control.len() >= MAX_CONTROL {
            // The oldest ping or pong goes; a `skipped` notice (one per channel) stays.
            match s.control.iter().position(|f| f.tag().is_none()) {
                Some(i) => {
                    s.control.remove(i);
                }
                None => return,
            }
        }
        s.control.push_back(frame);
        self.unlock_and_wake(s);
    }

    /// Starts closing: `close` (if any) is the last frame written. With `discard`, data
    /// still queued is dropped (slow consumer); otherwise it is flushed first.
    /// Returns false if the connection was already closing: the first close wins, so a
    /// connection is closed exactly once whoever asks.
    pub fn close(&self, close: Option<Frame>, discard: bool) -> bool {
        let mut s = self.lock();
        if s.closing {
            return false;
        }
        s.closing = true;
        s.close = close;
        if discard {
            s.frames.clear();
            s.priority.clear();
            s.bytes = 0;
            s.inflight_messages = 0;
            s.inflight_bytes = 0;
        }
        drop(s);
        // Always woken: the reader side waits for closing too, not only the writer.
        self.closing.store(true, Ordering::Release);
        self.wake();
        true
    }

    /// Resolves once the connection started closing (by anyone).
    /// One waiter only: the connection's own task (a second one would take the first's
    /// place). Cheap to create and poll on every wake-up: two atomic loads and, when the
    /// waker is the same as last time, no store.
    /// (The connection's task reads [`Outbox::is_closing`] on each wake-up instead; this
    /// future shows the wake-up it relies on.)
    #[cfg(test)]
    pub fn closed(&self) -> impl std::future::Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| self.poll_closed(cx))
    }

    #[cfg(test)]
    fn poll_closed(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.closing.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        if self.closing.load(Ordering::Acquire) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Number of data frames waiting or being written.
    pub fn depth(&self) -> usize {
        let s = self.lock();
        s.frames.len() + s.priority.len() + s.inflight_messages
    }

    /// Takes every queued data frame at once, as a writer that wrote them all would: lets
    /// a test read what a connection was sent without a socket or a runtime.
    #[cfg(test)]
    pub fn take_all_now(&self) -> Vec<Frame> {
        let mut s = self.lock();
        s.bytes = 0;
        s.inflight_messages = 0;
        s.inflight_bytes = 0;
        let State {
            priority, frames, ..
        } = &mut *s;
        priority
            .drain(..)
            .chain(frames.drain(..))
            .map(|q| q.frame)
            .collect()
    }

    /// Waits until there is something to write and moves all of it into `control` and
    /// `data` (control first). Cancel-safe: nothing is taken before the wait completes.
    /// Calling it again means the previous batch was written: it stops counting.
    pub async fn next_batch(&self, control: &mut Vec<Frame>, data: &mut Vec<Queued>) -> Batch {
        std::future::poll_fn(|cx| self.poll_next_batch(cx, control, data)).await
    }

    /// [`Outbox::next_batch`] as a poll: `Pending` registers the task to wake when
    /// something is queued. Only the connection's own task may call it (one waker).
    pub fn poll_next_batch(
        &self,
        cx: &mut Context<'_>,
        control: &mut Vec<Frame>,
        data: &mut Vec<Queued>,
    ) -> Poll<Batch> {
        // Registered before looking, so a push after the look wakes us.
        self.waker.register(cx.waker());
        let mut s = self.lock();
        s.inflight_messages = 0;
        s.inflight_bytes = 0;
        s.waiting = false;
        let has_work = !s.control.is_empty()
            || !s.priority.is_empty()
            || !s.frames.is_empty()
            || (s.closing && !s.close_taken);
        if has_work {
            // The queues' buffers go to the writer with their frames, and the writer's
            // emptied ones come back: a busy connection reuses two buffers instead of
            // growing a fresh one per batch (fresh pages cost the kernel a clearing
            // each). Going idle frees them (below).
            take_into(control, &mut s.control);
            s.inflight_messages = s.frames.len() + s.priority.len();
            s.inflight_bytes = s.bytes;
            let State {
                priority, frames, ..
            } = &mut *s;
            take_into(data, priority);
            take_into(data, frames);
            s.bytes = 0;
            if s.closing {
                s.close_taken = true;
                if let Some(close) = s.close.take() {
                    control.clear();
                    data.push(Queued {
                        frame: close,
                        accepted: Instant::now(),
                    });
                }
                return Poll::Ready(Batch::Finish);
            }
            return Poll::Ready(Batch::Write);
        }
        if s.close_taken {
            return Poll::Ready(Batch::Finish);
        }
        // Going idle: neither the queues nor the writer keep a buffer (all empty). They
        // are freed after the lock is let go: a push from another thread waits for the
        // lock only as long as a few stores take, never for the allocator.
        let idle = (
            std::mem::take(&mut s.control),
            std::mem::take(&mut s.priority),
            std::mem::take(&mut s.frames),
        );
        s.waiting = true;
        drop(s);
        drop(idle);
        *control = Vec::new();
        *data = Vec::new();
        Poll::Pending
    }
}

/// Moves everything in `queue` to the end of `into`. Into an empty `into` the queue's own
/// buffer moves (no copy, no allocation) and the queue gets `into`'s spare capacity.
fn take_into<T>(into: &mut Vec<T>, queue: &mut VecDeque<T>) {
    if queue.is_empty() {
        return;
    }
    if into.is_empty() {
        let spare = VecDeque::from(std::mem::take(into));
        *into = Vec::from(std::mem::replace(queue, spare));
    } else {
        into.extend(queue.drain(..));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_queue_slot_is_a_pointer_and_a_time() {
        // Every recipient of a publication gets one slot: a burst's queues are these.
        assert_eq!(size_of::<Frame>(), 8);
        assert!(size_of::<Queued>() <= 24, "{}", size_of::<Queued>());
    }

    #[test]
    fn an_idle_outbox_holds_no_queue_buffers() {
        let o = Outbox::new(100, 1 << 20);
        let now = Instant::now();
        o.try_push(Frame::text(b"a"), now);
        o.try_push_priority(Frame::text(b"b"), now);
        o.push_control(Frame::new(crate::ws::frame::OP_PING, b""));
        let (mut control, mut data) = (Vec::new(), Vec::new());
        let batch = futures_util::FutureExt::now_or_never(o.next_batch(&mut control, &mut data));
        assert_eq!(batch, Some(Batch::Write));
        assert_eq!((control.len(), data.len()), (1, 2));
        assert_eq!(data[0].frame, Frame::text(b"b"), "priority first");
        // Written: the writer empties its buffers and asks again. Busy, they swap back
        // into the queues for the next batch...
        control.clear();
        data.clear();
        o.try_push(Frame::text(b"c"), now);
        let batch = futures_util::FutureExt::now_or_never(o.next_batch(&mut control, &mut data));
        assert_eq!(batch, Some(Batch::Write));
        assert_eq!(data.len(), 1);
        assert!(data.capacity() >= 2, "the first batch's buffer came back");
        // ...idle, nothing keeps one: neither the writer's nor the queues.
        control.clear();
        data.clear();
        let waiting = futures_util::FutureExt::now_or_never(o.next_batch(&mut control, &mut data));
        assert_eq!(waiting, None, "nothing to write: it waits");
        assert_eq!((control.capacity(), data.capacity()), (0, 0));
        let s = o.lock();
        assert_eq!(
            (
                s.frames.capacity(),
                s.priority.capacity(),
                s.control.capacity()
            ),
            (0, 0, 0),
            "an idle outbox keeps no buffer"
        );
    }

    #[tokio::test]
    async fn closed_wakes_its_waiter_when_closing_starts() {
        let o = Arc::new(Outbox::new(10, 1 << 20));
        let waiter = tokio::spawn({
            let o = o.clone();
            async move { o.closed().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        assert!(o.close(None, false));
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .unwrap();
        assert!(futures_util::FutureExt::now_or_never(o.closed()).is_some());
    }

    #[test]
    fn full_by_messages_or_bytes() {
        let o = Outbox::new(2, 10);
        let now = Instant::now();
        assert_eq!(o.try_push(Frame::text(b"a"), now), Push::Queued);
        assert_eq!(o.try_push(Frame::text(b"b"), now), Push::Queued);
        assert_eq!(o.try_push(Frame::text(b"c"), now), Push::Full);
        let o = Outbox::new(100, 10);
        assert_eq!(o.try_push(Frame::text(b"0123456789"), now), Push::Full);
    }

    #[tokio::test]
    async fn what_drop_oldest_drops_of_a_channel_is_told_once_merged_ahead_of_the_rest() {
        use crate::protocol::server::{pub_frame, Position};
        let o = Outbox::new(2, 10_000);
        let now = Instant::now();
        let data = serde_json::value::to_raw_value(&1).unwrap_or_default();
        let p = |ch: &str, offset: u64| {
            pub_frame(Some(ch), Some(Position { offset, epoch: "e" }), &data)
        };
        o.try_push(p("a", 5), now);
        o.try_push(p("b", 1), now);
        // 5 of `a`, then 1 of `b`, then 6 of `a` are dropped for what comes after.
        assert_eq!(o.push_drop_oldest(p("a", 6), now), 1);
        assert_eq!(o.push_drop_oldest(p("a", 7), now), 1);
        assert_eq!(o.push_drop_oldest(p("a", 8), now), 1);
        let untagged = pub_frame(None, None, &data);
        o.push_control(Frame::new(crate::ws::frame::OP_PONG, b""));
        let (mut c, mut d) = (Vec::new(), Vec::new());
        o.next_batch(&mut c, &mut d).await;
        let told: Vec<serde_json::Value> = c
            .iter()
            .filter(|f| f.tag().is_some())
            .map(|f| serde_json::from_slice(f.payload()).unwrap_or_default())
            .collect();
        assert_eq!(
            told,
            vec![
                serde_json::json!({"type": "skipped", "channel": "b", "count": 1, "offset": 0, "epoch": "e"}),
                serde_json::json!({"type": "skipped", "channel": "a", "count": 2, "offset": 4, "epoch": "e"}),
            ],
            "one notice per channel, from the earliest offset missed"
        );
        let left: Vec<_> = d.iter().map(|q| q.frame.clone()).collect();
        assert_eq!(left, vec![p("a", 7), p("a", 8)]);
        // A reply or a user-addressed frame is never dropped for a publication: with
        // nothing else queued, the new publication is the one that goes, told.
        let o = Outbox::new(2, 10_000);
        o.try_push(untagged.clone(), now);
        o.try_push(p("a", 1), now);
        assert_eq!(o.push_drop_oldest(p("a", 2), now), 1);
        assert_eq!(o.push_drop_oldest(p("a", 3), now), 1);
        let (mut c, mut d) = (Vec::new(), Vec::new());
        o.next_batch(&mut c, &mut d).await;
        let left: Vec<_> = d.iter().map(|q| q.frame.clone()).collect();
        assert_eq!(left, vec![untagged, p("a", 3)], "the reply stays");
        let told: Vec<serde_json::Value> = c
            .iter()
            .map(|f| serde_json::from_slice(f.payload()).unwrap_or_default())
            .collect();
        assert_eq!(
            told,
            vec![
                serde_json::json!({"type": "skipped", "channel": "a", "count": 2, "offset": 0, "epoch": "e"})
            ]
        );
        let o = Outbox::new(1, 10_000);
        let reply = Frame::text(br#"{"type":"subscribed"}"#);
        o.try_push(reply.clone(), now);
        assert_eq!(o.push_drop_oldest(p("b", 9), now), 1);
        let (mut c, mut d) = (Vec::new(), Vec::new());
        o.next_batch(&mut c, &mut d).await;
        let left: Vec<_> = d.iter().map(|q| q.frame.clone()).collect();
        assert_eq!(left, vec![reply]);
        assert_eq!(c.len(), 1, "the dropped publication is told");
    }

    #[tokio::test]
    async fn priority_jumps_the_queue_and_drop_oldest_keeps_the_newest() {
        use crate::protocol::server::pub_frame;
        let o = Outbox::new(3, 1000);
        let now = Instant::now();
        let data = serde_json::value::to_raw_value(&1).unwrap_or_default();
        let p = |n: i32| {
            let data = serde_json::value::to_raw_value(&n).unwrap_or_default();
            pub_frame(Some("c"), None, &data)
        };
        o.try_push(p(1), now);
        o.try_push(p(2), now);
        let cmd = pub_frame(None, None, &data);
        assert_eq!(o.try_push_priority(cmd.clone(), now), Push::Queued);
        assert_eq!(
            o.try_push_priority(Frame::text(b"x"), now),
            Push::Full,
            "same limits"
        );
        assert_eq!(o.push_drop_oldest(p(3), now), 1);
        assert_eq!(o.push_drop_oldest(p(4), now), 1);
        let (mut c, mut d) = (Vec::new(), Vec::new());
        o.next_batch(&mut c, &mut d).await;
        let got: Vec<_> = d.iter().map(|q| q.frame.clone()).collect();
        assert_eq!(got, vec![cmd, p(3), p(4)]);
    }

    #[tokio::test]
    async fn the_batch_in_flight_counts_until_the_writer_comes_back() {
        let o = Outbox::new(2, 100);
        let now = Instant::now();
        o.try_push(Frame::text(b"1"), now);
        o.try_push(Frame::text(b"2"), now);
        let (mut c, mut d) = (Vec::new(), Vec::new());
        o.next_batch(&mut c, &mut d).await;
        assert_eq!(o.depth(), 2, "being written still counts");
        assert_eq!(o.try_push(Frame::text(b"3"), now), Push::Full);
        assert_eq!(o.try_push_priority(Frame::text(b"x"), now), Push::Full);
        // The writer asks for more: the previous batch is written, room is back.
        d.clear();
        let wait = tokio::time::timeout(
            std::time::Duration::from_millis(10),
            o.next_batch(&mut c, &mut d),
        );
        assert!(wait.await.is_err(), "nothing queued: the writer waits");
        assert_eq!(o.depth(), 0);
        assert_eq!(o.try_push(Frame::text(b"3"), now), Push::Queued);
    }

    #[test]
    fn a_batch_is_queued_whole_or_not_at_all() {
        let o = Outbox::new(3, 100);
        let now = Instant::now();
        o.try_push(Frame::text(b"a"), now);
        let three = vec![Frame::text(b"1"), Frame::text(b"2"), Frame::text(b"3")];
        assert_eq!(o.try_push_all(three, now), Push::Full);
        assert_eq!(o.depth(), 1, "nothing of a refused batch is queued");
        let two = vec![Frame::text(b"1"), Frame::text(b"2")];
        assert_eq!(o.try_push_all(two, now), Push::Queued);
        assert_eq!(o.depth(), 3);
    }

    #[test]
    fn close_is_idempotent_and_refuses_new_frames() {
        let o = Outbox::new(2, 100);
        assert!(o.close(None, true));
        assert!(!o.close(None, true));
        assert_eq!(o.try_push(Frame::text(b"a"), Instant::now()), Push::Closed);
    }

    #[tokio::test]
    async fn batch_drains_everything_control_first_and_close_last() {
        let o = Outbox::new(10, 1000);
        let now = Instant::now();
        o.try_push(Frame::text(b"1"), now);
        o.push_control(Frame::new(crate::ws::frame::OP_PONG, b""));
        o.try_push(Frame::text(b"2"), now);
        let (mut c, mut d) = (Vec::new(), Vec::new());
        assert_eq!(o.next_batch(&mut c, &mut d).await, Batch::Write);
        assert_eq!((c.len(), d.len()), (1, 2));
        o.try_push(Frame::text(b"3"), now);
        o.close(Some(Frame::close(1001, "bye")), false);
        let (mut c, mut d) = (Vec::new(), Vec::new());
        assert_eq!(o.next_batch(&mut c, &mut d).await, Batch::Finish);
        assert_eq!(d.len(), 2, "flushes queued data, then the close frame");
        assert_eq!(d[1].frame, Frame::close(1001, "bye"));
        assert_eq!(o.next_batch(&mut c, &mut d).await, Batch::Finish);
    }
}
