//! Proving the data right (docs/verification.md): the verification report, the health
//! score, hourly scores and the review queue. Every check of a session is
//! [`SessionAudit::findings`] — the decision function re-run with each
//! session's stored policy — over sessions streamed in pages, so memory
//! stays flat whatever the volume. The report's ledger section is the one
//! exception: a sum of every posting's lines is not a decision, and the
//! whole ledger is checked in one pass (`Store::ledger_imbalance`).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use verdict_core::{
    Finding, Reason, SessionAudit, UnixMillis, health_label, health_score, percentile,
};

use crate::consistency::{self, METADATA_CONSISTENCY};
use crate::{AuditCursor, AuditScope, Session, Settings, Store, StoreError};

/// Sessions read per page.
pub const PAGE: i64 = 2_000;
/// Offending session ids shown per section.
pub const SAMPLE_MAX: usize = 10;

#[derive(Clone, Debug, PartialEq)]
pub struct Section {
    pub name: &'static str,
    pub ok: bool,
    pub count: i64,
    /// `critical`, `warning` or `info`.
    pub severity: &'static str,
    pub sample: Vec<String>,
    /// Extra figures for informational sections.
    pub detail: Option<serde_json::Value>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    pub ok: bool,
    pub sections: Vec<Section>,
    /// Sessions examined.
    pub sessions: u64,
}

/// The per-session sections, in report order, with their severity.
const SESSION_SECTIONS: [(&str, &str); 8] = [
    ("misclassified_completed", "critical"),
    ("misclassified_cancelled", "critical"),
    ("missing_join_events", "warning"),
    ("timestamp_integrity", "critical"),
    ("payout_accuracy", "critical"),
    ("ledger_balance", "critical"),
    ("request_consistency", "warning"),
    ("stuck_sessions", "warning"),
];

/// The section of payouts paid after their reversal and not reversed at
/// Stripe (money out that the books say came back).
pub const PAID_AFTER_REVERSAL: &str = "payouts_paid_after_reversal";

/// Pending deliveries this long past due are overdue.
pub const OVERDUE_AFTER_SECONDS: i64 = 900;

fn findings(
    settings: &Settings,
    session: &Session,
    audit: &SessionAudit,
    now: UnixMillis,
) -> Vec<Finding> {
    audit.findings(settings.policies.for_kind(session.kind), now)
}

/// Pages read at once, ahead of the one being visited (measured on 1M
/// sessions, SQLite, 2 cores: 3 → 6.4 s, 6 → 5.0 s).
const READ_AHEAD: usize = 6;

/// Streams every session of `scope` through `visit`, in scope order;
/// `progress` gets the running count after each page.
pub async fn scan(
    store: &Arc<dyn Store>,
    scope: AuditScope,
    mut visit: impl FnMut(&Session, &SessionAudit),
    progress: impl FnMut(u64),
) -> Result<u64, StoreError> {
    scan_pages(
        store,
        scope,
        move |store, after, through| async move {
            store.audits(scope, after.as_ref(), through.as_ref(), PAGE).await
        },
        |page: &Vec<(Session, SessionAudit)>| {
            for (session, audit) in page {
                visit(session, audit);
            }
            page.len()
        },
        progress,
    )
    .await
}

/// Reads every page of `scope` with `read` (given the page's bounds) and
/// hands each to `visit`, in scope order; `visit` answers how many
/// sessions the page held, and `progress` gets the running count.
///
/// Pages are bounded by ends read from the index ahead of them, so several
/// are read at once, each in a task of its own (queries on readers of their
/// own, decoding on the runtime's threads), while this one visits them in
/// order. Memory stays at `READ_AHEAD` pages whatever the volume.
pub(crate) async fn scan_pages<P, F>(
    store: &Arc<dyn Store>,
    scope: AuditScope,
    read: impl Fn(Arc<dyn Store>, Option<AuditCursor>, Option<AuditCursor>) -> F,
    mut visit: impl FnMut(&P) -> usize,
    mut progress: impl FnMut(u64),
) -> Result<u64, StoreError>
where
    P: Send + 'static,
    F: Future<Output = Result<P, StoreError>> + Send + 'static,
{
    let mut seen = 0u64;
    let mut start: Option<AuditCursor> = None;
    let mut exhausted = false;
    let mut reading: VecDeque<tokio::task::JoinHandle<Result<P, StoreError>>> = VecDeque::new();
    loop {
        while !exhausted && reading.len() < READ_AHEAD {
            let end = store.audit_page_end(scope, start.as_ref(), PAGE).await?;
            reading.push_back(tokio::spawn(read(Arc::clone(store), start.clone(), end.clone())));
            match end {
                Some(end) => start = Some(end),
                None => exhausted = true,
            }
        }
        let Some(next) = reading.pop_front() else { return Ok(seen) };
        let page = next
            .await
            .map_err(|error| StoreError::Internal(format!("reading a page: {error}")))??;
        seen += visit(&page) as u64;
        progress(seen);
    }
}

/// The verification report.
pub async fn verify(
    store: &Arc<dyn Store>,
    settings: &Settings,
    now: UnixMillis,
    progress: impl FnMut(u64),
) -> Result<Report, StoreError> {
    let mut counts: BTreeMap<&'static str, (i64, Vec<String>)> = BTreeMap::new();
    let mut by_kind = crate::insight::VerifyByKind::default();
    let mut review = consistency::ReviewTally::default();
    let sessions = consistency::scan_with_facts(
        store,
        false,
        |session, audit, facts| {
            let found = findings(settings, session, audit, now);
            review.add(session.kind, &facts.reasons(&session.id, &found));
            let receipts = facts.receipts_faulty(&session.id).then_some(METADATA_CONSISTENCY);
            by_kind.add(session.kind, found.len() + usize::from(receipts.is_some()));
            for kind in found.iter().map(Finding::kind).chain(receipts) {
                let entry = counts.entry(kind).or_default();
                entry.0 += 1;
                if entry.1.len() < SAMPLE_MAX {
                    entry.1.push(session.id.clone());
                }
            }
        },
        progress,
    );
    // `All` pages carry no ledger sums: the ledger is checked in one pass,
    // beside the scan.
    let (sessions, ledger) = tokio::try_join!(sessions, store.ledger_imbalance(SAMPLE_MAX))?;
    if ledger.0 > 0 {
        // Which sessions the unbalanced postings are is known per page
        // only: the review counts take a pass of their own (and store it).
        consistency::count_review(store, settings, now).await?;
    } else {
        store.save_review_counts(&review.counts(), now).await?;
    }
    counts.insert(Finding::LedgerUnbalanced.kind(), ledger);
    let paid_after_reversal = store.paid_after_reversal(SAMPLE_MAX).await?;

    let mut sections = Vec::new();
    let expected = store.expected_schema_version();
    let applied = store.schema_version().await?;
    sections.push(Section {
        name: "schema",
        ok: applied == expected,
        count: i64::from(applied != expected),
        severity: "critical",
        sample: Vec::new(),
        detail: Some(serde_json::json!({"applied": applied, "expected": expected, "backend": store.backend()})),
    });
    for (name, severity) in SESSION_SECTIONS {
        let (count, sample) = counts.remove(name).unwrap_or_default();
        sections.push(Section { name, ok: count == 0, count, severity, sample, detail: None });
    }
    let (count, sample) = paid_after_reversal;
    sections.push(Section {
        name: PAID_AFTER_REVERSAL,
        ok: count == 0,
        count,
        severity: "critical",
        sample,
        detail: None,
    });
    // Receipts of the sessions verdict ended itself (imported history has
    // none of its own: the sections above judge it).
    let (count, sample) = counts.remove(METADATA_CONSISTENCY).unwrap_or_default();
    sections.push(Section {
        name: METADATA_CONSISTENCY,
        ok: count == 0,
        count,
        severity: "warning",
        sample,
        detail: None,
    });
    let outbox = store.outbox_health(now.plus_seconds(-OVERDUE_AFTER_SECONDS)).await?;
    sections.push(Section {
        name: "outbox_health",
        ok: outbox.dead == 0 && outbox.overdue == 0,
        count: outbox.dead + outbox.overdue,
        severity: "warning",
        sample: outbox.sample,
        detail: Some(serde_json::json!({"dead": outbox.dead, "overdue": outbox.overdue})),
    });
    let recent = store.ended_by_status(now.plus_seconds(-24 * 3600)).await?;
    sections.push(Section {
        name: "recent_activity",
        ok: true,
        count: recent.values().sum(),
        severity: "info",
        sample: Vec::new(),
        detail: Some(serde_json::json!(recent)),
    });
    let health = health(store, settings, now, 24).await?;
    sections.push(Section {
        name: "health_score",
        ok: true,
        count: health.ended,
        severity: "info",
        sample: Vec::new(),
        detail: Some(serde_json::json!({"score": health.score, "label": health.label})),
    });
    sections.push(Section {
        name: crate::insight::VERIFY_BY_KIND,
        ok: true,
        count: sessions as i64,
        severity: "info",
        sample: Vec::new(),
        detail: Some(by_kind.detail()),
    });
    Ok(Report { ok: sections.iter().all(|section| section.ok), sections, sessions })
}

#[derive(Clone, Debug, PartialEq)]
pub struct Alert {
    pub kind: &'static str,
    pub severity: &'static str,
    pub count: i64,
    pub session_ids: Vec<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Health {
    pub window_hours: i64,
    pub score: f64,
    pub label: &'static str,
    pub ended: i64,
    pub completion_rate: f64,
    pub no_show_rate: f64,
    pub too_short_rate: f64,
    pub avg_billable_seconds: f64,
    pub p50_billable_seconds: i64,
    pub p90_billable_seconds: i64,
    pub status_distribution: BTreeMap<String, i64>,
    pub alerts: Vec<Alert>,
    pub underbilled_cents: i64,
    pub overbilled_cents: i64,
    /// `(underbilled, overbilled)` cents per currency: the two sums above
    /// add cents of every currency, so they mean something only alone.
    pub revenue_by_currency: BTreeMap<String, (i64, i64)>,
    /// The window's metrics per kind (every kind).
    pub by_kind: BTreeMap<verdict_core::Kind, crate::insight::KindHealth>,
    /// Threshold alerts of the last 24 h, per kind and per provider.
    pub threshold_alerts: Vec<crate::insight::ThresholdAlert>,
}

#[derive(Default)]
struct Tally {
    ended: i64,
    clean: i64,
    completed: i64,
    no_show: i64,
    too_short: i64,
    billable: Vec<i64>,
    statuses: BTreeMap<String, i64>,
    alerts: BTreeMap<&'static str, (i64, Vec<String>)>,
    underbilled: i64,
    overbilled: i64,
    by_currency: BTreeMap<String, (i64, i64)>,
}

impl Tally {
    fn add(&mut self, session: &Session, audit: &SessionAudit, findings: &[Finding]) {
        self.ended += 1;
        if findings.is_empty() {
            self.clean += 1;
        }
        *self.statuses.entry(session.status.as_str().to_owned()).or_default() += 1;
        match session.reason() {
            Some(Reason::Completed) => self.completed += 1,
            Some(Reason::TooShort) => self.too_short += 1,
            Some(Reason::NoShowBoth | Reason::NoShowCustomer | Reason::NoShowProvider) => {
                self.no_show += 1
            }
            _ => {}
        }
        self.billable.push(session.billable_seconds().unwrap_or(0));
        for finding in findings {
            let kind = match finding {
                Finding::MisclassifiedCompleted { .. } => "misclassified_completed",
                Finding::MisclassifiedCancelled { .. } => "misclassified_cancelled",
                Finding::PayoutMismatch => "payout_mismatch",
                _ => continue,
            };
            let entry = self.alerts.entry(kind).or_default();
            entry.0 += 1;
            if entry.1.len() < SAMPLE_MAX {
                entry.1.push(session.id.clone());
            }
            let (under, over) = finding.revenue_impact(audit);
            self.underbilled += under;
            self.overbilled += over;
            if under != 0 || over != 0 {
                let money = self.by_currency.entry(session.price.currency.clone()).or_default();
                money.0 += under;
                money.1 += over;
            }
        }
    }
}

/// The health of the sessions ended in the last `window_hours` (docs/verification.md).
pub async fn health(
    store: &Arc<dyn Store>,
    settings: &Settings,
    now: UnixMillis,
    window_hours: i64,
) -> Result<Health, StoreError> {
    Ok(health_with_hourly(store, settings, now, window_hours, 0).await?.0)
}

/// [`health`] as the gauges use it (the server's refresh each minute):
/// without the threshold alerts and the receipts alert, which they do not
/// show and which would cost two more reads of the window each time.
pub async fn health_for_gauges(
    store: &Arc<dyn Store>,
    settings: &Settings,
    now: UnixMillis,
    window_hours: i64,
) -> Result<Health, StoreError> {
    Ok(health_reading(store, settings, now, window_hours, 0, Reading::Gauges).await?.0)
}

/// [`health`] and [`hourly`] (for the last `hours` hours; 0: none) from one
/// scan of the sessions ended in the longer of the two windows.
pub async fn health_with_hourly(
    store: &Arc<dyn Store>,
    settings: &Settings,
    now: UnixMillis,
    window_hours: i64,
    hours: i64,
) -> Result<(Health, Vec<HourlyScore>), StoreError> {
    health_reading(store, settings, now, window_hours, hours, Reading::Report).await
}

/// What a health computation is for: the whole report, or the gauges.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reading {
    Report,
    Gauges,
}

async fn health_reading(
    store: &Arc<dyn Store>,
    settings: &Settings,
    now: UnixMillis,
    window_hours: i64,
    hours: i64,
    reading: Reading,
) -> Result<(Health, Vec<HourlyScore>), StoreError> {
    let since = now.plus_seconds(-window_hours * 3600);
    let mut tally = Tally::default();
    let mut kinds = crate::insight::ByKind::default();
    let mut hourly = Hourly::new(now, hours);
    scan(
        store,
        AuditScope::EndedSince(since.min(hourly.since())),
        |session, audit| {
            let Some(ended) = session.ended_at().filter(|ended| *ended <= now) else { return };
            let found = findings(settings, session, audit, now);
            if ended >= since {
                tally.add(session, audit, &found);
                kinds.add(session, found.is_empty());
            }
            hourly.add(ended, found.is_empty());
        },
        |_| {},
    )
    .await?;
    let mut stuck = (0i64, Vec::new());
    scan(
        store,
        AuditScope::Open,
        |session, audit| {
            if findings(settings, session, audit, now).contains(&Finding::Stuck) {
                stuck.0 += 1;
                if stuck.1.len() < SAMPLE_MAX {
                    stuck.1.push(session.id.clone());
                }
            }
        },
        |_| {},
    )
    .await?;
    let report_reads = async {
        if reading == Reading::Gauges {
            return Ok((Vec::new(), (0, Vec::new())));
        }
        tokio::try_join!(
            crate::insight::current_alerts(store.as_ref(), settings, now),
            consistency::receipt_faults_since(store.as_ref(), since),
        )
    };
    let (outbox, (threshold_alerts, (receipts, receipts_sample))) = tokio::try_join!(
        store.outbox_health(now.plus_seconds(-OVERDUE_AFTER_SECONDS)),
        report_reads,
    )?;

    let score =
        health_score(tally.ended as u64, tally.clean as u64, stuck.0 as u64, outbox.dead as u64);
    let mut alerts: Vec<Alert> = [
        ("misclassified_completed", "critical"),
        ("misclassified_cancelled", "critical"),
        ("payout_mismatch", "critical"),
    ]
    .into_iter()
    .filter_map(|(kind, severity)| {
        tally.alerts.remove(kind).map(|(count, session_ids)| Alert {
            kind,
            severity,
            count,
            session_ids,
        })
    })
    .collect();
    if stuck.0 > 0 {
        alerts.push(Alert {
            kind: "stuck_sessions",
            severity: "warning",
            count: stuck.0,
            session_ids: stuck.1,
        });
    }
    if receipts > 0 {
        alerts.push(Alert {
            kind: METADATA_CONSISTENCY,
            severity: "warning",
            count: receipts,
            session_ids: receipts_sample,
        });
    }
    // Stripe refusing our credentials is no payout's fault: its deliveries
    // wait (retried with backoff) until the configuration is mended.
    let (faults, sample) = store.configuration_faults(SAMPLE_MAX).await?;
    if faults > 0 {
        alerts.push(Alert {
            kind: "stripe_configuration",
            severity: "critical",
            count: faults,
            session_ids: sample,
        });
    }
    if outbox.dead > 0 {
        alerts.push(Alert {
            kind: "dead_deliveries",
            severity: "warning",
            count: outbox.dead,
            session_ids: outbox.sample,
        });
    }
    tally.billable.sort_unstable();
    let total: i64 = tally.billable.iter().sum();
    let health = Health {
        window_hours,
        score: (score * 100.0).round() / 100.0,
        label: health_label(tally.ended as u64, score),
        ended: tally.ended,
        completion_rate: crate::insight::rate(tally.completed, tally.ended),
        no_show_rate: crate::insight::rate(tally.no_show, tally.ended),
        too_short_rate: crate::insight::rate(tally.too_short, tally.ended),
        avg_billable_seconds: if tally.ended == 0 {
            0.0
        } else {
            total as f64 / tally.ended as f64
        },
        p50_billable_seconds: percentile(&tally.billable, 50).unwrap_or(0),
        p90_billable_seconds: percentile(&tally.billable, 90).unwrap_or(0),
        status_distribution: tally.statuses,
        alerts,
        underbilled_cents: tally.underbilled,
        overbilled_cents: tally.overbilled,
        revenue_by_currency: tally.by_currency,
        by_kind: kinds.finish(),
        threshold_alerts,
    };
    Ok((health, hourly.scores()))
}

#[derive(Clone, Debug, PartialEq)]
pub struct HourlyScore {
    pub hour_start: UnixMillis,
    pub ended: i64,
    pub score: f64,
    pub label: &'static str,
}

/// One score per hour for the last `hours` hours (oldest first), each over
/// the sessions ended in that hour: `100 × clean / ended`.
pub async fn hourly(
    store: &Arc<dyn Store>,
    settings: &Settings,
    now: UnixMillis,
    hours: i64,
) -> Result<Vec<HourlyScore>, StoreError> {
    let mut hourly = Hourly::new(now, hours);
    scan(
        store,
        AuditScope::EndedSince(hourly.since()),
        |session, audit| {
            let Some(ended) = session.ended_at().filter(|ended| *ended <= now) else { return };
            hourly.add(ended, findings(settings, session, audit, now).is_empty());
        },
        |_| {},
    )
    .await?;
    Ok(hourly.scores())
}

/// Ended and clean sessions per hour, the last `hours` hours before `now`.
struct Hourly {
    now: UnixMillis,
    hours: i64,
    /// `(ended, clean)`, oldest hour first.
    buckets: Vec<(i64, i64)>,
}

impl Hourly {
    fn new(now: UnixMillis, hours: i64) -> Hourly {
        Hourly { now, hours, buckets: vec![(0, 0); hours.max(0) as usize] }
    }

    fn since(&self) -> UnixMillis {
        self.now.plus_seconds(-self.hours * 3600)
    }

    fn add(&mut self, ended: UnixMillis, clean: bool) {
        let age_hours = (self.now.0 - ended.0) / 3_600_000;
        let slot = (self.hours - 1 - age_hours).try_into().ok();
        if let Some(bucket) = slot.and_then(|index: usize| self.buckets.get_mut(index)) {
            bucket.0 += 1;
            bucket.1 += i64::from(clean);
        }
    }

    fn scores(self) -> Vec<HourlyScore> {
        let (now, hours) = (self.now, self.hours);
        self.buckets
            .into_iter()
            .enumerate()
            .map(|(index, (ended, clean))| {
                let score = health_score(ended as u64, clean as u64, 0, 0);
                HourlyScore {
                    hour_start: UnixMillis(now.0 - (hours - index as i64) * 3_600_000),
                    ended,
                    score: (score * 100.0).round() / 100.0,
                    label: health_label(ended as u64, score),
                }
            })
            .collect()
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ReviewItem {
    pub session: Session,
    pub reasons: Vec<&'static str>,
}

/// The review reason of a session that received platform presence from
/// before its end after its finalization window.
pub const LATE_PRESENCE: &str = "late_presence_after_finalization";

/// The most sessions one review page reads before answering.
pub const REVIEW_SCAN_MAX: i64 = 20_000;

/// Sessions needing review after `after`, at most `limit`, and the cursor
/// to continue from (`None` at the end): [`consistency::review`] unfiltered.
pub async fn review(
    store: &dyn Store,
    settings: &Settings,
    now: UnixMillis,
    after: Option<&str>,
    limit: usize,
) -> Result<(Vec<ReviewItem>, Option<String>), StoreError> {
    let filter = consistency::ReviewFilter::default();
    consistency::review(store, settings, now, after, limit, filter).await
}

/// What a repair does besides re-deriving statuses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RepairOptions {
    /// Apply (else plan only).
    pub apply: bool,
    /// Also apply corrections whose only evidence is missing join events
    /// (`needs_review`); without it they are listed, never applied.
    pub include_missing_evidence: bool,
}

/// Plans (dry run) or applies corrections (see [`repair_with`]); sessions
/// whose only evidence is missing join events are listed, not applied.
pub async fn repair(
    store: &Arc<dyn Store>,
    settings: &Settings,
    now: UnixMillis,
    since: UnixMillis,
    until: UnixMillis,
    apply: bool,
) -> Result<Vec<crate::Correction>, StoreError> {
    let options = RepairOptions { apply, include_missing_evidence: false };
    repair_with(store, settings, now, since, until, options).await
}

/// Plans (dry run) or applies corrections of every terminal session ended
/// in `[since, until)` whose recorded outcome differs from the decision,
/// or whose status is right but which the old system paid without a
/// completed session (its payout is reversed), and ends imported sessions
/// still open (docs/import.md). A correction resting only on missing join events
/// (the recorded status needs joins the history lacks) is `needs_review`:
/// applied only with `include_missing_evidence`, listed otherwise.
/// Applying re-checks each session under its lock, so running it twice
/// changes nothing the second time.
pub async fn repair_with(
    store: &Arc<dyn Store>,
    settings: &Settings,
    now: UnixMillis,
    since: UnixMillis,
    until: UnixMillis,
    options: RepairOptions,
) -> Result<Vec<crate::Correction>, StoreError> {
    let apply = options.apply;
    let mut planned = Vec::new();
    scan(
        store,
        AuditScope::EndedBetween(since, until),
        |session, audit| {
            let configured = settings.policies.for_kind(session.kind);
            let (Some(expected), Some(reason)) = (audit.rederive(configured), session.reason())
            else {
                return;
            };
            let unearned = session.status != verdict_core::Status::Completed
                && !audit.payouts.is_empty()
                && audit.finalizing_until.is_none();
            if (expected.status, expected.reason) != (session.status, reason) || unearned {
                let charge = verdict_core::charge_for(
                    &session.price,
                    expected.reason,
                    expected.billable_seconds,
                );
                let needs_review =
                    findings(settings, session, audit, now).contains(&Finding::MissingJoins);
                planned.push(crate::Correction {
                    session_id: session.id.clone(),
                    from: (session.status, Some(reason)),
                    to: (expected.status, expected.reason),
                    money_effect: charge.0 - session.charged_cents.map_or(0, |cents| cents.0),
                    needs_review,
                });
            }
        },
        |_| {},
    )
    .await?;
    let mut applied = Vec::with_capacity(planned.len());
    for mut plan in planned {
        // `needs_review` on what is returned: held back (listed, not applied).
        plan.needs_review &= !options.include_missing_evidence;
        if !apply || plan.needs_review {
            applied.push(plan);
        } else if let Some(correction) =
            store.correct_session(&plan.session_id, settings, now).await?
        {
            applied.push(correction);
        }
    }
    // Imported sessions still open are history, not traffic: the repair
    // ends them (the sweeper never does), each with its money effect.
    let mut after: Option<String> = None;
    loop {
        let ids = store.open_imported(after.as_deref(), PAGE).await?;
        for id in &ids {
            if let Some(correction) = store.end_imported(id, settings, now, apply).await? {
                applied.push(correction);
            }
        }
        match ids.last() {
            Some(last) if ids.len() as i64 == PAGE => after = Some(last.clone()),
            _ => break,
        }
    }
    Ok(applied)
}
