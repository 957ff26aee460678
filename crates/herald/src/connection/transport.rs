//! The two ways bytes reach a connection: a raw TCP socket (the fast path, no read
//! buffer while idle) or any other upgraded stream (TLS), read through a small buffer.

use std::future::Future;
use std::io;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::tcp::OwnedReadHalf;

/// Reads whatever is available into `buf`; `Ok(0)` is end of stream.
pub trait WsRead: Send + 'static {
    fn read_into(&mut self, buf: &mut BytesMut) -> impl Future<Output = io::Result<usize>> + Send;
}

/// Bytes read per readiness event when the connection holds no partial frame.
const SCRATCH: usize = 8 * 1024;

impl WsRead for OwnedReadHalf {
    async fn read_into(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        loop {
            self.readable().await?;
            match try_read_tcp(self, buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                other => return other,
            }
        }
    }
}

/// Reads without awaiting. An idle connection's buffer is empty and unallocated, so a
/// read that finds it empty goes through a stack scratch and copies only what arrived.
fn try_read_tcp(stream: &OwnedReadHalf, buf: &mut BytesMut) -> io::Result<usize> {
    if buf.is_empty() && buf.capacity() < SCRATCH {
        let mut scratch = [0u8; SCRATCH];
        let n = stream.try_read(&mut scratch)?;
        buf.extend_from_slice(scratch.get(..n).unwrap_or_default());
        Ok(n)
    } else {
        buf.reserve(SCRATCH);
        stream.try_read_buf(buf)
    }
}

/// Any other stream (TLS): a buffer is needed while waiting, kept small.
pub struct Buffered<R>(pub R);

impl<R: AsyncRead + Unpin + Send + 'static> WsRead for Buffered<R> {
    async fn read_into(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        buf.reserve(4096);
        self.0.read_buf(buf).await
    }
}
