//! `Store::receipt_faults` and the review counts, on both backends: the
//! receipts of sessions verdict ended, judged a batch at a time.

use verdict_core::{Cents, EndCause, Kind, Party, Price, PriceMode, Role, Status, UnixMillis};
use verdict_store::consistency::{FaultRange, ReviewCount};
use verdict_store::{Actor, ImportSession, Limits, NewRequest, NewSession, Settings};

#[macro_use]
mod common;

use common::Fixture;

const T0: UnixMillis = UnixMillis(1_800_000_000_000);

on_both!(
    receipts_are_judged_in_batches_that_resume_after_their_last_session,
    review_counts_are_replaced_whole_and_read_back_with_their_instant,
);

/// A video session between c1 and p1, not yet created.
fn session(id: &str) -> NewSession {
    NewSession {
        id: id.into(),
        kind: Kind::Video,
        customer_id: "c1".into(),
        provider_id: "p1".into(),
        provider_account: None,
        scheduled_start: None,
        price: Price { mode: PriceMode::Flat, amount: Cents(500), currency: "usd".into() },
        request_id: None,
        metadata: None,
        room: None,
    }
}

/// Sessions `ids`, each created and ended (a no-show) by the store.
async fn ended(fixture: &Fixture, ids: &[&str]) {
    let service = Actor { role: Role::Service, id: "platform".into() };
    for id in ids {
        fixture.store.create_session(session(id), &service, None, T0).await.unwrap();
        let settings = Settings::default();
        let at = UnixMillis(T0.0 + 1_000);
        fixture
            .store
            .end_session(id, &service, None, EndCause::Requested, &settings, at)
            .await
            .unwrap();
    }
}

/// Session `id`, made by accepting request `request` and ended by the
/// store.
async fn ended_from_request(fixture: &Fixture, id: &str, request: &str) {
    let service = Actor { role: Role::Service, id: "platform".into() };
    let provider = Actor { role: Role::Provider, id: "p1".into() };
    let new = NewRequest {
        id: request.into(),
        customer_id: "c1".into(),
        kind: Kind::Video,
        price: Price { mode: PriceMode::Flat, amount: Cents(500), currency: "usd".into() },
        candidate_provider_ids: vec!["p1".into()],
    };
    let limits = Limits::default();
    fixture.store.create_request(new, &service, None, &limits, T0).await.unwrap();
    fixture.store.accept_request(request, "p1", id, &provider, T0).await.unwrap();
    let at = UnixMillis(T0.0 + 1_000);
    fixture
        .store
        .end_session(id, &service, None, EndCause::Requested, &Settings::default(), at)
        .await
        .unwrap();
}

async fn receipts_are_judged_in_batches_that_resume_after_their_last_session(fixture: Fixture) {
    ended(&fixture, &["a", "b", "c", "d", "e"]).await;
    let store = fixture.store.as_ref();
    let everything = FaultRange::default();
    let clean = store.receipt_faults(everything, 100).await.unwrap();
    assert_eq!((clean.receipts.len(), clean.last), (0, None), "all whole, one batch");

    fixture.execute("DELETE FROM notifications WHERE session_id = $1", "b").await;
    fixture
        .execute(
            "UPDATE outbox SET topic = 'webhook:session.started' WHERE session_id = $1 \
             AND topic = 'webhook:session.ended'",
            "e",
        )
        .await;
    // Two a batch: a, b | c, d | e.
    let first = store.receipt_faults(everything, 2).await.unwrap();
    assert_eq!((first.receipts, first.last.as_deref()), (vec!["b".to_owned()], Some("b")));
    let range = FaultRange { after: Some("b"), ..everything };
    let second = store.receipt_faults(range, 2).await.unwrap();
    assert_eq!((second.receipts.len(), second.last.as_deref()), (0, Some("d")));
    let range = FaultRange { after: Some("d"), ..everything };
    let third = store.receipt_faults(range, 2).await.unwrap();
    assert_eq!((third.receipts, third.last), (vec!["e".to_owned()], None));
    // A bounded range, and a window that leaves every session out.
    let bounded = FaultRange { after: Some("a"), through: Some("d"), ..everything };
    assert_eq!(store.receipt_faults(bounded, 100).await.unwrap().receipts, ["b"]);
    let later = FaultRange { ended_since: Some(UnixMillis(T0.0 + 2_000)), ..everything };
    assert!(store.receipt_faults(later, 100).await.unwrap().receipts.is_empty());

    // A scan's batches (no window: on PostgreSQL each receipts table read
    // over the batch's id span) and the health pass's (a window: each
    // session probed) judge alike, a batch at a time. Damage now: c lost
    // its provider's notification, d names a request that does not exist,
    // f's request no longer carries its price.
    fixture
        .execute(
            "DELETE FROM notifications WHERE session_id = $1 AND recipient_role = 'provider'",
            "c",
        )
        .await;
    fixture.execute("UPDATE sessions SET request_id = 'r-gone' WHERE id = $1", "d").await;
    ended_from_request(&fixture, "f", "r1").await;
    // Within the span, sessions that are not judged but have receipts
    // rows: an open one, and an imported one.
    let service = Actor { role: Role::Service, id: "platform".into() };
    fixture.store.create_session(session("cc"), &service, None, T0).await.unwrap();
    let imported = ImportSession {
        id: "dd".into(),
        kind: Kind::Video,
        customer_id: "c1".into(),
        provider_id: "p1".into(),
        provider_account: None,
        price: Price { mode: PriceMode::Flat, amount: Cents(500), currency: "usd".into() },
        status: Status::Completed,
        reason: None,
        created_at: T0,
        ended_at: Some(UnixMillis(T0.0 + 600_000)),
        events: vec![(Party::Customer, true, UnixMillis(T0.0 + 1_000))],
        payout: None,
        metadata: None,
    };
    fixture.store.import_sessions(vec![imported], "run-1", T0).await.unwrap();
    for id in ["cc", "dd"] {
        fixture
            .execute(
                "INSERT INTO notifications (recipient_role, recipient_id, session_id, kind, \
                 created_at) VALUES ('customer', 'c1', $1, 'session_completed', 0)",
                id,
            )
            .await;
    }
    let page = FaultRange { through: Some("f"), ..everything };
    let window = FaultRange { ended_since: Some(T0), ..everything };
    for range in [everything, page, window] {
        let whole = store.receipt_faults(range, 100).await.unwrap();
        assert_eq!(
            (whole.receipts, whole.last),
            (strings(&["b", "c", "d", "e"]), None),
            "{range:?}"
        );
    }
    fixture.execute("UPDATE requests SET price_amount_cents = 900 WHERE id = $1", "r1").await;
    for range in [everything, page, window] {
        let whole = store.receipt_faults(range, 100).await.unwrap();
        assert_eq!(whole.receipts, ["b", "c", "d", "e", "f"], "{range:?}");
        let first = store.receipt_faults(range, 3).await.unwrap();
        assert_eq!(
            (first.receipts, first.last),
            (strings(&["b", "c"]), Some("c".into())),
            "{range:?}"
        );
        let rest = FaultRange { after: Some("c"), ..range };
        let rest = store.receipt_faults(rest, 3).await.unwrap();
        assert_eq!(
            (rest.receipts, rest.last),
            (strings(&["d", "e", "f"]), Some("f".into())),
            "{range:?}"
        );
        // After the last judged session: an empty batch, nothing to go on.
        let beyond =
            store.receipt_faults(FaultRange { after: Some("f"), ..range }, 3).await.unwrap();
        assert_eq!((beyond.receipts.len(), beyond.last), (0, None), "{range:?}");
    }
}

fn strings(ids: &[&str]) -> Vec<String> {
    ids.iter().map(|id| (*id).to_owned()).collect()
}

async fn review_counts_are_replaced_whole_and_read_back_with_their_instant(fixture: Fixture) {
    let store = fixture.store.as_ref();
    assert_eq!(store.review_counts().await.unwrap(), None, "no pass yet");
    let count = |kind: &str, reason: &str, sessions| ReviewCount {
        kind: kind.into(),
        reason: reason.into(),
        sessions,
    };
    let first = vec![count("chat", "*", 2), count("chat", "stuck_sessions", 2)];
    store.save_review_counts(&first, T0).await.unwrap();
    assert_eq!(store.review_counts().await.unwrap(), Some((T0, first)));
    let later = UnixMillis(T0.0 + 60_000);
    store.save_review_counts(&[], later).await.unwrap();
    assert_eq!(store.review_counts().await.unwrap(), Some((later, Vec::new())), "an empty queue");
}
