//! `herald serve`: load config, set up logs, bind, run until SIGTERM/SIGINT.

use tokio::net::TcpListener;

use super::ServeArgs;
use crate::config::load::Overrides;
use crate::config::{Config, LogFormat};
use crate::{Node, ServeOptions};

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let flags = Overrides {
        listen: args.listen.clone(),
        data_dir: None,
        log_format: args.log_format.clone(),
        log_level: args.log_level.clone(),
    };
    let cfg = args.config.load(flags.clone())?;
    let set_log_level = init_logging(&cfg);
    for name in crate::config::load::unknown_env_vars(std::env::vars()) {
        tracing::warn!("ignoring environment variable {name}: it names no configuration key");
    }
    raise_open_files_limit();
    // Signal handlers go in before the address is printed: whoever reads that line may
    // send SIGTERM at once, and it must mean "drain", not "die".
    let signal = shutdown_signal()?;
    let listener = TcpListener::bind(cfg.listen_addr())
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", cfg.listen))?;
    let node = Node::start(
        listener,
        cfg,
        ServeOptions {
            conformance_echo: args.conformance_echo,
        },
    )
    .await?;
    // Printed on stdout so scripts and tests can find the bound port.
    println!("herald listening on {}://{}", node.scheme(), node.addr);
    tracing::info!(addr = %node.addr, node = %node.app.hub.node, "listening");
    let mut signal = std::pin::pin!(signal);
    let mut hangup = hangup_signal()?;
    loop {
        tokio::select! {
            _ = &mut signal => break,
            _ = hangup.recv() => reload(&args, &flags, &node, set_log_level.as_deref()),
        }
    }
    tracing::info!("shutting down: closing clients with 1001");
    node.shutdown().await;
    tracing::info!("bye");
    Ok(())
}

/// Every connection is a descriptor: without this a node on a stock Linux box tops out
/// near 1,000 clients. Raise the soft limit to the hard one and say what we got.
fn raise_open_files_limit() {
    match super::open_files::raise() {
        Ok(l) => tracing::info!(
            open_files = l.soft,
            was = l.before,
            "open-files limit raised to the hard limit"
        ),
        Err(e) => tracing::warn!("could not raise the open-files limit: {e}"),
    }
}

/// `SIGHUP`: read the config again; an invalid one is refused and the running one stays.
fn reload(args: &ServeArgs, flags: &Overrides, node: &Node, set_log_level: Option<&SetLogLevelFn>) {
    let cfg = match args.config.load(flags.clone()) {
        Ok(cfg) => cfg,
        Err(e) => {
            tracing::error!("SIGHUP: configuration refused, the running one stays: {e}");
            return;
        }
    };
    if let Some(set) = set_log_level {
        if let Err(e) = set(&cfg.log.level) {
            tracing::warn!("SIGHUP: log level not changed: {e}");
        }
    }
    for key in node.reload(cfg) {
        tracing::warn!("SIGHUP: `{key}` changed but needs a restart; the running value stays");
    }
    tracing::info!("SIGHUP: configuration reloaded (API keys, origins, proxies, limits, namespaces, log level)");
}

#[cfg(unix)]
fn hangup_signal() -> anyhow::Result<tokio::signal::unix::Signal> {
    Ok(tokio::signal::unix::signal(
        tokio::signal::unix::SignalKind::hangup(),
    )?)
}

/// Resolves on SIGTERM or SIGINT; the handlers are registered when this returns.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        Ok(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}

/// Sets a new log filter on the running subscriber (`SIGHUP`).
pub type SetLogLevelFn = dyn Fn(&str) -> Result<(), String> + Send + Sync;
pub type SetLogLevel = Box<SetLogLevelFn>;

/// Installs the subscriber; returns how to change its filter later (None if another
/// subscriber was already installed, as in tests).
pub fn init_logging(cfg: &Config) -> Option<SetLogLevel> {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_new(&cfg.log.level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    fn setter<L, S>(handle: tracing_subscriber::reload::Handle<L, S>) -> SetLogLevel
    where
        L: From<EnvFilter> + Send + Sync + 'static,
        S: 'static,
    {
        Box::new(move |level: &str| {
            let filter = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
            handle.reload(filter).map_err(|e| e.to_string())
        })
    }
    match cfg.log.format {
        LogFormat::Json => {
            let b = builder.json().with_filter_reloading();
            let set = setter(b.reload_handle());
            b.try_init().ok().map(|()| set)
        }
        LogFormat::Pretty => {
            let b = builder.with_filter_reloading();
            let set = setter(b.reload_handle());
            b.try_init().ok().map(|()| set)
        }
    }
}
