//! The sweeper: finalization windows closed, and sessions ended that are
//! due; and the repair of one session's outcome.

use sqlx::Row;
use verdict_core::{Policy, Role, UnixMillis, sweep_due};

use crate::{Actor, Correction, Session, Settings, StoreError, SweepReport};

use super::Engine;
use super::dialect::BEGIN_WRITE;
use super::sessions::{lock_session, presence_events};
use super::settle::{correct_locked, finalize_locked, settle_end};

impl Engine {
    /// Closes one session's finalization window, if it is still open and
    /// over (another sweeper may have been first).
    async fn finalize(
        &self,
        id: &str,
        settings: &Settings,
        now: UnixMillis,
    ) -> Result<Option<Session>, StoreError> {
        let mut tx = self.writer.begin_with(BEGIN_WRITE).await?;
        let session = lock_session(&mut tx, id).await?;
        if !session.is_finalizing() || session.finalizes_at.is_some_and(|at| at > now) {
            tx.rollback().await?;
            return Ok(None);
        }
        let session = finalize_locked(&mut tx, &session, settings, now).await?;
        tx.commit().await?;
        Ok(Some(session))
    }

    pub(super) async fn sweep(
        &self,
        settings: &Settings,
        now: UnixMillis,
        limit: i64,
    ) -> Result<SweepReport, StoreError> {
        let mut report = SweepReport::default();
        // Close the finalization windows that are over: first, so that a
        // failing end below never holds money back.
        let finalizing = sqlx::query(
            "SELECT id FROM sessions WHERE finalized_at IS NULL AND finalizes_at <= $1 \
             ORDER BY finalizes_at LIMIT $2",
        )
        .bind(now.0)
        .bind(limit.clamp(1, crate::PAGE_LIMIT_MAX))
        .fetch_all(&self.reader)
        .await?;
        for row in &finalizing {
            let id: String = row.try_get("id")?;
            // One session that cannot be finalized must not hold back the
            // others (verification reports it as stuck).
            match self.finalize(&id, settings, now).await {
                Ok(Some(session)) => report.finalized.push(session),
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(session = %id, %error, "finalization failed");
                    report.failed.push((id, error.to_string()));
                }
            }
        }
        let policies =
            [settings.policies.video, settings.policies.chat, settings.policies.diagnostic];
        let least = |value: fn(&Policy) -> i64| policies.iter().map(value).min().unwrap_or(0);
        let before = |seconds: i64| now.0.saturating_sub(seconds.saturating_mul(1000));
        // Necessary conditions for each reason to end, with the most eager
        // policy: the exact check is `sweep_due`, per session, under its lock.
        // The first term is the partial index's own condition, which lets
        // both databases read `sessions_sweep`. Imported sessions are
        // history, not traffic: a repair ends them, never the sweeper.
        let candidates = sqlx::query(
            "SELECT id FROM sessions WHERE status IN ('waiting', 'live') \
             AND (sweep_checked_at IS NULL OR sweep_checked_at < $1) \
             AND import_run IS NULL AND ( \
             (status = 'waiting' AND COALESCE(scheduled_start, created_at) <= $2) OR \
             (status = 'live' AND (COALESCE(last_presence_at, started_at) <= $3 OR started_at <= $4))) \
             ORDER BY COALESCE(sweep_checked_at, 0), id LIMIT $5",
        )
        .bind(now.0)
        .bind(before(least(|p| p.join_grace_seconds)))
        .bind(before(least(|p| p.abandon_after_seconds)))
        .bind(before(least(|p| p.max_duration_seconds)))
        .bind(limit.clamp(1, crate::PAGE_LIMIT_MAX))
        .fetch_all(&self.reader)
        .await?;
        for row in &candidates {
            let id: String = row.try_get("id")?;
            report.checked += 1;
            match self.sweep_one(&id, settings, now).await {
                Ok(Some(ended)) => report.ended.push(ended),
                Ok(None) => {}
                Err(error) => {
                    // One session that cannot be ended must not hold back
                    // the others: logged, counted, left open (verification
                    // reports it as stuck), and looked at again after the
                    // others next time.
                    tracing::warn!(session = %id, %error, "the sweeper could not end a session");
                    if let Err(error) = self.mark_sweep_checked(&id, now).await {
                        tracing::warn!(session = %id, %error, "could not mark a failed sweep");
                    }
                    report.failed.push((id, error.to_string()));
                }
            }
        }
        // Requests are apart from sessions: a failure here holds none back.
        match self.expire_requests(settings, now, limit).await {
            Ok(expired) => report.expired_requests = expired,
            Err(error) => tracing::warn!(%error, "expiring requests failed"),
        }
        Ok(report)
    }

    /// Ends one candidate if it is due, under its lock, in a transaction
    /// of its own; `None` when it is not due (or no longer open).
    async fn sweep_one(
        &self,
        id: &str,
        settings: &Settings,
        now: UnixMillis,
    ) -> Result<Option<Session>, StoreError> {
        let mut tx = self.writer.begin_with(BEGIN_WRITE).await?;
        let session = lock_session(&mut tx, id).await?;
        if session.status.is_terminal() {
            tx.rollback().await?;
            return Ok(None);
        }
        let policy = settings.policies.for_kind(session.kind);
        let events = presence_events(&mut tx, &session).await?;
        let ended = match sweep_due(&session.facts(), &events, policy, now) {
            Some(end) => {
                let actor = Actor::system();
                Some(settle_end(&mut tx, &session, &actor, None, end, settings, now).await?)
            }
            None => {
                sqlx::query("UPDATE sessions SET sweep_checked_at = $1 WHERE id = $2")
                    .bind(now.0)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                None
            }
        };
        tx.commit().await?;
        Ok(ended)
    }

    /// Sends a session the sweeper failed to end to the back of its queue.
    async fn mark_sweep_checked(&self, id: &str, now: UnixMillis) -> Result<(), StoreError> {
        let mut tx = self.writer.begin_with(BEGIN_WRITE).await?;
        sqlx::query("UPDATE sessions SET sweep_checked_at = $1 WHERE id = $2")
            .bind(now.0)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub(super) async fn correct_session(
        &self,
        id: &str,
        settings: &Settings,
        now: UnixMillis,
    ) -> Result<Option<Correction>, StoreError> {
        let mut tx = self.writer.begin_with(BEGIN_WRITE).await?;
        let session = lock_session(&mut tx, id).await?;
        let repairer = Actor { role: Role::System, id: "repair".to_owned() };
        let correction = correct_locked(&mut tx, &session, settings, &repairer, now).await?;
        if correction.is_some() {
            tx.commit().await?;
        }
        Ok(correction)
    }
}
