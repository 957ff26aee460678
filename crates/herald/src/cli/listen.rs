//! `herald listen`: a WebSocket client on the command line, so the README walkthrough
//! (and an operator on a server) needs nothing but herald. It speaks herald's own codec
//! in the client role (the bench's), prints every text frame as one JSON line, and
//! answers pings. With a TLS listener, use any WebSocket client (it speaks plain `ws://`).

use std::net::ToSocketAddrs;
use std::time::Duration;

use clap::Args;
use serde_json::{json, Value};

use super::ConfigArgs;
use crate::auth::jwt::{mint_hs256, now_unix, Audience, Claims};
use crate::config::load::Overrides;

#[derive(Args, Debug)]
pub struct ListenArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Server base URL (default: http://<listen>); `ws://` works too.
    #[arg(long)]
    pub url: Option<String>,
    /// Connect with this token instead of minting one from the data dir's secret.
    #[arg(long)]
    pub token: Option<String>,
    /// The user to mint a token for.
    #[arg(long, default_value = "cli")]
    pub sub: String,
    /// The device the minted token names.
    #[arg(long)]
    pub device: Option<String>,
    /// Subscribe to this channel (repeatable).
    #[arg(long)]
    pub channel: Vec<String>,
    /// Recover from here on the first channel: `OFFSET:EPOCH` (a `pub`'s offset and epoch).
    #[arg(long)]
    pub since: Option<String>,
    /// Exit after this many `pub` frames.
    #[arg(long)]
    pub count: Option<u64>,
}

/// `host:port` of a `http://`, `https://`, `ws://` URL or a bare authority.
fn authority(url: &str) -> anyhow::Result<&str> {
    let rest = ["http://", "ws://"]
        .iter()
        .find_map(|p| url.strip_prefix(p))
        .or_else(|| (!url.contains("://")).then_some(url))
        .ok_or_else(|| anyhow::anyhow!("`{url}`: herald listen speaks plain http:// / ws://"))?;
    Ok(rest.split('/').next().unwrap_or(rest))
}

fn subscribe_message(channel: &str, since: Option<&str>) -> anyhow::Result<String> {
    let mut msg = json!({"type": "subscribe", "channel": channel});
    if let Some(since) = since {
        let (offset, epoch) = since
            .split_once(':')
            .ok_or_else(|| anyhow::anyhow!("--since is OFFSET:EPOCH"))?;
        let offset: u64 = offset
            .parse()
            .map_err(|_| anyhow::anyhow!("--since: `{offset}` is not an offset"))?;
        if let Some(obj) = msg.as_object_mut() {
            obj.insert("since".into(), json!({"offset": offset, "epoch": epoch}));
        }
    }
    Ok(msg.to_string())
}

pub async fn run(args: ListenArgs) -> anyhow::Result<()> {
    let cfg = args.config.load(Overrides::default())?;
    let token = match args.token {
        Some(t) => t,
        None => {
            let claims = Claims {
                sub: args.sub.clone(),
                exp: now_unix() + 24 * 3600,
                device: args.device.clone(),
                groups: Vec::new(),
                admin: false,
                iss: cfg.auth.issuer.clone(),
                aud: cfg.auth.audience.clone().map(Audience::One),
                iat: Some(now_unix()),
                jti: None,
                channels: Vec::new(),
            };
            mint_hs256(&super::token::secret(&cfg)?, &claims)?
        }
    };
    let url = args.url.unwrap_or_else(|| format!("http://{}", cfg.listen));
    let host = authority(&url)?;
    let addr = host
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| anyhow::anyhow!("`{host}` resolves to nothing"))?;
    let connecting = crate::bench::client::open(addr, host, &token);
    let (mut conn, first) = tokio::time::timeout(Duration::from_secs(10), connecting)
        .await
        .map_err(|_| anyhow::anyhow!("no answer from {host} within 10 s"))?
        .map_err(|e| anyhow::anyhow!("{host}: {e}"))?;
    println!("{}", String::from_utf8_lossy(&first));
    for (i, channel) in args.channel.iter().enumerate() {
        let since = if i == 0 { args.since.as_deref() } else { None };
        let msg = subscribe_message(channel, since)?;
        conn.send_text(msg.as_bytes()).await?;
    }
    let mut pubs = 0u64;
    loop {
        if args.count.is_some_and(|n| pubs >= n) {
            return Ok(());
        }
        let text = match conn.next_text("the next message").await {
            Ok(t) => t,
            Err(e) => anyhow::bail!("{e}"),
        };
        let line = String::from_utf8_lossy(&text);
        println!("{line}");
        let kind = serde_json::from_str::<Value>(&line)
            .ok()
            .and_then(|v| v.get("type").and_then(Value::as_str).map(str::to_owned));
        if kind.as_deref() == Some("pub") {
            pubs += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_since() {
        assert_eq!(
            authority("http://127.0.0.1:8080").unwrap(),
            "127.0.0.1:8080"
        );
        assert_eq!(authority("ws://h:1/ws").unwrap(), "h:1");
        assert_eq!(authority("h:2").unwrap(), "h:2");
        assert!(authority("https://h:3").is_err());
        let m: Value =
            serde_json::from_str(&subscribe_message("news", Some("7:ab")).unwrap()).unwrap();
        assert_eq!(m["since"], json!({"offset": 7, "epoch": "ab"}));
        assert!(subscribe_message("news", Some("x:ab")).is_err());
        assert!(subscribe_message("news", Some("7")).is_err());
    }
}
