//! Payout delivery faults that are not the payout's: Stripe refusing our
//! credentials (401/403) is a configuration fault, and an operator queues
//! a failed payout or a dead delivery again.

use std::time::Duration;

use serde_json::{Value, json};

use crate::fakes::{FakeStripe, Fault};
use crate::reversals::{payout, run_session, stripe, stripe_app};
use crate::support::{TestApp, on_every_backend};

on_every_backend!(
    a_refused_key_is_a_configuration_fault_retried_and_alerted_never_failed,
    a_failed_payout_retried_by_an_admin_takes_a_new_key_only_when_stripe_has_none,
    a_dead_delivery_retried_by_an_admin_finds_the_transfer_made_and_makes_no_second,
    a_retry_of_a_payout_with_nothing_to_retry_is_refused_and_changes_nothing,
);

async fn alerts(app: &TestApp) -> Vec<Value> {
    let health = app.get("/v1/admin/health", &app.admin()).await.ok().clone();
    health["alerts"].as_array().unwrap().clone()
}

async fn retry(app: &TestApp, payout_id: &str) -> crate::support::Reply {
    app.post(&format!("/v1/admin/payouts/{payout_id}/retry"), &app.admin(), json!({})).await
}

async fn a_refused_key_is_a_configuration_fault_retried_and_alerted_never_failed(app: TestApp) {
    let app = stripe_app(&app).await;
    let fake =
        FakeStripe::start(vec![Fault::Status(401), Fault::Status(403), Fault::Status(401)]).await;
    let worker = app.worker(|config| {
        config.stripe = stripe(&fake);
        // Fewer attempts than faults: a configuration fault never dies.
        config.attempts_max = 2;
    });
    run_session(&app, "s1", 600).await;
    for _ in 0..3 {
        app.drain(&worker).await;
        let pending = payout(&app, "s1").await;
        assert_eq!(pending["state"], "pending", "never failed: {pending}");
        let alert = alerts(&app).await.into_iter().find(|a| a["kind"] == "stripe_configuration");
        let alert = alert.expect("raised as an alert");
        assert_eq!(
            (alert["severity"].clone(), alert["session_ids"].clone()),
            (json!("critical"), json!(["s1"]))
        );
        let dead = app.sql_count("SELECT COUNT(*) FROM outbox WHERE state = 'dead'").await;
        assert_eq!(dead, 0);
        app.advance(3_600).await;
    }
    app.drain(&worker).await;
    let paid = payout(&app, "s1").await;
    assert_eq!(
        (paid["state"].as_str(), paid["transfer_id"].as_str()),
        (Some("paid"), Some("tr_1"))
    );
    assert_eq!(fake.transfers().len(), 1);
    assert!(alerts(&app).await.iter().all(|a| a["kind"] != "stripe_configuration"));
}

async fn a_failed_payout_retried_by_an_admin_takes_a_new_key_only_when_stripe_has_none(
    app: TestApp,
) {
    let app = stripe_app(&app).await;
    let fake = FakeStripe::start(vec![Fault::Status(400)]).await;
    let worker = app.worker(|config| config.stripe = stripe(&fake));
    run_session(&app, "s1", 600).await;
    app.drain(&worker).await;
    assert_eq!(payout(&app, "s1").await["state"], "failed");

    let queued = retry(&app, "po_s1").await;
    assert_eq!(queued.ok()["state"], "pending");
    app.drain(&worker).await;
    let paid = payout(&app, "s1").await;
    assert_eq!(
        (paid["state"].as_str(), paid["transfer_id"].as_str()),
        (Some("paid"), Some("tr_1"))
    );
    assert!(fake.lookups() >= 1, "Stripe was asked first");
    let keys: Vec<Option<String>> =
        fake.calls().iter().map(|c| c.idempotency_key.clone()).collect();
    assert_eq!(keys, [Some("po_s1".to_owned()), Some("po_s1:1".to_owned())]);
    assert_eq!(fake.transfers().len(), 1);
}

async fn a_dead_delivery_retried_by_an_admin_finds_the_transfer_made_and_makes_no_second(
    app: TestApp,
) {
    let app = stripe_app(&app).await;
    let fake = FakeStripe::start(vec![Fault::SlowSuccess(Duration::from_secs(60))]).await;
    let worker = app.worker(|config| {
        config.stripe = stripe(&fake);
        config.outbound_timeout = Duration::from_secs(2);
        config.attempts_max = 1;
    });
    run_session(&app, "s1", 600).await;
    app.drain(&worker).await;
    let dead =
        app.sql_count("SELECT COUNT(*) FROM outbox WHERE topic = 'payout' AND state = 'dead'");
    assert_eq!(dead.await, 1);
    assert_eq!(payout(&app, "s1").await["state"], "pending");

    retry(&app, "po_s1").await.ok();
    app.drain(&worker).await;
    let paid = payout(&app, "s1").await;
    assert_eq!(
        (paid["state"].as_str(), paid["transfer_id"].as_str()),
        (Some("paid"), Some("tr_1"))
    );
    assert_eq!(fake.transfers().len(), 1, "never a second transfer");
    assert_eq!(fake.calls().len(), 1, "the transfer found, nothing sent again");
}

async fn a_retry_of_a_payout_with_nothing_to_retry_is_refused_and_changes_nothing(app: TestApp) {
    let app = stripe_app(&app).await;
    let fake = FakeStripe::start(vec![]).await;
    let worker = app.worker(|config| config.stripe = stripe(&fake));
    run_session(&app, "s1", 600).await;
    // Pending, its delivery not dead: nothing to retry.
    let detail = retry(&app, "po_s1").await.problem(409);
    assert!(detail.contains("pending"), "{detail}");
    app.drain(&worker).await;
    let counts = app.counts().await;
    let detail = retry(&app, "po_s1").await.problem(409);
    assert!(detail.contains("paid"), "{detail}");
    retry(&app, "po_ghost").await.problem(404);
    retry(&app, "bad%20id").await.problem(404);
    let reply = app.post("/v1/admin/payouts/po_s1/retry", &app.service(), json!({})).await;
    reply.problem(403);
    assert_eq!(app.counts().await, counts);
    assert_eq!(fake.calls().len(), 1);
}
