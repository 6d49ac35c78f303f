//! The money of an end under the session's lock: the end itself (one
//! session through `ends.rs`), finalization, correction and re-derivation.
//! What each writes is planned by the core (`verdict_core::plan_*`); this
//! module reads the facts and writes the plan.

use serde_json::json;
use sqlx::Row;
use verdict_core::{
    Books, Cents, EndRequest, Outcome, PayoutFacts, Policy, PresenceEvent, ReversalPlan,
    UnixMillis, plan_correction, plan_finalize,
};

use crate::{Actor, Correction, EventType, Session, Settings, StoreError};

use super::dialect::DbConnection;
use super::ends::{
    EndWrite, end_group, rules, settle_facts, settle_requests, users_of, write_money, write_notices,
};
use super::outbox::write_messages;
use super::rows::{policy_from_json, policy_json};
use super::sessions::{insert_event, presence_events};

/// Decides a locked, non-terminal session and writes everything its end
/// entails (docs/settlement.md), inside the caller's transaction: the sweeper's end
/// of one session. Returns the session as ended.
pub(super) async fn settle_end(
    tx: &mut DbConnection,
    session: &Session,
    actor: &Actor,
    claimed: Option<serde_json::Value>,
    end: EndRequest,
    settings: &Settings,
    now: UnixMillis,
) -> Result<Session, StoreError> {
    let write = EndWrite {
        id: session.id.clone(),
        actor: actor.clone(),
        claimed,
        end,
        settings: *settings,
        now,
    };
    match end_group(tx, &[write]).await?.pop() {
        Some(Ok(ended)) if !ended.already_ended => Ok(ended.session),
        Some(Err(error)) => Err(error),
        _ => Err(StoreError::Internal(format!("session {} was not open to end", session.id))),
    }
}

/// Closes the finalization window of a locked session: settles the money
/// of the outcome it has now, once.
pub(super) async fn finalize_locked(
    tx: &mut DbConnection,
    session: &Session,
    settings: &Settings,
    now: UnixMillis,
) -> Result<Session, StoreError> {
    let policy = stored_policy(&mut *tx, session, settings).await?;
    let outcome = session.outcome.ok_or_else(|| {
        StoreError::Corrupt(format!("session {} is finalizing without an outcome", session.id))
    })?;
    let users =
        users_of(&mut *tx, &[session.customer_id.clone(), session.provider_id.clone()]).await?;
    let facts = settle_facts(session, &users);
    let charged = session.charged_cents.unwrap_or(Cents(0));
    let plan = plan_finalize(&facts, &outcome, charged, &policy, &rules(settings));
    let messages =
        plan.messages.iter().map(|message| (session.id.as_str(), message, now)).collect();
    write_money(&mut *tx, &[(session, &plan.money, now, settings)], messages).await?;
    sqlx::query("UPDATE sessions SET finalized_at = $1 WHERE id = $2")
        .bind(now.0)
        .bind(&session.id)
        .execute(&mut *tx)
        .await?;
    Ok(Session { finalized_at: Some(now), ..session.clone() })
}

/// Re-derives a locked, terminal session and, if the recorded outcome
/// differs, corrects it as `actor`: the row, a `corrected` audit event,
/// notifications, and a posting with its payout (newly completed, paid
/// once the session is final) or a reversal (wrongly completed). `None`
/// when the outcome stands. Shared by repair and finalization.
pub(super) async fn correct_locked(
    tx: &mut DbConnection,
    session: &Session,
    settings: &Settings,
    actor: &Actor,
    now: UnixMillis,
) -> Result<Option<Correction>, StoreError> {
    let id = session.id.as_str();
    let Some(recorded) = session.outcome else { return Ok(None) };
    let (policy, expected) = rederive_locked(&mut *tx, session, settings, None).await?;
    let Some(expected) = expected else { return Ok(None) };
    let books = books(&mut *tx, session).await?;
    let users =
        users_of(&mut *tx, &[session.customer_id.clone(), session.provider_id.clone()]).await?;
    let facts = settle_facts(session, &users);
    let old_charge = session.charged_cents.unwrap_or(Cents(0));
    let Some(plan) = plan_correction(
        &facts,
        &recorded,
        old_charge,
        &expected,
        &policy,
        &rules(settings),
        session.is_finalizing(),
        &books,
    ) else {
        return Ok(None);
    };
    let correction = Correction {
        session_id: id.to_owned(),
        from: (plan.from.0, Some(plan.from.1)),
        to: (plan.to.status, plan.to.reason),
        money_effect: plan.money_effect,
        needs_review: false,
    };
    sqlx::query(
        "UPDATE sessions SET status = $1, reason = $2, billable_seconds = $3, started_at = $4, \
         charged_cents = $5, policy = $6 WHERE id = $7",
    )
    .bind(plan.to.status.as_str())
    .bind(plan.to.reason.as_str())
    .bind(plan.to.billable_seconds)
    .bind(plan.to.started_at.map(|at| at.0))
    .bind(plan.charged.0)
    .bind(policy_json(&policy).to_string())
    .bind(id)
    .execute(&mut *tx)
    .await?;
    let data = json!({
        "from": {"status": plan.from.0.as_str(), "reason": plan.from.1.as_str()},
        "to": {"status": plan.to.status.as_str(), "reason": plan.to.reason.as_str(),
            "billable_seconds": plan.to.billable_seconds},
        "money_effect_cents": plan.money_effect,
        "policy": policy_json(&policy),
    });
    insert_event(&mut *tx, id, EventType::Corrected, None, actor, now, Some(&data)).await?;
    write_notices(&mut *tx, &[(session, plan.notice, now)]).await?;
    if let (Some(request_id), Some(status)) = (&session.request_id, plan.request_status) {
        settle_requests(&mut *tx, &[(request_id.as_str(), id, status, now)]).await?;
    }
    write_money(&mut *tx, &[(session, &plan.money, now, settings)], Vec::new()).await?;
    if let Some(reversal) = &plan.reversal {
        write_reversal(&mut *tx, session, reversal, now).await?;
    }
    Ok(Some(correction))
}

/// What the ledger and payouts hold for a session.
pub(super) async fn books(tx: &mut DbConnection, session: &Session) -> Result<Books, StoreError> {
    let net = sqlx::query(
        "SELECT l.account, CAST(SUM(l.amount_cents) AS BIGINT) AS total \
         FROM ledger_lines l JOIN ledger_postings p ON p.id = l.posting_id \
         WHERE p.session_id = $1 GROUP BY l.account ORDER BY l.account",
    )
    .bind(&session.id)
    .fetch_all(&mut *tx)
    .await?
    .iter()
    .map(|row| Ok((row.try_get("account")?, row.try_get("total")?)))
    .collect::<Result<Vec<(String, i64)>, StoreError>>()?;
    let rows = sqlx::query(
        "SELECT id, amount_cents, state, provider, transfer_id, reversed_at FROM payouts \
         WHERE session_id = $1 ORDER BY id",
    )
    .bind(&session.id)
    .fetch_all(&mut *tx)
    .await?;
    let mut payouts = Vec::new();
    for row in &rows {
        if row.try_get::<Option<i64>, _>("reversed_at")?.is_none() {
            payouts.push(PayoutFacts {
                id: row.try_get("id")?,
                amount: Cents(row.try_get("amount_cents")?),
                state: row.try_get("state")?,
                provider: row.try_get("provider")?,
                transfer_id: row.try_get("transfer_id")?,
            });
        }
    }
    Ok(Books { net, payouts, any_payout: !rows.is_empty() })
}

/// Writes a reversal: its posting, each payout marked reversed and a
/// `payout.reversal` message per payout.
pub(super) async fn write_reversal(
    tx: &mut DbConnection,
    session: &Session,
    reversal: &ReversalPlan,
    now: UnixMillis,
) -> Result<(), StoreError> {
    if let Some(posting) = &reversal.posting {
        if !posting.is_balanced() {
            return Err(StoreError::Internal(format!("an unbalanced reversal: {posting:?}")));
        }
        let posting_id: i64 = sqlx::query(
            "INSERT INTO ledger_postings (session_id, kind, currency, created_at) \
             VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .bind(&session.id)
        .bind(posting.kind.as_str())
        .bind(&posting.currency)
        .bind(now.0)
        .fetch_one(&mut *tx)
        .await?
        .try_get("id")?;
        let mut insert = sqlx::QueryBuilder::<super::dialect::Db>::new(
            "INSERT INTO ledger_lines (posting_id, account, amount_cents) ",
        );
        insert.push_values(&posting.lines, |mut row, (account, amount)| {
            row.push_bind(posting_id).push_bind(account.clone()).push_bind(*amount);
        });
        insert.build().execute(&mut *tx).await?;
    }
    for payout_id in &reversal.payouts {
        sqlx::query("UPDATE payouts SET reversed_at = $1, updated_at = $1 WHERE id = $2")
            .bind(now.0)
            .bind(payout_id)
            .execute(&mut *tx)
            .await?;
    }
    let messages: Vec<_> =
        reversal.messages.iter().map(|message| (session.id.as_str(), message, now)).collect();
    write_messages(&mut *tx, &messages).await
}

/// The policy a locked, terminal session was decided with and its outcome
/// re-derived from its presence (and `extra`, an event not stored), as
/// verification re-derives it.
pub(super) async fn rederive_locked(
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
pub(super) async fn decided_at(
    tx: &mut DbConnection,
    id: &str,
) -> Result<Option<UnixMillis>, StoreError> {
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
pub(super) async fn stored_policy(
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
