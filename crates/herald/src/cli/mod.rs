//! The `herald` command line. `main.rs` parses and dispatches here; this is the only
//! layer (with `main.rs`) that uses `anyhow`.

pub mod config_cmds;
pub mod listen;
pub mod open_files;
pub mod publish;
pub mod serve;
pub mod token;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "herald",
    version,
    about = "Self-hosted real-time broadcast server"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a node (zero config: 127.0.0.1:8080, memory broker, secrets in ./herald-data).
    Serve(ServeArgs),
    /// Mint a JWT signed with the data dir's HS256 secret.
    Token(token::TokenArgs),
    /// Verify a token against this configuration and print its claims.
    CheckToken(token::CheckTokenArgs),
    /// Publish through the HTTP API with the data dir's API key.
    Publish(publish::PublishArgs),
    /// Connect as a WebSocket client and print every frame (a token minted from the
    /// data dir, or --token); --channel subscribes.
    Listen(listen::ListenArgs),
    /// Print a commented default configuration file.
    Genconfig,
    /// Validate a configuration file; says exactly what is wrong and where.
    CheckConfig {
        /// The TOML file to check.
        file: PathBuf,
    },
    /// Load generator: N clients, a publish rate, deliveries/s and latency percentiles.
    Bench(crate::bench::BenchArgs),
    /// Print the version.
    Version,
}

/// Options shared by every command that reads the configuration.
#[derive(Args, Debug, Clone, Default)]
pub struct ConfigArgs {
    /// TOML configuration file (also HERALD_CONFIG).
    #[arg(long, short = 'c', env = "HERALD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data directory (overrides `data_dir`).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Address to listen on, e.g. 127.0.0.1:8080 (port 0 picks a free one).
    #[arg(long)]
    pub listen: Option<String>,
    /// pretty | json
    #[arg(long)]
    pub log_format: Option<String>,
    /// A tracing filter, e.g. info or herald=debug.
    #[arg(long)]
    pub log_level: Option<String>,
    /// Serve /conformance/echo for the Autobahn run (tests only; never in production).
    #[arg(long, hide = true)]
    pub conformance_echo: bool,
}

impl ConfigArgs {
    /// Loads file + environment + the given flag overrides.
    pub fn load(
        &self,
        mut flags: crate::config::load::Overrides,
    ) -> anyhow::Result<crate::config::Config> {
        if let Some(d) = &self.data_dir {
            flags.data_dir = Some(d.display().to_string());
        }
        Ok(crate::config::load::load(
            self.config.as_deref(),
            std::env::vars(),
            &flags,
        )?)
    }
}
