// Token refresh: a short-lived token is replaced before it expires (the connection stays
// up past its exp), and without refresh the server closes with 4002 and the client
// reconnects with a fresh token from getToken.

import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { Herald, decodeJwtPayload } from "../src/herald.js";
import { startServer, waitFor, nextEvent, record } from "./server.mjs";

// The server tolerates `leeway_s` past exp before it closes with 4002: 1 s here.
const env = { HERALD_AUTH__LEEWAY_S: "1" };
const TTL = "8s";

describe("token refresh", { concurrency: true }, () => {
  test("a token refreshed before exp keeps the same connection open past the first token's expiry", { timeout: 30000 }, async (t) => {
    const server = await startServer({ env });
    t.after(() => server.dispose());
    const minted = [];
    const getToken = async () => {
      const token = await server.token("alice", { ttl: TTL });
      minted.push(token);
      return token;
    };
    const client = new Herald({ url: server.wsUrl, getToken, refreshBeforeS: 5, backoff: { initialMs: 50, maxMs: 200 } });
    t.after(() => client.close());
    const log = record(client, ["connected", "reconnecting", "disconnected", "error"]);
    await client.connect();
    const connId = client.connId;
    const firstExp = decodeJwtPayload(minted[0]).exp;

    // exp + leeway + a margin: the first token is long dead by then.
    const until = (firstExp + 1) * 1000 + 1500;
    await waitFor(() => Date.now() > until, { timeoutMs: 15000, intervalMs: 100, what: "the first token's expiry" });
    await client.ping(); // still answered on the same connection
    assert.equal(client.connId, connId, "no reconnect happened");
    assert.equal(log.of("connected").length, 1);
    assert.deepEqual(log.of("reconnecting"), []);
    assert.deepEqual(log.of("disconnected"), []);
    assert.deepEqual(log.of("error"), [], "the server accepted every refresh");
    assert.ok(minted.length >= 2, `refreshed with a new token (${minted.length} minted)`);
    assert.equal(client.token, minted.at(-1));
    assert.ok(decodeJwtPayload(client.token).exp > firstExp);
  });

  test("without refresh the server closes with 4002; the client reconnects with a fresh token", { timeout: 30000 }, async (t) => {
    const server = await startServer({ env });
    t.after(() => server.dispose());
    const minted = [];
    const getToken = async () => {
      const token = await server.token("bob", { ttl: TTL });
      minted.push(token);
      return token;
    };
    const client = new Herald({ url: server.wsUrl, getToken, refreshBeforeS: null, backoff: { initialMs: 50, maxMs: 200 } });
    t.after(() => client.close());
    const log = record(client, ["connected", "reconnecting", "disconnected"]);
    await client.connect();
    const connId = client.connId;
    assert.equal(minted.length, 1);

    const closed = await nextEvent(client, "reconnecting", { timeoutMs: 15000 });
    assert.equal(closed.code, 4002, `closed with ${closed.code} ${closed.reason}`);
    await waitFor(() => log.of("connected").length === 2, { what: "the reconnect" });
    assert.equal(minted.length, 2, "a fresh token was fetched for the reconnect");
    assert.equal(client.token, minted[1]);
    assert.notEqual(client.connId, connId);
    assert.deepEqual(log.of("disconnected"), []);
  });

  test("with a fixed token and no getToken, 4002 stops the client (it cannot get a valid token)", { timeout: 30000 }, async (t) => {
    const server = await startServer({ env });
    t.after(() => server.dispose());
    const client = new Herald({ url: server.wsUrl, token: await server.token("carol", { ttl: "3s" }), backoff: { initialMs: 50 } });
    t.after(() => client.close());
    const log = record(client, ["reconnecting"]);
    await client.connect();
    const gone = await nextEvent(client, "disconnected", { timeoutMs: 15000 });
    assert.equal(gone.code, 4002);
    assert.equal(gone.byServer, true);
    assert.equal(client.state, "closed");
    assert.deepEqual(log.of("reconnecting"), []);
  });

  test("a refused refresh (another user's token) is an error event; the connection stays", { timeout: 20000 }, async (t) => {
    const server = await startServer({ env });
    t.after(() => server.dispose());
    let user = "dave";
    const client = new Herald({ url: server.wsUrl, getToken: () => server.token(user), refreshBeforeS: null });
    t.after(() => client.close());
    await client.connect();
    user = "mallory";
    const err = nextEvent(client, "error");
    await client.refreshToken();
    const e = await err;
    assert.equal(e.code, "forbidden");
    await client.ping();
    assert.equal(client.state, "connected");
  });
});
