//! Import of sessions from the old system, one batch per transaction or as a
//! bulk load (`Bulk`): lines derived and prepared, then stored in multi-row
//! statements.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use sqlx::{Pool, Row};
use verdict_core::{
    Cents, EndCause, EndRequest, Policy, PresenceEvent, PresenceKind, Reason, Status, UnixMillis,
    charge_for, decide,
};

use crate::{BulkImport, ImportSession, Imported, PayoutState, QueuedBatch, StoreError, accounts};

use super::Engine;
use super::dialect::{
    BEGIN_WRITE, BULK_DEFERRED_INDEXES, BULK_PRAGMAS, Db, DbConnection, INSERTED_ROWIDS,
};

impl Engine {
    pub(super) async fn import_sessions(
        &self,
        sessions: Vec<ImportSession>,
        run: &str,
        now: UnixMillis,
    ) -> Result<Vec<Imported>, StoreError> {
        if sessions.is_empty() {
            return Ok(Vec::new());
        }
        let prepared = prepare_import(sessions, run, now);
        let mut tx = self.writer.begin_with(BEGIN_WRITE).await?;
        let outcomes = store_import(&mut tx, prepared).await?;
        tx.commit().await?;
        Ok(outcomes)
    }
}

/// What an import derives from a line once: the start, the billable time,
/// the reason if the line has none, what the old system charged.
struct Derived {
    reason: Option<Reason>,
    started_at: Option<i64>,
    billable: Option<i64>,
    charged: Cents,
}

fn derive(imported: &ImportSession) -> Derived {
    let events: Vec<PresenceEvent> = imported
        .events
        .iter()
        .map(|&(party, joined, at)| {
            let kind = if joined { PresenceKind::Joined } else { PresenceKind::Left };
            PresenceEvent::own(party, kind, at)
        })
        .collect();
    let facts = verdict_core::SessionFacts {
        created_at: imported.created_at,
        scheduled_start: None,
        recorded: None,
    };
    let outcome = imported.ended_at.map(|ended_at| {
        decide(&facts, &events, &Policy::default(), EndRequest::new(ended_at, EndCause::Requested))
    });
    let reason = imported.reason.or_else(|| match imported.status {
        Status::Completed => Some(Reason::Completed),
        status if status.is_terminal() => outcome.map(|outcome| outcome.reason),
        _ => None,
    });
    let billable = outcome.map(|outcome| outcome.billable_seconds);
    let charged = match imported.status {
        Status::Completed => charge_for(&imported.price, Reason::Completed, billable.unwrap_or(0)),
        _ => Cents(0),
    };
    Derived {
        reason,
        started_at: outcome.and_then(|outcome| outcome.started_at).map(|at| at.0),
        billable,
        charged,
    }
}

/// A multi-row statement with its values bound, owning them.
type Statement = sqlx::QueryBuilder<Db>;

/// Rows per multi-row statement: a batch is a handful of round trips, not
/// one per row. SQLite binds at most 32,766 values per statement (rows
/// times the values bound per row, checked below).
const SESSION_ROWS: usize = 1_000;
const EVENT_ROWS: usize = 2_000;
const PAYOUT_ROWS: usize = 1_000;
const LEDGER_LINE_ROWS: usize = 3_000;
const _: () = assert!(
    SESSION_ROWS * 17 <= 32_766
        && EVENT_ROWS * 4 <= 32_766
        && PAYOUT_ROWS * 9 <= 32_766
        && LEDGER_LINE_ROWS * 3 <= 32_766
        && PAYOUT_ROWS * 3 <= 32_766
);

/// The rows of each multi-row statement over `len` rows: `full` at a time,
/// then the rest in powers of two. A batch's last statements so take one of
/// a few sizes, each compiled once and kept prepared (sqlx keeps 100),
/// instead of a size of their own in every batch, compiled anew each time.
fn statement_rows(len: usize, full: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    let mut start = 0;
    std::iter::from_fn(move || {
        let left = len - start;
        let rows = match left {
            0 => return None,
            left if left >= full => full,
            left => 1 << left.ilog2(),
        };
        start += rows;
        Some(start - rows..start)
    })
}

/// One batch of an import, decided and its statements built without a
/// connection: a bulk load builds the next batch while its writer stores
/// this one (`Bulk`).
struct PreparedImport {
    sessions: Vec<ImportSession>,
    /// The sessions' ids, shared by the rows that name them.
    ids: Vec<Arc<str>>,
    derived: Vec<Derived>,
    run: String,
    now: UnixMillis,
    /// The session rows (`ON CONFLICT (id) DO NOTHING`), with the indexes
    /// of the sessions of each statement.
    rows: Vec<(Statement, std::ops::Range<usize>)>,
    /// What hangs off the sessions, built as if all are new (the usual
    /// case); built again for those stored when some were not.
    dependents: Dependents,
}

/// The audit trail, payouts and postings of a batch's new sessions.
struct Dependents {
    events: Vec<Statement>,
    payouts: Vec<Statement>,
    /// The new sessions with a payout (indexes into the batch), in the
    /// order of their postings.
    paid: Vec<usize>,
    /// The postings, with the indexes into `paid` of each statement.
    postings: Vec<(Statement, std::ops::Range<usize>)>,
    /// The customer's receivable and the provider's payable account of
    /// each of `paid`, named here rather than on the writer's task, where
    /// only the posting ids are left to bind.
    accounts: Vec<[Arc<str>; 2]>,
}

/// Text bound over and over in a batch (kinds, statuses, event types,
/// parties, currencies, the run): shared, since sqlx copies every bound
/// `&str` into two fresh allocations, freed again on the database's side,
/// tens of millions of them in a large import. Distinct texts are few; past
/// [`Texts::KEPT`] a text is no longer kept (it is only copied).
#[derive(Default)]
struct Texts(Vec<Arc<str>>);

impl Texts {
    const KEPT: usize = 64;

    fn get(&mut self, text: &str) -> Arc<str> {
        if let Some(shared) = self.0.iter().find(|shared| &***shared == text) {
            return shared.clone();
        }
        let shared: Arc<str> = Arc::from(text);
        if self.0.len() < Self::KEPT {
            self.0.push(shared.clone());
        }
        shared
    }
}

fn prepare_import(sessions: Vec<ImportSession>, run: &str, now: UnixMillis) -> PreparedImport {
    let derived: Vec<Derived> = sessions.iter().map(derive).collect();
    let ids: Vec<Arc<str>> =
        sessions.iter().map(|imported| Arc::from(imported.id.as_str())).collect();
    let mut texts = Texts::default();
    let run_id = texts.get(run);
    let rows = statement_rows(sessions.len(), SESSION_ROWS)
        .map(|range| {
            let mut insert = Statement::new(
                "INSERT INTO sessions (id, kind, status, reason, customer_id, provider_id, \
                 provider_account, created_at, started_at, ended_at, billable_seconds, price_mode, \
                 price_amount_cents, currency, charged_cents, import_run, metadata) ",
            );
            let rows = sessions[range.clone()]
                .iter()
                .zip(&derived[range.clone()])
                .zip(&ids[range.clone()]);
            insert.push_values(rows, |mut row, ((imported, derived), id)| {
                row.push_bind(id.clone())
                    .push_bind(texts.get(imported.kind.as_str()))
                    .push_bind(texts.get(imported.status.as_str()))
                    .push_bind(derived.reason.map(|reason| texts.get(reason.as_str())))
                    .push_bind(Arc::<str>::from(imported.customer_id.as_str()))
                    .push_bind(Arc::<str>::from(imported.provider_id.as_str()))
                    .push_bind(imported.provider_account.as_deref().map(Arc::<str>::from))
                    .push_bind(imported.created_at.0)
                    .push_bind(derived.started_at)
                    .push_bind(imported.ended_at.map(|at| at.0))
                    .push_bind(derived.billable)
                    .push_bind(texts.get(imported.price.mode.as_str()))
                    .push_bind(imported.price.amount.0)
                    .push_bind(texts.get(&imported.price.currency))
                    .push_bind(derived.charged.0)
                    .push_bind(run_id.clone())
                    .push_bind(imported.metadata.as_ref().map(|metadata| metadata.to_string()));
            });
            insert.push(" ON CONFLICT (id) DO NOTHING");
            if INSERTED_ROWIDS.is_none() {
                insert.push(" RETURNING id");
            }
            (insert, range)
        })
        .collect();
    let all: Vec<usize> = (0..sessions.len()).collect();
    let dependents = dependents(&sessions, &ids, &all, &mut texts, now);
    PreparedImport { sessions, ids, derived, run: run.to_owned(), now, rows, dependents }
}

/// An imported audit event: session id, type, party, instant.
type EventRow<'a> = (&'a Arc<str>, Arc<str>, Option<Arc<str>>, i64);

/// The statements for the sessions `new` (indexes into `sessions` and
/// their `ids`). Constants the same in every row are written into the
/// statement (`'system'`, `'import'`, `'manual'`, `'settlement'`): SQLite
/// copies each bound text.
fn dependents(
    sessions: &[ImportSession],
    ids: &[Arc<str>],
    new: &[usize],
    texts: &mut Texts,
    now: UnixMillis,
) -> Dependents {
    // The audit trail: `created` and each join and leave, by `import`.
    let (created, joined, left) = (texts.get("created"), texts.get("joined"), texts.get("left"));
    let mut events: Vec<EventRow> = Vec::new();
    for &index in new {
        let imported = &sessions[index];
        events.push((&ids[index], created.clone(), None, imported.created_at.0));
        for &(party, joined_now, at) in &imported.events {
            let event_type = if joined_now { joined.clone() } else { left.clone() };
            events.push((&ids[index], event_type, Some(texts.get(party.as_str())), at.0));
        }
    }
    let events = statement_rows(events.len(), EVENT_ROWS)
        .map(|range| {
            let chunk = &events[range];
            let mut insert = Statement::new(
                "INSERT INTO session_events (session_id, type, party, actor_role, actor_id, at) ",
            );
            insert.push_values(chunk, |mut row, (session_id, event_type, party, at)| {
                row.push_bind(Arc::clone(session_id))
                    .push_bind(event_type.clone())
                    .push_bind(party.clone())
                    .push("'system'")
                    .push("'import'")
                    .push_bind(*at);
            });
            insert
        })
        .collect();

    // Payouts as recorded, and their settlement postings.
    let paid: Vec<usize> =
        new.iter().copied().filter(|&index| sessions[index].payout.is_some()).collect();
    let mut payouts = Vec::new();
    let mut postings = Vec::new();
    for range in statement_rows(paid.len(), PAYOUT_ROWS) {
        let chunk = &paid[range.clone()];
        let mut insert = Statement::new(
            "INSERT INTO payouts (id, session_id, provider_id, destination, amount_cents, currency, \
             state, provider, created_at, updated_at, imported) ",
        );
        insert.push_values(chunk, |mut row, &index| {
            let imported = &sessions[index];
            let (amount, state) = imported.payout.unwrap_or((Cents(0), PayoutState::Pending));
            row.push_bind(format!("po_{}", imported.id))
                .push_bind(ids[index].clone())
                .push_bind(Arc::<str>::from(imported.provider_id.as_str()))
                .push_bind(imported.provider_account.as_deref().map(Arc::<str>::from))
                .push_bind(amount.0)
                .push_bind(texts.get(&imported.price.currency))
                .push_bind(texts.get(state.as_str()))
                .push("'manual'")
                .push_bind(now.0)
                .push_bind(now.0)
                .push("1");
        });
        payouts.push(insert);

        let mut insert =
            Statement::new("INSERT INTO ledger_postings (session_id, kind, currency, created_at) ");
        insert.push_values(chunk, |mut row, &index| {
            row.push_bind(ids[index].clone())
                .push("'settlement'")
                .push_bind(texts.get(&sessions[index].price.currency))
                .push_bind(now.0);
        });
        if INSERTED_ROWIDS.is_none() {
            insert.push(" RETURNING id, session_id");
        }
        postings.push((insert, range));
    }
    let accounts = paid
        .iter()
        .map(|&index| {
            let imported = &sessions[index];
            [
                Arc::from(accounts::customer_receivable(&imported.customer_id)),
                Arc::from(accounts::provider_payable(&imported.provider_id)),
            ]
        })
        .collect();
    Dependents { events, payouts, paid, postings, accounts }
}

/// Stores a prepared batch on a connection inside a write transaction
/// (`Store::import_sessions`, and a bulk load's writer).
async fn store_import(
    connection: &mut DbConnection,
    prepared: PreparedImport,
) -> Result<Vec<Imported>, StoreError> {
    let PreparedImport { sessions, ids, derived, run, now, rows, dependents: assumed } = prepared;
    let mut stored = vec![false; sessions.len()];
    for (mut insert, range) in rows {
        let stored_now: Vec<String> = if let Some(inserted_rowids) = INSERTED_ROWIDS {
            let result = insert.build().execute(&mut *connection).await?;
            let rowids = inserted_rowids(&result).ok_or_else(no_rowids)?;
            if result.rows_affected() == range.len() as u64 {
                stored[range].fill(true);
                continue;
            }
            // Some ids were stored before (a re-import): which rows did
            // this statement store? (`rowid` is SQLite's.)
            sqlx::query("SELECT id FROM sessions WHERE rowid BETWEEN $1 AND $2")
                .bind(rowids.start())
                .bind(rowids.end())
                .fetch_all(&mut *connection)
                .await?
                .iter()
                .map(|row| row.try_get("id"))
                .collect::<Result<_, _>>()?
        } else {
            insert
                .build()
                .fetch_all(&mut *connection)
                .await?
                .iter()
                .map(|row| row.try_get("id"))
                .collect::<Result<_, _>>()?
        };
        let index: HashMap<&str, usize> =
            range.map(|index| (sessions[index].id.as_str(), index)).collect();
        for id in &stored_now {
            let at = index.get(id.as_str()).ok_or_else(no_rowids)?;
            stored[*at] = true;
        }
    }
    let new: Vec<usize> = (0..sessions.len()).filter(|&index| stored[index]).collect();
    let dependents = if new.len() == sessions.len() {
        assumed
    } else {
        dependents(&sessions, &ids, &new, &mut Texts::default(), now)
    };

    for mut insert in dependents.events.into_iter().chain(dependents.payouts) {
        insert.build().execute(&mut *connection).await?;
    }
    let mut posting_ids: Vec<i64> = Vec::with_capacity(dependents.paid.len());
    for (mut insert, range) in dependents.postings {
        let chunk = &dependents.paid[range];
        if let Some(inserted_rowids) = INSERTED_ROWIDS {
            let result = insert.build().execute(&mut *connection).await?;
            let rowids = inserted_rowids(&result).ok_or_else(no_rowids)?;
            if result.rows_affected() != chunk.len() as u64 {
                return Err(no_rowids());
            }
            // The ledger lines hang on these ids: check that the first and
            // the last belong to the first and the last session, as the
            // rowids' order says.
            let (first, last) = (*rowids.start(), *rowids.end());
            let ends: Vec<(i64, String)> = sqlx::query_as(
                "SELECT id, session_id FROM ledger_postings WHERE id IN ($1, $2) ORDER BY id",
            )
            .bind(first)
            .bind(last)
            .fetch_all(&mut *connection)
            .await?;
            let named = |id: i64, index: usize| (id, sessions[index].id.clone());
            let expected = [named(first, chunk[0]), named(last, chunk[chunk.len() - 1])];
            if ends.first() != expected.first() || ends.last() != expected.last() {
                return Err(no_rowids());
            }
            posting_ids.extend(rowids);
        } else {
            let mut by_session: HashMap<String, i64> = HashMap::with_capacity(chunk.len());
            for row in insert.build().fetch_all(&mut *connection).await? {
                by_session.insert(row.try_get("session_id")?, row.try_get("id")?);
            }
            for &index in chunk {
                posting_ids.push(*by_session.get(&sessions[index].id).ok_or_else(no_rowids)?);
            }
        }
    }
    // What the recorded payouts did to the books: the charge receivable,
    // the payout payable, the rest platform revenue.
    let revenue: Arc<str> = Arc::from(accounts::PLATFORM_REVENUE);
    let mut lines: Vec<(i64, &Arc<str>, i64)> = Vec::with_capacity(dependents.paid.len() * 3);
    let posted = dependents.paid.iter().zip(&dependents.accounts).zip(&posting_ids);
    for ((&index, [receivable, payable]), &posting) in posted {
        let charge = derived[index].charged.0;
        let paid = sessions[index].payout.map_or(0, |(amount, _)| amount.0);
        lines.push((posting, receivable, charge));
        lines.push((posting, payable, -paid));
        lines.push((posting, &revenue, paid - charge));
    }
    for range in statement_rows(lines.len(), LEDGER_LINE_ROWS) {
        let chunk = &lines[range];
        let mut insert = sqlx::QueryBuilder::<Db>::new(
            "INSERT INTO ledger_lines (posting_id, account, amount_cents) ",
        );
        insert.push_values(chunk, |mut row, (posting, account, amount)| {
            row.push_bind(*posting).push_bind(Arc::clone(account)).push_bind(*amount);
        });
        insert.build().execute(&mut *connection).await?;
    }

    // Ids not stored now: stored earlier by this run, or by another.
    let existing: Vec<&str> = (0..sessions.len())
        .filter(|&index| !stored[index])
        .map(|index| sessions[index].id.as_str())
        .collect();
    let mut earlier: HashSet<String> = HashSet::new();
    for range in statement_rows(existing.len(), SESSION_ROWS) {
        let chunk = &existing[range];
        let mut query =
            sqlx::QueryBuilder::<Db>::new("SELECT id FROM sessions WHERE import_run = ");
        query.push_bind(run.as_str()).push(" AND id IN (");
        let mut list = query.separated(", ");
        for id in chunk {
            list.push_bind(*id);
        }
        list.push_unseparated(")");
        for row in query.build().fetch_all(&mut *connection).await? {
            earlier.insert(row.try_get("id")?);
        }
    }
    Ok(sessions
        .iter()
        .zip(stored)
        .map(|(imported, stored)| {
            if stored {
                Imported::New
            } else if earlier.contains(&imported.id) {
                Imported::EarlierInRun
            } else {
                Imported::Existing
            }
        })
        .collect())
}

fn no_rowids() -> StoreError {
    StoreError::Internal("an INSERT did not tell which rows it stored".to_owned())
}

fn spoiled() -> StoreError {
    StoreError::Internal("this bulk load failed earlier".to_owned())
}

/// A batch queued for a bulk load's writer, and where its outcomes go.
type Queued = (PreparedImport, tokio::sync::oneshot::Sender<Result<Vec<Imported>, StoreError>>);

/// An open bulk load: a writer task that owns the connection, inside one
/// write transaction for all the batches, and stores them in the order
/// queued. Dropped before a commit, the writer is stopped and its
/// connection closed (see `Loader`).
pub(super) struct Bulk {
    queue: Option<tokio::sync::mpsc::Sender<Queued>>,
    writer: Option<Writer>,
}

/// The writer task, stopped when dropped (a load dropped, or a commit
/// abandoned while it waits for the writer): its connection is then closed.
struct Writer(tokio::task::JoinHandle<Loader>);

impl Drop for Writer {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The load's connection. Dropped before it is committed with its
/// settings restored (the load was abandoned, its writer stopped, or the
/// commit itself dropped) it is closed, not returned: closing rolls an
/// open transaction back and the pool opens a fresh connection with the
/// usual settings.
struct Loader {
    connection: sqlx::pool::PoolConnection<Db>,
    /// A batch failed: the transaction may hold part of it, so it can only
    /// be abandoned.
    failed: bool,
    /// Committed, and `BULK_PRAGMAS` restored: fit to go back to the pool.
    reusable: bool,
}

impl Drop for Loader {
    fn drop(&mut self) {
        if !self.reusable {
            self.connection.close_on_drop();
        }
    }
}

impl Bulk {
    pub(super) async fn open(writer: &Pool<Db>) -> Result<Bulk, StoreError> {
        let mut loader =
            Loader { connection: writer.acquire().await?, failed: false, reusable: false };
        for &(before, _) in BULK_PRAGMAS {
            sqlx::raw_sql(before).execute(&mut *loader.connection).await?;
        }
        sqlx::raw_sql(BEGIN_WRITE).execute(&mut *loader.connection).await?;
        for &(drop, _) in BULK_DEFERRED_INDEXES {
            sqlx::raw_sql(drop).execute(&mut *loader.connection).await?;
        }
        // One batch waits while one is stored: the caller prepares the
        // next meanwhile, and memory holds three batches at most.
        let (queue, mut batches) = tokio::sync::mpsc::channel::<Queued>(1);
        let writer = tokio::spawn(async move {
            while let Some((prepared, outcomes)) = batches.recv().await {
                let stored = if loader.failed {
                    Err(spoiled())
                } else {
                    store_import(&mut loader.connection, prepared).await
                };
                loader.failed |= stored.is_err();
                let _ = outcomes.send(stored);
            }
            loader
        });
        Ok(Bulk { queue: Some(queue), writer: Some(Writer(writer)) })
    }
}

#[async_trait]
impl BulkImport for Bulk {
    async fn add(
        &mut self,
        sessions: Vec<ImportSession>,
        run: &str,
        now: UnixMillis,
    ) -> Result<QueuedBatch, StoreError> {
        let prepared = prepare_import(sessions, run, now);
        let (outcomes, receiver) = tokio::sync::oneshot::channel();
        let queue = self.queue.as_ref().ok_or_else(spoiled)?;
        queue.send((prepared, outcomes)).await.map_err(|_| spoiled())?;
        Ok(QueuedBatch(receiver))
    }

    async fn commit(mut self: Box<Self>) -> Result<(), StoreError> {
        // Closing the queue ends the writer once it stored what is queued.
        self.queue = None;
        let mut writer = self.writer.take().ok_or_else(spoiled)?;
        let mut loader = (&mut writer.0)
            .await
            .map_err(|error| StoreError::Internal(format!("the bulk load's writer: {error}")))?;
        if loader.failed {
            return Err(spoiled());
        }
        for &(_, create) in BULK_DEFERRED_INDEXES {
            sqlx::raw_sql(create).execute(&mut *loader.connection).await?;
        }
        sqlx::raw_sql("COMMIT").execute(&mut *loader.connection).await?;
        for &(_, after) in BULK_PRAGMAS {
            // Committed already: a failure here only costs this connection
            // (closed when dropped).
            if sqlx::raw_sql(after).execute(&mut *loader.connection).await.is_err() {
                return Ok(());
            }
        }
        loader.reusable = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::statement_rows;

    /// The statements cover the rows once, in order, and take few sizes:
    /// the full one and powers of two below it.
    #[test]
    fn statement_rows_cover_the_rows_in_few_sizes() {
        let mut sizes = std::collections::BTreeSet::new();
        for len in 0..5_000 {
            let mut next = 0;
            for range in statement_rows(len, 1_000) {
                assert_eq!(range.start, next, "len {len}");
                assert!(!range.is_empty() && range.len() <= 1_000, "len {len}: {range:?}");
                next = range.end;
                sizes.insert(range.len());
            }
            assert_eq!(next, len);
        }
        let expected: std::collections::BTreeSet<usize> =
            (0..10).map(|bit| 1 << bit).chain([1_000]).collect();
        assert_eq!(sizes, expected);
        let last: Vec<usize> = statement_rows(2_300, 1_000).map(|range| range.len()).collect();
        assert_eq!(last, [1_000, 1_000, 256, 32, 8, 4]);
    }
}
