//! The NDJSON import of historical sessions (docs/import.md): one session a line,
//! validated line by line, stored in batched transactions. Shared by
//! `verdict import` and `POST /v1/admin/import`.

use std::collections::{BinaryHeap, HashSet};

use serde::Deserialize;
use verdict_core::{AMOUNT_CENTS_MAX, Cents, Party, Reason, Status, UnixMillis, is_valid_id};
use verdict_store::{
    BulkImport, ImportSession, Imported, PayoutState, QueuedBatch, Store, StoreError,
};

use crate::dto::{KindDto, PriceDto};
use crate::wire::parse_instant;

/// Lines stored per transaction: large, because a durable commit costs a
/// disk flush.
pub const BATCH: usize = 5_000;
/// The largest batch `verdict import --batch-lines` accepts.
pub const BATCH_MAX: usize = 100_000;
/// The longest line accepted, in bytes.
pub const LINE_BYTES_MAX: usize = 1 << 20;
/// Rejections listed in the summary (all are counted).
pub const REJECTIONS_LISTED_MAX: usize = 10_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    id: String,
    kind: KindDto,
    customer_id: String,
    provider_id: String,
    provider_account: Option<String>,
    price: PriceDto,
    status: String,
    reason: Option<String>,
    created_at: String,
    ended_at: Option<String>,
    /// The old system's own start: kept as recorded in `metadata` (verdict's
    /// `started_at` is derived from the presence events).
    started_at: Option<String>,
    #[serde(default)]
    events: Vec<LineEvent>,
    #[serde(default)]
    payouts: Vec<LinePayout>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LineEvent {
    #[serde(rename = "type")]
    event_type: String,
    party: String,
    at: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LinePayout {
    amount_cents: i64,
    currency: String,
    state: String,
}

/// The fields of a line; with `keep_unknown_fields`, any other is kept in
/// the session's `metadata`.
const LINE_FIELDS: [&str; 13] = [
    "id",
    "kind",
    "customer_id",
    "provider_id",
    "provider_account",
    "price",
    "status",
    "reason",
    "created_at",
    "ended_at",
    "started_at",
    "events",
    "payouts",
];

/// Parses and validates one line; with `keep_unknown_fields`, a field
/// that is not one of a line's is kept in `metadata` (beside `started_at`)
/// instead of rejecting the line.
pub fn parse_line_with(text: &str, keep_unknown_fields: bool) -> Result<ImportSession, String> {
    if !keep_unknown_fields {
        return parse_line(text);
    }
    let mut object = match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(object)) => object,
        Ok(_) => return Err("invalid type: expected a JSON object".into()),
        Err(_) => return Err(read_error(text)),
    };
    let unknown: Vec<String> =
        object.keys().filter(|key| !LINE_FIELDS.contains(&key.as_str())).cloned().collect();
    if unknown.is_empty() {
        return parse_line(text);
    }
    let mut kept = serde_json::Map::new();
    for key in unknown {
        if let Some(value) = object.remove(&key) {
            kept.insert(key, value);
        }
    }
    let known = serde_json::Value::Object(object).to_string();
    let mut session = parse_line(&known)?;
    let mut metadata = match session.metadata.take() {
        Some(serde_json::Value::Object(metadata)) => metadata,
        _ => serde_json::Map::new(),
    };
    metadata.extend(kept);
    session.metadata = Some(serde_json::Value::Object(metadata));
    Ok(session)
}

/// Parses and validates one line; the error names the field.
pub fn parse_line(text: &str) -> Result<ImportSession, String> {
    // Most lines are good: read them without tracking the path, and read a
    // bad one again to say where it went wrong.
    let line: Line = match serde_json::from_str(text) {
        Ok(line) => line,
        Err(_) => return Err(read_error(text)),
    };
    validate(line)
}

/// Why `text` is not a line, naming the field. (Reading it as one failed.)
fn read_error(text: &str) -> String {
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let line: Result<Line, String> =
        serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
            let path = error.path().to_string();
            let inner = error.into_inner();
            let message = inner.to_string();
            let message = message.split(" at line ").next().unwrap_or(&message).to_owned();
            if inner.is_syntax() || inner.is_eof() {
                format!("malformed JSON: {message}")
            } else if path == "." {
                message
            } else {
                format!("{path}: {message}")
            }
        });
    match line {
        Err(error) => error,
        Ok(_) => match deserializer.end() {
            Err(error) => format!("malformed JSON: {error}"),
            Ok(()) => "malformed JSON".to_owned(),
        },
    }
}

fn validate(line: Line) -> Result<ImportSession, String> {
    for (field, value) in
        [("id", &line.id), ("customer_id", &line.customer_id), ("provider_id", &line.provider_id)]
    {
        if !is_valid_id(value) {
            return Err(format!("{field}: must be 1 to 128 characters from [A-Za-z0-9_.:-]"));
        }
    }
    if let Some(account) = &line.provider_account
        && !is_valid_id(account)
    {
        return Err("provider_account: must be 1 to 128 characters from [A-Za-z0-9_.:-]".into());
    }
    let price = line.price.validate().map_err(|error| error.to_string())?;
    let status: Status = line.status.parse().map_err(|error| format!("status: {error}"))?;
    let reason = match &line.reason {
        Some(text) => Some(text.parse::<Reason>().map_err(|error| format!("reason: {error}"))?),
        None => None,
    };
    let instant = |field: &str, text: &str| {
        parse_instant(text).ok_or_else(|| format!("{field}: must be an RFC 3339 timestamp"))
    };
    let created_at = instant("created_at", &line.created_at)?;
    let ended_at = match &line.ended_at {
        Some(text) => Some(instant("ended_at", text)?),
        None => None,
    };
    match (status.is_terminal(), ended_at) {
        (true, None) => return Err(format!("ended_at: required for status {status}")),
        (false, Some(_)) => return Err(format!("ended_at: must be absent for status {status}")),
        (_, Some(ended)) if ended < created_at => return Err("ended_at: before created_at".into()),
        _ => {}
    }
    // Kept as the old system recorded it (checked, so a typo is caught).
    let metadata = match &line.started_at {
        Some(text) => {
            instant("started_at", text)?;
            Some(serde_json::json!({ "started_at": text }))
        }
        None => None,
    };
    let mut events = Vec::with_capacity(line.events.len());
    let mut previous: Option<UnixMillis> = None;
    for (index, event) in line.events.iter().enumerate() {
        let joined = match event.event_type.as_str() {
            "joined" => true,
            "left" => false,
            other => return Err(format!("events[{index}].type: {other:?} is not joined or left")),
        };
        let party: Party =
            event.party.parse().map_err(|error| format!("events[{index}].party: {error}"))?;
        let at = instant(&format!("events[{index}].at"), &event.at)?;
        if at < created_at {
            return Err(format!("events[{index}].at: before created_at"));
        }
        if ended_at.is_some_and(|ended| at > ended) {
            return Err(format!("events[{index}].at: after ended_at"));
        }
        if previous.is_some_and(|previous| at < previous) {
            return Err(format!("events[{index}]: out of order (before events[{}])", index - 1));
        }
        previous = Some(at);
        events.push((party, joined, at));
    }
    if line.payouts.len() > 1 {
        return Err("payouts: at most one payout per session".into());
    }
    let payout = match line.payouts.first() {
        None => None,
        Some(payout) => {
            if !(0..=AMOUNT_CENTS_MAX).contains(&payout.amount_cents) {
                return Err(format!(
                    "payouts[0].amount_cents: must be between 0 and {AMOUNT_CENTS_MAX}"
                ));
            }
            if !payout.currency.eq_ignore_ascii_case(&price.currency) {
                return Err("payouts[0].currency: differs from price.currency".into());
            }
            let state = PayoutState::parse(&payout.state)
                .ok_or_else(|| "payouts[0].state: must be pending, paid or failed".to_owned())?;
            Some((Cents(payout.amount_cents), state))
        }
    };
    Ok(ImportSession {
        id: line.id,
        kind: line.kind.into(),
        customer_id: line.customer_id,
        provider_id: line.provider_id,
        provider_account: line.provider_account,
        price,
        status,
        reason,
        created_at,
        ended_at,
        events,
        payout,
        metadata,
    })
}

/// What an import did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub imported: u64,
    /// Ids already stored: left untouched.
    pub skipped: u64,
    /// `(line number, error)` in line order: the first
    /// [`REJECTIONS_LISTED_MAX`] lines rejected.
    pub rejected: Vec<(u64, String)>,
    pub rejected_total: u64,
}

/// Feeds lines in, stores them in batches. Memory stays flat: only the
/// current batch's ids are kept, and the store recognises an id stored by
/// an earlier batch of the same run.
pub struct Importer<'a> {
    store: &'a dyn Store,
    now: UnixMillis,
    /// This run's id, stored with each session it imports.
    run: String,
    /// The batch, with each session's line number.
    batch: Vec<(u64, ImportSession)>,
    /// Lines stored per transaction (per store call, in a bulk load).
    batch_lines: usize,
    /// A bulk load's one transaction, when this is one.
    bulk: Option<Box<dyn BulkImport>>,
    /// A bulk load's batch being stored while the next one gathers: its
    /// line numbers and ids.
    queued: Option<(Vec<u64>, Vec<String>, QueuedBatch)>,
    batch_ids: HashSet<String>,
    /// The rejections with the lowest line numbers so far, at most
    /// [`REJECTIONS_LISTED_MAX`]: a repeated id is found only when its
    /// batch is stored, after the rejections of later lines.
    listed: BinaryHeap<(u64, String)>,
    summary: Summary,
    /// Keep fields a line does not know in `metadata` (else reject them).
    keep_unknown_fields: bool,
}

impl<'a> Importer<'a> {
    pub fn new(store: &'a dyn Store, now: UnixMillis) -> Importer<'a> {
        Importer::with_batch(store, now, BATCH)
    }

    /// Names this run `run` (stored with each session it imports) instead
    /// of a fresh id: the API keeps its imports under that id.
    pub fn for_run(mut self, run: String) -> Importer<'a> {
        self.run = run;
        self
    }

    /// Keeps the fields a line does not know in the session's `metadata`
    /// (`--keep-unknown-fields`) instead of rejecting the line.
    pub fn keeping_unknown_fields(mut self, keep: bool) -> Importer<'a> {
        self.keep_unknown_fields = keep;
        self
    }

    /// Stores `lines` lines per transaction (1 to [`BATCH_MAX`]). Larger
    /// batches import faster, on SQLite most of all (fewer writes of the
    /// same index pages), but hold the write lock longer and keep more
    /// lines in memory.
    pub fn with_batch(store: &'a dyn Store, now: UnixMillis, lines: usize) -> Importer<'a> {
        let lines = lines.clamp(1, BATCH_MAX);
        Importer {
            store,
            now,
            run: uuid::Uuid::now_v7().to_string(),
            batch: Vec::with_capacity(lines.min(BATCH)),
            batch_lines: lines,
            bulk: None,
            queued: None,
            batch_ids: HashSet::with_capacity(lines.min(BATCH)),
            listed: BinaryHeap::new(),
            summary: Summary::default(),
            keep_unknown_fields: false,
        }
    }

    /// A bulk load (see `Store::bulk_import`): every batch in one
    /// transaction, committed by [`Importer::finish`]; the write lock is
    /// held until then.
    pub async fn bulk(
        store: &'a dyn Store,
        now: UnixMillis,
        lines: usize,
    ) -> Result<Importer<'a>, StoreError> {
        let mut importer = Importer::with_batch(store, now, lines);
        importer.bulk = Some(store.bulk_import().await?);
        Ok(importer)
    }

    fn reject(&mut self, line: u64, error: String) {
        self.summary.rejected_total += 1;
        if self.listed.len() < REJECTIONS_LISTED_MAX {
            self.listed.push((line, error));
        } else if let Some(mut highest) = self.listed.peek_mut()
            && line < highest.0
        {
            *highest = (line, error);
        }
    }

    /// One line (1-based `number`); blank lines are ignored.
    pub async fn line(&mut self, number: u64, text: &str) -> Result<(), StoreError> {
        match parse(text, self.keep_unknown_fields) {
            None => Ok(()),
            Some(parsed) => self.parsed(number, parsed).await,
        }
    }

    /// One line already parsed by [`parse`] (elsewhere, e.g. on a thread
    /// of its own).
    pub async fn parsed(
        &mut self,
        number: u64,
        parsed: Result<ImportSession, String>,
    ) -> Result<(), StoreError> {
        match parsed {
            Err(error) => self.reject(number, error),
            Ok(session) => {
                if !self.batch_ids.insert(session.id.clone()) {
                    self.reject(number, duplicate(&session.id));
                } else {
                    self.batch.push((number, session));
                    if self.batch.len() >= self.batch_lines {
                        self.flush().await?;
                    }
                }
            }
        }
        Ok(())
    }

    /// A line that could not be read at all (not UTF-8, too long).
    pub fn unreadable(&mut self, number: u64, why: &str) {
        self.reject(number, why.to_owned());
    }

    async fn flush(&mut self) -> Result<(), StoreError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let (numbers, sessions): (Vec<u64>, Vec<ImportSession>) = self.batch.drain(..).unzip();
        self.batch_ids.clear();
        let ids: Vec<String> = sessions.iter().map(|session| session.id.clone()).collect();
        match &mut self.bulk {
            Some(bulk) => {
                // Stored while the next batch gathers; the one before is
                // stored by now, or next.
                let queued = bulk.add(sessions, &self.run, self.now).await?;
                if let Some((numbers, ids, queued)) = self.queued.replace((numbers, ids, queued)) {
                    self.count(&numbers, &ids, queued.outcomes().await?);
                }
            }
            None => {
                let outcomes = self.store.import_sessions(sessions, &self.run, self.now).await?;
                self.count(&numbers, &ids, outcomes);
            }
        }
        Ok(())
    }

    fn count(&mut self, numbers: &[u64], ids: &[String], outcomes: Vec<Imported>) {
        for ((number, id), outcome) in numbers.iter().zip(ids).zip(outcomes) {
            match outcome {
                Imported::New => self.summary.imported += 1,
                Imported::Existing => self.summary.skipped += 1,
                Imported::EarlierInRun => self.reject(*number, duplicate(id)),
            }
        }
    }

    pub async fn finish(mut self) -> Result<Summary, StoreError> {
        self.flush().await?;
        if let Some((numbers, ids, queued)) = self.queued.take() {
            self.count(&numbers, &ids, queued.outcomes().await?);
        }
        if let Some(bulk) = self.bulk.take() {
            bulk.commit().await?;
        }
        self.summary.rejected = self.listed.into_sorted_vec();
        Ok(self.summary)
    }
}

fn duplicate(id: &str) -> String {
    format!("id: {id} appears earlier in this file")
}

/// Parses one line, keeping unknown fields in `metadata` when asked:
/// `None` for a blank one.
pub fn parse(text: &str, keep_unknown_fields: bool) -> Option<Result<ImportSession, String>> {
    let text = text.trim();
    (!text.is_empty()).then(|| parse_line_with(text, keep_unknown_fields))
}
