//! Repair of imported history beyond re-deciding a terminal session:
//! imported sessions still open, and money wrong under a right status.

use serde_json::{Value, json};

use crate::history::{joined, left, line, paid};
use crate::support::{TestApp, on_every_backend, section};

on_every_backend!(
    an_imported_open_session_is_ended_by_repair_not_by_the_sweeper,
    a_paid_cancelled_session_is_reversed_though_its_status_is_right,
    missing_evidence_is_listed_for_review_and_applied_only_when_asked,
);

async fn repair(app: &TestApp, query: &str) -> Value {
    app.post(&format!("/v1/admin/repair?{query}"), &app.admin(), json!({})).await.ok().clone()
}

async fn an_imported_open_session_is_ended_by_repair_not_by_the_sweeper(app: TestApp) {
    let history = vec![
        // Both there 10:05–10:25, the customer's leave never recorded.
        line(
            "hist-live",
            "live",
            None,
            json!([
                joined("customer", "10:05:00"),
                joined("provider", "10:05:00"),
                left("provider", "10:25:00")
            ]),
            json!([]),
        ),
        line("hist-waiting", "waiting", None, json!([]), json!([])),
        // Waiting, yet the old system paid it.
        line("hist-paid-waiting", "waiting", None, json!([]), paid(3200)),
    ];
    app.import("", &history).await.ok();
    let outbox_before = app.sql_count("SELECT COUNT(*) FROM outbox").await;

    let report = app.worker(|_| {}).try_sweep().await.unwrap();
    assert!(report.ended.is_empty(), "history is not traffic: {:?}", report.ended);
    assert_eq!(app.sql_count("SELECT COUNT(*) FROM outbox").await, outbox_before);
    let stuck = section(&app.verify().await, "stuck_sessions").clone();
    assert_eq!(stuck["count"], 3, "{stuck}");

    let expected = json!([
        {"session_id": "hist-live", "from": {"status": "live", "reason": null},
         "to": {"status": "completed", "reason": "completed"}, "money_effect_cents": 4000},
        {"session_id": "hist-paid-waiting", "from": {"status": "waiting", "reason": null},
         "to": {"status": "expired", "reason": "no_show_both"}, "money_effect_cents": 0},
        {"session_id": "hist-waiting", "from": {"status": "waiting", "reason": null},
         "to": {"status": "expired", "reason": "no_show_both"}, "money_effect_cents": 0},
    ]);
    let counts = app.counts().await;
    let plan = repair(&app, "dry_run=true").await;
    assert_eq!(plan["changes"], expected);
    assert_eq!(app.counts().await, counts, "a dry run changes nothing");

    let applied = repair(&app, "dry_run=false").await;
    assert_eq!(applied["changes"], expected);
    let live = app.get("/v1/sessions/hist-live", &app.admin()).await.ok().clone();
    assert_eq!(
        (live["status"].as_str(), live["billable_seconds"].as_i64()),
        (Some("completed"), Some(1200))
    );
    let payouts =
        app.get("/v1/payouts?session_id=hist-live", &app.admin()).await.ok()["items"].clone();
    assert_eq!(payouts[0]["amount_cents"], 3200);
    // The money only: no receipts, no webhooks about history.
    let topics: Vec<String> = app.get("/v1/admin/outbox", &app.admin()).await.ok()["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["topic"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        topics.iter().all(|topic| !topic.starts_with("email:") && !topic.starts_with("webhook:")),
        "{topics:?}"
    );
    assert!(topics.contains(&"payout.reversal".to_owned()), "{topics:?}");
    // What the old system paid for a session that never happened is reversed.
    let reversed =
        app.get("/v1/payouts?session_id=hist-paid-waiting", &app.admin()).await.ok()["items"][0]
            .clone();
    assert!(reversed["reversed_at"].is_string(), "{reversed}");
    let events = app.events("hist-live").await;
    let corrected: Vec<&Value> = events.iter().filter(|e| e["type"] == "corrected").collect();
    assert_eq!(corrected.len(), 1);
    assert_eq!(corrected[0]["actor"], json!({"role": "system", "id": "repair"}));

    let report = app.get("/v1/admin/verify", &app.admin()).await.ok().clone();
    assert_eq!(report["ok"], true, "{report}");
    let counts = app.counts().await;
    assert_eq!(repair(&app, "dry_run=false").await["changes"], json!([]));
    assert_eq!(app.counts().await, counts, "a second repair changes nothing");
}

async fn a_paid_cancelled_session_is_reversed_though_its_status_is_right(app: TestApp) {
    let history = vec![
        line("paid-cancelled", "cancelled", Some("no_show_both"), json!([]), paid(3200)),
        line("paid-expired", "expired", Some("no_show_both"), json!([]), paid(1000)),
        line("right", "cancelled", Some("no_show_both"), json!([]), json!([])),
    ];
    app.import("", &history).await.ok();
    let accuracy = section(&app.verify().await, "payout_accuracy").clone();
    assert_eq!(accuracy["count"], 2, "{accuracy}");

    let expected = json!([
        {"session_id": "paid-cancelled", "from": {"status": "cancelled", "reason": "no_show_both"},
         "to": {"status": "cancelled", "reason": "no_show_both"}, "money_effect_cents": 0},
        {"session_id": "paid-expired", "from": {"status": "expired", "reason": "no_show_both"},
         "to": {"status": "expired", "reason": "no_show_both"}, "money_effect_cents": 0},
    ]);
    let counts = app.counts().await;
    assert_eq!(repair(&app, "dry_run=true").await["changes"], expected);
    assert_eq!(app.counts().await, counts, "a dry run changes nothing");
    assert_eq!(repair(&app, "dry_run=false").await["changes"], expected);
    for id in ["paid-cancelled", "paid-expired"] {
        let payout =
            app.get(&format!("/v1/payouts?session_id={id}"), &app.admin()).await.ok()["items"][0]
                .clone();
        assert!(payout["reversed_at"].is_string(), "{payout}");
        crate::reversals::assert_books_net_to_zero(&app, id).await;
        let session = app.get(&format!("/v1/sessions/{id}"), &app.admin()).await.ok().clone();
        assert_eq!(session["reason"], "no_show_both");
    }
    let report = app.get("/v1/admin/verify", &app.admin()).await.ok().clone();
    assert_eq!(report["ok"], true, "{report}");
    let counts = app.counts().await;
    assert_eq!(repair(&app, "dry_run=false").await["changes"], json!([]));
    assert_eq!(app.counts().await, counts, "a second repair changes nothing");
}

fn cli(app: &TestApp, arguments: &[&str]) -> Value {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_verdict"))
        .args(arguments)
        .env("VERDICT_DATABASE_URL", &app.database_url)
        .current_dir(app.data_dir())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{arguments:?}: {stderr}");
    serde_json::from_slice(&output.stdout).unwrap()
}

async fn missing_evidence_is_listed_for_review_and_applied_only_when_asked(app: TestApp) {
    let history = vec![
        // Paid, the provider's join missing: nothing says it did not
        // happen but an absence.
        line(
            "paid-noshow",
            "completed",
            Some("completed"),
            json!([joined("customer", "10:01:00")]),
            paid(3200),
        ),
        // No presence exported at all.
        line("no-events", "completed", Some("completed"), json!([]), paid(3200)),
        // Cancelled with a payout, its joins missing too.
        line("paid-short", "cancelled", Some("too_short"), json!([]), paid(500)),
    ];
    app.import("", &history).await.ok();
    let counts = app.counts().await;
    let review: Vec<&str> = vec!["no-events", "paid-noshow", "paid-short"];
    let ids = |list: &Value| -> Vec<String> {
        let mut ids: Vec<String> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["session_id"].as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        ids
    };
    for query in ["dry_run=true", "dry_run=false"] {
        let plan = repair(&app, query).await;
        assert_eq!(plan["changes"], json!([]), "{query}: {plan}");
        assert_eq!(ids(&plan["needs_review"]), review, "{query}");
    }
    assert_eq!(app.counts().await, counts, "never reversed automatically");
    let dry = cli(&app, &["repair", "--json"]);
    assert_eq!(ids(&dry["needs_review"]), review);
    assert_eq!(dry["changes"], json!([]));
    let planned = cli(&app, &["repair", "--json", "--include-missing-evidence"]);
    assert_eq!(ids(&planned["changes"]), review, "planned with the flag: {planned}");
    assert_eq!(app.counts().await, counts);

    let applied = cli(&app, &["repair", "--apply", "--include-missing-evidence", "--json"]);
    assert_eq!(ids(&applied["changes"]), review, "{applied}");
    assert_eq!(applied["needs_review"], json!([]));
    for id in review {
        let payout =
            app.get(&format!("/v1/payouts?session_id={id}"), &app.admin()).await.ok()["items"][0]
                .clone();
        assert!(payout["reversed_at"].is_string(), "{id}: {payout}");
        crate::reversals::assert_books_net_to_zero(&app, id).await;
    }
    let routed = repair(&app, "dry_run=false&include_missing_evidence=true").await;
    assert_eq!((routed["changes"].clone(), routed["needs_review"].clone()), (json!([]), json!([])));
}
