//! The binary's helper commands: genconfig, check-config, token, check-token.

use std::process::Command;

use crate::support::TempDir;

fn herald(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(args)
        .env_remove("HERALD_CONFIG")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn genconfig_output_passes_check_config() {
    let dir = TempDir::new();
    let (ok, toml, _) = herald(&["genconfig"]);
    assert!(ok);
    let path = dir.0.join("herald.toml");
    std::fs::write(&path, toml).unwrap();
    let (ok, out, err) = herald(&["check-config", path.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("ok"));
}

#[test]
fn check_config_says_what_and_where() {
    let dir = TempDir::new();
    let path = dir.0.join("bad.toml");
    std::fs::write(&path, "listen = \"127.0.0.1:1\"\n[auth]\nmode = \"jtw\"\n").unwrap();
    let (ok, _, err) = herald(&["check-config", path.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("line 3") && err.contains("jtw"), "{err}");
    std::fs::write(&path, "[ws]\nqueue_messages = 0\n").unwrap();
    let (ok, _, err) = herald(&["check-config", path.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("ws.queue_messages"), "{err}");
}

#[test]
fn token_mints_what_check_token_accepts() {
    let dir = TempDir::new();
    herald::config::secrets::load_or_create(&dir.0, "hmac_secret").unwrap();
    let d = dir.0.to_str().unwrap();
    let (ok, token, err) = herald(&[
        "token",
        "--data-dir",
        d,
        "--sub",
        "42",
        "--device",
        "tv",
        "--groups",
        "admins:7",
        "--admin",
        "--ttl",
        "10m",
    ]);
    assert!(ok, "{err}");
    let (ok, out, err) = herald(&["check-token", "--data-dir", d, token.trim()]);
    assert!(ok, "{err}");
    assert!(
        out.contains("sub=42") && out.contains("device=tv") && out.contains("admin=true"),
        "{out}"
    );
    let (ok, _, err) = herald(&["check-token", "--data-dir", d, "garbage"]);
    assert!(!ok);
    assert!(err.contains("invalid token"), "{err}");
}
