// herald demo page: the JavaScript client (/client/herald.js) in a small app.
//  - connection status (#status),
//  - the active announcement as a banner (#banner) with an Acknowledge button,
//  - a "now playing" position synced across the tabs and devices of one user over
//    sync:<user id>: the tab that plays sends progress_update every second (seed 002),
//    the others show it live.
// No inline scripts or styles (CSP default-src 'self'); element styles go through the CSSOM.

import { Herald, decodeJwtPayload } from "/client/herald.js";

const CONTENT = { id: "big-buck-bunny", title: "Big Buck Bunny", duration: 596 };
const TOKEN_KEY = "herald-demo-token";
const REMOTE_STALE_MS = 3500; // a playing device that has been silent this long has stopped
const LOG_MAX = 40;

const $ = (id) => document.getElementById(id);
const els = {
  status: $("status"),
  banner: $("banner"),
  bannerText: $("banner-text"),
  bannerAck: $("banner-ack"),
  title: $("title"),
  where: $("where"),
  progress: $("progress"),
  bar: $("progress-bar"),
  position: $("position"),
  duration: $("duration"),
  play: $("play"),
  playLabel: $("play-label"),
  syncChannel: $("sync-channel"),
  user: $("user"),
  device: $("device"),
  connId: $("conn-id"),
  node: $("node"),
  form: $("token-form"),
  tokenInput: $("token-input"),
  forget: $("token-forget"),
  tokenError: $("token-error"),
  log: $("log"),
};

const tabId = (globalThis.crypto?.randomUUID?.() ?? `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`).slice(0, 8);

// ------------------------------------------------------------------ storage

const store = {
  get() {
    try {
      return localStorage.getItem(TOKEN_KEY);
    } catch {
      return null;
    }
  },
  set(token) {
    try {
      localStorage.setItem(TOKEN_KEY, token);
    } catch {
      /* storage disabled: the token lives in this tab only */
    }
  },
  clear() {
    try {
      localStorage.removeItem(TOKEN_KEY);
    } catch {
      /* nothing stored */
    }
  },
};

/** `#token=…` wins (and is saved, then removed from the address bar); else the saved one. */
function initialToken() {
  const fromHash = new URLSearchParams(location.hash.slice(1)).get("token");
  if (fromHash) {
    store.set(fromHash);
    history.replaceState(null, "", location.pathname + location.search);
    return fromHash;
  }
  return store.get();
}

// ------------------------------------------------------------------ small views

function fmt(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const ss = String(s % 60).padStart(2, "0");
  return h > 0 ? `${h}:${String(m).padStart(2, "0")}:${ss}` : `${m}:${ss}`;
}

function log(text, kind = "") {
  const li = document.createElement("li");
  if (kind) li.dataset.kind = kind;
  const time = document.createElement("time");
  time.textContent = new Date().toLocaleTimeString([], { hour12: false });
  const span = document.createElement("span");
  span.textContent = text;
  li.append(time, span);
  els.log.prepend(li);
  while (els.log.children.length > LOG_MAX) els.log.lastElementChild.remove();
}

function setStatus(state, text) {
  els.status.dataset.state = state;
  els.status.textContent = text;
}

function showTokenError(text) {
  els.tokenError.textContent = text;
  els.tokenError.hidden = !text;
}

// ------------------------------------------------------------------ announcement banner

let shownAnnouncement = null;

function showBanner(b) {
  shownAnnouncement = b;
  els.banner.dataset.type = b.message_type || "info";
  els.bannerText.textContent = b.message;
  els.banner.hidden = false;
}

function hideBanner() {
  shownAnnouncement = null;
  els.banner.hidden = true;
  els.bannerText.textContent = "";
}

els.bannerAck.addEventListener("click", () => {
  if (shownAnnouncement && client) client.acknowledge(shownAnnouncement.id);
  hideBanner();
});

// ------------------------------------------------------------------ the synced player

const player = {
  contentId: CONTENT.id,
  title: CONTENT.title,
  duration: CONTENT.duration,
  position: 0,
  playing: false, // this tab plays
  startedAt: 0, // when this tab started playing (newest play wins)
  lastTick: 0,
  timer: null,
  remote: null, // {device, at}: another device plays
};

function render() {
  const pct = player.duration > 0 ? Math.min(100, (player.position / player.duration) * 100) : 0;
  els.title.textContent = player.title;
  els.bar.style.width = `${pct}%`;
  els.progress.setAttribute("aria-valuemax", String(Math.round(player.duration)));
  els.progress.setAttribute("aria-valuenow", String(Math.floor(player.position)));
  els.progress.setAttribute("aria-valuetext", `${fmt(player.position)} of ${fmt(player.duration)}`);
  els.position.textContent = fmt(player.position);
  els.position.dataset.seconds = String(Math.floor(player.position));
  els.duration.textContent = fmt(player.duration);
  els.play.setAttribute("aria-pressed", String(player.playing));
  els.play.dataset.playing = String(player.playing);
  els.playLabel.textContent = player.playing ? "Pause" : "Play";
  els.play.disabled = !client?.connected;
  if (player.playing) {
    els.where.textContent = "Playing here";
  } else if (player.remote && Date.now() - player.remote.at < REMOTE_STALE_MS) {
    els.where.textContent = `Playing on ${player.remote.device}`;
  } else {
    els.where.textContent = player.position > 0 ? "Paused" : "Not started";
  }
  els.where.dataset.state = player.playing ? "local" : player.remote ? "remote" : "paused";
}

function deviceName() {
  const device = client ? decodeJwtPayload(client.token ?? "")?.device : null;
  return typeof device === "string" && device ? device : `tab ${tabId}`;
}

function sendProgress() {
  if (!client?.connected) return;
  client.sync
    .sendProgress(player.contentId, Math.round(player.position * 10) / 10, player.duration, {
      title: player.title,
      playing: player.playing,
      started_at: player.startedAt,
      device: deviceName(),
      tab: tabId,
    })
    .catch((err) => log(`progress_update not sent: ${err.code}`, "error"));
}

function tick() {
  const now = performance.now();
  player.position = Math.min(player.duration, player.position + (now - player.lastTick) / 1000);
  player.lastTick = now;
  if (player.position >= player.duration) {
    pause();
    return;
  }
  sendProgress();
  render();
}

function play() {
  if (player.playing) return;
  if (player.position >= player.duration) player.position = 0;
  player.playing = true;
  player.startedAt = Date.now();
  player.remote = null;
  player.lastTick = performance.now();
  clearInterval(player.timer);
  player.timer = setInterval(tick, 1000);
  sendProgress();
  render();
}

/** Stops playing here; tells the other devices unless another one took over. */
function pause({ announce = true } = {}) {
  if (!player.playing) return;
  clearInterval(player.timer);
  player.timer = null;
  player.position = Math.min(player.duration, player.position + (performance.now() - player.lastTick) / 1000);
  player.playing = false;
  if (announce) sendProgress();
  render();
}

els.play.addEventListener("click", () => (player.playing ? pause() : play()));

els.progress.addEventListener("click", (ev) => {
  if (!client?.connected) return;
  const rect = els.progress.getBoundingClientRect();
  const frac = Math.min(1, Math.max(0, (ev.clientX - rect.left) / rect.width));
  player.position = frac * player.duration;
  player.lastTick = performance.now();
  sendProgress();
  render();
});

function onRemoteProgress(e) {
  if (e.content_id !== player.contentId) {
    player.contentId = e.content_id;
    player.title = typeof e.title === "string" ? e.title : e.content_id;
  }
  if (typeof e.duration === "number" && e.duration > 0) player.duration = e.duration;
  const remotePlaying = e.playing !== false;
  if (remotePlaying && player.playing) {
    // Two players: the one started last wins.
    if ((e.started_at ?? 0) < player.startedAt) return;
    pause({ announce: false });
    log(`${e.device ?? "another device"} took over playback`);
  }
  player.position = e.position;
  player.remote = remotePlaying ? { device: e.device ?? "another device", at: Date.now() } : null;
  render();
}

// Follow a remote player going quiet (closed tab) and keep the labels current.
setInterval(() => {
  if (player.remote && Date.now() - player.remote.at >= REMOTE_STALE_MS) {
    player.remote = null;
    render();
  }
}, 1000);

// ------------------------------------------------------------------ the client

let client = null;

function wsUrl() {
  return `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;
}

function start(token) {
  if (client) {
    pause({ announce: false });
    client.close("token changed");
  }
  hideBanner();
  showTokenError("");
  const claims = decodeJwtPayload(token);
  if (!claims) {
    showTokenError("That does not look like a JWT.");
    setStatus("closed", "No token");
    return;
  }
  if (typeof claims.exp === "number" && claims.exp * 1000 < Date.now()) {
    showTokenError("This token has expired: mint a new one.");
  }
  const c = new Herald({ url: wsUrl(), token });
  client = c;
  const mine = (fn) => (...args) => {
    if (client === c) fn(...args);
  };

  c.on("state", mine(({ state }) => {
    if (state === "connecting") setStatus("connecting", "Connecting…");
    render();
  }));
  c.on("connected", mine((frame) => {
    setStatus("connected", "Connected");
    els.user.textContent = frame.user_id;
    els.device.textContent = deviceName();
    els.connId.textContent = frame.conn_id;
    els.node.textContent = frame.node;
    els.syncChannel.textContent = `sync:${frame.user_id}`;
    log(frame.reconnected ? `reconnected as ${frame.user_id}` : `connected as ${frame.user_id} (${frame.conn_id})`, "ok");
    // Ask the user's other devices where they are (they answer with a progress_update).
    c.sync.sendCommand("state_request", null, { tab: tabId }).catch(() => {});
    render();
  }));
  c.on("reconnecting", mine(({ attempt, delayMs, code, reason }) => {
    const secs = (delayMs / 1000).toFixed(1);
    setStatus("reconnecting", attempt > 0 ? `Reconnecting in ${secs} s (attempt ${attempt})` : "Reconnecting…");
    if (attempt <= 1) log(`connection lost (${code}${reason ? ` ${reason}` : ""}); reconnecting`, "warn");
    if (player.playing) pause({ announce: false });
    render();
  }));
  c.on("disconnected", mine(({ code, reason, byServer }) => {
    const why =
      code === 4002
        ? "token expired: paste a new one"
        : code === 4004
          ? "disconnected by the server"
          : code === 1008
            ? `refused by the server${reason ? `: ${reason}` : ""}`
            : reason || "closed";
    setStatus("closed", `Disconnected — ${why}`);
    log(`disconnected (${code}) ${why}`, byServer ? "error" : "");
    if (code === 4002) showTokenError("The token expired. Mint a new one and connect again.");
    render();
  }));
  c.on("error", mine((err) => log(`error ${err.code}: ${err.message}`, "error")));
  c.on("resync", mine(() => log("the server asked for a resync (4003)", "warn")));

  c.onAnnouncement(mine((b, frame) => {
    showBanner(b);
    log(`${frame.type}: ${b.message}`);
  }));
  c.onAnnouncementCleared(mine(() => {
    hideBanner();
    log("announcement cleared");
  }));

  c.sync.onProgress(mine((e) => onRemoteProgress(e)));
  c.sync.onCommand(mine((e) => {
    if (e.command === "state_request") {
      if (player.playing || player.position > 0) sendProgress();
    } else if (e.command === "pause") {
      pause();
      log("paused by another device");
    } else if (e.command === "play") {
      play();
      log("started by another device");
    }
  }));
  c.sync.on("lost", mine(() => log("sync history was lost: following live updates")));

  setStatus("connecting", "Connecting…");
  c.connect().catch(() => {
    /* the disconnected event said why */
  });
}

els.form.addEventListener("submit", (ev) => {
  ev.preventDefault();
  const token = els.tokenInput.value.trim();
  if (!token) {
    showTokenError("Paste a token first.");
    return;
  }
  store.set(token);
  els.tokenInput.value = "";
  start(token);
});

els.forget.addEventListener("click", () => {
  store.clear();
  if (client) {
    pause({ announce: false });
    client.close("token forgotten");
    client = null;
  }
  hideBanner();
  for (const el of [els.user, els.device, els.connId, els.node]) el.textContent = "—";
  setStatus("idle", "Not connected");
  log("token forgotten");
  render();
});

// A laptop coming back online: reconnect now instead of waiting for the backoff.
addEventListener("online", () => {
  if (client?.state === "reconnecting") client.reconnect();
});

const token = initialToken();
render();
if (token) {
  start(token);
} else {
  setStatus("idle", "Not connected — paste a token");
  els.tokenInput.focus();
}
