// A test double of the browser's EventSource for Node 20 (which has none), over fetch
// streaming: enough of the HTML spec's "server-sent events" for the client's SSE
// transport to be tested in Node against a real herald. The real EventSource is
// exercised in headless Chromium (tests/browser/sse.test.mjs).
//
// What it does like a browser: `event:`/`data:`/`id:`/`retry:` fields and comments,
// one event per blank line, `lastEventId` kept across events and sent as
// `Last-Event-ID` on its own reconnects; a response that is not 200 text/event-stream
// fails the connection (readyState CLOSED, one `error`, no reconnect); a network error
// or the end of the stream is an `error` and a reconnect after `retry` ms (3000 by
// default) unless close() was called. `FakeEventSource.instances` lists every one made;
// a test may set `FakeEventSource.beforeConnect = async (es) => …` to hold connections.

export class FakeEventSource extends EventTarget {
  static CONNECTING = 0;
  static OPEN = 1;
  static CLOSED = 2;
  /** Every instance, in the order made. */
  static instances = [];
  /** Awaited before each connection is made (a test's gate), or null. */
  static beforeConnect = null;

  #abort = null;
  #retryMs = 3000;
  #lastEventId = "";

  constructor(url, init = {}) {
    super();
    this.url = String(url);
    this.withCredentials = Boolean(init?.withCredentials);
    this.readyState = FakeEventSource.CONNECTING;
    this.onopen = null;
    this.onmessage = null;
    this.onerror = null;
    /** The request headers of each connection made, for tests to look at. */
    this.requests = [];
    FakeEventSource.instances.push(this);
    queueMicrotask(() => this.#connect());
  }

  get CONNECTING() {
    return 0;
  }
  get OPEN() {
    return 1;
  }
  get CLOSED() {
    return 2;
  }

  close() {
    this.readyState = FakeEventSource.CLOSED;
    this.#abort?.abort();
  }

  #fire(ev) {
    this.dispatchEvent(ev);
    const handler = this[`on${ev.type}`];
    if (typeof handler === "function") handler.call(this, ev);
  }

  async #connect() {
    if (this.readyState === FakeEventSource.CLOSED) return;
    await FakeEventSource.beforeConnect?.(this);
    if (this.readyState === FakeEventSource.CLOSED) return;
    const ctrl = new AbortController();
    this.#abort = ctrl;
    const headers = { accept: "text/event-stream", "cache-control": "no-cache" };
    if (this.#lastEventId !== "") headers["last-event-id"] = this.#lastEventId;
    this.requests.push(headers);
    let res;
    try {
      res = await fetch(this.url, { headers, signal: ctrl.signal });
    } catch {
      this.#reconnectLater();
      return;
    }
    if (this.readyState === FakeEventSource.CLOSED) {
      res.body?.cancel().catch(() => {});
      return;
    }
    const type = res.headers.get("content-type") ?? "";
    if (res.status !== 200 || !/^text\/event-stream\b/i.test(type)) {
      // "Fail the connection": no reconnect.
      this.status = res.status;
      res.body?.cancel().catch(() => {});
      this.readyState = FakeEventSource.CLOSED;
      this.#fire(new Event("error"));
      return;
    }
    this.readyState = FakeEventSource.OPEN;
    this.#fire(new Event("open"));
    try {
      await this.#read(res.body);
    } catch {
      /* aborted, or the network went away */
    }
    this.#reconnectLater();
  }

  #reconnectLater() {
    if (this.readyState === FakeEventSource.CLOSED) return;
    this.readyState = FakeEventSource.CONNECTING;
    this.#fire(new Event("error"));
    if (this.readyState === FakeEventSource.CLOSED) return;
    setTimeout(() => this.#connect(), this.#retryMs);
  }

  async #read(body) {
    const decoder = new TextDecoder();
    let buf = "";
    let data = [];
    let event = "";
    let first = true;
    const line = (l) => {
      if (l === "") {
        if (data.length > 0 && this.readyState !== FakeEventSource.CLOSED) {
          const ev = new MessageEvent(event || "message", {
            data: data.join("\n"),
            lastEventId: this.#lastEventId,
            origin: new URL(this.url).origin,
          });
          this.#fire(ev);
        }
        data = [];
        event = "";
        return;
      }
      if (l.startsWith(":")) return; // a comment (herald's heartbeat)
      const at = l.indexOf(":");
      const field = at === -1 ? l : l.slice(0, at);
      let value = at === -1 ? "" : l.slice(at + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "data") data.push(value);
      else if (field === "event") event = value;
      else if (field === "id" && !value.includes("\0")) this.#lastEventId = value;
      else if (field === "retry" && /^\d+$/.test(value)) this.#retryMs = Number(value);
    };
    for await (const chunk of body) {
      if (this.readyState === FakeEventSource.CLOSED) return;
      buf += decoder.decode(chunk, { stream: true });
      if (first && buf.charCodeAt(0) === 0xfeff) buf = buf.slice(1);
      first = false;
      for (;;) {
        const m = /\r\n|\r|\n/.exec(buf);
        // A lone \r at the end may be the first half of \r\n: wait for more.
        if (!m || (m[0] === "\r" && m.index === buf.length - 1)) break;
        line(buf.slice(0, m.index));
        buf = buf.slice(m.index + m[0].length);
      }
    }
  }
}
