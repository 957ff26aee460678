//! The `herald` binary: parse the command line and dispatch.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use clap::Parser;
use herald::cli::{self, Cli, Command};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Genconfig => {
            cli::config_cmds::genconfig();
            Ok(())
        }
        Command::CheckConfig { file } => cli::config_cmds::check_config(&file),
        Command::Version => {
            println!("herald {} ({})", herald::VERSION, herald::COMMIT);
            Ok(())
        }
        Command::Token(a) => cli::token::run(a),
        Command::CheckToken(a) => cli::token::check(a),
        command => runtime().and_then(|rt| {
            rt.block_on(async move {
                match command {
                    Command::Serve(a) => cli::serve::run(a).await,
                    Command::Publish(a) => cli::publish::run(a).await,
                    Command::Listen(a) => cli::listen::run(a).await,
                    Command::Bench(a) => herald::bench::run(a).await,
                    _ => Ok(()),
                }
            })
        }),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}
