//! Verification of one session (docs/verification.md): everything that can be wrong with
//! a stored session, found by re-deriving it with [`decide`] — the same
//! function `end` uses, with the policy stored on the session. No second
//! implementation of the rules exists anywhere.

use crate::decide::{EndCause, EndRequest, Outcome, SessionFacts, decide, sweep_due};
use crate::policy::Policy;
use crate::presence::{PresenceEvent, PresenceKind};
use crate::pricing::{Cents, Price, charge_for, platform_fee};
use crate::types::{Party, Reason, Status, UnixMillis};

/// What verification needs to know of one stored session.
#[derive(Clone, Debug)]
pub struct SessionAudit {
    pub status: Status,
    pub reason: Option<Reason>,
    pub created_at: UnixMillis,
    pub scheduled_start: Option<UnixMillis>,
    pub started_at: Option<UnixMillis>,
    pub ended_at: Option<UnixMillis>,
    pub billable_seconds: Option<i64>,
    pub price: Price,
    pub charged: Option<Cents>,
    /// The policy the session was decided with (`None`: never decided by
    /// verdict, e.g. imported — the configured policy applies).
    pub policy: Option<Policy>,
    /// True when the sweeper ended it (so `expired` is a possible verdict).
    pub ended_by_system: bool,
    /// Ended, and not final yet: until when its finalization window lasts.
    /// Its money is not settled before (no payout is expected); a window
    /// over for more than `STUCK_AFTER_SECONDS` is a stuck session.
    pub finalizing_until: Option<UnixMillis>,
    /// When the decision was made, if verdict made it.
    pub decided_at: Option<UnixMillis>,
    pub events: Vec<PresenceEvent>,
    /// Payout amounts (any state).
    pub payouts: Vec<Cents>,
    /// The sum of the lines of each ledger posting that does not balance
    /// (a store may leave out balanced ones: only a non-zero sum is a
    /// finding).
    pub posting_sums: Vec<i64>,
    /// The linked request: its status as text and its open assignments.
    pub request: Option<(String, i64)>,
}

/// One thing wrong with a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finding {
    /// Stored `completed`, re-derived otherwise: the customer was charged
    /// for a session that did not happen.
    MisclassifiedCompleted { expected: Outcome },
    /// Stored cancelled or expired, re-derived `completed`: revenue lost.
    MisclassifiedCancelled { expected: Outcome },
    /// The status needs joins the history does not have.
    MissingJoins,
    /// `ended_at ≥ started_at ≥ created_at` or `terminal ⇔ ended_at` broken.
    TimestampIntegrity,
    /// Not exactly one payout of the provider's share for a completed
    /// session, or a payout for another.
    PayoutMismatch,
    /// A ledger posting whose lines do not sum to zero.
    LedgerUnbalanced,
    /// The request does not follow its session, or keeps queue entries.
    RequestMismatch,
    /// Not ended although the sweeper should have ended it over 60 s ago,
    /// or ended with its finalization window over for as long, unsettled.
    Stuck,
}

impl Finding {
    pub fn kind(&self) -> &'static str {
        match self {
            Finding::MisclassifiedCompleted { .. } => "misclassified_completed",
            Finding::MisclassifiedCancelled { .. } => "misclassified_cancelled",
            Finding::MissingJoins => "missing_join_events",
            Finding::TimestampIntegrity => "timestamp_integrity",
            Finding::PayoutMismatch => "payout_accuracy",
            Finding::LedgerUnbalanced => "ledger_balance",
            Finding::RequestMismatch => "request_consistency",
            Finding::Stuck => "stuck_sessions",
        }
    }

    /// Money at stake, in cents: `(underbilled, overbilled)`.
    pub fn revenue_impact(&self, audit: &SessionAudit) -> (i64, i64) {
        match self {
            Finding::MisclassifiedCancelled { expected } => {
                (charge_for(&audit.price, expected.reason, expected.billable_seconds).0, 0)
            }
            Finding::MisclassifiedCompleted { .. } => (0, audit.charged.map_or(0, |c| c.0)),
            _ => (0, 0),
        }
    }
}

/// The grace after which a session the sweeper should have ended is stuck.
pub const STUCK_AFTER_SECONDS: i64 = 60;

impl SessionAudit {
    /// What the decision says this session's outcome is.
    pub fn rederive(&self, configured: &Policy) -> Option<Outcome> {
        let ended_at = self.ended_at?;
        let policy = self.policy.unwrap_or(*configured);
        let facts = SessionFacts {
            created_at: self.created_at,
            scheduled_start: self.scheduled_start,
            recorded: None,
        };
        let cause = if self.ended_by_system || self.status == Status::Expired {
            EndCause::Sweeper
        } else {
            EndCause::Requested
        };
        // As the decision was made: ended at `ended_at`, with heartbeats
        // judged when it was decided (the sweeper decides after the end).
        let judged_at = self.decided_at.unwrap_or(ended_at).max(ended_at);
        let outcome =
            decide(&facts, &self.events, &policy, EndRequest { at: ended_at, cause, judged_at });
        Some(outcome)
    }

    /// Everything wrong with this session at `now`; `configured` is the
    /// policy for its kind today.
    pub fn findings(&self, configured: &Policy, now: UnixMillis) -> Vec<Finding> {
        let mut findings = Vec::new();
        let terminal = self.status.is_terminal();

        // Timestamps.
        let ordered = match (self.started_at, self.ended_at) {
            (Some(started), Some(ended)) => started >= self.created_at && ended >= started,
            (Some(started), None) => started >= self.created_at,
            (None, Some(ended)) => ended >= self.created_at,
            (None, None) => true,
        };
        if !ordered || terminal != self.ended_at.is_some() || terminal != self.reason.is_some() {
            findings.push(Finding::TimestampIntegrity);
        }

        if terminal && let Some(expected) = self.rederive(configured) {
            let completed = self.status == Status::Completed;
            if completed && expected.status != Status::Completed {
                findings.push(Finding::MisclassifiedCompleted { expected });
            } else if !completed && expected.status == Status::Completed {
                findings.push(Finding::MisclassifiedCancelled { expected });
            }
        }

        // Joins the status needs (before the end: a platform reports
        // joins after it too).
        let joined = |party| {
            self.events.iter().any(|event| {
                event.party == party
                    && event.kind == PresenceKind::Joined
                    && self.ended_at.is_none_or(|ended| event.at <= ended)
            })
        };
        let needs = match self.reason {
            Some(Reason::Completed | Reason::TooShort | Reason::NeverOverlapped) => (true, true),
            Some(Reason::NoShowCustomer) => (false, true),
            Some(Reason::NoShowProvider) => (true, false),
            _ => (false, false),
        };
        if (needs.0 && !joined(Party::Customer)) || (needs.1 && !joined(Party::Provider)) {
            findings.push(Finding::MissingJoins);
        }

        // Money.
        let policy = self.policy.unwrap_or(*configured);
        let payout_ok = if self.finalizing_until.is_some() {
            self.payouts.is_empty()
        } else if self.status == Status::Completed {
            let charge = self.charged.unwrap_or_else(|| {
                charge_for(&self.price, Reason::Completed, self.billable_seconds.unwrap_or(0))
            });
            let share = Cents(charge.0 - platform_fee(charge, policy.platform_fee_bps).0);
            // A payout recorded by the old system (no stored policy) was
            // computed by its rules: only its existence is checked.
            self.payouts.len() == 1 && (self.policy.is_none() || self.payouts[0] == share)
        } else {
            self.payouts.is_empty()
        };
        if !payout_ok {
            findings.push(Finding::PayoutMismatch);
        }
        if self.posting_sums.iter().any(|sum| *sum != 0) {
            findings.push(Finding::LedgerUnbalanced);
        }

        if let Some((request_status, open_assignments)) = &self.request {
            let expected = if terminal { self.status.as_str() } else { "matched" };
            let consistent = request_status == expected && (!terminal || *open_assignments == 0);
            if !consistent {
                findings.push(Finding::RequestMismatch);
            }
        }

        if let Some(until) = self.finalizing_until
            && now.millis_since(until) > STUCK_AFTER_SECONDS * 1000
        {
            // Nobody closed its window: its money is never settled.
            findings.push(Finding::Stuck);
        }
        if !terminal {
            let facts = SessionFacts {
                created_at: self.created_at,
                scheduled_start: self.scheduled_start,
                recorded: None,
            };
            // "By more than 60 s": one millisecond past the grace.
            let grace_ago = UnixMillis(now.plus_seconds(-STUCK_AFTER_SECONDS).0 - 1);
            if sweep_due(&facts, &self.events, configured, grace_ago).is_some() {
                findings.push(Finding::Stuck);
            }
        }
        findings
    }
}

/// The health score (docs/verification.md): `100 × clean / ended − 2 × stuck − 5 × dead`,
/// clamped to 0–100; 100 when nothing ended.
pub fn health_score(ended: u64, clean: u64, stuck: u64, dead: u64) -> f64 {
    if ended == 0 {
        return 100.0;
    }
    let score = 100.0 * clean as f64 / ended as f64 - 2.0 * stuck as f64 - 5.0 * dead as f64;
    score.clamp(0.0, 100.0)
}

/// `idle` when nothing ended, else by score: ≥ 95 `excellent`, ≥ 85
/// `good`, ≥ 70 `degraded`, else `critical`.
pub fn health_label(ended: u64, score: f64) -> &'static str {
    match score {
        _ if ended == 0 => "idle",
        s if s >= 95.0 => "excellent",
        s if s >= 85.0 => "good",
        s if s >= 70.0 => "degraded",
        _ => "critical",
    }
}

/// Nearest-rank percentile of sorted values (`p` in 0–100).
pub fn percentile(sorted: &[i64], p: u32) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (u64::from(p) * sorted.len() as u64).div_ceil(100).max(1) as usize;
    sorted.get(rank - 1).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_score_follows_the_formula_and_the_labels_their_thresholds() {
        assert_eq!(health_score(0, 0, 3, 1), 100.0);
        assert_eq!(health_label(0, 100.0), "idle");
        assert_eq!(health_score(20, 19, 0, 0), 95.0);
        assert_eq!(health_label(20, 95.0), "excellent");
        assert_eq!(health_score(20, 19, 1, 1), 88.0);
        assert_eq!(health_label(20, 88.0), "good");
        assert_eq!(health_label(20, 70.0), "degraded");
        assert_eq!(health_label(20, 69.9), "critical");
        assert_eq!(health_score(10, 0, 50, 0), 0.0);
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let values: Vec<i64> = (1..=10).collect();
        assert_eq!(percentile(&values, 50), Some(5));
        assert_eq!(percentile(&values, 90), Some(9));
        assert_eq!(percentile(&values, 100), Some(10));
        assert_eq!(percentile(&[7], 90), Some(7));
        assert_eq!(percentile(&[], 50), None);
    }
}
