//! The pure decision core of verdict.
//!
//! Everything here is a function of its arguments: no I/O, no clock, no
//! async. Callers (the store, the sweeper, repair) pass in the instant and the
//! facts; the core answers. This is the single source of truth for what a
//! session's outcome is — `end`, the sweeper, verification and repair all call
//! [`decide`].

mod audit;
mod decide;
mod id;
mod outbox;
mod policy;
mod presence;
mod pricing;
mod settle;
mod types;

pub use audit::{
    Finding, STUCK_AFTER_SECONDS, SessionAudit, health_label, health_score, percentile,
};
pub use decide::{EndCause, EndRequest, Outcome, SessionFacts, decide, sweep_due};
pub use id::{ID_LENGTH_MAX, is_valid_id};
pub use outbox::{Channel, Message, Topic};
pub use policy::{BillingBasis, Policy, PolicySet};
pub use presence::{
    Connection, Interval, Presence, PresenceEvent, PresenceKind, intersections, intervals_judged,
    intervals_of, open_since, overlap, presence_at,
};
pub use pricing::{AMOUNT_CENTS_MAX, Cents, Price, PriceMode, charge_for, platform_fee};
pub use settle::{
    Books, CorrectionPlan, EndPlan, FinalizePlan, MoneyPlan, Notice, NoticeKind, PayoutFacts,
    PlannedPayout, PlannedPosting, PostingKind, ReversalPlan, SettleFacts, SettleRules, accounts,
    payout_id, plan_correction, plan_end, plan_finalize, plan_money, plan_reversal,
};
pub use types::{Kind, ParseError, Party, Reason, Role, Status, UnixMillis};
