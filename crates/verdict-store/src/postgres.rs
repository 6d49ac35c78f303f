//! The PostgreSQL backend, for many stateless `verdict serve` instances
//! sharing one database: every correctness guarantee is a database
//! transaction with the session row locked (`SELECT … FOR UPDATE`, waiting).

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::StoreError;

pub(crate) use sqlx::Postgres as Db;

pub(crate) const BACKEND: &str = "postgres";
pub(crate) const BEGIN_WRITE: &str = "BEGIN";

/// Waits for the session row lock (never NOWAIT): a concurrent `end`
/// blocks here until the first commits, then reads the terminal row.
macro_rules! for_update {
    () => {
        " FOR UPDATE"
    };
}

/// How an outbox claim passes over rows another worker is claiming right
/// now (SQLite has one writer: nothing to skip).
macro_rules! skip_locked {
    () => {
        " FOR UPDATE SKIP LOCKED"
    };
}

// The engine is compiled once per backend on purpose: see engine.rs.
#[allow(clippy::duplicate_mod)]
#[path = "engine.rs"]
mod engine;

/// The PostgreSQL store.
pub type PgStore = engine::Engine;

/// Connections per process. Several processes share one server, whose
/// default `max_connections` is 100.
const CONNECTIONS_MAX: u32 = 32;
/// How long a request waits for a connection. Short on purpose: when the
/// server is unreachable, callers get 503 within 2 s instead of hanging.
const ACQUIRE_TIMEOUT: Duration = Duration::from_millis(1500);

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

impl engine::Engine {
    /// Connects to `postgres://…` and applies pending migrations (under
    /// sqlx's advisory lock, so concurrent starts are safe).
    pub async fn connect(url: &str) -> Result<PgStore, StoreError> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|error| StoreError::Unavailable(format!("bad postgres url: {error}")))?
            .application_name("verdict");
        let pool = PgPoolOptions::new()
            .max_connections(CONNECTIONS_MAX)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            // A pooled connection may have died with the server: check it.
            .test_before_acquire(true)
            .connect_with(options)
            .await?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|error| StoreError::Internal(format!("migration failed: {error}")))?;
        Ok(engine::Engine { reader: pool.clone(), writer: pool })
    }
}
