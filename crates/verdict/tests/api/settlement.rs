//! Settlement over HTTP: pricing and fees, the ledger and payouts,
//! requests and the provider queue, idempotency, notifications.

use std::collections::BTreeMap;

use futures::future::join_all;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use verdict_core::Role;

use crate::support::{Reply, TestApp, on_every_backend};

on_every_backend!(
    per_minute_pricing_bills_every_started_minute,
    the_platform_fee_rounds_half_cents_up,
    earnings_equal_the_ledger,
    a_random_marketplace_settles_exactly,
    two_providers_accepting_at_once_make_exactly_one_session,
    a_request_follows_its_session_and_leaves_the_queue,
    idempotency_keys_replay_the_first_answer_and_refuse_another_body,
    concurrent_retries_with_one_key_create_one_session,
    users_give_payouts_a_destination_and_receipts_an_address,
);

fn priced(id: &str, customer: &str, provider: &str, mode: &str, amount: i64) -> Value {
    json!({"id": id, "kind": "chat", "customer_id": customer, "provider_id": provider,
        "price": {"mode": mode, "amount_cents": amount, "currency": "usd"}})
}

/// Creates a session, has both parties present for `seconds`, ends it.
async fn complete(app: &TestApp, body: Value, seconds: i64) -> Reply {
    let id = body["id"].as_str().unwrap().to_owned();
    let customer = app.token(Role::Customer, body["customer_id"].as_str().unwrap());
    let provider = app.token(Role::Provider, body["provider_id"].as_str().unwrap());
    app.post("/v1/sessions", &app.service(), body).await.ok();
    app.join(&id, &customer).await.ok();
    app.join(&id, &provider).await.ok();
    app.advance(seconds).await;
    app.end(&id, &app.service(), None).await
}

async fn payout_of(app: &TestApp, session_id: &str) -> Vec<Value> {
    let reply = app.get(&format!("/v1/payouts?session_id={session_id}"), &app.admin()).await;
    reply.ok()["items"].as_array().unwrap().clone()
}

async fn per_minute_pricing_bills_every_started_minute(app: TestApp) {
    for (id, seconds, expected) in [("m60", 60, 150), ("m61", 61, 300), ("m179", 179, 450)] {
        let ended = complete(&app, priced(id, "c1", "p1", "per_minute", 150), seconds).await;
        assert_eq!(ended.ok()["session"]["charged_cents"], expected, "{id}");
        let payouts = payout_of(&app, id).await;
        assert_eq!(payouts.len(), 1);
        assert_eq!(payouts[0]["amount_cents"], expected - (expected * 2000 + 5000) / 10000);
    }
    let flat = complete(&app, priced("flat", "c1", "p1", "flat", 4_999), 3_000).await;
    assert_eq!(flat.ok()["session"]["charged_cents"], 4_999);
    assert_eq!(payout_of(&app, "flat").await[0]["amount_cents"], 4_999 - 1_000); // fee 999.8 → 1000
}

async fn the_platform_fee_rounds_half_cents_up(app: TestApp) {
    let app = TestApp::spawn(app.backend, |config| config.platform_fee_bps = 250).await;
    // 20 cents at 2.5 % is exactly half a cent: the fee is 1, the share 19.
    complete(&app, priced("half", "c1", "p1", "flat", 20), 90).await.ok();
    assert_eq!(payout_of(&app, "half").await[0]["amount_cents"], 19);
    // 19 cents at 2.5 % is 0.475 cents: the fee is 0, the share 19.
    complete(&app, priced("under", "c1", "p1", "flat", 19), 90).await.ok();
    assert_eq!(payout_of(&app, "under").await[0]["amount_cents"], 19);
    let postings = app.state.store.postings("half").await.unwrap();
    let revenue = postings[0].lines.iter().find(|line| line.account == "platform_revenue").unwrap();
    assert_eq!(revenue.amount.0, -1);
}

async fn earnings_equal_the_ledger(app: TestApp) {
    let mut expected_share = 0;
    for (n, seconds) in [61, 125, 30, 3600].into_iter().enumerate() {
        let ended =
            complete(&app, priced(&format!("e{n}"), "c1", "p1", "per_minute", 333), seconds).await;
        let charged = ended.ok()["session"]["charged_cents"].as_i64().unwrap();
        expected_share += charged - (charged * 2000 + 5000) / 10000;
    }
    // Another provider's money is not this one's.
    complete(&app, priced("other", "c1", "p2", "flat", 10_000), 600).await.ok();

    let mut ledger_share = 0;
    for n in 0..4 {
        for posting in app.state.store.postings(&format!("e{n}")).await.unwrap() {
            assert!(posting.is_balanced());
            ledger_share -= posting
                .lines
                .iter()
                .filter(|l| l.account == "provider_payable:p1")
                .map(|l| l.amount.0)
                .sum::<i64>();
        }
    }
    assert_eq!(ledger_share, expected_share);
    let provider = app.token(Role::Provider, "p1");
    let earnings = app.get("/v1/providers/p1/earnings", &provider).await;
    let totals = &earnings.ok()["totals"][0];
    assert_eq!(totals["currency"], "usd");
    assert_eq!(totals["earned_cents"], ledger_share);
    assert_eq!(totals["pending_cents"], ledger_share, "manual payouts stay pending");
    assert_eq!(totals["paid_cents"], 0);
    assert_eq!(totals["sessions"], 3, "the 30-second session earned nothing");
    app.get("/v1/providers/p1/earnings", &app.token(Role::Provider, "p2")).await.problem(403);
    app.get("/v1/providers/p1/earnings", &app.service()).await.problem(403);
    app.get("/v1/providers/p1/earnings", &app.admin()).await.ok();
}

/// Pages through the caller's notifications.
async fn all_notifications(app: &TestApp, token: &str) -> Vec<Value> {
    let mut items = Vec::new();
    let mut path = "/v1/notifications".to_owned();
    loop {
        let page = app.get(&path, token).await;
        let body = page.ok().clone();
        items.extend(body["items"].as_array().unwrap().iter().cloned());
        match body["next_cursor"].as_str() {
            Some(cursor) => path = format!("/v1/notifications?after={cursor}"),
            None => return items,
        }
    }
}

async fn a_random_marketplace_settles_exactly(app: TestApp) {
    const SESSIONS: usize = 210;
    const PEOPLE: usize = 6;
    let mut rng = StdRng::seed_from_u64(0x5e55_1075);
    let service = app.service();
    let customer_token = |n: usize| app.token(Role::Customer, &format!("c{n}"));
    let provider_token = |n: usize| app.token(Role::Provider, &format!("p{n}"));

    // Sessions: a third come from requests accepted by a candidate.
    let mut sessions: Vec<(String, usize, usize, Option<String>)> = Vec::new();
    for n in 0..SESSIONS {
        let (customer, provider) = (rng.random_range(0..PEOPLE), rng.random_range(0..PEOPLE));
        let mode = if rng.random_bool(0.5) { "flat" } else { "per_minute" };
        let amount = rng.random_range(0..5_000);
        if n % 3 == 0 {
            let other = (provider + 1) % PEOPLE;
            let body = json!({"customer_id": format!("c{customer}"), "kind": "video",
                "price": {"mode": mode, "amount_cents": amount, "currency": "eur"},
                "candidate_provider_ids": [format!("p{provider}"), format!("p{other}")]});
            let request = app.post("/v1/requests", &service, body).await;
            let request_id = request.ok()["id"].as_str().unwrap().to_owned();
            let accepted = app
                .post(
                    &format!("/v1/requests/{request_id}/accept"),
                    &provider_token(provider),
                    json!({}),
                )
                .await;
            assert_eq!(accepted.status, 201, "{}", accepted.body);
            let id = accepted.body["id"].as_str().unwrap().to_owned();
            sessions.push((id, customer, provider, Some(request_id)));
        } else {
            let id = format!("rand-{n}");
            let body = json!({"id": id, "kind": "video", "customer_id": format!("c{customer}"),
                "provider_id": format!("p{provider}"),
                "price": {"mode": mode, "amount_cents": amount, "currency": "eur"}});
            app.post("/v1/sessions", &service, body).await.ok();
            sessions.push((id, customer, provider, None));
        }
    }

    // Random presence in rounds; the clock moves between rounds; some
    // sessions end in every round, each with concurrent duplicate ends.
    let mut open: Vec<usize> = (0..SESSIONS).collect();
    while !open.is_empty() {
        for &index in &open {
            let (id, customer, provider, _) = &sessions[index];
            for _ in 0..rng.random_range(0..3) {
                let token = if rng.random_bool(0.5) {
                    customer_token(*customer)
                } else {
                    provider_token(*provider)
                };
                let reply = if rng.random_bool(0.7) {
                    app.join(id, &token).await
                } else {
                    app.leave(id, &token).await
                };
                reply.ok();
            }
        }
        app.advance(rng.random_range(1..90)).await;
        let ending: Vec<usize> = open.iter().copied().filter(|_| rng.random_bool(0.3)).collect();
        open.retain(|index| !ending.contains(index));
        let ends = ending.iter().flat_map(|&index| {
            let copies = rng.random_range(1..4);
            (0..copies).map(move |_| index)
        });
        let replies = join_all(ends.map(|index| {
            let id = sessions[index].0.clone();
            let service = service.clone();
            let app = &app;
            async move { (index, app.end(&id, &service, None).await) }
        }))
        .await;
        let mut fresh: BTreeMap<usize, usize> = BTreeMap::new();
        for (index, reply) in replies {
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
            if reply.body["outcome"]["already_ended"] == false {
                *fresh.entry(index).or_default() += 1;
            }
        }
        assert!(ending.iter().all(|index| fresh.get(index) == Some(&1)), "one transition each");
    }

    // The books.
    let mut payable_by_provider: BTreeMap<String, i64> = BTreeMap::new();
    let mut completed = 0;
    for (id, _, provider, request_id) in &sessions {
        let session = app.get(&format!("/v1/sessions/{id}"), &service).await.ok().clone();
        let status = session["status"].as_str().unwrap();
        let charged = session["charged_cents"].as_i64().unwrap();
        let payouts = payout_of(&app, id).await;
        let postings = app.state.store.postings(id).await.unwrap();
        assert!(postings.iter().all(|posting| posting.is_balanced()), "{id}");
        if status == "completed" {
            completed += 1;
            let fee = (charged * 2000 + 5000) / 10000;
            assert_eq!(payouts.len(), 1, "{id}");
            assert_eq!(payouts[0]["amount_cents"], charged - fee, "{id}");
            assert_eq!(postings.len(), 1, "{id}");
            *payable_by_provider.entry(format!("p{provider}")).or_default() += charged - fee;
        } else {
            assert!(payouts.is_empty(), "{id} is {status} and must not be paid");
            assert!(postings.is_empty(), "{id}");
            assert_eq!(charged, 0);
        }
        if let Some(request_id) = request_id {
            let request = app.get(&format!("/v1/requests/{request_id}"), &service).await;
            assert_eq!(request.ok()["status"], status, "request {request_id}");
            assert_eq!(request.body["session_id"], id.as_str());
        }
    }
    assert!(completed > 20 && completed < SESSIONS, "the mix has both outcomes: {completed}");
    for (provider, payable) in &payable_by_provider {
        let earnings = app.get(&format!("/v1/providers/{provider}/earnings"), &app.admin()).await;
        let totals = &earnings.ok()["totals"][0];
        assert_eq!(totals["earned_cents"], *payable, "{provider}");
        assert_eq!(totals["pending_cents"], *payable, "{provider}: payouts equal payables");
    }
    let queue = app.get("/v1/assignments", &app.admin()).await;
    assert_eq!(queue.ok()["items"], json!([]), "no assignment outlives its session");

    // Each party has exactly one end notification per session, of the right kind.
    for n in 0..PEOPLE {
        for (token, party) in [(customer_token(n), "customer"), (provider_token(n), "provider")] {
            let notes = all_notifications(&app, &token).await;
            for (id, customer, provider, _) in &sessions {
                let mine = if party == "customer" { *customer == n } else { *provider == n };
                let about: Vec<&Value> =
                    notes.iter().filter(|note| note["session_id"] == id.as_str()).collect();
                if !mine {
                    assert!(about.is_empty());
                    continue;
                }
                assert_eq!(about.len(), 1, "{party} {n} about {id}");
                let session = app.get(&format!("/v1/sessions/{id}"), &service).await.ok().clone();
                let expected_kind = format!("session_{}", session["status"].as_str().unwrap());
                assert_eq!(about[0]["kind"], expected_kind.as_str());
                assert_eq!(about[0]["reason"], session["reason"]);
            }
        }
    }
}

async fn two_providers_accepting_at_once_make_exactly_one_session(app: TestApp) {
    let (first, second) = (app.token(Role::Provider, "p1"), app.token(Role::Provider, "p2"));
    let customer = app.token(Role::Customer, "c1");
    for round in 0..50 {
        // A second a round keeps c1, p1 and p2 within their rate limits.
        app.advance(1).await;
        let body = json!({"customer_id": "c1", "kind": "diagnostic",
            "price": {"mode": "flat", "amount_cents": 9_000, "currency": "usd"},
            "candidate_provider_ids": ["p1", "p2"]});
        let request = app.post("/v1/requests", &customer, body).await;
        let id = request.ok()["id"].as_str().unwrap().to_owned();
        let path = format!("/v1/requests/{id}/accept");
        let (a, b) =
            tokio::join!(app.post(&path, &first, json!({})), app.post(&path, &second, json!({})));
        let mut statuses = [a.status.as_u16(), b.status.as_u16()];
        statuses.sort();
        assert_eq!(statuses, [201, 409], "round {round}: {} / {}", a.body, b.body);
        let (winner, loser) = if a.status == 201 { (&a, &b) } else { (&b, &a) };
        assert!(loser.problem(409).contains(&id));
        let request = app.get(&format!("/v1/requests/{id}"), &customer).await;
        assert_eq!(request.ok()["status"], "matched");
        assert_eq!(request.body["session_id"], winner.body["id"]);
        assert_eq!(winner.body["status"], "waiting");
    }
    assert_eq!(app.counts().await["sessions"], 50);
}

async fn a_request_follows_its_session_and_leaves_the_queue(app: TestApp) {
    let customer = app.token(Role::Customer, "c1");
    let (p1, p2, p3) = (
        app.token(Role::Provider, "p1"),
        app.token(Role::Provider, "p2"),
        app.token(Role::Provider, "p3"),
    );
    let body = json!({"customer_id": "c1", "kind": "video",
        "price": {"mode": "flat", "amount_cents": 1000, "currency": "usd"},
        "candidate_provider_ids": ["p1", "p2"]});
    let request = app.post("/v1/requests", &customer, body.clone()).await;
    assert_eq!(request.status, 201);
    let id = request.body["id"].as_str().unwrap().to_owned();
    assert_eq!(request.body["status"], "pending");
    for token in [&p1, &p2] {
        let queue = app.get("/v1/assignments", token).await;
        assert_eq!(queue.ok()["items"].as_array().unwrap().len(), 1);
    }
    // Who may do what.
    app.post("/v1/requests", &app.token(Role::Customer, "c2"), body.clone()).await.problem(403);
    app.post("/v1/requests", &p1, body).await.problem(403);
    app.get(&format!("/v1/requests/{id}"), &p3).await.problem(403);
    app.get(&format!("/v1/requests/{id}"), &app.token(Role::Customer, "c2")).await.problem(403);
    app.post(&format!("/v1/requests/{id}/accept"), &p3, json!({})).await.problem(403);
    app.post(&format!("/v1/requests/{id}/accept"), &customer, json!({})).await.problem(403);
    app.get("/v1/assignments?provider_id=p2", &p1).await.problem(403);
    app.get("/v1/assignments", &customer).await.problem(403);
    app.post("/v1/requests/nope/accept", &p1, json!({})).await.problem(404);

    let accepted = app.post(&format!("/v1/requests/{id}/accept"), &p2, json!({})).await;
    assert_eq!(accepted.status, 201);
    let session_id = accepted.body["id"].as_str().unwrap().to_owned();
    assert_eq!(accepted.body["request_id"], id.as_str());
    assert_eq!(accepted.body["provider_id"], "p2");
    assert_eq!(
        app.get("/v1/assignments", &p1).await.ok()["items"],
        json!([]),
        "the loser's offer is gone"
    );
    let queue = app.get("/v1/assignments", &p2).await;
    assert_eq!(queue.ok()["items"][0]["session_id"], session_id.as_str());

    app.join(&session_id, &customer).await.ok();
    app.join(&session_id, &p2).await.ok();
    app.advance(30).await;
    let ended = app.end(&session_id, &p2, None).await;
    assert_eq!(ended.ok()["outcome"]["reason"], "too_short");
    let request = app.get(&format!("/v1/requests/{id}"), &p1).await;
    assert_eq!(request.ok()["status"], "cancelled");
    assert_eq!(app.get("/v1/assignments", &app.admin()).await.ok()["items"], json!([]));
    app.post(&format!("/v1/requests/{id}/accept"), &p1, json!({})).await.problem(409);
}

async fn idempotency_keys_replay_the_first_answer_and_refuse_another_body(app: TestApp) {
    let body = json!({"kind": "video", "customer_id": "c1", "provider_id": "p1",
        "price": {"mode": "flat", "amount_cents": 500, "currency": "usd"}});
    let send = |token: String, key: &'static str, body: Value| {
        let app = &app;
        async move {
            let response = app
                .client
                .post(format!("{}/v1/sessions", app.base))
                .bearer_auth(token)
                .header("idempotency-key", key)
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = response.status();
            let replayed = response.headers().get("idempotent-replayed").is_some();
            (status, replayed, response.json::<Value>().await.unwrap())
        }
    };
    let (status, replayed, first) = send(app.service(), "order-1", body.clone()).await;
    assert_eq!((status.as_u16(), replayed), (201, false));
    let (status, replayed, again) = send(app.service(), "order-1", body.clone()).await;
    assert_eq!((status.as_u16(), replayed), (201, true));
    assert_eq!(again, first, "the same answer");
    let mut other = body.clone();
    other["price"]["amount_cents"] = json!(501);
    let (status, _, problem) = send(app.service(), "order-1", other).await;
    assert_eq!(status, 422);
    assert!(problem["detail"].as_str().unwrap().contains("Idempotency-Key"));
    // Keys belong to their caller: an admin's "order-1" is another key.
    let (status, replayed, admins) = send(app.admin(), "order-1", body.clone()).await;
    assert_eq!((status.as_u16(), replayed), (201, false));
    assert_ne!(admins["id"], first["id"]);
    assert_eq!(app.counts().await["sessions"], 2);

    // Requests honour keys too.
    let request = json!({"customer_id": "c1", "kind": "chat", "candidate_provider_ids": ["p1"],
        "price": {"mode": "flat", "amount_cents": 100, "currency": "usd"}});
    let post_request = |body: Value| {
        let app = &app;
        async move {
            let response = app
                .client
                .post(format!("{}/v1/requests", app.base))
                .bearer_auth(app.service())
                .header("idempotency-key", "req-1")
                .json(&body)
                .send()
                .await
                .unwrap();
            (response.status().as_u16(), response.json::<Value>().await.unwrap())
        }
    };
    let (s1, r1) = post_request(request.clone()).await;
    let (s2, r2) = post_request(request.clone()).await;
    assert_eq!((s1, s2), (201, 201));
    assert_eq!(r1["id"], r2["id"]);
    assert_eq!(app.counts().await["assignments"], 1);
    let mut changed = request;
    changed["candidate_provider_ids"] = json!(["p1", "p2"]);
    assert_eq!(post_request(changed).await.0, 422);

    let bad_key = app
        .client
        .post(format!("{}/v1/sessions", app.base))
        .bearer_auth(app.service())
        .header("idempotency-key", "")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(bad_key.status(), 422);
}

async fn concurrent_retries_with_one_key_create_one_session(app: TestApp) {
    let body = json!({"kind": "video", "customer_id": "c1", "provider_id": "p1",
        "price": {"mode": "flat", "amount_cents": 500, "currency": "usd"}});
    let attempts = (0..16).map(|_| {
        app.client
            .post(format!("{}/v1/sessions", app.base))
            .bearer_auth(app.service())
            .header("idempotency-key", "burst")
            .json(&body)
            .send()
    });
    let mut ids = Vec::new();
    for response in join_all(attempts).await {
        let response = response.unwrap();
        assert_eq!(response.status(), 201);
        ids.push(response.json::<Value>().await.unwrap()["id"].clone());
    }
    assert!(ids.iter().all(|id| *id == ids[0]));
    assert_eq!(app.counts().await["sessions"], 1);
}

async fn users_give_payouts_a_destination_and_receipts_an_address(app: TestApp) {
    let put = |id: &'static str, body: Value| {
        let app = &app;
        async move {
            let body = body.to_string();
            app.send(Method::PUT, &format!("/v1/users/{id}"), Some(&app.service()), Some(&body))
                .await
        }
    };
    put("p1", json!({"stripe_account": "acct_P1", "email": "prov@example.com"})).await.ok();
    let user = put("c1", json!({"email": "cust@example.com", "display_name": "Ana"})).await;
    assert_eq!(user.ok()["email"], "cust@example.com");
    // Fields left out are kept.
    let renamed = put("c1", json!({"display_name": "Ana B."})).await;
    assert_eq!(renamed.ok()["email"], "cust@example.com");
    put("c1", json!({"email": "not an address"})).await.problem(422);
    app.send(Method::PUT, "/v1/users/c1", Some(&app.customer()), Some("{}")).await.problem(403);

    let before = app.counts().await["outbox"];
    complete(&app, priced("paid", "c1", "p1", "flat", 1000), 120).await.ok();
    assert_eq!(payout_of(&app, "paid").await[0]["destination"], "acct_P1");
    // session.started, session.ended, two receipts; no payout row: without
    // a Stripe key the payout is manual and nothing is delivered for it.
    assert_eq!(app.counts().await["outbox"] - before, 4);
    let before = app.counts().await["outbox"];
    complete(&app, priced("short", "c1", "p9", "flat", 1000), 10).await.ok();
    // session.started, session.ended, one receipt (p9 has no address).
    assert_eq!(app.counts().await["outbox"] - before, 3);
}
