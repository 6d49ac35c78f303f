//! Repair of imported history beyond re-deciding a terminal session:
//! imported sessions still `live` or `waiting` (history, not traffic: a
//! repair ends them, never the sweeper), and the money of imported
//! sessions whose status is right but which the old system paid.

use serde_json::json;
use sqlx::Row;
use verdict_core::{
    EndCause, EndRequest, Message, MoneyPlan, Role, Status, UnixMillis, charge_for, decide,
    plan_money, plan_reversal, sweep_due,
};

use crate::{Actor, Correction, EventType, Session, Settings, StoreError};

use super::Engine;
use super::dialect::BEGIN_WRITE;
use super::ends::{rules, settle_facts, users_of, write_money};
use super::rows::policy_json;
use super::sessions::{insert_event, lock_session, presence_events};
use super::settle::{books, write_reversal};

/// The actor of every repair.
fn repairer() -> Actor {
    Actor { role: Role::System, id: "repair".to_owned() }
}

impl Engine {
    /// Imported sessions still open, by id after `after`, at most `limit`.
    pub(super) async fn open_imported(
        &self,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(
            "SELECT id FROM sessions WHERE status IN ('waiting', 'live') \
             AND import_run IS NOT NULL AND id > $1 ORDER BY id LIMIT $2",
        )
        .bind(after.unwrap_or(""))
        .bind(limit.clamp(1, crate::PAGE_LIMIT_MAX))
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(|row| row.try_get("id").map_err(StoreError::from)).collect()
    }

    /// Ends an imported session still `live` or `waiting` as its history
    /// says (where the sweeper would have ended it, or else at its last
    /// recorded instant), under its lock: the row, a `corrected` event by
    /// `repair`, and its money (a completed session's posting and payout;
    /// a reversal of what the old system paid otherwise). No receipts, no
    /// webhooks: it is history. `None` when it is not an open imported
    /// session (any more); with `apply` false, the plan only.
    pub(super) async fn end_imported(
        &self,
        id: &str,
        settings: &Settings,
        now: UnixMillis,
        apply: bool,
    ) -> Result<Option<Correction>, StoreError> {
        let mut tx = self.writer.begin_with(BEGIN_WRITE).await?;
        let session = lock_session(&mut tx, id).await?;
        let imported: Option<String> = sqlx::query("SELECT import_run FROM sessions WHERE id = $1")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?
            .try_get("import_run")?;
        if session.status.is_terminal() || imported.is_none() {
            tx.rollback().await?;
            return Ok(None);
        }
        let policy = *settings.policies.for_kind(session.kind);
        let events = presence_events(&mut tx, &session).await?;
        let facts = session.facts();
        let end = sweep_due(&facts, &events, &policy, now).unwrap_or_else(|| {
            let last = events.iter().map(|event| event.at).max().unwrap_or(session.created_at);
            EndRequest::new(last.max(session.created_at), EndCause::Requested)
        });
        let outcome = decide(&facts, &events, &policy, end);
        let charged = charge_for(&session.price, outcome.reason, outcome.billable_seconds);
        let correction = Correction {
            session_id: id.to_owned(),
            from: (session.status, None),
            to: (outcome.status, outcome.reason),
            money_effect: charged.0 - session.charged_cents.map_or(0, |cents| cents.0),
            needs_review: false,
        };
        if !apply {
            tx.rollback().await?;
            return Ok(Some(correction));
        }
        sqlx::query(
            "UPDATE sessions SET status = $1, reason = $2, billable_seconds = $3, started_at = $4, \
             ended_at = $5, ended_by = $6, charged_cents = $7, policy = $8 WHERE id = $9",
        )
        .bind(outcome.status.as_str())
        .bind(outcome.reason.as_str())
        .bind(outcome.billable_seconds)
        .bind(outcome.started_at.map(|at| at.0))
        .bind(outcome.ended_at.0)
        .bind(Role::System.as_str())
        .bind(charged.0)
        .bind(policy_json(&policy).to_string())
        .bind(id)
        .execute(&mut *tx)
        .await?;
        let data = json!({
            "from": {"status": session.status.as_str(), "reason": null},
            "to": {"status": outcome.status.as_str(), "reason": outcome.reason.as_str(),
                "billable_seconds": outcome.billable_seconds},
            "money_effect_cents": correction.money_effect,
            "policy": policy_json(&policy),
        });
        insert_event(&mut tx, id, EventType::Corrected, None, &repairer(), now, Some(&data))
            .await?;
        let ended = Session { outcome: Some(outcome), charged_cents: Some(charged), ..session };
        let books = books(&mut tx, &ended).await?;
        let users =
            users_of(&mut tx, &[ended.customer_id.clone(), ended.provider_id.clone()]).await?;
        let facts = settle_facts(&ended, &users);
        if outcome.status == Status::Completed {
            if !books.any_payout {
                let money =
                    plan_money(&facts, Status::Completed, charged, &policy, &rules(settings));
                let money = MoneyPlan {
                    messages: money
                        .messages
                        .into_iter()
                        .filter(|message| !matches!(message, Message::Receipt { .. }))
                        .collect(),
                    ..money
                };
                write_money(&mut tx, &[(&ended, &money, now, settings)], Vec::new()).await?;
            }
        } else if !books.payouts.is_empty() || books.net.iter().any(|(_, total)| *total != 0) {
            let reversal = plan_reversal(&facts, &books.net, &books.payouts);
            write_reversal(&mut tx, &ended, &reversal, now).await?;
        }
        tx.commit().await?;
        Ok(Some(correction))
    }
}
