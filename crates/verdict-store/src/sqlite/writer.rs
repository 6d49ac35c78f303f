//! SQLite's runner of end groups: a thread of its own with a connection of
//! its own (rusqlite, on the same `libsqlite3-sys` as sqlx) runs a whole
//! group — read, plan, write, commit — without leaving the thread. Through
//! sqlx each statement was a hop to the driver's thread and back, a dozen a
//! group, and on a busy machine each hop waited for a core.
//!
//! The group is planned and written exactly as on the sqlx path (the
//! engine's `plan_group` and `end_statements`): only where the statements
//! run differs. The writer takes SQLite's write lock with
//! `BEGIN IMMEDIATE`, like the sqlx writer, and waits for it up to the same
//! busy timeout.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, TransactionBehavior};
use tokio::sync::oneshot;

use super::engine::{
    EndWrite, EndsRunner, GroupAnswers, Rows, SESSION_COLUMNS, SessionRecord, SetStatement, Users,
    Values, check_changes, end_statements, open_of, plan_group, presence_event,
};
use verdict_core::PresenceEvent;

use crate::{Ended, Session, StoreError};

type Job = (Vec<EndWrite>, oneshot::Sender<GroupAnswers>);

/// The writer thread, fed groups of ends.
pub(crate) struct SqliteEnds {
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl SqliteEnds {
    /// Opens its connection to the database at `path` (already migrated)
    /// and starts the thread.
    pub(crate) fn start(path: &str, busy: Duration) -> Result<SqliteEnds, StoreError> {
        let connection = Connection::open(path).map_err(unavailable)?;
        connection.busy_timeout(busy).map_err(unavailable)?;
        // A statement's text follows its group's size: keep many.
        connection.set_prepared_statement_cache_capacity(256);
        // As the sqlx writer: durable commits (FULL), foreign keys checked,
        // a large page cache, temporary b-trees in memory.
        connection
            .execute_batch(
                "PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; \
                 PRAGMA cache_size = -65536; PRAGMA temp_store = MEMORY;",
            )
            .map_err(unavailable)?;
        let (jobs, queue) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("verdict-sqlite-ends".into())
            .spawn(move || {
                let mut writer = Writer { connection, queries: Queries::new() };
                while let Ok((writes, reply)) = queue.recv() {
                    // A panic fails its group (its transaction rolled back
                    // as it unwinds), not the thread.
                    let answers = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        writer.run(&writes)
                    }))
                    .unwrap_or_else(|_| {
                        tracing::error!("a write group panicked; its writes were rolled back");
                        Err(StoreError::Internal("a write group panicked".into()))
                    });
                    let _ = reply.send(answers);
                }
            })
            .map_err(|error| StoreError::Unavailable(format!("cannot start a thread: {error}")))?;
        Ok(SqliteEnds { jobs: Mutex::new(Some(jobs)), thread: Mutex::new(Some(thread)) })
    }
}

impl EndsRunner for SqliteEnds {
    fn run(&self, writes: Vec<EndWrite>) -> oneshot::Receiver<GroupAnswers> {
        let (reply, answer) = oneshot::channel();
        let jobs = self.jobs.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(jobs) = jobs.as_ref() {
            // A closed thread drops `reply`: the caller sees it stopped.
            let _ = jobs.send((writes, reply));
        }
        answer
    }

    fn close(&self) {
        drop(self.jobs.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take());
        let thread = self.thread.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

impl Drop for SqliteEnds {
    fn drop(&mut self) {
        self.close();
    }
}

/// The read statements, built once.
struct Queries {
    sessions: String,
    presence: &'static str,
    users: &'static str,
}

impl Queries {
    fn new() -> Queries {
        Queries {
            sessions: format!(
                "SELECT json_group_array(json_array({SESSION_COLUMNS})) FROM sessions \
                 WHERE id IN (SELECT id FROM u)"
            ),
            presence: "SELECT json_group_array(json_array(session_id, type, party, at, \
                       connection)) FROM (SELECT session_id, type, party, at, connection \
                       FROM session_events WHERE session_id IN (SELECT id FROM u) \
                       AND type IN ('joined', 'left') ORDER BY session_id, seq)",
            users: "SELECT json_group_array(json_array(id, email, stripe_account)) FROM users \
                    WHERE id IN (SELECT id FROM u) \
                    AND (email IS NOT NULL OR stripe_account IS NOT NULL)",
        }
    }
}

struct Writer {
    connection: Connection,
    queries: Queries,
}

impl Writer {
    /// The group in one transaction; should a statement fail, each end
    /// again in a transaction of its own, so that one bad end never fails
    /// the others.
    fn run(&mut self, writes: &[EndWrite]) -> GroupAnswers {
        match self.transaction(writes) {
            Ok(answers) => Ok(answers),
            // The database is busy or failing: trying each end again would
            // wait as long again, each.
            Err(error @ StoreError::Unavailable(_)) => Err(error),
            Err(error) if writes.len() == 1 => Ok(vec![Err(error)]),
            Err(error) => {
                tracing::warn!(%error, ends = writes.len(), "a set-wise end failed; ending one at a time");
                Ok(writes
                    .iter()
                    .map(|write| match self.transaction(std::slice::from_ref(write)) {
                        Ok(mut answers) => answers.pop().unwrap_or_else(|| {
                            Err(StoreError::Internal("an end without an answer".into()))
                        }),
                        Err(error) => Err(error),
                    })
                    .collect())
            }
        }
    }

    fn transaction(
        &mut self,
        writes: &[EndWrite],
    ) -> Result<Vec<Result<Ended, StoreError>>, StoreError> {
        let queries = &self.queries;
        let tx = self
            .connection
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(from_sqlite)?;
        let ids: Vec<String> = writes.iter().map(|write| write.id.clone()).collect();
        let sessions = sessions_from_json(json_text(&tx, &queries.sessions, ids)?.as_deref())?;
        // The presence and users of the open sessions only.
        let (open, parties) = open_of(&sessions);
        let (presence, users) = if open.is_empty() {
            (HashMap::new(), Users::default())
        } else {
            let presence = json_text(&tx, queries.presence, open)?;
            let users = json_text(&tx, queries.users, parties)?;
            (presence_from_json(presence.as_deref())?, users_from_json(users.as_deref())?)
        };
        let (answers, planned) = plan_group(writes, sessions, presence, &users);
        if planned.is_empty() {
            tx.rollback().map_err(from_sqlite)?;
            return Ok(answers);
        }
        for statement in end_statements(&planned)? {
            execute(&tx, statement)?;
        }
        tx.commit().map_err(from_sqlite)?;
        Ok(answers)
    }
}

/// The rows of a JSON array of arrays (none when there is no array).
fn parse<'a, T: serde::Deserialize<'a>>(text: Option<&'a str>) -> Result<Vec<T>, StoreError> {
    match text {
        None => Ok(Vec::new()),
        Some(text) => serde_json::from_str(text)
            .map_err(|error| StoreError::Internal(format!("a group's rows: {error}"))),
    }
}

fn sessions_from_json(text: Option<&str>) -> Result<HashMap<String, Session>, StoreError> {
    parse::<SessionRecord>(text)?
        .into_iter()
        .map(|record| record.into_session().map(|session| (session.id.clone(), session)))
        .collect()
}

fn presence_from_json(
    text: Option<&str>,
) -> Result<HashMap<String, Vec<PresenceEvent>>, StoreError> {
    type EventRow = (String, String, Option<String>, i64, Option<String>);
    let mut events: HashMap<String, Vec<PresenceEvent>> = HashMap::new();
    for (session_id, event_type, party, at, connection) in parse::<EventRow>(text)? {
        let event =
            presence_event(&session_id, &event_type, party.as_deref(), at, connection.as_deref())?;
        events.entry(session_id).or_default().push(event);
    }
    Ok(events)
}

fn users_from_json(text: Option<&str>) -> Result<Users, StoreError> {
    let mut users = Users::default();
    for (id, email, account) in parse::<(String, Option<String>, Option<String>)>(text)? {
        users.insert(id, email, account);
    }
    Ok(users)
}

/// The one JSON array `select` answers for the ids bound as `u`.
fn json_text(
    tx: &rusqlite::Transaction<'_>,
    select: &str,
    mut ids: Vec<String>,
) -> Result<Option<String>, StoreError> {
    ids.sort_unstable();
    ids.dedup();
    let (sql, values) =
        with_rows(Rows::default().text("id", ids.into_iter().map(Some).collect()), select);
    let text: Option<String> = tx
        .prepare_cached(&sql)
        .and_then(|mut statement| {
            statement.query_row(rusqlite::params_from_iter(values), |row| row.get(0))
        })
        .map_err(from_sqlite)?;
    Ok(text)
}

/// Runs one set-wise statement and checks the rows it changed.
fn execute(tx: &rusqlite::Transaction<'_>, statement: SetStatement) -> Result<(), StoreError> {
    let SetStatement { rows, body, changes, .. } = statement;
    let (sql, values) = with_rows(rows, body);
    let changed = tx
        .prepare_cached(&sql)
        .and_then(|mut prepared| prepared.execute(rusqlite::params_from_iter(values)))
        .map_err(from_sqlite)?;
    check_changes(changes, changed as u64)
}

/// `WITH u(<names>) AS (VALUES (?, …), …) <body>` and its values, row by
/// row.
fn with_rows(rows: Rows, body: &str) -> (String, Vec<SqlValue>) {
    let (names, mut columns, len) = rows.into_parts();
    let mut sql = String::with_capacity(body.len() + 16 + len * columns.len() * 3);
    sql.push_str("WITH u(");
    sql.push_str(&names.join(", "));
    sql.push_str(") AS (VALUES ");
    let mut values = Vec::with_capacity(len * columns.len());
    for row in 0..len {
        sql.push_str(if row == 0 { "(" } else { ", (" });
        for (n, column) in columns.iter_mut().enumerate() {
            sql.push_str(if n == 0 { "?" } else { ", ?" });
            values.push(match column {
                Values::Text(texts) => texts[row].take().map_or(SqlValue::Null, SqlValue::Text),
                Values::Int(ints) => ints[row].map_or(SqlValue::Null, SqlValue::Integer),
            });
        }
        sql.push(')');
    }
    sql.push_str(") ");
    sql.push_str(body);
    (sql, values)
}

fn unavailable(error: rusqlite::Error) -> StoreError {
    StoreError::Unavailable(format!("sqlite: {error}"))
}

fn from_sqlite(error: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode::{DatabaseBusy, DatabaseLocked, DiskFull, SystemIoFailure};
    match error.sqlite_error_code() {
        Some(DatabaseBusy | DatabaseLocked | DiskFull | SystemIoFailure) => unavailable(error),
        _ => StoreError::Internal(format!("sqlite: {error}")),
    }
}
