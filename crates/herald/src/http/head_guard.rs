//! Bounds the first request head of a connection before hyper sees it.
//!
//! hyper answers a head larger than its read buffer with its own empty-bodied 431 and
//! offers no hook to change that. Every other refusal of ours is a JSON body, so this
//! wrapper sits under hyper, counts the bytes of the connection's first head, and past
//! [`HEAD_MAX`] writes our own 431 with a JSON body and ends the connection. Once the
//! head is complete it is transparent (one branch per read) and the WebSocket upgrade
//! path unwraps it entirely.
//!
//! Only the first head is counted here: knowing where a later keep-alive head starts
//! would mean parsing the body framing a second time. Later heads are checked against
//! the same limit by [`oversized`] once hyper has parsed them; a keep-alive head beyond
//! hyper's own buffer (64 KiB) still gets hyper's bodyless 431.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::metrics::{Metrics, Refusal};

/// The largest request head (request line and headers) a node accepts: room for a
/// long `?token=` and a heavy cookie, as nginx's default of 4 × 8 KiB.
pub const HEAD_MAX: usize = 32 * 1024;

/// The answer to an oversized head, built once.
fn refusal_response() -> &'static [u8] {
    static RESPONSE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    RESPONSE.get_or_init(|| {
        let body =
            format!(r#"{{"error":"too_large","message":"request head exceeds {HEAD_MAX} bytes"}}"#);
        format!(
            "HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    })
}

enum State {
    /// Reading the first head: bytes so far, and whether the last byte (ignoring CR)
    /// ended a line, so a blank line ends the head.
    Head { seen: usize, line_ended: bool },
    /// The head is complete: pass everything through.
    Passed,
    /// Over the limit: writing our answer from this offset, then failing the read.
    Refusing { written: usize },
}

pub struct HeadGuard<S> {
    inner: S,
    state: State,
    metrics: Arc<Metrics>,
}

impl<S> HeadGuard<S> {
    pub fn new(inner: S, metrics: Arc<Metrics>) -> HeadGuard<S> {
        HeadGuard {
            inner,
            state: State::Head {
                seen: 0,
                line_ended: false,
            },
            metrics,
        }
    }

    pub fn into_inner(self) -> S {
        self.inner
    }

    /// Advances the head scan over freshly read bytes.
    fn scan(&mut self, bytes: &[u8]) {
        let State::Head { seen, line_ended } = &mut self.state else {
            return;
        };
        for (i, &b) in bytes.iter().enumerate() {
            match b {
                b'\n' if *line_ended => {
                    if *seen + i + 1 > HEAD_MAX {
                        break;
                    }
                    self.state = State::Passed;
                    return;
                }
                b'\n' => *line_ended = true,
                b'\r' => {}
                _ => *line_ended = false,
            }
        }
        *seen += bytes.len();
        if *seen > HEAD_MAX {
            self.metrics.refuse(Refusal::HeadTooLarge);
            self.state = State::Refusing { written: 0 };
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> HeadGuard<S> {
    /// Writes the 431 (hyper is only reading at this point, so the socket is ours).
    fn poll_refuse(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let response = refusal_response();
        while let State::Refusing { written } = &mut self.state {
            let rest = response.get(*written..).unwrap_or_default();
            if rest.is_empty() {
                break;
            }
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, rest))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "request head too large (answered 431)",
        )))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for HeadGuard<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.state {
            State::Passed => return Pin::new(&mut this.inner).poll_read(cx, buf),
            State::Refusing { .. } => return this.poll_refuse(cx),
            State::Head { .. } => {}
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let fresh = buf.filled().get(before..).unwrap_or_default();
        this.scan(fresh);
        if let State::Refusing { .. } = this.state {
            // Nothing of the oversized head reaches hyper.
            buf.set_filled(before);
            return this.poll_refuse(cx);
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for HeadGuard<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// The size of a parsed head, close to its bytes on the wire, when it exceeds
/// [`HEAD_MAX`]: the same limit for keep-alive heads the wrapper did not count.
pub fn oversized<B>(req: &hyper::Request<B>) -> Option<usize> {
    let line = req.method().as_str().len() + req.uri().to_string().len() + 12;
    let size = req
        .headers()
        .iter()
        .fold(line, |n, (k, v)| n + k.as_str().len() + v.len() + 4);
    (size > HEAD_MAX).then_some(size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn run(input: Vec<u8>) -> (io::Result<Vec<u8>>, Vec<u8>) {
        let (client, server) = tokio::io::duplex(1 << 20);
        let (mut cr, mut cw) = tokio::io::split(client);
        cw.write_all(&input).await.unwrap();
        cw.shutdown().await.unwrap();
        let mut guard = HeadGuard::new(server, Arc::new(Metrics::default()));
        let mut got = Vec::new();
        let read = guard.read_to_end(&mut got).await.map(|_| got);
        drop(guard);
        let mut answer = Vec::new();
        cr.read_to_end(&mut answer).await.unwrap();
        (read, answer)
    }

    #[tokio::test]
    async fn a_head_within_the_limit_and_its_body_pass_untouched() {
        let mut input = b"POST / HTTP/1.1\r\nHost: x\r\ncontent-length: 40000\r\n\r\n".to_vec();
        input.extend(std::iter::repeat_n(b'a', 40_000));
        let (read, answer) = run(input.clone()).await;
        assert_eq!(read.unwrap(), input);
        assert!(answer.is_empty());
    }

    #[tokio::test]
    async fn bare_line_feeds_end_the_head_too() {
        let mut input = b"GET / HTTP/1.1\nHost: x\n\n".to_vec();
        input.extend(std::iter::repeat_n(b'a', HEAD_MAX + 10));
        let (read, _) = run(input.clone()).await;
        assert_eq!(read.unwrap(), input);
    }

    #[tokio::test]
    async fn an_oversized_head_gets_a_json_431_and_never_reaches_the_reader() {
        let mut input = b"GET / HTTP/1.1\r\nCookie: ".to_vec();
        input.extend(std::iter::repeat_n(b'c', HEAD_MAX));
        input.extend(b"\r\n\r\n");
        let (read, answer) = run(input).await;
        assert_eq!(read.unwrap_err().kind(), io::ErrorKind::InvalidData);
        let answer = String::from_utf8(answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
        let body = answer.split("\r\n\r\n").nth(1).unwrap();
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"], "too_large");
    }

    #[test]
    fn the_parsed_size_check_counts_headers() {
        let big = "v".repeat(HEAD_MAX);
        let req = hyper::Request::builder()
            .uri("/x")
            .header("cookie", big.as_str())
            .body(())
            .unwrap();
        assert!(oversized(&req).is_some());
        let small = hyper::Request::builder().uri("/x").body(()).unwrap();
        assert_eq!(oversized(&small), None);
    }
}
