//! One transition per session under real concurrent HTTP requests.

use futures::future::join_all;
use reqwest::StatusCode;
use verdict_core::Role;

use crate::support::{TestApp, on_every_backend, outcome};

on_every_backend!(
    sixty_four_simultaneous_ends_make_one_transition,
    join_and_leave_after_the_end_are_refused_and_store_nothing,
    joins_racing_an_end_are_either_before_it_or_refused,
);

async fn sixty_four_simultaneous_ends_make_one_transition(app: TestApp) {
    app.create_session("s1").await;
    app.join("s1", &app.customer()).await.ok();
    app.join("s1", &app.provider()).await.ok();
    app.advance(125).await;
    let before = app.counts().await;

    let tokens = [app.customer(), app.provider(), app.service(), app.admin()];
    let calls = (0..64).map(|n| app.end("s1", &tokens[n % tokens.len()], None));
    let replies = join_all(calls).await;

    assert!(replies.iter().all(|reply| reply.status == StatusCode::OK));
    let first = outcome(&replies[0]);
    assert_eq!(first, ("completed".into(), "completed".into(), 125));
    assert!(replies.iter().all(|reply| outcome(reply) == first), "identical outcomes");
    let fresh =
        replies.iter().filter(|reply| reply.body["outcome"]["already_ended"] == false).count();
    assert_eq!(fresh, 1, "exactly one caller made the transition");
    let sessions: Vec<_> = replies.iter().map(|reply| &reply.body["session"]).collect();
    assert!(sessions.iter().all(|session| *session == sessions[0]));

    let ended = app.events("s1").await.iter().filter(|event| event["type"] == "ended").count();
    assert_eq!(ended, 1);
    let after = app.counts().await;
    assert_eq!(after["notifications"] - before["notifications"], 2, "one pair of notifications");
    assert_eq!(after["session_events"] - before["session_events"], 1);
    for token in [app.customer(), app.provider()] {
        let inbox = app.get("/v1/notifications", &token).await;
        let items = inbox.ok()["items"].as_array().unwrap().clone();
        assert_eq!(items.len(), 1);
        assert_eq!(items[0]["kind"], "session_completed");
        assert_eq!(items[0]["session_id"], "s1");
    }
}

async fn join_and_leave_after_the_end_are_refused_and_store_nothing(app: TestApp) {
    app.create_session("s1").await;
    app.join("s1", &app.customer()).await.ok();
    app.join("s1", &app.provider()).await.ok();
    app.advance(90).await;
    let ended = app.end("s1", &app.service(), None).await;
    let session_before = app.get("/v1/sessions/s1", &app.admin()).await.body;
    let counts_before = app.counts().await;

    app.advance(10).await;
    for token in [app.customer(), app.provider()] {
        let detail = app.join("s1", &token).await.problem(409);
        assert!(detail.contains("completed"), "{detail}");
        app.leave("s1", &token).await.problem(409);
        app.heartbeat("s1", &token).await.problem(409);
    }
    assert_eq!(app.counts().await, counts_before);
    assert_eq!(app.get("/v1/sessions/s1", &app.admin()).await.body, session_before);
    assert_eq!(session_before, ended.body["session"]);
}

async fn joins_racing_an_end_are_either_before_it_or_refused(app: TestApp) {
    let ids: Vec<String> = (0..16).map(|n| format!("race-{n}")).collect();
    for id in &ids {
        app.create_session(id).await;
        app.join(id, &app.customer()).await.ok();
    }
    app.advance(30).await;
    let provider = app.token(Role::Provider, "prov-1");
    let service = app.service();
    let work = ids.iter().map(|id| {
        let (app, provider, service) = (&app, &provider, &service);
        async move {
            let (join, end) = tokio::join!(app.join(id, provider), app.end(id, service, None));
            (id, join, end)
        }
    });
    for (id, join, end) in join_all(work).await {
        let events = app.events(id).await;
        let provider_joined =
            events.iter().any(|e| e["type"] == "joined" && e["party"] == "provider");
        let (status, reason, _) = outcome(&end);
        match join.status {
            // The join came first: it counts, and the end saw it (at the
            // same instant, so both joined but never overlapped).
            StatusCode::OK => {
                assert!(provider_joined);
                assert_eq!((status.as_str(), reason.as_str()), ("cancelled", "never_overlapped"));
            }
            // The end came first: the join changed nothing.
            StatusCode::CONFLICT => {
                assert!(!provider_joined);
                assert_eq!((status.as_str(), reason.as_str()), ("cancelled", "no_show_provider"));
            }
            other => panic!("unexpected {other} for {id}: {}", join.body),
        }
    }
}
