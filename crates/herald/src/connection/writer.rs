//! The one future that writes to a socket, polled inside the connection's task beside
//! the reader: everything queued goes out in one vectored write (`writev`), control
//! frames first. On a connection that negotiated
//! permessage-deflate each data frame goes out in its shared compressed form.

use std::io::{self, IoSlice};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::metrics::{Metrics, Refusal};
use crate::outbox::{Batch, Outbox, Queued};
use crate::ws::deflate::WindowBits;
use crate::ws::frame::Frame;

/// Linux IOV_MAX: the most slices one `writev` takes.
const MAX_SLICES: usize = 1024;

/// How long the final batch (ending in a close frame) may take before we give up on a
/// peer that is not reading.
const FINISH_TIMEOUT: Duration = Duration::from_secs(2);

/// Writes until the outbox finishes or the socket fails. A socket that takes no bytes
/// for `stall` is closed and counted as a slow consumer. `deflate` is the window the
/// connection agreed to, if it negotiated compression.
pub async fn run_writer<W>(
    mut w: W,
    outbox: Arc<Outbox>,
    metrics: Arc<Metrics>,
    stall: Duration,
    deflate: Option<WindowBits>,
) where
    W: AsyncWrite + Unpin + Send,
{
    let mut control: Vec<Frame> = Vec::new();
    let mut data: Vec<Queued> = Vec::new();
    loop {
        let batch = outbox.next_batch(&mut control, &mut data).await;
        let mut saved = Saved::default();
        let bytes = control
            .iter()
            .map(Frame::as_bytes)
            .chain(data.iter().map(|q| saved.wire(&q.frame, deflate)));
        let result = if batch == Batch::Finish {
            match tokio::time::timeout(FINISH_TIMEOUT, write_all(&mut w, bytes, stall)).await {
                Ok(r) => r,
                Err(_) => Err(io::ErrorKind::TimedOut.into()),
            }
        } else {
            write_all(&mut w, bytes, stall).await
        };
        if result
            .as_ref()
            .is_err_and(|e| e.kind() == io::ErrorKind::TimedOut)
            && batch != Batch::Finish
        {
            metrics.slow_consumer_disconnects.fetch_add(1, Relaxed);
            metrics.refuse(Refusal::WriteStalled);
        }
        saved.record(&metrics);
        if result.is_ok() && !data.is_empty() {
            metrics
                .latency
                .record_batch(Instant::now(), data.iter().map(|q| q.accepted));
        }
        // Emptied, not freed: the outbox swaps them back in for the next batch while the
        // connection is busy, and frees them when it goes idle.
        control.clear();
        data.clear();
        if result.is_err() {
            outbox.close(None, true);
            return;
        }
        if batch == Batch::Finish {
            let _ = tokio::time::timeout(FINISH_TIMEOUT, w.shutdown()).await;
            return;
        }
    }
}

/// The frames of a batch that went out compressed, and the bytes that saved: counted
/// as each frame's wire form is picked, recorded once per batch.
#[derive(Default)]
struct Saved {
    frames: u64,
    bytes: u64,
}

impl Saved {
    fn wire<'a>(&mut self, frame: &'a Frame, deflate: Option<WindowBits>) -> &'a Bytes {
        let wire = frame.wire(deflate);
        if wire.len() < frame.len() {
            self.frames += 1;
            self.bytes += (frame.len() - wire.len()) as u64;
        }
        wire
    }

    fn record(&self, metrics: &Metrics) {
        if self.frames > 0 {
            metrics
                .compressed_deliveries
                .fetch_add(self.frames, Relaxed);
            metrics
                .compression_saved_bytes
                .fetch_add(self.bytes, Relaxed);
        }
    }
}

/// Writes every frame, in order, with as few `writev` calls as the kernel allows. Each
/// call must make progress within `stall` (the write deadline of DESIGN §12).
async fn write_all<'a, W>(
    w: &mut W,
    frames: impl Iterator<Item = &'a Bytes>,
    stall: Duration,
) -> io::Result<()>
where
    W: AsyncWrite + Unpin,
{
    let frames: Vec<&Bytes> = frames.filter(|b| !b.is_empty()).collect();
    let (mut idx, mut off) = (0usize, 0usize);
    let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(frames.len().min(MAX_SLICES));
    while idx < frames.len() {
        slices.clear();
        for (i, f) in frames.iter().enumerate().skip(idx).take(MAX_SLICES) {
            let start = if i == idx { off } else { 0 };
            slices.push(IoSlice::new(f.get(start..).unwrap_or_default()));
        }
        let mut n = match tokio::time::timeout(stall, w.write_vectored(&slices)).await {
            Ok(r) => r?,
            Err(_) => return Err(io::ErrorKind::TimedOut.into()),
        };
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        while n > 0 {
            let Some(f) = frames.get(idx) else { break };
            let left = f.len() - off;
            if n >= left {
                n -= left;
                idx += 1;
                off = 0;
            } else {
                off += n;
                n = 0;
            }
        }
    }
    match tokio::time::timeout(stall, w.flush()).await {
        Ok(r) => r,
        Err(_) => Err(io::ErrorKind::TimedOut.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn partial_writes_resume_mid_frame() {
        // A duplex pipe with a tiny buffer forces many partial vectored writes.
        let (mut a, mut b) = tokio::io::duplex(7);
        let frames: Vec<Bytes> = (0..50)
            .map(|i| Bytes::from(format!("frame-{i};")))
            .collect();
        let expected: Vec<u8> = frames.iter().flat_map(|f| f.to_vec()).collect();
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut b, &mut got)
                .await
                .map(|_| got)
        });
        write_all(&mut a, frames.iter(), Duration::from_secs(5))
            .await
            .unwrap();
        drop(a);
        assert_eq!(reader.await.unwrap().unwrap(), expected);
    }

    #[tokio::test(start_paused = true)]
    async fn a_socket_that_takes_nothing_hits_the_write_deadline() {
        let (mut a, _b) = tokio::io::duplex(4);
        let frames = [Bytes::from_static(b"more than four bytes")];
        let r = write_all(&mut a, frames.iter(), Duration::from_secs(30)).await;
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::TimedOut);
    }
}
