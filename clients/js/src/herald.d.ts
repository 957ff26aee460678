// Type definitions for @herald/client (src/herald.js).
// Frame shapes follow DESIGN.md §3 and docs/protocol.md of the herald server.

// ------------------------------------------------------------------ server → client frames

/** Error codes of `error` frames. */
export type ErrorCode =
  | "bad_request"
  | "unauthorized"
  | "forbidden"
  | "not_found"
  | "rate_limited"
  | "too_large"
  | "internal";

/** A position in a channel's history. Epochs are 16 hex digits. */
export interface StreamPosition {
  offset: number;
  epoch: string;
}

/** The first frame after the upgrade. */
export interface ConnectedFrame {
  type: "connected";
  conn_id: string;
  user_id: string;
  node: string;
  heartbeat_s: number;
  message: string;
}

/**
 * A publication: on a subscribed channel (`channel`, and `offset`/`epoch` when the
 * namespace keeps history), or sent to this user / group / everyone (no `channel`).
 */
export interface PubFrame<T = unknown> {
  type: "pub";
  channel?: string;
  offset?: number;
  epoch?: string;
  data: T;
}

/** Reply to `subscribe`; missed publications follow as `pub` frames when `recovered`. */
export interface SubscribedFrame {
  type: "subscribed";
  channel: string;
  offset: number;
  epoch: string;
  recovered: boolean;
  ref?: unknown;
}

/** Reply to `unsubscribe`, or sent when a refreshed token no longer allows the channel. */
export interface UnsubscribedFrame {
  type: "unsubscribed";
  channel: string;
  ref?: unknown;
}

/** Reply to a client `publish` (on SSE: the answer of `POST /api/publish`, shaped the same). */
export interface AckFrame {
  type: "ack";
  ref: unknown;
  /** On channels with history. */
  offset?: number;
  /** On SSE, on channels with history: the channel's epoch. */
  epoch?: string;
  /** On SSE: how many connections on this node it was queued for. */
  queued?: number;
}

export interface ErrorFrame {
  type: "error";
  code: ErrorCode;
  message: string;
  ref?: unknown;
}

export interface PresenceFrame {
  type: "presence";
  channel: string;
  event: "join" | "leave";
  user_id: string;
}

export interface PongFrame {
  type: "pong";
}

/**
 * `count` publications of `channel` right after `offset` will not arrive on this
 * connection (drop_oldest dropped them, or other nodes' could not be had). `offset` and
 * `epoch` only on namespaces with history: they are the `since` that recovers them.
 */
export interface SkippedFrame {
  type: "skipped";
  channel: string;
  count: number;
  offset?: number;
  epoch?: string;
}

/** Announcement types (`POST /api/broadcasts` `type`). */
export type BroadcastType = "info" | "warning" | "alert" | (string & {});

/** An announcement (seed 003's field names). */
export interface Broadcast {
  id: string;
  message: string;
  message_type: BroadcastType;
  created_by: string;
  /** RFC 3339, UTC. */
  created_at: string;
}

export interface NewBroadcastFrame {
  type: "new_broadcast";
  broadcast: Broadcast;
}

export interface ActiveBroadcastFrame {
  type: "active_broadcast";
  broadcast: Broadcast;
}

export interface BroadcastClearedFrame {
  type: "broadcast_cleared";
  message: string;
}

/** Every frame the server sends. */
export type ServerFrame =
  | ConnectedFrame
  | PubFrame
  | SubscribedFrame
  | UnsubscribedFrame
  | AckFrame
  | ErrorFrame
  | PresenceFrame
  | PongFrame
  | SkippedFrame
  | NewBroadcastFrame
  | ActiveBroadcastFrame
  | BroadcastClearedFrame;

// ------------------------------------------------------------------ client → server frames

export type ClientFrame =
  | { type: "ping" }
  | { type: "subscribe"; channel: string; since?: StreamPosition; ref?: unknown }
  | { type: "unsubscribe"; channel: string; ref?: unknown }
  | { type: "publish"; channel: string; data: unknown; ref?: unknown; idempotency_key?: string }
  | { type: "refresh"; token: string }
  | { type: "acknowledge_broadcast"; broadcast_id: string }
  | { type: "get_active_broadcast" };

// ------------------------------------------------------------------ sync events (seed 002)

export interface WatchlistUpdate {
  type: "watchlist_update";
  content_id: string;
  action: string;
  [extra: string]: unknown;
}

export interface ProgressUpdate {
  type: "progress_update";
  content_id: string;
  /** Seconds. */
  position: number;
  /** Seconds. */
  duration: number;
  [extra: string]: unknown;
}

export interface DeviceCommand {
  type: "device_command";
  command: string;
  /** Only connections whose token's `device` matches get it. */
  target_device?: string;
  [extra: string]: unknown;
}

export type SyncEvent = WatchlistUpdate | ProgressUpdate | DeviceCommand;

/** Where a sync event sat in `sync:<user>` (no offset for device commands). */
export interface SyncMeta {
  channel?: string;
  offset?: number;
  epoch?: string;
}

// ------------------------------------------------------------------ client events

export type Listener<A extends unknown[]> = (...args: A) => void;

/** Maps an event name to the tuple of its listener's arguments. */
export type EventMap = { [event: string]: unknown[] };

/** The client's own tiny event emitter. `on` and `once` return an unsubscribe function. */
export declare class Emitter<E extends EventMap = EventMap> {
  on<K extends keyof E & string>(event: K, listener: Listener<E[K]>): () => void;
  once<K extends keyof E & string>(event: K, listener: Listener<E[K]>): () => void;
  off<K extends keyof E & string>(event: K, listener?: Listener<E[K]>): this;
  emit<K extends keyof E & string>(event: K, ...args: E[K]): boolean;
  listenerCount(event: keyof E & string): number;
}

export declare class HeraldError extends Error {
  constructor(code: string, message: string, frame?: ErrorFrame);
  /**
   * A server `ErrorCode`, or the client's own: `not_connected`, `disconnected` (closed
   * before the reply), `timeout`, `token` (getToken failed), `bad_frame`, `bad_url`.
   */
  code:
    | ErrorCode
    | "not_connected"
    | "disconnected"
    | "timeout"
    | "token"
    | "bad_frame"
    | "bad_url"
    | "not_supported"
    | (string & {});
  /** The server's `error` frame, if any. */
  frame?: ErrorFrame;
  ref?: unknown;
  /** Set on subscription errors. */
  channel?: string;
  /** Set when `connect()` is rejected because the client stopped. */
  closeCode?: number;
  /** Set on an HTTP API refusal (SSE transport: publish, acknowledge): the status code. */
  status?: number;
}

/** `websocket` (`GET /ws`) or `sse` (`GET /sse` with an EventSource, sends over the HTTP API). */
export type Transport = "websocket" | "sse";

export interface TransportEvent {
  transport: Transport;
  /** null for the first connection. */
  previous: Transport | null;
}

export type ConnectionState = "idle" | "connecting" | "connected" | "reconnecting" | "closed";

export interface ConnectedEvent extends ConnectedFrame {
  /** False for the first connection of this client, true after a reconnect. */
  reconnected: boolean;
}

export interface DisconnectedEvent {
  /** 1000 after close(); 1008 or 4004 from the server; 4002 when no new token can be had. */
  code: number;
  reason: string;
  /** True when the server ended it (do not reconnect with the same credentials). */
  byServer: boolean;
}

export interface ReconnectingEvent {
  /** 1, 2, … (0 for an explicit reconnect()). */
  attempt: number;
  delayMs: number;
  /** The close code that caused it (1006 for a dead or refused connection, 0 for a getToken failure). */
  code: number;
  reason: string;
}

export interface ResyncEvent {
  code: 4003;
  reason: string;
}

export interface RecoveredEvent {
  channel: string;
  since: StreamPosition;
  offset: number;
  epoch: string;
}

/** Publications may have been missed: reload the channel's state. */
export interface LostEvent {
  channel: string;
  reason: "epoch changed" | "history gone";
  /** The position the client asked to recover from (absent for a live epoch change). */
  since?: StreamPosition;
  offset: number;
  epoch: string;
}

/**
 * Publications that will not come on this connection. With `offset`/`epoch` the client
 * is already re-subscribing with `since` (`recovered` or `lost` follows); without them
 * nothing can replay them: reload the channel's state.
 */
export interface SkippedEvent {
  channel: string;
  count: number;
  /** The last offset before the missed ones. */
  offset?: number;
  epoch?: string;
}

export interface UnsubscribedEvent extends UnsubscribedFrame {
  byServer: boolean;
}

export type HeraldEvents = {
  state: [{ state: ConnectionState; previous: ConnectionState }];
  connected: [ConnectedEvent];
  disconnected: [DisconnectedEvent];
  reconnecting: [ReconnectingEvent];
  error: [HeraldError];
  resync: [ResyncEvent];
  frame: [ServerFrame];
  publication: [PubFrame];
  subscribed: [SubscribedFrame];
  recovered: [RecoveredEvent];
  lost: [LostEvent];
  skipped: [SkippedEvent];
  presence: [PresenceFrame];
  announcement: [Broadcast, NewBroadcastFrame | ActiveBroadcastFrame];
  announcementCleared: [BroadcastClearedFrame];
  token: [string];
  transport: [TransportEvent];
};

export type SubscriptionEvents = {
  subscribed: [SubscribedFrame];
  publication: [PubFrame];
  recovered: [RecoveredEvent];
  lost: [LostEvent];
  skipped: [SkippedEvent];
  presence: [PresenceFrame];
  unsubscribed: [UnsubscribedEvent];
  error: [HeraldError];
};

export type SyncEvents = {
  progress: [ProgressUpdate, SyncMeta];
  watchlist: [WatchlistUpdate, SyncMeta];
  command: [DeviceCommand, SyncMeta];
  other: [Record<string, unknown>, SyncMeta];
  recovered: [RecoveredEvent];
  lost: [LostEvent];
  skipped: [SkippedEvent];
  error: [HeraldError];
};

// ------------------------------------------------------------------ classes

export interface BackoffOptions {
  /** First delay (default 500). */
  initialMs?: number;
  /** Cap (default 30000). */
  maxMs?: number;
  /** Growth per attempt (default 2). */
  factor?: number;
  /** The delay is reduced by up to this fraction at random (default 0.5). */
  jitter?: number;
  /** A connection that stayed up this long resets the backoff (default 5000). */
  resetAfterMs?: number;
}

/**
 * What the client needs of a WebSocket instance (the browser's, Node's, or the `ws`
 * package's): `send`, `close`, and the `onmessage` / `onclose` / `onerror` properties,
 * which the client assigns.
 */
export interface WebSocketLike {
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

/** What the client needs of an EventSource (the browser's): addEventListener and close. */
export interface EventSourceLike {
  addEventListener(type: string, listener: (event: { type: string; data?: unknown }) => void): void;
  close(): void;
}

export interface HeraldOptions {
  /** e.g. `wss://example.com/ws`; the token is added as `?token=`. */
  url: string;
  /** A JWT. */
  token?: string;
  /** Returns a fresh JWT: used when there is none, before it expires, and after 4001/4002. */
  getToken?: () => string | Promise<string>;
  /** A WebSocket constructor (default: `globalThis.WebSocket`; may be absent with `transports: ["sse"]`). */
  WebSocket?: new (url: string, protocols?: string | string[]) => WebSocketLike;
  backoff?: BackoffOptions;
  /** The connection is dead when nothing arrived for this long (default 2 × heartbeat_s). */
  heartbeatTimeoutMs?: number;
  /** `{"type":"ping"}` period (default min(heartbeat_s, heartbeatTimeoutMs / 2)). */
  pingIntervalMs?: number;
  /** Time allowed for the upgrade and the `connected` frame (default 10000). */
  connectTimeoutMs?: number;
  /** Refresh the token this many seconds before `exp` (default 30; null or false: never). */
  refreshBeforeS?: number | null | false;
  /** Reject a publish without ack after this long (default 10000). */
  publishTimeoutMs?: number;
  /**
   * The transports to try, in order (default `["websocket", "sse"]`). `sse` is used when
   * an EventSource exists (browsers) and the ones before it could not open.
   */
  transports?: Transport[];
  /** An EventSource constructor (default: `globalThis.EventSource`). */
  EventSource?: new (url: string, init?: { withCredentials?: boolean }) => EventSourceLike;
  /** A fetch function for the HTTP API on SSE (default: `globalThis.fetch`). */
  fetch?: (input: string, init?: any) => Promise<any>;
  /** The `/sse` URL (default: from `url`: ws→http, wss→https, …/ws → …/sse). */
  sseUrl?: string;
  /** The base of the HTTP API on SSE (default: from `url` without its /ws). */
  apiUrl?: string;
  /** EventSource `withCredentials`: cookies on a cross-origin stream (default true). */
  withCredentials?: boolean;
  /**
   * After falling back, how long the fallback is kept for reconnects before the first
   * transport is tried again (default 300000; 0: at every reconnect; Infinity: never).
   */
  transportRetryMs?: number;
}

export interface PublishOptions {
  /** 1–64 characters: a repeat within 5 minutes is acked with the first offset and not delivered. */
  idempotencyKey?: string;
}

export interface SubscribeOptions {
  /** Start from a position saved earlier: missed publications are replayed, or `lost`. */
  since?: StreamPosition;
}

export type SubscriptionState = "subscribing" | "subscribed" | "failed" | "unsubscribed";

export declare class Subscription extends Emitter<SubscriptionEvents> {
  readonly client: Herald;
  readonly channel: string;
  state: SubscriptionState;
  /** The last position seen (`pub` or `subscribed`), or null. Save it to resume later. */
  position: StreamPosition | null;
  readonly offset: number | null;
  readonly epoch: string | null;
  publish<T = unknown>(data: T): Promise<AckFrame>;
  unsubscribe(): void;
}

export declare class Sync extends Emitter<SyncEvents> {
  /** `sync:<user id>`, or null until the user id is known. */
  readonly channel: string | null;
  readonly subscription: Subscription | null;
  /** Subscribes to `sync:<user id>` (the on* helpers do it too). */
  start(): this;
  onProgress(cb: (event: ProgressUpdate, meta: SyncMeta) => void): () => void;
  onWatchlist(cb: (event: WatchlistUpdate, meta: SyncMeta) => void): () => void;
  onCommand(cb: (event: DeviceCommand, meta: SyncMeta) => void): () => void;
  sendProgress(
    contentId: string,
    position: number,
    duration: number,
    extra?: Record<string, unknown>,
  ): Promise<AckFrame>;
  sendWatchlist(contentId: string, action: string, extra?: Record<string, unknown>): Promise<AckFrame>;
  sendCommand(command: string, targetDevice?: string | null, extra?: Record<string, unknown>): Promise<AckFrame>;
}

export declare class Herald extends Emitter<HeraldEvents> {
  constructor(options: HeraldOptions);
  readonly state: ConnectionState;
  readonly connected: boolean;
  readonly connId: string | null;
  readonly userId: string | null;
  readonly node: string | null;
  readonly heartbeatS: number | null;
  readonly token: string | null;
  readonly activeAnnouncement: Broadcast | null;
  readonly subscriptions: Map<string, Subscription>;
  /** The transport of the live connection (or of the last one); null before the first. */
  readonly transport: Transport | null;
  readonly sync: Sync;

  /** Resolves with the `connected` frame; rejects if the client stops first. */
  connect(): Promise<ConnectedFrame>;
  /** Closes with 1000 and stops reconnecting. */
  close(reason?: string): void;
  /** Drops the connection and reconnects now (or starts connecting after close()). */
  reconnect(): void;

  subscribe(channel: string, options?: SubscribeOptions): Subscription;
  getSubscription(channel: string): Subscription | null;
  unsubscribe(channel: string): void;
  /**
   * Resolves with the `ack`; rejects with a HeraldError (server `error`, not_connected,
   * disconnected, timeout). On SSE: `POST /api/publish`, answered the same way.
   */
  publish<T = unknown>(channel: string, data: T, options?: PublishOptions): Promise<AckFrame>;

  /** Round-trip time in ms of one `{"type":"ping"}` (on SSE: of a `GET /healthz`). */
  ping(): Promise<number>;
  /** Sends a raw frame; false when not connected (and always on SSE, which only listens). */
  send(frame: ClientFrame | string): boolean;
  /** Gets a fresh token with getToken and sends `refresh`. */
  refreshToken(): Promise<void>;

  onAnnouncement(cb: (broadcast: Broadcast, frame: NewBroadcastFrame | ActiveBroadcastFrame) => void): () => void;
  onAnnouncementCleared(cb: (frame: BroadcastClearedFrame) => void): () => void;
  /** Sends `acknowledge_broadcast` (queued until connected; on SSE `POST /api/broadcasts/{id}/ack`). */
  acknowledge(broadcastId: string): void;
  /** Sends `get_active_broadcast` (on SSE `GET /api/broadcasts/active`); the answer (if any) comes through onAnnouncement. */
  getActiveAnnouncement(): boolean;
}

/** The payload of a JWT, decoded without verification (null if not a JWT). */
export declare function decodeJwtPayload(token: string): Record<string, unknown> | null;

export default Herald;
