//! Webhooks per endpoint (issue 24, item 11): each configured endpoint has
//! its own delivery of each message — a failing receiver retries and
//! dead-letters alone while healthy ones get every message once, in order —
//! and `VERDICT_WEBHOOK_SECRET` may hold several secrets, each signing.

use std::collections::BTreeMap;

use base64::Engine;
use serde_json::json;

use crate::fakes::Receiver;
use crate::support::{TestApp, on_every_backend};

on_every_backend!(
    a_failing_endpoint_retries_and_dead_letters_alone,
    several_secrets_each_sign_every_message,
);

/// A session both parties attend for 90 s, then ended: `session.started`
/// and `session.ended`.
async fn attended_session(app: &TestApp, id: &str) {
    let body = json!({"id": id, "kind": "video", "customer_id": "cust-1", "provider_id": "prov-1",
        "price": {"mode": "flat", "amount_cents": 2500, "currency": "usd"}});
    app.post("/v1/sessions", &app.service(), body).await.ok();
    app.join(id, &app.customer()).await.ok();
    app.join(id, &app.provider()).await.ok();
    app.advance(90).await;
    app.end(id, &app.service(), None).await.ok();
}

/// `webhook-id` → how many times it arrived, and the event types in order.
fn tally(receiver: &Receiver) -> (BTreeMap<String, usize>, Vec<String>) {
    let mut ids = BTreeMap::new();
    for message in receiver.received() {
        let id = message.headers["webhook-id"].to_str().unwrap().to_owned();
        *ids.entry(id).or_insert(0) += 1;
    }
    let types = receiver.events().iter().map(|e| e["type"].as_str().unwrap().to_owned()).collect();
    (ids, types)
}

async fn a_failing_endpoint_retries_and_dead_letters_alone(app: TestApp) {
    let healthy = Receiver::start(None, None).await;
    let failing = Receiver::start(Some(503), None).await;
    let worker =
        app.worker(|config| config.webhooks.urls = vec![failing.url.clone(), healthy.url.clone()]);
    attended_session(&app, "s1").await;
    app.drain(&worker).await;
    // The healthy endpoint has both messages at once, in order, although
    // the other one refused the first.
    let (ids, types) = tally(&healthy);
    assert_eq!(types, ["session.started", "session.ended"]);
    assert!(ids.values().all(|count| *count == 1), "{ids:?}");

    let dead_rows = async || {
        let reply = app.get("/v1/admin/outbox?state=dead", &app.admin()).await;
        reply.ok()["items"].as_array().unwrap().len() == 2
    };
    app.deliver_until(&worker, 40, dead_rows).await;
    // Still once each at the healthy endpoint, after every retry.
    let (healthy_ids, types) = tally(&healthy);
    assert_eq!(types, ["session.started", "session.ended"]);
    assert!(healthy_ids.values().all(|count| *count == 1), "{healthy_ids:?}");
    // The failing one got every attempt of both, under the same ids.
    let (failing_ids, _) = tally(&failing);
    assert_eq!(failing_ids.keys().collect::<Vec<_>>(), healthy_ids.keys().collect::<Vec<_>>());
    assert!(failing_ids.values().all(|count| *count == 12), "{failing_ids:?}");
    let dead = app.get("/v1/admin/outbox?state=dead", &app.admin()).await.ok()["items"].clone();
    let failing_port = failing.url.rsplit(':').next().unwrap();
    let healthy_port = healthy.url.rsplit(':').next().unwrap();
    for row in dead.as_array().unwrap() {
        let error = row["last_error"].as_str().unwrap();
        assert!(error.contains(failing_port) && error.contains("503"), "{error}");
        assert!(!error.contains(healthy_port), "{error}");
        assert_eq!(row["attempts"], 12);
    }
    let pending =
        app.get("/v1/admin/outbox?state=pending", &app.admin()).await.ok()["items"].clone();
    assert_eq!(pending.as_array().unwrap().len(), 0, "{pending}");
}

async fn several_secrets_each_sign_every_message(app: TestApp) {
    let old = format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(b"old secret"));
    let new = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let both = format!("{old} {new}");
    // The configuration takes them as VERDICT_WEBHOOK_SECRET gives them.
    let config = verdict::config::Config {
        webhook_secret: Some(verdict::config::Secret::new(both.clone())),
        ..verdict::config::Config::default()
    };
    let secret = config.worker_config().expect("two secrets are valid").webhooks.secret;
    assert!(secret.is_some());

    let receiver = Receiver::start(None, None).await;
    let worker = app.worker(|config| {
        config.webhooks.urls = vec![receiver.url.clone()];
        config.webhooks.secret = secret;
    });
    attended_session(&app, "s1").await;
    app.drain(&worker).await;
    let received = receiver.received();
    assert_eq!(received.len(), 2);
    for message in &received {
        let signature = message.headers["webhook-signature"].to_str().unwrap();
        assert_eq!(signature.split(' ').count(), 2, "{signature}");
        assert!(signature.split(' ').all(|part| part.starts_with("v1,")), "{signature}");
        let mut headers = http::HeaderMap::new();
        for name in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
            headers.insert(name, message.headers[name].to_str().unwrap().parse().unwrap());
        }
        // A receiver knowing only one of the secrets accepts the message.
        for key in [old.as_str(), new] {
            let verifier = standardwebhooks::Webhook::new(key).unwrap();
            verifier.verify(message.body.as_bytes(), &headers).expect("a valid signature");
        }
    }
}
