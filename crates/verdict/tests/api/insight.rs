//! Insight per kind and per provider (issue 27, items 1–3): threshold
//! alerts scoped to a kind or a provider, announced once per change by any
//! number of workers; the health's `by_kind` and verification's counts per
//! kind against a hand count; a provider's stats against its ledger, and
//! providers ranked worst first.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use verdict_core::UnixMillis;
use verdict_http::wire::format_instant;

use crate::fakes::Receiver;
use crate::support::{Reply, TestApp, on_every_backend, section};

on_every_backend!(
    threshold_alerts_are_scoped_and_each_change_is_announced_once_by_two_workers,
    by_kind_and_verify_per_kind_match_a_hand_count,
    provider_stats_equal_the_ledger_and_the_worst_providers_come_first,
);

/// One imported session of `kind` with `provider`, created two hours ago
/// and ended an hour later: `outcome` is `completed`, `too_short`,
/// `no_show_provider` or `no_show_customer`; parties present together for
/// `together` seconds when both joined.
pub(crate) fn ended_line(
    now: UnixMillis,
    id: &str,
    kind: &str,
    provider: &str,
    outcome: &str,
    together: i64,
) -> String {
    let created = now.plus_seconds(-2 * 3600);
    let at = |seconds: i64| format_instant(created.plus_seconds(seconds));
    let joined = |party: &str| json!({"type": "joined", "party": party, "at": at(60)});
    let left = |party: &str| json!({"type": "left", "party": party, "at": at(60 + together)});
    let (status, events) = match outcome {
        "completed" | "too_short" => (
            if outcome == "completed" { "completed" } else { "cancelled" },
            json!([joined("customer"), joined("provider"), left("provider"), left("customer")]),
        ),
        "no_show_provider" => ("cancelled", json!([joined("customer")])),
        "no_show_customer" => ("cancelled", json!([joined("provider")])),
        other => panic!("no such outcome {other}"),
    };
    // A completed session paid its provider's share (the default 20 % fee).
    let payouts = if outcome == "completed" {
        json!([{"amount_cents": 2000, "currency": "usd", "state": "paid"}])
    } else {
        json!([])
    };
    json!({
        "id": id, "kind": kind, "customer_id": format!("cust-{id}"), "provider_id": provider,
        "price": {"mode": "flat", "amount_cents": 2500, "currency": "usd"},
        "status": status, "reason": outcome,
        "created_at": at(0), "ended_at": at(3600),
        "events": events, "payouts": payouts,
    })
    .to_string()
}

pub(crate) async fn import(app: &TestApp, lines: &[String]) {
    let Reply { status, body: summary, .. } = app.import("", lines).await;
    assert!(status.is_success(), "{status}: {summary}");
    assert_eq!(summary["imported"], lines.len(), "{summary}");
}

/// `count` sessions of `kind` named `prefix-<n>`, each `outcome`, spread
/// over `providers` (round robin).
pub(crate) fn sessions(
    now: UnixMillis,
    prefix: &str,
    kind: &str,
    providers: &[&str],
    outcomes: &[(&str, usize)],
) -> Vec<String> {
    let mut lines = Vec::new();
    for (outcome, count) in outcomes {
        for _ in 0..*count {
            let n = lines.len();
            let provider = providers[n % providers.len()];
            let together = if *outcome == "completed" { 600 } else { 30 };
            lines.push(ended_line(
                now,
                &format!("{prefix}-{n}"),
                kind,
                provider,
                outcome,
                together,
            ));
        }
    }
    lines
}

/// The threshold alerts of the health: `(kind, scope field=value)`.
fn threshold_alerts(health: &Value) -> Vec<(String, String)> {
    let mut alerts: Vec<(String, String)> = health["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|alert| alert["scope"].is_object())
        .map(|alert| {
            let (field, value) = alert["scope"].as_object().unwrap().iter().next().unwrap();
            (
                alert["kind"].as_str().unwrap().to_owned(),
                format!("{field}={}", value.as_str().unwrap()),
            )
        })
        .collect();
    alerts.sort();
    alerts
}

fn pair(kind: &str, scope: &str) -> (String, String) {
    (kind.to_owned(), scope.to_owned())
}

/// Every alert webhook received: `(type, alert, scope)` → deliveries (by
/// distinct `webhook-id`), and how many arrived in all.
fn alert_webhooks(receiver: &Receiver) -> (BTreeMap<(String, String, String), usize>, usize) {
    let mut seen = BTreeMap::new();
    let mut ids = std::collections::BTreeSet::new();
    let mut all = 0;
    for message in receiver.received() {
        let body: Value = serde_json::from_str(&message.body).unwrap();
        let kind = body["type"].as_str().unwrap().to_owned();
        if !kind.starts_with("alert.") {
            continue;
        }
        all += 1;
        let id = message.headers["webhook-id"].to_str().unwrap().to_owned();
        if !ids.insert(id) {
            continue;
        }
        let data = &body["data"];
        let (field, value) = data["scope"].as_object().unwrap().iter().next().unwrap();
        let key = (
            kind,
            data["alert"].as_str().unwrap().to_owned(),
            format!("{field}={}", value.as_str().unwrap()),
        );
        *seen.entry(key).or_insert(0) += 1;
    }
    (seen, all)
}

fn webhook(kind: &str, alert: &str, scope: &str) -> (String, String, String) {
    (kind.to_owned(), alert.to_owned(), scope.to_owned())
}

async fn threshold_alerts_are_scoped_and_each_change_is_announced_once_by_two_workers(
    app: TestApp,
) {
    let receiver = Receiver::start(None, None).await;
    let first = app.worker(|config| config.webhooks.urls = vec![receiver.url.clone()]);
    let second = app.worker(|config| config.webhooks.urls = vec![receiver.url.clone()]);
    let now = app.state.clock.now();
    let spread = ["p-0", "p-1", "p-2", "p-3", "p-4", "p-5"];
    // Video: 12 of 30 completed (40 %), 9 no-shows and 9 too short (30 %
    // each: at their thresholds, not above). Chat: 27 of 30 (90 %). Six
    // providers of 10 each: under min_sessions, never judged.
    let mut lines = sessions(
        now,
        "v",
        "video",
        &spread,
        &[("completed", 12), ("no_show_provider", 9), ("too_short", 9)],
    );
    lines.extend(sessions(
        now,
        "c",
        "chat",
        &spread,
        &[("completed", 27), ("no_show_customer", 3)],
    ));
    import(&app, &lines).await;
    let reported = app.health("").await;
    assert_eq!(
        threshold_alerts(&reported),
        [pair("completion_rate_below", "kind=video")],
        "{reported}"
    );
    let video = reported["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|alert| alert["kind"] == "completion_rate_below")
        .unwrap();
    assert_eq!(video["scope"], json!({"kind": "video"}));
    assert_eq!((video["value"].as_f64(), video["count"].as_i64()), (Some(0.4), Some(30)));

    // A provider with 12 no-shows of 20 (in chat: chat stays at 70 %
    // completion and 30 % no-shows).
    import(
        &app,
        &sessions(now, "bad", "chat", &["p-bad"], &[("no_show_provider", 12), ("completed", 8)]),
    )
    .await;
    let raised = [
        pair("completion_rate_below", "kind=video"),
        pair("completion_rate_below", "provider_id=p-bad"),
        pair("no_show_rate_above", "provider_id=p-bad"),
    ];
    assert_eq!(threshold_alerts(&app.health("").await), raised);

    // Two workers evaluate at once: three changes, each announced once.
    let (a, b) = tokio::join!(first.try_evaluate_alerts(), second.try_evaluate_alerts());
    let (a, b) = (a.expect("evaluates"), b.expect("evaluates"));
    assert_eq!(a.transitions.len() + b.transitions.len(), 3, "{a:?}\n{b:?}");
    assert_eq!(a.raised.len(), 3);
    let video_counts = a.by_kind[&verdict_core::Kind::Video];
    assert_eq!((video_counts.ended, video_counts.completed), (30, 12));
    // Evaluating again changes nothing.
    let (a, b) = tokio::join!(first.try_evaluate_alerts(), second.try_evaluate_alerts());
    assert!(a.unwrap().transitions.is_empty() && b.unwrap().transitions.is_empty());
    tokio::join!(app.drain(&first), app.drain(&second));
    let (delivered, all) = alert_webhooks(&receiver);
    let expected_raised: BTreeMap<_, _> = [
        (webhook("alert.raised", "completion_rate_below", "kind=video"), 1),
        (webhook("alert.raised", "completion_rate_below", "provider_id=p-bad"), 1),
        (webhook("alert.raised", "no_show_rate_above", "provider_id=p-bad"), 1),
    ]
    .into_iter()
    .collect();
    assert_eq!(delivered, expected_raised);
    assert_eq!(all, 3, "each delivered once");
    let bad = receiver
        .events()
        .into_iter()
        .find(|event| event["data"]["alert"] == "no_show_rate_above")
        .unwrap();
    assert_eq!(bad["data"]["scope"], json!({"provider_id": "p-bad"}));
    assert_eq!(
        (bad["data"]["value"].as_f64(), bad["data"]["sessions"].as_i64()),
        (Some(0.6), Some(20))
    );
    assert_eq!(bad["data"]["threshold"].as_f64(), Some(0.3));

    // The rates recover: 10 more completed video sessions (22 of 40), 30
    // more completed for p-bad (12 no-shows of 50).
    let mut recovery = sessions(now, "v2", "video", &spread, &[("completed", 10)]);
    recovery.extend(sessions(now, "good", "chat", &["p-bad"], &[("completed", 30)]));
    import(&app, &recovery).await;
    assert_eq!(threshold_alerts(&app.health("").await), []);
    let (a, b) = tokio::join!(first.try_evaluate_alerts(), second.try_evaluate_alerts());
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.transitions.len() + b.transitions.len(), 3, "{a:?}\n{b:?}");
    assert!(a.transitions.iter().chain(&b.transitions).all(|change| !change.raised));
    let (a, b) = tokio::join!(first.try_evaluate_alerts(), second.try_evaluate_alerts());
    assert!(a.unwrap().transitions.is_empty() && b.unwrap().transitions.is_empty());
    tokio::join!(app.drain(&first), app.drain(&second));
    let (delivered, all) = alert_webhooks(&receiver);
    let mut expected = expected_raised.clone();
    for ((_, alert, scope), _) in expected_raised {
        expected.insert(webhook("alert.resolved", &alert, &scope), 1);
    }
    assert_eq!(delivered, expected);
    assert_eq!(all, 6, "each delivered once");

    // The gauges: this process's recorder has the per-kind rates.
    let metrics = app.client.get(format!("{}/metrics", app.base)).send().await.unwrap();
    let text = metrics.text().await.unwrap();
    for series in [
        "verdict_completion_rate{kind=\"video\"}",
        "verdict_no_show_rate{kind=\"chat\"}",
        "verdict_completion_rate{kind=\"diagnostic\"}",
    ] {
        assert!(text.contains(series), "{series} missing");
    }
}

async fn by_kind_and_verify_per_kind_match_a_hand_count(app: TestApp) {
    let now = app.state.clock.now();
    let line = |id: &str, kind: &str, outcome: &str, together: i64| {
        ended_line(now, id, kind, "p-1", outcome, together)
    };
    import(
        &app,
        &[
            line("v1", "video", "completed", 600),
            line("v2", "video", "completed", 300),
            line("v3", "video", "no_show_provider", 0),
            line("v4", "video", "too_short", 30),
            line("c1", "chat", "completed", 120),
            line("c2", "chat", "no_show_customer", 0),
            line("d1", "diagnostic", "completed", 900),
            line("d2", "diagnostic", "completed", 1200),
            line("d3", "diagnostic", "too_short", 45),
        ],
    )
    .await;
    let reported = app.health("").await;
    let by_kind = &reported["by_kind"];
    // By hand: rates over each kind's ended sessions, billable seconds
    // averaged over all of them, nearest-rank percentiles.
    let expected = |ended: i64, rates: [f64; 3], avg: f64, p50: i64, p90: i64, statuses: Value| {
        json!({
            "ended": ended,
            "metrics": {
                "completion_rate": rates[0], "no_show_rate": rates[1], "too_short_rate": rates[2],
                "avg_billable_seconds": avg,
                "p50_billable_seconds": p50, "p90_billable_seconds": p90,
            },
            "status_distribution": statuses,
        })
    };
    let checks = [
        (
            "video",
            expected(4, [0.5, 0.25, 0.25], 232.5, 30, 600, json!({"completed": 2, "cancelled": 2})),
        ),
        (
            "chat",
            expected(2, [0.5, 0.5, 0.0], 60.0, 0, 120, json!({"completed": 1, "cancelled": 1})),
        ),
        (
            "diagnostic",
            expected(
                3,
                [2.0 / 3.0, 0.0, 1.0 / 3.0],
                715.0,
                900,
                1200,
                json!({"completed": 2, "cancelled": 1}),
            ),
        ),
    ];
    for (kind, expected) in checks {
        let shown = &by_kind[kind];
        for field in ["ended", "metrics", "status_distribution"] {
            assert_eq!(shown[field], expected[field], "{kind} {field}: {shown}");
        }
        assert!(shown["score"].is_number() && shown["label"].is_string(), "{shown}");
    }
    assert_eq!(reported["ended"], 9);

    let report = app.verify().await;
    let section = section(&report, "by_kind").clone();
    assert_eq!(section["count"], 9);
    for (kind, sessions) in [("video", 4), ("chat", 2), ("diagnostic", 3)] {
        assert_eq!(section["detail"][kind]["sessions"], sessions, "{section}");
    }
    // `verdict verify` prints them.
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_verdict"))
        .args(["verify", "--database-url", &app.database_url])
        .current_dir(app.data_dir())
        .output()
        .await
        .expect("verdict verify runs");
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(printed.contains("per kind: video 4 ("), "{printed}");
    assert!(printed.contains("chat 2 (") && printed.contains("diagnostic 3 ("), "{printed}");
}

/// A session of `provider` both parties have joined.
async fn attended(app: &TestApp, id: &str, provider: &str, price: i64, currency: &str) {
    let body = json!({"id": id, "kind": "video", "customer_id": "cust-1", "provider_id": provider,
        "price": {"mode": "flat", "amount_cents": price, "currency": currency}});
    app.post("/v1/sessions", &app.service(), body).await.ok();
    app.join(id, &app.customer()).await.ok();
    app.join(id, &app.token(verdict_core::Role::Provider, provider)).await.ok();
}

async fn provider_stats_equal_the_ledger_and_the_worst_providers_come_first(app: TestApp) {
    // Three sessions of prov-1 with money (two currencies) and a no-show.
    attended(&app, "s-usd", "prov-1", 2500, "usd").await;
    attended(&app, "s-eur", "prov-1", 4000, "eur").await;
    let body = json!({"id": "s-none", "kind": "video", "customer_id": "cust-1",
        "provider_id": "prov-1", "price": {"mode": "flat", "amount_cents": 900, "currency": "usd"}});
    app.post("/v1/sessions", &app.service(), body).await.ok();
    app.join("s-none", &app.customer()).await.ok();
    app.advance(120).await;
    let mut reasons = Vec::new();
    for id in ["s-usd", "s-eur", "s-none"] {
        let ended = app.end(id, &app.service(), None).await;
        reasons.push(ended.ok()["outcome"]["reason"].as_str().unwrap().to_owned());
    }
    assert_eq!(reasons[..2], ["completed", "completed"]);
    assert!(reasons[2].starts_with("no_show"), "{reasons:?}");

    let stats = app.get("/v1/admin/providers/prov-1/stats", &app.admin()).await.ok().clone();
    assert_eq!(stats["sessions"], 3);
    assert_eq!(stats["completion_rate"].as_f64(), Some(2.0 / 3.0));
    assert_eq!(stats["no_show_rate"].as_f64(), Some(1.0 / 3.0));
    assert_eq!(stats["billable_seconds"], 240, "{stats}");
    // The ledger: every posting of the provider's sessions.
    let mut charged: BTreeMap<String, i64> = BTreeMap::new();
    let mut earned: BTreeMap<String, i64> = BTreeMap::new();
    for id in ["s-usd", "s-eur", "s-none"] {
        for posting in app.state.store.postings(id).await.unwrap() {
            for line in &posting.lines {
                if line.account.starts_with("customer_receivable:") {
                    *charged.entry(posting.currency.clone()).or_default() += line.amount.0;
                }
                if line.account == "provider_payable:prov-1" {
                    *earned.entry(posting.currency.clone()).or_default() -= line.amount.0;
                }
            }
        }
    }
    let shown: Vec<(String, i64, i64)> = stats["money"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            (
                row["currency"].as_str().unwrap().to_owned(),
                row["charged_cents"].as_i64().unwrap(),
                row["earned_cents"].as_i64().unwrap(),
            )
        })
        .collect();
    let ledger: Vec<(String, i64, i64)> = charged
        .iter()
        .map(|(currency, cents)| (currency.clone(), *cents, earned[currency]))
        .collect();
    assert_eq!(shown, ledger);
    assert_eq!(shown[0], ("eur".to_owned(), 4000, 3200), "20 % fee by default");
    // And the provider's earnings as the ledger totals them.
    let earnings = app.get("/v1/providers/prov-1/earnings", &app.admin()).await.ok().clone();
    let totals: BTreeMap<String, i64> = earnings["totals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|total| {
            (
                total["currency"].as_str().unwrap().to_owned(),
                total["earned_cents"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(totals, earned);
    // A window that ends before them holds nothing.
    let empty = app.get("/v1/admin/providers/nobody/stats?window_hours=1", &app.admin()).await;
    assert_eq!(empty.ok()["sessions"], 0);
    assert_eq!(empty.ok()["money"], json!([]));

    // Ranking: imported providers with known no-show rates.
    let now = app.state.clock.now();
    let mut lines =
        sessions(now, "a", "chat", &["p-a"], &[("no_show_provider", 1), ("completed", 3)]);
    lines.extend(sessions(
        now,
        "b",
        "chat",
        &["p-b"],
        &[("no_show_provider", 3), ("completed", 1)],
    ));
    lines.extend(sessions(now, "c", "chat", &["p-c"], &[("completed", 4)]));
    import(&app, &lines).await;
    let ranked =
        app.get("/v1/admin/providers?sort=no_show_rate&limit=3&min_sessions=4", &app.admin()).await;
    let ids: Vec<&str> = ranked.ok()["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["provider_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["p-b", "p-a", "p-c"]);
    assert_eq!(ranked.ok()["items"][0]["no_show_rate"].as_f64(), Some(0.75));
    let worst = app
        .get("/v1/admin/providers?sort=completion_rate&limit=1&min_sessions=4", &app.admin())
        .await;
    assert_eq!(worst.ok()["items"][0]["provider_id"], "p-b");
    assert_eq!(worst.ok()["items"].as_array().unwrap().len(), 1);

    // Bad input: a precise 422 (or 403, 404), nothing else.
    for (path, status) in [
        ("/v1/admin/providers?sort=name", 422),
        ("/v1/admin/providers?limit=0", 422),
        ("/v1/admin/providers?limit=101", 422),
        ("/v1/admin/providers?min_sessions=0", 422),
        ("/v1/admin/providers?window_hours=721", 422),
        ("/v1/admin/providers?order=asc", 422),
        ("/v1/admin/providers/prov-1/stats?window_hours=0", 422),
        ("/v1/admin/providers/prov-1/stats?window_hours=721", 422),
        ("/v1/admin/providers/prov-1/stats?window_hours=x", 422),
        ("/v1/admin/providers/bad%20id/stats", 404),
    ] {
        let reply: Reply = app.get(path, &app.admin()).await;
        let detail = reply.problem(status);
        assert!(!detail.is_empty(), "{path}");
    }
    let provider = app.token(verdict_core::Role::Provider, "prov-1");
    app.get("/v1/admin/providers/prov-1/stats", &provider).await.problem(403);
    app.get("/v1/admin/providers", &app.service()).await.problem(403);
}
