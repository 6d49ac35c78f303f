//! Abuse limits (docs/limits.md): bounded presence per party and session,
//! paged audit trails.

use serde_json::{Value, json};
use verdict_core::Role;

use crate::presence::{Platform, PlatformEvent, create_in_room, deliver, with_platform_keys};
use crate::support::{Backend, TestApp, expect, for_every_backend, outcome};

for_every_backend!(
    joins_past_the_bound_are_refused_429_and_store_nothing,
    a_leave_closing_an_interval_is_accepted_past_the_bound,
    platform_events_never_count_against_the_bound,
    the_audit_trail_is_paged_with_next_cursor,
    a_pending_request_expires_after_its_ttl_and_leaves_every_queue,
    its_customer_or_the_service_cancels_a_pending_request,
    a_customer_at_its_open_request_bound_is_refused_even_concurrently,
    assignments_are_paged_with_next_cursor,
    writes_over_a_callers_rate_are_429_with_retry_after,
);

async fn with_presence_bound(backend: Backend, bound: i64) -> TestApp {
    TestApp::spawn(backend, |config| {
        with_platform_keys(config);
        config.max_presence_events_per_session = bound;
    })
    .await
}

async fn event_count(app: &TestApp, id: &str) -> i64 {
    app.sql_count(&format!("SELECT COUNT(*) FROM session_events WHERE session_id = '{id}'")).await
}

async fn joins_past_the_bound_are_refused_429_and_store_nothing(backend: Backend) {
    let app = with_presence_bound(backend, 4).await;
    app.create_session("s1").await;
    let customer = app.customer();
    for _ in 0..2 {
        app.join("s1", &customer).await.ok();
        app.leave("s1", &customer).await.ok();
    }
    let stored = event_count(&app, "s1").await;
    let refused = app.join("s1", &customer).await;
    let detail = refused.problem(429);
    assert_eq!(refused.body["type"], "urn:verdict:problem:limit-reached");
    assert!(detail.contains("max_presence_events_per_session"), "{detail}");
    assert_eq!(event_count(&app, "s1").await, stored, "a refused join stores nothing");
    // The bound is per party: the provider still joins.
    let joined = app.join("s1", &app.provider()).await;
    assert_eq!(joined.ok()["status"], "waiting");
}

async fn a_leave_closing_an_interval_is_accepted_past_the_bound(backend: Backend) {
    let app = with_presence_bound(backend, 1).await;
    app.create_session("s1").await;
    let (customer, provider) = (app.customer(), app.provider());
    app.join("s1", &customer).await.ok();
    app.join("s1", &provider).await.ok();
    app.advance(100).await;
    // The customer's second event of its own, past the bound: a leave that
    // closes its interval is always kept, so nobody stays billed.
    app.leave("s1", &customer).await.ok();
    app.join("s1", &customer).await.problem(429);
    app.advance(100).await;
    let ended = app.end("s1", &app.service(), None).await;
    assert_eq!(outcome(&ended), expect("completed", "completed", 100));
}

async fn platform_events_never_count_against_the_bound(backend: Backend) {
    let app = with_presence_bound(backend, 1).await;
    create_in_room(&app, "s1", "room-1").await;
    let t0 = app.state.clock.now().0 / 1000 * 1000;
    for n in 0..6 {
        let connection = format!("PA_alice_{}", n / 2);
        let joined = n % 2 == 0;
        let event =
            PlatformEvent::new(Platform::Daily, "room-1", "alice", &connection, joined, t0 + n);
        let receipt: Value = deliver(&app, &event).await;
        assert_eq!(receipt["disposition"], "recorded", "{receipt}");
    }
    assert_eq!(app.events("s1").await.len(), 7);
}

async fn the_audit_trail_is_paged_with_next_cursor(backend: Backend) {
    let app = with_presence_bound(backend, 500).await;
    app.create_session("s1").await;
    let customer = app.customer();
    for _ in 0..3 {
        app.join("s1", &customer).await.ok();
        app.leave("s1", &customer).await.ok();
    }
    let whole = app.get("/v1/sessions/s1/events?limit=500", &app.admin()).await;
    let whole = whole.ok()["items"].as_array().unwrap().clone();
    assert_eq!(whole.len(), 7);
    let mut paged = Vec::new();
    let mut path = "/v1/sessions/s1/events?limit=2".to_owned();
    for _ in 0..10 {
        let page = app.get(&path, &app.admin()).await;
        let page = page.ok().clone();
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 2);
        paged.extend(items.iter().cloned());
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/v1/sessions/s1/events?limit=2&after={cursor}"),
            None => break,
        }
    }
    assert_eq!(paged, whole);
    for bad in ["limit=0", "limit=501", "after=x", "after=-1", "page=2"] {
        app.get(&format!("/v1/sessions/s1/events?{bad}"), &app.admin()).await.problem(422);
    }
}

/// Creates a request of `customer` offered to `providers`; the reply.
async fn open_request(app: &TestApp, customer: &str, providers: &[&str]) -> crate::support::Reply {
    let body = json!({"customer_id": customer, "kind": "chat",
        "price": {"mode": "flat", "amount_cents": 1_000, "currency": "usd"},
        "candidate_provider_ids": providers});
    app.post("/v1/requests", &app.token(Role::Customer, customer), body).await
}

async fn accept(app: &TestApp, id: &str, provider: &str) -> crate::support::Reply {
    let token = app.token(Role::Provider, provider);
    app.post(&format!("/v1/requests/{id}/accept"), &token, json!({})).await
}

async fn queue(app: &TestApp, provider: &str) -> Vec<Value> {
    let reply = app.get("/v1/assignments", &app.token(Role::Provider, provider)).await;
    reply.ok()["items"].as_array().unwrap().clone()
}

async fn sweep(app: &TestApp) -> verdict_store::SweepReport {
    app.worker(|_| {}).try_sweep().await.expect("a sweep")
}

async fn a_pending_request_expires_after_its_ttl_and_leaves_every_queue(backend: Backend) {
    let app = TestApp::spawn(backend, |_| {}).await;
    let id = open_request(&app, "c1", &["p1", "p2"]).await.ok()["id"].as_str().unwrap().to_owned();
    assert_eq!(queue(&app, "p1").await.len(), 1);
    app.advance(899).await;
    assert!(sweep(&app).await.expired_requests.is_empty());
    app.advance(1).await;
    // Over, even before the sweeper has run.
    accept(&app, &id, "p2").await.problem(409);
    assert_eq!(sweep(&app).await.expired_requests, vec![id.clone()]);
    let request = app.get(&format!("/v1/requests/{id}"), &app.service()).await;
    assert_eq!(request.ok()["status"], "expired");
    assert!(queue(&app, "p1").await.is_empty() && queue(&app, "p2").await.is_empty());
    accept(&app, &id, "p1").await.problem(409);
    assert!(sweep(&app).await.expired_requests.is_empty(), "expired once");
}

async fn its_customer_or_the_service_cancels_a_pending_request(backend: Backend) {
    let app = TestApp::spawn(backend, |_| {}).await;
    let id = open_request(&app, "c1", &["p1"]).await.ok()["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/requests/{id}/cancel");
    app.post(&path, &app.token(Role::Customer, "c2"), json!({})).await.problem(403);
    app.post(&path, &app.token(Role::Provider, "p1"), json!({})).await.problem(403);
    app.post("/v1/requests/nope/cancel", &app.service(), json!({})).await.problem(404);
    assert_eq!(queue(&app, "p1").await.len(), 1, "refusals change nothing");
    let cancelled = app.post(&path, &app.token(Role::Customer, "c1"), json!({})).await;
    assert_eq!(cancelled.ok()["status"], "cancelled");
    assert!(queue(&app, "p1").await.is_empty());
    // A retry answers the same; an accept comes too late.
    let again = app.post(&path, &app.service(), json!({})).await;
    assert_eq!(again.ok()["status"], "cancelled");
    accept(&app, &id, "p1").await.problem(409);
    // A matched request is no longer the customer's to cancel.
    let id = open_request(&app, "c1", &["p1"]).await.ok()["id"].as_str().unwrap().to_owned();
    assert_eq!(accept(&app, &id, "p1").await.status, 201);
    let detail = app
        .post(&format!("/v1/requests/{id}/cancel"), &app.service(), json!({}))
        .await
        .problem(409);
    assert!(detail.contains("matched"), "{detail}");
}

async fn a_customer_at_its_open_request_bound_is_refused_even_concurrently(backend: Backend) {
    let app = TestApp::spawn(backend, |_| {}).await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(open_request(&app, "c1", &["p1"]).await.ok()["id"].as_str().unwrap().to_owned());
    }
    let refused = open_request(&app, "c1", &["p1"]).await;
    let detail = refused.problem(429);
    assert_eq!(refused.body["type"], "urn:verdict:problem:limit-reached");
    assert!(detail.contains("max_open_requests_per_customer"), "{detail}");
    assert_eq!(app.counts().await["requests"], 5, "a refusal stores nothing");
    // Another customer has its own bound; a cancel frees a place.
    open_request(&app, "c2", &["p1"]).await.ok();
    app.post(&format!("/v1/requests/{}/cancel", ids[0]), &app.service(), json!({})).await.ok();
    open_request(&app, "c1", &["p1"]).await.ok();
    // Ten at once for a new customer: five win, whatever the interleaving.
    let attempts = (0..10).map(|_| open_request(&app, "c3", &["p1"]));
    let replies = futures::future::join_all(attempts).await;
    let created = replies.iter().filter(|reply| reply.status == 201).count();
    let refused = replies.iter().filter(|reply| reply.status == 429).count();
    assert_eq!((created, refused), (5, 5));
}

async fn assignments_are_paged_with_next_cursor(backend: Backend) {
    let app = TestApp::spawn(backend, |_| {}).await;
    for customer in ["c1", "c2", "c3"] {
        open_request(&app, customer, &["p1", "p2"]).await.ok();
        app.advance(1).await;
    }
    let all = app.get("/v1/assignments?limit=500", &app.admin()).await;
    let all = all.ok()["items"].as_array().unwrap().clone();
    assert_eq!(all.len(), 6);
    let mut paged = Vec::new();
    let mut path = "/v1/assignments?limit=4".to_owned();
    for _ in 0..5 {
        let page = app.get(&path, &app.admin()).await.ok().clone();
        paged.extend(page["items"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/v1/assignments?limit=4&after={cursor}"),
            None => break,
        }
    }
    assert_eq!(paged, all);
    // A provider pages its own queue.
    let p1 = app.token(Role::Provider, "p1");
    let first = app.get("/v1/assignments?limit=2", &p1).await.ok().clone();
    assert_eq!(first["items"].as_array().unwrap().len(), 2);
    let cursor = first["next_cursor"].as_str().expect("a next page");
    let second = app.get(&format!("/v1/assignments?limit=2&after={cursor}"), &p1).await;
    let second = second.ok().clone();
    assert_eq!(second["items"].as_array().unwrap().len(), 1);
    assert!(second["items"].as_array().unwrap().iter().all(|item| item["provider_id"] == "p1"));
    for bad in ["limit=0", "after=x", "after=1~a", "after=1~a~b~c"] {
        app.get(&format!("/v1/assignments?{bad}"), &p1).await.problem(422);
    }
}

async fn writes_over_a_callers_rate_are_429_with_retry_after(backend: Backend) {
    let app = TestApp::spawn(backend, |config| {
        config.rate_limit_per_second = 1;
        config.rate_limit_burst = 3;
    })
    .await;
    // The platform is exempt: more creations than any burst.
    for n in 0..5 {
        app.create_session(&format!("s{n}")).await;
    }
    let (customer, provider) = (app.customer(), app.provider());
    app.join("s0", &customer).await.ok();
    app.leave("s0", &customer).await.ok();
    app.join("s0", &customer).await.ok();
    let stored = event_count(&app, "s0").await;
    let refused = app.leave("s0", &customer).await;
    refused.problem(429);
    assert_eq!(refused.body["type"], "urn:verdict:problem:rate-limited");
    assert_eq!(refused.headers.get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
    assert_eq!(event_count(&app, "s0").await, stored, "a refused write changes nothing");
    // Reads are not limited, and the provider has a rate of its own.
    for _ in 0..5 {
        app.get("/v1/sessions/s0", &customer).await.ok();
    }
    app.join("s0", &provider).await.ok();
    // A second later the customer writes again.
    app.advance(1).await;
    app.leave("s0", &customer).await.ok();
    app.leave("s0", &customer).await.problem(429);
}
