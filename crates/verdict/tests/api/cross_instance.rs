//! Cross-instance lock order: two `verdict serve` processes on one
//! PostgreSQL database end the same sessions at once, walking them in
//! opposite id orders. Each process groups concurrent ends into one
//! transaction per group writer, so a group of one process can hold a
//! session the other's group waits for while waiting for one that group
//! holds: a deadlock PostgreSQL breaks by failing one side. The contract
//! (docs/settlement.md) still holds: every caller gets 200 and the same outcome, one
//! transition per session, and no caller sees a lock error (503).

use std::collections::{BTreeMap, BTreeSet};

use futures::future::join_all;
use futures::stream::{self, StreamExt};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::Connection;
use verdict_core::Role;

use crate::scale_out::{Client, Server, serve, session_body};

const SESSIONS: usize = 200;
const CLIENTS_PER_SERVER: usize = 8;
/// Requests each client keeps in flight: enough for each process to
/// group several ends into one transaction. (With 4, a lock-order
/// deadlock between the processes showed in about 3 runs out of 4; with 8,
/// in every run.)
const IN_FLIGHT: usize = 8;

/// Who joins session `n`: both parties for most (→ `completed` once the
/// clocks have moved past `min_billable_seconds`), one party for some
/// (→ `cancelled`), so that "identical outcomes" tells outcomes apart.
fn joiners(n: usize) -> (bool, bool) {
    match n % 10 {
        3 => (true, false),
        7 => (false, true),
        _ => (true, true),
    }
}

/// The order in which client `k` of `side` ends the sessions: ids
/// ascending on the first process, descending on the second, each walk
/// starting (cyclically) at its own eighth of the ids, so that client `k`
/// of one process meets client `k` of the other inside the `k`-th eighth.
/// The two processes thus end the same sessions at the same time, in
/// opposite orders, in eight places at once: walks that all start from
/// the two ends of the list meet in one place only, which rarely makes
/// two group transactions wait for each other.
fn walk(ids: &[String], side: usize, k: usize) -> Vec<&str> {
    let eighth = ids.len() / CLIENTS_PER_SERVER;
    let mut order: Vec<&str> = ids.iter().map(String::as_str).collect();
    if side == 0 {
        order.rotate_left(k * eighth);
    } else {
        order.rotate_left((k + 1) * eighth);
        order.reverse();
    }
    order
}

type Outcome = (Value, Value, Value);

fn outcome(body: &Value) -> Outcome {
    let o = &body["outcome"];
    (o["status"].clone(), o["reason"].clone(), o["billable_seconds"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_ending_shared_sessions_in_opposite_orders_agree_without_503() {
    let database = verdict_testing::shared_server().create_database().await;
    let dir = tempfile::tempdir().unwrap();
    let servers = [serve(&database.url, dir.path()).await, serve(&database.url, dir.path()).await];
    let client = &Client::new();
    let (service, admin) =
        (client.token(Role::Service, "platform"), client.token(Role::Admin, "ops"));
    let (customer, provider) =
        (client.token(Role::Customer, "cust-1"), client.token(Role::Provider, "prov-1"));
    let ids: Vec<String> = (0..SESSIONS).map(|n| format!("x{n:03}")).collect();

    // Create every session (spread over both processes), then join them
    // all through the first process, so that only the ends race across
    // processes.
    let created: Vec<_> = stream::iter(ids.iter().enumerate())
        .map(|(n, id)| {
            client.post(&servers[n % 2], "/v1/sessions", &service, Some(session_body(id)))
        })
        .buffer_unordered(16)
        .collect()
        .await;
    assert!(created.iter().all(|(status, _)| *status == StatusCode::CREATED), "{created:?}");
    let joins: Vec<(&Server, &String, &str)> = ids
        .iter()
        .enumerate()
        .flat_map(|(n, id)| {
            let (customer_joins, provider_joins) = joiners(n);
            let mut joins = Vec::new();
            if customer_joins {
                joins.push((&servers[0], id, customer.as_str()));
            }
            if provider_joins {
                joins.push((&servers[0], id, provider.as_str()));
            }
            joins
        })
        .collect();
    let joined: Vec<_> = stream::iter(joins)
        .map(|(server, id, token)| {
            let path = format!("/v1/sessions/{id}/join");
            async move { client.post(server, &path, token, None).await }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    assert!(joined.iter().all(|(status, _)| *status == StatusCode::OK), "{joined:?}");
    for server in &servers {
        let (status, body) = client
            .post(server, "/v1/test-clock/advance", &admin, Some(json!({"seconds": 120})))
            .await;
        assert_eq!(status, 200, "{body}");
    }

    // 16 clients, each ending every session: 8 on the first process in
    // ascending id order, 8 on the second in descending order.
    let started = std::time::Instant::now();
    let clients = (0..2 * CLIENTS_PER_SERVER).map(|c| {
        let (side, k) = (c / CLIENTS_PER_SERVER, c % CLIENTS_PER_SERVER);
        let (server, service) = (&servers[side], &service);
        stream::iter(walk(&ids, side, k))
            .map(move |id| async move {
                let path = format!("/v1/sessions/{id}/end");
                let (status, body) = client.post(server, &path, service, None).await;
                (id, side, status, body)
            })
            .buffer_unordered(IN_FLIGHT)
            .collect::<Vec<_>>()
    });
    let answers: Vec<_> = join_all(clients).await.into_iter().flatten().collect();
    let elapsed = started.elapsed();
    assert_eq!(answers.len(), 2 * CLIENTS_PER_SERVER * SESSIONS);
    let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
    for (_, _, status, _) in &answers {
        *statuses.entry(status.as_u16()).or_default() += 1;
    }
    eprintln!(
        "{} ends of {SESSIONS} sessions from 2 processes in {elapsed:?}: statuses {statuses:?}",
        answers.len()
    );

    // Everything that is wrong, collected so that one run tells it all.
    let mut problems: Vec<String> = Vec::new();
    for (id, side, status, body) in &answers {
        if *status != StatusCode::OK {
            problems.push(format!("{id} on process {side}: {status} {body}"));
        }
    }
    // Per session: one outcome in every answer, one of them fresh, the
    // outcome the joins call for.
    let mut per_session: BTreeMap<&str, Vec<&Value>> = BTreeMap::new();
    for (id, _, status, body) in &answers {
        if *status == StatusCode::OK {
            per_session.entry(id).or_default().push(body);
        }
    }
    for (n, id) in ids.iter().enumerate() {
        let Some(bodies) = per_session.get(id.as_str()) else {
            problems.push(format!("{id}: no answer was 200"));
            continue;
        };
        let outcomes: BTreeSet<String> =
            bodies.iter().map(|body| format!("{:?}", outcome(body))).collect();
        if outcomes.len() != 1 {
            problems.push(format!("{id}: different outcomes {outcomes:?}"));
        }
        let fresh = bodies.iter().filter(|body| body["outcome"]["already_ended"] == false).count();
        if fresh != 1 {
            problems.push(format!("{id}: {fresh} answers with already_ended false"));
        }
        let (status, reason, billable) = outcome(bodies[0]);
        let expected = match joiners(n) {
            (true, true) => ("completed", "completed"),
            (true, false) => ("cancelled", "no_show_provider"),
            _ => ("cancelled", "no_show_customer"),
        };
        if (status.as_str(), reason.as_str()) != (Some(expected.0), Some(expected.1))
            || (expected.0 == "completed" && billable.as_i64().is_none_or(|s| s < 60))
        {
            problems.push(format!("{id}: {status} {reason} {billable}, expected {expected:?}"));
        }
    }

    // In the database: one `ended` event per session, one payout per
    // completed session and none for the others.
    let mut connection = sqlx::PgConnection::connect(&database.url).await.unwrap();
    let ended: BTreeMap<String, i64> = sqlx::query_as(
        "SELECT session_id, COUNT(*) FROM session_events WHERE type = 'ended' GROUP BY session_id",
    )
    .fetch_all(&mut connection)
    .await
    .unwrap()
    .into_iter()
    .collect();
    let payouts: BTreeMap<String, i64> =
        sqlx::query_as("SELECT session_id, COUNT(*) FROM payouts GROUP BY session_id")
            .fetch_all(&mut connection)
            .await
            .unwrap()
            .into_iter()
            .collect();
    for (n, id) in ids.iter().enumerate() {
        let events = ended.get(id).copied().unwrap_or(0);
        if events != 1 {
            problems.push(format!("{id}: {events} `ended` events"));
        }
        let expected = i64::from(joiners(n) == (true, true));
        let paid = payouts.get(id).copied().unwrap_or(0);
        if paid != expected {
            problems.push(format!("{id}: {paid} payouts, expected {expected}"));
        }
    }
    assert!(
        problems.is_empty(),
        "{} problems (statuses {statuses:?}), the first 20:\n{}",
        problems.len(),
        problems.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
    );
}
