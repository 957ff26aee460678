//! Keeping clients' announcement banners true across a bus outage (DESIGN §6, §9).
//! Announcement events travel the bus and have no history of their own: the store is
//! their history. When this node loses the bus it notes which announcement was active;
//! when it has the bus again and the active one is no longer that, its clients get what
//! they missed — `active_broadcast` for each user who has not acknowledged the new one,
//! or `broadcast_cleared` if none is active now. One acknowledgement lookup per user,
//! not per connection; nothing is sent when nothing changed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::hub::{ConnHandle, Hub};
use crate::ids::UserId;
use crate::metrics::Metrics;
use crate::protocol::server;
use crate::store::Store;

/// The active announcement's id as last seen (`None` inside: none was active).
type Seen = Option<Option<String>>;

pub struct AnnouncementSync {
    store: Arc<dyn Store>,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    /// Noted when the bus was lost; None while unknown (then everything is re-stated).
    before: Mutex<Seen>,
}

impl AnnouncementSync {
    pub fn new(store: Arc<dyn Store>, hub: Arc<Hub>, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(AnnouncementSync {
            store,
            hub,
            metrics,
            before: Mutex::new(None),
        })
    }

    fn set_before(&self, seen: Seen) {
        *self.before.lock().unwrap_or_else(|p| p.into_inner()) = seen;
    }

    /// The bus is lost: note what is active now (off the caller's task).
    pub fn lost(self: &Arc<Self>) {
        let this = self.clone();
        tokio::spawn(async move {
            this.set_before(None);
            match this.store.active().await {
                Ok(a) => this.set_before(Some(a.map(|a| a.id))),
                Err(e) => this.metrics.store_error(&e.to_string()),
            }
        });
    }

    /// The bus is back: tell local clients what changed meanwhile (off the caller's task).
    pub fn back(self: &Arc<Self>) {
        let this = self.clone();
        tokio::spawn(async move {
            this.store.forget_active();
            let active = match this.store.active().await {
                Ok(a) => a,
                Err(e) => return this.metrics.store_error(&e.to_string()),
            };
            let before = this.before.lock().unwrap_or_else(|p| p.into_inner()).take();
            let now = active.as_ref().map(|a| a.id.clone());
            if before.as_ref() == Some(&now) {
                return; // nothing happened to announcements meanwhile
            }
            let mut by_user: HashMap<UserId, Vec<Arc<ConnHandle>>> = HashMap::new();
            this.hub.registry.for_each_conn(|c| {
                by_user
                    .entry(c.identity.user.clone())
                    .or_default()
                    .push(c.clone());
            });
            let Some(a) = active else {
                let cleared = server::broadcast_cleared_frame();
                for c in by_user.values().flatten() {
                    c.outbox.try_push(cleared.clone(), Instant::now());
                }
                return;
            };
            let frame = server::broadcast_frame("active_broadcast", &a);
            for (user, conns) in by_user {
                match this.store.acknowledged(&a.id, &user).await {
                    Ok(true) => {}
                    Ok(false) => {
                        for c in conns {
                            c.outbox.try_push(frame.clone(), Instant::now());
                        }
                    }
                    Err(e) => this.metrics.store_error(&e.to_string()),
                }
            }
        });
    }
}
