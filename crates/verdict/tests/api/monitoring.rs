//! Verification, health, hourly scores, the review queue and /metrics.

use futures::future::join_all;
use reqwest::Method;
use serde_json::{Value, json};
use verdict_core::Role;

use crate::support::{TestApp, on_every_backend};

on_every_backend!(
    each_verification_section_finds_exactly_its_planted_anomaly,
    a_clean_marketplace_of_500_sessions_verifies_clean_from_the_command_line,
    health_of_a_known_mix_equals_the_hand_computed_figures,
    health_without_data_is_idle_at_100,
    stuck_sessions_and_dead_deliveries_lower_the_score,
    hourly_scores_and_the_review_queue_name_the_bad_hour_and_session,
    metrics_are_prometheus_text_with_the_documented_series,
    reports_into_a_closed_pipe_end_quietly,
    revenue_impact_is_told_per_currency,
);

/// A session with both parties present for `together` seconds, then ended.
async fn session(app: &TestApp, id: &str, together: i64) {
    app.create_session(id).await;
    if together >= 0 {
        app.join(id, &app.customer()).await.ok();
        app.join(id, &app.provider()).await.ok();
        app.advance(together).await;
    }
    app.end(id, &app.service(), None).await.ok();
}

/// The failing sections of a report, with their counts and samples.
fn failures(report: &Value) -> Vec<(String, i64, Value)> {
    report["sections"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|section| section["ok"] == false)
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_owned(),
                s["count"].as_i64().unwrap(),
                s["sample"].clone(),
            )
        })
        .collect()
}

async fn each_verification_section_finds_exactly_its_planted_anomaly(app: TestApp) {
    // Each plant on a database of its own, next to healthy sessions.
    type Plant = (&'static str, &'static str, Vec<&'static str>);
    let plants: Vec<Plant> = vec![
        (
            "misclassified_completed",
            "bad",
            vec![
                "UPDATE sessions SET status = 'completed', reason = 'completed', billable_seconds = 600, charged_cents = 2500 WHERE id = 'bad'",
                "INSERT INTO payouts (id, session_id, provider_id, amount_cents, currency, state, provider, created_at, updated_at) VALUES ('po_bad', 'bad', 'prov-1', 2000, 'usd', 'pending', 'manual', 0, 0)",
            ],
        ),
        (
            "misclassified_cancelled",
            "good",
            vec![
                "UPDATE sessions SET status = 'cancelled', reason = 'too_short' WHERE id = 'good'",
                "DELETE FROM payouts WHERE session_id = 'good'",
            ],
        ),
        (
            "missing_join_events",
            "noshow",
            vec!["UPDATE sessions SET reason = 'no_show_customer' WHERE id = 'noshow'"],
        ),
        (
            "timestamp_integrity",
            "noshow",
            vec!["UPDATE sessions SET ended_at = created_at - 1000 WHERE id = 'noshow'"],
        ),
        (
            "payout_accuracy",
            "good",
            vec!["UPDATE payouts SET amount_cents = amount_cents + 1 WHERE session_id = 'good'"],
        ),
        (
            "ledger_balance",
            "good",
            vec![
                "INSERT INTO ledger_lines (posting_id, account, amount_cents) SELECT id, 'platform_revenue', 1 FROM ledger_postings WHERE session_id = 'good'",
            ],
        ),
        (
            "outbox_health",
            "bad",
            vec![
                "UPDATE outbox SET state = 'dead' WHERE session_id = 'bad' AND topic = 'webhook:session.ended'",
            ],
        ),
    ];
    for (section, id, statements) in plants {
        let app = TestApp::spawn(app.backend, |_| {}).await;
        session(&app, "good", 120).await;
        session(&app, "bad", 30).await;
        session(&app, "noshow", -1).await;
        assert_eq!(failures(&app.verify().await), vec![], "clean before planting {section}");
        for statement in statements {
            app.sql(statement).await;
        }
        let report = app.verify().await;
        assert_eq!(report["ok"], false);
        assert_eq!(failures(&report), vec![(section.to_owned(), 1, json!([id]))], "{section}");
    }

    // Request consistency: a request left behind by its session.
    let app = TestApp::spawn(app.backend, |_| {}).await;
    let (request, session_id) = app.session_through_a_request().await;
    assert!(failures(&app.verify().await).is_empty());
    app.sql(&format!("UPDATE requests SET status = 'matched' WHERE id = '{request}'")).await;
    assert_eq!(
        failures(&app.verify().await),
        vec![("request_consistency".to_owned(), 1, json!([session_id]))]
    );

    // Stuck: past its join deadline by more than a minute, no sweeper ran.
    let app = TestApp::spawn(app.backend, |_| {}).await;
    app.create_session("forgotten").await;
    app.advance(900 + 60).await;
    assert!(failures(&app.verify().await).is_empty(), "exactly at the grace: not yet stuck");
    app.advance(1).await;
    assert_eq!(
        failures(&app.verify().await),
        vec![("stuck_sessions".to_owned(), 1, json!(["forgotten"]))]
    );

    // Schema: a migration missing.
    let app = TestApp::spawn(app.backend, |_| {}).await;
    app.sql(
        "DELETE FROM _sqlx_migrations WHERE version = (SELECT MAX(version) FROM _sqlx_migrations)",
    )
    .await;
    assert_eq!(failures(&app.verify().await), vec![("schema".to_owned(), 1, json!([]))]);
}

async fn a_clean_marketplace_of_500_sessions_verifies_clean_from_the_command_line(app: TestApp) {
    // 500 sessions of every outcome, through the API, in batches of 50.
    let (customer, provider, service) = (app.customer(), app.provider(), app.service());
    for batch in 0..10 {
        let ids: Vec<String> = (0..50).map(|n| format!("sim-{batch}-{n}")).collect();
        join_all(ids.iter().map(|id| app.create_session(id))).await;
        join_all(
            ids.iter()
                .enumerate()
                .filter(|(n, _)| n % 5 != 0)
                .map(|(_, id)| app.join(id, &customer)),
        )
        .await;
        join_all(
            ids.iter()
                .enumerate()
                .filter(|(n, _)| n % 7 != 0)
                .map(|(_, id)| app.join(id, &provider)),
        )
        .await;
        app.advance(30 + 20 * batch).await;
        join_all(ids.iter().map(|id| app.end(id, &service, None))).await;
    }
    let run = |json: bool| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_verdict"));
        command
            .arg("verify")
            .env("VERDICT_DATABASE_URL", &app.database_url)
            .current_dir(app.data_dir());
        if json {
            command.arg("--json");
        }
        command.output().expect("verdict verify runs")
    };
    let output = run(true);
    let report: Value = serde_json::from_slice(&output.stdout).expect("JSON on stdout");
    assert_eq!(report["sessions"], 500);
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(output.status.code(), Some(0));
    let statuses = &report["sections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "recent_activity")
        .unwrap()["detail"];
    assert!(
        statuses["completed"].as_i64().unwrap() > 100
            && statuses["cancelled"].as_i64().unwrap() > 50,
        "{statuses}"
    );

    // One anomaly: exit 1, and the table names it.
    app.sql("UPDATE payouts SET amount_cents = 1 WHERE session_id = (SELECT MIN(session_id) FROM payouts)").await;
    let output = run(false);
    assert_eq!(output.status.code(), Some(1));
    let table = String::from_utf8(output.stdout).unwrap();
    assert!(
        table.lines().any(|line| line.starts_with("payout_accuracy") && line.contains("FAIL")),
        "{table}"
    );
}

/// Money at stake in two currencies is never one sum on the dashboard:
/// each amount carries its currency.
async fn revenue_impact_is_told_per_currency(app: TestApp) {
    session(&app, "over-usd", 30).await;
    session(&app, "over-eur", 30).await;
    app.sql("UPDATE sessions SET status = 'completed', reason = 'completed', charged_cents = 2500 WHERE id IN ('over-usd', 'over-eur')").await;
    app.sql("UPDATE sessions SET currency = 'eur', charged_cents = 3000 WHERE id = 'over-eur'")
        .await;
    let report = app.health("").await;
    assert_eq!(
        report["revenue_impact"]["by_currency"],
        json!([{"currency": "eur", "underbilled_cents": 0, "overbilled_cents": 3000},
               {"currency": "usd", "underbilled_cents": 0, "overbilled_cents": 2500}])
    );
    let page = app
        .send(Method::GET, "/admin/sessions/session-health/panel", Some(&app.admin()), None)
        .await;
    let html = page.body.as_str().unwrap_or_else(|| panic!("HTML: {}", page.body)).to_owned();
    assert!(html.contains("30.00 eur") && html.contains("25.00 usd"), "{html}");
    assert!(!html.contains("55.00"), "never one sum of two currencies");
}

async fn health_of_a_known_mix_equals_the_hand_computed_figures(app: TestApp) {
    // 16 completed of 61..=76 s, one too-short (30 s) stored as completed,
    // 2 no-shows, 1 too-short (45 s): 20 ended, 19 clean.
    for n in 0..16 {
        session(&app, &format!("c{n}"), 61 + n).await;
    }
    session(&app, "planted", 30).await;
    session(&app, "ns1", -1).await;
    session(&app, "ns2", -1).await;
    session(&app, "short", 45).await;
    app.sql("UPDATE sessions SET status = 'completed', reason = 'completed', charged_cents = 2500 WHERE id = 'planted'").await;
    app.sql("INSERT INTO payouts (id, session_id, provider_id, amount_cents, currency, state, provider, created_at, updated_at) VALUES ('po_planted', 'planted', 'prov-1', 2000, 'usd', 'pending', 'manual', 0, 0)").await;

    let report = app.health("").await;
    assert_eq!(report["window_hours"], 24);
    assert_eq!(report["ended"], 20);
    assert_eq!(report["score"], 95.0, "100 × 19 / 20");
    assert_eq!(report["label"], "excellent");
    let metrics = &report["metrics"];
    assert_eq!(metrics["completion_rate"], 0.85);
    assert_eq!(metrics["no_show_rate"], 0.1);
    assert_eq!(metrics["too_short_rate"], 0.05);
    // Billable: 61..=76, 30, 0, 0, 45 → sum 1096 + 75 = 1171 over 20.
    assert_eq!(metrics["avg_billable_seconds"], 58.55);
    // Sorted: 0 0 30 45 61 … 76; nearest rank 10 → 66, rank 18 → 74.
    assert_eq!(metrics["p50_billable_seconds"], 66);
    assert_eq!(metrics["p90_billable_seconds"], 74);
    assert_eq!(report["status_distribution"], json!({"completed": 17, "cancelled": 3}));
    assert_eq!(
        report["alerts"],
        json!([{"kind": "misclassified_completed", "severity": "critical", "count": 1, "session_ids": ["planted"]}])
    );
    assert_eq!(
        report["revenue_impact"],
        json!({"underbilled_cents": 0, "overbilled_cents": 2500,
               "by_currency": [{"currency": "usd", "underbilled_cents": 0, "overbilled_cents": 2500}]})
    );

    // A one-hour window two days later holds nothing.
    app.advance(48 * 3600).await;
    let later = app.health("?window_hours=1").await;
    assert_eq!((later["ended"].as_i64(), later["label"].as_str()), (Some(0), Some("idle")));
    app.get("/v1/admin/health?window_hours=0", &app.admin()).await.problem(422);
    app.get("/v1/admin/health", &app.service()).await.problem(403);
}

async fn health_without_data_is_idle_at_100(app: TestApp) {
    let report = app.health("").await;
    assert_eq!((report["score"].as_f64(), report["label"].as_str()), (Some(100.0), Some("idle")));
    assert_eq!(report["alerts"], json!([]));
}

async fn stuck_sessions_and_dead_deliveries_lower_the_score(app: TestApp) {
    for n in 0..10 {
        session(&app, &format!("ok{n}"), 90).await;
    }
    app.create_session("forgotten").await;
    app.sql("UPDATE outbox SET state = 'dead' WHERE session_id = 'ok0' AND topic = 'webhook:session.ended'").await;
    app.advance(1000).await;
    let report = app.health("").await;
    // 100 × 10 / 10 − 2 × 1 stuck − 5 × 1 dead.
    assert_eq!(report["score"], 93.0);
    assert_eq!(report["label"], "good");
    let kinds: Vec<&str> =
        report["alerts"].as_array().unwrap().iter().map(|a| a["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["stuck_sessions", "dead_deliveries"]);
}

async fn hourly_scores_and_the_review_queue_name_the_bad_hour_and_session(app: TestApp) {
    session(&app, "early", 120).await;
    app.advance(3 * 3600).await;
    session(&app, "late", 120).await;
    session(&app, "wrong", 20).await;
    app.sql("UPDATE sessions SET status = 'completed', reason = 'completed', charged_cents = 2500 WHERE id = 'wrong'").await;
    app.sql("INSERT INTO payouts (id, session_id, provider_id, amount_cents, currency, state, provider, created_at, updated_at) VALUES ('po_wrong', 'wrong', 'prov-1', 2000, 'usd', 'pending', 'manual', 0, 0)").await;
    app.advance(60).await;

    let hourly = app.get("/v1/admin/health/hourly?hours=6", &app.admin()).await.ok().clone();
    let items = hourly["items"].as_array().unwrap();
    assert_eq!(items.len(), 6);
    let figures: Vec<(i64, f64)> = items
        .iter()
        .map(|h| (h["ended"].as_i64().unwrap(), h["score"].as_f64().unwrap()))
        .collect();
    assert_eq!(figures[5], (2, 50.0), "this hour: one of two wrong");
    assert_eq!(figures[2], (1, 100.0), "three hours ago: the early one");
    assert_eq!(figures.iter().map(|f| f.0).sum::<i64>(), 3);
    assert_eq!(items[0]["label"], "idle");

    let review = app.get("/v1/admin/review?limit=1", &app.admin()).await.ok().clone();
    assert_eq!(review["items"][0]["session"]["id"], "wrong");
    assert_eq!(review["items"][0]["reasons"], json!(["misclassified_completed"]));
    let next = review["next_cursor"].as_str().expect("a full page has a cursor").to_owned();
    let rest = app.get(&format!("/v1/admin/review?after={next}"), &app.admin()).await.ok().clone();
    assert_eq!(rest["items"], json!([]));
    assert_eq!(rest["next_cursor"], Value::Null);
    app.get("/v1/admin/review", &app.token(Role::Provider, "prov-1")).await.problem(403);

    // A posting of `late` unbalanced behind the store's back is a reason
    // too (the queue's pages carry no ledger sums: it asks per page).
    app.sql("INSERT INTO ledger_lines (posting_id, account, amount_cents) SELECT id, 'platform_revenue', 1 FROM ledger_postings WHERE session_id = 'late'").await;
    let review = app.get("/v1/admin/review", &app.admin()).await.ok().clone();
    let listed: Vec<(&str, Value)> = review["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| (item["session"]["id"].as_str().unwrap(), item["reasons"].clone()))
        .collect();
    assert_eq!(
        listed,
        [("late", json!(["ledger_balance"])), ("wrong", json!(["misclassified_completed"]))]
    );
}

async fn metrics_are_prometheus_text_with_the_documented_series(app: TestApp) {
    session(&app, "m1", 120).await;
    app.worker(|_| {}).try_sweep().await.unwrap();
    app.health("").await;
    let response = app.client.get(format!("{}/metrics", app.base)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let text = response.text().await.unwrap();
    let lines = text.lines().map(|line| Ok(line.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text");
    let series =
        |name: &str| scrape.samples.iter().filter(|s| s.metric == name).collect::<Vec<_>>();
    let requests = series("verdict_http_requests_total");
    assert!(
        requests.iter().any(|s| s.labels.get("route") == Some("/v1/sessions/:id/end")
            && s.labels.get("status") == Some("200")),
        "per-route request counts:\n{text}"
    );
    let durations = series("verdict_http_request_duration_seconds");
    assert!(
        durations.iter().any(|s| matches!(s.value, prometheus_parse::Value::Histogram(_))),
        "latency histogram"
    );
    let ended = series("verdict_sessions_ended_total");
    assert!(ended.iter().any(|s| s.labels.get("status") == Some("completed")
        && s.labels.get("reason") == Some("completed")));
    for name in [
        "verdict_outbox_pending",
        "verdict_outbox_dead",
        "verdict_sweeper_runs_total",
        "verdict_health_score",
    ] {
        assert!(!series(name).is_empty(), "{name} missing from:\n{text}");
    }
}

/// `verdict verify | head`: when the reader has gone, the report ends
/// quietly with the command's own exit code, not a panic.
async fn reports_into_a_closed_pipe_end_quietly(app: TestApp) {
    session(&app, "piped", 600).await;
    for arguments in [&["verify", "--json"][..], &["verify"], &["repair", "--json"], &["repair"]] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_verdict"))
            .args(arguments)
            .env("VERDICT_DATABASE_URL", &app.database_url)
            .current_dir(app.data_dir())
            .stdout(writer)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(0), "{arguments:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{arguments:?}: {stderr}");
    }
}
