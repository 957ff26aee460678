//! Where a connecting client's token comes from (DESIGN §2): `Authorization: Bearer`,
//! the `herald_token` cookie, or `?token=` (browsers cannot set headers on a WebSocket).
//! Pure functions of the request head, so they can be fuzzed on their own.

use axum::http::{header, HeaderMap};

/// The token from `Authorization: Bearer`, the `herald_token` cookie, or `?token=`, in
/// that order; an empty one counts as absent, so it cannot shadow a real one further on.
/// The scheme is case-insensitive (RFC 9110 §11.1). (The Origin check has already
/// passed, so a cookie here comes from an allowed origin.)
pub fn token_from(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    if let Some(t) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer)
    {
        return Some(t.to_owned());
    }
    for v in headers.get_all(header::COOKIE) {
        let Ok(s) = v.to_str() else { continue };
        for pair in s.split(';') {
            if let Some(t) = pair.trim().strip_prefix("herald_token=") {
                if !t.is_empty() {
                    return Some(t.to_owned());
                }
            }
        }
    }
    query?
        .split('&')
        .filter_map(|kv| kv.strip_prefix("token="))
        .find(|t| !t.is_empty())
        .map(percent_decode)
}

/// The credentials of an `Authorization: Bearer <token>` value, trimmed; None for
/// another scheme or an empty token.
pub fn bearer(value: &str) -> Option<&str> {
    let (scheme, rest) = value.split_once(' ')?;
    let token = rest.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let hex = |j: usize| bytes.get(j).and_then(|c| (*c as char).to_digit(16));
        match (b, hex(i + 1), hex(i + 2)) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn token_sources() {
        let mut h = HeaderMap::new();
        assert_eq!(
            token_from(&h, Some("a=1&token=abc%2Edef")),
            Some("abc.def".into())
        );
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("x=1; herald_token=cookie"),
        );
        assert_eq!(token_from(&h, None), Some("cookie".into()));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer hdr"),
        );
        assert_eq!(token_from(&h, Some("token=q")), Some("hdr".into()));
        assert_eq!(token_from(&HeaderMap::new(), Some("tokens=x")), None);
        // An empty token does not shadow a real one; the scheme is case-insensitive.
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer  "));
        assert_eq!(token_from(&h, None), Some("cookie".into()));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("BEARER t1"));
        assert_eq!(token_from(&h, None), Some("t1".into()));
        assert_eq!(
            token_from(&HeaderMap::new(), Some("token=&token=q")),
            Some("q".into())
        );
    }
}
