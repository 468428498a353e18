//! Caps against a reference model over random histories (proptest, fixed seed), in three arrival
//! orders: the whole history in one shuffled statement, row by row in event-time order, and row by
//! row shuffled (late and out-of-order events).
//!
//! - One statement and in-order arrival give exactly the model's decisions: in event-time order,
//!   an event fires unless its window already holds `max` fired ones.
//! - Shuffled arrival cannot always give the same decisions without taking back a decision
//!   already made (A at 10:00 arriving after B at 10:30, cap 1 per hour: B fired when it arrived,
//!   so A is capped, where in order A fires and B is capped). What holds in every order: no
//!   window of the cap ever holds more than `max` fired decisions, and every capped event is
//!   capped for a reason (with it, some window containing it would hold more than `max`).

use pg_engage_it::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

const MINUTE: i64 = 60_000_000;

/// (max, window in minutes) of the triggers, one per cap shape.
const CAPS: [(usize, i64); 3] = [(1, 60), (2, 60), (3, 45)];

fn trigger_name(i: usize) -> String {
    format!("cap{}_per{}m", CAPS[i].0, CAPS[i].1)
}

/// The model: in event-time order (equal times in arrival order, as the events' ids are), fire
/// unless the window ending at the event already holds `max` fired events. `arrival[k]` is the
/// index of the k-th event to arrive.
fn model(times: &[i64], arrival: &[usize], max: usize, window: i64) -> Vec<bool> {
    let mut rank = vec![0; times.len()];
    for (k, &i) in arrival.iter().enumerate() {
        rank[i] = k;
    }
    let mut order: Vec<usize> = (0..times.len()).collect();
    order.sort_by_key(|&i| (times[i], rank[i]));
    let mut fired = vec![false; times.len()];
    let mut fired_times: Vec<i64> = Vec::new();
    for i in order {
        let t = times[i];
        if fired_times.iter().filter(|&&f| f > t - window && f <= t).count() < max {
            fired[i] = true;
            fired_times.push(t);
        }
    }
    fired
}

/// Whether a window `(end - window, end]` containing `t` would hold more than `max` of `fired`
/// plus one at `t`.
fn would_break(t: i64, fired: &[i64], max: usize, window: i64) -> bool {
    (0..window).map(|d| t + d).any(|end| fired.iter().filter(|&&f| f > end - window && f <= end).count() + 1 > max)
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Arrival {
    OneStatement,
    InOrder,
    Shuffled,
}

fn shuffled(n: usize, seed: u64) -> Vec<usize> {
    let mut state = seed | 1;
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        order.swap(i, (state % (i as u64 + 1)) as usize);
    }
    order
}

/// Inserts the history for `customer` and returns, per trigger, which events fired (by index),
/// and the arrival order.
fn run(c: &mut Client, customer: &str, minutes: &[i64], arrival: Arrival, seed: u64) -> (Vec<Vec<bool>>, Vec<usize>) {
    let insert = "INSERT INTO engage.events (customer_id, name, properties, occurred_at)
                  SELECT $1, 'ping', jsonb_build_object('i', i), '2025-06-01T00:00:00Z'::timestamptz + m * interval '1 minute'
                    FROM unnest($2::int8[], $3::int8[]) AS u(i, m)";
    let order = match arrival {
        Arrival::InOrder => {
            let mut o: Vec<usize> = (0..minutes.len()).collect();
            o.sort_by_key(|&i| (minutes[i], i));
            o
        }
        Arrival::OneStatement | Arrival::Shuffled => shuffled(minutes.len(), seed),
    };
    let rows = |idx: &[usize]| -> (Vec<i64>, Vec<i64>) { idx.iter().map(|&i| (i as i64, minutes[i])).unzip() };
    if arrival == Arrival::OneStatement {
        let (ids, ms) = rows(&order);
        c.execute(insert, &[&customer, &ids, &ms]).unwrap();
    } else {
        for &i in &order {
            let (ids, ms) = rows(&[i]);
            c.execute(insert, &[&customer, &ids, &ms]).unwrap();
        }
    }
    let decided = (0..CAPS.len())
        .map(|t| {
            let fired: Vec<i64> = c
                .query(
                    "SELECT (e.properties ->> 'i')::int8 FROM engage.decisions d
                       JOIN engage.events e ON e.id = d.event_id JOIN engage.triggers t ON t.id = d.trigger_id
                      WHERE d.customer_id = $1 AND t.name = $2 AND d.outcome = 'fired'",
                    &[&customer, &trigger_name(t)],
                )
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect();
            (0..minutes.len()).map(|i| fired.contains(&(i as i64))).collect()
        })
        .collect();
    (decided, order)
}

#[test]
fn caps_match_the_model_in_order_and_hold_in_every_arrival_order() {
    let mut client = shared().create_db("cap_model");
    for (i, (max, per)) in CAPS.iter().enumerate() {
        create_trigger(
            &mut client,
            &trigger_name(i),
            json!({"event": "ping", "category": "transactional", "action": {"channel": "webhook"},
                   "cap": {"max": max, "per": format!("{per}m")}}),
        );
    }
    let config = Config { cases: 150, failure_persistence: None, ..Config::default() };
    let mut runner = TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha));
    let case = std::cell::Cell::new(0usize);
    let client = std::cell::RefCell::new(client);
    let histories = proptest::collection::vec(0i64..240, 2..14);
    runner
        .run(&(histories, any::<u64>()), |(minutes, seed)| {
            case.set(case.get() + 1);
            let c = &mut client.borrow_mut();
            for arrival in [Arrival::OneStatement, Arrival::InOrder, Arrival::Shuffled] {
                let customer = format!("{arrival:?}-{}", case.get());
                let (decided, order) = run(c, &customer, &minutes, arrival, seed);
                for (t, &(max, per)) in CAPS.iter().enumerate() {
                    let window = per * MINUTE;
                    let times: Vec<i64> = minutes.iter().map(|m| m * MINUTE).collect();
                    let fired = &decided[t];
                    if arrival != Arrival::Shuffled {
                        prop_assert_eq!(
                            fired,
                            &model(&times, &order, max, window),
                            "{:?} {} {:?}",
                            arrival,
                            trigger_name(t),
                            minutes
                        );
                    }
                    let fired_times: Vec<i64> = (0..times.len()).filter(|&i| fired[i]).map(|i| times[i]).collect();
                    let mut sorted = fired_times.clone();
                    sorted.sort();
                    for w in sorted.windows(max + 1) {
                        prop_assert!(
                            w[max] - w[0] >= window,
                            "{:?} {}: window broken {:?}",
                            arrival,
                            trigger_name(t),
                            minutes
                        );
                    }
                    for i in (0..times.len()).filter(|&i| !fired[i]) {
                        // Step the window ends by minutes: every time here is a whole minute.
                        let ends_in_minutes = would_break(
                            minutes[i],
                            &fired_times.iter().map(|f| f / MINUTE).collect::<Vec<_>>(),
                            max,
                            per,
                        );
                        prop_assert!(
                            ends_in_minutes,
                            "{:?} {}: event {} capped without reason {:?}",
                            arrival,
                            trigger_name(t),
                            i,
                            minutes
                        );
                    }
                }
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
}
