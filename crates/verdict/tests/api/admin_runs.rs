//! Long admin work (issue 24, item 13): an import and an applied repair run
//! to their end even if the caller goes away — while an import's body
//! streams in (what came is stored) or once it is whole — and each run is
//! kept with its summary (`GET /v1/admin/imports/{id}`, `/repairs/{id}`).

use serde_json::{Value, json};

use crate::support::{TestApp, on_every_backend};

on_every_backend!(
    an_import_and_a_repair_are_kept_with_their_answers,
    an_import_cut_while_its_body_streams_in_stores_what_came_and_is_kept,
    an_applied_repair_whose_caller_goes_away_runs_to_the_end,
);

/// A historical session recorded `status` with no presence at all (its
/// correction rests on missing join events: applied when asked to).
fn line(id: &str, status: &str) -> String {
    json!({
        "id": id, "kind": "diagnostic", "customer_id": "cust-1", "provider_id": "prov-1",
        "price": {"mode": "flat", "amount_cents": 4000, "currency": "usd"},
        "status": status, "reason": if status == "completed" { "completed" } else { "no_show_both" },
        "created_at": "2026-01-10T10:00:00Z", "ended_at": "2026-01-10T10:30:00Z",
        "events": [], "payouts": [],
    })
    .to_string()
}

fn file(prefix: &str, count: usize, status: &str) -> String {
    (1..=count).map(|n| line(&format!("{prefix}-{n}"), status) + "\n").collect()
}

/// Waits (bounded, polling) until `done`.
async fn eventually(what: &str, mut done: impl AsyncFnMut() -> bool) {
    for _ in 0..1_500 {
        if done().await {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("not done within 30 s: {what}");
}

/// The latest run of `kind` (`imports` or `repairs`), once it has ended.
async fn ended_run(app: &TestApp, collection: &str) -> Value {
    let latest = async || {
        let reply = app.get(&format!("/v1/admin/{collection}?limit=1"), &app.admin()).await;
        reply.ok()["items"][0].clone()
    };
    eventually("the run ends", async || {
        latest().await["state"].as_str().is_some_and(|state| state != "running")
    })
    .await;
    latest().await
}

async fn an_import_and_a_repair_are_kept_with_their_answers(app: TestApp) {
    let response = app
        .client
        .post(format!("{}/v1/admin/import", app.base))
        .bearer_auth(app.admin())
        .header("content-type", "application/x-ndjson")
        .body(file("k", 2, "completed") + "not json\n")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let location = response.headers()["content-location"].to_str().unwrap().to_owned();
    let answer: Value = response.json().await.unwrap();
    assert_eq!(
        (answer["imported"].as_i64(), answer["rejected_total"].as_i64()),
        (Some(2), Some(1))
    );
    let kept = app.get(&location, &app.admin()).await.ok().clone();
    assert!(location.starts_with("/v1/admin/imports/"), "{location}");
    assert_eq!(kept["state"], "finished");
    assert_eq!(kept["kind"], "import");
    assert_eq!(kept["actor"], "ops");
    assert_eq!(kept["summary"], answer);
    assert!(kept["finished_at"].is_string());

    let response = app
        .client
        .post(format!("{}/v1/admin/repair?dry_run=false&include_missing_evidence=true", app.base))
        .bearer_auth(app.admin())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let location = response.headers()["content-location"].to_str().unwrap().to_owned();
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["changes"].as_array().unwrap().len(), 2);
    let kept = app.get(&location, &app.admin()).await.ok().clone();
    assert_eq!((&kept["state"], &kept["summary"]), (&json!("finished"), &answer));
    let listed = app.get("/v1/admin/repairs", &app.admin()).await.ok()["items"].clone();
    assert_eq!(listed[0]["id"], kept["id"]);

    // Only admins; unknown ids and kinds are 404; bad limits 422.
    app.get(&location, &app.service()).await.problem(403);
    let import_id = location.rsplit('/').next().unwrap();
    app.get(&format!("/v1/admin/imports/{import_id}"), &app.admin()).await.problem(404);
    app.get("/v1/admin/repairs/no-such-run", &app.admin()).await.problem(404);
    app.get("/v1/admin/imports?limit=0", &app.admin()).await.problem(422);
}

async fn an_import_cut_while_its_body_streams_in_stores_what_came_and_is_kept(app: TestApp) {
    let batch = verdict_http::import::BATCH;
    let (sender, body) = futures::channel::mpsc::unbounded::<Result<String, std::io::Error>>();
    // One batch and ten lines more, then the body stays open: the sender
    // is silent, as a client that hangs.
    sender.unbounded_send(Ok(file("cut", batch + 10, "expired"))).unwrap();
    let request = app
        .client
        .post(format!("{}/v1/admin/import", app.base))
        .bearer_auth(app.admin())
        .header("content-type", "application/x-ndjson")
        .body(reqwest::Body::wrap_stream(body))
        .send();
    let caller = tokio::spawn(request);
    eventually("the first batch is stored", async || {
        app.sql_count("SELECT COUNT(*) FROM sessions").await >= batch as i64
    })
    .await;
    // The caller goes away mid-body: its request (and connection) gone
    // before the body could end cleanly by the sender's drop.
    caller.abort();
    let _ = caller.await;
    drop(sender);
    let run = ended_run(&app, "imports").await;
    assert_eq!(run["state"], "failed", "{run}");
    assert!(run["error"].as_str().unwrap().contains("could not be read"), "{run}");
    assert_eq!(run["summary"]["imported"], json!(batch + 10), "{run}");
    assert_eq!(app.sql_count("SELECT COUNT(*) FROM sessions").await, (batch + 10) as i64);
    let path = format!("/v1/admin/imports/{}", run["id"].as_str().unwrap());
    assert_eq!(app.get(&path, &app.admin()).await.ok()["summary"], run["summary"]);
}

async fn an_applied_repair_whose_caller_goes_away_runs_to_the_end(app: TestApp) {
    const WRONG: usize = 600;
    let response = app
        .client
        .post(format!("{}/v1/admin/import", app.base))
        .bearer_auth(app.admin())
        .body(file("wrong", WRONG, "completed"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.json::<Value>().await.unwrap()["imported"], json!(WRONG));
    let request = app
        .client
        .post(format!("{}/v1/admin/repair?dry_run=false&include_missing_evidence=true", app.base))
        .bearer_auth(app.admin())
        .send();
    let caller = tokio::spawn(request);
    let corrected = "SELECT COUNT(*) FROM session_events WHERE type = 'corrected'";
    eventually("the repair has begun", async || app.sql_count(corrected).await > 0).await;
    caller.abort();
    let run = ended_run(&app, "repairs").await;
    assert_eq!(run["state"], "finished", "{run}");
    assert_eq!(run["summary"]["dry_run"], false);
    assert_eq!(run["summary"]["changes"].as_array().unwrap().len(), WRONG);
    assert_eq!(app.sql_count(corrected).await, WRONG as i64);
}

/// PostgreSQL only: a table lock holds the import after its whole body is
/// read, visibly (`pg_stat_activity`), while the caller goes away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_whose_caller_goes_away_after_the_body_runs_to_the_end() {
    use sqlx::Connection;
    let app = TestApp::spawn(crate::support::Backend::Postgres, |_| {}).await;
    let mut locker = sqlx::PgConnection::connect(&app.database_url).await.unwrap();
    sqlx::raw_sql("BEGIN; LOCK TABLE sessions IN EXCLUSIVE MODE")
        .execute(&mut locker)
        .await
        .unwrap();
    let request = app
        .client
        .post(format!("{}/v1/admin/import", app.base))
        .bearer_auth(app.admin())
        .body(file("whole", 3, "expired"))
        .send();
    let caller = tokio::spawn(request);
    let waiting = "SELECT COUNT(*) FROM pg_stat_activity \
                   WHERE datname = current_database() AND wait_event_type = 'Lock'";
    eventually("the import waits for the lock", async || app.sql_count(waiting).await > 0).await;
    caller.abort();
    // Let the aborted request's connection close before the lock goes.
    tokio::task::yield_now().await;
    sqlx::raw_sql("COMMIT").execute(&mut locker).await.unwrap();
    let run = ended_run(&app, "imports").await;
    assert_eq!(run["state"], "finished", "{run}");
    assert_eq!(run["summary"]["imported"], 3);
    assert_eq!(app.sql_count("SELECT COUNT(*) FROM sessions").await, 3);
}
