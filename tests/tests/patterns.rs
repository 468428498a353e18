//! Pattern triggers against a reference model: proptest generates random event histories, the
//! test inserts them in several arrival orders, and the decisions must be those of a small,
//! obviously-correct model of the README's semantics written here, independently of the
//! extension's own evaluator.
//!
//! - Arriving in event order (one statement per event, or random batches of consecutive events),
//!   or all at once in one statement in any row order: exactly the model's decisions.
//! - Arriving in any order, one event per statement: at least the model's decisions (a late event
//!   completes what it should; a decision already made is never taken back, so a late `unless`
//!   event or a late earlier match can leave an extra one).

use pg_engage_it::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use std::collections::BTreeSet;

const MINUTE: i64 = 60;

/// One generated event: name, property k (correlation), property x, minute of occurrence.
#[derive(Debug, Clone)]
struct Generated {
    name: &'static str,
    k: i64,
    x: i64,
    minute: i64,
}

/// A stored event as the model sees it.
#[derive(Debug, Clone)]
struct Ev {
    id: i64,
    name: &'static str,
    k: i64,
    x: i64,
    at: i64,
}

/// An event condition of the model: a name and, optionally, "x >= 1".
#[derive(Clone, Copy)]
struct Cond {
    name: &'static str,
    x_at_least_1: bool,
}

impl Cond {
    fn holds(&self, e: &Ev) -> bool {
        e.name == self.name && (!self.x_at_least_1 || e.x >= 1)
    }
}

enum Shape {
    AtLeast(Cond, usize),
    AtMost(Cond, usize),
    AllOf(Vec<Cond>),
    AnyOf(Vec<Cond>),
    Sequence(Vec<Cond>),
}

struct ModelTrigger {
    name: &'static str,
    shape: Shape,
    within: i64,
    same_k: bool,
    unless: Vec<Cond>,
    definition: Value,
}

fn c(name: &'static str) -> Cond {
    Cond { name, x_at_least_1: false }
}

fn triggers() -> Vec<ModelTrigger> {
    let action = json!({"channel": "webhook"});
    let t = |name, shape, within_min: i64, same_k, unless: Vec<Cond>, pattern: Value| {
        let mut definition = json!({"pattern": pattern, "category": "transactional", "action": action.clone()});
        definition["pattern"]["within"] = json!(format!("{within_min}m"));
        ModelTrigger { name, shape, within: within_min * MINUTE, same_k, unless, definition }
    };
    vec![
        t(
            "three_a_same_k",
            Shape::AtLeast(c("a"), 3),
            120,
            true,
            vec![],
            json!({"count": {"event": "a", "at_least": 3}, "same": ["k"]}),
        ),
        t("rare_b", Shape::AtMost(c("b"), 1), 180, false, vec![], json!({"count": {"event": "b", "at_most": 1}})),
        t(
            "a_and_big_b",
            Shape::AllOf(vec![c("a"), Cond { name: "b", x_at_least_1: true }]),
            90,
            false,
            vec![],
            json!({"all_of": [{"event": "a"}, {"event": "b", "where": {"property": "x", "gte": 1}}]}),
        ),
        t(
            "a_or_c",
            Shape::AnyOf(vec![c("a"), c("c")]),
            60,
            false,
            vec![],
            json!({"any_of": [{"event": "a"}, {"event": "c"}]}),
        ),
        t(
            "abc_unless_d",
            Shape::Sequence(vec![c("a"), c("b"), c("c")]),
            120,
            false,
            vec![c("d")],
            json!({"sequence": [{"event": "a"}, {"event": "b"}, {"event": "c"}], "unless": [{"event": "d"}]}),
        ),
        t(
            "b_then_b_same_k",
            Shape::Sequence(vec![c("b"), c("b")]),
            30,
            true,
            vec![c("c")],
            json!({"sequence": [{"event": "b"}, {"event": "b"}], "same": ["k"], "unless": [{"event": "c"}]}),
        ),
    ]
}

/// Whether `events` (any order) contain the conditions as a subsequence in (at, id) order:
/// tried exhaustively, so there is no cleverness to get wrong.
fn has_subsequence(events: &[&Ev], conds: &[Cond]) -> bool {
    fn from(events: &[&Ev], conds: &[Cond], after: Option<(i64, i64)>) -> bool {
        let Some((first, rest)) = conds.split_first() else { return true };
        events
            .iter()
            .filter(|e| after.is_none_or(|a| (e.at, e.id) > a))
            .any(|e| first.holds(e) && from(events, rest, Some((e.at, e.id))))
    }
    from(events, conds, None)
}

fn complete(t: &ModelTrigger, events: &[&Ev]) -> bool {
    if events.iter().any(|e| t.unless.iter().any(|u| u.holds(e))) {
        return false;
    }
    let count = |c: &Cond| events.iter().filter(|e| c.holds(e)).count();
    match &t.shape {
        Shape::AtLeast(c, n) => count(c) >= *n,
        Shape::AtMost(c, n) => count(c) <= *n,
        Shape::AllOf(cs) => cs.iter().all(|c| count(c) > 0),
        Shape::AnyOf(cs) => cs.iter().any(|c| count(c) > 0),
        Shape::Sequence(cs) => has_subsequence(events, cs),
    }
}

fn conditions(t: &ModelTrigger) -> Vec<Cond> {
    match &t.shape {
        Shape::AtLeast(c, _) | Shape::AtMost(c, _) => vec![*c],
        Shape::AllOf(cs) | Shape::AnyOf(cs) | Shape::Sequence(cs) => cs.clone(),
    }
}

/// The model: (trigger, event id) pairs that fire over a final history.
fn model(history: &[Ev], triggers: &[ModelTrigger]) -> BTreeSet<(String, i64)> {
    let mut fired = BTreeSet::new();
    for t in triggers {
        for f in history {
            if !conditions(t).iter().any(|c| c.holds(f)) {
                continue;
            }
            let before: Vec<&Ev> = history
                .iter()
                .filter(|e| (e.at, e.id) < (f.at, f.id) && e.at >= f.at - t.within)
                .filter(|e| !t.same_k || e.k == f.k)
                .collect();
            let mut with = before.clone();
            with.push(f);
            let fires = match t.shape {
                Shape::AtMost(..) => complete(t, &with),
                _ => complete(t, &with) && !complete(t, &before),
            };
            if fires {
                fired.insert((t.name.to_string(), f.id));
            }
        }
    }
    fired
}

fn generated() -> impl Strategy<Value = Vec<Generated>> {
    // Minutes on a 10-minute grid, so events tie and windows (30, 60, 90, 120, 180 minutes) end
    // exactly on other events.
    let event = (prop::sample::select(vec!["a", "b", "c", "d"]), 1..=2i64, 0..=2i64, 0..=30i64)
        .prop_map(|(name, k, x, slot)| Generated { name, k, x, minute: slot * 10 });
    prop::collection::vec(event, 1..=12)
}

/// How the history reaches the database.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Arrival {
    /// Event order, one statement per event.
    InOrder,
    /// Event order, in batches of 1 to 4 consecutive events per statement.
    InOrderBatches,
    /// Everything in one statement, rows in a random order.
    OneStatementShuffled,
    /// A random order, one statement per event.
    Shuffled,
}

fn insert_rows(client: &mut Client, customer: &str, rows: &[&Generated]) -> Vec<(i64, Generated)> {
    let mut sql = String::from("INSERT INTO engage.events (customer_id, name, properties, occurred_at) VALUES ");
    let values: Vec<String> = rows
        .iter()
        .map(|g| {
            format!(
                "('{customer}', '{}', '{{\"k\": {}, \"x\": {}}}', timestamptz '2026-01-01 00:00+00' + interval '{} minutes')",
                g.name, g.k, g.x, g.minute
            )
        })
        .collect();
    sql.push_str(&values.join(", "));
    sql.push_str(" RETURNING id, name, properties, occurred_at");
    let rows = client.query(&sql, &[]).unwrap_or_else(|e| panic!("{sql}: {}", error_text(&e)));
    rows.iter()
        .map(|r| {
            let props: Value = r.get(2);
            let at: std::time::SystemTime = r.get(3);
            let name: String = r.get(1);
            let minute = (at.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64 - 1_767_225_600) / 60;
            let name = ["a", "b", "c", "d"].into_iter().find(|n| *n == name).unwrap();
            (r.get(0), Generated { name, k: props["k"].as_i64().unwrap(), x: props["x"].as_i64().unwrap(), minute })
        })
        .collect()
}

fn check(
    client: &mut Client,
    case: usize,
    arrival: Arrival,
    history: &[Generated],
    seed: u64,
) -> Result<(), TestCaseError> {
    let customer = format!("{arrival:?}-{case}");
    let mut order: Vec<&Generated> = history.iter().collect();
    order.sort_by_key(|g| g.minute); // stable: ties keep their generated order
    let mut rng = fastrand_like(seed);
    let mut stored: Vec<(i64, Generated)> = Vec::new();
    match arrival {
        Arrival::InOrder => {
            for g in &order {
                stored.extend(insert_rows(client, &customer, &[g]));
            }
        }
        Arrival::InOrderBatches => {
            let mut rest = &order[..];
            while !rest.is_empty() {
                let n = (1 + rng() % 4) as usize;
                let (batch, tail) = rest.split_at(n.min(rest.len()));
                stored.extend(insert_rows(client, &customer, batch));
                rest = tail;
            }
        }
        Arrival::OneStatementShuffled | Arrival::Shuffled => {
            for i in (1..order.len()).rev() {
                order.swap(i, (rng() % (i as u64 + 1)) as usize);
            }
            if arrival == Arrival::Shuffled {
                for g in &order {
                    stored.extend(insert_rows(client, &customer, &[g]));
                }
            } else {
                stored.extend(insert_rows(client, &customer, &order));
            }
        }
    }
    let evs: Vec<Ev> =
        stored.iter().map(|(id, g)| Ev { id: *id, name: g.name, k: g.k, x: g.x, at: g.minute * MINUTE }).collect();
    let expected = model(&evs, &triggers());
    let actual: BTreeSet<(String, i64)> = client
        .query(
            "SELECT t.name, d.event_id FROM engage.decisions d JOIN engage.triggers t ON t.id = d.trigger_id
              WHERE d.customer_id = $1 AND d.outcome = 'fired'",
            &[&customer],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let all = count(client, &format!("SELECT count(*) FROM engage.decisions WHERE customer_id = '{customer}'"));
    prop_assert_eq!(all as usize, actual.len(), "every decision is 'fired' (transactional, no caps)");
    let shown: Vec<String> = evs.iter().map(|e| format!("{}#{}@{}k{}x{}", e.name, e.id, e.at / 60, e.k, e.x)).collect();
    if arrival == Arrival::Shuffled {
        prop_assert!(
            actual.is_superset(&expected),
            "{arrival:?} {shown:?}: missing {:?}",
            expected.difference(&actual).collect::<Vec<_>>()
        );
    } else {
        prop_assert_eq!(&actual, &expected, "{:?} {:?}", arrival, shown);
    }
    Ok(())
}

/// A small deterministic generator for arrival orders (seeded per case).
fn fastrand_like(seed: u64) -> impl FnMut() -> u64 {
    let mut state = seed | 1;
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    }
}

#[test]
fn decisions_match_the_reference_model_in_every_arrival_order() {
    let mut client = shared().create_db("patterns");
    for t in triggers() {
        create_trigger(&mut client, t.name, t.definition.clone());
    }
    let config = Config { cases: 150, failure_persistence: None, ..Config::default() };
    let mut runner = TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha));
    let case = std::cell::Cell::new(0usize);
    let client = std::cell::RefCell::new(client);
    runner
        .run(&(generated(), any::<u64>()), |(history, seed)| {
            case.set(case.get() + 1);
            for arrival in [Arrival::InOrder, Arrival::InOrderBatches, Arrival::OneStatementShuffled, Arrival::Shuffled]
            {
                check(&mut client.borrow_mut(), case.get(), arrival, &history, seed)?;
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    // The generated histories did exercise every trigger.
    let per_trigger = count(
        &mut client.borrow_mut(),
        "SELECT count(DISTINCT trigger_id) FROM engage.decisions WHERE customer_id LIKE 'InOrder-%'",
    );
    assert_eq!(per_trigger, triggers().len() as i64);
}
