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
    let cfg = args.config.load(flags)?;
    init_logging(&cfg);
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
    signal.await;
    tracing::info!("shutting down: closing clients with 1001");
    node.shutdown().await;
    tracing::info!("bye");
    Ok(())
}

/// A stock Linux box gives a process 1024 open files (soft) while allowing far more
/// (hard): every connection is a descriptor, so without this a node tops out near 1,000
/// clients. Raise the soft limit to the hard one and say what we got.
pub fn raise_open_files_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::info!(open_files = n, "open-files limit raised to the hard limit"),
        Err(e) => tracing::warn!("could not raise the open-files limit: {e}"),
    }
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

pub fn init_logging(cfg: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&cfg.log.level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match cfg.log.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}
