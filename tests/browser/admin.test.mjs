// The operator's /admin page in real headless Chromium against a real herald node.
//
//   cd tests/browser && npm install && npm test
//
// CHROMIUM (default /usr/bin/chromium), HERALD_BIN (default <repo>/target/debug/herald),
// HERALD_ASSETS (serve the pages from disk, see server.mjs). Screenshots go to
// <repo>/target/test-output/screenshots/.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { REPO, startHerald, connectClient, waitUntil } from './server.mjs';

const SHOTS = path.join(REPO, 'target', 'test-output', 'screenshots');
const T = { timeout: 30_000 };

let server;
let browser;
let context;
let page; // the admin page, logged in from the second test on
const clients = [];
const problems = []; // CSP violations and uncaught errors on any page

function watch(p, name) {
  p.on('console', (m) => {
    if (m.type() === 'error' && !/Failed to load resource/.test(m.text())) problems.push(`${name} console: ${m.text()}`);
  });
  p.on('pageerror', (e) => problems.push(`${name} pageerror: ${e.message}`));
  p.setDefaultTimeout(10_000);
}

async function client(sub, opts) {
  const c = await connectClient(server, server.token(sub, opts));
  clients.push(c);
  return c;
}

const row = (connId) => page.locator(`#conn-table tbody tr[data-conn-id="${connId}"]`);
const text = (sel, p = page) => p.locator(sel).textContent();

/** Waits until `sel`'s text (trimmed) equals `want`. */
async function waitText(sel, want, p = page, timeout = 10_000) {
  let seen;
  await waitUntil(async () => (seen = (await p.locator(sel).textContent())?.trim()) === want, { timeout, what: () => `${sel} to read "${want}" (it reads "${seen}")` });
}

before(async () => {
  mkdirSync(SHOTS, { recursive: true });
  server = await startHerald();
  browser = await chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium', args: ['--no-sandbox'] });
  context = await browser.newContext({ viewport: { width: 1366, height: 768 } });
  page = await context.newPage();
  watch(page, 'admin');
});

after(async () => {
  for (const c of clients) c.close();
  await browser?.close();
  if (server) {
    await server.stop();
  }
});

test('/admin is served with a strict CSP', T, async () => {
  const res = await fetch(`${server.url}/admin`);
  assert.equal(res.status, 200, `GET /admin: ${res.status} ${await res.clone().text()}`);
  assert.match(res.headers.get('content-type'), /^text\/html/);
  const csp = res.headers.get('content-security-policy') || '';
  assert.match(csp, /default-src 'self'/);
  assert.match(csp, /frame-ancestors 'none'/);
  const html = await res.text();
  assert.doesNotMatch(html, /<script(?![^>]*\bsrc=)[^>]*>/i, 'no inline <script>');
  assert.doesNotMatch(html, /<style|\sstyle=/i, 'no inline style');
  for (const asset of ['/admin/admin.js', '/admin/admin.css']) {
    const r = await fetch(server.url + asset);
    assert.equal(r.status, 200, asset);
  }
});

test('a wrong key is refused and the page stays on the login form', T, async () => {
  await page.goto(`${server.url}/admin`);
  await page.locator('#login-key').fill('definitely-not-the-key');
  await page.locator('#login-submit').click();
  const err = page.locator('#login-error');
  await err.waitFor({ state: 'visible' });
  assert.match(await err.textContent(), /refused/i);
  assert.ok(await page.locator('#login-key').isVisible(), 'still on the login form');
  assert.ok(await page.locator('#logout').isHidden());
  assert.ok(await page.locator('#stat-connections').isHidden());

  // a valid token that is not an admin's: 403, said so
  await page.locator('#login-key').fill(server.token('mallory'));
  await page.locator('#login-submit').click();
  await waitUntil(async () => /not an admin token/i.test(await err.textContent()), { what: 'the 403 message' });
  assert.ok(await page.locator('#login-key').isVisible());
});

test('log in with the API key', T, async () => {
  await page.locator('#login-key').fill(server.apiKey);
  await page.locator('#login-submit').click();
  await page.locator('#logout').waitFor({ state: 'visible' });
  assert.ok(await page.locator('#login-error').isHidden());
  await waitText('#stat-connections', '0');
  await waitText('#stat-cluster-connections', '0');
  // the key survives a reload (sessionStorage), and is not in the URL
  await page.reload();
  await page.locator('#logout').waitFor({ state: 'visible' });
  assert.ok(!page.url().includes(server.apiKey));
});

test('connection list: a client appears, search finds it, Disconnect closes it with 4004', T, async () => {
  const alice = await client('alice', { device: 'phone' });
  const carol = await client('carol', { device: 'laptop' });
  carol.send({ type: 'subscribe', channel: 'news' });
  await carol.waitFrame((f) => f.type === 'subscribed');

  await row(alice.connected.conn_id).waitFor();
  await row(carol.connected.conn_id).waitFor();
  const aliceText = await row(alice.connected.conn_id).textContent();
  assert.match(aliceText, /alice/);
  assert.match(aliceText, /phone/);
  await waitUntil(async () => /news/.test(await row(carol.connected.conn_id).textContent()), { what: "carol's subscription" });
  await waitText('#stat-connections', '2');
  await waitText('#stat-users', '2');

  await page.locator('#conn-search').fill('alice');
  await waitUntil(async () => (await page.locator('#conn-table tbody tr').count()) === 1, { what: 'only one row' });
  assert.equal(await page.locator('#conn-table tbody tr').first().getAttribute('data-conn-id'), alice.connected.conn_id);

  await row(alice.connected.conn_id).locator('.disconnect').click();
  const closed = await alice.waitClose();
  assert.equal(closed.code, 4004, `close code (reason "${closed.reason}")`);
  await row(alice.connected.conn_id).waitFor({ state: 'detached' });

  await page.locator('#conn-search').fill('');
  await row(carol.connected.conn_id).waitFor();
  await waitText('#stat-connections', '1');
});

test('Disconnect user closes every connection of that user (two clicks)', T, async () => {
  const zoe1 = await client('zoe', { device: 'phone' });
  const zoe2 = await client('zoe', { device: 'tv' });
  await row(zoe1.connected.conn_id).waitFor();
  await row(zoe2.connected.conn_id).waitFor();
  const btn = row(zoe1.connected.conn_id).locator('.disconnect-user');
  await btn.click();
  await waitUntil(async () => /confirm/i.test(await btn.textContent()), { what: 'the confirm step' });
  assert.equal(zoe1.closed, null, 'the first click only arms the button');
  await btn.click();
  assert.equal((await zoe1.waitClose()).code, 4004);
  assert.equal((await zoe2.waitClose()).code, 4004);
  await row(zoe1.connected.conn_id).waitFor({ state: 'detached' });
  await row(zoe2.connected.conn_id).waitFor({ state: 'detached' });
});

test('presence lookups', T, async () => {
  await page.locator('#presence-user').fill('carol');
  await page.locator('#presence-user').press('Enter');
  await waitUntil(async () => /carol is online/.test(await text('#presence-user-result')), { what: 'carol online' });
  await page.locator('#presence-channel').fill('news'); // default namespace: presence off
  await page.locator('#presence-channel').press('Enter');
  await waitUntil(async () => /presence is off/i.test(await text('#presence-channel-result')), { what: 'the 404 message' });
});

test('composer counts characters, refuses over 280', T, async () => {
  const count = page.locator('#announce-count');
  const send = page.locator('#announce-send');
  assert.ok(await send.isDisabled(), 'empty: disabled');
  await page.locator('#announce-text').fill('x'.repeat(281));
  await waitText('#announce-count', '281 / 280');
  assert.ok(await send.isDisabled(), '281: disabled');
  const red = await count.evaluate((el) => {
    const [r, g, b] = getComputedStyle(el).color.match(/\d+/g).map(Number);
    return el.classList.contains('over') && r > g + 60 && r > b + 60;
  });
  assert.ok(red, 'the counter is red over 280');

  // characters, not bytes or UTF-16 units, after trimming
  await page.locator('#announce-text').fill(`  ${'😀'.repeat(280)}\n `);
  await waitText('#announce-count', '280 / 280');
  assert.ok(await send.isEnabled(), '280 emoji: enabled');
  assert.equal(await count.evaluate((el) => el.classList.contains('over')), false);
  await page.locator('#announce-text').fill('   ');
  await waitText('#announce-count', '0 / 280');
  assert.ok(await send.isDisabled(), 'blank: disabled');
});

test("the server's 400 is shown to the user", T, async () => {
  // the page only offers valid types; make the request carry one the server refuses
  await page.route('**/api/broadcasts', (route) => {
    const body = JSON.parse(route.request().postData());
    return route.continue({ postData: JSON.stringify({ ...body, type: 'critical' }) });
  });
  try {
    await page.locator('#announce-text').fill('hello');
    await page.locator('#announce-send').click();
    const err = page.locator('#announce-error');
    await err.waitFor({ state: 'visible' });
    assert.match(await err.textContent(), /type must be one of.*critical.*400/);
    assert.equal(await page.locator('#announce-text').inputValue(), 'hello', 'the text is kept');
  } finally {
    await page.unroute('**/api/broadcasts');
  }
  await page.locator('#announce-text').fill('');
});

/** Sends an announcement from the composer; resolves when it shows as the active one. */
async function announce(message, type = 'info') {
  await page.locator('#announce-text').fill(message);
  await waitText('#announce-count', `${[...message.trim()].length} / 280`);
  await page.locator('#announce-type').selectOption(type);
  await page.locator('#announce-send').click();
  await waitText('#announce-active', message.trim());
  await waitText('#announce-acks', '0');
  assert.equal(await page.locator('#announce-text').inputValue(), '', 'the composer is emptied');
}

/** Whether this build serves the demo page at all (a 404, or the placeholder that loads no script, is "not yet"). */
let demoServed = null;
async function demoAvailable() {
  if (demoServed === null) {
    const res = await fetch(`${server.url}/demo`);
    const body = await res.text();
    demoServed = res.status !== 404 && /<script[^>]+src="\/demo\//.test(body);
  }
  return demoServed;
}

test('announcement: acknowledged by a WebSocket client, then cleared', T, async () => {
  const dave = await client('dave', { device: 'tv' });
  const message = 'Maintenance tonight at 22:00 UTC — thanks for your patience 👋';
  await announce(message, 'warning');
  const frame = await dave.waitFrame((f) => f.type === 'new_broadcast');
  assert.equal(frame.broadcast.message, message);
  assert.equal(frame.broadcast.message_type, 'warning');
  dave.send({ type: 'acknowledge_broadcast', broadcast_id: frame.broadcast.id });
  await waitText('#announce-acks', '1');

  await page.locator('#announce-clear').click();
  await dave.waitFrame((f) => f.type === 'broadcast_cleared');
  await page.locator('#announce-active').waitFor({ state: 'hidden' });
  await page.locator('#announce-none').waitFor({ state: 'visible' });
});

test('announcement: shown on the demo page, acknowledged there, cleared', T, async (t) => {
  if (!(await demoAvailable())) {
    t.skip('this build does not serve the /demo page yet (crates/herald/assets/demo/)');
    return;
  }
  const bobContext = await browser.newContext({ viewport: { width: 390, height: 844 } });
  try {
    const demo = await bobContext.newPage();
    watch(demo, 'demo');
    await demo.goto(`${server.url}/demo#token=${server.token('bob', { device: 'browser' })}`);
    await demo.locator('#status').waitFor();
    // bob is connected before the announcement, so it arrives live (new_broadcast)
    await waitUntil(async () => (await page.locator('#conn-table tbody tr[data-user-id="bob"]').count()) === 1, { what: "bob's row" });

    const message = 'New episodes are out — enjoy!';
    await announce(message, 'info');
    await demo.locator('#banner').waitFor({ state: 'visible' });
    assert.match(await demo.locator('#banner-text').textContent(), /New episodes are out/);
    await waitText('#announce-acks', '0');
    await demo.locator('#banner-ack').click();
    await waitText('#announce-acks', '1');
    await demo.locator('#banner').waitFor({ state: 'hidden' });

    // a second one, cleared from the admin page while the demo shows it
    await announce('Scheduled downtime in 10 minutes', 'alert');
    await demo.locator('#banner').waitFor({ state: 'visible' });
    await page.locator('#announce-clear').click();
    await demo.locator('#banner').waitFor({ state: 'hidden' });
    await page.locator('#announce-none').waitFor({ state: 'visible' });
  } finally {
    await bobContext.close();
  }
});

test('refusals are listed', T, async () => {
  // one more refusal of a kind we know: a WebSocket with a bad token
  await connectClient(server, 'not-a-token').then((c) => { c.close(); assert.fail('a bad token was accepted'); }, () => {});
  await waitUntil(async () => /bad_api_key/.test(await text('#refusal-totals')), { what: 'the bad_api_key total' });
  await waitUntil(async () => /bad_token/.test(await text('#refusal-totals')), { what: 'the bad_token total' });
  await waitUntil(async () => (await page.locator('#refusals li[data-reason="bad_token"]').count()) >= 1, { what: 'a recent bad_token refusal in #refusals' });
});

test('screenshots at laptop and phone sizes', { timeout: 45_000 }, async () => {
  // some life for the charts and the table
  const subs = await Promise.all([client('erin', { device: 'ipad' }), client('frank'), client('grace', { device: 'android' })]);
  for (const c of subs) c.send({ type: 'subscribe', channel: 'news' });
  await Promise.all(subs.map((c) => c.waitFrame((f) => f.type === 'subscribed')));
  await announce('Welcome to herald! Live announcements reach every connected device.', 'info');

  // the phone logs in now, so both pages chart the same traffic
  const phone = await browser.newContext({ viewport: { width: 390, height: 844 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true });
  let n = 0;
  const publisher = setInterval(() => {
    server.api('/api/publish', { method: 'POST', body: { channel: 'news', data: { n: n++ } } }).catch(() => {});
  }, 40);
  try {
    const p = await phone.newPage();
    watch(p, 'admin-phone');
    await p.goto(`${server.url}/admin`);
    await p.locator('#login-key').fill(server.apiKey);
    await p.locator('#login-submit').click();
    await p.locator('#logout').waitFor({ state: 'visible' });

    const flowing = async (pg) => !['0', '–'].includes((await text('#stat-del-rate', pg)).trim());
    await waitUntil(() => flowing(page), { what: 'a delivery rate (laptop)' });
    await waitUntil(() => n >= 100, { what: '100 publications', timeout: 10_000 });
    await waitUntil(() => flowing(p), { what: 'a delivery rate (phone)' });
    await page.locator('#toasts .toast').first().waitFor({ state: 'detached' }); // out of the picture
    await waitText('#stat-connections', String(await page.locator('#conn-table tbody tr').count()));

    await page.evaluate(() => window.scrollTo(0, 0));
    await page.screenshot({ path: path.join(SHOTS, 'admin-laptop-1366x768.png'), fullPage: true });
    const laptopOverflow = await page.evaluate(() => document.documentElement.scrollWidth - 1366);
    assert.ok(laptopOverflow <= 0, `no horizontal scroll at 1366 px (${laptopOverflow} px too wide)`);

    await p.locator('#conn-table tbody tr').first().waitFor();
    await waitUntil(async () => (await p.locator('#announce-active').textContent()).length > 0, { what: 'the active announcement on the phone' });
    await p.screenshot({ path: path.join(SHOTS, 'admin-phone-390x844.png'), fullPage: true });
    // (a phone zooms out to fit wider content, so compare with the device width, not innerWidth)
    const overflow = await p.evaluate(() => document.documentElement.scrollWidth - 390);
    assert.ok(overflow <= 0, `no horizontal scroll on the phone (${overflow} px too wide)`);
    // the Disconnect buttons are reachable on the phone (cards, not a clipped table)
    const box = await p.locator('#conn-table tbody tr .disconnect').first().boundingBox();
    assert.ok(box && box.x >= 0 && box.x + box.width <= 390, 'Disconnect is on screen');
  } finally {
    clearInterval(publisher);
    await phone.close();
  }
});

test('log out', T, async () => {
  await page.locator('#logout').click();
  await page.locator('#login-key').waitFor({ state: 'visible' });
  assert.equal(await page.evaluate(() => sessionStorage.length), 0);
  await page.reload();
  await page.locator('#login-key').waitFor({ state: 'visible' });
  assert.ok(await page.locator('#logout').isHidden());
});

test('no CSP violations or script errors', () => {
  assert.deepEqual(problems, []);
});
