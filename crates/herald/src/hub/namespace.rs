//! From a channel name to its namespace and the rules that apply (DESIGN §4).

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::auth::Identity;
use crate::config::namespaces::DEFAULT;
use crate::config::{CompressionConfig, NamespaceConfig, PublishRule, SubscribeRule};
use crate::protocol::codes::ErrorCode;
use crate::ws::deflate::Policy;

/// The namespaces of a node, resolved once from config.
pub struct Namespaces {
    by_name: BTreeMap<String, Arc<NamespaceConfig>>,
    broadcast: Option<Policy>,
    negotiates: bool,
}

/// A channel name split into its namespace and the rest.
pub struct Resolved<'a> {
    pub namespace: &'a str,
    pub rest: &'a str,
    pub config: Arc<NamespaceConfig>,
}

/// Why a subscription or publication is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// The request itself is malformed (a target, a channel name, a sync event).
    BadRequest(String),
    UnknownNamespace(String),
    Forbidden(&'static str),
    /// The publication's frame could not fit any connection's queue.
    TooLarge(String),
    /// The publishing user already created `limits.channels_per_user` channels.
    ChannelBudget,
    /// The broker could not carry it (a channel with history while Redis is down).
    Unavailable(&'static str),
    /// A repeat of an idempotency key whose first publication is still unanswered.
    InProgress,
}

impl Denied {
    /// The one answer to this refusal, over HTTP (status from the code) and WebSocket.
    pub fn answer(self) -> (ErrorCode, String) {
        match self {
            Denied::BadRequest(why) => (ErrorCode::BadRequest, why),
            Denied::UnknownNamespace(ns) => (
                ErrorCode::NotFound,
                format!("namespace `{ns}` is not configured"),
            ),
            Denied::Forbidden(why) => (ErrorCode::Forbidden, why.to_owned()),
            Denied::TooLarge(why) => (ErrorCode::TooLarge, why),
            Denied::ChannelBudget => (
                ErrorCode::RateLimited,
                "too many channels created by this user; publish to an existing one".to_owned(),
            ),
            Denied::Unavailable(why) => (ErrorCode::Unavailable, why.to_owned()),
            Denied::InProgress => (
                ErrorCode::Conflict,
                "a publication with this idempotency_key is still in progress; retry shortly"
                    .to_owned(),
            ),
        }
    }
}

impl Namespaces {
    /// The namespaces with their compression settled: a namespace's `compression`, or
    /// else `ws.compression.enabled`.
    pub fn new(
        cfg: &BTreeMap<String, NamespaceConfig>,
        compression: &CompressionConfig,
    ) -> Namespaces {
        let policy = compression.policy();
        Namespaces {
            by_name: cfg
                .iter()
                .map(|(k, v)| {
                    let mut v = v.clone();
                    v.deflate = v
                        .compression
                        .unwrap_or(compression.enabled)
                        .then_some(policy);
                    (k.clone(), Arc::new(v))
                })
                .collect(),
            broadcast: compression.enabled.then_some(policy),
            negotiates: compression.enabled || cfg.values().any(|v| v.compression == Some(true)),
        }
    }

    /// How publications to users, groups and everyone (and announcements) are
    /// compressed: `ws.compression` alone says.
    pub fn broadcast_deflate(&self) -> Option<&Policy> {
        self.broadcast.as_ref()
    }

    /// Whether an upgrade may agree to permessage-deflate: something would use it.
    pub fn negotiates_deflate(&self) -> bool {
        self.negotiates
    }

    /// `ns:rest` → namespace `ns`; a name without `:` is in `default`.
    pub fn resolve<'a>(&self, channel: &'a str) -> Result<Resolved<'a>, Denied> {
        let (namespace, rest) = channel.split_once(':').unwrap_or((DEFAULT, channel));
        match self.by_name.get(namespace) {
            Some(config) => Ok(Resolved {
                namespace,
                rest,
                config: config.clone(),
            }),
            None => Err(Denied::UnknownNamespace(namespace.to_owned())),
        }
    }
}

/// `rest` belongs to `user` only when it is exactly the user id (DESIGN §4). There is no
/// prefix rule: user ids may contain `.` and `@`, so `john` must not own `john.doe`.
pub fn owns(user: &str, rest: &str) -> bool {
    rest == user
}

impl Resolved<'_> {
    pub fn may_subscribe(&self, who: &Identity) -> Result<(), Denied> {
        let ok = who.admin
            || match self.config.subscribe {
                SubscribeRule::Any => true,
                SubscribeRule::Owner => owns(&who.user, self.rest),
                SubscribeRule::Admin => false,
            };
        if ok {
            Ok(())
        } else {
            Err(Denied::Forbidden(
                "not allowed to subscribe to this channel",
            ))
        }
    }

    pub fn may_publish(&self, who: &Identity) -> Result<(), Denied> {
        let ok = match self.config.publish {
            PublishRule::None => false,
            PublishRule::Owner => owns(&who.user, self.rest),
            PublishRule::Any => true,
        };
        if ok {
            Ok(())
        } else {
            Err(Denied::Forbidden("clients may not publish to this channel"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::namespaces::builtin;

    fn user(id: &str, admin: bool) -> Identity {
        Identity {
            user: crate::ids::UserId::from(id),
            device: None,
            groups: vec![],
            admin,
            backend: false,
            expires_at: None,
            token: None,
        }
    }

    #[test]
    fn ownership_is_the_whole_user_id() {
        assert!(owns("42", "42"));
        assert!(owns("john.doe", "john.doe"));
        assert!(owns("bob.smith@example.com", "bob.smith@example.com"));
        assert!(!owns("42", "42.tv"));
        assert!(!owns("42", "420"));
        assert!(!owns("42", "42."));
        assert!(!owns("42", "4"));
        assert!(!owns("john", "john.doe"));
        assert!(!owns("bob", "bob.smith@example.com"));
        assert!(!owns("", "x"));
    }

    #[test]
    fn builtin_rules() {
        let ns = Namespaces::new(&builtin(), &CompressionConfig::default());
        let news = ns.resolve("news").unwrap();
        assert_eq!(news.namespace, "default");
        assert!(news.may_subscribe(&user("1", false)).is_ok());
        assert!(news.may_publish(&user("1", false)).is_err());
        let sync = ns.resolve("sync:42").unwrap();
        assert!(sync.may_subscribe(&user("42", false)).is_ok());
        assert!(sync.may_publish(&user("42", false)).is_ok());
        assert!(sync.may_subscribe(&user("420", false)).is_err());
        let dotted = ns.resolve("sync:42.tv").unwrap();
        assert!(dotted.may_subscribe(&user("42", false)).is_err());
        assert!(dotted.may_publish(&user("42", false)).is_err());
        assert!(
            sync.may_subscribe(&user("7", true)).is_ok(),
            "admins may watch any channel"
        );
        assert_eq!(
            ns.resolve("nope:1").err(),
            Some(Denied::UnknownNamespace("nope".into()))
        );
    }
}
