//! Filling what a node missed of a channel from the shared history (DESIGN §9): when a
//! publication arrives whose offset is past the next one this node holds, or when the
//! pub/sub connection comes back after an outage, the missing offsets are read from the
//! channel's Redis stream (whose entry ids are the offsets) and delivered in order
//! before anything newer. Subscribers then miss nothing and stay connected. What the
//! stream no longer holds cannot be filled: the channel's next publication shows the
//! gap and its subscribers are closed with 4003 to resync.

use std::sync::Arc;

use redis::aio::ConnectionManager;
use redis::RedisResult;

use super::envelope;
use crate::hub::Inlet;

/// One stream entry: its id and its fields (`m` = the envelope).
type Entry = (String, Vec<(String, Vec<u8>)>);

/// Delivers offsets `from..=to` of `channel` in `epoch` from the stream; how many.
pub async fn fill(
    inlet: &Inlet,
    conn: &mut ConnectionManager,
    prefix: &str,
    channel: &str,
    from: u64,
    to: u64,
    epoch: &Arc<str>,
) -> RedisResult<usize> {
    if from > to {
        return Ok(0);
    }
    let entries: Vec<Entry> = redis::cmd("XRANGE")
        .arg(format!("{prefix}:hist:{channel}"))
        .arg(format!("{from}-1"))
        .arg(format!("{to}-1"))
        .query_async(conn)
        .await?;
    let mut delivered = 0;
    for (_, fields) in entries {
        let Some((_, message)) = fields.into_iter().find(|(k, _)| k == "m") else {
            continue;
        };
        let Ok(env) = envelope::decode(&message) else {
            continue;
        };
        let Some((offset, e)) = env.position.clone() else {
            continue;
        };
        if e != *epoch {
            continue;
        }
        if let Ok(Some(p)) = env.body.into_publication() {
            if inlet.deliver(&p, Some((offset, &e))).is_ok() {
                delivered += 1;
            }
        }
    }
    Ok(delivered)
}

/// After the pub/sub connection came back: brings every channel this node serves up to
/// the shared top, or resyncs its subscribers where the shared history restarted.
pub async fn catch_up(inlet: &Inlet, conn: &mut ConnectionManager, prefix: &str) {
    let channels = &inlet.hub().registry.channels;
    for (name, top, epoch) in channels.tops() {
        let meta: RedisResult<(Option<String>, Option<u64>)> = redis::cmd("HMGET")
            .arg(format!("{prefix}:meta:{name}"))
            .arg("e")
            .arg("o")
            .query_async(conn)
            .await;
        match meta {
            Ok((Some(e), Some(o))) if *e == *epoch => {
                if o > top {
                    match fill(inlet, conn, prefix, &name, top + 1, o, &epoch).await {
                        Ok(n) => {
                            tracing::info!(channel = %name, filled = n, "caught up after a broker outage")
                        }
                        Err(e) => tracing::warn!(channel = %name, "could not catch up: {e}"),
                    }
                }
            }
            Ok(_) => inlet.resync(&name),
            Err(e) => tracing::warn!(channel = %name, "could not catch up: {e}"),
        }
    }
}
