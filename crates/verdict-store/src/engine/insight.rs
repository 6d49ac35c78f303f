//! Rates per kind and per provider (grouped reads over the window's ended
//! sessions, on the `ended_at` index), provider money from the ledger, and
//! the threshold alerts' states with the webhooks their changes queue.

use std::collections::BTreeMap;

use serde_json::json;
use sqlx::Row;
use verdict_core::{Cents, Kind, UnixMillis};

use crate::StoreError;
use crate::insight::{
    ALERT_WINDOW_HOURS, Counts, ProviderMoney, ProviderSort, ProviderStats, Rule, Scope,
    ThresholdAlert, Transition,
};

use super::Engine;
use super::dialect::{BEGIN_WRITE, DbConnection, DbRow};

/// The providers' ranking, worst first by `$order` (a fixed SQL text of
/// the sort key; the values stay bound), then the busiest, then by id.
macro_rules! ranking {
    ($order:literal) => {
        concat!(
            "SELECT provider_id, ",
            counted!(),
            "FROM sessions WHERE ended_at >= $1 AND ended_at <= $2 GROUP BY provider_id \
             HAVING COUNT(*) >= $3 ORDER BY ",
            $order,
            "COUNT(*) DESC, provider_id LIMIT $4"
        )
    };
}

/// The counted columns of a group of ended sessions.
macro_rules! counted {
    () => {
        "COUNT(*) AS ended, \
         CAST(COALESCE(SUM(CASE WHEN reason = 'completed' THEN 1 ELSE 0 END), 0) AS BIGINT) \
         AS completed, \
         CAST(COALESCE(SUM(CASE WHEN reason = 'no_show_customer' OR reason = 'no_show_provider' \
         OR reason = 'no_show_both' THEN 1 ELSE 0 END), 0) AS BIGINT) AS no_show, \
         CAST(COALESCE(SUM(CASE WHEN reason = 'too_short' THEN 1 ELSE 0 END), 0) AS BIGINT) \
         AS too_short, \
         CAST(COALESCE(SUM(billable_seconds), 0) AS BIGINT) AS billable_seconds "
    };
}

/// Raised alert rows read per evaluation.
const RAISED_ROWS_MAX: i64 = 10_000;

fn counts_from_row(row: &DbRow) -> Result<Counts, StoreError> {
    Ok(Counts {
        ended: row.try_get("ended")?,
        completed: row.try_get("completed")?,
        no_show: row.try_get("no_show")?,
        too_short: row.try_get("too_short")?,
        billable_seconds: row.try_get("billable_seconds")?,
    })
}

impl Engine {
    pub(super) async fn scope_counts(
        &self,
        since: UnixMillis,
        until: UnixMillis,
        min_sessions: i64,
        providers_max: i64,
    ) -> Result<Vec<(Scope, Counts)>, StoreError> {
        let kinds = sqlx::query(concat!(
            "SELECT kind, ",
            counted!(),
            "FROM sessions WHERE ended_at >= $1 AND ended_at <= $2 GROUP BY kind ORDER BY kind"
        ))
        .bind(since.0)
        .bind(until.0)
        .fetch_all(&self.reader);
        // The busiest providers first (no rate to sort by).
        let providers = sqlx::query(ranking!(""))
            .bind(since.0)
            .bind(until.0)
            .bind(min_sessions)
            .bind(providers_max.max(1))
            .fetch_all(&self.reader);
        let (kinds, providers) = tokio::try_join!(kinds, providers)?;
        let mut scopes = Vec::with_capacity(kinds.len() + providers.len());
        for row in &kinds {
            let kind: String = row.try_get("kind")?;
            let kind: Kind = kind
                .parse()
                .map_err(|error| StoreError::Corrupt(format!("session kind: {error}")))?;
            scopes.push((Scope::Kind(kind), counts_from_row(row)?));
        }
        for row in &providers {
            scopes.push((Scope::Provider(row.try_get("provider_id")?), counts_from_row(row)?));
        }
        Ok(scopes)
    }

    pub(super) async fn provider_stats(
        &self,
        provider_id: &str,
        since: UnixMillis,
        until: UnixMillis,
    ) -> Result<ProviderStats, StoreError> {
        let counts = sqlx::query(concat!(
            "SELECT ",
            counted!(),
            "FROM sessions WHERE ended_at >= $1 AND ended_at <= $2 AND provider_id = $3"
        ))
        .bind(since.0)
        .bind(until.0)
        .bind(provider_id)
        .fetch_one(&self.reader);
        // Every posting of the window's sessions: a settlement and, when
        // a repair took it back, its reversal (netting it to zero).
        let money = sqlx::query(
            "SELECT p.currency, \
             CAST(COALESCE(SUM(CASE WHEN l.account LIKE 'customer_receivable:%' \
             THEN l.amount_cents ELSE 0 END), 0) AS BIGINT) AS charged, \
             CAST(COALESCE(SUM(CASE WHEN l.account = $4 THEN -l.amount_cents ELSE 0 END), 0) \
             AS BIGINT) AS earned \
             FROM sessions s JOIN ledger_postings p ON p.session_id = s.id \
             JOIN ledger_lines l ON l.posting_id = p.id \
             WHERE s.ended_at >= $1 AND s.ended_at <= $2 AND s.provider_id = $3 \
             GROUP BY p.currency ORDER BY p.currency",
        )
        .bind(since.0)
        .bind(until.0)
        .bind(provider_id)
        .bind(crate::accounts::provider_payable(provider_id))
        .fetch_all(&self.reader);
        let (counts, money) = tokio::try_join!(counts, money)?;
        let money = money
            .iter()
            .map(|row| {
                Ok(ProviderMoney {
                    currency: row.try_get("currency")?,
                    charged: Cents(row.try_get("charged")?),
                    earned: Cents(row.try_get("earned")?),
                })
            })
            .collect::<Result<_, StoreError>>()?;
        Ok(ProviderStats {
            provider_id: provider_id.to_owned(),
            counts: counts_from_row(&counts)?,
            money,
        })
    }

    pub(super) async fn provider_ranking(
        &self,
        since: UnixMillis,
        until: UnixMillis,
        sort: ProviderSort,
        min_sessions: i64,
        limit: i64,
    ) -> Result<Vec<(String, Counts)>, StoreError> {
        // The ordering is one of four constant texts, never caller text.
        let statement = match sort {
            ProviderSort::NoShowRate => ranking!(
                "SUM(CASE WHEN reason = 'no_show_customer' OR reason = 'no_show_provider' \
                 OR reason = 'no_show_both' THEN 1 ELSE 0 END) * 1.0 / COUNT(*) DESC, "
            ),
            ProviderSort::CompletionRate => ranking!(
                "SUM(CASE WHEN reason = 'completed' THEN 1 ELSE 0 END) * 1.0 / COUNT(*) ASC, "
            ),
            ProviderSort::TooShortRate => ranking!(
                "SUM(CASE WHEN reason = 'too_short' THEN 1 ELSE 0 END) * 1.0 / COUNT(*) DESC, "
            ),
            ProviderSort::Sessions => ranking!(""),
        };
        let rows = sqlx::query(statement)
            .bind(since.0)
            .bind(until.0)
            .bind(min_sessions.max(1))
            .bind(limit.clamp(1, crate::PAGE_LIMIT_MAX))
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(|row| Ok((row.try_get("provider_id")?, counts_from_row(row)?))).collect()
    }

    pub(super) async fn record_alert_states(
        &self,
        raised: &[ThresholdAlert],
        now: UnixMillis,
    ) -> Result<Vec<Transition>, StoreError> {
        let mut tx = self.writer.begin_with(BEGIN_WRITE).await?;
        let rows = sqlx::query(
            "SELECT key, rule, scope_field, scope_value, value, threshold, sessions \
             FROM alert_states WHERE raised = 1 ORDER BY key LIMIT $1",
        )
        .bind(RAISED_ROWS_MAX)
        .fetch_all(&mut *tx)
        .await?;
        // Every change, raise or resolve, in key order: two evaluations
        // at once lock rows in the same order and never deadlock.
        let mut changes: BTreeMap<String, Change> =
            raised.iter().map(|alert| (alert.key(), Change::Raise(alert.clone()))).collect();
        for row in &rows {
            let key: String = row.try_get("key")?;
            if changes.contains_key(&key) {
                continue;
            }
            let (rule, field, value): (String, String, String) =
                (row.try_get("rule")?, row.try_get("scope_field")?, row.try_get("scope_value")?);
            let (Some(rule), Some(scope)) = (Rule::parse(&rule), Scope::parse(&field, &value))
            else {
                return Err(StoreError::Corrupt(format!("alert state {key:?}")));
            };
            let last = ThresholdAlert {
                rule,
                scope,
                value: row.try_get("value")?,
                threshold: row.try_get("threshold")?,
                sessions: row.try_get("sessions")?,
            };
            changes.insert(key, Change::Resolve(last));
        }
        let mut transitions = Vec::new();
        for (key, change) in changes {
            let transition = match change {
                Change::Raise(alert) => raise(&mut tx, &key, alert, now).await?,
                Change::Resolve(alert) => resolve(&mut tx, &key, alert, now).await?,
            };
            if let Some(transition) = transition {
                queue_webhook(&mut tx, &key, &transition, now).await?;
                transitions.push(transition);
            }
        }
        tx.commit().await?;
        Ok(transitions)
    }
}

enum Change {
    Raise(ThresholdAlert),
    Resolve(ThresholdAlert),
}

/// Marks an alert raised unless it already is: `None` when another
/// evaluation (or an earlier one) raised it.
async fn raise(
    tx: &mut DbConnection,
    key: &str,
    alert: ThresholdAlert,
    now: UnixMillis,
) -> Result<Option<Transition>, StoreError> {
    let changed: Option<i64> = sqlx::query_scalar(
        "INSERT INTO alert_states (key, rule, scope_field, scope_value, raised, value, \
         threshold, sessions, changes, changed_at) VALUES ($1, $2, $3, $4, 1, $5, $6, $7, 1, $8) \
         ON CONFLICT (key) DO UPDATE SET raised = 1, value = excluded.value, \
         threshold = excluded.threshold, sessions = excluded.sessions, \
         changes = alert_states.changes + 1, changed_at = excluded.changed_at \
         WHERE alert_states.raised = 0 RETURNING changes",
    )
    .bind(key)
    .bind(alert.rule.as_str())
    .bind(alert.scope.field())
    .bind(alert.scope.value())
    .bind(alert.value)
    .bind(alert.threshold)
    .bind(alert.sessions)
    .bind(now.0)
    .fetch_optional(&mut *tx)
    .await?;
    Ok(changed.map(|changes| transition(alert, true, changes)))
}

/// Marks a raised alert resolved: `None` when another evaluation did.
async fn resolve(
    tx: &mut DbConnection,
    key: &str,
    alert: ThresholdAlert,
    now: UnixMillis,
) -> Result<Option<Transition>, StoreError> {
    let changed: Option<i64> = sqlx::query_scalar(
        "UPDATE alert_states SET raised = 0, changes = changes + 1, changed_at = $1 \
         WHERE key = $2 AND raised = 1 RETURNING changes",
    )
    .bind(now.0)
    .bind(key)
    .fetch_optional(&mut *tx)
    .await?;
    Ok(changed.map(|changes| transition(alert, false, changes)))
}

fn transition(alert: ThresholdAlert, raised: bool, changes: i64) -> Transition {
    Transition {
        rule: alert.rule,
        scope: alert.scope,
        raised,
        value: alert.value,
        threshold: alert.threshold,
        sessions: alert.sessions,
        changes,
    }
}

/// Queues `alert.raised` or `alert.resolved`: one message per change (its
/// dedupe key names the alert and its change count), fanned out to every
/// endpoint by the worker like any webhook.
async fn queue_webhook(
    tx: &mut DbConnection,
    key: &str,
    transition: &Transition,
    now: UnixMillis,
) -> Result<(), StoreError> {
    let topic = if transition.raised {
        verdict_core::Topic::AlertRaised
    } else {
        verdict_core::Topic::AlertResolved
    };
    let payload = json!({
        "event": transition.event(),
        "alert": transition.rule.as_str(),
        "scope": {transition.scope.field(): transition.scope.value()},
        "value": transition.value,
        "threshold": transition.threshold,
        "sessions": transition.sessions,
        "window_hours": ALERT_WINDOW_HOURS,
        "changes": transition.changes,
        "at": now.0,
    });
    sqlx::query(
        "INSERT INTO outbox (session_id, topic, channel, dedupe_key, payload, due_at, created_at) \
         VALUES (NULL, $1, $2, $3, $4, $5, $5) ON CONFLICT (dedupe_key) DO NOTHING",
    )
    .bind(topic.as_str())
    .bind(topic.channel().as_str())
    .bind(format!("{}:{key}#{}", topic.as_str(), transition.changes))
    .bind(payload.to_string())
    .bind(now.0)
    .execute(&mut *tx)
    .await?;
    Ok(())
}
