// Reconnect and recovery against a real herald: a dead connection (server frozen),
// a restart (new epoch), history that is gone, and the duplicate guard.

import { test } from "node:test";
import assert from "node:assert/strict";
import { Herald } from "../src/herald.js";
import { startServer, waitFor, nextEvent, record, gatedWebSocket } from "./server.mjs";

const seqs = (pubs) => pubs.map((p) => p.data.seq);
const range = (a, b) => Array.from({ length: b - a + 1 }, (_, i) => a + i);

test(
  "a dead connection is detected by the heartbeat; the reconnect recovers every missed publication once, in order",
  { timeout: 30000 },
  async (t) => {
    const server = await startServer();
    t.after(() => server.dispose());
    // How the outage is made deterministic: the client's sockets go through a gate.
    //  1. SIGSTOP freezes the server: the socket is open but silent, so only the client's
    //     heartbeat watchdog (1.5 s here) can notice. It must declare the connection dead.
    //  2. The gate is closed before that, so every reconnect attempt is refused (a real
    //     WebSocket to a port nobody listens on) — the client keeps retrying with backoff.
    //  3. SIGCONT, and publications 4..8 go out over HTTP while the client cannot connect
    //     (checked: it is not connected after the last one).
    //  4. The gate opens: the next attempt reaches the server, re-subscribes with `since`,
    //     and must get 4..8 replayed (recovered:true), then the live 9..10.
    const gate = await gatedWebSocket();
    const client = new Herald({
      url: server.wsUrl,
      getToken: () => server.token("alice"),
      WebSocket: gate.WebSocket,
      heartbeatTimeoutMs: 1500,
      backoff: { initialMs: 100, maxMs: 300 },
    });
    t.after(() => client.close());
    const sub = client.subscribe("news");
    const got = [];
    sub.on("publication", (p) => got.push(p));
    const log = record(sub, ["subscribed", "recovered", "lost"]);
    const reconnects = record(client, ["reconnecting", "connected", "disconnected"]);

    await client.connect();
    await waitFor(() => sub.state === "subscribed", { what: "subscribed" });
    for (const seq of range(1, 3)) await server.publish("news", { seq });
    await waitFor(() => got.length === 3, { what: "publications 1..3" });
    const firstConn = client.connId;

    gate.open = false;
    const dead = nextEvent(client, "reconnecting", { timeoutMs: 8000 });
    server.signal("SIGSTOP");
    let why;
    try {
      why = await dead;
    } finally {
      server.signal("SIGCONT");
    }
    assert.equal(why.reason, "heartbeat timeout");
    assert.equal(why.code, 1006);

    for (const seq of range(4, 8)) await server.publish("news", { seq });
    assert.notEqual(client.state, "connected", "the client must still be cut off while 4..8 are published");
    assert.equal(got.length, 3);

    gate.open = true;
    await waitFor(() => log.of("recovered").length === 1 && got.length === 8, {
      timeoutMs: 10000,
      what: "recovery of 4..8",
    });
    for (const seq of range(9, 10)) await server.publish("news", { seq });
    await waitFor(() => got.length >= 10, { what: "live 9..10" });

    assert.deepEqual(seqs(got), range(1, 10), "every publication exactly once, in order");
    assert.deepEqual(
      got.map((p) => p.offset),
      range(1, 10),
    );
    assert.equal(new Set(got.map((p) => p.epoch)).size, 1);
    assert.equal(log.of("lost").length, 0);
    const resubscribed = log.of("subscribed").at(-1);
    assert.equal(resubscribed.recovered, true);
    assert.notEqual(client.connId, firstConn, "a new connection");
    assert.ok(reconnects.of("connected").at(-1).reconnected);
    assert.equal(reconnects.of("disconnected").length, 0, "a dead connection is not the end");
  },
);

test("an idle but healthy connection is kept alive by pings, not declared dead", { timeout: 20000 }, async (t) => {
  const server = await startServer();
  t.after(() => server.dispose());
  const client = new Herald({ url: server.wsUrl, token: await server.token("idle"), heartbeatTimeoutMs: 1000 });
  t.after(() => client.close());
  const log = record(client, ["reconnecting", "frame"]);
  await client.connect();
  const connId = client.connId;
  // Three dead-timeouts of silence from the app; only the client's pings keep it talking.
  const until = Date.now() + 3000;
  await waitFor(() => Date.now() > until, { timeoutMs: 5000, intervalMs: 100, what: "3 s" });
  assert.deepEqual(log.of("reconnecting"), []);
  assert.equal(client.connId, connId);
  assert.ok(log.of("frame").filter((f) => f.type === "pong").length >= 4, "pongs every ~500 ms");
});

test(
  "a server restart: the client reconnects by itself, says lost (recovered:false, new epoch), then gets new publications",
  { timeout: 30000 },
  async (t) => {
    const server = await startServer();
    let current = server;
    t.after(() => current.dispose());
    const client = new Herald({
      url: server.wsUrl,
      getToken: () => current.token("bob"),
      backoff: { initialMs: 100, maxMs: 400 },
    });
    t.after(() => client.close());
    const sub = client.subscribe("news");
    const got = [];
    sub.on("publication", (p) => got.push(p));
    const clientLog = record(client, ["subscribed", "lost", "reconnecting"]);

    await client.connect();
    await waitFor(() => sub.state === "subscribed", { what: "subscribed" });
    for (const seq of range(1, 3)) await server.publish("news", { seq });
    await waitFor(() => got.length === 3, { what: "publications 1..3" });
    const oldEpoch = sub.epoch;
    assert.match(oldEpoch, /^[0-9a-f]{16}$/);

    const lost = nextEvent(sub, "lost", { timeoutMs: 20000 });
    current = await server.restart(); // SIGTERM (clients get 1001), then a new process on the same port
    const info = await lost;
    assert.equal(info.channel, "news");
    assert.equal(info.reason, "epoch changed");
    assert.deepEqual(info.since, { offset: 3, epoch: oldEpoch });
    assert.notEqual(info.epoch, oldEpoch);
    assert.ok(clientLog.of("reconnecting").some((r) => r.code === 1001), "the shutdown close was 1001");
    const answer = clientLog.of("subscribed").at(-1);
    assert.equal(answer.recovered, false);
    assert.equal(clientLog.of("lost").length, 1);

    // The new epoch starts again at offset 1: it must not be taken for a duplicate of 1.
    await current.publish("news", { seq: 4 });
    await waitFor(() => got.length === 4, { what: "the first publication after the restart" });
    assert.deepEqual(seqs(got), [1, 2, 3, 4]);
    assert.equal(got[3].offset, 1);
    assert.equal(got[3].epoch, info.epoch);
  },
);

test("recovered:false when the missed publications are no longer in the history", { timeout: 30000 }, async (t) => {
  // Two publications of history per channel: missing four cannot be recovered.
  const server = await startServer({ env: { HERALD_NAMESPACES__DEFAULT__HISTORY_SIZE: "2" } });
  t.after(() => server.dispose());
  const gate = await gatedWebSocket();
  const client = new Herald({
    url: server.wsUrl,
    getToken: () => server.token("carol"),
    WebSocket: gate.WebSocket,
    backoff: { initialMs: 100, maxMs: 300 },
  });
  t.after(() => client.close());
  const sub = client.subscribe("news");
  const got = [];
  sub.on("publication", (p) => got.push(p));
  const log = record(sub, ["subscribed", "recovered", "lost"]);

  await client.connect();
  await waitFor(() => sub.state === "subscribed", { what: "subscribed" });
  for (const seq of range(1, 2)) await server.publish("news", { seq });
  await waitFor(() => got.length === 2, { what: "publications 1..2" });

  // Cut off: drop the connection; every attempt is refused until the gate opens.
  gate.open = false;
  const refused = nextEvent(client, "reconnecting", { filter: (r) => r.attempt >= 1 });
  client.reconnect();
  await refused;
  for (const seq of range(3, 6)) await server.publish("news", { seq });
  gate.open = true;

  const lost = await nextEvent(sub, "lost", { timeoutMs: 10000 });
  assert.equal(lost.reason, "history gone");
  assert.equal(lost.since.offset, 2);
  assert.equal(log.of("subscribed").at(-1).recovered, false);
  assert.equal(log.of("recovered").length, 0);
  await server.publish("news", { seq: 7 });
  await waitFor(() => got.length === 3, { what: "the live publication after the loss" });
  assert.deepEqual(seqs(got), [1, 2, 7]);
  assert.equal(got[2].offset, 7);
});

test("a saved position with a wrong epoch is answered recovered:false and surfaces as lost", { timeout: 20000 }, async (t) => {
  const server = await startServer();
  t.after(() => server.dispose());
  const first = await server.publish("news", { seq: 1 });
  const client = new Herald({ url: server.wsUrl, token: await server.token("dave") });
  t.after(() => client.close());
  const sub = client.subscribe("news", { since: { offset: 1, epoch: "0123456789abcdef" } });
  const lost = nextEvent(sub, "lost");
  await client.connect();
  const info = await lost;
  assert.equal(info.reason, "epoch changed");
  assert.equal(info.epoch, first.epoch);
  assert.deepEqual(sub.position, { offset: 1, epoch: first.epoch }, "the position follows the server's");

  // And the right epoch recovers: a second client resumes from offset 1 and gets 2 only.
  await server.publish("news", { seq: 2 });
  const other = new Herald({ url: server.wsUrl, token: await server.token("dave") });
  t.after(() => other.close());
  const sub2 = other.subscribe("news", { since: { offset: 1, epoch: first.epoch } });
  const got = [];
  sub2.on("publication", (p) => got.push(p));
  const recovered = nextEvent(sub2, "recovered");
  await other.connect();
  await recovered;
  await waitFor(() => got.length === 1, { what: "the replay of 2" });
  assert.deepEqual(seqs(got), [2]);
});

test("publications already delivered are never handed to the app twice", { timeout: 20000 }, async (t) => {
  const server = await startServer();
  t.after(() => server.dispose());
  const client = new Herald({ url: server.wsUrl, token: await server.token("erin") });
  t.after(() => client.close());
  const sub = client.subscribe("news");
  const got = [];
  sub.on("publication", (p) => got.push(p));
  await client.connect();
  await waitFor(() => sub.state === "subscribed", { what: "subscribed" });
  for (const seq of range(1, 3)) await server.publish("news", { seq });
  await waitFor(() => got.length === 3, { what: "publications 1..3" });

  // Make the server replay 1..3 again on this connection (raw frames, behind the
  // client's back): unsubscribe, then subscribe from offset 0 of the same epoch.
  const frames = record(client, ["frame"]);
  client.send({ type: "unsubscribe", channel: "news", ref: "raw-1" });
  client.send({ type: "subscribe", channel: "news", since: { offset: 0, epoch: sub.epoch }, ref: "raw-2" });
  await waitFor(() => frames.of("frame").filter((f) => f.type === "pub").length === 3, {
    what: "the server's replay of 1..3",
  });
  await server.publish("news", { seq: 4 });
  await waitFor(() => frames.of("frame").filter((f) => f.type === "pub").length === 4, { what: "live 4" });
  await client.ping(); // every frame before the pong has been handled
  assert.deepEqual(seqs(got), [1, 2, 3, 4]);
});
