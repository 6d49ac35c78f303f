//! `decide()` on realistic histories (divan): `cargo bench -p verdict-core`.

use verdict_core::{
    Connection, EndCause, EndRequest, Party, Policy, PresenceEvent, PresenceKind, SessionFacts,
    UnixMillis,
};

fn main() {
    divan::main();
}

const T0: UnixMillis = UnixMillis(1_800_000_000_000);

/// `events` joins, leaves and heartbeats of both parties over an hour: a
/// session with reconnects.
fn history(events: usize) -> Vec<PresenceEvent> {
    (0..events)
        .map(|n| {
            let party = if n % 2 == 0 { Party::Customer } else { Party::Provider };
            let kind = match (n / 2) % 3 {
                0 => PresenceKind::Joined,
                1 => PresenceKind::Heartbeat,
                _ => PresenceKind::Left,
            };
            PresenceEvent {
                party,
                kind,
                at: UnixMillis(T0.0 + n as i64 * 90_000),
                connection: Connection::OWN,
            }
        })
        .collect()
}

#[divan::bench(args = [4, 20, 100])]
fn decide(bencher: divan::Bencher, events: usize) {
    let history = history(events);
    let facts = SessionFacts { created_at: T0, scheduled_start: None, recorded: None };
    let policy = Policy::default();
    let end = EndRequest::new(UnixMillis(T0.0 + 3_600_000), EndCause::Requested);
    bencher.bench(|| {
        verdict_core::decide(
            divan::black_box(&facts),
            divan::black_box(&history),
            divan::black_box(&policy),
            divan::black_box(end),
        )
    });
}
