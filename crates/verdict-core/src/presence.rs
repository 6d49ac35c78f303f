//! Presence: from a party's join, leave and heartbeat events to the intervals
//! in which it was present, and from two parties' intervals to their overlap.

use crate::types::{Party, UnixMillis};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PresenceKind {
    Joined,
    Left,
    Heartbeat,
}

/// One thing the server saw of one party, at the server's instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PresenceEvent {
    pub party: Party,
    pub kind: PresenceKind,
    pub at: UnixMillis,
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
/// Rules (SPEC §2): a join opens an interval, a leave closes it, `until`
/// closes whatever is still open. A party that has sent a heartbeat in its
/// current interval and whose last heartbeat is older than
/// `presence_timeout_seconds` is absent since that heartbeat; a later
/// heartbeat (a reconnect without a new join) opens a new interval. A party
/// that never heartbeats is present from its join to its leave. Events after
/// `until` are ignored; events are taken in time order (stable for equal
/// instants, so recording order breaks ties).
pub fn intervals_of(
    events: &[PresenceEvent],
    party: Party,
    until: UnixMillis,
    presence_timeout_seconds: i64,
) -> Vec<Interval> {
    intervals_judged(events, party, until, until, presence_timeout_seconds)
}

/// [`intervals_of`] cut at `until`, with heartbeat staleness judged at
/// `judged_at` (≥ `until`): what we know at `judged_at` about presence up
/// to `until`.
pub fn intervals_judged(
    events: &[PresenceEvent],
    party: Party,
    until: UnixMillis,
    judged_at: UnixMillis,
    presence_timeout_seconds: i64,
) -> Vec<Interval> {
    let mut own: Vec<&PresenceEvent> =
        events.iter().filter(|event| event.party == party && event.at <= until).collect();
    // A heartbeat comes after the joins and leaves of its instant (a party
    // is seen once it is there), and joins and leaves keep their recorded
    // order: the outcome never depends on how the caller listed them.
    own.sort_by_key(|event| (event.at, event.kind == PresenceKind::Heartbeat));

    let mut tracker = Tracker {
        timeout_millis: presence_timeout_seconds.saturating_mul(1000),
        open: None,
        last_heartbeat: None,
        lapsed: false,
        intervals: Vec::new(),
    };
    for event in own {
        tracker.expire_if_stale(event.at);
        match event.kind {
            PresenceKind::Joined => {
                if tracker.open.is_none() {
                    tracker.open = Some(event.at);
                    tracker.lapsed = false;
                }
            }
            PresenceKind::Left => {
                tracker.close(event.at);
                tracker.lapsed = false;
            }
            PresenceKind::Heartbeat => {
                if tracker.open.is_some() {
                    tracker.last_heartbeat = Some(event.at);
                } else if tracker.lapsed {
                    tracker.open = Some(event.at);
                    tracker.last_heartbeat = Some(event.at);
                    tracker.lapsed = false;
                }
            }
        }
    }
    tracker.expire_if_stale(judged_at.max(until));
    tracker.close(until);
    tracker.intervals
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

/// When `party`'s current explicit presence began: the instant of its last
/// join if no leave followed it (heartbeats aside), else `None`.
pub fn open_since(events: &[PresenceEvent], party: Party) -> Option<UnixMillis> {
    let mut own: Vec<&PresenceEvent> = events
        .iter()
        .filter(|event| event.party == party && event.kind != PresenceKind::Heartbeat)
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
pub fn presence_at(
    events: &[PresenceEvent],
    at: UnixMillis,
    presence_timeout_seconds: i64,
) -> Presence {
    // An interval still open at `at` ends exactly at `at`, so ask about the
    // instant just after the last event.
    let probe = UnixMillis(at.0.saturating_add(1));
    let present = |party| {
        intervals_of(events, party, probe, presence_timeout_seconds)
            .last()
            .is_some_and(|interval| interval.end == probe)
    };
    Presence { customer: present(Party::Customer), provider: present(Party::Provider) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(party: Party, kind: PresenceKind, seconds: i64) -> PresenceEvent {
        PresenceEvent { party, kind, at: UnixMillis(seconds * 1000) }
    }

    fn spans(intervals: &[Interval]) -> Vec<(i64, i64)> {
        intervals.iter().map(|i| (i.start.0 / 1000, i.end.0 / 1000)).collect()
    }

    use Party::Customer as C;
    use PresenceKind::{Heartbeat as H, Joined as J, Left as L};

    #[test]
    fn join_and_leave_make_an_interval_and_the_end_closes_an_open_one() {
        let events = [ev(C, J, 10), ev(C, L, 20), ev(C, J, 30)];
        assert_eq!(spans(&intervals_of(&events, C, UnixMillis(50_000), 60)), [(10, 20), (30, 50)]);
    }

    #[test]
    fn repeated_joins_and_stray_leaves_change_nothing() {
        let events = [ev(C, L, 5), ev(C, J, 10), ev(C, J, 15), ev(C, L, 20), ev(C, L, 25)];
        assert_eq!(spans(&intervals_of(&events, C, UnixMillis(50_000), 60)), [(10, 20)]);
    }

    #[test]
    fn a_stale_heartbeat_makes_the_party_absent_from_that_heartbeat() {
        let events = [ev(C, J, 0), ev(C, H, 30), ev(C, H, 40)];
        assert_eq!(spans(&intervals_of(&events, C, UnixMillis(300_000), 60)), [(0, 40)]);
        // Exactly at the timeout the heartbeat is not yet older than it.
        assert_eq!(spans(&intervals_of(&events, C, UnixMillis(100_000), 60)), [(0, 100)]);
    }

    #[test]
    fn a_heartbeat_after_a_lapse_reopens_presence() {
        let events = [ev(C, J, 0), ev(C, H, 10), ev(C, H, 200), ev(C, L, 250)];
        assert_eq!(
            spans(&intervals_of(&events, C, UnixMillis(300_000), 60)),
            [(0, 10), (200, 250)]
        );
    }

    #[test]
    fn heartbeats_without_a_join_are_not_presence() {
        let events = [ev(C, H, 10), ev(C, H, 20)];
        assert!(intervals_of(&events, C, UnixMillis(30_000), 60).is_empty());
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
        let now = presence_at(&events, UnixMillis(8_000), 60);
        assert_eq!(now, Presence { customer: true, provider: false });
    }
}
