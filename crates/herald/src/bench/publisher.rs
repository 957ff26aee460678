//! The publisher: `POST /api/publish {"all":true,"data":"t=…"}` (or
//! `{"channel":NAME,"data":"t=…"}` with `--channel`) at a fixed rate.

use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;

use super::stamp::publish_body;

/// Requests in flight at once; a tick that finds them all busy waits for one.
const MAX_IN_FLIGHT: usize = 32;
/// Per-request timeout.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Plan {
    pub url: String,
    pub api_key: String,
    pub rate: u32,
    pub duration: Duration,
    pub payload: usize,
    /// `None`: publish to everyone (`all`); `Some`: to this channel's subscribers.
    pub channel: Option<String>,
}

#[derive(Debug, Default)]
pub struct Outcome {
    pub sent: u64,
    pub ok: u64,
    pub failed: u64,
    /// Sum of `queued` over successful publications: the deliveries to expect.
    pub queued: u64,
    pub first_error: Option<String>,
    /// From the first send to the last response.
    pub elapsed: Duration,
    /// Ticks that found `MAX_IN_FLIGHT` requests busy and had to wait for one.
    pub cap_waits: u64,
    /// Publications not sent because the run overran its deadline.
    pub skipped: u64,
}

#[derive(Deserialize)]
struct Queued {
    queued: u64,
}

/// Publishes `rate × duration` times; returns when every request has answered or timed
/// out. Ends by `duration + REQUEST_TIMEOUT + 1 s` at the latest.
pub async fn run(http: &reqwest::Client, plan: &Plan, base: Instant) -> Outcome {
    let total = u64::from(plan.rate) * plan.duration.as_secs();
    let mut ticker = tokio::time::interval(Duration::from_secs(1) / plan.rate);
    // Catch up after a stall, so the count (and so the rate over the run) is kept.
    ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let start = Instant::now();
    let deadline = start + plan.duration + Duration::from_secs(1);
    let mut out = Outcome::default();
    let mut in_flight: JoinSet<Result<u64, String>> = JoinSet::new();
    for _ in 0..total {
        ticker.tick().await;
        if in_flight.len() >= MAX_IN_FLIGHT {
            out.cap_waits += 1;
        }
        while in_flight.len() >= MAX_IN_FLIGHT {
            if let Some(r) = in_flight.join_next().await {
                tally(&mut out, r);
            }
        }
        if Instant::now() > deadline {
            out.skipped = total - out.sent;
            break;
        }
        let req = http
            .post(&plan.url)
            .bearer_auth(&plan.api_key)
            .header("content-type", "application/json")
            .timeout(REQUEST_TIMEOUT)
            // Stamped as late as possible: the latency includes the HTTP request.
            .body(publish_body(
                base.elapsed().as_nanos() as u64,
                plan.payload,
                plan.channel.as_deref(),
            ));
        out.sent += 1;
        in_flight.spawn(async move {
            let res = req.send().await.map_err(|e| format!("request: {e}"))?;
            let status = res.status();
            if !status.is_success() {
                let text = res.text().await.unwrap_or_default();
                return Err(format!(
                    "HTTP {status}: {}",
                    text.chars().take(200).collect::<String>()
                ));
            }
            res.json::<Queued>()
                .await
                .map(|q| q.queued)
                .map_err(|e| format!("response: {e}"))
        });
        while let Some(r) = in_flight.try_join_next() {
            tally(&mut out, r);
        }
    }
    while let Some(r) = in_flight.join_next().await {
        tally(&mut out, r);
    }
    out.elapsed = start.elapsed();
    out
}

fn tally(out: &mut Outcome, r: Result<Result<u64, String>, tokio::task::JoinError>) {
    match r {
        Ok(Ok(queued)) => {
            out.ok += 1;
            out.queued += queued;
        }
        Ok(Err(e)) => {
            out.failed += 1;
            out.first_error.get_or_insert(e);
        }
        Err(e) => {
            out.failed += 1;
            out.first_error.get_or_insert(format!("task: {e}"));
        }
    }
}
