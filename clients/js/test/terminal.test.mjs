// Closes that must not be retried: 1008 (policy: here the inbound rate limit exceeded
// persistently) and 4004 (disconnected by the server: POST /api/users/{id}/disconnect).
// And close() itself: 1000, no reconnect.

import { test } from "node:test";
import assert from "node:assert/strict";
import { Herald } from "../src/herald.js";
import { startServer, waitFor, nextEvent, record } from "./server.mjs";

/** Resolves after `ms` of real time, to check that nothing happens meanwhile. */
const quietFor = (ms) => new Promise((r) => setTimeout(r, ms));

test("1008 is not retried: disconnected with the code and reason, and the client stops", { timeout: 30000 }, async (t) => {
  // 1 message/s, burst 1, closed after 1 s over the limit.
  const server = await startServer({
    env: {
      HERALD_WS__RATE_PER_S: "1",
      HERALD_WS__RATE_BURST: "1",
      HERALD_WS__RATE_LIMIT_CLOSE_AFTER_S: "1",
    },
  });
  t.after(() => server.dispose());
  const client = new Herald({ url: server.wsUrl, getToken: () => server.token("flooder"), backoff: { initialMs: 20, maxMs: 50 } });
  t.after(() => client.close());
  const log = record(client, ["reconnecting", "connected", "error"]);
  await client.connect();
  const gone = nextEvent(client, "disconnected", { timeoutMs: 15000 });
  const flood = setInterval(() => client.send({ type: "ping" }), 20);
  t.after(() => clearInterval(flood));
  const e = await gone;
  clearInterval(flood);
  assert.equal(e.code, 1008, `closed with ${e.code} ${e.reason}`);
  assert.equal(typeof e.reason, "string");
  assert.equal(e.byServer, true);
  assert.equal(client.state, "closed");
  assert.ok(log.of("error").some((err) => err.code === "rate_limited"), "the server warned first");
  // A retry would be scheduled at once, with a 20..50 ms delay: give it 10 times that.
  await quietFor(500);
  assert.deepEqual(log.of("reconnecting"), [], "no reconnect after 1008");
  assert.equal(log.of("connected").length, 1);
});

test("4004 (disconnected by the server) is not retried", { timeout: 30000 }, async (t) => {
  const server = await startServer();
  t.after(() => server.dispose());
  const probe = await server.api("POST", "/api/users/nobody/disconnect");
  if (probe.status === 404 && probe.body?.message === "no such endpoint") {
    t.skip("this herald has no POST /api/users/{id}/disconnect yet");
    return;
  }
  const client = new Herald({ url: server.wsUrl, getToken: () => server.token("kicked"), backoff: { initialMs: 20, maxMs: 50 } });
  t.after(() => client.close());
  const log = record(client, ["reconnecting", "connected"]);
  await client.connect();
  const gone = nextEvent(client, "disconnected");
  const r = await server.api("POST", "/api/users/kicked/disconnect");
  assert.ok(r.status < 300, `disconnect: ${r.status} ${JSON.stringify(r.body)}`);
  const e = await gone;
  assert.equal(e.code, 4004, `closed with ${e.code} ${e.reason}`);
  assert.equal(e.byServer, true);
  assert.equal(client.state, "closed");
  await quietFor(500);
  assert.deepEqual(log.of("reconnecting"), []);
  assert.equal(log.of("connected").length, 1);
});

test("close() closes with 1000 and stops; connect() after it starts again", { timeout: 20000 }, async (t) => {
  const server = await startServer();
  t.after(() => server.dispose());
  const client = new Herald({ url: server.wsUrl, token: await server.token("quitter"), backoff: { initialMs: 20 } });
  t.after(() => client.close());
  const log = record(client, ["reconnecting", "disconnected"]);
  await client.connect();
  client.close();
  assert.equal(client.state, "closed");
  assert.deepEqual(log.of("disconnected"), [{ code: 1000, reason: "client closed", byServer: false }]);
  await waitFor(
    async () => (await server.api("GET", "/api/stats")).body.node.connections === 0,
    { what: "the server to see the close" },
  );
  await quietFor(200);
  assert.deepEqual(log.of("reconnecting"), []);
  await client.connect();
  assert.equal(client.state, "connected");
});
