//! Revoked tokens (DESIGN §13): a user revoked "before T" refuses that user's tokens
//! issued before T (`iat` < T; a token without `iat` cannot show it is newer, so it is
//! refused too), and a revoked token id refuses the token whose `jti` it is — at connect
//! and on `refresh`. Each record is kept until its `until` (Unix seconds): after that
//! every token it refused has expired anyway, if the operator chose `until` past their
//! longest token lifetime.
//!
//! The lists are read on every upgrade, so the check is one relaxed load while nothing
//! is revoked, and a read lock otherwise. They are bounded ([`MAX_RECORDS`]); a node
//! learns the cluster's records from its broker (the bus, and the Redis hash read
//! whenever the bus is subscribed).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, RwLock};

use super::{Identity, TokenStamp};
use crate::ids::UserId;

/// How many records of each kind one node keeps at most.
pub const MAX_RECORDS: usize = 100_000;

/// The longest a record may be kept: a year.
pub const MAX_KEEP_S: u64 = 366 * 24 * 3600;

/// One revocation, as the HTTP API makes it and the nodes pass it on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revocation {
    /// `user`'s tokens issued before `before` (Unix seconds).
    User {
        user: UserId,
        before: u64,
        until: u64,
    },
    /// The token whose `jti` is `id`.
    Token { id: Arc<str>, until: u64 },
}

impl Revocation {
    /// Whether it refuses a token of `user` stamped `stamp`.
    pub fn refuses(&self, user: &UserId, stamp: &TokenStamp) -> bool {
        match self {
            Revocation::User {
                user: u, before, ..
            } => u == user && stamp.issued_at.is_none_or(|iat| iat < *before),
            Revocation::Token { id, .. } => stamp.id.as_deref() == Some(&**id),
        }
    }

    pub fn until(&self) -> u64 {
        match self {
            Revocation::User { until, .. } | Revocation::Token { until, .. } => *until,
        }
    }
}

/// Why a record was not kept.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotKept {
    #[error("this node already keeps {MAX_RECORDS} revocations of that kind")]
    Full,
}

#[derive(Default)]
struct Lists {
    /// User → revoked before (the latest wins), until.
    users: HashMap<UserId, (u64, u64)>,
    /// Token id → until.
    tokens: HashMap<Arc<str>, u64>,
}

#[derive(Default)]
pub struct Revocations {
    lists: RwLock<Lists>,
    /// Records held, so the common case (none) takes no lock.
    held: AtomicUsize,
}

impl Revocations {
    /// Keeps `r` (a user's later `before` replaces an earlier one; expired records are
    /// dropped first).
    pub fn apply(&self, r: &Revocation, now: u64) -> Result<(), NotKept> {
        let mut l = self.lists.write().unwrap_or_else(|p| p.into_inner());
        if r.until() <= now {
            return Ok(());
        }
        prune(&mut l, now);
        let (users, tokens) = (l.users.len(), l.tokens.len());
        match r {
            Revocation::User {
                user,
                before,
                until,
            } => match l.users.get_mut(user) {
                Some(kept) => {
                    kept.0 = kept.0.max(*before);
                    kept.1 = kept.1.max(*until);
                }
                None if users >= MAX_RECORDS => return Err(NotKept::Full),
                None => {
                    l.users.insert(user.clone(), (*before, *until));
                }
            },
            Revocation::Token { id, until } => match l.tokens.get_mut(id) {
                Some(kept) => *kept = (*kept).max(*until),
                None if tokens >= MAX_RECORDS => return Err(NotKept::Full),
                None => {
                    l.tokens.insert(id.clone(), *until);
                }
            },
        }
        self.held.store(l.users.len() + l.tokens.len(), Relaxed);
        Ok(())
    }

    /// Whether `id`'s token is revoked at `now`.
    pub fn refuses(&self, id: &Identity, now: u64) -> bool {
        let none = TokenStamp::default();
        self.refuses_stamp(&id.user, id.token.as_deref().unwrap_or(&none), now)
    }

    pub fn refuses_stamp(&self, user: &UserId, stamp: &TokenStamp, now: u64) -> bool {
        if self.held.load(Relaxed) == 0 {
            return false;
        }
        let l = self.lists.read().unwrap_or_else(|p| p.into_inner());
        let by_user = l.users.get(user).is_some_and(|(before, until)| {
            *until > now && stamp.issued_at.is_none_or(|iat| iat < *before)
        });
        let by_id = stamp
            .id
            .as_ref()
            .and_then(|id| l.tokens.get(id))
            .is_some_and(|until| *until > now);
        by_user || by_id
    }

    /// How many records are kept.
    pub fn len(&self) -> usize {
        self.held.load(Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn prune(l: &mut Lists, now: u64) {
    l.users.retain(|_, (_, until)| *until > now);
    l.tokens.retain(|_, until| *until > now);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(iat: Option<u64>, jti: Option<&str>) -> TokenStamp {
        TokenStamp {
            issued_at: iat,
            id: jti.map(Arc::from),
            channels: Vec::new(),
        }
    }

    #[test]
    fn a_user_revoked_before_t_refuses_older_and_unstamped_tokens_only() {
        let r = Revocations::default();
        let alice = UserId::from("alice");
        assert!(!r.refuses_stamp(&alice, &stamp(None, None), 100));
        r.apply(
            &Revocation::User {
                user: alice.clone(),
                before: 1000,
                until: 5000,
            },
            100,
        )
        .unwrap();
        assert!(r.refuses_stamp(&alice, &stamp(Some(999), None), 100));
        assert!(
            r.refuses_stamp(&alice, &stamp(None, None), 100),
            "no iat: refused"
        );
        assert!(!r.refuses_stamp(&alice, &stamp(Some(1000), None), 100));
        assert!(!r.refuses_stamp(&UserId::from("bob"), &stamp(Some(1), None), 100));
        // An earlier `before` does not undo a later one.
        r.apply(
            &Revocation::User {
                user: alice.clone(),
                before: 10,
                until: 5000,
            },
            100,
        )
        .unwrap();
        assert!(r.refuses_stamp(&alice, &stamp(Some(999), None), 100));
        // Past `until` the record is gone.
        assert!(!r.refuses_stamp(&alice, &stamp(Some(999), None), 5000));
    }

    #[test]
    fn a_revoked_token_id_refuses_that_token_only_until_it_lapses() {
        let r = Revocations::default();
        let u = UserId::from("u");
        r.apply(
            &Revocation::Token {
                id: Arc::from("t-1"),
                until: 200,
            },
            100,
        )
        .unwrap();
        assert!(r.refuses_stamp(&u, &stamp(Some(1), Some("t-1")), 150));
        assert!(!r.refuses_stamp(&u, &stamp(Some(1), Some("t-2")), 150));
        assert!(!r.refuses_stamp(&u, &stamp(Some(1), None), 150));
        assert!(!r.refuses_stamp(&u, &stamp(Some(1), Some("t-1")), 200));
        // An expired record is not kept at all.
        r.apply(
            &Revocation::Token {
                id: Arc::from("old"),
                until: 50,
            },
            100,
        )
        .unwrap();
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn the_lists_are_bounded() {
        let r = Revocations::default();
        for i in 0..MAX_RECORDS {
            let id = Arc::from(i.to_string());
            r.apply(&Revocation::Token { id, until: 10 }, 1).unwrap();
        }
        let one_more = Revocation::Token {
            id: Arc::from("x"),
            until: 30,
        };
        assert_eq!(r.apply(&one_more, 1), Err(NotKept::Full));
        // Once they lapse there is room again.
        assert_eq!(r.apply(&one_more, 20), Ok(()));
    }
}
