//! Every rule of the decision, reproduced through join, leave, the test
//! clock and end.

use serde_json::json;
use verdict_core::Role;

use crate::support::{TestApp, expect, on_every_backend, outcome};

on_every_backend!(
    nobody_joining_is_a_no_show_of_both,
    a_provider_alone_is_a_customer_no_show,
    a_customer_alone_is_a_provider_no_show,
    a_customer_who_left_before_the_provider_joined_never_overlapped,
    fifty_nine_seconds_together_is_too_short,
    sixty_seconds_together_completes,
    leave_and_rejoin_intervals_are_summed,
    wall_clock_basis_bills_from_start_to_end,
    billing_is_capped_at_the_maximum_duration,
    the_policy_of_the_kind_decides,
    a_claimed_completion_on_a_no_show_is_ignored_and_recorded,
    a_second_end_returns_the_stored_outcome,
    both_parties_present_start_the_session,
    a_provider_whose_heartbeats_stop_is_billed_until_the_last_one,
    repeated_joins_do_not_split_presence,
);

async fn nobody_joining_is_a_no_show_of_both(app: TestApp) {
    app.create_session("s1").await;
    app.advance(120).await;
    let reply = app.end("s1", &app.service(), None).await;
    assert_eq!(outcome(&reply), expect("cancelled", "no_show_both", 0));
    assert_eq!(reply.body["session"]["ended_by"], "service");
    assert_eq!(reply.body["session"]["charged_cents"], 0);
}

async fn a_provider_alone_is_a_customer_no_show(app: TestApp) {
    app.create_session("s1").await;
    app.join("s1", &app.provider()).await.ok();
    app.advance(600).await;
    let reply = app.end("s1", &app.provider(), None).await;
    assert_eq!(outcome(&reply), expect("cancelled", "no_show_customer", 0));
}

async fn a_customer_alone_is_a_provider_no_show(app: TestApp) {
    app.create_session("s1").await;
    app.join("s1", &app.customer()).await.ok();
    app.advance(600).await;
    let reply = app.end("s1", &app.customer(), None).await;
    assert_eq!(outcome(&reply), expect("cancelled", "no_show_provider", 0));
}

async fn a_customer_who_left_before_the_provider_joined_never_overlapped(app: TestApp) {
    app.create_session("s1").await;
    app.join("s1", &app.customer()).await.ok();
    app.advance(100).await;
    app.leave("s1", &app.customer()).await.ok();
    app.advance(100).await;
    app.join("s1", &app.provider()).await.ok();
    app.advance(100).await;
    let reply = app.end("s1", &app.admin(), None).await;
    assert_eq!(outcome(&reply), expect("cancelled", "never_overlapped", 0));
    assert_eq!(reply.body["session"]["started_at"], serde_json::Value::Null);
}

async fn fifty_nine_seconds_together_is_too_short(app: TestApp) {
    app.create_session("s1").await;
    app.join("s1", &app.customer()).await.ok();
    app.join("s1", &app.provider()).await.ok();
    app.advance(59).await;
    let reply = app.end("s1", &app.customer(), None).await;
    assert_eq!(outcome(&reply), expect("cancelled", "too_short", 59));
    assert_eq!(reply.body["session"]["charged_cents"], 0);
}

async fn sixty_seconds_together_completes(app: TestApp) {
    app.create_session("s1").await;
    app.join("s1", &app.customer()).await.ok();
    app.join("s1", &app.provider()).await.ok();
    app.advance(60).await;
    let reply = app.end("s1", &app.customer(), None).await;
    assert_eq!(outcome(&reply), expect("completed", "completed", 60));
    assert_eq!(reply.body["session"]["status"], "completed");
    assert_eq!(reply.body["session"]["charged_cents"], 2500);
}

async fn leave_and_rejoin_intervals_are_summed(app: TestApp) {
    app.create_session("s1").await;
    app.join("s1", &app.customer()).await.ok();
    app.join("s1", &app.provider()).await.ok();
    app.advance(40).await;
    app.leave("s1", &app.provider()).await.ok();
    app.advance(300).await;
    app.join("s1", &app.provider()).await.ok();
    app.advance(30).await;
    let reply = app.end("s1", &app.service(), None).await;
    assert_eq!(outcome(&reply), expect("completed", "completed", 70));
}

async fn wall_clock_basis_bills_from_start_to_end(app: TestApp) {
    let wall =
        TestApp::spawn(app.backend, |config| config.billing_basis = "wall_clock".into()).await;
    for app in [&app, &wall] {
        app.create_session("s1").await;
        app.join("s1", &app.customer()).await.ok();
        app.join("s1", &app.provider()).await.ok();
        app.advance(30).await;
        app.leave("s1", &app.provider()).await.ok();
        app.advance(60).await;
    }
    let overlap = app.end("s1", &app.service(), None).await;
    assert_eq!(outcome(&overlap), expect("cancelled", "too_short", 30));
    let wall_clock = wall.end("s1", &wall.service(), None).await;
    assert_eq!(outcome(&wall_clock), expect("completed", "completed", 90));
}

async fn billing_is_capped_at_the_maximum_duration(app: TestApp) {
    let capped = TestApp::spawn(app.backend, |config| config.max_duration_seconds = 3600).await;
    capped.create_session("s1").await;
    capped.join("s1", &capped.customer()).await.ok();
    capped.join("s1", &capped.provider()).await.ok();
    capped.advance(5000).await;
    let reply = capped.end("s1", &capped.service(), None).await;
    assert_eq!(outcome(&reply), expect("completed", "completed", 3600));
}

async fn the_policy_of_the_kind_decides(app: TestApp) {
    let app2 = TestApp::spawn(app.backend, |config| {
        config.policy.insert(
            "chat".into(),
            verdict::config::PolicyOverride {
                min_billable_seconds: Some(30),
                presence_timeout_seconds: Some(45),
                ..Default::default()
            },
        );
    })
    .await;
    for (id, kind, timeout) in [("video-1", "video", 60), ("chat-1", "chat", 45)] {
        let body = json!({"id": id, "kind": kind, "customer_id": "cust-1", "provider_id": "prov-1",
            "price": {"mode": "per_minute", "amount_cents": 100, "currency": "eur"}});
        // A client heartbeats within its kind's presence timeout: shown.
        let created = app2.post("/v1/sessions", &app2.service(), body).await;
        assert_eq!(created.ok()["presence_timeout_seconds"], timeout, "{kind}");
        app2.join(id, &app2.customer()).await.ok();
        app2.join(id, &app2.provider()).await.ok();
    }
    app2.advance(45).await;
    assert_eq!(
        outcome(&app2.end("video-1", &app2.service(), None).await),
        expect("cancelled", "too_short", 45)
    );
    let chat = app2.end("chat-1", &app2.service(), None).await;
    assert_eq!(outcome(&chat), expect("completed", "completed", 45));
    assert_eq!(chat.body["session"]["charged_cents"], 100, "one started minute");
    assert_eq!(chat.body["session"]["presence_timeout_seconds"], 45);
    let events = app2.events("chat-1").await;
    assert_eq!(events.last().unwrap()["data"]["policy"]["min_billable_seconds"], 30);
}

async fn a_claimed_completion_on_a_no_show_is_ignored_and_recorded(app: TestApp) {
    app.create_session("s1").await;
    app.join("s1", &app.customer()).await.ok();
    app.advance(900).await;
    let claim = json!({"status": "completed", "billable_seconds": 3600, "reason": "completed"});
    let reply = app.end("s1", &app.customer(), Some(claim.clone())).await;
    assert_eq!(outcome(&reply), expect("cancelled", "no_show_provider", 0));
    let events = app.events("s1").await;
    let ended: Vec<_> = events.iter().filter(|event| event["type"] == "ended").collect();
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0]["data"]["claimed"], claim);
    assert_eq!(ended[0]["actor"], json!({"role": "customer", "id": "cust-1"}));
    assert_eq!(ended[0]["data"]["outcome"]["status"], "cancelled");
    assert_eq!(ended[0]["data"]["policy"]["min_billable_seconds"], 60);
}

async fn a_second_end_returns_the_stored_outcome(app: TestApp) {
    app.create_session("s1").await;
    app.join("s1", &app.customer()).await.ok();
    app.join("s1", &app.provider()).await.ok();
    app.advance(120).await;
    let first = app.end("s1", &app.customer(), None).await;
    app.advance(600).await;
    let second = app.end("s1", &app.provider(), Some(json!({"status": "cancelled"}))).await;
    assert_eq!(first.body["outcome"]["already_ended"], false);
    assert_eq!(second.body["outcome"]["already_ended"], true);
    assert_eq!(outcome(&first), outcome(&second));
    assert_eq!(first.body["session"], second.body["session"]);
    assert_eq!(app.events("s1").await.iter().filter(|e| e["type"] == "ended").count(), 1);
}

async fn both_parties_present_start_the_session(app: TestApp) {
    app.create_session("s1").await;
    let customer_joined = app.join("s1", &app.customer()).await;
    assert_eq!(customer_joined.ok()["status"], "waiting");
    app.advance(7).await;
    let provider_joined = app.join("s1", &app.provider()).await;
    let session = provider_joined.ok();
    assert_eq!(session["status"], "live");
    let created = time_of(&session["created_at"]);
    assert_eq!(time_of(&session["started_at"]) - created, 7_000);
    let read = app.get("/v1/sessions/s1", &app.customer()).await;
    assert_eq!(read.ok(), session);
}

async fn a_provider_whose_heartbeats_stop_is_billed_until_the_last_one(app: TestApp) {
    app.create_session("s1").await;
    app.join("s1", &app.customer()).await.ok();
    app.join("s1", &app.provider()).await.ok();
    for _ in 0..4 {
        app.advance(10).await;
        assert_eq!(app.heartbeat("s1", &app.provider()).await.status, 204);
    }
    app.advance(600).await;
    let reply = app.end("s1", &app.customer(), None).await;
    assert_eq!(outcome(&reply), expect("cancelled", "too_short", 40));
}

async fn repeated_joins_do_not_split_presence(app: TestApp) {
    app.create_session("s1").await;
    let customer = app.token(Role::Customer, "cust-1");
    app.join("s1", &customer).await.ok();
    app.join("s1", &app.provider()).await.ok();
    app.advance(30).await;
    app.join("s1", &customer).await.ok();
    app.advance(30).await;
    let joins = app.events("s1").await.iter().filter(|event| event["type"] == "joined").count();
    assert_eq!(joins, 2, "a join while present records nothing");
    assert_eq!(
        outcome(&app.end("s1", &customer, None).await),
        expect("completed", "completed", 60)
    );
}

fn time_of(value: &serde_json::Value) -> i64 {
    let text = value.as_str().expect("a timestamp");
    verdict_http::wire::parse_instant(text).expect("RFC 3339").0
}
