//! `verdict simulate`: drives any running verdict over HTTP with marketplace
//! traffic and reports throughput and latency per operation (the load
//! generator of the benchmarks), and the real-time marketplace behind
//! `verdict demo`.
//!
//! Each simulated session: the platform creates it, its parties join as the
//! scenario says, then it is ended (and, with `repeat_ends`, ended again:
//! the idempotent path). Tokens are minted with the server's secret.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::Rng;
use serde_json::{Value, json};
use tokio::sync::Mutex;
use verdict_core::Role;
use verdict_http::JwtKeys;

use crate::BoxError;

/// What happens to a simulated session before it is ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scenario {
    /// Both parties join.
    Together,
    /// Only the customer joins.
    CustomerOnly,
    /// Only the provider joins.
    ProviderOnly,
    /// Nobody joins.
    Nobody,
}

impl Scenario {
    const ALL: [Scenario; 4] =
        [Scenario::Together, Scenario::CustomerOnly, Scenario::ProviderOnly, Scenario::Nobody];

    fn name(self) -> &'static str {
        match self {
            Scenario::Together => "together",
            Scenario::CustomerOnly => "customer-only",
            Scenario::ProviderOnly => "provider-only",
            Scenario::Nobody => "nobody",
        }
    }
}

/// Scenario weights, from `--mix together=70,customer-only=15,…`.
#[derive(Clone, Debug, PartialEq)]
pub struct Mix(Vec<(Scenario, u32)>);

impl Default for Mix {
    fn default() -> Mix {
        Mix(vec![
            (Scenario::Together, 70),
            (Scenario::CustomerOnly, 15),
            (Scenario::ProviderOnly, 10),
            (Scenario::Nobody, 5),
        ])
    }
}

impl std::str::FromStr for Mix {
    type Err = String;

    fn from_str(text: &str) -> Result<Mix, String> {
        let mut weights = Vec::new();
        for part in text.split(',').map(str::trim).filter(|part| !part.is_empty()) {
            let (name, weight) =
                part.split_once('=').ok_or_else(|| format!("{part:?}: expected name=weight"))?;
            let scenario = Scenario::ALL
                .into_iter()
                .find(|scenario| scenario.name() == name.trim())
                .ok_or_else(|| {
                    format!(
                        "{name:?}: scenarios are together, customer-only, provider-only, nobody"
                    )
                })?;
            let weight: u32 = weight
                .trim()
                .parse()
                .map_err(|_| format!("{part:?}: the weight must be a whole number"))?;
            weights.push((scenario, weight));
        }
        if weights.iter().map(|(_, weight)| weight).sum::<u32>() == 0 {
            return Err("the mix needs at least one positive weight".into());
        }
        Ok(Mix(weights))
    }
}

impl Mix {
    fn pick(&self, rng: &mut impl Rng) -> Scenario {
        let total: u32 = self.0.iter().map(|(_, weight)| weight).sum();
        let mut roll = rng.random_range(0..total);
        for (scenario, weight) in &self.0 {
            if roll < *weight {
                return *scenario;
            }
            roll -= weight;
        }
        Scenario::Together
    }
}

pub struct Options {
    pub url: String,
    pub sessions: u64,
    pub concurrency: usize,
    pub mix: Mix,
    /// Extra ends per session after the first (already ended: idempotent).
    pub repeat_ends: u32,
    /// Create and join every session first, then end them all: the ends'
    /// throughput is measured alone.
    pub ends_apart: bool,
    /// Processes whose CPU time each pass is reported in (Linux): a server,
    /// or a postmaster with its backends; never the load generator.
    pub cpu_pids: Vec<u32>,
    pub keys: Arc<JwtKeys>,
}

/// Latencies of one operation.
#[derive(Default)]
struct Samples {
    micros: Vec<i64>,
    errors: u64,
}

#[derive(Default)]
struct Tally {
    operations: BTreeMap<&'static str, Samples>,
    outcomes: BTreeMap<String, u64>,
    scenarios: BTreeMap<&'static str, u64>,
}

/// The report: counts, throughput and latency percentiles per operation,
/// and the outcomes the server answered.
pub struct Report {
    pub document: Value,
}

/// Milliseconds at the nearest-rank percentile of sorted microseconds.
fn percentile_ms(sorted: &[i64], percent: u32) -> f64 {
    verdict_core::percentile(sorted, percent).unwrap_or(0) as f64 / 1000.0
}

/// One HTTP call, timed; `Ok(body)` for a 2xx answer.
async fn call(
    tally: &Mutex<Tally>,
    operation: &'static str,
    request: reqwest::RequestBuilder,
) -> Result<Value, String> {
    let started = Instant::now();
    let result = async {
        let response = request.send().await.map_err(|error| error.to_string())?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status.is_success() { Ok(body) } else { Err(format!("{status}: {body}")) }
    }
    .await;
    let elapsed = started.elapsed().as_micros() as i64;
    let mut tally = tally.lock().await;
    let samples = tally.operations.entry(operation).or_default();
    match &result {
        Ok(_) => samples.micros.push(elapsed),
        Err(_) => samples.errors += 1,
    }
    result
}

/// Which part of each session's story a pass of workers plays.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Create, join, end: the whole story.
    Whole,
    /// Create and join only (`ends_apart`, first pass).
    Prepare,
    /// End only the sessions prepared (`ends_apart`, second pass).
    Finish,
    /// End the ended sessions again, `repeat_ends` times each
    /// (`ends_apart`, third pass): the idempotent path alone.
    Again,
}

struct Shared {
    client: reqwest::Client,
    tally: Mutex<Tally>,
    options: Options,
    run_id: String,
    /// Sessions created (so the end pass knows which to end).
    created: Vec<std::sync::atomic::AtomicBool>,
    done: AtomicU64,
}

/// Runs the simulation to the end; `progress` gets the sessions done.
pub async fn run(
    options: Options,
    progress: impl Fn(u64) + Send + Sync + 'static,
) -> Result<Report, BoxError> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(options.concurrency)
        .build()?;
    let shared = Arc::new(Shared {
        client,
        tally: Mutex::new(Tally::default()),
        run_id: uuid::Uuid::now_v7().simple().to_string(),
        created: (0..options.sessions).map(|_| std::sync::atomic::AtomicBool::new(false)).collect(),
        done: AtomicU64::new(0),
        options,
    });
    let progress: Arc<dyn Fn(u64) + Send + Sync> = Arc::new(progress);
    // CPU of `cpu_pids` at each pass's edges, outside the passes' clocks.
    let (pids, mut cpu) = (shared.options.cpu_pids.clone(), Vec::new());
    let mut sample = || -> Result<(), BoxError> {
        if !pids.is_empty() {
            cpu.push(cpu_ticks(&pids)?);
        }
        Ok(())
    };
    sample()?;
    let started = Instant::now();
    // Throughput of each operation is over the pass it ran in.
    let (setup_seconds, end_seconds, again_seconds) = if shared.options.ends_apart {
        pass(&shared, Stage::Prepare, &progress).await?;
        let setup = started.elapsed().as_secs_f64();
        sample()?;
        let ending = Instant::now();
        pass(&shared, Stage::Finish, &progress).await?;
        let ends = ending.elapsed().as_secs_f64();
        sample()?;
        let again = Instant::now();
        if shared.options.repeat_ends > 0 {
            pass(&shared, Stage::Again, &progress).await?;
        }
        let again = again.elapsed().as_secs_f64();
        sample()?;
        (setup, ends, again)
    } else {
        pass(&shared, Stage::Whole, &progress).await?;
        let whole = started.elapsed().as_secs_f64();
        sample()?;
        (whole, whole, whole)
    };
    let passes: &[&str] =
        if shared.options.ends_apart { &["setup", "end", "end_again"] } else { &["whole"] };
    let cpu_ticks: BTreeMap<&str, u64> = passes
        .iter()
        .zip(cpu.windows(2))
        .map(|(pass, edges)| (*pass, edges[1].saturating_sub(edges[0])))
        .collect();
    let elapsed = started.elapsed().as_secs_f64();
    let options = &shared.options;
    let tally = shared.tally.lock().await;
    let mut operations = serde_json::Map::new();
    for (name, samples) in &tally.operations {
        let mut sorted = samples.micros.clone();
        sorted.sort_unstable();
        let seconds = match *name {
            "end" => end_seconds,
            "end_again" => again_seconds,
            _ => setup_seconds,
        };
        operations.insert(
            (*name).to_owned(),
            json!({
                "count": sorted.len(),
                "errors": samples.errors,
                "per_second": (sorted.len() as f64 / seconds * 10.0).round() / 10.0,
                "p50_ms": percentile_ms(&sorted, 50),
                "p90_ms": percentile_ms(&sorted, 90),
                "p99_ms": percentile_ms(&sorted, 99),
                "max_ms": sorted.last().map_or(0.0, |max| *max as f64 / 1000.0),
            }),
        );
    }
    Ok(Report {
        document: json!({
            "url": options.url,
            "run": shared.run_id,
            "sessions": options.sessions,
            "concurrency": options.concurrency,
            "ends_apart": options.ends_apart,
            "elapsed_seconds": (elapsed * 1000.0).round() / 1000.0,
            "scenarios": tally.scenarios,
            "outcomes": tally.outcomes,
            "operations": operations,
            "cpu_ticks": if cpu_ticks.is_empty() { Value::Null } else { json!(cpu_ticks) },
        }),
    })
}

/// One pass over every session, `concurrency` at a time.
async fn pass(
    shared: &Arc<Shared>,
    stage: Stage,
    progress: &Arc<dyn Fn(u64) + Send + Sync>,
) -> Result<(), BoxError> {
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..shared.options.concurrency.max(1) {
        let (shared, next, progress) = (shared.clone(), next.clone(), progress.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= shared.options.sessions {
                    return;
                }
                let slot = &shared.created[n as usize];
                if stage == Stage::Again {
                    if slot.load(Ordering::Relaxed) {
                        end_again(&shared, n).await;
                    }
                    continue;
                }
                if stage != Stage::Finish {
                    let scenario = shared.options.mix.pick(&mut rand::rng());
                    let created = prepare(&shared, n, scenario).await;
                    slot.store(created, Ordering::Relaxed);
                    *shared.tally.lock().await.scenarios.entry(scenario.name()).or_default() += 1;
                }
                if stage != Stage::Prepare {
                    if slot.load(Ordering::Relaxed) {
                        finish(&shared, n).await;
                    }
                    progress(shared.done.fetch_add(1, Ordering::Relaxed) + 1);
                }
            }
        }));
    }
    for worker in workers {
        worker.await?;
    }
    Ok(())
}

fn session_id(shared: &Shared, n: u64) -> String {
    format!("sim-{}-{n}", shared.run_id)
}

fn service_token(shared: &Shared) -> String {
    shared.options.keys.mint(Role::Service, "simulate", unix_now() + 3600)
}

/// Creates session `n` and lets its parties join as `scenario` says;
/// whether it was created.
async fn prepare(shared: &Shared, n: u64, scenario: Scenario) -> bool {
    let (client, tally) = (&shared.client, &shared.tally);
    let base = shared.options.url.trim_end_matches('/');
    let id = session_id(shared, n);
    let customer = format!("sim-c{}", n % 1000);
    // A thousand of each: every party stays far below its per-caller rate
    // limit (docs/limits.md), so the figures are the server's, not the limit's.
    let provider = format!("sim-p{}", n % 1000);
    let created = call(
        tally,
        "create",
        client.post(format!("{base}/v1/sessions")).bearer_auth(service_token(shared)).json(
            &json!({
                "id": id, "kind": "video", "customer_id": customer, "provider_id": provider,
                "price": {"mode": "per_minute", "amount_cents": 150, "currency": "usd"},
            }),
        ),
    )
    .await;
    if created.is_err() {
        return false;
    }
    let joins: &[(Role, &str)] = match scenario {
        Scenario::Together => {
            &[(Role::Customer, customer.as_str()), (Role::Provider, provider.as_str())]
        }
        Scenario::CustomerOnly => &[(Role::Customer, customer.as_str())],
        Scenario::ProviderOnly => &[(Role::Provider, provider.as_str())],
        Scenario::Nobody => &[],
    };
    for (role, sub) in joins {
        let token = shared.options.keys.mint(*role, sub, unix_now() + 3600);
        let _ = call(
            tally,
            "join",
            client.post(format!("{base}/v1/sessions/{id}/join")).bearer_auth(token),
        )
        .await;
    }
    true
}

/// Ends session `n` (then, unless ends are apart, again `repeat_ends` times).
async fn finish(shared: &Shared, n: u64) {
    let (client, tally) = (&shared.client, &shared.tally);
    let base = shared.options.url.trim_end_matches('/');
    let id = session_id(shared, n);
    let service = service_token(shared);
    let ended = call(
        tally,
        "end",
        client.post(format!("{base}/v1/sessions/{id}/end")).bearer_auth(&service),
    )
    .await;
    if let Ok(body) = ended {
        let status = body["outcome"]["status"].as_str().unwrap_or("unknown").to_owned();
        *tally.lock().await.outcomes.entry(status).or_default() += 1;
    }
    // Apart, the repeats have a pass of their own.
    if !shared.options.ends_apart {
        end_again(shared, n).await;
    }
}

/// Ends session `n` again `repeat_ends` times (each answered as already
/// ended).
async fn end_again(shared: &Shared, n: u64) {
    let base = shared.options.url.trim_end_matches('/');
    let id = session_id(shared, n);
    let service = service_token(shared);
    for _ in 0..shared.options.repeat_ends {
        let request =
            shared.client.post(format!("{base}/v1/sessions/{id}/end")).bearer_auth(&service);
        let _ = call(&shared.tally, "end_again", request).await;
    }
}

/// CPU time so far of `pids`, in clock ticks (`getconf CLK_TCK`): each
/// one's user and system time (all threads) and its children's, those
/// reaped (cutime, cstime) and those alive (Linux `/proc`).
fn cpu_ticks(pids: &[u32]) -> Result<u64, BoxError> {
    let (mut ticks, mut found) = (0, 0);
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        // Gone since listed, or not ours to read: not counted.
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // The fields after the command (which may hold spaces): state is
        // field 3, ppid 4, utime 14, stime 15, cutime 16, cstime 17.
        let fields: Vec<u64> = stat
            .rsplit_once(')')
            .map_or("", |(_, rest)| rest)
            .split_whitespace()
            .map(|field| field.parse().unwrap_or(0))
            .collect();
        let field = |n: usize| fields.get(n - 3).copied().unwrap_or(0);
        if pids.contains(&pid) {
            ticks += field(14) + field(15) + field(16) + field(17);
            found += 1;
        } else if pids.iter().any(|parent| u64::from(*parent) == field(4)) {
            ticks += field(14) + field(15);
        }
    }
    if found < pids.len() {
        return Err(format!("--cpu-pids: not every process of {pids:?} is running").into());
    }
    Ok(ticks)
}

pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|since| since.as_secs() as i64)
        .unwrap_or(0)
}
