//! The publisher: `POST /api/publish {"all":true,"data":"t=…"}` (or
//! `{"channel":NAME,…}` with `--channel`, `{"user":ID,…}` with `--user`) at a fixed rate
//! — or, with `--batch N`, `POST /api/publish/batch` carrying N of them per request at
//! the same publication rate.

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
    /// The body's target member: [`Audience::member`](super::Audience::member).
    pub to: String,
    /// Publications per request (1: `/api/publish`; more: `/api/publish/batch`).
    pub batch: usize,
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

#[derive(Deserialize)]
struct Results {
    results: Vec<serde_json::Value>,
}

/// Publishes `rate × duration` times; returns when every request has answered or timed
/// out. Ends by `duration + REQUEST_TIMEOUT + 1 s` at the latest.
pub async fn run(http: &reqwest::Client, plan: &Plan, base: Instant) -> Outcome {
    let batch = plan.batch.max(1) as u64;
    // Requests, each carrying `batch` publications (the last one what is left).
    let publications = u64::from(plan.rate) * plan.duration.as_secs();
    let total = publications.div_ceil(batch);
    let per_second = (u64::from(plan.rate).div_ceil(batch)).max(1);
    let mut ticker = tokio::time::interval(
        Duration::from_secs(1) / u32::try_from(per_second).unwrap_or(u32::MAX),
    );
    // Catch up after a stall, so the count (and so the rate over the run) is kept.
    ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let start = Instant::now();
    let deadline = start + plan.duration + Duration::from_secs(1);
    let mut out = Outcome::default();
    let mut in_flight: JoinSet<(u64, Result<u64, String>)> = JoinSet::new();
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
            out.skipped = publications - out.sent;
            break;
        }
        let n = batch.min(publications - out.sent);
        let req = http
            .post(&plan.url)
            .bearer_auth(&plan.api_key)
            .header("content-type", "application/json")
            .timeout(REQUEST_TIMEOUT)
            // Stamped as late as possible: the latency includes the HTTP request.
            .body(body(base, plan, n));
        out.sent += n;
        let batched = plan.batch > 1;
        in_flight.spawn(async move {
            (
                n,
                async move {
                    let res = req.send().await.map_err(|e| format!("request: {e}"))?;
                    let status = res.status();
                    if !status.is_success() {
                        let text = res.text().await.unwrap_or_default();
                        return Err(format!(
                            "HTTP {status}: {}",
                            text.chars().take(200).collect::<String>()
                        ));
                    }
                    if batched {
                        let r = res
                            .json::<Results>()
                            .await
                            .map_err(|e| format!("response: {e}"))?;
                        let mut queued = 0;
                        for one in &r.results {
                            match one["queued"].as_u64() {
                                Some(q) => queued += q,
                                None => return Err(format!("a publication was refused: {one}")),
                            }
                        }
                        return Ok(queued);
                    }
                    res.json::<Queued>()
                        .await
                        .map(|q| q.queued)
                        .map_err(|e| format!("response: {e}"))
                }
                .await,
            )
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

/// Counts one request's publications (`n` of them) as answered or failed.
fn tally(out: &mut Outcome, r: Result<(u64, Result<u64, String>), tokio::task::JoinError>) {
    match r {
        Ok((n, Ok(queued))) => {
            out.ok += n;
            out.queued += queued;
        }
        Ok((n, Err(e))) => {
            out.failed += n;
            out.first_error.get_or_insert(e);
        }
        Err(e) => {
            out.failed += 1;
            out.first_error.get_or_insert(format!("task: {e}"));
        }
    }
}

/// One request's body: a publication, or `n` of them as a batch (stamped alike: they
/// leave together).
fn body(base: Instant, plan: &Plan, n: u64) -> String {
    let stamp = base.elapsed().as_nanos() as u64;
    let one = publish_body(stamp, plan.payload, &plan.to);
    if plan.batch <= 1 {
        return one;
    }
    let mut s = String::with_capacity(20 + (one.len() + 1) * n as usize);
    s.push_str(r#"{"publications":["#);
    for i in 0..n {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&one);
    }
    s.push_str("]}");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(batch: usize, to: &str) -> Plan {
        Plan {
            url: String::new(),
            api_key: String::new(),
            rate: 10,
            duration: Duration::from_secs(1),
            payload: 40,
            to: to.to_owned(),
            batch,
        }
    }

    #[test]
    fn a_batch_body_carries_n_stamped_publications() {
        let base = Instant::now();
        let v: serde_json::Value =
            serde_json::from_str(&body(base, &plan(5, r#""channel":"news""#), 3)).unwrap();
        let list = v["publications"].as_array().unwrap();
        assert_eq!(list.len(), 3);
        for p in list {
            assert_eq!(p["channel"], "news");
            assert!(p["data"].as_str().unwrap().starts_with("t="));
        }
        let one: serde_json::Value =
            serde_json::from_str(&body(base, &plan(1, r#""all":true"#), 1)).unwrap();
        assert_eq!(one["all"], true);
        let user: serde_json::Value =
            serde_json::from_str(&body(base, &plan(4, r#""user":"u 1""#), 4)).unwrap();
        let list = user["publications"].as_array().unwrap();
        assert_eq!(list.len(), 4);
        assert!(list
            .iter()
            .all(|p| p["user"] == "u 1" && p.get("all").is_none()));
    }
}
