//! `herald publish`: calls `POST /api/publish` with the data dir's API key.

use clap::Args;
use serde_json::Value;

use super::ConfigArgs;
use crate::config::load::Overrides;
use crate::config::secrets::{self, API_KEY_FILE};

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["channel", "user", "group", "all"])))]
pub struct PublishArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Publish to a channel.
    #[arg(long)]
    pub channel: Option<String>,
    /// Publish to every connection of a user.
    #[arg(long)]
    pub user: Option<String>,
    /// Publish to a group (from tokens' `groups`).
    #[arg(long)]
    pub group: Option<String>,
    /// Publish to everyone.
    #[arg(long)]
    pub all: bool,
    #[arg(long)]
    pub exclude_user: Option<String>,
    #[arg(long)]
    pub exclude_conn: Option<String>,
    /// Server base URL (default: http://<listen>).
    #[arg(long)]
    pub url: Option<String>,
    /// The payload, as JSON (a bare word is sent as a JSON string).
    pub data: String,
}

pub async fn run(args: PublishArgs) -> anyhow::Result<()> {
    let cfg = args.config.load(Overrides::default())?;
    let key = secrets::read(&cfg.data_dir, API_KEY_FILE).map_err(|e| {
        anyhow::anyhow!(
            "cannot read {}: {e}",
            secrets::path(&cfg.data_dir, API_KEY_FILE).display()
        )
    })?;
    let data: Value = serde_json::from_str(&args.data).unwrap_or(Value::String(args.data.clone()));
    let mut body = serde_json::Map::new();
    body.insert("data".into(), data);
    for (k, v) in [
        ("channel", args.channel),
        ("user", args.user),
        ("group", args.group),
        ("exclude_user", args.exclude_user),
        ("exclude_conn", args.exclude_conn),
    ] {
        if let Some(v) = v {
            body.insert(k.into(), Value::String(v));
        }
    }
    if args.all {
        body.insert("all".into(), Value::Bool(true));
    }
    let body = Value::Object(body);
    let scheme = if cfg.tls.cert_file.is_some() {
        "https"
    } else {
        "http"
    };
    let base = args
        .url
        .unwrap_or_else(|| format!("{scheme}://{}", cfg.listen));
    let res = reqwest::Client::new()
        .post(format!("{}/api/publish", base.trim_end_matches('/')))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await?;
    let status = res.status();
    let text = res.text().await?;
    println!("{text}");
    if !status.is_success() {
        anyhow::bail!("publish failed with HTTP {status}");
    }
    Ok(())
}
