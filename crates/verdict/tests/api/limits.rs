//! Abuse limits (docs/limits.md): bounded presence per party and session,
//! paged audit trails.

use serde_json::Value;

use crate::presence::{Platform, PlatformEvent, create_in_room, deliver, with_platform_keys};
use crate::support::{Backend, TestApp, expect, outcome};

/// Every scenario on both databases, each with its own configuration.
macro_rules! limits_on_every_backend {
    ($($name:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::support::Backend::Sqlite).await;
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::support::Backend::Postgres).await;
                }
            )+
        }
    };
}

limits_on_every_backend!(
    joins_past_the_bound_are_refused_429_and_store_nothing,
    a_leave_closing_an_interval_is_accepted_past_the_bound,
    platform_events_never_count_against_the_bound,
    the_audit_trail_is_paged_with_next_cursor,
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
