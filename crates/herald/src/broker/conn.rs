//! The two ways the broker reaches Redis, behind one type: one server through a
//! [`ConnectionManager`] (`redis://`, `rediss://`), or a Redis Cluster through the
//! client's [`ClusterConnection`] (`redis+cluster://host:port,host:port`), which routes
//! each command by its key's slot, follows `MOVED`/`ASK` and refreshes its slot map.
//! Everything above speaks to [`Conn`] as to any connection (`query_async`); what
//! differs — pipelines (one slot each on a cluster) and pub/sub (shard channels) — is
//! handled where it is used, asking [`Conn::cluster`].

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, PushInfo, RedisFuture, RedisResult, Value};
use tokio::sync::mpsc;

/// The scheme of a Redis Cluster URL.
pub const CLUSTER_SCHEME: &str = "redis+cluster://";

#[derive(Clone)]
pub enum Conn {
    One(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Conn {
    pub fn cluster(&self) -> Option<&ClusterConnection> {
        match self {
            Conn::One(_) => None,
            Conn::Cluster(c) => Some(c),
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::One(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::One(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::One(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Whether `url` names a Redis Cluster.
pub fn is_cluster(url: &str) -> bool {
    url.starts_with(CLUSTER_SCHEME)
}

/// The seed nodes of a cluster URL: `redis+cluster://[user:pass@]h:p,h:p[/]`, each
/// as a `redis://` URL with the same credentials. At least one.
pub fn seeds(url: &str) -> Result<Vec<String>, String> {
    let rest = url
        .strip_prefix(CLUSTER_SCHEME)
        .ok_or_else(|| format!("`{url}` is not a {CLUSTER_SCHEME} URL"))?;
    let rest = rest.trim_end_matches('/');
    let (auth, hosts) = match rest.rsplit_once('@') {
        Some((a, h)) => (format!("{a}@"), h),
        None => (String::new(), rest),
    };
    let seeds: Vec<String> = hosts
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(|h| format!("redis://{auth}{h}"))
        .collect();
    if seeds.is_empty() {
        return Err(format!("`{url}` names no host:port"));
    }
    for s in &seeds {
        redis::IntoConnectionInfo::into_connection_info(s.as_str())
            .map_err(|e| format!("`{url}`: {e}"))?;
    }
    Ok(seeds)
}

/// A cluster client speaking RESP3 (shard channels need it), bounded in time: a
/// command waits at most `response` per try and `overall` in all (a failover takes a
/// few seconds; the publisher rides through it instead of failing at the first try).
pub fn cluster_client(
    url: &str,
    pushes: Option<mpsc::UnboundedSender<PushInfo>>,
    response: Duration,
    overall: Duration,
) -> RedisResult<ClusterClient> {
    let seeds = seeds(url).map_err(|e| {
        redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "bad URL", e))
    })?;
    let mut b = ClusterClient::builder(seeds)
        .use_protocol(redis::ProtocolVersion::RESP3)
        .connection_timeout(response)
        .response_timeout(response)
        .overall_response_timeout(Some(overall));
    if let Some(tx) = pushes {
        b = b.push_sender(tx);
    }
    b.build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_url_names_its_seeds_with_their_credentials() {
        assert_eq!(
            seeds("redis+cluster://127.0.0.1:7000,127.0.0.1:7001/").unwrap(),
            vec!["redis://127.0.0.1:7000", "redis://127.0.0.1:7001"]
        );
        assert_eq!(
            seeds("redis+cluster://u:p@h1:1,h2:2").unwrap(),
            vec!["redis://u:p@h1:1", "redis://u:p@h2:2"]
        );
        assert!(seeds("redis+cluster://").is_err());
        assert!(seeds("redis://h:1").is_err());
        assert!(is_cluster("redis+cluster://h:1") && !is_cluster("redis://h:1"));
    }
}

/// The pub/sub side: channels on one server, shard channels on a cluster (each
/// `SSUBSCRIBE` goes to the shard that owns the channel's slot, one call per channel:
/// channels of different slots cannot share one).
#[derive(Clone)]
pub enum PubSub {
    One(ConnectionManager),
    Cluster(ClusterConnection),
}

impl PubSub {
    pub async fn follow(&mut self, topics: &[String]) -> RedisResult<()> {
        match self {
            PubSub::One(c) => c.subscribe(topics).await,
            PubSub::Cluster(c) => {
                for t in topics {
                    c.ssubscribe(t).await?;
                }
                Ok(())
            }
        }
    }

    pub async fn unfollow(&mut self, topics: &[String]) -> RedisResult<()> {
        match self {
            PubSub::One(c) => c.unsubscribe(topics).await,
            PubSub::Cluster(c) => {
                for t in topics {
                    c.sunsubscribe(t).await?;
                }
                Ok(())
            }
        }
    }
}
