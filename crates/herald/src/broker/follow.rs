//! Which channels this node follows across nodes (DESIGN §9). A node subscribes to a
//! channel's own Redis pub/sub channel, on its one pub/sub connection, when the first
//! local subscriber arrives, and unsubscribes once it has had none for [`IDLE_GRACE`]
//! (a page reload does not churn subscriptions). A subscriber joins once the
//! subscription is live and the node's copy of the channel has been brought to the
//! shared history's top ("primed"), so nothing published after its `subscribed` can
//! pass it by, and a `since` is answered from a copy as complete as Redis's.
//!
//! Publications to users, groups and everyone, and announcements, travel on the one
//! bus channel every node always follows.
//!
//! This is bookkeeping only: the broker's tasks send the (UN)SUBSCRIBE commands and
//! prime the channels; nothing here awaits, and the map's lock is taken only by these methods (the upkeep counts subscribers under it).

use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// A followed channel is dropped after this long without a local subscriber.
pub const IDLE_GRACE: Duration = Duration::from_secs(2);
/// A SUBSCRIBE that was not confirmed within this is sent again.
pub const RETRY_AFTER: Duration = Duration::from_secs(2);

#[derive(Default)]
struct Entry {
    /// Subscribed and primed: local subscribers join at once.
    live: bool,
    /// It was live when the pub/sub connection was lost: whatever was published
    /// meanwhile passed this node by.
    lost: bool,
    /// Subscribers waiting for it to become live.
    waiters: Vec<oneshot::Sender<()>>,
    /// When the SUBSCRIBE was last sent.
    asked: Option<Instant>,
    /// Since when it has had no local subscriber.
    idle_since: Option<Instant>,
}

/// What the broker should ask Redis for.
#[derive(Debug, PartialEq, Eq)]
pub enum Ask {
    Subscribe(Vec<Arc<str>>),
    Unsubscribe(Vec<Arc<str>>),
}

#[derive(Default)]
pub struct Following {
    /// Read on every channel publication (is it live here?), written when following
    /// changes.
    map: RwLock<HashMap<Arc<str>, Entry>>,
}

/// What a local subscriber should do before joining.
pub enum Join {
    /// Join now (followed and primed, or Redis is away and the node serves what it has).
    Now,
    /// Join once this fires (or after a bounded wait, whatever happened).
    When(oneshot::Receiver<()>),
}

impl Following {
    fn lock(&self) -> RwLockWriteGuard<'_, HashMap<Arc<str>, Entry>> {
        self.map.write().unwrap_or_else(|p| p.into_inner())
    }

    fn read(&self) -> RwLockReadGuard<'_, HashMap<Arc<str>, Entry>> {
        self.map.read().unwrap_or_else(|p| p.into_inner())
    }

    /// A local subscriber for `channel` arrived. `connected`: the pub/sub connection is
    /// up, so waiting for the subscription makes sense. The second value is true when
    /// a SUBSCRIBE must be sent now.
    pub fn follow(&self, channel: &str, connected: bool, now: Instant) -> (Join, bool) {
        let mut map = self.lock();
        let entry = match map.get_mut(channel) {
            Some(e) => e,
            None => map.entry(Arc::from(channel)).or_default(),
        };
        entry.idle_since = None;
        if entry.live {
            return (Join::Now, false);
        }
        let ask = entry.asked.is_none() && connected;
        if ask {
            entry.asked = Some(now);
        }
        if !connected {
            return (Join::Now, false);
        }
        let (tx, rx) = oneshot::channel();
        entry.waiters.push(tx);
        (Join::When(rx), ask)
    }

    /// Whether `channel` is followed and primed (its publications come back here).
    pub fn is_live(&self, channel: &str) -> bool {
        self.read().get(channel).is_some_and(|e| e.live)
    }

    /// Whether `channel` is followed at all (live or on its way).
    pub fn is_followed(&self, channel: &str) -> bool {
        self.read().contains_key(channel)
    }

    /// `channel`'s subscription is live and primed: its waiters may join. Answers
    /// whether it had been lost (its subscribers may have missed publications).
    /// A confirmation for a channel no longer followed is ignored (None).
    pub fn primed(&self, channel: &str) -> Option<bool> {
        let mut map = self.lock();
        let entry = map.get_mut(channel)?;
        entry.live = true;
        entry.asked = None;
        for w in entry.waiters.drain(..) {
            let _ = w.send(());
        }
        Some(std::mem::take(&mut entry.lost))
    }

    /// `channel`'s subscription ended without being asked to (its slot moved to another
    /// shard): not live until it is subscribed again, which the upkeep asks for.
    pub fn lost(&self, channel: &str) {
        if let Some(entry) = self.lock().get_mut(channel) {
            if entry.live {
                entry.live = false;
                entry.lost = true;
            }
            entry.asked = None;
        }
    }

    /// The pub/sub connection is gone: nothing is live until it is subscribed again.
    pub fn lost_all(&self) {
        for entry in self.lock().values_mut() {
            if entry.live {
                entry.live = false;
                entry.lost = true;
            }
            entry.asked = None;
        }
    }

    /// Periodic upkeep: channels without a local subscriber for [`IDLE_GRACE`] are
    /// dropped (UNSUBSCRIBE); followed channels not live whose SUBSCRIBE is unanswered
    /// (or was never sent, Redis being away) are asked for again. `subscribers` counts
    /// a channel's local subscribers.
    pub fn upkeep(
        &self,
        connected: bool,
        now: Instant,
        subscribers: impl Fn(&str) -> usize,
    ) -> Vec<Ask> {
        let mut map = self.lock();
        let mut drop = Vec::new();
        let mut again = Vec::new();
        for (name, entry) in map.iter_mut() {
            if entry.waiters.iter().any(|w| !w.is_closed()) || subscribers(name) > 0 {
                entry.idle_since = None;
            } else {
                entry.waiters.clear();
                match entry.idle_since {
                    None => entry.idle_since = Some(now),
                    Some(at) if now.saturating_duration_since(at) >= IDLE_GRACE => {
                        drop.push(name.clone());
                        continue;
                    }
                    Some(_) => {}
                }
            }
            let unanswered = entry
                .asked
                .is_none_or(|at| now.saturating_duration_since(at) >= RETRY_AFTER);
            if connected && !entry.live && unanswered {
                entry.asked = Some(now);
                again.push(name.clone());
            }
        }
        for name in &drop {
            map.remove(name);
        }
        let mut asks = Vec::new();
        if !drop.is_empty() {
            asks.push(Ask::Unsubscribe(drop));
        }
        if !again.is_empty() {
            asks.push(Ask::Subscribe(again));
        }
        asks
    }

    /// How many channels this node follows.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subscriber_waits_until_primed_and_the_next_joins_at_once() {
        let f = Following::default();
        let t = Instant::now();
        let (join, ask) = f.follow("news", true, t);
        assert!(ask, "the first subscriber asks for the subscription");
        let Join::When(mut rx) = join else {
            panic!("must wait while not live")
        };
        let (second, ask) = f.follow("news", true, t);
        assert!(!ask, "one SUBSCRIBE per channel");
        assert!(matches!(second, Join::When(_)));
        assert!(rx.try_recv().is_err());
        assert_eq!(f.primed("news"), Some(false));
        assert!(rx.try_recv().is_ok());
        assert!(matches!(f.follow("news", true, t).0, Join::Now));
        assert!(f.is_live("news"));
    }

    #[test]
    fn without_redis_a_subscriber_joins_now_and_the_channel_is_asked_for_later() {
        let f = Following::default();
        let t = Instant::now();
        let (join, ask) = f.follow("news", false, t);
        assert!(matches!(join, Join::Now));
        assert!(!ask);
        assert_eq!(f.upkeep(false, t, |_| 1), vec![]);
        assert_eq!(
            f.upkeep(true, t, |_| 1),
            vec![Ask::Subscribe(vec![Arc::from("news")])]
        );
    }

    #[test]
    fn an_idle_channel_is_dropped_after_the_grace_and_a_lost_one_reports_it() {
        let f = Following::default();
        let t = Instant::now();
        let _ = f.follow("a", true, t);
        let _ = f.follow("b", true, t);
        f.primed("a");
        f.primed("b");
        f.lost_all();
        assert!(!f.is_live("a"));
        assert_eq!(
            f.primed("a"),
            Some(true),
            "a was live when the link dropped"
        );
        assert_eq!(f.primed("a"), Some(false), "reported once");
        assert_eq!(
            f.upkeep(true, t, |_| 1),
            vec![Ask::Subscribe(vec![Arc::from("b")])],
            "b is not subscribed again yet: asked for"
        );
        assert_eq!(f.primed("b"), Some(true));
        let busy = |name: &str| usize::from(name == "a");
        assert_eq!(f.upkeep(true, t, busy), vec![]);
        let later = t + IDLE_GRACE;
        assert_eq!(
            f.upkeep(true, later, busy),
            vec![Ask::Unsubscribe(vec![Arc::from("b")])]
        );
        assert!(f.is_followed("a"));
        assert!(!f.is_followed("b"));
        assert_eq!(f.primed("b"), None);
    }

    #[test]
    fn an_unanswered_subscribe_is_sent_again() {
        let f = Following::default();
        let t = Instant::now();
        let _waiting = f.follow("news", true, t);
        assert_eq!(f.upkeep(true, t, |_| 0), vec![]);
        assert_eq!(
            f.upkeep(true, t + RETRY_AFTER, |_| 0),
            vec![Ask::Subscribe(vec![Arc::from("news")])],
        );
    }
}
