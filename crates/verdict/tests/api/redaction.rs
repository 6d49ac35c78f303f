//! Nothing sensitive leaves (issue 24, item 14): webhook URLs with
//! credentials never reach `last_error` (nor the logs, which print the same
//! text), and a database's own error text never reaches a response.

use crate::fakes::Receiver;
use crate::support::{TestApp, on_every_backend};

on_every_backend!(
    a_webhook_url_with_credentials_never_reaches_last_error,
    a_unique_violation_is_answered_without_the_database_text,
);

async fn a_webhook_url_with_credentials_never_reaches_last_error(app: TestApp) {
    let receiver = Receiver::start(Some(503), None).await;
    let with_credentials = format!(
        "{}?token=s3cret-token",
        receiver.url.replacen("http://", "http://hook-user:pa55word@", 1)
    );
    let worker = app.worker(|config| config.webhooks.urls = vec![with_credentials]);
    app.create_session("s1").await;
    app.end("s1", &app.service(), None).await.ok();
    app.drain(&worker).await;
    assert!(!receiver.received().is_empty(), "the receiver was called");
    let rows = app.get("/v1/admin/outbox?state=pending", &app.admin()).await.ok()["items"].clone();
    let errors: Vec<&str> =
        rows.as_array().unwrap().iter().filter_map(|row| row["last_error"].as_str()).collect();
    assert!(!errors.is_empty(), "{rows}");
    for error in errors {
        assert!(error.contains("503") && error.contains("/hook"), "{error}");
        for secret in ["pa55word", "hook-user", "s3cret-token"] {
            assert!(!error.contains(secret), "{secret} in {error}");
        }
    }
}

async fn a_unique_violation_is_answered_without_the_database_text(app: TestApp) {
    app.create_session("s1").await;
    // An old writer left the row the session's start would queue.
    app.sql(
        "INSERT INTO outbox (session_id, topic, channel, dedupe_key, payload, state, due_at, \
         created_at) VALUES ('s1', 'webhook:session.started', 'webhook', \
         'webhook:session.started:s1', '{}', 'delivered', 0, 0)",
    )
    .await;
    app.join("s1", &app.customer()).await.ok();
    let before = app.counts().await;
    let detail = app.join("s1", &app.provider()).await.problem(409);
    for word in ["UNIQUE", "unique", "duplicate", "constraint", "outbox", "dedupe"] {
        assert!(!detail.contains(word), "{word:?} in {detail:?}");
    }
    assert_eq!(app.counts().await, before, "nothing changed");
}
