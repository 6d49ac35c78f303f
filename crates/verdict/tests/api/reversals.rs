//! Repair racing payout delivery, against the fake Stripe: a payout that a
//! repair reverses is never paid afterwards, and one whose transfer
//! happened anyway (in flight while the repair ran, or made and answered
//! after the timeout) is reversed at Stripe. Either one transfer and one
//! reversal, or neither; the books net to zero; verification stays clean.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::Notify;
use verdict_worker::StripeConfig;

use crate::fakes::{FakeStripe, Fault};
use crate::support::{TestApp, on_every_backend};

on_every_backend!(
    a_transfer_in_flight_while_repair_reverses_is_reversed_at_stripe,
    a_transfer_answered_after_the_timeout_then_reversed_is_reversed_at_stripe,
    a_payout_reversed_before_its_transfer_is_never_paid,
    earnings_exclude_reversed_payouts,
);

const STRIPE_KEY: &str = "sk_test_verdict";

pub async fn stripe_app(app: &TestApp) -> TestApp {
    TestApp::spawn(app.backend, |config| {
        config.stripe_secret_key = Some(verdict::config::Secret::new(STRIPE_KEY));
    })
    .await
}

pub fn stripe(fake: &FakeStripe) -> Option<StripeConfig> {
    Some(StripeConfig { api_base: fake.base.clone(), secret_key: STRIPE_KEY.into() })
}

/// Creates and runs a session: both present for `seconds`, then ended.
pub async fn run_session(app: &TestApp, id: &str, seconds: i64) -> Value {
    let body = json!({"id": id, "kind": "video", "customer_id": "cust-1", "provider_id": "prov-1",
        "provider_account": "acct_prov1",
        "price": {"mode": "per_minute", "amount_cents": 150, "currency": "usd"}});
    app.post("/v1/sessions", &app.service(), body).await.ok();
    app.join(id, &app.customer()).await.ok();
    app.join(id, &app.provider()).await.ok();
    app.advance(seconds).await;
    app.end(id, &app.service(), None).await.ok()["session"].clone()
}

pub async fn payout(app: &TestApp, session_id: &str) -> Value {
    let reply = app.get(&format!("/v1/payouts?session_id={session_id}"), &app.admin()).await;
    reply.ok()["items"][0].clone()
}

/// Makes a completed session's stored decision wrong, as a bug in the
/// policy it was decided with would: re-derived, it is too short, so a
/// repair reverses its money.
pub async fn misdecide(app: &TestApp, id: &str) {
    app.sql(&format!(
        "UPDATE sessions SET policy = REPLACE(policy, '\"min_billable_seconds\":60', \
         '\"min_billable_seconds\":100000') WHERE id = '{id}'"
    ))
    .await;
}

pub async fn repair(app: &TestApp) -> Value {
    app.post("/v1/admin/repair?dry_run=false", &app.admin(), json!({})).await.ok()["changes"]
        .clone()
}

/// Every ledger account of the session sums to zero, and each posting
/// balances.
pub async fn assert_books_net_to_zero(app: &TestApp, id: &str) {
    let postings = app.state.store.postings(id).await.unwrap();
    assert!(postings.iter().all(|posting| posting.is_balanced()), "{postings:?}");
    let mut net = std::collections::BTreeMap::<String, i64>::new();
    for line in postings.iter().flat_map(|posting| &posting.lines) {
        *net.entry(line.account.clone()).or_default() += line.amount.0;
    }
    assert!(net.values().all(|total| *total == 0), "{id}: {net:?}");
}

async fn a_transfer_in_flight_while_repair_reverses_is_reversed_at_stripe(app: TestApp) {
    let app = stripe_app(&app).await;
    let (arrived, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let hold = Fault::Hold { arrived: Arc::clone(&arrived), release: Arc::clone(&release) };
    let fake = FakeStripe::start(vec![hold]).await;
    let worker = Arc::new(app.worker(|config| config.stripe = stripe(&fake)));
    run_session(&app, "s1", 600).await;

    // The transfer is made and its answer held while the repair runs.
    let delivering = {
        let worker = Arc::clone(&worker);
        tokio::spawn(async move { worker.try_deliver_batch().await.unwrap() })
    };
    arrived.notified().await;
    misdecide(&app, "s1").await;
    let changes = repair(&app).await;
    assert_eq!(changes[0]["to"], json!({"status": "cancelled", "reason": "too_short"}));
    release.notify_one();
    delivering.await.unwrap();
    app.drain(&worker).await;

    let transfers = fake.transfers();
    let reversals = fake.reversals();
    assert_eq!(transfers.len(), 1, "the transfer in flight happened");
    assert_eq!(reversals.len(), 1, "and it is reversed at Stripe: {reversals:?}");
    assert_eq!(reversals[0]["transfer"], transfers[0]["id"]);
    assert_eq!(reversals[0]["amount"], 1200);
    let paid = payout(&app, "s1").await;
    assert_eq!(
        (paid["state"].as_str(), paid["transfer_id"].as_str()),
        (Some("paid"), Some("tr_1"))
    );
    assert!(paid["reversed_at"].is_string(), "{paid}");
    assert_books_net_to_zero(&app, "s1").await;
    let report = app.verify().await;
    assert_eq!(report["ok"], true, "{report}");
    // Nothing more leaves, however long we wait.
    app.advance(86_400).await;
    app.drain(&worker).await;
    assert_eq!((fake.transfers().len(), fake.reversals().len()), (1, 1));
}

async fn a_transfer_answered_after_the_timeout_then_reversed_is_reversed_at_stripe(app: TestApp) {
    let app = stripe_app(&app).await;
    let fake = FakeStripe::start(vec![Fault::SlowSuccess(Duration::from_secs(60))]).await;
    let worker = app.worker(|config| {
        config.stripe = stripe(&fake);
        config.outbound_timeout = Duration::from_secs(2);
    });
    run_session(&app, "s1", 600).await;
    app.drain(&worker).await;
    assert_eq!(fake.transfers().len(), 1, "made at Stripe");
    assert_eq!(payout(&app, "s1").await["state"], "pending", "but the answer was lost");

    misdecide(&app, "s1").await;
    assert_eq!(repair(&app).await.as_array().unwrap().len(), 1);
    app.deliver_until(&worker, 5, async || !fake.reversals().is_empty()).await;
    app.advance(86_400).await;
    app.drain(&worker).await;

    assert_eq!(fake.transfers().len(), 1, "never a second transfer");
    let reversals = fake.reversals();
    assert_eq!(reversals.len(), 1, "{reversals:?}");
    assert_eq!(reversals[0]["transfer"], "tr_1");
    assert!(fake.lookups() >= 1, "the reversed payout's retry asked Stripe");
    let paid = payout(&app, "s1").await;
    assert_eq!(
        (paid["state"].as_str(), paid["transfer_id"].as_str()),
        (Some("paid"), Some("tr_1"))
    );
    assert_books_net_to_zero(&app, "s1").await;
    let report = app.verify().await;
    assert_eq!(report["ok"], true, "{report}");
}

async fn a_payout_reversed_before_its_transfer_is_never_paid(app: TestApp) {
    let app = stripe_app(&app).await;
    let fake = FakeStripe::start(vec![]).await;
    let worker = app.worker(|config| config.stripe = stripe(&fake));
    run_session(&app, "s1", 600).await;
    misdecide(&app, "s1").await;
    assert_eq!(repair(&app).await.as_array().unwrap().len(), 1);
    app.drain(&worker).await;
    app.advance(86_400).await;
    app.drain(&worker).await;

    assert_eq!((fake.transfers().len(), fake.reversals().len()), (0, 0));
    let payout = payout(&app, "s1").await;
    assert_eq!(payout["state"], "pending", "{payout}");
    assert!(payout["reversed_at"].is_string());
    assert_books_net_to_zero(&app, "s1").await;
    let report = app.verify().await;
    assert_eq!(report["ok"], true, "{report}");
}

async fn earnings_exclude_reversed_payouts(app: TestApp) {
    let app = stripe_app(&app).await;
    let fake = FakeStripe::start(vec![]).await;
    let worker = app.worker(|config| config.stripe = stripe(&fake));
    run_session(&app, "kept", 600).await; // 1500, share 1200
    run_session(&app, "undone", 300).await; // 750, share 600
    app.drain(&worker).await;
    misdecide(&app, "undone").await;
    assert_eq!(repair(&app).await.as_array().unwrap().len(), 1);
    app.drain(&worker).await;
    assert_eq!((fake.transfers().len(), fake.reversals().len()), (2, 1));

    let earnings = app.get("/v1/providers/prov-1/earnings", &app.admin()).await;
    let totals = earnings.ok()["totals"].clone();
    assert_eq!(
        totals,
        json!([{"currency": "usd", "earned_cents": 1200, "sessions": 1, "paid_cents": 1200,
            "pending_cents": 0, "failed_cents": 0, "reversed_cents": 600}])
    );
}
