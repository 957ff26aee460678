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
    std::fs::write(
        &path,
        "[namespaces.now]\nhistory_size = 0\nlatest_on_subscribe = true\n",
    )
    .unwrap();
    let (ok, _, err) = herald(&["check-config", path.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("namespaces.now.latest_on_subscribe"), "{err}");
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

/// `herald bench` with `args`, bounded; (success, stdout, stderr). Async so that an
/// in-process test server keeps serving while the bench runs.
async fn bench(args: &[&str]) -> (bool, String, String) {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg("bench")
        .args(args)
        .env_remove("HERALD_CONFIG")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), run)
        .await
        .expect("the bench ends within 60 s")
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The one JSON line of a `--json` run: the last line of stdout, and the only one
/// that is not part of the human summary.
fn json_line(out: &str) -> serde_json::Value {
    let objects: Vec<_> = out.lines().filter(|l| l.starts_with('{')).collect();
    assert_eq!(objects.len(), 1, "one JSON line: {out}");
    assert_eq!(
        out.lines().last(),
        objects.first().copied(),
        "it comes last"
    );
    serde_json::from_str(objects[0]).unwrap()
}

#[tokio::test]
async fn bench_json_line_reports_the_run() {
    let (ok, out, err) = bench(&[
        "--spawn-server",
        "--clients",
        "20",
        "--rate",
        "20",
        "--duration",
        "1",
        "--source-addrs",
        "3",
        "--json",
        "--label",
        "it run",
    ])
    .await;
    assert!(ok, "{out}{err}");
    assert!(out.contains("p90 ") && out.contains("p99.9 "), "{out}");
    assert!(out.contains("order           0 reorderings"), "{out}");
    let v = json_line(&out);
    assert_eq!(v["label"], "it run");
    assert_eq!(v["herald_version"], env!("CARGO_PKG_VERSION"));
    assert!(v["herald_commit"].as_str().is_some_and(|c| !c.is_empty()));
    assert!(v["timestamp"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        (&v["clients_requested"], &v["clients_connected"]),
        (&20.into(), &20.into())
    );
    assert_eq!(
        (&v["target"], &v["target_name"]),
        (&"all".into(), &serde_json::Value::Null)
    );
    assert_eq!(v["source_addrs"], 3);
    assert_eq!(v["publications_ok"], 20);
    assert_eq!(v["deliveries_expected"], 400);
    assert_eq!(v["deliveries_received"], 400);
    assert_eq!((&v["loss"], &v["reorderings"]), (&0.into(), &0.into()));
    assert!(v["latency_ms"]["p99_9"].as_f64().unwrap() > 0.0);
    assert_eq!(v["server_dropped"], 0);
    assert_eq!(v["server"], "in-process");
}

#[tokio::test]
async fn bench_as_one_user_reaches_each_of_its_connections() {
    // 150 clients as one user: over the default cap of 100, which --spawn-server raises.
    let (ok, out, err) = bench(&[
        "--spawn-server",
        "--clients",
        "150",
        "--user",
        "u1",
        "--batch",
        "5",
        "--rate",
        "10",
        "--duration",
        "1",
        "--json",
    ])
    .await;
    assert!(ok, "{out}{err}");
    assert!(out.contains("fan-out to user u1"), "{out}");
    let v = json_line(&out);
    assert_eq!(
        (&v["target"], &v["target_name"]),
        (&"user".into(), &"u1".into())
    );
    assert_eq!(v["clients_connected"], 150);
    assert_eq!(v["deliveries_expected"], 1500);
    assert_eq!(v["deliveries_received"], 1500);
}

#[tokio::test]
async fn bench_says_to_raise_the_per_user_cap() {
    let s = crate::support::TestServer::start_with(|c| c.limits.connections_per_user = 2).await;
    let url = format!("http://{}", s.addr);
    let dir = s._dir.0.to_str().unwrap().to_owned();
    let (ok, out, err) = bench(&[
        "--url",
        &url,
        "--data-dir",
        &dir,
        "--clients",
        "5",
        "--user",
        "u1",
        "--publisher",
        "ws",
        "--rate",
        "5",
        "--duration",
        "1",
        "--source-addrs",
        "2",
        "--json",
    ])
    .await;
    assert!(ok, "two connect: {out}{err}");
    assert!(
        out.contains("3 × HTTP 429: too many connections for this user"),
        "{out}"
    );
    assert!(
        out.contains("HERALD_LIMITS__CONNECTIONS_PER_USER=5"),
        "{out}"
    );
    let v = json_line(&out);
    assert_eq!(v["clients_connected"], 2);
    assert_eq!(v["deliveries_expected"], 10);
    assert_eq!(v["deliveries_received"], 10);
    s.shutdown().await;
}

#[tokio::test]
async fn bench_refuses_bad_flags_before_connecting() {
    for (flags, says) in [
        (
            &["--user", "u", "--channel", "news"][..],
            "cannot be used with",
        ),
        (&["--source-addrs", "0"][..], "1 to 254"),
        (&["--source-addrs", "255"][..], "1 to 254"),
        (&["--user", ""][..], "cannot be empty"),
    ] {
        let (ok, out, err) = bench(&[&["--spawn-server"][..], flags].concat()).await;
        assert!(!ok, "{flags:?}: {out}");
        assert!(err.contains(says), "{flags:?}: {err}");
    }
    // A server 127.0.0.x cannot reach: refused, not tried.
    let dir = TempDir::new();
    herald::config::secrets::load_or_create(&dir.0, "hmac_secret").unwrap();
    herald::config::secrets::load_or_create(&dir.0, "api_key").unwrap();
    let d = dir.0.to_str().unwrap();
    let (ok, _, err) = bench(&[
        "--url",
        "http://192.0.2.1:9",
        "--data-dir",
        d,
        "--source-addrs",
        "2",
    ])
    .await;
    assert!(!ok);
    assert!(err.contains("only reaches a server on loopback"), "{err}");
}
