//! Insight beyond the health score (issue 27): rates per kind and per
//! provider, threshold alerts judged on them, and their state changes.
//!
//! Judging is pure ([`judge`]): counts in, alerts out. The store counts
//! (`Store::scope_counts`, one grouped read per scope family) and keeps
//! each alert's state (`Store::record_alert_states`), so that any number
//! of workers evaluating at once announce each change once: the row that
//! changes state is updated conditionally, and only the transaction whose
//! update took queues the webhook.

use std::collections::BTreeMap;
use std::sync::Arc;

use verdict_core::{Cents, Kind, UnixMillis};

use crate::{Settings, Store, StoreError};

/// The verification section counting sessions per kind.
pub const VERIFY_BY_KIND: &str = "by_kind";

/// The gauge of each kind's completion rate over the last 24 h (set by
/// the worker's evaluation and the server's health refresh alike).
pub const COMPLETION_RATE_GAUGE: &str = "verdict_completion_rate";
/// The gauge of each kind's no-show rate over the last 24 h.
pub const NO_SHOW_RATE_GAUGE: &str = "verdict_no_show_rate";

/// Sets [`COMPLETION_RATE_GAUGE`] and [`NO_SHOW_RATE_GAUGE`] of `kind`:
/// NaN for a kind with no ended session (no rate, and no alert rule
/// comparing it fires).
pub fn set_rate_gauges(kind: Kind, ended: i64, completion_rate: f64, no_show_rate: f64) {
    let (completion, no_show) =
        if ended == 0 { (f64::NAN, f64::NAN) } else { (completion_rate, no_show_rate) };
    metrics::gauge!(COMPLETION_RATE_GAUGE, "kind" => kind.as_str()).set(completion);
    metrics::gauge!(NO_SHOW_RATE_GAUGE, "kind" => kind.as_str()).set(no_show);
}

/// The window threshold alerts are judged over.
pub const ALERT_WINDOW_HOURS: i64 = 24;

/// Provider scopes read per evaluation: the ones with the most ended
/// sessions first (a scope is judged only from `min_sessions` anyway).
pub const PROVIDER_SCOPES_MAX: i64 = 5_000;

/// Alerts raised at once: beyond it the worst are kept (bounded webhooks).
pub const RAISED_MAX: usize = 500;

/// The `[alerts]` settings: when a scope's rates over the last 24 h raise
/// an alert.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Thresholds {
    /// A completion rate below this raises `completion_rate_below`.
    pub completion_rate_below: f64,
    /// A no-show rate above this raises `no_show_rate_above`.
    pub no_show_rate_above: f64,
    /// A too-short rate above this raises `too_short_rate_above`.
    pub too_short_rate_above: f64,
    /// A scope with fewer ended sessions in the window is not judged: a
    /// rate over a handful of sessions says nothing.
    pub min_sessions: i64,
}

impl Default for Thresholds {
    fn default() -> Thresholds {
        Thresholds {
            completion_rate_below: 0.5,
            no_show_rate_above: 0.3,
            too_short_rate_above: 0.3,
            min_sessions: 20,
        }
    }
}

/// What an alert is judged on: one kind, or one provider.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    Kind(Kind),
    Provider(String),
}

impl Scope {
    /// `kind` or `provider_id`: the scope's field name on the wire.
    pub fn field(&self) -> &'static str {
        match self {
            Scope::Kind(_) => "kind",
            Scope::Provider(_) => "provider_id",
        }
    }

    pub fn value(&self) -> &str {
        match self {
            Scope::Kind(kind) => kind.as_str(),
            Scope::Provider(id) => id,
        }
    }

    /// The scope as stored: its field and value.
    pub fn parse(field: &str, value: &str) -> Option<Scope> {
        match field {
            "kind" => value.parse().ok().map(Scope::Kind),
            "provider_id" => Some(Scope::Provider(value.to_owned())),
            _ => None,
        }
    }
}

/// Ended sessions of a scope in a window, by what became of them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub ended: i64,
    pub completed: i64,
    /// `no_show_customer`, `no_show_provider` or `no_show_both`.
    pub no_show: i64,
    pub too_short: i64,
    pub billable_seconds: i64,
}

impl Counts {
    pub fn completion_rate(&self) -> f64 {
        rate(self.completed, self.ended)
    }

    pub fn no_show_rate(&self) -> f64 {
        rate(self.no_show, self.ended)
    }

    pub fn too_short_rate(&self) -> f64 {
        rate(self.too_short, self.ended)
    }
}

/// `part / whole`, 0 for an empty whole.
pub fn rate(part: i64, whole: i64) -> f64 {
    if whole == 0 { 0.0 } else { part as f64 / whole as f64 }
}

/// The rule an alert breaks: its type (`kind` on the wire).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rule {
    CompletionRateBelow,
    NoShowRateAbove,
    TooShortRateAbove,
}

impl Rule {
    pub const ALL: [Rule; 3] =
        [Rule::CompletionRateBelow, Rule::NoShowRateAbove, Rule::TooShortRateAbove];

    pub fn as_str(self) -> &'static str {
        match self {
            Rule::CompletionRateBelow => "completion_rate_below",
            Rule::NoShowRateAbove => "no_show_rate_above",
            Rule::TooShortRateAbove => "too_short_rate_above",
        }
    }

    pub fn parse(text: &str) -> Option<Rule> {
        Rule::ALL.into_iter().find(|rule| rule.as_str() == text)
    }

    /// The scope's rate this rule looks at, and its threshold.
    fn measure(self, counts: &Counts, thresholds: &Thresholds) -> (f64, f64, bool) {
        match self {
            Rule::CompletionRateBelow => {
                let value = counts.completion_rate();
                (value, thresholds.completion_rate_below, value < thresholds.completion_rate_below)
            }
            Rule::NoShowRateAbove => {
                let value = counts.no_show_rate();
                (value, thresholds.no_show_rate_above, value > thresholds.no_show_rate_above)
            }
            Rule::TooShortRateAbove => {
                let value = counts.too_short_rate();
                (value, thresholds.too_short_rate_above, value > thresholds.too_short_rate_above)
            }
        }
    }
}

/// A threshold broken by a scope.
#[derive(Clone, Debug, PartialEq)]
pub struct ThresholdAlert {
    pub rule: Rule,
    pub scope: Scope,
    /// The scope's rate.
    pub value: f64,
    pub threshold: f64,
    /// Ended sessions of the scope in the window.
    pub sessions: i64,
}

impl ThresholdAlert {
    /// The alert's identity across evaluations: rule and scope.
    pub fn key(&self) -> String {
        alert_key(self.rule, &self.scope)
    }

    /// How far past its threshold, for ordering the worst first.
    fn excess(&self) -> f64 {
        (self.value - self.threshold).abs()
    }
}

/// `rule/field/value`: the primary key of an alert's state.
pub fn alert_key(rule: Rule, scope: &Scope) -> String {
    format!("{}/{}/{}", rule.as_str(), scope.field(), scope.value())
}

/// The alerts `scopes` raise under `thresholds`: scopes with fewer than
/// `min_sessions` ended sessions are not judged. Kinds first, then
/// providers, each the worst first; at most [`RAISED_MAX`].
pub fn judge(scopes: &[(Scope, Counts)], thresholds: &Thresholds) -> Vec<ThresholdAlert> {
    let mut alerts: Vec<ThresholdAlert> = scopes
        .iter()
        .filter(|(_, counts)| counts.ended >= thresholds.min_sessions.max(1))
        .flat_map(|(scope, counts)| {
            Rule::ALL.into_iter().filter_map(move |rule| {
                let (value, threshold, broken) = rule.measure(counts, thresholds);
                broken.then(|| ThresholdAlert {
                    rule,
                    scope: scope.clone(),
                    value,
                    threshold,
                    sessions: counts.ended,
                })
            })
        })
        .collect();
    alerts.sort_by(|a, b| {
        let family = |alert: &ThresholdAlert| matches!(alert.scope, Scope::Provider(_));
        family(a)
            .cmp(&family(b))
            .then(b.excess().total_cmp(&a.excess()))
            .then_with(|| a.key().cmp(&b.key()))
    });
    alerts.truncate(RAISED_MAX);
    alerts
}

/// A change of an alert's state, as announced (`alert.raised` or
/// `alert.resolved`).
#[derive(Clone, Debug, PartialEq)]
pub struct Transition {
    pub rule: Rule,
    pub scope: Scope,
    pub raised: bool,
    /// The alert's figures when raised; when resolved, the last ones it
    /// was raised with.
    pub value: f64,
    pub threshold: f64,
    pub sessions: i64,
    /// How many times this alert changed state (the webhook's dedupe key).
    pub changes: i64,
}

impl Transition {
    /// `alert.raised` or `alert.resolved`.
    pub fn event(&self) -> &'static str {
        if self.raised { "alert.raised" } else { "alert.resolved" }
    }
}

/// Rates of one provider over a window, and its money from the ledger.
#[derive(Clone, Debug, PartialEq)]
pub struct ProviderStats {
    pub provider_id: String,
    pub counts: Counts,
    /// Per currency: what its sessions ended in the window charged
    /// customers, and what they earned it, from their ledger postings
    /// (reversals included, so a reversed session nets to zero).
    pub money: Vec<ProviderMoney>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderMoney {
    pub currency: String,
    pub charged: Cents,
    pub earned: Cents,
}

/// How providers are ranked, worst first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProviderSort {
    /// Highest no-show rate first.
    NoShowRate,
    /// Lowest completion rate first.
    CompletionRate,
    /// Highest too-short rate first.
    TooShortRate,
    /// Most ended sessions first.
    Sessions,
}

impl ProviderSort {
    pub const NAMES: [&'static str; 4] =
        ["no_show_rate", "completion_rate", "too_short_rate", "sessions"];

    pub fn parse(text: &str) -> Option<ProviderSort> {
        match text {
            "no_show_rate" => Some(ProviderSort::NoShowRate),
            "completion_rate" => Some(ProviderSort::CompletionRate),
            "too_short_rate" => Some(ProviderSort::TooShortRate),
            "sessions" => Some(ProviderSort::Sessions),
            _ => None,
        }
    }
}

/// Rates of a window per kind and per provider, as the store counts them.
pub async fn scopes(
    store: &dyn Store,
    now: UnixMillis,
    min_sessions: i64,
) -> Result<Vec<(Scope, Counts)>, StoreError> {
    let since = now.plus_seconds(-ALERT_WINDOW_HOURS * 3600);
    store.scope_counts(since, now, min_sessions.max(1), PROVIDER_SCOPES_MAX).await
}

/// The threshold alerts of the last 24 h, as they stand at `now`.
pub async fn current_alerts(
    store: &dyn Store,
    settings: &Settings,
    now: UnixMillis,
) -> Result<Vec<ThresholdAlert>, StoreError> {
    let scopes = scopes(store, now, settings.alerts.min_sessions).await?;
    Ok(judge(&scopes, &settings.alerts))
}

/// What one evaluation found and changed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Evaluation {
    /// Rates per kind over the window (every kind, judged or not).
    pub by_kind: BTreeMap<Kind, Counts>,
    pub raised: Vec<ThresholdAlert>,
    /// The state changes this evaluation made (and announced).
    pub transitions: Vec<Transition>,
}

/// Judges the last 24 h and records the alerts' states: raised alerts not
/// raised before, and raised ones no longer broken, change state and each
/// queues one webhook. Safe to run in several processes at once.
pub async fn evaluate(
    store: &Arc<dyn Store>,
    settings: &Settings,
    now: UnixMillis,
) -> Result<Evaluation, StoreError> {
    let scopes = scopes(store.as_ref(), now, settings.alerts.min_sessions).await?;
    let raised = judge(&scopes, &settings.alerts);
    let transitions = store.record_alert_states(&raised, now).await?;
    let mut by_kind: BTreeMap<Kind, Counts> =
        Kind::ALL.iter().map(|kind| (*kind, Counts::default())).collect();
    for (scope, counts) in &scopes {
        if let Scope::Kind(kind) = scope {
            by_kind.insert(*kind, *counts);
        }
    }
    Ok(Evaluation { by_kind, raised, transitions })
}

/// The health metrics of one kind's sessions ended in the window (the
/// window's `metrics`, `ended`, `score` and `status_distribution`, per
/// kind). The score counts anomalies only: stuck sessions and dead
/// deliveries belong to no kind.
#[derive(Clone, Debug, PartialEq)]
pub struct KindHealth {
    pub ended: i64,
    pub score: f64,
    pub label: &'static str,
    pub completion_rate: f64,
    pub no_show_rate: f64,
    pub too_short_rate: f64,
    pub avg_billable_seconds: f64,
    pub p50_billable_seconds: i64,
    pub p90_billable_seconds: i64,
    pub status_distribution: BTreeMap<String, i64>,
}

/// Tallies a scan's ended sessions per kind (see [`KindHealth`]).
#[derive(Debug, Default)]
pub struct ByKind {
    kinds: BTreeMap<Kind, KindTally>,
}

#[derive(Debug, Default)]
struct KindTally {
    counts: Counts,
    clean: i64,
    billable: Vec<i64>,
    statuses: BTreeMap<String, i64>,
}

impl ByKind {
    /// Counts one ended session; `clean` when verification finds nothing.
    pub fn add(&mut self, session: &crate::Session, clean: bool) {
        use verdict_core::Reason;
        let tally = self.kinds.entry(session.kind).or_default();
        tally.counts.ended += 1;
        tally.clean += i64::from(clean);
        match session.reason() {
            Some(Reason::Completed) => tally.counts.completed += 1,
            Some(Reason::TooShort) => tally.counts.too_short += 1,
            Some(Reason::NoShowBoth | Reason::NoShowCustomer | Reason::NoShowProvider) => {
                tally.counts.no_show += 1
            }
            _ => {}
        }
        let billable = session.billable_seconds().unwrap_or(0);
        tally.counts.billable_seconds += billable;
        tally.billable.push(billable);
        *tally.statuses.entry(session.status.as_str().to_owned()).or_default() += 1;
    }

    /// Every kind, those without sessions at zero (and `idle`).
    pub fn finish(self) -> BTreeMap<Kind, KindHealth> {
        let mut kinds = self.kinds;
        Kind::ALL
            .iter()
            .map(|kind| {
                let mut tally = kinds.remove(kind).unwrap_or_default();
                tally.billable.sort_unstable();
                let ended = tally.counts.ended;
                let score = verdict_core::health_score(ended as u64, tally.clean as u64, 0, 0);
                let health = KindHealth {
                    ended,
                    score: (score * 100.0).round() / 100.0,
                    label: verdict_core::health_label(ended as u64, score),
                    completion_rate: tally.counts.completion_rate(),
                    no_show_rate: tally.counts.no_show_rate(),
                    too_short_rate: tally.counts.too_short_rate(),
                    avg_billable_seconds: rate(tally.counts.billable_seconds, ended),
                    p50_billable_seconds: verdict_core::percentile(&tally.billable, 50)
                        .unwrap_or(0),
                    p90_billable_seconds: verdict_core::percentile(&tally.billable, 90)
                        .unwrap_or(0),
                    status_distribution: tally.statuses,
                };
                (*kind, health)
            })
            .collect()
    }
}

/// Verification's sessions per kind, counted in its one pass.
#[derive(Debug, Default)]
pub struct VerifyByKind {
    /// `(sessions, sessions with a finding, findings)` per kind, in
    /// `Kind::ALL` order.
    counts: [(i64, i64, i64); 3],
}

impl VerifyByKind {
    pub fn add(&mut self, kind: Kind, findings: usize) {
        let index = Kind::ALL.iter().position(|known| *known == kind).unwrap_or(0);
        let entry = &mut self.counts[index];
        entry.0 += 1;
        entry.1 += i64::from(findings > 0);
        entry.2 += findings as i64;
    }

    /// `{kind: {sessions, with_findings, findings}}`.
    pub fn detail(&self) -> serde_json::Value {
        let mut detail = serde_json::Map::new();
        for (kind, (sessions, with_findings, findings)) in Kind::ALL.iter().zip(self.counts) {
            detail.insert(
                kind.as_str().to_owned(),
                serde_json::json!({
                    "sessions": sessions, "with_findings": with_findings, "findings": findings
                }),
            );
        }
        serde_json::Value::Object(detail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(ended: i64, completed: i64, no_show: i64, too_short: i64) -> Counts {
        Counts { ended, completed, no_show, too_short, billable_seconds: 0 }
    }

    #[test]
    fn a_scope_below_min_sessions_is_not_judged() {
        let scopes = [(Scope::Provider("p".into()), counts(19, 0, 19, 0))];
        assert!(judge(&scopes, &Thresholds::default()).is_empty());
        let scopes = [(Scope::Provider("p".into()), counts(20, 8, 12, 0))];
        let alerts = judge(&scopes, &Thresholds::default());
        let rules: Vec<_> = alerts.iter().map(|alert| alert.rule).collect();
        assert_eq!(rules, [Rule::NoShowRateAbove, Rule::CompletionRateBelow]);
    }

    #[test]
    fn exactly_at_a_threshold_raises_nothing() {
        let scopes = [(Scope::Kind(Kind::Video), counts(20, 10, 6, 4))];
        assert!(judge(&scopes, &Thresholds::default()).is_empty(), "0.5 and 0.3 are fine");
        let scopes = [(Scope::Kind(Kind::Video), counts(20, 9, 7, 4))];
        let mut keys: Vec<String> =
            judge(&scopes, &Thresholds::default()).iter().map(ThresholdAlert::key).collect();
        keys.sort();
        assert_eq!(keys, ["completion_rate_below/kind/video", "no_show_rate_above/kind/video"]);
    }
}
