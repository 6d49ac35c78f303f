//! The demo room in headless Chromium: `verdict demo` as a user runs it,
//! the customer and the provider each in a browser of their own, the page
//! script being the TypeScript client bundled into the binary.
//!
//! The one test that waits in real time: the server runs on the system
//! clock (a browser cannot move a manual one), with a minimum of a few
//! seconds so that the wait is short.

use std::time::{Duration, SystemTime};

use serde_json::Value;
use verdict_core::Role;
use verdict_http::{JwtKeys, JwtSecret};

use crate::browser::Browser;
use crate::support::{Backend, SECRET, TestApp, serve_process};

/// The billable minimum of every kind here.
const MIN_SECONDS: u64 = 3;

struct Demo {
    base: String,
    http: reqwest::Client,
    admin: String,
    _process: tokio::process::Child,
    _dir: tempfile::TempDir,
}

impl Demo {
    async fn start() -> Demo {
        verdict_worker::install_crypto();
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("verdict.toml");
        std::fs::write(&config, format!("min_billable_seconds = {MIN_SECONDS}\n")).unwrap();
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_verdict"));
        command
            .args(["demo", "--bind", "127.0.0.1:0"])
            .current_dir(dir.path())
            .env("VERDICT_CONFIG", &config)
            .env(
                "VERDICT_DATABASE_URL",
                format!("sqlite://{}", dir.path().join("demo.db").display()),
            )
            .env("VERDICT_JWT_SECRET", SECRET)
            .env("RUST_LOG", "warn");
        let (process, base) = serve_process(&mut command).await;
        let keys = JwtKeys::new(&JwtSecret::new(SECRET.as_bytes().to_vec()));
        let admin = keys.mint(Role::Admin, "demo-room-test", unix_now() + 3600);
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
        Demo { base, http, admin, _process: process, _dir: dir }
    }

    async fn get(&self, path: &str) -> Value {
        let response =
            self.http.get(format!("{}{path}", self.base)).bearer_auth(&self.admin).send().await;
        let response = response.unwrap();
        assert!(response.status().is_success(), "{path}: {}", response.status());
        response.json().await.unwrap()
    }

    /// The rooms `/demo` lists, newest first.
    async fn rooms(&self) -> Vec<String> {
        let page = self.http.get(format!("{}/demo", self.base)).send().await.unwrap();
        assert_eq!(page.status(), 200);
        let csp = page.headers()["content-security-policy"].to_str().unwrap().to_owned();
        assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"), "{csp}");
        let html = page.text().await.unwrap();
        html.split("data-session=\"")
            .skip(1)
            .map(|rest| rest[..rest.find('"').unwrap()].to_owned())
            .collect()
    }

    fn room(&self, id: &str, party: &str) -> String {
        format!("{}/demo/rooms/{id}?as={party}", self.base)
    }

    async fn events(&self, id: &str) -> Vec<Value> {
        self.get(&format!("/v1/sessions/{id}/events?limit=500")).await["items"]
            .as_array()
            .unwrap()
            .clone()
    }

    /// Waits (bounded) until the audit trail has `party`'s `event`; returns it.
    async fn wait_for_event(&self, id: &str, event: &str, party: &str) -> Value {
        for _ in 0..300 {
            let found = self
                .events(id)
                .await
                .into_iter()
                .find(|e| e["type"] == event && e["party"] == party);
            if let Some(found) = found {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no {party} {event} on {id}: {:?}", self.events(id).await);
    }
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as i64
}

fn millis(at: &Value) -> i64 {
    let text = at.as_str().unwrap();
    let at = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|error| panic!("{text}: {error}"));
    (at.unix_timestamp_nanos() / 1_000_000) as i64
}

fn now_millis() -> i64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_millis() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_parties_meet_in_the_demo_room_and_see_what_verdict_decided() {
    let demo = Demo::start().await;
    let rooms = demo.rooms().await;
    assert!(rooms.len() >= 2, "the demo opens rooms at start: {rooms:?}");
    let (met, alone) = (&rooms[0], &rooms[1]);

    // Together past the minimum; then the provider closes its page.
    let customer = Browser::start().await;
    let provider = Browser::start().await;
    customer.go(&demo.room(met, "customer")).await;
    provider.go(&format!("{}/demo", demo.base)).await;
    let list_tab = provider.url().await;
    assert!(list_tab.ends_with("/demo"), "{list_tab}");
    let handles = provider
        .call(reqwest::Method::GET, "/window/handles", None)
        .await
        .as_array()
        .unwrap()
        .clone();
    let first_tab = handles[0].as_str().unwrap().to_owned();
    provider.open_tab(&demo.room(met, "provider")).await;
    demo.wait_for_event(met, "joined", "customer").await;
    demo.wait_for_event(met, "joined", "provider").await;
    tokio::time::sleep(Duration::from_secs(MIN_SECONDS + 2)).await;
    let closed_at = now_millis();
    let tabs_left = provider.close_tab().await;
    assert_eq!(tabs_left, vec![first_tab.clone()]);
    let left = demo.wait_for_event(met, "left", "provider").await;
    let left_at = millis(&left["at"]);
    // Sent on pagehide, not found missing by a heartbeat timeout (60 s).
    assert!(
        (closed_at - 1_000..closed_at + 5_000).contains(&left_at),
        "the provider's left at {left_at}, its page closed at {closed_at}"
    );

    // The customer ends it: no status sent, the server decides.
    customer.click("#end").await;
    assert_eq!(customer.wait_for_text("#decision-status").await, "completed");
    let session = demo.get(&format!("/v1/sessions/{met}")).await;
    assert_eq!(session["status"], "completed");
    let billable = session["billable_seconds"].as_i64().unwrap();
    assert!(billable >= MIN_SECONDS as i64, "{session}");
    assert_eq!(customer.text("#decision-billable").await, billable.to_string());
    assert_eq!(customer.text("#decision-reason").await, session["reason"].as_str().unwrap());
    let ended = demo.events(met).await.into_iter().find(|e| e["type"] == "ended").unwrap();
    assert_eq!(ended["data"]["claimed"], Value::Null, "the page sent no status: {ended}");
    let dashboard = customer.attribute("#dashboard-link", "href").await;
    assert!(dashboard.ends_with(&format!("/admin/sessions/{met}")), "{dashboard}");
    let picture = customer.screenshot("demo-room").await;
    assert!(std::fs::metadata(picture).unwrap().len() > 0);

    // The provider's page, opened again, shows the same decision.
    provider.switch_to(&first_tab).await;
    provider.go(&demo.room(met, "provider")).await;
    assert_eq!(provider.wait_for_text("#decision-status").await, "completed");
    assert_eq!(provider.text("#decision-billable").await, billable.to_string());
    let joins = demo
        .events(met)
        .await
        .into_iter()
        .filter(|e| e["type"] == "joined" && e["party"] == "provider")
        .count();
    assert_eq!(joins, 1, "a decided session is not joined again");

    // A room the provider never opens.
    customer.go(&demo.room(alone, "customer")).await;
    demo.wait_for_event(alone, "joined", "customer").await;
    customer.click("#end").await;
    assert_eq!(customer.wait_for_text("#decision-status").await, "cancelled");
    assert_eq!(customer.text("#decision-reason").await, "no_show_provider");
    assert_eq!(customer.text("#decision-billable").await, "0");
    let session = demo.get(&format!("/v1/sessions/{alone}")).await;
    assert_eq!(
        (&session["status"], &session["reason"]),
        (&"cancelled".into(), &"no_show_provider".into())
    );

    customer.quit().await;
    provider.quit().await;
}

#[tokio::test]
async fn room_pages_exist_only_for_the_demos_rooms_and_its_parties() {
    let demo = Demo::start().await;
    let rooms = demo.rooms().await;
    let page = |url: String| {
        let http = demo.http.clone();
        async move { http.get(url).send().await.unwrap() }
    };
    // A session the demo did not open for the browser: no page, no token.
    let response = page(demo.room("demo-room-not-one", "customer")).await;
    assert_eq!(response.status(), 404);
    let response = page(demo.room(&rooms[0], "admin")).await;
    assert_eq!(response.status(), 422, "only customer or provider");
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    let response = page(demo.room(&rooms[0], "provider")).await;
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("script-src 'self'")
    );
    let html = response.text().await.unwrap();
    assert!(html.contains("src=\"/demo/assets/room.js\"") && !html.contains("<script>"), "{html}");
    // The page's token is the provider's, for that session only.
    let token = html.split("data-token=\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
    let other = &rooms[1];
    let mine = demo.http.get(format!("{}/v1/sessions/{}", demo.base, rooms[0])).bearer_auth(&token);
    assert_eq!(mine.send().await.unwrap().status(), 200);
    let theirs = demo.http.get(format!("{}/v1/sessions/{other}", demo.base)).bearer_auth(&token);
    assert_eq!(theirs.send().await.unwrap().status(), 403);
    // The form opens a room; a post from another site does not.
    let open = |site: &'static str| {
        demo.http.post(format!("{}/demo/rooms", demo.base)).header("sec-fetch-site", site).send()
    };
    assert_eq!(open("cross-site").await.unwrap().status(), 403);
    assert_eq!(demo.rooms().await.len(), rooms.len());
    let opened = open("same-origin").await.unwrap();
    assert!(
        opened.status().is_success() || opened.status().is_redirection(),
        "{}",
        opened.status()
    );
    assert_eq!(demo.rooms().await.len(), rooms.len() + 1);
    let script = page(format!("{}/demo/assets/room.js", demo.base)).await;
    assert_eq!(script.headers()["content-type"], "text/javascript");
    assert!(script.text().await.unwrap().contains("/v1/sessions/{id}/heartbeat"));
}

/// Outside `verdict demo` there is no demo room.
#[tokio::test]
async fn a_server_that_is_not_the_demo_has_no_demo_pages() {
    let app = TestApp::spawn(Backend::Sqlite, |_| {}).await;
    for path in ["/demo", "/demo/rooms/x?as=customer", "/demo/assets/room.js"] {
        let reply = app.get(path, &app.admin()).await;
        assert_eq!(reply.status, 404, "{path}");
    }
}
