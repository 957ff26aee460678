//! The one task that writes to a socket: everything queued goes out in one vectored
//! write (`writev`), control frames first.

use std::io::{self, IoSlice};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::outbox::{Batch, Outbox, Queued};
use crate::metrics::Metrics;
use crate::ws::frame::Frame;

/// Linux IOV_MAX: the most slices one `writev` takes.
const MAX_SLICES: usize = 1024;

/// How long the final batch (ending in a close frame) may take before we give up on a
/// peer that is not reading.
const FINISH_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn run_writer<W>(mut w: W, outbox: Arc<Outbox>, metrics: Arc<Metrics>)
where
    W: AsyncWrite + Unpin + Send,
{
    let mut control: Vec<Frame> = Vec::new();
    let mut data: Vec<Queued> = Vec::new();
    loop {
        let batch = outbox.next_batch(&mut control, &mut data).await;
        let bytes = control
            .iter()
            .map(Frame::as_bytes)
            .chain(data.iter().map(|q| q.frame.as_bytes()));
        let result = if batch == Batch::Finish {
            match tokio::time::timeout(FINISH_TIMEOUT, write_all(&mut w, bytes)).await {
                Ok(r) => r,
                Err(_) => Err(io::ErrorKind::TimedOut.into()),
            }
        } else {
            write_all(&mut w, bytes).await
        };
        if result.is_ok() {
            for q in &data {
                metrics.latency.record(q.accepted.elapsed());
            }
        }
        control.clear();
        data.clear();
        if data.capacity() > 256 {
            data.shrink_to(16);
        }
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

/// Writes every frame, in order, with as few `writev` calls as the kernel allows.
async fn write_all<'a, W>(w: &mut W, frames: impl Iterator<Item = &'a Bytes>) -> io::Result<()>
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
        let mut n = w.write_vectored(&slices).await?;
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
    w.flush().await
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
        write_all(&mut a, frames.iter()).await.unwrap();
        drop(a);
        assert_eq!(reader.await.unwrap().unwrap(), expected);
    }
}
