//! COPY: 10,000 generated events loaded with one `COPY engage.events … FROM STDIN` are all stored
//! and decided exactly as the README's algorithm prescribes — predicate matching (including a
//! profile predicate), caps counted in occurred_at order within the statement, and conflicts
//! resolved per customer by priority within the default 10-minute `engage.conflict_window` —
//! checked row by row against a model computed from the same data, together with the outbox
//! rows. Also: a rolled-back COPY leaves nothing behind.

use pg_engage_it::*;
use std::collections::BTreeMap;
use std::io::Write;

const CUSTOMERS: usize = 1000;
const EVENTS_PER_CUSTOMER: usize = 10;
/// The default `engage.conflict_window`.
const CONFLICT_WINDOW_SECS: i64 = 600;
/// 2025-03-01T00:00:00Z
const BASE_EPOCH: i64 = 1_740_787_200;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Debug, Clone)]
struct Event {
    seq: i64,
    customer: String,
    name: &'static str,
    value: i64,
    items: i64,
    path: &'static str,
    /// seconds since the epoch
    at: i64,
}

impl Event {
    fn properties(&self) -> Value {
        json!({"seq": self.seq, "cart": {"value": self.value, "items": self.items}, "path": self.path})
    }
}

/// A trigger of the scenario: name, priority, cap (max per hour), and its predicate as a Rust
/// function over the event and the customer's "tier" trait.
struct Rule {
    name: &'static str,
    priority: i64,
    cap_per_hour: Option<usize>,
    matches: fn(&Event, Option<&str>) -> bool,
    definition: Value,
}

fn rules() -> Vec<Rule> {
    vec![
        Rule {
            name: "big_cart",
            priority: 10,
            cap_per_hour: Some(2),
            matches: |e, _| e.name == "cart_updated" && e.value > 100,
            definition: json!({"event": "cart_updated",
                               "where": {"property": "cart.value", "gt": 100},
                               "action": {"channel": "email", "template": "big_cart"},
                               "priority": 10, "cap": {"max": 2, "per": "1h"}}),
        },
        Rule {
            name: "vip_checkout",
            priority: 7,
            cap_per_hour: None,
            matches: |e, tier| e.name == "checkout" && tier == Some("vip"),
            definition: json!({"event": "checkout",
                               "where": {"profile": "tier", "eq": "vip"},
                               "action": {"channel": "sms", "template": "vip_checkout"},
                               "priority": 7}),
        },
        Rule {
            name: "many_items",
            priority: 5,
            cap_per_hour: None,
            matches: |e, _| (e.name == "cart_updated" || e.name == "checkout") && e.items >= 3,
            definition: json!({"event": ["cart_updated", "checkout"],
                               "where": {"property": "$.cart.items", "gte": 3},
                               "action": {"channel": "push", "template": "many_items"},
                               "priority": 5}),
        },
        Rule {
            name: "pricing_page",
            priority: 1,
            cap_per_hour: None,
            matches: |e, _| e.name == "page_viewed" && e.path.contains("pricing"),
            definition: json!({"event": "page_viewed",
                               "where": {"property": "path", "contains": "pricing"},
                               "action": {"channel": "webhook", "template": "pricing_page"},
                               "priority": 1}),
        },
        Rule {
            name: "welcome",
            priority: 0,
            cap_per_hour: None,
            matches: |e, _| e.name == "signed_up",
            definition: json!({"event": "signed_up",
                               "action": {"channel": "email", "template": "welcome"}}),
        },
    ]
}

fn tier_of(customer_index: usize) -> Option<&'static str> {
    match customer_index % 3 {
        0 => Some("vip"),
        1 => Some("regular"),
        _ => None, // no profile row
    }
}

/// Generates the events in COPY order: customers interleaved, each customer's events shuffled.
fn generate() -> Vec<Event> {
    let mut rng = Rng(0x5eed_0fe4_9a9e);
    let names = ["cart_updated", "checkout", "signed_up", "page_viewed"];
    let paths = ["/", "/pricing", "/docs/pricing", "/blog"];
    let mut events = Vec::with_capacity(CUSTOMERS * EVENTS_PER_CUSTOMER);
    for i in 0..CUSTOMERS {
        for k in 0..EVENTS_PER_CUSTOMER {
            // Seven minutes apart: no two events of a customer are exactly an hour apart, so
            // whether the window's edge is open or closed does not matter.
            let at = BASE_EPOCH + (i as i64 % 50) * 60 + k as i64 * 7 * 60 + (i as i64 % 5);
            events.push(Event {
                seq: 0,
                customer: format!("c{i:04}"),
                name: names[rng.below(4) as usize],
                value: rng.below(200) as i64,
                items: rng.below(6) as i64,
                path: paths[rng.below(4) as usize],
                at,
            });
        }
    }
    // Fisher-Yates shuffle, then number the rows in COPY order.
    for i in (1..events.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        events.swap(i, j);
    }
    for (seq, e) in events.iter_mut().enumerate() {
        e.seq = seq as i64;
    }
    events
}

/// (seq, trigger) → (outcome, reason) as README's "How an insert is decided" prescribes for one
/// statement on an empty database.
fn model(events: &[Event], rules: &[Rule]) -> BTreeMap<(i64, String), (String, Option<String>)> {
    let mut by_customer: BTreeMap<&str, Vec<&Event>> = BTreeMap::new();
    for e in events {
        by_customer.entry(&e.customer).or_default().push(e);
    }
    let mut out = BTreeMap::new();
    for (customer, mut evs) in by_customer {
        evs.sort_by_key(|e| e.at);
        let index: usize = customer[1..].parse().unwrap();
        let tier = tier_of(index);
        // Candidates per rule, in event-time order; step 3: caps.
        let mut remaining: Vec<(usize, i64, i64)> = vec![]; // (rule index, event time, seq)
        for (r, rule) in rules.iter().enumerate() {
            let mut passed_at: Vec<i64> = vec![];
            for e in evs.iter().filter(|e| (rule.matches)(e, tier)) {
                let within_cap = match rule.cap_per_hour {
                    None => true,
                    Some(max) => passed_at.iter().filter(|&&t| t > e.at - 3600).count() < max,
                };
                if within_cap {
                    passed_at.push(e.at);
                    remaining.push((r, e.at, e.seq));
                } else {
                    out.insert((e.seq, rule.name.to_string()), ("suppressed".into(), Some("cap".into())));
                }
            }
        }
        // Step 4: in order of priority (ties: lower id = earlier rule; then the earlier event), a
        // candidate fires unless a chosen candidate of another trigger is within the conflict
        // window (default 10 minutes) of it. Events of a customer are 7 minutes apart, so no
        // distance equals the window exactly.
        remaining.sort_by_key(|&(r, at, _)| (-rules[r].priority, r, at));
        let mut chosen: Vec<(usize, i64)> = vec![];
        for (r, at, seq) in remaining {
            let beaten = chosen.iter().any(|&(other, t)| other != r && (t - at).abs() <= CONFLICT_WINDOW_SECS);
            let decision = if beaten {
                ("suppressed".to_string(), Some("conflict".to_string()))
            } else {
                chosen.push((r, at));
                ("fired".to_string(), None)
            };
            out.insert((seq, rules[r].name.to_string()), decision);
        }
    }
    out
}

#[test]
fn copy_of_10000_events_is_decided_exactly_like_the_model() {
    let mut c = shared().create_db("copy_10k");
    let rules = rules();
    for rule in &rules {
        create_trigger(&mut c, rule.name, rule.definition.clone());
    }
    for i in 0..CUSTOMERS {
        if let Some(tier) = tier_of(i) {
            identify(&mut c, &format!("c{i:04}"), json!({"tier": tier}));
        }
    }
    let events = generate();
    assert_eq!(events.len(), 10_000);
    let mut data = Vec::with_capacity(events.len() * 120);
    for e in &events {
        let (h, m, s) = ((e.at - BASE_EPOCH) / 3600, (e.at - BASE_EPOCH) % 3600 / 60, (e.at - BASE_EPOCH) % 60);
        assert!(h < 24);
        writeln!(data, "{}\t{}\t{}\t2025-03-01 {h:02}:{m:02}:{s:02}+00", e.customer, e.name, e.properties()).unwrap();
    }
    let mut writer = c.copy_in("COPY engage.events (customer_id, name, properties, occurred_at) FROM STDIN").unwrap();
    writer.write_all(&data).unwrap();
    let copied = writer.finish().unwrap_or_else(|e| panic!("COPY failed: {}", error_text(&e)));
    assert_eq!(copied, 10_000, "COPY reports every row");
    assert_eq!(count(&mut c, "SELECT count(*) FROM engage.events"), 10_000);
    // Every event is stored with its own properties and occurred_at.
    let stored: BTreeMap<i64, (String, String, i64)> = c
        .query(
            "SELECT (properties->>'seq')::int8, customer_id::text, name::text, \
                    extract(epoch FROM occurred_at)::int8 FROM engage.events",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3))))
        .collect();
    assert_eq!(stored.len(), events.len());
    for e in &events {
        assert_eq!(
            stored.get(&e.seq),
            Some(&(e.customer.clone(), e.name.to_string(), e.at)),
            "stored event seq {}",
            e.seq
        );
    }

    let expected = model(&events, &rules);
    let actual: BTreeMap<(i64, String), (String, Option<String>)> = c
        .query(
            "SELECT (e.properties->>'seq')::int8, t.name::text, d.outcome::text, d.reason::text \
             FROM engage.decisions d \
             JOIN engage.events e ON e.id = d.event_id \
             JOIN engage.triggers t ON t.id = d.trigger_id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| ((r.get(0), r.get(1)), (r.get(2), r.get(3))))
        .collect();

    // Sanity: the scenario exercises every outcome.
    let fired_n = expected.values().filter(|(o, _)| o == "fired").count();
    let cap_n = expected.values().filter(|(_, r)| r.as_deref() == Some("cap")).count();
    let conflict_n = expected.values().filter(|(_, r)| r.as_deref() == Some("conflict")).count();
    assert!(fired_n > 500 && cap_n > 100 && conflict_n > 500, "{fired_n} {cap_n} {conflict_n}");
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM engage.decisions"),
        expected.len() as i64,
        "number of decisions (one per event and matching trigger)"
    );
    let mut differences = vec![];
    for (key, want) in &expected {
        match actual.get(key) {
            Some(got) if got == want => {}
            got => differences.push(format!("event seq {} trigger {}: want {want:?}, got {got:?}", key.0, key.1)),
        }
    }
    for key in actual.keys().filter(|k| !expected.contains_key(*k)) {
        differences.push(format!("event seq {} trigger {}: unexpected decision {:?}", key.0, key.1, actual[key]));
    }
    assert!(
        differences.is_empty(),
        "{} of {} decisions differ from the model, e.g.:\n{}",
        differences.len(),
        expected.len(),
        differences.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
    );

    // Outbox: one pending row per fired decision, with its trigger's channel and template, due
    // at the event's occurred_at.
    let by_seq: BTreeMap<i64, &Event> = events.iter().map(|e| (e.seq, e)).collect();
    let channel_of: BTreeMap<&str, String> =
        rules.iter().map(|r| (r.name, r.definition["action"]["channel"].as_str().unwrap().to_string())).collect();
    let mut want_outbox: Vec<(String, String, i64)> = expected
        .iter()
        .filter(|(_, (o, _))| o == "fired")
        .map(|((seq, name), _)| (name.clone(), channel_of[name.as_str()].clone(), by_seq[seq].at))
        .collect();
    want_outbox.sort();
    let mut got_outbox: Vec<(String, String, i64)> = c
        .query("SELECT template::text, channel::text, extract(epoch FROM due_at)::int8 FROM engage.outbox", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    got_outbox.sort();
    assert_eq!(got_outbox.len(), want_outbox.len(), "outbox rows");
    assert!(got_outbox == want_outbox, "outbox (template, channel, due_at) differ from the model");
    assert_eq!(count(&mut c, "SELECT count(*) FROM engage.outbox WHERE status::text <> 'pending'"), 0);
}

#[test]
fn rolled_back_copy_leaves_nothing() {
    let mut c = shared().create_db("copy_rollback");
    create_trigger(&mut c, "welcome", json!({"event": "signed_up", "action": email("welcome")}));
    let mut tx = c.transaction().unwrap();
    {
        let mut w = tx.copy_in("COPY engage.events (customer_id, name, properties, occurred_at) FROM STDIN").unwrap();
        for i in 0..100 {
            writeln!(w, "c{i}\tsigned_up\t{{}}\t2025-03-01 10:00:00+00").unwrap();
        }
        assert_eq!(w.finish().unwrap(), 100);
    }
    assert_eq!(count_tx(&mut tx, "SELECT count(*) FROM engage.outbox"), 100);
    tx.rollback().unwrap();
    assert_eq!(count(&mut c, "SELECT count(*) FROM engage.events"), 0);
    assert_eq!(count(&mut c, "SELECT count(*) FROM engage.decisions"), 0);
    assert_eq!(count(&mut c, "SELECT count(*) FROM engage.outbox"), 0);
}

fn count_tx(tx: &mut postgres::Transaction<'_>, sql: &str) -> i64 {
    tx.query_one(sql, &[]).unwrap().get(0)
}
