//! Decision policy (docs/presence.md): the numbers the decision uses, per kind.

use crate::types::Kind;

/// How billable time is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BillingBasis {
    /// Time both parties were present at once (the default).
    Overlap,
    /// `ended_at - started_at`, the older behaviour.
    WallClock,
}

impl BillingBasis {
    pub fn as_str(self) -> &'static str {
        match self {
            BillingBasis::Overlap => "overlap",
            BillingBasis::WallClock => "wall_clock",
        }
    }

    pub fn parse(text: &str) -> Option<BillingBasis> {
        match text {
            "overlap" => Some(BillingBasis::Overlap),
            "wall_clock" => Some(BillingBasis::WallClock),
            _ => None,
        }
    }
}

/// The policy values one decision is made with. Every ended session stores
/// the values it was decided with, so a later change of configuration never
/// rewrites history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Billable seconds at or above this complete the session (inclusive).
    pub min_billable_seconds: i64,
    pub billing_basis: BillingBasis,
    /// Deadline for both parties to have met: scheduled start (or creation)
    /// plus this.
    pub join_grace_seconds: i64,
    /// Both parties absent this long → the sweeper ends the session.
    pub abandon_after_seconds: i64,
    /// Billing never exceeds this.
    pub max_duration_seconds: i64,
    /// A party whose last heartbeat in its current interval is older than
    /// this is absent since that heartbeat.
    pub presence_timeout_seconds: i64,
    /// An absence shorter than this between a leave and a rejoin of the
    /// same party does not split its presence (a reconnect).
    pub reconnect_grace_seconds: i64,
    /// Platform fee in basis points of the charge.
    pub platform_fee_bps: i64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            min_billable_seconds: 60,
            billing_basis: BillingBasis::Overlap,
            join_grace_seconds: 900,
            abandon_after_seconds: 300,
            max_duration_seconds: 14_400,
            presence_timeout_seconds: 60,
            reconnect_grace_seconds: 20,
            platform_fee_bps: 2_000,
        }
    }
}

/// One policy per kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PolicySet {
    pub video: Policy,
    pub chat: Policy,
    pub diagnostic: Policy,
}

impl PolicySet {
    pub fn uniform(policy: Policy) -> PolicySet {
        PolicySet { video: policy, chat: policy, diagnostic: policy }
    }

    pub fn for_kind(&self, kind: Kind) -> &Policy {
        match kind {
            Kind::Video => &self.video,
            Kind::Chat => &self.chat,
            Kind::Diagnostic => &self.diagnostic,
        }
    }
}
