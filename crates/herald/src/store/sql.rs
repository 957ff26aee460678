//! [`Store`] over SQLite or Postgres with one body of SQL.
//!
//! The queries use only what both engines share (`$n` placeholders in order, `ON
//! CONFLICT`, partial unique index), and a small macro expands each method for the pool
//! in use, so there is one implementation to test against both real engines.

use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::Row;

use super::time::now_ms;
use super::{Announcement, BoxFuture, NewAnnouncement, Store, StoreError};

enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

pub struct SqlStore {
    pool: Pool,
    ready: AtomicBool,
    /// The active announcement as last read, and when: every new connection asks for it,
    /// so a burst of connects must not become a burst of queries. Replaced on create and
    /// clear; another replica's change is seen within `ACTIVE_TTL`.
    active_cache: Mutex<Option<(Instant, Option<Announcement>)>>,
}

const ACTIVE_TTL: Duration = Duration::from_secs(1);

/// Runs the same body against whichever pool this store has.
macro_rules! with_pool {
    ($self:expr, $pool:ident => $body:expr) => {
        match &$self.pool {
            Pool::Sqlite($pool) => $body,
            Pool::Postgres($pool) => $body,
        }
    };
}

/// The announcement columns, as a literal so queries stay `&'static str`.
macro_rules! columns {
    () => {
        "id, message, message_type, created_by, created_at_ms, active"
    };
}

fn announcement<R: Row>(row: &R) -> Result<Announcement, sqlx::Error>
where
    for<'c> &'c str: sqlx::ColumnIndex<R>,
    for<'d> String: sqlx::Decode<'d, R::Database> + sqlx::Type<R::Database>,
    for<'d> i64: sqlx::Decode<'d, R::Database> + sqlx::Type<R::Database>,
    for<'d> bool: sqlx::Decode<'d, R::Database> + sqlx::Type<R::Database>,
{
    Ok(Announcement {
        id: row.try_get("id")?,
        message: row.try_get("message")?,
        message_type: row.try_get("message_type")?,
        created_by: row.try_get("created_by")?,
        created_at_ms: row.try_get("created_at_ms")?,
        active: row.try_get("active")?,
    })
}

impl SqlStore {
    pub fn open(url: &str, data_dir: &Path) -> Result<SqlStore, StoreError> {
        let pool = if url.is_empty() || url.starts_with("sqlite:") {
            let opts = if url.is_empty() {
                std::fs::create_dir_all(data_dir)
                    .map_err(|e| StoreError::Unavailable(format!("{}: {e}", data_dir.display())))?;
                SqliteConnectOptions::new().filename(data_dir.join("herald.db"))
            } else {
                SqliteConnectOptions::from_str(url)?
            };
            let opts = opts
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(5))
                .foreign_keys(true);
            Pool::Sqlite(
                SqlitePoolOptions::new()
                    .max_connections(4)
                    .acquire_timeout(Duration::from_secs(3))
                    .connect_lazy_with(opts),
            )
        } else {
            Pool::Postgres(
                PgPoolOptions::new()
                    .max_connections(8)
                    .acquire_timeout(Duration::from_secs(3))
                    .connect_lazy(url)?,
            )
        };
        Ok(SqlStore {
            pool,
            ready: AtomicBool::new(false),
            active_cache: Mutex::new(None),
        })
    }

    fn cache(&self, value: Option<Option<Announcement>>) {
        let mut c = self.active_cache.lock().unwrap_or_else(|p| p.into_inner());
        *c = value.map(|v| (Instant::now(), v));
    }

    fn cached_active(&self) -> Option<Option<Announcement>> {
        let c = self.active_cache.lock().unwrap_or_else(|p| p.into_inner());
        c.as_ref()
            .filter(|(at, _)| at.elapsed() < ACTIVE_TTL)
            .map(|(_, a)| a.clone())
    }

    fn check_ready(&self) -> Result<(), StoreError> {
        if self.ready.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(StoreError::Unavailable(
                "the store is not migrated yet (database unreachable at start-up?)".into(),
            ))
        }
    }

    async fn try_create(&self, new: &NewAnnouncement) -> Result<Announcement, StoreError> {
        let a = Announcement {
            id: uuid::Uuid::now_v7().to_string(),
            message: new.message.clone(),
            message_type: new.message_type.clone(),
            created_by: new.created_by.clone(),
            created_at_ms: now_ms(),
            active: true,
        };
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query("UPDATE announcements SET active = $1 WHERE active").bind(false).execute(&mut *tx).await?;
            sqlx::query(
                "INSERT INTO announcements (id, message, message_type, created_by, created_at_ms, active) VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(&a.id)
            .bind(&a.message)
            .bind(&a.message_type)
            .bind(&a.created_by)
            .bind(a.created_at_ms)
            .bind(true)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
        });
        Ok(a)
    }
}

impl Store for SqlStore {
    fn create(&self, new: NewAnnouncement) -> BoxFuture<'_, Result<Announcement, StoreError>> {
        Box::pin(async move {
            self.check_ready()?;
            // Two creates racing on different replicas: the unique index lets one win;
            // the loser retries once, now deactivating the winner.
            let created = match self.try_create(&new).await {
                Err(StoreError::Unavailable(_)) => self.try_create(&new).await,
                other => other,
            };
            self.cache(created.as_ref().ok().map(|a| Some(a.clone())));
            created
        })
    }

    fn clear(&self) -> BoxFuture<'_, Result<Option<Announcement>, StoreError>> {
        Box::pin(async move {
            self.check_ready()?;
            self.cache(None);
            let active = self.active().await?;
            if let Some(a) = &active {
                with_pool!(self, pool => {
                    sqlx::query("UPDATE announcements SET active = $1 WHERE id = $2").bind(false).bind(&a.id).execute(pool).await?;
                });
            }
            self.cache(Some(None));
            Ok(active)
        })
    }

    fn active(&self) -> BoxFuture<'_, Result<Option<Announcement>, StoreError>> {
        Box::pin(async move {
            self.check_ready()?;
            if let Some(hit) = self.cached_active() {
                return Ok(hit);
            }
            let sql = concat!("SELECT ", columns!(), " FROM announcements WHERE active");
            let active = with_pool!(self, pool => {
                let row = sqlx::query(sql).fetch_optional(pool).await?;
                row.as_ref().map(announcement).transpose()?
            });
            self.cache(Some(active.clone()));
            Ok(active)
        })
    }

    fn acknowledge<'a>(
        &'a self,
        id: &'a str,
        user: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.check_ready()?;
            with_pool!(self, pool => {
                let exists = sqlx::query("SELECT 1 FROM announcements WHERE id = $1").bind(id).fetch_optional(pool).await?;
                if exists.is_none() {
                    return Err(StoreError::NotFound);
                }
                sqlx::query(
                    "INSERT INTO acknowledgements (announcement_id, user_id, acked_at_ms) VALUES ($1, $2, $3) \
                     ON CONFLICT (announcement_id, user_id) DO NOTHING",
                )
                .bind(id)
                .bind(user)
                .bind(now_ms())
                .execute(pool)
                .await?;
            });
            Ok(())
        })
    }

    fn acknowledged<'a>(
        &'a self,
        id: &'a str,
        user: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            self.check_ready()?;
            with_pool!(self, pool => {
                let row = sqlx::query("SELECT 1 FROM acknowledgements WHERE announcement_id = $1 AND user_id = $2")
                    .bind(id)
                    .bind(user)
                    .fetch_optional(pool)
                    .await?;
                Ok(row.is_some())
            })
        })
    }

    fn history<'a>(
        &'a self,
        limit: u32,
        before: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<(Announcement, u64)>, StoreError>> {
        Box::pin(async move {
            self.check_ready()?;
            // UUID v7 ids sort by creation time, so the id is the page cursor. (No sentinel
            // cursor for the first page: how `~` sorts depends on the database collation.)
            macro_rules! page_sql {
                ($cond:literal, $limit:literal) => {
                    concat!(
                        "SELECT ",
                        columns!(),
                        ", (SELECT COUNT(*) FROM acknowledgements k WHERE k.announcement_id = a.id) AS acks ",
                        "FROM announcements a ",
                        $cond,
                        " ORDER BY id DESC LIMIT ",
                        $limit
                    )
                };
            }
            let limit = i64::from(limit);
            with_pool!(self, pool => {
                let rows = match before {
                    Some(cursor) => sqlx::query(page_sql!("WHERE id < $1", "$2")).bind(cursor).bind(limit).fetch_all(pool).await?,
                    None => sqlx::query(page_sql!("", "$1")).bind(limit).fetch_all(pool).await?,
                };
                rows.iter()
                    .map(|r| {
                        let acks: i64 = r.try_get("acks")?;
                        Ok((announcement(r)?, u64::try_from(acks).unwrap_or(0)))
                    })
                    .collect::<Result<Vec<_>, sqlx::Error>>()
                    .map_err(StoreError::from)
            })
        })
    }

    fn count_since(&self, since_ms: i64) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(async move {
            self.check_ready()?;
            with_pool!(self, pool => {
                let n: i64 = sqlx::query("SELECT COUNT(*) AS n FROM announcements WHERE created_at_ms >= $1")
                    .bind(since_ms)
                    .fetch_one(pool)
                    .await?
                    .try_get("n")?;
                Ok(u64::try_from(n).unwrap_or(0))
            })
        })
    }

    fn migrate(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let result = match &self.pool {
                Pool::Sqlite(pool) => sqlx::migrate!("./migrations/sqlite").run(pool).await,
                Pool::Postgres(pool) => sqlx::migrate!("./migrations/postgres").run(pool).await,
            };
            result.map_err(|e| StoreError::Unavailable(e.to_string()))?;
            self.ready.store(true, Ordering::Release);
            Ok(())
        })
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    fn forget_active(&self) {
        self.cache(None);
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            self.check_ready()?;
            with_pool!(self, pool => sqlx::query("SELECT 1").execute(pool).await.map(|_| ()))?;
            Ok(())
        })
    }
}
