// @herald/client — the JavaScript client for herald (docs/protocol.md, DESIGN.md §3).
//
// One ES module, no dependencies, no build step: the server serves this very file at
// /client/herald.js. It runs in browsers and in Node >= 20 (with --experimental-websocket,
// or pass a WebSocket implementation as the `WebSocket` option).
//
// What it does for the application:
//   - connects with the token in the query string (`?token=`; browsers cannot set headers),
//   - reconnects with capped exponential backoff and jitter, except after 1008 / 4004,
//   - re-subscribes every channel with `since` {offset, epoch} so nothing is missed, drops
//     duplicates, and says `lost` when the server could not recover (reload state),
//   - recovers on the live connection the same way when the server says publications
//     were `skipped` (drop_oldest, or a gap from other nodes),
//   - detects dead connections from app-level pings (nothing received for ~2 heartbeats),
//   - refreshes the JWT before it expires (`refresh` frame) with `getToken()`,
//   - resolves `publish()` by its `ack` (rejects on an `error` with the same ref),
//   - announcement (seed 003) and cross-device sync (seed 002) helpers,
//   - falls back to Server-Sent Events (`GET /sse`, the browser's EventSource) when the
//     WebSocket cannot open (a proxy that refuses the upgrade): the same frames one way,
//     publishes and acks over the HTTP API with the same token.

const DEFAULT_BACKOFF = Object.freeze({
  initialMs: 500,
  maxMs: 30000,
  factor: 2,
  jitter: 0.5,
  // A connection that stayed up this long resets the backoff to its first step; one
  // that is closed sooner (accepted, then refused again) keeps climbing.
  resetAfterMs: 5000,
});

// Closes after which retrying with the same credentials is pointless: 1008 (policy: rate
// limit exceeded persistently, auth) and 4004 (disconnected by the server: an admin or a
// revocation). Every other close, including abnormal ones (1005/1006), is retried.
const TERMINAL_CODES = new Set([1008, 4004]);
// Closes after which a fresh token is fetched (when `getToken` is set) before retrying.
const FRESH_TOKEN_CODES = new Set([4001, 4002]);
const CODE_RESYNC = 4003;
const CODE_TOKEN_EXPIRED = 4002;

const MAX_TIMEOUT_MS = 2 ** 31 - 1; // setTimeout's limit (~24.8 days)

const TRANSPORTS = Object.freeze(["websocket", "sse"]);
// After falling back to a later transport, the first one is tried again at a reconnect
// that comes at least this long after it failed.
const DEFAULT_TRANSPORT_RETRY_MS = 5 * 60 * 1000;
// /sse names each event by its frame's `type`; EventSource has no catch-all listener,
// so these are the frames the client reads (`message`: a frame without a type). `error`
// is also EventSource's own failure event: the server's has `data`, a failure has none.
const SSE_EVENTS = Object.freeze([
  "connected",
  "pub",
  "subscribed",
  "unsubscribed",
  "skipped",
  "ack",
  "error",
  "presence",
  "pong",
  "new_broadcast",
  "active_broadcast",
  "broadcast_cleared",
  "message",
]);

/** An error from the server (`error` frame) or from the client itself. */
export class HeraldError extends Error {
  /**
   * @param {string} code e.g. `bad_request`, `forbidden`, `not_connected`, `timeout`
   * @param {string} message
   * @param {object} [frame] the server's `error` frame, when there is one
   */
  constructor(code, message, frame) {
    super(message);
    this.name = "HeraldError";
    this.code = code;
    if (frame !== undefined) this.frame = frame;
    if (frame && frame.ref !== undefined) this.ref = frame.ref;
  }
}

/** A tiny event emitter: `on` (returns an unsubscribe function), `off`, `once`. */
export class Emitter {
  #listeners = new Map();

  on(event, listener) {
    if (typeof listener !== "function") throw new TypeError("listener must be a function");
    let set = this.#listeners.get(event);
    if (!set) this.#listeners.set(event, (set = new Set()));
    set.add(listener);
    return () => this.off(event, listener);
  }

  once(event, listener) {
    if (typeof listener !== "function") throw new TypeError("listener must be a function");
    const wrapper = (...args) => {
      this.off(event, wrapper);
      listener.apply(this, args);
    };
    wrapper.listener = listener;
    return this.on(event, wrapper);
  }

  /** Removes `listener` (also one added with `once`), or every listener of `event`. */
  off(event, listener) {
    const set = this.#listeners.get(event);
    if (!set) return this;
    if (listener === undefined) {
      this.#listeners.delete(event);
      return this;
    }
    for (const l of set) {
      if (l === listener || l.listener === listener) set.delete(l);
    }
    if (set.size === 0) this.#listeners.delete(event);
    return this;
  }

  listenerCount(event) {
    return this.#listeners.get(event)?.size ?? 0;
  }

  /** Calls every listener; one that throws does not stop the others or the client. */
  emit(event, ...args) {
    const set = this.#listeners.get(event);
    if (!set) return false;
    for (const listener of [...set]) {
      try {
        listener.apply(this, args);
      } catch (err) {
        // Surface it like an uncaught exception (console in browsers, crash in Node,
        // like EventEmitter), but after the client's own bookkeeping is done.
        queueMicrotask(() => {
          throw err;
        });
      }
    }
    return true;
  }
}

/**
 * Decodes a JWT's payload (base64url JSON) without verifying anything: the client only
 * needs `exp` to know when to refresh. Returns null when it is not a JWT.
 * @param {string} token
 */
export function decodeJwtPayload(token) {
  if (typeof token !== "string") return null;
  const parts = token.split(".");
  if (parts.length !== 3) return null;
  try {
    let b64 = parts[1].replace(/-/g, "+").replace(/_/g, "/");
    while (b64.length % 4) b64 += "=";
    const bin = atob(b64);
    const bytes = Uint8Array.from(bin, (c) => c.charCodeAt(0));
    const payload = JSON.parse(new TextDecoder().decode(bytes));
    return payload && typeof payload === "object" ? payload : null;
  } catch {
    return null;
  }
}

function tokenExpiry(token) {
  const exp = decodeJwtPayload(token)?.exp;
  return typeof exp === "number" && Number.isFinite(exp) ? exp : null;
}

function withToken(url, token) {
  if (!token) return url;
  const hashAt = url.indexOf("#");
  const base = hashAt === -1 ? url : url.slice(0, hashAt);
  const sep = base.includes("?") ? "&" : "?";
  return `${base}${sep}token=${encodeURIComponent(token)}`;
}

/**
 * The HTTP side of a WebSocket URL: `wss://host/prefix/ws?x=1` → `https://host/prefix`
 * (the base of `/sse` and `/api/…`) and the query to keep (`x=1`, without `token`).
 * A relative URL is taken relative to the page. Throws on a URL that cannot be parsed.
 */
function httpSideOf(wsUrl) {
  const u = new URL(wsUrl, globalThis.location?.href);
  if (u.protocol === "wss:") u.protocol = "https:";
  else if (u.protocol === "ws:") u.protocol = "http:";
  let path = u.pathname.replace(/\/+$/, "");
  if (path.endsWith("/ws")) path = path.slice(0, -3);
  const keep = new URLSearchParams(u.search);
  for (const k of ["token", "channels", "since"]) keep.delete(k);
  return { base: `${u.origin}${path}`, query: keep.toString() };
}

/** Encoded for a query string, keeping `:` and `@` (channel names and positions) readable. */
function queryPart(s) {
  return encodeURIComponent(s).replace(/%3A/gi, ":").replace(/%40/g, "@");
}

/** `<epoch>:<offset>` for a usable position, else "". */
function positionId(p) {
  return p && typeof p.offset === "number" && typeof p.epoch === "string" && p.epoch !== "" ? `${p.epoch}:${p.offset}` : "";
}

/**
 * One channel subscription. Events: `subscribed` (the frame), `publication` (a `pub`
 * frame, never a duplicate), `recovered` / `lost` (after a re-subscribe with `since`),
 * `skipped` (publications that will not come on this connection), `presence`,
 * `unsubscribed`, `error` (a HeraldError).
 */
export class Subscription extends Emitter {
  /** @internal */
  constructor(client, channel, since) {
    super();
    this.client = client;
    this.channel = channel;
    /** `subscribing` | `subscribed` | `failed` | `unsubscribed` */
    this.state = "subscribing";
    /** Last position seen on this channel, `{offset, epoch}`, or null. */
    this.position = since ? { offset: since.offset, epoch: since.epoch } : null;
    /** @internal the `since` sent with the pending subscribe */
    this._sentSince = null;
    /**
     * @internal A recovery on the live connection after `skipped`, or null:
     * `{since, upTo, unsubRef, draining}`. While `draining`, publications of the old
     * subscription still arrive; the replay from `since` brings them again, in order.
     */
    this._skip = null;
    /**
     * @internal Set while the SSE stream is reopened under a live subscription (a
     * change of channels, a new token): its `subscribed` answer is not news, only a
     * `lost` is.
     */
    this._quiet = false;
    /**
     * @internal Offsets (in the position's epoch) of this client's own acked
     * publications that the position has not reached: the server does not send them to
     * the publishing connection, but a replay to a later connection would (a reconnect,
     * a reopened SSE stream). The position steps over them; a replayed one is dropped.
     */
    this._own = new Set();
  }

  /** @internal this client published `offset` on the channel (its ack said so). */
  _ownPublished(offset, epoch) {
    const p = this.position;
    if (!p || !Number.isInteger(offset) || (epoch !== undefined && epoch !== p.epoch) || offset <= p.offset) return;
    this._own.add(offset);
    this._passOwn();
  }

  /** @internal Moves the position over own publications right after it. */
  _passOwn() {
    const p = this.position;
    if (!p || this._own.size === 0) return;
    let offset = p.offset;
    while (this._own.delete(offset + 1)) offset += 1;
    for (const o of this._own) if (o <= offset) this._own.delete(o);
    if (offset !== p.offset) this.position = { offset, epoch: p.epoch };
  }

  get offset() {
    return this.position?.offset ?? null;
  }

  get epoch() {
    return this.position?.epoch ?? null;
  }

  /** Publishes on this channel (needs the namespace's `publish` rule to allow it). */
  publish(data) {
    return this.client.publish(this.channel, data);
  }

  unsubscribe() {
    this.client.unsubscribe(this.channel);
  }

  /** @internal the server answered `subscribed`. Returns what happened to recovery. */
  _onSubscribed(frame) {
    const sent = this._sentSince;
    this._sentSince = null;
    this.state = "subscribed";
    let outcome = null;
    if (sent) {
      if (frame.recovered === true && frame.epoch === sent.epoch) {
        // Missed publications follow, in order, before any live one: keep the position
        // we asked from so they pass the duplicate check.
        this.position = { offset: sent.offset, epoch: sent.epoch };
        outcome = "recovered";
      } else {
        outcome = "lost";
      }
    }
    if (outcome !== "recovered" && typeof frame.offset === "number" && frame.epoch) {
      this.position = { offset: frame.offset, epoch: frame.epoch };
    }
    if (outcome === "lost") this._own.clear();
    else this._passOwn();
    return { outcome, since: sent };
  }

  /**
   * @internal Checks a `pub` with a position. Returns false for a duplicate (an offset at
   * or below the last one delivered in the same epoch), or `"epoch"` when the epoch
   * changed under a live subscription (publications may have been lost).
   */
  _accept(frame) {
    const p = this.position;
    if (p && p.epoch === frame.epoch) {
      if (frame.offset <= p.offset) return false;
      const own = this._own.delete(frame.offset); // ours, replayed: not news to us
      this.position = { offset: frame.offset, epoch: frame.epoch };
      this._passOwn();
      return !own;
    }
    const changed = p !== null && p.epoch !== frame.epoch;
    this.position = { offset: frame.offset, epoch: frame.epoch };
    this._own.clear();
    return changed ? "epoch" : true;
  }
}

/** Helpers for the user's `sync:<user id>` channel (seed 002). */
export class Sync extends Emitter {
  #client;
  #sub = null;
  #wanted = false;

  /** @internal */
  constructor(client) {
    super();
    this.#client = client;
    client.on("connected", () => {
      if (this.#wanted) this.#subscribe();
    });
  }

  /** `sync:<user id>`, known once connected. */
  get channel() {
    const user = this.#client.userId;
    return user == null ? null : `sync:${user}`;
  }

  /** The underlying Subscription, once connected (null before). */
  get subscription() {
    return this.#sub;
  }

  /** Subscribes to `sync:<user id>` (now, or as soon as the user id is known). */
  start() {
    this.#wanted = true;
    if (this.#client.userId != null) this.#subscribe();
    return this;
  }

  #subscribe() {
    const channel = this.channel;
    if (this.#sub && this.#sub.channel === channel && this.#sub.state !== "unsubscribed") return;
    const sub = this.#client.subscribe(channel);
    this.#sub = sub;
    sub.on("publication", (frame) => {
      if (this.#sub !== sub) return;
      const event = frame.data;
      if (!event || typeof event !== "object") return;
      const meta = { channel: frame.channel, offset: frame.offset, epoch: frame.epoch };
      switch (event.type) {
        case "progress_update":
          this.emit("progress", event, meta);
          break;
        case "watchlist_update":
          this.emit("watchlist", event, meta);
          break;
        case "device_command":
          this.emit("command", event, meta);
          break;
        default:
          this.emit("other", event, meta);
      }
    });
    sub.on("lost", (info) => this.#sub === sub && this.emit("lost", info));
    sub.on("recovered", (info) => this.#sub === sub && this.emit("recovered", info));
    sub.on("skipped", (info) => this.#sub === sub && this.emit("skipped", info));
    sub.on("error", (err) => this.#sub === sub && this.emit("error", err));
  }

  /** `cb(event, meta)` for every `progress_update` from the user's other devices. */
  onProgress(cb) {
    this.start();
    return this.on("progress", cb);
  }

  /** `cb(event, meta)` for every `watchlist_update` from the user's other devices. */
  onWatchlist(cb) {
    this.start();
    return this.on("watchlist", cb);
  }

  /** `cb(event, meta)` for every `device_command` addressed to this device (or to all). */
  onCommand(cb) {
    this.start();
    return this.on("command", cb);
  }

  #publish(event) {
    const channel = this.channel;
    if (channel == null) {
      return Promise.reject(new HeraldError("not_connected", "not connected yet: the user id is unknown"));
    }
    return this.#client.publish(channel, event);
  }

  /** Publishes `{"type":"progress_update","content_id","position","duration"}`. */
  sendProgress(contentId, position, duration, extra = {}) {
    return this.#publish({
      ...extra,
      type: "progress_update",
      content_id: contentId,
      position,
      duration,
    });
  }

  /** Publishes `{"type":"watchlist_update","content_id","action"}`. */
  sendWatchlist(contentId, action, extra = {}) {
    return this.#publish({ ...extra, type: "watchlist_update", content_id: contentId, action });
  }

  /** Publishes `{"type":"device_command","command","target_device"?}`. */
  sendCommand(command, targetDevice, extra = {}) {
    const event = { ...extra, type: "device_command", command };
    if (targetDevice != null) event.target_device = targetDevice;
    return this.#publish(event);
  }
}

/**
 * The client. Events: `state`, `connected`, `disconnected` (the client stopped: close(),
 * 1008, 4004, or no way to get a valid token), `reconnecting` ({attempt, delayMs, code,
 * reason}), `error` (HeraldError), `resync` (4003: reload state), `frame` (every server
 * frame), `publication`, `subscribed`, `lost`, `recovered`, `skipped`, `presence`,
 * `announcement`, `announcementCleared`, `token`, `transport` ({transport, previous}).
 */
export class Herald extends Emitter {
  #url;
  #token;
  #getToken;
  #WS;
  #backoff;
  #heartbeatTimeoutMs;
  #pingIntervalMs;
  #connectTimeoutMs;
  #refreshBeforeS;
  #publishTimeoutMs;
  #transports; // the order to try, e.g. ["websocket", "sse"]
  #ES;
  #fetch;
  #sseUrl;
  #apiUrl;
  #withCredentials;
  #transportRetryMs;

  #state = "idle";
  #sock = null; // the WebSocket, or the SSE stream`s handle ({sse: true, es, pending, errors})
  #stopped = true;
  #gen = 0; // bumps on every new socket / close(): stale async work checks it
  #attempt = 0;
  #everConnected = false;
  #connectedAt = 0;
  #needFreshToken = false;
  #tokenInFlight = null;
  #connected = null; // the last `connected` frame of the live connection
  #lastConnected = null;

  #reconnectTimer = null;
  #connectTimer = null;
  #pingTimer = null;
  #watchdogTimer = null;
  #refreshTimer = null;
  #lastSeen = 0;
  #lastPingAt = 0;
  #pingEvery = 0;
  #deadAfter = 0;
  #pongWaiters = [];

  #nextRef = 1;
  #refs = new Map();
  #subs = new Map();
  #pendingAcks = new Set();
  #connectWaiters = [];
  #activeAnnouncement = null;

  #transport = null; // the transport of the live (or last) connection
  #round = []; // the transports of this connection attempt, in the order tried
  #roundIndex = 0;
  #sticky = null; // a fallback transport that worked, kept for reconnects…
  #stickyUntil = 0; // …until then (the first transport is tried again after it)
  #reopenTimer = null;
  #reopening = false; // the SSE stream is being reopened under a live connection
  #streamWaiters = [];

  /**
   * @param {object} options
   * @param {string} options.url e.g. `wss://example.com/ws`
   * @param {string} [options.token] a JWT
   * @param {() => Promise<string> | string} [options.getToken] returns a fresh JWT
   * @param {any} [options.WebSocket] a WebSocket constructor (default: the global one)
   * @param {object} [options.backoff] {initialMs, maxMs, factor, jitter, resetAfterMs}
   * @param {number} [options.heartbeatTimeoutMs] dead after this long without any frame (default 2 × heartbeat_s)
   * @param {number} [options.pingIntervalMs] app-level ping period (default min(heartbeat_s, timeout / 2))
   * @param {number} [options.connectTimeoutMs] time for the upgrade + `connected` (default 10000)
   * @param {number|null|false} [options.refreshBeforeS] refresh this long before `exp` (default 30; null/false: never)
   * @param {number} [options.publishTimeoutMs] reject a publish without ack after this long (default 10000)
   * @param {Array<"websocket"|"sse">} [options.transports] the order to try (default ["websocket", "sse"])
   * @param {any} [options.EventSource] an EventSource constructor (default: the global one)
   * @param {any} [options.fetch] a fetch function for the HTTP API on SSE (default: the global one)
   * @param {string} [options.sseUrl] the /sse URL (default: from `url`, ws→http, …/ws → …/sse)
   * @param {string} [options.apiUrl] the base of the HTTP API (default: from `url`, without /ws)
   * @param {boolean} [options.withCredentials] EventSource withCredentials (cookies cross-origin; default true)
   * @param {number} [options.transportRetryMs] keep a fallback transport this long before trying the first again at a reconnect (default 300000)
   */
  constructor(options = {}) {
    super();
    if (!options || typeof options.url !== "string" || options.url === "") {
      throw new TypeError("Herald: `url` is required (e.g. wss://host/ws)");
    }
    this.#url = options.url;
    this.#token = options.token ?? null;
    this.#getToken = options.getToken ?? null;
    if (this.#getToken !== null && typeof this.#getToken !== "function") {
      throw new TypeError("Herald: `getToken` must be a function returning a token");
    }
    const transports = options.transports ?? TRANSPORTS;
    if (
      !Array.isArray(transports) ||
      transports.length === 0 ||
      transports.some((t) => !TRANSPORTS.includes(t)) ||
      new Set(transports).size !== transports.length
    ) {
      throw new TypeError('Herald: `transports` must list "websocket" and/or "sse", each once');
    }
    this.#transports = [...transports];
    this.#WS = options.WebSocket ?? globalThis.WebSocket;
    this.#ES = options.EventSource ?? globalThis.EventSource;
    this.#fetch = options.fetch ?? globalThis.fetch;
    if (!this.#transports.some((t) => this.#available(t))) {
      throw new TypeError(
        this.#transports.includes("websocket")
          ? "Herald: no WebSocket available; pass the `WebSocket` option (Node 20: run with --experimental-websocket)"
          : "Herald: no EventSource available for the sse transport; pass the `EventSource` option",
      );
    }
    this.#sseUrl = options.sseUrl ?? null;
    this.#apiUrl = options.apiUrl ?? null;
    this.#withCredentials = options.withCredentials ?? true;
    this.#transportRetryMs = options.transportRetryMs ?? DEFAULT_TRANSPORT_RETRY_MS;
    this.#backoff = { ...DEFAULT_BACKOFF, ...(options.backoff ?? {}) };
    this.#heartbeatTimeoutMs = options.heartbeatTimeoutMs ?? null;
    this.#pingIntervalMs = options.pingIntervalMs ?? null;
    this.#connectTimeoutMs = options.connectTimeoutMs ?? 10000;
    this.#refreshBeforeS = options.refreshBeforeS === undefined ? 30 : options.refreshBeforeS;
    this.#publishTimeoutMs = options.publishTimeoutMs ?? 10000;
    /** Cross-device sync helpers for `sync:<user id>`. */
    this.sync = new Sync(this);
  }

  /** `idle` | `connecting` | `connected` | `reconnecting` | `closed` */
  get state() {
    return this.#state;
  }
  get connected() {
    return this.#state === "connected";
  }
  get connId() {
    return this.#connected?.conn_id ?? null;
  }
  /** The user id of the last connection (kept while reconnecting). */
  get userId() {
    return this.#lastConnected?.user_id ?? null;
  }
  get node() {
    return this.#connected?.node ?? null;
  }
  get heartbeatS() {
    return this.#lastConnected?.heartbeat_s ?? null;
  }
  /** The token in use (the latest one from `getToken`). */
  get token() {
    return this.#token;
  }
  /** The announcement currently shown to this user (from `new_broadcast`/`active_broadcast`), or null. */
  get activeAnnouncement() {
    return this.#activeAnnouncement;
  }
  get subscriptions() {
    return new Map(this.#subs);
  }
  /** `"websocket"` | `"sse"`: the transport of the live connection (or of the last one); null before the first. */
  get transport() {
    return this.#transport;
  }

  #available(kind) {
    return kind === "sse" ? typeof this.#ES === "function" : typeof this.#WS === "function";
  }

  /**
   * Starts connecting (and reconnecting). Resolves with the `connected` frame; rejects
   * when the client stops before that (close(), 1008, 4004).
   */
  connect() {
    if (this.#state === "connected") return Promise.resolve(this.#connected);
    const waiter = new Promise((resolve, reject) => this.#connectWaiters.push({ resolve, reject }));
    if (this.#stopped) {
      this.#stopped = false;
      this.#attempt = 0;
      this.#open();
    }
    return waiter;
  }

  /** Closes the connection (1000) and stops reconnecting. */
  close(reason = "client closed") {
    if (this.#stopped) return;
    this.#stop(1000, reason, false);
  }

  /** Drops the current connection and reconnects at once (e.g. on the browser's `online` event). */
  reconnect() {
    if (this.#stopped) {
      this.connect().catch(() => {});
      return;
    }
    const ws = this.#sock;
    this.#sock = null;
    this.#teardown();
    this.#gen++;
    if (ws) safeClose(ws, 1000, "reconnect");
    clearTimeout(this.#reconnectTimer);
    this.#reconnectTimer = null;
    this.#attempt = 0;
    this.emit("reconnecting", { attempt: 0, delayMs: 0, code: 1000, reason: "reconnect" });
    this.#open();
  }

  // ---------------------------------------------------------------- connection

  #setState(state) {
    if (this.#state === state) return;
    const previous = this.#state;
    this.#state = state;
    this.emit("state", { state, previous });
  }

  async #open() {
    const gen = ++this.#gen;
    this.#setState(this.#everConnected ? "reconnecting" : "connecting");
    if (this.#wantsToken()) {
      try {
        await this.#fetchToken();
      } catch (err) {
        if (gen !== this.#gen || this.#stopped) return;
        this.emit("error", asHeraldError(err, "token", "getToken failed"));
        this.#retry(0, "getToken failed");
        return;
      }
      if (gen !== this.#gen || this.#stopped) return;
      this.#needFreshToken = false;
    }
    this.#round = this.#roundOrder();
    this.#roundIndex = 0;
    this.#openTransport();
  }

  /**
   * The transports to try for one connection attempt: the configured order, or the
   * fallback that worked first while it is kept (`transportRetryMs`).
   */
  #roundOrder() {
    const usable = this.#transports.filter((t) => this.#available(t));
    if (this.#sticky !== null && usable.includes(this.#sticky) && Date.now() < this.#stickyUntil) {
      return [this.#sticky, ...usable.filter((t) => t !== this.#sticky)];
    }
    return usable;
  }

  #openTransport() {
    if (this.#round[this.#roundIndex] === "sse") this.#openSse();
    else this.#openWs();
  }

  #openWs() {
    let ws;
    try {
      ws = new this.#WS(withToken(this.#url, this.#token));
    } catch (err) {
      // A malformed URL: retrying will not help.
      this.emit("error", asHeraldError(err, "bad_url", "could not open the WebSocket"));
      this.#stop(1006, String(err?.message ?? err), false);
      return;
    }
    this.#sock = ws;
    ws.onmessage = (ev) => {
      if (this.#sock === ws) this.#onMessage(ev.data);
    };
    ws.onclose = (ev) => {
      if (this.#sock === ws) this.#onSocketClosed(ev.code, ev.reason);
    };
    // An error always means the connection failed (the close that follows says 1006).
    // Do not wait for that close: some implementations (Node 20's undici, on a refused
    // connection) never fire it.
    ws.onerror = () => {
      if (this.#sock === ws) this.#abandon(ws, "connection error");
    };
    // The upgrade and the `connected` frame must arrive in time: a half-dead server
    // (or network) may accept the TCP connection and then say nothing.
    this.#connectTimer = setTimeout(() => {
      if (this.#sock === ws) this.#abandon(ws, "connect timeout");
    }, this.#connectTimeoutMs);
  }

  /** The /sse URL and the HTTP API's base, from the options or from `url`. */
  #httpUrls() {
    if (this.#sseUrl === null || this.#apiUrl === null) {
      const side = httpSideOf(this.#url);
      this.#apiUrl ??= side.base;
      this.#sseUrl ??= `${side.base}/sse${side.query ? `?${side.query}` : ""}`;
    }
    return { sse: this.#sseUrl, api: this.#apiUrl.replace(/\/+$/, "") };
  }

  /**
   * Opens `GET /sse` with the token, the client's channels and, by place, the position
   * each recovers from (`since=<epoch>:<offset>,…`; an empty entry for none): what the
   * WebSocket path sends as `subscribe` frames after `connected`. The stream's
   * subscriptions are fixed, so a change reopens it (#scheduleReopen).
   */
  #openSse() {
    const sock = {
      sse: true,
      es: null,
      /** channel → Subscription asked for on this stream and not answered yet */
      pending: new Map(),
      /** `error` events without a ref, while `pending` has channels (see #settleSseErrors) */
      errors: [],
      close() {
        try {
          sock.es?.close();
        } catch {
          /* already closed */
        }
      },
    };
    const channels = [];
    const since = [];
    for (const sub of this.#subs.values()) {
      if (sub.state !== "subscribing" && sub.state !== "subscribed") continue;
      // After a `skipped`, from the notice's position (the gap); otherwise from the last seen.
      const from = sub._skip?.since ?? sub.position;
      const id = positionId(from);
      sub._sentSince = id ? { offset: from.offset, epoch: from.epoch } : null;
      sub.state = "subscribing";
      sock.pending.set(sub.channel, sub);
      channels.push(queryPart(sub.channel));
      since.push(queryPart(id));
    }
    let es;
    try {
      const params = [];
      if (this.#token) params.push(`token=${encodeURIComponent(this.#token)}`);
      if (channels.length > 0) params.push(`channels=${channels.join(",")}`);
      if (since.some((x) => x !== "")) params.push(`since=${since.join(",")}`);
      const base = this.#httpUrls().sse;
      const sep = base.includes("?") ? "&" : "?";
      const url = params.length > 0 ? `${base}${sep}${params.join("&")}` : base;
      es = new this.#ES(url, { withCredentials: this.#withCredentials });
    } catch (err) {
      this.emit("error", asHeraldError(err, "bad_url", "could not open the event stream"));
      this.#stop(1006, String(err?.message ?? err), false);
      return;
    }
    sock.es = es;
    this.#sock = sock;
    const onEvent = (ev) => {
      if (this.#sock !== sock) return;
      if (ev.type === "error" && typeof ev.data !== "string") {
        // EventSource's own failure (refused, network, the stream ended): EventSource
        // would reconnect by itself, blindly; the client decides instead.
        this.#abandon(sock, "event stream failed");
        return;
      }
      this.#onSseEvent(ev);
    };
    for (const type of SSE_EVENTS) es.addEventListener(type, onEvent);
    // The server ends the stream with {"code","reason"}: a WebSocket close's.
    es.addEventListener("close", (ev) => {
      if (this.#sock !== sock) return;
      let code = 1006;
      let reason = "stream closed";
      try {
        const d = JSON.parse(ev.data);
        if (Number.isInteger(d?.code)) code = d.code;
        if (typeof d?.reason === "string") reason = d.reason;
      } catch {
        /* not JSON: an abnormal close */
      }
      this.#sock = null;
      sock.close();
      this.#onSocketClosed(code, reason);
    });
    this.#connectTimer = setTimeout(() => {
      if (this.#sock === sock) this.#abandon(sock, "connect timeout");
    }, this.#connectTimeoutMs);
  }

  #onSseEvent(ev) {
    this.#lastSeen = Date.now();
    let frame;
    try {
      frame = JSON.parse(ev.data);
    } catch {
      this.emit("error", new HeraldError("bad_frame", "the server sent an event that is not JSON"));
      return;
    }
    this.#onFrame(frame);
  }

  /**
   * Asks for a new SSE stream with the client's current channels (and token), each
   * from its position, on the next tick (several changes make one reopen). The old
   * stream is closed first, so nothing arrives twice; channels with history miss
   * nothing (since); for the others, what was published in between is not seen.
   */
  #scheduleReopen() {
    if (this.#reopenTimer !== null) return;
    this.#reopenTimer = setTimeout(() => {
      this.#reopenTimer = null;
      this.#reopenSse();
    }, 0);
  }

  #reopenSse() {
    const sock = this.#sock;
    // Still opening: #onConnected compares what it asked for with what is wanted.
    if (!sock?.sse || this.#stopped || this.#connected === null) return;
    for (const sub of this.#subs.values()) {
      if (sub.state === "subscribed") sub._quiet = !sub._skip;
    }
    clearTimeout(this.#connectTimer);
    clearTimeout(this.#refreshTimer);
    this.#connectTimer = this.#refreshTimer = null;
    this.#sock = null;
    sock.close();
    this.#connected = null;
    this.#reopening = true;
    this.#gen++;
    this.#openSse();
  }

  /** Resolves when the connection is up again after a reopen of the SSE stream. */
  #streamReady() {
    if (this.#connected !== null) return Promise.resolve();
    if (!this.#reopening) return Promise.reject(new HeraldError("not_connected", "not connected"));
    return new Promise((resolve, reject) => this.#streamWaiters.push({ resolve, reject }));
  }

  #wantsToken() {
    if (!this.#getToken) return false;
    if (!this.#token || this.#needFreshToken) return true;
    const exp = tokenExpiry(this.#token);
    return exp !== null && exp * 1000 <= Date.now() + 1000;
  }

  /** Calls getToken once at a time; the token becomes the one used from now on. */
  #fetchToken() {
    if (!this.#getToken) return Promise.reject(new HeraldError("token", "no getToken"));
    if (!this.#tokenInFlight) {
      this.#tokenInFlight = (async () => {
        try {
          const token = await this.#getToken();
          if (typeof token !== "string" || token === "") {
            throw new HeraldError("token", "getToken must return a non-empty string");
          }
          this.#token = token;
          this.emit("token", token);
          return token;
        } finally {
          this.#tokenInFlight = null;
        }
      })();
    }
    return this.#tokenInFlight;
  }

  /** Gives up on a socket that is stuck (no `connected`, or silent): reconnect. */
  #abandon(ws, reason) {
    this.#sock = null;
    safeClose(ws, 1000, reason);
    this.#onSocketClosed(1006, reason);
  }

  #onSocketClosed(code, reason) {
    const stable = this.#connectedAt > 0 && Date.now() - this.#connectedAt >= this.#backoff.resetAfterMs;
    // Closed before its `connected` frame: this transport could not open (a proxy that
    // refuses the upgrade, say). A reopened SSE stream that fails is a plain drop.
    const neverOpened = this.#connected === null && !this.#reopening;
    this.#sock = null;
    this.#teardown();
    if (this.#stopped) return;
    if (TERMINAL_CODES.has(code)) {
      this.#stop(code, reason, true);
      return;
    }
    if (neverOpened && !FRESH_TOKEN_CODES.has(code) && this.#roundIndex + 1 < this.#round.length) {
      // The next transport of this attempt, at once: no backoff between transports.
      this.#roundIndex += 1;
      this.#gen++;
      this.#openTransport();
      return;
    }
    if (FRESH_TOKEN_CODES.has(code)) {
      if (this.#getToken) {
        this.#needFreshToken = true;
      } else if (code === CODE_TOKEN_EXPIRED) {
        this.emit("error", new HeraldError("token", "the token expired and there is no getToken to get a new one"));
        this.#stop(code, reason, true);
        return;
      }
    }
    if (code === CODE_RESYNC) this.emit("resync", { code, reason });
    if (stable) this.#attempt = 0;
    this.#retry(code, reason);
  }

  #retry(code, reason) {
    const { initialMs, maxMs, factor, jitter } = this.#backoff;
    this.#attempt += 1;
    const base = Math.min(maxMs, initialMs * factor ** (this.#attempt - 1));
    const delayMs = Math.max(0, Math.round(base * (1 - jitter * Math.random())));
    this.#setState("reconnecting");
    this.emit("reconnecting", { attempt: this.#attempt, delayMs, code, reason });
    clearTimeout(this.#reconnectTimer);
    this.#reconnectTimer = setTimeout(() => {
      this.#reconnectTimer = null;
      if (!this.#stopped) this.#open();
    }, delayMs);
  }

  /** The client stops for good (until connect() is called again). */
  #stop(code, reason, byServer) {
    this.#stopped = true;
    this.#gen++;
    clearTimeout(this.#reconnectTimer);
    this.#reconnectTimer = null;
    const ws = this.#sock;
    this.#sock = null;
    this.#teardown();
    if (ws) safeClose(ws, 1000, reason);
    this.#setState("closed");
    const waiters = this.#connectWaiters.splice(0);
    const err = new HeraldError("disconnected", `disconnected (${code}${reason ? `: ${reason}` : ""})`);
    err.closeCode = code;
    for (const w of waiters) w.reject(err);
    this.emit("disconnected", { code, reason: reason ?? "", byServer });
  }

  /** Forgets everything tied to the current socket. */
  #teardown() {
    clearTimeout(this.#connectTimer);
    clearInterval(this.#pingTimer);
    clearTimeout(this.#watchdogTimer);
    clearTimeout(this.#refreshTimer);
    clearTimeout(this.#reopenTimer);
    this.#connectTimer = this.#pingTimer = this.#watchdogTimer = this.#refreshTimer = this.#reopenTimer = null;
    this.#connected = null;
    this.#connectedAt = 0;
    this.#reopening = false;
    for (const w of this.#streamWaiters.splice(0)) {
      w.reject(new HeraldError("not_connected", "the connection dropped"));
    }
    for (const w of this.#pongWaiters.splice(0)) {
      w?.reject(new HeraldError("disconnected", "connection closed before the pong"));
    }
    const refs = [...this.#refs.values()];
    this.#refs.clear();
    for (const r of refs) {
      if (r.kind === "publish") {
        clearTimeout(r.timer);
        r.reject(new HeraldError("disconnected", "connection closed before the ack"));
      }
    }
    for (const sub of this.#subs.values()) {
      if (sub.state === "subscribed" || sub.state === "subscribing") {
        sub.state = "subscribing";
        sub._sentSince = null;
      }
      // The reconnect recovers from `position`, which never moved past the gap.
      sub._skip = null;
      sub._quiet = false;
    }
  }

  #send(frame) {
    const ws = this.#sock;
    if (!ws || ws.sse || this.#connected === null) return false;
    try {
      ws.send(typeof frame === "string" ? frame : JSON.stringify(frame));
      return true;
    } catch {
      return false;
    }
  }

  /** Sends a raw frame (an object is JSON-encoded). Returns false when not connected. */
  send(frame) {
    return this.#send(frame);
  }

  /** Sends `{"type":"ping"}`; resolves with the round-trip time in ms at its `pong`. */
  ping() {
    if (!this.connected) return Promise.reject(new HeraldError("not_connected", "not connected"));
    if (this.#sock?.sse || this.#reopening) {
      // The stream only listens: time an HTTP request to the same server instead.
      const sentAt = Date.now();
      return this.#http("GET", "/healthz", undefined, this.#connectTimeoutMs).then(() => Date.now() - sentAt);
    }
    return new Promise((resolve, reject) => {
      const sentAt = Date.now();
      this.#sendPing({ resolve: () => resolve(Date.now() - sentAt), reject });
    });
  }

  #sendPing(waiter = null) {
    if (this.#send({ type: "ping" })) {
      this.#lastPingAt = Date.now();
      this.#pongWaiters.push(waiter);
    } else {
      waiter?.reject(new HeraldError("not_connected", "not connected"));
    }
  }

  // ---------------------------------------------------------------- heartbeat

  #startHeartbeat() {
    const hbMs = Math.max(1, this.#connected.heartbeat_s || 25) * 1000;
    this.#deadAfter = this.#heartbeatTimeoutMs ?? 2 * hbMs;
    this.#pingEvery = this.#pingIntervalMs ?? Math.max(50, Math.min(hbMs, Math.floor(this.#deadAfter / 2)));
    this.#lastSeen = Date.now();
    this.#lastPingAt = Date.now();
    this.#pingTimer = setInterval(() => this.#sendPing(), this.#pingEvery);
    this.#armWatchdog(this.#deadAfter);
  }

  #armWatchdog(ms) {
    clearTimeout(this.#watchdogTimer);
    const ws = this.#sock;
    this.#watchdogTimer = setTimeout(() => {
      if (this.#sock !== ws || this.#connected === null) return;
      const now = Date.now();
      const silent = now - this.#lastSeen;
      if (silent < this.#deadAfter) {
        this.#armWatchdog(this.#deadAfter - silent);
        return;
      }
      // Timers of a background tab may have been throttled so that no ping went out
      // lately: ping now and judge later rather than blame the server.
      if (now - this.#lastPingAt > this.#pingEvery * 1.5 + 100) {
        this.#sendPing();
        this.#armWatchdog(Math.max(this.#pingEvery, 100));
        return;
      }
      this.#abandon(ws, "heartbeat timeout");
    }, Math.min(ms, MAX_TIMEOUT_MS));
  }

  // ---------------------------------------------------------------- token refresh

  #scheduleRefresh() {
    clearTimeout(this.#refreshTimer);
    this.#refreshTimer = null;
    if (this.#refreshBeforeS === null || this.#refreshBeforeS === false || !this.#getToken) return;
    const exp = tokenExpiry(this.#token);
    if (exp === null) return;
    // `refreshBeforeS` before exp; a token that lives less than that is refreshed halfway
    // through what is left (at least 1 s apart), so short tokens cannot make a busy loop.
    const left = exp * 1000 - Date.now();
    const early = this.#refreshBeforeS * 1000;
    const delay = left > early ? left - early : Math.max(1000, left / 2);
    const gen = this.#gen;
    this.#refreshTimer = setTimeout(() => {
      this.#refreshTimer = null;
      if (gen === this.#gen) this.#refreshNow(gen).catch(() => {});
    }, Math.min(delay, MAX_TIMEOUT_MS));
  }

  async #refreshNow(gen) {
    try {
      const token = await this.#fetchToken();
      if (gen !== this.#gen || this.#connected === null) return;
      if (this.#sock?.sse) {
        // No `refresh` frame on a stream that only listens: reopen it with the new
        // token (each channel from its position); #onConnected schedules the next one.
        this.#scheduleReopen();
        return;
      }
      this.#send({ type: "refresh", token });
      this.#scheduleRefresh();
    } catch (err) {
      if (gen !== this.#gen || this.#connected === null) throw err;
      this.emit("error", asHeraldError(err, "token", "getToken failed"));
      // Try again a little later while the token is still valid.
      const exp = tokenExpiry(this.#token);
      const left = exp === null ? 0 : exp * 1000 - Date.now();
      if (left > 1000) {
        this.#refreshTimer = setTimeout(
          () => gen === this.#gen && this.#refreshNow(gen).catch(() => {}),
          Math.min(5000, left / 2),
        );
      }
      throw err;
    }
  }

  /** Gets a fresh token now and sends it (`refresh`); it is used for reconnects too. */
  refreshToken() {
    if (!this.#getToken) return Promise.reject(new HeraldError("token", "no getToken option"));
    if (!this.connected) return this.#fetchToken().then(() => undefined);
    clearTimeout(this.#refreshTimer);
    return this.#refreshNow(this.#gen);
  }

  // ---------------------------------------------------------------- frames

  #onMessage(data) {
    this.#lastSeen = Date.now();
    if (typeof data !== "string") return; // herald sends text frames only
    if (data === "pong") {
      this.#onPong();
      return;
    }
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      this.emit("error", new HeraldError("bad_frame", "the server sent a frame that is not JSON"));
      return;
    }
    this.#onFrame(frame);
  }

  /** One frame from the server, from either transport. */
  #onFrame(frame) {
    if (!frame || typeof frame !== "object" || typeof frame.type !== "string") return;
    this.emit("frame", frame);
    switch (frame.type) {
      case "connected":
        this.#onConnected(frame);
        break;
      case "pub":
        this.#onPub(frame);
        break;
      case "subscribed":
        this.#onSubscribed(frame);
        break;
      case "unsubscribed":
        this.#onUnsubscribed(frame);
        break;
      case "skipped":
        this.#onSkipped(frame);
        break;
      case "ack":
        this.#onAck(frame);
        break;
      case "error":
        this.#onError(frame);
        break;
      case "presence": {
        const sub = this.#subs.get(frame.channel);
        if (sub) sub.emit("presence", frame);
        this.emit("presence", frame);
        break;
      }
      case "pong":
        this.#onPong();
        break;
      case "new_broadcast":
      case "active_broadcast":
        if (frame.broadcast && typeof frame.broadcast === "object") {
          this.#activeAnnouncement = frame.broadcast;
          this.emit("announcement", frame.broadcast, frame);
        }
        break;
      case "broadcast_cleared":
        this.#activeAnnouncement = null;
        this.emit("announcementCleared", frame);
        break;
      default:
        break; // a newer server's frame: `frame` listeners still saw it
    }
  }

  #onConnected(frame) {
    if (this.#connected !== null) return; // only the first one counts
    clearTimeout(this.#connectTimer);
    this.#connectTimer = null;
    const sock = this.#sock;
    const sse = sock?.sse === true;
    // A reopened SSE stream under a live connection: the same connection to the app
    // (no state change, no `connected` event), only `connId` changes.
    const quiet = this.#reopening;
    this.#reopening = false;
    this.#connected = frame;
    this.#lastConnected = frame;
    const reconnected = this.#everConnected;
    if (!quiet) {
      this.#connectedAt = Date.now();
      this.#everConnected = true;
      const changed = this.#noteTransport(sse ? "sse" : "websocket");
      this.#setState("connected");
      if (changed) this.emit("transport", changed);
    }
    if (!sse) this.#startHeartbeat();
    this.#scheduleRefresh();
    if (sse) {
      // The stream asked for the channels wanted when it was opened: another
      // subscribe() or unsubscribe() since then makes a new one.
      let differs = false;
      for (const sub of this.#subs.values()) {
        if (sub.state === "subscribing" && sock.pending.get(sub.channel) !== sub) differs = true;
      }
      for (const [channel, sub] of sock.pending) {
        if (this.#subs.get(channel) !== sub) differs = true;
      }
      if (differs) this.#scheduleReopen();
    } else {
      for (const sub of this.#subs.values()) {
        if (sub.state === "subscribing") this.#sendSubscribe(sub);
      }
    }
    const acks = [...this.#pendingAcks];
    this.#pendingAcks.clear();
    for (const id of acks) {
      if (sse) this.#httpAck(id);
      else this.#send({ type: "acknowledge_broadcast", broadcast_id: id });
    }
    for (const w of this.#streamWaiters.splice(0)) w.resolve();
    for (const w of this.#connectWaiters.splice(0)) w.resolve(frame);
    if (!quiet) this.emit("connected", { ...frame, reconnected });
  }

  /** A connection is up over `kind`: keeps a fallback for reconnects; returns the change, if any. */
  #noteTransport(kind) {
    if (kind === this.#transports[0]) {
      this.#sticky = null;
    } else if (this.#roundIndex > 0) {
      // The transports before it failed just now: keep this one for a while.
      this.#sticky = kind;
      this.#stickyUntil = Date.now() + this.#transportRetryMs;
    }
    const previous = this.#transport;
    this.#transport = kind;
    return previous === kind ? null : { transport: kind, previous };
  }

  #onPong() {
    const waiter = this.#pongWaiters.shift();
    waiter?.resolve();
  }

  #onPub(frame) {
    const sub = typeof frame.channel === "string" ? this.#subs.get(frame.channel) : undefined;
    if (sub?._skip?.draining) {
      // After a `skipped`, before the old subscription's `unsubscribed`: these are newer
      // than the gap and the replay brings them again after it. Delivering them now
      // would put them ahead of the missed ones (and the duplicate check would then
      // throw the missed ones away). Everything the old subscription still had queued
      // is past `upTo`, so one at or below it is the replay's: the answers before it
      // were dropped on the way (drop_oldest drops replies too).
      if (!(typeof frame.offset === "number" && frame.offset <= sub._skip.upTo)) return;
      sub._skip.draining = false;
    }
    if (sub && typeof frame.offset === "number" && typeof frame.epoch === "string") {
      const verdict = sub._accept(frame);
      if (verdict === false) return; // already delivered
      if (verdict === "epoch") {
        const info = { channel: sub.channel, reason: "epoch changed", epoch: frame.epoch, offset: frame.offset };
        sub.emit("lost", info);
        this.emit("lost", info);
      }
    }
    if (sub) sub.emit("publication", frame);
    this.emit("publication", frame);
  }

  #onSubscribed(frame) {
    // Only the answer to this client's own pending subscribe counts: not one to a frame
    // the app sent raw with send(), nor a stale one for a Subscription since dropped.
    // On SSE the answers to the channels in the stream's query carry no ref: matched by
    // channel among those the stream asked for.
    let sub;
    const sock = this.#sock;
    if (frame.ref === undefined && sock?.sse) {
      const asked = sock.pending.get(frame.channel);
      if (!asked) return; // a server-side subscription
      sock.pending.delete(frame.channel);
      this.#settleSseErrors();
      sub = this.#subs.get(frame.channel);
      if (!sub || sub !== asked || sub.state !== "subscribing") return; // unsubscribed meanwhile
    } else {
      const entry = frame.ref !== undefined ? this.#refs.get(frame.ref) : undefined;
      if (!entry || entry.kind !== "subscribe") return;
      this.#refs.delete(frame.ref);
      sub = this.#subs.get(frame.channel);
      if (!sub || entry.sub !== sub) return; // unsubscribed meanwhile
    }
    const quiet = sub._quiet;
    sub._quiet = false;
    sub._skip = null;
    const { outcome, since } = sub._onSubscribed(frame);
    // A reopened stream (new channels elsewhere, a new token): only a loss is news.
    if (quiet && outcome !== "lost") return;
    sub.emit("subscribed", frame);
    this.emit("subscribed", frame);
    if (outcome === "recovered") {
      const info = { channel: sub.channel, since, offset: frame.offset, epoch: frame.epoch };
      sub.emit("recovered", info);
      this.emit("recovered", info);
    } else if (outcome === "lost") {
      const info = {
        channel: sub.channel,
        reason: frame.epoch !== since.epoch ? "epoch changed" : "history gone",
        since,
        offset: frame.offset,
        epoch: frame.epoch,
      };
      sub.emit("lost", info);
      this.emit("lost", info);
    }
  }

  #onUnsubscribed(frame) {
    if (frame.ref !== undefined) {
      const entry = this.#refs.get(frame.ref);
      this.#refs.delete(frame.ref);
      // The old subscription of a recovery after `skipped` is over: what follows is the
      // new one's (its `subscribed`, the replay, live publications).
      const skip = entry?.kind === "unsubscribe" ? entry.sub._skip : null;
      if (skip && skip.unsubRef === frame.ref) skip.draining = false;
      return; // the answer to an unsubscribe (ours, already handled, or a raw one)
    }
    // No ref: the server ended it (a refreshed token no longer allows the channel).
    const sub = this.#subs.get(frame.channel);
    if (!sub) return;
    this.#subs.delete(frame.channel);
    sub.state = "unsubscribed";
    sub.emit("unsubscribed", { ...frame, byServer: true });
  }

  /**
   * Each channel of an SSE stream's query is answered once, by `subscribed` or by an
   * `error`, and the errors come in the order of the query (a refusal is answered at
   * once; a `subscribed` may come later). So once there are as many errors as channels
   * still unanswered, those are the refused ones, in order.
   */
  #settleSseErrors() {
    const sock = this.#sock;
    if (!sock?.sse) return;
    // sock.errors: {frame, sub} (sub known when the error named its channel)
    const settled = sock.errors.filter((e) => e.sub !== undefined);
    const guessed = sock.errors.filter((e) => e.sub === undefined);
    sock.errors = guessed;
    if (guessed.length > 0 && guessed.length >= sock.pending.size) {
      const refused = [...sock.pending.values()];
      sock.pending.clear();
      sock.errors = [];
      guessed.forEach((e, i) => settled.push({ frame: e.frame, sub: refused[i] }));
    }
    for (const { frame, sub } of settled) {
      const err = new HeraldError(frame.code ?? "error", frame.message ?? "error", frame);
      if (sub && this.#subs.get(sub.channel) === sub && sub.state === "subscribing") {
        sub.state = "failed";
        sub._sentSince = null;
        sub._skip = null;
        sub._quiet = false;
        err.channel = sub.channel;
        sub.emit("error", err);
      }
      this.emit("error", err);
    }
  }

  #onSkipped(frame) {
    if (typeof frame.channel !== "string") return;
    const info = { channel: frame.channel, count: frame.count };
    const recoverable = typeof frame.offset === "number" && typeof frame.epoch === "string" && frame.epoch !== "";
    if (recoverable) {
      info.offset = frame.offset;
      info.epoch = frame.epoch;
    }
    const sub = this.#subs.get(frame.channel);
    if (sub && recoverable) this.#recoverSkipped(sub, info);
    if (sub) sub.emit("skipped", info);
    this.emit("skipped", info);
  }

  /**
   * Gets what a `skipped` says is missing on this connection: `unsubscribe`, then
   * `subscribe` with `since` (a second subscribe would be refused). The answer is the
   * usual `recovered` (the replay follows, through the duplicate check) or `lost`.
   */
  #recoverSkipped(sub, info) {
    if (this.#sock?.sse) {
      // The stream cannot unsubscribe: a new one asks for the channel from the gap.
      // Until then the old stream's publications of it are newer than the gap and come
      // again in the replay: held back (draining, up to nothing).
      if (sub._skip || (sub.state !== "subscribed" && sub.state !== "subscribing")) return;
      sub._skip = { since: { offset: info.offset, epoch: info.epoch }, upTo: -Infinity, unsubRef: null, draining: true };
      this.#scheduleReopen();
      return;
    }
    // During a drain the notice is about the old subscription's queued publications,
    // which are all after `since`: the replay already asked for covers them.
    if (sub._skip?.draining) return;
    // Otherwise it is about what the server delivers to us now, also when our
    // `subscribed` is still awaited (so it was dropped on the way, ahead of the
    // publications this notice stands for): a pending subscribe is replaced.
    if (sub.state !== "subscribed" && sub.state !== "subscribing") return;
    for (const [ref, entry] of this.#refs) {
      if (entry.kind === "subscribe" && entry.sub === sub) this.#refs.delete(ref);
    }
    const since = { offset: info.offset, epoch: info.epoch };
    const unsubRef = this.#nextRef++;
    this.#refs.set(unsubRef, { kind: "unsubscribe", sub });
    const upTo = info.offset + (Number.isInteger(info.count) ? info.count : 0);
    sub._skip = { since, upTo, unsubRef, draining: true };
    this.#send({ type: "unsubscribe", channel: sub.channel, ref: unsubRef });
    this.#sendSubscribe(sub, since);
  }

  #onAck(frame) {
    const entry = this.#refs.get(frame.ref);
    if (!entry || entry.kind !== "publish") return;
    this.#refs.delete(frame.ref);
    clearTimeout(entry.timer);
    if (typeof frame.offset === "number") this.#subs.get(entry.channel)?._ownPublished(frame.offset, frame.epoch);
    entry.resolve(frame);
  }

  #onError(frame) {
    const sock = this.#sock;
    if (frame.ref === undefined && sock?.sse && sock.pending.size > 0) {
      const message = String(frame.message ?? "");
      const named = typeof frame.channel === "string" ? sock.pending.get(frame.channel) : undefined;
      if (named) {
        // An error that names its channel (a newer server): no guessing needed.
        sock.pending.delete(frame.channel);
        sock.errors.push({ frame, sub: named });
        this.#settleSseErrors();
        return;
      }
      // Not an answer to the query: a server-side subscription's refusal (it names its
      // channel in its message), or the second subscribe of a channel the server had
      // already subscribed by itself (its `subscribed` answered ours).
      const notOurs = message.startsWith("server-side subscription") || message.startsWith("already subscribed");
      if (!notOurs) {
        // The refusal of a channel of the stream's query: it has no ref and does not
        // name the channel; #settleSseErrors tells which one.
        sock.errors.push({ frame, sub: undefined });
        this.#settleSseErrors();
        return;
      }
    }
    const err = new HeraldError(frame.code ?? "error", frame.message ?? "error", frame);
    const entry = frame.ref !== undefined ? this.#refs.get(frame.ref) : undefined;
    if (entry) {
      this.#refs.delete(frame.ref);
      if (entry.kind === "publish") {
        clearTimeout(entry.timer);
        entry.reject(err);
        return;
      }
      if (entry.kind === "subscribe" && this.#subs.get(entry.sub.channel) === entry.sub) {
        entry.sub.state = "failed";
        entry.sub._sentSince = null;
        entry.sub._skip = null;
        err.channel = entry.sub.channel;
        entry.sub.emit("error", err);
      }
    }
    this.emit("error", err);
  }

  // ---------------------------------------------------------------- channels

  /**
   * Subscribes to `channel` (now, or when connected) and keeps it across reconnects.
   * `since` starts from a position the app saved earlier (e.g. across page loads).
   * Subscribing to a channel twice returns the same Subscription.
   * @param {string} channel
   * @param {{since?: {offset: number, epoch: string}}} [options]
   */
  subscribe(channel, options = {}) {
    if (typeof channel !== "string" || channel === "") throw new TypeError("channel must be a non-empty string");
    const existing = this.#subs.get(channel);
    if (existing) {
      if (existing.state === "failed") {
        existing.state = "subscribing";
        if (this.#connected !== null) this.#sendSubscribe(existing);
      }
      return existing;
    }
    const sub = new Subscription(this, channel, options.since ?? null);
    this.#subs.set(channel, sub);
    if (this.#connected !== null) this.#sendSubscribe(sub);
    return sub;
  }

  getSubscription(channel) {
    return this.#subs.get(channel) ?? null;
  }

  #sendSubscribe(sub, since = sub.position) {
    if (this.#sock?.sse) {
      // Asked for in the query of a new stream, from the position it has then.
      sub.state = "subscribing";
      this.#scheduleReopen();
      return;
    }
    const ref = this.#nextRef++;
    const frame = { type: "subscribe", channel: sub.channel, ref };
    if (since && typeof since.offset === "number" && typeof since.epoch === "string" && since.epoch !== "") {
      frame.since = { offset: since.offset, epoch: since.epoch };
      sub._sentSince = { ...frame.since };
    } else {
      sub._sentSince = null;
    }
    sub.state = "subscribing";
    this.#refs.set(ref, { kind: "subscribe", sub });
    this.#send(frame);
  }

  unsubscribe(channel) {
    const sub = this.#subs.get(channel);
    if (!sub) return;
    this.#subs.delete(channel);
    const wasLive = sub.state === "subscribed" || sub.state === "subscribing";
    sub.state = "unsubscribed";
    sub._skip = null;
    if (wasLive && this.#sock?.sse) {
      this.#scheduleReopen(); // a stream without it
    } else if (wasLive && this.#connected !== null) {
      const ref = this.#nextRef++;
      this.#refs.set(ref, { kind: "unsubscribe", sub });
      this.#send({ type: "unsubscribe", channel, ref });
    }
    sub.emit("unsubscribed", { type: "unsubscribed", channel, byServer: false });
  }

  /**
   * Publishes `data` on `channel`. Resolves with the `ack` frame (`offset` on channels
   * with history); rejects with a HeraldError: the server's `error` (bad_request,
   * forbidden, …), `not_connected`, `disconnected` (closed before the ack: it may or may
   * not have been published), or `timeout`. On SSE it is `POST /api/publish` with the
   * token, answered the same way.
   * @param {string} channel
   * @param {unknown} data
   * @param {{idempotencyKey?: string}} [options] a repeat within 5 minutes is acked, not delivered again
   */
  publish(channel, data, options = {}) {
    const key = options?.idempotencyKey;
    if (this.#sock?.sse || this.#reopening) return this.#httpPublish(channel, data, key);
    return new Promise((resolve, reject) => {
      if (this.#connected === null) {
        reject(new HeraldError("not_connected", "not connected"));
        return;
      }
      const ref = this.#nextRef++;
      const timer = setTimeout(() => {
        if (this.#refs.delete(ref)) reject(new HeraldError("timeout", "no ack in time"));
      }, this.#publishTimeoutMs);
      this.#refs.set(ref, { kind: "publish", resolve, reject, timer, channel });
      const frame = { type: "publish", channel, data, ref };
      if (key !== undefined) frame.idempotency_key = key;
      if (!this.#send(frame)) {
        this.#refs.delete(ref);
        clearTimeout(timer);
        reject(new HeraldError("not_connected", "not connected"));
      }
    });
  }

  /**
   * A publish over the HTTP API, for a client on SSE: `exclude_conn` is this stream's
   * connection, so it does not come back to it (as a WebSocket publish does not).
   */
  async #httpPublish(channel, data, key) {
    const deadline = Date.now() + this.#publishTimeoutMs;
    if (this.#connected === null) {
      // The stream is being reopened: publish as soon as it is up (a publish with no
      // connection to exclude would come back to us).
      let timer;
      const late = new Promise((_, reject) => {
        timer = setTimeout(() => reject(new HeraldError("timeout", "no ack in time")), this.#publishTimeoutMs);
      });
      try {
        await Promise.race([this.#streamReady(), late]);
      } finally {
        clearTimeout(timer);
      }
    }
    const connId = this.#connected?.conn_id;
    if (!connId || !this.#sock?.sse) throw new HeraldError("not_connected", "not connected");
    const ref = this.#nextRef++;
    const body = { channel, data, exclude_conn: connId };
    if (key !== undefined) body.idempotency_key = key;
    try {
      const answer = await this.#http("POST", "/api/publish", body, Math.max(1, deadline - Date.now()));
      if (typeof answer.offset === "number") this.#subs.get(channel)?._ownPublished(answer.offset, answer.epoch);
      return { ...answer, type: "ack", ref };
    } catch (err) {
      if (err.frame) err.frame.ref = err.ref = ref;
      throw err;
    }
  }

  /**
   * One call of the HTTP API with the client's token. Resolves with the JSON answer;
   * rejects with a HeraldError: the server's `{"error","message"}` as its code and
   * message (`status` set, `frame` shaped like an `error` frame), `timeout`, or
   * `disconnected` when no answer came (the request may or may not have been done).
   */
  async #http(method, path, body, timeoutMs) {
    const fetchFn = this.#fetch;
    if (typeof fetchFn !== "function") throw new HeraldError("not_supported", "no fetch to call the HTTP API with");
    const url = `${this.#httpUrls().api}${path}`;
    const headers = { accept: "application/json" };
    if (this.#token) headers.authorization = `Bearer ${this.#token}`;
    if (body !== undefined) headers["content-type"] = "application/json";
    const ctrl = typeof AbortController === "function" ? new AbortController() : null;
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      ctrl?.abort();
    }, Math.min(timeoutMs, MAX_TIMEOUT_MS));
    let res;
    let text;
    try {
      // `call`: a browser's fetch must not be called as a method of another object.
      res = await fetchFn.call(globalThis, url, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: ctrl?.signal,
      });
      text = await res.text();
    } catch (err) {
      if (timedOut) throw new HeraldError("timeout", `no answer to ${method} ${path} in time`);
      throw asHeraldError(err, "disconnected", `${method} ${path} failed`);
    } finally {
      clearTimeout(timer);
    }
    let json = null;
    try {
      json = JSON.parse(text);
    } catch {
      /* not JSON */
    }
    if (res.ok) return json && typeof json === "object" ? json : {};
    const code = typeof json?.error === "string" ? json.error : `http_${res.status}`;
    const message = typeof json?.message === "string" ? json.message : `${method} ${path}: HTTP ${res.status}`;
    const err = new HeraldError(code, message, { type: "error", code, message });
    err.status = res.status;
    throw err;
  }

  /** `POST /api/broadcasts/{id}/ack`; kept for the next connection when no answer came. */
  #httpAck(id) {
    this.#http("POST", `/api/broadcasts/${encodeURIComponent(id)}/ack`, undefined, this.#publishTimeoutMs).catch((err) => {
      if (err.code === "disconnected" || err.code === "timeout" || err.status >= 500) this.#pendingAcks.add(id);
      else this.emit("error", err);
    });
  }

  // ---------------------------------------------------------------- announcements

  /** `cb(broadcast, frame)` for `new_broadcast` and `active_broadcast`. Returns an unsubscribe function. */
  onAnnouncement(cb) {
    return this.on("announcement", cb);
  }

  /** `cb(frame)` for `broadcast_cleared`. Returns an unsubscribe function. */
  onAnnouncementCleared(cb) {
    return this.on("announcementCleared", cb);
  }

  /** Acknowledges an announcement for this user (sent when connected, else on connect). */
  acknowledge(broadcastId) {
    if (typeof broadcastId !== "string" || broadcastId === "") throw new TypeError("broadcastId must be a string");
    if (this.#activeAnnouncement?.id === broadcastId) this.#activeAnnouncement = null;
    if (this.#sock?.sse && this.#connected !== null) {
      this.#httpAck(broadcastId);
    } else if (!this.#send({ type: "acknowledge_broadcast", broadcast_id: broadcastId })) {
      this.#pendingAcks.add(broadcastId);
    }
  }

  /** Asks for the active announcement; it arrives through onAnnouncement (nothing if none). */
  getActiveAnnouncement() {
    if (this.#sock?.sse && this.#connected !== null) {
      // `GET /api/broadcasts/active`: the answer, if any, as the `active_broadcast` frame
      // a WebSocket would have had.
      this.#http("GET", "/api/broadcasts/active", undefined, this.#publishTimeoutMs).then(
        (answer) => {
          const b = answer?.broadcast;
          if (b && typeof b === "object") this.#onFrame({ type: "active_broadcast", broadcast: b });
        },
        (err) => this.emit("error", err),
      );
      return true;
    }
    return this.#send({ type: "get_active_broadcast" });
  }
}

function safeClose(ws, code, reason) {
  try {
    // A close reason is at most 123 bytes.
    ws.close(code, String(reason ?? "").slice(0, 100));
  } catch {
    try {
      ws.close();
    } catch {
      /* already closed */
    }
  }
}

function asHeraldError(err, code, message) {
  if (err instanceof HeraldError) return err;
  const e = new HeraldError(code, `${message}: ${err?.message ?? err}`);
  e.cause = err;
  return e;
}

export default Herald;
