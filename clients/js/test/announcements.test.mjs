// Announcements (seed 003) through the client: onAnnouncement, acknowledge, and no
// active_broadcast again after a reconnect; broadcast_cleared.

import { test } from "node:test";
import assert from "node:assert/strict";
import { Herald } from "../src/herald.js";
import { startServer, waitFor, nextEvent, record } from "./server.mjs";

test("an acknowledged announcement is counted and not offered again after a reconnect", { timeout: 30000 }, async (t) => {
  const server = await startServer();
  t.after(() => server.dispose());
  const client = new Herald({
    url: server.wsUrl,
    getToken: () => server.token("alice"),
    backoff: { initialMs: 50, maxMs: 200 },
  });
  t.after(() => client.close());
  const seen = [];
  client.onAnnouncement((b, frame) => seen.push({ b, type: frame.type }));
  await client.connect();

  const created = await server.api("POST", "/api/broadcasts", { message: "hi", type: "info" });
  assert.equal(created.status, 201, JSON.stringify(created.body));
  const id = created.body.id;
  await waitFor(() => seen.length === 1, { what: "new_broadcast" });
  assert.equal(seen[0].type, "new_broadcast");
  assert.equal(seen[0].b.id, id);
  assert.equal(seen[0].b.message, "hi");
  assert.equal(seen[0].b.message_type, "info");
  assert.deepEqual(client.activeAnnouncement, seen[0].b);

  client.acknowledge(id);
  assert.equal(client.activeAnnouncement, null);
  const acked = await waitFor(
    async () => {
      const r = await server.api("GET", "/api/broadcasts?limit=1");
      const b = r.body.broadcasts?.[0];
      return b && b.id === id && b.acknowledgements === 1 ? b : null;
    },
    { what: "acknowledgements: 1" },
  );
  assert.equal(acked.active, true);

  // Reconnect: `active_broadcast` would come right after `connected`, before anything
  // the client asks; so once a ping round trip is done, it has not come.
  const frames = record(client, ["frame"]);
  const again = nextEvent(client, "connected");
  client.reconnect();
  await again;
  await client.ping();
  assert.deepEqual(
    frames.of("frame").map((f) => f.type).filter((t) => t.endsWith("broadcast")),
    [],
    "no active_broadcast for an acknowledged announcement",
  );

  // Control: another user, who has not acknowledged it, does get it on connect.
  const other = new Herald({ url: server.wsUrl, token: await server.token("bob") });
  t.after(() => other.close());
  const offered = nextEvent(other, "announcement");
  await other.connect();
  const [b, frame] = await offered;
  assert.equal(frame.type, "active_broadcast");
  assert.equal(b.id, id);
});

test("getActiveAnnouncement asks again, and broadcast_cleared reaches onAnnouncementCleared", { timeout: 20000 }, async (t) => {
  const server = await startServer();
  t.after(() => server.dispose());
  const client = new Herald({ url: server.wsUrl, token: await server.token("carol") });
  t.after(() => client.close());
  await client.connect();
  const created = await server.api("POST", "/api/broadcasts", { message: "maintenance at 22:00", type: "warning" });
  assert.equal(created.status, 201);
  await waitFor(() => client.activeAnnouncement?.id === created.body.id, { what: "new_broadcast" });

  const asked = nextEvent(client, "announcement");
  assert.equal(client.getActiveAnnouncement(), true);
  const [b, frame] = await asked;
  assert.equal(frame.type, "active_broadcast");
  assert.equal(b.message_type, "warning");

  const cleared = nextEvent(client, "announcementCleared");
  let calls = 0;
  client.onAnnouncementCleared(() => calls++);
  const r = await server.api("POST", "/api/broadcasts/clear");
  assert.equal(r.body.cleared, true);
  const f = await cleared;
  assert.equal(f.type, "broadcast_cleared");
  assert.equal(calls, 1);
  assert.equal(client.activeAnnouncement, null);
});

test("acknowledging an unknown announcement surfaces the server's not_found as an error event", { timeout: 20000 }, async (t) => {
  const server = await startServer();
  t.after(() => server.dispose());
  const client = new Herald({ url: server.wsUrl, token: await server.token("dave") });
  t.after(() => client.close());
  await client.connect();
  const err = nextEvent(client, "error");
  client.acknowledge("no-such-announcement");
  const e = await err;
  assert.equal(e.code, "not_found");
});
