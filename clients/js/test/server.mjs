// Test helpers: a real herald process per test file, tokens from its CLI, the HTTP API
// with the data dir's API key, and polling with deadlines (never sleep-and-hope).
//
// HERALD_BIN picks the binary (default ../../target/debug/herald relative to clients/js).
// node --test also loads this file as a "test file"; importing it has no side effects
// beyond registering an exit hook that kills any server still running.

import { spawn, execFile } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { createServer, connect as tcpConnect } from "node:net";
import http from "node:http";

const here = dirname(fileURLToPath(import.meta.url));
export const HERALD_BIN = resolve(join(here, ".."), process.env.HERALD_BIN ?? "../../target/debug/herald");

const live = new Set();
process.on("exit", () => {
  for (const child of live) {
    try {
      child.kill("SIGCONT");
      child.kill("SIGKILL");
    } catch {
      /* gone */
    }
  }
});

/** Polls `cond` until it returns a truthy value, or throws after `timeoutMs`. */
export async function waitFor(cond, { timeoutMs = 10000, intervalMs = 20, what = "condition" } = {}) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await cond();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/** Resolves with the first emission of `event` on `emitter` (optionally matching `filter`). */
export function nextEvent(emitter, event, { timeoutMs = 10000, filter = () => true } = {}) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(new Error(`timed out after ${timeoutMs} ms waiting for event "${event}"`));
    }, timeoutMs);
    const off = emitter.on(event, (...args) => {
      if (!filter(...args)) return;
      clearTimeout(timer);
      off();
      resolve(args.length > 1 ? args : args[0]);
    });
  });
}

/** Records every emission of the named events: `log.events` is [[name, ...args], …]. */
export function record(emitter, names) {
  const events = [];
  for (const name of names) emitter.on(name, (...args) => events.push([name, ...args]));
  return {
    events,
    of: (name) => events.filter((e) => e[0] === name).map((e) => e[1]),
  };
}

/** A TCP port on 127.0.0.1 that nothing listens on (connections are refused). */
export async function deadPort() {
  const srv = createServer();
  await new Promise((r) => srv.listen(0, "127.0.0.1", r));
  const { port } = srv.address();
  await new Promise((r) => srv.close(r));
  return port;
}

/**
 * A WebSocket class (the real one) whose connections the test can cut off: while
 * `gate.open` is false, new connections go to a refused port, as if the network were
 * down. `gate.sockets` lists every socket made.
 */
export async function gatedWebSocket() {
  const port = await deadPort();
  const gate = { open: true, sockets: [], attempts: 0 };
  gate.WebSocket = class GatedWebSocket extends WebSocket {
    constructor(url, protocols) {
      gate.attempts += 1;
      super(gate.open ? url : `ws://127.0.0.1:${port}/ws`, protocols);
      gate.sockets.push(this);
    }
  };
  return gate;
}

/**
 * A TCP proxy in front of the server whose server → client direction the test can stop:
 * `pause()` stops reading from the server's socket, so the kernel's buffers fill and
 * then the server's outbound queue for that connection, exactly as with a client that
 * reads too slowly; `resume()` reads on. Client → server bytes always flow (pings and
 * subscribes still reach the server). `wsUrl` is the server's /ws through the proxy.
 */
export async function pausableProxy(targetPort) {
  const pairs = new Set();
  let paused = false;
  const srv = createServer((client) => {
    const upstream = tcpConnect(targetPort, "127.0.0.1");
    const pair = { client, upstream };
    pairs.add(pair);
    const end = () => {
      pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on("error", end).on("close", end);
    upstream.on("error", end).on("close", end);
    client.on("data", (d) => {
      if (!upstream.write(d)) client.pause();
    });
    upstream.on("drain", () => client.resume());
    upstream.on("data", (d) => {
      if (!client.write(d)) upstream.pause();
    });
    client.on("drain", () => {
      if (!paused) upstream.resume();
    });
    if (paused) upstream.pause();
  });
  await new Promise((r) => srv.listen(0, "127.0.0.1", r));
  const { port } = srv.address();
  return {
    port,
    wsUrl: `ws://127.0.0.1:${port}/ws`,
    get paused() {
      return paused;
    },
    pause() {
      paused = true;
      for (const p of pairs) p.upstream.pause();
    },
    resume() {
      paused = false;
      for (const p of pairs) p.upstream.resume();
    },
    async close() {
      for (const p of pairs) {
        p.client.destroy();
        p.upstream.destroy();
      }
      await new Promise((r) => srv.close(r));
    },
  };
}

/**
 * An HTTP proxy in front of the server that forwards ordinary requests (streamed both
 * ways, so an event stream flows) but refuses every WebSocket upgrade with 400, as some
 * corporate proxies do. `refused` counts the refused upgrades; `wsUrl` is /ws through it.
 */
export async function noUpgradeProxy(targetPort) {
  const sockets = new Set();
  const proxy = { refused: 0, requests: [] };
  const srv = http.createServer((req, res) => {
    proxy.requests.push(`${req.method} ${req.url}`);
    const up = http.request(
      { host: "127.0.0.1", port: targetPort, method: req.method, path: req.url, headers: req.headers, agent: false },
      (r) => {
        res.writeHead(r.statusCode, r.headers);
        r.pipe(res);
      },
    );
    up.on("error", () => res.destroy());
    res.on("close", () => up.destroy());
    req.pipe(up);
  });
  srv.on("upgrade", (req, socket) => {
    proxy.refused += 1;
    socket.end("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
  });
  srv.on("connection", (s) => {
    sockets.add(s);
    s.on("close", () => sockets.delete(s));
  });
  await new Promise((r) => srv.listen(0, "127.0.0.1", r));
  const { port } = srv.address();
  return Object.assign(proxy, {
    port,
    wsUrl: `ws://127.0.0.1:${port}/ws`,
    http: `http://127.0.0.1:${port}`,
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise((r) => srv.close(r));
    },
  });
}

function cleanEnv(extra) {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (!k.startsWith("HERALD_")) env[k] = v;
  }
  return { ...env, NO_COLOR: "1", ...extra };
}

function run(args, { env } = {}) {
  return new Promise((resolve, reject) => {
    execFile(HERALD_BIN, args, { env: cleanEnv(env), timeout: 15000 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`herald ${args.join(" ")}: ${err.message}\n${stderr}`));
      else resolve(stdout);
    });
  });
}

/**
 * Starts `herald serve` on 127.0.0.1 with a fresh data dir (or the given one / port).
 * `env` adds HERALD_… settings, `config` the text of a TOML configuration file, e.g.
 * namespaces (`[namespaces.ticker]` …) (docs/configuration.md).
 */
export async function startServer({ env = {}, config, dataDir, port = 0 } = {}) {
  const dir = dataDir ?? mkdtempSync(join(tmpdir(), "herald-js-"));
  const args = ["serve", "--listen", `127.0.0.1:${port}`, "--data-dir", dir];
  if (config !== undefined) {
    const file = join(dir, "herald.toml");
    writeFileSync(file, config);
    args.push("--config", file);
  }
  const child = spawn(HERALD_BIN, args, {
    env: cleanEnv(env),
    stdio: ["ignore", "pipe", "pipe"],
  });
  live.add(child);
  let output = "";
  const exited = new Promise((r) =>
    child.on("exit", (code, signal) => {
      live.delete(child);
      r({ code, signal });
    }),
  );
  const address = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`herald did not start in 15 s:\n${output}`)), 15000);
    const onData = (chunk) => {
      output += chunk;
      const m = /listening on (http:\/\/127\.0\.0\.1:(\d+))/.exec(output);
      if (m) {
        clearTimeout(timer);
        resolve({ http: m[1], port: Number(m[2]) });
      }
    };
    child.stdout.setEncoding("utf8").on("data", onData);
    child.stderr.setEncoding("utf8").on("data", onData);
    child.on("error", (e) => {
      clearTimeout(timer);
      reject(e);
    });
    exited.then(({ code, signal }) => {
      clearTimeout(timer);
      reject(new Error(`herald exited (${code ?? signal}) before listening:\n${output}`));
    });
  });
  const apiKey = readFileSync(join(dir, "api_key"), "utf8").trim();
  const server = {
    dataDir: dir,
    port: address.port,
    http: address.http,
    wsUrl: `ws://127.0.0.1:${address.port}/ws`,
    apiKey,
    env,
    pid: child.pid,
    get output() {
      return output;
    },
    /** Mints a user token with the server's CLI. */
    async token(sub, { device, ttl = "1h", admin = false, channels } = {}) {
      const args = ["token", "--data-dir", dir, "--sub", sub, "--ttl", ttl];
      if (device) args.push("--device", device);
      if (admin) args.push("--admin");
      if (channels) args.push("--channels", channels.join(","));
      return (await run(args, { env })).trim();
    },
    /** Calls the HTTP API with the API key; returns {status, body}. */
    async api(method, path, body) {
      const res = await fetch(`${address.http}${path}`, {
        method,
        headers: {
          authorization: `Bearer ${apiKey}`,
          ...(body !== undefined ? { "content-type": "application/json" } : {}),
        },
        body: body !== undefined ? JSON.stringify(body) : undefined,
        signal: AbortSignal.timeout(10000),
      });
      const text = await res.text();
      let json = null;
      try {
        json = JSON.parse(text);
      } catch {
        /* not JSON */
      }
      return { status: res.status, body: json ?? text };
    },
    /** POST /api/publish {channel, data}; throws unless 200. */
    async publish(channel, data) {
      const r = await server.api("POST", "/api/publish", { channel, data });
      if (r.status !== 200) throw new Error(`publish ${channel}: ${r.status} ${JSON.stringify(r.body)}`);
      return r.body;
    },
    signal(sig) {
      child.kill(sig);
    },
    /** SIGTERM (graceful: clients get 1001), then SIGKILL after 10 s. */
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill("SIGCONT");
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), 10000);
      await exited;
      clearTimeout(timer);
    },
    /** Stops this process and starts a new one on the same port and data dir. */
    async restart() {
      await server.stop();
      return startServer({ env, config, dataDir: dir, port: address.port });
    },
    /** Stops the server and removes its data dir. */
    async dispose() {
      await server.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
  return server;
}
