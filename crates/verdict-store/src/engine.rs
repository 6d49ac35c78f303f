//! The storage engine, written once for both databases.
//!
//! This file is compiled as a child module of each backend (`sqlite.rs`,
//! later `postgres.rs`), which supplies `Db` (the sqlx database),
//! `BEGIN_WRITE` (how a write transaction starts) and the `for_update!()`
//! macro (how a session row is locked). Statements use `$n` placeholders and
//! portable SQL, so each backend runs the same text with the same meaning.
//!
//! Architecture invariant: every state change of a session first locks the
//! session row (PostgreSQL: `FOR UPDATE`; SQLite: `BEGIN IMMEDIATE` takes
//! the database write lock), so changes to one session are serialised and a
//! concurrent caller waits, then sees the first one's result.

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde_json::{Value, json};
use sqlx::{Pool, Row};
use verdict_core::{
    Cents, EndCause, EndRequest, Kind, Outcome, Party, Policy, PolicySet, PresenceEvent,
    PresenceKind, Price, PriceMode, Reason, Role, Status, UnixMillis, charge_for, decide,
    presence_at,
};

use super::{BACKEND, BEGIN_WRITE, Db};
use crate::{
    Actor, AuditEvent, Ended, EventType, NewSession, Notification, PresenceChange, Session, Store,
    StoreError,
};

type DbRow = <Db as sqlx::Database>::Row;
type DbConnection = <Db as sqlx::Database>::Connection;

macro_rules! session_columns {
    () => {
        "id, kind, status, reason, customer_id, provider_id, provider_account, request_id, \
         scheduled_start, created_at, started_at, ended_at, ended_by, billable_seconds, \
         price_mode, price_amount_cents, currency, charged_cents, metadata, \
         customer_last_seen_at, provider_last_seen_at"
    };
}

/// The store over one database. Reads go to `reader`, transactions to
/// `writer` (on SQLite a single connection: SQLite has one writer anyway,
/// and queueing in the pool is cheaper than retrying on `SQLITE_BUSY`).
pub struct Engine {
    pub(super) reader: Pool<Db>,
    pub(super) writer: Pool<Db>,
}

#[async_trait]
impl Store for Engine {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }

    async fn create_session(
        &self,
        new: NewSession,
        actor: &Actor,
        now: UnixMillis,
    ) -> Result<Session, StoreError> {
        let metadata = new.metadata.as_ref().map(Value::to_string);
        let mut tx = self.writer.begin_with(BEGIN_WRITE).await?;
        let inserted = sqlx::query(
            "INSERT INTO sessions (id, kind, status, customer_id, provider_id, provider_account, \
             request_id, scheduled_start, created_at, price_mode, price_amount_cents, currency, \
             metadata) VALUES ($1, $2, 'waiting', $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(&new.id)
        .bind(new.kind.as_str())
        .bind(&new.customer_id)
        .bind(&new.provider_id)
        .bind(&new.provider_account)
        .bind(&new.request_id)
        .bind(new.scheduled_start.map(|at| at.0))
        .bind(now.0)
        .bind(new.price.mode.as_str())
        .bind(new.price.amount.0)
        .bind(&new.price.currency)
        .bind(&metadata)
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!(
                "session {} already exists",
                new.id
            )));
        }
        insert_event(&mut tx, &new.id, EventType::Created, None, actor, now, None).await?;
        let session = lock_session(&mut tx, &new.id).await?;
        tx.commit().await?;
        Ok(session)
    }

    async fn session(&self, id: &str) -> Result<Option<Session>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            session_columns!(),
            " FROM sessions WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(session_from_row).transpose()
    }

    async fn record_presence(
        &self,
        id: &str,
        party: Party,
        change: PresenceChange,
        actor: &Actor,
        policies: &PolicySet,
        now: UnixMillis,
    ) -> Result<Session, StoreError> {
        let mut tx = self.writer.begin_with(BEGIN_WRITE).await?;
        let session = lock_session(&mut tx, id).await?;
        if session.status.is_terminal() {
            return Err(StoreError::Conflict(format!(
                "session {id} is {}: presence can no longer change",
                session.status
            )));
        }
        let policy = policies.for_kind(session.kind);
        let events = presence_events(&mut tx, &session).await?;
        let present = presence_at(&events, now, policy.presence_timeout_seconds);
        let party_present = match party {
            Party::Customer => present.customer,
            Party::Provider => present.provider,
        };
        match change {
            PresenceChange::Heartbeat => {
                let statement = match party {
                    Party::Customer => {
                        "UPDATE sessions SET customer_last_seen_at = $1 WHERE id = $2"
                    }
                    Party::Provider => {
                        "UPDATE sessions SET provider_last_seen_at = $1 WHERE id = $2"
                    }
                };
                sqlx::query(statement)
                    .bind(now.0)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
            // Joining while present and leaving while absent are no-ops:
            // clients retry, and a retry must not split an interval.
            PresenceChange::Join if !party_present => {
                insert_event(
                    &mut tx,
                    id,
                    EventType::Joined,
                    Some(party),
                    actor,
                    now,
                    None,
                )
                .await?;
                let other_present = match party {
                    Party::Customer => present.provider,
                    Party::Provider => present.customer,
                };
                if other_present && session.started_at.is_none() {
                    sqlx::query(
                        "UPDATE sessions SET status = 'live', started_at = $1 \
                         WHERE id = $2 AND started_at IS NULL",
                    )
                    .bind(now.0)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                    let payload =
                        json!({"event": "session.started", "session_id": id, "at": now.0});
                    insert_outbox(&mut tx, id, "webhook:session.started", &payload, now).await?;
                }
            }
            PresenceChange::Leave if party_present => {
                insert_event(&mut tx, id, EventType::Left, Some(party), actor, now, None).await?;
            }
            PresenceChange::Join | PresenceChange::Leave => {}
        }
        let session = lock_session(&mut tx, id).await?;
        tx.commit().await?;
        Ok(session)
    }

    async fn end_session(
        &self,
        id: &str,
        actor: &Actor,
        claimed: Option<Value>,
        cause: EndCause,
        policies: &PolicySet,
        now: UnixMillis,
    ) -> Result<Ended, StoreError> {
        let mut tx = self.writer.begin_with(BEGIN_WRITE).await?;
        let session = lock_session(&mut tx, id).await?;
        if session.status.is_terminal() {
            tx.rollback().await?;
            return Ok(Ended {
                session,
                already_ended: true,
            });
        }
        let policy = *policies.for_kind(session.kind);
        let events = presence_events(&mut tx, &session).await?;
        let outcome = decide(
            &session.facts(),
            &events,
            &policy,
            EndRequest { at: now, cause },
        );
        let charged = charge_for(&session.price, outcome.reason, outcome.billable_seconds);
        let policy_json = policy_json(&policy);

        let updated = sqlx::query(
            "UPDATE sessions SET status = $1, reason = $2, started_at = $3, ended_at = $4, \
             ended_by = $5, billable_seconds = $6, charged_cents = $7, policy = $8 \
             WHERE id = $9 AND ended_at IS NULL",
        )
        .bind(outcome.status.as_str())
        .bind(outcome.reason.as_str())
        .bind(outcome.started_at.map(|at| at.0))
        .bind(outcome.ended_at.0)
        .bind(actor.role.as_str())
        .bind(outcome.billable_seconds)
        .bind(charged.0)
        .bind(policy_json.to_string())
        .bind(id)
        .execute(&mut *tx)
        .await?;
        assert_eq!(
            updated.rows_affected(),
            1,
            "the locked, non-terminal session must update"
        );

        let audit = json!({
            "claimed": claimed,
            "policy": policy_json,
            "outcome": outcome_json(&outcome),
        });
        insert_event(
            &mut tx,
            id,
            EventType::Ended,
            None,
            actor,
            now,
            Some(&audit),
        )
        .await?;

        let notification_kind = match outcome.status {
            Status::Completed => "session_completed",
            Status::Expired => "session_expired",
            _ => "session_cancelled",
        };
        for party in [Party::Customer, Party::Provider] {
            sqlx::query(
                "INSERT INTO notifications (recipient_role, recipient_id, session_id, kind, reason, \
                 created_at) VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(party.as_str())
            .bind(session.party_id(party))
            .bind(id)
            .bind(notification_kind)
            .bind(outcome.reason.as_str())
            .bind(now.0)
            .execute(&mut *tx)
            .await?;
        }
        let payload = json!({
            "event": "session.ended",
            "session_id": id,
            "outcome": outcome_json(&outcome),
            "charged_cents": charged.0,
        });
        insert_outbox(&mut tx, id, "webhook:session.ended", &payload, now).await?;

        let session = lock_session(&mut tx, id).await?;
        tx.commit().await?;
        Ok(Ended {
            session,
            already_ended: false,
        })
    }

    async fn events(&self, id: &str) -> Result<Vec<AuditEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, session_id, type, party, actor_role, actor_id, at, data \
             FROM session_events WHERE session_id = $1 ORDER BY seq",
        )
        .bind(id)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(event_from_row).collect()
    }

    async fn notifications(
        &self,
        role: Party,
        recipient_id: &str,
        after: Option<i64>,
        limit: i64,
    ) -> Result<Vec<Notification>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, recipient_role, recipient_id, session_id, kind, reason, created_at \
             FROM notifications WHERE recipient_role = $1 AND recipient_id = $2 AND id > $3 \
             ORDER BY id LIMIT $4",
        )
        .bind(role.as_str())
        .bind(recipient_id)
        .bind(after.unwrap_or(0))
        .bind(limit.clamp(1, crate::PAGE_LIMIT_MAX))
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(Notification {
                    id: row.try_get("id")?,
                    recipient_role: parse(row.try_get("recipient_role")?)?,
                    recipient_id: row.try_get("recipient_id")?,
                    session_id: row.try_get("session_id")?,
                    kind: row.try_get("kind")?,
                    reason: parse_optional(row.try_get("reason")?)?,
                    created_at: UnixMillis(row.try_get("created_at")?),
                })
            })
            .collect()
    }

    async fn table_counts(&self) -> Result<BTreeMap<&'static str, i64>, StoreError> {
        let mut counts = BTreeMap::new();
        for (table, statement) in [
            ("sessions", "SELECT COUNT(*) AS n FROM sessions"),
            ("session_events", "SELECT COUNT(*) AS n FROM session_events"),
            ("notifications", "SELECT COUNT(*) AS n FROM notifications"),
            ("outbox", "SELECT COUNT(*) AS n FROM outbox"),
        ] {
            let row = sqlx::query(statement).fetch_one(&self.reader).await?;
            counts.insert(table, row.try_get::<i64, _>("n")?);
        }
        Ok(counts)
    }
}

/// Reads the session inside a write transaction, locking its row.
async fn lock_session(connection: &mut DbConnection, id: &str) -> Result<Session, StoreError> {
    let row = sqlx::query(concat!(
        "SELECT ",
        session_columns!(),
        " FROM sessions WHERE id = $1",
        for_update!()
    ))
    .bind(id)
    .fetch_optional(&mut *connection)
    .await?;
    match row {
        Some(row) => session_from_row(&row),
        None => Err(StoreError::not_found("session", id)),
    }
}

/// The presence history the decision needs: joins and leaves in recording
/// order, plus each party's last heartbeat.
async fn presence_events(
    connection: &mut DbConnection,
    session: &Session,
) -> Result<Vec<PresenceEvent>, StoreError> {
    let rows = sqlx::query(
        "SELECT type, party, at FROM session_events \
         WHERE session_id = $1 AND type IN ('joined', 'left') ORDER BY seq",
    )
    .bind(&session.id)
    .fetch_all(&mut *connection)
    .await?;
    let mut events = Vec::with_capacity(rows.len() + 2);
    for row in &rows {
        let event_type: String = row.try_get("type")?;
        let kind = if event_type == "joined" {
            PresenceKind::Joined
        } else {
            PresenceKind::Left
        };
        let party = parse_optional(row.try_get("party")?)?.ok_or_else(|| {
            StoreError::Corrupt(format!("presence event of {} without a party", session.id))
        })?;
        events.push(PresenceEvent {
            party,
            kind,
            at: UnixMillis(row.try_get("at")?),
        });
    }
    for (party, last_seen) in [
        (Party::Customer, session.customer_last_seen_at),
        (Party::Provider, session.provider_last_seen_at),
    ] {
        if let Some(at) = last_seen {
            events.push(PresenceEvent {
                party,
                kind: PresenceKind::Heartbeat,
                at,
            });
        }
    }
    Ok(events)
}

async fn insert_event(
    connection: &mut DbConnection,
    session_id: &str,
    event_type: EventType,
    party: Option<Party>,
    actor: &Actor,
    at: UnixMillis,
    data: Option<&Value>,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO session_events (session_id, type, party, actor_role, actor_id, at, data) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(session_id)
    .bind(event_type.as_str())
    .bind(party.map(Party::as_str))
    .bind(actor.role.as_str())
    .bind(&actor.id)
    .bind(at.0)
    .bind(data.map(Value::to_string))
    .execute(&mut *connection)
    .await?;
    Ok(())
}

async fn insert_outbox(
    connection: &mut DbConnection,
    session_id: &str,
    topic: &str,
    payload: &Value,
    now: UnixMillis,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO outbox (session_id, topic, dedupe_key, payload, due_at, created_at) \
         VALUES ($1, $2, $3, $4, $5, $5)",
    )
    .bind(session_id)
    .bind(topic)
    .bind(format!("{topic}:{session_id}"))
    .bind(payload.to_string())
    .bind(now.0)
    .execute(&mut *connection)
    .await?;
    Ok(())
}

fn policy_json(policy: &Policy) -> Value {
    json!({
        "min_billable_seconds": policy.min_billable_seconds,
        "billing_basis": policy.billing_basis.as_str(),
        "join_grace_seconds": policy.join_grace_seconds,
        "abandon_after_seconds": policy.abandon_after_seconds,
        "max_duration_seconds": policy.max_duration_seconds,
        "presence_timeout_seconds": policy.presence_timeout_seconds,
        "platform_fee_bps": policy.platform_fee_bps,
    })
}

fn outcome_json(outcome: &Outcome) -> Value {
    json!({
        "status": outcome.status.as_str(),
        "reason": outcome.reason.as_str(),
        "billable_seconds": outcome.billable_seconds,
        "started_at": outcome.started_at.map(|at| at.0),
        "ended_at": outcome.ended_at.0,
    })
}

fn session_from_row(row: &DbRow) -> Result<Session, StoreError> {
    let instant = |column: &str| -> Result<Option<UnixMillis>, StoreError> {
        Ok(row.try_get::<Option<i64>, _>(column)?.map(UnixMillis))
    };
    let metadata: Option<String> = row.try_get("metadata")?;
    let price_mode: String = row.try_get("price_mode")?;
    Ok(Session {
        id: row.try_get("id")?,
        kind: parse::<Kind>(row.try_get("kind")?)?,
        status: parse::<Status>(row.try_get("status")?)?,
        reason: parse_optional::<Reason>(row.try_get("reason")?)?,
        customer_id: row.try_get("customer_id")?,
        provider_id: row.try_get("provider_id")?,
        provider_account: row.try_get("provider_account")?,
        request_id: row.try_get("request_id")?,
        scheduled_start: instant("scheduled_start")?,
        created_at: UnixMillis(row.try_get("created_at")?),
        started_at: instant("started_at")?,
        ended_at: instant("ended_at")?,
        ended_by: parse_optional::<Role>(row.try_get("ended_by")?)?,
        billable_seconds: row.try_get("billable_seconds")?,
        price: Price {
            mode: PriceMode::parse(&price_mode)
                .ok_or_else(|| StoreError::Corrupt(format!("price_mode {price_mode:?}")))?,
            amount: Cents(row.try_get("price_amount_cents")?),
            currency: row.try_get("currency")?,
        },
        charged_cents: row.try_get::<Option<i64>, _>("charged_cents")?.map(Cents),
        metadata: metadata
            .map(|text| serde_json::from_str(&text))
            .transpose()
            .map_err(|error| StoreError::Corrupt(format!("metadata: {error}")))?,
        customer_last_seen_at: instant("customer_last_seen_at")?,
        provider_last_seen_at: instant("provider_last_seen_at")?,
    })
}

fn event_from_row(row: &DbRow) -> Result<AuditEvent, StoreError> {
    let event_type: String = row.try_get("type")?;
    let data: Option<String> = row.try_get("data")?;
    Ok(AuditEvent {
        seq: row.try_get("seq")?,
        session_id: row.try_get("session_id")?,
        event_type: EventType::parse(&event_type)
            .ok_or_else(|| StoreError::Corrupt(format!("event type {event_type:?}")))?,
        party: parse_optional(row.try_get("party")?)?,
        actor: Actor {
            role: parse(row.try_get("actor_role")?)?,
            id: row.try_get("actor_id")?,
        },
        at: UnixMillis(row.try_get("at")?),
        data: data
            .map(|text| serde_json::from_str(&text))
            .transpose()
            .map_err(|error| StoreError::Corrupt(format!("event data: {error}")))?,
    })
}

fn parse<T>(text: String) -> Result<T, StoreError>
where
    T: std::str::FromStr<Err = verdict_core::ParseError>,
{
    text.parse()
        .map_err(|error| StoreError::Corrupt(format!("{error}: {text:?}")))
}

fn parse_optional<T>(text: Option<String>) -> Result<Option<T>, StoreError>
where
    T: std::str::FromStr<Err = verdict_core::ParseError>,
{
    text.map(parse).transpose()
}
