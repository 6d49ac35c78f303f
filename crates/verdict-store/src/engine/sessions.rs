//! A session's own transactions: creation, presence (the parties' own and
//! the platform's), its end, and the audit trail and notifications read back.

use serde_json::{Value, json};
use sqlx::Row;
use verdict_core::{
    Connection, EndCause, EndRequest, Message, Party, PresenceEvent, PresenceKind, Role,
    UnixMillis, intervals_of, open_since, overlap, presence_at,
};

use crate::{
    Actor, AuditEvent, Created, Ended, EventType, Idempotency, NewSession, Notification,
    PlatformDisposition, PlatformPresence, PresenceChange, Session, Settings, StoreError,
};

use super::Engine;
use super::dialect::DbConnection;
use super::ends::{EndWrite, presence_event};
use super::group::BoxFuture;
use super::outbox::write_messages;
use super::rows::{event_from_row, parse, parse_optional, session_from_row};
use super::settle::{correct_locked, rederive_locked};

impl Engine {
    pub(super) async fn create_session(
        &self,
        new: NewSession,
        actor: &Actor,
        idempotency: Option<&Idempotency>,
        now: UnixMillis,
    ) -> Result<Created<Session>, StoreError> {
        let (key, actor, idempotency) = (new.id.clone(), actor.clone(), idempotency.cloned());
        self.grouped(&key, move |connection: &mut DbConnection| -> BoxFuture<'_, _> {
            Box::pin(async move {
                create_session_in(connection, &new, &actor, idempotency.as_ref(), now).await
            })
        })
        .await
    }

    pub(super) async fn session(&self, id: &str) -> Result<Option<Session>, StoreError> {
        let row =
            sqlx::query(concat!("SELECT ", session_columns!(), " FROM sessions WHERE id = $1"))
                .bind(id)
                .fetch_optional(&self.reader)
                .await?;
        row.as_ref().map(session_from_row).transpose()
    }

    pub(super) async fn record_presence(
        &self,
        id: &str,
        party: Party,
        change: PresenceChange,
        actor: &Actor,
        settings: &Settings,
        now: UnixMillis,
    ) -> Result<Session, StoreError> {
        let (key, actor, settings) = (id.to_owned(), actor.clone(), *settings);
        let id = key.clone();
        self.grouped(&key, move |connection: &mut DbConnection| -> BoxFuture<'_, _> {
            Box::pin(async move {
                record_presence_in(connection, &id, party, change, &actor, &settings, now).await
            })
        })
        .await
    }

    pub(super) async fn end_session(
        &self,
        id: &str,
        actor: &Actor,
        claimed: Option<Value>,
        cause: EndCause,
        settings: &Settings,
        now: UnixMillis,
    ) -> Result<Ended, StoreError> {
        self.grouped_end(EndWrite {
            id: id.to_owned(),
            actor: actor.clone(),
            claimed,
            end: EndRequest::new(now, cause),
            settings: *settings,
            now,
        })
        .await
    }

    pub(super) async fn record_platform_presence(
        &self,
        event: PlatformPresence,
        settings: &Settings,
        now: UnixMillis,
    ) -> Result<(PlatformDisposition, Option<Session>), StoreError> {
        let row = sqlx::query("SELECT id FROM sessions WHERE room = $1")
            .bind(&event.room)
            .fetch_optional(&self.reader)
            .await?;
        let Some(row) = row else { return Ok((PlatformDisposition::UnknownRoom, None)) };
        let id: String = row.try_get("id")?;
        let settings = *settings;
        self.grouped(&id.clone(), move |connection: &mut DbConnection| -> BoxFuture<'_, _> {
            Box::pin(
                async move { platform_presence_in(connection, &id, &event, &settings, now).await },
            )
        })
        .await
    }

    pub(super) async fn events(&self, id: &str) -> Result<Vec<AuditEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, session_id, type, party, actor_role, actor_id, at, data, connection \
             FROM session_events WHERE session_id = $1 ORDER BY seq",
        )
        .bind(id)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(event_from_row).collect()
    }

    pub(super) async fn events_page(
        &self,
        id: &str,
        after: Option<i64>,
        limit: i64,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, session_id, type, party, actor_role, actor_id, at, data, connection \
             FROM session_events WHERE session_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(id)
        .bind(after.unwrap_or(0))
        .bind(limit.clamp(1, crate::PAGE_LIMIT_MAX))
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(event_from_row).collect()
    }

    pub(super) async fn notifications(
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
}

/// Creates a session inside a grouped transaction (see `Engine::grouped`).
async fn create_session_in(
    tx: &mut DbConnection,
    new: &NewSession,
    actor: &Actor,
    idempotency: Option<&Idempotency>,
    now: UnixMillis,
) -> Result<Created<Session>, StoreError> {
    if let Some(idempotency) = idempotency
        && let Some(earlier) = claim_key(&mut *tx, idempotency, &new.id, now).await?
    {
        let session = lock_session(&mut *tx, &earlier).await?;
        return Ok(Created { value: session, replayed: true });
    }
    if let Some(room) = &new.room {
        let holder = sqlx::query("SELECT id FROM sessions WHERE room = $1 AND id <> $2")
            .bind(&room.room)
            .bind(&new.id)
            .fetch_optional(&mut *tx)
            .await?;
        if let Some(holder) = holder {
            let holder: String = holder.try_get("id")?;
            return Err(StoreError::Conflict(format!(
                "room {} is already the room of session {holder}",
                room.room
            )));
        }
    }
    if !insert_session(&mut *tx, new, actor, now).await? {
        return Err(StoreError::Conflict(format!("session {} already exists", new.id)));
    }
    let session = lock_session(&mut *tx, &new.id).await?;
    Ok(Created { value: session, replayed: false })
}

/// Records a platform's presence event inside a grouped transaction (see
/// `Store::record_platform_presence`).
async fn platform_presence_in(
    tx: &mut DbConnection,
    id: &str,
    event: &PlatformPresence,
    settings: &Settings,
    now: UnixMillis,
) -> Result<(PlatformDisposition, Option<Session>), StoreError> {
    let session = lock_session(&mut *tx, id).await?;
    let Some(party) = session.room.as_ref().and_then(|room| room.party_of(&event.identity)) else {
        return Ok((PlatformDisposition::UnknownIdentity, Some(session)));
    };
    let event_type = match event.kind {
        PresenceKind::Joined => EventType::Joined,
        PresenceKind::Left => EventType::Left,
        PresenceKind::Heartbeat => {
            return Err(StoreError::Unprocessable("a platform reports joins and leaves".into()));
        }
    };
    // Nobody is present in a session before it exists, whatever the
    // platform's clock says (the delivery keeps the platform's instant).
    let at = event.at.max(session.created_at);
    let before_end = session.ended_at().is_some_and(|ended| at <= ended);
    let in_window = session.is_finalizing() && session.finalizes_at.is_some_and(|at| now < at);
    let disposition = match (before_end, in_window) {
        (false, _) => "recorded",
        (true, true) => "reconsidered",
        // Too late to count: worth a person's look only if it would have
        // changed the outcome.
        (true, false) => {
            let connection = Connection::named(Some(&event.connection));
            let late = PresenceEvent { party, kind: event.kind, at, connection };
            let (_, expected) = rederive_locked(&mut *tx, &session, settings, Some(late)).await?;
            let changes = expected.is_some_and(|expected| {
                (Some(expected.status), Some(expected.reason), Some(expected.billable_seconds))
                    != (Some(session.status), session.reason(), session.billable_seconds())
            });
            if changes { "late" } else { "late_unchanged" }
        }
    };
    let inserted = sqlx::query(
        "INSERT INTO presence_deliveries (source, event_id, session_id, party, connection, kind, \
         at, received_at, disposition) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
         ON CONFLICT (source, event_id) DO NOTHING",
    )
    .bind(event.source)
    .bind(&event.event_id)
    .bind(id)
    .bind(party.as_str())
    .bind(&event.connection)
    .bind(event_type.as_str())
    .bind(event.at.0)
    .bind(now.0)
    .bind(disposition)
    .execute(&mut *tx)
    .await?;
    if inserted.rows_affected() == 0 {
        return Ok((PlatformDisposition::Duplicate, Some(session)));
    }
    if disposition.starts_with("late") {
        // The outcome is final: the event is kept apart (for review when it
        // would have changed the outcome).
        let changes = disposition == "late";
        return Ok((PlatformDisposition::Late { changes }, Some(session)));
    }
    let platform = Actor { role: Role::System, id: event.source.to_owned() };
    let data = json!({"source": event.source, "event_id": event.event_id});
    sqlx::query(
        "INSERT INTO session_events (session_id, type, party, actor_role, actor_id, at, data, \
         connection) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(id)
    .bind(event_type.as_str())
    .bind(party.as_str())
    .bind(platform.role.as_str())
    .bind(&platform.id)
    .bind(at.0)
    .bind(data.to_string())
    .bind(&event.connection)
    .execute(&mut *tx)
    .await?;
    if session.status.is_terminal() {
        if !before_end {
            return Ok((PlatformDisposition::Recorded, Some(session)));
        }
        let finalizer = Actor { role: Role::System, id: "finalization".to_owned() };
        let correction = correct_locked(&mut *tx, &session, settings, &finalizer, now).await?;
        let session = lock_session(&mut *tx, id).await?;
        return Ok((PlatformDisposition::Reconsidered(correction), Some(session)));
    }
    // An open session: the first overlap, wherever the event falls in
    // time, starts it (an event arriving late may move the start earlier).
    {
        let policy = settings.policies.for_kind(session.kind);
        let events = presence_events(&mut *tx, &session).await?;
        // Just after the latest event, so that a join at that instant counts.
        let latest = events.iter().map(|event| event.at).max().unwrap_or(now);
        let until = UnixMillis(now.max(latest).0 + 1);
        let customer = intervals_of(&events, Party::Customer, until, policy);
        let provider = intervals_of(&events, Party::Provider, until, policy);
        if let (_, Some(started_at)) = overlap(&customer, &provider)
            && session.started_at.is_none_or(|known| started_at < known)
        {
            sqlx::query("UPDATE sessions SET status = 'live', started_at = $1 WHERE id = $2")
                .bind(started_at.0)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            if session.started_at.is_none() {
                let started = Message::SessionStarted { at: started_at };
                write_messages(&mut *tx, &[(id, &started, now)]).await?;
            }
        }
    }
    let session = touch_presence(&mut *tx, id, now).await?;
    Ok((PlatformDisposition::Recorded, Some(session)))
}

/// Notes presence activity (the sweeper's candidates use it) and reads the
/// session back.
async fn touch_presence(
    tx: &mut DbConnection,
    id: &str,
    now: UnixMillis,
) -> Result<Session, StoreError> {
    sqlx::query("UPDATE sessions SET last_presence_at = $1 WHERE id = $2")
        .bind(now.0)
        .bind(id)
        .execute(&mut *tx)
        .await?;
    lock_session(&mut *tx, id).await
}

/// Records presence inside a grouped transaction (see `Engine::grouped`).
async fn record_presence_in(
    tx: &mut DbConnection,
    id: &str,
    party: Party,
    change: PresenceChange,
    actor: &Actor,
    settings: &Settings,
    now: UnixMillis,
) -> Result<Session, StoreError> {
    let policies = &settings.policies;
    let session = lock_session(&mut *tx, id).await?;
    if session.status.is_terminal() {
        return Err(StoreError::Conflict(format!(
            "session {id} is {}: presence can no longer change",
            session.status
        )));
    }
    let policy = policies.for_kind(session.kind);
    let timeout_millis = policy.presence_timeout_seconds.saturating_mul(1000);
    let mut events = presence_events(&mut *tx, &session).await?;
    // A party whose heartbeats lapsed has been absent since its last one.
    // Write that down before anything else (actor `system`), so that the
    // history stays exact whatever the party does next.
    let last_seen = match party {
        Party::Customer => session.customer_last_seen_at,
        Party::Provider => session.provider_last_seen_at,
    };
    let mut lapsed = false;
    if let Some(seen) = last_seen
        && now.millis_since(seen) > timeout_millis
        && open_since(&events, party).is_some_and(|joined| joined <= seen)
    {
        let data = json!({"cause": "heartbeat_lapsed"});
        insert_event(
            &mut *tx,
            id,
            EventType::Left,
            Some(party),
            &Actor::system(),
            seen,
            Some(&data),
        )
        .await?;
        events.push(PresenceEvent {
            party,
            kind: PresenceKind::Left,
            at: seen,
            connection: Connection::OWN,
        });
        lapsed = true;
    }
    let present = presence_at(&events, now, policy);
    let (party_present, other_present) = match party {
        Party::Customer => (present.customer, present.provider),
        Party::Provider => (present.provider, present.customer),
    };
    let joins = match change {
        PresenceChange::Heartbeat => {
            let statement = match party {
                Party::Customer => "UPDATE sessions SET customer_last_seen_at = $1 WHERE id = $2",
                Party::Provider => "UPDATE sessions SET provider_last_seen_at = $1 WHERE id = $2",
            };
            sqlx::query(statement).bind(now.0).bind(id).execute(&mut *tx).await?;
            // A heartbeat after a lapse is a reconnection.
            lapsed
        }
        // Joining while present and leaving while absent are no-ops:
        // clients retry, and a retry must not split an interval.
        PresenceChange::Join => !party_present,
        PresenceChange::Leave => {
            if party_present {
                insert_event(&mut *tx, id, EventType::Left, Some(party), actor, now, None).await?;
            }
            false
        }
    };
    if joins {
        // Only joins are bounded: a leave closing an interval is always
        // kept, so a party's flood can never keep the other one billed.
        let kept = own_presence_events(&events, party);
        let bound = settings.limits.max_presence_events_per_session;
        if kept >= bound {
            return Err(StoreError::LimitReached(format!(
                "the {party} already has {kept} joins and leaves of its own in session {id} \
                 (max_presence_events_per_session is {bound}): a join is refused, a leave is not"
            )));
        }
        insert_event(&mut *tx, id, EventType::Joined, Some(party), actor, now, None).await?;
        if other_present && session.started_at.is_none() {
            sqlx::query(
                "UPDATE sessions SET status = 'live', started_at = $1 \
                 WHERE id = $2 AND started_at IS NULL",
            )
            .bind(now.0)
            .bind(id)
            .execute(&mut *tx)
            .await?;
            let started = Message::SessionStarted { at: now };
            write_messages(&mut *tx, &[(id, &started, now)]).await?;
        }
    }
    touch_presence(&mut *tx, id, now).await
}

/// How many joins and leaves of `party` on its own connection (its own
/// calls, and the leaves written for its lapsed heartbeats) `events` holds:
/// a platform's events are not the party's doing and never count.
fn own_presence_events(events: &[PresenceEvent], party: Party) -> i64 {
    let own = events.iter().filter(|event| {
        event.party == party
            && event.connection == Connection::OWN
            && matches!(event.kind, PresenceKind::Joined | PresenceKind::Left)
    });
    own.count() as i64
}

pub(super) async fn lock_session(
    connection: &mut DbConnection,
    id: &str,
) -> Result<Session, StoreError> {
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

/// Inserts a `waiting` session and its `created` event; false when the id
/// is taken.
pub(super) async fn insert_session(
    connection: &mut DbConnection,
    new: &NewSession,
    actor: &Actor,
    now: UnixMillis,
) -> Result<bool, StoreError> {
    let metadata = new.metadata.as_ref().map(Value::to_string);
    let inserted = sqlx::query(
        "INSERT INTO sessions (id, kind, status, customer_id, provider_id, provider_account, \
         request_id, scheduled_start, created_at, price_mode, price_amount_cents, currency, \
         metadata, room, customer_identity, provider_identity, presence_source) \
         VALUES ($1, $2, 'waiting', $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, \
         $16) \
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
    .bind(new.room.as_ref().map(|room| &room.room))
    .bind(new.room.as_ref().map(|room| &room.customer_identity))
    .bind(new.room.as_ref().map(|room| &room.provider_identity))
    .bind(new.room.as_ref().map(|room| room.presence_source.as_str()))
    .execute(&mut *connection)
    .await?;
    if inserted.rows_affected() == 0 {
        return Ok(false);
    }
    insert_event(connection, &new.id, EventType::Created, None, actor, now, None).await?;
    Ok(true)
}

/// Records an idempotency key for `resource_id`. Returns the earlier
/// resource when the key was used before with the same body; another body
/// is refused. On PostgreSQL a concurrent first use holds the key's index
/// entry, so a second caller waits here and then replays the first.
pub(super) async fn claim_key(
    connection: &mut DbConnection,
    idempotency: &Idempotency,
    resource_id: &str,
    now: UnixMillis,
) -> Result<Option<String>, StoreError> {
    let inserted = sqlx::query(
        "INSERT INTO idempotency_keys (scope, key, fingerprint, resource_id, created_at) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (scope, key) DO NOTHING",
    )
    .bind(&idempotency.scope)
    .bind(&idempotency.key)
    .bind(&idempotency.fingerprint)
    .bind(resource_id)
    .bind(now.0)
    .execute(&mut *connection)
    .await?;
    if inserted.rows_affected() == 1 {
        return Ok(None);
    }
    let row = sqlx::query(
        "SELECT fingerprint, resource_id FROM idempotency_keys WHERE scope = $1 AND key = $2",
    )
    .bind(&idempotency.scope)
    .bind(&idempotency.key)
    .fetch_one(&mut *connection)
    .await?;
    let fingerprint: String = row.try_get("fingerprint")?;
    if fingerprint != idempotency.fingerprint {
        return Err(StoreError::Unprocessable(format!(
            "Idempotency-Key {:?} was already used with a different body",
            idempotency.key
        )));
    }
    Ok(Some(row.try_get("resource_id")?))
}

/// The presence history the decision needs: joins and leaves in recording
/// order, plus each party's last heartbeat.
pub(super) async fn presence_events(
    connection: &mut DbConnection,
    session: &Session,
) -> Result<Vec<PresenceEvent>, StoreError> {
    let rows = sqlx::query(
        "SELECT type, party, at, connection FROM session_events \
         WHERE session_id = $1 AND type IN ('joined', 'left') ORDER BY seq",
    )
    .bind(&session.id)
    .fetch_all(&mut *connection)
    .await?;
    let mut events = Vec::with_capacity(rows.len() + 2);
    for row in &rows {
        events.push(presence_event(
            &session.id,
            row.try_get("type")?,
            row.try_get("party")?,
            row.try_get("at")?,
            row.try_get("connection")?,
        )?);
    }
    events.extend(session.last_heartbeats());
    Ok(events)
}

pub(super) async fn insert_event(
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
