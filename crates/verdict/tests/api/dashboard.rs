//! The admin dashboard: who may see it (every database), and an end-to-end
//! run in headless Chromium driven over WebDriver (chromedriver).

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, LOCATION, SET_COOKIE};
use verdict_core::Role;
use verdict_http::{JwtKeys, JwtSecret};

use crate::browser::Browser;
use crate::support::{Backend, TestApp, on_every_backend};

on_every_backend!(only_admins_see_the_dashboard_and_the_cookie_only_opens_pages);

const DASHBOARD: &str = "/admin/sessions/session-health";

/// A client that shows redirects instead of following them.
fn browser_like() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

fn set_cookie(headers: &HeaderMap) -> Option<String> {
    headers.get(SET_COOKIE).map(|value| value.to_str().unwrap().to_owned())
}

async fn only_admins_see_the_dashboard_and_the_cookie_only_opens_pages(app: TestApp) {
    let client = browser_like();
    let url = |path: &str| format!("{}{path}", app.base);
    let no_data = |body: &str| {
        assert!(!body.contains("data-metric") && !body.contains("id=\"score\""), "{body}");
    };

    // Anonymous: to the sign-in page, for the page and for its refresh.
    for path in
        [DASHBOARD, "/admin/sessions/session-health/panel", "/admin/review", "/admin/sessions/x"]
    {
        let response = client.get(url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::SEE_OTHER, "{path}");
        assert_eq!(response.headers()[LOCATION], "/admin/sign-in");
        no_data(&response.text().await.unwrap());
    }
    // A non-admin bearer token, or a non-admin token as the cookie: 403.
    let response = client.get(url(DASHBOARD)).bearer_auth(app.provider()).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    no_data(&response.text().await.unwrap());
    let cookie = format!("verdict_admin={}", app.customer());
    let response = client.get(url(DASHBOARD)).header("cookie", cookie).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    no_data(&response.text().await.unwrap());
    // A forged cookie (another secret): back to sign-in, the cookie cleared.
    let forged = JwtKeys::new(&JwtSecret::new(b"not-the-server-secret-at-all".to_vec())).mint(
        Role::Admin,
        "mallory",
        4_000_000_000,
    );
    let response = client
        .get(url(DASHBOARD))
        .header("cookie", format!("verdict_admin={forged}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert!(set_cookie(response.headers()).unwrap().contains("Max-Age=0"));
    no_data(&response.text().await.unwrap());

    // Signing in: a non-admin or bad token sets no cookie.
    for (token, status) in [
        (app.provider(), StatusCode::FORBIDDEN),
        (forged.clone(), StatusCode::UNAUTHORIZED),
        ("garbage".to_owned(), StatusCode::UNAUTHORIZED),
    ] {
        let response =
            client.post(url("/admin/sign-in")).form(&[("token", token)]).send().await.unwrap();
        assert_eq!(response.status(), status);
        assert_eq!(set_cookie(response.headers()), None);
    }
    let response = client.post(url("/admin/sign-in")).form(&[("nope", "x")]).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    // An admin token: a strict, HttpOnly cookie for /admin; Secure behind TLS.
    let admin = app.admin();
    let response =
        client.post(url("/admin/sign-in")).form(&[("token", &admin)]).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(response.headers()[LOCATION], DASHBOARD);
    let cookie = set_cookie(response.headers()).unwrap();
    assert!(cookie.starts_with(&format!("verdict_admin={admin};")), "{cookie}");
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/admin", "Max-Age="] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    assert!(!cookie.contains("Secure"), "plain HTTP: {cookie}");
    let behind_tls = client
        .post(url("/admin/sign-in"))
        .header("x-forwarded-proto", "https")
        .form(&[("token", &admin)])
        .send()
        .await
        .unwrap();
    assert!(set_cookie(behind_tls.headers()).unwrap().ends_with("; Secure"));

    // With the cookie: the page, with its security headers.
    let cookie = format!("verdict_admin={admin}");
    let response = client.get(url(DASHBOARD)).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers().clone();
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(headers["x-frame-options"], "DENY");
    assert_eq!(headers["cache-control"], "no-store");
    let body = response.text().await.unwrap();
    assert!(body.contains("data-metric=\"completion_rate\""), "{body}");
    assert!(!body.contains("<script>"), "no inline script");
    // The cookie opens pages only: the JSON API stays bearer-only.
    let api = client.get(url("/v1/admin/health")).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(api.status(), StatusCode::UNAUTHORIZED);
    // Bad input on the pages: precise 4xx.
    let response = client
        .get(url("/admin/review?reason=everything"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let response = client
        .get(url("/admin/sessions/no-such-session"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let response = client
        .get(url(&format!("{DASHBOARD}?window_hours=0")))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    // Signing out clears the cookie.
    let response =
        client.post(url("/admin/sign-out")).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(response.headers()[LOCATION], "/admin/sign-in");
    assert!(set_cookie(response.headers()).unwrap().contains("Max-Age=0"));
}

/// Seeds a day of history (with the old system's misclassifications) and
/// drives the dashboard in Chromium as an operator would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_signs_in_reads_the_dashboard_follows_an_alert_and_signs_out() {
    let app = TestApp::spawn(Backend::Sqlite, |config| config.dashboard_refresh_seconds = 1).await;
    let mut history = Vec::new();
    verdict::generate::history(&mut history, 400, 1, 11, app.state.clock.now()).unwrap();
    let imported = app
        .client
        .post(format!("{}/v1/admin/import", app.base))
        .bearer_auth(app.admin())
        .header("content-type", "application/x-ndjson")
        .body(history)
        .send()
        .await
        .unwrap();
    assert_eq!(imported.status(), StatusCode::OK);
    // A provider with 12 no-shows of 20: threshold alerts scoped to it.
    let now = app.state.clock.now();
    let outcomes = [("no_show_provider", 12), ("completed", 8)];
    let bad = crate::insight::sessions(now, "bad", "chat", &["p-bad"], &outcomes);
    crate::insight::import(&app, &bad).await;
    let health = app.get("/v1/admin/health", &app.admin()).await.ok().clone();
    assert!(health["alerts"].as_array().unwrap().len() >= 2, "{health}");

    let browser = Browser::start().await;
    let page = format!("{}{DASHBOARD}", app.base);
    browser.go(&page).await;
    assert!(browser.url().await.ends_with("/admin/sign-in"), "anonymous → sign-in");
    browser.screenshot("1-sign-in").await;
    browser.type_into("#token", &app.admin()).await;
    browser.click("#sign-in").await;
    browser.wait_for_url(DASHBOARD).await;
    assert_eq!(browser.url().await, page);

    // Everything shown is what the API says.
    assert_eq!(
        browser.attribute("#score", "data-value").await.parse::<f64>().unwrap(),
        health["score"].as_f64().unwrap()
    );
    assert_eq!(browser.attribute("#label", "data-value").await, health["label"].as_str().unwrap());
    assert_eq!(browser.text("#label").await.to_lowercase(), health["label"].as_str().unwrap());
    assert_eq!(
        browser.attribute("[data-metric=ended]", "data-value").await,
        health["ended"].to_string()
    );
    for (metric, value) in health["metrics"].as_object().unwrap() {
        let shown = browser.attribute(&format!("[data-metric={metric}]"), "data-value").await;
        assert_eq!(shown.parse::<f64>().unwrap(), value.as_f64().unwrap(), "{metric}");
    }
    let alerts = health["alerts"].as_array().unwrap();
    assert_eq!(browser.find_all("[data-alert]").await.len(), alerts.len());
    for alert in alerts {
        let kind = alert["kind"].as_str().unwrap();
        // Threshold alerts: one per scope.
        let selector = match alert["scope"].as_object().and_then(|scope| scope.iter().next()) {
            Some((field, value)) => {
                format!("[data-alert={kind}][data-scope='{field}={}']", value.as_str().unwrap())
            }
            None => format!("[data-alert={kind}]"),
        };
        let count = browser.attribute(&selector, "data-count").await;
        assert_eq!(count, alert["count"].to_string(), "{kind}");
    }
    // The per-kind table is the API's `by_kind`.
    let by_kind = health["by_kind"].as_object().unwrap();
    assert_eq!(browser.find_all("#by-kind tr[data-kind]").await.len(), 3);
    for (kind, figures) in by_kind {
        let row = format!("#by-kind tr[data-kind={kind}]");
        assert_eq!(browser.attribute(&row, "data-ended").await, figures["ended"].to_string());
        let shown = browser.attribute(&row, "data-completion-rate").await;
        assert_eq!(
            shown.parse::<f64>().unwrap(),
            figures["metrics"]["completion_rate"].as_f64().unwrap(),
            "{kind}"
        );
    }
    let scoped = "[data-alert=no_show_rate_above][data-scope='provider_id=p-bad']";
    assert_eq!(browser.find_all(scoped).await.len(), 1, "p-bad's no-show alert");
    browser.screenshot("2b-insight").await;
    // A provider's alert leads to its stats.
    browser.click_in_panel(&format!("{scoped} a"), "/admin/providers/p-bad").await;
    assert!(browser.text("[data-metric=sessions]").await.contains("20"));
    assert!(browser.text("[data-metric=no_show_rate]").await.contains("60.0 %"));
    browser.screenshot("2c-provider").await;
    browser.go(&page).await;
    browser.wait_for_url(DASHBOARD).await;
    assert_eq!(browser.find_all("#hourly rect[data-hour]").await.len(), 24);
    browser.screenshot("2-dashboard").await;

    // The panel refreshes in place: the server's clock moves, the shown
    // update time follows, and an element outside the panel is the same
    // element (a reload would have made it stale).
    let header = browser.find("#sign-out").await;
    let shown = browser.attribute("#updated", "data-value").await;
    app.advance(120).await;
    let mut refreshed = false;
    for _ in 0..100 {
        if browser.attribute("#updated", "data-value").await != shown {
            refreshed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(refreshed, "the panel did not refresh");
    let same = browser.call(reqwest::Method::GET, &format!("/element/{header}/text"), None).await;
    assert_eq!(same, "Sign out");

    // An alert leads to the review queue, a row to the session explained.
    browser
        .click_in_panel(
            "[data-alert=misclassified_completed] a",
            "/admin/review?reason=misclassified_completed",
        )
        .await;
    let rows = browser.find_all("tr[data-session]").await;
    assert!(!rows.is_empty());
    let first = browser.attribute("tr[data-session]", "data-session").await;
    browser.screenshot("3-review").await;
    browser.click("tr[data-session] a").await;
    browser.wait_for_url(&format!("/admin/sessions/{first}")).await;
    assert_eq!(browser.attribute("#session-id", "data-value").await, first);
    assert!(browser.text("#findings").await.contains("misclassified completed"));
    assert_eq!(browser.find_all("svg[aria-label='Presence timeline']").await.len(), 1);
    browser.screenshot("4-session").await;

    // Signing out: back to sign-in, and the data is gone.
    browser.click("#sign-out").await;
    browser.wait_for_url("/admin/sign-in").await;
    browser.go(&page).await;
    assert!(browser.url().await.ends_with("/admin/sign-in"));
    let source = browser.source().await;
    assert!(!source.contains("data-metric") && !source.contains("id=\"score\""));
    browser.screenshot("5-signed-out").await;
    browser.quit().await;
}
