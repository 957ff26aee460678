//! Counters and the delivery-latency histogram behind `/api/stats`.
//!
//! Plain atomics, incremented once per fan-out (`add(n)`), never per recipient where
//! it can be helped. The histogram has fixed log-spaced buckets of `AtomicU64` so
//! recording is one relaxed increment and percentiles need no lock; `/metrics`
//! (`http::prometheus`) reads the same atomics at scrape time. The last refusals are
//! kept for the admin page (`GET /api/refusals`), a flood folded into one row.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Declares [`Refusal`], [`Refusal::ALL`] and the names from one table, so a reason
/// cannot exist without a counter, a name and a place in `/api/stats` `refused`: adding a
/// variant anywhere else than here does not compile.
macro_rules! refusals {
    ($($variant:ident => $name:literal,)+) => {
        /// Why something was refused or dropped; one counter each.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Refusal {
            $($variant,)+
        }

        impl Refusal {
            /// Every reason, in declaration order: `index()` is the position here.
            pub const ALL: [Refusal; [$($name),+].len()] = [$(Refusal::$variant),+];

            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Refusal::$variant => $name,)+
                }
            }
        }
    };
}

refusals! {
    BadHandshake => "bad_handshake",
    BadOrigin => "bad_origin",
    BadToken => "bad_token",
    UserCap => "user_cap",
    IpCap => "ip_cap",
    HandshakeTimeout => "handshake_timeout",
    SlowConsumer => "slow_consumer",
    RateLimited => "rate_limited",
    TooLarge => "too_large",
    ProtocolError => "protocol_error",
    BadApiKey => "bad_api_key",
    BodyTooLarge => "body_too_large",
    // A publication whose frame no connection queue could hold (413 / `too_large`).
    PublicationTooLarge => "publication_too_large",
    // A client publication that would create one channel too many for its user.
    ChannelBudget => "channel_budget",
    // A socket that took no bytes for `ws.write_timeout_s` (closed as a slow consumer).
    WriteStalled => "write_stalled",
    // A connection asked for store work while its previous request was in flight.
    StoreBusy => "store_busy",
    // Over `limits.http_connections` or `http_connections_per_ip`: refused at accept.
    HttpConnCap => "http_conn_cap",
    // A request body that did not arrive within `limits.http_body_timeout_s` (408).
    BodyTimeout => "body_timeout",
    // A request head over `http::head_guard::HEAD_MAX` (431 with a JSON body).
    HeadTooLarge => "head_too_large",
    // A `publish` frame while `ws.max_in_flight` publications await their answer.
    InFlight => "in_flight",
    // A token revoked by `POST /api/users/{id}/revoke` or `/api/tokens/{jti}/revoke`,
    // at connect (401) or on `refresh`.
    RevokedToken => "revoked_token",
}

impl Refusal {
    const fn index(self) -> usize {
        self as usize
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Buckets: 0 = <1µs, then 8 per power of two up to ~2^27 µs (~2 minutes).
const BUCKETS: usize = 8 * 28 + 1;

pub struct LatencyHistogram {
    buckets: [AtomicU64; BUCKETS],
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl LatencyHistogram {
    fn bucket(us: u64) -> usize {
        if us == 0 {
            return 0;
        }
        let log = 63 - us.leading_zeros() as usize; // floor(log2)
        let frac = if log >= 3 {
            ((us >> (log - 3)) & 7) as usize
        } else {
            ((us << (3 - log)) & 7) as usize
        };
        (1 + log * 8 + frac).min(BUCKETS - 1)
    }

    /// Upper bound in microseconds of bucket `i`.
    fn upper_us(i: usize) -> f64 {
        if i == 0 {
            return 1.0;
        }
        let log = (i - 1) / 8;
        let frac = (i - 1) % 8;
        (1u64 << log) as f64 * (1.0 + (frac as f64 + 1.0) / 8.0)
    }

    pub fn record(&self, d: Duration) {
        self.add(Self::bucket(micros(d)), 1);
    }

    /// Records the latency of every publication accepted at `accepted`, up to `now`:
    /// what a writer does once per batch, with one read of the clock for all of it, and
    /// one increment per run of frames that fall in the same bucket (a batch's frames
    /// were mostly accepted close together).
    pub fn record_batch(&self, now: Instant, accepted: impl Iterator<Item = Instant>) {
        let mut run: Option<(usize, u64)> = None;
        for at in accepted {
            let bucket = Self::bucket(micros(now.saturating_duration_since(at)));
            match &mut run {
                Some((b, n)) if *b == bucket => *n += 1,
                _ => {
                    if let Some((b, n)) = run.replace((bucket, 1)) {
                        self.add(b, n);
                    }
                }
            }
        }
        if let Some((b, n)) = run {
            self.add(b, n);
        }
    }

    fn add(&self, bucket: usize, n: u64) {
        if let Some(b) = self.buckets.get(bucket) {
            b.fetch_add(n, Relaxed);
        }
    }

    /// The histogram in Prometheus's shape, coarsened to powers of two: for each upper
    /// bound (`le`, in seconds: 1 µs, 2 µs, … ~268 s, then +Inf) the count of that bucket
    /// alone (the encoder makes them cumulative), the total count, and the sum in seconds
    /// estimated from the fine buckets' midpoints (within half a fine bucket, ~6%; the
    /// hot path records one increment and nothing else).
    pub fn buckets(&self) -> (Vec<(f64, u64)>, u64, f64) {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        let mut out = Vec::with_capacity(BUCKETS / 8 + 2);
        let (mut total, mut in_bucket, mut sum_us) = (0u64, 0u64, 0f64);
        for (i, c) in counts.iter().enumerate() {
            total += c;
            in_bucket += c;
            let upper = Self::upper_us(i);
            let lower = if i == 0 { 0.0 } else { Self::upper_us(i - 1) };
            sum_us += *c as f64 * (upper + lower) / 2.0;
            // Fine buckets 0, 8, 16, … end exactly at a power of two.
            if i % 8 == 0 {
                out.push((upper / 1e6, std::mem::take(&mut in_bucket)));
            }
        }
        out.push((f64::INFINITY, in_bucket));
        (out, total, sum_us / 1e6)
    }

    /// Each fine bucket's count now.
    fn counts(&self) -> Vec<u64> {
        self.buckets.iter().map(|b| b.load(Relaxed)).collect()
    }

    /// The `q` quantile (0..=1) in milliseconds; 0 when nothing was recorded.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        Self::quantile_of(&self.counts(), q)
    }

    /// The `q` quantile of bucket counts, in milliseconds (bucket upper bounds).
    fn quantile_of(counts: &[u64], q: f64) -> f64 {
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return 0.0;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Self::upper_us(i) / 1000.0;
            }
        }
        Self::upper_us(BUCKETS - 1) / 1000.0
    }
}

/// How far back `/api/stats` `latency_ms_recent` looks.
pub const RECENT_WINDOW_S: usize = 10;

/// The latency histogram as it was at each of the last [`RECENT_WINDOW_S`] sweeper
/// ticks (one per second), so percentiles of the last seconds are a difference of two
/// snapshots — the live view an admin chart needs, where the totals since start barely
/// move after a day. Taken off the hot path: recording stays one increment.
#[derive(Default)]
pub struct RecentLatency {
    snapshots: std::sync::Mutex<std::collections::VecDeque<Vec<u64>>>,
}

/// Percentiles over the last seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Recent {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    /// Deliveries measured in the window, and the window's length in seconds.
    pub count: u64,
    pub window_s: usize,
}

pub struct Metrics {
    pub publications: AtomicU64,
    /// Publications accepted on this node, by where they came from.
    accepted: [AtomicU64; Source::ALL.len()],
    pub deliveries: AtomicU64,
    /// Frames dropped, whatever the reason (the slow-consumer close, `drop_oldest`).
    pub dropped: AtomicU64,
    /// Of those, dropped by the `drop_oldest` policy (the connection stayed).
    pub dropped_oldest: AtomicU64,
    pub slow_consumer_disconnects: AtomicU64,
    /// Frames written compressed (permessage-deflate), and the bytes that saved.
    pub compressed_deliveries: AtomicU64,
    pub compression_saved_bytes: AtomicU64,
    refusals: [AtomicU64; Refusal::ALL.len()],
    /// Per reason, when a refusal was last logged (ms since `epoch`): a flood of refusals
    /// is one log line per reason per `LOG_EVERY`, with the running count.
    last_logged: [AtomicU64; Refusal::ALL.len()],
    epoch: Instant,
    pub latency: LatencyHistogram,
    recent_latency: RecentLatency,
    /// Store operations that failed (the store was unreachable or erred).
    pub store_errors: AtomicU64,
    store_last_logged: AtomicU64,
    /// Publications and announcements delivered to this node only (the broker was down).
    pub degraded: AtomicU64,
    /// Publications answered as repeats of an idempotency key (nothing delivered).
    pub repeated: AtomicU64,
    /// Times the broker lost Redis (each outage once).
    pub broker_outages: AtomicU64,
    /// Messages from other nodes that did not parse (dropped).
    pub broker_malformed: AtomicU64,
    /// The upstream relay is subscribed to its bus (`/readyz`).
    pub relay_subscribed: std::sync::atomic::AtomicBool,
    /// Upstream relay messages dropped: not JSON, not a sync event, a subject or channel
    /// without a usable user id, or refused by the broker.
    pub relay_skipped: AtomicU64,
    /// Presence webhooks (the events dropped at a full queue are counted by the hub's
    /// `PresenceEvents`).
    pub webhooks: WebhookCounters,
    /// The last refusals, newest last.
    recent: std::sync::Mutex<std::collections::VecDeque<RecentRefusal>>,
}

/// What became of presence webhooks.
#[derive(Default)]
pub struct WebhookCounters {
    /// Events the receiver took (a 2xx).
    pub sent: AtomicU64,
    /// Attempts that failed and were tried again.
    pub retries: AtomicU64,
    /// Events given up: out of attempts, refused (4xx), or cut off by shutdown.
    pub failed: AtomicU64,
}

/// How many refusals `GET /api/refusals` can show.
pub const RECENT_REFUSALS: usize = 100;

/// Refusals of one reason within one second, kept for the admin page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecentRefusal {
    /// Unix milliseconds of the first of them.
    pub at_ms: i64,
    pub reason: Refusal,
    pub count: u64,
}

const LOG_EVERY_MS: u64 = 10_000;

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            publications: AtomicU64::new(0),
            accepted: std::array::from_fn(|_| AtomicU64::new(0)),
            deliveries: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            dropped_oldest: AtomicU64::new(0),
            slow_consumer_disconnects: AtomicU64::new(0),
            compressed_deliveries: AtomicU64::new(0),
            compression_saved_bytes: AtomicU64::new(0),
            refusals: std::array::from_fn(|_| AtomicU64::new(0)),
            last_logged: std::array::from_fn(|_| AtomicU64::new(0)),
            epoch: Instant::now(),
            latency: LatencyHistogram::default(),
            recent_latency: RecentLatency::default(),
            store_errors: AtomicU64::new(0),
            store_last_logged: AtomicU64::new(0),
            degraded: AtomicU64::new(0),
            repeated: AtomicU64::new(0),
            broker_outages: AtomicU64::new(0),
            broker_malformed: AtomicU64::new(0),
            relay_subscribed: std::sync::atomic::AtomicBool::new(false),
            relay_skipped: AtomicU64::new(0),
            webhooks: WebhookCounters::default(),
            recent: std::sync::Mutex::new(std::collections::VecDeque::with_capacity(
                RECENT_REFUSALS,
            )),
        }
    }
}

/// Where a publication entered (`herald_publications_total{source}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Api,
    /// `POST /api/publish/batch`, one count per publication.
    Batch,
    Client,
    /// A `publish` frame from a backend publisher on `/ws` (an API key or admin token).
    Backend,
    Relay,
    Announcement,
}

impl Source {
    pub const ALL: [Source; 6] = [
        Source::Api,
        Source::Batch,
        Source::Client,
        Source::Backend,
        Source::Relay,
        Source::Announcement,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Source::Api => "api",
            Source::Batch => "batch",
            Source::Client => "client",
            Source::Backend => "backend",
            Source::Relay => "relay",
            Source::Announcement => "announcement",
        }
    }
}

impl Metrics {
    /// Counts a publication accepted on this node from `source`.
    pub fn accepted(&self, source: Source) {
        if let Some(c) = self.accepted.get(source as usize) {
            c.fetch_add(1, Relaxed);
        }
    }

    /// Counts a publication's answer: accepted from `source`, or a repeat of an
    /// idempotency key (which delivered nothing).
    pub fn answered(&self, source: Source, delivered: &crate::hub::Delivered) {
        if delivered.repeated {
            self.repeated.fetch_add(1, Relaxed);
        } else {
            self.accepted(source);
        }
    }

    /// Publications accepted on this node from `source`.
    pub fn accepted_from(&self, source: Source) -> u64 {
        self.accepted
            .get(source as usize)
            .map_or(0, |c| c.load(Relaxed))
    }

    /// Remembers the latency histogram as it is now (the sweeper, once a second).
    pub fn tick_latency(&self) {
        let now = self.latency.counts();
        let mut snaps = self
            .recent_latency
            .snapshots
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if snaps.len() > RECENT_WINDOW_S {
            snaps.pop_front();
        }
        snaps.push_back(now);
    }

    /// Latency percentiles since the oldest snapshot of the window (up to
    /// [`RECENT_WINDOW_S`] seconds ago); None before the first tick.
    pub fn recent_latency(&self) -> Option<Recent> {
        let now = self.latency.counts();
        let snaps = self
            .recent_latency
            .snapshots
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let oldest = snaps.front()?;
        let diff: Vec<u64> = now
            .iter()
            .zip(oldest)
            .map(|(n, o)| n.saturating_sub(*o))
            .collect();
        let q = |q| LatencyHistogram::quantile_of(&diff, q);
        Some(Recent {
            p50: q(0.50),
            p95: q(0.95),
            p99: q(0.99),
            count: diff.iter().sum(),
            window_s: snaps.len(),
        })
    }

    /// Keeps `why` among the recent refusals: the same reason within a second of the
    /// newest row adds to its count, so a flood cannot push everything else out.
    fn remember(&self, why: Refusal) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(last) = recent.back_mut() {
            if last.reason == why && now.saturating_sub(last.at_ms) < 1000 {
                last.count += 1;
                return;
            }
        }
        if recent.len() == RECENT_REFUSALS {
            recent.pop_front();
        }
        recent.push_back(RecentRefusal {
            at_ms: now,
            reason: why,
            count: 1,
        });
    }

    /// The recent refusals, newest first.
    pub fn recent_refusals(&self) -> Vec<RecentRefusal> {
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent.iter().rev().copied().collect()
    }

    /// True at most once per `LOG_EVERY_MS` per `last` slot: whoever wins the slot logs.
    fn log_due(&self, last: &AtomicU64) -> bool {
        // +1 so that "never logged" (0) is always due.
        let now = u64::try_from(self.epoch.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        let prev = last.load(Relaxed);
        (prev == 0 || now.saturating_sub(prev) >= LOG_EVERY_MS)
            && last.compare_exchange(prev, now, Relaxed, Relaxed).is_ok()
    }

    /// Counts a refusal, and logs it unless the same reason was logged in the last 10 s.
    pub fn refuse(&self, why: Refusal) {
        let (Some(count), Some(last)) = (
            self.refusals.get(why.index()),
            self.last_logged.get(why.index()),
        ) else {
            return;
        };
        let total = count.fetch_add(1, Relaxed) + 1;
        self.remember(why);
        if self.log_due(last) {
            tracing::info!(
                reason = why.as_str(),
                total,
                "refused (logged at most once per 10 s per reason)"
            );
        }
    }

    /// Counts a failed store operation; logged at most once per 10 s with the running
    /// count, so an outage under load is a handful of lines, not one per request.
    pub fn store_error(&self, why: &str) {
        let total = self.store_errors.fetch_add(1, Relaxed) + 1;
        if self.log_due(&self.store_last_logged) {
            tracing::error!(
                total,
                "announcement store failed: {why} (logged at most once per 10 s)"
            );
        }
    }

    pub fn refusals(&self, why: Refusal) -> u64 {
        self.refusals
            .get(why.index())
            .map_or(0, |c| c.load(Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_records_what_one_record_per_frame_would() {
        let now = Instant::now();
        let ages = [5u64, 5, 5, 900, 900, 5, 70_000, 0, 0];
        let accepted: Vec<Instant> = ages
            .iter()
            .map(|us| now.checked_sub(Duration::from_micros(*us)).unwrap())
            .collect();
        let (one, batch) = (LatencyHistogram::default(), LatencyHistogram::default());
        for us in ages {
            one.record(Duration::from_micros(us));
        }
        batch.record_batch(now, accepted.into_iter());
        let counts = |h: &LatencyHistogram| -> Vec<u64> {
            h.buckets.iter().map(|b| b.load(Relaxed)).collect()
        };
        assert_eq!(counts(&one), counts(&batch));
        assert_eq!(counts(&batch).iter().sum::<u64>(), ages.len() as u64);
    }

    #[test]
    fn recent_latency_is_the_difference_since_the_oldest_snapshot() {
        let m = Metrics::default();
        assert_eq!(m.recent_latency(), None);
        for _ in 0..100 {
            m.latency.record(Duration::from_secs(1));
        }
        m.tick_latency();
        for _ in 0..10 {
            m.latency.record(Duration::from_micros(100));
        }
        let r = m.recent_latency().unwrap();
        assert_eq!((r.count, r.window_s), (10, 1));
        assert!(
            r.p99 < 1.0,
            "the old second-long ones are outside the window: {r:?}"
        );
        assert!(m.latency.quantile_ms(0.5) >= 1000.0, "the totals keep them");
        for _ in 0..(RECENT_WINDOW_S + 5) {
            m.tick_latency();
        }
        let r = m.recent_latency().unwrap();
        assert_eq!((r.count, r.window_s), (0, RECENT_WINDOW_S + 1));
    }

    #[test]
    fn recent_refusals_fold_a_flood_and_keep_the_newest_hundred() {
        let m = Metrics::default();
        for _ in 0..1000 {
            m.refuse(Refusal::BadToken);
        }
        m.refuse(Refusal::BadOrigin);
        let recent = m.recent_refusals();
        assert_eq!(recent.len(), 2, "{recent:?}");
        assert_eq!((recent[0].reason, recent[0].count), (Refusal::BadOrigin, 1));
        assert_eq!(
            (recent[1].reason, recent[1].count),
            (Refusal::BadToken, 1000)
        );
        for i in 0..300 {
            let why = if i % 2 == 0 {
                Refusal::IpCap
            } else {
                Refusal::UserCap
            };
            m.refuse(why);
        }
        let recent = m.recent_refusals();
        assert_eq!(recent.len(), RECENT_REFUSALS);
        assert_eq!(recent[0].reason, Refusal::UserCap, "newest first");
    }

    #[test]
    fn buckets_are_monotonic_and_bounded() {
        let mut last = 0;
        for us in [0u64, 1, 2, 3, 7, 8, 9, 100, 1000, 10_000, 1 << 40, u64::MAX] {
            let b = LatencyHistogram::bucket(us);
            assert!(b >= last && b < BUCKETS);
            assert!(us == 0 || LatencyHistogram::upper_us(b) >= us as f64 || b == BUCKETS - 1);
            last = b;
        }
    }

    #[test]
    fn prometheus_buckets_split_at_powers_of_two_and_add_up() {
        let h = LatencyHistogram::default();
        for us in [0, 3, 3, 900, 1500, 5_000_000] {
            h.record(Duration::from_micros(us));
        }
        let (buckets, count, sum) = h.buckets();
        assert_eq!(count, 6);
        assert_eq!(buckets.iter().map(|(_, c)| c).sum::<u64>(), 6);
        let at = |le: f64| buckets.iter().find(|(b, _)| *b == le).map(|(_, c)| *c);
        assert_eq!(at(1e-6), Some(1), "0 µs");
        assert_eq!(at(4e-6), Some(2), "3 µs is in (2, 4]");
        assert_eq!(at(0.001024), Some(1), "900 µs is in (512, 1024]");
        assert_eq!(at(0.002048), Some(1), "1500 µs");
        assert_eq!(at(8.388608), Some(1), "5 s");
        assert!(buckets.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(buckets.last().map(|b| b.0), Some(f64::INFINITY));
        let exact = (3 + 3 + 900 + 1500 + 5_000_000) as f64 / 1e6;
        assert!((sum - exact).abs() / exact < 0.07, "{sum} vs {exact}");
    }

    #[test]
    fn quantiles_are_within_a_bucket() {
        let h = LatencyHistogram::default();
        for ms in 1..=100u64 {
            h.record(Duration::from_millis(ms));
        }
        let p50 = h.quantile_ms(0.5);
        assert!((50.0..=57.0).contains(&p50), "{p50}");
        let p99 = h.quantile_ms(0.99);
        assert!((99.0..=113.0).contains(&p99), "{p99}");
    }

    #[test]
    fn refusal_index_matches_table() {
        for (i, r) in Refusal::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
    }

    #[test]
    fn refusal_names_are_distinct_snake_case() {
        let mut names: Vec<&str> = Refusal::ALL.iter().map(|r| r.as_str()).collect();
        for n in &names {
            assert!(
                !n.is_empty() && n.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{n}"
            );
        }
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Refusal::ALL.len(), "a name is used twice");
    }

    #[test]
    fn each_refusal_counts_under_its_own_reason_only() {
        let m = Metrics::default();
        for (i, r) in Refusal::ALL.iter().enumerate() {
            m.refuse(*r);
            m.refuse(*r);
            let counts: Vec<u64> = Refusal::ALL.iter().map(|x| m.refusals(*x)).collect();
            let expected: Vec<u64> = (0..Refusal::ALL.len())
                .map(|j| if j <= i { 2 } else { 0 })
                .collect();
            assert_eq!(counts, expected, "after refusing {r:?}");
        }
    }
}
