//! The storage engine, written once for both databases.
//!
//! This file is compiled as a child module of each backend (`sqlite.rs`,
//! later `postgres.rs`), which supplies `Db` (the sqlx database),
//! `BEGIN_WRITE` (how a write transaction starts) and the `for_update!()`
//! macro (how a session row is locked). Statements use `$n` placeholders and
//! portable SQL, so each backend runs the same text with the same meaning.
//!
//! Architecture invariant: every state change of a session first locks the
//! session row (PostgreSQL: `FOR UPDATE`; SQLite: `BEGIN IMMEDIATE` takes
//! the database write lock), so changes to one session are serialised and a
//! concurrent caller waits, then sees the first one's result.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{Value, json};
use sqlx::{Pool, Row};
use verdict_core::{
    Cents, Connection, EndCause, EndRequest, Kind, Outcome, Party, Policy, PolicySet,
    PresenceEvent, PresenceKind, Price, PriceMode, Reason, Role, SessionAudit, Status, UnixMillis,
    charge_for, decide, intervals_of, open_since, overlap, platform_fee, presence_at, sweep_due,
};

use super::{
    BACKEND, BEGIN_WRITE, BULK_DEFERRED_INDEXES, BULK_PRAGMAS, Db, INSERTS_TOLD_BY_ROWID,
    PAGES_AS_ROWS, PAGES_BY_COPY, copy_page, inserted_rowids,
};
use crate::copy_binary::{CopyRow, CopyRows};
use crate::{
    Actor, Assignment, AuditCursor, AuditEvent, AuditScope, BulkImport, Correction, Created,
    EarningsTotal, Ended, EventType, Idempotency, ImportSession, Imported, LedgerLine, NewRequest,
    NewSession, Notification, OutboxHealth, OutboxItem, OutboxOutcome, OutboxRow, Payout,
    PayoutProvider, PayoutState, PlatformDisposition, PlatformPresence, PlatformRoom, Posting,
    PresenceChange, QueuedBatch, Request, RequestStatus, Session, Settings, Store, StoreError,
    SweepReport, User, accounts,
};

type DbRow = <Db as sqlx::Database>::Row;
type DbConnection = <Db as sqlx::Database>::Connection;

macro_rules! session_columns {
    () => {
        "id, kind, status, reason, customer_id, provider_id, provider_account, request_id, \
         scheduled_start, created_at, started_at, ended_at, ended_by, billable_seconds, \
         price_mode, price_amount_cents, currency, charged_cents, metadata, \
         customer_last_seen_at, provider_last_seen_at, room, customer_identity, \
         provider_identity, finalizes_at, finalized_at"
    };
}

/// What a verification page reads of each session, in `SessionRecord`
/// field order.
macro_rules! audit_columns {
    () => {
        concat!(session_columns!(), ", policy")
    };
}

macro_rules! request_columns {
    () => {
        "id, customer_id, kind, price_mode, price_amount_cents, currency, \
         candidate_provider_ids, status, session_id, created_at, updated_at"
    };
}

macro_rules! payout_columns {
    () => {
        "id, session_id, provider_id, destination, amount_cents, currency, state, provider, \
         transfer_id, failure_reason, created_at, updated_at, reversed_at"
    };
}

/// The store over one database. Reads go to `reader`, transactions to
/// `writer` (on SQLite a single connection: SQLite has one writer anyway,
/// and queueing in the pool is cheaper than retrying on `SQLITE_BUSY`).
pub struct Engine {
    pub(super) reader: Pool<Db>,
    pub(super) writer: Pool<Db>,
    /// Whether the database answers, as probed (false after two failed
    /// probes in a row; always true for an embedded database). Requests
    /// fail fast while it is false.
    pub(super) availability: std::sync::Arc<tokio::sync::watch::Sender<bool>>,
    /// Session writes waiting for a group transaction, one queue per group
    /// writer (see `grouped`).
    groups: Vec<tokio::sync::mpsc::Sender<Job>>,
}

/// A write waiting for a group transaction: it runs on the group's
/// connection and says whether it succeeded, with what to do once the
/// group's fate (committed or not) is known.
type Job = Box<dyn for<'c> FnOnce(&'c mut DbConnection) -> BoxFuture<'c, Done> + Send>;
/// Whether the job's writes stand, and how to answer its caller once the
/// group's commit is known (`Err`: the commit failed, with why).
type Done = (bool, Box<dyn FnOnce(Result<(), String>) + Send>);
type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// The most writes one group transaction carries.
const GROUP_MAX: usize = 256;

impl Engine {
    /// The store over `reader` and `writer`, with `groups` group-commit
    /// writers (each uses one `writer` connection while it commits).
    pub(super) fn new(
        reader: Pool<Db>,
        writer: Pool<Db>,
        availability: std::sync::Arc<tokio::sync::watch::Sender<bool>>,
        groups: usize,
    ) -> Engine {
        let groups = (0..groups.max(1))
            .map(|_| {
                let (queue, jobs) = tokio::sync::mpsc::channel(GROUP_MAX);
                tokio::spawn(group_writer(writer.clone(), jobs));
                queue
            })
            .collect();
        Engine { reader, writer, availability, groups }
    }

    /// Closes one session's finalization window, if it is still open and
    /// over (another sweeper may have been first).
    async fn finalize(
        &self,
        id: &str,
        settings: &Settings,
        now: UnixMillis,
    ) -> Result<Option<Session>, StoreError> {
        let mut tx = self.writer.begin_with(BEGIN_WRITE).await?;
        let session = lock_session(&mut tx, id).await?;
        if !session.is_finalizing() || session.finalizes_at.is_some_and(|at| at > now) {
            tx.rollback().await?;
            return Ok(None);
        }
        let session = finalize_locked(&mut tx, &session, settings, now).await?;
        tx.commit().await?;
        Ok(Some(session))
    }

    /// Runs `write` in a group transaction and answers once that is
    /// durable (group commit): concurrent writes share one commit, so one
    /// fsync, instead of paying one each. Each write runs in a savepoint
    /// of its own: one that fails is rolled back alone and its caller gets
    /// its error, while the others commit. The caller is answered only
    /// after the commit, so an acknowledged write is durable, and a failed
    /// commit fails every write of the group (none of them is stored).
    ///
    /// Writes to one session always go to the same group writer, so that
    /// two groups never wait for each other's lock on a session (on
    /// PostgreSQL, where several groups write at once, that could deadlock).
    async fn grouped<T, W>(&self, session_id: &str, write: W) -> Result<T, StoreError>
    where
        T: Send + 'static,
        W: for<'c> FnOnce(&'c mut DbConnection) -> BoxFuture<'c, Result<T, StoreError>>
            + Send
            + 'static,
    {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |connection| {
            Box::pin(async move {
                let result = write(connection).await;
                let stands = result.is_ok();
                let answer: Box<dyn FnOnce(Result<(), String>) + Send> =
                    Box::new(move |committed| {
                        let result = match committed {
                            Ok(()) => result,
                            Err(why) => result.and(Err(StoreError::Unavailable(why))),
                        };
                        let _ = reply.send(result);
                    });
                (stands, answer)
            })
        });
        let group = {
            use std::hash::{Hash, Hasher};
            let mut hasher = std::hash::DefaultHasher::new();
            session_id.hash(&mut hasher);
            hasher.finish() as usize % self.groups.len()
        };
        self.groups[group]
            .send(job)
            .await
            .map_err(|_| StoreError::Unavailable("the store is shutting down".into()))?;
        // Dropped unanswered: the group failed before its commit (logged
        // by the group writer), and none of its writes is stored.
        answer
            .await
            .map_err(|_| StoreError::Unavailable("the write could not be committed".into()))?
    }
}

/// Takes whatever writes are waiting (at least one, at most `GROUP_MAX`)
/// and commits them together, until the store is dropped.
async fn group_writer(writer: Pool<Db>, mut jobs: tokio::sync::mpsc::Receiver<Job>) {
    while let Some(first) = jobs.recv().await {
        let mut group = vec![first];
        while group.len() < GROUP_MAX
            && let Ok(job) = jobs.try_recv()
        {
            group.push(job);
        }
        // In a task of its own: a panicking write fails its group (whose
        // callers see their answers dropped), not the writer.
        if let Err(error) = tokio::spawn(commit_group(writer.clone(), group)).await {
            tracing::error!(%error, "a write group panicked; its writes were rolled back");
        }
    }
}

/// One group transaction; a lone write's failure rolls it all back.
async fn commit_group(writer: Pool<Db>, group: Vec<Job>) {
    let outcome: Result<(), StoreError> = async {
        let mut tx = writer.begin_with(BEGIN_WRITE).await?;
        // A lone write needs no savepoint. Between two writes, the release
        // of one savepoint and the start of the next are one round trip.
        let total = group.len();
        let savepoints = total > 1;
        if savepoints {
            sqlx::raw_sql("SAVEPOINT grouped_write").execute(&mut *tx).await?;
        }
        let mut answers = Vec::with_capacity(total);
        let mut any_stands = false;
        for (n, job) in group.into_iter().enumerate() {
            let (stands, answer) = job(&mut tx).await;
            if savepoints {
                if !stands {
                    sqlx::raw_sql("ROLLBACK TO SAVEPOINT grouped_write").execute(&mut *tx).await?;
                }
                let close = if n + 1 < total {
                    "RELEASE SAVEPOINT grouped_write; SAVEPOINT grouped_write"
                } else {
                    "RELEASE SAVEPOINT grouped_write"
                };
                sqlx::raw_sql(close).execute(&mut *tx).await?;
            }
            any_stands |= stands;
            answers.push(answer);
        }
        let committed = if any_stands {
            tx.commit().await.map_err(|error| StoreError::from(error).to_string())
        } else {
            // Nothing to keep (all failed, or only reads and no-ops).
            tx.rollback().await.map_err(|error| StoreError::from(error).to_string())
        };
        for answer in answers {
            answer(committed.clone());
        }
        Ok(())
    }
    .await;
    if let Err(error) = outcome {
        tracing::warn!(%error, "a write group failed before its commit; its writes were not stored");
    }
}

#[async_trait]
impl Store for Engine {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn availability(&self) -> tokio::sync::watch::Receiver<bool> {
        self.availability.subscribe()
    }

    async fn close(&self) {
        self.writer.close().await;
        self.reader.close().await;
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }

    async fn create_session(
        &self,
        new: NewSession,
        actor: &Actor,
        idempotency: Option<&Idempotency>,
        now: UnixMillis,
    ) -> Result<Created<Session>, StoreError> {
        let (key, actor, idempotency) = (new.id.clone(), actor.clone(), idempotency.cloned());
        self.grouped(&key, move |connection: &mut DbConnection| -> BoxFuture<'_, _> {
            Box::pin(async move {
                create_session_in(connection, &new, &actor, idempotency.as_ref(), now).await
            })
        })
        .await
    }

    async fn session(&self, id: &str) -> Result<Option<Session>, StoreError> {
        let row =
            sqlx::query(concat!("SELECT ", session_columns!(), " FROM sessions WHERE id = $1"))
                .bind(id)
                .fetch_optional(&self.reader)
                .await?;
        row.as_ref().map(session_from_row).transpose()
    }

    async fn record_presence(
        &self,
        id: &str,
        party: Party,
        change: PresenceChange,
        actor: &Actor,
        policies: &PolicySet,
        now: UnixMillis,
    ) -> Result<Session, StoreError> {
        let (key, actor, policies) = (id.to_owned(), actor.clone(), *policies);
        let id = key.clone();
        self.grouped(&key, move |connection: &mut DbConnection| -> BoxFuture<'_, _> {
            Box::pin(async move {
                record_presence_in(connection, &id, party, change, &actor, &policies, now).await
            })
        })
        .await
    }

    async fn end_session(
        &self,
        id: &str,
        actor: &Actor,
        claimed: Option<Value>,
        cause: EndCause,
        settings: &Settings,
        now: UnixMillis,
    ) -> Result<Ended, StoreError> {
        let (key, actor, settings) = (id.to_owned(), actor.clone(), *settings);
        let id = key.clone();
        self.grouped(&key, move |connection: &mut DbConnection| -> BoxFuture<'_, _> {
            Box::pin(async move {
                end_session_in(connection, &id, &actor, claimed, cause, &settings, now).await
            })
        })
        .await
    }

    async fn create_request(
        &self,
        new: NewRequest,
        _actor: &Actor,
        idempotency: Option<&Idempotency>,
        now: UnixMillis,
    ) -> Result<Created<Request>, StoreError> {
        let mut tx = self.writer.begin_with(BEGIN_WRITE).await?;
        let earlier = match idempotency {
            Some(idempotency) => claim_key(&mut tx, idempotency, &new.id, now).await?,
            None => None,
        };
        if let Some(earlier) = earlier {
            let request = read_request(&mut tx, &earlier).await?;
            tx.rollback().await?;
            return Ok(Created { value: request, replayed: true });
        }
        let candidates = serde_json::to_string(&new.candidate_provider_ids)
            .map_err(|error| StoreError::Internal(error.to_string()))?;
        let inserted = sqlx::query(
            "INSERT INTO requests (id, customer_id, kind, price_mode, price_amount_cents, currency, \
             candidate_provider_ids, status, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', $8, $8) ON CONFLICT (id) DO NOTHING",
        )
        .bind(&new.id)
        .bind(&new.customer_id)
        .bind(new.kind.as_str())
        .bind(new.price.mode.as_str())
        .bind(new.price.amount.0)
        .bind(&new.price.currency)
        .bind(candidates)
        .bind(now.0)
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!("request {} already exists", new.id)));
        }
        for provider_id in &new.candidate_provider_ids {
            sqlx::query(
                "INSERT INTO assignments (request_id, provider_id, created_at) VALUES ($1, $2, $3)",
            )
            .bind(&new.id)
            .bind(provider_id)
            .bind(now.0)
            .execute(&mut *tx)
            .await?;
        }
        let request = read_request(&mut tx, &new.id).await?;
        tx.commit().await?;
        Ok(Created { value: request, replayed: false })
    }

    async fn request(&self, id: &str) -> Result<Option<Request>, StoreError> {
        let row =
            sqlx::query(concat!("SELECT ", request_columns!(), " FROM requests WHERE id = $1"))
                .bind(id)
                .fetch_optional(&self.reader)
                .await?;
        row.as_ref().map(request_from_row).transpose()
    }

    async fn accept_request(
        &self,
        request_id: &str,
        provider_id: &str,
        session_id: &str,
        actor: &Actor,
        now: UnixMillis,
    ) -> Result<Session, StoreError> {
        let mut tx = self.writer.begin_with(BEGIN_WRITE).await?;
        let row = sqlx::query(concat!(
            "SELECT ",
            request_columns!(),
            " FROM requests WHERE id = $1",
            for_update!()
        ))
        .bind(request_id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| StoreError::not_found("request", request_id))?;
        let request = request_from_row(&row)?;
        if request.status != RequestStatus::Pending {
            return Err(StoreError::Conflict(format!(
                "request {request_id} is {}: it can no longer be accepted",
                request.status.as_str()
            )));
        }
        let assigned = sqlx::query(
            "SELECT provider_id FROM assignments WHERE request_id = $1 AND provider_id = $2",
        )
        .bind(request_id)
        .bind(provider_id)
        .fetch_optional(&mut *tx)
        .await?;
        if assigned.is_none() {
            return Err(StoreError::Conflict(format!(
                "request {request_id} is not offered to provider {provider_id}"
            )));
        }
        let new = NewSession {
            id: session_id.to_owned(),
            kind: request.kind,
            customer_id: request.customer_id.clone(),
            provider_id: provider_id.to_owned(),
            provider_account: None,
            scheduled_start: None,
            price: request.price.clone(),
            request_id: Some(request_id.to_owned()),
            metadata: None,
            room: None,
        };
        if !insert_session(&mut tx, &new, actor, now).await? {
            return Err(StoreError::Conflict(format!("session {session_id} already exists")));
        }
        sqlx::query(
            "UPDATE requests SET status = 'matched', session_id = $1, updated_at = $2 WHERE id = $3",
        )
        .bind(session_id)
        .bind(now.0)
        .bind(request_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM assignments WHERE request_id = $1 AND provider_id <> $2")
            .bind(request_id)
            .bind(provider_id)
            .execute(&mut *tx)
            .await?;
        let session = lock_session(&mut tx, session_id).await?;
        tx.commit().await?;
        Ok(session)
    }

    async fn assignments(
        &self,
        provider_id: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Assignment>, StoreError> {
        let rows = sqlx::query(
            "SELECT a.request_id, a.provider_id, a.created_at, r.customer_id, r.kind, \
             r.price_mode, r.price_amount_cents, r.currency, r.session_id \
             FROM assignments a JOIN requests r ON r.id = a.request_id \
             WHERE ($1 IS NULL OR a.provider_id = $1) \
             ORDER BY a.created_at, a.request_id, a.provider_id LIMIT $2",
        )
        .bind(provider_id)
        .bind(limit.clamp(1, crate::PAGE_LIMIT_MAX))
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(Assignment {
                    request_id: row.try_get("request_id")?,
                    provider_id: row.try_get("provider_id")?,
                    customer_id: row.try_get("customer_id")?,
                    kind: parse(row.try_get("kind")?)?,
                    price: price_from_row(row)?,
                    session_id: row.try_get("session_id")?,
                    created_at: UnixMillis(row.try_get("created_at")?),
                })
            })
            .collect()
    }

    async fn payouts(
        &self,
        session_id: Option<&str>,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Payout>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            payout_columns!(),
            " FROM payouts WHERE ($1 IS NULL OR session_id = $1) AND id > $2 ORDER BY id LIMIT $3"
        ))
        .bind(session_id)
        .bind(after.unwrap_or(""))
        .bind(limit.clamp(1, crate::PAGE_LIMIT_MAX))
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(payout_from_row).collect()
    }

    async fn earnings(&self, provider_id: &str) -> Result<Vec<EarningsTotal>, StoreError> {
        let ledger = sqlx::query(
            "SELECT p.currency, CAST(-SUM(l.amount_cents) AS BIGINT) AS earned, \
             COUNT(DISTINCT p.session_id) AS sessions \
             FROM ledger_lines l JOIN ledger_postings p ON p.id = l.posting_id \
             WHERE l.account = $1 GROUP BY p.currency ORDER BY p.currency",
        )
        .bind(accounts::provider_payable(provider_id))
        .fetch_all(&self.reader)
        .await?;
        let payouts = sqlx::query(
            "SELECT currency, state, CAST(SUM(amount_cents) AS BIGINT) AS total FROM payouts \
             WHERE provider_id = $1 GROUP BY currency, state",
        )
        .bind(provider_id)
        .fetch_all(&self.reader)
        .await?;
        let mut totals: BTreeMap<String, EarningsTotal> = BTreeMap::new();
        let empty = |currency: &str| EarningsTotal {
            currency: currency.to_owned(),
            earned: Cents(0),
            sessions: 0,
            paid: Cents(0),
            pending: Cents(0),
            failed: Cents(0),
        };
        for row in &ledger {
            let currency: String = row.try_get("currency")?;
            let total = totals.entry(currency.clone()).or_insert_with(|| empty(&currency));
            total.earned = Cents(row.try_get("earned")?);
            total.sessions = row.try_get("sessions")?;
        }
        for row in &payouts {
            let currency: String = row.try_get("currency")?;
            let state: String = row.try_get("state")?;
            let amount = Cents(row.try_get("total")?);
            let total = totals.entry(currency.clone()).or_insert_with(|| empty(&currency));
            match PayoutState::parse(&state) {
                Some(PayoutState::Paid) => total.paid = amount,
                Some(PayoutState::Pending) => total.pending = amount,
                Some(PayoutState::Failed) => total.failed = amount,
                None => return Err(StoreError::Corrupt(format!("payout state {state:?}"))),
            }
        }
        Ok(totals.into_values().collect())
    }

    async fn postings(&self, session_id: &str) -> Result<Vec<Posting>, StoreError> {
        let rows = sqlx::query(
            "SELECT p.id, p.session_id, p.kind, p.currency, p.created_at, l.account, \
             l.amount_cents FROM ledger_postings p JOIN ledger_lines l ON l.posting_id = p.id \
             WHERE p.session_id = $1 ORDER BY p.id, l.id",
        )
        .bind(session_id)
        .fetch_all(&self.reader)
        .await?;
        let mut postings: Vec<Posting> = Vec::new();
        for row in &rows {
            let id: i64 = row.try_get("id")?;
            if postings.last().is_none_or(|last| last.id != id) {
                postings.push(Posting {
                    id,
                    session_id: row.try_get("session_id")?,
                    kind: row.try_get("kind")?,
                    currency: row.try_get("currency")?,
                    created_at: UnixMillis(row.try_get("created_at")?),
                    lines: Vec::new(),
                });
            }
            let line = LedgerLine {
                account: row.try_get("account")?,
                amount: Cents(row.try_get("amount_cents")?),
            };
            if let Some(posting) = postings.last_mut() {
                posting.lines.push(line);
            }
        }
        Ok(postings)
    }

    async fn upsert_user(&self, user: User) -> Result<User, StoreError> {
        let mut tx = self.writer.begin_with(BEGIN_WRITE).await?;
        sqlx::query(
            "INSERT INTO users (id, email, display_name, stripe_account, updated_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO UPDATE SET \
             email = COALESCE(excluded.email, users.email), \
             display_name = COALESCE(excluded.display_name, users.display_name), \
             stripe_account = COALESCE(excluded.stripe_account, users.stripe_account), \
             updated_at = excluded.updated_at",
        )
        .bind(&user.id)
        .bind(&user.email)
        .bind(&user.display_name)
        .bind(&user.stripe_account)
        .bind(user.updated_at.0)
        .execute(&mut *tx)
        .await?;
        let row = sqlx::query(
            "SELECT id, email, display_name, stripe_account, updated_at FROM users WHERE id = $1",
        )
        .bind(&user.id)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(User {
            id: row.try_get("id")?,
            email: row.try_get("email")?,
            display_name: row.try_get("display_name")?,
            stripe_account: row.try_get("stripe_account")?,
            updated_at: UnixMillis(row.try_get("updated_at")?),
        })
    }

    async fn claim_outbox(
        &self,
        owner: &str,
        limit: i64,
        lease_until: UnixMillis,
        now: UnixMillis,
    ) -> Result<Vec<OutboxItem>, StoreError> {
        let mut tx = self.writer.begin_with(BEGIN_WRITE).await?;
        let rows = sqlx::query(concat!(
            "SELECT o.id, o.session_id, o.topic, o.payload, o.attempts, o.created_at FROM outbox o \
             WHERE o.state = 'pending' AND o.due_at <= $1 \
             AND (o.leased_until IS NULL OR o.leased_until <= $1) \
             AND NOT EXISTS (SELECT 1 FROM outbox e WHERE e.session_id = o.session_id \
             AND e.channel = o.channel AND e.state = 'pending' AND e.id < o.id) \
             ORDER BY o.id LIMIT $2",
            skip_locked!()
        ))
        .bind(now.0)
        .bind(limit.clamp(1, crate::PAGE_LIMIT_MAX))
        .fetch_all(&mut *tx)
        .await?;
        let mut items = Vec::with_capacity(rows.len());
        for row in &rows {
            let id: i64 = row.try_get("id")?;
            sqlx::query("UPDATE outbox SET lease_owner = $1, leased_until = $2 WHERE id = $3")
                .bind(owner)
                .bind(lease_until.0)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            let payload: String = row.try_get("payload")?;
            items.push(OutboxItem {
                id,
                session_id: row.try_get("session_id")?,
                topic: row.try_get("topic")?,
                payload: serde_json::from_str(&payload)
                    .map_err(|error| StoreError::Corrupt(format!("outbox payload: {error}")))?,
                attempts: row.try_get("attempts")?,
                created_at: UnixMillis(row.try_get("created_at")?),
            });
        }
        tx.commit().await?;
        Ok(items)
    }

    async fn finish_outbox(
        &self,
        id: i64,
        owner: &str,
        outcome: OutboxOutcome,
        now: UnixMillis,
    ) -> Result<bool, StoreError> {
        let mut tx = self.writer.begin_with(BEGIN_WRITE).await?;
        let held = sqlx::query(concat!(
            "SELECT session_id, state FROM outbox WHERE id = $1 AND lease_owner = $2",
            for_update!()
        ))
        .bind(id)
        .bind(owner)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(held) = held else {
            tx.rollback().await?;
            return Ok(false);
        };
        let session_id: Option<String> = held.try_get("session_id")?;
        let (state, due_at, error, payload) = match &outcome {
            OutboxOutcome::Delivered => ("delivered", None, None, None),
            OutboxOutcome::Retry { due_at, error, payload } => (
                "pending",
                Some(due_at.0),
                Some(error.clone()),
                payload.as_ref().map(Value::to_string),
            ),
            OutboxOutcome::Dead { error } => ("dead", None, Some(error.clone()), None),
            OutboxOutcome::PayoutPaid { payout_id, transfer_id } => {
                let payout =
                    settle_payout(&mut tx, payout_id, "paid", Some(transfer_id), None, now).await?;
                if let (Some(payout), Some(session_id)) = (payout, &session_id) {
                    let payload = payout_event("payout.paid", &payout);
                    insert_outbox(&mut tx, session_id, "webhook:payout.paid", &payload, now)
                        .await?;
                }
                ("delivered", None, None, None)
            }
            OutboxOutcome::PayoutFailed { payout_id, reason } => {
                let payout =
                    settle_payout(&mut tx, payout_id, "failed", None, Some(reason), now).await?;
                if let (Some(payout), Some(session_id)) = (payout, &session_id) {
                    let payload = payout_event("payout.failed", &payout);
                    insert_outbox(&mut tx, session_id, "webhook:payout.failed", &payload, now)
                        .await?;
                }
                ("delivered", None, Some(reason.clone()), None)
            }
        };
        sqlx::query(
            "UPDATE outbox SET state = $1, attempts = attempts + 1, \
             due_at = COALESCE($2, due_at), last_error = $3, payload = COALESCE($4, payload), \
             delivered_at = CASE WHEN $1 = 'delivered' THEN $5 ELSE delivered_at END, \
             lease_owner = NULL, leased_until = NULL WHERE id = $6",
        )
        .bind(state)
        .bind(due_at)
        .bind(error)
        .bind(payload)
        .bind(now.0)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn release_outbox(&self, owner: &str) -> Result<u64, StoreError> {
        let mut tx = self.writer.begin_with(BEGIN_WRITE).await?;
        let released = sqlx::query(
            "UPDATE outbox SET lease_owner = NULL, leased_until = NULL \
             WHERE lease_owner = $1 AND state = 'pending'",
        )
        .bind(owner)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(released.rows_affected())
    }

    async fn outbox(
        &self,
        state: Option<&str>,
        session_id: Option<&str>,
        limit: i64,
    ) -> Result<Vec<OutboxRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, session_id, topic, state, attempts, due_at, created_at, delivered_at, \
             last_error FROM outbox WHERE ($1 IS NULL OR state = $1) \
             AND ($2 IS NULL OR session_id = $2) ORDER BY id DESC LIMIT $3",
        )
        .bind(state)
        .bind(session_id)
        .bind(limit.clamp(1, crate::PAGE_LIMIT_MAX))
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(OutboxRow {
                    id: row.try_get("id")?,
                    session_id: row.try_get("session_id")?,
                    topic: row.try_get("topic")?,
                    state: row.try_get("state")?,
                    attempts: row.try_get("attempts")?,
                    due_at: UnixMillis(row.try_get("due_at")?),
                    created_at: UnixMillis(row.try_get("created_at")?),
                    delivered_at: row.try_get::<Option<i64>, _>("delivered_at")?.map(UnixMillis),
                    last_error: row.try_get("last_error")?,
                })
            })
            .collect()
    }

    async fn payout(&self, id: &str) -> Result<Option<Payout>, StoreError> {
        let row = sqlx::query(concat!("SELECT ", payout_columns!(), " FROM payouts WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(payout_from_row).transpose()
    }

    async fn sweep(
        &self,
        settings: &Settings,
        now: UnixMillis,
        limit: i64,
    ) -> Result<SweepReport, StoreError> {
        let mut report = SweepReport::default();
        // Close the finalization windows that are over: first, so that a
        // failing end below never holds money back.
        let finalizing = sqlx::query(
            "SELECT id FROM sessions WHERE finalized_at IS NULL AND finalizes_at <= $1 \
             ORDER BY finalizes_at LIMIT $2",
        )
        .bind(now.0)
        .bind(limit.clamp(1, crate::PAGE_LIMIT_MAX))
        .fetch_all(&self.reader)
        .await?;
        for row in &finalizing {
            let id: String = row.try_get("id")?;
            // One session that cannot be finalized must not hold back the
            // others (verification reports it as stuck).
            match self.finalize(&id, settings, now).await {
                Ok(Some(session)) => report.finalized.push(session),
                Ok(None) => {}
                Err(error) => tracing::warn!(session = %id, %error, "finalization failed"),
            }
        }
        let policies =
            [settings.policies.video, settings.policies.chat, settings.policies.diagnostic];
        let least = |value: fn(&Policy) -> i64| policies.iter().map(value).min().unwrap_or(0);
        let before = |seconds: i64| now.0.saturating_sub(seconds.saturating_mul(1000));
        // Necessary conditions for each reason to end, with the most eager
        // policy: the exact check is `sweep_due`, per session, under its lock.
        // The first term is the partial index's own condition, which lets
        // both databases read `sessions_sweep`.
        let candidates = sqlx::query(
            "SELECT id FROM sessions WHERE status IN ('waiting', 'live') \
             AND (sweep_checked_at IS NULL OR sweep_checked_at < $1) AND ( \
             (status = 'waiting' AND COALESCE(scheduled_start, created_at) <= $2) OR \
             (status = 'live' AND (COALESCE(last_presence_at, started_at) <= $3 OR started_at <= $4))) \
             ORDER BY COALESCE(sweep_checked_at, 0), id LIMIT $5",
        )
        .bind(now.0)
        .bind(before(least(|p| p.join_grace_seconds)))
        .bind(before(least(|p| p.abandon_after_seconds)))
        .bind(before(least(|p| p.max_duration_seconds)))
        .bind(limit.clamp(1, crate::PAGE_LIMIT_MAX))
        .fetch_all(&self.reader)
        .await?;
        for row in &candidates {
            let id: String = row.try_get("id")?;
            let mut tx = self.writer.begin_with(BEGIN_WRITE).await?;
            let session = lock_session(&mut tx, &id).await?;
            report.checked += 1;
            if session.status.is_terminal() {
                tx.rollback().await?;
                continue;
            }
            let policy = settings.policies.for_kind(session.kind);
            let events = presence_events(&mut tx, &session).await?;
            match sweep_due(&session.facts(), &events, policy, now) {
                Some(end) => {
                    let ended =
                        settle_end(&mut tx, &session, &Actor::system(), None, end, settings, now)
                            .await?;
                    report.ended.push(ended);
                }
                None => {
                    sqlx::query("UPDATE sessions SET sweep_checked_at = $1 WHERE id = $2")
                        .bind(now.0)
                        .bind(&id)
                        .execute(&mut *tx)
                        .await?;
                }
            }
            tx.commit().await?;
        }
        Ok(report)
    }

    async fn record_platform_presence(
        &self,
        event: PlatformPresence,
        settings: &Settings,
        now: UnixMillis,
    ) -> Result<(PlatformDisposition, Option<Session>), StoreError> {
        let row = sqlx::query("SELECT id FROM sessions WHERE room = $1")
            .bind(&event.room)
            .fetch_optional(&self.reader)
            .await?;
        let Some(row) = row else { return Ok((PlatformDisposition::UnknownRoom, None)) };
        let id: String = row.try_get("id")?;
        let settings = *settings;
        self.grouped(&id.clone(), move |connection: &mut DbConnection| -> BoxFuture<'_, _> {
            Box::pin(
                async move { platform_presence_in(connection, &id, &event, &settings, now).await },
            )
        })
        .await
    }

    async fn late_presence(&self, session_ids: &[String]) -> Result<HashSet<String>, StoreError> {
        let mut late = HashSet::new();
        for ids in session_ids.chunks(500) {
            let mut query = sqlx::QueryBuilder::<Db>::new(
                "SELECT DISTINCT session_id FROM presence_deliveries \
                 WHERE disposition = 'late' AND session_id IN (",
            );
            let mut list = query.separated(", ");
            for id in ids {
                list.push_bind(id);
            }
            query.push(")");
            for row in query.build().fetch_all(&self.reader).await? {
                late.insert(row.try_get("session_id")?);
            }
        }
        Ok(late)
    }

    async fn audits(
        &self,
        scope: AuditScope,
        after: Option<&AuditCursor>,
        through: Option<&AuditCursor>,
        limit: i64,
    ) -> Result<Vec<(Session, SessionAudit)>, StoreError> {
        // On SQLite each query answers with one row holding the whole page as
        // a JSON array: per-row driver overhead, not the database, bounds a
        // scan of millions of sessions. On PostgreSQL building that JSON
        // cost the server more than sending plain rows (see `RawPage`).
        let limit = limit.clamp(1, 10_000);
        let after_id = after.map_or("", |cursor| cursor.id.as_str());
        let raw = match through {
            // A bounded id range: the page's end was read from the index.
            Some(through) if PAGES_BY_COPY && scope == AuditScope::All => {
                let select = concat!(
                    "SELECT ",
                    audit_columns!(),
                    " FROM sessions WHERE id > current_setting('verdict.page_after') \
                     AND id <= current_setting('verdict.page_through')"
                );
                RawPage::Copy(copy_page(&self.reader, select, after_id, &through.id).await?)
            }
            _ => {
                let mut page = sqlx::QueryBuilder::<Db>::new(concat!(
                    "SELECT ",
                    json_rows!(audit_columns!()),
                    " FROM (SELECT ",
                    audit_columns!(),
                    " FROM sessions WHERE "
                ));
                push_page(&mut page, scope, after, through);
                // A page bounded by its end holds every session up to it,
                // those created since the end was read included.
                if through.is_none() {
                    page.push(" LIMIT ").push_bind(limit);
                }
                page.push(") page");
                fetch_page(&self.reader, page).await?
            }
        };
        let mut records: Vec<SessionRecord> = page_records(&raw)?;
        // Aggregates promise no order: the page is put back in scope order.
        match scope {
            AuditScope::All | AuditScope::Open => records.sort_by(|a, b| a.id.cmp(&b.id)),
            AuditScope::EndedSince(_) | AuditScope::EndedBetween(..) => {
                records.sort_by(|a, b| (a.ended_at, &a.id).cmp(&(b.ended_at, &b.id)))
            }
        }
        let Some(last) = records.last() else { return Ok(Vec::new()) };
        // Related rows: an id range for a page in id order (the indexes
        // are read sequentially), an id list for a windowed page (sparse in
        // id space).
        let filter = if scope != AuditScope::All {
            Related::Ids(records.iter().map(|record| record.id.clone()).collect())
        } else {
            Related::Range(after_id.to_owned(), last.id.clone())
        };
        let mut policies: HashMap<String, Policy> = HashMap::new();
        let mut audits: Vec<(Session, SessionAudit)> = Vec::with_capacity(records.len());
        let mut index: HashMap<String, usize> = HashMap::with_capacity(records.len());
        for record in records {
            let policy = match record.policy.as_deref() {
                None => None,
                Some(text) => Some(match policies.get(text) {
                    Some(policy) => *policy,
                    None => {
                        let policy = policy_from_json(text)?;
                        policies.insert(text.to_owned(), policy);
                        policy
                    }
                }),
            };
            let session = record.into_session()?;
            let audit = session.audit(policy, None, session.last_heartbeats().collect());
            index.insert(session.id.clone(), audits.len());
            audits.push((session, audit));
        }

        // The related queries run at once, each on a reader of its own (the
        // ledger sums of a long id list one chunk after another). The
        // events and payouts (most rows: about 4 and 0.65 a session) may come
        // by COPY; the requests answer few rows and stay a prepared
        // statement, planned once, not per page. (Payouts by COPY: 1M
        // sessions verified in 4.92 s instead of 5.15 s, bench/RESULTS.md.)
        let events = filter.fetch(
            &self.reader,
            concat!(
                "SELECT ",
                json_rows!("session_id, seq, type, party, at, connection"),
                " FROM session_events WHERE type IN ('joined', 'left', 'ended') AND "
            ),
            "session_id",
            "",
        );
        let payouts = filter.fetch(
            &self.reader,
            concat!(
                "SELECT ",
                json_rows!("session_id, amount_cents"),
                " FROM payouts WHERE reversed_at IS NULL AND "
            ),
            "session_id",
            "",
        );
        let postings = async {
            match &filter {
                // A scan of everything checks the ledger in one pass.
                Related::Range(..) => Ok(HashMap::new()),
                Related::Ids(ids) => self.unbalanced_postings(ids).await,
            }
        };
        let requests = fetch_page(
            &self.reader,
            filter.query(
                concat!(
                    "SELECT ",
                    json_rows!("session_id, status, open_assignments"),
                    " FROM (SELECT r.session_id, r.status, (SELECT COUNT(*) FROM assignments a \
                     WHERE a.request_id = r.id) AS open_assignments FROM requests r WHERE "
                ),
                "r.session_id",
                ") requests",
            ),
        );
        let (events, payouts, postings, requests) =
            tokio::try_join!(events, payouts, postings, requests)?;

        let mut events: Vec<EventRecord> = page_records(&events)?;
        // In the order they happened (the audit trail's sequence).
        events.sort_by_key(|event| event.seq);
        for EventRecord { session_id, kind, party, at, connection, .. } in events {
            let Some(&slot) = index.get(session_id.as_ref()) else { continue };
            if kind == "ended" {
                // When the decision was taken.
                let audit = &mut audits[slot].1;
                audit.decided_at = audit.decided_at.max(Some(UnixMillis(at)));
                continue;
            }
            let Some(party) = party.and_then(|party| party.parse::<Party>().ok()) else { continue };
            let kind = if kind == "joined" { PresenceKind::Joined } else { PresenceKind::Left };
            let connection = Connection::named(connection.as_deref());
            audits[slot].1.events.push(PresenceEvent {
                party,
                kind,
                at: UnixMillis(at),
                connection,
            });
        }
        for SessionAmount { session_id, amount } in page_records(&payouts)? {
            if let Some(&slot) = index.get(session_id.as_ref()) {
                audits[slot].1.payouts.push(Cents(amount));
            }
        }
        for (session_id, sums) in postings {
            if let Some(&slot) = index.get(&session_id) {
                audits[slot].1.posting_sums = sums;
            }
        }
        for RequestRecord { session_id, status, open_assignments } in page_records(&requests)? {
            if let Some(&slot) = index.get(session_id.as_ref()) {
                audits[slot].1.request = Some((status, open_assignments));
            }
        }
        Ok(audits)
    }

    async fn ledger_imbalance(&self, sample: usize) -> Result<(i64, Vec<String>), StoreError> {
        // One ordered pass over the covering index of the lines, grouped as
        // it goes: a third of the server time of the same check per page.
        let rows = sqlx::query(
            "SELECT session_id, COUNT(*) OVER () AS sessions FROM (SELECT DISTINCT p.session_id \
             FROM ledger_postings p JOIN (SELECT posting_id FROM ledger_lines GROUP BY posting_id \
             HAVING SUM(amount_cents) <> 0) unbalanced ON unbalanced.posting_id = p.id) found \
             ORDER BY session_id LIMIT $1",
        )
        .bind(i64::try_from(sample.max(1)).unwrap_or(i64::MAX))
        .fetch_all(&self.reader)
        .await?;
        let count = match rows.first() {
            Some(row) => row.try_get("sessions")?,
            None => 0,
        };
        let ids = rows.iter().take(sample).map(|row| row.try_get("session_id"));
        Ok((count, ids.collect::<Result<_, _>>()?))
    }

    async fn unbalanced_postings(
        &self,
        session_ids: &[String],
    ) -> Result<HashMap<String, Vec<i64>>, StoreError> {
        let mut unbalanced: HashMap<String, Vec<i64>> = HashMap::new();
        for ids in session_ids.chunks(2_000) {
            let page = fetch_page(
                &self.reader,
                Related::Ids(ids.to_vec()).query(
                    concat!(
                        "SELECT ",
                        json_rows!("session_id, total"),
                        // A sum per posting, each one index range of its
                        // lines: half the server time of a join, sort and
                        // group.
                        " FROM (SELECT p.session_id, (SELECT CAST(SUM(l.amount_cents) AS BIGINT) \
                         FROM ledger_lines l WHERE l.posting_id = p.id) AS total \
                         FROM ledger_postings p WHERE "
                    ),
                    "p.session_id",
                    // Only what does not balance is a finding.
                    ") sums WHERE total <> 0",
                ),
            )
            .await?;
            for SessionAmount { session_id, amount } in page_records(&page)? {
                unbalanced.entry(session_id.into_owned()).or_default().push(amount);
            }
        }
        Ok(unbalanced)
    }

    async fn audit_page_end(
        &self,
        scope: AuditScope,
        after: Option<&AuditCursor>,
        limit: i64,
    ) -> Result<Option<AuditCursor>, StoreError> {
        // The page's last session: found in the index alone (an index-only
        // scan of its ids), then read once. Selecting `ended_at` in the scan
        // itself read the table for every session it skipped, on
        // PostgreSQL 1.7 ms a page instead of 0.7 ms.
        let mut query = sqlx::QueryBuilder::<Db>::new(
            "SELECT id, ended_at FROM sessions WHERE id = (SELECT id FROM sessions WHERE ",
        );
        push_page(&mut query, scope, after, None);
        query.push(" LIMIT 1 OFFSET ").push_bind(limit.clamp(1, 10_000) - 1).push(")");
        let row = query.build().fetch_optional(&self.reader).await?;
        row.map(|row| {
            Ok(AuditCursor {
                id: row.try_get("id")?,
                ended_at: row.try_get::<Option<i64>, _>("ended_at")?.map(UnixMillis),
            })
        })
        .transpose()
    }

    fn expected_schema_version(&self) -> i64 {
        super::MIGRATOR.iter().map(|migration| migration.version).max().unwrap_or(0)
    }

    async fn schema_version(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT MAX(version) AS version FROM _sqlx_migrations WHERE success")
            .fetch_one(&self.reader)
            .await?;
        Ok(row.try_get::<Option<i64>, _>("version")?.unwrap_or(0))
    }

    async fn outbox_health(&self, overdue_before: UnixMillis) -> Result<OutboxHealth, StoreError> {
        let counts = sqlx::query(
            "SELECT COUNT(CASE WHEN state = 'dead' THEN 1 END) AS dead, \
             COUNT(CASE WHEN state = 'pending' THEN 1 END) AS pending, \
             COUNT(CASE WHEN state = 'pending' AND due_at < $1 THEN 1 END) AS overdue \
             FROM outbox WHERE state IN ('dead', 'pending')",
        )
        .bind(overdue_before.0)
        .fetch_one(&self.reader)
        .await?;
        let sample = sqlx::query(
            "SELECT DISTINCT session_id FROM outbox WHERE session_id IS NOT NULL \
             AND (state = 'dead' OR (state = 'pending' AND due_at < $1)) ORDER BY session_id LIMIT 10",
        )
        .bind(overdue_before.0)
        .fetch_all(&self.reader)
        .await?;
        Ok(OutboxHealth {
            pending: counts.try_get("pending")?,
            dead: counts.try_get("dead")?,
            overdue: counts.try_get("overdue")?,
            sample: sample.iter().map(|row| row.try_get("session_id")).collect::<Result<_, _>>()?,
        })
    }

    async fn ended_by_status(
        &self,
        since: UnixMillis,
    ) -> Result<BTreeMap<String, i64>, StoreError> {
        let rows = sqlx::query(
            "SELECT status, COUNT(*) AS n FROM sessions WHERE ended_at >= $1 GROUP BY status",
        )
        .bind(since.0)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(|row| Ok((row.try_get("status")?, row.try_get("n")?))).collect()
    }

    async fn import_sessions(
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

    async fn bulk_import(&self) -> Result<Box<dyn BulkImport>, StoreError> {
        Ok(Box::new(Bulk::open(&self.writer).await?))
    }

    async fn correct_session(
        &self,
        id: &str,
        settings: &Settings,
        now: UnixMillis,
    ) -> Result<Option<Correction>, StoreError> {
        let mut tx = self.writer.begin_with(BEGIN_WRITE).await?;
        let session = lock_session(&mut tx, id).await?;
        let repairer = Actor { role: Role::System, id: "repair".to_owned() };
        let correction = correct_locked(&mut tx, &session, settings, &repairer, now).await?;
        if correction.is_some() {
            tx.commit().await?;
        }
        Ok(correction)
    }

    async fn events(&self, id: &str) -> Result<Vec<AuditEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, session_id, type, party, actor_role, actor_id, at, data, connection \
             FROM session_events WHERE session_id = $1 ORDER BY seq",
        )
        .bind(id)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(event_from_row).collect()
    }

    async fn notifications(
        &self,
        role: Party,
        recipient_id: &str,
        after: Option<i64>,
        limit: i64,
    ) -> Result<Vec<Notification>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, recipient_role, recipient_id, session_id, kind, reason, created_at \
             FROM notifications WHERE recipient_role = $1 AND recipient_id = $2 AND id > $3 \
             ORDER BY id LIMIT $4",
        )
        .bind(role.as_str())
        .bind(recipient_id)
        .bind(after.unwrap_or(0))
        .bind(limit.clamp(1, crate::PAGE_LIMIT_MAX))
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(Notification {
                    id: row.try_get("id")?,
                    recipient_role: parse(row.try_get("recipient_role")?)?,
                    recipient_id: row.try_get("recipient_id")?,
                    session_id: row.try_get("session_id")?,
                    kind: row.try_get("kind")?,
                    reason: parse_optional(row.try_get("reason")?)?,
                    created_at: UnixMillis(row.try_get("created_at")?),
                })
            })
            .collect()
    }

    async fn table_counts(&self) -> Result<BTreeMap<&'static str, i64>, StoreError> {
        let mut counts = BTreeMap::new();
        for (table, statement) in [
            ("sessions", "SELECT COUNT(*) AS n FROM sessions"),
            ("session_events", "SELECT COUNT(*) AS n FROM session_events"),
            ("notifications", "SELECT COUNT(*) AS n FROM notifications"),
            ("outbox", "SELECT COUNT(*) AS n FROM outbox"),
            ("users", "SELECT COUNT(*) AS n FROM users"),
            ("ledger_postings", "SELECT COUNT(*) AS n FROM ledger_postings"),
            ("ledger_lines", "SELECT COUNT(*) AS n FROM ledger_lines"),
            ("payouts", "SELECT COUNT(*) AS n FROM payouts"),
            ("requests", "SELECT COUNT(*) AS n FROM requests"),
            ("assignments", "SELECT COUNT(*) AS n FROM assignments"),
            ("idempotency_keys", "SELECT COUNT(*) AS n FROM idempotency_keys"),
        ] {
            let row = sqlx::query(statement).fetch_one(&self.reader).await?;
            counts.insert(table, row.try_get::<i64, _>("n")?);
        }
        Ok(counts)
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
    SESSION_ROWS * 16 <= 32_766
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
                 price_amount_cents, currency, charged_cents, import_run) ",
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
                    .push_bind(run_id.clone());
            });
            insert.push(" ON CONFLICT (id) DO NOTHING");
            if !INSERTS_TOLD_BY_ROWID {
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
        if !INSERTS_TOLD_BY_ROWID {
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
        let stored_now: Vec<String> = if INSERTS_TOLD_BY_ROWID {
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
        if INSERTS_TOLD_BY_ROWID {
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
struct Bulk {
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
    async fn open(writer: &Pool<Db>) -> Result<Bulk, StoreError> {
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

/// Creates a session inside a grouped transaction (see `Engine::grouped`).
async fn create_session_in(
    tx: &mut DbConnection,
    new: &NewSession,
    actor: &Actor,
    idempotency: Option<&Idempotency>,
    now: UnixMillis,
) -> Result<Created<Session>, StoreError> {
    if let Some(idempotency) = idempotency
        && let Some(earlier) = claim_key(&mut *tx, idempotency, &new.id, now).await?
    {
        let session = lock_session(&mut *tx, &earlier).await?;
        return Ok(Created { value: session, replayed: true });
    }
    if let Some(room) = &new.room {
        let holder = sqlx::query("SELECT id FROM sessions WHERE room = $1 AND id <> $2")
            .bind(&room.room)
            .bind(&new.id)
            .fetch_optional(&mut *tx)
            .await?;
        if let Some(holder) = holder {
            let holder: String = holder.try_get("id")?;
            return Err(StoreError::Conflict(format!(
                "room {} is already the room of session {holder}",
                room.room
            )));
        }
    }
    if !insert_session(&mut *tx, new, actor, now).await? {
        return Err(StoreError::Conflict(format!("session {} already exists", new.id)));
    }
    let session = lock_session(&mut *tx, &new.id).await?;
    Ok(Created { value: session, replayed: false })
}

/// Ends a session inside a grouped transaction (see `Engine::grouped`).
async fn end_session_in(
    tx: &mut DbConnection,
    id: &str,
    actor: &Actor,
    claimed: Option<Value>,
    cause: EndCause,
    settings: &Settings,
    now: UnixMillis,
) -> Result<Ended, StoreError> {
    let session = lock_session(&mut *tx, id).await?;
    if session.status.is_terminal() {
        return Ok(Ended { session, already_ended: true });
    }
    let session =
        settle_end(&mut *tx, &session, actor, claimed, EndRequest::new(now, cause), settings, now)
            .await?;
    Ok(Ended { session, already_ended: false })
}

/// Re-derives a locked, terminal session and, if the recorded outcome
/// differs, corrects it as `actor`: the row, a `corrected` audit event,
/// notifications, and a posting with its payout (newly completed, paid
/// once the session is final) or a reversal (wrongly completed). `None`
/// when the outcome stands. Shared by repair and finalization.
async fn correct_locked(
    tx: &mut DbConnection,
    session: &Session,
    settings: &Settings,
    actor: &Actor,
    now: UnixMillis,
) -> Result<Option<Correction>, StoreError> {
    let id = session.id.as_str();
    let (Some(_), Some(reason)) = (session.ended_at, session.reason) else {
        return Ok(None);
    };
    let (policy, expected) = rederive_locked(&mut *tx, session, settings, None).await?;
    let Some(expected) = expected else { return Ok(None) };
    // Repair corrects statuses; inside the finalization window, where the
    // presence itself is still arriving, every part of the outcome follows.
    let stands = if session.is_finalizing() {
        (expected.status, expected.reason, expected.billable_seconds, expected.started_at)
            == (session.status, reason, session.billable_seconds.unwrap_or(0), session.started_at)
    } else {
        (expected.status, expected.reason) == (session.status, reason)
    };
    if stands {
        return Ok(None);
    }
    let old_charge = session.charged_cents.unwrap_or(Cents(0));
    let new_charge = charge_for(&session.price, expected.reason, expected.billable_seconds);
    let correction = Correction {
        session_id: id.to_owned(),
        from: (session.status, reason),
        to: (expected.status, expected.reason),
        money_effect: new_charge.0 - old_charge.0,
    };
    sqlx::query(
        "UPDATE sessions SET status = $1, reason = $2, billable_seconds = $3, started_at = $4, \
         charged_cents = $5, policy = $6 WHERE id = $7",
    )
    .bind(expected.status.as_str())
    .bind(expected.reason.as_str())
    .bind(expected.billable_seconds)
    .bind(expected.started_at.map(|at| at.0))
    .bind(new_charge.0)
    .bind(policy_json(&policy).to_string())
    .bind(id)
    .execute(&mut *tx)
    .await?;
    let data = json!({
        "from": {"status": session.status.as_str(), "reason": reason.as_str()},
        "to": {"status": expected.status.as_str(), "reason": expected.reason.as_str(),
            "billable_seconds": expected.billable_seconds},
        "money_effect_cents": correction.money_effect,
        "policy": policy_json(&policy),
    });
    insert_event(&mut *tx, id, EventType::Corrected, None, actor, now, Some(&data)).await?;
    notify_parties(&mut *tx, session, "session_corrected", expected.reason, now).await?;
    if let Some(request_id) = &session.request_id
        && expected.status != session.status
    {
        settle_request(&mut *tx, request_id, id, expected.status, now).await?;
    }
    if session.is_finalizing() {
        // No money has moved yet: finalization settles the outcome as it
        // stands then.
        return Ok(Some(correction));
    }
    let was_completed = session.status == Status::Completed;
    let is_completed = expected.status == Status::Completed;
    if is_completed && !was_completed {
        let existing: i64 = sqlx::query("SELECT COUNT(*) AS n FROM payouts WHERE session_id = $1")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?
            .try_get("n")?;
        if existing == 0 {
            let fee = platform_fee(new_charge, policy.platform_fee_bps);
            post_settlement(&mut *tx, session, new_charge, fee, now).await?;
            let share = Cents(new_charge.0 - fee.0);
            insert_payout(&mut *tx, session, share, settings.payout_provider, now).await?;
        }
    } else if was_completed && !is_completed {
        reverse_settlement(&mut *tx, session, now).await?;
    }
    Ok(Some(correction))
}

/// Records a platform's presence event inside a grouped transaction (see
/// `Store::record_platform_presence`).
async fn platform_presence_in(
    tx: &mut DbConnection,
    id: &str,
    event: &PlatformPresence,
    settings: &Settings,
    now: UnixMillis,
) -> Result<(PlatformDisposition, Option<Session>), StoreError> {
    let session = lock_session(&mut *tx, id).await?;
    let Some(party) = session.room.as_ref().and_then(|room| room.party_of(&event.identity)) else {
        return Ok((PlatformDisposition::UnknownIdentity, Some(session)));
    };
    let event_type = match event.kind {
        PresenceKind::Joined => EventType::Joined,
        PresenceKind::Left => EventType::Left,
        PresenceKind::Heartbeat => {
            return Err(StoreError::Unprocessable("a platform reports joins and leaves".into()));
        }
    };
    // Nobody is present in a session before it exists, whatever the
    // platform's clock says (the delivery keeps the platform's instant).
    let at = event.at.max(session.created_at);
    let before_end = session.ended_at.is_some_and(|ended| at <= ended);
    let in_window = session.is_finalizing() && session.finalizes_at.is_some_and(|at| now < at);
    let disposition = match (before_end, in_window) {
        (false, _) => "recorded",
        (true, true) => "reconsidered",
        // Too late to count: worth a person's look only if it would have
        // changed the outcome.
        (true, false) => {
            let connection = Connection::named(Some(&event.connection));
            let late = PresenceEvent { party, kind: event.kind, at, connection };
            let (_, expected) = rederive_locked(&mut *tx, &session, settings, Some(late)).await?;
            let changes = expected.is_some_and(|expected| {
                (Some(expected.status), Some(expected.reason), Some(expected.billable_seconds))
                    != (Some(session.status), session.reason, session.billable_seconds)
            });
            if changes { "late" } else { "late_unchanged" }
        }
    };
    let inserted = sqlx::query(
        "INSERT INTO presence_deliveries (source, event_id, session_id, party, connection, kind, \
         at, received_at, disposition) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
         ON CONFLICT (source, event_id) DO NOTHING",
    )
    .bind(event.source)
    .bind(&event.event_id)
    .bind(id)
    .bind(party.as_str())
    .bind(&event.connection)
    .bind(event_type.as_str())
    .bind(event.at.0)
    .bind(now.0)
    .bind(disposition)
    .execute(&mut *tx)
    .await?;
    if inserted.rows_affected() == 0 {
        return Ok((PlatformDisposition::Duplicate, Some(session)));
    }
    if disposition.starts_with("late") {
        // The outcome is final: the event is kept apart (for review when it
        // would have changed the outcome).
        let changes = disposition == "late";
        return Ok((PlatformDisposition::Late { changes }, Some(session)));
    }
    let platform = Actor { role: Role::System, id: event.source.to_owned() };
    let data = json!({"source": event.source, "event_id": event.event_id});
    sqlx::query(
        "INSERT INTO session_events (session_id, type, party, actor_role, actor_id, at, data, \
         connection) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(id)
    .bind(event_type.as_str())
    .bind(party.as_str())
    .bind(platform.role.as_str())
    .bind(&platform.id)
    .bind(at.0)
    .bind(data.to_string())
    .bind(&event.connection)
    .execute(&mut *tx)
    .await?;
    if session.status.is_terminal() {
        if !before_end {
            return Ok((PlatformDisposition::Recorded, Some(session)));
        }
        let finalizer = Actor { role: Role::System, id: "finalization".to_owned() };
        let correction = correct_locked(&mut *tx, &session, settings, &finalizer, now).await?;
        let session = lock_session(&mut *tx, id).await?;
        return Ok((PlatformDisposition::Reconsidered(correction), Some(session)));
    }
    // An open session: the first overlap, wherever the event falls in
    // time, starts it (an event arriving late may move the start earlier).
    {
        let policy = settings.policies.for_kind(session.kind);
        let events = presence_events(&mut *tx, &session).await?;
        // Just after the latest event, so that a join at that instant counts.
        let latest = events.iter().map(|event| event.at).max().unwrap_or(now);
        let until = UnixMillis(now.max(latest).0 + 1);
        let customer = intervals_of(&events, Party::Customer, until, policy);
        let provider = intervals_of(&events, Party::Provider, until, policy);
        if let (_, Some(started_at)) = overlap(&customer, &provider)
            && session.started_at.is_none_or(|known| started_at < known)
        {
            sqlx::query("UPDATE sessions SET status = 'live', started_at = $1 WHERE id = $2")
                .bind(started_at.0)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            if session.started_at.is_none() {
                let payload =
                    json!({"event": "session.started", "session_id": id, "at": started_at.0});
                insert_outbox(&mut *tx, id, "webhook:session.started", &payload, now).await?;
            }
        }
    }
    let session = touch_presence(&mut *tx, id, now).await?;
    Ok((PlatformDisposition::Recorded, Some(session)))
}

/// Notes presence activity (the sweeper's candidates use it) and reads the
/// session back.
async fn touch_presence(
    tx: &mut DbConnection,
    id: &str,
    now: UnixMillis,
) -> Result<Session, StoreError> {
    sqlx::query("UPDATE sessions SET last_presence_at = $1 WHERE id = $2")
        .bind(now.0)
        .bind(id)
        .execute(&mut *tx)
        .await?;
    lock_session(&mut *tx, id).await
}

/// Records presence inside a grouped transaction (see `Engine::grouped`).
async fn record_presence_in(
    tx: &mut DbConnection,
    id: &str,
    party: Party,
    change: PresenceChange,
    actor: &Actor,
    policies: &PolicySet,
    now: UnixMillis,
) -> Result<Session, StoreError> {
    let session = lock_session(&mut *tx, id).await?;
    if session.status.is_terminal() {
        return Err(StoreError::Conflict(format!(
            "session {id} is {}: presence can no longer change",
            session.status
        )));
    }
    let policy = policies.for_kind(session.kind);
    let timeout_millis = policy.presence_timeout_seconds.saturating_mul(1000);
    let mut events = presence_events(&mut *tx, &session).await?;
    // A party whose heartbeats lapsed has been absent since its last one.
    // Write that down before anything else (actor `system`), so that the
    // history stays exact whatever the party does next.
    let last_seen = match party {
        Party::Customer => session.customer_last_seen_at,
        Party::Provider => session.provider_last_seen_at,
    };
    let mut lapsed = false;
    if let Some(seen) = last_seen
        && now.millis_since(seen) > timeout_millis
        && open_since(&events, party).is_some_and(|joined| joined <= seen)
    {
        let data = json!({"cause": "heartbeat_lapsed"});
        insert_event(
            &mut *tx,
            id,
            EventType::Left,
            Some(party),
            &Actor::system(),
            seen,
            Some(&data),
        )
        .await?;
        events.push(PresenceEvent {
            party,
            kind: PresenceKind::Left,
            at: seen,
            connection: Connection::OWN,
        });
        lapsed = true;
    }
    let present = presence_at(&events, now, policy);
    let (party_present, other_present) = match party {
        Party::Customer => (present.customer, present.provider),
        Party::Provider => (present.provider, present.customer),
    };
    let joins = match change {
        PresenceChange::Heartbeat => {
            let statement = match party {
                Party::Customer => "UPDATE sessions SET customer_last_seen_at = $1 WHERE id = $2",
                Party::Provider => "UPDATE sessions SET provider_last_seen_at = $1 WHERE id = $2",
            };
            sqlx::query(statement).bind(now.0).bind(id).execute(&mut *tx).await?;
            // A heartbeat after a lapse is a reconnection.
            lapsed
        }
        // Joining while present and leaving while absent are no-ops:
        // clients retry, and a retry must not split an interval.
        PresenceChange::Join => !party_present,
        PresenceChange::Leave => {
            if party_present {
                insert_event(&mut *tx, id, EventType::Left, Some(party), actor, now, None).await?;
            }
            false
        }
    };
    if joins {
        insert_event(&mut *tx, id, EventType::Joined, Some(party), actor, now, None).await?;
        if other_present && session.started_at.is_none() {
            sqlx::query(
                "UPDATE sessions SET status = 'live', started_at = $1 \
                 WHERE id = $2 AND started_at IS NULL",
            )
            .bind(now.0)
            .bind(id)
            .execute(&mut *tx)
            .await?;
            let payload = json!({"event": "session.started", "session_id": id, "at": now.0});
            insert_outbox(&mut *tx, id, "webhook:session.started", &payload, now).await?;
        }
    }
    touch_presence(&mut *tx, id, now).await
}

async fn lock_session(connection: &mut DbConnection, id: &str) -> Result<Session, StoreError> {
    let row = sqlx::query(concat!(
        "SELECT ",
        session_columns!(),
        " FROM sessions WHERE id = $1",
        for_update!()
    ))
    .bind(id)
    .fetch_optional(&mut *connection)
    .await?;
    match row {
        Some(row) => session_from_row(&row),
        None => Err(StoreError::not_found("session", id)),
    }
}

/// Decides a locked, non-terminal session and writes everything its end
/// entails (SPEC §3), inside the caller's transaction: shared by `end` and
/// the sweeper. Returns the session as ended.
async fn settle_end(
    tx: &mut DbConnection,
    session: &Session,
    actor: &Actor,
    claimed: Option<Value>,
    end: EndRequest,
    settings: &Settings,
    now: UnixMillis,
) -> Result<Session, StoreError> {
    let id = session.id.as_str();
    let policy = *settings.policies.for_kind(session.kind);
    let events = presence_events(&mut *tx, session).await?;
    let outcome = decide(&session.facts(), &events, &policy, end);
    let charged = charge_for(&session.price, outcome.reason, outcome.billable_seconds);
    let policy_json = policy_json(&policy);
    // Presence from a video platform can arrive late: such a session stays
    // open to re-decision for a while, and its money and receipts wait for
    // the sweeper to make it final.
    let finalizes_at =
        session.room.as_ref().map(|_| now.plus_seconds(settings.finalize_after_seconds));

    let updated = sqlx::query(
        "UPDATE sessions SET status = $1, reason = $2, started_at = $3, ended_at = $4, \
         ended_by = $5, billable_seconds = $6, charged_cents = $7, policy = $8, \
         finalizes_at = $10 WHERE id = $9 AND ended_at IS NULL",
    )
    .bind(outcome.status.as_str())
    .bind(outcome.reason.as_str())
    .bind(outcome.started_at.map(|at| at.0))
    .bind(outcome.ended_at.0)
    .bind(actor.role.as_str())
    .bind(outcome.billable_seconds)
    .bind(charged.0)
    .bind(policy_json.to_string())
    .bind(id)
    .bind(finalizes_at.map(|at| at.0))
    .execute(&mut *tx)
    .await?;
    assert_eq!(updated.rows_affected(), 1, "the locked, non-terminal session must update");
    // The row as just written, without reading it back.
    let ended = Session {
        status: outcome.status,
        reason: Some(outcome.reason),
        started_at: outcome.started_at,
        ended_at: Some(outcome.ended_at),
        ended_by: Some(actor.role),
        billable_seconds: Some(outcome.billable_seconds),
        charged_cents: Some(charged),
        finalizes_at,
        ..session.clone()
    };

    let audit = json!({
        "claimed": claimed,
        "policy": policy_json,
        "outcome": outcome_json(&outcome),
    });
    insert_event(&mut *tx, id, EventType::Ended, None, actor, now, Some(&audit)).await?;

    let notification_kind = match outcome.status {
        Status::Completed => "session_completed",
        Status::Expired => "session_expired",
        _ => "session_cancelled",
    };
    notify_parties(tx, session, notification_kind, outcome.reason, now).await?;
    let payload = json!({
        "event": "session.ended",
        "session_id": id,
        "outcome": outcome_json(&outcome),
        "charged_cents": charged.0,
    });
    insert_outbox(&mut *tx, id, "webhook:session.ended", &payload, now).await?;
    if let Some(request_id) = &session.request_id {
        settle_request(&mut *tx, request_id, id, outcome.status, now).await?;
    }
    if finalizes_at.is_none() {
        settle_money(&mut *tx, &ended, &policy, settings, now).await?;
    }
    Ok(ended)
}

/// What a final outcome owes: the receipts and, when completed, the
/// ledger posting and the payout with its outbox row.
async fn settle_money(
    tx: &mut DbConnection,
    session: &Session,
    policy: &Policy,
    settings: &Settings,
    now: UnixMillis,
) -> Result<(), StoreError> {
    queue_receipts(&mut *tx, session, now).await?;
    if session.status == Status::Completed {
        let charged = session.charged_cents.unwrap_or(Cents(0));
        let fee = platform_fee(charged, policy.platform_fee_bps);
        post_settlement(&mut *tx, session, charged, fee, now).await?;
        let share = Cents(charged.0 - fee.0);
        insert_payout(&mut *tx, session, share, settings.payout_provider, now).await?;
    }
    Ok(())
}

/// Closes the finalization window of a locked session: settles the money
/// of the outcome it has now, once.
async fn finalize_locked(
    tx: &mut DbConnection,
    session: &Session,
    settings: &Settings,
    now: UnixMillis,
) -> Result<Session, StoreError> {
    let policy = stored_policy(&mut *tx, session, settings).await?;
    settle_money(&mut *tx, session, &policy, settings, now).await?;
    // `session.ended` told the first decision; this is the final one.
    let payload = json!({
        "event": "session.finalized",
        "session_id": session.id,
        "status": session.status.as_str(),
        "reason": session.reason.map(Reason::as_str),
        "billable_seconds": session.billable_seconds,
        "charged_cents": session.charged_cents.map(|cents| cents.0),
    });
    insert_outbox(&mut *tx, &session.id, "webhook:session.finalized", &payload, now).await?;
    sqlx::query("UPDATE sessions SET finalized_at = $1 WHERE id = $2")
        .bind(now.0)
        .bind(&session.id)
        .execute(&mut *tx)
        .await?;
    Ok(Session { finalized_at: Some(now), ..session.clone() })
}

/// The policy a locked, terminal session was decided with and its outcome
/// re-derived from its presence (and `extra`, an event not stored), as
/// verification re-derives it.
async fn rederive_locked(
    tx: &mut DbConnection,
    session: &Session,
    settings: &Settings,
    extra: Option<PresenceEvent>,
) -> Result<(Policy, Option<Outcome>), StoreError> {
    let policy = stored_policy(&mut *tx, session, settings).await?;
    let decided_at = decided_at(&mut *tx, &session.id).await?;
    let mut events = presence_events(&mut *tx, session).await?;
    events.extend(extra);
    let expected = session.audit(Some(policy), decided_at, events).rederive(&policy);
    Ok((policy, expected))
}

/// When the session's decision was taken (its `ended` event).
async fn decided_at(tx: &mut DbConnection, id: &str) -> Result<Option<UnixMillis>, StoreError> {
    let at: Option<i64> = sqlx::query(
        "SELECT MAX(at) AS decided_at FROM session_events WHERE session_id = $1 AND type = 'ended'",
    )
    .bind(id)
    .fetch_one(&mut *tx)
    .await?
    .try_get("decided_at")?;
    Ok(at.map(UnixMillis))
}

/// The policy a terminal session was decided with (the configured one for
/// history verdict never decided).
async fn stored_policy(
    tx: &mut DbConnection,
    session: &Session,
    settings: &Settings,
) -> Result<Policy, StoreError> {
    let stored: Option<String> = sqlx::query("SELECT policy FROM sessions WHERE id = $1")
        .bind(&session.id)
        .fetch_one(&mut *tx)
        .await?
        .try_get("policy")?;
    match stored.as_deref() {
        Some(text) => policy_from_json(text),
        None => Ok(*settings.policies.for_kind(session.kind)),
    }
}

/// A notification of `kind` to each party (at most one per session, party
/// and kind).
async fn notify_parties(
    connection: &mut DbConnection,
    session: &Session,
    kind: &str,
    reason: Reason,
    now: UnixMillis,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO notifications (recipient_role, recipient_id, session_id, kind, reason, \
         created_at) VALUES ($1, $2, $3, $4, $5, $6), ($7, $8, $3, $4, $5, $6) \
         ON CONFLICT DO NOTHING",
    )
    .bind(Party::Customer.as_str())
    .bind(session.party_id(Party::Customer))
    .bind(&session.id)
    .bind(kind)
    .bind(reason.as_str())
    .bind(now.0)
    .bind(Party::Provider.as_str())
    .bind(session.party_id(Party::Provider))
    .execute(&mut *connection)
    .await?;
    Ok(())
}

/// Inserts a `waiting` session and its `created` event; false when the id
/// is taken.
async fn insert_session(
    connection: &mut DbConnection,
    new: &NewSession,
    actor: &Actor,
    now: UnixMillis,
) -> Result<bool, StoreError> {
    let metadata = new.metadata.as_ref().map(Value::to_string);
    let inserted = sqlx::query(
        "INSERT INTO sessions (id, kind, status, customer_id, provider_id, provider_account, \
         request_id, scheduled_start, created_at, price_mode, price_amount_cents, currency, \
         metadata, room, customer_identity, provider_identity) \
         VALUES ($1, $2, 'waiting', $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) \
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(&new.id)
    .bind(new.kind.as_str())
    .bind(&new.customer_id)
    .bind(&new.provider_id)
    .bind(&new.provider_account)
    .bind(&new.request_id)
    .bind(new.scheduled_start.map(|at| at.0))
    .bind(now.0)
    .bind(new.price.mode.as_str())
    .bind(new.price.amount.0)
    .bind(&new.price.currency)
    .bind(&metadata)
    .bind(new.room.as_ref().map(|room| &room.room))
    .bind(new.room.as_ref().map(|room| &room.customer_identity))
    .bind(new.room.as_ref().map(|room| &room.provider_identity))
    .execute(&mut *connection)
    .await?;
    if inserted.rows_affected() == 0 {
        return Ok(false);
    }
    insert_event(connection, &new.id, EventType::Created, None, actor, now, None).await?;
    Ok(true)
}

/// Records an idempotency key for `resource_id`. Returns the earlier
/// resource when the key was used before with the same body; another body
/// is refused. On PostgreSQL a concurrent first use holds the key's index
/// entry, so a second caller waits here and then replays the first.
async fn claim_key(
    connection: &mut DbConnection,
    idempotency: &Idempotency,
    resource_id: &str,
    now: UnixMillis,
) -> Result<Option<String>, StoreError> {
    let inserted = sqlx::query(
        "INSERT INTO idempotency_keys (scope, key, fingerprint, resource_id, created_at) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (scope, key) DO NOTHING",
    )
    .bind(&idempotency.scope)
    .bind(&idempotency.key)
    .bind(&idempotency.fingerprint)
    .bind(resource_id)
    .bind(now.0)
    .execute(&mut *connection)
    .await?;
    if inserted.rows_affected() == 1 {
        return Ok(None);
    }
    let row = sqlx::query(
        "SELECT fingerprint, resource_id FROM idempotency_keys WHERE scope = $1 AND key = $2",
    )
    .bind(&idempotency.scope)
    .bind(&idempotency.key)
    .fetch_one(&mut *connection)
    .await?;
    let fingerprint: String = row.try_get("fingerprint")?;
    if fingerprint != idempotency.fingerprint {
        return Err(StoreError::Unprocessable(format!(
            "Idempotency-Key {:?} was already used with a different body",
            idempotency.key
        )));
    }
    Ok(Some(row.try_get("resource_id")?))
}

/// The request follows its session to the end; its queue entries go.
async fn settle_request(
    connection: &mut DbConnection,
    request_id: &str,
    session_id: &str,
    status: Status,
    now: UnixMillis,
) -> Result<(), StoreError> {
    let updated = sqlx::query(
        "UPDATE requests SET status = $1, session_id = COALESCE(session_id, $2), updated_at = $3 \
         WHERE id = $4 AND (session_id IS NULL OR session_id = $2)",
    )
    .bind(status.as_str())
    .bind(session_id)
    .bind(now.0)
    .bind(request_id)
    .execute(&mut *connection)
    .await?;
    if updated.rows_affected() == 1 {
        sqlx::query("DELETE FROM assignments WHERE request_id = $1")
            .bind(request_id)
            .execute(&mut *connection)
            .await?;
    }
    Ok(())
}

/// An e-mail receipt to each party whose address is known.
async fn queue_receipts(
    connection: &mut DbConnection,
    session: &Session,
    now: UnixMillis,
) -> Result<(), StoreError> {
    let rows =
        sqlx::query("SELECT id, email FROM users WHERE id IN ($1, $2) AND email IS NOT NULL")
            .bind(session.party_id(Party::Customer))
            .bind(session.party_id(Party::Provider))
            .fetch_all(&mut *connection)
            .await?;
    let mut emails = HashMap::new();
    for row in &rows {
        emails.insert(row.try_get::<String, _>("id")?, row.try_get::<String, _>("email")?);
    }
    for party in [Party::Customer, Party::Provider] {
        if let Some(email) = emails.get(session.party_id(party)) {
            let payload = json!({"session_id": session.id, "party": party.as_str(), "to": email});
            let topic = format!("email:receipt:{party}");
            insert_outbox(connection, &session.id, &topic, &payload, now).await?;
        }
    }
    Ok(())
}

/// The completed session's posting: the customer owes the charge, the
/// provider is owed its share, the platform earns the fee. Sums to zero.
async fn post_settlement(
    connection: &mut DbConnection,
    session: &Session,
    charge: Cents,
    fee: Cents,
    now: UnixMillis,
) -> Result<(), StoreError> {
    let posting_id: i64 = sqlx::query(
        "INSERT INTO ledger_postings (session_id, kind, currency, created_at) \
         VALUES ($1, 'settlement', $2, $3) RETURNING id",
    )
    .bind(&session.id)
    .bind(&session.price.currency)
    .bind(now.0)
    .fetch_one(&mut *connection)
    .await?
    .try_get("id")?;
    let lines = [
        (accounts::customer_receivable(&session.customer_id), charge.0),
        (accounts::provider_payable(&session.provider_id), -(charge.0 - fee.0)),
        (accounts::PLATFORM_REVENUE.to_owned(), -fee.0),
    ];
    insert_lines(connection, posting_id, &lines).await
}

async fn insert_lines(
    connection: &mut DbConnection,
    posting_id: i64,
    lines: &[(String, i64)],
) -> Result<(), StoreError> {
    assert_eq!(lines.iter().map(|(_, amount)| amount).sum::<i64>(), 0, "postings balance");
    let mut insert = sqlx::QueryBuilder::<Db>::new(
        "INSERT INTO ledger_lines (posting_id, account, amount_cents) ",
    );
    insert.push_values(lines, |mut row, (account, amount)| {
        row.push_bind(posting_id).push_bind(account.as_str()).push_bind(*amount);
    });
    insert.build().execute(&mut *connection).await?;
    Ok(())
}

/// Undoes a wrongly paid session: a reversal posting that negates what the
/// ledger holds for it, each payout marked reversed, and a
/// `payout.reversal` outbox row per payout (a Stripe transfer reversal when
/// the payout was paid through Stripe).
async fn reverse_settlement(
    connection: &mut DbConnection,
    session: &Session,
    now: UnixMillis,
) -> Result<(), StoreError> {
    let net = sqlx::query(
        "SELECT l.account, CAST(SUM(l.amount_cents) AS BIGINT) AS total \
         FROM ledger_lines l JOIN ledger_postings p ON p.id = l.posting_id \
         WHERE p.session_id = $1 GROUP BY l.account ORDER BY l.account",
    )
    .bind(&session.id)
    .fetch_all(&mut *connection)
    .await?;
    let mut lines: Vec<(String, i64)> = Vec::new();
    for row in &net {
        let total: i64 = row.try_get("total")?;
        if total != 0 {
            lines.push((row.try_get("account")?, -total));
        }
    }
    let payouts = sqlx::query(concat!(
        "SELECT ",
        payout_columns!(),
        " FROM payouts WHERE session_id = $1 AND reversed_at IS NULL"
    ))
    .bind(&session.id)
    .fetch_all(&mut *connection)
    .await?;
    let payouts: Vec<Payout> = payouts.iter().map(payout_from_row).collect::<Result<_, _>>()?;
    if lines.is_empty()
        && let Some(payout) = payouts.first()
    {
        // A payout without books: claw it back against platform revenue.
        lines.push((accounts::provider_payable(&session.provider_id), payout.amount.0));
        lines.push((accounts::PLATFORM_REVENUE.to_owned(), -payout.amount.0));
    }
    if !lines.is_empty() {
        let posting_id: i64 = sqlx::query(
            "INSERT INTO ledger_postings (session_id, kind, currency, created_at) \
             VALUES ($1, 'reversal', $2, $3) RETURNING id",
        )
        .bind(&session.id)
        .bind(&session.price.currency)
        .bind(now.0)
        .fetch_one(&mut *connection)
        .await?
        .try_get("id")?;
        insert_lines(connection, posting_id, &lines).await?;
    }
    for payout in &payouts {
        sqlx::query("UPDATE payouts SET reversed_at = $1, updated_at = $1 WHERE id = $2")
            .bind(now.0)
            .bind(&payout.id)
            .execute(&mut *connection)
            .await?;
        let payload = json!({
            "payout_id": payout.id,
            "session_id": session.id,
            "state": payout.state.as_str(),
            "provider": payout.provider.as_str(),
            "transfer_id": payout.transfer_id,
            "amount_cents": payout.amount.0,
        });
        insert_outbox(connection, &session.id, "payout.reversal", &payload, now).await?;
    }
    Ok(())
}

/// The provider's payout and the outbox row that pays it.
async fn insert_payout(
    connection: &mut DbConnection,
    session: &Session,
    amount: Cents,
    provider: PayoutProvider,
    now: UnixMillis,
) -> Result<(), StoreError> {
    let destination = match &session.provider_account {
        Some(account) => Some(account.clone()),
        None => sqlx::query("SELECT stripe_account FROM users WHERE id = $1")
            .bind(&session.provider_id)
            .fetch_optional(&mut *connection)
            .await?
            .map(|row| row.try_get::<Option<String>, _>("stripe_account"))
            .transpose()?
            .flatten(),
    };
    let payout_id = format!("po_{}", session.id);
    sqlx::query(
        "INSERT INTO payouts (id, session_id, provider_id, destination, amount_cents, currency, \
         state, provider, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7, $8, $8)",
    )
    .bind(&payout_id)
    .bind(&session.id)
    .bind(&session.provider_id)
    .bind(&destination)
    .bind(amount.0)
    .bind(&session.price.currency)
    .bind(provider.as_str())
    .bind(now.0)
    .execute(&mut *connection)
    .await?;
    // Manual payouts wait for an operator: nothing to deliver.
    if provider == PayoutProvider::Manual {
        return Ok(());
    }
    let payload = json!({"payout_id": payout_id, "session_id": session.id});
    insert_outbox(connection, &session.id, "payout", &payload, now).await
}

async fn read_request(connection: &mut DbConnection, id: &str) -> Result<Request, StoreError> {
    let row = sqlx::query(concat!("SELECT ", request_columns!(), " FROM requests WHERE id = $1"))
        .bind(id)
        .fetch_optional(&mut *connection)
        .await?
        .ok_or_else(|| StoreError::not_found("request", id))?;
    request_from_row(&row)
}

/// The presence history the decision needs: joins and leaves in recording
/// order, plus each party's last heartbeat.
async fn presence_events(
    connection: &mut DbConnection,
    session: &Session,
) -> Result<Vec<PresenceEvent>, StoreError> {
    let rows = sqlx::query(
        "SELECT type, party, at, connection FROM session_events \
         WHERE session_id = $1 AND type IN ('joined', 'left') ORDER BY seq",
    )
    .bind(&session.id)
    .fetch_all(&mut *connection)
    .await?;
    let mut events = Vec::with_capacity(rows.len() + 2);
    for row in &rows {
        let event_type: String = row.try_get("type")?;
        let kind = if event_type == "joined" { PresenceKind::Joined } else { PresenceKind::Left };
        let party = parse_optional(row.try_get("party")?)?.ok_or_else(|| {
            StoreError::Corrupt(format!("presence event of {} without a party", session.id))
        })?;
        let connection = Connection::named(row.try_get::<Option<&str>, _>("connection")?);
        events.push(PresenceEvent { party, kind, at: UnixMillis(row.try_get("at")?), connection });
    }
    events.extend(session.last_heartbeats());
    Ok(events)
}

async fn insert_event(
    connection: &mut DbConnection,
    session_id: &str,
    event_type: EventType,
    party: Option<Party>,
    actor: &Actor,
    at: UnixMillis,
    data: Option<&Value>,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO session_events (session_id, type, party, actor_role, actor_id, at, data) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(session_id)
    .bind(event_type.as_str())
    .bind(party.map(Party::as_str))
    .bind(actor.role.as_str())
    .bind(&actor.id)
    .bind(at.0)
    .bind(data.map(Value::to_string))
    .execute(&mut *connection)
    .await?;
    Ok(())
}

async fn insert_outbox(
    connection: &mut DbConnection,
    session_id: &str,
    topic: &str,
    payload: &Value,
    now: UnixMillis,
) -> Result<(), StoreError> {
    let channel = if topic.starts_with("email:") {
        "email"
    } else if topic == "payout" || topic == "payout.reversal" {
        "payout"
    } else {
        "webhook"
    };
    sqlx::query(
        "INSERT INTO outbox (session_id, topic, channel, dedupe_key, payload, due_at, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $6)",
    )
    .bind(session_id)
    .bind(topic)
    .bind(channel)
    .bind(format!("{topic}:{session_id}"))
    .bind(payload.to_string())
    .bind(now.0)
    .execute(&mut *connection)
    .await?;
    Ok(())
}

/// Moves a pending payout to `paid` or `failed`; `None` when it was not
/// pending (already settled by an earlier delivery).
async fn settle_payout(
    connection: &mut DbConnection,
    payout_id: &str,
    state: &str,
    transfer_id: Option<&String>,
    reason: Option<&String>,
    now: UnixMillis,
) -> Result<Option<Payout>, StoreError> {
    let updated = sqlx::query(
        "UPDATE payouts SET state = $1, transfer_id = $2, failure_reason = $3, updated_at = $4 \
         WHERE id = $5 AND state = 'pending'",
    )
    .bind(state)
    .bind(transfer_id)
    .bind(reason)
    .bind(now.0)
    .bind(payout_id)
    .execute(&mut *connection)
    .await?;
    if updated.rows_affected() == 0 {
        return Ok(None);
    }
    let row = sqlx::query(concat!("SELECT ", payout_columns!(), " FROM payouts WHERE id = $1"))
        .bind(payout_id)
        .fetch_one(&mut *connection)
        .await?;
    payout_from_row(&row).map(Some)
}

fn payout_event(event: &str, payout: &Payout) -> Value {
    json!({
        "event": event,
        "session_id": payout.session_id,
        "payout_id": payout.id,
        "provider_id": payout.provider_id,
        "amount_cents": payout.amount.0,
        "currency": payout.currency,
        "transfer_id": payout.transfer_id,
        "failure_reason": payout.failure_reason,
    })
}

fn policy_json(policy: &Policy) -> Value {
    json!({
        "min_billable_seconds": policy.min_billable_seconds,
        "billing_basis": policy.billing_basis.as_str(),
        "join_grace_seconds": policy.join_grace_seconds,
        "abandon_after_seconds": policy.abandon_after_seconds,
        "max_duration_seconds": policy.max_duration_seconds,
        "presence_timeout_seconds": policy.presence_timeout_seconds,
        "reconnect_grace_seconds": policy.reconnect_grace_seconds,
        "platform_fee_bps": policy.platform_fee_bps,
    })
}

/// `prefix` + `$1, $2, …)` with `ids` bound + `suffix`: an IN list built
/// with bound values only.
/// The sessions of `scope` after `after` and up to `through`, in scope
/// order (a `WHERE` condition and its `ORDER BY`): id order for `All` and
/// `Open`, keyset on (ended_at, id) for the windows, the order of
/// `sessions_by_ended`.
fn push_page(
    query: &mut sqlx::QueryBuilder<Db>,
    scope: AuditScope,
    after: Option<&AuditCursor>,
    through: Option<&AuditCursor>,
) {
    let after_id = after.map_or(String::new(), |cursor| cursor.id.clone());
    let end_of = |cursor: &AuditCursor| cursor.ended_at.map_or(i64::MIN, |at| at.0);
    match scope {
        AuditScope::All | AuditScope::Open => {
            query.push("id > ").push_bind(after_id);
            if let Some(through) = through {
                query.push(" AND id <= ").push_bind(through.id.clone());
            }
            if scope == AuditScope::Open {
                query.push(" AND ended_at IS NULL");
            }
            query.push(" ORDER BY id");
        }
        AuditScope::EndedSince(since) | AuditScope::EndedBetween(since, _) => {
            let after_end = after.map_or(i64::MIN, end_of);
            query.push("ended_at >= ").push_bind(since.0.max(after_end));
            if let AuditScope::EndedBetween(_, until) = scope {
                query.push(" AND ended_at < ").push_bind(until.0);
            }
            query.push(" AND (ended_at > ").push_bind(after_end);
            query.push(" OR id > ").push_bind(after_id).push(")");
            if let Some(through) = through {
                query.push(" AND ended_at <= ").push_bind(end_of(through));
                query.push(" AND (ended_at < ").push_bind(end_of(through));
                query.push(" OR id <= ").push_bind(through.id.clone()).push(")");
            }
            query.push(" ORDER BY ended_at, id");
        }
    }
}

/// The related rows of an audit page: the id range `(after, last]` or an
/// id list.
enum Related {
    Range(String, String),
    Ids(Vec<String>),
}

impl Related {
    /// `prefix`, the filter on `column`, then `suffix`, with bound values.
    fn query(&self, prefix: &str, column: &str, suffix: &str) -> sqlx::QueryBuilder<Db> {
        let mut query = sqlx::QueryBuilder::<Db>::new(prefix);
        query.push(column);
        match self {
            Related::Range(after, last) => {
                query.push(" > ").push_bind(after.clone());
                query.push(" AND ").push(column).push(" <= ").push_bind(last.clone());
            }
            Related::Ids(ids) => {
                query.push(" IN (");
                let mut list = query.separated(", ");
                for id in ids {
                    list.push_bind(id.clone());
                }
                list.push_unseparated(")");
            }
        }
        query.push(suffix);
        query
    }

    /// Reads the related rows: an id range on PostgreSQL by binary `COPY`
    /// (`copy_page`, its bounds set from bound parameters), otherwise by
    /// `query`.
    async fn fetch(
        &self,
        pool: &Pool<Db>,
        prefix: &'static str,
        column: &'static str,
        suffix: &'static str,
    ) -> Result<RawPage, StoreError> {
        match self {
            Related::Range(after, last) if PAGES_BY_COPY => {
                let select = format!(
                    "{prefix}{column} > current_setting('verdict.page_after') \
                     AND {column} <= current_setting('verdict.page_through'){suffix}"
                );
                Ok(RawPage::Copy(copy_page(pool, &select, after, last).await?))
            }
            _ => fetch_page(pool, self.query(prefix, column, suffix)).await,
        }
    }
}

/// A verification page as the database answered it: one JSON array
/// (SQLite, where every row costs the driver a hop to its worker thread) or
/// plain rows (PostgreSQL, where `json_agg(json_build_array(…))` cost the
/// server twice the rows' scan: with rows, `verdict verify` of 1,000,000
/// sessions went from 8.22 s to 7.07 s, bench/RESULTS.md).
///
/// On PostgreSQL an id-range page's sessions, presence events and payouts
/// are binary `COPY` output instead (`copy_page`), read in place.
enum RawPage {
    Json(Option<String>),
    Rows(Vec<DbRow>),
    Copy(Vec<u8>),
}

/// Runs a page query (`json_rows!` decides its form, `PAGES_AS_ROWS` how it
/// is read).
async fn fetch_page(
    pool: &Pool<Db>,
    mut query: sqlx::QueryBuilder<Db>,
) -> Result<RawPage, StoreError> {
    if PAGES_AS_ROWS {
        Ok(RawPage::Rows(query.build().fetch_all(pool).await?))
    } else {
        Ok(RawPage::Json(query.build().fetch_one(pool).await?.try_get::<Option<String>, _>(0)?))
    }
}

/// A record of a verification page, read from either form of the page: in
/// the JSON form an array, in the query's column order.
trait PageRecord<'a>: serde::Deserialize<'a> {
    /// Reads one row by column position, borrowing its text.
    fn from_db_row(row: &'a DbRow) -> Result<Self, StoreError>;
    /// Reads one row of binary `COPY` output, in the query's column order.
    /// Only sessions, presence events and payouts are read by `COPY`; the
    /// other records come from prepared statements.
    fn from_copy(_row: &mut CopyRow<'a>) -> Result<Self, StoreError> {
        Err(StoreError::Internal("this page is not read by COPY".to_owned()))
    }
}

fn page_records<'a, T: PageRecord<'a>>(page: &'a RawPage) -> Result<Vec<T>, StoreError> {
    match page {
        RawPage::Json(text) => from_json_page(text.as_deref()),
        RawPage::Rows(rows) => rows.iter().map(T::from_db_row).collect(),
        RawPage::Copy(bytes) => {
            let mut rows = CopyRows::new(bytes)?;
            let mut records = Vec::new();
            while let Some(mut row) = rows.next_row()? {
                records.push(T::from_copy(&mut row)?);
                row.finish()?;
            }
            Ok(records)
        }
    }
}

/// A payout's amount, or an unbalanced posting's sum, of a page's session.
#[derive(serde::Deserialize)]
struct SessionAmount<'a> {
    #[serde(borrow)]
    session_id: Cow<'a, str>,
    amount: i64,
}

impl<'a> PageRecord<'a> for SessionAmount<'a> {
    fn from_db_row(row: &'a DbRow) -> Result<Self, StoreError> {
        Ok(SessionAmount { session_id: Cow::Borrowed(row.try_get(0)?), amount: row.try_get(1)? })
    }

    fn from_copy(row: &mut CopyRow<'a>) -> Result<Self, StoreError> {
        Ok(SessionAmount { session_id: Cow::Borrowed(row.text()?), amount: row.int()? })
    }
}

/// The request of a page's session.
#[derive(serde::Deserialize)]
struct RequestRecord<'a> {
    #[serde(borrow)]
    session_id: Cow<'a, str>,
    status: String,
    open_assignments: i64,
}

impl<'a> PageRecord<'a> for RequestRecord<'a> {
    fn from_db_row(row: &'a DbRow) -> Result<Self, StoreError> {
        Ok(RequestRecord {
            session_id: Cow::Borrowed(row.try_get(0)?),
            status: row.try_get(1)?,
            open_assignments: row.try_get(2)?,
        })
    }
}

impl<'a> PageRecord<'a> for EventRecord<'a> {
    fn from_db_row(row: &'a DbRow) -> Result<Self, StoreError> {
        // In the order of the events query's columns.
        Ok(EventRecord {
            session_id: Cow::Borrowed(row.try_get(0)?),
            seq: row.try_get(1)?,
            kind: Cow::Borrowed(row.try_get(2)?),
            party: row.try_get::<Option<&str>, _>(3)?.map(Cow::Borrowed),
            at: row.try_get(4)?,
            connection: row.try_get::<Option<&str>, _>(5)?.map(Cow::Borrowed),
        })
    }

    fn from_copy(row: &mut CopyRow<'a>) -> Result<Self, StoreError> {
        Ok(EventRecord {
            session_id: Cow::Borrowed(row.text()?),
            seq: row.int()?,
            kind: Cow::Borrowed(row.text()?),
            party: row.opt_text()?.map(Cow::Borrowed),
            at: row.int()?,
            connection: row.opt_text()?.map(Cow::Borrowed),
        })
    }
}

impl<'a> PageRecord<'a> for SessionRecord<'a> {
    fn from_db_row(row: &'a DbRow) -> Result<Self, StoreError> {
        let policy = row.try_get::<Option<&str>, _>("policy")?.map(Cow::Borrowed);
        Ok(SessionRecord { policy, ..SessionRecord::from_row(row)? })
    }

    fn from_copy(row: &mut CopyRow<'a>) -> Result<Self, StoreError> {
        // In `audit_columns!()` order.
        let owned = |text: Option<&str>| text.map(str::to_owned);
        Ok(SessionRecord {
            id: row.text()?.to_owned(),
            kind: Cow::Borrowed(row.text()?),
            status: Cow::Borrowed(row.text()?),
            reason: row.opt_text()?.map(Cow::Borrowed),
            customer_id: row.text()?.to_owned(),
            provider_id: row.text()?.to_owned(),
            provider_account: owned(row.opt_text()?),
            request_id: owned(row.opt_text()?),
            scheduled_start: row.opt_int()?,
            created_at: row.int()?,
            started_at: row.opt_int()?,
            ended_at: row.opt_int()?,
            ended_by: row.opt_text()?.map(Cow::Borrowed),
            billable_seconds: row.opt_int()?,
            price_mode: Cow::Borrowed(row.text()?),
            price_amount_cents: row.int()?,
            currency: row.text()?.to_owned(),
            charged_cents: row.opt_int()?,
            metadata: row.opt_text()?.map(Cow::Borrowed),
            customer_last_seen_at: row.opt_int()?,
            provider_last_seen_at: row.opt_int()?,
            room: owned(row.opt_text()?),
            customer_identity: owned(row.opt_text()?),
            provider_identity: owned(row.opt_text()?),
            finalizes_at: row.opt_int()?,
            finalized_at: row.opt_int()?,
            policy: row.opt_text()?.map(Cow::Borrowed),
        })
    }
}

/// A page of rows aggregated into one JSON array (`None`: no rows).
fn from_json_page<'a, T: serde::Deserialize<'a>>(
    text: Option<&'a str>,
) -> Result<Vec<T>, StoreError> {
    match text {
        None => Ok(Vec::new()),
        Some(text) => serde_json::from_str(text)
            .map_err(|error| StoreError::Internal(format!("audit page: {error}"))),
    }
}

/// A presence event of an audit page.
#[derive(serde::Deserialize)]
struct EventRecord<'a> {
    #[serde(borrow)]
    session_id: Cow<'a, str>,
    seq: i64,
    #[serde(borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    party: Option<Cow<'a, str>>,
    at: i64,
    #[serde(borrow)]
    connection: Option<Cow<'a, str>>,
}

/// A `sessions` row as stored, read column by column or from a JSON page
/// (in `audit_columns!()` order); [`SessionRecord::into_session`] is the
/// one place its text becomes a [`Session`].
#[derive(serde::Deserialize)]
struct SessionRecord<'a> {
    id: String,
    #[serde(borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    status: Cow<'a, str>,
    #[serde(borrow)]
    reason: Option<Cow<'a, str>>,
    customer_id: String,
    provider_id: String,
    provider_account: Option<String>,
    request_id: Option<String>,
    scheduled_start: Option<i64>,
    created_at: i64,
    started_at: Option<i64>,
    ended_at: Option<i64>,
    #[serde(borrow)]
    ended_by: Option<Cow<'a, str>>,
    billable_seconds: Option<i64>,
    #[serde(borrow)]
    price_mode: Cow<'a, str>,
    price_amount_cents: i64,
    currency: String,
    charged_cents: Option<i64>,
    #[serde(borrow)]
    metadata: Option<Cow<'a, str>>,
    customer_last_seen_at: Option<i64>,
    provider_last_seen_at: Option<i64>,
    room: Option<String>,
    customer_identity: Option<String>,
    provider_identity: Option<String>,
    finalizes_at: Option<i64>,
    finalized_at: Option<i64>,
    #[serde(borrow, default)]
    policy: Option<Cow<'a, str>>,
}

impl SessionRecord<'_> {
    fn from_row(row: &DbRow) -> Result<SessionRecord<'static>, StoreError> {
        let text = |column: &str| -> Result<Cow<'static, str>, StoreError> {
            Ok(Cow::Owned(row.try_get::<String, _>(column)?))
        };
        let optional = |column: &str| -> Result<Option<Cow<'static, str>>, StoreError> {
            Ok(row.try_get::<Option<String>, _>(column)?.map(Cow::Owned))
        };
        Ok(SessionRecord {
            id: row.try_get("id")?,
            kind: text("kind")?,
            status: text("status")?,
            reason: optional("reason")?,
            customer_id: row.try_get("customer_id")?,
            provider_id: row.try_get("provider_id")?,
            provider_account: row.try_get("provider_account")?,
            request_id: row.try_get("request_id")?,
            scheduled_start: row.try_get("scheduled_start")?,
            created_at: row.try_get("created_at")?,
            started_at: row.try_get("started_at")?,
            ended_at: row.try_get("ended_at")?,
            ended_by: optional("ended_by")?,
            billable_seconds: row.try_get("billable_seconds")?,
            price_mode: text("price_mode")?,
            price_amount_cents: row.try_get("price_amount_cents")?,
            currency: row.try_get("currency")?,
            charged_cents: row.try_get("charged_cents")?,
            metadata: optional("metadata")?,
            customer_last_seen_at: row.try_get("customer_last_seen_at")?,
            provider_last_seen_at: row.try_get("provider_last_seen_at")?,
            room: row.try_get("room")?,
            customer_identity: row.try_get("customer_identity")?,
            provider_identity: row.try_get("provider_identity")?,
            finalizes_at: row.try_get("finalizes_at")?,
            finalized_at: row.try_get("finalized_at")?,
            policy: None,
        })
    }

    fn into_session(self) -> Result<Session, StoreError> {
        Ok(Session {
            kind: parse::<Kind>(&self.kind)?,
            status: parse::<Status>(&self.status)?,
            reason: parse_optional::<Reason>(self.reason.as_deref())?,
            customer_id: self.customer_id,
            provider_id: self.provider_id,
            provider_account: self.provider_account,
            request_id: self.request_id,
            scheduled_start: self.scheduled_start.map(UnixMillis),
            created_at: UnixMillis(self.created_at),
            started_at: self.started_at.map(UnixMillis),
            ended_at: self.ended_at.map(UnixMillis),
            ended_by: parse_optional::<Role>(self.ended_by.as_deref())?,
            billable_seconds: self.billable_seconds,
            price: Price {
                mode: PriceMode::parse(&self.price_mode).ok_or_else(|| {
                    StoreError::Corrupt(format!("price_mode {:?}", self.price_mode))
                })?,
                amount: Cents(self.price_amount_cents),
                currency: self.currency,
            },
            charged_cents: self.charged_cents.map(Cents),
            metadata: self
                .metadata
                .map(|text| serde_json::from_str(&text))
                .transpose()
                .map_err(|error| StoreError::Corrupt(format!("metadata: {error}")))?,
            customer_last_seen_at: self.customer_last_seen_at.map(UnixMillis),
            provider_last_seen_at: self.provider_last_seen_at.map(UnixMillis),
            room: match (self.room, self.customer_identity, self.provider_identity) {
                (Some(room), Some(customer_identity), Some(provider_identity)) => {
                    Some(PlatformRoom { room, customer_identity, provider_identity })
                }
                _ => None,
            },
            finalizes_at: self.finalizes_at.map(UnixMillis),
            finalized_at: self.finalized_at.map(UnixMillis),
            id: self.id,
        })
    }
}

fn policy_from_json(text: &str) -> Result<Policy, StoreError> {
    let value: Value = serde_json::from_str(text)
        .map_err(|error| StoreError::Corrupt(format!("stored policy: {error}")))?;
    crate::policy_from_value(&value)
}

fn outcome_json(outcome: &Outcome) -> Value {
    json!({
        "status": outcome.status.as_str(),
        "reason": outcome.reason.as_str(),
        "billable_seconds": outcome.billable_seconds,
        "started_at": outcome.started_at.map(|at| at.0),
        "ended_at": outcome.ended_at.0,
    })
}

fn session_from_row(row: &DbRow) -> Result<Session, StoreError> {
    SessionRecord::from_row(row)?.into_session()
}

fn price_from_row(row: &DbRow) -> Result<Price, StoreError> {
    let mode: String = row.try_get("price_mode")?;
    Ok(Price {
        mode: PriceMode::parse(&mode)
            .ok_or_else(|| StoreError::Corrupt(format!("price_mode {mode:?}")))?,
        amount: Cents(row.try_get("price_amount_cents")?),
        currency: row.try_get("currency")?,
    })
}

fn request_from_row(row: &DbRow) -> Result<Request, StoreError> {
    let status: String = row.try_get("status")?;
    let candidates: String = row.try_get("candidate_provider_ids")?;
    Ok(Request {
        id: row.try_get("id")?,
        customer_id: row.try_get("customer_id")?,
        kind: parse(row.try_get("kind")?)?,
        price: price_from_row(row)?,
        candidate_provider_ids: serde_json::from_str(&candidates)
            .map_err(|error| StoreError::Corrupt(format!("candidates: {error}")))?,
        status: RequestStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("request status {status:?}")))?,
        session_id: row.try_get("session_id")?,
        created_at: UnixMillis(row.try_get("created_at")?),
        updated_at: UnixMillis(row.try_get("updated_at")?),
    })
}

fn payout_from_row(row: &DbRow) -> Result<Payout, StoreError> {
    let state: String = row.try_get("state")?;
    let provider: String = row.try_get("provider")?;
    Ok(Payout {
        id: row.try_get("id")?,
        session_id: row.try_get("session_id")?,
        provider_id: row.try_get("provider_id")?,
        destination: row.try_get("destination")?,
        amount: Cents(row.try_get("amount_cents")?),
        currency: row.try_get("currency")?,
        state: PayoutState::parse(&state)
            .ok_or_else(|| StoreError::Corrupt(format!("payout state {state:?}")))?,
        provider: PayoutProvider::parse(&provider)
            .ok_or_else(|| StoreError::Corrupt(format!("payout provider {provider:?}")))?,
        transfer_id: row.try_get("transfer_id")?,
        failure_reason: row.try_get("failure_reason")?,
        created_at: UnixMillis(row.try_get("created_at")?),
        updated_at: UnixMillis(row.try_get("updated_at")?),
        reversed_at: row.try_get::<Option<i64>, _>("reversed_at")?.map(UnixMillis),
    })
}

fn event_from_row(row: &DbRow) -> Result<AuditEvent, StoreError> {
    let event_type: String = row.try_get("type")?;
    let data: Option<String> = row.try_get("data")?;
    Ok(AuditEvent {
        seq: row.try_get("seq")?,
        session_id: row.try_get("session_id")?,
        event_type: EventType::parse(&event_type)
            .ok_or_else(|| StoreError::Corrupt(format!("event type {event_type:?}")))?,
        party: parse_optional(row.try_get("party")?)?,
        actor: Actor { role: parse(row.try_get("actor_role")?)?, id: row.try_get("actor_id")? },
        at: UnixMillis(row.try_get("at")?),
        connection: row.try_get("connection")?,
        data: data
            .map(|text| serde_json::from_str(&text))
            .transpose()
            .map_err(|error| StoreError::Corrupt(format!("event data: {error}")))?,
    })
}

fn parse<T>(text: &str) -> Result<T, StoreError>
where
    T: std::str::FromStr<Err = verdict_core::ParseError>,
{
    text.parse().map_err(|error| StoreError::Corrupt(format!("{error}: {text:?}")))
}

fn parse_optional<T>(text: Option<&str>) -> Result<Option<T>, StoreError>
where
    T: std::str::FromStr<Err = verdict_core::ParseError>,
{
    text.map(parse).transpose()
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
