//! Node-wide bounds on what channels may hold (DESIGN §12): the bytes of history all
//! channels keep together (`limits.history_bytes`), and how many channels each user's
//! clients may create by publishing (`limits.channels_per_user`).
//!
//! Per-channel limits (`history_size`, TTL) bound one channel; these bound their sum, so
//! publishing to ever more distinct channels cannot grow memory without limit. The
//! ledger is one atomic add per stored publication; eviction (oldest history first,
//! across all channels) runs in whichever publisher pushed the total over the budget,
//! after it released its channel lock, and one eviction at a time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard};

use crate::ids::UserId;

/// What a stored publication costs beside its frame: the `Stored` slot, the shared
/// buffer's header, the ring buffer's slack (measured order of magnitude, not exact).
pub const STORED_OVERHEAD: usize = 96;

/// What a kept exclusion costs (an `Arc` with up to three short strings).
pub const EXCLUSION_OVERHEAD: usize = 96;

/// After an eviction the total is at most this fraction of the budget, so one eviction
/// pass pays for many publications instead of running on every one.
const LOW_WATER_NUM: usize = 7;
const LOW_WATER_DEN: usize = 8;

/// Bytes held in history by every channel of the node.
pub struct HistoryLedger {
    bytes: AtomicUsize,
    budget: AtomicUsize,
    evicting: Mutex<()>,
}

impl HistoryLedger {
    pub fn new(budget: usize) -> HistoryLedger {
        HistoryLedger {
            bytes: AtomicUsize::new(0),
            budget: AtomicUsize::new(budget),
            evicting: Mutex::new(()),
        }
    }

    pub fn add(&self, n: usize) {
        self.bytes.fetch_add(n, Relaxed);
    }

    pub fn sub(&self, n: usize) {
        // Every `sub` matches an earlier `add` of the same entry; saturate anyway.
        let _ = self
            .bytes
            .fetch_update(Relaxed, Relaxed, |b| Some(b.saturating_sub(n)));
    }

    pub fn bytes(&self) -> usize {
        self.bytes.load(Relaxed)
    }

    pub fn budget(&self) -> usize {
        self.budget.load(Relaxed)
    }

    pub fn set_budget(&self, budget: usize) {
        self.budget.store(budget, Relaxed);
    }

    pub fn over_budget(&self) -> bool {
        self.bytes() > self.budget()
    }

    /// Where an eviction stops.
    pub fn low_water(&self) -> usize {
        self.budget() / LOW_WATER_DEN * LOW_WATER_NUM
    }

    /// The right to evict, if nobody else is evicting right now (they will bring the
    /// total down for everyone).
    pub fn try_evict(&self) -> Option<MutexGuard<'_, ()>> {
        self.evicting.try_lock().ok()
    }
}

/// How many channels each user's clients created by publishing and that still exist.
pub struct Creations {
    per_user: Mutex<HashMap<UserId, usize>>,
    limit: AtomicUsize,
}

impl Creations {
    pub fn new(limit: usize) -> Creations {
        Creations {
            per_user: Mutex::new(HashMap::new()),
            limit: AtomicUsize::new(limit),
        }
    }

    pub fn set_limit(&self, limit: usize) {
        self.limit.store(limit, Relaxed);
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<UserId, usize>> {
        self.per_user.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reserves one creation for `user`; false when the user is at the limit.
    pub fn try_reserve(&self, user: &UserId) -> bool {
        let mut m = self.lock();
        let n = m.entry(user.clone()).or_insert(0);
        if *n >= self.limit.load(Relaxed) {
            if *n == 0 {
                m.remove(user);
            }
            return false;
        }
        *n += 1;
        true
    }

    /// Gives back a creation (the channel was forgotten, or never made).
    pub fn release(&self, user: &str) {
        let mut m = self.lock();
        if let Some(n) = m.get_mut(user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(user);
            }
        }
    }

    pub fn count(&self, user: &str) -> usize {
        self.lock().get(user).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creations_are_capped_and_given_back() {
        let c = Creations::new(2);
        let u = UserId::from("u");
        assert!(c.try_reserve(&u) && c.try_reserve(&u));
        assert!(!c.try_reserve(&u));
        c.release("u");
        assert!(c.try_reserve(&u));
        c.release("u");
        c.release("u");
        assert_eq!(c.count("u"), 0);
        assert!(c.lock().is_empty(), "no entry is kept for a user at zero");
    }

    #[test]
    fn ledger_low_water_is_below_budget() {
        let l = HistoryLedger::new(800);
        l.add(900);
        assert!(l.over_budget());
        assert_eq!(l.low_water(), 700);
        l.sub(10_000);
        assert_eq!(l.bytes(), 0);
    }
}
