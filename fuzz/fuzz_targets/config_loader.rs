//! Configuration from untrusted text: a TOML file through serde and `validate`, and
//! the `HERALD_…` environment layer through `config::load::load`.
//!
//! Input: UTF-8 text (lossily). The whole text is the TOML file; each line
//! `#env NAME=VALUE` (a TOML comment, so the file parse ignores it) is also an
//! environment pair for `load`, with `HERALD_` prepended when NAME lacks it.
//!
//! Checked: no panic (errors are the expected answer to most inputs), and what
//! `load` accepts has passed `validate` and holds the built-in namespaces.
#![no_main]

use herald::config::load::{load, Overrides};
use herald::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(cfg) = toml::from_str::<Config>(&text) {
        let _ = cfg.with_builtin_namespaces().validate();
    }

    let env: Vec<(String, String)> = text
        .lines()
        .filter_map(|l| l.strip_prefix("#env "))
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| {
            let k = if k.starts_with("HERALD_") {
                k.to_owned()
            } else {
                format!("HERALD_{k}")
            };
            (k, v.to_owned())
        })
        .collect();
    if env.is_empty() {
        return;
    }
    if let Ok(cfg) = load(None, env, &Overrides::default()) {
        assert!(cfg.validate().is_ok(), "load returned an invalid config");
        for ns in ["default", "sync"] {
            assert!(cfg.namespaces.contains_key(ns), "no `{ns}` namespace");
        }
    }
});
