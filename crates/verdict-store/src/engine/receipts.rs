//! The receipts of sessions verdict ended itself, checked set-wise for
//! `metadata_consistency` (one statement a batch, never one a session),
//! and the review queue's counts kept from the last full pass.

use sqlx::Row;
use verdict_core::UnixMillis;

use crate::StoreError;
use crate::consistency::{FaultBatch, FaultRange, ReviewCount};

use super::Engine;
use super::dialect::{BEGIN_WRITE, Db, RECEIPTS_BY_RANGE};

/// Above every id (ids are `[A-Za-z0-9_.:-]`, compared byte by byte).
const ABOVE_EVERY_ID: &str = "~";

/// The batch: sessions verdict ended itself (`import_run IS NULL`, read
/// off the partial index `sessions_settled_here`) with an id in
/// `($1, $2]`, ended at or after `$3`, at most `$4` of them.
macro_rules! batch {
    () => {
        "WITH batch AS (\
            SELECT s.id, s.customer_id, s.kind, s.request_id, s.price_mode, \
                   s.price_amount_cents, s.currency \
            FROM sessions s \
            WHERE s.import_run IS NULL AND s.ended_at IS NOT NULL \
              AND s.id > $1 AND s.id <= $2 AND s.ended_at >= $3 \
            ORDER BY s.id LIMIT $4), "
    };
}

/// A batch session's request, when it has one, is the session's: its
/// customer, kind and price.
macro_rules! request_differs {
    () => {
        "(b.request_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM requests r \
             WHERE r.id = b.request_id AND r.customer_id = b.customer_id AND r.kind = b.kind \
               AND r.price_mode = b.price_mode AND r.price_amount_cents = b.price_amount_cents \
               AND r.currency = b.currency))"
    };
}

/// When `$5` is 1, the range's sessions with late platform presence.
macro_rules! late {
    () => {
        "UNION ALL SELECT DISTINCT session_id, 'late' FROM presence_deliveries \
             WHERE $5 = 1 AND disposition = 'late' AND session_id > $1 AND session_id <= $2"
    };
}

/// What the statement answers beside the faulty sessions: the batch's last
/// id when it is full, and the late presence.
macro_rules! last_and_late {
    () => {
        concat!(
            "SELECT id, 'receipts' AS found FROM faulty \
             UNION ALL SELECT MAX(id), 'last' FROM batch HAVING COUNT(*) = $4 ",
            late!()
        )
    };
}

/// Each batch session judged by its receipts: exactly one `ended` event, a
/// notification to each party, a `session.ended` outbox message, and a
/// request (when it has one) that is the session's. Answers the faulty
/// ones. Each session looked up by its id, five index probes a session:
/// for the health pass's window (sessions sparse in id space), and on
/// SQLite for every batch (its probes are cheap, in-process).
const FAULTS_PROBED: &str = concat!(
    batch!(),
    "faulty AS (\
        SELECT b.id FROM batch b WHERE NOT (\
            (SELECT COUNT(*) FROM session_events e \
             WHERE e.session_id = b.id AND e.type = 'ended') = 1 \
            AND EXISTS (SELECT 1 FROM notifications n \
                        WHERE n.session_id = b.id AND n.recipient_role = 'customer') \
            AND EXISTS (SELECT 1 FROM notifications n \
                        WHERE n.session_id = b.id AND n.recipient_role = 'provider') \
            AND EXISTS (SELECT 1 FROM outbox o \
                        WHERE o.session_id = b.id AND o.topic = 'webhook:session.ended')) \
            OR ",
    request_differs!(),
    ") ",
    last_and_late!()
);

/// The same judgement for a batch of the scan on PostgreSQL (no window:
/// every verdict-ended session from `$1` on): the receipts tables each read
/// once over the batch's id span from their indexes alone, and the
/// sessions with a request through `sessions_requested_here` (each then
/// compared with its request, by key), as one stream of facts grouped by
/// session; only the faulty sessions leave the server. About 5.4 ms a
/// page of 2,000 sessions, where probing each took 12.2 ms
/// (bench/RESULTS.md). Every `session_id` and `id` column is `COLLATE
/// "C"`, so the stream's arms group as one. The unique index
/// `session_events_one_end` already holds a session to one `ended` event;
/// the sum still says so.
const FAULTS_IN_RANGE: &str = concat!(
    "\
WITH batch AS (\
    SELECT id FROM sessions WHERE import_run IS NULL AND ended_at IS NOT NULL \
      AND id > $1 AND id <= $2 AND ended_at >= $3 ORDER BY id LIMIT $4), \
span AS (SELECT MAX(id) AS last, COUNT(*) AS sessions FROM batch), \
facts AS (\
    SELECT id AS session_id, 1 AS judged, 0 AS customer, 0 AS provider, 0 AS announced, \
           0 AS ended, 0 AS unlike FROM batch \
    UNION ALL SELECT session_id, 0, CASE recipient_role WHEN 'customer' THEN 1 ELSE 0 END, \
               CASE recipient_role WHEN 'provider' THEN 1 ELSE 0 END, 0, 0, 0 \
        FROM notifications WHERE session_id > $1 AND session_id <= (SELECT last FROM span) \
    UNION ALL SELECT session_id, 0, 0, 0, 1, 0, 0 FROM outbox \
        WHERE topic = 'webhook:session.ended' AND session_id > $1 \
          AND session_id <= (SELECT last FROM span) \
    UNION ALL SELECT session_id, 0, 0, 0, 0, 1, 0 FROM session_events \
        WHERE type = 'ended' AND session_id > $1 AND session_id <= (SELECT last FROM span) \
    UNION ALL SELECT b.id, 0, 0, 0, 0, 0, 1 FROM sessions b \
        WHERE b.import_run IS NULL AND b.ended_at IS NOT NULL AND b.request_id IS NOT NULL \
          AND b.id > $1 AND b.id <= (SELECT last FROM span) AND ",
    request_differs!(),
    ") \
SELECT session_id AS id, 'receipts' AS found FROM facts GROUP BY session_id \
    HAVING MAX(judged) = 1 AND (MAX(customer) = 0 OR MAX(provider) = 0 \
        OR MAX(announced) = 0 OR SUM(ended) <> 1 OR MAX(unlike) = 1) \
UNION ALL SELECT last, 'last' FROM span WHERE sessions = $4 ",
    late!()
);

impl Engine {
    pub(super) async fn receipt_faults(
        &self,
        range: FaultRange<'_>,
        limit: i64,
    ) -> Result<FaultBatch, StoreError> {
        // The scan's batches are dense in id space (read as ranges); the
        // health pass's window is not (probed).
        let statement = match range.ended_since {
            None if RECEIPTS_BY_RANGE => FAULTS_IN_RANGE,
            _ => FAULTS_PROBED,
        };
        let rows = sqlx::query::<Db>(statement)
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
