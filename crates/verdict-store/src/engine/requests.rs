//! Requests: creation, acceptance (which creates the session) and the
//! providers' assignments.

use sqlx::Row;
use verdict_core::UnixMillis;

use crate::{
    Actor, Assignment, Created, Idempotency, NewRequest, NewSession, Request, RequestStatus,
    Session, StoreError,
};

use super::Engine;
use super::dialect::{BEGIN_WRITE, DbConnection};
use super::rows::{parse, price_from_row, request_from_row};
use super::sessions::{claim_key, insert_session, lock_session};

impl Engine {
    pub(super) async fn create_request(
        &self,
        new: NewRequest,
        _actor: &Actor,
        idempotency: Option<&Idempotency>,
        now: UnixMillis,
    ) -> Result<Created<Request>, StoreError> {
        let mut tx = self.writer.begin_with(BEGIN_WRITE).await?;
        let earlier = match idempotency {
            Some(idempotency) => claim_key(&mut tx, idempotency, &new.id, now).await?,
            None => None,
        };
        if let Some(earlier) = earlier {
            let request = read_request(&mut tx, &earlier).await?;
            tx.rollback().await?;
            return Ok(Created { value: request, replayed: true });
        }
        let candidates = serde_json::to_string(&new.candidate_provider_ids)
            .map_err(|error| StoreError::Internal(error.to_string()))?;
        let inserted = sqlx::query(
            "INSERT INTO requests (id, customer_id, kind, price_mode, price_amount_cents, currency, \
             candidate_provider_ids, status, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', $8, $8) ON CONFLICT (id) DO NOTHING",
        )
        .bind(&new.id)
        .bind(&new.customer_id)
        .bind(new.kind.as_str())
        .bind(new.price.mode.as_str())
        .bind(new.price.amount.0)
        .bind(&new.price.currency)
        .bind(candidates)
        .bind(now.0)
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!("request {} already exists", new.id)));
        }
        for provider_id in &new.candidate_provider_ids {
            sqlx::query(
                "INSERT INTO assignments (request_id, provider_id, created_at) VALUES ($1, $2, $3)",
            )
            .bind(&new.id)
            .bind(provider_id)
            .bind(now.0)
            .execute(&mut *tx)
            .await?;
        }
        let request = read_request(&mut tx, &new.id).await?;
        tx.commit().await?;
        Ok(Created { value: request, replayed: false })
    }

    pub(super) async fn request(&self, id: &str) -> Result<Option<Request>, StoreError> {
        let row =
            sqlx::query(concat!("SELECT ", request_columns!(), " FROM requests WHERE id = $1"))
                .bind(id)
                .fetch_optional(&self.reader)
                .await?;
        row.as_ref().map(request_from_row).transpose()
    }

    pub(super) async fn accept_request(
        &self,
        request_id: &str,
        provider_id: &str,
        session_id: &str,
        actor: &Actor,
        now: UnixMillis,
    ) -> Result<Session, StoreError> {
        let mut tx = self.writer.begin_with(BEGIN_WRITE).await?;
        let row = sqlx::query(concat!(
            "SELECT ",
            request_columns!(),
            " FROM requests WHERE id = $1",
            for_update!()
        ))
        .bind(request_id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| StoreError::not_found("request", request_id))?;
        let request = request_from_row(&row)?;
        if request.status != RequestStatus::Pending {
            return Err(StoreError::Conflict(format!(
                "request {request_id} is {}: it can no longer be accepted",
                request.status.as_str()
            )));
        }
        let assigned = sqlx::query(
            "SELECT provider_id FROM assignments WHERE request_id = $1 AND provider_id = $2",
        )
        .bind(request_id)
        .bind(provider_id)
        .fetch_optional(&mut *tx)
        .await?;
        if assigned.is_none() {
            return Err(StoreError::Conflict(format!(
                "request {request_id} is not offered to provider {provider_id}"
            )));
        }
        let new = NewSession {
            id: session_id.to_owned(),
            kind: request.kind,
            customer_id: request.customer_id.clone(),
            provider_id: provider_id.to_owned(),
            provider_account: None,
            scheduled_start: None,
            price: request.price.clone(),
            request_id: Some(request_id.to_owned()),
            metadata: None,
            room: None,
        };
        if !insert_session(&mut tx, &new, actor, now).await? {
            return Err(StoreError::Conflict(format!("session {session_id} already exists")));
        }
        sqlx::query(
            "UPDATE requests SET status = 'matched', session_id = $1, updated_at = $2 WHERE id = $3",
        )
        .bind(session_id)
        .bind(now.0)
        .bind(request_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM assignments WHERE request_id = $1 AND provider_id <> $2")
            .bind(request_id)
            .bind(provider_id)
            .execute(&mut *tx)
            .await?;
        let session = lock_session(&mut tx, session_id).await?;
        tx.commit().await?;
        Ok(session)
    }

    pub(super) async fn assignments(
        &self,
        provider_id: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Assignment>, StoreError> {
        let rows = sqlx::query(
            "SELECT a.request_id, a.provider_id, a.created_at, r.customer_id, r.kind, \
             r.price_mode, r.price_amount_cents, r.currency, r.session_id \
             FROM assignments a JOIN requests r ON r.id = a.request_id \
             WHERE ($1 IS NULL OR a.provider_id = $1) \
             ORDER BY a.created_at, a.request_id, a.provider_id LIMIT $2",
        )
        .bind(provider_id)
        .bind(limit.clamp(1, crate::PAGE_LIMIT_MAX))
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(Assignment {
                    request_id: row.try_get("request_id")?,
                    provider_id: row.try_get("provider_id")?,
                    customer_id: row.try_get("customer_id")?,
                    kind: parse(row.try_get("kind")?)?,
                    price: price_from_row(row)?,
                    session_id: row.try_get("session_id")?,
                    created_at: UnixMillis(row.try_get("created_at")?),
                })
            })
            .collect()
    }
}

async fn read_request(connection: &mut DbConnection, id: &str) -> Result<Request, StoreError> {
    let row = sqlx::query(concat!("SELECT ", request_columns!(), " FROM requests WHERE id = $1"))
        .bind(id)
        .fetch_optional(&mut *connection)
        .await?
        .ok_or_else(|| StoreError::not_found("request", id))?;
    request_from_row(&row)
}
