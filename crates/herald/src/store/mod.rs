//! Durable state (DESIGN §6): announcements and per-user acknowledgements.
//!
//! One trait, [`Store`], so the HTTP API and the connection code never know which engine
//! they talk to. [`sql::SqlStore`] implements it over SQLite (a file in the data dir,
//! the zero-config default) and Postgres (`store.url = "postgres://…"`, shared by
//! replicas); the two run the same SQL, and each has its own migrations.

pub mod sql;
pub mod time;

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use crate::protocol::codes::ErrorCode;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// An announcement as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement {
    pub id: String,
    pub message: String,
    pub message_type: String,
    pub created_by: String,
    pub created_at_ms: i64,
    pub active: bool,
}

#[derive(Debug, Clone)]
pub struct NewAnnouncement {
    pub message: String,
    pub message_type: String,
    pub created_by: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no such announcement")]
    NotFound,
    /// The database cannot be reached or failed; logged once, answered 503.
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

impl StoreError {
    /// The one answer a client gets for this failure, over HTTP and over WebSocket
    /// alike (the store's reason stays in the log and the metrics).
    pub fn answer(&self) -> (ErrorCode, &'static str) {
        match self {
            StoreError::NotFound => (ErrorCode::NotFound, "no such announcement"),
            StoreError::Unavailable(_) => (
                ErrorCode::Unavailable,
                "the announcement store is unavailable; try again",
            ),
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Unavailable(e.to_string())
    }
}

pub trait Store: Send + Sync {
    /// Stores a new active announcement and deactivates the previous one, atomically.
    fn create(&self, new: NewAnnouncement) -> BoxFuture<'_, Result<Announcement, StoreError>>;
    /// Deactivates the active announcement; returns it, if there was one.
    fn clear(&self) -> BoxFuture<'_, Result<Option<Announcement>, StoreError>>;
    fn active(&self) -> BoxFuture<'_, Result<Option<Announcement>, StoreError>>;
    /// Records that `user` acknowledged `id` (idempotent); `NotFound` for an unknown id.
    fn acknowledge<'a>(
        &'a self,
        id: &'a str,
        user: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    fn acknowledged<'a>(
        &'a self,
        id: &'a str,
        user: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;
    /// Newest first, at most `limit`, older than the announcement `before` if given;
    /// each with its number of acknowledgements.
    fn history<'a>(
        &'a self,
        limit: u32,
        before: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<(Announcement, u64)>, StoreError>>;
    /// Announcements created at or after `since_ms` (unix milliseconds).
    fn count_since(&self, since_ms: i64) -> BoxFuture<'_, Result<u64, StoreError>>;
    /// Applies pending migrations; also a reachability check.
    fn migrate(&self) -> BoxFuture<'_, Result<(), StoreError>>;
    fn is_ready(&self) -> bool;
    /// Whether the database answers now (`/readyz`): migrated at start-up and reachable
    /// since, not just the former.
    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Another node created or cleared an announcement: forget any cached answer.
    fn forget_active(&self) {}
}

/// Opens the store named by `url` (empty = SQLite in `data_dir`). Connections are made
/// lazily, so a database that is down at start-up does not stop the node.
pub fn open(url: &str, data_dir: &Path) -> Result<Arc<dyn Store>, StoreError> {
    Ok(Arc::new(sql::SqlStore::open(url, data_dir)?))
}

/// The active announcement for `user`: None when there is none or they acknowledged it.
pub async fn active_for(store: &dyn Store, user: &str) -> Result<Option<Announcement>, StoreError> {
    match store.active().await? {
        Some(a) if !store.acknowledged(&a.id, user).await? => Ok(Some(a)),
        _ => Ok(None),
    }
}
