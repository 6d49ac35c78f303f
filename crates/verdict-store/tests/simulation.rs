//! Deterministic simulation of the decision core and the store, on both
//! databases: a seeded schedule of creates, joins, leaves, heartbeats,
//! clock advances, single, duplicate and concurrent ends, sweeps, crashes
//! (writes cut off mid-flight, the store dropped and the database
//! reopened), and repairs racing payout delivery (a worker's steps against
//! an in-memory Stripe: transfers made, answered late, held in flight,
//! reversed), with every invariant checked after every step.
//!
//! The schedule is a pure function of the seed; a failure prints the seed
//! and the steps so far, and `VERDICT_SIM_SEED=<seed>` replays that seed
//! alone (thread interleavings inside a concurrent step are the only part
//! not replayed). `VERDICT_SIM_SEEDS` and `VERDICT_SIM_STEPS` run more.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use futures::future::join_all;
use sqlx::Connection;
use verdict_core::{Cents, EndCause, Kind, Party, Price, PriceMode, Role, Status, UnixMillis};
use verdict_store::{
    Actor, EventType, NewSession, OutboxOutcome, PayoutProvider, PayoutState, PresenceChange,
    Settings, Store, StoreError, monitor,
};

const T0: UnixMillis = UnixMillis(1_800_000_000_000);
/// Sections of the verification report that no schedule may ever produce
/// (stuck sessions and missing joins can be legitimate between sweeps).
/// (`misclassified_completed` is allowed for the sessions a step made
/// wrong on purpose and no repair corrected yet;
/// `payouts_paid_after_reversal` only once deliveries are over.)
const NEVER: [&str; 5] = [
    "misclassified_completed",
    "misclassified_cancelled",
    "timestamp_integrity",
    "payout_accuracy",
    "ledger_balance",
];

/// Stripe as the simulation sees it: one transfer a payout at most (the
/// idempotency key and the look-up before a new key), reversals of them.
#[derive(Default)]
struct Stripe {
    /// Payout id → transfer id.
    transfers: BTreeMap<String, String>,
    /// Transfer id → reversal id.
    reversals: BTreeMap<String, String>,
}

impl Stripe {
    fn transfer(&mut self, payout_id: &str) -> String {
        let next = format!("tr_{}", self.transfers.len() + 1);
        self.transfers.entry(payout_id.to_owned()).or_insert(next).clone()
    }

    fn reverse(&mut self, transfer_id: &str) -> String {
        let next = format!("trr_{}", self.reversals.len() + 1);
        self.reversals.entry(transfer_id.to_owned()).or_insert(next).clone()
    }
}

/// A delivery whose answer is held back: the transfer is made, its
/// outcome recorded only at a later step.
struct InFlight {
    outbox_id: i64,
    owner: String,
    outcome: OutboxOutcome,
}

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
    stripe: Stripe,
    in_flight: Vec<InFlight>,
    /// Completed sessions whose stored decision a step made wrong, not
    /// repaired yet.
    misdecided: BTreeSet<String>,
    claims: u64,
    repaired: u64,
    reversed_at_stripe: u64,
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
            settings: Settings { payout_provider: PayoutProvider::Stripe, ..Settings::default() },
            now: T0,
            ids: Vec::new(),
            acknowledged: BTreeMap::new(),
            steps: Vec::new(),
            crashes: 0,
            cut_after_commit: 0,
            stripe: Stripe::default(),
            in_flight: Vec::new(),
            misdecided: BTreeSet::new(),
            claims: 0,
            repaired: 0,
            reversed_at_stripe: 0,
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
        if rng.below(100) < 20 {
            self.money_step(rng).await?;
            return self.check(false).await;
        }
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
        self.check(false).await
    }

    /// Payout delivery, and repairs racing it.
    async fn money_step(&mut self, rng: &mut Rng) -> Result<(), String> {
        let roll = rng.below(100);
        if roll < 35 {
            self.steps.push("deliver".into());
            self.deliver(rng, true).await
        } else if roll < 47 {
            if self.in_flight.is_empty() {
                return Ok(());
            }
            let held = self.in_flight.remove(rng.below(self.in_flight.len() as u64) as usize);
            self.steps.push(format!("answer held delivery {}", held.outbox_id));
            self.finish(held).await
        } else if roll < 62 {
            // A session both parties attend: money to move.
            let id = format!("sim{}", self.ids.len());
            self.steps.push(format!("meet {id}"));
            self.meet(&id).await
        } else if roll < 70 {
            // A stored decision made wrong (a bug in the policy it was
            // decided with): re-derived, the session is too short.
            let candidates: Vec<String> = self
                .acknowledged
                .iter()
                .filter(|(id, status)| {
                    **status == Status::Completed && !self.misdecided.contains(*id)
                })
                .map(|(id, _)| id.clone())
                .collect();
            if candidates.len() < 2 {
                return Ok(());
            }
            let id = candidates[rng.below(candidates.len() as u64) as usize].clone();
            self.steps.push(format!("misdecide {id}"));
            self.misdecide(&id).await?;
            self.misdecided.insert(id);
            Ok(())
        } else if roll < 85 {
            self.steps.push("repair".into());
            let store = self.store.clone();
            let corrections =
                monitor::repair(&store, &self.settings, self.now, T0, UnixMillis(i64::MAX), true)
                    .await
                    .map_err(|error| format!("repair: {error}"))?;
            self.corrected(corrections)
        } else {
            // A repair and a delivery batch at once.
            self.steps.push("repair racing a delivery".into());
            let store = self.store.clone();
            let (settings, now) = (self.settings, self.now);
            let repair = tokio::spawn(async move {
                monitor::repair(&store, &settings, now, T0, UnixMillis(i64::MAX), true).await
            });
            let delivered = self.deliver(rng, true).await;
            let corrections = repair.await.unwrap().map_err(|error| format!("repair: {error}"))?;
            delivered?;
            self.corrected(corrections)
        }
    }

    /// Creates `id`, both parties join, 90 s pass, and it is ended.
    async fn meet(&mut self, id: &str) -> Result<(), String> {
        let store = self.store.clone();
        let service = service();
        let created = store.create_session(new_session(id), &service, None, self.now);
        created.await.map_err(|error| format!("create {id}: {error}"))?;
        self.ids.push(id.to_owned());
        let policies = self.settings.policies;
        for (party, role, sub) in
            [(Party::Customer, Role::Customer, "c1"), (Party::Provider, Role::Provider, "p1")]
        {
            let actor = Actor { role, id: sub.into() };
            let joined =
                store.record_presence(id, party, PresenceChange::Join, &actor, &policies, self.now);
            joined.await.map_err(|error| format!("join {id}: {error}"))?;
        }
        self.now = self.now.plus_seconds(90);
        self.ends(&[(id.to_owned(), 1)]).await
    }

    fn corrected(&mut self, corrections: Vec<verdict_store::Correction>) -> Result<(), String> {
        for correction in corrections {
            let id = &correction.session_id;
            if !self.misdecided.remove(id) {
                return Err(format!("repair corrected {id}, which nothing made wrong"));
            }
            self.repaired += 1;
            self.acknowledged.insert(id.clone(), correction.to.0);
        }
        Ok(())
    }

    async fn misdecide(&self, id: &str) -> Result<(), String> {
        const STATEMENT: &str = "UPDATE sessions SET policy = REPLACE(policy, \
            '\"min_billable_seconds\":60', '\"min_billable_seconds\":100000') WHERE id = $1";
        let result = if self.url.starts_with("sqlite:") {
            let mut connection = sqlx::SqliteConnection::connect(&self.url).await;
            match connection.as_mut() {
                Ok(connection) => {
                    sqlx::query(STATEMENT).bind(id).execute(connection).await.map(drop)
                }
                Err(_) => connection.map(drop),
            }
        } else {
            let mut connection = sqlx::PgConnection::connect(&self.url).await;
            match connection.as_mut() {
                Ok(connection) => {
                    sqlx::query(STATEMENT).bind(id).execute(connection).await.map(drop)
                }
                Err(_) => connection.map(drop),
            }
        };
        result.map_err(|error| format!("misdecide {id}: {error}"))
    }

    /// One worker step: claims due rows and delivers them as the worker
    /// does (`verdict-worker`'s `stripe.rs`), against `self.stripe`; with
    /// `faults`, some transfers are answered late (lost) or held in flight.
    async fn deliver(&mut self, rng: &mut Rng, faults: bool) -> Result<(), String> {
        self.claims += 1;
        let owner = format!("sim-{}", self.claims);
        let store = self.store.clone();
        let items = store
            .claim_outbox(&owner, 16, self.now.plus_seconds(600), self.now)
            .await
            .map_err(|error| format!("claim: {error}"))?;
        for item in items {
            let payout_id = item.payload["payout_id"].as_str().unwrap_or_default().to_owned();
            let outcome = match item.topic.as_str() {
                "payout" => {
                    let payout = store.payout(&payout_id).await.map_err(|e| e.to_string())?;
                    let payout = payout.ok_or_else(|| format!("no payout {payout_id}"))?;
                    if payout.reversed_at.is_some() {
                        // Never paid now; a transfer an earlier attempt made
                        // is looked up and recorded.
                        match (payout.state, &payout.transfer_id) {
                            (PayoutState::Pending, None) => {
                                match self.stripe.transfers.get(&payout_id) {
                                    Some(transfer_id) => OutboxOutcome::PayoutPaid {
                                        payout_id,
                                        transfer_id: transfer_id.clone(),
                                    },
                                    None => OutboxOutcome::Delivered,
                                }
                            }
                            _ => OutboxOutcome::Delivered,
                        }
                    } else if payout.state != PayoutState::Pending {
                        OutboxOutcome::Delivered
                    } else {
                        let fault = if faults { rng.below(10) } else { 0 };
                        let retry = OutboxOutcome::Retry {
                            due_at: self.now.plus_seconds(10),
                            error: "simulated".into(),
                            payload: None,
                        };
                        match fault {
                            0..6 => {
                                let transfer_id = self.stripe.transfer(&payout_id);
                                OutboxOutcome::PayoutPaid { payout_id, transfer_id }
                            }
                            6..8 => {
                                // Made, but the answer came after the timeout.
                                self.stripe.transfer(&payout_id);
                                retry
                            }
                            8 => retry,
                            _ => {
                                let transfer_id = self.stripe.transfer(&payout_id);
                                let outcome = OutboxOutcome::PayoutPaid { payout_id, transfer_id };
                                let owner = owner.clone();
                                self.in_flight.push(InFlight {
                                    outbox_id: item.id,
                                    owner,
                                    outcome,
                                });
                                continue;
                            }
                        }
                    }
                }
                "payout.reversal" => {
                    let payout = store.payout(&payout_id).await.map_err(|e| e.to_string())?;
                    let payout = payout.ok_or_else(|| format!("no payout {payout_id}"))?;
                    if payout.reversal_id.is_some() {
                        OutboxOutcome::Delivered
                    } else {
                        let (transfer_id, found) = match &payout.transfer_id {
                            Some(transfer_id) => (Some(transfer_id.clone()), None),
                            None => {
                                let found = self.stripe.transfers.get(&payout_id).cloned();
                                (found.clone(), found)
                            }
                        };
                        let reversal_id = transfer_id.map(|transfer_id| {
                            self.reversed_at_stripe += 1;
                            self.stripe.reverse(&transfer_id)
                        });
                        OutboxOutcome::PayoutReversed { payout_id, transfer_id: found, reversal_id }
                    }
                }
                _ => OutboxOutcome::Delivered,
            };
            store
                .finish_outbox(item.id, &owner, outcome, self.now)
                .await
                .map_err(|error| format!("finish: {error}"))?;
        }
        Ok(())
    }

    /// Records a held delivery's outcome (a lost lease refuses it: the
    /// transfer stays at Stripe, found by the next attempt).
    async fn finish(&mut self, held: InFlight) -> Result<(), String> {
        self.store
            .finish_outbox(held.outbox_id, &held.owner, held.outcome, self.now)
            .await
            .map(drop)
            .map_err(|error| format!("finish held: {error}"))
    }

    /// Answers every held delivery and delivers until nothing is due.
    async fn quiesce(&mut self, rng: &mut Rng) -> Result<(), String> {
        for held in std::mem::take(&mut self.in_flight) {
            self.finish(held).await?;
        }
        for _ in 0..50 {
            self.now = self.now.plus_seconds(700);
            self.deliver(rng, false).await?;
            let pending = self.store.outbox(Some("pending"), None, 1).await;
            if pending.map_err(|error| error.to_string())?.is_empty() {
                return Ok(());
            }
        }
        Err("the outbox did not drain".into())
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

    /// Every invariant, against the database as it is now; `quiescent`:
    /// no delivery is under way or due, so Stripe must agree with the
    /// books.
    async fn check(&mut self, quiescent: bool) -> Result<(), String> {
        let store = self.store.clone();
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
            let is_completed = session.status == Status::Completed;
            let payouts = payouts_of(&store, id, is_completed).await?;
            for payout in &payouts {
                let at_stripe = self.stripe.transfers.get(&payout.id);
                if payout.transfer_id.is_some() && payout.transfer_id.as_ref() != at_stripe {
                    return Err(format!("{id}: {payout:?} is not Stripe's {at_stripe:?}"));
                }
                if !quiescent {
                    continue;
                }
                let reversed_at_stripe =
                    at_stripe.is_some_and(|transfer| self.stripe.reversals.contains_key(transfer));
                match (payout.reversed_at.is_some(), at_stripe.is_some()) {
                    (true, true) if !reversed_at_stripe || payout.reversal_id.is_none() => {
                        return Err(format!("{id}: reversed, yet Stripe keeps {at_stripe:?}"));
                    }
                    (false, transferred) if transferred != (payout.state == PayoutState::Paid) => {
                        return Err(format!("{id}: {payout:?} against Stripe's {at_stripe:?}"));
                    }
                    _ => {}
                }
            }
            if !is_completed && payouts.iter().any(|payout| payout.reversed_at.is_none()) {
                return Err(format!("{id} is {} with a payout not reversed", session.status));
            }
        }
        let unknown = self
            .stripe
            .transfers
            .keys()
            .filter(|payout_id| !self.ids.iter().any(|id| **payout_id == format!("po_{id}")));
        if let Some(payout_id) = unknown.into_iter().next() {
            return Err(format!("a transfer for {payout_id}, no such payout"));
        }
        let report = monitor::verify(&store, &self.settings, self.now, |_| {})
            .await
            .map_err(|error| error.to_string())?;
        for section in &report.sections {
            let planted = section.name == "misclassified_completed"
                && section.count <= self.misdecided.len() as i64
                && section.sample.iter().all(|id| self.misdecided.contains(id));
            let checked = NEVER.contains(&section.name)
                || (quiescent && section.name == monitor::PAID_AFTER_REVERSAL);
            if checked && section.count != 0 && !planted {
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

/// A session's payouts, after checking (through the store's own reads)
/// that each of its postings balances, that a completed session has one
/// settlement and one payout not reversed, and that the books of any
/// other session net to zero.
async fn payouts_of(
    store: &Arc<dyn Store>,
    id: &str,
    completed: bool,
) -> Result<Vec<verdict_store::Payout>, String> {
    let postings = store.postings(id).await.map_err(|error| error.to_string())?;
    let mut net: BTreeMap<&str, i64> = BTreeMap::new();
    for posting in &postings {
        let sum: i64 = posting.lines.iter().map(|line| line.amount.0).sum();
        if sum != 0 {
            return Err(format!("posting of {id} sums to {sum}"));
        }
        for line in &posting.lines {
            *net.entry(line.account.as_str()).or_default() += line.amount.0;
        }
    }
    let settlements = postings.iter().filter(|posting| posting.kind == "settlement").count();
    let payouts = store.payouts(Some(id), None, 1000).await.map_err(|error| error.to_string())?;
    let standing = payouts.iter().filter(|payout| payout.reversed_at.is_none()).count();
    if completed && (settlements != 1 || standing != 1) {
        return Err(format!(
            "{id} is completed with {settlements} settlements, {standing} payouts"
        ));
    }
    if !completed && net.values().any(|total| *total != 0) {
        return Err(format!("the books of {id}, not completed, do not net to zero: {net:?}"));
    }
    if payouts.len() > 1 {
        return Err(format!("{id} has {} payouts", payouts.len()));
    }
    Ok(payouts)
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
        for n in 0..=steps {
            // The last step: every delivery answered and drained, and
            // Stripe checked against the books.
            let stepped = if n == steps {
                world.steps.push("quiesce".into());
                match world.quiesce(&mut rng).await {
                    Ok(()) => world.check(true).await,
                    Err(broken) => Err(broken),
                }
            } else {
                world.step(&mut rng).await
            };
            if let Err(broken) = stepped {
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
             {} crashes ({} ends committed but cut off before their answer), {} transfers, \
             {} repaired, {} reversed at Stripe: all invariants held",
            world.ids.len(),
            world.acknowledged.len(),
            world.crashes,
            world.cut_after_commit,
            world.stripe.transfers.len(),
            world.repaired,
            world.reversed_at_stripe,
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
    world.check(false).await.unwrap();
    let mut connection = sqlx::SqliteConnection::connect(&world.url).await.unwrap();
    sqlx::query("UPDATE sessions SET status = 'cancelled', reason = 'too_short' WHERE id = $1")
        .bind(&id)
        .execute(&mut connection)
        .await
        .unwrap();
    let broken = world.check(false).await.unwrap_err();
    assert!(broken.contains(&format!("{id} was acknowledged completed, is cancelled")), "{broken}");
    sqlx::query("UPDATE sessions SET status = 'completed', reason = 'completed' WHERE id = $1")
        .bind(&id)
        .execute(&mut connection)
        .await
        .unwrap();
    world.check(false).await.unwrap();
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
    let broken = world.check(false).await.unwrap_err();
    assert!(broken.contains("sums to 5"), "{broken}");
}
