//! A real herald node on an ephemeral port, real WebSocket clients, a real HTTP client.

use std::path::PathBuf;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use herald::auth::jwt::{mint_hs256, now_unix, Claims};
use herald::config::Config;
use herald::{Node, ServeOptions};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub const WAIT: Duration = Duration::from_secs(10);

pub struct TestServer {
    pub node: Option<Node>,
    pub addr: std::net::SocketAddr,
    pub secret: String,
    pub api_key: String,
    /// Removed when the server is dropped.
    pub _dir: TempDir,
    pub http: reqwest::Client,
}

pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "herald-it-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Defaults for tests: everything as shipped, in a temp data dir.
pub fn test_config(dir: &TempDir) -> Config {
    Config {
        data_dir: dir.0.clone(),
        listen: "127.0.0.1:0".into(),
        ..Config::default()
    }
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(f: impl FnOnce(&mut Config)) -> TestServer {
        let dir = TempDir::new();
        let mut cfg = test_config(&dir);
        f(&mut cfg);
        Self::start_cfg(cfg, dir).await
    }

    pub async fn start_cfg(cfg: Config, dir: TempDir) -> TestServer {
        cfg.validate().expect("test config is valid");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let node = Node::start(listener, cfg, ServeOptions::default())
            .await
            .unwrap();
        assert!(
            node.store_ready(WAIT).await,
            "the store migrates at start-up"
        );
        TestServer {
            addr: node.addr,
            secret: node.hmac_secret.clone(),
            api_key: node.api_key.clone(),
            node: Some(node),
            _dir: dir,
            http: reqwest::Client::new(),
        }
    }

    pub fn node(&self) -> &Node {
        self.node.as_ref().expect("node running")
    }

    pub fn token(&self, sub: &str) -> String {
        self.token_with(sub, |_| {})
    }

    pub fn token_with(&self, sub: &str, f: impl FnOnce(&mut Claims)) -> String {
        let mut c = Claims {
            sub: sub.into(),
            exp: now_unix() + 3600,
            device: None,
            groups: vec![],
            admin: false,
            iss: None,
            aud: None,
            iat: Some(herald::auth::jwt::now_unix()),
            jti: None,
            channels: Vec::new(),
        };
        f(&mut c);
        mint_hs256(&self.secret, &c).unwrap()
    }

    pub fn ws_url(&self, token: &str) -> String {
        format!("ws://{}/ws?token={token}", self.addr)
    }

    /// Connects and consumes the `connected` frame; returns the client and that frame.
    pub async fn connect(&self, sub: &str) -> (Ws, Value) {
        self.connect_token(&self.token(sub)).await
    }

    pub async fn connect_token(&self, token: &str) -> (Ws, Value) {
        let (mut ws, _) = tokio_tungstenite::connect_async(self.ws_url(token))
            .await
            .expect("upgrade accepted");
        let hello = next_json(&mut ws).await;
        assert_eq!(hello["type"], "connected", "{hello}");
        (ws, hello)
    }

    /// Connects as a backend publisher (the API key in `X-API-Key`) and consumes
    /// `connected`.
    pub async fn connect_backend(&self) -> Ws {
        let url = format!("ws://{}/ws", self.addr);
        let mut ws = self
            .try_upgrade(&url, &[("x-api-key", &self.api_key)])
            .await
            .expect("a backend upgrade is accepted");
        let hello = next_json(&mut ws).await;
        assert_eq!(hello["type"], "connected", "{hello}");
        ws
    }

    /// Tries an upgrade with extra headers; returns the HTTP status and body on refusal.
    pub async fn try_upgrade(
        &self,
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<Ws, (u16, Value)> {
        let mut req = url.into_client_request().unwrap();
        for (k, v) in headers {
            req.headers_mut().insert(
                reqwest::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        match tokio_tungstenite::connect_async(req).await {
            Ok((ws, _)) => Ok(ws),
            Err(tokio_tungstenite::tungstenite::Error::Http(res)) => {
                let status = res.status().as_u16();
                let body = res
                    .body()
                    .as_ref()
                    .map(|b| serde_json::from_slice(b).unwrap_or(Value::Null))
                    .unwrap_or(Value::Null);
                Err((status, body))
            }
            Err(e) => panic!("unexpected upgrade error: {e}"),
        }
    }

    pub async fn publish(&self, body: Value) -> (u16, Value) {
        self.post_json("/api/publish", &self.api_key.clone(), body)
            .await
    }

    pub async fn post_json(&self, path: &str, key: &str, body: Value) -> (u16, Value) {
        let res = self
            .http
            .post(format!("http://{}{path}", self.addr))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let res = self
            .http
            .get(format!("http://{}{path}", self.addr))
            .bearer_auth(&self.api_key)
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    pub async fn stats(&self) -> Value {
        self.get_json("/api/stats").await.1
    }

    pub async fn shutdown(mut self) {
        if let Some(n) = self.node.take() {
            n.shutdown().await;
        }
    }
}

/// The next text frame as JSON (pings are answered by tungstenite while reading).
pub async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame in time")
            .expect("stream open")
            .expect("frame ok");
        match msg {
            Message::Text(t) => {
                return serde_json::from_str(&t).unwrap_or(Value::String(t.to_string()))
            }
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected text, got {other:?}"),
        }
    }
}

/// Reads until the server closes; returns the close code.
/// The next `pub` frame, skipping anything else.
pub async fn next_pub(ws: &mut Ws) -> Value {
    loop {
        let m = next_json(ws).await;
        if m["type"] == "pub" {
            return m;
        }
    }
}

pub async fn close_code(ws: &mut Ws) -> Option<u16> {
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("close in time")
        {
            Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return None,
        }
    }
}

pub async fn send_text(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text)).await.unwrap();
}

/// Polls `f` until it is true or the deadline passes.
pub async fn eventually<F: FnMut() -> Fut, Fut: std::future::Future<Output = bool>>(
    what: &str,
    f: F,
) {
    if !poll_until(WAIT, f).await {
        panic!("timed out waiting for: {what}");
    }
}

/// Polls `f` until it holds or `within` passes; whether it held.
pub async fn poll_until<F: FnMut() -> Fut, Fut: std::future::Future<Output = bool>>(
    within: Duration,
    mut f: F,
) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// A raw TCP client that upgrades by hand, for frames tungstenite will not send.
pub struct Raw {
    pub tcp: TcpStream,
}

impl Raw {
    pub async fn upgrade(addr: std::net::SocketAddr, path: &str) -> Raw {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        tcp.write_all(req.as_bytes()).await.unwrap();
        let head = read_head(&mut tcp).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        Raw { tcp }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.tcp.write_all(bytes).await.unwrap();
    }

    /// Reads frames until a close frame; returns its code (None on EOF without one).
    pub async fn close_code(&mut self) -> Option<u16> {
        let mut buf = Vec::new();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            // Walk complete server frames in buf.
            let mut pos = 0;
            while buf.len() >= pos + 2 {
                let op = buf[pos] & 0x0F;
                let (len, hl) = match buf[pos + 1] & 0x7F {
                    126 if buf.len() >= pos + 4 => {
                        (u16::from_be_bytes([buf[pos + 2], buf[pos + 3]]) as usize, 4)
                    }
                    127 if buf.len() >= pos + 10 => (
                        u64::from_be_bytes(buf[pos + 2..pos + 10].try_into().unwrap()) as usize,
                        10,
                    ),
                    126 | 127 => break,
                    n => (n as usize, 2),
                };
                if buf.len() < pos + hl + len {
                    break;
                }
                if op == 0x8 {
                    let p = &buf[pos + hl..pos + hl + len];
                    return (p.len() >= 2).then(|| u16::from_be_bytes([p[0], p[1]]));
                }
                pos += hl + len;
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout_at(deadline, self.tcp.read(&mut chunk))
                .await
                .expect("close in time")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// Reads a response head byte by byte (nothing after it is consumed).
pub async fn read_head(tcp: &mut TcpStream) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        tcp.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    String::from_utf8(head).expect("an ASCII response head")
}

/// A masked client frame.
pub fn masked(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = bytes::BytesMut::new();
    let key = [0x11, 0x22, 0x33, 0x44];
    herald::ws::frame::put_header(&mut out, fin, opcode, payload.len(), Some(key));
    let mut p = payload.to_vec();
    herald::ws::frame::apply_mask(&mut p, key, 0);
    out.extend_from_slice(&p);
    out.to_vec()
}

/// `herald serve` as a child process on a free port with its own data dir.
pub struct Served {
    pub child: std::process::Child,
    pub addr: String,
    pub secret: String,
}

/// Starts the real binary and waits for the address it prints on stdout.
pub fn serve_binary(dir: &TempDir, extra: &[&str], stderr: std::process::Stdio) -> Served {
    let (child, addr) = spawn_binary(dir, extra, &[], stderr);
    let secret = herald::config::secrets::read(&dir.0, "hmac_secret").unwrap();
    Served {
        child,
        addr,
        secret,
    }
}

/// `herald serve` with `extra` flags and `env`, on a free port; the child and its address.
pub fn spawn_binary(
    dir: &TempDir,
    extra: &[&str],
    env: &[(&str, &str)],
    stderr: std::process::Stdio,
) -> (std::process::Child, String) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&dir.0)
        .args(extra)
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let line = std::io::BufReader::new(stdout)
        .lines()
        .find_map(|l| l.ok().filter(|l| l.contains("listening on")))
        .expect("the server prints its address");
    let addr = line.rsplit("://").next().unwrap().trim().to_owned();
    (child, addr)
}

/// A valid token for `sub`, signed with `secret`.
pub fn mint(secret: &str, sub: &str) -> String {
    mint_hs256(secret, &claims(sub)).unwrap()
}

/// Plain claims for `sub`, valid for a minute.
pub fn claims(sub: &str) -> herald::auth::jwt::Claims {
    herald::auth::jwt::Claims {
        sub: sub.into(),
        exp: now_unix() + 60,
        device: None,
        groups: vec![],
        admin: false,
        iss: None,
        aud: None,
        iat: Some(herald::auth::jwt::now_unix()),
        jti: None,
        channels: Vec::new(),
    }
}

/// A device of `user` (its token names `name`), subscribed to `sync:<user>`.
pub async fn sync_device(s: &TestServer, user: &str, name: &str) -> Ws {
    let (mut ws, _) = s
        .connect_token(&s.token_with(user, |c| c.device = Some(name.into())))
        .await;
    send_text(
        &mut ws,
        &serde_json::json!({"type": "subscribe", "channel": format!("sync:{user}")}).to_string(),
    )
    .await;
    assert_eq!(next_json(&mut ws).await["type"], "subscribed");
    ws
}

/// This process's resident set, in bytes (nextest runs each test in its own process).
pub fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .map(|v| v.trim().parse().unwrap())
        .expect("VmRSS in /proc/self/status");
    kb * 1024
}

/// Publishes 64 KiB messages to a client that never reads until the server stops queueing
/// to it (it was closed); `pace` slows down once the socket buffers must be full, so a
/// write deadline has time to pass.
pub async fn publish_to_a_stalled_client_until_closed(s: &TestServer, pace: bool) {
    let (_stalled, _) = s.connect("stalled").await;
    let pad = "x".repeat(64 * 1024);
    for n in 0.. {
        let (status, body) = s
            .publish(serde_json::json!({"user": "stalled", "data": {"n": n, "pad": pad}}))
            .await;
        assert_eq!(status, 200, "{body}");
        if body["queued"] == 0 {
            break; // closed
        }
        if pace && n > 200 {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert!(n < 10_000, "the stalled client was never closed");
    }
}

/// Subscribes `ws` to `channel` and waits for `subscribed` (skipping other frames; an
/// `error` fails the test).
pub async fn subscribe_to(ws: &mut Ws, channel: &str) {
    let msg = serde_json::json!({"type": "subscribe", "channel": channel});
    send_text(ws, &msg.to_string()).await;
    loop {
        let reply = next_json(ws).await;
        assert_ne!(reply["type"], "error", "{reply}");
        if reply["type"] == "subscribed" {
            return;
        }
    }
}

/// Asserts that `/metrics` counts exactly `n` publications from `source`.
pub async fn assert_publications_counted(s: &TestServer, source: &str, n: u64) {
    let text = reqwest::Client::new()
        .get(format!("http://{}/metrics", s.addr))
        .bearer_auth(&s.api_key)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = format!("herald_publications_total{{source=\"{source}\"}} {n}");
    assert!(
        text.lines().any(|l| l == line),
        "{line} in:\n{}",
        text.lines()
            .filter(|l| l.contains("publications_total"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// The next `pub` within a short wait, or None: for "this one got nothing".
pub async fn maybe_pub(ws: &mut Ws) -> Option<Value> {
    tokio::time::timeout(Duration::from_millis(400), next_pub(ws))
        .await
        .ok()
}

/// The next `ack` or `error`, skipping publications the connection receives.
pub async fn next_answer(ws: &mut Ws) -> Value {
    loop {
        let m = next_json(ws).await;
        if m["type"] == "ack" || m["type"] == "error" {
            return m;
        }
    }
}

/// A loopback port nothing listens on (for a service a test starts and stops itself).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
