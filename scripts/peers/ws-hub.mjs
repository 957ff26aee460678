// A Node `ws` hub (node:http + the `ws` package) that speaks the subset of herald's
// protocol `herald bench` uses, so that the same bench run can be pointed at it and at
// herald (see README.md).
//
//   node ws-hub.mjs [--host 127.0.0.1] [--port 0] [--max-backpressure BYTES] [--preframed]
//                   [--close-on-backpressure]
//
// A publication is serialised and UTF-8-encoded once (one Buffer), then `ws.send(buf)`
// to every subscriber: ws adds a 2–4 byte header per socket and writes both with one
// corked writev. With `--preframed` the whole frame (header + payload) is built once with
// ws's own `Sender.frame` and written to each socket as is (`ws._socket.write`): it
// skips ws's per-send work, through a private field, so it is off by default.
// `queued` counts every open subscriber; a subscriber whose `bufferedAmount` is over
// `--max-backpressure` (default 1 MiB, herald's `ws.queue_bytes`) is skipped, as uWS
// does, and the bench counts its copy as lost; with `--close-on-backpressure` it is
// terminated instead (as uWS's `closeOnBackpressureLimit`; herald closes with 4000).
// No permessage-deflate, no heartbeat (the bench needs none).
import http from "node:http";
import { Sender, WebSocket, WebSocketServer } from "ws";

const EPOCH = "0000000000000000";
const MAX_BODY = 1024 * 1024; // herald's `limits.http_body_bytes`
const MAX_MESSAGE = 64 * 1024; // herald's `ws.max_message_bytes`
const SEND_OPTS = { binary: false, compress: false, fin: true };
const FRAME_OPTS = { fin: true, opcode: 0x01, mask: false, readOnly: false, rsv1: false };

const opts = parseArgs(process.argv.slice(2), {
  host: "127.0.0.1",
  port: "0",
  "max-backpressure": String(1024 * 1024),
  preframed: null, // a flag
  "close-on-backpressure": null, // a flag
});
const port = Number(opts.port);
const maxBackpressure = Number(opts["max-backpressure"]);
const preframed = opts.preframed !== null;
const closeOnBackpressure = opts["close-on-backpressure"] !== null;
if (!Number.isInteger(port) || port < 0 || port > 65535) die(`bad --port ${opts.port}`);
if (!Number.isInteger(maxBackpressure) || maxBackpressure < 1) die("bad --max-backpressure");

let nextConn = 0;
/** every open socket */
const all = new Set();
/** channel name → { subs: Set<WebSocket>, offset: last offset published } */
const channels = new Map();
const counts = { publications: 0, recipients: 0, skipped: 0, closed: 0 };

const wss = new WebSocketServer({
  noServer: true,
  perMessageDeflate: false,
  maxPayload: MAX_MESSAGE,
  clientTracking: false,
});

const server = http.createServer((req, res) => {
  const path = req.url.split("?", 1)[0];
  if (req.method === "GET" && path === "/healthz") return json(res, 200, '{"status":"ok"}');
  if (req.method === "POST" && path === "/api/publish") {
    return readBody(req, res, (body) => {
      const p = body && publication(body);
      if (!p) return badRequest(res);
      json(res, 200, JSON.stringify(apply(p)));
    });
  }
  if (req.method === "POST" && path === "/api/publish/batch") {
    return readBody(req, res, (body) => {
      const list = body && Array.isArray(body.publications) ? body.publications : null;
      const ps = list && list.map(publication);
      if (!ps || ps.some((p) => !p)) return badRequest(res);
      json(res, 200, JSON.stringify({ results: ps.map(apply) }));
    });
  }
  res.writeHead(404, { "content-type": "text/plain" }).end("not found\n");
});

server.on("upgrade", (req, socket, head) => {
  if (req.url.split("?", 1)[0] !== "/ws") {
    socket.end("HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
    return;
  }
  // No verifyClient: any token, any Origin.
  wss.handleUpgrade(req, socket, head, onOpen);
});

server.listen(port, opts.host, () => {
  console.log(`listening on http://${opts.host}:${server.address().port}`);
});
server.on("error", (e) => die(`cannot listen on ${opts.host}:${port}: ${e.message}`));

for (const sig of ["SIGTERM", "SIGINT"]) {
  process.on(sig, () => {
    console.error(
      `ws-hub: ${counts.publications} publications to ${counts.recipients} recipients, ` +
        `${counts.skipped} skipped over --max-backpressure, ${counts.closed} closed for it; ` +
        `stopping on ${sig}`,
    );
    process.exit(0);
  });
}

function onOpen(ws) {
  /** this socket's channels */
  const mine = new Set();
  all.add(ws);
  ws.on("close", () => {
    all.delete(ws);
    for (const name of mine) {
      const ch = channels.get(name);
      ch?.subs.delete(ws);
    }
  });
  ws.on("error", () => {}); // a reset client: `close` follows
  ws.on("message", (data, isBinary) => {
    const reply = clientMessage(data.toString(), isBinary, {
      subscribe: (name) => {
        mine.add(name);
        channel(name).subs.add(ws);
      },
      unsubscribe: (name) => {
        mine.delete(name);
        channels.get(name)?.subs.delete(ws);
      },
    });
    if (reply) ws.send(reply);
  });
  ws.send(
    `{"type":"connected","conn_id":"p-${++nextConn}","user_id":"u","node":"peer","heartbeat_s":25}`,
  );
}

function channel(name) {
  let ch = channels.get(name);
  if (!ch) {
    ch = { subs: new Set(), offset: 0 };
    channels.set(name, ch);
  }
  return ch;
}

/** Publishes one checked publication; returns its `{"queued":n}` answer. */
function apply(p) {
  counts.publications++;
  if (p.channel === undefined) {
    return { queued: broadcast(all, `{"type":"pub","data":${p.data}}`) };
  }
  const ch = channel(p.channel);
  const offset = ++ch.offset;
  const text = `{"type":"pub","channel":"${p.channel}","offset":${offset},"epoch":"${EPOCH}","data":${p.data}}`;
  return { queued: broadcast(ch.subs, text), offset, epoch: EPOCH };
}

/** Sends `text` to every open socket of `subs`, encoded (and with --preframed framed) once. */
function broadcast(subs, text) {
  const payload = Buffer.from(text);
  let frame = null;
  if (preframed) {
    const parts = Sender.frame(payload, FRAME_OPTS);
    frame = parts.length === 1 ? parts[0] : Buffer.concat(parts);
  }
  let queued = 0;
  for (const ws of subs) {
    if (ws.readyState !== WebSocket.OPEN) continue;
    queued++;
    if (ws.bufferedAmount > maxBackpressure) {
      if (closeOnBackpressure) {
        counts.closed++;
        ws.terminate();
      } else {
        counts.skipped++;
      }
      continue;
    }
    if (frame) ws._socket.write(frame);
    else ws.send(payload, SEND_OPTS);
  }
  counts.recipients += queued;
  return queued;
}

// ---- shared with uws-hub.mjs (kept in each file so that each runs alone) ----

/**
 * A publish body checked like herald does for the two targets the bench uses:
 * `{"all":true,"data":…}` or `{"channel":NAME,"data":…}`. Returns `{channel?, data}` with
 * `data` re-serialised as JSON (a bench `data` is a plain string: byte-for-byte what was
 * sent), or null if the body is not one of those.
 */
function publication(body) {
  if (body === null || typeof body !== "object" || Array.isArray(body)) return null;
  if (!("data" in body)) return null;
  const data = JSON.stringify(body.data);
  const hasChannel = body.channel !== undefined && body.channel !== null;
  if (body.all === true && !hasChannel) return { data };
  if (hasChannel && body.all !== true && validChannel(body.channel)) {
    return { channel: body.channel, data };
  }
  return null;
}

/** herald's channel-name rule: 1–256 bytes of letters, digits and `_.:@-`. */
function validChannel(name) {
  return (
    typeof name === "string" &&
    /^[A-Za-z0-9_.:@-]{1,256}$/.test(name) &&
    !name.startsWith("default:")
  );
}

/** The reply to a client's text message (`subscribe` / `unsubscribe`), or null. */
function clientMessage(text, isBinary, subs) {
  let msg;
  try {
    msg = isBinary ? null : JSON.parse(text);
  } catch {
    msg = null;
  }
  if (msg === null || typeof msg !== "object") {
    return errorFrame("bad_request", "messages are JSON objects", undefined);
  }
  const ref = msg.ref === undefined ? "" : `,"ref":${JSON.stringify(msg.ref)}`;
  if (msg.type === "subscribe" || msg.type === "unsubscribe") {
    if (!validChannel(msg.channel)) {
      return errorFrame("bad_request", "bad channel name", msg.ref);
    }
    if (msg.type === "unsubscribe") {
      subs.unsubscribe(msg.channel);
      return `{"type":"unsubscribed","channel":"${msg.channel}"${ref}}`;
    }
    subs.subscribe(msg.channel);
    const offset = channels.get(msg.channel)?.offset ?? 0;
    return `{"type":"subscribed","channel":"${msg.channel}","offset":${offset},"epoch":"${EPOCH}","recovered":false${ref}}`;
  }
  if (msg.type === "ping") return `{"type":"pong"}`;
  return errorFrame("bad_request", "this peer knows subscribe, unsubscribe and ping only", msg.ref);
}

function errorFrame(code, message, ref) {
  return JSON.stringify({ type: "error", code, message, ...(ref === undefined ? {} : { ref }) });
}

function parseArgs(argv, defaults) {
  const out = { ...defaults };
  for (let i = 0; i < argv.length; i++) {
    const m = /^--([a-z-]+)(?:=(.*))?$/.exec(argv[i]);
    if (!m || !(m[1] in defaults)) die(`unknown argument ${argv[i]}; known: ${Object.keys(defaults).map((k) => `--${k}`).join(" ")}`);
    if (defaults[m[1]] === null) {
      out[m[1]] = "1"; // a flag
      continue;
    }
    const value = m[2] ?? argv[++i];
    if (value === undefined) die(`--${m[1]} needs a value`);
    out[m[1]] = value;
  }
  return out;
}

function die(why) {
  console.error(`ws-hub: ${why}`);
  process.exit(2);
}

// ---- node:http plumbing ----

function json(res, status, text) {
  res.writeHead(status, { "content-type": "application/json" }).end(text);
}

function badRequest(res) {
  json(
    res,
    400,
    '{"error":"bad_request","message":"give exactly one target: `channel` or `all: true`, and `data`"}',
  );
}

/** Reads a JSON body (≤ MAX_BODY) and calls `then(parsed)`, `then(null)` if not JSON. */
function readBody(req, res, then) {
  const chunks = [];
  let size = 0;
  let over = false;
  req.on("data", (chunk) => {
    if (over) return;
    size += chunk.length;
    if (size > MAX_BODY) {
      over = true;
      res.writeHead(413, { connection: "close" }).end();
      return;
    }
    chunks.push(chunk);
  });
  req.on("end", () => {
    if (over) return;
    let body;
    try {
      body = JSON.parse(Buffer.concat(chunks, size).toString());
    } catch {
      body = null;
    }
    then(body);
  });
  req.on("error", () => {});
}
