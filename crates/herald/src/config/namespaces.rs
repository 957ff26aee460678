//! Channel namespaces (DESIGN §4): per namespace, who may subscribe and publish, how much
//! history is kept for recovery, presence, and what happens to a slow consumer.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::ws::deflate::Policy;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubscribeRule {
    /// Any authenticated (or anonymous, with `auth.mode = none`) connection.
    Any,
    /// Only the user the channel names: `ns:<user>`, the rest equal to the user id exactly.
    Owner,
    /// Only admin tokens.
    Admin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PublishRule {
    /// Clients may not publish; only the HTTP API can.
    None,
    Owner,
    Any,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SlowConsumerPolicy {
    /// Close with 4000; the client reconnects and recovers with `since`.
    Disconnect,
    /// Keep the connection and drop its oldest queued messages (latest-wins streams).
    DropOldest,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NamespaceConfig {
    pub subscribe: SubscribeRule,
    pub publish: PublishRule,
    /// Publications kept per channel for recovery (0 = no history, no offsets).
    pub history_size: usize,
    /// How long a publication stays recoverable.
    pub history_ttl_s: u64,
    /// Track who is subscribed and send `presence` join/leave frames.
    pub presence: bool,
    pub slow_consumer: SlowConsumerPolicy,
    /// permessage-deflate for this namespace's publications; unset follows
    /// `ws.compression.enabled`.
    pub compression: Option<bool>,
    /// The channel's last publication follows `subscribed` even without `since` (a page
    /// opened mid-stream sees the current state at once); needs history.
    pub latest_on_subscribe: bool,
    /// What `compression` and `ws.compression` come to, filled in where the hub takes
    /// the namespaces in (not a config key).
    #[serde(skip)]
    pub deflate: Option<Policy>,
}

impl Default for NamespaceConfig {
    fn default() -> Self {
        NamespaceConfig {
            subscribe: SubscribeRule::Any,
            publish: PublishRule::None,
            history_size: 100,
            history_ttl_s: 300,
            presence: false,
            slow_consumer: SlowConsumerPolicy::Disconnect,
            compression: None,
            latest_on_subscribe: false,
            deflate: None,
        }
    }
}

impl NamespaceConfig {
    pub fn has_history(&self) -> bool {
        self.history_size > 0 && self.history_ttl_s > 0
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PresenceConfig {
    /// A user goes offline (and leaves channels) only after this long without a
    /// connection, so a page reload does not flap.
    pub grace_ms: u64,
    /// Also keep `<prefix>:online:<user id>` in Redis while the user is online and
    /// publish `user_online` / `user_offline` on `<prefix>:presence` (needs a Redis
    /// broker), for services that read Redis (seed 004).
    pub redis_keys: bool,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        PresenceConfig {
            grace_ms: 2000,
            redis_keys: false,
        }
    }
}

pub const DEFAULT: &str = "default";
pub const SYNC: &str = "sync";

/// What zero configuration ships: `default` (news-style feeds) and `sync` (seed 002).
pub fn builtin() -> BTreeMap<String, NamespaceConfig> {
    let sync = NamespaceConfig {
        subscribe: SubscribeRule::Owner,
        publish: PublishRule::Owner,
        presence: true,
        ..NamespaceConfig::default()
    };
    BTreeMap::from([
        (DEFAULT.to_owned(), NamespaceConfig::default()),
        (SYNC.to_owned(), sync),
    ])
}

/// The largest history a namespace may keep per channel (memory is per channel).
pub const MAX_HISTORY: usize = 100_000;

pub fn validate(namespaces: &BTreeMap<String, NamespaceConfig>, errs: &mut Vec<String>) {
    for (name, ns) in namespaces {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            errs.push(format!(
                "namespaces.{name}: a namespace name is letters, digits, `_` and `-`"
            ));
        }
        if ns.history_size > MAX_HISTORY {
            errs.push(format!(
                "namespaces.{name}.history_size: at most {MAX_HISTORY}, got {}",
                ns.history_size
            ));
        }
        if ns.history_ttl_s > super::MAX_DURATION_S {
            errs.push(format!(
                "namespaces.{name}.history_ttl_s: at most {} seconds (30 days), got {}",
                super::MAX_DURATION_S,
                ns.history_ttl_s
            ));
        }
        if ns.latest_on_subscribe && ns.history_size == 0 {
            errs.push(format!(
                "namespaces.{name}.latest_on_subscribe: needs history_size of at least 1 (the last publication is kept in history)"
            ));
        }
        if ns.history_size > 0 && ns.history_ttl_s == 0 {
            errs.push(format!(
                "namespaces.{name}.history_ttl_s: must be at least 1 when history_size is set"
            ));
        }
    }
}
