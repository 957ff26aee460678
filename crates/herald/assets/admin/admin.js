// herald admin page: one plain ES module, no framework, no build step.
// Talks only to this server's HTTP API with `Authorization: Bearer <key>`; the key
// lives in sessionStorage (this tab only). Every string from the API goes into the
// DOM as text, never as HTML.

const KEY_STORAGE = 'herald.admin.key';
const THEME_STORAGE = 'herald.admin.theme';
const POLL_MS = 1000;
const WINDOW_MS = 120_000; // the charts show the last two minutes
const MAX_CHARS = 280;
const CONN_LIMIT = 200;
/** How often the connection list is reloaded by the poll. */
const CONN_EVERY_MS = 3000;
let lastConnLoad = -Infinity;
const FETCH_TIMEOUT_MS = 5000;

const $ = (sel) => document.querySelector(sel);

/** Builds an element: h('td', {class: 'x', dataset: {label: 'User'}}, 'text', child). */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k === 'text') el.textContent = v;
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function setText(sel, text) {
  const el = typeof sel === 'string' ? $(sel) : sel;
  const s = String(text);
  if (el && el.textContent !== s) el.textContent = s;
}

// ---------------------------------------------------------------- formatting

const nf = new Intl.NumberFormat(undefined);
const fmtInt = (n) => (Number.isFinite(n) ? nf.format(Math.round(n)) : '–');

const plural = (n, word) => `${fmtInt(n)} ${word}${n === 1 ? '' : 's'}`;

function fmtRate(n) {
  if (!Number.isFinite(n)) return '–';
  if (n === 0) return '0';
  if (n < 10) return n.toFixed(1);
  return fmtInt(n);
}

function fmtMs(n) {
  if (!Number.isFinite(n)) return '–';
  if (n === 0) return '0 ms';
  if (n < 10) return `${n.toFixed(2)} ms`;
  if (n < 100) return `${n.toFixed(1)} ms`;
  return `${fmtInt(n)} ms`;
}

function fmtBytes(n) {
  if (!Number.isFinite(n)) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${i === 0 ? n : n.toFixed(n < 10 ? 1 : 0)} ${units[i]}`;
}

/** "12 s", "3 min", "2 h 5 min", "4 d" since an ISO timestamp. */
function since(iso, now = Date.now()) {
  const t = Date.parse(iso);
  if (!Number.isFinite(t)) return '–';
  const s = Math.max(0, Math.floor((now - t) / 1000));
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min`;
  const hrs = Math.floor(m / 60);
  if (hrs < 24) return m % 60 ? `${hrs} h ${m % 60} min` : `${hrs} h`;
  return `${Math.floor(hrs / 24)} d`;
}

function fmtClock(iso) {
  const d = new Date(iso);
  return Number.isFinite(d.getTime()) ? d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' }) : '';
}

// The server trims with Rust's `str::trim` (Unicode White_Space) and counts chars
// (scalar values). JS's `\s` differs by U+FEFF (not White_Space) and U+0085 (is), so
// this class is Rust's set exactly.
const WS = '[\\t\\n\\v\\f\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]';
const TRIM = new RegExp(`^${WS}+|${WS}+$`, 'gu');
export function characterCount(text) {
  return [...text.replace(TRIM, '')].length;
}

const TYPE_LABEL = { info: 'Info', warning: 'Warning', alert: 'Critical' };

const REFUSAL_TEXT = {
  bad_api_key: 'wrong API key',
  bad_handshake: 'bad WebSocket handshake',
  bad_origin: 'Origin not allowed',
  bad_token: 'invalid or expired token',
  body_timeout: 'request body too slow',
  body_too_large: 'request body too large',
  channel_budget: 'per-user channel budget',
  handshake_timeout: 'handshake timed out',
  head_too_large: 'request head too large',
  http_conn_cap: 'HTTP connection cap',
  ip_cap: 'per-IP connection cap',
  protocol_error: 'WebSocket protocol error',
  publication_too_large: 'publication too large',
  rate_limited: 'rate limited',
  slow_consumer: 'slow consumer',
  store_busy: 'store busy',
  too_large: 'message too large',
  user_cap: 'per-user connection cap',
  write_stalled: 'socket write stalled',
};

// ---------------------------------------------------------------- API

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

let apiKey = null;

async function api(path, { method = 'GET', body, key = apiKey } = {}) {
  const headers = { Accept: 'application/json', Authorization: `Bearer ${key}` };
  const init = { method, headers, cache: 'no-store', credentials: 'omit' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), FETCH_TIMEOUT_MS);
  init.signal = ctl.signal;
  let res;
  try {
    res = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, 'network', ctl.signal.aborted ? 'the server did not answer in time' : 'cannot reach the server');
  } finally {
    clearTimeout(timer);
  }
  let data = null;
  const text = await res.text().catch(() => '');
  if (text) {
    try { data = JSON.parse(text); } catch { data = null; }
  }
  if (!res.ok) {
    const code = (data && data.error) || `http_${res.status}`;
    const message = (data && data.message) || res.statusText || `HTTP ${res.status}`;
    throw new ApiError(res.status, code, message);
  }
  return data;
}

function describe(err) {
  if (!(err instanceof ApiError)) return String(err && err.message ? err.message : err);
  if (err.status === 0) return `Cannot reach the server: ${err.message}.`;
  return `${err.message} (${err.status} ${err.code})`;
}

// ---------------------------------------------------------------- toasts

function toast(text, kind = 'ok') {
  const el = h('div', { class: `toast ${kind === 'error' ? 'error' : ''}`, role: kind === 'error' ? 'alert' : 'status' }, text);
  $('#toasts').append(el);
  setTimeout(() => el.remove(), kind === 'error' ? 6000 : 3500);
}

// ---------------------------------------------------------------- theme

function applyTheme(theme) {
  if (theme === 'light' || theme === 'dark') document.documentElement.dataset.theme = theme;
  else delete document.documentElement.dataset.theme;
  charts.forEach((c) => c.draw());
}

function currentTheme() {
  const t = document.documentElement.dataset.theme;
  if (t) return t;
  return matchMedia('(prefers-color-scheme: dark)').matches ? 'dark' : 'light';
}

// ---------------------------------------------------------------- charts

/** A time-series line chart on a canvas, drawn by hand, sized to its CSS box. */
class LineChart {
  constructor(canvas, series, { format = fmtRate, minMax = 1 } = {}) {
    this.canvas = canvas;
    this.series = series; // [{name, color: '--c1'}]
    this.format = format;
    this.minMax = minMax;
    this.points = []; // [{t, values: [..]}]
    new ResizeObserver(() => this.draw()).observe(canvas);
  }

  push(t, values) {
    this.points.push({ t, values });
    const cut = t - WINDOW_MS - 5000;
    while (this.points.length && this.points[0].t < cut) this.points.shift();
  }

  clear() { this.points = []; this.draw(); }

  draw() {
    const c = this.canvas;
    const dpr = window.devicePixelRatio || 1;
    const w = c.clientWidth;
    const hgt = c.clientHeight;
    if (!w || !hgt) return;
    if (c.width !== Math.round(w * dpr) || c.height !== Math.round(hgt * dpr)) {
      c.width = Math.round(w * dpr);
      c.height = Math.round(hgt * dpr);
    }
    const ctx = c.getContext('2d');
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, hgt);
    const css = getComputedStyle(document.documentElement);
    const color = (v) => css.getPropertyValue(v).trim() || '#888';
    const font = `11px ${getComputedStyle(document.body).fontFamily}`;

    const now = this.points.length ? this.points[this.points.length - 1].t : Date.now();
    const t0 = now - WINDOW_MS;
    let max = 0;
    for (const p of this.points) if (p.t >= t0) for (const v of p.values) if (Number.isFinite(v)) max = Math.max(max, v);
    const top = niceCeil(Math.max(max * 1.1, this.minMax));

    ctx.font = font;
    const axis = (v) => fmtAxis(v, top);
    const labelW = Math.max(...[0, 0.5, 1].map((f) => ctx.measureText(axis(top * f)).width));
    const pad = { l: Math.ceil(labelW) + 10, r: 8, t: 8, b: 20 };
    const pw = Math.max(1, w - pad.l - pad.r);
    const ph = Math.max(1, hgt - pad.t - pad.b);
    const x = (t) => pad.l + ((t - t0) / WINDOW_MS) * pw;
    const y = (v) => pad.t + ph - (v / top) * ph;

    // grid and axis labels
    ctx.lineWidth = 1;
    ctx.strokeStyle = color('--grid');
    ctx.fillStyle = color('--axis');
    ctx.textBaseline = 'middle';
    ctx.textAlign = 'right';
    for (let i = 0; i <= 4; i++) {
      const v = (top * i) / 4;
      const yy = Math.round(y(v)) + 0.5;
      ctx.beginPath();
      ctx.moveTo(pad.l, yy);
      ctx.lineTo(w - pad.r, yy);
      ctx.stroke();
      if (i % 2 === 0) ctx.fillText(axis(v), pad.l - 6, yy);
    }
    ctx.textBaseline = 'top';
    for (const [s, label, align] of [[120, '−2 min', 'left'], [90, '', ''], [60, '−1 min', 'center'], [30, '', ''], [0, 'now', 'right']]) {
      const xx = Math.round(x(now - s * 1000)) + 0.5;
      if (s !== 0 && s !== 120) {
        ctx.beginPath();
        ctx.moveTo(xx, pad.t);
        ctx.lineTo(xx, pad.t + ph);
        ctx.stroke();
      }
      if (label) {
        ctx.textAlign = align;
        ctx.fillText(label, xx, pad.t + ph + 6);
      }
    }

    if (this.points.length === 0) {
      ctx.textAlign = 'center';
      ctx.textBaseline = 'middle';
      ctx.fillText('waiting for data…', pad.l + pw / 2, pad.t + ph / 2);
      return;
    }

    // series, back to front; the first one gets a soft fill under its line
    ctx.save();
    ctx.beginPath();
    ctx.rect(pad.l, pad.t - 2, pw, ph + 4);
    ctx.clip();
    this.series.forEach((s, i) => {
      const pts = this.points.filter((p) => Number.isFinite(p.values[i]));
      if (!pts.length) return;
      const stroke = color(s.color);
      ctx.lineJoin = 'round';
      ctx.lineCap = 'round';
      ctx.lineWidth = 2;
      ctx.strokeStyle = stroke;
      ctx.beginPath();
      pts.forEach((p, j) => (j ? ctx.lineTo(x(p.t), y(p.values[i])) : ctx.moveTo(x(p.t), y(p.values[i]))));
      ctx.stroke();
      if (i === 0) {
        ctx.lineTo(x(pts[pts.length - 1].t), y(0));
        ctx.lineTo(x(pts[0].t), y(0));
        ctx.closePath();
        const g = ctx.createLinearGradient(0, pad.t, 0, pad.t + ph);
        g.addColorStop(0, withAlpha(stroke, 0.22));
        g.addColorStop(1, withAlpha(stroke, 0));
        ctx.fillStyle = g;
        ctx.fill();
      }
      // the latest value as a dot
      const last = pts[pts.length - 1];
      ctx.fillStyle = stroke;
      ctx.beginPath();
      ctx.arc(x(last.t), y(last.values[i]), 3, 0, Math.PI * 2);
      ctx.fill();
    });
    ctx.restore();

    const last = this.points[this.points.length - 1];
    c.setAttribute('aria-label', `${c.dataset.title || ''} now: ${this.series.map((s, i) => `${s.name} ${this.format(last.values[i])}`).join(', ')}`);
  }
}

/** Axis labels: as many decimals as the scale needs, the same on every label. */
function fmtAxis(v, top) {
  let decimals = 0;
  while (decimals < 3 && Math.abs(Math.round((top / 2) * 10 ** decimals) - (top / 2) * 10 ** decimals) > 1e-9) decimals++;
  return v === 0 ? '0' : new Intl.NumberFormat(undefined, { minimumFractionDigits: decimals, maximumFractionDigits: decimals }).format(v);
}

function niceCeil(v) {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  const m = v / p;
  const step = [1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10].find((s) => m <= s + 1e-9);
  return step * p;
}

function withAlpha(color, a) {
  const m = /^#([0-9a-f]{6})$/i.exec(color);
  if (!m) return color;
  const n = parseInt(m[1], 16);
  return `rgba(${(n >> 16) & 255}, ${(n >> 8) & 255}, ${n & 255}, ${a})`;
}

const charts = [];
let rateChart;
let latencyChart;

// ---------------------------------------------------------------- stats

let prevSample = null; // {t, publications, deliveries}

function renderStats(s) {
  const n = s.node || {};
  setText('#stat-connections', fmtInt(n.connections));
  setText('#stat-users', fmtInt(n.users));
  setText('#stat-channels', plural(n.channels, 'channel'));
  setText('#stat-http', `${fmtInt(n.http_connections)} HTTP`);
  setText('#stat-history', fmtBytes(n.history_bytes));
  const nodeName = $('#node-name');
  nodeName.hidden = !n.name;
  setText(nodeName, n.name ? `node ${n.name}` : '');
  nodeName.title = n.name || '';

  const cl = s.cluster || {};
  const sub = $('#stat-cluster-sub');
  if (cl.error) {
    setText('#stat-cluster-connections', '?');
    sub.classList.add('warn');
    sub.title = cl.error;
    setText(sub, 'cluster view unreachable');
  } else {
    setText('#stat-cluster-connections', fmtInt(cl.connections));
    sub.classList.remove('warn');
    sub.title = '';
    setText(sub, `${plural(cl.users, 'user')} · ${plural(cl.nodes, 'node')}`);
  }
  // Connections per node, once there is more than one (each node's last heartbeat).
  const perNode = $('#stat-per-node');
  const nodes = Array.isArray(cl.per_node) ? cl.per_node : [];
  perNode.hidden = nodes.length < 2;
  setText(perNode, nodes.map((p) => `${p.name || p.tag} ${fmtInt(p.connections)}`).join(' · '));
  perNode.title = nodes.map((p) => `${p.name} (${p.tag}): ${p.connections} connections, ${p.users} users`).join('\n');

  setText('#stat-publications', fmtInt(s.publications));
  setText('#stat-deliveries', fmtInt(s.deliveries));
  setText('#stat-dropped', fmtInt(s.dropped));

  // rates from the deltas of the totals since start
  const t = performance.now();
  const wall = Date.now();
  let pubRate = NaN;
  let delRate = NaN;
  if (prevSample && t > prevSample.t) {
    const dt = (t - prevSample.t) / 1000;
    const dp = s.publications - prevSample.publications;
    const dd = s.deliveries - prevSample.deliveries;
    if (dp >= 0 && dd >= 0) { // a restarted server resets its counters
      pubRate = dp / dt;
      delRate = dd / dt;
    }
  }
  prevSample = { t, publications: s.publications, deliveries: s.deliveries };
  setText('#stat-pub-rate', fmtRate(pubRate));
  setText('#stat-del-rate', fmtRate(delRate));
  if (Number.isFinite(pubRate)) {
    rateChart.push(wall, [pubRate, delRate]);
    rateChart.draw();
  }

  // The last ~10 s when the server says (a live view); the totals since start otherwise.
  const lat = s.latency_ms_recent || s.latency_ms || {};
  setText('#stat-p99', fmtMs(lat.p99));
  setText('#stat-p50', fmtMs(lat.p50));
  setText('#stat-p95', fmtMs(lat.p95));
  latencyChart.push(wall, [lat.p50, lat.p95, lat.p99]);
  latencyChart.draw();

  renderRefusalTotals(s.refused || {});
}

// ---------------------------------------------------------------- refusals

function renderRefusalTotals(refused) {
  const box = $('#refusal-totals');
  const entries = Object.entries(refused).filter(([, n]) => n > 0).sort((a, b) => b[1] - a[1]);
  const key = JSON.stringify(entries);
  if (box.dataset.key === key) return;
  box.dataset.key = key;
  box.replaceChildren(...entries.map(([reason, n]) =>
    h('span', { class: 'chip', title: REFUSAL_TEXT[reason] || reason, dataset: { reason } }, h('span', { class: 'n', text: fmtInt(n) }), reason)));
  box.hidden = entries.length === 0;
}

let refusalsMissing = false;

function renderRefusals(data) {
  const list = $('#refusals');
  const items = (data && data.refusals) || [];
  const now = Date.now();
  const rows = items.map((r) =>
    h('li', { dataset: { reason: r.reason } },
      h('span', { class: 'reason', title: REFUSAL_TEXT[r.reason] || '' }, r.reason,
        r.count > 1 ? h('span', { class: 'times', text: ` ×${fmtInt(r.count)}` }) : null,
        REFUSAL_TEXT[r.reason] ? h('span', { class: 'muted', text: ` · ${REFUSAL_TEXT[r.reason]}` }) : null),
      h('time', { datetime: r.at, title: r.at, text: `${since(r.at, now)} ago` })));
  list.replaceChildren(...rows);
  const empty = $('#refusals-empty');
  empty.hidden = items.length > 0;
  setText(empty, refusalsMissing ? 'This server does not list recent refusals (no /api/refusals).' : 'None yet.');
}

// ---------------------------------------------------------------- announcements

const composer = {
  text: () => $('#announce-text'),
  update() {
    const ta = this.text();
    const n = characterCount(ta.value);
    const counter = $('#announce-count');
    setText(counter, `${n} / ${MAX_CHARS}`);
    const over = n > MAX_CHARS;
    counter.classList.toggle('over', over);
    counter.classList.toggle('near', !over && n > MAX_CHARS - 20);
    ta.classList.toggle('over', over);
    ta.setAttribute('aria-invalid', over ? 'true' : 'false');
    $('#announce-send').disabled = this.sending || n === 0 || over;
  },
  sending: false,
};

async function sendAnnouncement(ev) {
  ev.preventDefault();
  const ta = composer.text();
  const n = characterCount(ta.value);
  if (n === 0 || n > MAX_CHARS || composer.sending) return;
  const err = $('#announce-error');
  err.hidden = true;
  composer.sending = true;
  composer.update();
  try {
    const r = await api('/api/broadcasts', { method: 'POST', body: { message: ta.value, type: $('#announce-type').value } });
    ta.value = '';
    toast(`Announcement sent to ${plural(r.sent_to_users, 'user')} (${plural(r.character_count, 'character')}).`);
    pollSoon();
  } catch (e) {
    if (handleAuthLoss(e)) return;
    err.textContent = `Not sent: ${describe(e)}`;
    err.hidden = false;
  } finally {
    composer.sending = false;
    composer.update();
  }
}

async function clearAnnouncement() {
  const btn = $('#announce-clear');
  btn.disabled = true;
  try {
    const r = await api('/api/broadcasts/clear', { method: 'POST', body: {} });
    toast(r.cleared ? 'Announcement cleared.' : 'There was no active announcement.');
    renderActive(null);
    pollSoon();
  } catch (e) {
    if (handleAuthLoss(e)) return;
    toast(`Could not clear: ${describe(e)}`, 'error');
    btn.disabled = false;
  }
}

function renderActive(list) {
  const b = list && list.broadcasts && list.broadcasts[0];
  const active = b && b.active ? b : null;
  $('#announce-none').hidden = !!active;
  $('#announce-current').hidden = !active;
  $('#announce-clear').disabled = !active;
  if (!active) {
    setText('#announce-active', '');
    return;
  }
  const box = $('#announce-current');
  const type = active.message_type || 'info';
  box.className = `active-current t-${type}`;
  const badge = $('#announce-active-type');
  badge.className = `badge t-${type}`;
  setText(badge, TYPE_LABEL[type] || type);
  setText('#announce-active', active.message);
  $('#announce-current').dataset.id = active.id;
  setText('#announce-acks', String(active.acknowledgements ?? 0));
  setText('#announce-meta', `by ${active.created_by} · ${since(active.created_at)} ago`);
  $('#announce-meta').title = active.created_at;
}

// ---------------------------------------------------------------- connections

let connSeq = 0; // answers to an older search are dropped
const rowsById = new Map();

function connQuery() {
  const q = $('#conn-search').value.trim();
  return { q, path: `/api/connections?${new URLSearchParams({ q, limit: String(CONN_LIMIT) })}` };
}

async function loadConnections() {
  const seq = ++connSeq;
  const { q, path } = connQuery();
  try {
    const data = await api(path);
    if (seq !== connSeq) return;
    $('#conn-error').hidden = true;
    renderConnections(data, q);
  } catch (e) {
    if (seq !== connSeq) return;
    if (handleAuthLoss(e)) return;
    const el = $('#conn-error');
    el.textContent = e.status === 404 && e.code === 'not_found'
      ? 'This server does not list connections (no /api/connections).'
      : `Could not load connections: ${describe(e)}`;
    el.hidden = false;
    throw e; // counted by poll()
  }
}

const refreshConnections = () => loadConnections().catch(() => {});

function subsChips(subs) {
  const shown = subs.slice(0, 4).map((s) => h('span', { class: 'chip mono', title: s, text: s }));
  if (subs.length > 4) shown.push(h('span', { class: 'chip more', title: subs.slice(4).join('\n'), text: `+${subs.length - 4}` }));
  if (!subs.length) shown.push(h('span', { class: 'muted', text: '—' }));
  return h('div', { class: 'chips' }, shown);
}

function buildRow(c) {
  const disconnect = h('button', { class: 'btn btn-sm btn-danger-ghost disconnect', type: 'button', title: `Close connection ${c.conn_id}`, text: 'Disconnect' });
  disconnect.addEventListener('click', () => disconnectConn(c.conn_id, tr));
  const disconnectUser = h('button', { class: 'btn btn-sm disconnect-user', type: 'button', title: `Close every connection of ${c.user_id}`, text: 'Disconnect user' });
  disconnectUser.addEventListener('click', () => disconnectUserClick(disconnectUser, tr.dataset.userId));
  const tr = h('tr', { dataset: { connId: c.conn_id, userId: c.user_id } },
    h('td', { class: 'user', dataset: { label: 'User' } }, h('span', { class: 'uid' }), h('span', { class: 'cid' })),
    h('td', { class: 'device', dataset: { label: 'Device' } }),
    h('td', { class: 'node', dataset: { label: 'Node' } }),
    h('td', { class: 'since', dataset: { label: 'Connected' } }),
    h('td', { class: 'num queue', dataset: { label: 'Queue' } }),
    h('td', { class: 'subs', dataset: { label: 'Subscriptions' } }),
    h('td', { class: 'actions' }, disconnect, disconnectUser));
  return tr;
}

function updateRow(tr, c, now) {
  const user = tr.querySelector('.uid');
  setText(user, c.user_id);
  const hasBadge = !!tr.querySelector('.badge.admin');
  if (c.admin && !hasBadge) user.after(h('span', { class: 'badge admin', text: 'admin' }));
  if (!c.admin && hasBadge) tr.querySelector('.badge.admin').remove();
  setText(tr.querySelector('.cid'), c.conn_id);
  setText(tr.querySelector('.device'), c.device ?? '—');
  setText(tr.querySelector('.node'), c.node ?? '—');
  const sinceCell = tr.querySelector('.since');
  setText(sinceCell, since(c.connected_at, now));
  sinceCell.title = `${c.connected_at}${c.ip ? ` from ${c.ip}` : ''}`;
  const q = tr.querySelector('.queue');
  setText(q, fmtInt(c.queue_depth));
  q.classList.toggle('queue-hot', c.queue_depth > 100);
  const subs = c.subscriptions || [];
  const key = subs.join('\u0000');
  const subsCell = tr.querySelector('.subs');
  if (subsCell.dataset.key !== key || !subsCell.firstChild) {
    subsCell.dataset.key = key;
    subsCell.replaceChildren(subsChips(subs));
  }
}

function renderConnections(data, q) {
  const list = data.connections || [];
  const body = $('#conn-rows');
  const now = Date.now();
  const seen = new Set();
  let prev = null;
  for (const c of list) {
    seen.add(c.conn_id);
    let tr = rowsById.get(c.conn_id);
    if (!tr) {
      tr = buildRow(c);
      rowsById.set(c.conn_id, tr);
    }
    updateRow(tr, c, now);
    // keep the server's order (newest first) while moving as few nodes as possible
    const want = prev ? prev.nextSibling : body.firstChild;
    if (want !== tr) body.insertBefore(tr, want);
    prev = tr;
  }
  for (const [id, tr] of rowsById) {
    if (!seen.has(id)) {
      tr.remove();
      rowsById.delete(id);
    }
  }
  const total = data.total ?? list.length;
  const matched = data.matched ?? list.length;
  let count = q ? `· ${fmtInt(matched)} of ${fmtInt(total)}` : `· ${fmtInt(total)}`;
  if (list.length < matched) count += ` (showing ${fmtInt(list.length)})`;
  const nodes = data.nodes;
  if (nodes && nodes.answered < nodes.asked) count += ` · ${fmtInt(nodes.answered)} of ${plural(nodes.asked, 'node')} answered`;
  setText('#conn-count', count);
  const empty = $('#conn-empty');
  empty.hidden = list.length > 0;
  setText(empty, q ? `No connection matches “${q}”.` : 'No connections.');
  $('#conn-table').hidden = list.length === 0;
}

async function disconnectConn(connId, tr) {
  tr.classList.add('leaving');
  tr.querySelectorAll('button').forEach((b) => { b.disabled = true; });
  try {
    const r = await api(`/api/connections/${encodeURIComponent(connId)}/disconnect`, { method: 'POST', body: {} });
    toast(r && r.forwarded ? `Asked the node holding ${connId} to close it.` : `Disconnected ${connId}.`);
    dropRow(connId);
  } catch (e) {
    if (handleAuthLoss(e)) return;
    if (e.status === 404) {
      toast(`${connId} was already gone.`);
      dropRow(connId);
    } else {
      tr.classList.remove('leaving');
      tr.querySelectorAll('button').forEach((b) => { b.disabled = false; });
      toast(`Could not disconnect ${connId}: ${describe(e)}`, 'error');
    }
  }
  refreshConnections();
}

function dropRow(connId) {
  const tr = rowsById.get(connId);
  if (tr) tr.remove();
  rowsById.delete(connId);
}

/** Two clicks: the first arms the button for 4 s, the second closes all the user's connections. */
async function disconnectUserClick(btn, userId) {
  if (!btn.classList.contains('confirm')) {
    btn.classList.add('confirm');
    btn.textContent = 'Confirm?';
    btn._disarm = setTimeout(() => {
      btn.classList.remove('confirm');
      btn.textContent = 'Disconnect user';
    }, 4000);
    return;
  }
  clearTimeout(btn._disarm);
  btn.disabled = true;
  try {
    const r = await api(`/api/users/${encodeURIComponent(userId)}/disconnect`, { method: 'POST', body: {} });
    toast(`Disconnected ${plural(r.disconnected, 'connection')} of ${userId}${r.forwarded ? ' here, and asked the other nodes' : ''}.`);
    for (const [id, tr] of rowsById) if (tr.dataset.userId === userId) dropRow(id);
  } catch (e) {
    if (handleAuthLoss(e)) return;
    toast(`Could not disconnect ${userId}: ${describe(e)}`, 'error');
    btn.disabled = false;
    btn.classList.remove('confirm');
    btn.textContent = 'Disconnect user';
  }
  refreshConnections();
}

// ---------------------------------------------------------------- presence

const presence = { user: null, channel: null };

async function lookupUser(id) {
  const box = $('#presence-user-result');
  try {
    const r = await api(`/api/presence/users/${encodeURIComponent(id)}`);
    if (presence.user !== id) return;
    box.classList.remove('error');
    box.replaceChildren(
      h('span', { class: `status-dot ${r.online ? 'on' : ''}` }),
      h('strong', { text: r.user_id }),
      r.online ? ' is online' : ' is offline',
      h('span', { class: 'muted', text: ` · ${plural(r.connections, 'connection')}` }));
  } catch (e) {
    if (presence.user !== id || handleAuthLoss(e)) return;
    box.classList.add('error');
    box.textContent = describe(e);
    if (e.status >= 400 && e.status < 500) presence.user = null; // stop re-asking
  }
  box.hidden = false;
}

async function lookupChannel(name) {
  const box = $('#presence-channel-result');
  try {
    const r = await api(`/api/channels/${encodeURIComponent(name)}/presence`);
    if (presence.channel !== name) return;
    box.classList.remove('error');
    const users = r.users || [];
    box.replaceChildren(
      h('div', {},
        h('strong', { class: 'mono', text: r.channel }),
        h('span', { class: 'muted', text: ` · ${plural(users.length, 'user')}, ${plural(r.connections, 'connection')} here` })),
      users.length
        ? h('div', { class: 'chips presence-users' }, users.slice(0, 50).map((u) => h('span', { class: 'chip', text: u })),
          users.length > 50 ? h('span', { class: 'chip more', text: `+${users.length - 50}` }) : null)
        : h('div', { class: 'muted', text: 'Nobody is subscribed.' }));
  } catch (e) {
    if (presence.channel !== name || handleAuthLoss(e)) return;
    box.classList.add('error');
    box.textContent = describe(e);
    if (e.status >= 400 && e.status < 500) presence.channel = null;
  }
  box.hidden = false;
}

// ---------------------------------------------------------------- polling

let timer = null;
let running = false;
let inFlight = false;
let lastOk = 0;

async function poll() {
  if (!running || inFlight) return;
  inFlight = true;
  clearTimeout(timer);
  const started = performance.now();
  const jobs = [
    api('/api/stats').then(renderStats),
    api('/api/broadcasts?limit=1').then(renderActive),
    // The list asks every node of a cluster: every few seconds, not every poll (a search
    // or a disconnect reloads it at once).
    started - lastConnLoad >= CONN_EVERY_MS ? (lastConnLoad = started, loadConnections()) : null,
    api('/api/refusals').then((d) => { refusalsMissing = false; renderRefusals(d); }, (e) => {
      if (e.status === 404 && e.code === 'not_found') { refusalsMissing = true; renderRefusals(null); return; }
      throw e;
    }),
  ];
  if (presence.user) jobs.push(lookupUser(presence.user));
  if (presence.channel) jobs.push(lookupChannel(presence.channel));
  const results = await Promise.allSettled(jobs.filter(Boolean));
  inFlight = false;
  if (!running) return;
  const failed = results.filter((r) => r.status === 'rejected').map((r) => r.reason);
  const authLoss = failed.find((e) => e instanceof ApiError && (e.status === 401 || e.status === 403));
  if (authLoss && handleAuthLoss(authLoss)) return;
  const bar = $('#poll-error');
  const live = $('#live');
  if (failed.length) {
    bar.textContent = failed[0] instanceof ApiError && failed[0].status === 0
      ? `Lost contact with the server (${failed[0].message}); retrying every second.`
      : `Some data could not be loaded: ${describe(failed[0])}`;
    bar.hidden = false;
    live.className = failed.length === results.length ? 'live down' : 'live stale';
    setText('#live-text', failed.length === results.length ? 'Offline' : 'Degraded');
    if (failed.length === results.length) prevSample = null;
  } else {
    bar.hidden = true;
    lastOk = Date.now();
    live.className = 'live';
    setText('#live-text', 'Live');
  }
  live.title = lastOk ? `last update ${new Date(lastOk).toLocaleTimeString()}` : '';
  const wait = Math.max(0, POLL_MS - (performance.now() - started));
  timer = setTimeout(poll, wait);
}

function pollSoon() {
  if (!running) return;
  if (inFlight) return; // the next round follows right after
  clearTimeout(timer);
  timer = setTimeout(poll, 0);
}

// ---------------------------------------------------------------- login / logout

function showLogin(message) {
  running = false;
  clearTimeout(timer);
  $('#dash-view').hidden = true;
  $('#logout').hidden = true;
  $('#live').hidden = true;
  $('#node-name').hidden = true;
  $('#login-view').hidden = false;
  const err = $('#login-error');
  err.textContent = message || '';
  err.hidden = !message;
  const input = $('#login-key');
  input.disabled = false;
  $('#login-submit').disabled = false;
  input.focus();
}

function showDashboard() {
  $('#login-view').hidden = true;
  $('#dash-view').hidden = false;
  $('#logout').hidden = false;
  $('#live').hidden = false;
  $('#login-error').hidden = true;
  $('#login-key').value = '';
  prevSample = null;
  charts.forEach((c) => c.clear());
  for (const [id] of rowsById) dropRow(id);
  composer.update();
  running = true;
  poll();
}

function authMessage(e) {
  if (e.status === 401) return `That key was refused: ${e.message}. Check the API key or token.`;
  if (e.status === 403) return `This token is valid but it is not an admin token (${e.message}). Use the API key or a token minted with --admin.`;
  return describe(e);
}

/** A 401/403 while logged in: the key was rotated or expired — back to the login form. */
function handleAuthLoss(e) {
  if (!(e instanceof ApiError) || (e.status !== 401 && e.status !== 403) || !running) return false;
  // a 403 on an action from a proper admin would be odd; treat both as losing the session
  sessionStorage.removeItem(KEY_STORAGE);
  apiKey = null;
  showLogin(e.status === 401 ? `Signed out: the server no longer accepts this key (${e.message}).` : authMessage(e));
  return true;
}

function normalizeKey(raw) {
  return raw.trim().replace(/^bearer\s+/i, '');
}

async function login(ev) {
  ev.preventDefault();
  const key = normalizeKey($('#login-key').value);
  const err = $('#login-error');
  if (!key) {
    err.textContent = 'Enter the API key or an admin token.';
    err.hidden = false;
    return;
  }
  if (/[^\x21-\x7e]/.test(key)) {
    err.textContent = 'That key contains spaces or characters no API key or token has.';
    err.hidden = false;
    return;
  }
  $('#login-submit').disabled = true;
  err.hidden = true;
  try {
    await api('/api/stats', { key });
    apiKey = key;
    sessionStorage.setItem(KEY_STORAGE, key);
    showDashboard();
  } catch (e) {
    showLogin(authMessage(e));
  } finally {
    $('#login-submit').disabled = false;
  }
}

function logout() {
  sessionStorage.removeItem(KEY_STORAGE);
  apiKey = null;
  showLogin('');
  toast('Logged out.');
}

// ---------------------------------------------------------------- start

function init() {
  rateChart = new LineChart($('#chart-rate'), [{ name: 'publications/s', color: '--c1' }, { name: 'deliveries/s', color: '--c2' }]);
  latencyChart = new LineChart($('#chart-latency'), [{ name: 'p50', color: '--c1' }, { name: 'p95', color: '--c3' }, { name: 'p99', color: '--c4' }], { format: (v) => fmtMs(v).replace(' ms', ''), minMax: 1 });
  $('#chart-rate').dataset.title = 'Throughput';
  $('#chart-latency').dataset.title = 'Latency (ms)';
  charts.push(rateChart, latencyChart);

  const saved = localStorage.getItem(THEME_STORAGE);
  if (saved) applyTheme(saved);
  $('#theme-toggle').addEventListener('click', () => {
    const next = currentTheme() === 'dark' ? 'light' : 'dark';
    localStorage.setItem(THEME_STORAGE, next);
    applyTheme(next);
  });
  matchMedia('(prefers-color-scheme: dark)').addEventListener('change', () => charts.forEach((c) => c.draw()));

  $('#login-form').addEventListener('submit', login);
  $('#logout').addEventListener('click', logout);

  $('#announce-form').addEventListener('submit', sendAnnouncement);
  $('#announce-text').addEventListener('input', () => composer.update());
  $('#announce-text').addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) $('#announce-form').requestSubmit();
  });
  $('#announce-clear').addEventListener('click', clearAnnouncement);
  composer.update();

  let searchTimer = null;
  $('#conn-search').addEventListener('input', () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(refreshConnections, 150);
  });

  $('#presence-user-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const id = $('#presence-user').value.trim();
    presence.user = id || null;
    if (id) lookupUser(id);
    else $('#presence-user-result').hidden = true;
  });
  $('#presence-channel-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const name = $('#presence-channel').value.trim();
    presence.channel = name || null;
    if (name) lookupChannel(name);
    else $('#presence-channel-result').hidden = true;
  });

  const stored = sessionStorage.getItem(KEY_STORAGE);
  if (stored) {
    apiKey = stored;
    $('#login-view').hidden = true;
    api('/api/stats').then(() => showDashboard(), (e) => {
      if (e.status === 401 || e.status === 403) sessionStorage.removeItem(KEY_STORAGE);
      showLogin(e.status === 401 || e.status === 403 ? authMessage(e) : describe(e));
      if (e.status !== 401 && e.status !== 403) $('#login-key').value = stored;
    });
  } else {
    showLogin('');
  }
}

init();
