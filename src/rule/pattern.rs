//! Patterns over a customer's recent events: counts, combinations and sequences in a window,
//! optionally correlated on properties and excluding windows that contain an `unless` event.
//!
//! A pattern is *complete* over a set of events when its shape holds and no `unless` event is in
//! the set. It *fires at* an event (the anchor) when it is complete over the anchor's window with
//! the anchor and was not complete without it: the anchor is the event that completes it. The
//! window is every event of the customer at most `within` before the anchor, up to the anchor in
//! event order (`occurred_at`, then id). `at_most` counts are the one exception: they fire at every
//! matching anchor whose window holds at most N matches (a rare event, not a crossing).
//!
//! This file holds the language and these semantics as one pure function, `fires_at`; the insert
//! path (src/evaluate/pattern.rs) feeds it each anchor's window read from the events index.

use super::error::{show, DefinitionError};
use super::predicate::{self, Facts, Predicate, Source};
use super::{duration, object, parse_event_name, parse_same, reject_unknown, required};
use crate::instant::UnixMicros;
use serde_json::{Map, Value};

const FIELDS: &[&str] = &["count", "all_of", "any_of", "sequence", "within", "same", "unless", "not_followed_by"];
const SHAPES: &[&str] = &["count", "all_of", "any_of", "sequence"];
const CONDITION_FIELDS: &[&str] = &["event", "where"];
const COUNT_FIELDS: &[&str] = &["event", "where", "at_least", "at_most"];
const NOT_FOLLOWED_FIELDS: &[&str] = &["event", "within", "same"];

/// One event condition of a pattern: an event name and a predicate on its properties.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub event: String,
    pub predicate: Option<Predicate>,
}

/// What must have happened in the window.
#[derive(Debug, Clone, PartialEq)]
pub enum Shape {
    /// At least `n` matching events (fires at the n-th).
    AtLeast(Condition, usize),
    /// At most `n` matching events, the anchor included (fires at each such anchor).
    AtMost(Condition, usize),
    /// Each condition matched at least once, in any order.
    AllOf(Vec<Condition>),
    /// Some condition matched (fires at the first match in a window).
    AnyOf(Vec<Condition>),
    /// The conditions matched in this order (other events may come between).
    Sequence(Vec<Condition>),
}

/// "Not followed by": the message waits `within` and is cancelled by `event` (sugar for the
/// trigger's `wait` and `cancel_on`).
#[derive(Debug, Clone, PartialEq)]
pub struct NotFollowedBy {
    pub event: String,
    pub within_micros: i64,
    pub same: Vec<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Pattern {
    pub shape: Shape,
    pub within_micros: i64,
    /// Property paths every event of the pattern shares with the anchor (e.g. the same `sku`).
    pub same: Vec<Vec<String>>,
    /// Events whose presence in the window keeps the pattern from completing.
    pub unless: Vec<Condition>,
    pub not_followed_by: Option<NotFollowedBy>,
}

/// One stored event as a pattern sees it. `at` is a PostgreSQL timestamp (microseconds since
/// 2000-01-01).
#[derive(Debug, Clone, Copy)]
pub struct Seen<'a> {
    pub id: i64,
    pub name: &'a str,
    pub at: i64,
    pub properties: &'a Value,
}

impl Condition {
    fn holds(&self, e: &Seen) -> bool {
        e.name == self.event
            && self.predicate.as_ref().is_none_or(|p| {
                p.holds(&Facts {
                    properties: e.properties,
                    profile: &Value::Null,
                    occurred_at: UnixMicros::from_pg(e.at),
                })
            })
    }
}

impl Pattern {
    fn conditions(&self) -> &[Condition] {
        match &self.shape {
            Shape::AtLeast(c, _) | Shape::AtMost(c, _) => std::slice::from_ref(c),
            Shape::AllOf(cs) | Shape::AnyOf(cs) | Shape::Sequence(cs) => cs,
        }
    }

    /// Names of the events that can complete the pattern (its anchors).
    pub fn anchor_events(&self) -> Vec<String> {
        let mut names: Vec<String> = match &self.shape {
            Shape::Sequence(cs) => cs.last().map(|c| c.event.clone()).into_iter().collect(),
            _ => self.conditions().iter().map(|c| c.event.clone()).collect(),
        };
        names.sort_unstable();
        names.dedup();
        names
    }

    /// Names of the events the pattern reads: its conditions and its `unless` events.
    pub fn read_events(&self) -> Vec<String> {
        let mut names: Vec<String> = self.conditions().iter().chain(&self.unless).map(|c| c.event.clone()).collect();
        names.sort_unstable();
        names.dedup();
        names
    }

    /// Names of the events that, arriving late, can complete the pattern at a later anchor.
    pub fn completing_events(&self) -> Vec<String> {
        let mut names: Vec<String> = self.conditions().iter().map(|c| c.event.clone()).collect();
        names.sort_unstable();
        names.dedup();
        names
    }

    /// Whether the pattern needs event properties (conditions with predicates, correlation).
    pub fn uses_properties(&self) -> bool {
        !self.same.is_empty() || self.conditions().iter().chain(&self.unless).any(|c| c.predicate.is_some())
    }

    /// Whether the pattern fires at `history[anchor]`. `history` is the customer's events in event
    /// order (`at`, then id) and must hold at least every event of the anchor's window.
    pub fn fires_at(&self, history: &[Seen], anchor: usize) -> bool {
        let a = &history[anchor];
        if !self.conditions().iter().any(|c| c.holds(a)) {
            return false;
        }
        let keys: Vec<Option<&Value>> = self.same.iter().map(|p| predicate::lookup(a.properties, p)).collect();
        if keys.iter().any(|k| k.is_none_or(Value::is_null)) {
            return false;
        }
        let from = a.at.saturating_sub(self.within_micros);
        let window: Vec<&Seen> = history[..anchor]
            .iter()
            .filter(|e| e.at >= from)
            .filter(|e| self.same.iter().zip(&keys).all(|(p, k)| predicate::lookup(e.properties, p) == *k))
            .collect();
        let before = window.iter().copied();
        match &self.shape {
            Shape::AtMost(..) => self.complete(before.chain([a])),
            _ => self.complete(before.clone().chain([a])) && !self.complete(before),
        }
    }

    /// Whether the pattern is complete over these events, given in event order.
    fn complete<'e>(&self, events: impl Iterator<Item = &'e Seen<'e>> + Clone) -> bool {
        if events.clone().any(|e| self.unless.iter().any(|u| u.holds(e))) {
            return false;
        }
        match &self.shape {
            Shape::AtLeast(c, n) => events.filter(|e| c.holds(e)).count() >= *n,
            Shape::AtMost(c, n) => events.filter(|e| c.holds(e)).count() <= *n,
            Shape::AllOf(cs) => cs.iter().all(|c| events.clone().any(|e| c.holds(e))),
            Shape::AnyOf(cs) => events.clone().any(|e| cs.iter().any(|c| c.holds(e))),
            Shape::Sequence(cs) => {
                // Greedy matching finds a subsequence whenever one exists.
                let mut step = 0;
                for e in events {
                    if step < cs.len() && cs[step].holds(e) {
                        step += 1;
                    }
                }
                step == cs.len()
            }
        }
    }
}

/// Parses `$.pattern`.
pub fn parse(value: &Value) -> Result<Pattern, DefinitionError> {
    let map = object(value, "$.pattern")?;
    reject_unknown(map, "$.pattern", FIELDS)?;
    let shapes: Vec<&str> = SHAPES.iter().copied().filter(|s| map.contains_key(*s)).collect();
    let shape = match shapes.as_slice() {
        ["count"] => parse_count(&map["count"])?,
        ["all_of"] => Shape::AllOf(conditions(&map["all_of"], "$.pattern.all_of", 2)?),
        ["any_of"] => Shape::AnyOf(conditions(&map["any_of"], "$.pattern.any_of", 2)?),
        ["sequence"] => Shape::Sequence(conditions(&map["sequence"], "$.pattern.sequence", 2)?),
        [] => {
            return Err(DefinitionError::new("$.pattern", "expected one of count, all_of, any_of or sequence")
                .with_hint(r#"for example {"count": {"event": "product_view", "at_least": 3}, "within": "7d"}"#))
        }
        several => {
            return Err(DefinitionError::new(
                "$.pattern",
                format!(
                    "has {} together: a pattern has exactly one of count, all_of, any_of, sequence",
                    several.join(" and ")
                ),
            ))
        }
    };
    let within_micros = duration::parse(required(map, "$.pattern", "within")?, "$.pattern.within")?;
    let same = match map.get("same") {
        None => Vec::new(),
        Some(Value::Array(paths)) if !paths.is_empty() => paths
            .iter()
            .enumerate()
            .map(|(i, p)| predicate::parse_path(p, &format!("$.pattern.same[{i}]")))
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(DefinitionError::new(
                "$.pattern.same",
                format!("expected a non-empty array of property paths, got {}", show(other)),
            ))
        }
    };
    let unless = match map.get("unless") {
        None => Vec::new(),
        Some(v) => conditions(v, "$.pattern.unless", 1)?,
    };
    let not_followed_by = map.get("not_followed_by").map(parse_not_followed_by).transpose()?;
    Ok(Pattern { shape, within_micros, same, unless, not_followed_by })
}

fn parse_count(value: &Value) -> Result<Shape, DefinitionError> {
    let path = "$.pattern.count";
    let map = object(value, path)?;
    reject_unknown(map, path, COUNT_FIELDS)?;
    let c = condition(map, path)?;
    let n = |field: &str, v: &Value, least: i64| {
        v.as_i64().filter(|n| (least..=1000).contains(n)).map(|n| n as usize).ok_or_else(|| {
            DefinitionError::new(
                &format!("{path}.{field}"),
                format!("expected an integer from {least} to 1000, got {}", show(v)),
            )
        })
    };
    match (map.get("at_least"), map.get("at_most")) {
        (Some(v), None) => Ok(Shape::AtLeast(c, n("at_least", v, 1)?)),
        (None, Some(v)) => Ok(Shape::AtMost(c, n("at_most", v, 1)?)),
        (Some(_), Some(_)) => Err(DefinitionError::new(path, "has both at_least and at_most: give one")),
        (None, None) => Err(DefinitionError::new(path, "missing \"at_least\" or \"at_most\"")
            .with_hint(r#"for example {"event": "product_view", "at_least": 3}"#)),
    }
}

fn conditions(value: &Value, path: &str, at_least: usize) -> Result<Vec<Condition>, DefinitionError> {
    match value {
        Value::Array(items) if items.len() >= at_least => items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let item_path = format!("{path}[{i}]");
                let map = object(item, &item_path)?;
                reject_unknown(map, &item_path, CONDITION_FIELDS)?;
                condition(map, &item_path)
            })
            .collect(),
        other => Err(DefinitionError::new(
            path,
            format!(
                "expected an array of at least {at_least} event condition{}, got {}",
                if at_least == 1 { "" } else { "s" },
                show(other)
            ),
        )
        .with_hint(r#"an event condition is {"event": "name"} or {"event": "name", "where": {...}}"#)),
    }
}

fn condition(map: &Map<String, Value>, path: &str) -> Result<Condition, DefinitionError> {
    let event = parse_event_name(required(map, path, "event")?, &format!("{path}.event"))?;
    let where_path = format!("{path}.where");
    let predicate = map.get("where").map(|w| predicate::parse(w, &where_path)).transpose()?;
    if predicate.as_ref().is_some_and(|p| p.uses(Source::Profile)) {
        return Err(DefinitionError::new(&where_path, "a pattern condition can only look at event properties")
            .with_hint("put profile conditions in the trigger's own \"where\""));
    }
    Ok(Condition { event, predicate })
}

fn parse_not_followed_by(value: &Value) -> Result<NotFollowedBy, DefinitionError> {
    let path = "$.pattern.not_followed_by";
    let map = object(value, path)?;
    reject_unknown(map, path, NOT_FOLLOWED_FIELDS)?;
    let event = parse_event_name(required(map, path, "event")?, &format!("{path}.event"))?;
    let within_micros = duration::parse(required(map, path, "within")?, &format!("{path}.within"))?;
    Ok(NotFollowedBy { event, within_micros, same: parse_same(map, path)? })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const HOUR: i64 = 3_600_000_000;

    fn history(events: &[(&'static str, i64, Value)]) -> Vec<(i64, &'static str, i64, Value)> {
        events.iter().enumerate().map(|(i, (n, h, p))| (i as i64 + 1, *n, h * HOUR, p.clone())).collect()
    }

    /// The anchors the pattern fires at, as positions in `events`.
    fn fired(pattern: Value, events: &[(&'static str, i64, Value)]) -> Vec<usize> {
        let p = parse(&pattern).unwrap();
        let owned = history(events);
        let seen: Vec<Seen> =
            owned.iter().map(|(id, name, at, props)| Seen { id: *id, name, at: *at, properties: props }).collect();
        (0..seen.len()).filter(|&i| p.fires_at(&seen, i)).collect()
    }

    #[test]
    fn a_count_fires_at_the_nth_match_in_the_window_and_again_once_the_window_moves_on() {
        let p = json!({"count": {"event": "view", "at_least": 3}, "within": "10h"});
        let e = |h| ("view", h, json!({}));
        // 0, 5, 10: the third is exactly 10 h after the first (inclusive edge) -> fires. At 11 the
        // first has left the window: 5, 10, 11 is a new crossing.
        assert_eq!(fired(p.clone(), &[e(0), e(5), e(10), e(11)]), vec![2, 3]);
        // 0, 5, 11: the first is out of the window at 11.
        assert_eq!(fired(p.clone(), &[e(0), e(5), e(11)]), Vec::<usize>::new());
        // A fourth view moves the window: 5, 10, 16 is not three within 10 h; 10, 16, 17 is.
        assert_eq!(fired(p, &[e(0), e(5), e(10), e(16), e(17)]), vec![2, 4]);
    }

    #[test]
    fn a_count_can_be_correlated_and_broken_by_an_unless_event() {
        let p = json!({"count": {"event": "view", "at_least": 2}, "within": "1d", "same": ["sku"],
                       "unless": [{"event": "purchase"}]});
        let v = |h, sku: &str| ("view", h, json!({"sku": sku}));
        assert_eq!(fired(p.clone(), &[v(0, "a"), v(1, "b"), v(2, "a")]), vec![2]);
        assert_eq!(
            fired(p.clone(), &[v(0, "a"), ("purchase", 1, json!({"sku": "a"})), v(2, "a")]),
            Vec::<usize>::new()
        );
        // The purchase of another sku does not count against sku a when unless is correlated too.
        assert_eq!(fired(p, &[v(0, "a"), ("purchase", 1, json!({"sku": "b"})), v(2, "a")]), vec![2]);
    }

    #[test]
    fn at_most_fires_at_each_rare_event() {
        let p = json!({"count": {"event": "purchase", "at_most": 1}, "within": "90d"});
        let e = |h| ("purchase", h, json!({}));
        // The third is exactly 90 days after the second (inclusive edge): two in the window.
        assert_eq!(fired(p.clone(), &[e(0), e(24), e(24 * 91)]), vec![0]);
        assert_eq!(fired(p, &[e(0), e(24), e(24 * 91 + 1)]), vec![0, 2]);
    }

    #[test]
    fn all_of_fires_when_the_last_missing_condition_arrives() {
        let p =
            json!({"all_of": [{"event": "a"}, {"event": "b", "where": {"property": "x", "eq": 1}}], "within": "2h"});
        let a = |h| ("a", h, json!({}));
        let b = |h, x| ("b", h, json!({"x": x}));
        assert_eq!(fired(p.clone(), &[b(0, 2), a(1), b(2, 1), a(3)]), vec![2]);
        assert_eq!(fired(p, &[b(0, 1), a(3)]), Vec::<usize>::new());
    }

    #[test]
    fn any_of_fires_once_per_window() {
        let p = json!({"any_of": [{"event": "a"}, {"event": "b"}], "within": "1h"});
        assert_eq!(fired(p, &[("a", 0, json!({})), ("b", 1, json!({})), ("b", 3, json!({}))]), vec![0, 2]);
    }

    #[test]
    fn a_sequence_needs_its_order_and_its_window() {
        let p = json!({"sequence": [{"event": "a"}, {"event": "b"}, {"event": "c"}], "within": "5h"});
        let e = |n, h| (n, h, json!({}));
        assert_eq!(fired(p.clone(), &[e("a", 0), e("x", 1), e("b", 2), e("c", 3), e("c", 4)]), vec![3]);
        assert_eq!(fired(p.clone(), &[e("b", 0), e("a", 1), e("c", 2)]), Vec::<usize>::new());
        assert_eq!(fired(p, &[e("a", 0), e("b", 2), e("c", 6)]), Vec::<usize>::new());
    }

    #[test]
    fn events_at_the_same_time_count_in_id_order() {
        let p = json!({"sequence": [{"event": "a"}, {"event": "b"}], "within": "1h"});
        assert_eq!(fired(p.clone(), &[("a", 0, json!({})), ("b", 0, json!({}))]), vec![1]);
        assert_eq!(fired(p, &[("b", 0, json!({})), ("a", 0, json!({}))]), Vec::<usize>::new());
    }

    #[test]
    fn bad_patterns_name_the_field() {
        let cases = [
            (json!({"within": "1d"}), "$.pattern", "one of count"),
            (json!({"count": {"event": "v", "at_least": 3}}), "$.pattern", "\"within\""),
            (json!({"count": {"event": "v", "at_least": 3}, "within": "-1d"}), "$.pattern.within", "duration"),
            (json!({"count": {"event": "v", "at_least": 0}, "within": "1d"}), "$.pattern.count.at_least", "from 1"),
            (json!({"count": {"event": "v"}, "within": "1d"}), "$.pattern.count", "at_least"),
            (json!({"count": {"event": "v", "at_least": 1, "at_most": 2}, "within": "1d"}), "$.pattern.count", "both"),
            (json!({"sequence": [], "within": "1d"}), "$.pattern.sequence", "at least 2"),
            (json!({"sequence": [{"event": "a"}], "within": "1d"}), "$.pattern.sequence", "at least 2"),
            (json!({"all_of": [{"event": "a"}, {"name": "b"}], "within": "1d"}), "$.pattern.all_of[1].name", "unknown"),
            (
                json!({"any_of": [{"event": "a"}, {"event": ""}], "within": "1d"}),
                "$.pattern.any_of[1].event",
                "event name",
            ),
            (
                json!({"all_of": [{"event": "a"}, {"event": "b", "where": {"profile": "vip", "eq": true}}], "within": "1d"}),
                "$.pattern.all_of[1].where",
                "event properties",
            ),
            (json!({"count": {"event": "v", "at_least": 2}, "all_of": [], "within": "1d"}), "$.pattern", "together"),
            (
                json!({"count": {"event": "v", "at_least": 2}, "within": "1d", "same": []}),
                "$.pattern.same",
                "non-empty",
            ),
            (
                json!({"count": {"event": "v", "at_least": 2}, "within": "1d", "unless": []}),
                "$.pattern.unless",
                "at least 1",
            ),
            (
                json!({"sequence": [{"event": "a"}, {"event": "b"}], "within": "1d", "not_followed_by": {"event": "c"}}),
                "$.pattern.not_followed_by",
                "\"within\"",
            ),
        ];
        for (pattern, path, text) in cases {
            let err = parse(&pattern).unwrap_err();
            assert_eq!(err.path, path, "{pattern}");
            assert!(err.problem.contains(text), "{pattern}: {err}");
        }
    }
}
