//! Filling what a node missed of a channel from the shared history (DESIGN §9): when a
//! publication arrives whose offset is past the next one this node holds, or when the
//! node's subscription to the channel becomes live (its first local subscriber, or the
//! pub/sub connection came back after an outage), the missing offsets are read from the
//! channel's Redis stream (whose entry ids are the offsets) and delivered in order
//! before anything newer. Subscribers then miss nothing and stay connected. What the
//! stream no longer holds cannot be filled: the channel's next publication shows the
//! gap and its subscribers are closed with 4003 to resync.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use redis::RedisResult;

use super::conn::Conn;
use super::envelope;
use super::keys::Keys;
use crate::hub::channels::Earlier;
use crate::hub::{Inlet, Publication};

const PRIME: &str = include_str!("prime.lua");

/// One stream entry: its id and its fields (`m` = the envelope).
type Entry = (String, Vec<(String, Vec<u8>)>);

/// Offsets `from..=to` of `channel` in `epoch`.
pub struct Span<'a> {
    pub channel: &'a str,
    pub from: u64,
    pub to: u64,
    pub epoch: &'a Arc<str>,
}

/// Delivers `span` from the stream; how many.
pub async fn fill(
    inlet: &Inlet,
    conn: &mut Conn,
    keys: &Keys,
    span: Span<'_>,
) -> RedisResult<usize> {
    let mut delivered = 0;
    let epoch = span.epoch;
    for (offset, p) in range(inlet, conn, keys, span).await? {
        if inlet.deliver(&p, Some((offset, epoch))).is_ok() {
            delivered += 1;
        }
    }
    Ok(delivered)
}

/// `span` as the stream holds it, for one replay that reaches further back than this
/// node's copy.
pub async fn read(
    inlet: &Inlet,
    conn: &mut Conn,
    keys: &Keys,
    span: Span<'_>,
) -> RedisResult<Vec<Earlier>> {
    let stored = range(inlet, conn, keys, span).await?;
    Ok(stored
        .into_iter()
        .map(|(offset, p)| Earlier {
            offset,
            kept: p.exclude.kept(None),
            data: p.data,
        })
        .collect())
}

/// The stream's entries of `span`, decoded, in order.
async fn range(
    inlet: &Inlet,
    conn: &mut Conn,
    keys: &Keys,
    span: Span<'_>,
) -> RedisResult<Vec<(u64, Publication)>> {
    if span.from > span.to {
        return Ok(Vec::new());
    }
    let entries: Vec<Entry> = redis::cmd("XRANGE")
        .arg(keys.hist(span.channel))
        .arg(format!("{}-1", span.from))
        .arg(format!("{}-1", span.to))
        .query_async(conn)
        .await?;
    Ok(decode_entries(inlet, entries, span.epoch))
}

/// Brings this node's copy of `channel` to the shared history's top, once its
/// subscription is live (the first local subscriber, or again after an outage): one
/// atomic read of the position and of the entries past what the node holds, delivered
/// before anything that arrives live (which is then a duplicate and dropped by offset).
/// The channel's epoch is created here if it has none yet, so every node hands its
/// subscribers the same one.
pub async fn prime(
    inlet: &Inlet,
    conn: &mut Conn,
    keys: &Keys,
    channel: &str,
    meta_ttl_s: u64,
) -> RedisResult<usize> {
    let held = inlet.hub().registry.channels.top(channel);
    let (held_epoch, held_top) = held
        .as_ref()
        .map_or(("", 0), |(offset, epoch)| (&**epoch, *offset));
    let (top, epoch, entries): (u64, String, Vec<Entry>) = redis::cmd("EVAL")
        .arg(PRIME)
        .arg(2)
        .arg(keys.meta(channel))
        .arg(keys.hist(channel))
        .arg(format!("{:016x}", rand::random::<u64>()))
        .arg(meta_ttl_s)
        .arg(held_epoch)
        .arg(held_top)
        .query_async(conn)
        .await?;
    let epoch: Arc<str> = Arc::from(epoch);
    let stored = decode_entries(inlet, entries, &epoch);
    let count = stored.len();
    if let Err(e) = inlet.prime(channel, &epoch, top, &stored) {
        tracing::debug!(channel, "not primed: {e:?}");
    }
    Ok(count)
}

/// The publications of stream entries in `epoch`, in offset order. Entries that do not
/// decode are counted as malformed and skipped (the gap they leave resyncs the
/// channel's subscribers).
fn decode_entries(inlet: &Inlet, entries: Vec<Entry>, epoch: &Arc<str>) -> Vec<(u64, Publication)> {
    let mut out = Vec::with_capacity(entries.len());
    for (_, fields) in entries {
        let decoded = fields
            .into_iter()
            .find(|(k, _)| k == "m")
            .and_then(|(_, message)| envelope::decode(&message).ok())
            .and_then(|env| {
                let (offset, e) = env.position.clone()?;
                let p = env.body.into_publication().ok()??;
                Some((offset, e, p))
            });
        match decoded {
            Some((offset, e, p)) if e == *epoch => out.push((offset, p)),
            Some(_) => {} // an older epoch's entry: not this history's
            None => {
                inlet.hub().metrics.broker_malformed.fetch_add(1, Relaxed);
            }
        }
    }
    out
}
