//! A session's audit assembled from its stored rows: one assembly for the
//! admin dashboard's session page and for verification pages, so that both
//! read the audit trail, payouts and postings the same way.

use verdict_core::{
    Cents, Connection, Party, PresenceEvent, PresenceKind, SessionAudit, UnixMillis,
};

use crate::{AuditEvent, EventType, Payout, Posting, Session};

/// What verification knows of `session` from its audit trail (`events`,
/// oldest first), its payouts and its ledger postings: the policy stored
/// with its decision (an unreadable one counts as none), when the decision
/// was taken, its joins and leaves then each party's last heartbeat, the
/// amounts of the payouts not reversed and the sums of the postings that do
/// not balance. The request is not attached.
pub fn assemble_audit(
    session: &Session,
    events: &[AuditEvent],
    payouts: &[Payout],
    postings: &[Posting],
) -> SessionAudit {
    let stored_policy = events
        .iter()
        .find(|event| event.event_type == EventType::Ended)
        .and_then(|event| event.data.as_ref())
        .and_then(|data| crate::policy_from_value(&data["policy"]).ok());
    let mut audit = session.audit(stored_policy, None, Vec::with_capacity(events.len() + 2));
    for event in events {
        add_event(&mut audit, event.event_type, event.party, event.at, event.connection.as_deref());
    }
    audit.events.extend(session.last_heartbeats());
    audit.payouts = payout_amounts(payouts);
    audit.posting_sums = unbalanced_sums(postings);
    audit
}

/// Adds one event of a session's audit trail to its audit: a join or leave
/// of a party as presence (in the order added), an `ended` event as the
/// instant of the decision (the latest, were there several). Nothing else
/// in the trail matters to verification.
pub(crate) fn add_event(
    audit: &mut SessionAudit,
    event_type: EventType,
    party: Option<Party>,
    at: UnixMillis,
    connection: Option<&str>,
) {
    let kind = match event_type {
        EventType::Joined => PresenceKind::Joined,
        EventType::Left => PresenceKind::Left,
        EventType::Ended => {
            audit.decided_at = audit.decided_at.max(Some(at));
            return;
        }
        EventType::Created | EventType::Corrected => return,
    };
    if let Some(party) = party {
        audit.events.push(PresenceEvent {
            party,
            kind,
            at,
            connection: Connection::named(connection),
        });
    }
}

/// The amounts of the payouts not reversed.
fn payout_amounts(payouts: &[Payout]) -> Vec<Cents> {
    payouts
        .iter()
        .filter(|payout| payout.reversed_at.is_none())
        .map(|payout| payout.amount)
        .collect()
}

/// The sums of the postings whose lines do not sum to zero.
fn unbalanced_sums(postings: &[Posting]) -> Vec<i64> {
    postings.iter().map(Posting::total).filter(|total| *total != 0).collect()
}
