//! What the store reads and writes, in core types. These are not wire types:
//! the HTTP layer owns field names and formats.

use serde_json::Value;
use verdict_core::{
    Cents, Connection, Kind, Outcome, Party, PolicySet, Price, Reason, Role, SessionFacts, Status,
    UnixMillis,
};

/// Who did something: a token's role and subject, or the system.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Actor {
    pub role: Role,
    pub id: String,
}

impl Actor {
    pub fn system() -> Actor {
        Actor { role: Role::System, id: "verdict".to_owned() }
    }
}

/// A session to create. The caller has validated every field and chosen the
/// id (UUIDv7 when the client gave none).
#[derive(Clone, Debug)]
pub struct NewSession {
    pub id: String,
    pub kind: Kind,
    pub customer_id: String,
    pub provider_id: String,
    pub provider_account: Option<String>,
    pub scheduled_start: Option<UnixMillis>,
    pub price: Price,
    pub request_id: Option<String>,
    pub metadata: Option<Value>,
    /// Where the session meets on the video platform, and the two parties'
    /// identities there: how platform presence finds it.
    pub room: Option<PlatformRoom>,
}

/// A session's room on the video platform and who is who in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlatformRoom {
    pub room: String,
    pub customer_identity: String,
    pub provider_identity: String,
    /// Whose word on presence counts, fixed at creation.
    pub presence_source: PresenceSource,
}

/// Whose presence counts for a session with a room (policy
/// `presence_source`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PresenceSource {
    /// Only the platform's webhooks: the parties' own join, leave and
    /// heartbeat calls are refused (the platform is the authority).
    #[default]
    Platform,
    /// The union of the platform's events and the parties' own calls (a
    /// session without a room, or with a room created before this policy).
    Any,
}

impl PresenceSource {
    pub fn as_str(self) -> &'static str {
        match self {
            PresenceSource::Platform => "platform",
            PresenceSource::Any => "any",
        }
    }

    pub fn parse(text: &str) -> Option<PresenceSource> {
        match text {
            "platform" => Some(PresenceSource::Platform),
            "any" => Some(PresenceSource::Any),
            _ => None,
        }
    }
}

/// The `presence_source` policy per kind, for sessions created with a room.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PresenceSources {
    pub video: PresenceSource,
    pub chat: PresenceSource,
    pub diagnostic: PresenceSource,
}

impl PresenceSources {
    pub fn for_kind(&self, kind: verdict_core::Kind) -> PresenceSource {
        match kind {
            verdict_core::Kind::Video => self.video,
            verdict_core::Kind::Chat => self.chat,
            verdict_core::Kind::Diagnostic => self.diagnostic,
        }
    }
}

impl PlatformRoom {
    /// The party a platform identity stands for in this room.
    pub fn party_of(&self, identity: &str) -> Option<Party> {
        if identity == self.customer_identity {
            Some(Party::Customer)
        } else if identity == self.provider_identity {
            Some(Party::Provider)
        } else {
            None
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Session {
    pub id: String,
    pub kind: Kind,
    pub status: Status,
    pub customer_id: String,
    pub provider_id: String,
    pub provider_account: Option<String>,
    pub request_id: Option<String>,
    pub scheduled_start: Option<UnixMillis>,
    pub created_at: UnixMillis,
    /// The first instant both parties were present: known once the
    /// session is live (the outcome repeats it once ended).
    pub started_at: Option<UnixMillis>,
    /// The decision (status, reason, billable time, start and end) once
    /// the session is terminal; `None` while it is open.
    pub outcome: Option<Outcome>,
    /// Who ended it (`None` for history verdict did not end).
    pub ended_by: Option<Role>,
    pub price: Price,
    pub charged_cents: Option<Cents>,
    pub metadata: Option<Value>,
    pub customer_last_seen_at: Option<UnixMillis>,
    pub provider_last_seen_at: Option<UnixMillis>,
    pub room: Option<PlatformRoom>,
    /// Until when late platform presence may still change the outcome
    /// (payouts and receipts wait for it); `None`: final when ended.
    pub finalizes_at: Option<UnixMillis>,
    /// When the sweeper made it final (and settled its money).
    pub finalized_at: Option<UnixMillis>,
}

impl Session {
    /// Ended, and late platform presence may still re-decide it: its
    /// ledger posting, payout and receipts wait for finalization.
    pub fn is_finalizing(&self) -> bool {
        self.finalizes_at.is_some() && self.finalized_at.is_none()
    }
}

impl Session {
    /// What verification needs of this session, before its related rows
    /// (payouts, postings, request) are attached.
    pub fn audit(
        &self,
        policy: Option<verdict_core::Policy>,
        decided_at: Option<UnixMillis>,
        events: Vec<verdict_core::PresenceEvent>,
    ) -> verdict_core::SessionAudit {
        verdict_core::SessionAudit {
            status: self.status,
            reason: self.reason(),
            created_at: self.created_at,
            scheduled_start: self.scheduled_start,
            started_at: self.started_at,
            ended_at: self.ended_at(),
            billable_seconds: self.billable_seconds(),
            price: self.price.clone(),
            charged: self.charged_cents,
            policy,
            ended_by_system: self.ended_by == Some(Role::System),
            finalizing_until: self.finalizes_at.filter(|_| self.is_finalizing()),
            decided_at,
            events,
            payouts: Vec::new(),
            posting_sums: Vec::new(),
            request: None,
        }
    }

    /// Each party's last heartbeat, as presence events.
    pub fn last_heartbeats(&self) -> impl Iterator<Item = verdict_core::PresenceEvent> + use<> {
        [
            (Party::Customer, self.customer_last_seen_at),
            (Party::Provider, self.provider_last_seen_at),
        ]
        .into_iter()
        .filter_map(|(party, at)| {
            Some(verdict_core::PresenceEvent {
                party,
                kind: verdict_core::PresenceKind::Heartbeat,
                at: at?,
                connection: Connection::OWN,
            })
        })
    }

    /// The id of the given party.
    pub fn party_id(&self, party: Party) -> &str {
        match party {
            Party::Customer => &self.customer_id,
            Party::Provider => &self.provider_id,
        }
    }

    /// Why it ended, once terminal.
    pub fn reason(&self) -> Option<Reason> {
        self.outcome.map(|outcome| outcome.reason)
    }

    /// When it ended, once terminal.
    pub fn ended_at(&self) -> Option<UnixMillis> {
        self.outcome.map(|outcome| outcome.ended_at)
    }

    /// The billable seconds decided, once terminal.
    pub fn billable_seconds(&self) -> Option<i64> {
        self.outcome.map(|outcome| outcome.billable_seconds)
    }

    /// What the decision needs of this session.
    pub fn facts(&self) -> SessionFacts {
        SessionFacts {
            created_at: self.created_at,
            scheduled_start: self.scheduled_start,
            recorded: self.outcome,
        }
    }
}

/// The result of an end call.
#[derive(Clone, Debug, PartialEq)]
pub struct Ended {
    pub session: Session,
    /// True when the session was already terminal: nothing was written.
    pub already_ended: bool,
}

/// What a presence call records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PresenceChange {
    Join,
    Leave,
    Heartbeat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Created,
    Joined,
    Left,
    Ended,
    /// A repair changed the recorded outcome.
    Corrected,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Created => "created",
            EventType::Joined => "joined",
            EventType::Left => "left",
            EventType::Ended => "ended",
            EventType::Corrected => "corrected",
        }
    }

    pub fn parse(text: &str) -> Option<EventType> {
        Some(match text {
            "created" => EventType::Created,
            "joined" => EventType::Joined,
            "left" => EventType::Left,
            "ended" => EventType::Ended,
            "corrected" => EventType::Corrected,
            _ => return None,
        })
    }
}

/// One entry of a session's audit trail.
#[derive(Clone, Debug, PartialEq)]
pub struct AuditEvent {
    pub seq: i64,
    pub session_id: String,
    pub event_type: EventType,
    pub party: Option<Party>,
    pub actor: Actor,
    pub at: UnixMillis,
    /// For presence reported by a video platform: its connection.
    pub connection: Option<String>,
    /// For `ended`: `{claimed, policy, outcome}`.
    pub data: Option<Value>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Notification {
    pub id: i64,
    pub recipient_role: Party,
    pub recipient_id: String,
    pub session_id: String,
    pub kind: String,
    pub reason: Option<Reason>,
    pub created_at: UnixMillis,
}

/// Who pays providers out: Stripe when a key is configured, else nobody
/// automatically (`manual`: the payout stays `pending` until an operator
/// pays it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PayoutProvider {
    Stripe,
    Manual,
}

impl PayoutProvider {
    pub fn as_str(self) -> &'static str {
        match self {
            PayoutProvider::Stripe => "stripe",
            PayoutProvider::Manual => "manual",
        }
    }

    pub fn parse(text: &str) -> Option<PayoutProvider> {
        match text {
            "stripe" => Some(PayoutProvider::Stripe),
            "manual" => Some(PayoutProvider::Manual),
            _ => None,
        }
    }
}

/// What a settling transaction needs from configuration.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Settings {
    pub policies: PolicySet,
    pub payout_provider: PayoutProvider,
    /// How long after its end a session with a platform room may still be
    /// re-decided by late platform presence.
    pub finalize_after_seconds: i64,
    /// Bounds on what one caller may make the store keep.
    pub limits: Limits,
    /// When rates per kind and per provider raise alerts (`[alerts]`).
    pub alerts: crate::insight::Thresholds,
}

/// Bounds on what one session or customer may make the store keep (the
/// abuse limits of `docs/limits.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// A party's own joins and leaves kept per session: beyond it a join
    /// is refused (a leave that closes an interval never is). Platform
    /// events do not count.
    pub max_presence_events_per_session: i64,
    /// After this long a `pending` request is `expired` by the sweeper.
    pub request_ttl_seconds: i64,
    /// `pending` requests one customer may have open at once.
    pub max_open_requests_per_customer: i64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_presence_events_per_session: 500,
            request_ttl_seconds: 900,
            max_open_requests_per_customer: 5,
        }
    }
}

/// The default finalization window: platforms deliver up to a minute or two
/// late (Daily holds `meeting.ended` 20 s; retries come later).
pub const FINALIZE_AFTER_SECONDS: i64 = 120;

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            policies: PolicySet::default(),
            payout_provider: PayoutProvider::Manual,
            finalize_after_seconds: FINALIZE_AFTER_SECONDS,
            limits: Limits::default(),
            alerts: crate::insight::Thresholds::default(),
        }
    }
}

/// An `Idempotency-Key` with what it guards.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Idempotency {
    /// Who and which route: keys of different callers never collide.
    pub scope: String,
    pub key: String,
    /// The canonical request body.
    pub fingerprint: String,
}

/// A creation, or the replay of an earlier one with the same key and body.
#[derive(Clone, Debug, PartialEq)]
pub struct Created<T> {
    pub value: T,
    pub replayed: bool,
}

#[derive(Clone, Debug)]
pub struct NewRequest {
    pub id: String,
    pub customer_id: String,
    pub kind: Kind,
    pub price: Price,
    pub candidate_provider_ids: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestStatus {
    Pending,
    Matched,
    /// The session's terminal status, propagated on end.
    Ended(Status),
}

impl RequestStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestStatus::Pending => "pending",
            RequestStatus::Matched => "matched",
            RequestStatus::Ended(status) => status.as_str(),
        }
    }

    pub fn parse(text: &str) -> Option<RequestStatus> {
        match text {
            "pending" => Some(RequestStatus::Pending),
            "matched" => Some(RequestStatus::Matched),
            other => other
                .parse::<Status>()
                .ok()
                .filter(|status| status.is_terminal())
                .map(RequestStatus::Ended),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    pub id: String,
    pub customer_id: String,
    pub kind: Kind,
    pub price: Price,
    pub candidate_provider_ids: Vec<String>,
    pub status: RequestStatus,
    pub session_id: Option<String>,
    pub created_at: UnixMillis,
    pub updated_at: UnixMillis,
}

/// Where a page of assignments ends: they are listed by `created_at`, then
/// request id, then provider id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AssignmentCursor {
    pub created_at: UnixMillis,
    pub request_id: String,
    pub provider_id: String,
}

/// An open offer in a provider's queue.
#[derive(Clone, Debug, PartialEq)]
pub struct Assignment {
    pub request_id: String,
    pub provider_id: String,
    pub customer_id: String,
    pub kind: Kind,
    pub price: Price,
    /// The session, once this provider accepted.
    pub session_id: Option<String>,
    pub created_at: UnixMillis,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PayoutState {
    Pending,
    Paid,
    Failed,
}

impl PayoutState {
    pub fn as_str(self) -> &'static str {
        match self {
            PayoutState::Pending => "pending",
            PayoutState::Paid => "paid",
            PayoutState::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<PayoutState> {
        match text {
            "pending" => Some(PayoutState::Pending),
            "paid" => Some(PayoutState::Paid),
            "failed" => Some(PayoutState::Failed),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Payout {
    /// `po_<session id>`: also Stripe's idempotency key.
    pub id: String,
    pub session_id: String,
    pub provider_id: String,
    /// The Stripe account to pay, when known.
    pub destination: Option<String>,
    pub amount: Cents,
    pub currency: String,
    pub state: PayoutState,
    pub provider: PayoutProvider,
    pub transfer_id: Option<String>,
    pub failure_reason: Option<String>,
    pub created_at: UnixMillis,
    pub updated_at: UnixMillis,
    /// Set when a repair found the session should not have been paid.
    pub reversed_at: Option<UnixMillis>,
    /// When the transfer was recorded (`paid`).
    pub paid_at: Option<UnixMillis>,
    /// When the reversal's delivery finished: the money is back, or was
    /// never at Stripe.
    pub reversal_settled_at: Option<UnixMillis>,
    /// Stripe's reversal of the transfer, when money came back through it.
    pub reversal_id: Option<String>,
}

/// The ledger account names (the core's, which plans the postings).
pub use verdict_core::accounts;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerLine {
    pub account: String,
    /// Debit positive, credit negative.
    pub amount: Cents,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Posting {
    pub id: i64,
    pub session_id: String,
    pub kind: String,
    pub currency: String,
    pub created_at: UnixMillis,
    pub lines: Vec<LedgerLine>,
}

impl Posting {
    /// The sum of its lines, in cents: zero when it balances.
    pub fn total(&self) -> i64 {
        self.lines.iter().map(|line| line.amount.0).sum()
    }

    pub fn is_balanced(&self) -> bool {
        self.total() == 0
    }
}

/// A provider's totals in one currency.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EarningsTotal {
    pub currency: String,
    /// Credited to the provider's payable account by the ledger.
    pub earned: Cents,
    pub sessions: i64,
    pub paid: Cents,
    pub pending: Cents,
    pub failed: Cents,
    /// Payouts a repair reversed (whatever their state): in none of the
    /// totals above.
    pub reversed: Cents,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub id: String,
    pub email: Option<String>,
    pub display_name: Option<String>,
    pub stripe_account: Option<String>,
    pub updated_at: UnixMillis,
}

/// A claimed outbox row, leased to one worker.
#[derive(Clone, Debug, PartialEq)]
pub struct OutboxItem {
    pub id: i64,
    pub session_id: Option<String>,
    /// `webhook:<event>`, `email:receipt:<party>` or `payout`.
    pub topic: String,
    pub payload: Value,
    /// Attempts made before this one.
    pub attempts: i64,
    pub created_at: UnixMillis,
}

/// What became of one delivery attempt.
#[derive(Clone, Debug, PartialEq)]
pub enum OutboxOutcome {
    Delivered,
    /// Try again at `due_at`; `payload` replaces the stored one when given
    /// (Stripe's fresh idempotency key generation, for example).
    Retry {
        due_at: UnixMillis,
        error: String,
        payload: Option<Value>,
    },
    /// Given up: `max_attempts` reached or undeliverable.
    Dead {
        error: String,
    },
    /// The transfer exists: the payout is `paid` and `payout.paid` queued.
    PayoutPaid {
        payout_id: String,
        transfer_id: String,
    },
    /// Stripe refused: the payout is `failed` and `payout.failed` queued.
    PayoutFailed {
        payout_id: String,
        reason: String,
    },
    /// A reversal's delivery finished: `transfer_id` is the transfer found
    /// at Stripe (recorded if the payout had none), `reversal_id` Stripe's
    /// reversal of it; both `None` when Stripe never had a transfer.
    PayoutReversed {
        payout_id: String,
        transfer_id: Option<String>,
        reversal_id: Option<String>,
    },
    /// The row is done, and one copy per destination is queued in its
    /// place: `(key, payload)`, on channel `<channel>:<key>`, so that each
    /// copy is delivered, retried and dead-lettered on its own, in order
    /// with the destination's other copies (a webhook per endpoint).
    FanOut {
        copies: Vec<(String, Value)>,
    },
}

/// How a delivery error that is a configuration fault (Stripe answered
/// 401/403: a rotated key, a wrong API base) starts: such rows are retried
/// with backoff and never die, and health raises them as an alert.
pub const CONFIGURATION_FAULT: &str = "configuration fault: ";

/// An outbox row as operators see it.
#[derive(Clone, Debug, PartialEq)]
pub struct OutboxRow {
    pub id: i64,
    pub session_id: Option<String>,
    pub topic: String,
    pub state: String,
    pub attempts: i64,
    pub due_at: UnixMillis,
    pub created_at: UnixMillis,
    pub delivered_at: Option<UnixMillis>,
    pub last_error: Option<String>,
}

/// What one sweep did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SweepReport {
    /// Candidates looked at under their lock.
    pub checked: usize,
    /// Sessions the sweep ended, as stored afterwards.
    pub ended: Vec<Session>,
    /// Sessions whose finalization window the sweep closed, as stored
    /// afterwards (money settled now when completed).
    pub finalized: Vec<Session>,
    /// Sessions the sweep could not end or finalize, with the error: each
    /// failed alone, the others went on.
    pub failed: Vec<(String, String)>,
    /// Pending requests older than `request_ttl_seconds` the sweep marked
    /// `expired` (their assignments removed), by id.
    pub expired_requests: Vec<String>,
}

/// Which sessions a verification page reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuditScope {
    All,
    /// Terminal sessions ended at or after this instant.
    EndedSince(UnixMillis),
    /// Sessions not yet ended.
    Open,
    /// Terminal sessions ended in `[since, until)`.
    EndedBetween(UnixMillis, UnixMillis),
}

/// Where the next page of audits starts: just after this session. Windowed
/// scopes are read in end order (`ended_at`, then `id`), the others by id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditCursor {
    pub id: String,
    pub ended_at: Option<UnixMillis>,
}

impl AuditCursor {
    /// The cursor just after `session`.
    pub fn after(session: &Session) -> AuditCursor {
        AuditCursor { id: session.id.clone(), ended_at: session.ended_at() }
    }
}

/// Delivery health for verification.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OutboxHealth {
    /// Rows waiting for delivery.
    pub pending: i64,
    pub dead: i64,
    pub overdue: i64,
    /// Sessions of dead or overdue rows (a sample).
    pub sample: Vec<String>,
}

/// A historical session from the old system, validated, to store as
/// recorded (docs/import.md).
#[derive(Clone, Debug)]
pub struct ImportSession {
    pub id: String,
    pub kind: Kind,
    pub customer_id: String,
    pub provider_id: String,
    pub provider_account: Option<String>,
    pub price: Price,
    pub status: Status,
    pub reason: Option<Reason>,
    pub created_at: UnixMillis,
    pub ended_at: Option<UnixMillis>,
    /// Joins and leaves, in time order.
    pub events: Vec<(Party, bool, UnixMillis)>,
    pub payout: Option<(Cents, PayoutState)>,
    /// What the old system recorded beyond these fields (its own
    /// `started_at`, and with `--keep-unknown-fields` any other field).
    pub metadata: Option<Value>,
}

/// What an import did with one session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Imported {
    /// Stored.
    New,
    /// Already there from an earlier run: left untouched.
    Existing,
    /// Stored earlier in the same run: a repeated id.
    EarlierInRun,
}

/// A participant's join or leave, as a video platform reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlatformPresence {
    /// `livekit`, `daily` or `twilio`.
    pub source: &'static str,
    /// The platform's id of the event: a repeat carries the same.
    pub event_id: String,
    pub room: String,
    pub identity: String,
    /// The participant's connection (a reconnect is a new one).
    pub connection: String,
    /// `Joined` or `Left`.
    pub kind: verdict_core::PresenceKind,
    /// The platform's instant.
    pub at: UnixMillis,
}

/// What became of a platform presence event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlatformDisposition {
    /// Counted: the session was open, or the event came after its end.
    Recorded,
    /// Delivered before (same event id): nothing changed.
    Duplicate,
    /// Inside the finalization window, before the end: counted, and the
    /// outcome re-decided — `Some` when it changed.
    Reconsidered(Option<Correction>),
    /// After the finalization window, before the end: not counted; the
    /// session is flagged for review when the event would have changed its
    /// outcome (`changes`).
    Late { changes: bool },
    /// No session has this room: nothing stored.
    UnknownRoom,
    /// Neither party of the room's session has this identity (an observer,
    /// a recorder): nothing stored.
    UnknownIdentity,
}

/// One correction of a recorded outcome (docs/import.md).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Correction {
    pub session_id: String,
    /// The recorded status and reason (`None`: an imported session still
    /// `live` or `waiting`, which a repair ends).
    pub from: (Status, Option<Reason>),
    pub to: (Status, Reason),
    /// The change in what the customer is charged, in cents.
    pub money_effect: i64,
    /// Planned only: its only evidence is missing join events, so it is
    /// applied only when asked to (`include_missing_evidence`).
    pub needs_review: bool,
}

/// A long admin run (an import or a repair through the API), kept with the
/// answer its caller got: readable after the caller went away.
#[derive(Clone, Debug, PartialEq)]
pub struct AdminRun {
    pub id: String,
    /// `import` or `repair`.
    pub kind: String,
    /// `running`, `finished` or `failed`.
    pub state: String,
    /// The admin who started it (the token's `sub`).
    pub actor: String,
    pub started_at: UnixMillis,
    pub finished_at: Option<UnixMillis>,
    /// The answer (JSON), once finished.
    pub summary: Option<Value>,
    /// Why it failed, in words fit for a caller.
    pub error: Option<String>,
}
