//! Pages that hold on any screen: every page of the dashboard and the demo
//! room, at 1400 px and at 390 px (a phone), in headless Chromium on a
//! running `verdict demo` (real history, live sessions). A page fails when
//! it scrolls sideways, or when an element outside a table's own scroll box
//! is wider than its card. The screenshots go to the tests' output folder;
//! `scripts/screenshots.sh` copies them into docs/ on purpose.

use serde_json::Value;
use verdict_core::Role;
use verdict_http::{JwtKeys, JwtSecret};

use crate::browser::Browser;
use crate::support::{SECRET, serve_process};

/// What overflows on the current page: a sideways scroll of the page, and
/// every element (outside a `.scroll` box) that pokes out of its card.
const OVERFLOW: &str = r#"
const found = [];
const root = document.documentElement;
if (root.scrollWidth > window.innerWidth) {
  found.push(`the page is ${root.scrollWidth} px wide in a ${window.innerWidth} px window`);
}
for (const card of document.querySelectorAll('.card, .page, main')) {
  const edge = card.getBoundingClientRect();
  for (const element of card.querySelectorAll('*')) {
    if (element.closest('.scroll') && element.closest('.scroll') !== element) continue;
    if (element.closest('svg') && element.tagName.toLowerCase() !== 'svg') continue;
    const box = element.getBoundingClientRect();
    if (box.width === 0) continue;
    if (box.right > edge.right + 1 || box.left < edge.left - 1) {
      const name = element.tagName.toLowerCase() + (element.id ? '#' + element.id : '') +
        (element.className && typeof element.className === 'string' ? '.' + element.className.split(' ').join('.') : '');
      found.push(`${name} (${Math.round(box.left)}–${Math.round(box.right)}) outside its card (${Math.round(edge.left)}–${Math.round(edge.right)}): ${(element.textContent || '').trim().slice(0, 40)}`);
    }
  }
}
return found.slice(0, 10);
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_lays_out_without_overflow_at_1400_and_390_px() {
    verdict_worker::install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_verdict"));
    command
        .args(["demo", "--bind", "127.0.0.1:0"])
        .current_dir(dir.path())
        .env("VERDICT_CONFIG", dir.path().join("verdict.toml"))
        .env("VERDICT_DATABASE_URL", format!("sqlite://{}/layout.db", dir.path().display()))
        .env("VERDICT_JWT_SECRET", SECRET)
        .env("RUST_LOG", "warn");
    let (mut demo, base) = serve_process(&mut command).await;
    let keys = JwtKeys::new(&JwtSecret::new(SECRET.as_bytes().to_vec()));
    let admin = keys.mint(Role::Admin, "layout", i64::MAX / 4);
    let http = reqwest::Client::new();

    // A session with an audit trail and deliveries (notifications, e-mails).
    let service = keys.mint(Role::Service, "platform", i64::MAX / 4);
    let call = |method: reqwest::Method, path: &str, token: &str, body: Value| {
        let request = http.request(method, format!("{base}{path}")).bearer_auth(token).json(&body);
        async move {
            let response = request.send().await.unwrap();
            assert!(response.status().is_success(), "{}", response.text().await.unwrap());
        }
    };
    for user in ["layout-customer", "layout-provider"] {
        let email = serde_json::json!({"email": format!("{user}@example.com")});
        call(reqwest::Method::PUT, &format!("/v1/users/{user}"), &service, email).await;
    }
    let session = "layout-session-with-a-rather-long-identifier-0001";
    let new = serde_json::json!({"id": session, "kind": "video", "customer_id": "layout-customer",
        "provider_id": "layout-provider",
        "price": {"mode": "flat", "amount_cents": 2500, "currency": "usd"}});
    call(reqwest::Method::POST, "/v1/sessions", &service, new).await;
    for (role, sub) in [(Role::Customer, "layout-customer"), (Role::Provider, "layout-provider")] {
        let token = keys.mint(role, sub, i64::MAX / 4);
        call(
            reqwest::Method::POST,
            &format!("/v1/sessions/{session}/join"),
            &token,
            serde_json::json!({}),
        )
        .await;
    }
    call(
        reqwest::Method::POST,
        &format!("/v1/sessions/{session}/end"),
        &service,
        serde_json::json!({}),
    )
    .await;
    let rooms = http.get(format!("{base}/demo")).send().await.unwrap().text().await.unwrap();
    let room = rooms.split("data-session=\"").nth(1).unwrap().split('"').next().unwrap().to_owned();

    let browser = Browser::start().await;
    browser.go(&format!("{base}/admin/sign-in")).await;
    let pages = [
        ("sign-in", "/admin/sign-in".to_owned()),
        ("dashboard", "/admin/sessions/session-health".to_owned()),
        ("review", "/admin/review".to_owned()),
        ("session", format!("/admin/sessions/{session}")),
        ("provider", "/admin/providers/layout-provider".to_owned()),
        ("demo-rooms", "/demo".to_owned()),
        ("demo-room", format!("/demo/rooms/{room}?as=customer")),
    ];
    let mut failures = Vec::new();
    for (width, height) in [(1400, 1000), (390, 844)] {
        browser.set_viewport(width, height).await;
        browser.call(reqwest::Method::DELETE, "/cookie", None).await;
        for (name, path) in &pages {
            if *name == "dashboard" {
                browser.add_cookie("verdict_admin", &admin).await;
            }
            browser.go(&format!("{base}{path}")).await;
            let at = browser.url().await;
            assert!(at.ends_with(path.as_str()), "{name}: landed on {at}");
            if *name == "demo-room" {
                browser.wait_for_text("#now-customer").await;
            }
            let found = browser.execute(OVERFLOW).await;
            let found: Vec<String> =
                found.as_array().unwrap().iter().map(|f| f.as_str().unwrap().to_owned()).collect();
            if *name == "dashboard" && width == 1400 {
                // The history's misclassifications are critical alerts: the
                // line beside the label names them, the chart says its colours.
                let line = browser.text("#status-line").await;
                assert!(line.contains("critical: misclassified"), "{line}");
                assert_eq!(browser.find_all("#hourly-legend li").await.len(), 5);
            }
            browser.screenshot(&format!("{name}-{width}")).await;
            if !found.is_empty() {
                failures.push(format!("{name} at {width} px: {found:#?}"));
            }
        }
    }
    browser.quit().await;
    // The icon a browser asks for on its own is there.
    let icon = http.get(format!("{base}/favicon.ico")).send().await.unwrap();
    assert_eq!(icon.status(), 200);
    assert_eq!(icon.headers()["content-type"], "image/svg+xml");
    demo.kill().await.unwrap();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
