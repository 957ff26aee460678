//! Where the Redis broker keeps things: every key and pub/sub channel name in one place,
//! because a Redis Cluster decides by the name which shard holds it (DESIGN §13).
//!
//! On one Redis (`redis://`) the names are `<prefix>:meta:<channel>` and so on, as they
//! always were. On a Redis Cluster (`redis+cluster://`) a channel's keys and its shard
//! channel carry the channel name as their hash tag (`<prefix>:meta:{<channel>}`), so
//! its offset, its history and its publications live on the shard that owns that slot
//! and the publish script touches one shard only; everything else (the bus, the cluster
//! view, revocations, listing replies) is tagged with the prefix (`{<prefix>}:bus`), one
//! slot, so the multi-key scripts of the cluster view stay on one shard. Channel names
//! cannot contain braces (`[A-Za-z0-9_.:@-]`), so a tag never ends early.

#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
    /// `prefix`, or `{prefix}` on a Redis Cluster: what all non-channel names start with.
    common: String,
    cluster: bool,
}

impl Keys {
    pub fn new(prefix: &str, cluster: bool) -> Keys {
        Keys {
            prefix: prefix.to_owned(),
            common: if cluster {
                format!("{{{prefix}}}")
            } else {
                prefix.to_owned()
            },
            cluster,
        }
    }

    pub fn cluster(&self) -> bool {
        self.cluster
    }

    /// What the names of the bus, the cluster view, revocations and replies start with.
    pub fn common(&self) -> &str {
        &self.common
    }

    fn of_channel(&self, kind: &str, channel: &str) -> String {
        if self.cluster {
            format!("{}:{kind}:{{{channel}}}", self.prefix)
        } else {
            format!("{}:{kind}:{channel}", self.prefix)
        }
    }

    /// A channel's offset and epoch (a hash).
    pub fn meta(&self, channel: &str) -> String {
        self.of_channel("meta", channel)
    }

    /// A channel's history (a stream whose entry ids are the offsets).
    pub fn hist(&self, channel: &str) -> String {
        self.of_channel("hist", channel)
    }

    /// The pub/sub channel (a shard channel on a cluster) a channel's publications travel on.
    pub fn topic(&self, channel: &str) -> String {
        self.of_channel("ch", channel)
    }

    /// The pub/sub channel every node follows: users, groups, everyone, announcements,
    /// orders, questions.
    pub fn bus(&self) -> String {
        format!("{}:bus", self.common)
    }

    /// An idempotency key's record (`scope` from [`super::idempotency::scope`]): on a
    /// channel's shard for a channel publication (the publish script claims it).
    pub fn idem(&self, channel: Option<&str>, scope: &str) -> String {
        match channel {
            Some(c) if self.cluster => format!("{}:idem:{{{c}}}:{scope}", self.prefix),
            _ => format!("{}:idem:{scope}", self.common),
        }
    }

    /// The herald channel a pub/sub channel carries, if it is one of this prefix's.
    pub fn channel_of<'a>(&self, topic: &'a [u8]) -> Option<&'a str> {
        let rest = topic
            .strip_prefix(self.prefix.as_bytes())?
            .strip_prefix(b":ch:")?;
        let rest = if self.cluster {
            rest.strip_prefix(b"{")?.strip_suffix(b"}")?
        } else {
            rest
        };
        std::str::from_utf8(rest).ok()
    }

    /// The publishing command: a shard channel's on a cluster, so a publication travels
    /// to the shard of its channel and the nodes subscribed there, not to every shard.
    pub fn publish_command(&self) -> &'static str {
        if self.cluster {
            "SPUBLISH"
        } else {
            "PUBLISH"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::cluster_routing::Slot;

    #[test]
    fn one_redis_keeps_the_names_it_always_had() {
        let k = Keys::new("herald", false);
        assert_eq!(k.meta("news"), "herald:meta:news");
        assert_eq!(k.hist("a:b"), "herald:hist:a:b");
        assert_eq!(k.topic("news"), "herald:ch:news");
        assert_eq!(k.bus(), "herald:bus");
        assert_eq!(k.idem(Some("news"), "s"), "herald:idem:s");
        assert_eq!(k.channel_of(b"herald:ch:a:b"), Some("a:b"));
        assert_eq!(k.channel_of(b"other:ch:a"), None);
    }

    #[test]
    fn on_a_cluster_a_channel_lives_on_one_slot_and_the_rest_on_another() {
        let k = Keys::new("herald", true);
        let slot = |s: &str| Slot::for_key(s.as_bytes());
        let ch = "ticker:eth";
        let here = slot(&k.meta(ch));
        for key in [k.hist(ch), k.topic(ch), k.idem(Some(ch), "u1:x")] {
            assert_eq!(slot(&key), here, "{key}");
        }
        assert_ne!(
            slot(&k.meta("news")),
            here,
            "another channel, (here) another slot"
        );
        assert_eq!(slot(&k.bus()), slot(&format!("{}:nodes", k.common())));
        assert_eq!(slot(&k.idem(None, "all")), slot(&k.bus()));
        assert_eq!(k.channel_of(k.topic(ch).as_bytes()), Some(ch));
        assert_eq!(k.channel_of(b"herald:ch:ticker"), None, "not a tagged name");
        assert_eq!(k.publish_command(), "SPUBLISH");
    }
}
