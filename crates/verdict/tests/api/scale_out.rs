//! PostgreSQL scale-out: several `verdict serve` processes on one database,
//! and a database that goes away and comes back.

use std::process::Stdio;
use std::time::{Duration, Instant};

use futures::future::join_all;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::Connection;
use tokio::process::{Child, Command};
use verdict_core::Role;
use verdict_http::{JwtKeys, JwtSecret};

use crate::fakes::Receiver;
use crate::support::{Backend, SECRET, TestApp, serve_process};

/// A `verdict serve` child process, killed when dropped.
pub(crate) struct Server {
    pub(crate) base: String,
    _child: Child,
}

pub(crate) async fn serve(database_url: &str, dir: &std::path::Path) -> Server {
    let (child, base) = serve_process(
        Command::new(env!("CARGO_BIN_EXE_verdict"))
            .args(["serve", "--bind", "127.0.0.1:0", "--clock", "manual"])
            .current_dir(dir)
            .env("VERDICT_DATABASE_URL", database_url)
            .env("VERDICT_JWT_SECRET", SECRET)
            .env("VERDICT_WORKER", "off")
            // Load from one customer and one provider, far over the
            // per-caller rate limit, which is not what these tests test.
            .env("VERDICT_RATE_LIMIT_PER_SECOND", "1000000")
            .env("VERDICT_RATE_LIMIT_BURST", "1000000")
            .env("RUST_LOG", "warn"),
    )
    .await;
    Server { base, _child: child }
}

pub(crate) struct Client {
    http: reqwest::Client,
    keys: JwtKeys,
}

impl Client {
    pub(crate) fn new() -> Client {
        verdict_worker::install_crypto();
        Client {
            http: reqwest::Client::new(),
            keys: JwtKeys::new(&JwtSecret::new(SECRET.as_bytes().to_vec())),
        }
    }

    pub(crate) fn token(&self, role: Role, sub: &str) -> String {
        self.keys.mint(role, sub, i64::from(u32::MAX))
    }

    pub(crate) async fn post(
        &self,
        server: &Server,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request =
            self.http.request(Method::POST, format!("{}{path}", server.base)).bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("the server answers");
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }
}

async fn ended_events(database_url: &str) -> i64 {
    let mut connection = sqlx::PgConnection::connect(database_url).await.unwrap();
    sqlx::query_scalar("SELECT COUNT(*) FROM session_events WHERE type = 'ended'")
        .fetch_one(&mut connection)
        .await
        .unwrap()
}

pub(crate) fn session_body(id: &str) -> Value {
    json!({"id": id, "kind": "video", "customer_id": "cust-1", "provider_id": "prov-1",
        "price": {"mode": "flat", "amount_cents": 2500, "currency": "usd"}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_on_one_database_make_one_transition_per_session() {
    let database = verdict_testing::shared_server().create_database().await;
    let dir = tempfile::tempdir().unwrap();
    let servers = [serve(&database.url, dir.path()).await, serve(&database.url, dir.path()).await];
    let client = Client::new();
    let (service, admin) =
        (client.token(Role::Service, "platform"), client.token(Role::Admin, "ops"));
    let (customer, provider) =
        (client.token(Role::Customer, "cust-1"), client.token(Role::Provider, "prov-1"));

    // One session, 64 concurrent ends split across both processes.
    assert_eq!(
        client.post(&servers[0], "/v1/sessions", &service, Some(session_body("one"))).await.0,
        201
    );
    client.post(&servers[0], "/v1/sessions/one/join", &customer, None).await;
    client.post(&servers[1], "/v1/sessions/one/join", &provider, None).await;
    for server in &servers {
        let (status, _) = client
            .post(server, "/v1/test-clock/advance", &admin, Some(json!({"seconds": 120})))
            .await;
        assert_eq!(status, 200);
    }
    let calls =
        (0..64).map(|n| client.post(&servers[n % 2], "/v1/sessions/one/end", &service, None));
    let replies = join_all(calls).await;
    assert!(replies.iter().all(|(status, _)| *status == StatusCode::OK), "{replies:?}");
    let outcome = |body: &Value| {
        let o = &body["outcome"];
        (o["status"].clone(), o["reason"].clone(), o["billable_seconds"].clone())
    };
    let first = outcome(&replies[0].1);
    assert_eq!(first.0, "completed");
    assert!(replies.iter().all(|(_, body)| outcome(body) == first), "identical answers");
    assert!(replies.iter().all(|(_, body)| body["session"] == replies[0].1["session"]));
    let fresh =
        replies.iter().filter(|(_, body)| body["outcome"]["already_ended"] == false).count();
    assert_eq!(fresh, 1);
    assert_eq!(ended_events(&database.url).await, 1);

    // 500 distinct sessions ended concurrently across both processes.
    let ids: Vec<String> = (0..500).map(|n| format!("bulk-{n}")).collect();
    let creates = ids.iter().enumerate().map(|(n, id)| {
        client.post(&servers[n % 2], "/v1/sessions", &service, Some(session_body(id)))
    });
    assert!(join_all(creates).await.iter().all(|(status, _)| *status == StatusCode::CREATED));
    let paths: Vec<String> = ids.iter().map(|id| format!("/v1/sessions/{id}/end")).collect();
    let ends = paths
        .iter()
        .enumerate()
        .map(|(n, path)| client.post(&servers[(n + 1) % 2], path, &service, None));
    let replies = join_all(ends).await;
    let errors: Vec<_> = replies.iter().filter(|(status, _)| *status != StatusCode::OK).collect();
    assert!(errors.is_empty(), "{} errors, first: {:?}", errors.len(), errors.first());
    assert!(
        replies.iter().all(|(_, body)| body["outcome"]["already_ended"] == false),
        "500 transitions"
    );
    assert!(replies.iter().all(|(_, body)| body["outcome"]["reason"] == "no_show_both"));
    assert_eq!(ended_events(&database.url).await, 501);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_answers_503_quickly_and_recovers_without_restart() {
    // A cluster of its own: this test stops it.
    let cluster = verdict_testing::Cluster::start();
    let url = cluster.url("postgres");
    let app = TestApp::spawn(Backend::Sqlite, |config| config.database_url = url.clone()).await;
    assert_eq!(app.state.store.backend(), "postgres");
    app.create_session("s1").await;
    assert_eq!(app.send(Method::GET, "/readyz", None, None).await.status, 200);

    tokio::task::block_in_place(|| cluster.stop());

    let started = Instant::now();
    let ready = app.send(Method::GET, "/readyz", None, None).await;
    let readiness_wait = started.elapsed();
    ready.problem(503);
    let started = Instant::now();
    app.get("/v1/sessions/s1", &app.service()).await.problem(503);
    app.end("s1", &app.service(), None).await.problem(503);
    let api_wait = started.elapsed() / 2;
    eprintln!("database down: readyz answered in {readiness_wait:?}, API calls in {api_wait:?}");
    // "No hang" is the contract: the availability probe notices a stopped
    // server within half a second (two refused probes 250 ms apart) and a
    // hung one within 2.5 s, where without it a call would wait out the
    // pool's 30 s acquire timeout. The bound tells the two apart with room
    // for a loaded machine; it is not a speed goal.
    assert!(readiness_wait < Duration::from_secs(10), "readyz took {readiness_wait:?}");
    assert!(api_wait < Duration::from_secs(10), "API calls took {api_wait:?}");

    tokio::task::block_in_place(|| cluster.resume());
    let recovered = verdict_testing::eventually(Duration::from_secs(30), async || {
        app.send(Method::GET, "/readyz", None, None).await.status == 200
    })
    .await;
    assert!(recovered, "readiness recovers once the database is back");
    let session = app.get("/v1/sessions/s1", &app.service()).await;
    assert_eq!(session.ok()["status"], "waiting", "the failed end changed nothing");
    let ended = app.end("s1", &app.service(), None).await;
    assert_eq!(ended.ok()["outcome"]["reason"], "no_show_both");
}

/// The database stops and comes back while 8 clients keep creating,
/// joining and ending sessions: every answer is a success or a 503 (never
/// another 5xx), every acknowledged end is stored as acknowledged, and the
/// books verify clean afterwards, all without restarting the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_stopped_under_load_gives_503s_and_loses_nothing() {
    use std::sync::{Arc, Mutex};
    let cluster = verdict_testing::Cluster::start();
    let url = cluster.url("postgres");
    // Load from one customer and one provider: no per-caller rate limit.
    let app = Arc::new(
        TestApp::spawn(Backend::Sqlite, |config| {
            config.database_url = url.clone();
            config.rate_limit_per_second = 1_000_000;
            config.rate_limit_burst = 1_000_000;
        })
        .await,
    );
    let acknowledged: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let statuses: Arc<Mutex<std::collections::BTreeMap<u16, u64>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = (0..8)
        .map(|client| {
            let (app, acknowledged, statuses, stop) =
                (app.clone(), acknowledged.clone(), statuses.clone(), stop.clone());
            tokio::spawn(async move {
                let (service, customer, provider) = (app.service(), app.customer(), app.provider());
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    n += 1;
                    let id = format!("load-{client}-{n}");
                    let body = json!({"id": id, "kind": "video", "customer_id": "cust-1",
                        "provider_id": "prov-1",
                        "price": {"mode": "flat", "amount_cents": 900, "currency": "usd"}});
                    let replies = [
                        app.post("/v1/sessions", &service, body).await,
                        app.join(&id, &customer).await,
                        app.join(&id, &provider).await,
                        app.end(&id, &service, None).await,
                    ];
                    let mut counts = statuses.lock().unwrap();
                    for reply in &replies {
                        *counts.entry(reply.status.as_u16()).or_default() += 1;
                    }
                    let ended = &replies[3];
                    if ended.status == 200 {
                        let status = ended.body["outcome"]["status"].as_str().unwrap().to_owned();
                        acknowledged.lock().unwrap().push((id, status));
                    }
                }
            })
        })
        .collect();
    let ended_before = || acknowledged.lock().unwrap().len();
    assert!(
        verdict_testing::eventually(Duration::from_secs(30), async || ended_before() >= 20).await
    );
    tokio::task::block_in_place(|| cluster.stop());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let during = ended_before();
    tokio::task::block_in_place(|| cluster.resume());
    let recovered = verdict_testing::eventually(Duration::from_secs(30), async || {
        ended_before() >= during + 20
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    let statuses = statuses.lock().unwrap().clone();
    assert!(recovered, "ends succeed again once the database is back: {statuses:?}");
    assert!(statuses.get(&503).is_some_and(|n| *n > 0), "the outage was seen: {statuses:?}");
    // 409: a join or end of a session whose create met the outage.
    let unexpected: Vec<_> =
        statuses.keys().filter(|status| !matches!(**status, 200 | 201 | 404 | 409 | 503)).collect();
    assert!(unexpected.is_empty(), "answers other than success or 503: {statuses:?}");
    let acknowledged = acknowledged.lock().unwrap().clone();
    for (id, status) in &acknowledged {
        let stored = app.get(&format!("/v1/sessions/{id}"), &app.service()).await;
        assert_eq!(stored.ok()["status"].as_str(), Some(status.as_str()), "{id}");
    }
    let report = app.get("/v1/admin/verify", &app.admin()).await;
    assert_eq!(report.ok()["ok"], true, "{}", report.body);
    eprintln!(
        "database stopped under load: {statuses:?}; {} ends acknowledged",
        acknowledged.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_worker_processes_deliver_two_thousand_rows_once_each_despite_a_kill() {
    const SESSIONS: i64 = 500;
    const PER_SESSION: i64 = 4;
    let database = verdict_testing::shared_server().create_database().await;
    drop(verdict_store::open(&database.url).await.expect("migrate"));
    let mut connection = sqlx::PgConnection::connect(&database.url).await.unwrap();
    // 500 sessions with 4 webhook rows each, straight into the tables: the
    // test is about delivery, not about producing rows.
    sqlx::query(
        "INSERT INTO sessions (id, kind, status, customer_id, provider_id, created_at, \
         price_mode, price_amount_cents, currency) \
         SELECT 's' || n, 'video', 'waiting', 'c', 'p', $2, 'flat', 0, 'usd' \
         FROM generate_series(1, $1) AS n",
    )
    .bind(SESSIONS)
    // Created now: not due for the workers' sweepers for 15 minutes.
    .bind(verdict_store::clock::system_now_millis())
    .execute(&mut connection)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO outbox (session_id, topic, channel, dedupe_key, payload, due_at, created_at) \
         SELECT 's' || s, 'webhook:session.started', 'webhook', 'k' || s || '.' || e, \
         json_build_object('session_id', 's' || s, 'seq', e)::text, 0, 0 \
         FROM generate_series(1, $1) AS s, generate_series(1, $2) AS e ORDER BY s, e",
    )
    .bind(SESSIONS)
    .bind(PER_SESSION)
    .execute(&mut connection)
    .await
    .unwrap();

    let receiver = Receiver::start(None, Some(Duration::from_millis(3))).await;
    let dir = tempfile::tempdir().unwrap();
    let spawn_worker = || {
        Command::new(env!("CARGO_BIN_EXE_verdict"))
            .arg("worker")
            // Several workers on one host: each its own port.
            .env("VERDICT_WORKER_BIND", "127.0.0.1:0")
            .current_dir(dir.path())
            .env("VERDICT_DATABASE_URL", &database.url)
            .env("VERDICT_WEBHOOK_URLS", &receiver.url)
            // Repeats may come only from the kill: a healthy answer late
            // past the timeout, or a batch outlasting its lease, on a
            // loaded machine would add some.
            .env("VERDICT_OUTBOUND_TIMEOUT_SECONDS", "3")
            .env("VERDICT_OUTBOX_LEASE_SECONDS", "10")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start verdict worker")
    };
    let mut workers: Vec<Child> = (0..4).map(|_| spawn_worker()).collect();

    // Kill one worker with SIGKILL once deliveries are under way.
    let started = verdict_testing::eventually(Duration::from_secs(60), async || {
        receiver.received().len() >= 300
    })
    .await;
    assert!(started, "deliveries began");
    workers[0].start_kill().unwrap();
    let _ = workers[0].wait().await;

    let total = SESSIONS * PER_SESSION;
    let delivered = verdict_testing::eventually(Duration::from_secs(120), async || {
        // Each message row is fanned out to a row of the one endpoint.
        let done: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM outbox WHERE state = 'delivered' AND channel LIKE 'webhook:%'",
        )
        .fetch_one(&mut connection)
        .await
        .unwrap();
        done == total
    })
    .await;
    assert!(delivered, "every row delivered after the kill");

    let received = receiver.received();
    let mut ids = std::collections::BTreeSet::new();
    let mut last_seq: std::collections::HashMap<String, i64> = std::collections::HashMap::new();
    let mut out_of_order = 0;
    for message in &received {
        let id = message.headers["webhook-id"].to_str().unwrap().to_owned();
        if ids.insert(id) {
            let body: Value = serde_json::from_str(&message.body).unwrap();
            let session = body["data"]["session_id"].as_str().unwrap().to_owned();
            let seq = body["data"]["seq"].as_i64().unwrap();
            let previous = last_seq.insert(session, seq).unwrap_or(0);
            if seq != previous + 1 {
                out_of_order += 1;
            }
        }
    }
    let duplicates = received.len() - ids.len();
    eprintln!(
        "4 workers, one killed: {} deliveries of {} rows, {duplicates} repeated",
        received.len(),
        ids.len()
    );
    assert_eq!(ids.len() as i64, total, "every row reached the receiver");
    assert_eq!(receiver.concurrent_duplicates(), 0, "no row was delivered twice at once");
    assert_eq!(out_of_order, 0, "each session's rows arrived in order");
    // At least once: only rows the killed worker held may have been repeated.
    assert!(duplicates <= 32, "{duplicates} repeats: more than one batch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sweeper_processes_end_each_of_300_due_sessions_exactly_once() {
    const DUE: i64 = 300;
    let database = verdict_testing::shared_server().create_database().await;
    drop(verdict_store::open(&database.url).await.expect("migrate"));
    let mut connection = sqlx::PgConnection::connect(&database.url).await.unwrap();
    // Created an hour ago, nobody joined: past the 15-minute join deadline.
    let an_hour_ago = verdict_store::clock::system_now_millis() - 3_600_000;
    sqlx::query(
        "INSERT INTO sessions (id, kind, status, customer_id, provider_id, created_at, \
         price_mode, price_amount_cents, currency) \
         SELECT 'due-' || n, 'video', 'waiting', 'c' || n, 'p' || n, $2, 'flat', 100, 'usd' \
         FROM generate_series(1, $1) AS n",
    )
    .bind(DUE)
    .bind(an_hour_ago)
    .execute(&mut connection)
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sweepers: Vec<Child> = (0..2)
        .map(|_| {
            Command::new(env!("CARGO_BIN_EXE_verdict"))
                .arg("worker")
                .env("VERDICT_WORKER_BIND", "127.0.0.1:0")
                .current_dir(dir.path())
                .env("VERDICT_DATABASE_URL", &database.url)
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .expect("start verdict worker")
        })
        .collect();
    let all_ended = verdict_testing::eventually(Duration::from_secs(60), async || {
        let open: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sessions WHERE ended_at IS NULL")
            .fetch_one(&mut connection)
            .await
            .unwrap();
        open == 0
    })
    .await;
    assert!(all_ended, "the sweepers ended every due session");
    drop(sweepers);

    let count = async |statement: &'static str| -> i64 {
        let mut connection = sqlx::PgConnection::connect(&database.url).await.unwrap();
        sqlx::query_scalar(statement).fetch_one(&mut connection).await.unwrap()
    };
    assert_eq!(count("SELECT COUNT(*) FROM session_events WHERE type = 'ended'").await, DUE);
    assert_eq!(
        count("SELECT COUNT(*) FROM (SELECT session_id FROM session_events WHERE type = 'ended' GROUP BY session_id HAVING COUNT(*) = 1) AS once").await,
        DUE
    );
    assert_eq!(
        count("SELECT COUNT(*) FROM notifications WHERE kind = 'session_expired'").await,
        2 * DUE
    );
    assert_eq!(
        count("SELECT COUNT(*) FROM outbox WHERE topic = 'webhook:session.ended'").await,
        DUE
    );
    assert_eq!(
        count("SELECT COUNT(*) FROM sessions WHERE status = 'expired' AND reason = 'no_show_both' AND ended_by = 'system' AND ended_at = created_at + 900000").await,
        DUE
    );
    assert_eq!(count("SELECT COUNT(*) FROM payouts").await, 0);
}
