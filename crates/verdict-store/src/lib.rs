//! Storage for verdict: one [`Store`] trait whose methods match
//! transactions, not tables, and the backends that implement it.
//!
//! The backend code is written once (`engine/`) against a database type
//! and a few dialect macros chosen by the backend module that includes it, so
//! both databases run the same statements with the same semantics.

mod audit;
pub mod clock;
pub mod consistency;
mod copy_binary;
mod error;
pub mod insight;
mod model;
pub mod monitor;
mod postgres;
mod sqlite;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;
use verdict_core::{EndCause, Party, PolicySet, UnixMillis};

pub use audit::assemble_audit;
pub use error::StoreError;
pub use model::AdminRun;
pub use model::CONFIGURATION_FAULT;
pub use model::{
    Actor, Assignment, AuditCursor, AuditEvent, AuditScope, Correction, Created, EarningsTotal,
    Ended, EventType, FINALIZE_AFTER_SECONDS, Idempotency, ImportSession, Imported, LedgerLine,
    NewRequest, NewSession, Notification, OutboxHealth, OutboxItem, OutboxOutcome, OutboxRow,
    Payout, PayoutProvider, PayoutState, PlatformDisposition, PlatformPresence, PlatformRoom,
    Posting, PresenceChange, Request, RequestStatus, Session, Settings, SweepReport, User,
    accounts,
};
pub use model::{AssignmentCursor, Limits, PresenceSource, PresenceSources};
pub use postgres::PgStore;
pub use sqlite::SqliteStore;

/// The page size cap of every list.
pub const PAGE_LIMIT_MAX: i64 = 500;

/// An open bulk load (see [`Store::bulk_import`]).
#[async_trait]
pub trait BulkImport: Send {
    /// Decides a batch and builds its statements on the caller's task, then
    /// queues it for the load's writer and returns: the caller prepares its
    /// next batch while this one is stored. Waits while a batch is queued
    /// already (beside the one being stored). Batches are stored in the
    /// order added, each as [`Store::import_sessions`] would, inside the
    /// load's transaction: an id added by an earlier batch of the same
    /// `run` is [`Imported::EarlierInRun`]. After a batch failed, the load
    /// is spoiled: later batches and the commit fail.
    async fn add(
        &mut self,
        sessions: Vec<ImportSession>,
        run: &str,
        now: UnixMillis,
    ) -> Result<QueuedBatch, StoreError>;

    /// Stores what is queued, builds what was deferred, and commits
    /// everything added.
    async fn commit(self: Box<Self>) -> Result<(), StoreError>;
}

/// A batch queued in a bulk load (see [`BulkImport::add`]).
pub struct QueuedBatch(tokio::sync::oneshot::Receiver<Result<Vec<Imported>, StoreError>>);

impl QueuedBatch {
    /// What became of each session of the batch, once it is stored.
    pub async fn outcomes(self) -> Result<Vec<Imported>, StoreError> {
        self.0.await.map_err(|_| {
            StoreError::Internal("the bulk load stopped before storing the batch".to_owned())
        })?
    }
}

/// Everything verdict keeps. Each method is one transaction, but for
/// [`Store::bulk_import`], whose load spans calls.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// `sqlite` or `postgres`.
    fn backend(&self) -> &'static str;

    /// Whether the database is reachable, kept current by a probe: the
    /// HTTP layer answers 503 at once while it is false, and releases
    /// requests waiting on the database when it turns false.
    fn availability(&self) -> tokio::sync::watch::Receiver<bool>;

    /// Is the database reachable and answering?
    async fn ping(&self) -> Result<(), StoreError>;

    /// Stops the store: waits for the write in progress (a group commit
    /// among them) to finish, then refuses every later one. For a clean
    /// shutdown, and for tests that stop a store as a crash would.
    async fn close(&self);

    /// Creates a session in `waiting`, with its `created` audit event.
    /// A duplicate id is a conflict. With an idempotency key, a repeat with
    /// the same body returns the first session (`replayed`), another body
    /// is `Unprocessable`.
    async fn create_session(
        &self,
        new: NewSession,
        actor: &Actor,
        idempotency: Option<&Idempotency>,
        now: UnixMillis,
    ) -> Result<Created<Session>, StoreError>;

    async fn session(&self, id: &str) -> Result<Option<Session>, StoreError>;

    /// Records a join, leave or heartbeat of `party` under the default
    /// [`Limits`]: [`Store::record_own_presence`] with `policies`.
    async fn record_presence(
        &self,
        id: &str,
        party: Party,
        change: PresenceChange,
        actor: &Actor,
        policies: &PolicySet,
        now: UnixMillis,
    ) -> Result<Session, StoreError> {
        let settings = Settings { policies: *policies, ..Settings::default() };
        self.record_own_presence(id, party, change, actor, &settings, now).await
    }

    /// Records a join, leave or heartbeat of `party`. Conflict when the
    /// session is terminal (nothing is written then). A join that makes both
    /// parties present for the first time starts the session. A join (a
    /// heartbeat reconnecting after a lapse is one) when the party already
    /// has `limits.max_presence_events_per_session` joins and leaves of its
    /// own is `LimitReached` and writes nothing; a leave is never refused.
    async fn record_own_presence(
        &self,
        id: &str,
        party: Party,
        change: PresenceChange,
        actor: &Actor,
        settings: &Settings,
        now: UnixMillis,
    ) -> Result<Session, StoreError>;

    /// Records a participant's join or leave reported by a video platform,
    /// once per platform event id, at the platform's instant (whatever the
    /// order of arrival). On an open session it is presence like any other
    /// (a first overlap starts the session). On an ended session an event
    /// from before the end re-decides the outcome while the finalization
    /// window lasts (audited as a correction; the money waits for the
    /// window to close), and after it is kept apart, flagged for review
    /// when it would have changed the outcome.
    async fn record_platform_presence(
        &self,
        event: PlatformPresence,
        settings: &Settings,
        now: UnixMillis,
    ) -> Result<(PlatformDisposition, Option<Session>), StoreError>;

    /// Decides and settles the session in one transaction (docs/settlement.md): the
    /// row, the `ended` audit event (actor, claimed body, policy), a
    /// notification per party, the request's status, the queue, outbox rows
    /// (webhook, e-mails) and, when completed, the ledger posting, the payout
    /// and its outbox row. A terminal session is returned unchanged with
    /// `already_ended`. Concurrent callers wait for the first.
    async fn end_session(
        &self,
        id: &str,
        actor: &Actor,
        claimed: Option<Value>,
        cause: EndCause,
        settings: &Settings,
        now: UnixMillis,
    ) -> Result<Ended, StoreError>;

    /// Ends sessions nobody ended (docs/presence.md): looks at up to `limit`
    /// candidates, each in its own transaction under its row lock, and ends
    /// those [`verdict_core::sweep_due`] says are due, as actor `system`,
    /// with the full settlement. Safe to run in several processes at once.
    async fn sweep(
        &self,
        settings: &Settings,
        now: UnixMillis,
        limit: i64,
    ) -> Result<SweepReport, StoreError>;

    /// The session's audit trail, oldest first.
    async fn events(&self, id: &str) -> Result<Vec<AuditEvent>, StoreError>;

    /// A page of the session's audit trail, oldest first: at most `limit`
    /// events whose `seq` is after `after`.
    async fn events_page(
        &self,
        id: &str,
        after: Option<i64>,
        limit: i64,
    ) -> Result<Vec<AuditEvent>, StoreError>;

    /// A recipient's notifications, oldest first, after the cursor `after`.
    async fn notifications(
        &self,
        role: Party,
        recipient_id: &str,
        after: Option<i64>,
        limit: i64,
    ) -> Result<Vec<Notification>, StoreError>;

    /// Creates a `pending` request and one assignment per candidate.
    /// `LimitReached` (nothing written) when its customer already has
    /// `limits.max_open_requests_per_customer` pending requests; concurrent
    /// creations for one customer count each other.
    async fn create_request(
        &self,
        new: NewRequest,
        actor: &Actor,
        idempotency: Option<&Idempotency>,
        limits: &Limits,
        now: UnixMillis,
    ) -> Result<Created<Request>, StoreError>;

    /// Cancels a `pending` request and removes its assignments; a request
    /// already cancelled is returned as it is. Conflict in any other status.
    async fn cancel_request(
        &self,
        id: &str,
        actor: &Actor,
        now: UnixMillis,
    ) -> Result<Request, StoreError>;

    async fn request(&self, id: &str) -> Result<Option<Request>, StoreError>;

    /// A candidate takes the request: a `waiting` session with id
    /// `session_id` is created, the request becomes `matched`, the other
    /// candidates' assignments are removed. Conflict unless the request is
    /// `pending` and still assigned to `provider_id`; of concurrent accepts
    /// exactly one wins.
    async fn accept_request(
        &self,
        request_id: &str,
        provider_id: &str,
        session_id: &str,
        actor: &Actor,
        now: UnixMillis,
    ) -> Result<Session, StoreError>;

    /// Open assignments, oldest first: one provider's, or everyone's;
    /// at most `limit` of them after `after`.
    async fn assignments(
        &self,
        provider_id: Option<&str>,
        after: Option<&AssignmentCursor>,
        limit: i64,
    ) -> Result<Vec<Assignment>, StoreError>;

    /// Payouts, oldest first: one session's, or all (paged by `after` id).
    async fn payouts(
        &self,
        session_id: Option<&str>,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Payout>, StoreError>;

    /// A provider's ledger and payout totals per currency.
    async fn earnings(&self, provider_id: &str) -> Result<Vec<EarningsTotal>, StoreError>;

    /// A session's ledger postings with their lines.
    async fn postings(&self, session_id: &str) -> Result<Vec<Posting>, StoreError>;

    /// Creates or updates a marketplace user; `None` fields are kept.
    async fn upsert_user(&self, user: User) -> Result<User, StoreError>;

    /// Leases up to `limit` due outbox rows to `owner` until `lease_until`.
    /// Only the oldest pending row of a session's channel is claimable, so
    /// each session's deliveries go out in order; rows leased to a live
    /// worker are skipped (PostgreSQL: `FOR UPDATE SKIP LOCKED`; SQLite: the
    /// claim runs in one write transaction).
    async fn claim_outbox(
        &self,
        owner: &str,
        limit: i64,
        lease_until: UnixMillis,
        now: UnixMillis,
    ) -> Result<Vec<OutboxItem>, StoreError>;

    /// Records the outcome of a delivery, in one transaction with its
    /// effects (the payout's state and its webhook). False when `owner` no
    /// longer holds the lease: nothing is written then.
    async fn finish_outbox(
        &self,
        id: i64,
        owner: &str,
        outcome: OutboxOutcome,
        now: UnixMillis,
    ) -> Result<bool, StoreError>;

    /// Gives back every lease `owner` holds (graceful shutdown).
    async fn release_outbox(&self, owner: &str) -> Result<u64, StoreError>;

    /// Outbox rows for operators, newest first, optionally in one state.
    async fn outbox(
        &self,
        state: Option<&str>,
        session_id: Option<&str>,
        limit: i64,
    ) -> Result<Vec<OutboxRow>, StoreError>;

    async fn payout(&self, id: &str) -> Result<Option<Payout>, StoreError>;

    /// A page of sessions with everything verification needs, after
    /// `after` (keyset paging: memory stays flat on any volume): every
    /// session up to `through` when it is given (so that a session created
    /// after a scan read its page ends is not skipped), else at most
    /// `limit`. `All` and `Open` are in id order, the windowed scopes in end
    /// order.
    ///
    /// `All` pages leave `posting_sums` empty: a scan of everything checks
    /// the ledger in one pass (`ledger_imbalance`), and a partial scan asks
    /// for its sessions' sums (`unbalanced_postings`). Per page, the ledger
    /// check was a fifth of PostgreSQL verification's time.
    async fn audits(
        &self,
        scope: AuditScope,
        after: Option<&AuditCursor>,
        through: Option<&AuditCursor>,
        limit: i64,
    ) -> Result<Vec<(Session, verdict_core::SessionAudit)>, StoreError>;

    /// Sessions with a ledger posting whose lines do not sum to zero, over
    /// the whole ledger in one pass: how many, and the first `sample` of
    /// them in id order. One read of its own, beside a scan's pages: on a
    /// live database it may see postings newer than the scan's sessions.
    async fn ledger_imbalance(&self, sample: usize) -> Result<(i64, Vec<String>), StoreError>;

    /// The sums of the postings of `session_ids` whose lines do not sum to
    /// zero, by session (sessions whose postings balance are left out).
    async fn unbalanced_postings(
        &self,
        session_ids: &[String],
    ) -> Result<std::collections::HashMap<String, Vec<i64>>, StoreError>;

    /// The last session of the page `audits(scope, after, None, limit)`
    /// would return, if that page is full: lets a scan start the next pages
    /// before this one has been read.
    async fn audit_page_end(
        &self,
        scope: AuditScope,
        after: Option<&AuditCursor>,
        limit: i64,
    ) -> Result<Option<AuditCursor>, StoreError>;

    /// The migration this binary expects (its latest embedded one).
    fn expected_schema_version(&self) -> i64;

    /// The latest applied migration.
    async fn schema_version(&self) -> Result<i64, StoreError>;

    /// Dead rows, and pending rows due before `overdue_before`.
    async fn outbox_health(&self, overdue_before: UnixMillis) -> Result<OutboxHealth, StoreError>;

    /// Sessions ended since `since`, by status.
    async fn ended_by_status(&self, since: UnixMillis)
    -> Result<BTreeMap<String, i64>, StoreError>;

    /// Stores historical sessions as recorded, in one transaction, marked
    /// with the import `run`; returns what became of each (an existing id is
    /// left untouched). Ids must be distinct within one call.
    async fn import_sessions(
        &self,
        sessions: Vec<ImportSession>,
        run: &str,
        now: UnixMillis,
    ) -> Result<Vec<Imported>, StoreError>;

    /// A bulk load: every batch added goes into one transaction, which
    /// [`BulkImport::commit`] commits (dropped uncommitted, it stores
    /// nothing). It holds the write lock until then, so it is for a first
    /// load, not a database serving traffic. On SQLite the indexes whose
    /// keys an import writes in random order are dropped inside the
    /// transaction and built once before it commits: no reader ever sees
    /// the tables without them.
    async fn bulk_import(&self) -> Result<Box<dyn BulkImport>, StoreError>;

    /// Re-derives one terminal session under its lock and, if the recorded
    /// outcome differs, corrects it with its audit event, notifications,
    /// ledger posting and payout (newly completed) or reversal (wrongly
    /// paid). `None` when nothing needs correcting: idempotent.
    async fn correct_session(
        &self,
        id: &str,
        settings: &Settings,
        now: UnixMillis,
    ) -> Result<Option<Correction>, StoreError>;

    /// Row counts per table: a cheap fingerprint for checks and tests.
    async fn table_counts(&self) -> Result<BTreeMap<&'static str, i64>, StoreError>;

    /// Payouts paid after their reversal whose transfer Stripe has not
    /// reversed: how many, and the first `sample` of their sessions.
    async fn paid_after_reversal(&self, sample: usize) -> Result<(i64, Vec<String>), StoreError>;

    /// Imported sessions still `live` or `waiting`, by id after `after`.
    async fn open_imported(
        &self,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<String>, StoreError>;

    /// Ends an imported session still `live` or `waiting` as its history
    /// says, with its money and a `corrected` event, no receipts or
    /// webhooks (`apply` false: plans only). `None` when it is not one.
    async fn end_imported(
        &self,
        id: &str,
        settings: &Settings,
        now: UnixMillis,
        apply: bool,
    ) -> Result<Option<Correction>, StoreError>;

    /// Queues again a payout that is `failed` or whose delivery is `dead`:
    /// pending again, its delivery due now and told to look its transfer
    /// up at Stripe before any new idempotency key. `Conflict` for a payout
    /// paid, reversed, or still being delivered.
    async fn retry_payout(&self, id: &str, now: UnixMillis) -> Result<Payout, StoreError>;

    /// Payout deliveries waiting on a configuration fault
    /// ([`CONFIGURATION_FAULT`]): how many, and a sample of their sessions.
    async fn configuration_faults(&self, sample: usize) -> Result<(i64, Vec<String>), StoreError>;

    /// Keeps a long admin run: stored as it starts, replaced as it ends.
    async fn save_admin_run(&self, run: &AdminRun) -> Result<(), StoreError>;

    /// One run of `kind` (`import` or `repair`).
    async fn admin_run(&self, kind: &str, id: &str) -> Result<Option<AdminRun>, StoreError>;

    /// The latest runs of `kind`, newest first.
    async fn admin_runs(&self, kind: &str, limit: i64) -> Result<Vec<AdminRun>, StoreError>;

    /// Sessions ended in `[since, until]` counted per kind (every kind
    /// with one), then per provider with at least `min_sessions` of them
    /// (at most `providers_max`, the busiest first): two grouped reads.
    async fn scope_counts(
        &self,
        since: UnixMillis,
        until: UnixMillis,
        min_sessions: i64,
        providers_max: i64,
    ) -> Result<Vec<(insight::Scope, insight::Counts)>, StoreError>;

    /// One provider's sessions ended in `[since, until]`, and what their
    /// ledger postings charged and earned, per currency.
    async fn provider_stats(
        &self,
        provider_id: &str,
        since: UnixMillis,
        until: UnixMillis,
    ) -> Result<insight::ProviderStats, StoreError>;

    /// Providers with at least `min_sessions` sessions ended in
    /// `[since, until]`, the worst by `sort` first, at most `limit`.
    async fn provider_ranking(
        &self,
        since: UnixMillis,
        until: UnixMillis,
        sort: insight::ProviderSort,
        min_sessions: i64,
        limit: i64,
    ) -> Result<Vec<(String, insight::Counts)>, StoreError>;

    /// Records which threshold alerts are raised now (`raised`; every
    /// other raised one is resolved), in one transaction: each change is a
    /// conditional update, and queues its `alert.raised` or
    /// `alert.resolved` webhook only if it took. Evaluations at once (any
    /// number of workers) announce each change once.
    async fn record_alert_states(
        &self,
        raised: &[insight::ThresholdAlert],
        now: UnixMillis,
    ) -> Result<Vec<insight::Transition>, StoreError>;

    /// Judges the receipts of up to `limit` sessions verdict ended itself
    /// in `range`, in id order, in one statement (`metadata_consistency`,
    /// see [`consistency`]): those not whole, the last one judged when
    /// `limit` were, and the range's late platform presence when asked.
    async fn receipt_faults(
        &self,
        range: consistency::FaultRange<'_>,
        limit: i64,
    ) -> Result<consistency::FaultBatch, StoreError>;

    /// Replaces the review queue's counts with those of a full pass made
    /// at `as_of`.
    async fn save_review_counts(
        &self,
        counts: &[consistency::ReviewCount],
        as_of: UnixMillis,
    ) -> Result<(), StoreError>;

    /// The review queue's counts of the most recent full pass, and its
    /// instant; `None` before any.
    async fn review_counts(
        &self,
    ) -> Result<Option<(UnixMillis, Vec<consistency::ReviewCount>)>, StoreError>;
}

/// Opens (creating if needed) and migrates the database named by `url`.
pub async fn open(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::open(url).await?))
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        Ok(Arc::new(PgStore::connect(url).await?))
    } else {
        Err(StoreError::Unavailable(format!(
            "unsupported database url scheme (expected sqlite:// or postgres://): {}",
            redact_url(url)
        )))
    }
}

/// What can be known of a database URL without opening it: a scheme a
/// backend serves, a PostgreSQL URL that parses, TLS files that can be
/// read. An error is the operator's to fix (a configuration error).
pub fn check_url(url: &str) -> Result<(), String> {
    if url.starts_with("sqlite:") {
        Ok(())
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        postgres::check_url(url)
    } else {
        Err(format!("expected sqlite://… or postgres://…, got {}", redact_url(url)))
    }
}

/// A database URL fit for logs: the password replaced.
pub fn redact_url(url: &str) -> String {
    let (address, query) = match url.split_once('?') {
        Some((address, query)) => (address, Some(query)),
        None => (url, None),
    };
    let mut redacted = match (address.find("://"), address.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let credentials = &address[scheme_end + 3..at];
            match credentials.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &address[..scheme_end + 3],
                    &credentials[..colon],
                    &address[at..]
                ),
                None => address.to_owned(),
            }
        }
        _ => address.to_owned(),
    };
    if let Some(query) = query {
        // `?password=` (and `sslpassword=`) carry the secret as well as
        // the user-info does.
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _))
                    if key.to_ascii_lowercase().ends_with("password")
                        || matches!(key, "sslkey" | "ssl-key") =>
                {
                    format!("{key}=***")
                }
                _ => pair.to_owned(),
            })
            .collect();
        redacted.push('?');
        redacted.push_str(&pairs.join("&"));
    }
    redacted
}

/// A policy as stored with a decision (the `policy` of an `ended` event and
/// of the session row): JSON with every field of [`verdict_core::Policy`].
pub fn policy_from_value(value: &serde_json::Value) -> Result<verdict_core::Policy, StoreError> {
    let number = |name: &str| {
        value[name]
            .as_i64()
            .ok_or_else(|| StoreError::Corrupt(format!("stored policy lacks {name}")))
    };
    Ok(verdict_core::Policy {
        min_billable_seconds: number("min_billable_seconds")?,
        billing_basis: value["billing_basis"]
            .as_str()
            .and_then(verdict_core::BillingBasis::parse)
            .ok_or_else(|| StoreError::Corrupt("stored policy billing_basis".into()))?,
        join_grace_seconds: number("join_grace_seconds")?,
        abandon_after_seconds: number("abandon_after_seconds")?,
        max_duration_seconds: number("max_duration_seconds")?,
        presence_timeout_seconds: number("presence_timeout_seconds")?,
        // Decisions made before reconnect merging existed had none.
        reconnect_grace_seconds: value["reconnect_grace_seconds"].as_i64().unwrap_or(0),
        platform_fee_bps: number("platform_fee_bps")?,
    })
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_never_reach_logs() {
        assert_eq!(
            redact_url("postgres://h/db?sslmode=verify-full&sslkey=-----BEGIN%20KEY"),
            "postgres://h/db?sslmode=verify-full&sslkey=***"
        );
        assert_eq!(redact_url("postgres://u:secret@h:5432/db"), "postgres://u:***@h:5432/db");
        assert_eq!(
            redact_url("postgres://h/db?user=u&password=secret&sslmode=require"),
            "postgres://h/db?user=u&password=***&sslmode=require"
        );
        assert_eq!(
            redact_url("postgres://u:a@h/db?sslpassword=key-secret&Password=x"),
            "postgres://u:***@h/db?sslpassword=***&Password=***"
        );
        assert_eq!(
            redact_url(
                "postgres://u:pw@db.example:5432/verdict?sslmode=verify-full&sslrootcert=/etc/verdict/ca%20bundle.pem"
            ),
            "postgres://u:***@db.example:5432/verdict?sslmode=verify-full&sslrootcert=/etc/verdict/ca%20bundle.pem",
            "the TLS settings reach the log as written"
        );
        assert_eq!(
            redact_url("sqlite://verdict-data/verdict.db"),
            "sqlite://verdict-data/verdict.db"
        );
    }
}
