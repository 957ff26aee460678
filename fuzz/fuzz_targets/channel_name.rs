//! Channel names, from any string: `validate_channel`, namespace resolution over the
//! built-in namespaces, and the `owns` rule behind `sync:<user>` channels.
//!
//! Input layout: `[cut: u8] [name...]` (the name is read as UTF-8, lossily); `cut`
//! picks where the name is split into a user id and a channel rest for `owns`.
//!
//! Checked: no panic; `validate_channel` accepts exactly 1..=256 bytes of
//! `[A-Za-z0-9_.:@-]` not starting with `default:`; `resolve` splits at the first `:` (or puts the name in
//! `default`) and names only a namespace that exists; `owns` agrees with its
//! documented rule (DESIGN §4: the rest is exactly the user id, no prefix rule).
#![no_main]

use std::collections::BTreeMap;

use herald::config::namespaces::{builtin, DEFAULT};
use herald::config::{CompressionConfig, NamespaceConfig};
use herald::hub::namespace::{owns, Denied, Namespaces};
use herald::protocol::channel::validate_channel;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, name)) = data.split_first() else {
        return;
    };
    let name = String::from_utf8_lossy(name);
    let name = name.as_ref();
    check_validate(name);
    check_resolve(name, &builtin());

    let mut at = usize::from(cut).min(name.len());
    while !name.is_char_boundary(at) {
        at -= 1;
    }
    let (user, rest) = name.split_at(at);
    check_owns(user, rest);
    // The shapes that matter most: a channel rest built from the user id itself.
    check_owns(user, user);
    check_owns(user, &format!("{user}.{rest}"));
    check_owns(user, &format!("{user}{rest}"));
});

fn check_validate(name: &str) {
    let spec = (1..=256).contains(&name.len())
        && !name.starts_with("default:")
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:@-".contains(&b));
    assert_eq!(
        validate_channel(name).is_ok(),
        spec,
        "validate_channel({name:?})"
    );
}

fn check_resolve(name: &str, cfg: &BTreeMap<String, NamespaceConfig>) {
    let (want_ns, want_rest) = name.split_once(':').unwrap_or((DEFAULT, name));
    match Namespaces::new(cfg, &CompressionConfig::default()).resolve(name) {
        Ok(r) => {
            assert_eq!((r.namespace, r.rest), (want_ns, want_rest), "{name:?}");
            assert_eq!(Some(r.config.as_ref()), cfg.get(r.namespace));
        }
        Err(Denied::UnknownNamespace(ns)) => {
            assert_eq!(ns, want_ns, "{name:?}");
            assert!(!cfg.contains_key(&ns), "{ns:?} exists but was refused");
        }
        Err(Denied::Forbidden(why)) => panic!("resolve({name:?}) forbade: {why}"),
        Err(Denied::BadRequest(why)) => panic!("resolve({name:?}) called it malformed: {why}"),
        Err(
            d @ (Denied::TooLarge(_)
            | Denied::ChannelBudget
            | Denied::Unavailable(_)
            | Denied::InProgress),
        ) => {
            panic!("resolve({name:?}) refused as a publication: {d:?}")
        }
    }
}

fn check_owns(user: &str, rest: &str) {
    let spec = rest == user;
    assert_eq!(owns(user, rest), spec, "owns({user:?}, {rest:?})");
}
