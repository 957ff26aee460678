//! Secrets generated on first start and kept in the data dir, so `herald serve` needs no
//! configuration and `herald token` / `herald publish` work against the same node.

use std::io::Write;
use std::path::{Path, PathBuf};

use rand::RngCore;

pub const HMAC_SECRET_FILE: &str = "hmac_secret";
pub const API_KEY_FILE: &str = "api_key";

/// Reads `data_dir/name`, creating it (mode 0600) with 32 random bytes in hex if absent.
/// Returns the secret and whether it was just created.
pub fn load_or_create(data_dir: &Path, name: &str) -> std::io::Result<(String, bool)> {
    let path = data_dir.join(name);
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => return Ok((s.trim().to_owned(), false)),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::create_dir_all(data_dir)?;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&path)?;
    f.write_all(secret.as_bytes())?;
    Ok((secret, true))
}

/// Reads an existing secret (for the CLI helpers), without creating one.
pub fn read(data_dir: &Path, name: &str) -> std::io::Result<String> {
    Ok(std::fs::read_to_string(data_dir.join(name))?
        .trim()
        .to_owned())
}

pub fn path(data_dir: &Path, name: &str) -> PathBuf {
    data_dir.join(name)
}
