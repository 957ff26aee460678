//! User presence (seed 004): online while any connection is up; offline only after the
//! grace period, so a reload (close, then connect within the grace) never reads offline.
//!
//! Every time-dependent method has an `_at(now)` twin so the grace can be tested with an
//! explicit clock instead of sleeping; the plain methods read `Instant::now()`.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::ids::UserId;

pub struct UserPresence {
    /// Users whose last connection went away, and when.
    went_offline: Mutex<HashMap<UserId, Instant>>,
    pub grace: Duration,
}

impl UserPresence {
    pub fn new(grace: Duration) -> UserPresence {
        UserPresence {
            went_offline: Mutex::new(HashMap::new()),
            grace,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<UserId, Instant>> {
        self.went_offline.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A connection of `user` registered; true if the user was within its grace.
    pub fn connected(&self, user: &str) -> bool {
        self.lock().remove(user).is_some()
    }

    pub fn last_disconnected(&self, user: &UserId) {
        self.last_disconnected_at(user, Instant::now());
    }

    /// The user's last connection went away at `now`: the grace runs from here.
    pub fn last_disconnected_at(&self, user: &UserId, now: Instant) {
        self.lock().insert(user.clone(), now);
    }

    /// Online given the number of live connections: any, or the last left within the grace.
    pub fn online(&self, user: &str, connections: usize) -> bool {
        self.online_at(user, connections, Instant::now())
    }

    /// [`online`](Self::online) as seen at `now`.
    pub fn online_at(&self, user: &str, connections: usize, now: Instant) -> bool {
        connections > 0
            || self
                .lock()
                .get(user)
                .is_some_and(|t| now.saturating_duration_since(*t) < self.grace)
    }

    /// Users without a connection who are still online (within the grace).
    pub fn in_grace(&self) -> Vec<UserId> {
        let now = Instant::now();
        self.lock()
            .iter()
            .filter(|(_, t)| now.saturating_duration_since(**t) < self.grace)
            .map(|(u, _)| u.clone())
            .collect()
    }

    pub fn sweep(&self) -> Vec<UserId> {
        self.sweep_at(Instant::now())
    }

    /// Forgets users whose grace ran out by `now`, and says who they were (now offline).
    pub fn sweep_at(&self, now: Instant) -> Vec<UserId> {
        let grace = self.grace;
        let mut gone = Vec::new();
        self.lock().retain(|u, t| {
            let keep = now.saturating_duration_since(*t) < grace;
            if !keep {
                gone.push(u.clone());
            }
            keep
        });
        gone
    }

    /// How many users are still within their grace (for leak checks).
    #[cfg(test)]
    fn pending(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(2);
    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn offline_exactly_when_the_grace_runs_out() {
        let p = UserPresence::new(GRACE);
        let u = UserId::from("u");
        let t0 = Instant::now();
        assert!(!p.online_at("u", 0, t0), "never connected");
        assert!(p.online_at("u", 1, t0));
        p.last_disconnected_at(&u, t0);
        assert!(p.online_at("u", 0, t0), "just left");
        assert!(
            p.online_at("u", 0, t0 + GRACE - MS),
            "last moment of the grace"
        );
        assert!(!p.online_at("u", 0, t0 + GRACE), "the grace is over");
        assert!(p.online_at("u", 1, t0 + GRACE), "connections always count");
        assert!(!p.online_at("v", 0, t0), "only that user");
    }

    #[test]
    fn a_reload_restarts_the_grace_from_the_last_disconnect() {
        let p = UserPresence::new(GRACE);
        let u = UserId::from("u");
        let t0 = Instant::now();
        p.last_disconnected_at(&u, t0);
        // Reconnects halfway through the grace, and leaves again a second later.
        let back = t0 + GRACE / 2;
        p.connected("u");
        assert!(
            !p.online_at("u", 0, back),
            "a reconnect clears the pending offline"
        );
        let gone = back + Duration::from_secs(1);
        p.last_disconnected_at(&u, gone);
        // Past the first disconnect's grace, still within the second one's.
        assert!(p.online_at("u", 0, t0 + GRACE));
        assert!(p.online_at("u", 0, gone + GRACE - MS));
        assert!(!p.online_at("u", 0, gone + GRACE));
    }

    #[test]
    fn sweep_forgets_only_the_expired() {
        let p = UserPresence::new(GRACE);
        let (a, b) = (UserId::from("a"), UserId::from("b"));
        let t0 = Instant::now();
        p.last_disconnected_at(&a, t0);
        p.last_disconnected_at(&b, t0 + Duration::from_secs(1));
        assert!(p.sweep_at(t0 + GRACE - MS).is_empty());
        assert_eq!(p.pending(), 2);
        assert_eq!(p.sweep_at(t0 + GRACE), vec![a.clone()], "a went offline");
        assert_eq!(p.pending(), 1, "a's grace is over, b's is not");
        assert!(p.online_at("b", 0, t0 + GRACE));
        p.sweep_at(t0 + GRACE + Duration::from_secs(1));
        assert_eq!(p.pending(), 0);
    }

    #[test]
    fn the_plain_methods_use_the_current_time() {
        let p = UserPresence::new(Duration::from_secs(3600));
        let u = UserId::from("u");
        p.last_disconnected(&u);
        assert!(p.online("u", 0));
        p.sweep();
        assert_eq!(p.pending(), 1, "an hour's grace has not run out");
        let p = UserPresence::new(Duration::ZERO);
        p.last_disconnected(&u);
        assert!(!p.online("u", 0), "no grace: offline at once");
        p.sweep();
        assert_eq!(p.pending(), 0);
    }
}
