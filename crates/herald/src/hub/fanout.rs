//! Fan-out: one frame per publication, a refcount per recipient, never a wait.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use super::registry::ConnHandle;
use super::Hub;
use crate::connection::outbox::Push;
use crate::metrics::Refusal;
use crate::protocol::codes::CloseCode;
use crate::ws::frame::Frame;

/// Who a publication is for (DESIGN §4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    All,
    User(String),
    Group(String),
    Channel(String),
}

/// Recipients to leave out: a user (all their devices) and/or one connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Exclude {
    pub user: Option<String>,
    pub conn: Option<String>,
}

impl Exclude {
    fn excludes(&self, c: &ConnHandle) -> bool {
        self.user.as_deref().is_some_and(|u| u == &*c.identity.user)
            || self.conn.as_deref().is_some_and(|id| id == &*c.conn_id)
    }
}

impl Hub {
    /// Queues `frame` to every local connection `target` names, except `exclude`.
    /// Returns how many connections it was queued to. Connections whose queue is full
    /// are closed with 4000 (slow consumer) and counted.
    pub fn deliver(
        &self,
        target: &Target,
        exclude: &Exclude,
        frame: &Frame,
        accepted: Instant,
    ) -> usize {
        let mut queued = 0usize;
        let mut slow: Vec<Arc<ConnHandle>> = Vec::new();
        let mut visit = |c: &Arc<ConnHandle>| {
            if exclude.excludes(c) {
                return;
            }
            match c.outbox.try_push(frame.clone(), accepted) {
                Push::Queued => queued += 1,
                Push::Full => slow.push(c.clone()),
                Push::Closed => {}
            }
        };
        match target {
            Target::All => self.registry.for_each_conn(&mut visit),
            Target::User(u) => self.registry.users.for_each(u, &mut visit),
            Target::Group(g) => self.registry.groups.for_each(g, &mut visit),
            Target::Channel(ch) => self.registry.channels.for_each(ch, &mut visit),
        }
        for c in slow {
            self.close_slow_consumer(&c);
        }
        self.metrics.publications.fetch_add(1, Relaxed);
        self.metrics.deliveries.fetch_add(queued as u64, Relaxed);
        queued
    }

    /// Closes a connection whose queue overflowed: queued data is dropped, 4000 is sent.
    pub fn close_slow_consumer(&self, c: &ConnHandle) {
        let dropped = c.outbox.depth() as u64;
        if c.outbox.close(
            Some(Frame::close(
                CloseCode::SlowConsumer.code(),
                CloseCode::SlowConsumer.reason(),
            )),
            true,
        ) {
            self.metrics.dropped.fetch_add(dropped + 1, Relaxed);
            self.metrics.slow_consumer_disconnects.fetch_add(1, Relaxed);
            self.metrics.refuse(Refusal::SlowConsumer);
            tracing::info!(conn_id = %c.conn_id, user_id = %c.identity.user, "slow consumer closed with 4000");
        }
    }

    /// Closes every connection with `code` (shutdown: 1001), flushing what is queued.
    pub fn close_all(&self, code: CloseCode) {
        let frame = Frame::close(code.code(), code.reason());
        self.registry.for_each_conn(|c| {
            c.outbox.close(Some(frame.clone()), false);
        });
    }
}
