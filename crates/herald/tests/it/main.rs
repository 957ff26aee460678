//! herald's black-box integration tests: one binary, a file per area.

mod support;

mod admin_api;
mod announcements;
mod backend;
mod bad_input;
mod batch;
mod channels;
mod cli;
mod compression;
mod fanout;
mod hardening;
mod hostile;
mod idempotency;
mod jwt_keys;
mod lifecycle;
mod limits;
mod metrics;
mod openapi;
mod presence;
mod redis_cluster;
mod refusals;
mod relay;
mod revoke;
mod scale_out;
mod sse;
mod sync;
mod tls;
mod webhooks;
