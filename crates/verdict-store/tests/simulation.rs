//! Deterministic simulation of the decision core and the store, on both
//! databases: a seeded schedule of creates, joins, leaves, heartbeats,
//! clock advances, single, duplicate and concurrent ends, sweeps and
//! crashes (writes cut off mid-flight, the store dropped and the database
//! reopened), with every invariant checked after every step.
//!
//! The schedule is a pure function of the seed; a failure prints the seed
//! and the steps so far, and `VERDICT_SIM_SEED=<seed>` replays that seed
//! alone (thread interleavings inside a concurrent step are the only part
//! not replayed). `VERDICT_SIM_SEEDS` and `VERDICT_SIM_STEPS` run more.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::future::join_all;
use sqlx::Connection;
use verdict_core::{Cents, EndCause, Kind, Party, Price, PriceMode, Role, Status, UnixMillis};
use verdict_store::{
    Actor, EventType, NewSession, PresenceChange, Settings, Store, StoreError, monitor,
};

const T0: UnixMillis = UnixMillis(1_800_000_000_000);
/// Sections of the verification report that no schedule may ever produce
/// (stuck sessions and missing joins can be legitimate between sweeps).
const NEVER: [&str; 5] = [
    "misclassified_completed",
    "misclassified_cancelled",
    "timestamp_integrity",
    "payout_accuracy",
    "ledger_balance",
];

/// splitmix64: tiny, seedable, the same on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Held only to keep the database alive for the world's lifetime.
#[allow(dead_code)]
enum Backend {
    Sqlite(tempfile::TempDir),
    Postgres(verdict_testing::TestDatabase),
}

struct World {
    store: Arc<dyn Store>,
    url: String,
    _backend: Backend,
    settings: Settings,
    now: UnixMillis,
    ids: Vec<String>,
    /// The outcome each acknowledged end (or sweep) reported: durable, so
    /// it must never change or disappear.
    acknowledged: BTreeMap<String, Status>,
    steps: Vec<String>,
    crashes: u64,
    /// Ends committed by a crash's cut-off writes but never answered.
    cut_after_commit: u64,
}

impl World {
    async fn sqlite() -> World {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/simulation.db", dir.path().display());
        World::new(url, Backend::Sqlite(dir)).await
    }

    async fn postgres() -> World {
        let database = verdict_testing::shared_server().create_database().await;
        World::new(database.url.clone(), Backend::Postgres(database)).await
    }

    async fn new(url: String, backend: Backend) -> World {
        World {
            store: verdict_store::open(&url).await.unwrap(),
            url,
            _backend: backend,
            settings: Settings::default(),
            now: T0,
            ids: Vec::new(),
            acknowledged: BTreeMap::new(),
            steps: Vec::new(),
            crashes: 0,
            cut_after_commit: 0,
        }
    }

    fn acknowledge(&mut self, id: &str, status: Status) -> Result<(), String> {
        if let Some(earlier) = self.acknowledged.insert(id.to_owned(), status)
            && earlier != status
        {
            return Err(format!("{id} was acknowledged {earlier}, now answered {status}"));
        }
        Ok(())
    }

    /// One step of the schedule.
    async fn step(&mut self, rng: &mut Rng) -> Result<(), String> {
        let roll = rng.below(100);
        // Mostly sessions still open (where the decisions are), sometimes
        // any (duplicate ends, presence after the end).
        let open: Vec<String> =
            self.ids.iter().filter(|id| !self.acknowledged.contains_key(*id)).cloned().collect();
        let pick = |rng: &mut Rng, ids: &[String]| {
            let pool = if open.is_empty() || rng.below(100) < 15 { ids } else { &open[..] };
            pool[rng.below(pool.len() as u64) as usize].clone()
        };
        if open.is_empty() || (roll < 10 && open.len() < 6) {
            let id = format!("sim{}", self.ids.len());
            self.steps.push(format!("create {id}"));
            let service = service();
            let created = self.store.create_session(new_session(&id), &service, None, self.now);
            created.await.map_err(|error| format!("create {id}: {error}"))?;
            self.ids.push(id);
        } else if roll < 55 {
            let id = pick(rng, &self.ids);
            let party = if rng.below(2) == 0 { Party::Customer } else { Party::Provider };
            let change = match rng.below(10) {
                0..5 => PresenceChange::Join,
                5..7 => PresenceChange::Leave,
                _ => PresenceChange::Heartbeat,
            };
            self.steps.push(format!("{change:?} {id} {party:?}"));
            let actor = match party {
                Party::Customer => Actor { role: Role::Customer, id: "c1".into() },
                Party::Provider => Actor { role: Role::Provider, id: "p1".into() },
            };
            let policies = self.settings.policies;
            let result =
                self.store.record_presence(&id, party, change, &actor, &policies, self.now).await;
            match (result, self.acknowledged.contains_key(&id)) {
                (Ok(_), false) | (Err(StoreError::Conflict(_)), true) => {}
                (Err(StoreError::Conflict(_)), false) => {
                    // Only a crash can have ended it unacknowledged: the
                    // invariant check below reconciles with the database.
                }
                (Ok(_), true) => return Err(format!("presence accepted on ended {id}")),
                (Err(error), _) => return Err(format!("presence on {id}: {error}")),
            }
        } else if roll < 75 {
            let longest = if rng.below(5) == 0 { 300 } else { 20 };
            let seconds = 1 + rng.below(longest) as i64;
            self.steps.push(format!("advance {seconds}s"));
            self.now = UnixMillis(self.now.0 + seconds * 1000);
        } else if roll < 80 {
            let id = pick(rng, &self.ids);
            let copies = 1 + rng.below(5) as usize;
            self.steps.push(format!("end {id} x{copies}"));
            self.ends(&[(id, copies)]).await?;
        } else if roll < 85 {
            // Many sessions ended at once, some more than once: ends the
            // store writes a group at a time.
            let mut targets: Vec<(String, usize)> = Vec::new();
            for _ in 0..2 + rng.below(10) {
                let id = pick(rng, &self.ids);
                if !targets.iter().any(|(known, _)| *known == id) {
                    targets.push((id, 1 + rng.below(3) as usize));
                }
            }
            self.steps.push(format!("end together {targets:?}"));
            self.ends(&targets).await?;
        } else if roll < 93 {
            self.steps.push("sweep".into());
            let report = self
                .store
                .sweep(&self.settings, self.now, 100)
                .await
                .map_err(|error| format!("sweep: {error}"))?;
            for session in report.ended {
                if self.acknowledged.contains_key(&session.id) {
                    return Err(format!("the sweeper ended {} a second time", session.id));
                }
                self.acknowledge(&session.id, session.status)?;
            }
        } else {
            let victims: Vec<String> =
                (0..1 + rng.below(4)).map(|_| pick(rng, &self.ids)).collect();
            let yields = rng.below(40);
            self.steps.push(format!("crash during ends of {victims:?} after {yields} yields"));
            self.crash(&victims, yields).await?;
        }
        self.check().await
    }

    /// `copies` ends of each `id`, all at once: at most one transition
    /// per session, all answers for one session the same outcome.
    async fn ends(&mut self, targets: &[(String, usize)]) -> Result<(), String> {
        let calls = targets.iter().flat_map(|(id, copies)| {
            (0..*copies).map(|_| {
                let (store, id, settings, now) =
                    (self.store.clone(), id.clone(), self.settings, self.now);
                tokio::spawn(async move {
                    let answer = store
                        .end_session(&id, &service(), None, EndCause::Requested, &settings, now)
                        .await;
                    (id, answer)
                })
            })
        });
        let answers: Vec<_> = join_all(calls).await.into_iter().map(Result::unwrap).collect();
        for (id, _) in targets {
            let ended_before = self.acknowledged.contains_key(id);
            let mut fresh = 0;
            for (_, answer) in answers.iter().filter(|(answered, _)| answered == id) {
                let ended = answer.as_ref().map_err(|error| format!("end {id}: {error}"))?;
                fresh += usize::from(!ended.already_ended);
                self.acknowledge(id, ended.session.status)?;
            }
            if fresh != usize::from(!ended_before) {
                return Err(format!("{fresh} transitions of {id} (ended before: {ended_before})"));
            }
        }
        Ok(())
    }

    /// Ends in flight are cut off after `yields` scheduler turns (their
    /// futures dropped, as a killed process drops its transactions), then
    /// the store is dropped and the database reopened. Whatever was
    /// answered before the cut must be there after it.
    async fn crash(&mut self, victims: &[String], yields: u64) -> Result<(), String> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let handles: Vec<_> = victims
            .iter()
            .map(|id| {
                let (store, id, settings, now) =
                    (self.store.clone(), id.clone(), self.settings, self.now);
                let tx = tx.clone();
                tokio::spawn(async move {
                    let service = service();
                    let answer =
                        store.end_session(&id, &service, None, EndCause::Requested, &settings, now);
                    if let Ok(ended) = answer.await {
                        let _ = tx.send((id, ended.session.status));
                    }
                })
            })
            .collect();
        for _ in 0..yields {
            tokio::task::yield_now().await;
        }
        for handle in &handles {
            handle.abort();
        }
        let _ = join_all(handles).await;
        drop(tx);
        while let Some((id, status)) = rx.recv().await {
            self.acknowledge(&id, status)?;
        }
        // What a killed process leaves: the commit in progress finishes or
        // not, and nothing of the old store runs afterwards.
        self.store.close().await;
        self.crashes += 1;
        self.store =
            verdict_store::open(&self.url).await.map_err(|error| format!("reopen: {error}"))?;
        Ok(())
    }

    /// Every invariant, against the database as it is now.
    async fn check(&mut self) -> Result<(), String> {
        let store = self.store.clone();
        let mut completed = 0;
        for id in &self.ids.clone() {
            let session = store.session(id).await.map_err(|error| error.to_string())?;
            let session = session.ok_or_else(|| format!("{id} disappeared"))?;
            match self.acknowledged.get(id) {
                Some(status) if *status != session.status => {
                    return Err(format!("{id} was acknowledged {status}, is {}", session.status));
                }
                // Ended by an end cut off by a crash after its commit:
                // durable, so from now on it is as good as acknowledged.
                None if session.status.is_terminal() => {
                    self.cut_after_commit += 1;
                    self.acknowledged.insert(id.clone(), session.status);
                }
                _ => {}
            }
            let events = store.events(id).await.map_err(|error| error.to_string())?;
            let ended = events.iter().filter(|event| event.event_type == EventType::Ended).count();
            if ended != usize::from(session.status.is_terminal()) {
                return Err(format!("{id} is {} with {ended} ended events", session.status));
            }
            let payouts = payouts_of(&store, id).await?;
            let is_completed = session.status == Status::Completed;
            completed += usize::from(is_completed);
            if payouts != usize::from(is_completed) {
                return Err(format!("{id} is {} with {payouts} payouts", session.status));
            }
        }
        let counts = store.table_counts().await.map_err(|error| error.to_string())?;
        if counts["payouts"] != completed as i64 || counts["ledger_postings"] != completed as i64 {
            return Err(format!(
                "{} payouts and {} postings for {completed} completed sessions",
                counts["payouts"], counts["ledger_postings"]
            ));
        }
        let report = monitor::verify(&store, &self.settings, self.now, |_| {})
            .await
            .map_err(|error| error.to_string())?;
        for section in report.sections.iter().filter(|section| NEVER.contains(&section.name)) {
            if section.count != 0 {
                let mut detail = String::new();
                for id in &section.sample {
                    let session = store.session(id).await.map_err(|error| error.to_string())?;
                    let events = store.events(id).await.map_err(|error| error.to_string())?;
                    detail += &format!("\n{session:#?}\n{events:#?}");
                }
                return Err(format!("verification: {} {:?}{detail}", section.name, section.sample));
            }
        }
        Ok(())
    }
}

/// How many payouts a session has, after checking that each of its
/// postings balances (through the store's own reads).
async fn payouts_of(store: &Arc<dyn Store>, id: &str) -> Result<usize, String> {
    let postings = store.postings(id).await.map_err(|error| error.to_string())?;
    for posting in &postings {
        let sum: i64 = posting.lines.iter().map(|line| line.amount.0).sum();
        if sum != 0 {
            return Err(format!("posting of {id} sums to {sum}"));
        }
    }
    let payouts = store.payouts(Some(id), None, 1000).await.map_err(|error| error.to_string())?;
    Ok(payouts.len())
}

fn new_session(id: &str) -> NewSession {
    NewSession {
        id: id.into(),
        kind: Kind::Video,
        customer_id: "c1".into(),
        provider_id: "p1".into(),
        provider_account: Some("acct_1".into()),
        scheduled_start: None,
        price: Price { mode: PriceMode::PerMinute, amount: Cents(150), currency: "usd".into() },
        request_id: None,
        metadata: None,
        room: None,
    }
}

fn service() -> Actor {
    Actor { role: Role::Service, id: "platform".into() }
}

/// Runs the seeds (or the one in `VERDICT_SIM_SEED`) on fresh worlds.
async fn simulate(make: impl AsyncFn() -> World) {
    let env = |name: &str, default: u64| {
        std::env::var(name).ok().and_then(|value| value.parse().ok()).unwrap_or(default)
    };
    let seeds: Vec<u64> = match std::env::var("VERDICT_SIM_SEED").ok().and_then(|s| s.parse().ok())
    {
        Some(seed) => vec![seed],
        None => (1..=env("VERDICT_SIM_SEEDS", 4)).collect(),
    };
    let steps = env("VERDICT_SIM_STEPS", 150);
    for seed in seeds {
        let mut world = make().await;
        let mut rng = Rng(seed);
        for n in 0..steps {
            if let Err(broken) = world.step(&mut rng).await {
                let tail = world.steps.iter().rev().take(40).rev().cloned().collect::<Vec<_>>();
                panic!(
                    "seed {seed}, step {n}: {broken}\nlast steps: {tail:#?}\n\
                     replay: VERDICT_SIM_SEED={seed} VERDICT_SIM_STEPS={steps} cargo test -p verdict-store --test simulation"
                );
            }
        }
        let completed = world.acknowledged.values().filter(|s| **s == Status::Completed).count();
        eprintln!(
            "seed {seed}: {steps} steps, {} sessions, {} ended ({completed} completed), \
             {} crashes ({} ends committed but cut off before their answer): all invariants held",
            world.ids.len(),
            world.acknowledged.len(),
            world.crashes,
            world.cut_after_commit,
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_seeded_schedule_keeps_every_invariant() {
    simulate(World::sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_seeded_schedule_keeps_every_invariant() {
    simulate(World::postgres).await;
}

/// The checker is not blind: a session whose acknowledged outcome is
/// rewritten behind the store's back, and money taken from the books, are
/// both caught.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_invariant_check_catches_a_corrupted_database() {
    let mut world = World::sqlite().await;
    let mut rng = Rng(7);
    for _ in 0..40 {
        world.step(&mut rng).await.unwrap();
    }
    // One session surely completed: both parties join, two minutes pass.
    let id = "sure".to_owned();
    let store = world.store.clone();
    store.create_session(new_session(&id), &service(), None, world.now).await.unwrap();
    let policies = world.settings.policies;
    for (party, role, sub) in
        [(Party::Customer, Role::Customer, "c1"), (Party::Provider, Role::Provider, "p1")]
    {
        let actor = Actor { role, id: sub.into() };
        let joined =
            store.record_presence(&id, party, PresenceChange::Join, &actor, &policies, world.now);
        joined.await.unwrap();
    }
    world.ids.push(id.clone());
    world.now = UnixMillis(world.now.0 + 120_000);
    world.ends(&[(id.clone(), 1)]).await.unwrap();
    assert_eq!(world.acknowledged[&id], Status::Completed);
    world.check().await.unwrap();
    let mut connection = sqlx::SqliteConnection::connect(&world.url).await.unwrap();
    sqlx::query("UPDATE sessions SET status = 'cancelled', reason = 'too_short' WHERE id = $1")
        .bind(&id)
        .execute(&mut connection)
        .await
        .unwrap();
    let broken = world.check().await.unwrap_err();
    assert!(broken.contains(&format!("{id} was acknowledged completed, is cancelled")), "{broken}");
    sqlx::query("UPDATE sessions SET status = 'completed', reason = 'completed' WHERE id = $1")
        .bind(&id)
        .execute(&mut connection)
        .await
        .unwrap();
    world.check().await.unwrap();
    // An unbalanced posting: a line with no counterpart.
    let posting: i64 = sqlx::query_scalar(
        "INSERT INTO ledger_postings (session_id, kind, currency, created_at) \
         VALUES ($1, 'reversal', 'usd', 0) RETURNING id",
    )
    .bind(&id)
    .fetch_one(&mut connection)
    .await
    .unwrap();
    sqlx::query("INSERT INTO ledger_lines (posting_id, account, amount_cents) VALUES ($1, 'x', 5)")
        .bind(posting)
        .execute(&mut connection)
        .await
        .unwrap();
    let broken = world.check().await.unwrap_err();
    assert!(broken.contains("sums to 5"), "{broken}");
}
