//! What the store reads and writes, in core types. These are not wire types:
//! the HTTP layer owns field names and formats.

use serde_json::Value;
use verdict_core::{
    Cents, Kind, Outcome, Party, Price, Reason, Role, SessionFacts, Status, UnixMillis,
};

/// Who did something: a token's role and subject, or the system.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Actor {
    pub role: Role,
    pub id: String,
}

impl Actor {
    pub fn system() -> Actor {
        Actor {
            role: Role::System,
            id: "verdict".to_owned(),
        }
    }
}

/// A session to create. The caller has validated every field and chosen the
/// id (UUIDv7 when the client gave none).
#[derive(Clone, Debug)]
pub struct NewSession {
    pub id: String,
    pub kind: Kind,
    pub customer_id: String,
    pub provider_id: String,
    pub provider_account: Option<String>,
    pub scheduled_start: Option<UnixMillis>,
    pub price: Price,
    pub request_id: Option<String>,
    pub metadata: Option<Value>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Session {
    pub id: String,
    pub kind: Kind,
    pub status: Status,
    pub reason: Option<Reason>,
    pub customer_id: String,
    pub provider_id: String,
    pub provider_account: Option<String>,
    pub request_id: Option<String>,
    pub scheduled_start: Option<UnixMillis>,
    pub created_at: UnixMillis,
    pub started_at: Option<UnixMillis>,
    pub ended_at: Option<UnixMillis>,
    pub ended_by: Option<Role>,
    pub billable_seconds: Option<i64>,
    pub price: Price,
    pub charged_cents: Option<Cents>,
    pub metadata: Option<Value>,
    pub customer_last_seen_at: Option<UnixMillis>,
    pub provider_last_seen_at: Option<UnixMillis>,
}

impl Session {
    /// The id of the given party.
    pub fn party_id(&self, party: Party) -> &str {
        match party {
            Party::Customer => &self.customer_id,
            Party::Provider => &self.provider_id,
        }
    }

    /// The stored outcome, when terminal.
    pub fn outcome(&self) -> Option<Outcome> {
        match (self.status.is_terminal(), self.reason, self.ended_at) {
            (true, Some(reason), Some(ended_at)) => Some(Outcome {
                status: self.status,
                reason,
                billable_seconds: self.billable_seconds.unwrap_or(0),
                started_at: self.started_at,
                ended_at,
            }),
            _ => None,
        }
    }

    /// What the decision needs of this session.
    pub fn facts(&self) -> SessionFacts {
        SessionFacts {
            created_at: self.created_at,
            scheduled_start: self.scheduled_start,
            recorded: self.outcome(),
        }
    }
}

/// The result of an end call.
#[derive(Clone, Debug, PartialEq)]
pub struct Ended {
    pub session: Session,
    /// True when the session was already terminal: nothing was written.
    pub already_ended: bool,
}

/// What a presence call records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PresenceChange {
    Join,
    Leave,
    Heartbeat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Created,
    Joined,
    Left,
    Ended,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Created => "created",
            EventType::Joined => "joined",
            EventType::Left => "left",
            EventType::Ended => "ended",
        }
    }

    pub fn parse(text: &str) -> Option<EventType> {
        Some(match text {
            "created" => EventType::Created,
            "joined" => EventType::Joined,
            "left" => EventType::Left,
            "ended" => EventType::Ended,
            _ => return None,
        })
    }
}

/// One entry of a session's audit trail.
#[derive(Clone, Debug, PartialEq)]
pub struct AuditEvent {
    pub seq: i64,
    pub session_id: String,
    pub event_type: EventType,
    pub party: Option<Party>,
    pub actor: Actor,
    pub at: UnixMillis,
    /// For `ended`: `{claimed, policy, outcome}`.
    pub data: Option<Value>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Notification {
    pub id: i64,
    pub recipient_role: Party,
    pub recipient_id: String,
    pub session_id: String,
    pub kind: String,
    pub reason: Option<Reason>,
    pub created_at: UnixMillis,
}
