//! What axum's extractors refuse is problem+json like every other error:
//! a path segment that is not UTF-8, a query that does not fit, a body that
//! is not JSON, JSON that does not parse.

use reqwest::{Method, StatusCode};

use crate::support::{Backend, TestApp};

const PROBLEM: &str = "application/problem+json";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_kind_of_rejection_is_problem_json() {
    let app = TestApp::spawn(Backend::Sqlite, |_| {}).await;
    let (service, admin) = (app.service(), app.admin());
    let raw = |method: Method, path: &str, token: &str| {
        app.client.request(method, format!("{}{path}", app.base)).bearer_auth(token.to_owned())
    };
    let cases = [
        ("a path segment that is not UTF-8", raw(Method::GET, "/v1/sessions/%FF%FE", &service)),
        (
            "a path segment not UTF-8 on an action",
            raw(Method::POST, "/v1/sessions/%C3%28/end", &service).json(&serde_json::json!({})),
        ),
        (
            "a query value of the wrong type",
            raw(Method::GET, "/v1/admin/review?limit=many", &admin),
        ),
        ("a query parameter unknown", raw(Method::GET, "/v1/admin/review?limt=5", &admin)),
        (
            "a body that is not JSON",
            raw(Method::POST, "/v1/sessions", &service)
                .header("content-type", "text/plain")
                .body("kind=chat"),
        ),
        (
            "JSON that does not parse",
            raw(Method::POST, "/v1/sessions", &service)
                .header("content-type", "application/json")
                .body("{\"kind\": "),
        ),
    ];
    for (what, request) in cases {
        let response = request.send().await.expect("the server answers");
        let status = response.status();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = response.text().await.unwrap_or_default();
        assert!(status.is_client_error(), "{what}: {status} {body}");
        assert_eq!(content_type, PROBLEM, "{what}: {status} {body}");
        let problem: serde_json::Value = serde_json::from_str(&body).expect("a JSON problem");
        assert_eq!(problem["status"], status.as_u16(), "{what}: {problem}");
        assert!(problem["type"].as_str().is_some_and(|t| t.starts_with("urn:verdict:problem:")));
    }
    let bad_path = raw(Method::GET, "/v1/sessions/%FF", &service).send().await.unwrap();
    assert_eq!(bad_path.status(), StatusCode::BAD_REQUEST);
}
