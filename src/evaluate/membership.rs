//! Journey membership in event time, for re-entry `after_finish`.
//!
//! A customer is in a journey from an entry event's `occurred_at` until the last step's due time
//! (entry + its wait) or the first exit event at or after the entry, whichever comes first.
//! Events at one instant are in id order: a match and an exit at the same time, the one stored
//! first comes first; a match at the due time is after it. An
//! entry is a fired or held-out decision: the control group enters as the treated group does.
//! Neither delivery nor arrival order has a say: exits count by their event time, late ones
//! included, and so do the entries stored by earlier statements.
//!
//! A match enters unless it lies within an earlier entry's membership, or its own membership would
//! hold an entry stored by an earlier statement (a late match, older than a stored entry: the
//! stored one stands, since its messages may be out). Matches are taken in event order, so a
//! history gives the same entries whether it arrives in one statement, in any row order, or in
//! event order over many; out of event order across statements, the entries already made stand.

use super::probe::{Key, Probe};
use super::Match;
use crate::policy::{Candidate, Reason};
use crate::rule::CancelOn;
use crate::stored::StoredOutcome;
use std::collections::HashMap;

/// An entry into a journey, made or possible: its event, and where its membership ends, as a
/// place in the order of events, (event time, event id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub event_id: i64,
    pub at: i64,
    pub end: (i64, i64),
}

impl Entry {
    fn place(&self) -> (i64, i64) {
        (self.at, self.event_id)
    }
}

/// Which of `candidates` (in event order) enter, given the entries `stored` by earlier
/// statements: each enters unless it lies within the membership of an entry before it (stored,
/// or a candidate that entered), or its own membership would hold a later stored entry.
pub fn admit(stored: &[Entry], candidates: &[Entry]) -> Vec<bool> {
    let mut entered: Vec<Entry> = Vec::new();
    candidates
        .iter()
        .map(|c| {
            let inside = stored.iter().chain(&entered).any(|e| e.place() < c.place() && c.place() < e.end);
            let holds_stored = stored.iter().any(|s| c.place() < s.place() && s.place() < c.end);
            let enters = !inside && !holds_stored;
            if enters {
                entered.push(*c);
            }
            enters
        })
        .collect()
}

/// An exit event of a customer, as read.
struct Exit {
    id: i64,
    name: String,
    at: i64,
    properties: serde_json::Value,
}

/// Where the membership of an entry at `at` ends: `journey` later (before any event of that
/// instant), or at the first exit event at or after it (other than the entry event) that matches
/// an exit condition, correlated by `same` with the entry event's properties, as the exit cancels
/// the journey's steps.
fn membership_end(
    (event_id, at): (i64, i64),
    properties: &serde_json::Value,
    journey: i64,
    exit: &[CancelOn],
    exits: &[Exit],
) -> (i64, i64) {
    // Per condition: the event name and, when correlated, the values the exit must hold.
    let wanted: Vec<(&str, Option<serde_json::Value>)> = exit
        .iter()
        .map(|c| (c.event.as_str(), (!c.same.is_empty()).then(|| super::correlation(c, properties))))
        .collect();
    let last_due = at.saturating_add(journey);
    exits
        .iter()
        .filter(|x| x.at >= at && x.at < last_due && x.id != event_id)
        .filter(|x| {
            wanted.iter().any(|(name, same)| {
                *name == x.name && same.as_ref().is_none_or(|same| crate::jsonb::contains(&x.properties, same))
            })
        })
        .map(|x| (x.at, x.id))
        .min()
        .unwrap_or((last_due, i64::MIN))
}

/// The statement's `after_finish` matches of one customer and journey, and its stored entries.
struct Group {
    /// (candidate index, entry), in event order.
    candidates: Vec<(usize, Entry)>,
    stored: Vec<Entry>,
}

/// What membership decisions need, read once per statement.
pub struct Memberships {
    groups: Vec<Group>,
}

/// Reads, for each customer and `after_finish` journey of the statement's matches, the journey's
/// stored entries and the exit events that can end a membership that matters to its matches.
/// Runs under the customers' locks.
pub fn read(matches: &[Match], customers: &[String]) -> Memberships {
    let mut by_group: HashMap<(usize, i32), Vec<usize>> = HashMap::new();
    for (i, m) in matches.iter().enumerate() {
        let definition = &m.rule.definition;
        if definition.reentry == crate::rule::journey::Reentry::AfterFinish && definition.journey_micros() > 0 {
            by_group.entry((m.event.customer, m.rule.id)).or_default().push(i);
        }
    }
    let mut groups: Vec<((usize, i32), Vec<usize>)> = by_group.into_iter().collect();
    if groups.is_empty() {
        return Memberships { groups: Vec::new() };
    }
    groups.sort_unstable();

    let mut decisions = Probe::open(c"decisions", c"decisions_counted", 4);
    let (event_id, occurred_at, outcome) =
        (decisions.column(c"event_id"), decisions.column(c"occurred_at"), decisions.column(c"outcome"));
    let mut events = Probe::open(c"events", c"events_customer_name_time", 4).skipping_in_flight();
    let (id_column, occurred_at_column, properties_column) =
        (events.column(c"id"), events.column(c"occurred_at"), events.column(c"properties"));
    // Entry events' properties, only for exits correlated by `same`.
    let mut by_id = groups
        .iter()
        .any(|(_, indexes)| matches[indexes[0]].rule.definition.exit.iter().any(|c| !c.same.is_empty()))
        .then(|| {
            let probe = Probe::open(c"events", c"events_pkey", 1);
            let properties = probe.column(c"properties");
            (probe, properties)
        });

    let mut memberships = Memberships { groups: Vec::with_capacity(groups.len()) };
    for ((customer, trigger_id), indexes) in groups {
        let definition = &matches[indexes[0]].rule.definition;
        let journey = definition.journey_micros();
        let customer_id = customers[customer].as_str();
        let first = indexes.iter().map(|&i| matches[i].event.occurred_at).min().unwrap_or_default();
        let last = indexes.iter().map(|&i| matches[i].event.occurred_at).max().unwrap_or_default();
        let (from, to) = (first.saturating_sub(journey), last.saturating_add(journey));
        let correlated = definition.exit.iter().any(|c| !c.same.is_empty());

        let mut exits: Vec<Exit> = Vec::new();
        let mut names: Vec<&str> = definition.exit.iter().map(|c| c.event.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        for name in names {
            let keys = [
                Key::text_eq(1, customer_id),
                Key::text_eq(2, name),
                Key::timestamptz_ge(3, from),
                Key::timestamptz_le(3, to),
            ];
            events.for_each(&keys, |row| {
                let (Some(id), Some(at)) = (row.int8(id_column), row.timestamptz(occurred_at_column)) else { return };
                let properties = if correlated { row.json(properties_column) } else { serde_json::Value::Null };
                exits.push(Exit { id, name: name.to_string(), at, properties });
            });
        }

        // Entries stored by earlier statements: fired or held-out decisions (the index holds no
        // suppressed ones).
        let mut stored: Vec<(i64, i64)> = Vec::new();
        let keys = [
            Key::text_eq(1, customer_id),
            Key::int4_eq(2, trigger_id),
            Key::timestamptz_ge(3, from),
            Key::timestamptz_le(3, to),
        ];
        decisions.for_each(&keys, |row| {
            let counted = row.text(outcome).as_deref().and_then(StoredOutcome::parse);
            if let (Some(id), Some(at), Some(StoredOutcome::Fired | StoredOutcome::HeldOut)) =
                (row.int8(event_id), row.timestamptz(occurred_at), counted)
            {
                stored.push((id, at));
            }
        });
        let stored: Vec<Entry> = stored
            .into_iter()
            .filter(|(id, _)| !indexes.iter().any(|&i| matches[i].event.id == *id))
            .map(|(event_id, at)| {
                let mut properties = serde_json::Value::Null;
                if let (true, Some((probe, column))) = (correlated, by_id.as_mut()) {
                    probe.for_each(&[Key::int8_eq(1, event_id)], |row| properties = row.json(*column));
                }
                let end = membership_end((event_id, at), &properties, journey, &definition.exit, &exits);
                Entry { event_id, at, end }
            })
            .collect();

        let mut candidates: Vec<(usize, Entry)> = indexes
            .iter()
            .map(|&i| {
                let event = matches[i].event;
                let at = event.occurred_at;
                let end = membership_end((event.id, at), &event.properties, journey, &definition.exit, &exits);
                (i, Entry { event_id: event.id, at, end })
            })
            .collect();
        candidates.sort_unstable_by_key(|(_, c)| (c.at, c.event_id));
        memberships.groups.push(Group { candidates, stored });
    }
    memberships
}

impl Memberships {
    /// Blocks (reason `reentry`) the candidates that would enter a journey the customer is in, and
    /// returns the candidates that enter where another was blocked: should the policy suppress
    /// one of them, it did not enter after all. A candidate blocked for another reason is no entry.
    /// Can be applied again after the caller blocks some of those entrants.
    pub fn apply(&self, candidates: &mut [Candidate]) -> Vec<usize> {
        let mut deciding = Vec::new();
        for group in &self.groups {
            let mut open: Vec<(usize, Entry)> = Vec::new();
            for &(i, entry) in &group.candidates {
                match candidates[i].blocked {
                    Some(Reason::Reentry) => candidates[i].blocked = None,
                    Some(_) => continue,
                    None => {}
                }
                open.push((i, entry));
            }
            let entries: Vec<Entry> = open.iter().map(|&(_, e)| e).collect();
            let admitted = admit(&group.stored, &entries);
            if admitted.iter().all(|&a| a) {
                continue;
            }
            for (&(i, _), enters) in open.iter().zip(admitted) {
                if enters {
                    deciding.push(i);
                } else {
                    candidates[i].blocked = Some(Reason::Reentry);
                }
            }
        }
        deciding
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000_000;

    /// An entry at `at_hours` whose membership ends at `end_hours` (its last step's due time).
    fn entry(event_id: i64, at_hours: i64, end_hours: i64) -> Entry {
        Entry { event_id, at: at_hours * HOUR, end: (end_hours * HOUR, i64::MIN) }
    }

    #[test]
    fn a_match_within_an_earlier_membership_is_kept_out_and_one_after_it_enters() {
        // Journeys of 2 hours from 0 (ended at 1 by an exit), 1, 2 and 3.
        let candidates = [entry(1, 0, 1), entry(2, 1, 3), entry(3, 2, 4), entry(4, 3, 5)];
        assert_eq!(admit(&[], &candidates), [true, true, false, true]);
    }

    #[test]
    fn stored_entries_count_on_both_sides_in_event_time() {
        let stored = [entry(10, 5, 7)];
        // Within the stored membership; before it, ending before it; before it, but its own
        // would hold the stored entry; at its end.
        let candidates = [entry(1, 6, 8), entry(2, 4, 5), entry(3, 3, 6), entry(4, 7, 9)];
        let mut in_order = candidates;
        in_order.sort_by_key(Entry::place);
        let admitted: Vec<(i64, bool)> = in_order.iter().map(|e| e.event_id).zip(admit(&stored, &in_order)).collect();
        assert_eq!(admitted, [(3, false), (2, true), (1, false), (4, true)]);
    }

    #[test]
    fn at_one_instant_events_count_in_id_order() {
        assert_eq!(admit(&[], &[entry(1, 0, 2), entry(2, 0, 2)]), [true, false]);
        assert_eq!(admit(&[entry(1, 0, 2)], &[entry(2, 0, 2)]), [false]);
        // Ended by an exit stored before a match of the same instant; and after it.
        let ended = |exit_id| Entry { event_id: 1, at: 0, end: (HOUR, exit_id) };
        assert_eq!(admit(&[ended(5)], &[Entry { event_id: 6, at: HOUR, end: (3 * HOUR, i64::MIN) }]), [true]);
        assert_eq!(admit(&[ended(7)], &[Entry { event_id: 6, at: HOUR, end: (3 * HOUR, i64::MIN) }]), [false]);
    }

    #[test]
    fn an_exit_ends_membership_only_when_it_correlates() {
        let exit = |id, name: &str, at_hours: i64, k: i64| Exit {
            id,
            name: name.to_string(),
            at: at_hours * HOUR,
            properties: serde_json::json!({"k": k}),
        };
        let exits = [exit(5, "x", 1, 2), exit(6, "y", 2, 1), exit(7, "x", 3, 1)];
        let conditions = [CancelOn { event: "x".to_string(), same: vec![vec!["k".to_string()]] }];
        let end = |k: i64| membership_end((1, 0), &serde_json::json!({"k": k}), 4 * HOUR, &conditions, &exits);
        assert_eq!(end(1), (3 * HOUR, 7));
        assert_eq!(end(2), (HOUR, 5));
        assert_eq!(end(3), (4 * HOUR, i64::MIN));
        // Exits before the entry, and the entry event itself, do not count; without `same`,
        // every exit of the name does.
        let before = membership_end((7, 3 * HOUR), &serde_json::json!({"k": 1}), 4 * HOUR, &conditions, &exits);
        assert_eq!(before, (7 * HOUR, i64::MIN));
        let any = [CancelOn { event: "x".to_string(), same: Vec::new() }];
        assert_eq!(membership_end((1, 0), &serde_json::Value::Null, 4 * HOUR, &any, &exits), (HOUR, 5));
    }
}
