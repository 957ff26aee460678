// `skipped` on a live connection (docs/protocol.md, "Missed on a live connection"): a real
// herald drops publications for a client that reads too slowly (`drop_oldest`), and the
// client recovers them with `since` on the same connection — or says `lost`.

import { test } from "node:test";
import assert from "node:assert/strict";
import { Herald } from "../src/herald.js";
import { startServer, pausableProxy, waitFor, record } from "./server.mjs";

const seqs = (pubs) => pubs.map((p) => p.data.seq);
const range = (a, b) => Array.from({ length: b - a + 1 }, (_, i) => a + i);

// The outbound queue per connection, in messages (bytes are not the limit here).
const QUEUE = 8;
const BIG = "x".repeat(64 * 1024);

// `ticker` keeps history (the notice carries the offset to recover from), `short` keeps
// too little of it, `bulk` none (its notices have no offset). All three drop the oldest
// queued frames of a slow connection instead of closing it.
const CONFIG = `
[ws]
queue_messages = ${QUEUE}
queue_bytes = 8388608

[namespaces.ticker]
history_size = 100
slow_consumer = "drop_oldest"

[namespaces.short]
history_size = 2
slow_consumer = "drop_oldest"

[namespaces.bulk]
history_size = 0
slow_consumer = "drop_oldest"
`;

async function dropped(server) {
  const r = await server.api("GET", "/api/stats");
  assert.equal(r.status, 200);
  return r.body.dropped;
}

/**
 * Connects through a proxy that can stop reading from the server, subscribes `channel`
 * and `bulk:fill`, and delivers publications 1..3 of `channel`. Then makes the server
 * drop publication 4 of `channel` while 5 and 6 stay queued behind the notice:
 *  1. The proxy stops reading the server's socket: the client reads nothing from now on.
 *  2. 64 KiB publications on `bulk:fill` fill the kernel's socket buffers and then the
 *     server's queue for the connection, until the server says (`/api/stats` `dropped`)
 *     that drop_oldest had to drop something: the queue is full and its writer stuck.
 *  3. Publication 4 of `channel` goes to the back of the full queue; QUEUE + 2 more bulk
 *     ones push it to the front and out (each drops the oldest queued frame).
 *  4. 5 and 6 of `channel` are queued after that (they push bulk ones out, not 4).
 *  5. The proxy reads on: the client gets what the buffers held, the notices (written
 *     ahead of what is still queued), then the queued bulk frames and 5, 6 — before
 *     the answers to the client's own unsubscribe / subscribe.
 */
async function skipFour(t, channel) {
  const server = await startServer({ config: CONFIG });
  t.after(() => server.dispose());
  const proxy = await pausableProxy(server.port);
  t.after(() => proxy.close());
  const client = new Herald({ url: proxy.wsUrl, token: await server.token("slow") });
  t.after(() => client.close());
  const frames = record(client, ["frame"]);
  const sub = client.subscribe(channel);
  const bulk = client.subscribe("bulk:fill");
  const got = [];
  sub.on("publication", (p) => got.push(p));
  const log = record(sub, ["subscribed", "skipped", "recovered", "lost"]);
  const bulkLog = record(bulk, ["subscribed", "skipped", "recovered", "lost"]);

  await client.connect();
  await waitFor(() => sub.state === "subscribed" && bulk.state === "subscribed", { what: "subscribed" });
  for (const seq of range(1, 3)) await server.publish(channel, { seq });
  await waitFor(() => got.length === 3, { what: "publications 1..3" });
  const epoch = sub.epoch;

  proxy.pause();
  let n = 0;
  while ((await dropped(server)) === 0) {
    assert.ok(n < 2000, "the server never had to drop anything: is the proxy reading?");
    await server.publish("bulk:fill", { n: n++, big: BIG });
  }
  await server.publish(channel, { seq: 4 });
  for (let i = 0; i < QUEUE + 2; i++) await server.publish("bulk:fill", { n: n++, big: BIG });
  await server.publish(channel, { seq: 5 });
  await server.publish(channel, { seq: 6 });
  assert.equal(got.length, 3, "nothing reached the client while its socket was not read");
  assert.equal(log.of("skipped").length, 0);
  proxy.resume();

  return { server, client, sub, got, log, bulkLog, frames, epoch };
}

/** Index in the client's frame log of the first frame matching `pred`. */
const indexOf = (frames, pred) => frames.of("frame").findIndex(pred);

test(
  "skipped with an offset: the client recovers on the live connection; every publication once, in order",
  { timeout: 60000 },
  async (t) => {
    const { server, client, sub, got, log, bulkLog, frames, epoch } = await skipFour(t, "ticker:eth");

    await waitFor(() => log.of("recovered").length === 1 && got.length >= 6, {
      timeoutMs: 15000,
      what: "the recovery of 4..6",
    });
    await server.publish("ticker:eth", { seq: 7 });
    await waitFor(() => got.length >= 7, { what: "live 7" });
    await client.ping(); // every frame before the pong has been handled

    assert.deepEqual(seqs(got), range(1, 7), "every publication exactly once, in order");
    assert.deepEqual(
      got.map((p) => p.offset),
      range(1, 7),
    );
    assert.deepEqual(log.of("skipped"), [{ channel: "ticker:eth", count: 1, offset: 3, epoch }]);
    assert.deepEqual(log.of("recovered")[0].since, { offset: 3, epoch });
    assert.equal(log.of("lost").length, 0);
    assert.equal(log.of("subscribed").at(-1).recovered, true);
    assert.equal(sub.state, "subscribed");
    assert.deepEqual(sub.position, { offset: 7, epoch });

    // The case the position tracking has to get right did happen: 5 and 6 arrived live
    // after the notice and before the re-subscribe's answer (and were held back for
    // the replay, which brought 4, 5, 6 in order).
    const notice = indexOf(frames, (f) => f.type === "skipped" && f.channel === "ticker:eth");
    const answer = indexOf(frames, (f) => f.type === "subscribed" && f.channel === "ticker:eth" && f.recovered);
    const live5 = indexOf(frames, (f) => f.type === "pub" && f.channel === "ticker:eth" && f.data.seq === 5);
    assert.ok(notice >= 0 && notice < live5 && live5 < answer, `notice ${notice} < live 5 ${live5} < answer ${answer}`);

    // The bulk channel has no history: its notices say how many, with nothing to recover
    // from, and the client leaves the subscription alone.
    assert.ok(bulkLog.of("skipped").length >= 1);
    for (const s of bulkLog.of("skipped")) {
      assert.equal(s.channel, "bulk:fill");
      assert.ok(s.count >= 1);
      assert.equal(s.offset, undefined);
      assert.equal(s.epoch, undefined);
    }
    assert.equal(bulkLog.of("subscribed").length, 1, "no re-subscribe without an offset");
    assert.equal(bulkLog.of("recovered").length + bulkLog.of("lost").length, 0);
  },
);

test(
  "skipped when the history no longer holds the gap: recovered:false surfaces as lost, then live publications flow",
  { timeout: 60000 },
  async (t) => {
    // Two publications of history: when the client asks for everything after 3, only 5
    // and 6 are left.
    const { server, client, sub, got, log, epoch } = await skipFour(t, "short:eth");

    const lostAt = await waitFor(() => log.of("lost")[0], { timeoutMs: 15000, what: "lost" });
    assert.equal(lostAt.reason, "history gone");
    assert.deepEqual(lostAt.since, { offset: 3, epoch });
    assert.equal(lostAt.epoch, epoch);
    assert.equal(lostAt.offset, 6, "where the channel is now");
    assert.deepEqual(log.of("skipped"), [{ channel: "short:eth", count: 1, offset: 3, epoch }]);
    assert.equal(log.of("subscribed").at(-1).recovered, false);
    assert.equal(log.of("recovered").length, 0);

    await server.publish("short:eth", { seq: 7 });
    await waitFor(() => got.length >= 4, { what: "the live publication after the loss" });
    await client.ping();
    // 5 and 6 came live after the notice and were held back for a replay that did not
    // happen: after `lost` the app reloads the state (which has them) and goes on from 7.
    assert.deepEqual(seqs(got), [1, 2, 3, 7]);
    assert.deepEqual(sub.position, { offset: 7, epoch });
    assert.equal(sub.state, "subscribed");
  },
);
