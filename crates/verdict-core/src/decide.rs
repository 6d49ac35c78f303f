//! The decision (docs/presence.md): from what the server saw to `completed`,
//! `cancelled` or `expired`, with a reason and the billable time.
//!
//! Nothing a client claims enters here: the inputs are the session's own
//! timestamps, the presence events the server recorded, the policy and the
//! end instant.

use crate::policy::{BillingBasis, Policy};
use crate::presence::{PresenceEvent, PresenceKind, intervals_judged, intervals_of, overlap};
use crate::types::{Party, Reason, Status, UnixMillis};

/// The outcome of a decision: what a terminal session records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Always terminal.
    pub status: Status,
    pub reason: Reason,
    pub billable_seconds: i64,
    /// First instant both parties were present, if they ever were.
    pub started_at: Option<UnixMillis>,
    pub ended_at: UnixMillis,
}

/// What the decision needs to know of the session itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionFacts {
    pub created_at: UnixMillis,
    pub scheduled_start: Option<UnixMillis>,
    /// The stored outcome when the session is already terminal.
    pub recorded: Option<Outcome>,
}

impl SessionFacts {
    /// The instant by which both parties must have met: the scheduled start
    /// (or the creation, when unscheduled) plus the join grace.
    pub fn join_deadline(&self, policy: &Policy) -> UnixMillis {
        self.scheduled_start.unwrap_or(self.created_at).plus_seconds(policy.join_grace_seconds)
    }
}

/// Who ends the session, which matters for one rule only: `expired` is the
/// sweeper's verdict on a session that never started before its deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndCause {
    /// A party, the platform or an admin called `end`.
    Requested,
    /// The sweeper, which passes the instant the session really ended (the
    /// last departure, or now).
    Sweeper,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndRequest {
    /// The instant the session ended.
    pub at: UnixMillis,
    pub cause: EndCause,
    /// When the decision is made (`at` or later): heartbeats are judged
    /// stale against this instant, so a party whose heartbeats stopped
    /// before the end is absent from its last one even when the sweeper
    /// ends the session later, at the last departure.
    pub judged_at: UnixMillis,
}

impl EndRequest {
    /// An end decided at the instant it happens.
    pub fn new(at: UnixMillis, cause: EndCause) -> EndRequest {
        EndRequest { at, cause, judged_at: at }
    }
}

/// Decide a session's outcome. Pure and total: every history maps to exactly
/// one outcome, and deciding again gives the same answer.
pub fn decide(
    session: &SessionFacts,
    events: &[PresenceEvent],
    policy: &Policy,
    end: EndRequest,
) -> Outcome {
    // Rule 1: terminal is final.
    if let Some(recorded) = session.recorded {
        return recorded;
    }

    let judged_at = end.judged_at.max(end.at);
    let customer = intervals_judged(events, Party::Customer, end.at, judged_at, policy);
    let provider = intervals_judged(events, Party::Provider, end.at, judged_at, policy);
    let (overlap_millis, started_at) = overlap(&customer, &provider);

    let Some(started_at) = started_at else {
        // Rule 2 (and rule 5 for the sweeper).
        let joined = |party| {
            events.iter().any(|event| {
                event.party == party && event.kind == PresenceKind::Joined && event.at <= end.at
            })
        };
        let reason = Reason::for_never_started(joined(Party::Customer), joined(Party::Provider));
        let (status, ended_at) = match end.cause {
            EndCause::Requested => (Status::Cancelled, end.at),
            EndCause::Sweeper => (Status::Expired, session.join_deadline(policy).min(end.at)),
        };
        return Outcome { status, reason, billable_seconds: 0, started_at: None, ended_at };
    };

    let measured_millis = match policy.billing_basis {
        BillingBasis::Overlap => overlap_millis,
        BillingBasis::WallClock => end.at.millis_since(started_at),
    };
    let billable_seconds = (measured_millis / 1000).min(policy.max_duration_seconds);

    // Rules 3 and 4: the threshold is inclusive.
    let (status, reason) = if billable_seconds >= policy.min_billable_seconds {
        (Status::Completed, Reason::Completed)
    } else {
        (Status::Cancelled, Reason::TooShort)
    };
    Outcome { status, reason, billable_seconds, started_at: Some(started_at), ended_at: end.at }
}

/// When, if at all, the sweeper must end a session nobody ended (docs/presence.md,
/// docs/verification.md), judged at `now`:
/// - never started and past its join deadline → at the deadline (the
///   decision then says `expired`);
/// - started, and past `max_duration_seconds` since the start → at the
///   instant the maximum was reached (billing is capped there anyway);
/// - started, both parties absent for `abandon_after_seconds` → at the
///   last departure.
///
/// Returns the end request to pass to [`decide`], or `None` if not due.
pub fn sweep_due(
    session: &SessionFacts,
    events: &[PresenceEvent],
    policy: &Policy,
    now: UnixMillis,
) -> Option<EndRequest> {
    if session.recorded.is_some() {
        return None;
    }
    let customer = intervals_of(events, Party::Customer, now, policy);
    let provider = intervals_of(events, Party::Provider, now, policy);
    let (_, started_at) = overlap(&customer, &provider);
    let sweep = |at| Some(EndRequest { at, cause: EndCause::Sweeper, judged_at: now });
    let Some(started_at) = started_at else {
        let deadline = session.join_deadline(policy);
        return if now >= deadline { sweep(deadline) } else { None };
    };
    let cap = started_at.plus_seconds(policy.max_duration_seconds);
    // Absent now: no interval reaches `now` (an open one ends exactly there).
    let absent = |intervals: &[crate::presence::Interval]| {
        intervals.last().is_none_or(|last| last.end < now)
    };
    if absent(&customer) && absent(&provider) {
        let last_departure = customer.iter().chain(&provider).map(|interval| interval.end).max()?;
        if now.millis_since(last_departure) >= policy.abandon_after_seconds.saturating_mul(1000) {
            return sweep(last_departure.min(cap));
        }
    }
    if now >= cap { sweep(cap) } else { None }
}
