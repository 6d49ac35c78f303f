//! Money at the store's boundary, on both databases: payouts that a repair
//! reverses while their delivery runs, reversals judged on the payout as
//! it is when they are delivered, and verification of what Stripe holds.

use std::sync::Arc;

use verdict_core::{Cents, EndCause, Kind, Party, Price, PriceMode, Role, Status, UnixMillis};
use verdict_store::{
    Actor, NewSession, OutboxItem, OutboxOutcome, PayoutProvider, PayoutState, PresenceChange,
    Settings, Store, monitor,
};

const T0: UnixMillis = UnixMillis(1_800_000_000_000);

#[macro_use]
mod common;

use common::Fixture;

on_both!(
    verify_flags_a_payout_paid_after_its_reversal_until_stripe_reverses_it,
    a_reversal_settled_before_a_late_transfer_runs_again,
);

pub fn stripe_settings() -> Settings {
    Settings { payout_provider: PayoutProvider::Stripe, ..Settings::default() }
}

fn new_session(id: &str) -> NewSession {
    NewSession {
        id: id.into(),
        kind: Kind::Video,
        customer_id: "c1".into(),
        provider_id: "p1".into(),
        provider_account: Some("acct_1".into()),
        scheduled_start: None,
        price: Price { mode: PriceMode::PerMinute, amount: Cents(150), currency: "usd".into() },
        request_id: None,
        metadata: None,
        room: None,
    }
}

fn service() -> Actor {
    Actor { role: Role::Service, id: "platform".into() }
}

/// A session both parties attend for two minutes, ended: completed, with
/// a Stripe payout queued.
async fn completed(store: &dyn Store, id: &str, settings: &Settings) {
    store.create_session(new_session(id), &service(), None, T0).await.unwrap();
    for (party, role, sub) in
        [(Party::Customer, Role::Customer, "c1"), (Party::Provider, Role::Provider, "p1")]
    {
        let actor = Actor { role, id: sub.into() };
        store
            .record_presence(id, party, PresenceChange::Join, &actor, &settings.policies, T0)
            .await
            .unwrap();
    }
    let ended = store
        .end_session(id, &service(), None, EndCause::Requested, settings, T0.plus_seconds(120))
        .await
        .unwrap();
    assert_eq!(ended.session.status, Status::Completed);
}

/// Makes the stored decision wrong (a bug in the policy it was decided
/// with): re-derived, the session is too short.
const MISDECIDE: &str = "UPDATE sessions SET policy = REPLACE(policy, \
    '\"min_billable_seconds\":60', '\"min_billable_seconds\":100000') WHERE id = $1";

async fn claim(store: &dyn Store, topic: &str, now: UnixMillis) -> OutboxItem {
    let items = store.claim_outbox("w", 100, now.plus_seconds(600), now).await.unwrap();
    items.into_iter().find(|item| item.topic == topic).unwrap_or_else(|| panic!("no {topic}"))
}

async fn section(store: &Arc<dyn Store>, now: UnixMillis) -> (i64, Vec<String>) {
    let report = monitor::verify(store, &stripe_settings(), now, |_| {}).await.unwrap();
    let section = report
        .sections
        .iter()
        .find(|section| section.name == "payouts_paid_after_reversal")
        .expect("the section");
    (section.count, section.sample.clone())
}

async fn verify_flags_a_payout_paid_after_its_reversal_until_stripe_reverses_it(fixture: Fixture) {
    let store = fixture.store.clone();
    let settings = stripe_settings();
    completed(store.as_ref(), "s1", &settings).await;
    let now = T0.plus_seconds(200);
    // The transfer is in flight (its row claimed) while a repair reverses.
    let payout_row = claim(store.as_ref(), "payout", now).await;
    fixture.execute(MISDECIDE, "s1").await;
    let correction = store.correct_session("s1", &settings, now).await.unwrap();
    assert_eq!(correction.unwrap().to.0, Status::Cancelled);
    assert_eq!(section(&store, now).await, (0, vec![]));

    let paid = OutboxOutcome::PayoutPaid { payout_id: "po_s1".into(), transfer_id: "tr_1".into() };
    let later = now.plus_seconds(5);
    assert!(store.finish_outbox(payout_row.id, "w", paid, later).await.unwrap());
    let payout = store.payout("po_s1").await.unwrap().unwrap();
    assert_eq!((payout.state, payout.transfer_id.as_deref()), (PayoutState::Paid, Some("tr_1")));
    assert!(payout.reversed_at.is_some() && payout.paid_at > payout.reversed_at);
    assert_eq!(section(&store, later).await, (1, vec!["s1".to_owned()]), "flagged");

    let reversal = claim(store.as_ref(), "payout.reversal", later).await;
    let reversed = OutboxOutcome::PayoutReversed {
        payout_id: "po_s1".into(),
        transfer_id: None,
        reversal_id: Some("trr_1".into()),
    };
    assert!(store.finish_outbox(reversal.id, "w", reversed, later).await.unwrap());
    assert_eq!(section(&store, later).await, (0, vec![]), "reversed at Stripe: clean");
    let payout = store.payout("po_s1").await.unwrap().unwrap();
    assert_eq!(payout.reversal_id.as_deref(), Some("trr_1"));
}

async fn a_reversal_settled_before_a_late_transfer_runs_again(fixture: Fixture) {
    let store = fixture.store.clone();
    let settings = stripe_settings();
    completed(store.as_ref(), "s1", &settings).await;
    let now = T0.plus_seconds(200);
    let payout_row = claim(store.as_ref(), "payout", now).await;
    // The attempt lost its answer: retried later.
    let retry = OutboxOutcome::Retry {
        due_at: now.plus_seconds(3600),
        error: "timeout".into(),
        payload: None,
    };
    assert!(store.finish_outbox(payout_row.id, "w", retry, now).await.unwrap());
    fixture.execute(MISDECIDE, "s1").await;
    store.correct_session("s1", &settings, now).await.unwrap().unwrap();
    // The payout row dies; its reversal finds nothing at Stripe.
    fixture
        .execute(
            "UPDATE outbox SET state = 'dead' WHERE topic = 'payout' AND session_id = $1",
            "s1",
        )
        .await;
    let reversal = claim(store.as_ref(), "payout.reversal", now).await;
    let nothing = OutboxOutcome::PayoutReversed {
        payout_id: "po_s1".into(),
        transfer_id: None,
        reversal_id: None,
    };
    assert!(store.finish_outbox(reversal.id, "w", nothing, now).await.unwrap());
    let rows = store.outbox(Some("pending"), Some("s1"), 100).await.unwrap();
    assert!(rows.iter().all(|row| row.topic != "payout.reversal"));

    // A transfer turns up after all (an operator's retry found it): the
    // reversal is due again, and verification says so until it runs.
    fixture
        .execute(
            "UPDATE outbox SET state = 'pending' WHERE topic = 'payout' AND session_id = $1",
            "s1",
        )
        .await;
    let later = now.plus_seconds(7200);
    let payout_row = claim(store.as_ref(), "payout", later).await;
    let paid = OutboxOutcome::PayoutPaid { payout_id: "po_s1".into(), transfer_id: "tr_1".into() };
    assert!(store.finish_outbox(payout_row.id, "w", paid, later).await.unwrap());
    let rows = store.outbox(Some("pending"), Some("s1"), 100).await.unwrap();
    assert_eq!(rows.iter().filter(|row| row.topic == "payout.reversal").count(), 1, "{rows:?}");
    assert_eq!(section(&store, later).await.0, 1);
    let reversal = claim(store.as_ref(), "payout.reversal", later).await;
    let reversed = OutboxOutcome::PayoutReversed {
        payout_id: "po_s1".into(),
        transfer_id: None,
        reversal_id: Some("trr_1".into()),
    };
    assert!(store.finish_outbox(reversal.id, "w", reversed, later).await.unwrap());
    assert_eq!(section(&store, later).await.0, 0);
}
