//! Long admin runs (imports and repairs through the API), kept with the
//! answer their caller got.

use sqlx::Row;
use verdict_core::UnixMillis;

use crate::{AdminRun, StoreError};

use super::Engine;
use super::dialect::{BEGIN_WRITE, DbRow};

macro_rules! run_columns {
    () => {
        "SELECT id, kind, state, actor, started_at, finished_at, summary, error FROM admin_runs "
    };
}

impl Engine {
    pub(super) async fn save_admin_run(&self, run: &AdminRun) -> Result<(), StoreError> {
        let mut tx = self.writer.begin_with(BEGIN_WRITE).await?;
        sqlx::query(
            "INSERT INTO admin_runs (id, kind, state, actor, started_at, finished_at, summary, \
             error) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (id) DO UPDATE SET \
             state = excluded.state, finished_at = excluded.finished_at, \
             summary = excluded.summary, error = excluded.error",
        )
        .bind(&run.id)
        .bind(&run.kind)
        .bind(&run.state)
        .bind(&run.actor)
        .bind(run.started_at.0)
        .bind(run.finished_at.map(|at| at.0))
        .bind(run.summary.as_ref().map(|summary| summary.to_string()))
        .bind(&run.error)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub(super) async fn admin_run(
        &self,
        kind: &str,
        id: &str,
    ) -> Result<Option<AdminRun>, StoreError> {
        let row = sqlx::query(concat!(run_columns!(), "WHERE kind = $1 AND id = $2"))
            .bind(kind)
            .bind(id)
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(run_from_row).transpose()
    }

    pub(super) async fn admin_runs(
        &self,
        kind: &str,
        limit: i64,
    ) -> Result<Vec<AdminRun>, StoreError> {
        let rows = sqlx::query(concat!(
            run_columns!(),
            "WHERE kind = $1 ORDER BY started_at DESC, id DESC LIMIT $2"
        ))
        .bind(kind)
        .bind(limit.clamp(1, crate::PAGE_LIMIT_MAX))
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(run_from_row).collect()
    }
}

fn run_from_row(row: &DbRow) -> Result<AdminRun, StoreError> {
    let summary: Option<String> = row.try_get("summary")?;
    Ok(AdminRun {
        id: row.try_get("id")?,
        kind: row.try_get("kind")?,
        state: row.try_get("state")?,
        actor: row.try_get("actor")?,
        started_at: UnixMillis(row.try_get("started_at")?),
        finished_at: row.try_get::<Option<i64>, _>("finished_at")?.map(UnixMillis),
        summary: summary
            .map(|text| serde_json::from_str(&text))
            .transpose()
            .map_err(|error| StoreError::Corrupt(format!("admin run summary: {error}")))?,
        error: row.try_get("error")?,
    })
}
