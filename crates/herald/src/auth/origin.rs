//! The Origin check of DESIGN §2. A browser always sends `Origin` on a WebSocket
//! upgrade; a request without it is not a browser and cannot be a cross-site hijack.

/// True if an upgrade with `origin` may proceed on a server reached as `host`.
pub fn origin_allowed(
    origin: Option<&str>,
    host: Option<&str>,
    allowed: &[String],
    tls: bool,
) -> bool {
    let Some(origin) = origin else { return true };
    let origin = origin.trim().trim_end_matches('/');
    if allowed.is_empty() {
        // Same origin: the scheme matches ours and the authority is the Host we were reached at.
        let (scheme, authority) = match origin.split_once("://") {
            Some(p) => p,
            None => return false,
        };
        let ours = if tls { "https" } else { "http" };
        let Some(host) = host else { return false };
        return scheme.eq_ignore_ascii_case(ours)
            && normalize(authority, ours).eq_ignore_ascii_case(&normalize(host, ours));
    }
    allowed
        .iter()
        .any(|a| a == "*" || a.trim_end_matches('/').eq_ignore_ascii_case(origin))
}

/// Drops the default port so `example.com` and `example.com:443` compare equal.
fn normalize(authority: &str, scheme: &str) -> String {
    let default = if scheme == "https" { ":443" } else { ":80" };
    authority
        .strip_suffix(default)
        .unwrap_or(authority)
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_origin_by_default() {
        assert!(origin_allowed(None, Some("h:8080"), &[], false));
        assert!(origin_allowed(
            Some("http://h:8080"),
            Some("h:8080"),
            &[],
            false
        ));
        assert!(origin_allowed(Some("http://H"), Some("h:80"), &[], false));
        assert!(!origin_allowed(
            Some("http://evil.example"),
            Some("h:8080"),
            &[],
            false
        ));
        assert!(!origin_allowed(
            Some("https://h:8080"),
            Some("h:8080"),
            &[],
            false
        ));
        assert!(!origin_allowed(Some("null"), Some("h:8080"), &[], false));
    }

    #[test]
    fn configured_list_and_wildcard() {
        let list = vec!["https://app.example".to_owned()];
        assert!(origin_allowed(
            Some("https://app.example"),
            Some("h"),
            &list,
            false
        ));
        assert!(!origin_allowed(Some("http://h"), Some("h"), &list, false));
        assert!(origin_allowed(
            Some("https://anything"),
            Some("h"),
            &["*".to_owned()],
            false
        ));
    }
}
