// The SSE fallback (GET /sse) against a real herald: the WebSocket cannot open (a proxy
// refuses the upgrade, or the network path to it is gone), so the client reads the same
// frames from an event stream and publishes and acks over the HTTP API. Node 20 has no
// EventSource: `FakeEventSource` (test/eventsource.mjs) is a test double of the browser
// API over fetch; the real one runs in tests/browser/sse.test.mjs.

import { test } from "node:test";
import assert from "node:assert/strict";
import { Herald, HeraldError, decodeJwtPayload } from "../src/herald.js";
import { FakeEventSource } from "./eventsource.mjs";
import { startServer, waitFor, nextEvent, record, gatedWebSocket, noUpgradeProxy } from "./server.mjs";

// `chat` takes client publications; both namespaces keep history (recovery with since).
const CONFIG = `
[namespaces.chat]
subscribe = "any"
publish = "any"
history_size = 100
history_ttl_s = 300

# No history: no offsets, so only the server's exclusion keeps a publication from
# coming back to its publisher.
[namespaces.live]
subscribe = "any"
publish = "any"
history_size = 0
`;

/** Resolves after `ms` of real time, to check that nothing happens meanwhile. */
const quietFor = (ms) => new Promise((r) => setTimeout(r, ms));

/** The FakeEventSources made by `client`'s tests since `from` (an index into instances). */
const streamsSince = (from) => FakeEventSource.instances.slice(from);

/** The admin view of a user's connections on the node. */
async function connsOf(server, user) {
  const r = await server.api("GET", `/api/connections?q=${encodeURIComponent(user)}`);
  return (r.body.connections ?? []).filter((c) => c.user_id === user);
}

/** A client whose WebSocket never opens (the network path to it is cut). */
async function sseClient(server, user, options = {}) {
  const gate = await gatedWebSocket();
  gate.open = false;
  const token = options.token ?? (options.getToken ? undefined : await server.token(user));
  const client = new Herald({
    url: server.wsUrl,
    token,
    WebSocket: gate.WebSocket,
    EventSource: FakeEventSource,
    backoff: { initialMs: 50, maxMs: 200 },
    ...options,
  });
  return { client, gate };
}

/** A WebSocket peer subscribed to `channel`, recording its publications' data. */
async function wsPeer(t, server, user, channel) {
  const peer = new Herald({ url: server.wsUrl, token: await server.token(user) });
  t.after(() => peer.close());
  const got = [];
  const sub = peer.subscribe(channel);
  sub.on("publication", (p) => got.push(p.data));
  const ready = nextEvent(sub, "subscribed");
  await peer.connect();
  await ready;
  return { peer, got };
}

test(
  "behind a proxy that refuses the upgrade: falls back to SSE, receives, publishes over HTTP without an echo",
  { timeout: 30000 },
  async (t) => {
    const server = await startServer({ config: CONFIG });
    t.after(() => server.dispose());
    const proxy = await noUpgradeProxy(server.port);
    t.after(() => proxy.close());
    const from = FakeEventSource.instances.length;
    const client = new Herald({ url: proxy.wsUrl, token: await server.token("ann"), EventSource: FakeEventSource });
    t.after(() => client.close());
    const log = record(client, ["transport", "connected", "reconnecting", "error"]);
    const sub = client.subscribe("chat:room");
    const got = [];
    sub.on("publication", (p) => got.push(p));
    const subscribed = nextEvent(sub, "subscribed");
    const connected = await client.connect();

    assert.ok(proxy.refused >= 1, "the WebSocket was tried first");
    assert.equal(client.transport, "sse");
    assert.deepEqual(log.of("transport"), [{ transport: "sse", previous: null }]);
    assert.deepEqual(log.of("reconnecting"), [], "a fallback is not a reconnect");
    assert.equal(client.state, "connected");
    assert.equal(client.connId, connected.conn_id);
    assert.equal(client.userId, "ann");
    const [es] = streamsSince(from);
    assert.match(es.url, new RegExp(`^http://127\\.0\\.0\\.1:${proxy.port}/sse\\?token=[^&]+&channels=chat:room$`));
    assert.ok(proxy.requests.some((r) => r.startsWith("GET /sse?")), "through the proxy");
    const s = await subscribed;
    assert.equal(s.channel, "chat:room");
    assert.equal(s.recovered, false);
    assert.match(s.epoch, /^[0-9a-f]{16}$/);

    const { got: peerGot } = await wsPeer(t, server, "bob", "chat:room");
    await server.publish("chat:room", { n: 1 });
    await waitFor(() => got.length === 1, { what: "the first publication over SSE" });
    assert.equal(got[0].offset, 1);
    assert.deepEqual(got[0].data, { n: 1 });

    const ack = await client.publish("chat:room", { n: 2, from: "ann" });
    assert.equal(ack.type, "ack");
    assert.equal(ack.offset, 2);
    assert.equal(ack.epoch, s.epoch);
    assert.equal(typeof ack.ref, "number");
    await waitFor(() => peerGot.some((d) => d.n === 2), { what: "ann's publication at the WebSocket peer" });
    // Not echoed: the next one arrives and ann's own is not before it.
    await server.publish("chat:room", { n: 3 });
    await waitFor(() => got.length === 2, { what: "the third publication" });
    assert.deepEqual(got.map((p) => p.data.n), [1, 3]);

    // Refusals reject like error frames, with the HTTP status.
    const refused = await client.publish("news", { x: 1 }).catch((e) => e);
    assert.ok(refused instanceof HeraldError, String(refused));
    assert.equal(refused.code, "forbidden");
    assert.equal(refused.status, 403);
    assert.equal(refused.frame.type, "error");
    const unknown = await client.publish("nosuch:x", 1).catch((e) => e);
    assert.equal(unknown.code, "not_found");

    // An idempotency key: the repeat is acked with the first offset, not delivered again.
    const first = await client.publish("chat:room", { n: 4 }, { idempotencyKey: "k-4" });
    const again = await client.publish("chat:room", { n: 4 }, { idempotencyKey: "k-4" });
    assert.equal(again.offset, first.offset);
    await server.publish("chat:room", { n: 5 });
    await waitFor(() => peerGot.some((d) => d.n === 5), { what: "n:5 at the peer" });
    assert.deepEqual(peerGot.map((d) => d.n), [1, 2, 3, 4, 5]);

    // Without history (no offsets to tell ours by) the server's exclude_conn is what
    // keeps it from coming back.
    const live = client.subscribe("live:room");
    const onLive = [];
    live.on("publication", (p) => onLive.push(p.data));
    await nextEvent(live, "subscribed");
    const { got: peerLive } = await wsPeer(t, server, "bob", "live:room");
    const liveAck = await client.publish("live:room", "mine");
    assert.equal(liveAck.offset, undefined);
    await waitFor(() => peerLive.includes("mine"), { what: "the live publication at the peer" });
    await server.publish("live:room", "theirs");
    await waitFor(() => onLive.length === 1, { what: "the next live publication" });
    assert.deepEqual(onLive, ["theirs"]);

    assert.equal(typeof (await client.ping()), "number");
    assert.equal(client.send({ type: "ping" }), false, "nothing can be sent on the stream");
    assert.deepEqual(log.of("error"), []);
    assert.equal(log.of("connected").length, 1);
  },
);

test(
  "a close event that is not terminal: the stream is closed by the client, which reconnects over SSE with since and recovers",
  { timeout: 30000 },
  async (t) => {
    const server = await startServer({ config: CONFIG });
    t.after(() => server.dispose());
    const from = FakeEventSource.instances.length;
    const { client } = await sseClient(server, "cat");
    t.after(() => client.close());
    const log = record(client, ["connected", "reconnecting", "recovered", "lost", "disconnected"]);
    const a = client.subscribe("chat:a");
    const b = client.subscribe("chat:b");
    const got = [];
    client.on("publication", (p) => got.push(`${p.channel}/${p.offset}`));
    await client.connect();
    await waitFor(() => a.state === "subscribed" && b.state === "subscribed", { what: "both subscribed" });
    await server.publish("chat:a", "a1");
    await server.publish("chat:b", "b1");
    await waitFor(() => got.length === 2, { what: "a1 and b1" });

    // The reconnect's stream is held until the publications below are made.
    let release;
    const held = new Promise((r) => (release = r));
    FakeEventSource.beforeConnect = (es) => (es === FakeEventSource.instances[from + 1] ? held : undefined);
    t.after(() => {
      FakeEventSource.beforeConnect = null;
      release();
    });
    const [conn] = await connsOf(server, "cat");
    const dropped = nextEvent(client, "reconnecting");
    const r = await server.api("POST", `/api/connections/${conn.conn_id}/disconnect`, { code: 4000, reason: "go away" });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    const e = await dropped;
    assert.equal(e.code, 4000);
    assert.equal(e.reason, "go away");
    // Meanwhile:
    await waitFor(() => FakeEventSource.instances.length === from + 2, { what: "the reconnect's stream" });
    assert.deepEqual(await connsOf(server, "cat"), [], "away");
    await server.publish("chat:a", "a2");
    await server.publish("chat:b", "b2");
    await server.publish("chat:a", "a3");
    release();

    const back = await nextEvent(client, "connected");
    assert.equal(back.reconnected, true);
    await waitFor(() => got.length === 5, { what: "the missed publications" });
    assert.deepEqual(got.filter((x) => x.startsWith("chat:a")), ["chat:a/1", "chat:a/2", "chat:a/3"]);
    assert.deepEqual(got.filter((x) => x.startsWith("chat:b")), ["chat:b/1", "chat:b/2"]);
    assert.deepEqual(log.of("recovered").map((x) => x.channel).sort(), ["chat:a", "chat:b"]);
    assert.deepEqual(log.of("lost"), []);

    const streams = streamsSince(from);
    assert.equal(streams.length, 2, "one stream per connection");
    assert.equal(streams[0].readyState, FakeEventSource.CLOSED, "the client closed the first stream");
    assert.equal(streams[0].requests.length, 1, "EventSource did not reconnect by itself");
    const since = new URL(streams[1].url).searchParams.get("since");
    assert.equal(since, `${a.epoch}:1,${b.epoch}:1`, "since by place, from each position");
    assert.equal(client.transport, "sse");
    assert.deepEqual(log.of("disconnected"), []);
  },
);

test(
  "subscribe() and unsubscribe() on SSE reopen the stream: nothing lost or duplicated, no reconnect seen",
  { timeout: 30000 },
  async (t) => {
    const server = await startServer({ config: CONFIG });
    t.after(() => server.dispose());
    const from = FakeEventSource.instances.length;
    const { client } = await sseClient(server, "dan");
    t.after(() => client.close());
    const log = record(client, ["state", "connected", "reconnecting", "subscribed", "recovered", "lost"]);
    const a = client.subscribe("chat:a");
    const onA = [];
    a.on("publication", (p) => onA.push(p.offset));
    const ready = nextEvent(a, "subscribed");
    await client.connect();
    await ready;
    const firstConn = client.connId;

    // A publisher that keeps chat:a busy while the stream is reopened twice.
    let n = 0;
    let stop = false;
    const publisher = (async () => {
      while (!stop && n < 400) {
        n += 1;
        await server.publish("chat:a", { n });
      }
    })();
    t.after(() => {
      stop = true;
    });
    await waitFor(() => onA.length >= 5, { what: "a few publications on chat:a" });

    const b = client.subscribe("chat:b");
    const onB = [];
    b.on("publication", (p) => onB.push(p.data));
    const c = client.subscribe("chat:c"); // in the same tick: one reopen for both
    await nextEvent(b, "subscribed");
    assert.equal(c.state, "subscribed");
    assert.equal(a.state, "subscribed");
    await server.publish("chat:b", "b1");
    await waitFor(() => onB.length === 1, { what: "b1" });
    await waitFor(() => onA.length >= n - 1 && onA.length >= 30, { what: "more of chat:a" });

    client.unsubscribe("chat:c");
    await waitFor(() => streamsSince(from).length === 3, { what: "the third stream" });
    await waitFor(() => client.connId !== null && streamsSince(from)[2].readyState === FakeEventSource.OPEN, {
      what: "the third stream open",
    });
    stop = true;
    await publisher;
    await waitFor(() => onA.length === n, { what: `all ${n} publications of chat:a`, timeoutMs: 15000 });
    assert.deepEqual(onA, Array.from({ length: n }, (_, i) => i + 1), "every offset once, in order");

    const urls = streamsSince(from).map((es) => new URL(es.url).searchParams);
    assert.deepEqual(
      urls.map((q) => q.get("channels")),
      ["chat:a", "chat:a,chat:b,chat:c", "chat:a,chat:b"],
    );
    assert.match(urls[1].get("since"), /^[0-9a-f]{16}:\d+,,$/, "chat:a from its position, the new ones from nothing");
    assert.ok(streamsSince(from).slice(0, 2).every((es) => es.readyState === FakeEventSource.CLOSED));
    assert.notEqual(client.connId, firstConn, "a new stream is a new connection on the server");
    assert.equal(log.of("connected").length, 1, "a reopen is not a reconnect");
    assert.deepEqual(log.of("reconnecting"), []);
    assert.deepEqual(log.of("state").map((s) => s.state), ["connecting", "connected"]);
    assert.deepEqual(log.of("subscribed").map((s) => s.channel), ["chat:a", "chat:b", "chat:c"], "a reopen is quiet");
    assert.deepEqual(log.of("recovered"), []);
    assert.deepEqual(log.of("lost"), []);
    await waitFor(async () => (await connsOf(server, "dan")).length === 1, { what: "one connection left on the server" });
  },
);

test("channels the server refuses on the stream: each Subscription gets its own error", { timeout: 20000 }, async (t) => {
  const server = await startServer({ config: CONFIG });
  t.after(() => server.dispose());
  const { client } = await sseClient(server, "eve");
  t.after(() => client.close());
  const errors = record(client, ["error"]);
  const ok1 = client.subscribe("news");
  const forbidden = client.subscribe("sync:mallory");
  const ok2 = client.subscribe("chat:x");
  const unknown = client.subscribe("nosuch:x");
  const own = client.subscribe("sync:eve");
  const fErr = nextEvent(forbidden, "error");
  const uErr = nextEvent(unknown, "error");
  await client.connect();
  assert.equal((await fErr).code, "forbidden");
  assert.equal((await fErr).channel, "sync:mallory");
  assert.equal((await uErr).code, "not_found");
  assert.equal((await uErr).channel, "nosuch:x");
  await waitFor(() => [ok1, ok2, own].every((s) => s.state === "subscribed"), { what: "the others subscribed" });
  assert.equal(forbidden.state, "failed");
  assert.equal(unknown.state, "failed");
  assert.equal(errors.of("error").length, 2);

  // A failed one is not asked for again by itself; subscribe() retries it.
  client.subscribe("chat:y");
  await waitFor(() => client.getSubscription("chat:y")?.state === "subscribed", { what: "chat:y" });
  assert.equal(forbidden.state, "failed");
  assert.equal(errors.of("error").length, 2);
});

test("a terminal close event (4004) stops the client: no reconnect, by it or by EventSource", { timeout: 20000 }, async (t) => {
  const server = await startServer({ config: CONFIG });
  t.after(() => server.dispose());
  const from = FakeEventSource.instances.length;
  const { client } = await sseClient(server, "fay");
  t.after(() => client.close());
  const log = record(client, ["reconnecting", "connected"]);
  await client.connect();
  const gone = nextEvent(client, "disconnected");
  const r = await server.api("POST", "/api/users/fay/disconnect", {});
  assert.ok(r.status < 300, JSON.stringify(r.body));
  const e = await gone;
  assert.equal(e.code, 4004);
  assert.equal(e.byServer, true);
  assert.equal(client.state, "closed");
  // EventSource would reconnect after its retry (3 s); the client closed it instead.
  await quietFor(3500);
  const streams = streamsSince(from);
  assert.equal(streams.length, 1);
  assert.equal(streams[0].readyState, FakeEventSource.CLOSED);
  assert.equal(streams[0].requests.length, 1);
  assert.deepEqual(log.of("reconnecting"), []);
  assert.deepEqual(await connsOf(server, "fay"), []);
});

test("token refresh on SSE reopens the stream with the new token: the connection outlives the first token", { timeout: 40000 }, async (t) => {
  const server = await startServer({ config: CONFIG, env: { HERALD_AUTH__LEEWAY_S: "1" } });
  t.after(() => server.dispose());
  const minted = [];
  const getToken = async () => {
    const token = await server.token("gus", { ttl: "8s" });
    minted.push(token);
    return token;
  };
  const from = FakeEventSource.instances.length;
  const { client } = await sseClient(server, "gus", { getToken, refreshBeforeS: 5 });
  t.after(() => client.close());
  const log = record(client, ["connected", "reconnecting", "disconnected", "lost", "error"]);
  const sub = client.subscribe("chat:t");
  const got = [];
  sub.on("publication", (p) => got.push(p.data));
  const ready = nextEvent(sub, "subscribed");
  await client.connect();
  await ready;
  const firstExp = decodeJwtPayload(minted[0]).exp;
  await waitFor(() => Date.now() > (firstExp + 1) * 1000 + 1500, { timeoutMs: 20000, intervalMs: 100, what: "the first token's expiry" });
  await server.publish("chat:t", "after");
  await waitFor(() => got.includes("after"), { what: "a publication after the first token expired" });
  assert.ok(minted.length >= 2, `refreshed (${minted.length} tokens)`);
  const streams = streamsSince(from);
  assert.ok(streams.length >= 2, "a new stream for the new token");
  assert.equal(new URL(streams.at(-1).url).searchParams.get("token"), client.token);
  assert.match(new URL(streams.at(-1).url).searchParams.get("since"), new RegExp(`^${sub.epoch}:\\d+$`), "from the channel's position");
  assert.equal(client.state, "connected");
  assert.equal(log.of("connected").length, 1);
  assert.deepEqual(log.of("reconnecting"), []);
  assert.deepEqual(log.of("disconnected"), []);
  assert.deepEqual(log.of("lost"), []);
  assert.deepEqual(log.of("error"), []);
});

test("transports: [\"websocket\"] does not fall back", { timeout: 20000 }, async (t) => {
  const server = await startServer();
  t.after(() => server.dispose());
  const from = FakeEventSource.instances.length;
  const { client, gate } = await sseClient(server, "hal", { transports: ["websocket"] });
  t.after(() => client.close());
  const log = record(client, ["reconnecting", "connected"]);
  let connected = false;
  client.connect().then(
    () => (connected = true),
    () => {},
  );
  await waitFor(() => log.of("reconnecting").length >= 3, { what: "three failed attempts" });
  assert.equal(connected, false);
  assert.equal(client.transport, null);
  assert.ok(gate.attempts >= 3);
  assert.equal(streamsSince(from).length, 0, "no event stream was opened");
});

test(
  "the fallback is kept for reconnects; with transportRetryMs 0 the WebSocket is tried again and taken once it works",
  { timeout: 30000 },
  async (t) => {
    const server = await startServer({ config: CONFIG });
    t.after(() => server.dispose());
    const kick = async (user) => {
      const [conn] = await connsOf(server, user);
      const r = await server.api("POST", `/api/connections/${conn.conn_id}/disconnect`, { code: 4000 });
      assert.equal(r.status, 200, JSON.stringify(r.body));
    };

    // Default: sticky for transportRetryMs (5 min).
    const sticky = await sseClient(server, "ida");
    t.after(() => sticky.client.close());
    await sticky.client.connect();
    assert.equal(sticky.client.transport, "sse");
    const tried = sticky.gate.attempts;
    sticky.gate.open = true; // the WebSocket would work now
    const back = nextEvent(sticky.client, "connected");
    await kick("ida");
    await back;
    assert.equal(sticky.client.transport, "sse");
    assert.equal(sticky.gate.attempts, tried, "the WebSocket was not tried again yet");

    // transportRetryMs 0: every reconnect tries the WebSocket first.
    const eager = await sseClient(server, "jo", { transportRetryMs: 0 });
    t.after(() => eager.client.close());
    const changes = record(eager.client, ["transport"]);
    const sub = eager.client.subscribe("chat:j");
    const got = [];
    sub.on("publication", (p) => got.push(p.offset));
    const ready = nextEvent(sub, "subscribed");
    await eager.client.connect();
    await ready;
    await server.publish("chat:j", 1);
    await waitFor(() => got.length === 1, { what: "the first publication over SSE" });
    eager.gate.open = true;
    const up = nextEvent(eager.client, "connected");
    await kick("jo");
    await up;
    assert.equal(eager.client.transport, "websocket");
    assert.deepEqual(changes.of("transport"), [
      { transport: "sse", previous: null },
      { transport: "websocket", previous: "sse" },
    ]);
    await server.publish("chat:j", 2);
    await waitFor(() => got.length === 2, { what: "the next publication over the WebSocket" });
    assert.deepEqual(got, [1, 2]);
    const ack = await eager.client.publish("chat:j", 3);
    assert.equal(ack.offset, 3);
  },
);

test("announcements on SSE: active_broadcast on connect, acknowledge and getActiveAnnouncement over the HTTP API", { timeout: 20000 }, async (t) => {
  const server = await startServer();
  t.after(() => server.dispose());
  const created = await server.api("POST", "/api/broadcasts", { message: "maintenance at 9", type: "warning" });
  assert.equal(created.status, 201, JSON.stringify(created.body));
  const id = created.body.id;
  const { client } = await sseClient(server, "kim");
  t.after(() => client.close());
  const seen = [];
  client.onAnnouncement((b, frame) => seen.push({ id: b.id, type: frame.type }));
  await client.connect();
  await waitFor(() => seen.length === 1, { what: "active_broadcast" });
  assert.deepEqual(seen[0], { id, type: "active_broadcast" });

  assert.equal(client.getActiveAnnouncement(), true);
  await waitFor(() => seen.length === 2, { what: "the answer of GET /api/broadcasts/active" });
  assert.deepEqual(seen[1], { id, type: "active_broadcast" });

  const errors = record(client, ["error"]);
  client.acknowledge(id);
  await waitFor(
    async () => (await server.api("GET", "/api/broadcasts?limit=1")).body.broadcasts?.[0]?.acknowledgements === 1,
    { what: "acknowledgements: 1" },
  );
  client.acknowledge("0192aaaa-0000-7000-8000-000000000000");
  const err = await nextEvent(client, "error");
  assert.equal(err.code, "not_found");
  assert.equal(errors.of("error").length, 1);
});

test(
  "the client's own publications are not handed back by a replay: after a stream reopen (SSE) and a reconnect (WebSocket)",
  { timeout: 30000 },
  async (t) => {
    const server = await startServer({ config: CONFIG });
    t.after(() => server.dispose());

    // SSE: publish, then subscribe() reopens the stream with since = the position.
    const { client } = await sseClient(server, "lea");
    t.after(() => client.close());
    const sub = client.subscribe("chat:own");
    const got = [];
    sub.on("publication", (p) => got.push(p.data));
    const ready = nextEvent(sub, "subscribed");
    await client.connect();
    await ready;
    await server.publish("chat:own", "theirs-1");
    await waitFor(() => got.length === 1, { what: "theirs-1" });
    const ack = await client.publish("chat:own", "mine-2");
    assert.equal(ack.offset, 2);
    assert.equal(sub.offset, 2, "the position steps over our own publication");
    const other = client.subscribe("chat:other");
    await nextEvent(other, "subscribed");
    await server.publish("chat:own", "theirs-3");
    await waitFor(() => got.length === 2, { what: "theirs-3" });
    assert.deepEqual(got, ["theirs-1", "theirs-3"]);

    // The same on the WebSocket: a reconnect's replay would bring it back otherwise.
    const ws = new Herald({ url: server.wsUrl, token: await server.token("max") });
    t.after(() => ws.close());
    const wsSub = ws.subscribe("chat:ws");
    const wsGot = [];
    wsSub.on("publication", (p) => wsGot.push(p.data));
    const wsReady = nextEvent(wsSub, "subscribed");
    await ws.connect();
    await wsReady;
    await server.publish("chat:ws", "theirs-1");
    await waitFor(() => wsGot.length === 1, { what: "theirs-1 on the WebSocket" });
    await ws.publish("chat:ws", "mine-2");
    await server.publish("chat:ws", "theirs-3"); // may arrive before or after the ack
    const back = nextEvent(wsSub, "subscribed");
    await waitFor(() => wsGot.length === 2, { what: "theirs-3 on the WebSocket" });
    ws.reconnect();
    await back;
    await server.publish("chat:ws", "theirs-4");
    await waitFor(() => wsGot.length === 3, { what: "theirs-4 after the reconnect" });
    assert.deepEqual(wsGot, ["theirs-1", "theirs-3", "theirs-4"]);
  },
);
