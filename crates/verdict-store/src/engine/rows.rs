//! Row mapping: the column lists, and rows (and JSON) to the crate's types.

use std::borrow::Cow;

use serde_json::{Value, json};
use sqlx::Row;
use verdict_core::{
    Cents, Kind, Outcome, Policy, Price, PriceMode, Reason, Role, Status, UnixMillis,
};

use crate::{
    Actor, AuditEvent, EventType, Payout, PayoutProvider, PayoutState, PlatformRoom,
    PresenceSource, Request, RequestStatus, Session, StoreError,
};

use super::dialect::DbRow;

macro_rules! session_columns {
    () => {
        "id, kind, status, reason, customer_id, provider_id, provider_account, request_id, \
         scheduled_start, created_at, started_at, ended_at, ended_by, billable_seconds, \
         price_mode, price_amount_cents, currency, charged_cents, metadata, \
         customer_last_seen_at, provider_last_seen_at, room, customer_identity, \
         provider_identity, finalizes_at, finalized_at, presence_source"
    };
}

/// The session columns, in `SessionRecord` field order.
#[allow(dead_code)]
pub(crate) const SESSION_COLUMNS: &str = session_columns!();

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
         transfer_id, failure_reason, created_at, updated_at, reversed_at, paid_at, \
         reversal_settled_at, reversal_id"
    };
}

/// A `sessions` row as stored, read column by column or from a JSON page
/// (in `audit_columns!()` order); [`SessionRecord::into_session`] is the
/// one place its text becomes a [`Session`].
#[derive(serde::Deserialize)]
pub(crate) struct SessionRecord<'a> {
    pub(super) id: String,
    #[serde(borrow)]
    pub(super) kind: Cow<'a, str>,
    #[serde(borrow)]
    pub(super) status: Cow<'a, str>,
    #[serde(borrow)]
    pub(super) reason: Option<Cow<'a, str>>,
    pub(super) customer_id: String,
    pub(super) provider_id: String,
    pub(super) provider_account: Option<String>,
    pub(super) request_id: Option<String>,
    pub(super) scheduled_start: Option<i64>,
    pub(super) created_at: i64,
    pub(super) started_at: Option<i64>,
    pub(super) ended_at: Option<i64>,
    #[serde(borrow)]
    pub(super) ended_by: Option<Cow<'a, str>>,
    pub(super) billable_seconds: Option<i64>,
    #[serde(borrow)]
    pub(super) price_mode: Cow<'a, str>,
    pub(super) price_amount_cents: i64,
    pub(super) currency: String,
    pub(super) charged_cents: Option<i64>,
    #[serde(borrow)]
    pub(super) metadata: Option<Cow<'a, str>>,
    pub(super) customer_last_seen_at: Option<i64>,
    pub(super) provider_last_seen_at: Option<i64>,
    pub(super) room: Option<String>,
    pub(super) customer_identity: Option<String>,
    pub(super) provider_identity: Option<String>,
    pub(super) finalizes_at: Option<i64>,
    pub(super) finalized_at: Option<i64>,
    #[serde(borrow)]
    pub(super) presence_source: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(super) policy: Option<Cow<'a, str>>,
}

impl SessionRecord<'_> {
    pub(super) fn from_row(row: &DbRow) -> Result<SessionRecord<'static>, StoreError> {
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
            presence_source: optional("presence_source")?,
            policy: None,
        })
    }

    pub(crate) fn into_session(self) -> Result<Session, StoreError> {
        let status = parse::<Status>(&self.status)?;
        let reason = parse_optional::<Reason>(self.reason.as_deref())?;
        let started_at = self.started_at.map(UnixMillis);
        // Terminal ⇔ ended with a reason (the schema's checks say so).
        let outcome = match (status.is_terminal(), reason, self.ended_at) {
            (true, Some(reason), Some(ended_at)) => Some(Outcome {
                status,
                reason,
                billable_seconds: self.billable_seconds.unwrap_or(0),
                started_at,
                ended_at: UnixMillis(ended_at),
            }),
            (false, _, None) => None,
            _ => {
                return Err(StoreError::Corrupt(format!(
                    "session {} is {status} with reason {reason:?} and ended_at {:?}",
                    self.id, self.ended_at
                )));
            }
        };
        Ok(Session {
            kind: parse::<Kind>(&self.kind)?,
            status,
            customer_id: self.customer_id,
            provider_id: self.provider_id,
            provider_account: self.provider_account,
            request_id: self.request_id,
            scheduled_start: self.scheduled_start.map(UnixMillis),
            created_at: UnixMillis(self.created_at),
            started_at,
            outcome,
            ended_by: parse_optional::<Role>(self.ended_by.as_deref())?,
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
                    // Rooms from before the policy keep the union they had.
                    let presence_source = match self.presence_source.as_deref() {
                        None => PresenceSource::Any,
                        Some(text) => PresenceSource::parse(text).ok_or_else(|| {
                            StoreError::Corrupt(format!("presence_source {text:?}"))
                        })?,
                    };
                    Some(PlatformRoom {
                        room,
                        customer_identity,
                        provider_identity,
                        presence_source,
                    })
                }
                _ => None,
            },
            finalizes_at: self.finalizes_at.map(UnixMillis),
            finalized_at: self.finalized_at.map(UnixMillis),
            id: self.id,
        })
    }
}

pub(super) fn policy_from_json(text: &str) -> Result<Policy, StoreError> {
    let value: Value = serde_json::from_str(text)
        .map_err(|error| StoreError::Corrupt(format!("stored policy: {error}")))?;
    crate::policy_from_value(&value)
}

pub(super) fn outcome_json(outcome: &Outcome) -> Value {
    json!({
        "status": outcome.status.as_str(),
        "reason": outcome.reason.as_str(),
        "billable_seconds": outcome.billable_seconds,
        "started_at": outcome.started_at.map(|at| at.0),
        "ended_at": outcome.ended_at.0,
    })
}

pub(super) fn policy_json(policy: &Policy) -> Value {
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

pub(super) fn session_from_row(row: &DbRow) -> Result<Session, StoreError> {
    SessionRecord::from_row(row)?.into_session()
}

pub(super) fn price_from_row(row: &DbRow) -> Result<Price, StoreError> {
    let mode: String = row.try_get("price_mode")?;
    Ok(Price {
        mode: PriceMode::parse(&mode)
            .ok_or_else(|| StoreError::Corrupt(format!("price_mode {mode:?}")))?,
        amount: Cents(row.try_get("price_amount_cents")?),
        currency: row.try_get("currency")?,
    })
}

pub(super) fn request_from_row(row: &DbRow) -> Result<Request, StoreError> {
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

pub(super) fn payout_from_row(row: &DbRow) -> Result<Payout, StoreError> {
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
        paid_at: row.try_get::<Option<i64>, _>("paid_at")?.map(UnixMillis),
        reversal_settled_at: row.try_get::<Option<i64>, _>("reversal_settled_at")?.map(UnixMillis),
        reversal_id: row.try_get("reversal_id")?,
    })
}

pub(super) fn event_from_row(row: &DbRow) -> Result<AuditEvent, StoreError> {
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

pub(super) fn parse<T>(text: &str) -> Result<T, StoreError>
where
    T: std::str::FromStr<Err = verdict_core::ParseError>,
{
    text.parse().map_err(|error| StoreError::Corrupt(format!("{error}: {text:?}")))
}

pub(super) fn parse_optional<T>(text: Option<&str>) -> Result<Option<T>, StoreError>
where
    T: std::str::FromStr<Err = verdict_core::ParseError>,
{
    text.map(parse).transpose()
}

/// The rows of a `SELECT session_id, COUNT(*) OVER () AS total … LIMIT n`:
/// how many matched in all, and the first `sample` of their sessions, with
/// no more than the sample read.
pub(super) fn counted_sample(
    rows: &[DbRow],
    sample: usize,
) -> Result<(i64, Vec<String>), StoreError> {
    let total = match rows.first() {
        Some(row) => row.try_get("total")?,
        None => 0,
    };
    let sessions = rows
        .iter()
        .take(sample)
        .map(|row| row.try_get("session_id"))
        .collect::<Result<Vec<String>, _>>()?;
    Ok((total, sessions))
}
