//! One task for every connection's timers: server Pings every `heartbeat_s`, the idle
//! timeout, token expiry (4002), channel upkeep (history TTL, presence leaves), and the
//! latency snapshot behind the recent percentiles. A
//! single 1 s tick over the registry costs far less than a timer per connection and
//! keeps idle connections free of timer state.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::presence_events::EventKind;
use super::Hub;
use crate::auth::jwt::now_unix;
use crate::protocol::codes::CloseCode;
use crate::ws::frame::{Frame, OP_PING};

pub async fn run(hub: Arc<Hub>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ping = Frame::new(OP_PING, b"");
    let mut seconds: u64 = 0;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        seconds += 1;
        let send_ping = seconds.is_multiple_of(hub.heartbeat_s.load(Relaxed).max(1));
        sweep(&hub, send_ping.then_some(&ping));
        hub.metrics.tick_latency();
    }
}

/// One pass: ping, then close the idle and the expired.
pub fn sweep(hub: &Hub, ping: Option<&Frame>) {
    hub.registry.channels.sweep(hub.registry.presence.grace);
    for user in hub.registry.presence.sweep() {
        // One node decides user_offline here; a cluster view decides it otherwise.
        if hub.registry.events.local_users() && hub.registry.users.count(&user) == 0 {
            hub.registry.events.user(EventKind::UserOffline, &user);
        }
    }
    let now_ms = hub.now_ms();
    let now = now_unix();
    let idle_ms = hub.idle_timeout_s.load(Relaxed).saturating_mul(1000);
    // A ping to every connection: one wake per worker, not one per connection.
    let _wakes = crate::wake::Scope::begin();
    hub.registry.for_each_conn(|c| {
        let exp = c.expires_at.load(Relaxed);
        if exp != 0 && now > exp.saturating_add(hub.leeway_s) {
            let code = CloseCode::TokenExpired;
            if c.outbox.close(Some(Frame::close(code.code(), code.reason())), false) {
                tracing::info!(conn_id = %c.conn_id, user_id = %c.identity.user, "token expired, closed with 4002");
            }
        } else if now_ms.saturating_sub(c.last_seen_ms.load(Relaxed)) > idle_ms {
            if c.outbox.close(Some(Frame::close(CloseCode::GoingAway.code(), "idle timeout")), true) {
                tracing::info!(conn_id = %c.conn_id, user_id = %c.identity.user, "idle timeout");
            }
        } else if let Some(p) = ping {
            c.outbox.push_control(p.clone());
        }
    });
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering::Relaxed;

    use tokio::time::{Duration, Instant};

    use super::*;
    use crate::auth::Identity;
    use crate::config::Config;
    use crate::hub::{ConnHandle, Registration};
    use crate::metrics::Metrics;
    use crate::outbox::{Batch, Outbox};
    use crate::ws::frame::OP_PING;

    fn hub(heartbeat_s: u64, leeway_s: u64) -> Arc<Hub> {
        let mut cfg = Config::default();
        cfg.ws.heartbeat_s = heartbeat_s;
        cfg.auth.leeway_s = leeway_s;
        Hub::new(&cfg, Arc::new(Metrics::default())).0
    }

    fn connect(hub: &Hub, id: u64, expires_at: u64) -> Registration {
        let user = crate::ids::UserId::from(format!("u{id}"));
        let identity = Identity {
            user: user.clone(),
            device: None,
            groups: vec![],
            admin: false,
            backend: false,
            expires_at: Some(expires_at),
            token: None,
        };
        let handle = Arc::new(ConnHandle::new(
            id,
            crate::ids::ConnId::from(id.to_string()),
            identity,
            Arc::new(Outbox::new(16, 1 << 16)),
            std::net::IpAddr::from([127, 0, 0, 1]),
            hub.now_ms(),
            0,
        ));
        let admission = hub
            .registry
            .admit(&user, [127, 0, 0, 1].into())
            .expect("under the caps");
        hub.registry.register(admission, handle)
    }

    /// Everything queued on `outbox` right now, without waiting.
    async fn take(outbox: &Outbox) -> Option<(Batch, Vec<Frame>)> {
        let (mut control, mut data) = (Vec::new(), Vec::new());
        tokio::select! {
            biased;
            b = outbox.next_batch(&mut control, &mut data) => {
                control.extend(data.into_iter().map(|q| q.frame));
                Some((b, control))
            }
            _ = std::future::ready(()) => None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn pings_go_out_every_heartbeat_and_not_between() {
        let hub = hub(3, 0);
        let reg = connect(&hub, 1, 0);
        let stop = CancellationToken::new();
        let sweeper = tokio::spawn(run(hub.clone(), stop.clone()));
        let start = Instant::now();
        let mut pinged = Vec::new();
        for s in 1..=12u64 {
            // Half-way between ticks: the tick due before has run, the next has not.
            tokio::time::sleep_until(start + Duration::from_millis(s * 1000 - 500)).await;
            if let Some((batch, frames)) = take(&reg.handle.outbox).await {
                assert_eq!(batch, Batch::Write);
                assert_eq!(frames, vec![Frame::new(OP_PING, b"")], "at {s} s");
                pinged.push(s);
            }
        }
        // The first ping within one heartbeat, then exactly one every heartbeat.
        assert!(pinged[0] <= 3, "{pinged:?}");
        let gaps: Vec<u64> = pinged.windows(2).map(|w| w[1] - w[0]).collect();
        assert_eq!(gaps, vec![3; pinged.len() - 1], "{pinged:?}");
        assert!(pinged.len() >= 3, "{pinged:?}");
        stop.cancel();
        sweeper.await.unwrap();
    }

    #[tokio::test]
    async fn a_token_past_its_expiry_and_leeway_is_closed_with_4002() {
        let hub = hub(25, 30);
        let now = now_unix();
        let expired = connect(&hub, 1, now - 30 - 2);
        let within_leeway = connect(&hub, 2, now - 30 + 5);
        let never = connect(&hub, 3, 0);
        sweep(&hub, None);
        assert!(expired.handle.outbox.is_closing());
        let (batch, frames) = take(&expired.handle.outbox).await.unwrap();
        assert_eq!(batch, Batch::Finish);
        let code = CloseCode::TokenExpired;
        assert_eq!(frames, vec![Frame::close(code.code(), code.reason())]);
        assert!(
            !within_leeway.handle.outbox.is_closing(),
            "within the leeway"
        );
        assert!(!never.handle.outbox.is_closing(), "no expiry");
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connections_close_after_the_timeout_and_activity_resets_it() {
        let hub = hub(25, 0); // idle_timeout_s is 60 by default
        let idle = connect(&hub, 1, 0);
        let busy = connect(&hub, 2, 0);
        tokio::time::advance(Duration::from_secs(59)).await;
        sweep(&hub, None);
        assert!(!idle.handle.outbox.is_closing(), "59 s is not idle yet");
        // A complete frame from `busy` now.
        busy.handle.last_seen_ms.store(hub.now_ms(), Relaxed);
        tokio::time::advance(Duration::from_millis(1_500)).await;
        sweep(&hub, None);
        let (batch, frames) = take(&idle.handle.outbox).await.expect("closed");
        assert_eq!(batch, Batch::Finish);
        assert_eq!(
            frames,
            vec![Frame::close(CloseCode::GoingAway.code(), "idle timeout")]
        );
        assert!(
            !busy.handle.outbox.is_closing(),
            "activity restarted its clock"
        );
        tokio::time::advance(Duration::from_secs(60)).await;
        sweep(&hub, None);
        assert!(busy.handle.outbox.is_closing());
    }

    #[tokio::test(start_paused = true)]
    async fn a_channel_leave_waits_for_the_grace_and_a_rejoin_cancels_it() {
        let hub = hub(25, 0);
        let grace = Duration::from_millis(2_000);
        let ns = Arc::new(crate::config::NamespaceConfig {
            presence: true,
            ..Default::default()
        });
        let (stay, go) = (connect(&hub, 1, 0), connect(&hub, 2, 0));
        let channels = &hub.registry.channels;
        channels.subscribe(&stay.handle, "room:x", &ns, None, None);
        channels.subscribe(&go.handle, "room:x", &ns, None, None);
        let _ = take(&stay.handle.outbox).await; // subscribed + u2's join
        let _ = take(&go.handle.outbox).await;
        let leave = crate::protocol::server::presence_frame("room:x", "leave", "u2");
        channels.unsubscribe(&go.handle, "room:x");
        tokio::time::advance(grace - Duration::from_millis(1)).await;
        channels.sweep(grace);
        assert!(
            take(&stay.handle.outbox).await.is_none(),
            "no leave within the grace"
        );
        // A reload: back within the grace, no leave and no second join, ever.
        channels.subscribe(&go.handle, "room:x", &ns, None, None);
        tokio::time::advance(grace * 2).await;
        channels.sweep(grace);
        assert!(
            take(&stay.handle.outbox).await.is_none(),
            "a rejoin within the grace is silent"
        );
        channels.unsubscribe(&go.handle, "room:x");
        tokio::time::advance(grace).await;
        channels.sweep(grace);
        let (_, frames) = take(&stay.handle.outbox)
            .await
            .expect("the leave, after the grace");
        assert_eq!(frames, vec![leave]);
    }
}
