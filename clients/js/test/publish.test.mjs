// publish() resolved by its ack and rejected by an error frame with the same ref;
// subscription errors; the sync helpers between two devices of one user.

import { test } from "node:test";
import assert from "node:assert/strict";
import { Herald, HeraldError } from "../src/herald.js";
import { startServer, waitFor, nextEvent } from "./server.mjs";

test("publish resolves with the ack; an error frame with its ref rejects it", { timeout: 20000 }, async (t) => {
  const server = await startServer();
  t.after(() => server.dispose());
  const client = new Herald({ url: server.wsUrl, token: await server.token("42") });
  t.after(() => client.close());
  await client.connect();
  const channel = `sync:${client.userId}`;
  assert.equal(channel, "sync:42");

  const ok = { type: "progress_update", content_id: "movie-1", position: 12.5, duration: 7200 };
  const ack1 = await client.publish(channel, ok);
  assert.equal(ack1.type, "ack");
  assert.equal(ack1.offset, 1);
  const ack2 = await client.publish(channel, { ...ok, position: 13.5 });
  assert.equal(ack2.offset, 2);

  // Several in flight at once: each settles by its own ref.
  const results = await Promise.allSettled([
    client.publish(channel, { ...ok, position: 14 }),
    client.publish(channel, { type: "progress_update", content_id: "movie-1" }), // no position/duration
    client.publish("news", { hello: 1 }), // clients may not publish in `default`
    client.publish(channel, { ...ok, position: 15 }),
    client.publish("nosuchns:x", { a: 1 }),
  ]);
  assert.deepEqual(
    results.map((r) => r.status),
    ["fulfilled", "rejected", "rejected", "fulfilled", "rejected"],
  );
  assert.deepEqual([results[0].value.offset, results[3].value.offset], [3, 4]);
  const [bad, forbidden, unknown] = [results[1].reason, results[2].reason, results[4].reason];
  assert.ok(bad instanceof HeraldError);
  assert.equal(bad.code, "bad_request");
  assert.match(bad.message, /position|duration/);
  assert.equal(forbidden.code, "forbidden");
  assert.equal(unknown.code, "not_found");
  assert.equal(bad.frame.type, "error");
});

test("publish while not connected rejects with not_connected", async () => {
  const client = new Herald({ url: "ws://127.0.0.1:9/ws", token: "x" });
  await assert.rejects(client.publish("sync:1", {}), (e) => e instanceof HeraldError && e.code === "not_connected");
});

test("a refused subscription emits error on the Subscription and is not retried", { timeout: 20000 }, async (t) => {
  const server = await startServer();
  t.after(() => server.dispose());
  const client = new Herald({ url: server.wsUrl, token: await server.token("42") });
  t.after(() => client.close());
  const sub = client.subscribe("sync:43"); // another user's sync channel
  const err = nextEvent(sub, "error");
  await client.connect();
  const e = await err;
  assert.equal(e.code, "forbidden");
  assert.equal(e.channel, "sync:43");
  assert.equal(sub.state, "failed");
  const unknown = client.subscribe("nosuchns:x");
  assert.equal((await nextEvent(unknown, "error")).code, "not_found");
});

test("sync helpers: progress, watchlist and commands reach the user's other device", { timeout: 20000 }, async (t) => {
  const server = await startServer();
  t.after(() => server.dispose());
  const phone = new Herald({ url: server.wsUrl, token: await server.token("u7", { device: "phone" }) });
  const tv = new Herald({ url: server.wsUrl, token: await server.token("u7", { device: "tv" }) });
  t.after(() => phone.close());
  t.after(() => tv.close());
  const onTv = { progress: [], watchlist: [], command: [] };
  tv.sync.onProgress((e, meta) => onTv.progress.push({ e, meta }));
  tv.sync.onWatchlist((e) => onTv.watchlist.push(e));
  tv.sync.onCommand((e) => onTv.command.push(e));
  const phoneCommands = [];
  phone.sync.onCommand((e) => phoneCommands.push(e));
  await Promise.all([phone.connect(), tv.connect()]);
  await waitFor(() => tv.sync.subscription?.state === "subscribed" && phone.sync.subscription?.state === "subscribed", {
    what: "both subscribed to sync:u7",
  });
  assert.equal(tv.sync.channel, "sync:u7");

  const ack = await phone.sync.sendProgress("ep-1", 61, 1800, { title: "Episode 1" });
  assert.equal(typeof ack.offset, "number");
  await phone.sync.sendWatchlist("ep-2", "add");
  await phone.sync.sendCommand("pause", "tv");
  await phone.sync.sendCommand("ping-all");
  await waitFor(() => onTv.progress.length === 1 && onTv.watchlist.length === 1 && onTv.command.length === 2, {
    what: "the tv to get every event",
  });
  assert.deepEqual(onTv.progress[0].e, {
    type: "progress_update",
    content_id: "ep-1",
    position: 61,
    duration: 1800,
    title: "Episode 1",
  });
  assert.equal(onTv.progress[0].meta.offset, ack.offset);
  assert.deepEqual(onTv.watchlist[0], { type: "watchlist_update", content_id: "ep-2", action: "add" });
  assert.deepEqual(onTv.command, [
    { type: "device_command", command: "pause", target_device: "tv" },
    { type: "device_command", command: "ping-all" },
  ]);
  // The phone sends but never gets its own events back; the tv-only command skips it.
  await phone.ping();
  assert.deepEqual(phoneCommands, []);
  await assert.rejects(phone.sync.sendProgress("ep-1", "61", 1800), (e) => e.code === "bad_request");
});
