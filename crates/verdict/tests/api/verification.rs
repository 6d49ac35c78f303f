//! Issue 27, items 4–6: the `metadata_consistency` section, the review
//! queue's filters and total, the import that keeps the old system's
//! fields in `metadata`, and who may frame the dashboard.

use serde_json::{Value, json};

use crate::history::{line, met, paid};
use crate::support::{Backend, TestApp, on_every_backend, section};

on_every_backend!(
    metadata_consistency_catches_receipts_corrupted_behind_the_stores_back,
    the_review_queue_filters_by_reason_and_kind_and_totals_from_the_last_full_pass,
    an_imported_line_keeps_started_at_and_with_the_flag_any_unknown_field_in_metadata,
    the_command_line_keeps_unknown_fields_only_when_told,
);

/// A session of `kind` for `customer`, both present a minute, then ended.
async fn met_and_ended(app: &TestApp, id: &str, kind: &str) {
    let body = json!({
        "id": id, "kind": kind, "customer_id": "cust-1", "provider_id": "prov-1",
        "price": {"mode": "flat", "amount_cents": 2500, "currency": "usd"}
    });
    app.post("/v1/sessions", &app.service(), body).await.ok();
    app.join(id, &app.customer()).await.ok();
    app.join(id, &app.provider()).await.ok();
    app.advance(90).await;
    app.end(id, &app.service(), None).await.ok();
}

async fn metadata_consistency_catches_receipts_corrupted_behind_the_stores_back(app: TestApp) {
    met_and_ended(&app, "s-notice", "video").await;
    met_and_ended(&app, "s-webhook", "video").await;
    met_and_ended(&app, "s-clean", "video").await;
    let (request, from_request) = app.session_through_a_request().await;
    // Imported history has no receipts of its own: judged by the others.
    let history = line("h-1", "completed", Some("completed"), met(), paid(3200));
    assert_eq!(app.import("", &[history]).await.ok()["imported"], 1);

    let clean = app.verify().await;
    let receipts = section(&clean, "metadata_consistency");
    assert_eq!(
        (&receipts["ok"], &receipts["count"], &receipts["severity"]),
        (&json!(true), &json!(0), &json!("warning")),
        "{clean}"
    );
    assert_eq!(clean["ok"], true, "a clean run is clean: {clean}");

    app.sql(
        "DELETE FROM notifications WHERE session_id = 's-notice' AND recipient_role = 'provider'",
    )
    .await;
    app.sql(
        "UPDATE outbox SET topic = 'webhook:session.started' \
         WHERE session_id = 's-webhook' AND topic = 'webhook:session.ended'",
    )
    .await;
    app.sql(&format!("UPDATE requests SET price_amount_cents = 99 WHERE id = '{request}'")).await;
    let report = app.verify().await;
    let receipts = section(&report, "metadata_consistency");
    let mut expected = vec![from_request.clone(), "s-notice".to_owned(), "s-webhook".to_owned()];
    expected.sort();
    assert_eq!((&receipts["ok"], &receipts["count"]), (&json!(false), &json!(3)), "{report}");
    assert_eq!(receipts["sample"], json!(expected));
    assert_eq!(report["ok"], false);
    // Only this section fails: the corruption touched receipts alone.
    let failing: Vec<&Value> = report["sections"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|section| section["ok"] == false)
        .map(|section| &section["name"])
        .collect();
    assert_eq!(failing, vec![&json!("metadata_consistency")]);

    // The health pass raises it for the window, like the other sections.
    let health = app.get("/v1/admin/health", &app.admin()).await.ok().clone();
    let alert = health["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|alert| alert["kind"] == "metadata_consistency")
        .unwrap_or_else(|| panic!("no metadata_consistency alert in {health}"))
        .clone();
    assert_eq!((&alert["count"], &alert["session_ids"]), (&json!(3), &json!(expected)));

    // `verdict verify` says so too, and exits 1.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_verdict"))
        .args(["verify", "--json"])
        .env("VERDICT_DATABASE_URL", &app.database_url)
        .current_dir(app.data_dir())
        .output()
        .expect("verdict verify runs");
    assert_eq!(output.status.code(), Some(1), "{}", String::from_utf8_lossy(&output.stderr));
    let printed: Value = serde_json::from_slice(&output.stdout).expect("JSON on stdout");
    assert_eq!(section(&printed, "metadata_consistency")["count"], 3);

    // A session whose every outbox row is gone is caught too.
    app.sql("DELETE FROM outbox WHERE session_id = 's-clean'").await;
    let report = app.verify().await;
    assert_eq!(section(&report, "metadata_consistency")["count"], 4);
}

async fn the_review_queue_filters_by_reason_and_kind_and_totals_from_the_last_full_pass(
    app: TestApp,
) {
    met_and_ended(&app, "v-receipts", "video").await;
    met_and_ended(&app, "c-receipts", "chat").await;
    met_and_ended(&app, "v-clean", "video").await;
    // A no-show recorded as completed: misclassified, video.
    app.create_session("v-wrong").await;
    app.end("v-wrong", &app.service(), None).await.ok();
    app.sql(
        "UPDATE sessions SET status = 'completed', reason = 'completed', billable_seconds = 600 \
         WHERE id = 'v-wrong'",
    )
    .await;
    app.sql(
        "DELETE FROM notifications WHERE session_id = 'v-receipts' OR session_id = 'c-receipts'",
    )
    .await;
    let report = app.verify().await;
    assert_eq!(section(&report, "metadata_consistency")["count"], 2, "{report}");

    let page = |query: &'static str| {
        let app = &app;
        async move { app.get(&format!("/v1/admin/review{query}"), &app.admin()).await }
    };
    let ids = |page: &Value| -> Vec<String> {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|item| item["session"]["id"].as_str().unwrap().to_owned())
            .collect()
    };

    let all = page("").await.ok().clone();
    assert_eq!(ids(&all), ["c-receipts", "v-receipts", "v-wrong"], "{all}");
    assert_eq!(all["total"], 3, "{all}");
    let as_of = all["as_of"].as_str().expect("as_of, RFC 3339").to_owned();
    assert!(as_of.ends_with('Z'), "{as_of}");
    assert_eq!(all["items"][0]["reasons"], json!(["metadata_consistency"]));

    let receipts = page("?reason=metadata_consistency").await.ok().clone();
    assert_eq!(ids(&receipts), ["c-receipts", "v-receipts"]);
    assert_eq!(receipts["total"], 2);
    let chat = page("?kind=chat").await.ok().clone();
    assert_eq!((ids(&chat), &chat["total"]), (vec!["c-receipts".to_owned()], &json!(1)));
    let video_wrong = page("?kind=video&reason=misclassified_completed").await.ok().clone();
    assert_eq!((ids(&video_wrong), &video_wrong["total"]), (vec!["v-wrong".to_owned()], &json!(1)));
    let none = page("?kind=diagnostic").await.ok().clone();
    assert_eq!((ids(&none), &none["total"]), (Vec::<String>::new(), &json!(0)));
    let first = page("?limit=1").await.ok().clone();
    assert_eq!((ids(&first), &first["total"]), (vec!["c-receipts".to_owned()], &json!(3)));

    // Unknown values: a precise 422, nothing counted.
    let bad = page("?reason=everything").await.problem(422);
    assert!(bad.contains("metadata_consistency"), "{bad}");
    let bad = page("?kind=car").await.problem(422);
    assert!(bad.contains("video, chat, diagnostic"), "{bad}");

    // The total is the last full pass's, never counted per request: a new
    // fault shows in the items at once, in the total after the next pass.
    app.sql("DELETE FROM notifications WHERE session_id = 'v-clean'").await;
    app.advance(60).await;
    let before_pass = page("?reason=metadata_consistency").await.ok().clone();
    assert_eq!(ids(&before_pass).len(), 3);
    assert_eq!((&before_pass["total"], &before_pass["as_of"]), (&json!(2), &json!(as_of)));
    app.verify().await;
    let after_pass = page("?reason=metadata_consistency").await.ok().clone();
    assert_eq!(after_pass["total"], 3);
    assert!(after_pass["as_of"].as_str().unwrap() > as_of.as_str(), "{after_pass}");
    assert_eq!(page("").await.ok()["total"], 4);
}

/// A line as the old system exported it: its own `started_at` (a minute
/// before verdict's presence says both were there) and a column of its own.
fn old_system_line(id: &str, extra: bool) -> String {
    let mut value: Value =
        serde_json::from_str(&line(id, "completed", Some("completed"), met(), json!([]))).unwrap();
    value["started_at"] = json!("2026-01-10T10:04:00Z");
    if extra {
        value["legacy_ticket"] = json!("T-991");
    }
    value.to_string()
}

async fn import_with_flag(app: &TestApp, query: &str, lines: &[String]) -> Value {
    let reply = app.import(query, lines).await;
    assert_eq!(reply.status, 200);
    reply.body
}

async fn an_imported_line_keeps_started_at_and_with_the_flag_any_unknown_field_in_metadata(
    app: TestApp,
) {
    // Without the flag: started_at is known and kept, an unknown field is
    // rejected by name and nothing of its line stored.
    let summary = import_with_flag(
        &app,
        "",
        &[old_system_line("h-start", false), old_system_line("h-extra", true)],
    )
    .await;
    assert_eq!((&summary["imported"], &summary["rejected_total"]), (&json!(1), &json!(1)));
    let rejection = summary["rejected"][0]["error"].as_str().unwrap();
    assert_eq!(summary["rejected"][0]["line"], 2);
    assert!(rejection.contains("unknown field `legacy_ticket`"), "{rejection}");
    assert_eq!(app.get("/v1/sessions/h-extra", &app.admin()).await.status, 404);
    let session = app.get("/v1/sessions/h-start", &app.admin()).await.ok().clone();
    assert_eq!(session["metadata"], json!({"started_at": "2026-01-10T10:04:00Z"}));
    assert_eq!(session["started_at"], "2026-01-10T10:05:00.000Z", "verdict's own: from presence");

    // With it: both kept, the rest of the line as without.
    let summary =
        import_with_flag(&app, "?keep_unknown_fields=true", &[old_system_line("h-extra", true)])
            .await;
    assert_eq!((&summary["imported"], &summary["rejected_total"]), (&json!(1), &json!(0)));
    let session = app.get("/v1/sessions/h-extra", &app.admin()).await.ok().clone();
    assert_eq!(
        session["metadata"],
        json!({"started_at": "2026-01-10T10:04:00Z", "legacy_ticket": "T-991"})
    );
    assert_eq!(session["started_at"], "2026-01-10T10:05:00.000Z");
    assert_eq!(session["billable_seconds"], 1200);

    // A known field still has to be right with the flag, and a started_at
    // that is no instant is refused by name.
    let mut bad: Value = serde_json::from_str(&old_system_line("h-bad", true)).unwrap();
    bad["started_at"] = json!("yesterday");
    let summary = import_with_flag(&app, "?keep_unknown_fields=true", &[bad.to_string()]).await;
    assert_eq!(summary["rejected"][0]["error"], "started_at: must be an RFC 3339 timestamp");
    let response = app
        .client
        .post(format!("{}/v1/admin/import?keep_unknown_fields=maybe", app.base))
        .bearer_auth(app.admin())
        .body(old_system_line("h-never", true))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 422, "a flag that is no boolean");
    assert_eq!(app.get("/v1/sessions/h-never", &app.admin()).await.status, 404);

    // The dashboard's session page shows the metadata.
    let page = app
        .client
        .get(format!("{}/admin/sessions/h-extra", app.base))
        .bearer_auth(app.admin())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("id=\"metadata\""), "{page}");
    assert!(page.contains("data-field=\"legacy_ticket\">T-991<"), "{page}");
    assert!(page.contains("data-field=\"started_at\">2026-01-10T10:04:00Z<"), "{page}");
}

async fn the_command_line_keeps_unknown_fields_only_when_told(app: TestApp) {
    let path = app.data_dir().join("old.ndjson");
    std::fs::write(&path, old_system_line("h-cli", true)).unwrap();
    let run = |flags: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_verdict"))
            .arg("import")
            .args(flags)
            .arg(&path)
            .env("VERDICT_DATABASE_URL", &app.database_url)
            .current_dir(app.data_dir())
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        serde_json::from_slice::<Value>(&output.stdout).unwrap()
    };
    let refused = run(&[]);
    assert_eq!(refused["imported"], 0);
    let error = refused["rejected"][0]["error"].as_str().unwrap();
    assert!(error.contains("unknown field `legacy_ticket`"), "{error}");
    let kept = run(&["--keep-unknown-fields"]);
    assert_eq!(kept["imported"], 1, "{kept}");
    let session = app.get("/v1/sessions/h-cli", &app.admin()).await.ok().clone();
    assert_eq!(
        session["metadata"],
        json!({"started_at": "2026-01-10T10:04:00Z", "legacy_ticket": "T-991"})
    );
}

/// `dashboard_frame_ancestors`: by default nobody may frame the pages
/// (`frame-ancestors 'none'` and `X-Frame-Options: DENY`); set, the CSP
/// names the admin shell and `X-Frame-Options` is left out; the cookie
/// stays `SameSite=Strict` either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_may_be_framed_only_by_the_configured_ancestors() {
    let shell = "'self' https://admin.example.com";
    for (setting, frame_ancestors, x_frame_options) in [
        (None, "frame-ancestors 'none';", Some("DENY")),
        (Some(shell), "frame-ancestors 'self' https://admin.example.com;", None),
    ] {
        let app = TestApp::spawn(Backend::Sqlite, |config| {
            if let Some(setting) = setting {
                config.dashboard_frame_ancestors = setting.to_owned();
            }
        })
        .await;
        for path in ["/admin/sessions/session-health", "/admin/sign-in"] {
            let response = app
                .client
                .get(format!("{}{path}", app.base))
                .bearer_auth(app.admin())
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200, "{path}");
            let headers = response.headers();
            let csp = headers["content-security-policy"].to_str().unwrap();
            assert!(csp.contains(frame_ancestors), "{path}: {csp}");
            assert_eq!(
                headers.get("x-frame-options").map(|value| value.to_str().unwrap()),
                x_frame_options,
                "{path}"
            );
        }
        let browser =
            reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        let signed_in = browser
            .post(format!("{}/admin/sign-in", app.base))
            .form(&[("token", app.admin())])
            .send()
            .await
            .unwrap();
        let cookie = signed_in.headers()["set-cookie"].to_str().unwrap().to_owned();
        assert!(cookie.contains("SameSite=Strict"), "{cookie}");
    }
}

/// A value that is not a `frame-ancestors` source list stops `serve` with
/// exit 2, naming the key, before anything is opened.
#[test]
fn a_garbage_frame_ancestors_value_stops_serve_with_exit_2() {
    for garbage in ["'self'; script-src *", "https://a.example\nX-Evil: 1", "", "'unsafe-inline'"] {
        let dir = tempfile::tempdir().unwrap();
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_verdict"))
            .arg("serve")
            .env_clear()
            .env("VERDICT_BIND", "127.0.0.1:0")
            .env("VERDICT_JWT_SECRET", "a-test-secret-of-32-bytes-or-more-0123")
            .env("VERDICT_DASHBOARD_FRAME_ANCESTORS", garbage)
            .current_dir(dir.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{garbage:?}: {stderr}");
        assert!(stderr.contains("dashboard_frame_ancestors"), "{garbage:?}: {stderr}");
        assert!(!dir.path().join("verdict-data").exists(), "nothing opened for {garbage:?}");
    }
}
