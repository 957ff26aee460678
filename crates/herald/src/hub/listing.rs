//! This node's connections as rows for an operator (`GET /api/connections`, and the
//! answer to another node that asks for them): who, which device, since when, how much
//! is queued, what it is subscribed to — filtered by a search, newest first. Plain data
//! that crosses nodes as JSON; formatting is the HTTP layer's.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{ConnHandle, Hub};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnRow {
    pub conn_id: String,
    pub user_id: String,
    pub device: Option<String>,
    pub node: String,
    /// Unix milliseconds.
    pub connected_at_ms: i64,
    pub queue_depth: usize,
    pub subscriptions: Vec<String>,
    pub admin: bool,
    pub ip: String,
}

/// One node's answer: how many it holds, how many matched, and the newest `limit` of
/// those.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listing {
    pub total: usize,
    pub matched: usize,
    pub rows: Vec<ConnRow>,
}

impl Listing {
    /// Adds another node's listing, keeping the newest `limit` rows of both.
    pub fn merge(&mut self, other: Listing, limit: usize) {
        self.total += other.total;
        self.matched += other.matched;
        self.rows.extend(other.rows);
        sort_newest_first(&mut self.rows);
        self.rows.truncate(limit);
    }
}

fn sort_newest_first(rows: &mut [ConnRow]) {
    rows.sort_by(|a, b| (b.connected_at_ms, &b.conn_id).cmp(&(a.connected_at_ms, &a.conn_id)));
}

impl Hub {
    /// This node's connections whose user id, device, connection id or a channel holds
    /// `search` (case-insensitive; empty matches all), newest first, at most `limit`.
    pub fn list_connections(&self, search: &str, limit: usize) -> Listing {
        // Handles are collected under the shard locks and inspected after, so no other
        // lock is taken while a shard is held.
        let mut all: Vec<Arc<ConnHandle>> = Vec::new();
        self.registry.for_each_conn(|c| all.push(c.clone()));
        let needle = search.trim().to_lowercase();
        // Rows (with their copied strings) are built only for the connections that match.
        let mut rows: Vec<ConnRow> = all
            .iter()
            .filter_map(|c| {
                let subscriptions = self.sorted_subscriptions(c);
                (needle.is_empty() || matches(c, &subscriptions, &needle))
                    .then(|| self.row(c, subscriptions))
            })
            .collect();
        let matched = rows.len();
        sort_newest_first(&mut rows);
        rows.truncate(limit);
        Listing {
            total: all.len(),
            matched,
            rows,
        }
    }

    fn sorted_subscriptions(&self, c: &ConnHandle) -> Vec<String> {
        let mut subscriptions: Vec<String> = self
            .registry
            .subscriptions(c)
            .iter()
            .map(|s| s.to_string())
            .collect();
        subscriptions.sort_unstable();
        subscriptions
    }

    fn row(&self, c: &ConnHandle, subscriptions: Vec<String>) -> ConnRow {
        ConnRow {
            conn_id: c.conn_id.to_string(),
            user_id: c.identity.user.to_string(),
            device: c.identity.device.as_deref().map(str::to_owned),
            node: self.node.clone(),
            connected_at_ms: c.connected_at_ms,
            queue_depth: c.outbox.depth(),
            subscriptions,
            admin: c.identity.admin,
            ip: c.ip.to_string(),
        }
    }
}

/// Whether the search text (lower case) is in the user id, device, connection id or one
/// of the channels.
fn matches(c: &ConnHandle, subscriptions: &[String], needle: &str) -> bool {
    let has = |s: &str| s.to_lowercase().contains(needle);
    has(&c.identity.user)
        || c.identity.device.as_deref().is_some_and(has)
        || has(&c.conn_id)
        || subscriptions.iter().any(|s| has(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, at: i64) -> ConnRow {
        ConnRow {
            conn_id: id.into(),
            user_id: "u".into(),
            device: None,
            node: "n".into(),
            connected_at_ms: at,
            queue_depth: 0,
            subscriptions: vec![],
            admin: false,
            ip: "127.0.0.1".into(),
        }
    }

    #[test]
    fn merged_listings_keep_the_newest_rows_and_add_the_counts() {
        let mut a = Listing {
            total: 5,
            matched: 2,
            rows: vec![row("a-2", 20), row("a-1", 10)],
        };
        let b = Listing {
            total: 3,
            matched: 2,
            rows: vec![row("b-2", 15), row("b-1", 5)],
        };
        a.merge(b, 3);
        assert_eq!((a.total, a.matched), (8, 4));
        let ids: Vec<&str> = a.rows.iter().map(|r| r.conn_id.as_str()).collect();
        assert_eq!(ids, ["a-2", "b-2", "a-1"]);
    }
}
