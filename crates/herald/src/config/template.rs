//! The commented default configuration printed by `herald genconfig`. A test keeps it
//! equal to `Config::default()`, so the documentation cannot drift from the code.

pub const DEFAULT_TOML: &str = r#"# herald configuration. Every key is optional; these are the defaults.
# Precedence: this file < HERALD_… environment variables (`__` nests, e.g.
# HERALD_AUTH__MODE=none) < command-line flags.

# Address to listen on (also --listen / HERALD_LISTEN).
listen = "127.0.0.1:8080"
# Where generated secrets (hmac_secret, api_key) and the SQLite store live (also --data-dir).
data_dir = "./herald-data"
# Name of this node in `connected` frames and /api/stats; empty = host name.
node_name = ""
# Origins allowed to open browser WebSockets and /sse streams (and to publish and ack
# over HTTP with a user's token: CORS). Empty = same origin as the server only;
# ["*"] = any origin (write it out on purpose). Entries look like "https://app.example".
allowed_origins = []
# Load balancers whose Forwarded / X-Forwarded-For / -Proto / -Host headers are believed
# (addresses or CIDRs, e.g. ["10.0.0.0/8"]): per-IP caps, logs and the same-origin check
# then use the client's address and scheme. Empty = believe no one.
trusted_proxies = []
# On SIGTERM/SIGINT: close every client with 1001 and wait at most this long.
shutdown_timeout_s = 10

[auth]
# "jwt" (default) or "none" (anonymous connections, for public feeds).
mode = "jwt"
# HS256 secret (>= 32 bytes). Unset = generated once into data_dir/hmac_secret.
# hmac_secret = "…"
# RS256/ES256 public key (PEM). When set, only that algorithm is accepted.
# public_key_file = "/etc/herald/jwt.pub.pem"
# Checked only when set.
# issuer = "https://auth.example"
# audience = "herald"
# Clock skew tolerated on exp/nbf, in seconds (at most 30).
leeway_s = 5

[api]
# Keys accepted as `Authorization: Bearer <key>` (or X-API-Key) on the HTTP API, in
# addition to the generated data_dir/api_key. Each at least 16 characters.
keys = []

[ws]
# Server WebSocket Ping interval.
heartbeat_s = 25
# Close a connection that sent nothing (not even a Pong) for this long.
idle_timeout_s = 60
# Largest inbound message after reassembly; bigger closes with 1009.
max_message_bytes = 65536
# Outbound queue per connection, in messages and in bytes (the batch being written
# counts); overflow closes with 4000. A publication whose frame is larger than
# queue_bytes is refused (413 / too_large): it could never be delivered.
queue_messages = 256
queue_bytes = 1048576
# Inbound messages per connection: sustained rate and burst. Over it: `error`
# rate_limited; still over it after rate_limit_close_after_s: close 1008.
rate_per_s = 50
rate_burst = 100
rate_limit_close_after_s = 10
# Channel subscriptions per connection.
max_subscriptions = 1000
# A socket that accepts no bytes for this long is closed (counted as a slow consumer).
write_timeout_s = 30
# `publish` frames one connection may have waiting for their answer (the window of a
# pipelined backend publisher); past it a publish gets `error` rate_limited.
max_in_flight = 1000
# Worker threads HTTP and WebSocket connections live on, each connection on one for
# its life; a publication crosses to each worker once (not once per recipient).
# 0: one per core this process may run on (its CPU affinity counts); 1 (or one core):
# none, connections run on the main runtime. Off by default for now: on a 2-core
# machine it measured slower (docs/benchmarks.md). Needs a restart.
workers = 1
# Server-side subscriptions: channels every client connection is subscribed to on
# connect (each answered by `subscribed` after `connected`, checked against the
# namespace rules). `{user}` is the connection's user id, e.g. ["news", "sync:{user}"].
# A token's `channels` claim adds its own.
subscribe_on_connect = []

[ws.compression]
# permessage-deflate (RFC 7692) for clients that offer it. Each publication is
# compressed once for all of them; a namespace may say `compression = true|false`
# for its channels (unset: follow `enabled`, which also covers users, groups, all).
enabled = false
# Frames whose payload is shorter than this go uncompressed.
threshold_bytes = 512
# zlib level: 1 (fastest) to 9 (smallest).
level = 6

[limits]
# Open connections per user and per client IP; over it the upgrade gets HTTP 429.
connections_per_user = 100
connections_per_ip = 1000
# Largest HTTP API request body; bigger gets 413.
http_body_bytes = 1048576
# Time allowed for a request head / TLS handshake (slowloris guard).
handshake_timeout_s = 10
# Time allowed for a request body once the head is in; slower gets 408. Credentials are
# checked before any body is read.
http_body_timeout_s = 10
# Open HTTP (non-WebSocket) connections per node and per client IP; over it the
# connection is refused at accept (trusted proxies are exempt from the per-IP cap).
http_connections = 10000
http_connections_per_ip = 256
# History held by all channels of this node together (bytes); past it the oldest is
# evicted first and those channels answer `recovered: false`.
history_bytes = 67108864
# Channels with history one user's clients may create by publishing.
channels_per_user = 100

[tls]
# Both set = serve HTTPS and wss:// with rustls. Neither = plain HTTP.
# cert_file = "/etc/herald/cert.pem"
# key_file = "/etc/herald/key.pem"

[broker]
# "memory://": one node. Several nodes share one Redis (docs/scaling.md):
# "redis://host:6379", "redis://:password@host:6379/0", or "rediss://…" for TLS;
# or a Redis Cluster (7+): "redis+cluster://host:7000,host:7001" (seed nodes).
url = "memory://"
# Prefix of every Redis key and channel herald uses.
prefix = "herald"

[store]
# Empty = sqlite://<data_dir>/herald.db; or postgres://user@host/db.
url = ""

[presence]
# A user is online while any connection is up, and offline only after this long
# without one (also when leaving a channel with presence), so reloads do not flap.
grace_ms = 2000
# Also keep <broker.prefix>:online:<user id> in Redis while the user is online (after the
# grace) and PUBLISH user_online / user_offline (JSON, as the webhooks send them) on
# <broker.prefix>:presence, once per cluster. Needs a Redis broker.
redis_keys = false

# Channel namespaces. A channel is `namespace:rest`, or just `rest` in `default`.
#   subscribe      "any" (any connection) | "owner" (the rest is exactly the user's id:
#                  sync:42 for user 42, never sync:420 or sync:42.tv) | "admin" (admin tokens)
#   publish        who may publish from a client: "none" | "owner" | "any"
#                  (the HTTP API may always publish)
#   history_size   publications kept per channel for recovery with `since` (0 = none)
#   history_ttl_s  how long they stay recoverable
#   presence       track subscribers; send `presence` join/leave frames
#   slow_consumer  "disconnect" (close 4000, client recovers) | "drop_oldest" (latest wins)
#   compression    true | false: permessage-deflate for this namespace's publications
#                  (unset: follow ws.compression.enabled)
#   latest_on_subscribe  true: the channel's last publication follows `subscribed` even
#                  without `since` (what is playing now, the current score); needs history
# `default` and `sync` are built in; redefine them here to change them, and add more
# with [namespaces.NAME].
[namespaces.default]
subscribe = "any"
publish = "none"
history_size = 100
history_ttl_s = 300
presence = false
slow_consumer = "disconnect"
latest_on_subscribe = false

# Cross-device sync (seed 002): each user's devices on sync:<user id>. Clients publish
# watchlist_update, progress_update and device_command events, validated and relayed
# to the user's other devices.
[namespaces.sync]
subscribe = "owner"
publish = "owner"
history_size = 100
history_ttl_s = 300
presence = true
slow_consumer = "disconnect"
latest_on_subscribe = false

[relay]
# Upstream device events (seed 002): other systems PUBLISH JSON events on Redis channels
# such as user.42.sync; herald validates them, converts position_seconds/duration_seconds,
# and relays them to sync:42, leaving out the sending device (`device_id`). Empty = off.
redis_url = ""
# The Redis pattern; its one `*` is the user id.
redis_pattern = "user.*.sync"
# Or from NATS (one bus or the other): nats://host:port. Each user's events are relayed
# by one node of the cluster, in order, with a fallback if that node misses one.
nats_url = ""
# The NATS subject; its one `*` token is the user id (so user ids without dots).
nats_subject = "user.*.sync"

[webhooks]
# Presence events POSTed as JSON ({"event","user_id","conn_id"?,"node","at"}) to this
# URL, each once per cluster, signed with X-Herald-Signature: t=<unix>,v1=<hex of
# HMAC-SHA256(secret, "<t>.<body>")>. Empty = off. Needs a restart.
url = ""
# Required with url, at least 16 characters.
secret = ""
# Any of user_online, user_offline (after the presence grace), connection_open,
# connection_close.
events = ["user_online", "user_offline"]
# One attempt's deadline; a failed attempt (no answer, 5xx, 408, 429) is retried with
# backoff (0.5 s, 1 s, 2 s … at most 30 s) up to max_attempts, then given up (counted).
timeout_ms = 5000
max_attempts = 6
# Events waiting to be sent; when full, new events are dropped (counted).
queue = 10000

[log]
# "pretty" or "json" (also --log-format).
format = "pretty"
# A tracing filter such as "info" or "herald=debug" (also --log-level / HERALD_LOG).
level = "info"

[metrics]
# GET /metrics (Prometheus text format) asks for an API key or admin token unless this
# is true (a scraper on a trusted network). Applies on SIGHUP.
public = false
# Serve /metrics (and /healthz, /readyz) on this address instead, e.g. "10.0.0.5:9090"
# on an internal interface; empty: on the main listener. Needs a restart.
listen = ""
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn template_is_the_defaults() {
        let parsed: Config = toml::from_str(DEFAULT_TOML).unwrap();
        assert_eq!(parsed, Config::default());
        parsed.validate().unwrap();
    }
}
