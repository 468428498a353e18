//! Journeys against a reference model: proptest generates random histories of entry events
//! (`a`), exit events (`x`) and noise (`b`), the test inserts them in four arrival orders, and
//! the entries, outcomes and outbox rows must be those of a small model of the README's journey
//! semantics written here, independently of the extension.
//!
//! Membership is in event time: a customer is in a journey from the entry event until the last
//! step's due time or the first exit event at or after the entry (correlated by `same` when the
//! exit says so), whichever comes first; events of one instant count in id order. `after_finish` enters a match only outside every
//! membership; `once`, `once_per` and `always` are the plain windows. Held-out customers enter
//! as the treated ones do, without messages.
//!
//! - In event order (one statement per event, or batches of consecutive events) and all in one
//!   statement in any row order: exactly the model's entries and outbox rows.
//! - In any order, one event per statement: entries already made stand, so the entries can differ
//!   from the model's, but they never break the re-entry rule over the final history (no two
//!   memberships overlap, one entry for `once`, none closer than `once_per`), every match is
//!   decided once, and every step is cancelled exactly when an exit falls within its wait.

use pg_engage_it::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use std::collections::{BTreeMap, BTreeSet};

const MINUTE: i64 = 60;

#[derive(Debug, Clone)]
struct Generated {
    name: &'static str,
    k: i64,
    minute: i64,
}

#[derive(Debug, Clone)]
struct Ev {
    id: i64,
    name: &'static str,
    k: i64,
    at: i64,
}

#[derive(Clone, Copy, PartialEq)]
enum Reentry {
    AfterFinish,
    Once,
    OncePer(i64),
    Always,
}

struct Journey {
    name: &'static str,
    /// Each step's wait, minutes.
    waits: Vec<i64>,
    /// Whether the exit `x` must carry the entry's `k`.
    exit_same_k: bool,
    reentry: Reentry,
    holdout: f64,
}

fn journeys() -> Vec<Journey> {
    let j =
        |name, waits: Vec<i64>, exit_same_k, reentry, holdout| Journey { name, waits, exit_same_k, reentry, holdout };
    vec![
        j("after_finish", vec![0, 30, 60], false, Reentry::AfterFinish, 0.0),
        j("after_finish_same_k", vec![20, 50], true, Reentry::AfterFinish, 0.0),
        j("once", vec![0, 40], false, Reentry::Once, 0.0),
        j("once_per_90m", vec![0, 40], false, Reentry::OncePer(90), 0.0),
        j("always", vec![0, 40], false, Reentry::Always, 0.0),
        j("held_out_half", vec![0, 30], false, Reentry::AfterFinish, 0.5),
    ]
}

fn definition(j: &Journey) -> Value {
    let steps: Vec<Value> = j
        .waits
        .iter()
        .map(|w| {
            let mut step = json!({"action": {"channel": "webhook", "payload": {"journey": j.name}}});
            if *w > 0 {
                step["wait"] = json!(format!("{w}m"));
            }
            step
        })
        .collect();
    let exit = if j.exit_same_k { json!([{"event": "x", "same": ["k"]}]) } else { json!([{"event": "x"}]) };
    let mut d = json!({"event": "a", "category": "transactional", "steps": steps, "exit": exit});
    match j.reentry {
        Reentry::AfterFinish => {}
        Reentry::Once => d["reentry"] = json!("once"),
        Reentry::OncePer(m) => d["reentry"] = json!({"once_per": format!("{m}m")}),
        Reentry::Always => d["reentry"] = json!("always"),
    }
    if j.holdout > 0.0 {
        d["holdout"] = json!(j.holdout);
    }
    d
}

/// The exits that end a membership or cancel a step of an entry at `e`: `x` events at or after
/// it (with its `k` if the journey says so).
fn exits_of<'h>(j: &Journey, e: &Ev, history: &'h [Ev]) -> impl Iterator<Item = &'h Ev> {
    let (at, id, k, same) = (e.at, e.id, e.k, j.exit_same_k);
    history.iter().filter(move |x| x.name == "x" && x.at >= at && x.id != id && (!same || x.k == k))
}

/// Where the membership from entry `e` ends, over `history`, in the order of events (time, id):
/// at the first exit, or just before the events at the last step's due time.
fn end(j: &Journey, e: &Ev, history: &[Ev]) -> (i64, i64) {
    let last_due = e.at + j.waits.last().unwrap() * MINUTE;
    exits_of(j, e, history).map(|x| (x.at, x.id)).filter(|&(at, _)| at < last_due).min().unwrap_or((last_due, i64::MIN))
}

/// The model's entries of a journey: the `a` events that enter, in event order.
fn entries(j: &Journey, history: &[Ev]) -> Vec<i64> {
    let mut matches: Vec<&Ev> = history.iter().filter(|e| e.name == "a").collect();
    matches.sort_by_key(|e| (e.at, e.id));
    let mut entered: Vec<&Ev> = Vec::new();
    for m in matches {
        let enters = match j.reentry {
            Reentry::Always => true,
            Reentry::Once => entered.is_empty(),
            Reentry::OncePer(w) => entered.iter().all(|e| m.at - e.at >= w * MINUTE),
            Reentry::AfterFinish => entered.iter().all(|e| (m.at, m.id) >= end(j, e, history)),
        };
        if enters {
            entered.push(m);
        }
    }
    entered.iter().map(|e| e.id).collect()
}

/// The outbox rows (journey, event, step, status) of the fired entries: a step that waits is
/// cancelled when an exit falls in [entry, due).
fn messages(j: &Journey, fired: &[i64], history: &[Ev]) -> BTreeSet<(String, i64, i32, String)> {
    let mut rows = BTreeSet::new();
    for id in fired {
        let e = history.iter().find(|e| e.id == *id).unwrap();
        for (step, wait) in j.waits.iter().enumerate() {
            let due = e.at + wait * MINUTE;
            let cancelled = *wait > 0 && exits_of(j, e, history).any(|x| x.at < due);
            let status = if cancelled { "cancelled" } else { "pending" };
            rows.insert((j.name.to_string(), *id, step as i32, status.to_string()));
        }
    }
    rows
}

fn generated() -> impl Strategy<Value = Vec<Generated>> {
    // Minutes on a 10-minute grid over 4 hours, so entries tie and memberships end on events.
    let event = (prop::sample::select(vec!["a", "a", "a", "x", "b"]), 1..=2i64, 0..=24i64)
        .prop_map(|(name, k, slot)| Generated { name, k, minute: slot * 10 });
    prop::collection::vec(event, 1..=12)
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Arrival {
    InOrder,
    InOrderBatches,
    OneStatementShuffled,
    Shuffled,
}

fn insert_rows(client: &mut Client, customer: &str, rows: &[&Generated]) -> Vec<Ev> {
    let values: Vec<String> = rows
        .iter()
        .map(|g| {
            format!(
                "('{customer}', '{}', '{{\"k\": {}}}', timestamptz '2026-01-01 00:00+00' + interval '{} minutes')",
                g.name, g.k, g.minute
            )
        })
        .collect();
    let sql = format!(
        "INSERT INTO engage.events (customer_id, name, properties, occurred_at) VALUES {}
         RETURNING id, name, (properties ->> 'k')::int8, extract(epoch FROM occurred_at - timestamptz '2026-01-01 00:00+00')::int8",
        values.join(", ")
    );
    let stored = client.query(&sql, &[]).unwrap_or_else(|e| panic!("{sql}: {}", error_text(&e)));
    stored
        .iter()
        .map(|r| {
            let name: String = r.get(1);
            let name = ["a", "x", "b"].into_iter().find(|n| *n == name).unwrap();
            Ev { id: r.get(0), name, k: r.get(2), at: r.get(3) }
        })
        .collect()
}

fn shuffle(order: &mut [&Generated], seed: u64) {
    let mut rng = xorshift(seed);
    for i in (1..order.len()).rev() {
        order.swap(i, (rng() % (i as u64 + 1)) as usize);
    }
}

fn xorshift(seed: u64) -> impl FnMut() -> u64 {
    let mut state = seed | 1;
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    }
}

fn arrive(client: &mut Client, customer: &str, arrival: Arrival, history: &[Generated], seed: u64) -> Vec<Ev> {
    let mut order: Vec<&Generated> = history.iter().collect();
    order.sort_by_key(|g| g.minute); // stable: ties keep their generated order
    let mut stored = Vec::new();
    match arrival {
        Arrival::InOrder => {
            for g in &order {
                stored.extend(insert_rows(client, customer, &[g]));
            }
        }
        Arrival::InOrderBatches => {
            let mut rng = xorshift(seed);
            let mut rest = &order[..];
            while !rest.is_empty() {
                let (batch, tail) = rest.split_at(((1 + rng() % 4) as usize).min(rest.len()));
                stored.extend(insert_rows(client, customer, batch));
                rest = tail;
            }
        }
        Arrival::OneStatementShuffled => {
            shuffle(&mut order, seed);
            stored = insert_rows(client, customer, &order);
        }
        Arrival::Shuffled => {
            shuffle(&mut order, seed);
            for g in &order {
                stored.extend(insert_rows(client, customer, &[g]));
            }
        }
    }
    stored
}

/// Per journey: (event id -> outcome) of its decisions, and its outbox rows.
type Observed = (BTreeMap<String, BTreeMap<i64, String>>, BTreeSet<(String, i64, i32, String)>);

fn observe(client: &mut Client, customer: &str) -> Observed {
    let mut decisions: BTreeMap<String, BTreeMap<i64, String>> = BTreeMap::new();
    for r in client
        .query(
            "SELECT t.name, d.event_id, coalesce(d.reason, d.outcome) FROM engage.decisions d
               JOIN engage.triggers t ON t.id = d.trigger_id WHERE d.customer_id = $1",
            &[&customer],
        )
        .unwrap()
    {
        let previous = decisions.entry(r.get(0)).or_default().insert(r.get(1), r.get(2));
        assert!(previous.is_none(), "an event decided twice for one journey");
    }
    let outbox = client
        .query(
            "SELECT t.name, o.event_id, o.step, o.status FROM engage.outbox o
               JOIN engage.triggers t ON t.id = o.trigger_id WHERE o.customer_id = $1",
            &[&customer],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    (decisions, outbox)
}

fn check(
    client: &mut Client,
    case: usize,
    arrival: Arrival,
    history: &[Generated],
    seed: u64,
) -> Result<(), TestCaseError> {
    let customer = format!("{arrival:?}-{case}");
    let evs = arrive(client, &customer, arrival, history, seed);
    let (decisions, outbox) = observe(client, &customer);
    let shown: Vec<String> = evs.iter().map(|e| format!("{}#{}@{}k{}", e.name, e.id, e.at / MINUTE, e.k)).collect();
    let matches: BTreeSet<i64> = evs.iter().filter(|e| e.name == "a").map(|e| e.id).collect();
    let mut expected_outbox = BTreeSet::new();
    for j in journeys() {
        let decided = decisions.get(j.name).cloned().unwrap_or_default();
        prop_assert_eq!(decided.keys().copied().collect::<BTreeSet<i64>>(), matches.clone(), "{} {:?}", j.name, shown);
        let entered: Vec<i64> =
            decided.iter().filter(|(_, o)| *o == "fired" || *o == "held_out").map(|(id, _)| *id).collect();
        let groups: BTreeSet<&String> = decided.values().filter(|o| *o == "fired" || *o == "held_out").collect();
        prop_assert!(groups.len() <= 1, "{}: a customer is either held out or not: {decided:?}", j.name);
        let fired: Vec<i64> = decided.iter().filter(|(_, o)| *o == "fired").map(|(id, _)| *id).collect();
        // Steps are cancelled by the final history, whatever the order.
        expected_outbox.extend(messages(&j, &fired, &evs));
        let not_entered = |o: &String| *o == if j.reentry == Reentry::AfterFinish { "reentry" } else { "cap" };
        prop_assert!(
            decided.values().all(|o| o == "fired" || o == "held_out" || not_entered(o)),
            "{}: {decided:?}",
            j.name
        );
        if arrival == Arrival::Shuffled {
            let mut e: Vec<&Ev> = evs.iter().filter(|e| entered.contains(&e.id)).collect();
            e.sort_by_key(|e| (e.at, e.id));
            for (i, later) in e.iter().enumerate() {
                for earlier in &e[..i] {
                    let ok = match j.reentry {
                        Reentry::Always => true,
                        Reentry::Once => false,
                        Reentry::OncePer(w) => later.at - earlier.at >= w * MINUTE,
                        Reentry::AfterFinish => (later.at, later.id) >= end(&j, earlier, &evs),
                    };
                    prop_assert!(ok, "{} {:?}: {:?} entered within {:?}", j.name, shown, later, earlier);
                }
            }
            if j.reentry == Reentry::Always {
                prop_assert_eq!(entered.len(), matches.len());
            }
        } else {
            let mut expected = entries(&j, &evs);
            expected.sort_unstable();
            prop_assert_eq!(&entered, &expected, "{} {:?} {:?}", j.name, arrival, shown);
        }
    }
    prop_assert_eq!(&outbox, &expected_outbox, "{:?} {:?}", arrival, shown);
    Ok(())
}

#[test]
fn journeys_match_the_reference_model_in_every_arrival_order() {
    let mut client = shared().create_db("journeys");
    for j in journeys() {
        create_trigger(&mut client, j.name, definition(&j));
    }
    let config = Config { cases: 120, failure_persistence: None, ..Config::default() };
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
    // The histories did exercise re-entry, exits and both groups of the holdout.
    let client = &mut client.borrow_mut();
    for (what, sql) in [
        ("a re-entry refused", "SELECT count(*) FROM engage.decisions WHERE reason = 'reentry'"),
        ("a step cancelled by an exit", "SELECT count(*) FROM engage.outbox WHERE status = 'cancelled'"),
        ("a held-out entry", "SELECT count(*) FROM engage.decisions WHERE outcome = 'held_out'"),
        (
            "a treated entry of the holdout journey",
            "SELECT count(*) FROM engage.decisions d JOIN engage.triggers t ON t.id = d.trigger_id
              WHERE t.name = 'held_out_half' AND d.outcome = 'fired'",
        ),
    ] {
        assert!(count(client, sql) > 0, "no {what} in the generated histories");
    }
}

/// The entries of one history, where the deliverer has sent every step already due and where it
/// has sent nothing: delivery does not decide membership.
#[test]
fn delivery_does_not_decide_membership() {
    let mut client = shared().create_db("journeys_delivery");
    create_trigger(&mut client, "drip", definition(&journeys()[0]));
    let history: Vec<Generated> =
        [0, 20, 70, 80, 150].into_iter().map(|minute| Generated { name: "a", k: 1, minute }).collect();
    let mut outcomes = Vec::new();
    for (customer, deliver) in [("undelivered", false), ("delivered", true)] {
        for g in &history {
            insert_rows(&mut client, customer, &[g]);
            if deliver {
                client
                    .execute("UPDATE engage.outbox SET status = 'sent', sent_at = now() WHERE status = 'pending'", &[])
                    .unwrap();
            }
        }
        let (decisions, _) = observe(&mut client, customer);
        outcomes.push(decisions["drip"].values().cloned().collect::<Vec<_>>());
    }
    // Memberships of an hour: 0 enters, 20 is within it, 70 enters, 80 is within, 150 enters.
    let expected = ["fired", "reentry", "fired", "reentry", "fired"];
    assert_eq!(outcomes[0], expected);
    assert_eq!(outcomes[1], expected);
}

/// A clickstream of 400 customers over three days (add to cart `a`, purchase `x`, view `b`, no
/// two events of a customer at one instant) and a one-step abandoned-cart journey: in time order
/// in one statement, shuffled in one statement, and row by row, the decisions and messages are
/// the same, and the messages are the model's.
#[test]
fn an_abandoned_cart_journey_over_a_clickstream_decides_alike_in_every_order() {
    let journey = Journey {
        name: "abandoned_cart",
        waits: vec![120],
        exit_same_k: false,
        reentry: Reentry::AfterFinish,
        holdout: 0.0,
    };
    let mut rng = xorshift(17);
    let mut clicks: Vec<(String, &'static str, i64)> = Vec::new();
    for c in 0..400 {
        let mut seconds = BTreeSet::new();
        for _ in 0..5 + rng() % 20 {
            seconds.insert((rng() % (3 * 86_400)) as i64);
        }
        for s in seconds {
            let name = match rng() % 10 {
                0..=4 => "a",
                5 => "x",
                _ => "b",
            };
            clicks.push((format!("c{c}"), name, s));
        }
    }
    clicks.sort_by_key(|&(_, _, s)| s);
    let values = |rows: &[&(String, &str, i64)]| {
        rows.iter()
            .map(|(c, n, s)| format!("('{c}', '{n}', timestamptz '2026-01-01 00:00+00' + interval '{s} seconds')"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let insert = "INSERT INTO engage.events (customer_id, name, occurred_at) VALUES";
    let in_time_order: Vec<&(String, &str, i64)> = clicks.iter().collect();
    let mut shuffled = in_time_order.clone();
    for i in (1..shuffled.len()).rev() {
        shuffled.swap(i, (rng() % (i as u64 + 1)) as usize);
    }
    let mut seen = Vec::new();
    for order in ["one_statement", "one_statement_shuffled", "row_by_row"] {
        let mut client = shared().create_db(&format!("clickstream_{order}"));
        create_trigger(&mut client, journey.name, definition(&journey));
        match order {
            "one_statement" => client.batch_execute(&format!("{insert} {}", values(&in_time_order))).unwrap(),
            "one_statement_shuffled" => client.batch_execute(&format!("{insert} {}", values(&shuffled))).unwrap(),
            _ => {
                for row in &in_time_order {
                    client.batch_execute(&format!("{insert} {}", values(&[row]))).unwrap();
                }
            }
        }
        let decided: BTreeSet<(String, i64, String, Option<String>)> = client
            .query(
                "SELECT d.customer_id, extract(epoch FROM d.occurred_at - timestamptz '2026-01-01 00:00+00')::int8,
                        coalesce(d.reason, d.outcome), o.status
                   FROM engage.decisions d LEFT JOIN engage.outbox o ON o.event_id = d.event_id",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect();
        if order == "one_statement" {
            // The model, customer by customer, over this database's event ids.
            let mut expected = 0;
            let mut by_customer: BTreeMap<String, Vec<Ev>> = BTreeMap::new();
            for r in client.query("SELECT id, customer_id, name, extract(epoch FROM occurred_at - timestamptz '2026-01-01 00:00+00')::int8 FROM engage.events", &[]).unwrap() {
                let name: String = r.get(2);
                let name = ["a", "x", "b"].into_iter().find(|n| *n == name).unwrap();
                by_customer.entry(r.get(1)).or_default().push(Ev { id: r.get(0), name, k: 0, at: r.get(3) });
            }
            for history in by_customer.values() {
                let fired = entries(&journey, history);
                expected += messages(&journey, &fired, history).iter().filter(|m| m.3 == "pending").count();
            }
            let queued = decided.iter().filter(|d| d.3.as_deref() == Some("pending")).count();
            assert_eq!(queued, expected, "abandoned-cart messages against the model");
            assert!(
                decided.iter().any(|d| d.2 == "reentry") && decided.iter().any(|d| d.3.as_deref() == Some("cancelled"))
            );
        }
        seen.push((order, decided));
    }
    for (order, decided) in &seen[1..] {
        assert!(decided == &seen[0].1, "{order} decides otherwise than one statement in time order");
    }
}
