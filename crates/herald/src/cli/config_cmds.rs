//! `herald genconfig` and `herald check-config`.

use std::path::Path;

use crate::config::load::check_file;
use crate::config::template::DEFAULT_TOML;

pub fn genconfig() {
    print!("{DEFAULT_TOML}");
}

/// Prints `ok` or every problem found; the caller turns an error into exit code 1.
pub fn check_config(path: &Path) -> anyhow::Result<()> {
    check_file(path)?;
    println!("{}: ok", path.display());
    Ok(())
}
