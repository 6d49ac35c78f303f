//! The store contract: the same assertions against every backend, on a real
//! database each (a temporary SQLite file; a PostgreSQL database of its own).

use futures::future::join_all;
use serde_json::json;
use sqlx::Connection;
use verdict_core::{
    Cents, EndCause, Kind, Party, Price, PriceMode, Reason, Role, Status, UnixMillis,
};
use verdict_store::{Actor, EventType, NewSession, PresenceChange, Settings, Store, StoreError};

const T0: UnixMillis = UnixMillis(1_800_000_000_000);

#[macro_use]
mod common;

use common::Fixture;

impl Fixture {
    /// Runs statements (no parameters) behind the store's back.
    async fn execute_raw(&self, sqlite: &'static str, postgres: &'static str) {
        if self.url.starts_with("sqlite:") {
            let mut connection = sqlx::SqliteConnection::connect(&self.url).await.unwrap();
            sqlx::raw_sql(sqlite).execute(&mut connection).await.unwrap();
        } else {
            let mut connection = sqlx::PgConnection::connect(&self.url).await.unwrap();
            sqlx::raw_sql(postgres).execute(&mut connection).await.unwrap();
        }
    }

    /// Inserts a payout behind the store's back, as a buggy writer would.
    async fn raw_payout(&self, session_id: &str) -> Result<(), String> {
        const INSERT: &str = "INSERT INTO payouts (id, session_id, provider_id, amount_cents, \
            currency, state, provider, created_at, updated_at) \
            VALUES ($1, $2, 'p1', 1, 'usd', 'pending', 'manual', 0, 0)";
        let id = format!("rogue_{session_id}");
        let result = if self.url.starts_with("sqlite:") {
            let mut connection = sqlx::SqliteConnection::connect(&self.url).await.unwrap();
            sqlx::query(INSERT).bind(id).bind(session_id).execute(&mut connection).await.map(drop)
        } else {
            let mut connection = sqlx::PgConnection::connect(&self.url).await.unwrap();
            sqlx::query(INSERT).bind(id).bind(session_id).execute(&mut connection).await.map(drop)
        };
        result.map_err(|error| error.to_string())
    }
}

on_both!(
    the_database_refuses_a_payout_for_a_session_not_completed_or_paid_twice,
    a_created_session_reads_back_as_written,
    a_duplicate_id_is_a_conflict_and_changes_nothing,
    ending_writes_the_outcome_the_audit_event_and_the_notifications_once,
    presence_on_an_ended_session_is_a_conflict_and_writes_nothing,
    concurrent_ends_make_exactly_one_transition,
    a_failing_write_fails_alone_among_concurrent_writes,
    a_set_wise_statement_failing_for_one_end_fails_that_end_alone,
    unknown_sessions_are_not_found,
    audit_pages_cover_each_scope_exactly_once,
    audit_pages_read_every_field_as_a_single_read_does,
    ledger_imbalance_counts_sessions_and_samples_in_id_order,
    a_bulk_import_stores_nothing_until_committed_and_keeps_the_schema,
);

/// Every PostgreSQL column holding a session or request id that is
/// compared, ordered or joined compares bytes (`COLLATE "C"`), as SQLite
/// and the service's own sorting do: such a column added with the
/// database's default collation would page wrongly under a linguistic one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_id_columns_compare_bytes() {
    let fixture = common::postgres().await;
    let mut connection = sqlx::PgConnection::connect(&fixture.url).await.unwrap();
    let columns: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "SELECT table_name::text, column_name::text, collation_name::text \
         FROM information_schema.columns WHERE table_schema = 'public' AND data_type = 'text' \
         AND (column_name IN ('session_id', 'request_id') \
              OR (column_name = 'id' AND table_name IN ('sessions', 'requests', 'payouts'))) \
         ORDER BY 1, 2",
    )
    .fetch_all(&mut connection)
    .await
    .unwrap();
    // The id columns of sessions, requests and payouts, and the nine that
    // refer to them, at least.
    assert!(columns.len() >= 12, "{columns:?}");
    let other: Vec<_> =
        columns.iter().filter(|(_, _, collation)| collation.as_deref() != Some("C")).collect();
    assert!(other.is_empty(), "not in byte order: {other:?}");
}

/// A new SQLite database gets 16 KiB pages; one made with other pages
/// keeps them, and opens and migrates all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_databases_are_made_with_16_kib_pages_and_old_ones_keep_theirs() {
    let dir = tempfile::tempdir().unwrap();
    let page_size = |path: String| async move {
        let mut connection = sqlx::SqliteConnection::connect(&path).await.unwrap();
        sqlx::query_scalar::<_, i64>("PRAGMA page_size").fetch_one(&mut connection).await.unwrap()
    };

    let new = format!("sqlite://{}/new.db", dir.path().display());
    let store = verdict_store::open(&new).await.unwrap();
    live_session(store.as_ref(), "s-1").await;
    drop(store);
    assert_eq!(page_size(new).await, 16_384);

    let old = format!("sqlite://{}/old.db", dir.path().display());
    let options = <sqlx::sqlite::SqliteConnectOptions as std::str::FromStr>::from_str(&old)
        .unwrap()
        .create_if_missing(true)
        .page_size(4_096)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal);
    let mut connection = sqlx::SqliteConnection::connect_with(&options).await.unwrap();
    sqlx::query("CREATE TABLE made_before (id INTEGER)").execute(&mut connection).await.unwrap();
    connection.close().await.unwrap();
    let store = verdict_store::open(&old).await.unwrap();
    live_session(store.as_ref(), "s-1").await;
    assert!(store.session("s-1").await.unwrap().is_some());
    drop(store);
    assert_eq!(page_size(old).await, 4_096);
}

impl Fixture {
    /// The database's index definitions, by name.
    async fn index_definitions(&self) -> Vec<(String, String)> {
        if self.url.starts_with("sqlite:") {
            let mut connection = sqlx::SqliteConnection::connect(&self.url).await.unwrap();
            sqlx::query_as(
                "SELECT name, COALESCE(sql, '') FROM sqlite_master WHERE type = 'index' \
                 ORDER BY name",
            )
            .fetch_all(&mut connection)
            .await
            .unwrap()
        } else {
            let mut connection = sqlx::PgConnection::connect(&self.url).await.unwrap();
            sqlx::query_as(
                "SELECT indexname::text, indexdef FROM pg_indexes WHERE schemaname = 'public' \
                 ORDER BY 1",
            )
            .fetch_all(&mut connection)
            .await
            .unwrap()
        }
    }
}

/// A bulk load stores its batches in one transaction: nothing is seen
/// before the commit, a repeat in a later batch is recognised, a load
/// dropped uncommitted leaves nothing and releases the writer, and after a
/// commit the indexes are those the migrations made (SQLite builds some
/// of them again at the commit).
async fn a_bulk_import_stores_nothing_until_committed_and_keeps_the_schema(fixture: Fixture) {
    use verdict_store::{ImportSession, Imported, PayoutState, accounts};
    let store = fixture.store.as_ref();
    let migrated = fixture.index_definitions().await;
    let imported = |id: &str, paid: bool| ImportSession {
        id: id.into(),
        kind: Kind::Video,
        customer_id: "c1".into(),
        provider_id: "p1".into(),
        provider_account: None,
        price: Price { mode: PriceMode::Flat, amount: Cents(1000), currency: "usd".into() },
        status: if paid { Status::Completed } else { Status::Cancelled },
        reason: None,
        created_at: T0,
        ended_at: Some(UnixMillis(T0.0 + 3_600_000)),
        events: vec![(Party::Customer, true, UnixMillis(T0.0 + 1_000))],
        payout: paid.then_some((Cents(800), PayoutState::Paid)),
        metadata: None,
    };

    // Dropped uncommitted, one batch stored and one still queued: nothing
    // stored, the writer free again.
    let mut abandoned = store.bulk_import().await.unwrap();
    let queued = abandoned.add(vec![imported("gone", true)], "run-0", T0).await.unwrap();
    assert_eq!(queued.outcomes().await.unwrap(), vec![Imported::New]);
    let many: Vec<ImportSession> =
        (0..3_000).map(|n| imported(&format!("gone-{n}"), n % 2 == 0)).collect();
    let in_flight = abandoned.add(many, "run-0", T0).await.unwrap();
    drop(abandoned);
    let _ = in_flight.outcomes().await;
    assert_eq!(store.session("gone").await.unwrap(), None);
    assert_eq!(store.session("gone-0").await.unwrap(), None);
    assert_eq!(fixture.index_definitions().await, migrated);

    // A batch that fails (a terminal session without an end breaks a
    // check) spoils the load: later batches and the commit fail, nothing
    // is stored.
    let mut failing = store.bulk_import().await.unwrap();
    let kept_out = failing.add(vec![imported("kept-out", true)], "run-f", T0).await.unwrap();
    let mut broken = imported("broken", true);
    broken.ended_at = None;
    let broken = failing.add(vec![broken], "run-f", T0).await.unwrap();
    assert_eq!(kept_out.outcomes().await.unwrap(), vec![Imported::New]);
    assert!(broken.outcomes().await.is_err());
    let after = failing.add(vec![imported("after", true)], "run-f", T0).await.unwrap();
    assert!(after.outcomes().await.is_err());
    assert!(failing.commit().await.is_err());
    assert_eq!(store.session("kept-out").await.unwrap(), None);

    // Batches queued before either is stored are stored in order: the
    // second batch's b-1 is the repeat.
    let mut bulk = store.bulk_import().await.unwrap();
    let first =
        bulk.add(vec![imported("b-1", true), imported("b-2", false)], "run-1", T0).await.unwrap();
    let second =
        bulk.add(vec![imported("b-1", false), imported("b-3", true)], "run-1", T0).await.unwrap();
    assert_eq!(second.outcomes().await.unwrap(), vec![Imported::EarlierInRun, Imported::New]);
    assert_eq!(first.outcomes().await.unwrap(), vec![Imported::New; 2]);
    assert_eq!(store.session("b-1").await.unwrap(), None, "seen before the commit");
    bulk.commit().await.unwrap();

    assert_eq!(fixture.index_definitions().await, migrated);
    let b1 = store.session("b-1").await.unwrap().expect("stored");
    assert_eq!(b1.status, Status::Completed, "the first b-1 is kept");
    assert!(store.session("b-3").await.unwrap().is_some());
    assert_eq!(store.session("gone").await.unwrap(), None);
    let counts = store.table_counts().await.unwrap();
    assert_eq!((counts["sessions"], counts["payouts"]), (3, 2));
    assert_eq!(store.ledger_imbalance(10).await.unwrap(), (0, vec![]));

    // Many sessions a batch, each with its own customer, provider and
    // amounts: each posting's lines are its own session's, in every
    // statement of the batch.
    let varied = |id: &str, n: i64| ImportSession {
        customer_id: format!("c{n}"),
        provider_id: format!("p{}", n % 7),
        price: Price { mode: PriceMode::Flat, amount: Cents(1_000 + n), currency: "usd".into() },
        payout: (n % 3 != 0).then_some((Cents(500 + n), PayoutState::Paid)),
        metadata: None,
        ..imported(id, true)
    };
    let many: Vec<ImportSession> = (0..2_300).map(|n| varied(&format!("m-{n}"), n)).collect();
    let outcomes = store.import_sessions(many, "run-m", T0).await.unwrap();
    assert_eq!(outcomes, vec![Imported::New; 2_300]);
    for n in [1, 2, 998, 1_001, 1_534, 2_048, 2_299] {
        let postings = store.postings(&format!("m-{n}")).await.unwrap();
        let lines: Vec<(String, i64)> =
            postings[0].lines.iter().map(|line| (line.account.clone(), line.amount.0)).collect();
        assert_eq!(postings.len(), 1, "m-{n}");
        assert!(
            lines.contains(&(accounts::customer_receivable(&format!("c{n}")), 1_000 + n)),
            "{lines:?}"
        );
        assert!(
            lines.contains(&(accounts::provider_payable(&format!("p{}", n % 7)), -(500 + n))),
            "{lines:?}"
        );
    }
    assert!(store.postings("m-3").await.unwrap().is_empty(), "m-3 had no payout");
    // Again with stored ids in later statements and the batch's last rows.
    let again: Vec<ImportSession> = (2_000..2_600).map(|n| varied(&format!("m-{n}"), n)).collect();
    let outcomes = store.import_sessions(again, "run-m2", T0).await.unwrap();
    assert_eq!(outcomes[..300], vec![Imported::Existing; 300]);
    assert_eq!(outcomes[300..], vec![Imported::New; 300]);
    let postings = store.postings("m-2599").await.unwrap();
    assert!(
        postings[0].lines.iter().any(|line| line.account == accounts::customer_receivable("c2599"))
    );
    assert_eq!(store.ledger_imbalance(10).await.unwrap(), (0, vec![]));
    let counts = store.table_counts().await.unwrap();
    assert_eq!(counts["sessions"], 3 + 2_600);

    // A plain import on the same writer, some ids stored already: only the
    // new ones get their trail, payout and posting.
    let (events, payouts, postings) =
        (counts["session_events"], counts["payouts"], counts["ledger_postings"]);
    let again = store
        .import_sessions(
            vec![imported("b-3", true), imported("b-4", true), imported("b-2", true)],
            "run-2",
            T0,
        )
        .await
        .unwrap();
    assert_eq!(again, vec![Imported::Existing, Imported::New, Imported::Existing]);
    let counts = store.table_counts().await.unwrap();
    assert_eq!(counts["sessions"], 3 + 2_600 + 1);
    assert_eq!((counts["payouts"], counts["ledger_postings"]), (payouts + 1, postings + 1));
    assert_eq!(counts["session_events"], events + 2, "b-4's created and join only");
    assert_eq!(store.payout("po_b-4").await.unwrap().map(|payout| payout.amount), Some(Cents(800)));
    assert_eq!(store.ledger_imbalance(10).await.unwrap(), (0, vec![]));
}

fn new_session(id: &str) -> NewSession {
    NewSession {
        id: id.into(),
        kind: Kind::Diagnostic,
        customer_id: "c1".into(),
        provider_id: "p1".into(),
        provider_account: Some("acct_1".into()),
        scheduled_start: Some(UnixMillis(T0.0 + 60_000)),
        price: Price { mode: PriceMode::PerMinute, amount: Cents(150), currency: "usd".into() },
        request_id: Some("r1".into()),
        metadata: Some(json!({"car": "Saab 900", "nested": {"ünïcode": true}})),
        room: None,
    }
}

fn service() -> Actor {
    Actor { role: Role::Service, id: "platform".into() }
}

fn party(role: Role, id: &str) -> Actor {
    Actor { role, id: id.into() }
}

async fn live_session(store: &dyn Store, id: &str) {
    let settings = Settings::default();
    let policies = settings.policies;
    store.create_session(new_session(id), &service(), None, T0).await.unwrap();
    for (party_kind, actor) in [
        (Party::Customer, party(Role::Customer, "c1")),
        (Party::Provider, party(Role::Provider, "p1")),
    ] {
        store
            .record_presence(id, party_kind, PresenceChange::Join, &actor, &policies, T0)
            .await
            .unwrap();
    }
}

async fn a_created_session_reads_back_as_written(fixture: Fixture) {
    let created =
        fixture.store.create_session(new_session("s1"), &service(), None, T0).await.unwrap();
    let read = fixture.store.session("s1").await.unwrap().expect("stored");
    assert!(!created.replayed);
    let created = created.value;
    assert_eq!(created, read);
    assert_eq!(read.status, Status::Waiting);
    assert_eq!(read.created_at, T0);
    assert_eq!(read.metadata, Some(json!({"car": "Saab 900", "nested": {"ünïcode": true}})));
    assert_eq!(read.price.amount, Cents(150));
    let events = fixture.store.events("s1").await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].actor, service());
}

async fn a_duplicate_id_is_a_conflict_and_changes_nothing(fixture: Fixture) {
    fixture.store.create_session(new_session("s1"), &service(), None, T0).await.unwrap();
    let before = fixture.store.table_counts().await.unwrap();
    let mut again = new_session("s1");
    again.customer_id = "someone-else".into();
    let error = fixture.store.create_session(again, &service(), None, T0).await.unwrap_err();
    assert!(matches!(error, StoreError::Conflict(_)), "{error:?}");
    assert_eq!(fixture.store.table_counts().await.unwrap(), before);
    assert_eq!(fixture.store.session("s1").await.unwrap().unwrap().customer_id, "c1");
}

async fn ending_writes_the_outcome_the_audit_event_and_the_notifications_once(fixture: Fixture) {
    let store = fixture.store.as_ref();
    live_session(store, "s1").await;
    let settings = Settings::default();
    let end_at = UnixMillis(T0.0 + 61_500);
    let claimed = json!({"status": "cancelled"});
    let ended = store
        .end_session(
            "s1",
            &service(),
            Some(claimed.clone()),
            EndCause::Requested,
            &settings,
            end_at,
        )
        .await
        .unwrap();
    assert!(!ended.already_ended);
    let session = &ended.session;
    assert_eq!(
        (session.status, session.reason(), session.billable_seconds()),
        (Status::Completed, Some(Reason::Completed), Some(61))
    );
    assert_eq!(session.ended_at(), Some(end_at));
    assert_eq!(session.started_at, Some(T0));
    assert_eq!(session.ended_by, Some(Role::Service));
    assert_eq!(session.charged_cents, Some(Cents(300)), "two started minutes at 150");

    let again = store
        .end_session(
            "s1",
            &party(Role::Customer, "c1"),
            None,
            EndCause::Requested,
            &settings,
            UnixMillis(end_at.0 + 999_000),
        )
        .await
        .unwrap();
    assert!(again.already_ended);
    assert_eq!(&again.session, session);

    let events = store.events("s1").await.unwrap();
    let ended_events: Vec<_> =
        events.iter().filter(|e| e.event_type == verdict_store::EventType::Ended).collect();
    assert_eq!(ended_events.len(), 1);
    let data = ended_events[0].data.as_ref().unwrap();
    assert_eq!(data["claimed"], claimed);
    assert_eq!(data["policy"]["min_billable_seconds"], 60);
    for (role, id) in [(Party::Customer, "c1"), (Party::Provider, "p1")] {
        let inbox = store.notifications(role, id, None, 10).await.unwrap();
        assert_eq!(inbox.len(), 1);
        assert_eq!(inbox[0].kind, "session_completed");
    }
    let counts = store.table_counts().await.unwrap();
    assert_eq!(counts["notifications"], 2);
    assert_eq!(
        counts["outbox"], 2,
        "session.started, session.ended; a manual payout queues nothing"
    );

    // Settlement: 300 cents charged, 20 % fee, one balanced posting, one payout.
    let postings = store.postings("s1").await.unwrap();
    assert_eq!(postings.len(), 1);
    assert!(postings[0].is_balanced());
    let line =
        |account: &str| postings[0].lines.iter().find(|l| l.account == account).unwrap().amount;
    assert_eq!(line("customer_receivable:c1"), Cents(300));
    assert_eq!(line("provider_payable:p1"), Cents(-240));
    assert_eq!(line("platform_revenue"), Cents(-60));
    let payouts = store.payouts(Some("s1"), None, 10).await.unwrap();
    assert_eq!(payouts.len(), 1);
    assert_eq!(payouts[0].amount, Cents(240));
    assert_eq!(payouts[0].destination.as_deref(), Some("acct_1"));
    assert_eq!(payouts[0].state, verdict_store::PayoutState::Pending);
    let earnings = store.earnings("p1").await.unwrap();
    assert_eq!(
        (earnings[0].earned, earnings[0].pending, earnings[0].sessions),
        (Cents(240), Cents(240), 1)
    );
}

async fn presence_on_an_ended_session_is_a_conflict_and_writes_nothing(fixture: Fixture) {
    let store = fixture.store.as_ref();
    let settings = Settings::default();
    let policies = settings.policies;
    store.create_session(new_session("s1"), &service(), None, T0).await.unwrap();
    store.end_session("s1", &service(), None, EndCause::Requested, &settings, T0).await.unwrap();
    let before = store.table_counts().await.unwrap();
    for change in [PresenceChange::Join, PresenceChange::Leave, PresenceChange::Heartbeat] {
        let error = store
            .record_presence(
                "s1",
                Party::Customer,
                change,
                &party(Role::Customer, "c1"),
                &policies,
                T0,
            )
            .await
            .unwrap_err();
        assert!(matches!(error, StoreError::Conflict(_)), "{error:?}");
    }
    assert_eq!(store.table_counts().await.unwrap(), before);
    assert_eq!(store.session("s1").await.unwrap().unwrap().customer_last_seen_at, None);
}

async fn concurrent_ends_make_exactly_one_transition(fixture: Fixture) {
    live_session(fixture.store.as_ref(), "s1").await;
    let settings = Settings::default();
    let calls = (0..48).map(|n| {
        let store = fixture.store.clone();
        tokio::spawn(async move {
            let at = UnixMillis(T0.0 + 120_000 + n);
            store.end_session("s1", &service(), None, EndCause::Requested, &settings, at).await
        })
    });
    let results: Vec<_> =
        join_all(calls).await.into_iter().map(|joined| joined.unwrap().unwrap()).collect();
    assert_eq!(results.iter().filter(|ended| !ended.already_ended).count(), 1);
    assert!(results.iter().all(|ended| ended.session == results[0].session));
    let counts = fixture.store.table_counts().await.unwrap();
    assert_eq!(counts["notifications"], 2);
}

/// Concurrent writes share group transactions: one that fails (after
/// writing part of its change) must roll back alone and answer its own
/// error, while every other write of its group is committed.
async fn a_failing_write_fails_alone_among_concurrent_writes(fixture: Fixture) {
    const N: usize = 24;
    for n in 0..N {
        live_session(fixture.store.as_ref(), &format!("s{n}")).await;
    }
    let settings = Settings::default();
    let end_at = UnixMillis(T0.0 + 600_000);
    let mut calls = Vec::new();
    for n in 0..N {
        let store = fixture.store.clone();
        calls.push(tokio::spawn(async move {
            match n % 4 {
                // Succeeds: a real end, with a payout.
                0 | 1 => store
                    .end_session(
                        &format!("s{n}"),
                        &service(),
                        None,
                        EndCause::Requested,
                        &settings,
                        end_at,
                    )
                    .await
                    .map(|ended| format!("ended {} {}", ended.session.status, ended.already_ended)),
                // Fails before writing: no such session.
                2 => store
                    .end_session(
                        &format!("ghost{n}"),
                        &service(),
                        None,
                        EndCause::Requested,
                        &settings,
                        end_at,
                    )
                    .await
                    .map(|_| "ghost ended".to_owned()),
                // Fails after writing: the key is claimed, then the id is
                // taken; the claim must be rolled back with it.
                _ => {
                    let key = verdict_store::Idempotency {
                        scope: "service:platform:create".into(),
                        key: format!("k{n}"),
                        fingerprint: "body".into(),
                    };
                    store
                        .create_session(new_session(&format!("s{n}")), &service(), Some(&key), T0)
                        .await
                        .map(|_| "duplicate created".to_owned())
                }
            }
        }));
    }
    let results: Vec<_> = join_all(calls).await.into_iter().map(|joined| joined.unwrap()).collect();
    for (n, result) in results.iter().enumerate() {
        match n % 4 {
            0 | 1 => assert_eq!(result.as_deref().unwrap(), "ended completed false", "s{n}"),
            2 => assert!(matches!(result, Err(StoreError::NotFound { .. })), "{n}: {result:?}"),
            _ => assert!(matches!(result, Err(StoreError::Conflict(_))), "{n}: {result:?}"),
        }
    }
    let counts = fixture.store.table_counts().await.unwrap();
    assert_eq!(counts["sessions"], N as i64);
    assert_eq!(counts["payouts"], (N / 2) as i64);
    assert_eq!(counts["ledger_postings"], (N / 2) as i64);
    assert_eq!(counts["notifications"], N as i64);
    assert_eq!(counts["idempotency_keys"], 0, "a failed write's key claim was kept");
    for n in 0..N {
        let session = fixture.store.session(&format!("s{n}")).await.unwrap().unwrap();
        let expected = if n % 4 < 2 { Status::Completed } else { Status::Live };
        assert_eq!(session.status, expected, "s{n}");
    }
}

/// Ends are written a table at a time for a whole group: when one end's
/// rows make a set-wise statement fail (here a constraint the plan cannot
/// foresee refuses one session's posting), the group is written again one
/// end at a time, and every other end of it is answered and stored.
async fn a_set_wise_statement_failing_for_one_end_fails_that_end_alone(fixture: Fixture) {
    const N: usize = 32;
    for n in 0..N {
        live_session(fixture.store.as_ref(), &format!("s{n}")).await;
    }
    fixture
        .execute_raw(
            "CREATE TRIGGER refuse_s7 BEFORE INSERT ON ledger_postings \
             WHEN NEW.session_id = 's7' BEGIN SELECT RAISE(ABORT, 'refused by the test'); END",
            "CREATE FUNCTION refuse_s7() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN IF NEW.session_id = 's7' THEN RAISE EXCEPTION 'refused by the test'; END IF; \
             RETURN NEW; END $$; \
             CREATE TRIGGER refuse_s7 BEFORE INSERT ON ledger_postings \
             FOR EACH ROW EXECUTE FUNCTION refuse_s7()",
        )
        .await;
    let settings = Settings::default();
    let end_at = UnixMillis(T0.0 + 600_000);
    let calls = (0..N).map(|n| {
        let store = fixture.store.clone();
        tokio::spawn(async move {
            store
                .end_session(
                    &format!("s{n}"),
                    &service(),
                    None,
                    EndCause::Requested,
                    &settings,
                    end_at,
                )
                .await
        })
    });
    let results: Vec<_> = join_all(calls).await.into_iter().map(|joined| joined.unwrap()).collect();
    for (n, result) in results.iter().enumerate() {
        if n == 7 {
            assert!(result.is_err(), "the refused end answered {result:?}");
        } else {
            let ended = result.as_ref().unwrap_or_else(|error| panic!("s{n}: {error}"));
            assert_eq!((ended.session.status, ended.already_ended), (Status::Completed, false));
        }
    }
    let counts = fixture.store.table_counts().await.unwrap();
    assert_eq!(counts["payouts"], (N - 1) as i64);
    assert_eq!(counts["ledger_postings"], (N - 1) as i64);
    assert_eq!(counts["notifications"], 2 * (N - 1) as i64);
    for n in 0..N {
        let session = fixture.store.session(&format!("s{n}")).await.unwrap().unwrap();
        let expected = if n == 7 { Status::Live } else { Status::Completed };
        assert_eq!(session.status, expected, "s{n}");
        let ended = fixture.store.events(&format!("s{n}")).await.unwrap();
        let ends = ended.iter().filter(|event| event.event_type == EventType::Ended).count();
        assert_eq!(ends, usize::from(n != 7), "s{n}");
    }
}

async fn unknown_sessions_are_not_found(fixture: Fixture) {
    let store = fixture.store.as_ref();
    let settings = Settings::default();
    let policies = settings.policies;
    assert_eq!(store.session("ghost").await.unwrap(), None);
    let error = store
        .end_session("ghost", &service(), None, EndCause::Requested, &settings, T0)
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::NotFound { .. }));
    let error = store
        .record_presence(
            "ghost",
            Party::Customer,
            PresenceChange::Join,
            &party(Role::Customer, "c1"),
            &policies,
            T0,
        )
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::NotFound { .. }));
}

async fn the_database_refuses_a_payout_for_a_session_not_completed_or_paid_twice(fixture: Fixture) {
    let store = fixture.store.as_ref();
    store.create_session(new_session("waiting"), &service(), None, T0).await.unwrap();
    let error = fixture.raw_payout("waiting").await.unwrap_err();
    assert!(error.contains("payouts_only_for_completed_sessions"), "{error}");

    live_session(store, "done").await;
    let end_at = UnixMillis(T0.0 + 600_000);
    store
        .end_session("done", &service(), None, EndCause::Requested, &Settings::default(), end_at)
        .await
        .unwrap();
    let error = fixture.raw_payout("done").await.unwrap_err();
    assert!(error.to_lowercase().contains("unique"), "{error}");
    assert_eq!(store.payouts(Some("done"), None, 10).await.unwrap().len(), 1);
}

/// Audit pages cover every session of their scope exactly once, in scope
/// order, across page boundaries and ties on the end instant, with each
/// session's own related rows (ids that need escaping included).
async fn audit_pages_cover_each_scope_exactly_once(fixture: Fixture) {
    use verdict_store::{AuditCursor, AuditScope, ImportSession, PayoutState};
    let store = fixture.store.as_ref();
    let sessions: Vec<ImportSession> = (0..23)
        .map(|i: i64| {
            let open = i % 7 == 3;
            let ended_at = UnixMillis(T0.0 + 3_600_000 + (i % 5) * 1_000);
            ImportSession {
                // Quotes, separators and escapes for the page readers; case
                // and punctuation that a linguistic collation (the test
                // databases' en-US) orders otherwise than bytes.
                id: format!(
                    "{}{:02}-{}",
                    ["s", "S", "s_", "s-", "Z", "z"][i as usize % 6],
                    (i * 11) % 23,
                    ["plain", "q\"uote", "com,ma|bar", "ünï\\"][i as usize % 4]
                ),
                kind: Kind::Video,
                customer_id: "c1".into(),
                provider_id: "p1".into(),
                provider_account: None,
                price: Price { mode: PriceMode::Flat, amount: Cents(1000), currency: "usd".into() },
                status: if open { Status::Waiting } else { Status::Completed },
                reason: None,
                created_at: T0,
                ended_at: (!open).then_some(ended_at),
                // i + 1 joins and leaves, so each session's count is its own.
                events: (0..=i)
                    .map(|n| (Party::Customer, n % 2 == 0, UnixMillis(T0.0 + n * 1_000)))
                    .collect(),
                payout: (!open && i % 2 == 0).then_some((Cents(800 + i), PayoutState::Paid)),
                metadata: None,
            }
        })
        .collect();
    store.import_sessions(sessions.clone(), "run-1", T0).await.unwrap();
    // One posting made unbalanced behind the store's back (lines are
    // append-only, so by a line added to it).
    let unbalanced_id = sessions[4].id.clone();
    fixture
        .execute(
            "INSERT INTO ledger_lines (posting_id, account, amount_cents) \
             SELECT id, 'platform:revenue', 7 FROM ledger_postings WHERE session_id = $1",
            &unbalanced_id,
        )
        .await;
    let unbalanced_id = unbalanced_id.as_str();

    let page_all = |scope: AuditScope| async move {
        let mut seen = Vec::new();
        let mut after: Option<AuditCursor> = None;
        loop {
            // The page end read ahead from the index bounds the page read.
            let end = store.audit_page_end(scope, after.as_ref(), 4).await.unwrap();
            let page = store.audits(scope, after.as_ref(), end.as_ref(), 4).await.unwrap();
            assert!(page.len() <= 4);
            assert_eq!(end.is_some(), page.len() == 4, "{scope:?}");
            if let Some(end) = &end {
                assert_eq!(&AuditCursor::after(&page.last().unwrap().0), end);
                // `through` alone bounds a page too.
                let bounded = store.audits(scope, after.as_ref(), Some(end), 100).await.unwrap();
                assert_eq!(bounded.len(), 4);
                // And whatever the limit: a scan reads page ends ahead, so a
                // page is every session up to its end.
                let bounded = store.audits(scope, after.as_ref(), Some(end), 1).await.unwrap();
                assert_eq!(bounded.len(), 4);
            }
            let Some((last, _)) = page.last() else { return seen };
            after = Some(AuditCursor::after(last));
            seen.extend(page);
        }
    };
    let end = |i: i64| UnixMillis(T0.0 + 3_600_000 + i * 1_000);
    for (scope, keep) in [
        (
            AuditScope::All,
            Box::new(|_: &ImportSession| true) as Box<dyn Fn(&ImportSession) -> bool>,
        ),
        (AuditScope::Open, Box::new(|s: &ImportSession| s.ended_at.is_none())),
        (
            AuditScope::EndedSince(end(2)),
            Box::new(move |s: &ImportSession| s.ended_at >= Some(end(2))),
        ),
        (
            AuditScope::EndedBetween(end(1), end(3)),
            Box::new(move |s: &ImportSession| {
                s.ended_at >= Some(end(1)) && s.ended_at < Some(end(3))
            }),
        ),
    ] {
        let mut expected: Vec<&ImportSession> = sessions.iter().filter(|s| keep(s)).collect();
        match scope {
            AuditScope::All | AuditScope::Open => expected.sort_by(|a, b| a.id.cmp(&b.id)),
            _ => expected.sort_by(|a, b| (a.ended_at, &a.id).cmp(&(b.ended_at, &b.id))),
        }
        let seen = page_all(scope).await;
        assert_eq!(
            seen.iter().map(|(session, _)| session.id.as_str()).collect::<Vec<_>>(),
            expected.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
            "{scope:?}"
        );
        for ((session, audit), imported) in seen.iter().zip(&expected) {
            assert_eq!(audit.events.len(), imported.events.len(), "{}", session.id);
            assert_eq!(
                audit.payouts,
                imported.payout.iter().map(|(amount, _)| *amount).collect::<Vec<_>>(),
                "{}",
                session.id
            );
            // Balanced postings are left out; the one unbalanced on purpose
            // is not, except on `All` pages: a scan of everything checks the
            // ledger in one pass.
            let unbalanced = if session.id == unbalanced_id && scope != AuditScope::All {
                vec![7]
            } else {
                vec![]
            };
            assert_eq!(audit.posting_sums, unbalanced, "{scope:?} {}", session.id);
        }
    }

    // The ledger in one pass, and by session.
    assert_eq!(store.ledger_imbalance(10).await.unwrap(), (1, vec![unbalanced_id.to_owned()]));
    let ids: Vec<String> = sessions.iter().map(|s| s.id.clone()).collect();
    let by_session = store.unbalanced_postings(&ids).await.unwrap();
    assert_eq!(by_session, [(unbalanced_id.to_owned(), vec![7])].into_iter().collect());
    assert!(store.unbalanced_postings(&ids[..4]).await.unwrap().is_empty());
}

/// The whole-ledger check counts sessions, not postings or lines, samples
/// the first in id order, and counts neither a posting balanced again nor
/// one with no lines.
async fn ledger_imbalance_counts_sessions_and_samples_in_id_order(fixture: Fixture) {
    use verdict_store::{ImportSession, PayoutState};
    let store = fixture.store.as_ref();
    assert_eq!(store.ledger_imbalance(10).await.unwrap(), (0, vec![]));
    let sessions: Vec<ImportSession> = (0..6)
        .map(|i| ImportSession {
            // Imported out of id order: the sample is in id order anyway.
            id: format!("led-{}", 5 - i),
            kind: Kind::Video,
            customer_id: "c1".into(),
            provider_id: "p1".into(),
            provider_account: None,
            price: Price { mode: PriceMode::Flat, amount: Cents(1_000), currency: "usd".into() },
            status: Status::Completed,
            reason: None,
            created_at: T0,
            ended_at: Some(UnixMillis(T0.0 + 600_000)),
            events: vec![
                (Party::Customer, true, UnixMillis(T0.0 + 1_000)),
                (Party::Provider, true, UnixMillis(T0.0 + 2_000)),
            ],
            payout: Some((Cents(800), PayoutState::Paid)),
            metadata: None,
        })
        .collect();
    store.import_sessions(sessions.clone(), "run-1", T0).await.unwrap();
    assert_eq!(store.ledger_imbalance(10).await.unwrap(), (0, vec![]), "imported books balance");
    // Two lines off on led-4's posting (one session), one on led-1 and one
    // on led-3 whose counterpart then restores the balance.
    macro_rules! line {
        ($cents:literal) => {
            concat!(
                "INSERT INTO ledger_lines (posting_id, account, amount_cents) \
                 SELECT id, 'platform:revenue', ",
                $cents,
                " FROM ledger_postings WHERE session_id = $1"
            )
        };
    }
    for (id, line) in [
        ("led-4", line!(3)),
        ("led-4", line!(4)),
        ("led-1", line!(-2)),
        ("led-3", line!(5)),
        ("led-3", line!(-5)),
    ] {
        fixture.execute(line, id).await;
    }
    // A second unbalanced posting of led-4 (still one session), and a
    // posting of led-2 with no lines at all (nothing to sum: not a finding,
    // as before).
    for (id, statement) in [
        (
            "led-4",
            "INSERT INTO ledger_postings (session_id, kind, currency, created_at) VALUES ($1, 'reversal', 'usd', 0)",
        ),
        (
            "led-4",
            "INSERT INTO ledger_lines (posting_id, account, amount_cents) SELECT id, 'platform:revenue', 9 FROM ledger_postings WHERE session_id = $1 AND kind = 'reversal'",
        ),
        (
            "led-2",
            "INSERT INTO ledger_postings (session_id, kind, currency, created_at) VALUES ($1, 'reversal', 'usd', 0)",
        ),
    ] {
        fixture.execute(statement, id).await;
    }
    assert_eq!(
        store.ledger_imbalance(10).await.unwrap(),
        (2, vec!["led-1".to_owned(), "led-4".to_owned()])
    );
    assert_eq!(store.ledger_imbalance(1).await.unwrap(), (2, vec!["led-1".to_owned()]));
    assert_eq!(store.ledger_imbalance(0).await.unwrap(), (2, vec![]));
    // By session, in chunks: the real ids after 2,494 unknown ones.
    let ids: Vec<String> = (0..2_494)
        .map(|i| format!("none-{i}"))
        .chain(sessions.iter().map(|s| s.id.clone()))
        .collect();
    let mut by_session = store.unbalanced_postings(&ids).await.unwrap();
    by_session.values_mut().for_each(|sums| sums.sort());
    assert_eq!(
        by_session,
        [("led-4".to_owned(), vec![7, 9]), ("led-1".to_owned(), vec![-2])].into_iter().collect()
    );
}

/// A page bounded by its end (on PostgreSQL read by binary `COPY`, a
/// reader of its own) gives every field of a session as `session` does:
/// an ended one with its outcome, presence and metadata, one ended in a
/// room (its finalization window open), an imported one and a waiting one.
async fn audit_pages_read_every_field_as_a_single_read_does(fixture: Fixture) {
    use verdict_store::{AuditCursor, AuditScope, ImportSession, PlatformRoom};
    let store = fixture.store.as_ref();
    let settings = Settings::default();
    live_session(store, "a-ended").await;
    store
        .end_session(
            "a-ended",
            &service(),
            None,
            EndCause::Requested,
            &settings,
            UnixMillis(T0.0 + 90_000),
        )
        .await
        .unwrap();
    let mut in_room = new_session("b-room");
    in_room.room = Some(PlatformRoom {
        room: "room-1".into(),
        customer_identity: "alice".into(),
        provider_identity: "bob".into(),
        presence_source: verdict_store::PresenceSource::Any,
    });
    store.create_session(in_room, &service(), None, T0).await.unwrap();
    let end_at = UnixMillis(T0.0 + 120_000);
    let ended = store
        .end_session("b-room", &service(), None, EndCause::Requested, &settings, end_at)
        .await
        .unwrap();
    assert!(ended.session.finalizes_at.is_some());
    let imported = ImportSession {
        id: "c-imported".into(),
        kind: Kind::Chat,
        customer_id: "c2".into(),
        provider_id: "p2".into(),
        provider_account: None,
        price: Price { mode: PriceMode::Flat, amount: Cents(900), currency: "eur".into() },
        status: Status::Cancelled,
        reason: None,
        created_at: T0,
        ended_at: Some(UnixMillis(T0.0 + 30_000)),
        events: vec![(Party::Customer, true, UnixMillis(T0.0 + 1_000))],
        payout: None,
        metadata: None,
    };
    store.import_sessions(vec![imported], "run-1", T0).await.unwrap();
    store.create_session(new_session("d-waiting"), &service(), None, T0).await.unwrap();

    // The ended ones once more through a windowed page: related rows by
    // id list, never by COPY.
    let windowed = store.audits(AuditScope::EndedSince(T0), None, None, 100).await.unwrap();
    assert_eq!(windowed.len(), 3);

    let mut after: Option<AuditCursor> = None;
    let mut seen = Vec::new();
    while let Some(end) = store.audit_page_end(AuditScope::All, after.as_ref(), 1).await.unwrap() {
        let page = store.audits(AuditScope::All, after.as_ref(), Some(&end), 1).await.unwrap();
        let [(session, audit)] = page.as_slice() else { panic!("{} sessions", page.len()) };
        assert_eq!(Some(session), store.session(&session.id).await.unwrap().as_ref());
        let events =
            if session.id == "a-ended" { 2 } else { usize::from(session.id == "c-imported") };
        assert_eq!(audit.events.len(), events, "{}", session.id);
        if session.id == "a-ended" {
            assert!(audit.policy.is_some());
            assert_eq!(audit.decided_at, session.ended_at());
        }
        if let Some(other) = windowed.iter().find(|(other, _)| other.id == session.id) {
            assert_eq!(format!("{:?}", (session, audit)), format!("{other:?}"), "{}", session.id);
        }
        seen.push(session.id.clone());
        after = Some(end);
    }
    assert_eq!(seen, ["a-ended", "b-room", "c-imported", "d-waiting"]);
}
