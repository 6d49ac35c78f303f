//! The receipts of sessions verdict ended itself, checked set-wise for
//! `metadata_consistency` (one statement a batch, never one a session),
//! and the review queue's counts kept from the last full pass.

use sqlx::Row;
use verdict_core::UnixMillis;

use crate::StoreError;
use crate::consistency::{FaultBatch, FaultRange, ReviewCount};

use super::Engine;
use super::dialect::{BEGIN_WRITE, Db};

/// Above every id (ids are `[A-Za-z0-9_.:-]`, compared byte by byte).
const ABOVE_EVERY_ID: &str = "~";

/// A batch of sessions verdict ended itself (`import_run IS NULL`, read
/// off the partial index `sessions_settled_here`), each judged by its
/// receipts: exactly one `ended` event, a notification to each party, a
/// `session.ended` outbox message, and, when it has a request, one whose
/// customer, kind and price are the session's. Answers the faulty ones,
/// the batch's last id when the batch is full, and (when asked) the
/// range's sessions with late platform presence.
const FAULTS: &str = "\
WITH batch AS (\
    SELECT s.id, s.customer_id, s.kind, s.request_id, s.price_mode, s.price_amount_cents, \
           s.currency \
    FROM sessions s \
    WHERE s.import_run IS NULL AND s.ended_at IS NOT NULL \
      AND s.id > $1 AND s.id <= $2 AND s.ended_at >= $3 \
    ORDER BY s.id LIMIT $4), \
faulty AS (\
    SELECT b.id FROM batch b WHERE NOT (\
        (SELECT COUNT(*) FROM session_events e \
         WHERE e.session_id = b.id AND e.type = 'ended') = 1 \
        AND EXISTS (SELECT 1 FROM notifications n \
                    WHERE n.session_id = b.id AND n.recipient_role = 'customer') \
        AND EXISTS (SELECT 1 FROM notifications n \
                    WHERE n.session_id = b.id AND n.recipient_role = 'provider') \
        AND EXISTS (SELECT 1 FROM outbox o \
                    WHERE o.session_id = b.id AND o.topic = 'webhook:session.ended') \
        AND (b.request_id IS NULL OR EXISTS (SELECT 1 FROM requests r \
             WHERE r.id = b.request_id AND r.customer_id = b.customer_id AND r.kind = b.kind \
               AND r.price_mode = b.price_mode AND r.price_amount_cents = b.price_amount_cents \
               AND r.currency = b.currency)))) \
SELECT id, 'receipts' AS found FROM faulty \
UNION ALL SELECT MAX(id), 'last' FROM batch HAVING COUNT(*) = $4 \
UNION ALL SELECT DISTINCT session_id, 'late' FROM presence_deliveries \
    WHERE $5 = 1 AND disposition = 'late' AND session_id > $1 AND session_id <= $2";

impl Engine {
    pub(super) async fn receipt_faults(
        &self,
        range: FaultRange<'_>,
        limit: i64,
    ) -> Result<FaultBatch, StoreError> {
        let rows = sqlx::query::<Db>(FAULTS)
            .bind(range.after.unwrap_or(""))
            .bind(range.through.unwrap_or(ABOVE_EVERY_ID))
            .bind(range.ended_since.map_or(i64::MIN, |since| since.0))
            .bind(limit.max(1))
            .bind(i64::from(range.with_late))
            .fetch_all(&self.reader)
            .await?;
        let mut batch = FaultBatch::default();
        for row in &rows {
            let id: String = row.try_get(0)?;
            let found: String = row.try_get(1)?;
            match found.as_str() {
                "receipts" => batch.receipts.push(id),
                "late" => batch.late.push(id),
                _ => batch.last = Some(id),
            }
        }
        batch.receipts.sort_unstable();
        batch.late.sort_unstable();
        Ok(batch)
    }

    pub(super) async fn save_review_counts(
        &self,
        counts: &[ReviewCount],
        as_of: UnixMillis,
    ) -> Result<(), StoreError> {
        // Two passes may save at once (`verify` and a server's background
        // pass): rows are upserted in key order (so they lock in one order,
        // no deadlock, no duplicate key), then whatever another pass left is
        // removed. The marker row ('', '') keeps the instant of an empty
        // queue.
        let mut rows: Vec<(&str, &str, i64)> = vec![("", "", 0)];
        rows.extend(counts.iter().map(|c| (c.kind.as_str(), c.reason.as_str(), c.sessions)));
        rows.sort_unstable();
        let mut tx = self.writer.begin_with(BEGIN_WRITE).await?;
        // A handful of rows (kinds × reasons): one statement each is fine.
        for (kind, reason, sessions) in rows {
            sqlx::query(
                "INSERT INTO review_counts (kind, reason, sessions, as_of) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (kind, reason) DO UPDATE SET sessions = excluded.sessions, \
                 as_of = excluded.as_of",
            )
            .bind(kind)
            .bind(reason)
            .bind(sessions)
            .bind(as_of.0)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query("DELETE FROM review_counts WHERE as_of <> $1")
            .bind(as_of.0)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub(super) async fn review_counts(
        &self,
    ) -> Result<Option<(UnixMillis, Vec<ReviewCount>)>, StoreError> {
        let rows = sqlx::query::<Db>(
            "SELECT kind, reason, sessions, as_of FROM review_counts ORDER BY kind, reason LIMIT 1000",
        )
        .fetch_all(&self.reader)
        .await?;
        let mut as_of = None;
        let mut counts = Vec::new();
        for row in &rows {
            let kind: String = row.try_get(0)?;
            as_of = Some(UnixMillis(row.try_get(3)?));
            if !kind.is_empty() {
                counts.push(ReviewCount {
                    kind,
                    reason: row.try_get(1)?,
                    sessions: row.try_get(2)?,
                });
            }
        }
        Ok(as_of.map(|as_of| (as_of, counts)))
    }
}
