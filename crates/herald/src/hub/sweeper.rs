//! One task for every connection's timers: server Pings every `heartbeat_s`, the idle
//! timeout, token expiry (4002), and channel upkeep (history TTL, presence leaves). A
//! single 1 s tick over the registry costs far less than a timer per connection and
//! keeps idle connections free of timer state.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

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
        let send_ping = seconds.is_multiple_of(hub.heartbeat_s.max(1));
        sweep(&hub, send_ping.then_some(&ping));
    }
}

/// One pass: ping, then close the idle and the expired.
pub fn sweep(hub: &Hub, ping: Option<&Frame>) {
    hub.registry.channels.sweep(hub.registry.presence.grace);
    hub.registry.presence.sweep();
    let now_ms = hub.now_ms();
    let now = now_unix();
    let idle_ms = hub.idle_timeout_s.saturating_mul(1000);
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
