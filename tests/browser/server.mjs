// Test helpers: start a herald node on a free loopback port with a fresh data dir,
// mint tokens, open WebSocket clients, and poll for conditions.
//
// HERALD_BIN     the binary (default <repo>/target/debug/herald)
// HERALD_ASSETS  optional: a directory holding `admin/` and `demo/` (e.g.
//                <repo>/crates/herald/assets) to serve from disk in front of herald, so
//                the pages can be iterated on without rebuilding the binary. Everything
//                else, WebSocket upgrades included, is proxied to herald.
// HERALD_CLIENT_JS optional: a path to the JS client (e.g. <repo>/clients/js/src/herald.js)
//                that testServer() proxies serve at /client/herald.js instead of the copy
//                embedded in the binary (which is as old as the last build).

import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, existsSync, writeFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import http from 'node:http';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import WebSocket from 'ws';

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
export const HERALD_BIN = process.env.HERALD_BIN || path.join(REPO, 'target', 'debug', 'herald');

/** Polls `fn` until it returns a truthy value (returned) or `timeout` ms pass (throws; `what`, a string or a function, says what was awaited). */
export async function waitUntil(fn, { timeout = 10_000, interval = 50, what = 'condition' } = {}) {
  const end = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > end) throw new Error(`timed out after ${timeout} ms waiting for ${typeof what === 'function' ? what() : what}${last ? `: ${last.message}` : ''}`);
    await new Promise((r) => setTimeout(r, interval));
  }
}

const withoutKeys = (obj, keys) => Object.fromEntries(Object.entries(obj).filter(([k]) => !keys.includes(k)));

/**
 * Starts `herald serve` and resolves once it prints its address; `env` adds HERALD_…
 * settings, `config` the text of a TOML configuration file (e.g. `[namespaces.chat]` …).
 */
export async function startHerald({ bin = HERALD_BIN, startTimeout = 20_000, env = {}, config } = {}) {
  if (!existsSync(bin)) throw new Error(`no herald binary at ${bin} (set HERALD_BIN)`);
  const dataDir = mkdtempSync(path.join(tmpdir(), 'herald-browser-'));
  const configArgs = [];
  if (config !== undefined) {
    const file = path.join(dataDir, 'herald.toml');
    writeFileSync(file, config);
    configArgs.push('--config', file);
  }
  // herald runs under a small sh wrapper that stops it (SIGTERM) as soon as our end of its
  // stdin closes — on stop(), and also when this process dies without cleaning up — and
  // then removes the data dir.
  const wrapper = 'exec 3<&0; "$0" "$@" </dev/null & pid=$!; echo "herald-pid $pid"; '
    + '( read -r _ <&3; kill -TERM $pid 2>/dev/null ) & wait $pid; st=$?; rm -rf "$BROWSER_TEST_DATA_DIR"; exit $st';
  const args = ['serve', '--listen', '127.0.0.1:0', '--data-dir', dataDir, '--log-format', 'json', '--log-level', 'warn', ...configArgs];
  const child = spawn('/bin/sh', ['-c', wrapper, bin, ...args], {
    stdio: ['pipe', 'pipe', 'pipe'],
    // the test's own HERALD_BIN/HERALD_ASSETS are not configuration: herald would warn
    env: { ...withoutKeys(process.env, ['HERALD_BIN', 'HERALD_ASSETS', 'HERALD_CLIENT_JS']), ...env, BROWSER_TEST_DATA_DIR: dataDir },
  });
  child.stdin.on('error', () => {});
  let log = '';
  let heraldPid = null;
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  const url = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`herald did not start within ${startTimeout} ms:\n${log}`)), startTimeout);
    const onData = (buf) => {
      log += buf.toString();
      heraldPid ??= Number(/herald-pid (\d+)/.exec(log)?.[1]) || null;
      const m = /listening on (http:\/\/127\.0\.0\.1:\d+)/.exec(log);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    exited.then(({ code, signal }) => {
      clearTimeout(timer);
      reject(new Error(`herald exited (${code ?? signal}) before listening:\n${log}`));
    });
  });
  // keep draining the pipes so the server never blocks on a full pipe
  child.stdout.on('data', (b) => { log = (log + b).slice(-20_000); });
  child.stderr.on('data', (b) => { log = (log + b).slice(-20_000); });
  const apiKey = readFileSync(path.join(dataDir, 'api_key'), 'utf8').trim();

  let proxy = null;
  let base = url;
  if (process.env.HERALD_ASSETS) {
    proxy = await startAssetsProxy(url, process.env.HERALD_ASSETS);
    base = proxy.url;
  }

  return {
    url: base,
    heraldUrl: url,
    apiKey,
    dataDir,
    log: () => log,
    /** A user JWT minted with the data dir's secret. */
    token(sub, { device, admin = false, ttl = '1h' } = {}) {
      const args = ['token', '--data-dir', dataDir, '--sub', sub, '--ttl', ttl];
      if (device) args.push('--device', device);
      if (admin) args.push('--admin');
      return execFileSync(bin, args, { encoding: 'utf8', timeout: 10_000, env: withoutKeys(process.env, ['HERALD_BIN', 'HERALD_ASSETS', 'HERALD_CLIENT_JS']) }).trim();
    },
    /** Calls the HTTP API with the API key. */
    async api(pathname, { method = 'GET', body, key = apiKey } = {}) {
      const res = await fetch(url + pathname, {
        method,
        headers: { Authorization: `Bearer ${key}`, ...(body ? { 'Content-Type': 'application/json' } : {}) },
        body: body ? JSON.stringify(body) : undefined,
        signal: AbortSignal.timeout(5000),
      });
      const text = await res.text();
      let json = null;
      try { json = JSON.parse(text); } catch { /* not JSON */ }
      return { status: res.status, json, text };
    },
    async stop() {
      if (proxy) await proxy.close();
      if (child.exitCode === null && child.signalCode === null) {
        child.stdin.end(); // the wrapper sends SIGTERM; herald drains and exits
        const t = setTimeout(() => {
          try { if (heraldPid) process.kill(heraldPid, 'SIGKILL'); } catch { /* gone */ }
          child.kill('SIGKILL');
        }, 5000);
        await exited;
        clearTimeout(t);
      }
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

/**
 * A WebSocket client (the `ws` package, no Origin header) that records every frame.
 * Resolves once the `connected` frame has arrived.
 */
export async function connectClient(server, token, { timeout = 10_000, perMessageDeflate = true } = {}) {
  const wsUrl = `${server.url.replace(/^http/, 'ws')}/ws?token=${encodeURIComponent(token)}`;
  const ws = new WebSocket(wsUrl, { handshakeTimeout: timeout, perMessageDeflate });
  const client = {
    ws,
    frames: [],
    closed: null, // {code, reason} once closed
    send(obj) { ws.send(typeof obj === 'string' ? obj : JSON.stringify(obj)); },
    waitFrame(pred, opts = {}) {
      return waitUntil(() => client.frames.find(pred), { what: 'a frame', ...opts });
    },
    waitClose(opts = {}) {
      return waitUntil(() => client.closed, { what: 'the socket to close', ...opts });
    },
    close() {
      if (!client.closed) ws.terminate();
    },
  };
  ws.on('message', (data, isBinary) => {
    if (isBinary) return;
    const s = data.toString();
    try { client.frames.push(JSON.parse(s)); } catch { client.frames.push(s); }
  });
  ws.on('close', (code, reason) => { client.closed = { code, reason: reason.toString() }; });
  ws.on('error', () => { /* reported through `closed` */ });
  await new Promise((resolve, reject) => {
    ws.once('unexpected-response', (_req, res) => reject(new Error(`WebSocket refused: HTTP ${res.statusCode}`)));
    ws.once('error', reject);
    ws.once('open', resolve);
  });
  client.connected = await client.waitFrame((f) => f && f.type === 'connected', { timeout, what: 'the connected frame' });
  return client;
}

const TYPES = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8', '.css': 'text/css; charset=utf-8' };
const CSP = "default-src 'self'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'";

/** Serves <dir>/{admin,demo}/ at /admin and /demo with herald's CSP; proxies the rest. */
async function startAssetsProxy(upstream, dir) {
  const target = new URL(upstream);
  const files = {
    '/admin': 'admin/index.html', '/admin/': 'admin/index.html',
    '/admin/admin.js': 'admin/admin.js', '/admin/admin.css': 'admin/admin.css',
    '/demo': 'demo/index.html', '/demo/': 'demo/index.html',
    '/demo/demo.js': 'demo/demo.js', '/demo/demo.css': 'demo/demo.css',
  };
  const server = http.createServer(async (req, res) => {
    const pathname = new URL(req.url, 'http://x').pathname;
    if (req.method === 'GET' && files[pathname]) {
      const file = path.join(dir, files[pathname]);
      try {
        const body = await readFile(file);
        res.writeHead(200, { 'Content-Type': TYPES[path.extname(file)], 'Content-Security-Policy': CSP, 'Cache-Control': 'no-store', 'X-Content-Type-Options': 'nosniff' });
        res.end(body);
      } catch {
        res.writeHead(404, { 'Content-Type': 'application/json' });
        res.end('{"error":"not_found","message":"no such file"}');
      }
      return;
    }
    const up = http.request({ host: target.hostname, port: target.port, method: req.method, path: req.url, headers: req.headers }, (r) => {
      res.writeHead(r.statusCode, r.headers);
      r.pipe(res);
    });
    up.on('error', () => { res.destroy(); });
    req.pipe(up);
  });
  server.on('upgrade', (req, socket, head) => {
    const up = net.connect(Number(target.port), target.hostname, () => {
      const lines = [`${req.method} ${req.url} HTTP/1.1`];
      for (let i = 0; i < req.rawHeaders.length; i += 2) lines.push(`${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}`);
      up.write(`${lines.join('\r\n')}\r\n\r\n`);
      if (head.length) up.write(head);
      socket.pipe(up).pipe(socket);
    });
    up.on('error', () => socket.destroy());
    socket.on('error', () => up.destroy());
  });
  const sockets = new Set();
  server.on('connection', (s) => { sockets.add(s); s.on('close', () => sockets.delete(s)); });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    close: () => new Promise((r) => { for (const s of sockets) s.destroy(); server.close(() => r()); }),
  };
}

const BLANK = '<!doctype html><html><head><meta charset="utf-8"><title>test page</title></head><body></body></html>';

/**
 * A small HTTP server of the test's own on another port (so another origin), serving a
 * blank page at `/page`; with `upstream` (a herald URL) it is a proxy in front of it that
 * forwards every other request, streamed both ways (an event stream flows through), and
 * refuses every WebSocket upgrade with 400 — as a proxy that breaks WebSockets does.
 * `refused` counts the refused upgrades, `requests` lists "METHOD /path?query" and
 * `headers` each request's headers (what the browser really sent: Playwright's request
 * interception does not show every header, e.g. not EventSource's Last-Event-ID).
 * `hold(req)` may return a promise: the request is forwarded once it settles.
 */
export async function testServer({ upstream, hold } = {}) {
  const target = upstream ? new URL(upstream) : null;
  const sockets = new Set();
  const self = { refused: 0, requests: [], headers: [] };
  const server = http.createServer(async (req, res) => {
    self.requests.push(`${req.method} ${req.url}`);
    self.headers.push(req.headers);
    if (hold) {
      req.pause();
      try { await hold(req); } catch { /* forward anyway */ }
      if (res.destroyed) return;
    }
    if (req.method === 'GET' && new URL(req.url, 'http://x').pathname === '/page') {
      res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8', 'Cache-Control': 'no-store' });
      res.end(BLANK);
      return;
    }
    if (target && process.env.HERALD_CLIENT_JS && req.method === 'GET' && new URL(req.url, 'http://x').pathname === '/client/herald.js') {
      readFile(process.env.HERALD_CLIENT_JS).then((body) => {
        res.writeHead(200, { 'Content-Type': 'text/javascript; charset=utf-8', 'Cache-Control': 'no-store' });
        res.end(body);
      }, () => { res.writeHead(404); res.end(); });
      return;
    }
    if (!target) {
      res.writeHead(404, { 'Content-Type': 'text/plain' });
      res.end('not here');
      return;
    }
    const up = http.request({ host: target.hostname, port: target.port, method: req.method, path: req.url, headers: req.headers, agent: false }, (r) => {
      res.writeHead(r.statusCode, r.headers);
      r.pipe(res);
    });
    up.on('error', () => res.destroy());
    res.on('close', () => up.destroy()); // the browser went away: so does the upstream request
    req.pipe(up);
  });
  server.on('upgrade', (_req, socket) => {
    self.refused += 1;
    socket.end('HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 22\r\nConnection: close\r\n\r\nno WebSockets through');
  });
  server.on('connection', (s) => { sockets.add(s); s.on('close', () => sockets.delete(s)); });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${server.address().port}`;
  return Object.assign(self, {
    url,
    close: () => new Promise((r) => { for (const s of sockets) s.destroy(); server.close(() => r()); }),
  });
}
