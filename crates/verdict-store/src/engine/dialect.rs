//! The backend contract: everything a backend module (`sqlite.rs`,
//! `postgres.rs`) must supply before it includes the engine with
//! `#[path = "engine/mod.rs"] mod engine;`. The engine reaches the backend
//! through this module only: each item below is re-exported from the
//! backend (`super::super`) with what it means, so a backend that misses one
//! fails to compile here.
//!
//! Three macros complete the contract. A `macro_rules!` macro cannot be
//! re-exported by path without the backend exporting it, so these are
//! defined in the backend module before its `mod engine;` and reach every
//! engine module by textual scope; each expands to a string literal, for
//! `concat!`:
//! - `for_update!()`: how a `SELECT` locks the rows it reads until the
//!   transaction ends (a session row, before every state change).
//!   PostgreSQL: `FOR UPDATE`; SQLite: nothing (`BEGIN_WRITE` took the
//!   database write lock).
//! - `skip_locked!()`: how an outbox claim passes over rows another worker
//!   is claiming right now (PostgreSQL: `FOR UPDATE SKIP LOCKED`).
//! - `json_rows!(columns)`: what a verification page's query selects of
//!   its rows: one JSON array of arrays (SQLite: `json_group_array`), or the
//!   bare column list when `PAGES_AS_ROWS`.

/// The backend's name, as `Store::backend` answers it.
pub(super) use super::super::BACKEND;
/// Starts a group writer's transaction (PostgreSQL: with generic plans
/// for its set-wise statements).
pub(super) use super::super::BEGIN_GROUP;
/// The statement that starts a write transaction (SQLite: `BEGIN
/// IMMEDIATE`, the write lock up front).
pub(super) use super::super::BEGIN_WRITE;
/// Indexes a bulk import drops and builds once before committing, as
/// (drop, create) statements.
pub(super) use super::super::BULK_DEFERRED_INDEXES;
/// Settings a bulk load changes around its transaction, as (before, after)
/// statements.
pub(super) use super::super::BULK_PRAGMAS;
/// Several set-wise writes may run as one statement of data-modifying
/// common tables (`ends::execute_all`).
pub(super) use super::super::COMBINES_WRITES;
/// How an id range's verification page is read as binary `COPY` output,
/// where the backend has `COPY` (`None`: pages are read by query).
pub(super) use super::super::COPY_PAGE;
/// The sqlx database (`sqlx::Sqlite`, `sqlx::Postgres`).
pub(super) use super::super::Db;
/// The rowids a multi-row `INSERT` stored, told from its result, where
/// the backend numbers them consecutively (`None`: read back with
/// `RETURNING`).
pub(super) use super::super::INSERTED_ROWIDS;
/// The backend's embedded migrations (`Store::expected_schema_version`).
pub(super) use super::super::MIGRATOR;
/// Whether verification pages are read as rows rather than as one JSON
/// array a query (see `json_rows!`).
pub(super) use super::super::PAGES_AS_ROWS;
/// Whether a page of the scan judges its receipts as streams over its id
/// range (`receipts.rs`) rather than by probes a session.
pub(super) use super::super::RECEIPTS_BY_RANGE;
/// Binds a set-wise statement's rows (`setwise.rs`): a `VALUES` list, or
/// `UNNEST` of one array a column.
pub(super) use super::super::push_rows;

/// Reads a verification page as binary `COPY` output of `select`, its
/// bounds (after, through) set from bound parameters.
pub(crate) type CopyPage = for<'a> fn(
    &'a sqlx::Pool<Db>,
    &'a str,
    &'a str,
    &'a str,
) -> std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Vec<u8>, crate::StoreError>> + Send + 'a>,
>;
/// Tells the rowids a multi-row `INSERT` stored from its result.
pub(crate) type InsertedRowids =
    fn(&<Db as sqlx::Database>::QueryResult) -> Option<std::ops::RangeInclusive<i64>>;

/// A row of `Db`.
pub(super) type DbRow = <Db as sqlx::Database>::Row;
/// A connection of `Db` (a transaction derefs to one).
pub(super) type DbConnection = <Db as sqlx::Database>::Connection;
