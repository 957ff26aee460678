//! Presence events for other systems (DESIGN §13, seed 004): `user_online`,
//! `user_offline` (after the grace period), `connection_open` and `connection_close`,
//! handed to whoever delivers them (the webhook sender) through one bounded queue.
//!
//! Who decides a user event matters, because each must be sent once per cluster: on one
//! node (the memory broker) the registry and the sweeper do, as the user's first
//! connection registers and as the grace after the last runs out; with Redis the node
//! whose write to the cluster view turned the user on or off does (`broker::cluster`),
//! and the registry reports connection events only. A full queue drops the event and
//! counts it; nothing here waits.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::OnceLock;

use serde::Serialize;
use tokio::sync::mpsc;

use crate::auth::BACKEND_USER;
use crate::ids::{ConnId, UserId};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    UserOnline,
    UserOffline,
    ConnectionOpen,
    ConnectionClose,
}

impl EventKind {
    pub const ALL: [EventKind; 4] = [
        EventKind::UserOnline,
        EventKind::UserOffline,
        EventKind::ConnectionOpen,
        EventKind::ConnectionClose,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::UserOnline => "user_online",
            EventKind::UserOffline => "user_offline",
            EventKind::ConnectionOpen => "connection_open",
            EventKind::ConnectionClose => "connection_close",
        }
    }

    pub fn parse(s: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// One event, as the receiver reads it: `{"event","user_id","conn_id"?,"node","at"}`,
/// `at` in Unix milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PresenceEvent {
    pub event: EventKind,
    pub user_id: UserId,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conn_id: Option<ConnId>,
    pub node: String,
    pub at: i64,
}

impl PresenceEvent {
    pub fn new(event: EventKind, user_id: &UserId, conn_id: Option<&ConnId>, node: &str) -> Self {
        PresenceEvent {
            event,
            user_id: user_id.clone(),
            conn_id: conn_id.cloned(),
            node: node.to_owned(),
            at: crate::store::time::now_ms(),
        }
    }

    /// The JSON body, the same bytes for the webhook and the Redis message.
    pub fn body(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Where events go. Inert until [`attach`](Self::attach)ed: without webhooks every
/// emit is one atomic load.
#[derive(Default)]
pub struct PresenceEvents {
    out: OnceLock<Attached>,
    /// Events lost because the queue was full.
    pub dropped: AtomicU64,
}

struct Attached {
    tx: mpsc::Sender<PresenceEvent>,
    wanted: u8,
    /// This node decides user_online / user_offline itself (no cluster view).
    decides_users: bool,
    /// This node's name, in every event.
    node: String,
}

impl PresenceEvents {
    /// Starts sending the `wanted` kinds to `tx`, naming `node`; `decides_users` on a
    /// node without a cluster view. Once per process (a second call is ignored and says
    /// so).
    pub fn attach(
        &self,
        tx: mpsc::Sender<PresenceEvent>,
        wanted: &[EventKind],
        decides_users: bool,
        node: &str,
    ) -> bool {
        let wanted = wanted.iter().fold(0, |m, k| m | k.bit());
        self.out
            .set(Attached {
                tx,
                wanted,
                decides_users,
                node: node.to_owned(),
            })
            .is_ok()
    }

    /// Whether `kind` is sent at all.
    pub fn wants(&self, kind: EventKind) -> bool {
        self.out.get().is_some_and(|a| a.wanted & kind.bit() != 0)
    }

    /// Whether the registry and sweeper decide user events (one node) — false with a
    /// cluster view, which decides them instead.
    pub fn local_users(&self) -> bool {
        self.out.get().is_some_and(|a| a.decides_users)
    }

    /// Queues `event` if its kind is wanted; a full queue drops and counts it.
    pub fn emit(&self, event: PresenceEvent) {
        let Some(a) = self.out.get() else { return };
        if a.wanted & event.event.bit() == 0 {
            return;
        }
        if a.tx.try_send(event).is_err() {
            self.dropped.fetch_add(1, Relaxed);
        }
    }

    /// The event `kind` for `user` (and `conn`) as this node reports it, if wanted.
    /// Backends (the user [`BACKEND_USER`]) are not people coming and going: none.
    pub fn make(
        &self,
        kind: EventKind,
        user: &UserId,
        conn: Option<&ConnId>,
    ) -> Option<PresenceEvent> {
        let a = self.out.get().filter(|a| a.wanted & kind.bit() != 0)?;
        if *user == BACKEND_USER {
            return None;
        }
        Some(PresenceEvent::new(kind, user, conn, &a.node))
    }

    /// Emits `kind` for a user, built only if wanted.
    pub fn user(&self, kind: EventKind, user: &UserId) {
        if let Some(e) = self.make(kind, user, None) {
            self.emit(e);
        }
    }

    /// Emits `kind` for a connection, built only if wanted.
    pub fn connection(&self, kind: EventKind, user: &UserId, conn: &ConnId) {
        if let Some(e) = self.make(kind, user, Some(conn)) {
            self.emit(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_wanted_kinds_are_queued_and_a_full_queue_counts_its_drops() {
        let events = PresenceEvents::default();
        let u = UserId::from("42");
        events.user(EventKind::UserOnline, &u);
        assert!(!events.wants(EventKind::UserOnline), "inert before attach");
        let (tx, mut rx) = mpsc::channel(1);
        assert!(events.attach(tx.clone(), &[EventKind::UserOnline], true, "n1"));
        assert!(!events.attach(tx, &[], false, "n2"), "attached once");
        assert!(events.local_users());
        events.user(EventKind::UserOffline, &u);
        assert!(rx.try_recv().is_err(), "user_offline is not wanted");
        events.user(EventKind::UserOnline, &u);
        events.user(EventKind::UserOnline, &UserId::from(BACKEND_USER));
        events.user(EventKind::UserOnline, &u);
        assert_eq!(events.dropped.load(Relaxed), 1, "the queue holds one");
        let got = rx.try_recv().ok();
        assert_eq!(got.as_ref().map(|e| e.event), Some(EventKind::UserOnline));
        assert_eq!(got.map(|e| e.node), Some("n1".to_owned()));
    }

    #[test]
    fn the_body_has_the_contract_fields() {
        let e = PresenceEvent {
            event: EventKind::ConnectionOpen,
            user_id: UserId::from("4\"2"),
            conn_id: Some(ConnId::from("c1")),
            node: "n1".into(),
            at: 1_700_000_000_000,
        };
        let v: serde_json::Value = serde_json::from_str(&e.body()).unwrap_or_default();
        assert_eq!(
            v,
            serde_json::json!({"event": "connection_open", "user_id": "4\"2", "conn_id": "c1", "node": "n1", "at": 1_700_000_000_000_i64})
        );
        let u = PresenceEvent::new(EventKind::UserOffline, &UserId::from("7"), None, "n");
        assert!(!u.body().contains("conn_id"));
        assert_eq!(
            EventKind::parse("user_offline"),
            Some(EventKind::UserOffline)
        );
        assert_eq!(EventKind::parse("user_gone"), None);
    }
}
