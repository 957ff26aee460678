//! `SIGHUP` (DESIGN §11): the config file is read again and what can change live is
//! applied to new connections and requests — API keys, allowed origins, trusted proxies,
//! `[limits]`, `[ws]` limits, namespaces (and the log level, by the caller). What needs
//! a restart (listen, TLS, broker, store, auth, relay, data dir, node name, presence,
//! webhooks, log format, metrics listener, `ws.workers`) keeps its
//! running value, and a change to it is reported so the operator knows.
//!
//! The caller has already validated the new config: an invalid file never gets here,
//! and the running config stays.

use std::sync::Arc;

use crate::auth::api_key::ApiKeys;
use crate::auth::proxy::TrustedProxies;
use crate::config::Config;
use crate::http::AppState;

/// Applies `new` to a running node; returns the keys that changed but need a restart.
/// `data_dir_key` is the generated API key, which is always accepted.
pub fn apply(app: &AppState, data_dir_key: &str, mut new: Config) -> Vec<&'static str> {
    let old = app.cfg();
    let mut restart = Vec::new();
    macro_rules! keep {
        ($($field:ident).+, $name:literal) => {
            if new.$($field).+ != old.$($field).+ {
                restart.push($name);
                new.$($field).+ = old.$($field).+.clone();
            }
        };
    }
    keep!(listen, "listen");
    keep!(data_dir, "data_dir");
    keep!(node_name, "node_name");
    keep!(tls, "tls");
    keep!(broker, "broker");
    keep!(store, "store");
    keep!(auth, "auth");
    keep!(relay, "relay");
    keep!(log.format, "log.format");
    keep!(metrics.listen, "metrics.listen");
    keep!(ws.workers, "ws.workers");
    // The grace period is the presence tracker's, fixed when the hub was built.
    keep!(presence, "presence");
    // The sender and its queue are attached to the hub once, at the start.
    keep!(webhooks, "webhooks");
    app.api_keys.store(Arc::new(ApiKeys::new(
        new.api
            .keys
            .iter()
            .cloned()
            .chain([data_dir_key.to_owned()]),
    )));
    app.proxies
        .store(Arc::new(TrustedProxies::new(&new.trusted_proxies)));
    app.http_caps.set_caps(
        new.limits.http_connections,
        new.limits.http_connections_per_ip,
    );
    app.hub.apply(&new);
    app.cfg.store(Arc::new(new));
    restart
}
