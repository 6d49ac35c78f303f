//! The JSON shapes of the API (docs/api.md). Only this crate knows field names.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use verdict_core::{
    AMOUNT_CENTS_MAX, Cents, Kind, Party, PolicySet, Price, PriceMode, is_valid_id,
};
use verdict_store::{
    Assignment, AuditEvent, EarningsTotal, Ended, NewRequest, NewSession, Notification, Payout,
    PlatformRoom, Request, Session, User,
};
use verdict_store::{PresenceSource, PresenceSources};

use crate::problem::ApiError;
use crate::wire::{format_instant, parse_instant};

/// Whose presence counts for a session with a room.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PresenceSourceDto {
    /// The platform's webhooks only: the parties' own calls are 409.
    Platform,
    /// The platform's events and the parties' own calls.
    Any,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum KindDto {
    Video,
    Chat,
    Diagnostic,
}

impl From<KindDto> for Kind {
    fn from(kind: KindDto) -> Kind {
        match kind {
            KindDto::Video => Kind::Video,
            KindDto::Chat => Kind::Chat,
            KindDto::Diagnostic => Kind::Diagnostic,
        }
    }
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PriceModeDto {
    Flat,
    PerMinute,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PriceDto {
    pub mode: PriceModeDto,
    /// Integer minor units, 0 to 10 000 000 000.
    pub amount_cents: i64,
    /// ISO 4217 code; stored lower case.
    pub currency: String,
}

impl PriceDto {
    fn from_price(price: &Price) -> PriceDto {
        PriceDto {
            mode: match price.mode {
                PriceMode::Flat => PriceModeDto::Flat,
                PriceMode::PerMinute => PriceModeDto::PerMinute,
            },
            amount_cents: price.amount.0,
            currency: price.currency.clone(),
        }
    }

    pub fn validate(self) -> Result<Price, ApiError> {
        if !(0..=AMOUNT_CENTS_MAX).contains(&self.amount_cents) {
            return Err(ApiError::Unprocessable(format!(
                "price.amount_cents must be between 0 and {AMOUNT_CENTS_MAX}, got {}",
                self.amount_cents
            )));
        }
        if self.currency.len() != 3 || !self.currency.bytes().all(|b| b.is_ascii_alphabetic()) {
            return Err(ApiError::Unprocessable(
                "price.currency must be a three-letter ISO 4217 code such as \"usd\"".into(),
            ));
        }
        Ok(Price {
            mode: match self.mode {
                PriceModeDto::Flat => PriceMode::Flat,
                PriceModeDto::PerMinute => PriceMode::PerMinute,
            },
            amount: Cents(self.amount_cents),
            currency: self.currency.to_ascii_lowercase(),
        })
    }
}

/// `POST /v1/sessions`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSessionRequest {
    /// Optional; a UUIDv7 is generated when absent.
    pub id: Option<String>,
    pub kind: KindDto,
    pub customer_id: String,
    pub provider_id: String,
    /// Stripe Connect account to pay; else the provider's.
    pub provider_account: Option<String>,
    /// RFC 3339.
    pub scheduled_start: Option<String>,
    pub price: PriceDto,
    pub request_id: Option<String>,
    /// Any JSON object, kept verbatim.
    pub metadata: Option<Value>,
    /// The room's name on the video platform (LiveKit, Daily, Twilio):
    /// its presence webhooks then count for this session. Unique among
    /// sessions; needs both identities.
    pub room: Option<String>,
    /// The customer's participant identity in the room (LiveKit
    /// `identity`, Daily `user_id`, Twilio `ParticipantIdentity`).
    pub customer_identity: Option<String>,
    /// The provider's participant identity in the room.
    pub provider_identity: Option<String>,
    /// With a room: whose presence counts; the kind's policy
    /// (`presence_source`, `platform` unless configured) when absent.
    pub presence_source: Option<PresenceSourceDto>,
}

/// A platform name (room or participant identity): 1 to 256 bytes of
/// UTF-8, no control character (the presence routes take the same).
fn check_platform_name(field: &str, value: &str) -> Result<(), ApiError> {
    if (1..=256).contains(&value.len()) && !value.chars().any(char::is_control) {
        Ok(())
    } else {
        Err(ApiError::Unprocessable(format!(
            "{field} must be 1 to 256 bytes of UTF-8, without control characters"
        )))
    }
}

fn check_id(field: &str, value: &str) -> Result<(), ApiError> {
    if is_valid_id(value) {
        Ok(())
    } else {
        Err(ApiError::Unprocessable(format!(
            "{field} must be 1 to 128 characters from [A-Za-z0-9_.:-]"
        )))
    }
}

impl CreateSessionRequest {
    /// Validates every field; `generated_id` is used when the client sent none.
    /// `sources` is the `presence_source` policy for a room.
    pub fn validate(
        self,
        generated_id: String,
        sources: &PresenceSources,
    ) -> Result<NewSession, ApiError> {
        let id = self.id.unwrap_or(generated_id);
        let kind: Kind = self.kind.into();
        check_id("id", &id)?;
        check_id("customer_id", &self.customer_id)?;
        check_id("provider_id", &self.provider_id)?;
        if let Some(account) = &self.provider_account {
            check_id("provider_account", account)?;
        }
        if let Some(request_id) = &self.request_id {
            check_id("request_id", request_id)?;
        }
        let scheduled_start = match &self.scheduled_start {
            None => None,
            Some(text) => Some(parse_instant(text).ok_or_else(|| {
                ApiError::Unprocessable(
                    "scheduled_start must be an RFC 3339 timestamp such as 2026-11-28T09:00:00Z"
                        .into(),
                )
            })?),
        };
        let metadata = match self.metadata {
            None | Some(Value::Null) => None,
            Some(object @ Value::Object(_)) => Some(object),
            Some(_) => {
                return Err(ApiError::Unprocessable("metadata must be a JSON object".into()));
            }
        };
        if self.room.is_none() && self.presence_source.is_some() {
            return Err(ApiError::Unprocessable(
                "presence_source needs a room: without one, presence is the parties' own".into(),
            ));
        }
        let room = match (self.room, self.customer_identity, self.provider_identity) {
            (None, None, None) => None,
            (Some(room), Some(customer_identity), Some(provider_identity)) => {
                check_platform_name("room", &room)?;
                check_platform_name("customer_identity", &customer_identity)?;
                check_platform_name("provider_identity", &provider_identity)?;
                if customer_identity == provider_identity {
                    return Err(ApiError::Unprocessable(
                        "customer_identity and provider_identity must differ".into(),
                    ));
                }
                let presence_source = match self.presence_source {
                    None => sources.for_kind(kind),
                    Some(PresenceSourceDto::Platform) => PresenceSource::Platform,
                    Some(PresenceSourceDto::Any) => PresenceSource::Any,
                };
                Some(PlatformRoom { room, customer_identity, provider_identity, presence_source })
            }
            _ => {
                return Err(ApiError::Unprocessable(
                    "room, customer_identity and provider_identity go together: all or none".into(),
                ));
            }
        };
        Ok(NewSession {
            room,
            id,
            kind,
            customer_id: self.customer_id,
            provider_id: self.provider_id,
            provider_account: self.provider_account,
            scheduled_start,
            price: self.price.validate()?,
            request_id: self.request_id,
            metadata,
        })
    }
}

/// A session as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionDto {
    pub id: String,
    pub kind: KindDto,
    /// `waiting`, `live`, `completed`, `cancelled` or `expired`.
    pub status: String,
    pub reason: Option<String>,
    pub customer_id: String,
    pub provider_id: String,
    pub provider_account: Option<String>,
    pub request_id: Option<String>,
    pub scheduled_start: Option<String>,
    pub created_at: String,
    pub started_at: Option<String>,
    pub ended_at: Option<String>,
    /// The role that ended it (`system` for the sweeper).
    pub ended_by: Option<String>,
    pub billable_seconds: Option<i64>,
    pub price: PriceDto,
    pub charged_cents: Option<i64>,
    pub metadata: Option<Value>,
    /// The video platform room whose presence counts, if any.
    pub room: Option<String>,
    pub customer_identity: Option<String>,
    pub provider_identity: Option<String>,
    /// Until when late platform presence may still change the outcome
    /// (RFC 3339); payouts and receipts wait for it.
    pub finalizes_at: Option<String>,
    /// When the outcome became final and its money was settled.
    pub finalized_at: Option<String>,
    /// Whose presence counts: `platform` (the room's webhooks only; the
    /// parties' own calls are refused) or `any` (both; always so without a
    /// room).
    pub presence_source: PresenceSourceDto,
    /// How long a party may stay silent before it counts as gone: a
    /// client heartbeats well within it (a third of it, say).
    pub presence_timeout_seconds: i64,
}

impl SessionDto {
    /// The session as the API shows it, with its kind's policy's
    /// presence timeout.
    pub fn new(session: &Session, policies: &PolicySet) -> SessionDto {
        SessionDto {
            id: session.id.clone(),
            kind: match session.kind {
                Kind::Video => KindDto::Video,
                Kind::Chat => KindDto::Chat,
                Kind::Diagnostic => KindDto::Diagnostic,
            },
            status: session.status.as_str().to_owned(),
            reason: session.reason().map(|reason| reason.as_str().to_owned()),
            customer_id: session.customer_id.clone(),
            provider_id: session.provider_id.clone(),
            provider_account: session.provider_account.clone(),
            request_id: session.request_id.clone(),
            scheduled_start: session.scheduled_start.map(format_instant),
            created_at: format_instant(session.created_at),
            started_at: session.started_at.map(format_instant),
            ended_at: session.ended_at().map(format_instant),
            ended_by: session.ended_by.map(|role| role.as_str().to_owned()),
            billable_seconds: session.billable_seconds(),
            price: PriceDto::from_price(&session.price),
            charged_cents: session.charged_cents.map(|cents| cents.0),
            metadata: session.metadata.clone(),
            room: session.room.as_ref().map(|room| room.room.clone()),
            customer_identity: session.room.as_ref().map(|room| room.customer_identity.clone()),
            provider_identity: session.room.as_ref().map(|room| room.provider_identity.clone()),
            finalizes_at: session.finalizes_at.map(format_instant),
            finalized_at: session.finalized_at.map(format_instant),
            presence_source: match session.room.as_ref().map(|room| room.presence_source) {
                Some(PresenceSource::Platform) => PresenceSourceDto::Platform,
                Some(PresenceSource::Any) | None => PresenceSourceDto::Any,
            },
            presence_timeout_seconds: policies.for_kind(session.kind).presence_timeout_seconds,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OutcomeDto {
    pub status: String,
    pub reason: String,
    pub billable_seconds: i64,
    /// True when an earlier call ended the session: nothing was changed.
    pub already_ended: bool,
}

/// `POST /v1/sessions/{id}/end`.
#[derive(Debug, Serialize, ToSchema)]
pub struct EndResponse {
    pub session: SessionDto,
    pub outcome: OutcomeDto,
}

impl EndResponse {
    pub fn new(ended: &Ended, policies: &PolicySet) -> Result<EndResponse, ApiError> {
        let outcome = ended.session.outcome.ok_or_else(|| {
            ApiError::Internal(format!("ended session {} has no outcome", ended.session.id))
        })?;
        Ok(EndResponse {
            session: SessionDto::new(&ended.session, policies),
            outcome: OutcomeDto {
                status: outcome.status.as_str().to_owned(),
                reason: outcome.reason.as_str().to_owned(),
                billable_seconds: outcome.billable_seconds,
                already_ended: ended.already_ended,
            },
        })
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ActorDto {
    pub role: String,
    pub id: String,
}

/// One audit-trail entry.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventDto {
    pub seq: i64,
    /// `created`, `joined`, `left` or `ended`.
    #[serde(rename = "type")]
    pub event_type: String,
    pub party: Option<String>,
    pub actor: ActorDto,
    pub at: String,
    /// For `ended`: `{claimed, policy, outcome}`; `claimed` is the body the
    /// caller sent, verbatim, which decided nothing.
    pub data: Option<Value>,
}

impl From<&AuditEvent> for EventDto {
    fn from(event: &AuditEvent) -> EventDto {
        EventDto {
            seq: event.seq,
            event_type: event.event_type.as_str().to_owned(),
            party: event.party.map(|party| party.as_str().to_owned()),
            actor: ActorDto {
                role: event.actor.role.as_str().to_owned(),
                id: event.actor.id.clone(),
            },
            at: format_instant(event.at),
            data: event.data.clone(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct NotificationDto {
    pub id: i64,
    pub recipient_role: String,
    pub recipient_id: String,
    pub session_id: String,
    /// `session_completed`, `session_cancelled` or `session_expired`.
    pub kind: String,
    pub reason: Option<String>,
    pub created_at: String,
}

impl From<&Notification> for NotificationDto {
    fn from(notification: &Notification) -> NotificationDto {
        NotificationDto {
            id: notification.id,
            recipient_role: notification.recipient_role.as_str().to_owned(),
            recipient_id: notification.recipient_id.clone(),
            session_id: notification.session_id.clone(),
            kind: notification.kind.clone(),
            reason: notification.reason.map(|reason| reason.as_str().to_owned()),
            created_at: format_instant(notification.created_at),
        }
    }
}

/// A page of a list.
#[derive(Debug, Serialize, ToSchema)]
pub struct Page<T: ToSchema> {
    pub items: Vec<T>,
    /// Pass as `after` to get the next page; null on the last.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdvanceClockRequest {
    /// Whole seconds, 1 to 31 536 000 (a year).
    pub seconds: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ClockDto {
    pub now: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HealthDto {
    pub status: String,
    pub database: String,
}

/// Which party a caller is in a session, if any.
pub fn party_of(session: &Session, role: verdict_core::Role, id: &str) -> Option<Party> {
    match role {
        verdict_core::Role::Customer if session.customer_id == id => Some(Party::Customer),
        verdict_core::Role::Provider if session.provider_id == id => Some(Party::Provider),
        _ => None,
    }
}

/// `PUT /v1/users/{id}`: fields left out are kept.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpsertUserRequest {
    pub email: Option<String>,
    pub display_name: Option<String>,
    /// Stripe Connect account for payouts.
    pub stripe_account: Option<String>,
}

impl UpsertUserRequest {
    pub fn validate(self, id: &str, now: verdict_core::UnixMillis) -> Result<User, ApiError> {
        if let Some(email) = &self.email {
            let plausible = email.len() <= 254
                && email.split_once('@').is_some_and(|(local, domain)| {
                    !local.is_empty() && domain.contains('.') && !domain.starts_with('.')
                })
                && !email
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control() || c == '<' || c == '>');
            if !plausible {
                return Err(ApiError::Unprocessable(
                    "email must be an address such as ana@example.com".into(),
                ));
            }
        }
        if let Some(name) = &self.display_name
            && (name.chars().count() > 200 || name.chars().any(char::is_control))
        {
            return Err(ApiError::Unprocessable(
                "display_name must be at most 200 characters without control characters".into(),
            ));
        }
        if let Some(account) = &self.stripe_account {
            check_id("stripe_account", account)?;
        }
        Ok(User {
            id: id.to_owned(),
            email: self.email,
            display_name: self.display_name,
            stripe_account: self.stripe_account,
            updated_at: now,
        })
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UserDto {
    pub id: String,
    pub email: Option<String>,
    pub display_name: Option<String>,
    pub stripe_account: Option<String>,
    pub updated_at: String,
}

impl From<&User> for UserDto {
    fn from(user: &User) -> UserDto {
        UserDto {
            id: user.id.clone(),
            email: user.email.clone(),
            display_name: user.display_name.clone(),
            stripe_account: user.stripe_account.clone(),
            updated_at: format_instant(user.updated_at),
        }
    }
}

/// The most candidates one request may name.
pub const CANDIDATES_MAX: usize = 100;

/// `POST /v1/requests`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRequestBody {
    pub customer_id: String,
    pub kind: KindDto,
    pub price: PriceDto,
    /// 1 to 100 distinct provider ids: each gets the offer in its queue.
    pub candidate_provider_ids: Vec<String>,
}

impl CreateRequestBody {
    pub fn validate(self, id: String) -> Result<NewRequest, ApiError> {
        check_id("customer_id", &self.customer_id)?;
        if !(1..=CANDIDATES_MAX).contains(&self.candidate_provider_ids.len()) {
            return Err(ApiError::Unprocessable(format!(
                "candidate_provider_ids must name 1 to {CANDIDATES_MAX} providers"
            )));
        }
        for (index, provider_id) in self.candidate_provider_ids.iter().enumerate() {
            check_id(&format!("candidate_provider_ids[{index}]"), provider_id)?;
            if self.candidate_provider_ids[..index].contains(provider_id) {
                return Err(ApiError::Unprocessable(format!(
                    "candidate_provider_ids[{index}]: {provider_id} is named twice"
                )));
            }
        }
        Ok(NewRequest {
            id,
            customer_id: self.customer_id,
            kind: self.kind.into(),
            price: self.price.validate()?,
            candidate_provider_ids: self.candidate_provider_ids,
        })
    }
}

fn kind_dto(kind: Kind) -> KindDto {
    match kind {
        Kind::Video => KindDto::Video,
        Kind::Chat => KindDto::Chat,
        Kind::Diagnostic => KindDto::Diagnostic,
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RequestDto {
    pub id: String,
    pub customer_id: String,
    pub kind: KindDto,
    pub price: PriceDto,
    pub candidate_provider_ids: Vec<String>,
    /// `pending`, `matched`, then the session's terminal status.
    pub status: String,
    pub session_id: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

impl From<&Request> for RequestDto {
    fn from(request: &Request) -> RequestDto {
        RequestDto {
            id: request.id.clone(),
            customer_id: request.customer_id.clone(),
            kind: kind_dto(request.kind),
            price: PriceDto::from_price(&request.price),
            candidate_provider_ids: request.candidate_provider_ids.clone(),
            status: request.status.as_str().to_owned(),
            session_id: request.session_id.clone(),
            created_at: format_instant(request.created_at),
            updated_at: format_instant(request.updated_at),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AssignmentDto {
    pub request_id: String,
    pub provider_id: String,
    pub customer_id: String,
    pub kind: KindDto,
    pub price: PriceDto,
    pub session_id: Option<String>,
    pub created_at: String,
}

impl From<&Assignment> for AssignmentDto {
    fn from(assignment: &Assignment) -> AssignmentDto {
        AssignmentDto {
            request_id: assignment.request_id.clone(),
            provider_id: assignment.provider_id.clone(),
            customer_id: assignment.customer_id.clone(),
            kind: kind_dto(assignment.kind),
            price: PriceDto::from_price(&assignment.price),
            session_id: assignment.session_id.clone(),
            created_at: format_instant(assignment.created_at),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PayoutDto {
    /// `po_<session id>`; also the Stripe idempotency key.
    pub id: String,
    pub session_id: String,
    pub provider_id: String,
    pub destination: Option<String>,
    pub amount_cents: i64,
    pub currency: String,
    /// `pending`, `paid` or `failed`.
    pub state: String,
    /// `stripe` or `manual`.
    pub provider: String,
    pub transfer_id: Option<String>,
    pub failure_reason: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    /// Set when a repair reversed this payout.
    pub reversed_at: Option<String>,
}

impl From<&Payout> for PayoutDto {
    fn from(payout: &Payout) -> PayoutDto {
        PayoutDto {
            id: payout.id.clone(),
            session_id: payout.session_id.clone(),
            provider_id: payout.provider_id.clone(),
            destination: payout.destination.clone(),
            amount_cents: payout.amount.0,
            currency: payout.currency.clone(),
            state: payout.state.as_str().to_owned(),
            provider: payout.provider.as_str().to_owned(),
            transfer_id: payout.transfer_id.clone(),
            failure_reason: payout.failure_reason.clone(),
            created_at: format_instant(payout.created_at),
            updated_at: format_instant(payout.updated_at),
            reversed_at: payout.reversed_at.map(format_instant),
        }
    }
}

/// A provider's totals in one currency.
#[derive(Debug, Serialize, ToSchema)]
pub struct EarningsTotalDto {
    pub currency: String,
    /// Credited to the provider's payable account by the ledger.
    pub earned_cents: i64,
    /// Completed sessions that earned it.
    pub sessions: i64,
    pub paid_cents: i64,
    pub pending_cents: i64,
    pub failed_cents: i64,
    /// Payouts a repair reversed: in none of the totals above.
    pub reversed_cents: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EarningsDto {
    pub provider_id: String,
    pub totals: Vec<EarningsTotalDto>,
}

impl EarningsDto {
    pub fn new(provider_id: &str, totals: &[EarningsTotal]) -> EarningsDto {
        EarningsDto {
            provider_id: provider_id.to_owned(),
            totals: totals
                .iter()
                .map(|total| EarningsTotalDto {
                    currency: total.currency.clone(),
                    earned_cents: total.earned.0,
                    sessions: total.sessions,
                    paid_cents: total.paid.0,
                    pending_cents: total.pending.0,
                    failed_cents: total.failed.0,
                    reversed_cents: total.reversed.0,
                })
                .collect(),
        }
    }
}

/// An outbox row as operators see it (`GET /v1/admin/outbox`).
#[derive(Debug, Serialize, ToSchema)]
pub struct OutboxRowDto {
    pub id: i64,
    pub session_id: Option<String>,
    /// `webhook:<event>`, `email:receipt:<party>` or `payout`.
    pub topic: String,
    /// `pending`, `delivered` or `dead`.
    pub state: String,
    pub attempts: i64,
    pub due_at: String,
    pub created_at: String,
    pub delivered_at: Option<String>,
    pub last_error: Option<String>,
}

impl From<&verdict_store::OutboxRow> for OutboxRowDto {
    fn from(row: &verdict_store::OutboxRow) -> OutboxRowDto {
        OutboxRowDto {
            id: row.id,
            session_id: row.session_id.clone(),
            topic: row.topic.clone(),
            state: row.state.clone(),
            attempts: row.attempts,
            due_at: format_instant(row.due_at),
            created_at: format_instant(row.created_at),
            delivered_at: row.delivered_at.map(format_instant),
            last_error: row.last_error.clone(),
        }
    }
}
