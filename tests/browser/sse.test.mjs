// GET /sse in real headless Chromium against a real herald node: the browser's own
// EventSource (event names, ids, its own reconnect with Last-Event-ID), the JS client
// (served by herald at /client/herald.js) falling back to it behind a proxy that refuses
// WebSocket upgrades, and the origin check.
//
//   cd tests/browser && npm install && node --test sse.test.mjs

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { chromium } from 'playwright-core';
import { startHerald, connectClient, testServer, waitUntil } from './server.mjs';

const T = { timeout: 45_000 };

// `chat` takes client publications; both keep history (ids, recovery).
const CONFIG = `
[namespaces.ticker]
subscribe = "any"
publish = "none"
history_size = 100
history_ttl_s = 300

[namespaces.chat]
subscribe = "any"
publish = "any"
history_size = 100
history_ttl_s = 300
`;

let server;
let browser;
const cleanups = [];

before(async () => {
  server = await startHerald({ config: CONFIG });
  browser = await chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium', args: ['--no-sandbox'] });
});

after(async () => {
  for (const fn of cleanups.reverse()) await fn();
  await browser?.close();
  await server?.stop();
});

async function newPage() {
  const context = await browser.newContext();
  cleanups.push(() => context.close());
  const page = await context.newPage();
  page.setDefaultTimeout(10_000);
  const problems = [];
  page.on('pageerror', (e) => problems.push(e.message));
  page.problems = problems;
  return page;
}

async function publish(srv, channel, data) {
  const r = await srv.api('/api/publish', { method: 'POST', body: { channel, data } });
  assert.equal(r.status, 200, `publish ${channel}: ${r.status} ${r.text}`);
  return r.json;
}

async function connsOf(srv, user) {
  const r = await srv.api(`/api/connections?q=${encodeURIComponent(user)}`);
  assert.equal(r.status, 200, r.text);
  return r.json.connections.filter((c) => c.user_id === user);
}

/**
 * Opens a raw EventSource in the page and records every event of the given types as
 * {type, data (parsed), id, readyState}; `open` and failures (`error` without data) too.
 */
async function openEventSource(page, url, { withCredentials = false } = {}) {
  await page.evaluate(({ url, withCredentials }) => {
    window.log = [];
    const es = new EventSource(url, { withCredentials });
    window.es = es;
    const push = (type, e) => {
      let data = null;
      if (typeof e.data === 'string') {
        try { data = JSON.parse(e.data); } catch { data = e.data; }
      }
      window.log.push({ type, data, id: e.lastEventId ?? null, readyState: es.readyState });
    };
    for (const type of ['connected', 'subscribed', 'pub', 'close', 'error', 'skipped', 'message']) {
      es.addEventListener(type, (e) => push(type, e));
    }
    es.addEventListener('open', (e) => push('open', e));
  }, { url, withCredentials });
}

const events = (page, type) => page.evaluate((type) => window.log.filter((e) => !type || e.type === type), type);

test('a real EventSource: connected, subscribed, pub with id <epoch>:<offset>; its own reconnect sends Last-Event-ID and recovers', T, async () => {
  // The page and /sse through a plain forwarding proxy of the test's, which sees the
  // headers the browser really sends and holds its second /sse request (EventSource's
  // own reconnect) until the test lets it go.
  const requests = []; // the headers of each /sse request
  let release;
  const held = new Promise((r) => { release = r; });
  const front = await testServer({
    upstream: server.url,
    hold: (req) => {
      if (!req.url.startsWith('/sse?')) return null;
      return requests.push(req.headers) === 2 ? held : null;
    },
  });
  cleanups.push(() => front.close());
  const page = await newPage();
  await page.goto(`${front.url}/page`); // same origin as its /sse
  const token = server.token('eva');

  await openEventSource(page, `/sse?token=${encodeURIComponent(token)}&channels=ticker:eth`);
  const connected = await waitUntil(async () => (await events(page, 'connected'))[0], { what: 'the connected event' });
  assert.equal(connected.data.type, 'connected');
  assert.equal(connected.data.user_id, 'eva');
  assert.match(connected.data.conn_id, /\S/);
  assert.equal(connected.readyState, 1, 'OPEN');
  const [subscribed] = await waitUntil(async () => { const s = await events(page, 'subscribed'); return s.length && s; }, { what: 'subscribed' });
  assert.equal(subscribed.data.channel, 'ticker:eth');
  assert.equal(subscribed.data.recovered, false);
  const epoch = subscribed.data.epoch;
  assert.match(epoch, /^[0-9a-f]{16}$/);

  const ans = await publish(server, 'ticker:eth', { price: 1 });
  assert.equal(ans.offset, 1);
  const [pub1] = await waitUntil(async () => { const p = await events(page, 'pub'); return p.length && p; }, { what: 'the first pub' });
  assert.deepEqual(pub1.data, { type: 'pub', channel: 'ticker:eth', offset: 1, epoch, data: { price: 1 } });
  assert.equal(pub1.id, `${epoch}:1`, 'the event id is <epoch>:<offset>');
  assert.equal(requests.length, 1);
  assert.equal(requests[0]['last-event-id'], undefined);

  // The server ends the stream with a non-terminal code: a `close` event, then the end.
  const [conn] = await connsOf(server, 'eva');
  assert.equal(conn.conn_id, connected.data.conn_id);
  const r = await server.api(`/api/connections/${conn.conn_id}/disconnect`, { method: 'POST', body: { code: 4000, reason: 'slow down' } });
  assert.equal(r.status, 200, r.text);
  const [closeEv] = await waitUntil(async () => { const c = await events(page, 'close'); return c.length && c; }, { what: 'the close event' });
  assert.deepEqual(closeEv.data, { code: 4000, reason: 'slow down' });

  // The browser reconnects by itself (its retry, ~3 s); held at the route, so these
  // are published while it is away.
  await waitUntil(() => requests.length === 2, { timeout: 15_000, what: "the browser's own reconnect" });
  assert.equal(requests[1]['last-event-id'], `${epoch}:1`, 'Last-Event-ID is the last pub id');
  assert.deepEqual(await connsOf(server, 'eva'), [], 'not connected meanwhile');
  await publish(server, 'ticker:eth', { price: 2 });
  await publish(server, 'ticker:eth', { price: 3 });
  release();

  const pubs = await waitUntil(async () => { const p = await events(page, 'pub'); return p.length === 3 && p; }, { what: 'the recovered pubs' });
  assert.deepEqual(pubs.map((p) => [p.id, p.data.data.price]), [[`${epoch}:1`, 1], [`${epoch}:2`, 2], [`${epoch}:3`, 3]]);
  const subs = await events(page, 'subscribed');
  assert.equal(subs.length, 2);
  assert.equal(subs[1].data.recovered, true, 'the reconnect recovered');
  assert.equal(subs[1].data.offset, 3);
  const log = await events(page);
  const iSub = log.findIndex((e) => e.type === 'subscribed' && e.data.recovered === true);
  const iReplay = log.findIndex((e) => e.type === 'pub' && e.data.offset === 2);
  assert.ok(iSub >= 0 && iSub < iReplay, 'subscribed before the replay');
  await page.evaluate(() => window.es.close());
  assert.deepEqual(page.problems, []);
});

test('a real EventSource with since by place recovers several channels; a malformed since is refused', T, async () => {
  const page = await newPage();
  await page.goto(`${server.url}/healthz`);
  const a = await publish(server, 'ticker:a', 1);
  await publish(server, 'ticker:a', 2);
  await publish(server, 'ticker:b', 1);
  await publish(server, 'ticker:c', 1);
  const c2 = await publish(server, 'ticker:c', 2);
  const token = encodeURIComponent(server.token('fin'));
  await openEventSource(page, `/sse?token=${token}&channels=ticker:a,ticker:b,ticker:c&since=${a.epoch}:1,,${c2.epoch}:1`);
  const subs = await waitUntil(async () => { const s = await events(page, 'subscribed'); return s.length === 3 && s; }, { what: 'three subscribed' });
  assert.deepEqual(subs.map((s) => [s.data.channel, s.data.recovered]), [['ticker:a', true], ['ticker:b', false], ['ticker:c', true]]);
  const pubs = await waitUntil(async () => { const p = await events(page, 'pub'); return p.length === 2 && p; }, { what: 'the replayed pubs' });
  assert.deepEqual(pubs.map((p) => p.id), [`${a.epoch}:2`, `${c2.epoch}:2`]);
  await page.evaluate(() => window.es.close());

  // A malformed entry is a 400 before the stream: EventSource fails (CLOSED, no retry).
  await openEventSource(page, `/sse?token=${token}&channels=ticker:a&since=nonsense`);
  const [failed] = await waitUntil(async () => { const e = await events(page, 'error'); return e.length && e; }, { what: 'the failure' });
  assert.equal(failed.data, null, "EventSource's own error, not a frame");
  assert.equal(failed.readyState, 2, 'CLOSED: refused, not retried');
  const res = await fetch(`${server.url}/sse?token=${token}&channels=ticker:a&since=nonsense`);
  assert.equal(res.status, 400);
  assert.equal((await res.json()).error, 'bad_request');
});

/** Loads the JS client from herald (through `base`) into a blank page of `base`. */
async function clientPage(base) {
  const page = await newPage();
  await page.goto(`${base.url}/page`);
  await page.evaluate(async () => {
    const mod = await import('/client/herald.js');
    window.Herald = mod.Herald;
  });
  return page;
}

/** Makes `window.client` in the page and records its events in `window.ev`. */
async function makeClient(page, options) {
  await page.evaluate((options) => {
    window.ev = [];
    window.pubs = [];
    const client = new window.Herald({ url: `${location.origin.replace(/^http/, 'ws')}/ws`, ...options });
    window.client = client;
    for (const name of ['state', 'transport', 'connected', 'reconnecting', 'disconnected', 'recovered', 'lost', 'error']) {
      client.on(name, (e) => window.ev.push({ name, e: e instanceof Error ? { code: e.code, message: e.message } : e }));
    }
    client.on('publication', (p) => window.pubs.push(p));
  }, options);
}

const clientEvents = (page, name) => page.evaluate((name) => window.ev.filter((x) => x.name === name).map((x) => x.e), name);

test('the JS client behind a proxy that refuses WebSocket upgrades falls back to SSE, receives, publishes to a WebSocket client, recovers, stops on 4004', T, async () => {
  // The proxy can hold the client's next stream request (see the 4000 close below).
  let hold = null;
  const proxy = await testServer({ upstream: server.url, hold: (req) => (req.url.startsWith('/sse?') ? hold : null) });
  cleanups.push(() => proxy.close());
  const page = await clientPage(proxy);
  const token = server.token('gil');
  const peer = await connectClient(server, server.token('hub'));
  cleanups.push(() => peer.close());
  peer.send({ type: 'subscribe', channel: 'chat:room', ref: 1 });
  await peer.waitFrame((f) => f.type === 'subscribed' && f.ref === 1);

  await makeClient(page, { token, backoff: { initialMs: 100, maxMs: 200 } });
  const transport = await page.evaluate(async () => {
    window.client.subscribe('chat:room');
    const late = new Promise((_, reject) => setTimeout(() => reject(new Error(`not connected in 10 s (state ${window.client.state})`)), 10_000));
    await Promise.race([window.client.connect(), late]);
    return window.client.transport;
  });
  assert.equal(transport, 'sse', 'is /client/herald.js the current client? (rebuild herald, or set HERALD_CLIENT_JS)');
  assert.ok(proxy.refused >= 1, 'the WebSocket was tried first and refused');
  assert.ok(proxy.requests.some((r) => r.startsWith('GET /sse?')), 'the stream goes through the proxy');
  assert.deepEqual(await clientEvents(page, 'transport'), [{ transport: 'sse', previous: null }]);
  await waitUntil(() => page.evaluate(() => window.client.getSubscription('chat:room').state === 'subscribed'), { what: 'subscribed' });

  await publish(server, 'chat:room', { n: 1 });
  await waitUntil(() => page.evaluate(() => window.pubs.length === 1), { what: 'n:1 in the page' });

  // publish() goes over the HTTP API and reaches the WebSocket client, not the page itself.
  const ack = await page.evaluate(() => window.client.publish('chat:room', { n: 2, from: 'page' }));
  assert.equal(ack.type, 'ack');
  assert.equal(ack.offset, 2);
  const got = await peer.waitFrame((f) => f.type === 'pub' && f.data?.from === 'page', { what: "the page's publication at the WebSocket client" });
  assert.equal(got.offset, 2);
  assert.ok(proxy.requests.includes('POST /api/publish'), 'through the proxy');
  const refused = await page.evaluate(() => window.client.publish('news', 1).then(() => null, (e) => ({ code: e.code, status: e.status })));
  assert.deepEqual(refused, { code: 'forbidden', status: 403 });

  // A non-terminal close (4000): reconnect over SSE (kept), recover what was missed —
  // published while the reconnect's stream request is held at the proxy.
  let release;
  hold = new Promise((r) => { release = r; });
  const streams0 = proxy.requests.filter((x) => x.startsWith('GET /sse?')).length;
  const [conn] = await connsOf(server, 'gil');
  let r = await server.api(`/api/connections/${conn.conn_id}/disconnect`, { method: 'POST', body: { code: 4000 } });
  assert.equal(r.status, 200, r.text);
  await waitUntil(() => proxy.requests.filter((x) => x.startsWith('GET /sse?')).length === streams0 + 1, { what: "the reconnect's stream request" });
  assert.deepEqual(await connsOf(server, 'gil'), [], 'away');
  await publish(server, 'chat:room', { n: 3 });
  await publish(server, 'chat:room', { n: 4 });
  hold = null;
  release();
  await waitUntil(async () => (await clientEvents(page, 'connected')).length === 2, { what: 'connected again' });
  await waitUntil(() => page.evaluate(() => window.pubs.length === 3), { what: 'the missed publications' });
  assert.deepEqual(await page.evaluate(() => window.pubs.map((p) => [p.offset, p.data.n])), [[1, 1], [3, 3], [4, 4]]);
  const again = proxy.requests.filter((x) => x.startsWith('GET /sse?'))[streams0];
  assert.match(again, /&channels=chat:room&since=[0-9a-f]{16}:2$/, 'from its position (past its own publication)');
  assert.equal((await clientEvents(page, 'recovered')).length, 1);
  assert.deepEqual(await clientEvents(page, 'lost'), []);
  assert.equal(await page.evaluate(() => window.client.transport), 'sse');
  assert.deepEqual((await clientEvents(page, 'reconnecting')).map((e) => e.code), [4000]);

  // subscribe() on SSE: a new stream with both channels, quietly.
  await page.evaluate(() => window.client.subscribe('chat:lobby'));
  await waitUntil(() => page.evaluate(() => window.client.getSubscription('chat:lobby').state === 'subscribed'), { what: 'chat:lobby' });
  await publish(server, 'chat:lobby', 'hi');
  await publish(server, 'chat:room', { n: 5 });
  await waitUntil(() => page.evaluate(() => window.pubs.length === 5), { what: 'both channels' });
  assert.equal((await clientEvents(page, 'connected')).length, 2, 'a reopen is not a reconnect');

  // 4004: terminal. No reconnect, by the client or by EventSource (its retry is ~3 s).
  const [now] = await connsOf(server, 'gil');
  r = await server.api(`/api/connections/${now.conn_id}/disconnect`, { method: 'POST', body: {} });
  assert.equal(r.status, 200, r.text);
  const [gone] = await waitUntil(async () => { const d = await clientEvents(page, 'disconnected'); return d.length && d; }, { what: 'disconnected' });
  assert.equal(gone.code, 4004);
  assert.equal(gone.byServer, true);
  const streams = proxy.requests.filter((x) => x.startsWith('GET /sse?')).length;
  await new Promise((res) => setTimeout(res, 4000)); // longer than EventSource's own retry
  assert.equal(proxy.requests.filter((x) => x.startsWith('GET /sse?')).length, streams, 'no new stream after 4004');
  assert.equal(await page.evaluate(() => window.client.state), 'closed');
  assert.deepEqual(await connsOf(server, 'gil'), []);
  assert.deepEqual(await clientEvents(page, 'error'), []);
  assert.deepEqual(page.problems, []);
});

test('with transports: ["websocket"] the same client behind the same proxy never connects (the fallback is what makes it work)', T, async () => {
  const proxy = await testServer({ upstream: server.url });
  cleanups.push(() => proxy.close());
  const page = await clientPage(proxy);
  await makeClient(page, { token: server.token('ivy'), transports: ['websocket'], backoff: { initialMs: 50, maxMs: 100 } });
  await page.evaluate(() => {
    window.outcome = null;
    window.client.connect().then(() => { window.outcome = 'connected'; }, (e) => { window.outcome = e.code; });
  });
  await waitUntil(() => proxy.refused >= 4, { what: 'several refused upgrades' });
  assert.equal(await page.evaluate(() => window.outcome), null, 'connect() has not resolved');
  assert.equal(await page.evaluate(() => window.client.transport), null);
  assert.equal(await page.evaluate(() => window.client.state), 'reconnecting');
  assert.equal(proxy.requests.filter((x) => x.startsWith('GET /sse')).length, 0, 'no event stream');
  await page.evaluate(() => window.client.close());
});

test('origins: a page on another origin is refused /sse (403) unless allowed_origins names it', T, async () => {
  const other = await testServer(); // http://127.0.0.1:<another port>
  cleanups.push(() => other.close());
  const third = await testServer();
  cleanups.push(() => third.close());
  const token = encodeURIComponent(server.token('jan'));

  // Same origin only by default: refused before the stream, EventSource fails for good.
  const page = await newPage();
  await page.goto(`${other.url}/page`);
  const refusedBefore = (await server.api('/api/stats')).json.refused?.bad_origin ?? 0;
  await openEventSource(page, `${server.url}/sse?token=${token}`);
  const [failed] = await waitUntil(async () => { const e = await events(page, 'error'); return e.length && e; }, { what: 'the failure' });
  assert.equal(failed.readyState, 2, 'CLOSED: refused, not retried');
  assert.deepEqual(await events(page, 'connected'), []);
  await waitUntil(async () => ((await server.api('/api/stats')).json.refused?.bad_origin ?? 0) > refusedBefore, { what: 'a bad_origin refusal counted' });
  const res = await fetch(`${server.url}/sse?token=${token}`, { headers: { Origin: other.url } });
  assert.equal(res.status, 403);
  assert.equal((await res.json()).error, 'forbidden');

  // allowed_origins names it: the cross-origin stream opens (with credentials too); a
  // third origin is still refused.
  const open = await startHerald({ config: CONFIG, env: { HERALD_ALLOWED_ORIGINS: other.url } });
  cleanups.push(() => open.stop());
  const t2 = encodeURIComponent(open.token('jan'));
  for (const withCredentials of [false, true]) {
    await openEventSource(page, `${open.url}/sse?token=${t2}&channels=ticker:x`, { withCredentials });
    await waitUntil(async () => (await events(page, 'subscribed')).length === 1, { what: `subscribed cross-origin (withCredentials ${withCredentials})` });
    const ans = await publish(open, 'ticker:x', { w: withCredentials });
    const [pub] = await waitUntil(async () => { const p = await events(page, 'pub'); return p.length && p; }, { what: 'a pub cross-origin' });
    assert.equal(pub.id, `${ans.epoch}:${ans.offset}`);
    assert.deepEqual(pub.data.data, { w: withCredentials });
    await page.evaluate(() => window.es.close());
  }
  // And that page may publish over HTTP with its token (the SSE client's way): the
  // preflight and the POST are answered with CORS for that origin.
  const rawToken = open.token('jan');
  await openEventSource(page, `${open.url}/sse?token=${t2}&channels=chat:x`);
  await waitUntil(async () => (await events(page, 'subscribed')).length === 1, { what: 'subscribed to chat:x cross-origin' });
  const posted = await page.evaluate(async ({ url, token }) => {
    const r = await fetch(`${url}/api/publish`, {
      method: 'POST',
      headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' },
      body: JSON.stringify({ channel: 'chat:x', data: { from: 'page' } }),
    });
    return { status: r.status, body: await r.json() };
  }, { url: open.url, token: rawToken });
  assert.equal(posted.status, 200, JSON.stringify(posted));
  assert.equal(typeof posted.body.offset, 'number');
  const [own] = await waitUntil(async () => { const p = await events(page, 'pub'); return p.length && p; }, { what: 'the page\'s own publication on its stream' });
  assert.deepEqual(own.data.data, { from: 'page' });
  await page.evaluate(() => window.es.close());
  const allowed = await fetch(`${open.url}/sse?token=${t2}`, { headers: { Origin: other.url } });
  assert.equal(allowed.status, 200);
  assert.equal(allowed.headers.get('access-control-allow-origin'), other.url);
  assert.equal(allowed.headers.get('access-control-allow-credentials'), 'true');
  await allowed.body.cancel();

  const page3 = await newPage();
  await page3.goto(`${third.url}/page`);
  await openEventSource(page3, `${open.url}/sse?token=${t2}`);
  const [failed3] = await waitUntil(async () => { const e = await events(page3, 'error'); return e.length && e; }, { what: 'the third origin refused' });
  assert.equal(failed3.readyState, 2);
  const res3 = await fetch(`${open.url}/sse?token=${t2}`, { headers: { Origin: third.url } });
  assert.equal(res3.status, 403);
});
