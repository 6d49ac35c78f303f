//! The money of an end: the outcome settled, finalized, corrected or
//! re-derived under the session's lock, with its postings, payout, receipts
//! and notifications.

use std::collections::HashMap;

use serde_json::{Value, json};
use sqlx::Row;
use verdict_core::{
    Cents, EndRequest, Outcome, Party, Policy, PresenceEvent, Reason, Status, UnixMillis,
    charge_for, decide, platform_fee,
};

use crate::{
    Actor, Correction, EventType, Payout, PayoutProvider, Session, Settings, StoreError, accounts,
};

use super::dialect::{Db, DbConnection};
use super::outbox::insert_outbox;
use super::rows::{outcome_json, payout_from_row, policy_from_json, policy_json};
use super::sessions::{insert_event, presence_events};

/// Decides a locked, non-terminal session and writes everything its end
/// entails (SPEC §3), inside the caller's transaction: shared by `end` and
/// the sweeper. Returns the session as ended.
pub(super) async fn settle_end(
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
pub(super) async fn finalize_locked(
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
