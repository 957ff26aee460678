//! Who is connecting and whether they may: JWT verification (DESIGN §2), API keys for
//! backends, and the Origin check against cross-site WebSocket hijacking.

pub mod api_key;
pub mod jwt;
pub mod origin;
pub mod proxy;
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
        }
    }
}
