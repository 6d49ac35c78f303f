//! Authentication, authorisation and hostile input: every failure is a
//! precise 4xx problem+json and changes nothing.

use reqwest::Method;
use serde_json::json;
use verdict_core::Role;
use verdict_http::JwtKeys;

use crate::support::{TestApp, on_every_backend};

on_every_backend!(
    missing_forged_and_expired_tokens_are_refused,
    strangers_to_a_session_are_forbidden,
    roles_are_enforced_per_route,
    unknown_sessions_and_routes_are_not_found,
    invalid_fields_are_named_in_the_detail,
    hostile_requests_get_problems_and_change_nothing,
    bodies_over_64_kib_are_refused,
    legacy_status_routes_are_gone_and_point_to_end,
    the_test_clock_does_not_exist_on_the_system_clock,
    the_openapi_document_lists_every_route,
    every_route_admits_exactly_the_callers_it_should,
);

async fn missing_forged_and_expired_tokens_are_refused(app: TestApp) {
    app.create_session("s1").await;
    let path = "/v1/sessions/s1";
    let missing = app.send(Method::GET, path, None, None).await.problem(401);
    assert!(missing.contains("missing"), "{missing}");

    let forged_keys = JwtKeys::new(&verdict_http::JwtSecret::new(b"another-secret".to_vec()));
    let forged = forged_keys.mint(Role::Admin, "ops", i64::MAX / 2);
    assert!(app.get(path, &forged).await.problem(401).contains("signature"));

    let expired = app.keys_mint_expired();
    assert!(app.get(path, &expired).await.problem(401).contains("expired"));

    app.get(path, "not.a.jwt").await.problem(401);
    let system = app.token(Role::System, "verdict");
    assert!(app.get(path, &system).await.problem(401).contains("role"));
    let basic = app
        .client
        .get(format!("{}{path}", app.base))
        .basic_auth("a", Some("b"))
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), 401);
}

impl TestApp {
    fn keys_mint_expired(&self) -> String {
        let keys =
            JwtKeys::new(&verdict_http::JwtSecret::new(crate::support::SECRET.as_bytes().to_vec()));
        keys.mint(Role::Admin, "ops", 1_000_000)
    }
}

async fn strangers_to_a_session_are_forbidden(app: TestApp) {
    app.create_session("s1").await;
    let before = app.counts().await;
    for token in [app.token(Role::Customer, "cust-2"), app.token(Role::Provider, "prov-2")] {
        app.get("/v1/sessions/s1", &token).await.problem(403);
        app.get("/v1/sessions/s1/events", &token).await.problem(403);
        app.join("s1", &token).await.problem(403);
        app.leave("s1", &token).await.problem(403);
        app.heartbeat("s1", &token).await.problem(403);
        app.end("s1", &token, None).await.problem(403);
    }
    // A customer id that happens to equal the provider id is not the provider.
    let impostor = app.token(Role::Customer, "prov-1");
    app.end("s1", &impostor, None).await.problem(403);
    assert_eq!(app.counts().await, before);
}

async fn roles_are_enforced_per_route(app: TestApp) {
    app.create_session("s1").await;
    let body = json!({"kind": "chat", "customer_id": "c", "provider_id": "p",
        "price": {"mode": "flat", "amount_cents": 1, "currency": "usd"}});
    for token in [app.customer(), app.provider()] {
        app.post("/v1/sessions", &token, body.clone()).await.problem(403);
        app.post("/v1/test-clock/advance", &token, json!({"seconds": 5})).await.problem(403);
    }
    // Presence is the party's own, not the platform's.
    for token in [app.service(), app.admin()] {
        app.join("s1", &token).await.problem(403);
    }
    app.post("/v1/test-clock/advance", &app.service(), json!({"seconds": 5})).await.problem(403);
    // The platform and admins may read and end.
    app.get("/v1/sessions/s1", &app.service()).await.ok();
    app.get("/v1/sessions/s1/events", &app.service()).await.ok();
    let created = app.post("/v1/sessions", &app.admin(), body).await;
    assert_eq!(created.status, 201);
    let id = created.body["id"].as_str().unwrap();
    assert_eq!(uuid::Uuid::parse_str(id).unwrap().get_version_num(), 7, "generated ids are UUIDv7");
    assert_eq!(created.headers["location"], format!("/v1/sessions/{id}").as_str());
}

async fn unknown_sessions_and_routes_are_not_found(app: TestApp) {
    for path in ["/v1/sessions/nope", "/v1/sessions/nope/events"] {
        assert!(app.get(path, &app.admin()).await.problem(404).contains("nope"));
    }
    app.end("nope", &app.service(), None).await.problem(404);
    app.join("nope", &app.customer()).await.problem(404);
    app.get("/v1/nothing-here", &app.admin()).await.problem(404);
    app.send(Method::DELETE, "/v1/sessions", Some(&app.admin()), None).await.problem(405);
}

async fn invalid_fields_are_named_in_the_detail(app: TestApp) {
    let service = app.service();
    let malformed =
        app.send(Method::POST, "/v1/sessions", Some(&service), Some("{\"kind\": ")).await;
    assert!(malformed.problem(400).contains("malformed JSON"));

    let base = json!({"kind": "video", "customer_id": "c", "provider_id": "p",
        "price": {"mode": "flat", "amount_cents": 100, "currency": "usd"}});
    let cases = [
        (&["kind"][..], json!("hologram"), "kind"),
        (&["price", "amount_cents"], json!(-1), "price.amount_cents"),
        (&["price", "amount_cents"], json!("100"), "price.amount_cents"),
        (&["price", "mode"], json!("hourly"), "price.mode"),
        (&["price", "currency"], json!("dollars"), "price.currency"),
        (&["customer_id"], json!("a b"), "customer_id"),
        (&["scheduled_start"], json!("tomorrow"), "scheduled_start"),
        (&["metadata"], json!([1, 2]), "metadata"),
    ];
    for (path, value, field) in cases {
        let mut body = base.clone();
        let slot = path.iter().fold(&mut body, |node, key| &mut node[*key]);
        *slot = value;
        let detail = app.post("/v1/sessions", &service, body).await.problem(422);
        assert!(detail.contains(field), "{path:?}: {detail}");
    }
    let mut missing = base.clone();
    missing.as_object_mut().unwrap().remove("provider_id");
    assert!(app.post("/v1/sessions", &service, missing).await.problem(422).contains("provider_id"));
    assert_eq!(app.counts().await["sessions"], 0);
}

async fn hostile_requests_get_problems_and_change_nothing(app: TestApp) {
    app.create_session("s1").await;
    let session_before = app.get("/v1/sessions/s1", &app.admin()).await.body;
    let counts_before = app.counts().await;
    let (service, customer, admin) = (app.service(), app.customer(), app.admin());
    let long_id = "x".repeat(129);
    let huge_id = "y".repeat(10_000);
    let create = |patch: serde_json::Value| {
        let mut body = json!({"kind": "video", "customer_id": "c", "provider_id": "p",
            "price": {"mode": "flat", "amount_cents": 100, "currency": "usd"}});
        for (key, value) in patch.as_object().unwrap() {
            body[key] = value.clone();
        }
        body.to_string()
    };
    let cases: Vec<(Method, String, Option<&str>, Option<String>)> = vec![
        (Method::POST, "/v1/sessions".into(), Some(&service), Some(create(json!({"id": long_id})))),
        (Method::POST, "/v1/sessions".into(), Some(&service), Some(create(json!({"id": huge_id})))),
        (Method::POST, "/v1/sessions".into(), Some(&service), Some(create(json!({"id": "s1"})))),
        (
            Method::POST,
            "/v1/sessions".into(),
            Some(&service),
            Some(create(json!({"id": "'; DROP TABLE sessions; --"}))),
        ),
        (
            Method::POST,
            "/v1/sessions".into(),
            Some(&service),
            Some(create(json!({"customer_id": "x' OR '1'='1"}))),
        ),
        (
            Method::POST,
            "/v1/sessions".into(),
            Some(&service),
            Some(create(json!({"provider_id": "プロバイダ"}))),
        ),
        (
            Method::POST,
            "/v1/sessions".into(),
            Some(&service),
            Some(create(json!({"customer_id": "\u{0000}"}))),
        ),
        (
            Method::POST,
            "/v1/sessions".into(),
            Some(&service),
            Some(create(json!({"customer_id": 42}))),
        ),
        (Method::POST, "/v1/sessions".into(), Some(&service), Some(create(json!({"kind": null})))),
        (
            Method::POST,
            "/v1/sessions".into(),
            Some(&service),
            Some(create(json!({"kind": ["video"]}))),
        ),
        (
            Method::POST,
            "/v1/sessions".into(),
            Some(&service),
            Some(create(json!({"price": "free"}))),
        ),
        (
            Method::POST,
            "/v1/sessions".into(),
            Some(&service),
            Some(create(
                json!({"price": {"mode": "flat", "amount_cents": 1e30, "currency": "usd"}}),
            )),
        ),
        (
            Method::POST,
            "/v1/sessions".into(),
            Some(&service),
            Some(create(
                json!({"price": {"mode": "flat", "amount_cents": 10_000_000_001i64, "currency": "usd"}}),
            )),
        ),
        (
            Method::POST,
            "/v1/sessions".into(),
            Some(&service),
            Some(create(
                json!({"price": {"mode": "flat", "amount_cents": 1.5, "currency": "usd"}}),
            )),
        ),
        (
            Method::POST,
            "/v1/sessions".into(),
            Some(&service),
            Some(create(json!({"price": {"mode": "flat", "amount_cents": 1, "currency": "€€€"}}))),
        ),
        (
            Method::POST,
            "/v1/sessions".into(),
            Some(&service),
            Some(create(json!({"status": "completed"}))),
        ),
        (
            Method::POST,
            "/v1/sessions".into(),
            Some(&service),
            Some(create(json!({"scheduled_start": "2026-13-45T99:00:00Z"}))),
        ),
        (
            Method::POST,
            "/v1/sessions".into(),
            Some(&service),
            Some(create(json!({"metadata": "{}"}))),
        ),
        (
            Method::POST,
            "/v1/sessions".into(),
            Some(&service),
            Some(create(json!({"provider_account": "acct with spaces"}))),
        ),
        (Method::POST, "/v1/sessions".into(), Some(&service), Some("[]".into())),
        (Method::POST, "/v1/sessions".into(), Some(&service), Some("null".into())),
        (Method::POST, "/v1/sessions".into(), Some(&service), Some("{} {}".into())),
        (Method::POST, "/v1/sessions".into(), Some(&service), Some("\u{feff}{}".into())),
        (
            Method::POST,
            "/v1/sessions".into(),
            Some(&service),
            Some("{\"kind\":\"video\",\"kind\":\"chat\"}".into()),
        ),
        (Method::POST, "/v1/sessions".into(), Some(&service), None),
        (
            Method::POST,
            "/v1/sessions/s1/end".into(),
            Some(&customer),
            Some("[\"completed\"]".into()),
        ),
        (Method::POST, "/v1/sessions/s1/end".into(), Some(&customer), Some("\"completed\"".into())),
        (Method::POST, "/v1/sessions/s1/end".into(), Some(&customer), Some("{\"status\": ".into())),
        (Method::POST, format!("/v1/sessions/{}/end", "z".repeat(200)), Some(&service), None),
        (Method::GET, "/v1/sessions/..%2F..%2Fetc%2Fpasswd".into(), Some(&service), None),
        (Method::GET, "/v1/sessions/s1'%20OR%20'1'='1".into(), Some(&service), None),
        (Method::GET, "/v1/sessions/%F0%9F%92%A5".into(), Some(&service), None),
        (Method::POST, "/v1/sessions/s1/join".into(), Some("Bearer"), None),
        (Method::POST, "/v1/sessions/s1/end".into(), None, None),
        (
            Method::POST,
            "/v1/test-clock/advance".into(),
            Some(&admin),
            Some("{\"seconds\": -5}".into()),
        ),
        (
            Method::POST,
            "/v1/test-clock/advance".into(),
            Some(&admin),
            Some("{\"seconds\": \"5\"}".into()),
        ),
        (
            Method::POST,
            "/v1/test-clock/advance".into(),
            Some(&admin),
            Some("{\"seconds\": 99999999999}".into()),
        ),
        (Method::GET, "/v1/notifications?after=-3".into(), Some(&customer), None),
        (Method::GET, "/v1/notifications?after=abc".into(), Some(&customer), None),
        (Method::PUT, "/v1/sessions/s1".into(), Some(&service), Some("{}".into())),
    ];
    assert!(cases.len() >= 30);
    for (method, path, token, body) in cases {
        let reply = app.send(method.clone(), &path, token, body.as_deref()).await;
        let status = reply.status.as_u16();
        assert!((400..500).contains(&status), "{method} {path}: {status} {}", reply.body);
        reply.problem(status);
    }
    assert_eq!(app.counts().await, counts_before);
    assert_eq!(app.get("/v1/sessions/s1", &app.admin()).await.body, session_before);
}

async fn bodies_over_64_kib_are_refused(app: TestApp) {
    let padding = "p".repeat(70 * 1024);
    let body = json!({"kind": "video", "customer_id": "c", "provider_id": "p",
        "price": {"mode": "flat", "amount_cents": 100, "currency": "usd"},
        "metadata": {"padding": padding}});
    app.post("/v1/sessions", &app.service(), body).await.problem(413);
    // Chunked, without a declared length: refused while reading.
    let chunks: Vec<Result<String, std::io::Error>> =
        (0..70).map(|_| Ok("a".repeat(1024))).collect();
    let response = app
        .client
        .post(format!("{}/v1/sessions", app.base))
        .bearer_auth(app.service())
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    assert_eq!(app.counts().await["sessions"], 0);
}

async fn legacy_status_routes_are_gone_and_point_to_end(app: TestApp) {
    app.create_session("s1").await;
    let before = app.get("/v1/sessions/s1", &app.admin()).await.body;
    let counts = app.counts().await;
    for suffix in ["status", "cancel", "complete"] {
        let reply = app
            .send(
                Method::POST,
                &format!("/api/sessions/s1/{suffix}"),
                None,
                Some("{\"status\":\"completed\"}"),
            )
            .await;
        assert!(reply.problem(410).contains("/v1/sessions/s1/end"));
        assert_eq!(reply.headers["link"], "</v1/sessions/s1/end>; rel=\"successor-version\"");
    }
    let end =
        app.send(Method::POST, "/api/sessions/end", None, Some("{\"session_id\":\"s1\"}")).await;
    end.problem(410);
    assert_eq!(end.headers["link"], "</v1/sessions/{id}/end>; rel=\"successor-version\"");
    assert_eq!(app.get("/v1/sessions/s1", &app.admin()).await.body, before);
    assert_eq!(app.counts().await, counts);
}

async fn the_test_clock_does_not_exist_on_the_system_clock(app: TestApp) {
    let system = TestApp::spawn(app.backend, |config| {
        config.clock = verdict::config::ClockKind::System;
    })
    .await;
    system
        .post("/v1/test-clock/advance", &system.admin(), json!({"seconds": 60}))
        .await
        .problem(404);
    let advanced = app.post("/v1/test-clock/advance", &app.admin(), json!({"seconds": 60})).await;
    assert!(advanced.ok()["now"].as_str().unwrap().ends_with('Z'));
}

async fn the_openapi_document_lists_every_route(app: TestApp) {
    let document = app.send(Method::GET, "/openapi.json", None, None).await;
    let paths = document.ok()["paths"].as_object().unwrap().clone();
    for path in [
        "/v1/sessions",
        "/v1/sessions/{id}",
        "/v1/sessions/{id}/join",
        "/v1/sessions/{id}/leave",
        "/v1/sessions/{id}/heartbeat",
        "/v1/sessions/{id}/end",
        "/v1/sessions/{id}/events",
        "/v1/notifications",
        "/v1/test-clock/advance",
        "/v1/presence/livekit",
        "/v1/presence/daily",
        "/v1/presence/twilio",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
    ] {
        assert!(paths.contains_key(path), "{path} missing from the OpenAPI document");
    }
    // Every error answer is documented as what it is on the wire: a
    // problem, and the statuses the layers before any handler answer.
    for (path, item) in &paths {
        for (method, operation) in item.as_object().unwrap() {
            let responses = operation["responses"].as_object().unwrap();
            let must: &[&str] = if path.starts_with("/v1/") {
                &["401", "404", "422", "429", "503"]
            } else {
                &["503"]
            };
            for status in must {
                assert!(responses.contains_key(*status), "{method} {path} lacks {status}");
            }
            for (status, response) in responses.iter().filter(|(s, _)| !s.starts_with('2')) {
                let types: Vec<&String> = response["content"].as_object().unwrap().keys().collect();
                assert_eq!(types, ["application/problem+json"], "{method} {path} {status}");
            }
        }
    }
    assert_eq!(app.send(Method::GET, "/readyz", None, None).await.ok()["status"], "ready");
    assert_eq!(
        app.send(Method::GET, "/healthz", None, None).await.ok()["database"],
        app.backend.name()
    );
}

/// The authorization matrix: every route × every role × own or someone
/// else's resource. An admitted caller never gets 401/403 (it may get 404,
/// 409 or 422 as the resource's state says); anyone else gets 403, and no
/// token gets 401. Public routes admit everyone.
async fn every_route_admits_exactly_the_callers_it_should(app: TestApp) {
    app.create_session("s1").await;
    let request = json!({"customer_id": "cust-1", "kind": "chat",
        "price": {"mode": "flat", "amount_cents": 500, "currency": "usd"},
        "candidate_provider_ids": ["prov-1"]});
    let r1 = app.post("/v1/requests", &app.service(), request).await.ok()["id"].clone();
    let r1 = r1.as_str().unwrap();
    // Callers: none, the session's and request's own parties, strangers of
    // the same roles, the platform and an admin.
    let callers: Vec<(&str, Option<String>)> = vec![
        ("anonymous", None),
        ("customer", Some(app.token(Role::Customer, "cust-1"))),
        ("other_customer", Some(app.token(Role::Customer, "cust-2"))),
        ("other_provider", Some(app.token(Role::Provider, "prov-2"))),
        ("provider", Some(app.token(Role::Provider, "prov-1"))),
        ("service", Some(app.service())),
        ("admin", Some(app.admin())),
    ];
    const PUBLIC: &[&str] = &[
        "anonymous",
        "customer",
        "other_customer",
        "other_provider",
        "provider",
        "service",
        "admin",
    ];
    const SIGNED_IN: &[&str] =
        &["customer", "other_customer", "other_provider", "provider", "service", "admin"];
    const PARTIES: &[&str] = &["customer", "provider"];
    const PARTIES_AND_PLATFORM: &[&str] = &["customer", "provider", "service", "admin"];
    const PLATFORM: &[&str] = &["service", "admin"];
    const ADMIN: &[&str] = &["admin"];
    let new_session = |n: &str| {
        json!({"id": format!("new-{n}"), "kind": "chat", "customer_id": "cust-1",
            "provider_id": "prov-1", "price": {"mode": "flat", "amount_cents": 1, "currency": "usd"}})
        .to_string()
    };
    let own_request = json!({"customer_id": "cust-1", "kind": "chat",
        "price": {"mode": "flat", "amount_cents": 500, "currency": "usd"},
        "candidate_provider_ids": ["prov-1"]})
    .to_string();
    let (read_request, accept) =
        (format!("/v1/requests/{r1}"), format!("/v1/requests/{r1}/accept"));
    let cases: Vec<(Method, &str, Option<String>, &[&str])> = vec![
        (Method::GET, "/healthz", None, PUBLIC),
        (Method::GET, "/readyz", None, PUBLIC),
        (Method::GET, "/openapi.json", None, PUBLIC),
        (Method::GET, "/metrics", None, PUBLIC),
        (Method::POST, "/v1/sessions", Some(new_session("x")), PLATFORM),
        (Method::GET, "/v1/sessions/s1", None, PARTIES_AND_PLATFORM),
        (Method::GET, "/v1/sessions/s1/events", None, PARTIES_AND_PLATFORM),
        (Method::POST, "/v1/sessions/s1/join", None, PARTIES),
        (Method::POST, "/v1/sessions/s1/heartbeat", None, PARTIES),
        (Method::POST, "/v1/sessions/s1/leave", None, PARTIES),
        (Method::POST, "/v1/sessions/s1/end", None, PARTIES_AND_PLATFORM),
        (Method::PUT, "/v1/users/cust-1", Some(json!({"display_name": "C"}).to_string()), PLATFORM),
        (Method::POST, "/v1/requests", Some(own_request), &["customer", "service"]),
        (Method::GET, &read_request, None, PARTIES_AND_PLATFORM),
        (Method::GET, "/v1/assignments?provider_id=prov-1", None, &["provider", "admin"]),
        (Method::GET, "/v1/payouts", None, PLATFORM),
        (Method::GET, "/v1/providers/prov-1/earnings", None, &["provider", "admin"]),
        (Method::POST, "/v1/admin/payouts/po_none/retry", None, ADMIN),
        (Method::GET, "/v1/notifications", None, SIGNED_IN),
        (Method::GET, "/v1/admin/outbox", None, ADMIN),
        (Method::GET, "/v1/admin/verify", None, ADMIN),
        (Method::GET, "/v1/admin/health", None, ADMIN),
        (Method::GET, "/v1/admin/health/hourly", None, ADMIN),
        (Method::GET, "/v1/admin/review", None, ADMIN),
        (Method::POST, "/v1/admin/repair?dry_run=true", None, ADMIN),
        (Method::POST, "/v1/admin/import", Some(String::new()), ADMIN),
        (Method::POST, "/v1/test-clock/advance", Some(json!({"seconds": 1}).to_string()), ADMIN),
        (Method::POST, &accept, Some("{}".into()), &["provider"]),
    ];
    let mut wrong = Vec::new();
    for (method, path, body, admitted) in &cases {
        for (caller, token) in &callers {
            let reply = app.send(method.clone(), path, token.as_deref(), body.as_deref()).await;
            let status = reply.status.as_u16();
            let expected = if admitted.contains(caller) {
                if matches!(status, 401 | 403) || status >= 500 { Some("admitted") } else { None }
            } else if token.is_none() {
                (status != 401).then_some("401")
            } else {
                (status != 403).then_some("403")
            };
            if let Some(expected) = expected {
                wrong.push(format!("{method} {path} as {caller}: {status}, expected {expected}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} cells wrong:\n{}",
        wrong.len(),
        cases.len() * callers.len(),
        wrong.join("\n")
    );
}
