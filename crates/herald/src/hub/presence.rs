//! User presence (seed 004): online while any connection is up; offline only after the
//! grace period, so a reload (close, then connect within the grace) never reads offline.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub struct UserPresence {
    /// Users whose last connection went away, and when.
    went_offline: Mutex<HashMap<Arc<str>, Instant>>,
    pub grace: Duration,
}

impl UserPresence {
    pub fn new(grace: Duration) -> UserPresence {
        UserPresence {
            went_offline: Mutex::new(HashMap::new()),
            grace,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Arc<str>, Instant>> {
        self.went_offline.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn connected(&self, user: &str) {
        self.lock().remove(user);
    }

    pub fn last_disconnected(&self, user: &Arc<str>) {
        self.lock().insert(user.clone(), Instant::now());
    }

    /// Online given the number of live connections: any, or the last left within the grace.
    pub fn online(&self, user: &str, connections: usize) -> bool {
        connections > 0
            || self
                .lock()
                .get(user)
                .is_some_and(|t| t.elapsed() < self.grace)
    }

    pub fn sweep(&self) {
        let grace = self.grace;
        self.lock().retain(|_, t| t.elapsed() < grace);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offline_only_after_the_grace() {
        let p = UserPresence::new(Duration::from_millis(50));
        let u: Arc<str> = Arc::from("u");
        assert!(!p.online("u", 0));
        assert!(p.online("u", 1));
        p.last_disconnected(&u);
        assert!(p.online("u", 0), "within the grace");
        std::thread::sleep(Duration::from_millis(60));
        assert!(!p.online("u", 0));
        p.last_disconnected(&u);
        p.connected("u");
        assert!(!p.online("u", 0), "a reconnect clears the pending offline");
    }
}
