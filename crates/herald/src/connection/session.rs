//! What a hub connection does with the client's messages (DESIGN §3): pings, channel
//! subscriptions, token refresh. Every refusal is an `error` frame and the connection
//! carries on; only a persistent flood closes it (1008).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;

use super::driver::{Flow, Handler};
use super::outbox::{Outbox, Push};
use super::rate::{InboundLimiter, Verdict};
use crate::auth::jwt::Verifier;
use crate::hub::{ConnHandle, Hub};
use crate::metrics::Refusal;
use crate::protocol::client::{self, ClientMessage, Inbound};
use crate::protocol::codes::{CloseCode, ErrorCode};
use crate::protocol::server;
use crate::ws::frame::Frame;

pub struct SessionLimits {
    pub rate_per_s: u32,
    pub rate_burst: u32,
    pub close_after: Duration,
    pub max_subscriptions: usize,
}

pub struct Session {
    hub: Arc<Hub>,
    conn: Arc<ConnHandle>,
    verifier: Option<Arc<Verifier>>,
    limiter: InboundLimiter,
    max_subscriptions: usize,
}

impl Session {
    pub fn new(
        hub: Arc<Hub>,
        conn: Arc<ConnHandle>,
        verifier: Option<Arc<Verifier>>,
        limits: &SessionLimits,
    ) -> Session {
        Session {
            hub,
            conn,
            verifier,
            limiter: InboundLimiter::new(limits.rate_per_s, limits.rate_burst, limits.close_after),
            max_subscriptions: limits.max_subscriptions,
        }
    }

    fn reply(&self, frame: Frame) {
        if self.conn.outbox.try_push(frame, Instant::now()) == Push::Full {
            self.hub.close_slow_consumer(&self.conn);
        }
    }

    fn error(&self, code: ErrorCode, message: &str, reference: Option<&Value>) {
        self.reply(server::error_frame(code, message, reference));
    }

    /// The rate limit applies to every inbound data message.
    fn admit(&mut self) -> Result<(), Flow> {
        match self.limiter.check(Instant::now()) {
            Verdict::Allow => Ok(()),
            Verdict::Refuse { notify } => {
                self.hub.metrics.refuse(Refusal::RateLimited);
                if notify {
                    self.error(ErrorCode::RateLimited, "too many messages; slow down", None);
                }
                Err(Flow::Continue)
            }
            Verdict::Close => {
                tracing::info!(conn_id = %self.conn.conn_id, user_id = %self.conn.identity.user, "rate limit exceeded persistently, closing 1008");
                Err(Flow::Close(CloseCode::Policy, "rate limit exceeded"))
            }
        }
    }

    fn handle(&mut self, msg: ClientMessage) {
        match msg {
            ClientMessage::Ping => self.reply(server::pong_frame()),
            ClientMessage::Subscribe {
                channel,
                since,
                reference,
            } => {
                if let Err(why) = validate_channel(&channel) {
                    return self.error(ErrorCode::BadRequest, &why, reference.as_ref());
                }
                if let Some((ns, _)) = channel.split_once(':') {
                    return self.error(
                        ErrorCode::NotFound,
                        &format!("namespace `{ns}` is not configured"),
                        reference.as_ref(),
                    );
                }
                let count = self.conn.channels.lock().map(|c| c.len()).unwrap_or(0);
                if count >= self.max_subscriptions {
                    return self.error(
                        ErrorCode::RateLimited,
                        "too many subscriptions on this connection",
                        reference.as_ref(),
                    );
                }
                let name: Arc<str> = Arc::from(channel);
                self.hub.registry.subscribe(&self.conn, &name);
                // No history in the default namespace yet: a `since` cannot be honoured.
                let recovered = false;
                let _ = since;
                self.reply(server::subscribed_frame(
                    &name,
                    0,
                    "",
                    recovered,
                    reference.as_ref(),
                ));
            }
            ClientMessage::Unsubscribe { channel, reference } => {
                self.hub.registry.unsubscribe(&self.conn, &channel);
                self.reply(server::unsubscribed_frame(&channel, reference.as_ref()));
            }
            ClientMessage::Publish {
                channel, reference, ..
            } => {
                let msg = format!("clients may not publish to `{channel}`");
                self.error(ErrorCode::Forbidden, &msg, reference.as_ref());
            }
            ClientMessage::Refresh { token } => self.refresh(&token),
            ClientMessage::AcknowledgeBroadcast { broadcast_id } => {
                self.error(
                    ErrorCode::NotFound,
                    &format!("no announcement `{broadcast_id}`"),
                    None,
                );
            }
            // Announcements are not stored by this build, so there is never an active one.
            ClientMessage::GetActiveBroadcast => {}
        }
    }

    fn refresh(&mut self, token: &str) {
        let Some(verifier) = &self.verifier else {
            return self.error(
                ErrorCode::BadRequest,
                "authentication is disabled on this server",
                None,
            );
        };
        match verifier.verify(token) {
            Ok(id) if id.user == self.conn.identity.user => {
                self.conn
                    .expires_at
                    .store(id.expires_at.unwrap_or(0), Relaxed);
            }
            Ok(_) => self.error(
                ErrorCode::Forbidden,
                "a refreshed token must be for the same user",
                None,
            ),
            Err(e) => self.error(ErrorCode::Unauthorized, &e.to_string(), None),
        }
    }
}

impl Handler for Session {
    fn on_activity(&mut self) {
        self.conn.last_seen_ms.store(self.hub.now_ms(), Relaxed);
    }

    fn on_text(&mut self, text: Bytes, _outbox: &Outbox) -> Flow {
        if let Err(flow) = self.admit() {
            return flow;
        }
        match client::decode(&text) {
            Ok(Inbound::TextPing) => self.reply(server::text_pong_frame()),
            Ok(Inbound::Message(m)) => self.handle(m),
            Err(e) => self.error(ErrorCode::BadRequest, &e.message, e.reference.as_ref()),
        }
        Flow::Continue
    }

    fn on_binary(&mut self, _data: Bytes, _outbox: &Outbox) -> Flow {
        if let Err(flow) = self.admit() {
            return flow;
        }
        self.error(
            ErrorCode::BadRequest,
            "binary frames are not accepted; send JSON text",
            None,
        );
        Flow::Continue
    }
}

/// Channel names: 1..=256 bytes of `[A-Za-z0-9_.:@-]` (DESIGN §12).
pub fn validate_channel(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 256 {
        return Err("channel name must be 1 to 256 bytes".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "_.:@-".contains(*c)))
    {
        return Err(format!("channel name may not contain {c:?}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn channel_names() {
        assert!(super::validate_channel("news").is_ok());
        assert!(super::validate_channel("sync:42.tv").is_ok());
        assert!(super::validate_channel("").is_err());
        assert!(super::validate_channel("a b").is_err());
        assert!(super::validate_channel(&"x".repeat(257)).is_err());
    }
}
