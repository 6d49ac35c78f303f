//! What a full pass adds to the per-session checks (issue 27): the
//! `metadata_consistency` section, over the receipts of the sessions
//! verdict ended itself, and the review queue's reasons, filters and
//! total.
//!
//! Receipts are checked set-wise, one statement per page of the scan
//! (`Store::receipt_faults`), never one per session. Imported history has
//! no receipts of its own and is judged by the other sections. The review
//! queue's total is the count of the most recent full pass (`verify`, or
//! the server's background pass), kept in the database with its instant:
//! a request reads it, never counts.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use verdict_core::{Finding, Kind, SessionAudit, UnixMillis};

use crate::monitor::{LATE_PRESENCE, PAGE, SAMPLE_MAX};
use crate::{AuditCursor, AuditScope, Session, Settings, Store, StoreError};

/// The section, and review reason, of a session whose receipts are not
/// whole.
pub const METADATA_CONSISTENCY: &str = "metadata_consistency";

/// Every reason a session can be in the review queue for: the sections
/// of the per-session checks, then the receipts, then late presence.
pub const REVIEW_REASONS: [&str; 10] = [
    "misclassified_completed",
    "misclassified_cancelled",
    "missing_join_events",
    "timestamp_integrity",
    "payout_accuracy",
    "ledger_balance",
    "request_consistency",
    "stuck_sessions",
    METADATA_CONSISTENCY,
    LATE_PRESENCE,
];

/// Sessions judged per receipts statement.
pub const FAULT_BATCH: i64 = 5_000;

/// Which sessions a [`Store::receipt_faults`] call judges: verdict-ended
/// ones with an id in `(after, through]` (unbounded where `None`), ended at
/// or after `ended_since`.
#[derive(Clone, Copy, Debug, Default)]
pub struct FaultRange<'a> {
    pub after: Option<&'a str>,
    pub through: Option<&'a str>,
    pub ended_since: Option<UnixMillis>,
    /// Also answer the range's sessions with late platform presence.
    pub with_late: bool,
}

/// What one [`Store::receipt_faults`] call found, in id order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FaultBatch {
    /// Sessions whose receipts are not whole.
    pub receipts: Vec<String>,
    /// Sessions with late platform presence (when asked).
    pub late: Vec<String>,
    /// The last session judged, when the batch was full: go on after it.
    pub last: Option<String>,
}

/// Sessions needing review of one kind for one reason (`*`: any).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReviewCount {
    pub kind: String,
    pub reason: String,
    pub sessions: i64,
}

/// What a page of the scan knows beside its sessions' audits.
#[derive(Clone, Debug, Default)]
pub struct PageFacts {
    receipts: HashSet<String>,
    late: HashSet<String>,
}

impl PageFacts {
    /// Are the receipts of this session (one verdict ended) not whole?
    pub fn receipts_faulty(&self, id: &str) -> bool {
        self.receipts.contains(id)
    }

    /// The review reasons of a session of this page: its findings, its
    /// receipts, late presence.
    pub fn reasons(&self, id: &str, findings: &[Finding]) -> Vec<&'static str> {
        let mut reasons: Vec<&'static str> = findings.iter().map(Finding::kind).collect();
        if self.receipts.contains(id) {
            reasons.push(METADATA_CONSISTENCY);
        }
        if self.late.contains(id) {
            // The platform saw presence before the end, too late to change
            // a final outcome: a person should look.
            reasons.push(LATE_PRESENCE);
        }
        reasons
    }
}

/// The facts of the sessions with an id in `(after, through]`.
pub async fn page_facts(
    store: &dyn Store,
    after: Option<&str>,
    through: Option<&str>,
) -> Result<PageFacts, StoreError> {
    let mut facts = PageFacts::default();
    let range = FaultRange { after, through, ended_since: None, with_late: true };
    each_fault_batch(store, range, |batch| {
        facts.receipts.extend(batch.receipts);
        facts.late.extend(batch.late);
    })
    .await?;
    Ok(facts)
}

/// Sessions verdict ended since `since` whose receipts are not whole: how
/// many, and the first [`SAMPLE_MAX`] in id order (the health pass).
pub async fn receipt_faults_since(
    store: &dyn Store,
    since: UnixMillis,
) -> Result<(i64, Vec<String>), StoreError> {
    let (mut count, mut sample) = (0i64, Vec::new());
    let range = FaultRange { ended_since: Some(since), ..FaultRange::default() };
    each_fault_batch(store, range, |batch| {
        count += batch.receipts.len() as i64;
        sample.extend(batch.receipts.into_iter().take(SAMPLE_MAX - sample.len()));
    })
    .await?;
    Ok((count, sample))
}

/// Every batch of `range` ([`FAULT_BATCH`] sessions a statement), each
/// going on after the last one's last session; late presence is asked
/// once, with the first.
async fn each_fault_batch(
    store: &dyn Store,
    range: FaultRange<'_>,
    mut on_batch: impl FnMut(FaultBatch),
) -> Result<(), StoreError> {
    let mut batch = store.receipt_faults(range, FAULT_BATCH).await?;
    loop {
        let last = batch.last.take();
        on_batch(batch);
        let Some(last) = last else { return Ok(()) };
        let next = FaultRange { after: Some(&last), with_late: false, ..range };
        batch = store.receipt_faults(next, FAULT_BATCH).await?;
    }
}

/// `monitor::scan` of every session, each page with its [`PageFacts`]
/// (read beside it, in its task). With `with_ledger`, each page also
/// carries its sessions' unbalanced posting sums.
pub async fn scan_with_facts(
    store: &Arc<dyn Store>,
    with_ledger: bool,
    mut visit: impl FnMut(&Session, &SessionAudit, &PageFacts),
    progress: impl FnMut(u64),
) -> Result<u64, StoreError> {
    crate::monitor::scan_pages(
        store,
        AuditScope::All,
        move |store, after, through| async move {
            let (mut page, facts) = tokio::try_join!(
                store.audits(AuditScope::All, after.as_ref(), through.as_ref(), PAGE),
                page_facts(
                    store.as_ref(),
                    after.as_ref().map(|cursor| cursor.id.as_str()),
                    through.as_ref().map(|cursor| cursor.id.as_str()),
                ),
            )?;
            if with_ledger {
                let ids: Vec<String> = page.iter().map(|(session, _)| session.id.clone()).collect();
                let mut sums = store.unbalanced_postings(&ids).await?;
                for (session, audit) in &mut page {
                    audit.posting_sums = sums.remove(&session.id).unwrap_or_default();
                }
            }
            Ok((page, facts))
        },
        |(page, facts): &(Vec<(Session, SessionAudit)>, PageFacts)| {
            for (session, audit) in page {
                visit(session, audit, facts);
            }
            page.len()
        },
        progress,
    )
    .await
}

/// Sessions needing review, counted per kind and reason as a full pass
/// visits them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReviewTally {
    counts: BTreeMap<(Kind, &'static str), i64>,
}

impl ReviewTally {
    pub fn add(&mut self, kind: Kind, reasons: &[&'static str]) {
        if reasons.is_empty() {
            return;
        }
        *self.counts.entry((kind, "*")).or_default() += 1;
        for reason in reasons {
            *self.counts.entry((kind, reason)).or_default() += 1;
        }
    }

    pub fn counts(&self) -> Vec<ReviewCount> {
        self.counts
            .iter()
            .map(|((kind, reason), sessions)| ReviewCount {
                kind: kind.as_str().to_owned(),
                reason: (*reason).to_owned(),
                sessions: *sessions,
            })
            .collect()
    }
}

/// A full pass for the review queue's counts alone (the background pass;
/// and `verify`'s recount when the ledger has an unbalanced posting, whose
/// sessions its own pass cannot tell apart). Stores them as of `now`.
pub async fn count_review(
    store: &Arc<dyn Store>,
    settings: &Settings,
    now: UnixMillis,
) -> Result<ReviewTally, StoreError> {
    let (unbalanced, _) = store.ledger_imbalance(1).await?;
    let mut tally = ReviewTally::default();
    scan_with_facts(
        store,
        unbalanced > 0,
        |session, audit, facts| {
            let findings = audit.findings(settings.policies.for_kind(session.kind), now);
            tally.add(session.kind, &facts.reasons(&session.id, &findings));
        },
        |_| {},
    )
    .await?;
    store.save_review_counts(&tally.counts(), now).await?;
    Ok(tally)
}

/// Which review items a page shows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReviewFilter {
    /// One of [`REVIEW_REASONS`].
    pub reason: Option<&'static str>,
    pub kind: Option<Kind>,
}

impl ReviewFilter {
    /// A known reason, by name.
    pub fn reason(name: &str) -> Option<&'static str> {
        REVIEW_REASONS.into_iter().find(|known| *known == name)
    }

    fn admits(&self, session: &Session, reasons: &[&'static str]) -> bool {
        !reasons.is_empty()
            && self.kind.is_none_or(|kind| kind == session.kind)
            && self.reason.is_none_or(|reason| reasons.contains(&reason))
    }
}

/// The review queue's size under `filter`, as the most recent full pass
/// counted it, and when. `None` before any full pass.
pub async fn review_total(
    store: &dyn Store,
    filter: ReviewFilter,
) -> Result<Option<(i64, UnixMillis)>, StoreError> {
    let Some((as_of, counts)) = store.review_counts().await? else { return Ok(None) };
    let reason = filter.reason.unwrap_or("*");
    let total = counts
        .iter()
        .filter(|count| count.reason == reason)
        .filter(|count| filter.kind.is_none_or(|kind| kind.as_str() == count.kind))
        .map(|count| count.sessions)
        .sum();
    Ok(Some((total, as_of)))
}

/// Sessions read per review page query.
const REVIEW_READ: i64 = 500;

/// Sessions needing review after `after` that `filter` admits, at most
/// `limit`, and the cursor to continue from (`None` at the end). One call
/// reads at most `monitor::REVIEW_SCAN_MAX` sessions: a sparse filter may
/// answer fewer items and a cursor.
pub async fn review(
    store: &dyn Store,
    settings: &Settings,
    now: UnixMillis,
    after: Option<&str>,
    limit: usize,
    filter: ReviewFilter,
) -> Result<(Vec<crate::monitor::ReviewItem>, Option<String>), StoreError> {
    let mut items = Vec::new();
    let mut cursor = after.map(|id| AuditCursor { id: id.to_owned(), ended_at: None });
    let mut scanned = 0i64;
    loop {
        let page = store.audits(AuditScope::All, cursor.as_ref(), None, REVIEW_READ).await?;
        let exhausted = (page.len() as i64) < REVIEW_READ;
        let ids: Vec<String> = page.iter().map(|(session, _)| session.id.clone()).collect();
        let through = ids.last().map(String::as_str);
        let after_id = cursor.as_ref().map(|cursor| cursor.id.as_str());
        let (facts, mut unbalanced) = if through.is_some() {
            tokio::try_join!(page_facts(store, after_id, through), store.unbalanced_postings(&ids))?
        } else {
            (PageFacts::default(), HashMap::new())
        };
        for (session, mut audit) in page {
            // `All` pages carry no ledger sums.
            audit.posting_sums = unbalanced.remove(&session.id).unwrap_or_default();
            scanned += 1;
            cursor = Some(AuditCursor::after(&session));
            let findings = audit.findings(settings.policies.for_kind(session.kind), now);
            let reasons = facts.reasons(&session.id, &findings);
            if filter.admits(&session, &reasons) {
                items.push(crate::monitor::ReviewItem { reasons, session });
                if items.len() == limit {
                    return Ok((items, cursor.map(|cursor| cursor.id)));
                }
            }
        }
        if exhausted {
            return Ok((items, None));
        }
        if scanned >= crate::monitor::REVIEW_SCAN_MAX {
            return Ok((items, cursor.map(|cursor| cursor.id)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_counts_once_per_kind_and_once_per_reason() {
        let mut tally = ReviewTally::default();
        tally.add(Kind::Video, &["payout_accuracy", METADATA_CONSISTENCY]);
        tally.add(Kind::Video, &[METADATA_CONSISTENCY]);
        tally.add(Kind::Chat, &[]);
        tally.add(Kind::Chat, &["stuck_sessions"]);
        let counts: BTreeMap<(String, String), i64> = tally
            .counts()
            .into_iter()
            .map(|count| ((count.kind, count.reason), count.sessions))
            .collect();
        let get = |kind: &str, reason: &str| counts.get(&(kind.into(), reason.into())).copied();
        assert_eq!(get("video", "*"), Some(2));
        assert_eq!(get("video", METADATA_CONSISTENCY), Some(2));
        assert_eq!(get("video", "payout_accuracy"), Some(1));
        assert_eq!(get("chat", "*"), Some(1));
        assert_eq!(get("chat", "stuck_sessions"), Some(1));
        assert_eq!(counts.len(), 5, "a clean session counts nowhere");
    }
}
