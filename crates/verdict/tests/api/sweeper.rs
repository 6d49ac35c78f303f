//! Sessions nobody ends: heartbeats and the sweeper, on the manual clock.

use serde_json::json;

use crate::support::{TestApp, expect, on_every_backend, outcome};

on_every_backend!(
    heartbeats_that_resume_after_a_gap_do_not_bill_the_gap,
    a_session_nobody_joined_expires_at_its_join_deadline,
    a_scheduled_session_expires_at_its_scheduled_start_plus_grace,
    an_abandoned_session_ends_at_the_last_departure_and_is_settled,
    a_session_past_its_maximum_duration_ends_with_billing_capped,
    parties_whose_heartbeats_lapsed_count_as_gone,
    nothing_is_swept_before_it_is_due,
    a_session_that_cannot_be_ended_is_counted_and_blocks_no_other,
);

fn time_of(value: &serde_json::Value) -> i64 {
    verdict_http::wire::parse_instant(value.as_str().expect("a timestamp")).expect("RFC 3339").0
}

async fn swept(app: &TestApp) -> usize {
    app.worker(|_| {}).try_sweep().await.expect("a sweep").ended.len()
}

async fn session(app: &TestApp, id: &str) -> serde_json::Value {
    app.get(&format!("/v1/sessions/{id}"), &app.admin()).await.ok().clone()
}

/// Seconds from the session's creation to `field`.
fn offset(session: &serde_json::Value, field: &str) -> i64 {
    (time_of(&session[field]) - time_of(&session["created_at"])) / 1000
}

async fn ended_by_the_system(app: &TestApp, id: &str) {
    let session = session(app, id).await;
    assert_eq!(session["ended_by"], "system");
    let events = app.events(id).await;
    let ended: Vec<_> = events.iter().filter(|event| event["type"] == "ended").collect();
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0]["actor"]["role"], "system");
}

async fn payouts(app: &TestApp, id: &str) -> usize {
    let reply = app.get(&format!("/v1/payouts?session_id={id}"), &app.admin()).await;
    reply.ok()["items"].as_array().unwrap().len()
}

async fn heartbeats_that_resume_after_a_gap_do_not_bill_the_gap(app: TestApp) {
    app.create_session("s1").await;
    app.join("s1", &app.customer()).await.ok();
    app.join("s1", &app.provider()).await.ok();
    for _ in 0..4 {
        app.advance(10).await;
        app.heartbeat("s1", &app.provider()).await;
    }
    // Silent from 40 s to 200 s, then heartbeating again until 300 s.
    app.advance(160).await;
    for _ in 0..10 {
        app.heartbeat("s1", &app.provider()).await;
        app.advance(10).await;
    }
    let ended = app.end("s1", &app.customer(), None).await;
    // 0–40 s, then 200–300 s (the last heartbeat at 290 is still fresh).
    assert_eq!(outcome(&ended), expect("completed", "completed", 140));
}

async fn a_session_nobody_joined_expires_at_its_join_deadline(app: TestApp) {
    app.create_session("s1").await;
    app.join("s1", &app.customer()).await.ok();
    app.advance(2_000).await;
    assert_eq!(swept(&app).await, 1);
    let session = session(&app, "s1").await;
    assert_eq!(
        (session["status"].as_str(), session["reason"].as_str()),
        (Some("expired"), Some("no_show_provider"))
    );
    assert_eq!(
        offset(&session, "ended_at"),
        900,
        "created_at + join_grace_seconds, not the sweep time"
    );
    assert_eq!(session["billable_seconds"], 0);
    ended_by_the_system(&app, "s1").await;
    let inbox = app.get("/v1/notifications", &app.customer()).await;
    assert_eq!(inbox.ok()["items"][0]["kind"], "session_expired");
    assert_eq!(payouts(&app, "s1").await, 0);
    assert_eq!(swept(&app).await, 0, "ended once");
}

async fn a_scheduled_session_expires_at_its_scheduled_start_plus_grace(app: TestApp) {
    let created = app.create_session("plain").await;
    let start = time_of(&created["created_at"]) + 600_000;
    let scheduled = verdict_http::wire::format_instant(verdict_core::UnixMillis(start));
    let body = json!({"id": "later", "kind": "chat", "customer_id": "cust-1", "provider_id": "prov-1",
        "scheduled_start": scheduled, "price": {"mode": "flat", "amount_cents": 100, "currency": "usd"}});
    app.post("/v1/sessions", &app.service(), body).await.ok();
    app.advance(1_000).await;
    assert_eq!(swept(&app).await, 1, "only the unscheduled one is past its deadline");
    app.advance(600).await;
    assert_eq!(swept(&app).await, 1);
    let later = session(&app, "later").await;
    assert_eq!(later["status"], "expired");
    assert_eq!(later["reason"], "no_show_both");
    assert_eq!(time_of(&later["ended_at"]), start + 900_000);
}

async fn an_abandoned_session_ends_at_the_last_departure_and_is_settled(app: TestApp) {
    app.create_session("s1").await;
    app.join("s1", &app.customer()).await.ok();
    app.join("s1", &app.provider()).await.ok();
    app.advance(200).await;
    app.leave("s1", &app.provider()).await.ok();
    app.advance(60).await;
    app.leave("s1", &app.customer()).await.ok();
    app.advance(299).await;
    assert_eq!(swept(&app).await, 0, "absent for 299 s: not yet");
    app.advance(1).await;
    assert_eq!(swept(&app).await, 1);
    let session = session(&app, "s1").await;
    assert_eq!(
        (session["status"].as_str(), session["billable_seconds"].as_i64()),
        (Some("completed"), Some(200))
    );
    assert_eq!(offset(&session, "ended_at"), 260, "the last departure, not the sweep");
    assert_eq!(session["charged_cents"], 2500);
    ended_by_the_system(&app, "s1").await;
    assert_eq!(payouts(&app, "s1").await, 1);
    let postings = app.state.store.postings("s1").await.unwrap();
    assert!(postings.len() == 1 && postings[0].is_balanced());
}

async fn a_session_past_its_maximum_duration_ends_with_billing_capped(app: TestApp) {
    let app = TestApp::spawn(app.backend, |config| config.max_duration_seconds = 3600).await;
    app.create_session("s1").await;
    app.join("s1", &app.customer()).await.ok();
    app.advance(5).await;
    app.join("s1", &app.provider()).await.ok();
    app.advance(3599).await;
    assert_eq!(swept(&app).await, 0);
    app.advance(500).await;
    assert_eq!(swept(&app).await, 1);
    let session = session(&app, "s1").await;
    assert_eq!(
        (session["status"].as_str(), session["billable_seconds"].as_i64()),
        (Some("completed"), Some(3600))
    );
    assert_eq!(offset(&session, "ended_at"), 3605, "started_at + max_duration_seconds");
    ended_by_the_system(&app, "s1").await;
    assert_eq!(payouts(&app, "s1").await, 1);
}

async fn parties_whose_heartbeats_lapsed_count_as_gone(app: TestApp) {
    app.create_session("s1").await;
    app.join("s1", &app.customer()).await.ok();
    app.join("s1", &app.provider()).await.ok();
    app.advance(30).await;
    app.heartbeat("s1", &app.customer()).await;
    app.heartbeat("s1", &app.provider()).await;
    app.advance(20).await;
    app.heartbeat("s1", &app.provider()).await;
    // The tabs closed: no leave, no more heartbeats. The customer counts as
    // gone since 30 s, the provider since 50 s: abandoned at 50 + 300.
    app.advance(299).await;
    assert_eq!(swept(&app).await, 0);
    app.advance(1).await;
    assert_eq!(swept(&app).await, 1);
    let session = session(&app, "s1").await;
    assert_eq!(offset(&session, "ended_at"), 50, "the provider's last heartbeat");
    assert_eq!(
        (session["status"].as_str(), session["billable_seconds"].as_i64()),
        (Some("cancelled"), Some(30))
    );
    assert_eq!(session["reason"], "too_short");
    assert_eq!(payouts(&app, "s1").await, 0);
}

async fn nothing_is_swept_before_it_is_due(app: TestApp) {
    app.create_session("waiting").await;
    app.create_session("live").await;
    app.join("live", &app.customer()).await.ok();
    app.join("live", &app.provider()).await.ok();
    app.advance(899).await;
    // The live session's parties never heartbeat: they stay present.
    assert_eq!(swept(&app).await, 0);
    app.advance(10_000).await;
    assert_eq!(swept(&app).await, 1);
    assert_eq!(session(&app, "live").await["status"], "live");
    assert_eq!(session(&app, "waiting").await["status"], "expired");
}

async fn a_session_that_cannot_be_ended_is_counted_and_blocks_no_other(app: TestApp) {
    for id in ["bad", "ok1", "ok2"] {
        app.create_session(id).await;
    }
    app.advance(2_000).await;
    app.refuse_to_end_bad().await;
    // One session a sweep: the failing one must not come first every time.
    let worker = app.worker(|config| config.sweep_batch_max = 1);
    let mut ended = Vec::new();
    let mut failed = Vec::new();
    for _ in 0..4 {
        let report = worker.try_sweep().await.expect("a sweep fails per session, not whole");
        ended.extend(report.ended.iter().map(|session| session.id.clone()));
        failed.extend(report.failed.iter().map(|(id, _)| id.clone()));
    }
    assert_eq!(ended, ["ok1", "ok2"]);
    assert_eq!(failed, ["bad"], "tried once an instant, after the others");
    app.advance(1).await;
    let report = worker.try_sweep().await.unwrap();
    assert_eq!(report.failed.len(), 1, "and again later");
    assert_eq!(session(&app, "bad").await["status"], "waiting");

    let text = app.client.get(format!("{}/metrics", app.base)).send().await.unwrap();
    let text = text.text().await.unwrap();
    assert!(text.lines().any(|line| line.starts_with("verdict_sweeper_failures_total ")), "{text}");
    let report = app.get("/v1/admin/verify", &app.admin()).await.ok().clone();
    let stuck = report["sections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|section| section["name"] == "stuck_sessions")
        .unwrap()
        .clone();
    assert_eq!((stuck["count"].clone(), stuck["sample"].clone()), (json!(1), json!(["bad"])));
}
