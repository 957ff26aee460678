//! Channel names (DESIGN §12): the one syntax every door checks — subscribe, publish,
//! the HTTP API, the relay, the bench.

/// Channel names: 1..=256 bytes of `[A-Za-z0-9_.:@-]` (DESIGN §12). The default
/// namespace has no prefix: `default:news` would be a second name for `news`, a second
/// channel that publications to the first never reach, so it is refused.
pub fn validate_channel(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 256 {
        return Err("channel name must be 1 to 256 bytes".into());
    }
    if name.starts_with("default:") {
        return Err("channels of the default namespace are written without `default:`".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "_.:@-".contains(*c)))
    {
        return Err(format!("channel name may not contain {c:?}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn channel_names() {
        assert!(super::validate_channel("news").is_ok());
        assert!(super::validate_channel("sync:42.tv").is_ok());
        assert!(super::validate_channel("").is_err());
        assert!(super::validate_channel("a b").is_err());
        assert!(super::validate_channel("default:news").is_err());
        assert!(super::validate_channel(&"x".repeat(257)).is_err());
    }
}
