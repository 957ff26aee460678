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
    /// Unix seconds; None for anonymous connections.
    pub expires_at: Option<u64>,
}

impl Identity {
    pub fn anonymous(n: u64) -> Identity {
        Identity {
            user: UserId::from(format!("anon-{n}")),
            device: None,
            groups: Vec::new(),
            admin: false,
            expires_at: None,
        }
    }
}
