//! What health and metrics read: the schema version and row counts.

use std::collections::BTreeMap;

use sqlx::Row;
use verdict_core::UnixMillis;

use crate::StoreError;

use super::Engine;

impl Engine {
    pub(super) async fn schema_version(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT MAX(version) AS version FROM _sqlx_migrations WHERE success")
            .fetch_one(&self.reader)
            .await?;
        Ok(row.try_get::<Option<i64>, _>("version")?.unwrap_or(0))
    }

    pub(super) async fn ended_by_status(
        &self,
        since: UnixMillis,
    ) -> Result<BTreeMap<String, i64>, StoreError> {
        let rows = sqlx::query(
            "SELECT status, COUNT(*) AS n FROM sessions WHERE ended_at >= $1 GROUP BY status",
        )
        .bind(since.0)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(|row| Ok((row.try_get("status")?, row.try_get("n")?))).collect()
    }

    pub(super) async fn table_counts(&self) -> Result<BTreeMap<&'static str, i64>, StoreError> {
        let mut counts = BTreeMap::new();
        for (table, statement) in [
            ("sessions", "SELECT COUNT(*) AS n FROM sessions"),
            ("session_events", "SELECT COUNT(*) AS n FROM session_events"),
            ("notifications", "SELECT COUNT(*) AS n FROM notifications"),
            ("outbox", "SELECT COUNT(*) AS n FROM outbox"),
            ("users", "SELECT COUNT(*) AS n FROM users"),
            ("ledger_postings", "SELECT COUNT(*) AS n FROM ledger_postings"),
            ("ledger_lines", "SELECT COUNT(*) AS n FROM ledger_lines"),
            ("payouts", "SELECT COUNT(*) AS n FROM payouts"),
            ("requests", "SELECT COUNT(*) AS n FROM requests"),
            ("assignments", "SELECT COUNT(*) AS n FROM assignments"),
            ("idempotency_keys", "SELECT COUNT(*) AS n FROM idempotency_keys"),
        ] {
            let row = sqlx::query(statement).fetch_one(&self.reader).await?;
            counts.insert(table, row.try_get::<i64, _>("n")?);
        }
        Ok(counts)
    }
}
