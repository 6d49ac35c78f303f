//! CORS (`cors_allowed_origins`): a listed origin's preflights and calls to
//! `/v1/*` get CORS headers; an unlisted origin, another path, or no
//! configured origin at all get none.

use reqwest::{Method, Response, StatusCode};

use crate::support::{Backend, TestApp};

const LISTED: &str = "https://app.example.com";
const UNLISTED: &str = "https://evil.example";

async fn spawn(origins: &[&str]) -> TestApp {
    let origins: Vec<String> = origins.iter().map(|origin| (*origin).to_owned()).collect();
    TestApp::spawn(Backend::Sqlite, move |config| config.cors_allowed_origins = origins).await
}

async fn preflight(app: &TestApp, origin: &str, path: &str) -> Response {
    app.client
        .request(Method::OPTIONS, format!("{}{path}", app.base))
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "authorization, content-type, idempotency-key")
        .send()
        .await
        .expect("the server answers")
}

fn header<'a>(response: &'a Response, name: &str) -> Option<&'a str> {
    response.headers().get(name).and_then(|value| value.to_str().ok())
}

fn cors_headers(response: &Response) -> Vec<String> {
    response
        .headers()
        .keys()
        .map(|name| name.as_str().to_owned())
        .filter(|name| name.starts_with("access-control-"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listed_origin_is_answered_its_preflight_and_its_calls() {
    let app = spawn(&[LISTED, "http://localhost:5173"]).await;
    let response = preflight(&app, LISTED, "/v1/sessions").await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&response, "access-control-allow-origin"), Some(LISTED));
    let methods = header(&response, "access-control-allow-methods").unwrap_or_default();
    assert!(methods.contains("POST") && methods.contains("GET"), "{methods}");
    let allowed = header(&response, "access-control-allow-headers").unwrap_or_default();
    for name in ["authorization", "content-type", "idempotency-key"] {
        assert!(allowed.contains(name), "{name} not allowed: {allowed}");
    }

    // The call itself: the origin allowed, the headers a client reads exposed.
    let created = app
        .client
        .post(format!("{}/v1/sessions", app.base))
        .header("origin", LISTED)
        .bearer_auth(app.service())
        .json(&serde_json::json!({
            "kind": "chat", "customer_id": "cust-1", "provider_id": "prov-1",
            "price": {"mode": "per_minute", "amount_cents": 100, "currency": "eur"}
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    assert_eq!(header(&created, "access-control-allow-origin"), Some(LISTED));
    let exposed = header(&created, "access-control-expose-headers").unwrap_or_default();
    for name in ["retry-after", "idempotent-replayed", "x-request-id"] {
        assert!(exposed.contains(name), "{name} not exposed: {exposed}");
    }
    // A problem answer (no token) carries the header too: the page can read it.
    let refused = app
        .client
        .get(format!("{}/v1/sessions/none", app.base))
        .header("origin", "http://localhost:5173")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(header(&refused, "access-control-allow-origin"), Some("http://localhost:5173"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unlisted_origin_another_path_or_no_configuration_get_no_cors_header() {
    let app = spawn(&[LISTED]).await;
    for (origin, path) in [(UNLISTED, "/v1/sessions"), (LISTED, "/healthz"), (LISTED, "/metrics")] {
        let response = preflight(&app, origin, path).await;
        assert_ne!(response.status(), StatusCode::NO_CONTENT, "{origin} {path}");
        assert!(
            cors_headers(&response).is_empty(),
            "{origin} {path}: {:?}",
            cors_headers(&response)
        );
    }
    let call = app
        .client
        .get(format!("{}/v1/sessions/none", app.base))
        .header("origin", UNLISTED)
        .bearer_auth(app.service())
        .send()
        .await
        .unwrap();
    assert_eq!(call.status(), StatusCode::NOT_FOUND);
    assert!(cors_headers(&call).is_empty(), "{:?}", cors_headers(&call));

    let plain = spawn(&[]).await;
    let response = preflight(&plain, LISTED, "/v1/sessions").await;
    assert!(cors_headers(&response).is_empty(), "{:?}", cors_headers(&response));
}

#[test]
fn an_origin_with_a_path_or_a_wildcard_is_refused() {
    for origin in ["*", "https://app.example.com/", "app.example.com", "https://a.example/x", ""] {
        let refused = verdict_http::cors::Cors::new(&[origin.to_owned()]);
        assert!(refused.is_err(), "{origin:?} accepted");
    }
    assert!(verdict_http::cors::Cors::new(&["http://[::1]:8080".to_owned()]).is_ok());
}
