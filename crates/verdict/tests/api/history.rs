//! Import of the old system's history and its repair (docs/import.md).

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{TestApp, on_every_backend};

on_every_backend!(
    a_good_file_is_imported_as_recorded,
    bad_lines_are_rejected_with_their_line_and_field_and_the_rest_goes_on,
    importing_again_is_a_no_op,
    the_command_line_imports_a_file_and_stdin,
    an_id_repeated_batches_later_is_rejected_by_its_line,
    the_listed_rejections_are_the_first_lines_even_a_repeat_found_late,
    the_command_line_batch_size_is_chosen_and_bounded,
    a_bulk_load_from_the_command_line_imports_as_batches_do,
    repair_plans_exactly_the_wrong_statuses_then_fixes_them_once,
);

pub(crate) fn line(
    id: &str,
    status: &str,
    reason: Option<&str>,
    events: Value,
    payouts: Value,
) -> String {
    let ended = if ["completed", "cancelled", "expired"].contains(&status) {
        json!("2026-01-10T10:30:00Z")
    } else {
        Value::Null
    };
    let mut body = json!({
        "id": id, "kind": "diagnostic", "customer_id": "cust-1", "provider_id": "prov-1",
        "price": {"mode": "flat", "amount_cents": 4000, "currency": "usd"},
        "status": status, "created_at": "2026-01-10T10:00:00Z",
        "events": events, "payouts": payouts,
    });
    if !ended.is_null() {
        body["ended_at"] = ended;
    }
    if let Some(reason) = reason {
        body["reason"] = json!(reason);
    }
    body.to_string()
}

pub(crate) fn joined(party: &str, at: &str) -> Value {
    json!({"type": "joined", "party": party, "at": format!("2026-01-10T{at}Z")})
}

pub(crate) fn left(party: &str, at: &str) -> Value {
    json!({"type": "left", "party": party, "at": format!("2026-01-10T{at}Z")})
}

/// Both present 10:05–10:25: a real session.
pub(crate) fn met() -> Value {
    json!([
        joined("customer", "10:05:00"),
        joined("provider", "10:05:00"),
        left("provider", "10:25:00"),
        left("customer", "10:25:00")
    ])
}

pub(crate) fn paid(amount: i64) -> Value {
    json!([{"amount_cents": amount, "currency": "usd", "state": "paid"}])
}

fn good_file() -> Vec<String> {
    vec![
        line("h-completed", "completed", Some("completed"), met(), paid(3200)),
        line(
            "h-noshow",
            "cancelled",
            Some("no_show_provider"),
            json!([joined("customer", "10:01:00")]),
            json!([]),
        ),
        line("h-expired", "expired", None, json!([]), json!([])),
    ]
}

async fn a_good_file_is_imported_as_recorded(app: TestApp) {
    let summary = app.import("", &good_file()).await;
    assert_eq!(
        summary.ok(),
        &json!({"imported": 3, "skipped": 0, "rejected": [], "rejected_total": 0})
    );
    let counts = app.counts().await;
    assert_eq!((counts["sessions"], counts["payouts"], counts["ledger_postings"]), (3, 1, 1));
    // created + 4 presence, created + 1, created.
    assert_eq!(counts["session_events"], 8);
    let session = app.get("/v1/sessions/h-completed", &app.admin()).await.ok().clone();
    assert_eq!(
        (session["status"].as_str(), session["reason"].as_str()),
        (Some("completed"), Some("completed"))
    );
    assert_eq!(session["started_at"], "2026-01-10T10:05:00.000Z");
    assert_eq!(session["ended_at"], "2026-01-10T10:30:00.000Z");
    assert_eq!(session["billable_seconds"], 1200);
    let expired = app.get("/v1/sessions/h-expired", &app.admin()).await.ok().clone();
    assert_eq!(
        (expired["status"].as_str(), expired["reason"].as_str()),
        (Some("expired"), Some("no_show_both"))
    );
    let payouts =
        app.get("/v1/payouts?session_id=h-completed", &app.admin()).await.ok()["items"].clone();
    assert_eq!(
        (payouts[0]["amount_cents"].as_i64(), payouts[0]["state"].as_str()),
        (Some(3200), Some("paid"))
    );
    let report = app.get("/v1/admin/verify", &app.admin()).await.ok().clone();
    assert_eq!(report["ok"], true, "correct history verifies clean: {report}");
}

async fn bad_lines_are_rejected_with_their_line_and_field_and_the_rest_goes_on(app: TestApp) {
    let mut wrong_type: Value =
        serde_json::from_str(&line("b-type", "cancelled", None, json!([]), json!([]))).unwrap();
    wrong_type["price"]["amount_cents"] = json!("forty");
    let lines = vec![
        line("ok-1", "cancelled", Some("no_show_both"), json!([]), json!([])),
        wrong_type.to_string(),
        line("b-status", "finished", None, json!([]), json!([])),
        line(
            "b-order",
            "completed",
            None,
            json!([joined("customer", "10:10:00"), joined("provider", "10:05:00")]),
            json!([]),
        ),
        line("ok-1", "completed", None, met(), json!([])),
        "{\"id\": \"broken\"".to_owned(),
        String::new(),
        line("b-ended", "completed", None, met(), json!([]))
            .replace("\"ended_at\":\"2026-01-10T10:30:00Z\",", ""),
        line("ok-2", "completed", Some("completed"), met(), paid(3200)),
    ];
    let summary = app.import("", &lines).await;
    let body = summary.ok();
    assert_eq!(
        (body["imported"].as_i64(), body["skipped"].as_i64(), body["rejected_total"].as_i64()),
        (Some(2), Some(0), Some(6))
    );
    let rejected: Vec<(i64, String)> = body["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["line"].as_i64().unwrap(), r["error"].as_str().unwrap().to_owned()))
        .collect();
    let expect = [
        (2, "price.amount_cents"),
        (3, "status"),
        (4, "events[1]: out of order"),
        (5, "appears earlier in this file"),
        (6, "malformed JSON"),
        (8, "ended_at: required"),
    ];
    assert_eq!(rejected.len(), expect.len(), "{rejected:?}");
    for ((line, error), (expected_line, fragment)) in rejected.iter().zip(expect) {
        assert_eq!(*line, expected_line, "{error}");
        assert!(error.contains(fragment), "line {line}: {error}");
    }
    let counts = app.counts().await;
    assert_eq!((counts["sessions"], counts["payouts"]), (2, 1), "nothing of a bad line is stored");
    let first = app.get("/v1/sessions/ok-1", &app.admin()).await.ok().clone();
    assert_eq!(first["status"], "cancelled", "the first ok-1 is kept, the duplicate rejected");
}

async fn importing_again_is_a_no_op(app: TestApp) {
    app.import("", &good_file()).await.ok();
    let before = app.counts().await;
    let session = app.get("/v1/sessions/h-completed", &app.admin()).await.body;
    let again = app.import("", &good_file()).await;
    assert_eq!(
        again.ok(),
        &json!({"imported": 0, "skipped": 3, "rejected": [], "rejected_total": 0})
    );
    assert_eq!(app.counts().await, before);
    assert_eq!(app.get("/v1/sessions/h-completed", &app.admin()).await.body, session);
    app.send(Method::POST, "/v1/admin/import", Some(&app.service()), None).await.problem(403);
}

/// `verdict import ARGS…` on the app's database, stdin and stdout piped
/// (`wait_with_output` closes stdin first).
fn spawn_import(app: &TestApp, args: &[&str]) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_verdict"))
        .arg("import")
        .args(args)
        .env("VERDICT_DATABASE_URL", &app.database_url)
        .current_dir(app.data_dir())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// The summary a successful `verdict import` printed.
fn summary_of(output: std::process::Output) -> Value {
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

async fn the_command_line_imports_a_file_and_stdin(app: TestApp) {
    let path = app.data_dir().join("history.ndjson");
    std::fs::write(&path, good_file().join("\n")).unwrap();
    let run = |argument: &str, stdin: Option<&str>| {
        use std::io::Write;
        let mut child = spawn_import(&app, &[argument]);
        let mut input = child.stdin.take().unwrap();
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).unwrap();
        }
        drop(input);
        summary_of(child.wait_with_output().unwrap())
    };
    let summary = run(path.to_str().unwrap(), None);
    assert_eq!((summary["imported"].as_i64(), summary["skipped"].as_i64()), (Some(3), Some(0)));
    let more = line("from-stdin", "cancelled", None, json!([]), json!([]));
    let summary = run("-", Some(&format!("{}\n{more}\n", good_file()[0])));
    assert_eq!((summary["imported"].as_i64(), summary["skipped"].as_i64()), (Some(1), Some(1)));
    assert_eq!(app.counts().await["sessions"], 4);
}

/// The importer keeps only the current batch's ids in memory; an id
/// repeated in a later batch is still rejected, by its line number, and a
/// re-run of the same file skips rather than rejects.
async fn an_id_repeated_batches_later_is_rejected_by_its_line(app: TestApp) {
    let batch = verdict_http::import::BATCH;
    let mut lines: Vec<String> = (0..batch + 2)
        .map(|i| line(&format!("bulk-{i}"), "expired", None, json!([]), json!([])))
        .collect();
    // Line batch + 3 repeats line 2 (bulk-1), two batches apart.
    lines.push(line("bulk-1", "completed", Some("completed"), met(), paid(3200)));
    let path = app.data_dir().join("bulk.ndjson");
    std::fs::write(&path, lines.join("\n")).unwrap();
    let run =
        || summary_of(spawn_import(&app, &[path.to_str().unwrap()]).wait_with_output().unwrap());
    let summary = run();
    assert_eq!(summary["imported"], json!(batch + 2));
    assert_eq!(summary["skipped"], json!(0));
    assert_eq!(
        summary["rejected"],
        json!([{"line": batch + 3, "error": "id: bulk-1 appears earlier in this file"}])
    );
    let session = app.get("/v1/sessions/bulk-1", &app.admin()).await.ok().clone();
    assert_eq!(session["status"], "expired", "the first bulk-1 is kept");
    assert_eq!(app.counts().await["payouts"], 0);
    // Another run: everything is already there, nothing is a repeat.
    let again = run();
    assert_eq!((again["imported"].clone(), again["skipped"].clone()), (json!(0), json!(batch + 3)));
    assert_eq!(again["rejected_total"], json!(0));
}

/// The summary lists the first rejected lines, in line order, whenever
/// each was found: a repeat is found only when its batch is stored, after
/// the rejections of the lines that follow it.
async fn the_listed_rejections_are_the_first_lines_even_a_repeat_found_late(app: TestApp) {
    use verdict_http::import::REJECTIONS_LISTED_MAX as LISTED;
    let mut lines: Vec<String> =
        (0..2).map(|i| line(&format!("r-{i}"), "expired", None, json!([]), json!([]))).collect();
    // Line 3 repeats line 1, in the second batch; stored only at the end,
    // after as many unreadable lines as are listed.
    lines.push(line("r-0", "expired", None, json!([]), json!([])));
    lines.extend((0..LISTED).map(|_| "not json".to_owned()));
    let path = app.data_dir().join("rejections.ndjson");
    std::fs::write(&path, lines.join("\n")).unwrap();
    let summary = summary_of(
        spawn_import(&app, &[path.to_str().unwrap(), "--batch-lines", "2"])
            .wait_with_output()
            .unwrap(),
    );
    assert_eq!(summary["imported"], json!(2));
    assert_eq!(summary["rejected_total"], json!(LISTED + 1));
    let listed = summary["rejected"].as_array().unwrap();
    assert_eq!(listed.len(), LISTED);
    assert_eq!(listed[0], json!({"line": 3, "error": "id: r-0 appears earlier in this file"}));
    let numbers: Vec<u64> = listed.iter().map(|item| item["line"].as_u64().unwrap()).collect();
    let first: Vec<u64> = (3..3 + LISTED as u64).collect();
    assert_eq!(numbers, first, "the first rejected lines, in order; the last one left out");
    assert!(listed[1]["error"].as_str().unwrap().starts_with("malformed JSON"), "{}", listed[1]);
}

/// `verdict import --batch-lines N`: in batches of two the outcome is the
/// one a single batch gives (a repeat found two batches later, a bad line
/// in a batch that stores the rest); from an open stream, full batches are
/// stored before it ends (this part fails if the size is ignored); a size
/// out of bounds is a usage error that stores nothing.
async fn the_command_line_batch_size_is_chosen_and_bounded(app: TestApp) {
    let mut lines: Vec<String> = (1..=5)
        .map(|i| line(&format!("small-{i}"), "expired", None, json!([]), json!([])))
        .collect();
    lines.push(line("small-bad", "done", None, json!([]), json!([])));
    // Line 7 repeats line 1, in the third batch of two.
    lines.push(line("small-1", "completed", Some("completed"), met(), paid(3200)));
    let path = app.data_dir().join("small.ndjson");
    std::fs::write(&path, lines.join("\n")).unwrap();
    let run = |batch_lines: &str| {
        spawn_import(&app, &["--batch-lines", batch_lines, path.to_str().unwrap()])
            .wait_with_output()
            .unwrap()
    };
    for refused in ["0", "100001", "many"] {
        let output = run(refused);
        assert_eq!(output.status.code(), Some(2), "--batch-lines {refused}");
        assert!(String::from_utf8_lossy(&output.stderr).contains("--batch-lines"));
        assert_eq!(app.counts().await["sessions"], 0);
    }
    let summary = summary_of(run("2"));
    assert_eq!((summary["imported"].clone(), summary["skipped"].clone()), (json!(5), json!(0)));
    let rejected = summary["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 2, "{summary}");
    assert_eq!(rejected[0]["line"], 6);
    assert!(rejected[0]["error"].as_str().unwrap().starts_with("status:"), "{summary}");
    assert_eq!(
        rejected[1],
        json!({"line": 7, "error": "id: small-1 appears earlier in this file"})
    );
    assert_eq!(app.counts().await["sessions"], 5);
    assert_eq!(app.get("/v1/sessions/small-1", &app.admin()).await.ok()["status"], "expired");
    assert_eq!(app.counts().await["payouts"], 0);

    // A batch is committed as soon as it is full: from a stream still
    // open, batches of 1,000 are stored while the default (5,000) would
    // still be waiting for more lines.
    use std::io::Write;
    let mut child = spawn_import(&app, &["--batch-lines", "1000", "-"]);
    let mut input = child.stdin.take().unwrap();
    let streamed = |range: std::ops::Range<i32>| {
        range
            .map(|i| line(&format!("stream-{i}"), "expired", None, json!([]), json!([])) + "\n")
            .collect::<String>()
    };
    input.write_all(streamed(0..2_000).as_bytes()).unwrap();
    input.flush().unwrap();
    let stored = verdict_testing::eventually(std::time::Duration::from_secs(60), async || {
        app.counts().await["sessions"] == 5 + 2_000
    })
    .await;
    input.write_all(streamed(2_000..2_500).as_bytes()).unwrap();
    drop(input);
    let output = child.wait_with_output().unwrap();
    assert!(stored, "two full batches stored before the stream ended");
    let summary = summary_of(output);
    assert_eq!(summary["imported"], json!(2_500));
    assert_eq!(app.counts().await["sessions"], 5 + 2_500);
}

/// `verdict import --bulk`: one transaction for the file, the same outcome
/// as batches give (a repeat two batches later, a bad line), and a second
/// run skips what the first stored.
async fn a_bulk_load_from_the_command_line_imports_as_batches_do(app: TestApp) {
    let mut lines: Vec<String> = (1..=5)
        .map(|i| line(&format!("bulk-{i}"), "expired", None, json!([]), json!([])))
        .collect();
    lines.push(line("bulk-bad", "done", None, json!([]), json!([])));
    lines.push(line("bulk-1", "completed", Some("completed"), met(), paid(3200)));
    lines.push(line("bulk-paid", "completed", Some("completed"), met(), paid(3200)));
    let path = app.data_dir().join("bulk.ndjson");
    std::fs::write(&path, lines.join("\n")).unwrap();
    let run = || {
        let bulk = spawn_import(&app, &["--bulk", "--batch-lines", "2", path.to_str().unwrap()]);
        summary_of(bulk.wait_with_output().unwrap())
    };
    let summary = run();
    assert_eq!((summary["imported"].clone(), summary["skipped"].clone()), (json!(6), json!(0)));
    let rejected: Vec<i64> = summary["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|rejection| rejection["line"].as_i64().unwrap())
        .collect();
    assert_eq!(rejected, vec![6, 7], "{summary}");
    assert_eq!(app.get("/v1/sessions/bulk-1", &app.admin()).await.ok()["status"], "expired");
    let counts = app.counts().await;
    assert_eq!((counts["sessions"], counts["payouts"]), (6, 1));
    let report = app.get("/v1/admin/verify", &app.admin()).await.ok().clone();
    let ledger = report["sections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|section| section["name"] == "ledger_balance")
        .unwrap()
        .clone();
    assert_eq!(ledger["count"], 0, "{ledger}");

    let again = run();
    assert_eq!((again["imported"].clone(), again["skipped"].clone()), (json!(0), json!(7)));
    assert_eq!(again["rejected_total"], json!(1));
}

async fn repair(app: &TestApp, dry_run: bool) -> Value {
    app.post(&format!("/v1/admin/repair?dry_run={dry_run}"), &app.admin(), json!({}))
        .await
        .ok()
        .clone()
}

async fn repair_plans_exactly_the_wrong_statuses_then_fixes_them_once(app: TestApp) {
    let history = vec![
        // Paid, but the provider never came: a wrongly paid no-show.
        line(
            "paid-noshow",
            "completed",
            Some("completed"),
            json!([joined("customer", "10:01:00")]),
            paid(3200),
        ),
        // Cancelled, but both were there 20 minutes: lost revenue.
        line("lost", "cancelled", Some("too_short"), met(), json!([])),
        // Expired, yet they met: also lost revenue.
        line("met-expired", "expired", Some("no_show_both"), met(), json!([])),
        // Cancelled, right status, wrong reason: they never overlapped.
        line(
            "wrong-reason",
            "cancelled",
            Some("no_show_both"),
            json!([
                joined("customer", "10:01:00"),
                left("customer", "10:02:00"),
                joined("provider", "10:03:00")
            ]),
            json!([]),
        ),
        line("right-completed", "completed", Some("completed"), met(), paid(3200)),
        line("right-cancelled", "cancelled", Some("no_show_both"), json!([]), json!([])),
    ];
    app.import("", &history).await.ok();
    let before = app.counts().await;
    let snapshot = app.get("/v1/sessions/lost", &app.admin()).await.body;

    let plan = repair(&app, true).await;
    assert_eq!(plan["dry_run"], true);
    let expected = json!([
        {"session_id": "lost", "from": {"status": "cancelled", "reason": "too_short"}, "to": {"status": "completed", "reason": "completed"}, "money_effect_cents": 4000},
        {"session_id": "met-expired", "from": {"status": "expired", "reason": "no_show_both"}, "to": {"status": "completed", "reason": "completed"}, "money_effect_cents": 4000},
        {"session_id": "wrong-reason", "from": {"status": "cancelled", "reason": "no_show_both"}, "to": {"status": "cancelled", "reason": "never_overlapped"}, "money_effect_cents": 0},
    ]);
    // The provider's join is missing: the only evidence against the
    // recorded completion is an absence, so it waits for review.
    let review = json!([
        {"session_id": "paid-noshow", "from": {"status": "completed", "reason": "completed"}, "to": {"status": "cancelled", "reason": "no_show_provider"}, "money_effect_cents": -4000},
    ]);
    assert_eq!(plan["changes"], expected);
    assert_eq!(plan["needs_review"], review);
    assert_eq!(app.counts().await, before, "a dry run changes nothing");
    assert_eq!(app.get("/v1/sessions/lost", &app.admin()).await.body, snapshot);
    let report = app.get("/v1/admin/verify", &app.admin()).await.ok().clone();
    assert_eq!(report["ok"], false);

    let applied = repair(&app, false).await;
    assert_eq!(applied["dry_run"], false);
    assert_eq!(applied["changes"], expected);
    assert_eq!(applied["needs_review"], review, "listed, not applied");
    let payout =
        app.get("/v1/payouts?session_id=paid-noshow", &app.admin()).await.ok()["items"][0].clone();
    assert!(payout["reversed_at"].is_null(), "{payout}");
    let included = app
        .post(
            "/v1/admin/repair?dry_run=false&include_missing_evidence=true",
            &app.admin(),
            json!({}),
        )
        .await
        .ok()
        .clone();
    assert_eq!(included["changes"], review);
    assert_eq!(included["needs_review"], json!([]));

    // Newly completed: a balanced posting and a payout of the share.
    for id in ["lost", "met-expired"] {
        let session = app.get(&format!("/v1/sessions/{id}"), &app.admin()).await.ok().clone();
        assert_eq!(
            (session["status"].as_str(), session["charged_cents"].as_i64()),
            (Some("completed"), Some(4000))
        );
        let payouts =
            app.get(&format!("/v1/payouts?session_id={id}"), &app.admin()).await.ok()["items"]
                .clone();
        assert_eq!(
            (payouts[0]["amount_cents"].as_i64(), payouts[0]["state"].as_str()),
            (Some(3200), Some("pending"))
        );
        let postings = app.state.store.postings(id).await.unwrap();
        assert!(postings.len() == 1 && postings[0].is_balanced());
    }
    // Wrongly paid: a reversal posting nets the session's books to zero,
    // the payout is marked reversed and a reversal is queued.
    let postings = app.state.store.postings("paid-noshow").await.unwrap();
    assert_eq!(
        postings.iter().map(|p| p.kind.as_str()).collect::<Vec<_>>(),
        ["settlement", "reversal"]
    );
    assert!(postings.iter().all(|p| p.is_balanced()));
    let net: i64 = postings
        .iter()
        .flat_map(|p| &p.lines)
        .filter(|l| l.account == "provider_payable:prov-1")
        .map(|l| l.amount.0)
        .sum();
    assert_eq!(net, 0);
    let payout =
        app.get("/v1/payouts?session_id=paid-noshow", &app.admin()).await.ok()["items"][0].clone();
    assert!(payout["reversed_at"].is_string());
    let outbox = app.get("/v1/admin/outbox", &app.admin()).await.ok()["items"].clone();
    assert!(
        outbox
            .as_array()
            .unwrap()
            .iter()
            .any(|row| row["topic"] == "payout.reversal" && row["session_id"] == "paid-noshow")
    );
    // Audited, and the parties told.
    let events = app.events("paid-noshow").await;
    let corrected: Vec<&Value> = events.iter().filter(|e| e["type"] == "corrected").collect();
    assert_eq!(corrected.len(), 1);
    assert_eq!(corrected[0]["actor"], json!({"role": "system", "id": "repair"}));
    assert_eq!(corrected[0]["data"]["to"]["reason"], "no_show_provider");
    let inbox = app.get("/v1/notifications", &app.customer()).await.ok()["items"].clone();
    assert_eq!(
        inbox.as_array().unwrap().iter().filter(|n| n["kind"] == "session_corrected").count(),
        4
    );

    let report = app.get("/v1/admin/verify", &app.admin()).await.ok().clone();
    assert_eq!(report["ok"], true, "verify is clean after repair: {report}");
    let counts = app.counts().await;
    let again = repair(&app, false).await;
    assert_eq!(again["changes"], json!([]), "a second apply changes nothing");
    assert_eq!(app.counts().await, counts);
}
