//! Where a WebSocket client's token is read from: `auth::token::token_from` over
//! request heads built from fuzzer bytes.
//!
//! Input layout: lines (split at `\n`), each `A:<value>` (an `Authorization` header),
//! `C:<value>` (a `Cookie` header) or `Q:<query>` (the query string; the last one
//! wins). Header values `HeaderValue::from_bytes` refuses are skipped, as hyper would
//! never hand them over.
//!
//! Checked: no panic; the documented precedence — a non-empty `Bearer` (any case) first
//! `Authorization` wins and is returned trimmed, else the first non-empty `herald_token`
//! cookie verbatim, else the first non-empty `?token=` — and a header-sourced token is a
//! piece of that header.
#![no_main]

use axum::http::{header, HeaderMap, HeaderValue};
use herald::auth::token::token_from;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut headers = HeaderMap::new();
    let mut query: Option<String> = None;
    for line in data.split(|&b| b == b'\n') {
        let (name, value) = match line {
            [b'A', b':', v @ ..] => (header::AUTHORIZATION, v),
            [b'C', b':', v @ ..] => (header::COOKIE, v),
            [b'Q', b':', v @ ..] => {
                query = Some(String::from_utf8_lossy(v).into_owned());
                continue;
            }
            _ => continue,
        };
        if let Ok(v) = HeaderValue::from_bytes(value) {
            headers.append(name, v);
        }
    }
    let got = token_from(&headers, query.as_deref());

    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, rest)| scheme.eq_ignore_ascii_case("bearer") && !rest.trim().is_empty())
        .map(|(_, rest)| rest.trim());
    if let Some(b) = bearer {
        assert_eq!(got.as_deref(), Some(b), "Authorization must win");
        return;
    }
    let cookie = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(';'))
        .filter_map(|pair| pair.trim().strip_prefix("herald_token="))
        .find(|t| !t.is_empty());
    if let Some(c) = cookie {
        assert_eq!(
            got.as_deref(),
            Some(c),
            "the herald_token cookie comes next"
        );
        return;
    }
    let from_query = query.as_deref().is_some_and(|q| {
        q.split('&')
            .any(|kv| kv.len() > 6 && kv.starts_with("token="))
    });
    assert_eq!(
        got.is_some(),
        from_query,
        "token {got:?} from query {query:?}"
    );
    if let (Some(t), Some(q)) = (&got, &query) {
        // Without escapes the decoded token is the raw parameter.
        let raw = q
            .split('&')
            .filter_map(|kv| kv.strip_prefix("token="))
            .find(|t| !t.is_empty());
        if let Some(raw) = raw.filter(|r| !r.contains(['%', '+'])) {
            assert_eq!(t, raw);
        }
    }
});
