//! `verdict simulate --abuse`: honest traffic with hostile callers beside
//! it, for a fixed time. The hostile customers flood joins and leaves of
//! their own sessions, requests, and requests with made-up HTTP methods, as
//! fast as the server answers (closed loop, no pause); the honest clients
//! run ordinary sessions. The report gives the honest latencies, what the
//! hostile callers were answered, how many rows they managed to store, the
//! server's resident memory over the run, and the verification's verdict.
//! Run it once with `--hostile 0` for the baseline to compare with.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::Mutex;
use verdict_core::Role;
use verdict_http::JwtKeys;

use crate::BoxError;
use crate::simulate::unix_now;

pub struct AbuseOptions {
    pub url: String,
    /// How long the traffic runs.
    pub duration: Duration,
    /// Honest clients, each running sessions one after another.
    pub honest: usize,
    /// Hostile customers, each flooding as fast as answered.
    pub hostile: usize,
    /// The server's process, whose resident memory is sampled each second
    /// (Linux `/proc`); none: not sampled.
    pub rss_pid: Option<u32>,
    pub keys: Arc<JwtKeys>,
}

/// What a hostile caller does, in turn.
const HOSTILE_ACTIONS: [&str; 4] = ["join", "leave", "request", "odd_method"];

#[derive(Default)]
struct Tally {
    /// Latencies of honest calls, microseconds, per operation.
    honest: BTreeMap<&'static str, Vec<i64>>,
    honest_errors: BTreeMap<String, u64>,
    /// Hostile answers: action → status code → count.
    hostile: BTreeMap<&'static str, BTreeMap<u16, u64>>,
}

struct Shared {
    client: reqwest::Client,
    options: AbuseOptions,
    run: String,
    stop: AtomicBool,
    tally: Mutex<Tally>,
    sessions: AtomicU64,
}

impl Shared {
    fn base(&self) -> &str {
        self.options.url.trim_end_matches('/')
    }

    fn token(&self, role: Role, sub: &str) -> String {
        self.options.keys.mint(role, sub, unix_now() + 3600)
    }

    fn hostile_customer(&self, i: usize) -> String {
        format!("hostile-{}-c{i}", self.run)
    }

    fn hostile_session(&self, i: usize) -> String {
        format!("abuse-{}-h{i}", self.run)
    }
}

/// Runs the abuse for `options.duration`; the report as JSON.
pub async fn run(options: AbuseOptions) -> Result<Value, BoxError> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(options.honest + options.hostile + 4)
        .build()?;
    let shared = Arc::new(Shared {
        client,
        run: uuid::Uuid::now_v7().simple().to_string()[20..].to_owned(),
        stop: AtomicBool::new(false),
        tally: Mutex::new(Tally::default()),
        sessions: AtomicU64::new(0),
        options,
    });
    // Each hostile customer has a session of its own with a provider who
    // joined honestly: the flood is of the customer's own presence.
    for i in 0..shared.options.hostile {
        create_session(&shared, &shared.hostile_session(i), &shared.hostile_customer(i), "victim")
            .await?;
        let provider = shared.token(Role::Provider, &format!("victim-{}", shared.run));
        let joined = shared
            .client
            .post(format!("{}/v1/sessions/{}/join", shared.base(), shared.hostile_session(i)))
            .bearer_auth(provider)
            .send()
            .await?;
        if !joined.status().is_success() {
            return Err(format!("the victim provider's join: {}", joined.status()).into());
        }
    }
    let rss = Arc::new(Mutex::new(Vec::<u64>::new()));
    let sampler = shared.options.rss_pid.map(|pid| {
        let (rss, shared) = (rss.clone(), shared.clone());
        tokio::spawn(async move {
            while !shared.stop.load(Ordering::Relaxed) {
                if let Some(kib) = resident_kib(pid) {
                    rss.lock().await.push(kib);
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    });
    let started = Instant::now();
    let mut workers = Vec::new();
    for worker in 0..shared.options.honest {
        let shared = shared.clone();
        workers.push(tokio::spawn(async move { honest(&shared, worker).await }));
    }
    for i in 0..shared.options.hostile {
        let shared = shared.clone();
        workers.push(tokio::spawn(async move { hostile(&shared, i).await }));
    }
    tokio::time::sleep(shared.options.duration).await;
    shared.stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    if let Some(sampler) = sampler {
        sampler.await?;
    }
    let stored = stored_by_hostiles(&shared).await?;
    let verification = verification(&shared).await?;
    let tally = shared.tally.lock().await;
    let mut all: Vec<i64> = tally.honest.values().flatten().copied().collect();
    all.sort_unstable();
    let mut honest = serde_json::Map::new();
    for (operation, micros) in &tally.honest {
        let mut sorted = micros.clone();
        sorted.sort_unstable();
        honest.insert((*operation).to_owned(), latencies(&sorted, elapsed));
    }
    honest.insert("all".to_owned(), latencies(&all, elapsed));
    let rss = rss.lock().await;
    Ok(json!({
        "url": shared.options.url,
        "run": shared.run,
        "duration_seconds": (elapsed * 10.0).round() / 10.0,
        "honest_clients": shared.options.honest,
        "hostile_clients": shared.options.hostile,
        "honest_sessions": shared.sessions.load(Ordering::Relaxed),
        "honest": honest,
        "honest_errors": tally.honest_errors,
        "hostile_answers": tally.hostile,
        "stored_by_hostiles": stored,
        "rss_kib": rss_summary(&rss),
        "verification": verification,
    }))
}

fn latencies(sorted: &[i64], seconds: f64) -> Value {
    let ms = |percent| verdict_core::percentile(sorted, percent).unwrap_or(0) as f64 / 1000.0;
    json!({
        "count": sorted.len(),
        "per_second": (sorted.len() as f64 / seconds * 10.0).round() / 10.0,
        "p50_ms": ms(50),
        "p99_ms": ms(99),
        "max_ms": sorted.last().map_or(0.0, |max| *max as f64 / 1000.0),
    })
}

/// Resident memory over the run: the first sample after a warm-up of five
/// seconds, the largest, and the last (flat: last close to first).
fn rss_summary(samples: &[u64]) -> Value {
    let warm = samples.get(5..).filter(|rest| !rest.is_empty()).unwrap_or(samples);
    match (warm.first(), warm.iter().max(), warm.last()) {
        (Some(first), Some(max), Some(last)) => {
            let every_5s: Vec<u64> = samples.iter().step_by(5).copied().collect();
            json!({
                "samples": samples.len(), "after_warmup": first, "max": max, "last": last,
                "every_5s": every_5s,
            })
        }
        _ => Value::Null,
    }
}

async fn create_session(
    shared: &Shared,
    id: &str,
    customer: &str,
    provider: &str,
) -> Result<(), BoxError> {
    let response = shared
        .client
        .post(format!("{}/v1/sessions", shared.base()))
        .bearer_auth(shared.token(Role::Service, "abuse"))
        .json(&json!({
            "id": id, "kind": "video",
            "customer_id": customer, "provider_id": format!("{provider}-{}", shared.run),
            "price": {"mode": "per_minute", "amount_cents": 150, "currency": "usd"},
        }))
        .send()
        .await?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!("creating {id}: {}", response.status()).into())
    }
}

/// An honest client: session after session (create, both join, end), its
/// customers spread so that none nears a per-caller limit.
async fn honest(shared: &Shared, worker: usize) {
    let mut n = 0u64;
    while !shared.stop.load(Ordering::Relaxed) {
        n += 1;
        let id = format!("abuse-{}-w{worker}-{n}", shared.run);
        let customer = format!("honest-{}-c{worker}-{}", shared.run, n % 64);
        let provider = format!("honest-p{worker}-{}", n % 16);
        let base = shared.base();
        let started = Instant::now();
        let created = create_session(shared, &id, &customer, &provider).await;
        record_honest(shared, "create", started, created.map_err(|error| error.to_string())).await;
        let parties =
            [(Role::Customer, customer), (Role::Provider, format!("{provider}-{}", shared.run))];
        for (role, sub) in parties {
            let request = shared
                .client
                .post(format!("{base}/v1/sessions/{id}/join"))
                .bearer_auth(shared.token(role, &sub));
            timed(shared, "join", request).await;
        }
        let request = shared
            .client
            .post(format!("{base}/v1/sessions/{id}/end"))
            .bearer_auth(shared.token(Role::Service, "abuse"));
        timed(shared, "end", request).await;
        shared.sessions.fetch_add(1, Ordering::Relaxed);
    }
}

async fn timed(shared: &Shared, operation: &'static str, request: reqwest::RequestBuilder) {
    let started = Instant::now();
    let result = match request.send().await {
        Ok(response) if response.status().is_success() => {
            let _ = response.bytes().await;
            Ok(())
        }
        Ok(response) => Err(response.status().to_string()),
        Err(error) => Err(error.to_string()),
    };
    record_honest(shared, operation, started, result).await;
}

async fn record_honest(
    shared: &Shared,
    operation: &'static str,
    started: Instant,
    result: Result<(), String>,
) {
    let elapsed = started.elapsed().as_micros() as i64;
    let mut tally = shared.tally.lock().await;
    match result {
        Ok(()) => tally.honest.entry(operation).or_default().push(elapsed),
        Err(error) => *tally.honest_errors.entry(format!("{operation}: {error}")).or_default() += 1,
    }
}

/// A hostile customer: join, leave, a request, a made-up method, again and
/// again, as fast as answered.
async fn hostile(shared: &Shared, i: usize) {
    let base = shared.base();
    let customer = shared.hostile_customer(i);
    let session = shared.hostile_session(i);
    let token = shared.token(Role::Customer, &customer);
    let mut n = 0usize;
    while !shared.stop.load(Ordering::Relaxed) {
        let action = HOSTILE_ACTIONS[n % HOSTILE_ACTIONS.len()];
        n += 1;
        let request = match action {
            "join" => shared.client.post(format!("{base}/v1/sessions/{session}/join")),
            "leave" => shared.client.post(format!("{base}/v1/sessions/{session}/leave")),
            "request" => shared.client.post(format!("{base}/v1/requests")).json(&json!({
                "customer_id": customer, "kind": "video",
                "price": {"mode": "per_minute", "amount_cents": 150, "currency": "usd"},
                "candidate_provider_ids": [format!("victim-{}", shared.run)],
            })),
            _ => {
                // A new method name each time: a label per name would grow
                // the metrics without bound.
                let method = reqwest::Method::from_bytes(format!("ABUSE{n}").as_bytes())
                    .unwrap_or(reqwest::Method::PATCH);
                shared.client.request(method, format!("{base}/v1/sessions/{session}"))
            }
        };
        let status = match request.bearer_auth(&token).send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let _ = response.bytes().await;
                status
            }
            // Not answered at all: counted as 0.
            Err(_) => 0,
        };
        *shared.tally.lock().await.hostile.entry(action).or_default().entry(status).or_default() +=
            1;
    }
}

/// What the hostile customers managed to store: their own presence events
/// in their sessions (every page of the audit trail), and the requests they
/// created.
async fn stored_by_hostiles(shared: &Shared) -> Result<Value, BoxError> {
    let admin = shared.token(Role::Admin, "abuse");
    let mut events = Vec::new();
    for i in 0..shared.options.hostile {
        let (mut own, mut after) = (0u64, None::<String>);
        loop {
            let mut request = shared
                .client
                .get(format!("{}/v1/sessions/{}/events", shared.base(), shared.hostile_session(i)))
                .bearer_auth(&admin);
            if let Some(cursor) = &after {
                request = request.query(&[("after", cursor.as_str()), ("limit", "500")]);
            }
            let page: Value = request.send().await?.error_for_status()?.json().await?;
            own += page["items"].as_array().map_or(0, |items| {
                items.iter().filter(|event| event["party"] == "customer").count()
            }) as u64;
            match page["next_cursor"].as_str() {
                Some(cursor) => after = Some(cursor.to_owned()),
                None => break,
            }
        }
        events.push(own);
    }
    let tally = shared.tally.lock().await;
    let requests = tally.hostile.get("request").and_then(|answers| answers.get(&201)).copied();
    Ok(json!({
        "customer_presence_events_per_session": events,
        "requests_created": requests.unwrap_or(0),
    }))
}

/// The verification report's failing sections (none: clean).
async fn verification(shared: &Shared) -> Result<Value, BoxError> {
    let report: Value = shared
        .client
        .get(format!("{}/v1/admin/verify", shared.base()))
        .bearer_auth(shared.token(Role::Admin, "abuse"))
        .timeout(Duration::from_secs(300))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let failing: Vec<Value> = report["sections"]
        .as_array()
        .map(|sections| {
            sections
                .iter()
                .filter(|section| section["ok"] == false)
                .map(|section| json!({"name": section["name"], "count": section["count"]}))
                .collect()
        })
        .unwrap_or_default();
    Ok(json!({"clean": failing.is_empty(), "failing": failing}))
}

/// Resident memory of `pid` in KiB (Linux), if it can be read.
fn resident_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
}
