//! Idempotent publish (DESIGN §13): a publication carrying an `idempotency_key` that
//! repeats one accepted within [`WINDOW`] is answered as the first one was and delivers
//! nothing — so a backend that timed out and retries does not publish twice.
//!
//! A key is scoped by who publishes (the backends together, or one user's clients) and
//! by the target, as Centrifugo scopes it by channel: a client cannot claim a key a
//! backend will use, and two channels never share one. The first publication *claims*
//! the key; a repeat that arrives while the claim is unanswered is refused with 409
//! (`Denied::InProgress`) rather than published. A claim whose publication failed is
//! given up, so a retry publishes; one whose node died before answering lapses after
//! [`CLAIM_TTL`]. On one node the keys live here, bounded by [`MAX_REMEMBERED`]; with
//! Redis the claim and the answer are Redis keys (`<prefix>:idem:<scope>`), claimed in
//! the same script that publishes, so a retry sent to another node is recognised too.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::hub::{Delivered, Publication, Target};

/// How long a first answer is given again.
pub const WINDOW: Duration = Duration::from_secs(300);

/// How long a claim waits for its publication's answer before a retry may publish.
pub const CLAIM_TTL: Duration = Duration::from_secs(10);

/// The most keys one node remembers; past it the oldest is forgotten early.
pub const MAX_REMEMBERED: usize = 100_000;

/// The scope of `key` for `p`: its publisher and its target, each length-prefixed so
/// no choice of names makes two scopes equal.
pub fn scope(p: &Publication, key: &str) -> String {
    let who = match &p.creator {
        None => "b".to_owned(),
        Some(user) => format!("u{}:{}", user.len(), user.as_str()),
    };
    let target = match &p.target {
        Target::All => "a".to_owned(),
        Target::User(u) => format!("u{}:{}", u.len(), u.as_str()),
        Target::Group(g) => format!("g{}:{g}", g.len()),
        Target::Channel(c) => format!("c{}:{c}", c.len()),
    };
    format!("{who}|{target}|{key}")
}

/// A first answer as it is kept in Redis.
#[derive(Serialize, Deserialize)]
struct Kept {
    q: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    o: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    e: Option<String>,
}

/// `d` as it is kept in Redis.
pub fn encode(d: &Delivered) -> String {
    let kept = Kept {
        q: d.queued,
        o: d.position.as_ref().map(|(o, _)| *o),
        e: d.position.as_ref().map(|(_, e)| e.to_string()),
    };
    serde_json::to_string(&kept).unwrap_or_default()
}

/// A kept first answer, given again (`repeated`); None if `text` is not one (a claim).
pub fn decode(text: &str) -> Option<Delivered> {
    let kept: Kept = serde_json::from_str(text).ok()?;
    let position = match (kept.o, kept.e) {
        (Some(o), Some(e)) => Some((o, Arc::from(e))),
        _ => None,
    };
    Some(Delivered {
        queued: kept.q,
        position,
        repeated: true,
    })
}

/// What a key is, on this node.
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    /// Not seen within the window: claimed now; publish, then [`Seen::settle`].
    New,
    /// Answered before: this is that answer.
    Repeat(Delivered),
    /// Claimed by a publication still unanswered.
    InProgress,
}

enum Entry {
    Claimed,
    Answered(Delivered),
}

#[derive(Default)]
struct Remembered {
    entries: HashMap<String, (Instant, Entry)>,
    /// Scopes in the order they were claimed (so also the order they expire).
    order: VecDeque<(Instant, String)>,
}

impl Remembered {
    fn expire(&mut self, now: Instant) {
        while let Some((at, _)) = self.order.front() {
            if now.saturating_duration_since(*at) < WINDOW && self.order.len() < MAX_REMEMBERED {
                break;
            }
            if let Some((at, scope)) = self.order.pop_front() {
                // Only if the entry is the one this record was made for (a re-claim after
                // a failure made a newer record).
                if self.entries.get(&scope).is_some_and(|(t, _)| *t == at) {
                    self.entries.remove(&scope);
                }
            }
        }
    }
}

/// The keys one node remembers (the memory broker's; with Redis they live there).
#[derive(Default)]
pub struct Seen {
    inner: Mutex<Remembered>,
}

impl Seen {
    /// Claims `scope`, or says why not.
    pub fn claim(&self, scope: &str, now: Instant) -> Claim {
        let mut r = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        r.expire(now);
        match r.entries.get(scope) {
            Some((_, Entry::Answered(d))) => {
                return Claim::Repeat(Delivered {
                    repeated: true,
                    ..d.clone()
                })
            }
            Some((_, Entry::Claimed)) => return Claim::InProgress,
            None => {}
        }
        r.entries.insert(scope.to_owned(), (now, Entry::Claimed));
        r.order.push_back((now, scope.to_owned()));
        Claim::New
    }

    /// The claimed publication's answer: kept for repeats, or (None: it failed) the
    /// claim given up so a retry publishes.
    pub fn settle(&self, scope: &str, answer: Option<&Delivered>) {
        let mut r = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match answer {
            Some(d) => {
                if let Some((_, entry)) = r.entries.get_mut(scope) {
                    *entry = Entry::Answered(d.clone());
                }
            }
            None => {
                r.entries.remove(scope);
            }
        }
    }

    /// How many keys are remembered.
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entries
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::{Exclude, Route};
    use crate::ids::UserId;
    use serde_json::value::RawValue;

    fn publication(target: Target, creator: Option<&str>) -> Publication {
        Publication {
            target,
            exclude: Exclude::default(),
            data: RawValue::from_string("1".into()).unwrap(),
            accepted: Instant::now(),
            creator: creator.map(UserId::from),
            route: Route::Normal,
            idempotency_key: Some("k".into()),
        }
    }

    #[test]
    fn scopes_differ_by_publisher_and_target() {
        let chan = |c: &str| Target::Channel(c.into());
        let backend = scope(&publication(chan("news"), None), "k");
        let client = scope(&publication(chan("news"), Some("42")), "k");
        let other = scope(&publication(chan("sport"), None), "k");
        let user = scope(&publication(Target::User(UserId::from("news")), None), "k");
        let all = [&backend, &client, &other, &user];
        for (i, a) in all.iter().enumerate() {
            for b in all.iter().skip(i + 1) {
                assert_ne!(a, b);
            }
        }
        // Separators inside names cannot forge another scope.
        let tricky = scope(&publication(chan("a|c1:b"), None), "k");
        assert_ne!(tricky, scope(&publication(chan("a"), None), "c1:b|k"));
    }

    #[test]
    fn a_first_answer_is_given_again_and_a_failure_frees_the_key() {
        let seen = Seen::default();
        let now = Instant::now();
        assert_eq!(seen.claim("s", now), Claim::New);
        assert_eq!(seen.claim("s", now), Claim::InProgress);
        seen.settle("s", None);
        assert_eq!(seen.claim("s", now), Claim::New);
        let first = Delivered {
            queued: 3,
            position: Some((7, Arc::from("ep"))),
            repeated: false,
        };
        seen.settle("s", Some(&first));
        let Claim::Repeat(again) = seen.claim("s", now) else {
            panic!("not a repeat");
        };
        assert_eq!((again.queued, again.position.clone()), (3, first.position));
        assert!(again.repeated);
        // After the window it publishes again.
        assert_eq!(seen.claim("s", now + WINDOW), Claim::New);
    }

    #[test]
    fn the_remembered_keys_are_bounded() {
        let seen = Seen::default();
        let now = Instant::now();
        for i in 0..MAX_REMEMBERED + 10 {
            assert_eq!(seen.claim(&i.to_string(), now), Claim::New);
        }
        assert!(seen.len() <= MAX_REMEMBERED);
        assert_eq!(seen.claim("0", now), Claim::New, "the oldest was forgotten");
    }

    #[test]
    fn answers_round_trip_through_their_redis_form() {
        let d = Delivered {
            queued: 2,
            position: Some((9, Arc::from("abc"))),
            repeated: false,
        };
        let back = decode(&encode(&d)).unwrap();
        assert_eq!((back.queued, back.position), (2, d.position));
        let plain = decode(&encode(&Delivered::default())).unwrap();
        assert_eq!(plain.position, None);
        assert!(decode("-").is_none(), "a claim is not an answer");
    }
}
