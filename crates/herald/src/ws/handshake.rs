//! The RFC 6455 opening handshake, checked before anything else about the request.
//!
//! The checks are a pure function of the request head so the upgrade route can refuse
//! with the JSON error body of the contract (400 malformed, 426 wrong version) and only
//! then move on to origin and token checks.

use axum::http::{header, HeaderMap, Method};
use base64::Engine;
use sha1::{Digest, Sha1};

use super::deflate::{negotiate, Agreement};

const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("{0}")]
    Malformed(&'static str),
    #[error("unsupported Sec-WebSocket-Version; this server speaks 13")]
    Version,
}

/// Validates an upgrade request head and returns the `Sec-WebSocket-Accept` value.
pub fn accept_key(method: &Method, headers: &HeaderMap) -> Result<String, HandshakeError> {
    if method != Method::GET {
        return Err(HandshakeError::Malformed(
            "a WebSocket upgrade must be a GET",
        ));
    }
    if !header_has_token(headers, header::UPGRADE, "websocket") {
        return Err(HandshakeError::Malformed("missing `Upgrade: websocket`"));
    }
    if !header_has_token(headers, header::CONNECTION, "upgrade") {
        return Err(HandshakeError::Malformed("missing `Connection: upgrade`"));
    }
    match headers.get(header::SEC_WEBSOCKET_VERSION) {
        Some(v) if v.as_bytes().trim_ascii() == b"13" => {}
        Some(_) => return Err(HandshakeError::Version),
        None => return Err(HandshakeError::Malformed("missing Sec-WebSocket-Version")),
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or(HandshakeError::Malformed("missing Sec-WebSocket-Key"))?
        .as_bytes()
        .trim_ascii();
    match base64::engine::general_purpose::STANDARD.decode(key) {
        Ok(raw) if raw.len() == 16 => {}
        _ => {
            return Err(HandshakeError::Malformed(
                "Sec-WebSocket-Key must be 16 bytes, base64",
            ))
        }
    }
    Ok(derive_accept(key))
}

/// The permessage-deflate agreement for this request, if it offers one we accept.
pub fn deflate_agreement(headers: &HeaderMap) -> Option<Agreement> {
    negotiate(
        headers
            .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
            .iter()
            .filter_map(|v| v.to_str().ok()),
    )
}

/// `base64(sha1(key + GUID))`.
pub fn derive_accept(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn rfc_example_key() {
        assert_eq!(
            derive_accept(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn valid_and_invalid_heads() {
        let good = [
            ("upgrade", "WebSocket"),
            ("connection", "keep-alive, Upgrade"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ];
        assert!(accept_key(&Method::GET, &headers(&good)).is_ok());
        assert!(matches!(
            accept_key(&Method::POST, &headers(&good)),
            Err(HandshakeError::Malformed(_))
        ));
        let mut v8 = good;
        v8[2] = ("sec-websocket-version", "8");
        assert_eq!(
            accept_key(&Method::GET, &headers(&v8)),
            Err(HandshakeError::Version)
        );
        let mut short_key = good;
        short_key[3] = ("sec-websocket-key", "c2hvcnQ=");
        assert!(matches!(
            accept_key(&Method::GET, &headers(&short_key)),
            Err(HandshakeError::Malformed(_))
        ));
    }
}
