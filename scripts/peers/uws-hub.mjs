// A uWebSockets.js hub that speaks the subset of herald's protocol `herald bench` uses,
// so that the same bench run can be pointed at it and at herald (see README.md).
//
//   node uws-hub.mjs [--host 127.0.0.1] [--port 0] [--max-backpressure BYTES]
//                    [--close-on-backpressure]
//
// Every socket subscribes to the topic `#all` on open (channel names cannot contain `#`,
// so it never meets a channel's topic `c:NAME`). A publication is serialised once and
// handed to uWS's pub/sub with `app.publish(topic, msg, false)`; `queued` is
// `app.numSubscribers(topic)` just before. A socket over `maxBackpressure` is skipped by
// uWS (its copy is lost, and the bench counts it as lost); the default 1 MiB matches
// herald's per-connection queue (`ws.queue_bytes`). With `--close-on-backpressure` uWS
// closes such a socket instead (`closeOnBackpressureLimit`), as herald does (close 4000).
import uWS from "uwebsockets";

const EPOCH = "0000000000000000";
const ALL = "#all";
const MAX_BODY = 1024 * 1024; // herald's `limits.http_body_bytes`
const MAX_MESSAGE = 64 * 1024; // herald's `ws.max_message_bytes`

const opts = parseArgs(process.argv.slice(2), {
  host: "127.0.0.1",
  port: "0",
  "max-backpressure": String(1024 * 1024),
  "close-on-backpressure": null, // a flag
  compression: null, // a flag: permessage-deflate with uWS's shared compressor
});
const compress = opts.compression !== null;
const port = Number(opts.port);
const maxBackpressure = Number(opts["max-backpressure"]);
if (!Number.isInteger(port) || port < 0 || port > 65535) die(`bad --port ${opts.port}`);
if (!Number.isInteger(maxBackpressure) || maxBackpressure < 1) die("bad --max-backpressure");

let nextConn = 0;
/** channel name → last offset published to it */
const offsets = new Map();
const counts = { publications: 0, recipients: 0 };

const app = uWS.App();

app.ws("/ws", {
  compression: compress ? uWS.SHARED_COMPRESSOR : uWS.DISABLED,
  maxPayloadLength: MAX_MESSAGE,
  maxBackpressure,
  closeOnBackpressureLimit: opts["close-on-backpressure"] !== null ? 1 : 0, // an int in uWS
  idleTimeout: 120,
  sendPingsAutomatically: true,
  // Every upgrade is accepted (any token, any Origin); one with `X-API-Key` is a
  // backend publisher, as in herald: not subscribed to everyone, its `publish` frames
  // applied and acked in order (`herald bench --publisher ws`).
  upgrade: (res, req, context) => {
    res.upgrade(
      { backend: req.getHeader("x-api-key") !== "" },
      req.getHeader("sec-websocket-key"),
      req.getHeader("sec-websocket-protocol"),
      req.getHeader("sec-websocket-extensions"),
      context,
    );
  },
  open: (ws) => {
    if (!ws.getUserData().backend) ws.subscribe(ALL);
    ws.send(
      `{"type":"connected","conn_id":"p-${++nextConn}","user_id":"u","node":"peer","heartbeat_s":25}`,
      false,
    );
  },
  message: (ws, message, isBinary) => {
    if (ws.getUserData().backend && !isBinary) {
      const reply = backendMessage(Buffer.from(message).toString());
      if (reply) return void ws.send(reply, false);
    }
    const reply = clientMessage(Buffer.from(message).toString(), isBinary, {
      subscribe: (name) => ws.subscribe(`c:${name}`),
      unsubscribe: (name) => ws.unsubscribe(`c:${name}`),
    });
    if (reply) ws.send(reply, false);
  },
});

app.get("/healthz", (res) => {
  json(res, "200 OK", '{"status":"ok"}');
});

app.post("/api/publish", (res) => {
  readBody(res, (body) => {
    const p = body && publication(body);
    if (!p) return badRequest(res);
    json(res, "200 OK", JSON.stringify(apply(p)));
  });
});

app.post("/api/publish/batch", (res) => {
  readBody(res, (body) => {
    const list = body && Array.isArray(body.publications) ? body.publications : null;
    const ps = list && list.map(publication);
    if (!ps || ps.some((p) => !p)) return badRequest(res);
    json(res, "200 OK", JSON.stringify({ results: ps.map(apply) }));
  });
});

app.any("/*", (res) => {
  res.writeStatus("404 Not Found").writeHeader("content-type", "text/plain").end("not found\n");
});

app.listen(opts.host, port, (listenSocket) => {
  if (!listenSocket) die(`cannot listen on ${opts.host}:${port}`);
  console.log(`listening on http://${opts.host}:${uWS.us_socket_local_port(listenSocket)}`);
});

for (const sig of ["SIGTERM", "SIGINT"]) {
  process.on(sig, () => {
    console.error(
      `uws-hub: ${counts.publications} publications to ${counts.recipients} recipients; stopping on ${sig}`,
    );
    process.exit(0);
  });
}

/** A backend's `publish` frame applied, answered with herald's `ack`; null otherwise. */
function backendMessage(text) {
  let msg;
  try {
    msg = JSON.parse(text);
  } catch {
    return null;
  }
  if (msg === null || typeof msg !== "object" || msg.type !== "publish") return null;
  const ref = msg.ref === undefined ? "" : `,"ref":${JSON.stringify(msg.ref)}`;
  const p = publication(msg);
  if (!p) return errorFrame("bad_request", "publish all or a channel", msg.ref);
  const answer = apply(p);
  const offset = answer.offset === undefined ? "" : `,"offset":${answer.offset}`;
  return `{"type":"ack"${ref}${offset}}`;
}

/** Publishes one checked publication; returns its `{"queued":n}` answer. */
function apply(p) {
  counts.publications++;
  if (p.channel === undefined) {
    const queued = app.numSubscribers(ALL);
    counts.recipients += queued;
    app.publish(ALL, `{"type":"pub","data":${p.data}}`, false, compress);
    return { queued };
  }
  const offset = (offsets.get(p.channel) ?? 0) + 1;
  offsets.set(p.channel, offset);
  const topic = `c:${p.channel}`;
  const queued = app.numSubscribers(topic);
  counts.recipients += queued;
  app.publish(
    topic,
    `{"type":"pub","channel":"${p.channel}","offset":${offset},"epoch":"${EPOCH}","data":${p.data}}`,
    false,
    compress,
  );
  return { queued, offset, epoch: EPOCH };
}

// ---- shared with ws-hub.mjs (kept in each file so that each runs alone) ----

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
    const offset = offsets.get(msg.channel) ?? 0;
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
  console.error(`uws-hub: ${why}`);
  process.exit(2);
}

// ---- uWS HTTP plumbing ----

function json(res, status, text) {
  res.cork(() => {
    res.writeStatus(status).writeHeader("content-type", "application/json").end(text);
  });
}

function badRequest(res) {
  json(
    res,
    "400 Bad Request",
    '{"error":"bad_request","message":"give exactly one target: `channel` or `all: true`, and `data`"}',
  );
}

/** Reads a JSON body (≤ MAX_BODY) and calls `then(parsed)`, `then(null)` if not JSON. */
function readBody(res, then) {
  let aborted = false;
  let chunks = [];
  let size = 0;
  res.onAborted(() => {
    aborted = true;
  });
  res.onData((ab, isLast) => {
    if (aborted || chunks === null) return;
    size += ab.byteLength;
    if (size > MAX_BODY) {
      chunks = null;
      res.cork(() => res.writeStatus("413 Payload Too Large").end());
      return;
    }
    // `ab` is only valid during this call: copy it (Buffer.from(Uint8Array) copies).
    chunks.push(Buffer.from(new Uint8Array(ab)));
    if (!isLast) return;
    let body;
    try {
      body = JSON.parse(Buffer.concat(chunks, size).toString());
    } catch {
      body = null;
    }
    chunks = null;
    then(body);
  });
}
