//! Embeds the commit the binary was built from (`herald version`, `herald_build_info`):
//! `git rev-parse --short HEAD`, or `HERALD_COMMIT` when building outside a checkout
//! (a container build), or "unknown".

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=HERALD_COMMIT");
    println!("cargo:rerun-if-changed=../../.git/HEAD");
    println!("cargo:rerun-if-changed=../../.git/refs/heads");
    let commit = std::env::var("HERALD_COMMIT").ok().or_else(|| {
        let out = Command::new("git")
            .args(["rev-parse", "--short", "HEAD"])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    });
    let commit = commit
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=HERALD_COMMIT={commit}");
}
