//! `herald genconfig` and `herald check-config`.

use std::path::Path;

use crate::config::load::{check_file, unknown_env_vars};
use crate::config::template::DEFAULT_TOML;

pub fn genconfig() {
    print!("{DEFAULT_TOML}");
}

/// Prints `ok` or every problem found; the caller turns an error into exit code 1.
/// `HERALD_…` variables that name no key are listed as warnings (they do not stop
/// `serve`); unknown keys in the file are errors.
pub fn check_config(path: &Path) -> anyhow::Result<()> {
    for name in unknown_env_vars(std::env::vars()) {
        eprintln!("warning: environment variable {name} names no configuration key (ignored)");
    }
    check_file(path)?;
    println!("{}: ok", path.display());
    Ok(())
}
