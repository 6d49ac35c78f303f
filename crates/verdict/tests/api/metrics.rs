//! `/metrics` stays cheap and bounded: label values from a closed set, and
//! the health gauge computed in the background, never by a scrape.

use reqwest::Method;
use serde_json::json;
use verdict_core::Role;

use crate::scale_out::{Client, serve, session_body};
use crate::support::{Backend, TestApp};

async fn scrape(client: &reqwest::Client, base: &str) -> prometheus_parse::Scrape {
    let text = client.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    prometheus_parse::Scrape::parse(text.lines().map(|line| Ok(line.to_owned()))).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn methods_outside_the_standard_set_are_labelled_other() {
    let app = TestApp::spawn(Backend::Sqlite, |_| {}).await;
    for method in ["PURGE", "BREW", "X-ANYTHING"] {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let url = format!("{}/v1/sessions", app.base);
        let response = app.client.request(method, url).send().await.unwrap();
        assert!(response.status().is_client_error(), "{}", response.status());
    }
    let scrape = scrape(&app.client, &app.base).await;
    let methods: Vec<&str> = scrape
        .samples
        .iter()
        .filter(|sample| sample.metric == "verdict_http_requests_total")
        .filter_map(|sample| sample.labels.get("method"))
        .collect();
    assert!(methods.contains(&"other"), "{methods:?}");
    let standard = ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"];
    assert!(
        methods.iter().all(|method| *method == "other" || standard.contains(method)),
        "{methods:?}"
    );
}

/// In a process of its own, so that the gauge is this server's alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_never_recomputes_the_health_gauge() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/verdict.db", dir.path().display());
    let server = serve(&url, dir.path()).await;
    let client = Client::new();
    let http = reqwest::Client::new();
    let (service, admin) =
        (client.token(Role::Service, "platform"), client.token(Role::Admin, "ops"));
    client.post(&server, "/v1/sessions", &service, Some(session_body("s1"))).await;
    for (role, sub) in [(Role::Customer, "cust-1"), (Role::Provider, "prov-1")] {
        client.post(&server, "/v1/sessions/s1/join", &client.token(role, sub), None).await;
    }
    client.post(&server, "/v1/test-clock/advance", &admin, Some(json!({"seconds": 120}))).await;
    let (status, ended) = client.post(&server, "/v1/sessions/s1/end", &service, None).await;
    assert_eq!((status.as_u16(), ended["outcome"]["status"].as_str()), (200, Some("completed")));
    // Dead deliveries: the score drops below 100 from now on.
    {
        use sqlx::Connection;
        let mut connection = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::query("UPDATE outbox SET state = 'dead'").execute(&mut connection).await.unwrap();
    }
    let health = |scrape: &prometheus_parse::Scrape| {
        scrape.samples.iter().find(|sample| sample.metric == "verdict_health_score").map(|sample| {
            match sample.value {
                prometheus_parse::Value::Gauge(value) => value,
                _ => panic!("a gauge"),
            }
        })
    };
    // The background refresh ran at start (100, idle) and runs again only
    // a minute later: scrapes show its value, whatever the database says.
    for _ in 0..3 {
        let gauge = health(&scrape(&http, &server.base).await);
        assert!(gauge.is_none_or(|score| score == 100.0), "recomputed by a scrape: {gauge:?}");
    }
    // The health route computes it (and sets the gauge), as it always did.
    let reply = http
        .get(format!("{}/v1/admin/health", server.base))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    let score = reply.json::<serde_json::Value>().await.unwrap()["score"].as_f64().unwrap();
    assert!(score < 100.0, "{score}");
    assert_eq!(health(&scrape(&http, &server.base).await), Some(score));
}
