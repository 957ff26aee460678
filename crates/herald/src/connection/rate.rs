//! The per-connection inbound token bucket. It lives inside the connection's own task,
//! so it needs no atomics and no map lookup (a shared keyed limiter would).

use std::time::{Duration, Instant};

pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate_per_s: u32, burst: u32) -> TokenBucket {
        TokenBucket {
            rate: f64::from(rate_per_s),
            burst: f64::from(burst),
            tokens: f64::from(burst),
            last: Instant::now(),
        }
    }

    /// Takes a token if one is available at `now`.
    pub fn try_take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
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
    limited_since: Option<Instant>,
    last_refusal: Option<Instant>,
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
            limited_since: None,
            last_refusal: None,
            last_error: None,
        }
    }

    pub fn check(&mut self, now: Instant) -> Verdict {
        let calm = self
            .last_refusal
            .is_none_or(|t| now.saturating_duration_since(t) >= CALM);
        if calm {
            self.limited_since = None;
        }
        if self.bucket.try_take(now) {
            return Verdict::Allow;
        }
        self.last_refusal = Some(now);
        let since = *self.limited_since.get_or_insert(now);
        if now.saturating_duration_since(since) >= self.close_after {
            return Verdict::Close;
        }
        let notify = self
            .last_error
            .is_none_or(|t| now.saturating_duration_since(t) >= CALM);
        if notify {
            self.last_error = Some(now);
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

    #[test]
    fn a_calm_second_resets_the_streak() {
        let t0 = Instant::now();
        let mut l = InboundLimiter::new(1, 1, Duration::from_secs(2));
        l.check(t0);
        assert!(matches!(l.check(t0), Verdict::Refuse { .. }));
        // 1.5 s of calm, then a short burst: the streak starts over.
        assert_eq!(l.check(t0 + Duration::from_millis(1500)), Verdict::Allow);
        assert!(matches!(
            l.check(t0 + Duration::from_millis(2500)),
            Verdict::Allow | Verdict::Refuse { .. }
        ));
        assert_ne!(l.check(t0 + Duration::from_millis(2600)), Verdict::Close);
    }
}
