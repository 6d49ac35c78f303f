//! The decision rules (docs/presence.md), one test per rule, and the properties that
//! must hold for every history.

use proptest::prelude::*;
use verdict_core::{
    BillingBasis, Connection, EndCause, EndRequest, Outcome, Party, Policy, PresenceEvent,
    PresenceKind, Reason, SessionFacts, Status, UnixMillis, decide,
};

use Party::{Customer, Provider};
use PresenceKind::{Heartbeat, Joined, Left};

const T0: i64 = 1_700_000_000_000;

fn at(seconds: i64) -> UnixMillis {
    UnixMillis(T0 + seconds * 1000)
}

fn ev(party: Party, kind: PresenceKind, seconds: i64) -> PresenceEvent {
    PresenceEvent { party, kind, at: at(seconds), connection: Connection::OWN }
}

fn facts() -> SessionFacts {
    SessionFacts { created_at: at(0), scheduled_start: None, recorded: None }
}

fn requested(seconds: i64) -> EndRequest {
    EndRequest::new(at(seconds), EndCause::Requested)
}

/// Decide with the default policy, ended by a call at `end_seconds`, and
/// compare status, reason and billable seconds.
fn check(events: &[PresenceEvent], end_seconds: i64, expected: (Status, Reason, i64)) {
    let outcome = decide(&facts(), events, &Policy::default(), requested(end_seconds));
    assert_eq!((outcome.status, outcome.reason, outcome.billable_seconds), expected, "{events:?}");
}

#[test]
fn neither_party_joining_is_a_no_show_of_both() {
    check(&[], 1000, (Status::Cancelled, Reason::NoShowBoth, 0));
}

#[test]
fn a_missing_customer_is_a_customer_no_show() {
    check(&[ev(Provider, Joined, 10)], 1000, (Status::Cancelled, Reason::NoShowCustomer, 0));
}

#[test]
fn a_missing_provider_is_a_provider_no_show() {
    check(&[ev(Customer, Joined, 10)], 1000, (Status::Cancelled, Reason::NoShowProvider, 0));
}

#[test]
fn a_party_who_left_before_the_other_joined_never_overlapped() {
    let events = [ev(Customer, Joined, 0), ev(Customer, Left, 100), ev(Provider, Joined, 200)];
    check(&events, 1000, (Status::Cancelled, Reason::NeverOverlapped, 0));
}

#[test]
fn leaving_at_the_instant_the_other_joins_is_no_overlap() {
    let events = [ev(Customer, Joined, 0), ev(Customer, Left, 100), ev(Provider, Joined, 100)];
    check(&events, 1000, (Status::Cancelled, Reason::NeverOverlapped, 0));
}

#[test]
fn fifty_nine_seconds_together_is_too_short() {
    let events = [ev(Customer, Joined, 0), ev(Provider, Joined, 10), ev(Provider, Left, 69)];
    check(&events, 1000, (Status::Cancelled, Reason::TooShort, 59));
}

#[test]
fn exactly_sixty_seconds_together_completes() {
    let events = [ev(Customer, Joined, 0), ev(Provider, Joined, 10), ev(Provider, Left, 70)];
    check(&events, 1000, (Status::Completed, Reason::Completed, 60));
}

#[test]
fn billable_time_is_floored_to_whole_seconds() {
    let mut events = vec![ev(Customer, Joined, 0), ev(Provider, Joined, 0)];
    events.push(PresenceEvent {
        party: Provider,
        kind: Left,
        at: UnixMillis(at(60).0 - 1),
        connection: Connection::OWN,
    });
    check(&events, 1000, (Status::Cancelled, Reason::TooShort, 59));
}

#[test]
fn leave_and_rejoin_intervals_are_summed() {
    let events = [
        ev(Customer, Joined, 0),
        ev(Provider, Joined, 0),
        ev(Provider, Left, 40),
        ev(Provider, Joined, 100),
        ev(Provider, Left, 130),
    ];
    // 40 s + 30 s together; the gap does not count.
    check(&events, 1000, (Status::Completed, Reason::Completed, 70));
}

#[test]
fn parties_still_present_at_the_end_count_until_the_end() {
    let events = [ev(Customer, Joined, 0), ev(Provider, Joined, 30)];
    check(&events, 120, (Status::Completed, Reason::Completed, 90));
}

#[test]
fn wall_clock_basis_counts_from_start_to_end_regardless_of_gaps() {
    let events = [ev(Customer, Joined, 0), ev(Provider, Joined, 10), ev(Provider, Left, 40)];
    let policy = Policy { billing_basis: BillingBasis::WallClock, ..Policy::default() };
    let outcome = decide(&facts(), &events, &policy, requested(100));
    assert_eq!((outcome.status, outcome.billable_seconds), (Status::Completed, 90));
    let overlap = decide(&facts(), &events, &Policy::default(), requested(100));
    assert_eq!(
        (overlap.status, overlap.reason, overlap.billable_seconds),
        (Status::Cancelled, Reason::TooShort, 30)
    );
}

#[test]
fn billing_is_capped_at_the_maximum_duration() {
    let events = [ev(Customer, Joined, 0), ev(Provider, Joined, 0)];
    let policy = Policy { max_duration_seconds: 3600, ..Policy::default() };
    let outcome = decide(&facts(), &events, &policy, requested(5000));
    assert_eq!((outcome.status, outcome.billable_seconds), (Status::Completed, 3600));
}

#[test]
fn started_at_is_the_first_instant_both_are_present() {
    let events = [ev(Customer, Joined, 5), ev(Provider, Joined, 42)];
    let outcome = decide(&facts(), &events, &Policy::default(), requested(500));
    assert_eq!(outcome.started_at, Some(at(42)));
    assert_eq!(outcome.ended_at, at(500));
}

#[test]
fn a_terminal_session_keeps_its_recorded_outcome() {
    let recorded = Outcome {
        status: Status::Cancelled,
        reason: Reason::NoShowProvider,
        billable_seconds: 0,
        started_at: None,
        ended_at: at(10),
    };
    let session = SessionFacts { recorded: Some(recorded), ..facts() };
    let events = [ev(Customer, Joined, 0), ev(Provider, Joined, 0)];
    assert_eq!(decide(&session, &events, &Policy::default(), requested(5000)), recorded);
}

#[test]
fn the_sweeper_expires_a_session_that_never_started_at_its_deadline() {
    let events = [ev(Customer, Joined, 10)];
    let sweep = EndRequest::new(at(2000), EndCause::Sweeper);
    let outcome = decide(&facts(), &events, &Policy::default(), sweep);
    assert_eq!((outcome.status, outcome.reason), (Status::Expired, Reason::NoShowProvider));
    assert_eq!(outcome.ended_at, at(900), "ended at created_at + join grace");

    let scheduled = SessionFacts { scheduled_start: Some(at(600)), ..facts() };
    assert_eq!(decide(&scheduled, &events, &Policy::default(), sweep).ended_at, at(1500));
}

#[test]
fn an_explicit_end_of_a_never_started_session_is_cancelled_not_expired() {
    let outcome = decide(&facts(), &[], &Policy::default(), requested(5000));
    assert_eq!((outcome.status, outcome.reason), (Status::Cancelled, Reason::NoShowBoth));
}

#[test]
fn a_provider_whose_heartbeats_stop_is_absent_from_the_last_one() {
    let mut events = vec![ev(Customer, Joined, 0), ev(Provider, Joined, 0)];
    events.extend((1..=4).map(|n| ev(Provider, Heartbeat, n * 10)));
    let outcome = decide(&facts(), &events, &Policy::default(), requested(600));
    assert_eq!((outcome.status, outcome.billable_seconds), (Status::Cancelled, 40));
}

#[test]
fn events_after_the_end_instant_are_ignored() {
    let events = [ev(Customer, Joined, 0), ev(Provider, Joined, 0), ev(Provider, Left, 500)];
    check(&events, 100, (Status::Completed, Reason::Completed, 100));
}

// ---- properties ----------------------------------------------------------

fn arbitrary_event() -> impl Strategy<Value = PresenceEvent> {
    (
        prop_oneof![Just(Customer), Just(Provider)],
        prop_oneof![Just(Joined), Just(Left), Just(Heartbeat)],
        0i64..2_000_000,
    )
        .prop_map(|(party, kind, millis)| PresenceEvent {
            party,
            kind,
            at: UnixMillis(T0 + millis),
            connection: Connection::OWN,
        })
}

fn arbitrary_policy() -> impl Strategy<Value = Policy> {
    (0i64..400, any::<bool>(), 1i64..600, 60i64..3000).prop_map(|(min, wall, timeout, max)| {
        Policy {
            min_billable_seconds: min,
            billing_basis: if wall { BillingBasis::WallClock } else { BillingBasis::Overlap },
            presence_timeout_seconds: timeout,
            max_duration_seconds: max,
            ..Policy::default()
        }
    })
}

/// Presence as sorted, merged intervals per party (in seconds), turned into
/// join/leave events: histories where adding an interval only adds presence.
fn events_from_spans(customer: &[(i64, i64)], provider: &[(i64, i64)]) -> Vec<PresenceEvent> {
    fn merged(spans: &[(i64, i64)]) -> Vec<(i64, i64)> {
        let mut sorted: Vec<(i64, i64)> = spans.iter().map(|&(s, len)| (s, s + len)).collect();
        sorted.sort();
        let mut out: Vec<(i64, i64)> = Vec::new();
        for (start, end) in sorted {
            match out.last_mut() {
                Some(last) if start <= last.1 => last.1 = last.1.max(end),
                _ => out.push((start, end)),
            }
        }
        out
    }
    let mut events = Vec::new();
    for (party, spans) in [(Customer, customer), (Provider, provider)] {
        for (start, end) in merged(spans) {
            events.push(ev(party, Joined, start));
            events.push(ev(party, Left, end));
        }
    }
    events.sort_by_key(|event| event.at);
    events
}

fn spans() -> impl Strategy<Value = Vec<(i64, i64)>> {
    prop::collection::vec((0i64..3000, 1i64..400), 0..5)
}

/// Joins and leaves in recorded order, plus each party's last heartbeat,
/// on a coarse clock so that events often share an instant.
fn history_with_heartbeats() -> impl Strategy<Value = (Vec<PresenceEvent>, Vec<PresenceEvent>)> {
    let instant = || (0i64..8).prop_map(|step| UnixMillis(T0 + step * 75_000));
    let party = || prop_oneof![Just(Customer), Just(Provider)];
    let moves =
        prop::collection::vec((party(), prop_oneof![Just(Joined), Just(Left)], instant()), 0..12);
    let beats = prop::collection::vec((party(), instant()), 0..2);
    (moves, beats).prop_map(|(moves, beats)| {
        let mut moves: Vec<PresenceEvent> = moves
            .into_iter()
            .map(|(party, kind, at)| PresenceEvent { party, kind, at, connection: Connection::OWN })
            .collect();
        moves.sort_by_key(|event| event.at);
        let beats = beats
            .into_iter()
            .map(|(party, at)| PresenceEvent {
                party,
                kind: Heartbeat,
                at,
                connection: Connection::OWN,
            })
            .collect();
        (moves, beats)
    })
}

proptest! {
    /// The end and the verification assemble a session's history in
    /// different orders (recorded events then heartbeats, or the other way
    /// round): the decision must not depend on it.
    #[test]
    fn where_the_heartbeats_are_listed_does_not_change_the_decision(
        (moves, beats) in history_with_heartbeats(),
        policy in arbitrary_policy(),
        end in 0i64..700_000,
    ) {
        let end = EndRequest::new(UnixMillis(T0 + end), EndCause::Requested);
        let after: Vec<_> = moves.iter().chain(&beats).copied().collect();
        let before: Vec<_> = beats.iter().chain(&moves).copied().collect();
        prop_assert_eq!(
            decide(&facts(), &after, &policy, end),
            decide(&facts(), &before, &policy, end)
        );
    }

    #[test]
    fn deciding_twice_gives_the_same_outcome(
        events in prop::collection::vec(arbitrary_event(), 0..40),
        policy in arbitrary_policy(),
        end in 0i64..2_500_000,
        sweeper in any::<bool>(),
    ) {
        let cause = if sweeper { EndCause::Sweeper } else { EndCause::Requested };
        let end = EndRequest::new(UnixMillis(T0 + end), cause);
        let first = decide(&facts(), &events, &policy, end);
        prop_assert_eq!(first, decide(&facts(), &events, &policy, end));
        // And once recorded, deciding again returns the recorded outcome.
        let stored = SessionFacts { recorded: Some(first), ..facts() };
        let later = EndRequest::new(UnixMillis(end.at.0 + 10_000), EndCause::Requested);
        prop_assert_eq!(first, decide(&stored, &events, &policy, later));
    }

    #[test]
    fn more_overlap_never_turns_completed_into_cancelled(
        customer in spans(),
        provider in spans(),
        extra in (0i64..3000, 1i64..400),
        extra_for_customer in any::<bool>(),
        min in 0i64..600,
    ) {
        let policy = Policy { min_billable_seconds: min, ..Policy::default() };
        let end = requested(4000);
        let before = decide(&facts(), &events_from_spans(&customer, &provider), &policy, end);
        let (mut customer, mut provider) = (customer, provider);
        if extra_for_customer { customer.push(extra) } else { provider.push(extra) }
        let after = decide(&facts(), &events_from_spans(&customer, &provider), &policy, end);
        prop_assert!(after.billable_seconds >= before.billable_seconds);
        if before.status == Status::Completed {
            prop_assert_eq!(after.status, Status::Completed);
        }
    }

    #[test]
    fn overlap_is_never_more_than_wall_clock(
        events in prop::collection::vec(arbitrary_event(), 0..40),
        policy in arbitrary_policy(),
        end in 0i64..2_500_000,
    ) {
        let end = EndRequest::new(UnixMillis(T0 + end), EndCause::Requested);
        let overlap = decide(&facts(), &events, &Policy { billing_basis: BillingBasis::Overlap, ..policy }, end);
        let wall = decide(&facts(), &events, &Policy { billing_basis: BillingBasis::WallClock, ..policy }, end);
        prop_assert!(overlap.billable_seconds <= wall.billable_seconds);
        prop_assert_eq!(overlap.started_at, wall.started_at);
    }

    #[test]
    fn every_history_maps_to_exactly_one_consistent_reason(
        events in prop::collection::vec(arbitrary_event(), 0..40),
        policy in arbitrary_policy(),
        end in 0i64..2_500_000,
        sweeper in any::<bool>(),
    ) {
        let cause = if sweeper { EndCause::Sweeper } else { EndCause::Requested };
        let end = EndRequest::new(UnixMillis(T0 + end), cause);
        let outcome = decide(&facts(), &events, &policy, end);
        prop_assert!(outcome.status.is_terminal());
        prop_assert!(outcome.billable_seconds >= 0 && outcome.billable_seconds <= policy.max_duration_seconds);
        let joined = |party| events.iter().any(|e| e.party == party && e.kind == Joined && e.at <= end.at);
        match outcome.reason {
            Reason::Completed => {
                prop_assert_eq!(outcome.status, Status::Completed);
                prop_assert!(outcome.billable_seconds >= policy.min_billable_seconds);
                prop_assert!(outcome.started_at.is_some());
            }
            Reason::TooShort => {
                prop_assert_eq!(outcome.status, Status::Cancelled);
                prop_assert!(outcome.billable_seconds < policy.min_billable_seconds);
                prop_assert!(outcome.started_at.is_some());
            }
            never_started => {
                prop_assert!(outcome.started_at.is_none());
                prop_assert_eq!(outcome.billable_seconds, 0);
                prop_assert_eq!(never_started, Reason::for_never_started(joined(Customer), joined(Provider)));
                let expected = if sweeper { Status::Expired } else { Status::Cancelled };
                prop_assert_eq!(outcome.status, expected);
            }
        }
    }
}

// ---- the sweeper's schedule ----------------------------------------------

fn due(events: &[PresenceEvent], now_seconds: i64) -> Option<(i64, EndCause)> {
    verdict_core::sweep_due(&facts(), events, &Policy::default(), at(now_seconds))
        .map(|end| ((end.at.0 - T0) / 1000, end.cause))
}

#[test]
fn a_session_that_never_started_is_due_at_its_join_deadline() {
    let events = [ev(Customer, Joined, 10)];
    assert_eq!(due(&events, 899), None);
    assert_eq!(due(&events, 900), Some((900, EndCause::Sweeper)));
    assert_eq!(
        due(&events, 5000),
        Some((900, EndCause::Sweeper)),
        "the deadline, not the sweep time"
    );
}

#[test]
fn an_abandoned_session_is_due_at_its_last_departure() {
    let events = [
        ev(Customer, Joined, 0),
        ev(Provider, Joined, 0),
        ev(Provider, Left, 200),
        ev(Customer, Left, 260),
    ];
    assert_eq!(due(&events, 559), None, "absent for 299 s");
    assert_eq!(due(&events, 560), Some((260, EndCause::Sweeper)));
}

#[test]
fn a_present_party_keeps_a_session_alive_until_the_maximum_duration() {
    let events = [ev(Customer, Joined, 0), ev(Provider, Joined, 0), ev(Provider, Left, 100)];
    assert_eq!(due(&events, 10_000), None);
    assert_eq!(due(&events, 14_400), Some((14_400, EndCause::Sweeper)));
}

#[test]
fn stale_heartbeats_count_as_departures_for_abandonment() {
    let mut events = vec![ev(Customer, Joined, 0), ev(Provider, Joined, 0)];
    events.extend([ev(Customer, Heartbeat, 50), ev(Provider, Heartbeat, 80)]);
    // Both lapse (60 s after their last heartbeat); the last departure is 80.
    assert_eq!(due(&events, 379), None);
    assert_eq!(due(&events, 380), Some((80, EndCause::Sweeper)));
    // Judged at the sweep (380 s), the customer's heartbeats stopped at 50 s.
    let end = verdict_core::sweep_due(&facts(), &events, &Policy::default(), at(380)).unwrap();
    let outcome = decide(&facts(), &events, &Policy::default(), end);
    assert_eq!((outcome.status, outcome.billable_seconds), (Status::Cancelled, 50));
}

proptest! {
    #[test]
    fn a_due_session_ends_no_later_than_the_sweep_and_never_before_it_started(
        events in prop::collection::vec(arbitrary_event(), 0..30),
        now in 0i64..3_000_000,
    ) {
        let now = UnixMillis(T0 + now);
        if let Some(end) = verdict_core::sweep_due(&facts(), &events, &Policy::default(), now) {
            prop_assert!(end.at <= now);
            let outcome = decide(&facts(), &events, &Policy::default(), end);
            if let Some(started) = outcome.started_at {
                prop_assert!(started <= outcome.ended_at);
            }
            prop_assert!(outcome.ended_at >= facts().created_at);
        }
    }
}

/// Found by the store's seeded simulation: both parties join at one
/// instant, the customer's only heartbeat at that instant, the end 71 s
/// later. The end listed the heartbeat after the joins, verification
/// before them; both must decide alike.
#[test]
fn a_heartbeat_at_the_instant_of_the_join_counts_wherever_it_is_listed() {
    let at = UnixMillis(T0);
    let joins = [
        PresenceEvent { party: Customer, kind: Joined, at, connection: Connection::OWN },
        PresenceEvent { party: Provider, kind: Joined, at, connection: Connection::OWN },
    ];
    let beat = PresenceEvent { party: Customer, kind: Heartbeat, at, connection: Connection::OWN };
    let end = requested(71);
    let after = decide(&facts(), &[joins[0], joins[1], beat], &Policy::default(), end);
    let before = decide(&facts(), &[beat, joins[0], joins[1]], &Policy::default(), end);
    assert_eq!(after, before);
}

/// A video platform's view of a session: per party, up to four connections,
/// each a join and (usually) a leave, at whole seconds so that instants
/// often coincide. In time order, as the platform saw them.
fn platform_stream() -> impl Strategy<Value = Vec<PresenceEvent>> {
    // Ten-second steps and zero-length connections make instants collide.
    let connection = (
        (0i64..40).prop_map(|step| step * 10),
        // A leave may even be stamped before its join (whole seconds
        // against milliseconds).
        prop::option::of(prop_oneof![
            Just(0i64),
            Just(-5i64),
            (0i64..30).prop_map(|step| step * 10)
        ]),
    );
    (prop::collection::vec(connection.clone(), 0..4), prop::collection::vec(connection, 0..4))
        .prop_map(|(customer, provider)| {
            let mut events = Vec::new();
            for (party, spans) in [(Customer, customer), (Provider, provider)] {
                for (n, (start, length)) in spans.into_iter().enumerate() {
                    let connection =
                        Connection(n as u32 + 1 + if party == Provider { 10 } else { 0 });
                    events.push(PresenceEvent { party, kind: Joined, at: at(start), connection });
                    if let Some(length) = length {
                        let leave = at(start + length);
                        events.push(PresenceEvent { party, kind: Left, at: leave, connection });
                    }
                }
            }
            events.sort_by_key(|event| (event.at, event.kind == Left));
            events
        })
}

proptest! {
    /// Platforms deliver late, twice and out of order: any arrival order,
    /// with any events repeated, decides as the ordered stream does.
    #[test]
    fn platform_events_decide_alike_in_any_order_and_with_repeats(
        (ordered, delivered) in platform_stream().prop_flat_map(|ordered| {
            let repeats = prop::collection::vec(any::<prop::sample::Index>(), 0..6);
            (Just(ordered.clone()), (Just(ordered), repeats).prop_flat_map(|(events, repeats)| {
                let mut delivered = events.clone();
                if !events.is_empty() {
                    delivered.extend(repeats.iter().map(|index| *index.get(&events)));
                }
                Just(delivered).prop_shuffle()
            }))
        }),
        end in 0i64..800,
        policy in arbitrary_policy(),
    ) {
        let end = requested(end);
        prop_assert_eq!(
            decide(&facts(), &delivered, &policy, end),
            decide(&facts(), &ordered, &policy, end)
        );
    }
}

#[test]
fn a_reconnect_shorter_than_the_grace_does_not_cut_a_session_short() {
    // The customer drops out for 15 s in the middle of a 70 s meeting.
    let events = [
        ev(Customer, Joined, 0),
        ev(Provider, Joined, 0),
        ev(Customer, Left, 30),
        ev(Customer, Joined, 45),
    ];
    let policy = Policy { reconnect_grace_seconds: 20, ..Policy::default() };
    let outcome = decide(&facts(), &events, &policy, requested(70));
    assert_eq!((outcome.status, outcome.billable_seconds), (Status::Completed, 70));
    // Without the grace the 15 s are missing and the session is too short.
    let strict = Policy { reconnect_grace_seconds: 0, ..policy };
    let outcome = decide(&facts(), &events, &strict, requested(70));
    assert_eq!((outcome.status, outcome.reason), (Status::Cancelled, Reason::TooShort));
}
