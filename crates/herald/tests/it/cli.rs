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

#[tokio::test]
async fn publish_command_reaches_clients_with_the_data_dir_key() {
    let s = crate::support::TestServer::start().await;
    let (mut ws, _) = s.connect("1").await;
    let dir = s.node().app.cfg().data_dir.to_str().unwrap().to_owned();
    let url = format!("http://{}", s.addr);
    let out = tokio::task::spawn_blocking(move || {
        herald(&[
            "publish",
            "--data-dir",
            &dir,
            "--url",
            &url,
            "--all",
            r#"{"from":"cli"}"#,
        ])
    })
    .await
    .unwrap();
    assert!(out.0, "{}{}", out.1, out.2);
    assert!(out.1.contains(r#""queued":1"#), "{}", out.1);
    assert_eq!(
        crate::support::next_json(&mut ws).await["data"]["from"],
        "cli"
    );
    s.shutdown().await;
}

#[test]
fn json_logs_are_json_and_never_contain_tokens() {
    let dir = TempDir::new();
    let extra = ["--log-format", "json", "--log-level", "debug"];
    let crate::support::Served {
        child,
        addr,
        secret,
    } = crate::support::serve_binary(&dir, &extra, std::process::Stdio::piped());
    let token = crate::support::mint(&secret, "77");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws?token={token}"))
            .await
            .unwrap();
        crate::support::next_json(&mut ws).await;
        ws.close(None).await.unwrap();
        let _ = crate::support::close_code(&mut ws).await;
    });
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let logs = String::from_utf8_lossy(&out.stderr);
    assert!(!logs.is_empty());
    for l in logs.lines() {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v["level"].is_string());
    }
    assert!(
        logs.contains("\"user_id\":\"77\""),
        "connection logs carry the user id: {logs}"
    );
    assert!(!logs.contains(&token), "tokens are never logged");
    assert!(!logs.contains(&secret), "secrets are never logged");
}

#[test]
fn version_names_the_commit() {
    let (ok, out, _) = herald(&["version"]);
    assert!(ok);
    assert!(
        out.starts_with(&format!("herald {} (", env!("CARGO_PKG_VERSION"))),
        "{out}"
    );
    assert!(!out.contains("()"), "{out}");
}

#[tokio::test]
async fn listen_prints_what_arrives_and_stops_after_count() {
    use std::io::BufRead;
    let s = crate::support::TestServer::start().await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["listen", "--url", &format!("http://{}", s.addr)])
        .args([
            "--token",
            &s.token("42"),
            "--channel",
            "news",
            "--count",
            "2",
        ])
        .env_remove("HERALD_CONFIG")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let lines = std::thread::spawn(move || {
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<String>>()
    });
    // Publish once the listener is subscribed.
    let subscribed = crate::support::poll_until(crate::support::WAIT, || async {
        s.node().app.hub.registry.channels.subscriber_count("news") == 1
    });
    assert!(subscribed.await, "herald listen subscribed");
    for n in 1..=3 {
        s.publish(serde_json::json!({"channel": "news", "data": n}))
            .await;
    }
    let status = child.wait().unwrap();
    assert!(status.success());
    let lines = lines.join().unwrap();
    let kinds: Vec<String> = lines
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["type"].to_string())
        .collect();
    assert_eq!(
        kinds,
        [r#""connected""#, r#""subscribed""#, r#""pub""#, r#""pub""#],
        "{lines:?}"
    );
    assert!(lines[3].contains(r#""data":2"#), "{lines:?}");
    s.shutdown().await;
}

#[test]
fn the_configuration_reference_lists_every_key_with_its_variable() {
    let (ok, toml_text, _) = herald(&["genconfig"]);
    assert!(ok);
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/configuration.md"
    ))
    .unwrap();
    let parsed: toml::Table = toml::from_str(&toml_text).unwrap();
    /// Every leaf key under `table`, dotted (`ws.compression.level`); namespaces are
    /// documented per key of a namespace, not per namespace.
    fn leaves(prefix: &str, table: &toml::Table, keys: &mut Vec<String>) {
        for (k, v) in table {
            let key = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            match v {
                toml::Value::Table(_) if key == "namespaces" => {}
                toml::Value::Table(t) => leaves(&key, t, keys),
                _ => keys.push(key),
            }
        }
    }
    let mut keys = Vec::new();
    leaves("", &parsed, &mut keys);
    // Keys genconfig shows commented out (optional, no default).
    let mut section = String::new();
    for line in toml_text.lines() {
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.to_owned();
        } else if let Some((k, _)) = line.strip_prefix("# ").and_then(|l| l.split_once(" = ")) {
            if k.chars().all(|c| c.is_ascii_lowercase() || c == '_') && !section.is_empty() {
                keys.push(format!("{section}.{k}"));
            }
        }
    }
    assert!(keys.len() > 40, "{keys:?}");
    for key in keys {
        let env = format!("HERALD_{}", key.to_ascii_uppercase().replace('.', "__"));
        let row = format!("| `{key}` |");
        assert!(
            doc.contains(&row),
            "docs/configuration.md has no row for {key}"
        );
        assert!(
            doc.contains(&format!("`{env}`")),
            "{key}: {env} is not named"
        );
    }
}
