//! `herald token` and `herald check-token`.

use std::time::Duration;

use clap::Args;

use super::ConfigArgs;
use crate::auth::jwt::{mint_hs256, now_unix, Audience, Claims, Verifier};
use crate::config::load::Overrides;
use crate::config::secrets::{self, HMAC_SECRET_FILE};
use crate::config::Config;

#[derive(Args, Debug)]
pub struct TokenArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// User id (`sub`).
    #[arg(long)]
    pub sub: String,
    /// Device id.
    #[arg(long)]
    pub device: Option<String>,
    /// Groups, comma-separated (e.g. admins:7).
    #[arg(long, value_delimiter = ',')]
    pub groups: Vec<String>,
    /// Mark the token as an admin token.
    #[arg(long)]
    pub admin: bool,
    /// Server-side subscriptions, comma-separated (the `channels` claim).
    #[arg(long, value_delimiter = ',')]
    pub channels: Vec<String>,
    /// Token id (`jti`), so the token can be revoked on its own.
    #[arg(long)]
    pub jti: Option<String>,
    /// Lifetime: 90s, 30m, 1h, 7d.
    #[arg(long, default_value = "1h", value_parser = parse_ttl)]
    pub ttl: Duration,
}

#[derive(Args, Debug)]
pub struct CheckTokenArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    pub token: String,
}

pub fn parse_ttl(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("`{s}`: expected a number and a unit, like 1h"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => return Err(format!("`{unit}`: unit must be s, m, h or d")),
    };
    if secs == 0 {
        return Err("ttl must be positive".into());
    }
    Ok(Duration::from_secs(secs))
}

/// The HS256 secret tokens are minted with: the configured one, or the data dir's.
pub fn secret(cfg: &Config) -> anyhow::Result<String> {
    match &cfg.auth.hmac_secret {
        Some(s) => Ok(s.clone()),
        None => secrets::read(&cfg.data_dir, HMAC_SECRET_FILE).map_err(|e| {
            anyhow::anyhow!(
                "cannot read {}: {e} (start `herald serve` once with this data dir, or pass --data-dir)",
                secrets::path(&cfg.data_dir, HMAC_SECRET_FILE).display()
            )
        }),
    }
}

pub fn run(args: TokenArgs) -> anyhow::Result<()> {
    let cfg = args.config.load(Overrides::default())?;
    if cfg.auth.public_key_file.is_some() {
        anyhow::bail!(
            "this server verifies RS256/ES256 tokens; mint them with your identity provider"
        );
    }
    let claims = Claims {
        sub: args.sub,
        exp: now_unix() + args.ttl.as_secs(),
        device: args.device,
        groups: args.groups,
        admin: args.admin,
        iss: cfg.auth.issuer.clone(),
        aud: cfg.auth.audience.clone().map(Audience::One),
        iat: Some(now_unix()),
        jti: args.jti,
        channels: args.channels,
    };
    println!("{}", mint_hs256(&secret(&cfg)?, &claims)?);
    Ok(())
}

pub fn check(args: CheckTokenArgs) -> anyhow::Result<()> {
    let cfg = args.config.load(Overrides::default())?;
    let secret = if cfg.auth.public_key_file.is_some() {
        String::new()
    } else {
        secret(&cfg)?
    };
    let id = Verifier::new(&cfg.auth, &secret)?.verify(&args.token)?;
    println!(
        "valid: sub={} device={} groups={:?} admin={} exp={}",
        id.user,
        id.device.as_deref().unwrap_or("-"),
        id.groups,
        id.admin,
        id.expires_at.unwrap_or(0)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls() {
        assert_eq!(parse_ttl("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_ttl("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_ttl("7d"), Ok(Duration::from_secs(7 * 86400)));
        assert!(parse_ttl("1y").is_err());
        assert!(parse_ttl("h").is_err());
        assert!(parse_ttl("0s").is_err());
    }
}
