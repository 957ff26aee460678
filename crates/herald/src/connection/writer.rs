//! The write side of a connection, polled inside the connection's task beside the read
//! side: everything queued goes out in one vectored write (`writev`), control frames
//! first. On a connection that negotiated permessage-deflate each data frame goes out in
//! its shared compressed form.
//!
//! A hand-written state machine rather than an `async fn`: an idle connection's writer
//! is a few words (two empty vectors, two counters) instead of a suspended future with
//! its own timer, and the write deadline's timer exists only while a socket refuses
//! bytes.

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::AsyncWrite;
use tokio::time::Sleep;

use crate::metrics::{Metrics, Refusal};
use crate::outbox::{Batch, Outbox, Queued};
use crate::ws::deflate::WindowBits;
use crate::ws::frame::Frame;

/// The most slices one `writev` takes (Linux IOV_MAX). They are built on the stack per
/// call, so a batch needs no slice vector of its own: a short batch (the usual case
/// under steady load) in an array of [`FEW_SLICES`], a long one (a burst) in one of
/// this many — fewer slices per call would mean more calls, and each costs the kernel
/// far more than the bytes it copies.
const MAX_SLICES: usize = 1024;
const FEW_SLICES: usize = 16;

/// How long the final batch (ending in a close frame) may take before we give up on a
/// peer that is not reading.
const FINISH_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Waiting for the outbox.
    Idle,
    /// Writing `control` then `data`, from frame `at` byte `off`.
    Writing,
    /// Everything written; flushing (a no-op on TCP, TLS records on TLS).
    Flushing,
    /// The close frame went out: shutting down our direction.
    ShuttingDown,
    Done,
}

/// The write side's state: the batch being written and where it stands.
pub struct WriteSide {
    control: Vec<Frame>,
    data: Vec<Queued>,
    batch: Batch,
    step: Step,
    /// Frame index into `control` ++ `data`, and the byte offset within it (a batch
    /// holds at most a queue's worth: far below 2^32 frames or bytes per frame).
    at: u32,
    off: u32,
    /// Armed while the socket takes no bytes (the write deadline of DESIGN §12), and for
    /// the final batch; kept while busy, dropped when the connection goes idle.
    timer: Option<Pin<Box<Sleep>>>,
    /// The timer counts down the final batch (not a stall).
    finishing: bool,
    /// The timer counts down a stall that began after the last progress.
    stall_armed: bool,
    stall: Duration,
    deflate: Option<WindowBits>,
}

impl WriteSide {
    /// A socket that takes no bytes for `stall` is closed and counted as a slow
    /// consumer. `deflate` is the window the connection agreed to, if any.
    pub fn new(stall: Duration, deflate: Option<WindowBits>) -> WriteSide {
        WriteSide {
            control: Vec::new(),
            data: Vec::new(),
            batch: Batch::Write,
            step: Step::Idle,
            at: 0,
            off: 0,
            timer: None,
            finishing: false,
            stall_armed: false,
            stall,
            deflate,
        }
    }

    /// Writes until the outbox finishes or the socket fails; `Ready` once done (the
    /// outbox is then closed).
    pub fn poll<W>(
        &mut self,
        cx: &mut Context<'_>,
        mut w: Pin<&mut W>,
        outbox: &Outbox,
        metrics: &Metrics,
    ) -> Poll<()>
    where
        W: AsyncWrite + ?Sized,
    {
        loop {
            match self.step {
                Step::Done => return Poll::Ready(()),
                Step::Idle => {
                    let Poll::Ready(batch) =
                        outbox.poll_next_batch(cx, &mut self.control, &mut self.data)
                    else {
                        // Going idle: an idle connection keeps no timer.
                        self.timer = None;
                        self.stall_armed = false;
                        return Poll::Pending;
                    };
                    self.batch = batch;
                    (self.at, self.off) = (0, 0);
                    self.count_compressed(metrics);
                    self.step = Step::Writing;
                    if self.batch == Batch::Finish {
                        self.arm_finish();
                    }
                }
                Step::Writing | Step::Flushing => {
                    let result = match self.poll_write_batch(cx, w.as_mut()) {
                        Poll::Ready(r) => r,
                        Poll::Pending => match self.poll_timer(cx) {
                            Poll::Ready(()) => Err(io::ErrorKind::TimedOut.into()),
                            Poll::Pending => return Poll::Pending,
                        },
                    };
                    if let Err(e) = result {
                        if e.kind() == io::ErrorKind::TimedOut && !self.finishing {
                            metrics.slow_consumer_disconnects.fetch_add(1, Relaxed);
                            metrics.refuse(Refusal::WriteStalled);
                        }
                        self.release();
                        outbox.close(None, true);
                        self.step = Step::Done;
                        continue;
                    }
                    if !self.data.is_empty() {
                        metrics
                            .latency
                            .record_batch(Instant::now(), self.data.iter().map(|q| q.accepted));
                    }
                    // Emptied, not freed: the outbox swaps them back in for the next
                    // batch while the connection is busy, and frees them when it goes
                    // idle.
                    self.control.clear();
                    self.data.clear();
                    if self.batch == Batch::Finish {
                        self.arm(FINISH_TIMEOUT);
                        self.step = Step::ShuttingDown;
                    } else {
                        self.step = Step::Idle;
                    }
                }
                Step::ShuttingDown => {
                    let done = match w.as_mut().poll_shutdown(cx) {
                        Poll::Ready(_) => true,
                        Poll::Pending => self.poll_timer(cx).is_ready(),
                    };
                    if !done {
                        return Poll::Pending;
                    }
                    self.release();
                    self.step = Step::Done;
                }
            }
        }
    }

    /// Frees what a finished writer holds (the timer, the last batch).
    fn release(&mut self) {
        self.timer = None;
        self.control = Vec::new();
        self.data = Vec::new();
    }

    /// The frames of a batch that go out compressed, and the bytes that saves: counted
    /// once per batch, as the batch is taken.
    fn count_compressed(&self, metrics: &Metrics) {
        let Some(window) = self.deflate else { return };
        let (mut frames, mut bytes) = (0u64, 0u64);
        for q in &self.data {
            let wire = q.frame.wire(Some(window));
            if wire.len() < q.frame.len() {
                frames += 1;
                bytes += (q.frame.len() - wire.len()) as u64;
            }
        }
        if frames > 0 {
            metrics.compressed_deliveries.fetch_add(frames, Relaxed);
            metrics.compression_saved_bytes.fetch_add(bytes, Relaxed);
        }
    }

    /// The final batch gets [`FINISH_TIMEOUT`] (and the shutdown after it as long again).
    fn arm_finish(&mut self) {
        if !self.finishing {
            self.finishing = true;
            self.arm(FINISH_TIMEOUT);
        }
    }

    fn arm(&mut self, after: Duration) {
        let deadline = tokio::time::Instant::now() + after;
        match &mut self.timer {
            Some(t) => t.as_mut().reset(deadline),
            None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
    }

    /// The write deadline while the socket refuses bytes: armed on the first refusal
    /// after progress, so each write must make progress within `stall`.
    fn poll_timer(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if !self.finishing && !self.stall_armed {
            self.arm(self.stall);
            self.stall_armed = true;
        }
        match &mut self.timer {
            Some(t) => t.as_mut().poll(cx),
            None => Poll::Pending,
        }
    }

    /// The bytes of frame `i` of the batch: control frames, then data in its wire form.
    fn frame(&self, i: usize) -> Option<&[u8]> {
        match i.checked_sub(self.control.len()) {
            None => self.control.get(i).map(|f| f.as_bytes().as_ref()),
            Some(d) => self
                .data
                .get(d)
                .map(|q| q.frame.wire(self.deflate).as_ref()),
        }
    }

    /// Writes the batch, in order, with as few `writev` calls as the kernel allows.
    fn poll_write_batch<W>(
        &mut self,
        cx: &mut Context<'_>,
        mut w: Pin<&mut W>,
    ) -> Poll<io::Result<()>>
    where
        W: AsyncWrite + ?Sized,
    {
        while self.step == Step::Writing {
            let left = (self.control.len() + self.data.len()).saturating_sub(self.at as usize);
            if left == 0 {
                self.step = Step::Flushing;
                break;
            }
            let n = match ready!(self.poll_write_once(cx, w.as_mut(), left))? {
                None => {
                    self.step = Step::Flushing;
                    break;
                }
                Some(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Some(n) => n,
            };
            // Progress: the stall deadline starts again at the next refusal.
            self.stall_armed = false;
            self.advance(n);
        }
        ready!(w.poll_flush(cx))?;
        Poll::Ready(Ok(()))
    }

    /// Hands the batch's unwritten bytes, up to `max` slices, to `push`; how many.
    fn fill<'a>(&'a self, max: usize, mut push: impl FnMut(IoSlice<'a>)) -> usize {
        let (at, off) = (self.at as usize, self.off as usize);
        let (mut i, mut n) = (at, 0);
        while n < max {
            let Some(bytes) = self.frame(i) else { break };
            let start = if i == at { off } else { 0 };
            let rest = bytes.get(start..).unwrap_or_default();
            if !rest.is_empty() {
                push(IoSlice::new(rest));
                n += 1;
            }
            i += 1;
        }
        n
    }

    /// One `writev` from where the batch stands: the bytes written, `None` when only
    /// empty frames were left.
    /// A short batch's slices go in a small stack array; a long one's in a vector of
    /// exactly its size (a 16 KiB array, initialised per call, would push the frames
    /// the kernel is about to copy out of the CPU's cache).
    fn poll_write_once<W>(
        &mut self,
        cx: &mut Context<'_>,
        w: Pin<&mut W>,
        left: usize,
    ) -> Poll<io::Result<Option<usize>>>
    where
        W: AsyncWrite + ?Sized,
    {
        if left <= FEW_SLICES {
            let mut slices = [IoSlice::new(&[]); FEW_SLICES];
            let mut k = 0;
            let n = self.fill(FEW_SLICES, |s| {
                if let Some(slot) = slices.get_mut(k) {
                    *slot = s;
                    k += 1;
                }
            });
            if n == 0 {
                return Poll::Ready(Ok(None));
            }
            w.poll_write_vectored(cx, slices.get(..n).unwrap_or_default())
                .map_ok(Some)
        } else {
            let mut slices = Vec::with_capacity(left.min(MAX_SLICES));
            if self.fill(MAX_SLICES, |s| slices.push(s)) == 0 {
                return Poll::Ready(Ok(None));
            }
            w.poll_write_vectored(cx, &slices).map_ok(Some)
        }
    }

    /// Moves the batch's position past `n` written bytes.
    fn advance(&mut self, mut n: usize) {
        while n > 0 {
            let Some(len) = self.frame(self.at as usize).map(<[u8]>::len) else {
                break;
            };
            let left = len.saturating_sub(self.off as usize);
            if n >= left {
                n -= left;
                self.at += 1;
                self.off = 0;
            } else {
                // n < left: the offset stays within one frame.
                self.off += u32::try_from(n).unwrap_or(u32::MAX);
                n = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn queue(outbox: &Outbox, frames: &[Frame]) {
        for f in frames {
            assert_eq!(
                outbox.try_push(f.clone(), Instant::now()),
                crate::outbox::Push::Queued
            );
        }
    }

    async fn run(
        w: &mut WriteSide,
        io: &mut tokio::io::DuplexStream,
        outbox: &Outbox,
        m: &Metrics,
    ) {
        std::future::poll_fn(|cx| w.poll(cx, Pin::new(&mut *io), outbox, m)).await;
    }

    #[tokio::test]
    async fn partial_writes_resume_mid_frame_and_the_close_frame_comes_last() {
        // A duplex pipe with a tiny buffer forces many partial vectored writes.
        let (mut a, mut b) = tokio::io::duplex(7);
        let outbox = Outbox::new(100, 1 << 20);
        let frames: Vec<Frame> = (0..50)
            .map(|i| Frame::text(format!("frame-{i};").as_bytes()))
            .collect();
        queue(&outbox, &frames);
        outbox.close(Some(Frame::close(1000, "")), false);
        let mut expected: Vec<u8> = frames.iter().flat_map(|f| f.as_bytes().to_vec()).collect();
        expected.extend_from_slice(Frame::close(1000, "").as_bytes());
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            b.read_to_end(&mut got).await.map(|_| got)
        });
        let metrics = Metrics::default();
        let mut w = WriteSide::new(Duration::from_secs(5), None);
        run(&mut w, &mut a, &outbox, &metrics).await;
        drop(a);
        assert_eq!(reader.await.unwrap().unwrap(), expected);
        assert_eq!(metrics.slow_consumer_disconnects.load(Relaxed), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_socket_that_takes_nothing_hits_the_write_deadline() {
        let (mut a, _b) = tokio::io::duplex(4);
        let outbox = Outbox::new(100, 1 << 20);
        queue(&outbox, &[Frame::text(b"more than four bytes")]);
        let metrics = Metrics::default();
        let mut w = WriteSide::new(Duration::from_secs(30), None);
        let start = tokio::time::Instant::now();
        run(&mut w, &mut a, &outbox, &metrics).await;
        assert!(
            start.elapsed() >= Duration::from_secs(30),
            "not before the deadline"
        );
        assert!(
            outbox.is_closing(),
            "a stalled socket closes its connection"
        );
        assert_eq!(metrics.slow_consumer_disconnects.load(Relaxed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_socket_that_keeps_taking_bytes_is_not_stalled() {
        // 4 bytes every 20 s: each write makes progress within the 30 s deadline, so
        // the whole frame goes out however long it takes in all.
        let (mut a, mut b) = tokio::io::duplex(4);
        let outbox = Outbox::new(100, 1 << 20);
        let frame = Frame::text(b"twenty-odd bytes of payload");
        queue(&outbox, std::slice::from_ref(&frame));
        let want = frame.len();
        let reader = async move {
            let mut got = Vec::new();
            let mut chunk = [0u8; 4];
            while got.len() < want {
                tokio::time::sleep(Duration::from_secs(20)).await;
                match b.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&chunk[..n]),
                }
            }
            got
        };
        let metrics = Metrics::default();
        let mut w = WriteSide::new(Duration::from_secs(30), None);
        tokio::select! {
            () = run(&mut w, &mut a, &outbox, &metrics) => panic!("the writer gave up"),
            got = reader => assert_eq!(got, frame.as_bytes().to_vec()),
        }
        assert_eq!(metrics.slow_consumer_disconnects.load(Relaxed), 0);
        assert!(!outbox.is_closing());
    }
}
