//! The PostgreSQL backend, for many stateless `verdict serve` instances
//! sharing one database: every correctness guarantee is a database
//! transaction with the session row locked (`SELECT … FOR UPDATE`, waiting).

use std::str::FromStr;
use std::time::Duration;

use std::sync::{Arc, Weak};

use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};
use tokio::sync::watch;

use crate::StoreError;

pub(crate) use sqlx::Postgres as Db;

pub(crate) const BACKEND: &str = "postgres";
pub(crate) const BEGIN_WRITE: &str = "BEGIN";
/// A group writer's transaction plans its set-wise statements once: their
/// text is fixed and their rows come as arrays, so a plan made for one
/// group's values fits every group, while the default custom plans were
/// made again at each execution (a quarter of the server's CPU per end,
/// bench/RESULTS.md).
pub(crate) const BEGIN_GROUP: &str = "BEGIN; SET LOCAL plan_cache_mode = force_generic_plan";

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

/// The columns of a verification page, sent as plain rows: PostgreSQL
/// builds `json_agg(json_build_array(…))` pages about twice as slowly as it
/// scans them, and its driver's cost per row is small.
macro_rules! json_rows {
    ($columns:expr) => {
        $columns
    };
}

/// Verification pages are read as rows, not as one JSON value.
const PAGES_AS_ROWS: bool = true;

/// A bulk import keeps every index: dropping one takes a lock that would
/// stop every reader until the load commits.
const BULK_DEFERRED_INDEXES: &[(&str, &str)] = &[];
/// PostgreSQL sorts in `work_mem` and spills by itself, and checks every
/// foreign key (turning the checks off takes a superuser).
const BULK_PRAGMAS: &[(&str, &str)] = &[];

/// PostgreSQL tells the rows an `INSERT` stored with `RETURNING`, in the
/// same round trip; a sequence's values need not be consecutive.
const INSERTED_ROWIDS: Option<engine::InsertedRowids> = None;

/// An id-range verification page is read as binary `COPY` output (see
/// `copy_page`), not as rows.
const COPY_PAGE: Option<engine::CopyPage> =
    Some(|pool, select, after, through| Box::pin(copy_page(pool, select, after, through)));

/// Runs `COPY (select) TO STDOUT (FORMAT binary)` and returns its bytes.
/// `select` is built from constants of the engine: its range bounds are
/// `current_setting('verdict.page_after')` and `…page_through`, set first
/// from bound parameters, since `COPY` takes none, and local to one
/// transaction (so nothing is left on the connection, and a pooler that
/// hands out connections per transaction keeps the two statements
/// together). The client reads the rows in place (`copy_binary`), where
/// sqlx decoding each row was about half of `verdict verify`'s client time.
async fn copy_page(
    pool: &sqlx::Pool<Db>,
    select: &str,
    after: &str,
    through: &str,
) -> Result<Vec<u8>, StoreError> {
    use futures::TryStreamExt;

    /// A connection dropped before its transaction ended (the caller went
    /// away, or a statement failed) is closed, not returned with data still
    /// queued or a transaction open.
    struct Copying {
        connection: sqlx::pool::PoolConnection<Db>,
        finished: bool,
    }
    impl Drop for Copying {
        fn drop(&mut self) {
            if !self.finished {
                self.connection.close_on_drop();
            }
        }
    }

    let mut copying = Copying { connection: pool.acquire().await?, finished: false };
    sqlx::raw_sql("BEGIN READ ONLY").execute(&mut *copying.connection).await?;
    sqlx::query(
        "SELECT set_config('verdict.page_after', $1, true), \
         set_config('verdict.page_through', $2, true)",
    )
    .bind(after)
    .bind(through)
    .execute(&mut *copying.connection)
    .await?;
    let statement = format!("COPY ({select}) TO STDOUT (FORMAT binary)");
    let mut bytes = Vec::new();
    {
        let mut stream = copying.connection.copy_out_raw(&statement).await?;
        while let Some(chunk) = stream.try_next().await? {
            bytes.extend_from_slice(&chunk);
        }
    }
    sqlx::raw_sql("COMMIT").execute(&mut *copying.connection).await?;
    copying.finished = true;
    Ok(bytes)
}

/// The rows of a set-wise statement (`engine/setwise.rs`): `UNNEST` of one
/// array a column, so that the statement's text is the same for any
/// number of rows and stays prepared on its connection.
fn push_rows(query: &mut sqlx::QueryBuilder<Db>, columns: Vec<engine::Values>, _len: usize) {
    query.push("SELECT * FROM UNNEST(");
    for (n, column) in columns.into_iter().enumerate() {
        if n > 0 {
            query.push(", ");
        }
        match column {
            engine::Values::Text(values) => query.push_bind(values).push("::text[]"),
            engine::Values::Int(values) => query.push_bind(values).push("::int8[]"),
        };
    }
    query.push(")");
}

/// A group's writes run as few statements of data-modifying common tables
/// (a round trip each), not one a table.
const COMBINES_WRITES: bool = true;

/// A batch of the scan judges its receipts as streams over its id range,
/// grouped by session (about 5.4 ms a page of 2,000 sessions), not by
/// five index probes a session (12.2 ms, bench/RESULTS.md).
const RECEIPTS_BY_RANGE: bool = true;

// The engine is compiled once per backend on purpose: see engine/mod.rs.
#[allow(clippy::duplicate_mod)]
#[path = "engine/mod.rs"]
mod engine;

/// The PostgreSQL store.
pub type PgStore = engine::Engine;

/// Connections per process. Several processes share one server, whose
/// default `max_connections` is 100.
const CONNECTIONS_MAX: u32 = 32;
/// Group-commit writers (see `Engine::grouped`): several, so that the
/// server's parallelism is used while a group commits, each holding one
/// connection only while it writes.
const WRITE_GROUPS: usize = 4;
/// How long a request may queue for a connection under load. An outage is
/// not detected by this timeout but by the availability probe, which
/// releases waiting requests within 2.5 s at worst.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the probe asks the server, and how long it waits for it.
const PROBE_INTERVAL: Duration = Duration::from_millis(250);
const PROBE_TIMEOUT: Duration = Duration::from_millis(1000);
/// Failed probes in a row that make the database unavailable: one answer
/// late on a loaded machine must not turn every request away (and cut those
/// in flight), while a refused connection is still noticed within half a
/// second and a hung server within 2.5 s (two timeouts and two intervals).
const PROBE_FAILURES_DOWN: u32 = 2;

/// The availability the probe reports, from its attempts.
#[derive(Debug, Default)]
struct ProbeVerdict {
    failures_in_a_row: u32,
}

impl ProbeVerdict {
    /// Takes an attempt's outcome; tells whether the database is available.
    fn observe(&mut self, answered: bool) -> bool {
        self.failures_in_a_row =
            if answered { 0 } else { self.failures_in_a_row.saturating_add(1) };
        self.failures_in_a_row < PROBE_FAILURES_DOWN
    }
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

impl engine::Engine {
    /// Connects to `postgres://…` and applies pending migrations (under
    /// sqlx's advisory lock, so concurrent starts are safe).
    pub async fn connect(url: &str) -> Result<PgStore, StoreError> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|error| StoreError::Unavailable(format!("bad postgres url: {error}")))?
            .application_name("verdict");
        check_tls_files(url)?;
        for warning in tls_warnings(url) {
            tracing::warn!("{warning}");
        }
        // One connection first, alone: an operator reads at once why it
        // fails (refused, TLS, password), not a pool's timeout 30 s later.
        let first = tokio::time::timeout(ACQUIRE_TIMEOUT, PgConnection::connect_with(&options))
            .await
            .map_err(|_| {
                StoreError::Unavailable(format!(
                    "no answer from the server within {} s",
                    ACQUIRE_TIMEOUT.as_secs()
                ))
            })??;
        let _ = first.close().await;
        let pool = PgPoolOptions::new()
            .max_connections(CONNECTIONS_MAX)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            // A pooled connection may have died with the server: check it.
            .test_before_acquire(true)
            .connect_with(options.clone())
            .await?;
        MIGRATOR.run(&pool).await.map_err(|error| match error {
            // The connection lost mid-migration is an outage (exit 3:
            // a supervisor retries), not a broken schema.
            sqlx::migrate::MigrateError::Execute(error) => StoreError::from(error),
            error => StoreError::Internal(format!("migration failed: {error}")),
        })?;
        let availability = Arc::new(watch::Sender::new(true));
        tokio::spawn(probe(options, Arc::downgrade(&availability)));
        Ok(engine::Engine::new(pool.clone(), pool, availability, WRITE_GROUPS, None))
    }
}

/// What can be known of a `postgres://` URL without connecting: that it
/// parses and that the TLS files it names can be read (a configuration
/// error, not an outage).
pub fn check_url(url: &str) -> Result<(), String> {
    PgConnectOptions::from_str(url).map_err(|error| format!("bad postgres url: {error}"))?;
    check_tls_files(url).map_err(|error| match error {
        StoreError::Unavailable(text) => text,
        other => other.to_string(),
    })
}

/// Checks that the files the URL names for TLS (`sslrootcert`, `sslcert`,
/// `sslkey`, in sqlx's spellings too) can be read. The driver reads them at
/// each connection, deep in the handshake, where a missing one is only a
/// bare "No such file or directory".
fn check_tls_files(url: &str) -> Result<(), StoreError> {
    let Ok(parsed) = url::Url::parse(url) else { return Ok(()) };
    for (key, value) in parsed.query_pairs() {
        let setting = match key.as_ref() {
            "sslrootcert" | "ssl-root-cert" | "ssl-ca" => "sslrootcert",
            "sslcert" | "ssl-cert" => "sslcert",
            "sslkey" | "ssl-key" => "sslkey",
            _ => continue,
        };
        // sqlx also takes the PEM itself in place of a path.
        let inline = value.trim_start().starts_with("-----BEGIN");
        if inline {
            continue;
        }
        if let Err(error) = std::fs::File::open(value.as_ref()) {
            // The path is named, not echoed as a value could be (a key).
            return Err(StoreError::Unavailable(format!(
                "the {setting} file of the database URL cannot be read: {error}"
            )));
        }
    }
    Ok(())
}

/// What the URL's TLS settings do not do that an operator may expect of
/// them (libpq's meaning): `verify-ca` trusts the system's roots beside
/// `sslrootcert` and checks no host name, and `require`/`prefer` ignore
/// `sslrootcert`. Logged at start-up; `verify-full` is what protects.
pub fn tls_warnings(url: &str) -> Vec<String> {
    let Ok(parsed) = url::Url::parse(url) else { return Vec::new() };
    let query: Vec<(String, String)> = parsed.query_pairs().into_owned().collect();
    let value = |names: &[&str]| {
        query.iter().find(|(key, _)| names.contains(&key.as_str())).map(|(_, value)| value.clone())
    };
    let mode = value(&["sslmode", "ssl-mode"]).unwrap_or_default().to_ascii_lowercase();
    let root = value(&["sslrootcert", "ssl-root-cert", "ssl-ca"]).is_some();
    let mut warnings = Vec::new();
    if mode == "verify-ca" {
        warnings.push(
            "sslmode=verify-ca checks no host name and trusts every CA of the system's roots \
             besides sslrootcert: anyone holding a public certificate can pose as the \
             database; use sslmode=verify-full"
                .to_owned(),
        );
    }
    if root && matches!(mode.as_str(), "require" | "prefer" | "") {
        warnings.push(format!(
            "sslmode={} ignores sslrootcert (libpq would verify with it): the server's \
             certificate is not checked; use sslmode=verify-full",
            if mode.is_empty() { "prefer" } else { &mode }
        ));
    }
    warnings
}

/// Keeps `availability` current from a connection of its own (so that a
/// busy pool never looks like an outage), until the store is dropped.
async fn probe(options: PgConnectOptions, availability: Weak<watch::Sender<bool>>) {
    let mut connection: Option<PgConnection> = None;
    let mut verdict = ProbeVerdict::default();
    loop {
        let attempt = tokio::time::timeout(PROBE_TIMEOUT, async {
            if connection.is_none() {
                connection = Some(PgConnection::connect_with(&options).await?);
            }
            match connection.as_mut() {
                Some(connection) => connection.ping().await,
                None => Ok(()),
            }
        })
        .await;
        let answered = matches!(attempt, Ok(Ok(())));
        if !answered {
            connection = None;
        }
        let up = verdict.observe(answered);
        let Some(sender) = availability.upgrade() else { return };
        sender.send_if_modified(|available| {
            let changed = *available != up;
            *available = up;
            changed
        });
        drop(sender);
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::ProbeVerdict;

    #[test]
    fn one_late_probe_is_not_an_outage_and_one_answer_ends_one() {
        let mut verdict = ProbeVerdict::default();
        assert!(verdict.observe(true));
        assert!(verdict.observe(false), "one failed probe: still available");
        assert!(verdict.observe(true));
        assert!(verdict.observe(false), "failures count in a row only");
        assert!(!verdict.observe(false), "two in a row: unavailable");
        assert!(!verdict.observe(false));
        assert!(verdict.observe(true), "one answer: available again");
    }
}

#[cfg(test)]
mod tls_tests {
    use super::{check_url, tls_warnings};

    #[test]
    fn weaker_than_libpq_settings_are_warned_about_and_verify_full_is_not() {
        let at = |query: &str| format!("postgres://verdict@db.example/verdict?{query}");
        assert!(tls_warnings(&at("sslmode=verify-full&sslrootcert=/ca.pem")).is_empty());
        assert!(tls_warnings(&at("sslmode=disable")).is_empty());
        assert!(tls_warnings(&at("sslmode=require")).is_empty());
        let ca = tls_warnings(&at("sslmode=verify-ca&sslrootcert=/ca.pem"));
        assert_eq!(ca.len(), 1);
        assert!(ca[0].contains("verify-full"), "{ca:?}");
        for query in ["sslmode=require&sslrootcert=/ca.pem", "sslrootcert=/ca.pem"] {
            let warnings = tls_warnings(&at(query));
            assert_eq!(warnings.len(), 1, "{query}");
            assert!(warnings[0].contains("ignores sslrootcert"), "{warnings:?}");
        }
    }

    #[test]
    fn a_key_given_inline_is_accepted_and_a_missing_file_named_not_echoed() {
        let inline = "postgres://h/db?sslmode=verify-full&sslkey=-----BEGIN%20PRIVATE%20KEY-----x";
        assert_eq!(check_url(inline), Ok(()));
        let missing = "postgres://h/db?sslmode=verify-full&sslkey=/nonexistent/secret-key.pem";
        let error = check_url(missing).expect_err("a missing file is refused");
        assert!(error.contains("sslkey file"), "{error}");
        assert!(!error.contains("secret-key"), "the value is echoed: {error}");
    }
}
