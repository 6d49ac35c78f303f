//! Ends, a group at a time: the group's sessions locked in one statement
//! in id order, their presence and users read in one statement a table,
//! each end planned in memory by the core (`verdict_core::plan_end`), and
//! each table written by one statement for the whole group.
//!
//! Locking in id order is what lets several processes end the same
//! sessions in any order without deadlocking each other on PostgreSQL.

use std::collections::HashMap;

use serde_json::{Value, json};
use sqlx::Row;
use verdict_core::{
    EndPlan, EndRequest, Message, MoneyPlan, Notice, Party, PostingKind, PresenceEvent,
    PresenceKind, SettleFacts, SettleRules, Status, UnixMillis, plan_end,
};

use super::dialect::{COMBINES_WRITES, Db, DbConnection};
use super::outbox::message_statement;
use super::rows::{outcome_json, parse_optional, policy_json, session_from_row};
use super::setwise::{Rows, ints, texts};
use crate::{Actor, Ended, PayoutProvider, Session, Settings, StoreError};

/// One end to write.
#[derive(Clone, Debug)]
pub(crate) struct EndWrite {
    pub id: String,
    pub actor: Actor,
    pub claimed: Option<Value>,
    pub end: EndRequest,
    pub settings: Settings,
    pub now: UnixMillis,
}

/// What a group reads of its sessions' users.
#[derive(Default)]
pub(crate) struct Users {
    emails: HashMap<String, String>,
    stripe_accounts: HashMap<String, String>,
}

impl Users {
    /// A user's known e-mail address and Stripe account.
    pub(crate) fn insert(&mut self, id: String, email: Option<String>, account: Option<String>) {
        if let Some(email) = email {
            self.emails.insert(id.clone(), email);
        }
        if let Some(account) = account {
            self.stripe_accounts.insert(id, account);
        }
    }
}

/// A join or leave as the decision reads it, from its stored columns.
pub(crate) fn presence_event(
    session_id: &str,
    event_type: &str,
    party: Option<&str>,
    at: i64,
    connection: Option<&str>,
) -> Result<PresenceEvent, StoreError> {
    let kind = if event_type == "joined" { PresenceKind::Joined } else { PresenceKind::Left };
    let party = parse_optional(party)?.ok_or_else(|| {
        StoreError::Corrupt(format!("presence event of {session_id} without a party"))
    })?;
    let connection = verdict_core::Connection::named(connection);
    Ok(PresenceEvent { party, kind, at: UnixMillis(at), connection })
}

/// The settlement rules of `settings`.
pub(super) fn rules(settings: &Settings) -> SettleRules {
    SettleRules {
        payouts_automatic: settings.payout_provider != PayoutProvider::Manual,
        finalize_after_seconds: settings.finalize_after_seconds,
    }
}

/// What the core needs of a session and its users to settle it.
pub(super) fn settle_facts(session: &Session, users: &Users) -> SettleFacts {
    SettleFacts {
        session_id: session.id.clone(),
        customer_id: session.customer_id.clone(),
        provider_id: session.provider_id.clone(),
        price: session.price.clone(),
        provider_account: session.provider_account.clone(),
        provider_stripe_account: users.stripe_accounts.get(&session.provider_id).cloned(),
        customer_email: users.emails.get(&session.customer_id).cloned(),
        provider_email: users.emails.get(&session.provider_id).cloned(),
        request_id: session.request_id.clone(),
        has_room: session.room.is_some(),
    }
}

/// Ends `writes` inside the caller's transaction and answers each, in
/// order: an end of a session already terminal (or ended earlier in the
/// same group) answers its outcome with `already_ended`, an unknown session
/// is not found. `Err` when a statement failed: the caller rolls the group
/// back and tries its writes one at a time.
pub(super) async fn end_group(
    tx: &mut DbConnection,
    writes: &[EndWrite],
) -> Result<Vec<Result<Ended, StoreError>>, StoreError> {
    let ids: Vec<String> = writes.iter().map(|write| write.id.clone()).collect();
    // The sessions are locked first, and their presence read by a later
    // statement: on PostgreSQL (read committed) a statement that waited
    // for a lock still reads other tables as they were when it began, so
    // a join or leave committed by the lock's holder would be missed.
    let sessions = lock_sessions(&mut *tx, &ids).await?;
    let (open, parties) = open_of(&sessions);
    let (presence, users) = if open.is_empty() {
        (HashMap::new(), Users::default())
    } else {
        (presence_of(&mut *tx, &open).await?, users_of(&mut *tx, &parties).await?)
    };
    let (answers, planned) = plan_group(writes, sessions, presence, &users);
    execute_all(&mut *tx, end_statements(&planned)?).await?;
    Ok(answers)
}

/// The open sessions among `sessions`, and their parties: whose presence
/// and users a group reads.
pub(crate) fn open_of(sessions: &HashMap<String, Session>) -> (Vec<String>, Vec<String>) {
    let open: Vec<&Session> =
        sessions.values().filter(|session| !session.status.is_terminal()).collect();
    let parties = open
        .iter()
        .flat_map(|session| [session.customer_id.clone(), session.provider_id.clone()])
        .collect();
    (open.iter().map(|session| session.id.clone()).collect(), parties)
}

/// A group's ends planned (pure): the answer to each write, in order, and
/// the ends to write, each session as ended with its plan.
pub(crate) type Planned<'w> = Vec<(Session, EndPlan, &'w EndWrite)>;

pub(crate) fn plan_group<'w>(
    writes: &'w [EndWrite],
    mut sessions: HashMap<String, Session>,
    mut presence: HashMap<String, Vec<PresenceEvent>>,
    users: &Users,
) -> (Vec<Result<Ended, StoreError>>, Planned<'w>) {
    let mut answers = Vec::with_capacity(writes.len());
    let mut planned: Planned<'w> = Vec::new();
    for write in writes {
        let Some(session) = sessions.get_mut(&write.id) else {
            answers.push(Err(StoreError::not_found("session", &write.id)));
            continue;
        };
        let policy = *write.settings.policies.for_kind(session.kind);
        let mut events = presence.remove(&session.id).unwrap_or_default();
        events.extend(session.last_heartbeats());
        let facts = settle_facts(session, users);
        let rules = rules(&write.settings);
        let Some(plan) =
            plan_end(&facts, &session.facts(), &events, &policy, &rules, write.end, write.now)
        else {
            answers.push(Ok(Ended { session: session.clone(), already_ended: true }));
            continue;
        };
        let ended = Session {
            status: plan.outcome.status,
            started_at: plan.outcome.started_at,
            outcome: Some(plan.outcome),
            ended_by: Some(write.actor.role),
            charged_cents: Some(plan.charged),
            finalizes_at: plan.finalizes_at,
            ..session.clone()
        };
        *session = ended.clone();
        answers.push(Ok(Ended { session: ended.clone(), already_ended: false }));
        planned.push((ended, plan, write));
    }
    (answers, planned)
}

/// The sessions of `ids` that exist, locked in id order (one statement).
pub(super) async fn lock_sessions(
    tx: &mut DbConnection,
    ids: &[String],
) -> Result<HashMap<String, Session>, StoreError> {
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    let rows = Rows::default().text("id", texts(ids));
    let mut query = rows.statement(concat!(
        "SELECT ",
        session_columns!(),
        " FROM sessions WHERE id IN (SELECT id FROM u) ORDER BY id",
        for_update!()
    ));
    let rows = query.build().fetch_all(&mut *tx).await?;
    rows.iter()
        .map(|row| session_from_row(row).map(|session| (session.id.clone(), session)))
        .collect()
}

/// The joins and leaves of `ids`, by session, in recording order.
async fn presence_of(
    tx: &mut DbConnection,
    ids: &[String],
) -> Result<HashMap<String, Vec<PresenceEvent>>, StoreError> {
    let rows = Rows::default().text("id", texts(ids.iter().cloned()));
    let mut query = rows.statement(
        "SELECT session_id, type, party, at, connection FROM session_events \
         WHERE session_id IN (SELECT id FROM u) AND type IN ('joined', 'left') \
         ORDER BY session_id, seq",
    );
    let rows = query.build().fetch_all(&mut *tx).await?;
    let mut presence: HashMap<String, Vec<PresenceEvent>> = HashMap::new();
    for row in &rows {
        let session_id: String = row.try_get("session_id")?;
        let event = presence_event(
            &session_id,
            row.try_get("type")?,
            row.try_get("party")?,
            row.try_get("at")?,
            row.try_get("connection")?,
        )?;
        presence.entry(session_id).or_default().push(event);
    }
    Ok(presence)
}

/// The e-mail addresses and Stripe accounts of `ids` that are known.
pub(super) async fn users_of(tx: &mut DbConnection, ids: &[String]) -> Result<Users, StoreError> {
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    let rows = Rows::default().text("id", texts(ids));
    let mut query = rows.statement(
        "SELECT id, email, stripe_account FROM users WHERE id IN (SELECT id FROM u) \
         AND (email IS NOT NULL OR stripe_account IS NOT NULL)",
    );
    let mut users = Users::default();
    for row in query.build().fetch_all(&mut *tx).await? {
        users.insert(row.try_get("id")?, row.try_get("email")?, row.try_get("stripe_account")?);
    }
    Ok(users)
}

/// One set-wise statement of a group: its rows, its text (reading the
/// rows as `u`), and how many rows it must change, when that is known.
pub(crate) struct SetStatement {
    pub(crate) rows: Rows,
    pub(crate) body: &'static str,
    pub(crate) changes: Option<u64>,
    /// Reads what an earlier statement of the group wrote (a join, or a
    /// trigger's query): it cannot share one statement with it.
    pub(crate) reads_earlier: bool,
}

impl SetStatement {
    fn new(rows: Rows, body: &'static str) -> SetStatement {
        SetStatement { rows, body, changes: None, reads_earlier: false }
    }

    pub(super) async fn execute(self, tx: &mut DbConnection) -> Result<(), StoreError> {
        let changed = self.rows.statement(self.body).build().execute(&mut *tx).await?;
        check_changes(self.changes, changed.rows_affected())
    }
}

/// Runs `statements` in order. Where the backend allows data-modifying
/// common tables (`dialect::COMBINES_WRITES`: PostgreSQL), statements are
/// joined into as few as possible, one round trip each: a statement that
/// reads an earlier one's writes starts the next.
pub(super) async fn execute_all(
    tx: &mut DbConnection,
    statements: Vec<SetStatement>,
) -> Result<(), StoreError> {
    if !COMBINES_WRITES {
        for statement in statements {
            statement.execute(&mut *tx).await?;
        }
        return Ok(());
    }
    let mut batch: Vec<SetStatement> = Vec::new();
    for statement in statements {
        if statement.reads_earlier && !batch.is_empty() {
            execute_combined(&mut *tx, std::mem::take(&mut batch)).await?;
        }
        batch.push(statement);
    }
    if !batch.is_empty() {
        execute_combined(&mut *tx, batch).await?;
    }
    Ok(())
}

/// `WITH w0 AS (<statement 0> RETURNING 1), … SELECT (SELECT COUNT(*) FROM
/// w0), …`: every statement at once, with the rows each changed.
async fn execute_combined(
    tx: &mut DbConnection,
    batch: Vec<SetStatement>,
) -> Result<(), StoreError> {
    if batch.len() == 1 {
        let mut batch = batch;
        return batch.remove(0).execute(tx).await;
    }
    let mut query = sqlx::QueryBuilder::<Db>::new("WITH ");
    let mut expected = Vec::with_capacity(batch.len());
    for (n, statement) in batch.into_iter().enumerate() {
        if n > 0 {
            query.push(", ");
        }
        query.push(format!("w{n} AS ("));
        statement.rows.push_statement(&mut query, statement.body);
        query.push(" RETURNING 1)");
        expected.push(statement.changes);
    }
    query.push(" SELECT ");
    for n in 0..expected.len() {
        if n > 0 {
            query.push(", ");
        }
        query.push(format!("(SELECT COUNT(*) FROM w{n}) AS c{n}"));
    }
    let row = query.build().fetch_one(&mut *tx).await?;
    for (n, expected) in expected.into_iter().enumerate() {
        let changed: i64 = row.try_get(n)?;
        check_changes(expected, u64::try_from(changed).unwrap_or(0))?;
    }
    Ok(())
}

/// A statement that changed other than the rows it must change.
pub(crate) fn check_changes(expected: Option<u64>, changed: u64) -> Result<(), StoreError> {
    match expected {
        Some(expected) if expected != changed => Err(StoreError::Internal(format!(
            "a set-wise statement changed {changed} rows instead of {expected}"
        ))),
        _ => Ok(()),
    }
}

/// Every statement that writes the planned ends, a statement a table.
pub(crate) fn end_statements(planned: &Planned<'_>) -> Result<Vec<SetStatement>, StoreError> {
    if planned.is_empty() {
        return Ok(Vec::new());
    }
    let policies: Vec<Value> =
        planned.iter().map(|(_, plan, _)| policy_json(&plan.policy)).collect();
    let sessions = Rows::default()
        .text("id", texts(planned.iter().map(|(session, ..)| session.id.clone())))
        .text("status", texts(planned.iter().map(|(_, plan, _)| plan.outcome.status.as_str())))
        .text("reason", texts(planned.iter().map(|(_, plan, _)| plan.outcome.reason.as_str())))
        .int(
            "started_at",
            planned.iter().map(|(_, plan, _)| plan.outcome.started_at.map(|at| at.0)).collect(),
        )
        .int("ended_at", ints(planned.iter().map(|(_, plan, _)| plan.outcome.ended_at.0)))
        .text("ended_by", texts(planned.iter().map(|(.., write)| write.actor.role.as_str())))
        .int("billable_seconds", ints(planned.iter().map(|(_, p, _)| p.outcome.billable_seconds)))
        .int("charged_cents", ints(planned.iter().map(|(_, plan, _)| plan.charged.0)))
        .text("policy", texts(policies.iter().map(Value::to_string)))
        .int(
            "finalizes_at",
            planned.iter().map(|(_, plan, _)| plan.finalizes_at.map(|at| at.0)).collect(),
        );
    let mut statements = vec![SetStatement {
        rows: sessions,
        body: "UPDATE sessions SET status = u.status, reason = u.reason, \
               started_at = u.started_at, ended_at = u.ended_at, ended_by = u.ended_by, \
               billable_seconds = u.billable_seconds, charged_cents = u.charged_cents, \
               policy = u.policy, finalizes_at = u.finalizes_at \
               FROM u WHERE sessions.id = u.id AND sessions.ended_at IS NULL",
        changes: Some(planned.len() as u64),
        reads_earlier: false,
    }];

    let audits: Vec<String> = planned
        .iter()
        .zip(&policies)
        .map(|((_, plan, write), policy)| {
            json!({
                "claimed": write.claimed,
                "policy": policy,
                "outcome": outcome_json(&plan.outcome),
            })
            .to_string()
        })
        .collect();
    statements.push(SetStatement::new(
        Rows::default()
            .text("session_id", texts(planned.iter().map(|(session, ..)| session.id.clone())))
            .text("actor_role", texts(planned.iter().map(|(.., write)| write.actor.role.as_str())))
            .text("actor_id", texts(planned.iter().map(|(.., write)| write.actor.id.clone())))
            .int("at", ints(planned.iter().map(|(.., write)| write.now.0)))
            .text("data", texts(audits)),
        "INSERT INTO session_events (session_id, type, party, actor_role, actor_id, at, data) \
         SELECT session_id, 'ended', NULL, actor_role, actor_id, at, data FROM u",
    ));

    let notices: Vec<(&Session, Notice, UnixMillis)> =
        planned.iter().map(|(session, plan, write)| (session, plan.notice, write.now)).collect();
    statements.extend(notice_statement(&notices));

    let requests: Vec<(&str, &str, Status, UnixMillis)> = planned
        .iter()
        .filter_map(|(session, plan, write)| {
            Some((
                session.request_id.as_deref()?,
                session.id.as_str(),
                plan.request_status?,
                write.now,
            ))
        })
        .collect();
    statements.extend(request_statements(&requests));

    let money: Vec<(&Session, &MoneyPlan, UnixMillis, &Settings)> = planned
        .iter()
        .map(|(session, plan, write)| (session, &plan.money, write.now, &write.settings))
        .collect();
    let mut messages: Vec<(&str, &Message, UnixMillis)> = Vec::new();
    for (session, plan, write) in planned {
        messages
            .extend(plan.messages.iter().map(|message| (session.id.as_str(), message, write.now)));
    }
    statements.extend(money_statements(&money, messages)?);
    Ok(statements)
}

/// A notification to each party of each session, at most one per
/// session, party and kind.
fn notice_statement(notices: &[(&Session, Notice, UnixMillis)]) -> Option<SetStatement> {
    if notices.is_empty() {
        return None;
    }
    let both = |f: &dyn Fn(&Session, Notice, UnixMillis, Party) -> Option<String>| {
        notices
            .iter()
            .flat_map(|(session, notice, at)| {
                [Party::Customer, Party::Provider].map(|party| f(session, *notice, *at, party))
            })
            .collect::<Vec<_>>()
    };
    let rows = Rows::default()
        .text("recipient_role", both(&|_, _, _, party| Some(party.as_str().to_owned())))
        .text(
            "recipient_id",
            both(&|session, _, _, party| Some(session.party_id(party).to_owned())),
        )
        .text("session_id", both(&|session, _, _, _| Some(session.id.clone())))
        .text("kind", both(&|_, notice, _, _| Some(notice.kind.as_str().to_owned())))
        .text("reason", both(&|_, notice, _, _| Some(notice.reason.as_str().to_owned())))
        .int(
            "created_at",
            notices.iter().flat_map(|(_, _, at)| [Some(at.0), Some(at.0)]).collect(),
        );
    Some(SetStatement::new(
        rows,
        "INSERT INTO notifications (recipient_role, recipient_id, session_id, kind, reason, \
         created_at) SELECT recipient_role, recipient_id, session_id, kind, reason, created_at \
         FROM u WHERE true ON CONFLICT DO NOTHING",
    ))
}

pub(super) async fn write_notices(
    tx: &mut DbConnection,
    notices: &[(&Session, Notice, UnixMillis)],
) -> Result<(), StoreError> {
    match notice_statement(notices) {
        Some(statement) => statement.execute(tx).await,
        None => Ok(()),
    }
}

/// Each request follows its session to the end (once linked to it, or
/// when not linked yet); the queue entries of those requests go.
fn request_statements(requests: &[(&str, &str, Status, UnixMillis)]) -> Vec<SetStatement> {
    // A request follows the first of its sessions to end (as one at a time
    // would have it: the later ones find it linked to another session).
    let mut seen = std::collections::HashSet::new();
    let requests: Vec<_> = requests.iter().filter(|request| seen.insert(request.0)).collect();
    if requests.is_empty() {
        return Vec::new();
    }
    let rows = || {
        Rows::default()
            .text("request_id", texts(requests.iter().map(|request| request.0)))
            .text("session_id", texts(requests.iter().map(|request| request.1)))
            .text("status", texts(requests.iter().map(|request| request.2.as_str())))
            .int("updated_at", ints(requests.iter().map(|request| request.3.0)))
    };
    // The request first, then its queue: the order accepting a request
    // locks them in, so the two never wait for each other.
    vec![
        SetStatement::new(
            rows(),
            "UPDATE requests SET status = u.status, \
             session_id = COALESCE(requests.session_id, u.session_id), \
             updated_at = u.updated_at FROM u WHERE requests.id = u.request_id \
             AND (requests.session_id IS NULL OR requests.session_id = u.session_id)",
        ),
        SetStatement {
            rows: rows(),
            body: "DELETE FROM assignments WHERE request_id IN (SELECT r.id FROM requests r \
                   JOIN u ON r.id = u.request_id AND r.session_id = u.session_id)",
            changes: None,
            // Which requests followed their session: the update's work.
            reads_earlier: true,
        },
    ]
}

pub(super) async fn settle_requests(
    tx: &mut DbConnection,
    requests: &[(&str, &str, Status, UnixMillis)],
) -> Result<(), StoreError> {
    for statement in request_statements(requests) {
        statement.execute(&mut *tx).await?;
    }
    Ok(())
}

/// What final outcomes owe (settlement postings, their lines, payouts),
/// then `messages` followed by the money's own, a statement a table.
fn money_statements<'a>(
    money: &[(&'a Session, &'a MoneyPlan, UnixMillis, &Settings)],
    mut messages: Vec<(&'a str, &'a Message, UnixMillis)>,
) -> Result<Vec<SetStatement>, StoreError> {
    let mut statements = Vec::new();
    let postings: Vec<_> = money
        .iter()
        .filter_map(|(session, plan, at, _)| Some((*session, plan.posting.as_ref()?, *at)))
        .collect();
    if !postings.is_empty() {
        for (_, posting, _) in &postings {
            if posting.kind != PostingKind::Settlement || !posting.is_balanced() {
                return Err(StoreError::Internal(format!("an unbalanced posting: {posting:?}")));
            }
        }
        statements.push(SetStatement::new(
            Rows::default()
                .text("session_id", texts(postings.iter().map(|(session, ..)| session.id.clone())))
                .text(
                    "currency",
                    texts(postings.iter().map(|(_, posting, _)| posting.currency.clone())),
                )
                .int("created_at", ints(postings.iter().map(|(.., at)| at.0))),
            "INSERT INTO ledger_postings (session_id, kind, currency, created_at) \
             SELECT session_id, 'settlement', currency, created_at FROM u",
        ));
        let lines: Vec<(&str, &str, i64)> = postings
            .iter()
            .flat_map(|(session, posting, _)| {
                posting
                    .lines
                    .iter()
                    .map(|(account, amount)| (session.id.as_str(), account.as_str(), *amount))
            })
            .collect();
        statements.push(SetStatement {
            rows: Rows::default()
                .text("session_id", texts(lines.iter().map(|line| line.0)))
                .text("account", texts(lines.iter().map(|line| line.1)))
                .int("amount_cents", ints(lines.iter().map(|line| line.2))),
            body: "INSERT INTO ledger_lines (posting_id, account, amount_cents) \
                   SELECT p.id, u.account, u.amount_cents FROM u \
                   JOIN ledger_postings p ON p.session_id = u.session_id AND p.kind = 'settlement'",
            changes: Some(lines.len() as u64),
            reads_earlier: true,
        });
    }
    let payouts: Vec<_> = money
        .iter()
        .filter_map(|(session, plan, at, settings)| {
            Some((*session, plan.payout.as_ref()?, *at, *settings))
        })
        .collect();
    if !payouts.is_empty() {
        statements.push(SetStatement {
            rows: Rows::default()
                .text("id", texts(payouts.iter().map(|(_, payout, ..)| payout.id.clone())))
                .text("session_id", texts(payouts.iter().map(|(session, ..)| session.id.clone())))
                .text(
                    "provider_id",
                    texts(payouts.iter().map(|(_, payout, ..)| payout.provider_id.clone())),
                )
                .text(
                    "destination",
                    payouts.iter().map(|(_, payout, ..)| payout.destination.clone()).collect(),
                )
                .int("amount_cents", ints(payouts.iter().map(|(_, payout, ..)| payout.amount.0)))
                .text(
                    "currency",
                    texts(payouts.iter().map(|(_, payout, ..)| payout.currency.clone())),
                )
                .text(
                    "provider",
                    texts(payouts.iter().map(|(.., settings)| settings.payout_provider.as_str())),
                )
                .int("created_at", ints(payouts.iter().map(|(_, _, at, _)| at.0))),
            body: "INSERT INTO payouts (id, session_id, provider_id, destination, amount_cents, \
             currency, state, provider, created_at, updated_at) \
             SELECT id, session_id, provider_id, destination, amount_cents, currency, \
             'pending', provider, created_at, created_at FROM u",
            changes: None,
            // The payouts trigger reads the session's status, just written.
            reads_earlier: true,
        });
    }
    for (session, plan, at, _) in money {
        messages.extend(plan.messages.iter().map(|message| (session.id.as_str(), message, *at)));
    }
    statements.extend(message_statement(&messages));
    Ok(statements)
}

/// Writes what final outcomes owe and `messages` (see `money_statements`).
pub(super) async fn write_money<'a>(
    tx: &mut DbConnection,
    money: &[(&'a Session, &'a MoneyPlan, UnixMillis, &Settings)],
    messages: Vec<(&'a str, &'a Message, UnixMillis)>,
) -> Result<(), StoreError> {
    execute_all(&mut *tx, money_statements(money, messages)?).await?;
    Ok(())
}
