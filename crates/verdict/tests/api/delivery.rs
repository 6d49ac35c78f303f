//! The outbox worker against fakes of the outside world: Stripe, an SMTP
//! server, a webhook receiver. Time moves by the manual clock.

use std::time::Duration;

use serde_json::{Value, json};
use verdict_core::Role;
use verdict_worker::{StripeConfig, WebhookSecret};

use crate::fakes::{FakeStripe, Fault, Receiver, SmtpSink};
use crate::support::{TestApp, on_every_backend};

on_every_backend!(
    a_completed_session_makes_exactly_one_transfer_with_the_right_fields,
    failures_and_a_timeout_still_make_exactly_one_transfer,
    a_refused_transfer_fails_the_payout_and_tells_the_webhooks,
    receipts_go_over_smtp_with_the_right_figures,
    without_smtp_receipts_are_eml_files,
    webhooks_are_signed_and_delivered_in_order,
    a_receiver_that_never_recovers_leaves_a_dead_letter,
    with_thirty_percent_faults_every_payout_and_webhook_lands_exactly_once,
);

const STRIPE_KEY: &str = "sk_test_verdict";
const WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

async fn stripe_app(app: &TestApp) -> TestApp {
    TestApp::spawn(app.backend, |config| {
        config.stripe_secret_key = Some(verdict::config::Secret::new(STRIPE_KEY));
    })
    .await
}

fn stripe(fake: &FakeStripe) -> Option<StripeConfig> {
    Some(StripeConfig { api_base: fake.base.clone(), secret_key: STRIPE_KEY.into() })
}

/// Creates and runs a session: both present for `seconds`, then ended.
async fn run_session(app: &TestApp, id: &str, seconds: i64) -> Value {
    let body = json!({"id": id, "kind": "video", "customer_id": "cust-1", "provider_id": "prov-1",
        "provider_account": "acct_prov1",
        "price": {"mode": "per_minute", "amount_cents": 150, "currency": "usd"}});
    app.post("/v1/sessions", &app.service(), body).await.ok();
    app.join(id, &app.customer()).await.ok();
    app.join(id, &app.provider()).await.ok();
    app.advance(seconds).await;
    app.end(id, &app.service(), None).await.ok()["session"].clone()
}

async fn payout(app: &TestApp, session_id: &str) -> Value {
    let reply = app.get(&format!("/v1/payouts?session_id={session_id}"), &app.admin()).await;
    reply.ok()["items"][0].clone()
}

async fn a_completed_session_makes_exactly_one_transfer_with_the_right_fields(app: TestApp) {
    let app = stripe_app(&app).await;
    let fake = FakeStripe::start(vec![]).await;
    let receiver = Receiver::start(None, None).await;
    let worker = app.worker(|config| {
        config.stripe = stripe(&fake);
        config.webhooks.urls = vec![receiver.url.clone()];
    });
    run_session(&app, "paid", 125).await; // 3 started minutes: 450, fee 90
    run_session(&app, "short", 20).await;
    app.drain(&worker).await;

    let calls = fake.calls();
    assert_eq!(calls.len(), 1, "one request, and none for the cancelled session");
    let call = &calls[0];
    assert_eq!(call.idempotency_key.as_deref(), Some("po_paid"));
    assert_eq!(call.authorization.as_deref(), Some("Bearer sk_test_verdict"));
    assert_eq!(call.content_type.as_deref(), Some("application/x-www-form-urlencoded"));
    for (field, value) in [
        ("amount", "360"),
        ("currency", "usd"),
        ("destination", "acct_prov1"),
        ("transfer_group", "paid"),
        ("metadata[session_id]", "paid"),
        ("metadata[payout_id]", "po_paid"),
    ] {
        assert_eq!(call.field(field), Some(value), "{field}");
    }
    let paid = payout(&app, "paid").await;
    assert_eq!(
        (paid["state"].as_str(), paid["transfer_id"].as_str()),
        (Some("paid"), Some("tr_1"))
    );
    assert_eq!(paid["provider"], "stripe");
    assert_eq!(payout(&app, "short").await, Value::Null);
    app.drain(&worker).await;
    let types: Vec<String> =
        receiver.events().iter().map(|e| e["type"].as_str().unwrap().to_owned()).collect();
    assert!(types.contains(&"payout.paid".to_owned()), "{types:?}");
    assert_eq!(fake.transfers().len(), 1);
}

async fn failures_and_a_timeout_still_make_exactly_one_transfer(app: TestApp) {
    let app = stripe_app(&app).await;
    let script = vec![
        Fault::Status(500),
        Fault::Status(500),
        Fault::Status(500),
        Fault::SlowSuccess(Duration::from_secs(20)),
    ];
    let fake = FakeStripe::start(script).await;
    let worker = app.worker(|config| {
        config.stripe = stripe(&fake);
        // Long enough for a healthy answer on a loaded machine (the exact
        // count of attempts below depends on it), well short of the slow one.
        config.outbound_timeout = Duration::from_secs(5);
    });
    run_session(&app, "s1", 600).await;
    app.deliver_until(&worker, 20, async || payout(&app, "s1").await["state"] == "paid").await;

    assert_eq!(fake.transfers().len(), 1, "exactly one transfer effect");
    assert_eq!(payout(&app, "s1").await["transfer_id"], "tr_1");
    let keys: Vec<String> = fake.calls().iter().filter_map(|c| c.idempotency_key.clone()).collect();
    assert!(keys.iter().all(|key| key.starts_with("po_s1")), "{keys:?}");
    assert!(fake.lookups() >= 1, "a replayed 5xx is checked against the transfer group");
    // Three saved 500s, one answer after the timeout, then the replayed
    // transfer: a burnt key is looked up and replaced within one attempt.
    let attempts = app.sql_count("SELECT attempts FROM outbox WHERE topic = 'payout'").await;
    assert_eq!(attempts, 5, "attempts of the payout row");
    // Nothing more to do, however long we wait.
    app.advance(86_400).await;
    app.drain(&worker).await;
    assert_eq!(fake.transfers().len(), 1);
}

async fn a_refused_transfer_fails_the_payout_and_tells_the_webhooks(app: TestApp) {
    let app = stripe_app(&app).await;
    let fake = FakeStripe::start(vec![Fault::Status(400)]).await;
    let receiver = Receiver::start(None, None).await;
    let worker = app.worker(|config| {
        config.stripe = stripe(&fake);
        config.webhooks.urls = vec![receiver.url.clone()];
    });
    run_session(&app, "s1", 600).await;
    app.drain(&worker).await;
    app.drain(&worker).await;
    let failed = payout(&app, "s1").await;
    assert_eq!(failed["state"], "failed");
    assert!(failed["failure_reason"].as_str().unwrap().contains("400"));
    assert_eq!(fake.transfers().len(), 0);
    let event = receiver
        .events()
        .into_iter()
        .find(|e| e["type"] == "payout.failed")
        .expect("payout.failed");
    assert_eq!(event["data"]["payout_id"], "po_s1");
    assert_eq!(event["data"]["amount_cents"], 1200);
    app.advance(86_400).await;
    app.drain(&worker).await;
    assert_eq!(fake.calls().len(), 1, "a refused transfer is not retried");
}

async fn with_addresses(app: &TestApp) {
    for (id, email) in [("cust-1", "ana@example.com"), ("prov-1", "bo@example.com")] {
        let body = json!({"email": email}).to_string();
        app.send(
            reqwest::Method::PUT,
            &format!("/v1/users/{id}"),
            Some(&app.service()),
            Some(&body),
        )
        .await
        .ok();
    }
}

async fn receipts_go_over_smtp_with_the_right_figures(app: TestApp) {
    let sink = SmtpSink::start().await;
    let worker = app.worker(|config| config.mail.smtp_url = Some(sink.url.clone()));
    with_addresses(&app).await;
    run_session(&app, "long", 125).await;
    run_session(&app, "brief", 30).await;
    app.drain(&worker).await;

    let messages = sink.messages();
    assert_eq!(messages.len(), 4, "two receipts per session");
    let to = |address: &str, session: &str| {
        messages
            .iter()
            .find(|m| {
                m.contains(&format!("To: {address}")) && m.contains(&format!("Session {session} "))
            })
            .unwrap_or_else(|| panic!("no receipt for {address} about {session}"))
            .clone()
    };
    let customer = to("ana@example.com", "long");
    assert!(customer.contains("Subject: Session long completed: 4.50 USD"), "{customer}");
    assert!(customer.contains("Billable time: 2:05"));
    assert!(customer.contains("Amount charged: 4.50 USD"));
    let provider = to("bo@example.com", "long");
    assert!(provider.contains("Amount billed to the customer: 4.50 USD"), "{provider}");
    let cancelled = to("ana@example.com", "brief");
    assert!(cancelled.contains("Subject: Session brief cancelled (too short)"), "{cancelled}");
    assert!(cancelled.contains("Reason: too short"));
    assert!(cancelled.contains("Billable time: 0:30"));
}

async fn without_smtp_receipts_are_eml_files(app: TestApp) {
    let worker = app.worker(|_| {});
    with_addresses(&app).await;
    run_session(&app, "s1", 90).await;
    app.drain(&worker).await;
    let files: Vec<String> = std::fs::read_dir(app.data_dir().join("mail"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "eml"))
        .map(|path| std::fs::read_to_string(path).unwrap())
        .collect();
    assert_eq!(files.len(), 2);
    assert!(files.iter().any(|f| f.contains("To: ana@example.com")));
    assert!(files.iter().all(|f| f.contains("Subject: Session s1 completed: 3.00 USD")));
}

async fn webhooks_are_signed_and_delivered_in_order(app: TestApp) {
    let receiver = Receiver::start(None, None).await;
    let worker = app.worker(|config| {
        config.webhooks.urls = vec![receiver.url.clone()];
        config.webhooks.secret = WebhookSecret::parse(WEBHOOK_SECRET);
    });
    run_session(&app, "s1", 90).await;
    app.drain(&worker).await;

    // An implementation of the scheme that shares no code with ours.
    let verifier = standardwebhooks::Webhook::new(WEBHOOK_SECRET).unwrap();
    let received = receiver.received();
    assert_eq!(received.len(), 2);
    for message in &received {
        let mut headers = http::HeaderMap::new();
        for name in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
            headers.insert(name, message.headers[name].to_str().unwrap().parse().unwrap());
        }
        verifier.verify(message.body.as_bytes(), &headers).expect("a valid signature");
        let tampered = message.body.replace("s1", "s2");
        assert!(verifier.verify(tampered.as_bytes(), &headers).is_err());
    }
    let events = receiver.events();
    assert_eq!(events[0]["type"], "session.started");
    assert_eq!(events[1]["type"], "session.ended");
    assert_eq!(events[1]["data"]["session_id"], "s1");
    assert_eq!(events[1]["data"]["outcome"]["status"], "completed");
    assert_eq!(events[1]["data"]["charged_cents"], 300);
}

async fn a_receiver_that_never_recovers_leaves_a_dead_letter(app: TestApp) {
    let receiver = Receiver::start(Some(503), None).await;
    let worker = app.worker(|config| config.webhooks.urls = vec![receiver.url.clone()]);
    app.create_session("s1").await;
    app.end("s1", &app.service(), None).await.ok();
    let dead = async || {
        let reply = app.get("/v1/admin/outbox?state=dead", &app.admin()).await;
        !reply.ok()["items"].as_array().unwrap().is_empty()
    };
    app.deliver_until(&worker, 30, dead).await;
    let rows = app.get("/v1/admin/outbox?state=dead", &app.admin()).await.ok()["items"].clone();
    assert_eq!(rows.as_array().unwrap().len(), 1);
    assert_eq!(rows[0]["topic"], "webhook:session.ended");
    assert_eq!(rows[0]["attempts"], 12, "max_attempts");
    assert!(rows[0]["last_error"].as_str().unwrap().contains("503"));
    assert_eq!(receiver.received().len(), 12);
    app.get("/v1/admin/outbox", &app.token(Role::Service, "platform")).await.problem(403);
    app.get("/v1/admin/outbox?state=lost", &app.admin()).await.problem(422);
}

/// Stripe and the webhook receiver both fail 30 % of requests at random
/// (5xx, 429, answers or bodies slower than the timeout, after which the
/// transfer was made anyway; both also reset some connections as they
/// accept them, one in 5 for Stripe, one in 10 for the receiver):
/// every payout ends paid with exactly one transfer, every webhook is
/// delivered, nothing is dead.
async fn with_thirty_percent_faults_every_payout_and_webhook_lands_exactly_once(app: TestApp) {
    use rand::{Rng, SeedableRng};
    const SESSIONS: usize = 24;
    // A healthy answer must come well within the timeout even when the
    // test machine runs every other suite at once, and a slow one well
    // past it.
    const TIMEOUT: Duration = Duration::from_millis(1_500);
    const SLOW: Duration = Duration::from_millis(2_500);
    // Which answers fault is drawn at random; a failing run prints its
    // seed, and `VERDICT_TEST_SEED` deals the same faults again (to the
    // requests in the order they arrive, which scheduling may change).
    let seed = match std::env::var("VERDICT_TEST_SEED") {
        Ok(seed) => seed.parse().expect("VERDICT_TEST_SEED is a number"),
        Err(_) => rand::rng().random(),
    };
    eprintln!("{}: seed {seed}", app.backend.name());
    let app = stripe_app(&app).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let script: Vec<Fault> = (0..400)
        .map(|_| match rng.random_range(0..100) {
            0..10 => Fault::Status(500),
            10..18 => Fault::Status(503),
            18..25 => Fault::Status(429),
            25..28 => Fault::SlowSuccess(SLOW),
            28..30 => Fault::SlowBody(SLOW),
            _ => Fault::Succeed,
        })
        .collect();
    let faults = script.iter().filter(|fault| !matches!(fault, Fault::Succeed)).count();
    let fake = FakeStripe::start_resetting(script, 5).await;
    let receiver = Receiver::start_flaky(30, SLOW, rng.random()).await;
    let worker = app.worker(|config| {
        config.stripe = stripe(&fake);
        config.webhooks.urls = vec![receiver.url.clone()];
        config.outbound_timeout = TIMEOUT;
        // A payout's attempt may need three connections (a replayed 5xx,
        // the lookup, the new key), each of which can fault or be reset:
        // the unluckiest of 24 payouts took 4 to 11 attempts in 20 runs,
        // so the default 12 would dead-letter one now and then. The claim
        // here is that every one lands exactly once, however many
        // attempts it takes (bounded below); giving up is tested on its own.
        config.attempts_max = 40;
    });
    for n in 0..SESSIONS {
        run_session(&app, &format!("f{n}"), 120).await;
    }
    let webhooks = app.sql_count("SELECT COUNT(*) FROM outbox WHERE channel = 'webhook'").await;
    // From the tenth attempt on a retry waits 48 to 72 minutes, so 40
    // attempts may take about 70 rounds of an hour.
    app.deliver_until(&worker, 80, async || {
        app.sql_count("SELECT COUNT(*) FROM outbox WHERE state = 'pending'").await == 0
    })
    .await;

    let paid = app.sql_count("SELECT COUNT(*) FROM payouts WHERE state = 'paid'").await;
    let dead = app.get("/v1/admin/outbox?state=dead", &app.admin()).await.ok()["items"].clone();
    let keys_of = |session: &Value| -> Vec<String> {
        let calls = fake.calls();
        let of = calls.iter().filter(|call| call.field("metadata[session_id]") == session.as_str());
        of.map(|call| call.idempotency_key.clone().unwrap_or_default()).collect()
    };
    let keys: Vec<Vec<String>> =
        dead.as_array().unwrap().iter().map(|row| keys_of(&row["session_id"])).collect();
    assert_eq!(
        paid, SESSIONS as i64,
        "every payout paid; dead rows: {dead:#}; their keys: {keys:?}"
    );
    let transfers = fake.transfers();
    let sessions: std::collections::BTreeSet<String> =
        transfers.iter().map(|t| t["metadata"]["session_id"].to_string()).collect();
    assert_eq!((transfers.len(), sessions.len()), (SESSIONS, SESSIONS), "one transfer each");
    assert_eq!(app.sql_count("SELECT COUNT(*) FROM outbox WHERE state = 'dead'").await, 0);
    // Payout events were queued while delivering: count webhooks again.
    let webhooks_now = app.sql_count("SELECT COUNT(*) FROM outbox WHERE channel = 'webhook'").await;
    assert!(webhooks_now >= webhooks);
    assert_eq!(receiver.delivered() as i64, webhooks_now, "every webhook delivered");
    assert!(receiver.resets() > 0 && fake.resets() > 0, "some connections were reset");
    let most =
        |channel: &str| format!("SELECT MAX(attempts) FROM outbox WHERE channel LIKE '{channel}%'");
    let (most_payout, most_webhook) =
        (app.sql_count(&most("payout")).await, app.sql_count(&most("webhook")).await);
    eprintln!(
        "{}: {} transfer calls and {} resets for {} transfers (30 % of the script faults: {faults} of 400), \
         at most {} attempts; {} webhook attempts and {} connection resets for {webhooks_now} webhooks, \
         at most {} attempts",
        app.backend.name(),
        fake.calls().len(),
        fake.resets(),
        transfers.len(),
        most_payout,
        receiver.received().len(),
        receiver.resets(),
        most_webhook,
    );
    // The limit is lifted, not the bar: about half of the attempts fail
    // here, and 24 (twice the worst seen) takes 23 failures in a row, about
    // one run in 10,000 at worst.
    assert!(most_payout <= 24 && most_webhook <= 24, "retries went on too long");
}
