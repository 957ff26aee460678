//! Layering: TOML file, then `HERALD_…` environment (`__` nests), then flags.

use std::path::Path;

use toml::{Table, Value};

use super::Config;

/// Where a bad value came from, so the message can point at it.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("{0}")]
    Layered(String),
    #[error("invalid configuration:\n{0}")]
    Invalid(#[from] super::Invalid),
}

/// Values given on the command line; each overrides file and environment.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<String>,
    pub data_dir: Option<String>,
    pub log_format: Option<String>,
    pub log_level: Option<String>,
}

/// Parses and checks one file on its own: what `check-config` reports. TOML syntax and
/// type errors carry line, column and the offending key.
pub fn check_file(path: &Path) -> Result<Config, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let cfg: Config = toml::from_str(&text).map_err(|e| LoadError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    let cfg = cfg.with_builtin_namespaces();
    cfg.validate()?;
    Ok(cfg)
}

/// The full stack: file (if any), environment, flags; then validation.
pub fn load(
    path: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
    flags: &Overrides,
) -> Result<Config, LoadError> {
    let mut table = match path {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|source| LoadError::Read {
                path: p.display().to_string(),
                source,
            })?;
            // Parse into the typed config first, for line:column errors on the file itself.
            toml::from_str::<Config>(&text).map_err(|e| LoadError::File {
                path: p.display().to_string(),
                message: e.to_string(),
            })?;
            toml::from_str::<Table>(&text).map_err(|e| LoadError::File {
                path: p.display().to_string(),
                message: e.to_string(),
            })?
        }
        None => Table::new(),
    };
    for entry in env_entries(env) {
        if entry.known {
            let keys: Vec<&str> = entry.keys.iter().map(String::as_str).collect();
            set(&mut table, &keys, entry.value);
        }
    }
    let flag_values = [
        (&["listen"][..], &flags.listen),
        (&["data_dir"][..], &flags.data_dir),
        (&["log", "format"][..], &flags.log_format),
        (&["log", "level"][..], &flags.log_level),
    ];
    for (keys, v) in flag_values {
        if let Some(v) = v {
            set(&mut table, keys, Value::String(v.clone()));
        }
    }
    let cfg: Config = serde_path_to_error::deserialize(Value::Table(table))
        .map_err(|e| LoadError::Layered(format!("{}: {}", e.path(), e.inner())))?;
    let cfg = cfg.with_builtin_namespaces();
    cfg.validate()?;
    Ok(cfg)
}

/// One `HERALD_…` variable as a config key path and value.
struct EnvEntry {
    name: String,
    keys: Vec<String>,
    value: Value,
    /// The path names a configuration key. Orchestrators inject variables that share
    /// our prefix (Kubernetes: `HERALD_SERVICE_HOST`, `HERALD_PORT_8080_TCP` for a
    /// Service named herald), so an unknown one is a warning, never fatal.
    known: bool,
}

fn env_entries(env: impl IntoIterator<Item = (String, String)>) -> Vec<EnvEntry> {
    let mut out = Vec::new();
    for (name, raw) in env {
        let Some(rest) = name.strip_prefix("HERALD_") else {
            continue;
        };
        let (keys, value) = match rest {
            "CONFIG" => continue,
            "LOG" => (
                vec!["log".to_owned(), "level".to_owned()],
                Value::String(raw),
            ),
            _ => (
                rest.split("__").map(str::to_ascii_lowercase).collect(),
                env_value(&raw),
            ),
        };
        let known = names_a_key(&keys, &value);
        out.push(EnvEntry {
            name,
            keys,
            value,
            known,
        });
    }
    out
}

/// Whether `keys` is a configuration key: setting it alone may fail on its value's type,
/// but not with "unknown field".
fn names_a_key(keys: &[String], value: &Value) -> bool {
    if keys.iter().any(String::is_empty) {
        return false;
    }
    let mut table = Table::new();
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    set(&mut table, &refs, value.clone());
    match serde_path_to_error::deserialize::<_, Config>(Value::Table(table)) {
        Ok(_) => true,
        Err(e) => !e.inner().to_string().starts_with("unknown field"),
    }
}

/// The `HERALD_…` variables in `env` that name no configuration key; `serve` and
/// `check-config` warn about them, and loading ignores them.
pub fn unknown_env_vars(env: impl IntoIterator<Item = (String, String)>) -> Vec<String> {
    let mut names: Vec<String> = env_entries(env)
        .into_iter()
        .filter(|e| !e.known)
        .map(|e| e.name)
        .collect();
    names.sort();
    names
}

/// An environment value is read as a TOML literal when it is one (`30`, `true`,
/// `["a","b"]`), otherwise as a plain string.
fn env_value(raw: &str) -> Value {
    match toml::from_str::<Table>(&format!("v = {raw}")) {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| Value::String(raw.to_owned())),
        Err(_) => Value::String(raw.to_owned()),
    }
}

fn set(table: &mut Table, keys: &[&str], value: Value) {
    match keys {
        [] => {}
        [last] => {
            table.insert((*last).to_owned(), value);
        }
        [first, rest @ ..] => {
            let entry = table
                .entry((*first).to_owned())
                .or_insert_with(|| Value::Table(Table::new()));
            if !entry.is_table() {
                *entry = Value::Table(Table::new());
            }
            if let Value::Table(t) = entry {
                set(t, rest, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AuthMode;

    fn write(text: &str) -> tempfile_path::TempPath {
        tempfile_path::TempPath::with(text)
    }

    /// A tiny temp-file helper (no extra dependency).
    mod tempfile_path {
        pub struct TempPath(pub std::path::PathBuf);
        impl TempPath {
            pub fn with(text: &str) -> TempPath {
                let p = std::env::temp_dir().join(format!(
                    "herald-cfg-{}-{}.toml",
                    std::process::id(),
                    rand::random::<u64>()
                ));
                std::fs::write(&p, text).unwrap();
                TempPath(p)
            }
        }
        impl Drop for TempPath {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    #[test]
    fn precedence_is_file_then_env_then_flags() {
        let f = write("listen = \"127.0.0.1:1\"\n[ws]\nheartbeat_s = 5\n[auth]\nmode = \"jwt\"\n");
        let env = vec![
            ("HERALD_LISTEN".to_owned(), "127.0.0.1:2".to_owned()),
            ("HERALD_AUTH__MODE".to_owned(), "none".to_owned()),
            (
                "HERALD_ALLOWED_ORIGINS".to_owned(),
                "https://a.example, https://b.example".to_owned(),
            ),
            ("HERALD_WS__IDLE_TIMEOUT_S".to_owned(), "40".to_owned()),
            ("OTHER".to_owned(), "x".to_owned()),
        ];
        let flags = Overrides {
            listen: Some("127.0.0.1:3".into()),
            ..Default::default()
        };
        let cfg = load(Some(&f.0), env, &flags).unwrap();
        assert_eq!(cfg.listen, "127.0.0.1:3");
        assert_eq!(cfg.auth.mode, AuthMode::None);
        assert_eq!(cfg.ws.heartbeat_s, 5);
        assert_eq!(cfg.ws.idle_timeout_s, 40);
        assert_eq!(
            cfg.allowed_origins,
            vec!["https://a.example", "https://b.example"]
        );
    }

    #[test]
    fn values_that_would_panic_a_dependency_or_never_deliver_are_refused() {
        let f = write("[limits]\nhandshake_timeout_s = 18446744073709551615\n");
        let e = check_file(&f.0).unwrap_err().to_string();
        assert!(e.contains("limits.handshake_timeout_s: at most"), "{e}");
        let f = write("[ws]\nqueue_bytes = 65536\n");
        let e = check_file(&f.0).unwrap_err().to_string();
        assert!(
            e.contains("ws.queue_bytes: must hold the largest client message"),
            "{e}"
        );
        assert!(e.contains("at least limits.http_body_bytes"), "{e}");
        let f = write("trusted_proxies = [\"10.0.0.0/40\"]\n");
        let e = check_file(&f.0).unwrap_err().to_string();
        assert!(e.contains("trusted_proxies"), "{e}");
        let f = write("[namespaces.x]\nhistory_ttl_s = 99999999999\n");
        assert!(check_file(&f.0).is_err());
        let f = write("[ws]\nworkers = 100000\n");
        let e = check_file(&f.0).unwrap_err().to_string();
        assert!(e.contains("ws.workers: at most 256"), "{e}");
    }

    #[test]
    fn unknown_environment_variables_are_named_and_ignored() {
        let env = vec![
            ("HERALD_SERVICE_HOST".to_owned(), "10.0.0.7".to_owned()),
            (
                "HERALD_PORT_8080_TCP".to_owned(),
                "tcp://10.0.0.7:8080".to_owned(),
            ),
            ("HERALD_WS__HEARTBEAT".to_owned(), "5".to_owned()),
            ("HERALD_WS__HEARTBEAT_S".to_owned(), "7".to_owned()),
            ("HERALD_LOG".to_owned(), "debug".to_owned()),
            (
                "HERALD_NAMESPACES__ROOM__PRESENCE".to_owned(),
                "true".to_owned(),
            ),
        ];
        assert_eq!(
            unknown_env_vars(env.clone()),
            vec![
                "HERALD_PORT_8080_TCP",
                "HERALD_SERVICE_HOST",
                "HERALD_WS__HEARTBEAT"
            ]
        );
        let cfg = load(None, env, &Overrides::default()).unwrap();
        assert_eq!(cfg.ws.heartbeat_s, 7);
        assert_eq!(cfg.log.level, "debug");
        assert!(cfg.namespaces["room"].presence);
        // A known key with a bad value is still an error.
        let bad = vec![("HERALD_WS__HEARTBEAT_S".to_owned(), "soon".to_owned())];
        assert!(load(None, bad, &Overrides::default()).is_err());
    }

    #[test]
    fn errors_name_the_key_and_place() {
        let f = write("[auth]\nmode = \"jtw\"\n");
        let e = check_file(&f.0).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("jtw"), "{e}");
        let f = write("[ws]\nheartbeat = 5\n");
        let e = check_file(&f.0).unwrap_err().to_string();
        assert!(e.contains("unknown field `heartbeat`"), "{e}");
        let env = vec![("HERALD_WS__QUEUE_MESSAGES".to_owned(), "many".to_owned())];
        let e = load(None, env, &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("ws.queue_messages:"), "{e}");
        let f = write("[auth]\nleeway_s = 60\n[ws]\nheartbeat_s = 0\n");
        let e = check_file(&f.0).unwrap_err().to_string();
        assert!(
            e.contains("auth.leeway_s") && e.contains("ws.heartbeat_s"),
            "{e}"
        );
    }
}
