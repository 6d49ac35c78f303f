//! `verdict simulate` against a test server: its report matches what the
//! server recorded.

use serde_json::{Value, json};

use crate::support::{SECRET, TestApp, on_every_backend};

on_every_backend!(a_simulation_reports_what_the_server_recorded);

/// Runs `verdict simulate --json` against the app; its report.
async fn simulate(app: &TestApp, arguments: &[&str]) -> Value {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_verdict"))
        .args(["simulate", "--url", &app.base, "--json"])
        .args(arguments)
        .env("VERDICT_JWT_SECRET", SECRET)
        .current_dir(app.data_dir())
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

async fn a_simulation_reports_what_the_server_recorded(app: TestApp) {
    let report = simulate(
        &app,
        &[
            "--sessions",
            "60",
            "--concurrency",
            "8",
            "--repeat-ends",
            "1",
            "--mix",
            "together=5,customer-only=2,provider-only=2,nobody=1",
        ],
    )
    .await;
    let operations = &report["operations"];
    let count = |operation: &str| operations[operation]["count"].as_u64().unwrap_or(0);
    let errors = |operation: &str| operations[operation]["errors"].as_u64().unwrap_or(0);
    assert_eq!(report["sessions"], 60);
    for operation in ["create", "join", "end", "end_again"] {
        assert_eq!(errors(operation), 0, "{operation}: {report}");
    }
    assert_eq!((count("create"), count("end"), count("end_again")), (60, 60, 60));
    let scenario = |name: &str| report["scenarios"][name].as_u64().unwrap_or(0);
    assert_eq!(
        scenario("together")
            + scenario("customer-only")
            + scenario("provider-only")
            + scenario("nobody"),
        60
    );
    assert_eq!(
        count("join"),
        2 * scenario("together") + scenario("customer-only") + scenario("provider-only")
    );
    for operation in ["create", "end"] {
        let stats = &operations[operation];
        assert!(stats["p50_ms"].as_f64().unwrap() <= stats["p99_ms"].as_f64().unwrap());
        assert!(stats["p99_ms"].as_f64().unwrap() <= stats["max_ms"].as_f64().unwrap());
    }

    // The server recorded exactly that: 60 sessions, one end each, and the
    // outcomes the report counted.
    let counts = app.counts().await;
    assert_eq!(counts["sessions"], 60);
    let ended: i64 =
        app.sql_count("SELECT COUNT(*) FROM session_events WHERE type = 'ended'").await;
    assert_eq!(ended, 60);
    let health = app.get("/v1/admin/health", &app.admin()).await.ok().clone();
    let mut outcomes = report["outcomes"].clone();
    outcomes.as_object_mut().unwrap().retain(|_, count| count != &json!(0));
    assert_eq!(health["status_distribution"], outcomes, "{report}");

    // Ends apart: every session prepared first, then all ended; the same
    // accounting, and ends timed over their own pass.
    // Repeated ends come in a third pass, timed alone, and change nothing.
    let apart = simulate(
        &app,
        &["--sessions", "40", "--concurrency", "8", "--ends-apart", "--repeat-ends", "2"],
    )
    .await;
    assert_eq!(apart["ends_apart"], true);
    assert_eq!(apart["operations"]["create"]["count"], 40);
    assert_eq!(apart["operations"]["end"]["count"], 40);
    assert_eq!(apart["operations"]["end"]["errors"], 0);
    assert_eq!(apart["operations"]["end_again"]["count"], 80);
    assert_eq!(apart["operations"]["end_again"]["errors"], 0);
    assert!(apart["operations"]["end"]["per_second"].as_f64().unwrap() > 0.0);
    assert_eq!(app.counts().await["sessions"], 100);
    let ended: i64 =
        app.sql_count("SELECT COUNT(*) FROM session_events WHERE type = 'ended'").await;
    assert_eq!(ended, 100);
    let health = app.get("/v1/admin/health", &app.admin()).await.ok().clone();
    let total: u64 =
        apart["outcomes"].as_object().unwrap().values().map(|n| n.as_u64().unwrap()).sum();
    assert_eq!(total, 40);
    for (status, count) in health["status_distribution"].as_object().unwrap() {
        let expected = report["outcomes"][status].as_u64().unwrap_or(0)
            + apart["outcomes"][status].as_u64().unwrap_or(0);
        assert_eq!(count.as_u64().unwrap(), expected, "{status}");
    }
}
