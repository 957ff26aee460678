//! The per-connection inbound token bucket. It lives inside the connection's own task,
//! so it needs no atomics and no map lookup (a shared keyed limiter would).

use std::time::{Duration, Instant};

pub struct TokenBucket {
    rate: f32,
    burst: f32,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate_per_s: u32, burst: u32) -> TokenBucket {
        TokenBucket {
            rate: rate_per_s as f32,
            burst: burst as f32,
            tokens: f64::from(burst),
            last: Instant::now(),
        }
    }

    /// Whether the bucket will have refilled by `now` (it then holds nothing a new
    /// bucket would not).
    pub fn is_full(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens + elapsed * f64::from(self.rate) >= f64::from(self.burst)
    }

    /// Takes a token if one is available at `now`.
    pub fn try_take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * f64::from(self.rate)).min(f64::from(self.burst));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The bucket plus the "persists for N seconds → close" rule of DESIGN §12. A flood
/// still gets a message through each time a token refills, so "persists" means: refusals
/// kept coming, with no calm second between them, for `close_after`.
pub struct InboundLimiter {
    bucket: TokenBucket,
    close_after: Duration,
    /// Only while refusals keep coming: a connection within its rate keeps none.
    streak: Option<Box<Streak>>,
}

/// Refusals with no calm second between them.
struct Streak {
    since: Instant,
    last_refusal: Instant,
    last_error: Option<Instant>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Refused; `notify` says whether to send an `error` frame (at most one a second).
    Refuse {
        notify: bool,
    },
    /// Refused persistently for longer than allowed: close with 1008.
    Close,
}

const CALM: Duration = Duration::from_secs(1);

impl InboundLimiter {
    pub fn new(rate_per_s: u32, burst: u32, close_after: Duration) -> InboundLimiter {
        InboundLimiter {
            bucket: TokenBucket::new(rate_per_s, burst),
            close_after,
            streak: None,
        }
    }

    pub fn check(&mut self, now: Instant) -> Verdict {
        // A calm second ends the streak (its last error is then a second old too, so the
        // next refusal may notify again).
        let calm = self
            .streak
            .as_ref()
            .is_some_and(|s| now.saturating_duration_since(s.last_refusal) >= CALM);
        if calm {
            self.streak = None;
        }
        if self.bucket.try_take(now) {
            return Verdict::Allow;
        }
        let streak = self.streak.get_or_insert_with(|| {
            Box::new(Streak {
                since: now,
                last_refusal: now,
                last_error: None,
            })
        });
        streak.last_refusal = now;
        if now.saturating_duration_since(streak.since) >= self.close_after {
            return Verdict::Close;
        }
        let notify = streak
            .last_error
            .is_none_or(|t| now.saturating_duration_since(t) >= CALM);
        if notify {
            streak.last_error = Some(now);
        }
        Verdict::Refuse { notify }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, 3);
        assert!((0..3).all(|_| b.try_take(t0)));
        assert!(!b.try_take(t0));
        assert!(b.try_take(t0 + Duration::from_millis(100)));
    }

    #[test]
    fn a_sustained_flood_closes_after_the_grace() {
        let t0 = Instant::now();
        let mut l = InboundLimiter::new(1, 1, Duration::from_secs(10));
        assert_eq!(l.check(t0), Verdict::Allow);
        assert_eq!(l.check(t0), Verdict::Refuse { notify: true });
        assert_eq!(
            l.check(t0 + Duration::from_millis(10)),
            Verdict::Refuse { notify: false }
        );
        let mut t = t0;
        let mut closed_at = None;
        for _ in 0..200 {
            t += Duration::from_millis(100); // 10 msg/s against 1/s
            if l.check(t) == Verdict::Close {
                closed_at = Some(t);
                break;
            }
        }
        let closed_at = closed_at.expect("a flood must be closed");
        assert!(
            closed_at - t0 >= Duration::from_secs(10) && closed_at - t0 < Duration::from_secs(11)
        );
    }

    const STEP: Duration = Duration::from_millis(100);

    /// One message every `STEP` from `from` while before `until`: each time and verdict.
    fn flood(l: &mut InboundLimiter, from: Instant, until: Instant) -> Vec<(Instant, Verdict)> {
        let mut out = Vec::new();
        let mut t = from;
        while t < until {
            out.push((t, l.check(t)));
            t += STEP;
        }
        out
    }

    /// Two messages at `at` (a refill lets at most one through), then a 5 s flood.
    fn burst_then_flood(l: &mut InboundLimiter, at: Instant) -> Vec<(Instant, Verdict)> {
        let mut run = vec![(at, l.check(at)), (at, l.check(at))];
        run.extend(flood(l, at + STEP, at + Duration::from_secs(5)));
        run
    }

    fn refused(v: &Verdict) -> bool {
        matches!(v, Verdict::Refuse { .. })
    }

    /// The first verdict that is not `Allow`, and when.
    fn first_limited(run: &[(Instant, Verdict)]) -> (Instant, &Verdict) {
        let (t, v) = run
            .iter()
            .find(|(_, v)| *v != Verdict::Allow)
            .expect("a flood at 10/s against 1/s is limited");
        (*t, v)
    }

    /// A 1.5 s flood against 1/s: limited, never closed (shorter than `close_after`).
    /// Returns the limiter and its last refusal.
    fn limited_for_a_while(close_after: Duration) -> (InboundLimiter, Instant) {
        let t0 = Instant::now();
        let mut l = InboundLimiter::new(1, 1, close_after);
        let run = flood(&mut l, t0, t0 + Duration::from_millis(1500));
        assert!(run.iter().all(|(_, v)| *v != Verdict::Close), "{run:?}");
        let last = run.iter().rev().find(|(_, v)| refused(v)).expect("refused");
        (l, last.0)
    }

    #[test]
    fn a_calm_second_resets_the_streak() {
        let close_after = Duration::from_secs(2);
        let (mut l, last_refusal) = limited_for_a_while(close_after);
        // Exactly one calm second, then a new flood: its streak starts at its own first
        // refusal, so it is closed `close_after` after that, not at once.
        let resume = last_refusal + CALM;
        let run = burst_then_flood(&mut l, resume);
        let (start, first) = first_limited(&run);
        assert_eq!(*first, Verdict::Refuse { notify: true }, "a new streak");
        let (closed, _) = run
            .iter()
            .find(|(_, v)| *v == Verdict::Close)
            .expect("the second flood is closed in the end");
        assert!(
            *closed >= start + close_after && *closed < start + close_after + 2 * STEP,
            "closed {:?} after the new streak began, expected {close_after:?}",
            *closed - start
        );
    }

    #[test]
    fn less_than_a_calm_second_keeps_the_streak() {
        let close_after = Duration::from_secs(2);
        let (mut l, last_refusal) = limited_for_a_while(close_after);
        // A pause just short of a second: the streak that began 1.5 s ago goes on, and
        // it is now older than `close_after`, so the next refusal closes.
        let resume = last_refusal + CALM - Duration::from_millis(1);
        let run = burst_then_flood(&mut l, resume);
        assert_eq!(first_limited(&run), (resume, &Verdict::Close), "{run:?}");
    }

    #[test]
    fn a_flood_is_told_once_a_second() {
        let t0 = Instant::now();
        let mut l = InboundLimiter::new(1, 1, Duration::from_secs(60));
        let run = flood(&mut l, t0, t0 + Duration::from_secs(10));
        let told: Vec<Instant> = run
            .iter()
            .filter(|(_, v)| *v == Verdict::Refuse { notify: true })
            .map(|(t, _)| *t)
            .collect();
        assert_eq!(told[0], t0 + STEP, "the first refusal is told");
        for pair in told.windows(2) {
            let gap = pair[1] - pair[0];
            assert!(
                gap >= CALM && gap < CALM + 2 * STEP,
                "error frames {gap:?} apart: {told:?}"
            );
        }
        let end = t0 + Duration::from_secs(10);
        assert!(
            end - told[told.len() - 1] < CALM + 2 * STEP,
            "told through to the end: {told:?}"
        );
    }
}
