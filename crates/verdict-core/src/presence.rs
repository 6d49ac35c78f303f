//! Presence: from a party's join, leave and heartbeat events to the intervals
//! in which it was present, and from two parties' intervals to their overlap.

use crate::policy::Policy;
use crate::types::{Party, UnixMillis};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PresenceKind {
    Joined,
    Left,
    Heartbeat,
}

/// Which connection of a party an event belongs to.
///
/// [`Connection::OWN`] is the party's own calls to verdict (join, leave,
/// heartbeat): one logical connection, taken in recording order. A video
/// platform reports each connection of a participant apart (a reconnect is a
/// new connection whose join may arrive before the old one's leave), so
/// each of those gets its own number, and the party is present while any of
/// its connections is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Connection(pub u32);

impl Connection {
    pub const OWN: Connection = Connection(0);

    /// The connection a platform names `name` (its participant sid or
    /// session id), `OWN` for none. A 32-bit FNV-1a hash, never 0. Two
    /// connections of one party in one session collide with a chance of
    /// about one in four billion per pair; they would then count as one
    /// connection from the first join to the last leave.
    pub fn named(name: Option<&str>) -> Connection {
        let Some(name) = name else { return Connection::OWN };
        let hash = name
            .bytes()
            .fold(0x811c_9dc5_u32, |hash, byte| (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193));
        Connection(hash.max(1))
    }
}

/// One thing seen of one party: by the server at its instant, or by a video
/// platform at the platform's instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PresenceEvent {
    pub party: Party,
    pub kind: PresenceKind,
    pub at: UnixMillis,
    pub connection: Connection,
}

impl PresenceEvent {
    /// An event of the party's own connection.
    pub fn own(party: Party, kind: PresenceKind, at: UnixMillis) -> PresenceEvent {
        PresenceEvent { party, kind, at, connection: Connection::OWN }
    }
}

/// A half-open span `[start, end)` with `start < end`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interval {
    pub start: UnixMillis,
    pub end: UnixMillis,
}

impl Interval {
    pub fn millis(&self) -> i64 {
        self.end.millis_since(self.start)
    }
}

/// The intervals in which `party` was present up to `until`, sorted and
/// disjoint.
///
/// Rules (docs/presence.md): a join opens an interval, a leave closes it, `until`
/// closes whatever is still open. A party that has sent a heartbeat in its
/// current interval and whose last heartbeat is older than
/// `presence_timeout_seconds` is absent since that heartbeat; a later
/// heartbeat (a reconnect without a new join) opens a new interval. A party
/// that never heartbeats is present from its join to its leave. Events after
/// `until` are ignored. Each connection is replayed apart, in time order;
/// the party is present while any connection is, and an absence shorter
/// than `reconnect_grace_seconds` between two presences does not count.
pub fn intervals_of(
    events: &[PresenceEvent],
    party: Party,
    until: UnixMillis,
    policy: &Policy,
) -> Vec<Interval> {
    intervals_judged(events, party, until, until, policy)
}

/// [`intervals_of`] cut at `until`, with heartbeat staleness judged at
/// `judged_at` (≥ `until`): what we know at `judged_at` about presence up
/// to `until`.
pub fn intervals_judged(
    events: &[PresenceEvent],
    party: Party,
    until: UnixMillis,
    judged_at: UnixMillis,
    policy: &Policy,
) -> Vec<Interval> {
    let mut own: Vec<&PresenceEvent> =
        events.iter().filter(|event| event.party == party && event.at <= until).collect();
    // Time order per connection, whatever order the events came in. On the
    // party's own connection a heartbeat comes after the joins and leaves of
    // its instant (a party is seen once it is there), and joins and leaves
    // keep their recorded order (the server records them in the order it
    // saw them).
    own.sort_by_key(|event| (event.connection, event.at, event.kind == PresenceKind::Heartbeat));

    let timeout_millis = policy.presence_timeout_seconds.saturating_mul(1000);
    let mut intervals = Vec::new();
    for connection in own.chunk_by(|a, b| a.connection == b.connection) {
        if connection[0].connection != Connection::OWN {
            intervals.extend(platform_connection(connection, until));
            continue;
        }
        let mut tracker = Tracker {
            timeout_millis,
            open: None,
            last_heartbeat: None,
            lapsed: false,
            intervals: Vec::new(),
        };
        for event in connection {
            tracker.replay(event);
        }
        tracker.expire_if_stale(judged_at.max(until));
        tracker.close(until);
        intervals.append(&mut tracker.intervals);
    }
    intervals.sort_by_key(|interval| interval.start);
    merge_gaps(intervals, policy.reconnect_grace_seconds.saturating_mul(1000))
}

/// The presence of one platform connection: it joins once and leaves
/// once, so it is present from its first join to its last leave (or
/// `until`), whatever order its events came in and whichever clock stamped
/// them — a leave stamped before its join (a platform counting leaves in
/// whole seconds) closes it at once.
fn platform_connection(events: &[&PresenceEvent], until: UnixMillis) -> Option<Interval> {
    let joined = events.iter().filter(|e| e.kind == PresenceKind::Joined).map(|e| e.at).min()?;
    let left = events.iter().filter(|e| e.kind == PresenceKind::Left).map(|e| e.at).max();
    let end = left.map_or(until, |left| left.max(joined));
    (joined < end).then_some(Interval { start: joined, end })
}

/// Sorted intervals with every overlap joined and every gap shorter than
/// `grace_millis` bridged.
fn merge_gaps(intervals: Vec<Interval>, grace_millis: i64) -> Vec<Interval> {
    let mut merged: Vec<Interval> = Vec::with_capacity(intervals.len());
    for interval in intervals {
        match merged.last_mut() {
            Some(last) if interval.start.millis_since(last.end) < grace_millis.max(1) => {
                last.end = last.end.max(interval.end);
            }
            _ => merged.push(interval),
        }
    }
    merged
}

/// The state of one party while its events are replayed.
struct Tracker {
    timeout_millis: i64,
    /// Start of the interval in progress.
    open: Option<UnixMillis>,
    /// Last heartbeat inside the interval in progress.
    last_heartbeat: Option<UnixMillis>,
    /// Joined and never left, but timed out: a heartbeat revives the party.
    lapsed: bool,
    intervals: Vec<Interval>,
}

impl Tracker {
    fn replay(&mut self, event: &PresenceEvent) {
        self.expire_if_stale(event.at);
        match event.kind {
            PresenceKind::Joined => {
                if self.open.is_none() {
                    self.open = Some(event.at);
                    self.lapsed = false;
                }
            }
            PresenceKind::Left => {
                self.close(event.at);
                self.lapsed = false;
            }
            PresenceKind::Heartbeat => {
                if self.open.is_some() {
                    self.last_heartbeat = Some(event.at);
                } else if self.lapsed {
                    self.open = Some(event.at);
                    self.last_heartbeat = Some(event.at);
                    self.lapsed = false;
                }
            }
        }
    }

    fn close(&mut self, end: UnixMillis) {
        if let Some(start) = self.open.take()
            && start < end
        {
            self.intervals.push(Interval { start, end });
        }
        self.last_heartbeat = None;
    }

    fn expire_if_stale(&mut self, at: UnixMillis) {
        if let (Some(_), Some(heartbeat)) = (self.open, self.last_heartbeat)
            && at.millis_since(heartbeat) > self.timeout_millis
        {
            self.close(heartbeat);
            self.lapsed = true;
        }
    }
}

/// The spans both interval lists (sorted, disjoint) cover at once, in
/// order.
pub fn intersections<'a>(
    a: &'a [Interval],
    b: &'a [Interval],
) -> impl Iterator<Item = Interval> + 'a {
    let (mut i, mut j) = (0, 0);
    std::iter::from_fn(move || {
        while i < a.len() && j < b.len() {
            let start = a[i].start.max(b[j].start);
            let end = a[i].end.min(b[j].end);
            if a[i].end <= b[j].end {
                i += 1;
            } else {
                j += 1;
            }
            if start < end {
                return Some(Interval { start, end });
            }
        }
        None
    })
}

/// Total time both interval lists cover at once, in milliseconds, and the
/// first instant of that overlap (`None` if they never overlap).
pub fn overlap(a: &[Interval], b: &[Interval]) -> (i64, Option<UnixMillis>) {
    intersections(a, b)
        .fold((0, None), |(total, first), both| (total + both.millis(), first.or(Some(both.start))))
}

/// When `party`'s current explicit presence on its own connection began:
/// the instant of its last join if no leave followed it (heartbeats aside),
/// else `None`.
pub fn open_since(events: &[PresenceEvent], party: Party) -> Option<UnixMillis> {
    let mut own: Vec<&PresenceEvent> = events
        .iter()
        .filter(|event| {
            event.party == party
                && event.connection == Connection::OWN
                && event.kind != PresenceKind::Heartbeat
        })
        .collect();
    own.sort_by_key(|event| event.at);
    let mut open = None;
    for event in own {
        match event.kind {
            PresenceKind::Joined if open.is_none() => open = Some(event.at),
            PresenceKind::Left => open = None,
            _ => {}
        }
    }
    open
}

/// Who is present at instant `at`, judged from the events recorded so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Presence {
    pub customer: bool,
    pub provider: bool,
}

/// Whether each party is present at `at` (used on join to detect the start).
pub fn presence_at(events: &[PresenceEvent], at: UnixMillis, policy: &Policy) -> Presence {
    // An interval still open at `at` ends exactly at `at`, so ask about the
    // instant just after the last event.
    let probe = UnixMillis(at.0.saturating_add(1));
    let present = |party| {
        intervals_of(events, party, probe, policy)
            .last()
            .is_some_and(|interval| interval.end == probe)
    };
    Presence { customer: present(Party::Customer), provider: present(Party::Provider) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(party: Party, kind: PresenceKind, seconds: i64) -> PresenceEvent {
        PresenceEvent::own(party, kind, UnixMillis(seconds * 1000))
    }

    /// An event of the platform connection `connection`.
    fn on(connection: u32, party: Party, kind: PresenceKind, seconds: i64) -> PresenceEvent {
        PresenceEvent { connection: Connection(connection), ..ev(party, kind, seconds) }
    }

    /// Heartbeat timeout `timeout` seconds, no reconnect grace.
    fn timeout(timeout: i64) -> Policy {
        Policy {
            presence_timeout_seconds: timeout,
            reconnect_grace_seconds: 0,
            ..Policy::default()
        }
    }

    fn spans(intervals: &[Interval]) -> Vec<(i64, i64)> {
        intervals.iter().map(|i| (i.start.0 / 1000, i.end.0 / 1000)).collect()
    }

    use Party::Customer as C;
    use PresenceKind::{Heartbeat as H, Joined as J, Left as L};

    #[test]
    fn join_and_leave_make_an_interval_and_the_end_closes_an_open_one() {
        let events = [ev(C, J, 10), ev(C, L, 20), ev(C, J, 30)];
        assert_eq!(
            spans(&intervals_of(&events, C, UnixMillis(50_000), &timeout(60))),
            [(10, 20), (30, 50)]
        );
    }

    #[test]
    fn repeated_joins_and_stray_leaves_change_nothing() {
        let events = [ev(C, L, 5), ev(C, J, 10), ev(C, J, 15), ev(C, L, 20), ev(C, L, 25)];
        assert_eq!(spans(&intervals_of(&events, C, UnixMillis(50_000), &timeout(60))), [(10, 20)]);
    }

    #[test]
    fn a_stale_heartbeat_makes_the_party_absent_from_that_heartbeat() {
        let events = [ev(C, J, 0), ev(C, H, 30), ev(C, H, 40)];
        assert_eq!(spans(&intervals_of(&events, C, UnixMillis(300_000), &timeout(60))), [(0, 40)]);
        // Exactly at the timeout the heartbeat is not yet older than it.
        assert_eq!(spans(&intervals_of(&events, C, UnixMillis(100_000), &timeout(60))), [(0, 100)]);
    }

    #[test]
    fn a_heartbeat_after_a_lapse_reopens_presence() {
        let events = [ev(C, J, 0), ev(C, H, 10), ev(C, H, 200), ev(C, L, 250)];
        assert_eq!(
            spans(&intervals_of(&events, C, UnixMillis(300_000), &timeout(60))),
            [(0, 10), (200, 250)]
        );
    }

    #[test]
    fn heartbeats_without_a_join_are_not_presence() {
        let events = [ev(C, H, 10), ev(C, H, 20)];
        assert!(intervals_of(&events, C, UnixMillis(30_000), &timeout(60)).is_empty());
    }

    #[test]
    fn overlap_sums_every_common_span_and_reports_the_first() {
        let a = [
            Interval { start: UnixMillis(0), end: UnixMillis(10) },
            Interval { start: UnixMillis(20), end: UnixMillis(30) },
        ];
        let b = [Interval { start: UnixMillis(5), end: UnixMillis(25) }];
        assert_eq!(overlap(&a, &b), (10, Some(UnixMillis(5))));
        assert_eq!(overlap(&a, &[]), (0, None));
    }

    #[test]
    fn presence_at_reports_who_is_in_the_room_now() {
        let events = [ev(C, J, 0), ev(Party::Provider, J, 5), ev(Party::Provider, L, 8)];
        let now = presence_at(&events, UnixMillis(8_000), &timeout(60));
        assert_eq!(now, Presence { customer: true, provider: false });
    }

    #[test]
    fn a_party_is_present_while_any_of_its_connections_is() {
        // A reconnect: the new connection's join (at 30) reaches us before
        // the old one's leave (at 31).
        let events = [on(1, C, J, 10), on(2, C, J, 30), on(1, C, L, 31), on(2, C, L, 90)];
        assert_eq!(spans(&intervals_of(&events, C, UnixMillis(100_000), &timeout(60))), [(10, 90)]);
    }

    #[test]
    fn a_platform_connection_joining_and_leaving_in_one_instant_is_never_present() {
        let events = [on(1, C, L, 10), on(1, C, J, 10)];
        assert!(intervals_of(&events, C, UnixMillis(100_000), &timeout(60)).is_empty());
        // A leave stamped before its join (whole seconds against
        // milliseconds) closes the connection at once, never leaves it open.
        let events = [
            PresenceEvent { at: UnixMillis(10_500), ..on(1, C, J, 0) },
            PresenceEvent { at: UnixMillis(10_000), ..on(1, C, L, 0) },
        ];
        assert!(intervals_of(&events, C, UnixMillis(100_000), &timeout(60)).is_empty());
    }

    #[test]
    fn absences_shorter_than_the_reconnect_grace_do_not_split_presence() {
        let events = [ev(C, J, 0), ev(C, L, 10), ev(C, J, 29), ev(C, L, 40), ev(C, J, 60)];
        let policy = Policy { reconnect_grace_seconds: 20, ..timeout(60) };
        // 19 s away is bridged; exactly 20 s is not.
        assert_eq!(
            spans(&intervals_of(&events, C, UnixMillis(70_000), &policy)),
            [(0, 40), (60, 70)]
        );
        // A leave with no rejoin is a leave, grace or not.
        assert_eq!(spans(&intervals_of(&events, C, UnixMillis(50_000), &policy)), [(0, 40)]);
    }
}
