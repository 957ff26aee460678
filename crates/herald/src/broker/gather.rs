//! Asking every node for what only it knows — its connections, for the admin page's
//! list. The asker publishes a query on the bus naming a reply key; every other node
//! answers by `RPUSH`ing its listing (JSON) there, the key expiring after
//! [`REPLY_TTL_S`]; the asker polls the key until each alive node has answered or
//! [`DEADLINE`] passes, and says how many answered — a node that is slow or gone makes
//! the list partial, never the request hang.

use std::sync::Arc;
use std::time::Duration;

use crate::broker::conn::Conn;
use serde::{Deserialize, Serialize};

use crate::hub::listing::Listing;
use crate::hub::Hub;

/// How long the asker waits for the other nodes.
pub const DEADLINE: Duration = Duration::from_secs(1);
const POLL: Duration = Duration::from_millis(20);
/// A reply nobody collects is gone after this.
pub const REPLY_TTL_S: u64 = 10;
/// The most rows one node answers, and the longest search it runs.
pub const MAX_ROWS: usize = 1000;
pub const MAX_SEARCH: usize = 256;

/// A question on the bus: its id (the reply key's suffix), the search, the row limit.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Query {
    pub id: String,
    pub q: String,
    pub l: usize,
}

pub fn reply_key(prefix: &str, id: &str) -> String {
    format!("{prefix}:reply:{id}")
}

/// What the other nodes answered.
#[derive(Debug, Default)]
pub struct Gathered {
    /// Their listings merged (newest rows first).
    pub listing: Listing,
    /// How many nodes were expected to answer, and how many did.
    pub expected: u64,
    pub answered: u64,
}

/// Waits for `expected` answers under `key`, then deletes it.
pub async fn collect(mut conn: Conn, key: String, expected: u64, limit: usize) -> Gathered {
    let started = tokio::time::Instant::now();
    let mut replies: Vec<String> = Vec::new();
    while started.elapsed() < DEADLINE {
        let mut lrange = redis::cmd("LRANGE");
        lrange.arg(&key).arg(0).arg(-1);
        let read = lrange.query_async::<Vec<String>>(&mut conn);
        if let Ok(Ok(now)) = tokio::time::timeout(DEADLINE, read).await {
            replies = now;
        }
        if replies.len() as u64 >= expected {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    let mut del = redis::cmd("DEL");
    del.arg(&key);
    let _ = tokio::time::timeout(DEADLINE, del.query_async::<()>(&mut conn)).await;
    let mut gathered = Gathered {
        expected,
        ..Gathered::default()
    };
    for reply in replies {
        match serde_json::from_str::<Listing>(&reply) {
            Ok(listing) => {
                gathered.answered += 1;
                gathered.listing.merge(listing, limit);
            }
            Err(e) => tracing::debug!("gather: dropped a malformed answer: {e}"),
        }
    }
    gathered
}

/// Answers another node's query with this node's listing. Bounded in time: a Redis
/// that does not take the answer loses it (the asker reports the node as missing).
pub async fn answer(hub: Arc<Hub>, mut conn: Conn, prefix: String, query: Query) {
    if query.q.len() > MAX_SEARCH {
        return;
    }
    let listing = hub.list_connections(&query.q, query.l.min(MAX_ROWS));
    let Ok(json) = serde_json::to_string(&listing) else {
        return;
    };
    let key = reply_key(&prefix, &query.id);
    let mut pipe = redis::pipe();
    pipe.cmd("RPUSH")
        .arg(&key)
        .arg(json)
        .ignore()
        .cmd("EXPIRE")
        .arg(&key)
        .arg(REPLY_TTL_S)
        .ignore();
    let sent = pipe.query_async::<()>(&mut conn);
    if !matches!(tokio::time::timeout(DEADLINE, sent).await, Ok(Ok(()))) {
        tracing::debug!("gather: could not answer query {}", query.id);
    }
}
