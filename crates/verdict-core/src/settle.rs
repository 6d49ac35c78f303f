//! Settlement as a plan (docs/settlement.md): from the facts of one session, everything
//! its end, finalization, correction or reversal writes — the outcome, the
//! session's new columns, the audit record, notifications, typed outbox
//! messages, the ledger posting and the payout.
//!
//! The store reads the facts, asks here, and writes the plan as it is (a
//! group of plans a table at a time); it decides nothing about money.
//! Property-tested in `tests/settle.rs`: every posting balances, a payout
//! exists iff the outcome is completed and final, a reversal nets a
//! session's books to zero, and planning twice gives the same plan.

use crate::decide::{EndRequest, Outcome, SessionFacts, decide};
use crate::outbox::Message;
use crate::policy::Policy;
use crate::presence::PresenceEvent;
use crate::pricing::{Cents, Price, charge_for, platform_fee};
use crate::types::{Party, Reason, Status, UnixMillis};

/// The ledger's account names.
pub mod accounts {
    /// What a customer owes for its sessions.
    pub fn customer_receivable(customer_id: &str) -> String {
        format!("customer_receivable:{customer_id}")
    }

    /// What the platform owes a provider.
    pub fn provider_payable(provider_id: &str) -> String {
        format!("provider_payable:{provider_id}")
    }

    /// The platform's fees.
    pub const PLATFORM_REVENUE: &str = "platform_revenue";
}

/// What one session is, for settling it: its parties, price and links, and
/// what is known of its users.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SettleFacts {
    pub session_id: String,
    pub customer_id: String,
    pub provider_id: String,
    pub price: Price,
    /// The payout destination given with the session, if any.
    pub provider_account: Option<String>,
    /// The provider's Stripe account from its user record (used when the
    /// session names none).
    pub provider_stripe_account: Option<String>,
    pub customer_email: Option<String>,
    pub provider_email: Option<String>,
    pub request_id: Option<String>,
    /// A session meeting in a platform room: late presence may still
    /// arrive, so money waits for finalization.
    pub has_room: bool,
}

/// How the deployment settles money that is not fixed by the session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SettleRules {
    /// Payouts go out through the payment provider (an outbox row pays
    /// them); false: they wait in the ledger for an operator.
    pub payouts_automatic: bool,
    /// How long a session with a room stays open to late presence.
    pub finalize_after_seconds: i64,
}

/// What a notification tells its recipient.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NoticeKind {
    SessionCompleted,
    SessionCancelled,
    SessionExpired,
    SessionCorrected,
}

impl NoticeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NoticeKind::SessionCompleted => "session_completed",
            NoticeKind::SessionCancelled => "session_cancelled",
            NoticeKind::SessionExpired => "session_expired",
            NoticeKind::SessionCorrected => "session_corrected",
        }
    }

    fn of_end(status: Status) -> NoticeKind {
        match status {
            Status::Completed => NoticeKind::SessionCompleted,
            Status::Expired => NoticeKind::SessionExpired,
            _ => NoticeKind::SessionCancelled,
        }
    }
}

/// One notification to each party of the session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Notice {
    pub kind: NoticeKind,
    pub reason: Reason,
}

/// The kind of a ledger posting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PostingKind {
    Settlement,
    Reversal,
}

impl PostingKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PostingKind::Settlement => "settlement",
            PostingKind::Reversal => "reversal",
        }
    }
}

/// A ledger posting to write: lines of (account, cents; debit positive),
/// summing to zero.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedPosting {
    pub kind: PostingKind,
    pub currency: String,
    pub lines: Vec<(String, i64)>,
}

impl PlannedPosting {
    pub fn is_balanced(&self) -> bool {
        self.lines.iter().map(|(_, amount)| amount).sum::<i64>() == 0
    }
}

/// A payout to write (state `pending`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedPayout {
    pub id: String,
    pub provider_id: String,
    pub destination: Option<String>,
    pub amount: Cents,
    pub currency: String,
}

/// The id of a session's payout (one per session).
pub fn payout_id(session_id: &str) -> String {
    format!("po_{session_id}")
}

/// What a final outcome owes: receipts, and for a completed session its
/// settlement posting, payout and the message that pays it.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct MoneyPlan {
    pub posting: Option<PlannedPosting>,
    pub payout: Option<PlannedPayout>,
    pub messages: Vec<Message>,
}

/// Everything an end writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndPlan {
    pub outcome: Outcome,
    pub charged: Cents,
    /// The policy the decision used (stored with the session and its
    /// `ended` event).
    pub policy: Policy,
    /// Until when late platform presence may re-decide it; its money then
    /// waits (`money` is empty).
    pub finalizes_at: Option<UnixMillis>,
    pub notice: Notice,
    /// The linked request follows the session to this status.
    pub request_status: Option<Status>,
    /// Outbox messages of the end itself (`session.ended`), then `money`'s.
    pub messages: Vec<Message>,
    pub money: MoneyPlan,
}

/// Plans the end of a non-terminal session at `end`, decided under
/// `policy` from `events`. `None` when the session is already terminal
/// (an end changes nothing then).
pub fn plan_end(
    facts: &SettleFacts,
    session: &SessionFacts,
    events: &[PresenceEvent],
    policy: &Policy,
    rules: &SettleRules,
    end: EndRequest,
    now: UnixMillis,
) -> Option<EndPlan> {
    if session.recorded.is_some() {
        return None;
    }
    let outcome = decide(session, events, policy, end);
    let charged = charge_for(&facts.price, outcome.reason, outcome.billable_seconds);
    let finalizes_at = facts.has_room.then(|| now.plus_seconds(rules.finalize_after_seconds));
    let money = if finalizes_at.is_none() {
        plan_money(facts, outcome.status, charged, policy, rules)
    } else {
        MoneyPlan::default()
    };
    Some(EndPlan {
        outcome,
        charged,
        policy: *policy,
        finalizes_at,
        notice: Notice { kind: NoticeKind::of_end(outcome.status), reason: outcome.reason },
        request_status: facts.request_id.as_ref().map(|_| outcome.status),
        messages: vec![Message::SessionEnded { outcome, charged }],
        money,
    })
}

/// What a final outcome of `status` and `charged` owes (docs/settlement.md): a
/// receipt to each party whose address is known; when completed, the
/// posting (customer charge = provider share + platform fee), the payout
/// of the share and, when payouts are automatic, the message paying it.
pub fn plan_money(
    facts: &SettleFacts,
    status: Status,
    charged: Cents,
    policy: &Policy,
    rules: &SettleRules,
) -> MoneyPlan {
    let mut messages = Vec::new();
    for (party, email) in
        [(Party::Customer, &facts.customer_email), (Party::Provider, &facts.provider_email)]
    {
        if let Some(to) = email {
            messages.push(Message::Receipt { party, to: to.clone() });
        }
    }
    if status != Status::Completed {
        return MoneyPlan { posting: None, payout: None, messages };
    }
    let fee = platform_fee(charged, policy.platform_fee_bps);
    let share = Cents(charged.0 - fee.0);
    let posting = PlannedPosting {
        kind: PostingKind::Settlement,
        currency: facts.price.currency.clone(),
        lines: vec![
            (accounts::customer_receivable(&facts.customer_id), charged.0),
            (accounts::provider_payable(&facts.provider_id), -share.0),
            (accounts::PLATFORM_REVENUE.to_owned(), -fee.0),
        ],
    };
    let payout = PlannedPayout {
        id: payout_id(&facts.session_id),
        provider_id: facts.provider_id.clone(),
        destination: facts
            .provider_account
            .clone()
            .or_else(|| facts.provider_stripe_account.clone()),
        amount: share,
        currency: facts.price.currency.clone(),
    };
    if rules.payouts_automatic {
        messages.push(Message::Payout { payout_id: payout.id.clone() });
    }
    MoneyPlan { posting: Some(posting), payout: Some(payout), messages }
}

/// What closing a session's finalization window writes: the money of the
/// outcome it has now, and `session.finalized`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FinalizePlan {
    pub money: MoneyPlan,
    pub messages: Vec<Message>,
}

/// Plans the finalization of a terminal session with a room.
pub fn plan_finalize(
    facts: &SettleFacts,
    recorded: &Outcome,
    charged: Cents,
    policy: &Policy,
    rules: &SettleRules,
) -> FinalizePlan {
    FinalizePlan {
        money: plan_money(facts, recorded.status, charged, policy, rules),
        messages: vec![Message::SessionFinalized { outcome: *recorded, charged }],
    }
}

/// A payout as it stands, for reversing it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PayoutFacts {
    pub id: String,
    pub amount: Cents,
    pub state: String,
    pub provider: String,
    pub transfer_id: Option<String>,
}

/// Undoing a wrongly paid session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReversalPlan {
    /// The reversal posting (`None` when the books are already at zero
    /// and nothing was paid).
    pub posting: Option<PlannedPosting>,
    /// Payouts to mark reversed.
    pub payouts: Vec<String>,
    /// A `payout.reversal` message per payout.
    pub messages: Vec<Message>,
}

/// Plans the reversal of a session's books: a posting negating what the
/// ledger holds for it (`net`: per account, its total), each payout not yet
/// reversed marked and announced. A payout without books is clawed back
/// against platform revenue.
pub fn plan_reversal(
    facts: &SettleFacts,
    net: &[(String, i64)],
    payouts: &[PayoutFacts],
) -> ReversalPlan {
    let mut lines: Vec<(String, i64)> = net
        .iter()
        .filter(|(_, total)| *total != 0)
        .map(|(account, total)| (account.clone(), -total))
        .collect();
    if lines.is_empty()
        && let Some(payout) = payouts.first()
    {
        lines.push((accounts::provider_payable(&facts.provider_id), payout.amount.0));
        lines.push((accounts::PLATFORM_REVENUE.to_owned(), -payout.amount.0));
    }
    let posting = (!lines.is_empty()).then(|| PlannedPosting {
        kind: PostingKind::Reversal,
        currency: facts.price.currency.clone(),
        lines,
    });
    ReversalPlan {
        posting,
        payouts: payouts.iter().map(|payout| payout.id.clone()).collect(),
        messages: payouts
            .iter()
            .map(|payout| Message::PayoutReversal {
                payout_id: payout.id.clone(),
                state: payout.state.clone(),
                provider: payout.provider.clone(),
                transfer_id: payout.transfer_id.clone(),
                amount: payout.amount,
            })
            .collect(),
    }
}

/// What a correction of a terminal session's books needs to know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Books {
    /// Per account, the ledger's total for the session.
    pub net: Vec<(String, i64)>,
    /// Payouts not yet reversed.
    pub payouts: Vec<PayoutFacts>,
    /// Whether the session has any payout at all (reversed ones included).
    pub any_payout: bool,
}

/// A correction of a recorded outcome to the re-derived one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CorrectionPlan {
    pub from: (Status, Reason),
    pub to: Outcome,
    pub charged: Cents,
    pub money_effect: i64,
    pub notice: Notice,
    /// The linked request follows when the status changes.
    pub request_status: Option<Status>,
    /// A newly completed session's settlement (when final).
    pub money: MoneyPlan,
    /// A no longer completed session's reversal (when final).
    pub reversal: Option<ReversalPlan>,
}

/// Plans the correction of `recorded` (with its charge `old_charge`) to
/// `expected`, or `None` when the recorded outcome stands and its money
/// is right (a session not completed with a payout not reversed is
/// corrected even when its status stands: the payout is reversed). Repair judges
/// the status and reason; inside a finalization window (`finalizing`),
/// where presence is still arriving, every part of the outcome, and no
/// money moves (finalization settles what stands then).
#[allow(clippy::too_many_arguments)]
pub fn plan_correction(
    facts: &SettleFacts,
    recorded: &Outcome,
    old_charge: Cents,
    expected: &Outcome,
    policy: &Policy,
    rules: &SettleRules,
    finalizing: bool,
    books: &Books,
) -> Option<CorrectionPlan> {
    let stands = if finalizing {
        (expected.status, expected.reason, expected.billable_seconds, expected.started_at)
            == (recorded.status, recorded.reason, recorded.billable_seconds, recorded.started_at)
    } else {
        (expected.status, expected.reason) == (recorded.status, recorded.reason)
    };
    // A session not completed that was paid anyway (history the old system
    // paid): its money is corrected even when its status is right.
    let unearned = !finalizing
        && expected.status != Status::Completed
        && recorded.status != Status::Completed
        && !books.payouts.is_empty();
    if stands && !unearned {
        return None;
    }
    let charged = charge_for(&facts.price, expected.reason, expected.billable_seconds);
    let mut plan = CorrectionPlan {
        from: (recorded.status, recorded.reason),
        to: *expected,
        charged,
        money_effect: charged.0 - old_charge.0,
        notice: Notice { kind: NoticeKind::SessionCorrected, reason: expected.reason },
        request_status: facts
            .request_id
            .as_ref()
            .filter(|_| expected.status != recorded.status)
            .map(|_| expected.status),
        money: MoneyPlan::default(),
        reversal: None,
    };
    if finalizing {
        return Some(plan);
    }
    let was_completed = recorded.status == Status::Completed;
    let is_completed = expected.status == Status::Completed;
    if is_completed && !was_completed && !books.any_payout {
        let money = plan_money(facts, Status::Completed, charged, policy, rules);
        // A correction sends no receipts: the parties are notified of it.
        plan.money = MoneyPlan {
            messages: money
                .messages
                .into_iter()
                .filter(|message| !matches!(message, Message::Receipt { .. }))
                .collect(),
            ..money
        };
    } else if (was_completed || unearned) && !is_completed {
        plan.reversal = Some(plan_reversal(facts, &books.net, &books.payouts));
    }
    Some(plan)
}
