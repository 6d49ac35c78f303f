//! Policy `presence_source`: for a session with a video-platform room, the
//! platform is the authority (`platform`, the default) or its events and the
//! parties' own calls both count (`any`).

use reqwest::StatusCode;
use serde_json::json;

use crate::presence::{Platform, PlatformEvent, create_in_room, deliver, with_platform_keys};
use crate::support::{Backend, TestApp, for_every_backend};

for_every_backend!(
    own_presence_on_a_platform_session_is_409_of_its_own_type_and_counts_nothing,
    policy_any_keeps_the_union_and_the_session_says_which_source,
);

async fn event_count(app: &TestApp, id: &str) -> i64 {
    app.sql_count(&format!("SELECT COUNT(*) FROM session_events WHERE session_id = '{id}'")).await
}

async fn own_presence_on_a_platform_session_is_409_of_its_own_type_and_counts_nothing(
    backend: Backend,
) {
    let app = TestApp::spawn(backend, with_platform_keys).await;
    create_in_room(&app, "s1", "room-1").await;
    let session = app.get("/v1/sessions/s1", &app.admin()).await;
    assert_eq!(session.ok()["presence_source"], "platform");
    let (customer, provider) = (app.customer(), app.provider());
    for reply in [
        app.join("s1", &customer).await,
        app.join("s1", &provider).await,
        app.heartbeat("s1", &customer).await,
        app.leave("s1", &provider).await,
    ] {
        let detail = reply.problem(409);
        assert_eq!(reply.body["type"], "urn:verdict:problem:presence-from-platform");
        assert!(detail.contains("room-1"), "{detail}");
    }
    assert_eq!(event_count(&app, "s1").await, 1, "only `created`: nothing counted");
    let session = app.get("/v1/sessions/s1", &app.admin()).await;
    assert!(session.ok()["customer_last_seen_at"].is_null());
    assert_eq!(session.body["status"], "waiting");
    // The platform's own word counts.
    let t0 = app.state.clock.now().0 / 1000 * 1000;
    for (identity, connection) in [("alice", "PA_a"), ("bob", "PA_b")] {
        let event = PlatformEvent::new(Platform::Daily, "room-1", identity, connection, true, t0);
        assert_eq!(deliver(&app, &event).await["disposition"], "recorded");
    }
    assert_eq!(app.get("/v1/sessions/s1", &app.admin()).await.ok()["status"], "live");
    // "Session ended" is another problem type.
    app.create_session("plain").await;
    app.end("plain", &app.service(), None).await.ok();
    let ended = app.join("plain", &customer).await;
    ended.problem(409);
    assert_eq!(ended.body["type"], "urn:verdict:problem:conflict");
}

async fn policy_any_keeps_the_union_and_the_session_says_which_source(backend: Backend) {
    let app = TestApp::spawn(backend, |config| {
        with_platform_keys(config);
        config.policy.insert(
            "chat".into(),
            verdict::config::PolicyOverride {
                presence_source: Some("any".into()),
                ..Default::default()
            },
        );
    })
    .await;
    let room = |id: &str, kind: &str, room: &str| {
        json!({"id": id, "kind": kind, "customer_id": "cust-1", "provider_id": "prov-1",
            "price": {"mode": "flat", "amount_cents": 2500, "currency": "usd"},
            "room": room, "customer_identity": "alice", "provider_identity": "bob"})
    };
    let service = app.service();
    // The kind's policy, and the creator's choice over it.
    let chat = app.post("/v1/sessions", &service, room("chat", "chat", "room-c")).await;
    assert_eq!(chat.ok()["presence_source"], "any");
    let video = app.post("/v1/sessions", &service, room("video", "video", "room-v")).await;
    assert_eq!(video.ok()["presence_source"], "platform");
    let mut chosen = room("chosen", "video", "room-x");
    chosen["presence_source"] = json!("any");
    let chosen = app.post("/v1/sessions", &service, chosen).await;
    assert_eq!(chosen.ok()["presence_source"], "any");
    // Without a room, presence is the parties' own: `any`, and no choice.
    assert_eq!(app.create_session("plain").await["presence_source"], "any");
    let no_room = json!({"id": "bad", "kind": "video", "customer_id": "cust-1",
        "provider_id": "prov-1", "presence_source": "platform",
        "price": {"mode": "flat", "amount_cents": 2500, "currency": "usd"}});
    app.post("/v1/sessions", &service, no_room).await.problem(422);
    let mut unknown = room("bad", "video", "room-y");
    unknown["presence_source"] = json!("client");
    assert_eq!(app.post("/v1/sessions", &service, unknown).await.status.as_u16(), 422);
    // `any`: the customer's own join and the platform's join of bob start it.
    app.join("chat", &app.customer()).await.ok();
    let t0 = app.state.clock.now().0 / 1000 * 1000;
    let bob = PlatformEvent::new(Platform::Daily, "room-c", "bob", "PA_b", true, t0);
    deliver(&app, &bob).await;
    let session = app.get("/v1/sessions/chat", &app.admin()).await;
    assert_eq!(session.ok()["status"], "live");
    assert_eq!(StatusCode::OK, app.leave("chat", &app.customer()).await.status);
}
