// permessage-deflate with real clients: Chromium's WebSocket and the `ws` package, against
// a herald node with `ws.compression.enabled`.
//
//   cd tests/browser && npm install && node --test compression.test.mjs

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { chromium } from 'playwright-core';
import { startHerald, connectClient, waitUntil } from './server.mjs';

const T = { timeout: 30_000 };

let server;
let browser;
let page;
const clients = [];

before(async () => {
  server = await startHerald({ env: { HERALD_WS__COMPRESSION__ENABLED: 'true' } });
  browser = await chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium', args: ['--no-sandbox'] });
  page = await (await browser.newContext()).newPage();
  page.setDefaultTimeout(10_000);
  // Any page of the node, so the socket is same-origin.
  await page.goto(`${server.url}/admin`);
});

after(async () => {
  for (const c of clients) c.close();
  await browser?.close();
  await server?.stop();
});

const compressed = async () => (await server.api('/api/stats')).json.compression;

/** ~7 KiB of JSON that deflate shrinks to a few hundred bytes. */
const big = (tag) => ({ tag, items: Array.from({ length: 100 }, (_, i) => ({ id: i, title: `track ${i % 7}`, artist: 'someone' })) });

test('Chromium negotiates permessage-deflate and reads compressed publications', T, async () => {
  const token = server.token('chrome-user');
  await page.evaluate(async (t) => {
    window.got = [];
    const ws = new WebSocket(`${location.origin.replace(/^http/, 'ws')}/ws?token=${encodeURIComponent(t)}`);
    window.sock = ws;
    ws.onmessage = (e) => window.got.push(JSON.parse(e.data));
    await new Promise((resolve, reject) => { ws.onopen = resolve; ws.onerror = reject; });
    ws.send(JSON.stringify({ type: 'subscribe', channel: 'news', ref: 'r'.repeat(600) }));
  }, token);
  await waitUntil(() => page.evaluate(() => window.got.some((f) => f.type === 'subscribed')), { what: 'subscribed' });
  assert.match(await page.evaluate(() => window.sock.extensions), /^permessage-deflate/);

  const before = await compressed();
  const data = big('chromium');
  const r = await server.api('/api/publish', { method: 'POST', body: { channel: 'news', data } });
  assert.equal(r.status, 200, r.text);
  const pub = await waitUntil(() => page.evaluate(() => window.got.find((f) => f.type === 'pub')), { what: 'the publication' });
  assert.deepEqual(pub.data, data);
  const after = await compressed();
  assert.equal(after.deliveries, before.deliveries + 1, 'written compressed');
  assert.ok(after.saved_bytes - before.saved_bytes > 4000, `saved ${after.saved_bytes - before.saved_bytes} bytes`);
});

test('the ws package compresses what it sends and reads what herald compressed', T, async () => {
  // threshold 0: the client compresses every message it sends, so herald must inflate
  // the subscribe to answer it.
  const c = await connectClient(server, server.token('node-user'), { perMessageDeflate: { threshold: 0 } });
  clients.push(c);
  assert.match(c.ws.extensions, /^permessage-deflate/);
  c.send({ type: 'subscribe', channel: 'news', ref: 'sub-1' });
  await c.waitFrame((f) => f.type === 'subscribed' && f.ref === 'sub-1', { what: 'subscribed' });
  const data = big('node');
  const r = await server.api('/api/publish', { method: 'POST', body: { channel: 'news', data } });
  assert.equal(r.status, 200, r.text);
  const pub = await c.waitFrame((f) => f.type === 'pub' && f.data?.tag === 'node', { what: 'the publication' });
  assert.deepEqual(pub.data, data);
});

test('without compression enabled the same clients connect uncompressed', T, async () => {
  const plain = await startHerald();
  try {
    const c = await connectClient(plain, plain.token('u'));
    clients.push(c);
    assert.equal(c.ws.extensions, '', 'the offer is declined');
  } finally {
    await plain.stop();
  }
});
