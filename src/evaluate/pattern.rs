//! Pattern triggers on the insert path: for each customer and pattern trigger a statement touches,
//! read the customer's events of the pattern's names around the new events (one index probe per
//! name, on `events_customer_name_time`), and find the anchors where the pattern fires.
//!
//! The anchors are the new events themselves and, for an event that arrives late (older than
//! events already stored), the stored events after it within the window: a late event completes
//! the pattern where it would have completed had it arrived in time. A stored anchor that already
//! has a decision for the trigger is left alone: nothing is decided twice, nothing is taken back.
//! Runs under the customers' locks, so the history read is the latest.

use super::probe::{Key, Probe};
use super::rule_cache::RuleSet;
use super::Pending;
use crate::rule::pattern::Seen;
use std::collections::HashMap;

/// A new event of the statement that some pattern trigger reads.
pub struct Input {
    pub id: i64,
    pub customer: usize,
    pub occurred_at: i64,
    pub rules: Vec<usize>,
}

/// One stored event read for a pattern.
struct Stored {
    id: i64,
    name: String,
    at: i64,
    properties: serde_json::Value,
}

/// Appends the anchors where a pattern fires to `events`, and their (event, rule) pairs to `fired`.
pub fn anchors(
    rules: &RuleSet,
    inputs: &[Input],
    customers: &[String],
    events: &mut Vec<Pending>,
    fired: &mut Vec<(usize, usize)>,
) {
    // (customer, rule) -> the new events' ids and time span.
    let mut groups: HashMap<(usize, usize), (Vec<i64>, i64, i64)> = HashMap::new();
    for input in inputs {
        for &r in &input.rules {
            let g = groups.entry((input.customer, r)).or_insert((Vec::new(), input.occurred_at, input.occurred_at));
            g.0.push(input.id);
            g.1 = g.1.min(input.occurred_at);
            g.2 = g.2.max(input.occurred_at);
        }
    }
    let mut groups: Vec<_> = groups.into_iter().collect();
    groups.sort_unstable_by_key(|(key, _)| *key);

    let mut probe = Probe::open(c"events", c"events_customer_name_time", 4).skipping_in_flight();
    let (id_column, occurred_at_column, properties_column) =
        (probe.column(c"id"), probe.column(c"occurred_at"), probe.column(c"properties"));
    let mut decided = Probe::open(c"decisions", c"decisions_pkey", 5);
    for ((customer, r), (new_ids, first, last)) in groups {
        let rule = &rules.rules[r];
        let Some(pattern) = &rule.definition.pattern else { continue };
        let customer_id = customers[customer].as_str();
        let within = pattern.within_micros;
        let with_properties = rule.uses_properties || pattern.uses_properties();
        let mut stored: Vec<Stored> = Vec::new();
        for name in &rule.pattern_reads {
            let keys = [
                Key::text_eq(1, customer_id),
                Key::text_eq(2, name),
                Key::timestamptz_ge(3, first.saturating_sub(within)),
                Key::timestamptz_le(3, last.saturating_add(within)),
            ];
            probe.for_each(&keys, |row| {
                let (Some(id), Some(at)) = (row.int8(id_column), row.timestamptz(occurred_at_column)) else { return };
                let properties = if with_properties { row.json(properties_column) } else { serde_json::Value::Null };
                stored.push(Stored { id, name: name.clone(), at, properties });
            });
        }
        stored.sort_unstable_by_key(|s| (s.at, s.id));
        let seen: Vec<Seen> =
            stored.iter().map(|s| Seen { id: s.id, name: &s.name, at: s.at, properties: &s.properties }).collect();

        // The new events, and every stored anchor within the window after one of them.
        let mut candidates: Vec<usize> = Vec::new();
        for (p, s) in seen.iter().enumerate().filter(|(_, s)| new_ids.contains(&s.id)) {
            candidates.push(p);
            let until = s.at.saturating_add(within);
            candidates.extend(
                (p + 1..seen.len()).take_while(|&q| seen[q].at <= until).filter(|&q| rule.anchors(seen[q].name)),
            );
        }
        candidates.sort_unstable();
        candidates.dedup();
        for a in candidates {
            if !pattern.fires_at(&seen, a) {
                continue;
            }
            let anchor = &stored[a];
            if !new_ids.contains(&anchor.id) {
                let keys = [
                    Key::text_eq(1, customer_id),
                    Key::timestamptz_ge(2, anchor.at),
                    Key::timestamptz_le(2, anchor.at),
                    Key::int4_eq(3, rule.id),
                    Key::int8_eq(4, anchor.id),
                ];
                if decided.count(&keys) > 0 {
                    continue;
                }
            }
            events.push(Pending {
                id: anchor.id,
                customer,
                occurred_at: anchor.at,
                properties: anchor.properties.clone(),
            });
            fired.push((events.len() - 1, r));
        }
    }
}
