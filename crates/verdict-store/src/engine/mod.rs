//! The storage engine, written once for both databases.
//!
//! This folder is compiled as a child module of each backend (`sqlite.rs`,
//! `postgres.rs`), which supplies the items listed in `dialect.rs` (the
//! sqlx database, how a write transaction starts, how a row is locked, how
//! verification pages are read). Statements use `$n` placeholders and
//! portable SQL, so each backend runs the same text with the same meaning.
//!
//! Architecture invariant: every state change of a session first locks the
//! session row (PostgreSQL: `FOR UPDATE`; SQLite: `BEGIN IMMEDIATE` takes
//! the database write lock), so changes to one session are serialised and a
//! concurrent caller waits, then sees the first one's result.
//!
//! Layout: this file holds `Engine` and the `Store` impl, each method
//! delegating to the inherent `Engine` method of the same name in the
//! module of its transaction family:
//! - `dialect`: the backend contract, the only way to the backend's items;
//! - `rows`: column lists and row mapping;
//! - `group`: group commit of the hot path's session writes;
//! - `ends`: a group's ends, read, planned by the core and written set-wise;
//! - `setwise`: a group's rows for one table bound as one statement;
//! - `sessions`: a session's creation, presence, end and audit trail;
//! - `settle`: the money of an end (settle, finalize, correct, re-derive);
//! - `sweep`: the sweeper and the repair of one session;
//! - `requests`: requests and their assignments;
//! - `outbox`: the outbox and payouts settled by its delivery;
//! - `ledger`: postings, earnings, payouts and users read back;
//! - `pages`: verification pages and the ledger checks;
//! - `import`: import from the old system, batched or bulk;
//! - `history`: repair of imported history (open sessions, unearned money);
//! - `health`: schema version and counts;
//! - `runs`: long admin runs (imports, repairs) kept with their answers;
//! - `insight`: rates per kind and provider, threshold alerts' states.
//! - `receipts`: metadata_consistency's set-wise check, the review counts.

// First: the column macros it defines are in scope in the modules below.
#[macro_use]
mod rows;

mod dialect;
mod ends;
mod group;
mod health;
mod history;
mod import;
mod insight;
mod ledger;
mod outbox;
mod pages;
mod receipts;
mod requests;
mod runs;
mod sessions;
mod settle;
mod setwise;
mod sweep;

pub(crate) use setwise::Values;

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use serde_json::Value;
use sqlx::Pool;
use verdict_core::{EndCause, Party, SessionAudit, UnixMillis};

use self::dialect::{BACKEND, Db, MIGRATOR};
pub(crate) use self::dialect::{CopyPage, InsertedRowids};
pub(crate) use self::group::EndsRunner;
use self::group::{GROUP_MAX, Job, group_writer};
// What a backend's own runner of end groups (SQLite's writer thread) needs
// of the engine: unused by a backend without one.
#[allow(unused_imports)]
pub(crate) use self::ends::{
    EndWrite, SetStatement, Users, check_changes, end_statements, open_of, plan_group,
    presence_event,
};
#[allow(unused_imports)]
pub(crate) use self::group::GroupAnswers;
use self::import::Bulk;
#[allow(unused_imports)]
pub(crate) use self::rows::{SESSION_COLUMNS, SessionRecord};
#[allow(unused_imports)]
pub(crate) use self::setwise::Rows;
use crate::{
    Actor, Assignment, AuditCursor, AuditEvent, AuditScope, BulkImport, Correction, Created,
    EarningsTotal, Ended, Idempotency, ImportSession, Imported, NewRequest, NewSession,
    Notification, OutboxHealth, OutboxItem, OutboxOutcome, OutboxRow, Payout, PlatformDisposition,
    PlatformPresence, Posting, PresenceChange, Request, Session, Settings, Store, StoreError,
    SweepReport, User,
};
use crate::{AssignmentCursor, Limits};
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
    /// Where groups of ends only run, when the backend has such a runner
    /// (SQLite: its own thread).
    runner: Option<std::sync::Arc<dyn EndsRunner>>,
}

impl Engine {
    /// The store over `reader` and `writer`, with `groups` group-commit
    /// writers (each uses one `writer` connection while it commits).
    pub(super) fn new(
        reader: Pool<Db>,
        writer: Pool<Db>,
        availability: std::sync::Arc<tokio::sync::watch::Sender<bool>>,
        groups: usize,
        runner: Option<std::sync::Arc<dyn EndsRunner>>,
    ) -> Engine {
        let groups = (0..groups.max(1))
            .map(|_| {
                let (queue, jobs) = tokio::sync::mpsc::channel(GROUP_MAX);
                tokio::spawn(group_writer(writer.clone(), runner.clone(), jobs));
                queue
            })
            .collect();
        Engine { reader, writer, availability, groups, runner }
    }
}

// Each method runs the inherent method of the same name (`Engine::name`
// names the inherent one, never this impl's), written in the module of its
// family; see the module doc.
#[async_trait]
impl Store for Engine {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn availability(&self) -> tokio::sync::watch::Receiver<bool> {
        self.availability.subscribe()
    }

    async fn close(&self) {
        if let Some(runner) = self.runner.clone() {
            let _ = tokio::task::spawn_blocking(move || runner.close()).await;
        }
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
        Engine::create_session(self, new, actor, idempotency, now).await
    }

    async fn session(&self, id: &str) -> Result<Option<Session>, StoreError> {
        Engine::session(self, id).await
    }

    async fn record_own_presence(
        &self,
        id: &str,
        party: Party,
        change: PresenceChange,
        actor: &Actor,
        settings: &Settings,
        now: UnixMillis,
    ) -> Result<Session, StoreError> {
        Engine::record_presence(self, id, party, change, actor, settings, now).await
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
        Engine::end_session(self, id, actor, claimed, cause, settings, now).await
    }

    async fn create_request(
        &self,
        new: NewRequest,
        actor: &Actor,
        idempotency: Option<&Idempotency>,
        limits: &Limits,
        now: UnixMillis,
    ) -> Result<Created<Request>, StoreError> {
        Engine::create_request(self, new, actor, idempotency, limits, now).await
    }

    async fn cancel_request(
        &self,
        id: &str,
        actor: &Actor,
        now: UnixMillis,
    ) -> Result<Request, StoreError> {
        Engine::cancel_request(self, id, actor, now).await
    }

    async fn request(&self, id: &str) -> Result<Option<Request>, StoreError> {
        Engine::request(self, id).await
    }

    async fn accept_request(
        &self,
        request_id: &str,
        provider_id: &str,
        session_id: &str,
        actor: &Actor,
        now: UnixMillis,
    ) -> Result<Session, StoreError> {
        Engine::accept_request(self, request_id, provider_id, session_id, actor, now).await
    }

    async fn assignments(
        &self,
        provider_id: Option<&str>,
        after: Option<&AssignmentCursor>,
        limit: i64,
    ) -> Result<Vec<Assignment>, StoreError> {
        Engine::assignments(self, provider_id, after, limit).await
    }

    async fn payouts(
        &self,
        session_id: Option<&str>,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Payout>, StoreError> {
        Engine::payouts(self, session_id, after, limit).await
    }

    async fn earnings(&self, provider_id: &str) -> Result<Vec<EarningsTotal>, StoreError> {
        Engine::earnings(self, provider_id).await
    }

    async fn postings(&self, session_id: &str) -> Result<Vec<Posting>, StoreError> {
        Engine::postings(self, session_id).await
    }

    async fn upsert_user(&self, user: User) -> Result<User, StoreError> {
        Engine::upsert_user(self, user).await
    }

    async fn claim_outbox(
        &self,
        owner: &str,
        limit: i64,
        lease_until: UnixMillis,
        now: UnixMillis,
    ) -> Result<Vec<OutboxItem>, StoreError> {
        Engine::claim_outbox(self, owner, limit, lease_until, now).await
    }

    async fn finish_outbox(
        &self,
        id: i64,
        owner: &str,
        outcome: OutboxOutcome,
        now: UnixMillis,
    ) -> Result<bool, StoreError> {
        Engine::finish_outbox(self, id, owner, outcome, now).await
    }

    async fn release_outbox(&self, owner: &str) -> Result<u64, StoreError> {
        Engine::release_outbox(self, owner).await
    }

    async fn outbox(
        &self,
        state: Option<&str>,
        session_id: Option<&str>,
        limit: i64,
    ) -> Result<Vec<OutboxRow>, StoreError> {
        Engine::outbox(self, state, session_id, limit).await
    }

    async fn payout(&self, id: &str) -> Result<Option<Payout>, StoreError> {
        Engine::payout(self, id).await
    }

    async fn sweep(
        &self,
        settings: &Settings,
        now: UnixMillis,
        limit: i64,
    ) -> Result<SweepReport, StoreError> {
        Engine::sweep(self, settings, now, limit).await
    }

    async fn record_platform_presence(
        &self,
        event: PlatformPresence,
        settings: &Settings,
        now: UnixMillis,
    ) -> Result<(PlatformDisposition, Option<Session>), StoreError> {
        Engine::record_platform_presence(self, event, settings, now).await
    }

    async fn audits(
        &self,
        scope: AuditScope,
        after: Option<&AuditCursor>,
        through: Option<&AuditCursor>,
        limit: i64,
    ) -> Result<Vec<(Session, SessionAudit)>, StoreError> {
        Engine::audits(self, scope, after, through, limit).await
    }

    async fn ledger_imbalance(&self, sample: usize) -> Result<(i64, Vec<String>), StoreError> {
        Engine::ledger_imbalance(self, sample).await
    }

    async fn unbalanced_postings(
        &self,
        session_ids: &[String],
    ) -> Result<HashMap<String, Vec<i64>>, StoreError> {
        Engine::unbalanced_postings(self, session_ids).await
    }

    async fn audit_page_end(
        &self,
        scope: AuditScope,
        after: Option<&AuditCursor>,
        limit: i64,
    ) -> Result<Option<AuditCursor>, StoreError> {
        Engine::audit_page_end(self, scope, after, limit).await
    }

    fn expected_schema_version(&self) -> i64 {
        MIGRATOR.iter().map(|migration| migration.version).max().unwrap_or(0)
    }

    async fn schema_version(&self) -> Result<i64, StoreError> {
        Engine::schema_version(self).await
    }

    async fn outbox_health(&self, overdue_before: UnixMillis) -> Result<OutboxHealth, StoreError> {
        Engine::outbox_health(self, overdue_before).await
    }

    async fn ended_by_status(
        &self,
        since: UnixMillis,
    ) -> Result<BTreeMap<String, i64>, StoreError> {
        Engine::ended_by_status(self, since).await
    }

    async fn import_sessions(
        &self,
        sessions: Vec<ImportSession>,
        run: &str,
        now: UnixMillis,
    ) -> Result<Vec<Imported>, StoreError> {
        Engine::import_sessions(self, sessions, run, now).await
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
        Engine::correct_session(self, id, settings, now).await
    }

    async fn events(&self, id: &str) -> Result<Vec<AuditEvent>, StoreError> {
        Engine::events(self, id).await
    }

    async fn events_page(
        &self,
        id: &str,
        after: Option<i64>,
        limit: i64,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        Engine::events_page(self, id, after, limit).await
    }

    async fn notifications(
        &self,
        role: Party,
        recipient_id: &str,
        after: Option<i64>,
        limit: i64,
    ) -> Result<Vec<Notification>, StoreError> {
        Engine::notifications(self, role, recipient_id, after, limit).await
    }

    async fn table_counts(&self) -> Result<BTreeMap<&'static str, i64>, StoreError> {
        Engine::table_counts(self).await
    }

    async fn paid_after_reversal(&self, sample: usize) -> Result<(i64, Vec<String>), StoreError> {
        Engine::paid_after_reversal(self, sample).await
    }

    async fn open_imported(
        &self,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<String>, StoreError> {
        Engine::open_imported(self, after, limit).await
    }

    async fn end_imported(
        &self,
        id: &str,
        settings: &Settings,
        now: UnixMillis,
        apply: bool,
    ) -> Result<Option<Correction>, StoreError> {
        Engine::end_imported(self, id, settings, now, apply).await
    }

    async fn retry_payout(&self, id: &str, now: UnixMillis) -> Result<Payout, StoreError> {
        Engine::retry_payout(self, id, now).await
    }

    async fn configuration_faults(&self, sample: usize) -> Result<(i64, Vec<String>), StoreError> {
        Engine::configuration_faults(self, sample).await
    }

    async fn save_admin_run(&self, run: &crate::AdminRun) -> Result<(), StoreError> {
        Engine::save_admin_run(self, run).await
    }

    async fn admin_run(&self, kind: &str, id: &str) -> Result<Option<crate::AdminRun>, StoreError> {
        Engine::admin_run(self, kind, id).await
    }

    async fn admin_runs(&self, kind: &str, limit: i64) -> Result<Vec<crate::AdminRun>, StoreError> {
        Engine::admin_runs(self, kind, limit).await
    }

    async fn scope_counts(
        &self,
        since: UnixMillis,
        until: UnixMillis,
        min_sessions: i64,
        providers_max: i64,
    ) -> Result<Vec<(crate::insight::Scope, crate::insight::Counts)>, StoreError> {
        Engine::scope_counts(self, since, until, min_sessions, providers_max).await
    }

    async fn provider_stats(
        &self,
        provider_id: &str,
        since: UnixMillis,
        until: UnixMillis,
    ) -> Result<crate::insight::ProviderStats, StoreError> {
        Engine::provider_stats(self, provider_id, since, until).await
    }

    async fn provider_ranking(
        &self,
        since: UnixMillis,
        until: UnixMillis,
        sort: crate::insight::ProviderSort,
        min_sessions: i64,
        limit: i64,
    ) -> Result<Vec<(String, crate::insight::Counts)>, StoreError> {
        Engine::provider_ranking(self, since, until, sort, min_sessions, limit).await
    }

    async fn record_alert_states(
        &self,
        raised: &[crate::insight::ThresholdAlert],
        now: UnixMillis,
    ) -> Result<Vec<crate::insight::Transition>, StoreError> {
        Engine::record_alert_states(self, raised, now).await
    }

    async fn receipt_faults(
        &self,
        range: crate::consistency::FaultRange<'_>,
        limit: i64,
    ) -> Result<crate::consistency::FaultBatch, StoreError> {
        Engine::receipt_faults(self, range, limit).await
    }

    async fn save_review_counts(
        &self,
        counts: &[crate::consistency::ReviewCount],
        as_of: UnixMillis,
    ) -> Result<(), StoreError> {
        Engine::save_review_counts(self, counts, as_of).await
    }

    async fn review_counts(
        &self,
    ) -> Result<Option<(UnixMillis, Vec<crate::consistency::ReviewCount>)>, StoreError> {
        Engine::review_counts(self).await
    }
}
