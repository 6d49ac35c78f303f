//! Requests: creation (bounded per customer), acceptance (which creates
//! the session), cancellation, expiry by the sweeper, and the providers'
//! assignments.

use sqlx::Row;
use verdict_core::UnixMillis;

use verdict_core::Status;

use crate::{
    Actor, Assignment, AssignmentCursor, Created, Idempotency, Limits, NewRequest, NewSession,
    Request, RequestStatus, Session, Settings, StoreError,
};

use super::Engine;
use super::dialect::{BEGIN_WRITE, Db, DbConnection};
use super::rows::{parse, price_from_row, request_from_row};
use super::sessions::{claim_key, insert_session, lock_session};

impl Engine {
    pub(super) async fn create_request(
        &self,
        new: NewRequest,
        _actor: &Actor,
        idempotency: Option<&Idempotency>,
        limits: &Limits,
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
        // The customer's row, locked: a concurrent creation for the same
        // customer waits here, then counts this one.
        sqlx::query(
            "INSERT INTO request_customers (customer_id) VALUES ($1) \
             ON CONFLICT (customer_id) DO UPDATE SET customer_id = excluded.customer_id",
        )
        .bind(&new.customer_id)
        .execute(&mut *tx)
        .await?;
        let open: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM requests WHERE customer_id = $1 AND status = 'pending'",
        )
        .bind(&new.customer_id)
        .fetch_one(&mut *tx)
        .await?;
        if open >= limits.max_open_requests_per_customer {
            return Err(StoreError::LimitReached(format!(
                "customer {} already has {open} pending requests \
                 (max_open_requests_per_customer is {}): cancel one or wait for it to end",
                new.customer_id, limits.max_open_requests_per_customer
            )));
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
        let request = lock_request(&mut tx, request_id).await?;
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

    pub(super) async fn cancel_request(
        &self,
        id: &str,
        _actor: &Actor,
        now: UnixMillis,
    ) -> Result<Request, StoreError> {
        let mut tx = self.writer.begin_with(BEGIN_WRITE).await?;
        let mut request = lock_request(&mut tx, id).await?;
        match request.status {
            RequestStatus::Pending => {}
            // A retried cancel answers as the first one did.
            RequestStatus::Ended(Status::Cancelled) if request.session_id.is_none() => {
                tx.rollback().await?;
                return Ok(request);
            }
            status => {
                return Err(StoreError::Conflict(format!(
                    "request {id} is {}: only a pending request can be cancelled",
                    status.as_str()
                )));
            }
        }
        sqlx::query("UPDATE requests SET status = 'cancelled', updated_at = $1 WHERE id = $2")
            .bind(now.0)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM assignments WHERE request_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        request.status = RequestStatus::Ended(Status::Cancelled);
        request.updated_at = now;
        Ok(request)
    }

    /// Marks up to `limit` pending requests older than the TTL `expired`
    /// and removes their assignments, in one transaction; returns their
    /// ids. An accept holding a request's lock goes first (the request is
    /// then `matched` and stays so).
    pub(super) async fn expire_requests(
        &self,
        settings: &Settings,
        now: UnixMillis,
        limit: i64,
    ) -> Result<Vec<String>, StoreError> {
        let ttl_millis = settings.limits.request_ttl_seconds.saturating_mul(1000);
        let mut tx = self.writer.begin_with(BEGIN_WRITE).await?;
        let expired: Vec<String> = sqlx::query_scalar(
            "UPDATE requests SET status = 'expired', updated_at = $1 \
             WHERE status = 'pending' AND id IN (SELECT id FROM requests \
             WHERE status = 'pending' AND created_at <= $2 ORDER BY created_at, id LIMIT $3) \
             RETURNING id",
        )
        .bind(now.0)
        .bind(now.0.saturating_sub(ttl_millis))
        .bind(limit.clamp(1, crate::PAGE_LIMIT_MAX))
        .fetch_all(&mut *tx)
        .await?;
        if expired.is_empty() {
            tx.rollback().await?;
            return Ok(expired);
        }
        let mut delete =
            sqlx::QueryBuilder::<Db>::new("DELETE FROM assignments WHERE request_id IN (");
        let mut ids = delete.separated(", ");
        for id in &expired {
            ids.push_bind(id);
        }
        delete.push(")");
        delete.build().execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(expired)
    }

    pub(super) async fn assignments(
        &self,
        provider_id: Option<&str>,
        after: Option<&AssignmentCursor>,
        limit: i64,
    ) -> Result<Vec<Assignment>, StoreError> {
        let rows = sqlx::query(
            "SELECT a.request_id, a.provider_id, a.created_at, r.customer_id, r.kind, \
             r.price_mode, r.price_amount_cents, r.currency, r.session_id \
             FROM assignments a JOIN requests r ON r.id = a.request_id \
             WHERE ($1 IS NULL OR a.provider_id = $1) AND ($2 IS NULL OR \
             (a.created_at, a.request_id, a.provider_id) > ($2, $3, $4)) \
             ORDER BY a.created_at, a.request_id, a.provider_id LIMIT $5",
        )
        .bind(provider_id)
        .bind(after.map(|after| after.created_at.0))
        .bind(after.map(|after| &after.request_id))
        .bind(after.map(|after| &after.provider_id))
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

/// The request `id`, locked until the transaction ends.
async fn lock_request(connection: &mut DbConnection, id: &str) -> Result<Request, StoreError> {
    let row = sqlx::query(concat!(
        "SELECT ",
        request_columns!(),
        " FROM requests WHERE id = $1",
        for_update!()
    ))
    .bind(id)
    .fetch_optional(&mut *connection)
    .await?
    .ok_or_else(|| StoreError::not_found("request", id))?;
    request_from_row(&row)
}

async fn read_request(connection: &mut DbConnection, id: &str) -> Result<Request, StoreError> {
    let row = sqlx::query(concat!("SELECT ", request_columns!(), " FROM requests WHERE id = $1"))
        .bind(id)
        .fetch_optional(&mut *connection)
        .await?
        .ok_or_else(|| StoreError::not_found("request", id))?;
    request_from_row(&row)
}
