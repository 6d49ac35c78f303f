//! The outbox: rows queued inside state changes, claimed, finished and
//! released by the workers; payouts settled by their delivery.

use serde_json::{Value, json};
use sqlx::Row;
use verdict_core::{Message, Topic, UnixMillis};

use crate::{OutboxHealth, OutboxItem, OutboxOutcome, OutboxRow, Payout, PayoutState, StoreError};

use super::Engine;
use super::dialect::{BEGIN_WRITE, DbConnection};
use super::ends::SetStatement;
use super::rows::{outcome_json, payout_from_row};
use super::setwise::{Rows, ints, texts};

impl Engine {
    pub(super) async fn claim_outbox(
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

    pub(super) async fn finish_outbox(
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
                    insert_outbox(&mut tx, session_id, Topic::PayoutPaid, &payload, now).await?;
                }
                ("delivered", None, None, None)
            }
            OutboxOutcome::PayoutReversed { payout_id, transfer_id, reversal_id } => {
                settle_reversal(
                    &mut tx,
                    payout_id,
                    transfer_id.as_ref(),
                    reversal_id.as_ref(),
                    now,
                )
                .await?;
                ("delivered", None, None, None)
            }
            OutboxOutcome::PayoutFailed { payout_id, reason } => {
                let payout =
                    settle_payout(&mut tx, payout_id, "failed", None, Some(reason), now).await?;
                if let (Some(payout), Some(session_id)) = (payout, &session_id) {
                    let payload = payout_event("payout.failed", &payout);
                    insert_outbox(&mut tx, session_id, Topic::PayoutFailed, &payload, now).await?;
                }
                ("delivered", None, Some(reason.clone()), None)
            }
            OutboxOutcome::FanOut { copies } => {
                for (key, payload) in copies {
                    fan_out(&mut tx, id, key, payload, now).await?;
                }
                ("delivered", None, None, None)
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

    pub(super) async fn retry_payout(
        &self,
        id: &str,
        now: UnixMillis,
    ) -> Result<Payout, StoreError> {
        let mut tx = self.writer.begin_with(BEGIN_WRITE).await?;
        let payout = sqlx::query(concat!(
            "SELECT ",
            payout_columns!(),
            " FROM payouts WHERE id = $1",
            for_update!()
        ))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .as_ref()
        .map(payout_from_row)
        .transpose()?
        .ok_or_else(|| StoreError::not_found("payout", id))?;
        if payout.reversed_at.is_some() {
            return Err(StoreError::Conflict(format!(
                "payout {id} was reversed by a repair: it is never paid"
            )));
        }
        let delivery = sqlx::query(concat!(
            "SELECT id, state, payload FROM outbox WHERE session_id = $1 AND topic = $2",
            for_update!()
        ))
        .bind(&payout.session_id)
        .bind(Topic::Payout.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        let delivery_state: Option<String> =
            delivery.as_ref().map(|row| row.try_get("state")).transpose()?;
        let retryable = payout.state == PayoutState::Failed
            || (payout.state == PayoutState::Pending && delivery_state.as_deref() == Some("dead"));
        if !retryable {
            return Err(StoreError::Conflict(format!(
                "payout {id} is {} and its delivery {}: only a failed payout or a dead \
                 delivery is retried",
                payout.state.as_str(),
                delivery_state.as_deref().unwrap_or("absent"),
            )));
        }
        sqlx::query(
            "UPDATE payouts SET state = 'pending', failure_reason = NULL, updated_at = $1 \
             WHERE id = $2",
        )
        .bind(now.0)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        // The next attempt asks Stripe first: a transfer found is recorded,
        // and only when there is none does it take a new idempotency key.
        let mut payload = match &delivery {
            Some(row) => {
                let text: String = row.try_get("payload")?;
                serde_json::from_str(&text)
                    .map_err(|error| StoreError::Corrupt(format!("outbox payload: {error}")))?
            }
            None => json!({"payout_id": payout.id, "session_id": payout.session_id}),
        };
        payload["look_up_first"] = json!(true);
        match delivery {
            Some(row) => {
                let outbox_id: i64 = row.try_get("id")?;
                sqlx::query(
                    "UPDATE outbox SET state = 'pending', attempts = 0, due_at = $1, \
                     last_error = NULL, delivered_at = NULL, lease_owner = NULL, \
                     leased_until = NULL, payload = $2 WHERE id = $3",
                )
                .bind(now.0)
                .bind(payload.to_string())
                .bind(outbox_id)
                .execute(&mut *tx)
                .await?;
            }
            None => {
                insert_outbox(&mut tx, &payout.session_id, Topic::Payout, &payload, now).await?;
            }
        }
        let payout = read_payout(&mut tx, id).await?;
        tx.commit().await?;
        Ok(payout)
    }

    pub(super) async fn configuration_faults(
        &self,
        sample: usize,
    ) -> Result<(i64, Vec<String>), StoreError> {
        let rows = sqlx::query(
            "SELECT session_id, COUNT(*) OVER () AS total FROM outbox \
             WHERE state = 'pending' AND (topic = $1 OR topic = $2) \
             AND last_error LIKE $3 ORDER BY session_id LIMIT $4",
        )
        .bind(Topic::Payout.as_str())
        .bind(Topic::PayoutReversal.as_str())
        .bind(format!("{}%", crate::CONFIGURATION_FAULT))
        .bind(sample.max(1) as i64)
        .fetch_all(&self.reader)
        .await?;
        super::rows::counted_sample(&rows, sample)
    }

    pub(super) async fn release_outbox(&self, owner: &str) -> Result<u64, StoreError> {
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

    pub(super) async fn outbox(
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

    pub(super) async fn outbox_health(
        &self,
        overdue_before: UnixMillis,
    ) -> Result<OutboxHealth, StoreError> {
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
}

async fn insert_outbox(
    connection: &mut DbConnection,
    session_id: &str,
    topic: Topic,
    payload: &Value,
    now: UnixMillis,
) -> Result<(), StoreError> {
    let (channel, topic) = (topic.channel().as_str(), topic.as_str());
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

/// Queues a copy of row `id` for the destination `key`: its own channel
/// (`<channel>:<key>`) and dedupe key, the message's `created_at`, due now.
async fn fan_out(
    connection: &mut DbConnection,
    id: i64,
    key: &str,
    payload: &Value,
    now: UnixMillis,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO outbox (session_id, topic, channel, dedupe_key, payload, due_at, created_at) \
         SELECT session_id, topic, channel || ':' || $1, dedupe_key || '@' || $1, $2, $3, \
         created_at FROM outbox WHERE id = $4 ON CONFLICT (dedupe_key) DO NOTHING",
    )
    .bind(key)
    .bind(payload.to_string())
    .bind(now.0)
    .bind(id)
    .execute(&mut *connection)
    .await?;
    Ok(())
}

/// Moves a pending payout to `paid` or `failed`; `None` when it was not
/// pending (already settled by an earlier delivery).
///
/// A transfer is recorded as it happened even when a repair reversed the
/// payout meanwhile (the transfer was in flight, or made and answered too
/// late): the money is at Stripe, so the payout's reversal is queued again
/// if it already ran, and reverses the transfer at Stripe.
async fn settle_payout(
    connection: &mut DbConnection,
    payout_id: &str,
    state: &str,
    transfer_id: Option<&String>,
    reason: Option<&String>,
    now: UnixMillis,
) -> Result<Option<Payout>, StoreError> {
    let updated = sqlx::query(
        "UPDATE payouts SET state = $1, transfer_id = $2, failure_reason = $3, updated_at = $4, \
         paid_at = CASE WHEN $1 = 'paid' THEN $4 ELSE paid_at END \
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
    let payout = read_payout(&mut *connection, payout_id).await?;
    if payout.reversed_at.is_some() && state == "paid" {
        tracing::warn!(payout = %payout.id, "a reversed payout was paid: its reversal runs again");
        requeue_reversal(&mut *connection, &payout, now).await?;
    }
    Ok(Some(payout))
}

async fn read_payout(connection: &mut DbConnection, payout_id: &str) -> Result<Payout, StoreError> {
    let row = sqlx::query(concat!("SELECT ", payout_columns!(), " FROM payouts WHERE id = $1"))
        .bind(payout_id)
        .fetch_one(&mut *connection)
        .await?;
    payout_from_row(&row)
}

/// Makes sure a `payout.reversal` row is pending for a reversed payout:
/// the one written with the reversal, due again if it already finished
/// (its delivery reads the payout as it is then).
async fn requeue_reversal(
    connection: &mut DbConnection,
    payout: &Payout,
    now: UnixMillis,
) -> Result<(), StoreError> {
    let topic = Topic::PayoutReversal.as_str();
    let pending: Option<i64> = sqlx::query_scalar(
        "SELECT id FROM outbox WHERE session_id = $1 AND topic = $2 AND state = 'pending'",
    )
    .bind(&payout.session_id)
    .bind(topic)
    .fetch_optional(&mut *connection)
    .await?;
    if pending.is_some() {
        return Ok(());
    }
    let requeued = sqlx::query(
        "UPDATE outbox SET state = 'pending', due_at = $1, attempts = 0, last_error = NULL, \
         delivered_at = NULL, lease_owner = NULL, leased_until = NULL \
         WHERE session_id = $2 AND topic = $3",
    )
    .bind(now.0)
    .bind(&payout.session_id)
    .bind(topic)
    .execute(&mut *connection)
    .await?;
    if requeued.rows_affected() == 0 {
        let payload = json!({"payout_id": payout.id, "session_id": payout.session_id});
        insert_outbox(connection, &payout.session_id, Topic::PayoutReversal, &payload, now).await?;
    }
    Ok(())
}

/// Records a finished reversal: the transfer Stripe was found to hold (a
/// payout still pending in our books becomes `paid`), and Stripe's
/// reversal of it.
async fn settle_reversal(
    connection: &mut DbConnection,
    payout_id: &str,
    transfer_id: Option<&String>,
    reversal_id: Option<&String>,
    now: UnixMillis,
) -> Result<(), StoreError> {
    if let Some(transfer_id) = transfer_id {
        sqlx::query(
            "UPDATE payouts SET state = 'paid', transfer_id = $1, failure_reason = NULL, \
             paid_at = $2, updated_at = $2 WHERE id = $3 AND transfer_id IS NULL",
        )
        .bind(transfer_id)
        .bind(now.0)
        .bind(payout_id)
        .execute(&mut *connection)
        .await?;
    }
    sqlx::query(
        "UPDATE payouts SET reversal_settled_at = $1, reversal_id = COALESCE($2, reversal_id), \
         updated_at = $1 WHERE id = $3",
    )
    .bind(now.0)
    .bind(reversal_id)
    .bind(payout_id)
    .execute(&mut *connection)
    .await?;
    Ok(())
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

/// The payload a message carries to its channel.
pub(super) fn payload(session_id: &str, message: &Message) -> Value {
    match message {
        Message::SessionStarted { at } => {
            json!({"event": "session.started", "session_id": session_id, "at": at.0})
        }
        Message::SessionEnded { outcome, charged } => json!({
            "event": "session.ended",
            "session_id": session_id,
            "outcome": outcome_json(outcome),
            "charged_cents": charged.0,
        }),
        Message::SessionFinalized { outcome, charged } => json!({
            "event": "session.finalized",
            "session_id": session_id,
            "status": outcome.status.as_str(),
            "reason": outcome.reason.as_str(),
            "billable_seconds": outcome.billable_seconds,
            "charged_cents": charged.0,
        }),
        Message::Receipt { party, to } => {
            json!({"session_id": session_id, "party": party.as_str(), "to": to})
        }
        Message::Payout { payout_id } => json!({"payout_id": payout_id, "session_id": session_id}),
        Message::PayoutReversal { payout_id, state, provider, transfer_id, amount } => json!({
            "payout_id": payout_id,
            "session_id": session_id,
            "state": state,
            "provider": provider,
            "transfer_id": transfer_id,
            "amount_cents": amount.0,
        }),
    }
}

/// The statement queueing `messages` (each with its session and instant),
/// in order, all at once.
pub(super) fn message_statement(messages: &[(&str, &Message, UnixMillis)]) -> Option<SetStatement> {
    if messages.is_empty() {
        return None;
    }
    let topics: Vec<Topic> = messages.iter().map(|(_, message, _)| message.topic()).collect();
    let rows = Rows::default()
        .int("n", ints(0..messages.len() as i64))
        .text("session_id", texts(messages.iter().map(|(session_id, ..)| *session_id)))
        .text("topic", texts(topics.iter().map(|topic| topic.as_str())))
        .text("channel", texts(topics.iter().map(|topic| topic.channel().as_str())))
        .text(
            "dedupe_key",
            texts(
                messages
                    .iter()
                    .zip(&topics)
                    .map(|((session_id, ..), topic)| format!("{}:{session_id}", topic.as_str())),
            ),
        )
        .text(
            "payload",
            texts(
                messages
                    .iter()
                    .map(|(session_id, message, _)| payload(session_id, message).to_string()),
            ),
        )
        .int("due_at", ints(messages.iter().map(|(.., at)| at.0)));
    Some(SetStatement {
        rows,
        body: "INSERT INTO outbox (session_id, topic, channel, dedupe_key, payload, due_at, \
               created_at) SELECT session_id, topic, channel, dedupe_key, payload, due_at, due_at \
               FROM u ORDER BY n",
        changes: Some(messages.len() as u64),
        reads_earlier: false,
    })
}

/// Queues `messages` (see `message_statement`).
pub(super) async fn write_messages(
    tx: &mut DbConnection,
    messages: &[(&str, &Message, UnixMillis)],
) -> Result<(), StoreError> {
    match message_statement(messages) {
        Some(statement) => statement.execute(tx).await,
        None => Ok(()),
    }
}
