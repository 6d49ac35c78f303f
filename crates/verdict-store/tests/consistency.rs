//! `Store::receipt_faults` and the review counts, on both backends: the
//! receipts of sessions verdict ended, judged a batch at a time.

use verdict_core::{Cents, EndCause, Kind, Price, PriceMode, Role, UnixMillis};
use verdict_store::consistency::{FaultRange, ReviewCount};
use verdict_store::{Actor, Limits, NewRequest, NewSession, Settings};

#[macro_use]
mod common;

use common::Fixture;

const T0: UnixMillis = UnixMillis(1_800_000_000_000);

on_both!(
    receipts_are_judged_in_batches_that_resume_after_their_last_session,
    review_counts_are_replaced_whole_and_read_back_with_their_instant,
);

/// Sessions `ids`, each created and ended (a no-show) by the store.
async fn ended(fixture: &Fixture, ids: &[&str]) {
    let service = Actor { role: Role::Service, id: "platform".into() };
    for id in ids {
        let new = NewSession {
            id: (*id).into(),
            kind: Kind::Video,
            customer_id: "c1".into(),
            provider_id: "p1".into(),
            provider_account: None,
            scheduled_start: None,
            price: Price { mode: PriceMode::Flat, amount: Cents(500), currency: "usd".into() },
            request_id: None,
            metadata: None,
            room: None,
        };
        fixture.store.create_session(new, &service, None, T0).await.unwrap();
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

    // A page of the scan (a bounded range, no window) reads each receipts
    // table over the range; the health pass (a window) probes each
    // session: both judge alike, a batch at a time.
    fixture
        .execute(
            "DELETE FROM notifications WHERE session_id = $1 AND recipient_role = 'provider'",
            "c",
        )
        .await;
    // And a session whose request no longer carries its price.
    ended_from_request(&fixture, "f", "r1").await;
    let page = FaultRange { through: Some("f"), ..everything };
    let window = FaultRange { ended_since: Some(T0), ..everything };
    for range in [page, window] {
        let whole = store.receipt_faults(range, 100).await.unwrap();
        assert_eq!(whole.receipts, ["b", "c", "e"], "f is whole: {range:?}");
    }
    fixture.execute("UPDATE requests SET price_amount_cents = 900 WHERE id = $1", "r1").await;
    for range in [page, window] {
        let whole = store.receipt_faults(range, 100).await.unwrap();
        assert_eq!(whole.receipts, ["b", "c", "e", "f"], "{range:?}");
        let first = store.receipt_faults(range, 3).await.unwrap();
        assert_eq!(
            (first.receipts, first.last.as_deref()),
            (vec!["b".into(), "c".into()], Some("c"))
        );
        let rest = FaultRange { after: Some("c"), ..range };
        let rest = store.receipt_faults(rest, 3).await.unwrap();
        assert_eq!(
            (rest.receipts, rest.last),
            (vec!["e".into(), "f".into()], Some("f".into())),
            "{range:?}"
        );
    }
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
