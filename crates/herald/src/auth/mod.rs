//! Who is connecting and whether they may: JWT verification (DESIGN §2), API keys for
//! backends, and the Origin check against cross-site WebSocket hijacking.

pub mod api_key;
pub mod jwt;
pub mod origin;
pub mod proxy;
pub mod revoked;
pub mod token;

use std::sync::Arc;

use crate::ids::UserId;

/// An authenticated identity, from a token or anonymous.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: UserId,
    pub device: Option<Arc<str>>,
    pub groups: Vec<Arc<str>>,
    pub admin: bool,
    /// An API key opened this connection (DESIGN §7): a publisher, not an audience —
    /// publications to everyone and announcements pass it by.
    pub backend: bool,
    /// Unix seconds; None for anonymous connections.
    pub expires_at: Option<u64>,
    /// What a revocation looks at: the token's `iat` and `jti`, when it has either
    /// (boxed: a connection keeps it only as [`TokenStamp::packed`] once registered).
    pub token: Option<Box<TokenStamp>>,
}

/// What a token says beyond who it is for (DESIGN §13): its issue time and id (`iat`,
/// `jti`), what `POST /api/users/{id}/revoke` and `POST /api/tokens/{jti}/revoke`
/// refuse by, and its server-side subscriptions (`channels`), made once on connect.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenStamp {
    /// Unix seconds.
    pub issued_at: Option<u64>,
    pub id: Option<Arc<str>>,
    pub channels: Vec<String>,
}

impl TokenStamp {
    /// The stamp as a connection keeps it, in one word: `iat` (saturated to 32 bits, 0 =
    /// none) above a 32-bit hash of `jti` (0 = none) — enough to find the connections a
    /// revocation names (a hash collision only closes a connection whose token is then
    /// checked again, exactly, when it reconnects).
    pub fn packed(stamp: Option<&TokenStamp>) -> u64 {
        let Some(s) = stamp else {
            return 0;
        };
        let iat = s
            .issued_at
            .map_or(0, |t| u32::try_from(t).unwrap_or(u32::MAX));
        (u64::from(iat) << 32) | u64::from(jti_hash(s.id.as_deref()))
    }

    /// The `iat` part of [`TokenStamp::packed`].
    pub fn packed_issued_at(packed: u64) -> u64 {
        packed >> 32
    }

    /// The `jti` part of [`TokenStamp::packed`].
    pub fn packed_jti(packed: u64) -> u32 {
        (packed & u64::from(u32::MAX)) as u32
    }
}

/// A 32-bit hash of a token id (0 = none; never 0 for an id).
pub fn jti_hash(jti: Option<&str>) -> u32 {
    use std::hash::{Hash, Hasher};
    let Some(jti) = jti else {
        return 0;
    };
    let mut h = std::collections::hash_map::DefaultHasher::new();
    jti.hash(&mut h);
    let h = h.finish();
    ((h ^ (h >> 32)) as u32).max(1)
}

/// The user id a connection opened with an API key goes by (the same name the HTTP API
/// gives an API key as an author). It is an ordinary user id: the per-user connection
/// cap counts a backend's connections, and `POST /api/users/api/disconnect` ends them.
pub const BACKEND_USER: &str = "api";

impl Identity {
    /// A backend publisher that presented an API key on the upgrade (DESIGN §7).
    pub fn backend() -> Identity {
        Identity {
            user: UserId::from(BACKEND_USER),
            device: None,
            groups: Vec::new(),
            admin: true,
            backend: true,
            expires_at: None,
            token: None,
        }
    }

    pub fn anonymous(n: u64) -> Identity {
        Identity {
            user: UserId::from(format!("anon-{n}")),
            device: None,
            groups: Vec::new(),
            admin: false,
            backend: false,
            expires_at: None,
            token: None,
        }
    }
}
