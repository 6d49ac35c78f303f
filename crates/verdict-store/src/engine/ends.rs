//! Ends, a group at a time: the group's sessions locked in one statement
//! in id order, their presence and users read in one statement a table,
//! each end planned in memory by the core (`verdict_core::plan_end`), and
//! each table written by one statement for the whole group.
//!
//! Locking in id order is what lets several processes end the same
//! sessions in any order without deadlocking each other on PostgreSQL.

use std::collections::HashMap;

use serde_json::{Value, json};
use sqlx::Row;
use verdict_core::{
    EndPlan, EndRequest, Message, MoneyPlan, Notice, Party, PostingKind, PresenceEvent,
    PresenceKind, SettleFacts, SettleRules, Status, UnixMillis, plan_end,
};

use super::dialect::DbConnection;
use super::rows::{outcome_json, parse_optional, policy_json, session_from_row};
use super::setwise::{Rows, ints, texts};
use crate::{Actor, Ended, PayoutProvider, Session, Settings, StoreError};

/// One end to write.
#[derive(Clone, Debug)]
pub(crate) struct EndWrite {
    pub id: String,
    pub actor: Actor,
    pub claimed: Option<Value>,
    pub end: EndRequest,
    pub settings: Settings,
    pub now: UnixMillis,
}

/// What a group reads of its sessions' users.
#[derive(Default)]
pub(super) struct Users {
    emails: HashMap<String, String>,
    stripe_accounts: HashMap<String, String>,
}

/// The settlement rules of `settings`.
pub(super) fn rules(settings: &Settings) -> SettleRules {
    SettleRules {
        payouts_automatic: settings.payout_provider != PayoutProvider::Manual,
        finalize_after_seconds: settings.finalize_after_seconds,
    }
}

/// What the core needs of a session and its users to settle it.
pub(super) fn settle_facts(session: &Session, users: &Users) -> SettleFacts {
    SettleFacts {
        session_id: session.id.clone(),
        customer_id: session.customer_id.clone(),
        provider_id: session.provider_id.clone(),
        price: session.price.clone(),
        provider_account: session.provider_account.clone(),
        provider_stripe_account: users.stripe_accounts.get(&session.provider_id).cloned(),
        customer_email: users.emails.get(&session.customer_id).cloned(),
        provider_email: users.emails.get(&session.provider_id).cloned(),
        request_id: session.request_id.clone(),
        has_room: session.room.is_some(),
    }
}

/// Ends `writes` inside the caller's transaction and answers each, in
/// order: an end of a session already terminal (or ended earlier in the
/// same group) answers its outcome with `already_ended`, an unknown session
/// is not found. `Err` when a statement failed: the caller rolls the group
/// back and tries its writes one at a time.
pub(super) async fn end_group(
    tx: &mut DbConnection,
    writes: &[EndWrite],
) -> Result<Vec<Result<Ended, StoreError>>, StoreError> {
    let ids: Vec<String> = writes.iter().map(|write| write.id.clone()).collect();
    let mut sessions = lock_sessions(&mut *tx, &ids).await?;
    let open: Vec<&Session> =
        sessions.values().filter(|session| !session.status.is_terminal()).collect();
    let (mut presence, users) = if open.is_empty() {
        (HashMap::new(), Users::default())
    } else {
        let ids: Vec<String> = open.iter().map(|session| session.id.clone()).collect();
        let parties: Vec<String> = open
            .iter()
            .flat_map(|session| [session.customer_id.clone(), session.provider_id.clone()])
            .collect();
        (presence_of(&mut *tx, &ids).await?, users_of(&mut *tx, &parties).await?)
    };
    let mut answers = Vec::with_capacity(writes.len());
    let mut planned: Vec<(Session, EndPlan, &EndWrite)> = Vec::new();
    for write in writes {
        let Some(session) = sessions.get_mut(&write.id) else {
            answers.push(Err(StoreError::not_found("session", &write.id)));
            continue;
        };
        let policy = *write.settings.policies.for_kind(session.kind);
        let mut events = presence.remove(&session.id).unwrap_or_default();
        events.extend(session.last_heartbeats());
        let facts = settle_facts(session, &users);
        let rules = rules(&write.settings);
        let Some(plan) =
            plan_end(&facts, &session.facts(), &events, &policy, &rules, write.end, write.now)
        else {
            answers.push(Ok(Ended { session: session.clone(), already_ended: true }));
            continue;
        };
        let ended = Session {
            status: plan.outcome.status,
            reason: Some(plan.outcome.reason),
            started_at: plan.outcome.started_at,
            ended_at: Some(plan.outcome.ended_at),
            ended_by: Some(write.actor.role),
            billable_seconds: Some(plan.outcome.billable_seconds),
            charged_cents: Some(plan.charged),
            finalizes_at: plan.finalizes_at,
            ..session.clone()
        };
        *session = ended.clone();
        answers.push(Ok(Ended { session: ended.clone(), already_ended: false }));
        planned.push((ended, plan, write));
    }
    if !planned.is_empty() {
        write_ends(&mut *tx, &planned).await?;
    }
    Ok(answers)
}

/// The sessions of `ids` that exist, locked in id order (one statement).
pub(super) async fn lock_sessions(
    tx: &mut DbConnection,
    ids: &[String],
) -> Result<HashMap<String, Session>, StoreError> {
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    let rows = Rows::default().text("id", texts(ids));
    let mut query = rows.statement(concat!(
        "SELECT ",
        session_columns!(),
        " FROM sessions WHERE id IN (SELECT id FROM u) ORDER BY id",
        for_update!()
    ));
    let rows = query.build().fetch_all(&mut *tx).await?;
    rows.iter()
        .map(|row| session_from_row(row).map(|session| (session.id.clone(), session)))
        .collect()
}

/// The joins and leaves of `ids`, by session, in recording order.
async fn presence_of(
    tx: &mut DbConnection,
    ids: &[String],
) -> Result<HashMap<String, Vec<PresenceEvent>>, StoreError> {
    let rows = Rows::default().text("id", texts(ids.iter().cloned()));
    let mut query = rows.statement(
        "SELECT session_id, type, party, at, connection FROM session_events \
         WHERE session_id IN (SELECT id FROM u) AND type IN ('joined', 'left') \
         ORDER BY session_id, seq",
    );
    let rows = query.build().fetch_all(&mut *tx).await?;
    let mut presence: HashMap<String, Vec<PresenceEvent>> = HashMap::new();
    for row in &rows {
        let session_id: String = row.try_get("session_id")?;
        let event_type: &str = row.try_get("type")?;
        let kind = if event_type == "joined" { PresenceKind::Joined } else { PresenceKind::Left };
        let party = parse_optional(row.try_get("party")?)?.ok_or_else(|| {
            StoreError::Corrupt(format!("presence event of {session_id} without a party"))
        })?;
        let connection =
            verdict_core::Connection::named(row.try_get::<Option<&str>, _>("connection")?);
        let at = UnixMillis(row.try_get("at")?);
        presence.entry(session_id).or_default().push(PresenceEvent { party, kind, at, connection });
    }
    Ok(presence)
}

/// The e-mail addresses and Stripe accounts of `ids` that are known.
pub(super) async fn users_of(tx: &mut DbConnection, ids: &[String]) -> Result<Users, StoreError> {
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    let rows = Rows::default().text("id", texts(ids));
    let mut query = rows.statement(
        "SELECT id, email, stripe_account FROM users WHERE id IN (SELECT id FROM u) \
         AND (email IS NOT NULL OR stripe_account IS NOT NULL)",
    );
    let mut users = Users::default();
    for row in query.build().fetch_all(&mut *tx).await? {
        let id: String = row.try_get("id")?;
        if let Some(email) = row.try_get::<Option<String>, _>("email")? {
            users.emails.insert(id.clone(), email);
        }
        if let Some(account) = row.try_get::<Option<String>, _>("stripe_account")? {
            users.stripe_accounts.insert(id, account);
        }
    }
    Ok(users)
}

/// Writes the planned ends, a statement a table.
async fn write_ends(
    tx: &mut DbConnection,
    planned: &[(Session, EndPlan, &EndWrite)],
) -> Result<(), StoreError> {
    let policies: Vec<Value> =
        planned.iter().map(|(_, plan, _)| policy_json(&plan.policy)).collect();
    let updated = Rows::default()
        .text("id", texts(planned.iter().map(|(session, ..)| session.id.clone())))
        .text("status", texts(planned.iter().map(|(_, plan, _)| plan.outcome.status.as_str())))
        .text("reason", texts(planned.iter().map(|(_, plan, _)| plan.outcome.reason.as_str())))
        .int(
            "started_at",
            planned.iter().map(|(_, plan, _)| plan.outcome.started_at.map(|at| at.0)).collect(),
        )
        .int("ended_at", ints(planned.iter().map(|(_, plan, _)| plan.outcome.ended_at.0)))
        .text("ended_by", texts(planned.iter().map(|(.., write)| write.actor.role.as_str())))
        .int("billable_seconds", ints(planned.iter().map(|(_, p, _)| p.outcome.billable_seconds)))
        .int("charged_cents", ints(planned.iter().map(|(_, plan, _)| plan.charged.0)))
        .text("policy", texts(policies.iter().map(Value::to_string)))
        .int(
            "finalizes_at",
            planned.iter().map(|(_, plan, _)| plan.finalizes_at.map(|at| at.0)).collect(),
        )
        .statement(
            "UPDATE sessions SET status = u.status, reason = u.reason, \
             started_at = u.started_at, ended_at = u.ended_at, ended_by = u.ended_by, \
             billable_seconds = u.billable_seconds, charged_cents = u.charged_cents, \
             policy = u.policy, finalizes_at = u.finalizes_at \
             FROM u WHERE sessions.id = u.id AND sessions.ended_at IS NULL",
        )
        .build()
        .execute(&mut *tx)
        .await?;
    if updated.rows_affected() != planned.len() as u64 {
        return Err(StoreError::Internal(format!(
            "{} of {} locked, open sessions were ended",
            updated.rows_affected(),
            planned.len()
        )));
    }

    let audits: Vec<String> = planned
        .iter()
        .zip(&policies)
        .map(|((_, plan, write), policy)| {
            json!({
                "claimed": write.claimed,
                "policy": policy,
                "outcome": outcome_json(&plan.outcome),
            })
            .to_string()
        })
        .collect();
    Rows::default()
        .text("session_id", texts(planned.iter().map(|(session, ..)| session.id.clone())))
        .text("actor_role", texts(planned.iter().map(|(.., write)| write.actor.role.as_str())))
        .text("actor_id", texts(planned.iter().map(|(.., write)| write.actor.id.clone())))
        .int("at", ints(planned.iter().map(|(.., write)| write.now.0)))
        .text("data", texts(audits))
        .statement(
            "INSERT INTO session_events (session_id, type, party, actor_role, actor_id, at, \
             data) SELECT session_id, 'ended', NULL, actor_role, actor_id, at, data FROM u",
        )
        .build()
        .execute(&mut *tx)
        .await?;

    let notices: Vec<(&Session, Notice, UnixMillis)> =
        planned.iter().map(|(session, plan, write)| (session, plan.notice, write.now)).collect();
    write_notices(&mut *tx, &notices).await?;

    let requests: Vec<(&str, &str, Status, UnixMillis)> = planned
        .iter()
        .filter_map(|(session, plan, write)| {
            Some((
                session.request_id.as_deref()?,
                session.id.as_str(),
                plan.request_status?,
                write.now,
            ))
        })
        .collect();
    settle_requests(&mut *tx, &requests).await?;

    let money: Vec<(&Session, &MoneyPlan, UnixMillis, &Settings)> = planned
        .iter()
        .map(|(session, plan, write)| (session, &plan.money, write.now, &write.settings))
        .collect();
    let mut messages: Vec<(&str, &Message, UnixMillis)> = Vec::new();
    for (session, plan, write) in planned {
        messages
            .extend(plan.messages.iter().map(|message| (session.id.as_str(), message, write.now)));
    }
    write_money(&mut *tx, &money, messages).await
}

/// A notification to each party of each session, at most one per
/// session, party and kind.
pub(super) async fn write_notices(
    tx: &mut DbConnection,
    notices: &[(&Session, Notice, UnixMillis)],
) -> Result<(), StoreError> {
    if notices.is_empty() {
        return Ok(());
    }
    let both = |f: &dyn Fn(&Session, Notice, UnixMillis, Party) -> Option<String>| {
        notices
            .iter()
            .flat_map(|(session, notice, at)| {
                [Party::Customer, Party::Provider].map(|party| f(session, *notice, *at, party))
            })
            .collect::<Vec<_>>()
    };
    Rows::default()
        .text("recipient_role", both(&|_, _, _, party| Some(party.as_str().to_owned())))
        .text(
            "recipient_id",
            both(&|session, _, _, party| Some(session.party_id(party).to_owned())),
        )
        .text("session_id", both(&|session, _, _, _| Some(session.id.clone())))
        .text("kind", both(&|_, notice, _, _| Some(notice.kind.as_str().to_owned())))
        .text("reason", both(&|_, notice, _, _| Some(notice.reason.as_str().to_owned())))
        .int("created_at", notices.iter().flat_map(|(_, _, at)| [Some(at.0), Some(at.0)]).collect())
        .statement(
            "INSERT INTO notifications (recipient_role, recipient_id, session_id, kind, reason, \
             created_at) SELECT recipient_role, recipient_id, session_id, kind, reason, \
             created_at FROM u WHERE true ON CONFLICT DO NOTHING",
        )
        .build()
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Each request follows its session to the end (once linked to it); their
/// queue entries go.
pub(super) async fn settle_requests(
    tx: &mut DbConnection,
    requests: &[(&str, &str, Status, UnixMillis)],
) -> Result<(), StoreError> {
    if requests.is_empty() {
        return Ok(());
    }
    let settled = Rows::default()
        .text("request_id", texts(requests.iter().map(|request| request.0)))
        .text("session_id", texts(requests.iter().map(|request| request.1)))
        .text("status", texts(requests.iter().map(|request| request.2.as_str())))
        .int("updated_at", ints(requests.iter().map(|request| request.3.0)))
        .statement(
            "UPDATE requests SET status = u.status, \
             session_id = COALESCE(requests.session_id, u.session_id), \
             updated_at = u.updated_at FROM u WHERE requests.id = u.request_id \
             AND (requests.session_id IS NULL OR requests.session_id = u.session_id) \
             RETURNING requests.id",
        )
        .build()
        .fetch_all(&mut *tx)
        .await?;
    let ids =
        settled.iter().map(|row| row.try_get::<String, _>("id")).collect::<Result<Vec<_>, _>>()?;
    if !ids.is_empty() {
        Rows::default()
            .text("id", texts(ids))
            .statement("DELETE FROM assignments WHERE request_id IN (SELECT id FROM u)")
            .build()
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}

/// Writes what final outcomes owe (settlement postings, their lines,
/// payouts) and `messages` followed by the money's own, a statement a
/// table.
pub(super) async fn write_money(
    tx: &mut DbConnection,
    money: &[(&Session, &MoneyPlan, UnixMillis, &Settings)],
    mut messages: Vec<(&str, &Message, UnixMillis)>,
) -> Result<(), StoreError> {
    let postings: Vec<_> = money
        .iter()
        .filter_map(|(session, plan, at, _)| Some((*session, plan.posting.as_ref()?, *at)))
        .collect();
    if !postings.is_empty() {
        for (_, posting, _) in &postings {
            if posting.kind != PostingKind::Settlement || !posting.is_balanced() {
                return Err(StoreError::Internal(format!("an unbalanced posting: {posting:?}")));
            }
        }
        Rows::default()
            .text("session_id", texts(postings.iter().map(|(session, ..)| session.id.clone())))
            .text(
                "currency",
                texts(postings.iter().map(|(_, posting, _)| posting.currency.clone())),
            )
            .int("created_at", ints(postings.iter().map(|(.., at)| at.0)))
            .statement(
                "INSERT INTO ledger_postings (session_id, kind, currency, created_at) \
                 SELECT session_id, 'settlement', currency, created_at FROM u",
            )
            .build()
            .execute(&mut *tx)
            .await?;
        let lines: Vec<(&str, &str, i64)> = postings
            .iter()
            .flat_map(|(session, posting, _)| {
                posting
                    .lines
                    .iter()
                    .map(|(account, amount)| (session.id.as_str(), account.as_str(), *amount))
            })
            .collect();
        Rows::default()
            .text("session_id", texts(lines.iter().map(|line| line.0)))
            .text("account", texts(lines.iter().map(|line| line.1)))
            .int("amount_cents", ints(lines.iter().map(|line| line.2)))
            .statement(
                "INSERT INTO ledger_lines (posting_id, account, amount_cents) \
                 SELECT p.id, u.account, u.amount_cents FROM u \
                 JOIN ledger_postings p ON p.session_id = u.session_id AND p.kind = 'settlement'",
            )
            .build()
            .execute(&mut *tx)
            .await?;
    }
    let payouts: Vec<_> = money
        .iter()
        .filter_map(|(session, plan, at, settings)| {
            Some((*session, plan.payout.as_ref()?, *at, *settings))
        })
        .collect();
    if !payouts.is_empty() {
        Rows::default()
            .text("id", texts(payouts.iter().map(|(_, payout, ..)| payout.id.clone())))
            .text("session_id", texts(payouts.iter().map(|(session, ..)| session.id.clone())))
            .text(
                "provider_id",
                texts(payouts.iter().map(|(_, payout, ..)| payout.provider_id.clone())),
            )
            .text(
                "destination",
                payouts.iter().map(|(_, payout, ..)| payout.destination.clone()).collect(),
            )
            .int("amount_cents", ints(payouts.iter().map(|(_, payout, ..)| payout.amount.0)))
            .text("currency", texts(payouts.iter().map(|(_, payout, ..)| payout.currency.clone())))
            .text(
                "provider",
                texts(payouts.iter().map(|(.., settings)| settings.payout_provider.as_str())),
            )
            .int("created_at", ints(payouts.iter().map(|(_, _, at, _)| at.0)))
            .statement(
                "INSERT INTO payouts (id, session_id, provider_id, destination, amount_cents, \
                 currency, state, provider, created_at, updated_at) \
                 SELECT id, session_id, provider_id, destination, amount_cents, currency, \
                 'pending', provider, created_at, created_at FROM u",
            )
            .build()
            .execute(&mut *tx)
            .await?;
    }
    for (session, plan, at, _) in money {
        messages.extend(plan.messages.iter().map(|message| (session.id.as_str(), message, *at)));
    }
    super::outbox::write_messages(&mut *tx, &messages).await
}
