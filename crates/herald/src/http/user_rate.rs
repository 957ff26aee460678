//! The publish rate of users on the HTTP API (a user token on `POST /api/publish`, e.g.
//! a client on the SSE transport). Such a user is held to what one of their
//! connections may send (`ws.rate_per_s`, `ws.rate_burst`): the HTTP API must not be
//! a way around the inbound limit of DESIGN §12.
//!
//! The buckets are keyed by user in one map, bounded: a bucket that has refilled holds
//! nothing a new one would not, so those go first when the map is full; if every
//! tracked user is mid-burst, the map starts over (only holders of valid tokens get
//! here, so growing it takes signed tokens, not requests).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use crate::connection::rate::TokenBucket;
use crate::ids::UserId;

/// Users tracked at most.
const MAX_USERS: usize = 100_000;

#[derive(Default)]
pub struct UserRates {
    buckets: Mutex<HashMap<UserId, TokenBucket>>,
}

impl UserRates {
    /// Takes one of `user`'s tokens (`rate` a second, `burst` at most) if one is left.
    pub fn try_take(&self, user: &UserId, rate: u32, burst: u32, now: Instant) -> bool {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if !buckets.contains_key(user) && buckets.len() >= MAX_USERS {
            buckets.retain(|_, b| !b.is_full(now));
            if buckets.len() >= MAX_USERS {
                buckets.clear();
            }
        }
        buckets
            .entry(user.clone())
            .or_insert_with(|| TokenBucket::new(rate, burst))
            .try_take(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_user_gets_the_burst_then_the_rate_and_others_their_own() {
        let rates = UserRates::default();
        let (a, b) = (UserId::from("a"), UserId::from("b"));
        let now = Instant::now();
        assert!((0..3).all(|_| rates.try_take(&a, 1, 3, now)));
        assert!(!rates.try_take(&a, 1, 3, now), "burst spent");
        assert!(rates.try_take(&b, 1, 3, now), "another user's own bucket");
        assert!(rates.try_take(&a, 1, 3, now + Duration::from_millis(1100)));
    }
}
