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
/// A group writer's transaction starts as any write does.
pub(crate) const BEGIN_GROUP: &str = BEGIN_WRITE;

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
        "DROP INDEX ledger_postings_by_session",
        "CREATE INDEX ledger_postings_by_session ON ledger_postings (session_id)",
    ),
    (
        "DROP INDEX ledger_lines_by_posting",
        "CREATE INDEX ledger_lines_by_posting ON ledger_lines (posting_id, amount_cents)",
    ),
];

/// Set before a bulk load's transaction and restored after it (SQLite
/// refuses either change inside one), as (before, after):
/// - the index builds sort whole tables, which must spill to a temporary
///   file rather than grow memory with them;
/// - foreign keys are not looked up row by row: every child row a load
///   writes (events, payouts, postings) is built for a session the same
///   load's `INSERT` stored, and a ledger line for a posting the same
///   statement numbered (and read back). The lookups were a sixth of a
///   load's time (bench/RESULTS.md, "Import: CHECK lists, foreign keys and
///   partial indexes"). A test checks a bulk load leaves no orphan and
///   gives the connection back with foreign keys on.
const BULK_PRAGMAS: &[(&str, &str)] = &[
    ("PRAGMA temp_store = FILE", "PRAGMA temp_store = MEMORY"),
    ("PRAGMA foreign_keys = OFF", "PRAGMA foreign_keys = ON"),
];

/// Which rows a multi-row `INSERT` stored, told by their rowids rather than
/// read back with `RETURNING`: the driver hands each returned row from its
/// worker thread to the caller one at a time, a wake-up per row (a million
/// of them in an import of a million lines). SQLite numbers the rows an
/// `INSERT` stores consecutively in `VALUES` order (a new rowid is one more
/// than the largest, and one statement runs alone under the write lock),
/// so they are the `rows_affected` rowids ending at `last_insert_rowid`.
const INSERTED_ROWIDS: Option<engine::InsertedRowids> = Some(inserted_rowids);

fn inserted_rowids(
    result: &sqlx::sqlite::SqliteQueryResult,
) -> Option<std::ops::RangeInclusive<i64>> {
    let stored = i64::try_from(result.rows_affected()).ok()?;
    let last = result.last_insert_rowid();
    Some(last - stored + 1..=last)
}

/// `COPY` is PostgreSQL's: SQLite pages are read by query.
const COPY_PAGE: Option<engine::CopyPage> = None;

/// The rows of a set-wise statement (`engine/setwise.rs`): a `VALUES`
/// list, a row each (SQLite binds up to 32,766 values a statement; a group
/// writes at most 256 rows of a dozen columns to a table).
fn push_rows(query: &mut sqlx::QueryBuilder<Db>, mut columns: Vec<engine::Values>, len: usize) {
    query.push("VALUES ");
    for row in 0..len {
        query.push(if row == 0 { "(" } else { ", (" });
        for (n, column) in columns.iter_mut().enumerate() {
            if n > 0 {
                query.push(", ");
            }
            match column {
                engine::Values::Text(values) => query.push_bind(values[row].take()),
                engine::Values::Int(values) => query.push_bind(values[row]),
            };
        }
        query.push(")");
    }
}

/// SQLite has no data-modifying common tables: a group's writes run one
/// statement a table.
const COMBINES_WRITES: bool = false;

/// A batch of the scan judges its receipts session by session: SQLite's
/// index probes are in-process and cheap (7 ms a page of 2,000 sessions),
/// while grouping the page's receipts streams takes a temporary B-tree
/// (12–14 ms, bench/RESULTS.md).
const RECEIPTS_BY_RANGE: bool = false;

// The engine is compiled once per backend on purpose: see engine/mod.rs.
#[allow(clippy::duplicate_mod)]
#[path = "engine/mod.rs"]
mod engine;

mod writer;

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
        let path = options.get_filename().to_string_lossy().into_owned();
        let reader = SqlitePoolOptions::new()
            .max_connections(READERS_MAX)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options.pragma("cache_size", "-4096"))
            .await?;
        let availability = std::sync::Arc::new(tokio::sync::watch::Sender::new(true));
        // Groups of ends run on a thread of their own (see `writer.rs`); an
        // in-memory database is one connection's alone, so it has none.
        let runner: Option<std::sync::Arc<dyn engine::EndsRunner>> =
            if path.is_empty() || path == ":memory:" || url.contains("mode=memory") {
                None
            } else {
                Some(std::sync::Arc::new(writer::SqliteEnds::start(&path, WRITE_WAIT)?))
            };
        Ok(engine::Engine::new(reader, writer, availability, 1, runner))
    }
}

#[cfg(test)]
mod tests {
    use verdict_core::{Cents, Kind, Party, Price, PriceMode, Status, UnixMillis};

    use super::SqliteStore;
    use crate::{ImportSession, PayoutState, Store};

    const T0: UnixMillis = UnixMillis(1_800_000_000_000);

    fn paid(id: &str) -> ImportSession {
        ImportSession {
            id: id.into(),
            kind: Kind::Video,
            customer_id: "c1".into(),
            provider_id: "p1".into(),
            provider_account: None,
            price: Price { mode: PriceMode::Flat, amount: Cents(1_000), currency: "usd".into() },
            status: Status::Completed,
            reason: None,
            created_at: T0,
            ended_at: Some(UnixMillis(T0.0 + 3_600_000)),
            events: vec![(Party::Customer, true, UnixMillis(T0.0 + 1_000))],
            payout: Some((Cents(800), PayoutState::Paid)),
            metadata: None,
        }
    }

    /// `foreign_keys` and `temp_store` (2: memory) on the writer connection.
    async fn writer_settings(store: &SqliteStore) -> (i64, i64) {
        let mut writer = store.writer.acquire().await.unwrap();
        let fk = sqlx::query_scalar("PRAGMA foreign_keys").fetch_one(&mut *writer).await.unwrap();
        let temp = sqlx::query_scalar("PRAGMA temp_store").fetch_one(&mut *writer).await.unwrap();
        (fk, temp)
    }

    /// A bulk load turns foreign key lookups off on its connection only:
    /// committed or abandoned, the writer checks them again afterwards, and
    /// what the load stored has no orphan.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_bulk_load_writes_no_orphan_and_gives_foreign_keys_back() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            SqliteStore::open(&format!("sqlite://{}/bulk.db", dir.path().display())).await.unwrap();
        assert_eq!(writer_settings(&store).await, (1, 2));

        // Two loads, the second overlapping the first: its stored ids are
        // told apart from the rowid range, and only new ones get rows.
        for (run, ids) in [("run-1", 0..1_500), ("run-2", 1_000..2_700)] {
            let mut bulk = store.bulk_import().await.unwrap();
            let sessions: Vec<ImportSession> = ids.map(|n| paid(&format!("s-{n}"))).collect();
            bulk.add(sessions, run, T0).await.unwrap().outcomes().await.unwrap();
            bulk.commit().await.unwrap();
            assert_eq!(writer_settings(&store).await, (1, 2), "after committing {run}");
        }
        let mut writer = store.writer.acquire().await.unwrap();
        let orphans =
            sqlx::query("PRAGMA foreign_key_check").fetch_all(&mut *writer).await.unwrap();
        assert!(orphans.is_empty(), "{} rows without their parent", orphans.len());
        let payouts: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM payouts")
            .fetch_one(&mut *writer)
            .await
            .unwrap();
        assert_eq!(payouts, 2_700);
        // The connection the loads used refuses an orphan again.
        let orphan = execute(&mut writer, &event_row("nowhere", "joined")).await;
        assert!(orphan.unwrap_err().contains("FOREIGN KEY"), "an event without its session");
        drop(writer);

        let mut abandoned = store.bulk_import().await.unwrap();
        abandoned.add(vec![paid("gone")], "run-3", T0).await.unwrap().outcomes().await.unwrap();
        drop(abandoned);
        assert_eq!(writer_settings(&store).await, (1, 2), "after an abandoned load");
    }

    /// The SQL of every table.
    async fn table_definitions(store: &SqliteStore) -> Vec<String> {
        let mut writer = store.writer.acquire().await.unwrap();
        sqlx::query_scalar("SELECT sql FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .fetch_all(&mut *writer)
            .await
            .unwrap()
    }

    /// Whether some `IN (...)` list holds three constants or more.
    fn has_long_in_list(sql: &str) -> bool {
        sql.match_indices(" IN (").any(|(at, found)| {
            let list = &sql[at + found.len()..];
            let list = &list[..list.find(')').unwrap_or(list.len())];
            list.split(',').filter(|item| item.trim().starts_with('\'')).count() >= 3
        })
    }

    async fn execute(writer: &mut sqlx::SqliteConnection, statement: &str) -> Result<(), String> {
        sqlx::raw_sql(sqlx::AssertSqlSafe(statement.to_owned()))
            .execute(writer)
            .await
            .map(drop)
            .map_err(|error| error.to_string())
    }

    fn session_row(id: &str, kind: &str, status: &str, reason: &str, ended_at: &str) -> String {
        format!(
            "INSERT INTO sessions (id, kind, status, reason, customer_id, provider_id, \
             created_at, ended_at, price_mode, price_amount_cents, currency) \
             VALUES ('{id}', '{kind}', '{status}', {reason}, 'c', 'p', 0, {ended_at}, 'flat', 0, \
             'usd')"
        )
    }

    fn event_row(session_id: &str, kind: &str) -> String {
        format!(
            "INSERT INTO session_events (session_id, type, actor_role, actor_id, at) \
             VALUES ('{session_id}', '{kind}', 'system', 'test', 0)"
        )
    }

    /// An IN list of three or more constants in a CHECK is a temporary
    /// b-tree built again for every row checked: none is left, inserting
    /// an event builds none, and the constraints still refuse what they
    /// refused.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn check_constraints_compare_without_building_a_table_a_row() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&format!("sqlite://{}/checks.db", dir.path().display()))
            .await
            .unwrap();
        for sql in table_definitions(&store).await {
            assert!(!has_long_in_list(&sql), "an IN list of three or more: {sql}");
        }
        let mut writer = store.writer.acquire().await.unwrap();
        let explain = format!("EXPLAIN {}", event_row("s", "joined"));
        let opcodes: Vec<String> = sqlx::query(sqlx::AssertSqlSafe(explain))
            .fetch_all(&mut *writer)
            .await
            .unwrap()
            .iter()
            .map(|row| sqlx::Row::get::<String, _>(row, "opcode"))
            .collect();
        assert!(opcodes.iter().any(|op| op == "Insert"), "{opcodes:?}");
        assert!(!opcodes.iter().any(|op| op == "OpenEphemeral"), "{opcodes:?}");

        for refused in [
            session_row("s-1", "bus", "waiting", "NULL", "NULL"),
            session_row("s-2", "chat", "paused", "NULL", "NULL"),
            session_row("s-3", "chat", "completed", "'lucky'", "1"),
            session_row("s-4", "chat", "completed", "'completed'", "NULL"),
            session_row("s-5", "chat", "expired", "NULL", "1"),
            session_row("s-6", "chat", "waiting", "NULL", "1"),
        ] {
            let result = execute(&mut writer, &refused).await;
            assert!(result.unwrap_err().contains("CHECK"), "stored: {refused}");
        }
        for stored in [
            session_row("s-7", "chat", "waiting", "NULL", "NULL"),
            session_row("s-8", "video", "completed", "'too_short'", "1"),
            session_row("s-9", "diagnostic", "expired", "'no_show_both'", "1"),
            event_row("s-7", "corrected"),
        ] {
            execute(&mut writer, &stored).await.unwrap();
        }
        assert!(execute(&mut writer, &event_row("s-7", "paused")).await.is_err());
    }

    /// A database migrated before 0012, with rows in it, migrates in place:
    /// the rows read back, and the file is sound.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_database_from_before_the_check_rewrite_migrates_with_its_rows() {
        use sqlx::Connection;
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/old.db", dir.path().display());
        let options = <sqlx::sqlite::SqliteConnectOptions as std::str::FromStr>::from_str(&url)
            .unwrap()
            .create_if_missing(true);
        let mut old = sqlx::SqliteConnection::connect_with(&options).await.unwrap();
        super::MIGRATOR.run_to(11, &mut old).await.unwrap();
        let tables: Vec<String> =
            sqlx::query_scalar("SELECT sql FROM sqlite_master WHERE type = 'table'")
                .fetch_all(&mut old)
                .await
                .unwrap();
        assert!(tables.iter().any(|sql| has_long_in_list(sql)), "0011 had long lists");
        execute(&mut old, &session_row("before", "chat", "completed", "'completed'", "1"))
            .await
            .unwrap();
        execute(&mut old, &event_row("before", "ended")).await.unwrap();
        old.close().await.unwrap();

        let store = SqliteStore::open(&url).await.unwrap();
        let session = store.session("before").await.unwrap().expect("kept");
        assert_eq!(session.status, Status::Completed);
        assert_eq!(store.events("before").await.unwrap().len(), 1);
        assert!(table_definitions(&store).await.iter().all(|sql| !has_long_in_list(sql)));
        let mut writer = store.writer.acquire().await.unwrap();
        let check: String =
            sqlx::query_scalar("PRAGMA integrity_check").fetch_one(&mut *writer).await.unwrap();
        assert_eq!(check, "ok");
        let refused = session_row("bad", "chat", "paused", "NULL", "NULL");
        assert!(execute(&mut writer, &refused).await.is_err());
    }
}
