//! The embedded SQLite backend (the default): WAL, one writer connection,
//! a small pool of readers, migrations embedded in the binary.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use crate::StoreError;

pub(crate) use sqlx::Sqlite as Db;

pub(crate) const BACKEND: &str = "sqlite";
/// Takes the write lock up front: a deferred transaction that reads and then
/// writes could fail to upgrade with `SQLITE_BUSY` under WAL.
pub(crate) const BEGIN_WRITE: &str = "BEGIN IMMEDIATE";

/// SQLite locks the whole database for writing; rows need no lock clause.
macro_rules! for_update {
    () => {
        ""
    };
}

/// How an outbox claim passes over rows another worker is claiming right
/// now (SQLite has one writer: nothing to skip).
macro_rules! skip_locked {
    () => {
        ""
    };
}

/// A JSON array of one array per row (in no promised order): a whole page
/// crosses the driver as one value.
macro_rules! json_rows {
    ($columns:expr) => {
        concat!("json_group_array(json_array(", $columns, "))")
    };
}

/// Verification pages are read as one JSON value: sqlx's SQLite driver
/// pays a hop to its worker thread for every row.
const PAGES_AS_ROWS: bool = false;

/// Indexes a bulk import drops inside its transaction and builds once
/// before committing (`DROP`, `CREATE`, as the migrations made them): their
/// keys arrive in random order, so maintaining them row by row dirtied
/// thousands of leaf pages a batch, two thirds of SQLite's own import work
/// (bench/RESULTS.md, "What SQLite alone costs an import"). A test checks
/// the schema after a bulk load equals the migrated one.
const BULK_DEFERRED_INDEXES: &[(&str, &str)] = &[
    ("DROP INDEX sessions_by_ended", "CREATE INDEX sessions_by_ended ON sessions (ended_at, id)"),
    (
        "DROP INDEX ledger_lines_by_account",
        "CREATE INDEX ledger_lines_by_account ON ledger_lines (account)",
    ),
    ("DROP INDEX payouts_by_provider", "CREATE INDEX payouts_by_provider ON payouts (provider_id)"),
    (
        "DROP INDEX session_events_by_session",
        "CREATE INDEX session_events_by_session ON session_events \
         (session_id, seq, type, party, at, connection)",
    ),
    (
        "DROP INDEX sessions_sweep",
        "CREATE INDEX sessions_sweep ON sessions (status, sweep_checked_at)",
    ),
    (
        "DROP INDEX sessions_finalizing",
        "CREATE INDEX sessions_finalizing ON sessions (finalizes_at) WHERE finalized_at IS NULL",
    ),
    (
        "DROP INDEX ledger_postings_by_session",
        "CREATE INDEX ledger_postings_by_session ON ledger_postings (session_id)",
    ),
    (
        "DROP INDEX ledger_lines_by_posting",
        "CREATE INDEX ledger_lines_by_posting ON ledger_lines (posting_id, amount_cents)",
    ),
];

/// Set before a bulk load's transaction and restored after it (SQLite
/// refuses the change inside one): the index builds sort whole tables,
/// which must spill to a temporary file rather than grow memory with them.
const BULK_TEMP_STORE: Option<(&str, &str)> =
    Some(("PRAGMA temp_store = FILE", "PRAGMA temp_store = MEMORY"));

/// Which rows a multi-row `INSERT` stored, told by their rowids rather than
/// read back with `RETURNING`: the driver hands each returned row from its
/// worker thread to the caller one at a time, a wake-up per row (a million
/// of them in an import of a million lines). SQLite numbers the rows an
/// `INSERT` stores consecutively in `VALUES` order (a new rowid is one more
/// than the largest, and one statement runs alone under the write lock),
/// so they are the `rows_affected` rowids ending at `last_insert_rowid`.
const INSERTS_TOLD_BY_ROWID: bool = true;

fn inserted_rowids(
    result: &sqlx::sqlite::SqliteQueryResult,
) -> Option<std::ops::RangeInclusive<i64>> {
    let stored = i64::try_from(result.rows_affected()).ok()?;
    let last = result.last_insert_rowid();
    Some(last - stored + 1..=last)
}

/// `COPY` is PostgreSQL's: SQLite pages are never read with it.
const PAGES_BY_COPY: bool = false;

async fn copy_page(
    _pool: &sqlx::Pool<Db>,
    _select: &str,
    _after: &str,
    _through: &str,
) -> Result<Vec<u8>, StoreError> {
    Err(StoreError::Internal("COPY pages are PostgreSQL's".to_owned()))
}

// The engine is compiled once per backend on purpose: see engine.rs.
#[allow(clippy::duplicate_mod)]
#[path = "engine.rs"]
mod engine;

/// The SQLite store.
pub type SqliteStore = engine::Engine;

/// How long a write waits for the writer connection or the file lock before
/// the caller gets 503. Generous: on one writer, a burst of writes queues.
const WRITE_WAIT: Duration = Duration::from_secs(30);
const READERS_MAX: u32 = 8;
/// The page size of a database created here.
const PAGE_BYTES: u32 = 16_384;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

impl engine::Engine {
    /// Opens `sqlite://path` (creating the file and its folder), switches
    /// to WAL and applies pending migrations.
    pub async fn open(url: &str) -> Result<SqliteStore, StoreError> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|error| StoreError::Unavailable(format!("bad sqlite url: {error}")))?
            .create_if_missing(true)
            // 16 KiB pages for a new database (one made with other pages
            // keeps them): shallower trees and fewer pages to balance, sort
            // and write. An import of 1M lines took 20 % less time than with
            // the default 4 KiB; ends and verification were no slower
            // (bench/RESULTS.md, "Import: the bulk load pipelined, 16 KiB
            // pages").
            .page_size(PAGE_BYTES)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a committed end survives power loss, not just a crash.
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(WRITE_WAIT)
            // Sorting and temporary b-trees in memory, not in temp files.
            .pragma("temp_store", "memory");
        if let Some(parent) = Path::new(options.get_filename()).parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent).map_err(|error| {
                StoreError::Unavailable(format!("cannot create {}: {error}", parent.display()))
            })?;
        }
        // Page caches (negative: KiB). The writer's holds a large batch's
        // index pages, so a transaction does not spill to the WAL before
        // it commits; a reader's stays small (the OS caches the file; many
        // readers' caches would add up without making scans faster).
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(WRITE_WAIT)
            .connect_with(options.clone().pragma("cache_size", "-65536"))
            .await?;
        MIGRATOR
            .run(&writer)
            .await
            .map_err(|error| StoreError::Internal(format!("migration failed: {error}")))?;
        let reader = SqlitePoolOptions::new()
            .max_connections(READERS_MAX)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options.pragma("cache_size", "-4096"))
            .await?;
        let availability = std::sync::Arc::new(tokio::sync::watch::Sender::new(true));
        Ok(engine::Engine::new(reader, writer, availability, 1))
    }
}
