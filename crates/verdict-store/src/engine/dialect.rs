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
/// The sqlx database (`sqlx::Sqlite`, `sqlx::Postgres`).
pub(super) use super::super::Db;
/// Whether the rows a multi-row `INSERT` stored are told by
/// `inserted_rowids` rather than read back with `RETURNING`.
pub(super) use super::super::INSERTS_TOLD_BY_ROWID;
/// The backend's embedded migrations (`Store::expected_schema_version`).
pub(super) use super::super::MIGRATOR;
/// Whether verification pages are read as rows rather than as one JSON
/// array a query (see `json_rows!`).
pub(super) use super::super::PAGES_AS_ROWS;
/// Whether an id range's verification page is read as binary `COPY`
/// output, with `copy_page`.
pub(super) use super::super::PAGES_BY_COPY;
/// Reads a page as binary `COPY` output; called only when `PAGES_BY_COPY`
/// (SQLite's answers an error).
pub(super) use super::super::copy_page;
/// The rowids an `INSERT` stored, from its result; used only when
/// `INSERTS_TOLD_BY_ROWID`.
pub(super) use super::super::inserted_rowids;
/// Binds a set-wise statement's rows (`setwise.rs`): a `VALUES` list, or
/// `UNNEST` of one array a column.
pub(super) use super::super::push_rows;

/// A row of `Db`.
pub(super) type DbRow = <Db as sqlx::Database>::Row;
/// A connection of `Db` (a transaction derefs to one).
pub(super) type DbConnection = <Db as sqlx::Database>::Connection;
