//! Priority conflicts: candidates of different triggers for one customer whose events are within
//! `engage.conflict_window` (default 10 minutes) of each other compete, in one statement or
//! across statements: in order of `priority` (ties: the older trigger, lower id) a candidate fires
//! unless a chosen candidate of another trigger is that close, else it is `suppressed` with reason
//! `conflict`; a better trigger in a later statement replaces a pending message. A trigger
//! suppressed by its cap does not block a lower-priority one; a lower-priority candidate far
//! enough from every better one still fires; different customers never conflict; the window
//! follows `SET engage.conflict_window`.

use pg_engage_it::*;

fn trigger(c: &mut Client, name: &str, event: &str, priority: Option<i64>, cap: Option<Value>) -> i32 {
    let mut def = json!({"event": event, "action": email(name)});
    if let Some(p) = priority {
        def["priority"] = json!(p);
    }
    if let Some(cap) = cap {
        def["cap"] = cap;
    }
    create_trigger(c, name, def)
}

#[test]
fn higher_priority_fires_and_lower_is_suppressed_for_conflict() {
    let mut c = shared().create_db("conflict_priority");
    trigger(&mut c, "low", "cart", Some(5), None);
    trigger(&mut c, "high", "cart", Some(10), None);
    let e = insert_event(&mut c, "c1", "cart", json!({}));
    let mut got = decisions_for(&mut c, e);
    got.sort();
    let mut want = vec![fired("high"), suppressed("low", "conflict")];
    want.sort();
    assert_eq!(got, want);
    assert_eq!(outbox_for_template(&mut c, Some("high")).len(), 1);
    assert_eq!(outbox_for_template(&mut c, Some("low")).len(), 0, "a suppressed decision queues nothing");
}

#[test]
fn equal_priorities_go_to_the_older_trigger() {
    let mut c = shared().create_db("conflict_tie");
    // Names sort the other way round, so only the id can decide.
    let older = trigger(&mut c, "zz_older", "cart", Some(3), None);
    let newer = trigger(&mut c, "aa_newer", "cart", Some(3), None);
    assert!(older < newer, "ids grow: {older} then {newer}");
    let e = insert_event(&mut c, "c1", "cart", json!({}));
    assert_eq!(decisions_for(&mut c, e), vec![fired("zz_older"), suppressed("aa_newer", "conflict")]);
}

#[test]
fn default_priority_is_zero() {
    let mut c = shared().create_db("conflict_default_priority");
    trigger(&mut c, "default", "cart", None, None);
    trigger(&mut c, "one", "cart", Some(1), None);
    trigger(&mut c, "minus_one", "cart", Some(-1), None);
    let e = insert_event(&mut c, "c1", "cart", json!({}));
    assert_eq!(
        decisions_for(&mut c, e),
        vec![suppressed("default", "conflict"), fired("one"), suppressed("minus_one", "conflict")]
    );
    c.execute("SELECT engage.drop_trigger('one')", &[]).unwrap();
    let e = insert_event(&mut c, "c1", "cart", json!({}));
    assert_eq!(decisions_for(&mut c, e), vec![fired("default"), suppressed("minus_one", "conflict")]);
}

#[test]
fn capped_higher_priority_does_not_block_a_lower_one() {
    let mut c = shared().create_db("conflict_capped_high");
    trigger(&mut c, "high", "cart", Some(10), Some(json!({"max": 1, "per": "1d"})));
    trigger(&mut c, "low", "cart", Some(1), None);
    let e1 = insert_event_at(&mut c, "c1", "cart", json!({}), "2025-03-01T10:00:00Z");
    assert_eq!(decisions_for(&mut c, e1), vec![fired("high"), suppressed("low", "conflict")]);
    let e2 = insert_event_at(&mut c, "c1", "cart", json!({}), "2025-03-01T11:00:00Z");
    assert_eq!(decisions_for(&mut c, e2), vec![suppressed("high", "cap"), fired("low")]);
    assert_eq!(outbox_for_template(&mut c, Some("high")).len(), 1);
    assert_eq!(outbox_for_template(&mut c, Some("low")).len(), 1);
}

#[test]
fn conflict_spans_different_events_of_one_customer_in_one_statement() {
    let mut c = shared().create_db("conflict_same_statement");
    create_trigger(
        &mut c,
        "cart_big",
        json!({"event": "cart", "where": {"property": "v", "gt": 100}, "action": email("cart_big"), "priority": 10}),
    );
    create_trigger(&mut c, "viewed", json!({"event": "view", "action": email("viewed"), "priority": 1}));
    let rows: Vec<(i64, String, String)> = c
        .query(
            "INSERT INTO engage.events (customer_id, name, properties) VALUES \
             ('c1', 'view', '{}'), ('c1', 'cart', '{\"v\": 500}'), \
             ('c2', 'view', '{}'), ('c3', 'cart', '{\"v\": 500}'), \
             ('c4', 'view', '{}'), ('c4', 'cart', '{\"v\": 5}') \
             RETURNING id::int8, customer_id::text, name::text",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    for (id, customer, name) in rows {
        let expected = match (customer.as_str(), name.as_str()) {
            // c1 has candidates of both triggers in this statement: the higher wins.
            ("c1", "view") => vec![suppressed("viewed", "conflict")],
            ("c1", "cart") => vec![fired("cart_big")],
            // Other customers do not conflict with c1 or with each other.
            ("c2", "view") => vec![fired("viewed")],
            ("c3", "cart") => vec![fired("cart_big")],
            // c4's cart does not match (v = 5), so only one trigger has a candidate.
            ("c4", "view") => vec![fired("viewed")],
            ("c4", "cart") => vec![],
            other => panic!("unexpected row {other:?}"),
        };
        assert_eq!(decisions_for(&mut c, id), expected, "{customer} {name}");
    }
}

#[test]
fn a_later_statement_competes_with_stored_decisions() {
    let mut c = shared().create_db("conflict_separate_statements");
    trigger(&mut c, "high", "cart", Some(10), None);
    trigger(&mut c, "low", "view", Some(1), None);
    // c1: low first, then high (another transaction): high replaces low's pending message.
    // c2: high first, then low: low is the conflict.
    let view = insert_event(&mut c, "c1", "view", json!({}));
    let cart = insert_event(&mut c, "c1", "cart", json!({}));
    assert_eq!(decisions_for(&mut c, view), vec![suppressed("low", "conflict")]);
    assert_eq!(decisions_for(&mut c, cart), vec![fired("high")]);
    let replaced: (String, Option<String>, Option<String>) = {
        let r =
            c.query_one("SELECT status, reason, last_error FROM engage.outbox WHERE event_id = $1", &[&view]).unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    assert_eq!((replaced.0.as_str(), replaced.1.as_deref()), ("suppressed", Some("conflict")));
    assert!(replaced.2.unwrap_or_default().contains(&format!("event {cart}")), "names the winner");
    let cart = insert_event(&mut c, "c2", "cart", json!({}));
    let view = insert_event(&mut c, "c2", "view", json!({}));
    assert_eq!(decisions_for(&mut c, cart), vec![fired("high")]);
    assert_eq!(decisions_for(&mut c, view), vec![suppressed("low", "conflict")]);
    assert_eq!(count(&mut c, "SELECT count(*) FROM engage.outbox WHERE status = 'pending'"), 2, "one per customer");
}

#[test]
fn disabled_triggers_take_no_part_in_conflicts() {
    let mut c = shared().create_db("conflict_disabled");
    trigger(&mut c, "high", "cart", Some(10), None);
    trigger(&mut c, "low", "cart", Some(1), None);
    c.execute("SELECT engage.disable_trigger('high')", &[]).unwrap();
    let e = insert_event(&mut c, "c1", "cart", json!({}));
    assert_eq!(decisions_for(&mut c, e), vec![fired("low")]);
}

#[test]
fn non_matching_higher_priority_does_not_suppress() {
    let mut c = shared().create_db("conflict_non_matching");
    create_trigger(
        &mut c,
        "high",
        json!({"event": "cart", "where": {"property": "v", "gt": 100}, "action": email("high"), "priority": 10}),
    );
    trigger(&mut c, "low", "cart", Some(1), None);
    let e = insert_event(&mut c, "c1", "cart", json!({"v": 5}));
    assert_eq!(decisions_for(&mut c, e), vec![fired("low")], "no decision for a trigger whose predicate fails");
}

// ---------------------------------------------------------------------------------------------
// engage.conflict_window
// ---------------------------------------------------------------------------------------------

/// (customer, event name, "HH:MM") and the event's decisions.
type Outcomes = Vec<((String, String, String), Vec<Decision>)>;

/// Triggers `high` (priority 10, event `cart`), `mid` (5, `wish`) and `low` (1, `view`).
fn three_levels(c: &mut Client) {
    trigger(c, "high", "cart", Some(10), None);
    trigger(c, "mid", "wish", Some(5), None);
    trigger(c, "low", "view", Some(1), None);
}

/// Inserts `(customer, event name, "HH:MM")` rows on 2025-03-01 in one statement; returns
/// (customer, name, time) → decisions.
fn one_statement(c: &mut Client, rows: &[(&str, &str, &str)]) -> Outcomes {
    let values: Vec<String> =
        rows.iter().map(|(cust, name, hhmm)| format!("('{cust}', '{name}', '2025-03-01T{hhmm}:00Z')")).collect();
    let sql = format!(
        "INSERT INTO engage.events (customer_id, name, occurred_at) VALUES {} \
         RETURNING id::int8, customer_id::text, name::text, to_char(occurred_at AT TIME ZONE 'UTC', 'HH24:MI')",
        values.join(", ")
    );
    let inserted: Vec<(i64, String, String, String)> = c
        .query(&sql, &[])
        .unwrap_or_else(|e| panic!("{sql}: {}", error_text(&e)))
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(inserted.len(), rows.len());
    inserted.into_iter().map(|(id, cust, name, at)| ((cust, name, at), decisions_for(c, id))).collect()
}

#[track_caller]
fn assert_decisions(got: &Outcomes, want: &[(&str, &str, &str, Decision)]) {
    assert_eq!(got.len(), want.len());
    for (cust, name, at, decision) in want {
        let found = got
            .iter()
            .find(|((c, n, t), _)| c == cust && n == name && t == at)
            .unwrap_or_else(|| panic!("no event {cust} {name} {at}"));
        assert_eq!(found.1, vec![decision.clone()], "{cust} {name} at {at}");
    }
}

#[test]
fn only_events_within_the_default_ten_minute_window_conflict() {
    let mut c = shared().create_db("conflict_window_default");
    three_levels(&mut c);
    let got = one_statement(
        &mut c,
        &[
            // 9 minutes apart: conflict
            ("near", "view", "10:00"),
            ("near", "cart", "10:09"),
            // 11 minutes apart: both fire
            ("far", "view", "10:00"),
            ("far", "cart", "10:11"),
            // the lower-priority event before and after the better one
            ("both_sides", "view", "09:55"),
            ("both_sides", "cart", "10:00"),
            ("both_sides", "view", "10:30"),
        ],
    );
    assert_decisions(
        &got,
        &[
            ("near", "view", "10:00", suppressed("low", "conflict")),
            ("near", "cart", "10:09", fired("high")),
            ("far", "view", "10:00", fired("low")),
            ("far", "cart", "10:11", fired("high")),
            ("both_sides", "view", "09:55", suppressed("low", "conflict")),
            ("both_sides", "cart", "10:00", fired("high")),
            ("both_sides", "view", "10:30", fired("low")),
        ],
    );
}

/// Only candidates that were chosen (fired) block others: `mid` loses to `high`, so it does not
/// block `low` although it is close to it.
#[test]
fn suppressed_candidates_do_not_block_lower_ones() {
    let mut c = shared().create_db("conflict_window_chain");
    three_levels(&mut c);
    let got = one_statement(&mut c, &[("c1", "cart", "10:00"), ("c1", "wish", "10:09"), ("c1", "view", "10:16")]);
    assert_decisions(
        &got,
        &[
            ("c1", "cart", "10:00", fired("high")),
            ("c1", "wish", "10:09", suppressed("mid", "conflict")),
            // 16 minutes from the chosen cart, 7 from the suppressed wish: fires
            ("c1", "view", "10:16", fired("low")),
        ],
    );
}

/// Candidates of one trigger never conflict with each other, however close.
#[test]
fn one_trigger_does_not_conflict_with_itself() {
    let mut c = shared().create_db("conflict_window_same_trigger");
    three_levels(&mut c);
    let got = one_statement(&mut c, &[("c1", "view", "10:00"), ("c1", "view", "10:01"), ("c1", "view", "10:02")]);
    assert_decisions(
        &got,
        &[
            ("c1", "view", "10:00", fired("low")),
            ("c1", "view", "10:01", fired("low")),
            ("c1", "view", "10:02", fired("low")),
        ],
    );
}

#[test]
fn conflict_window_follows_the_session_setting() {
    let mut c = shared().create_db("conflict_window_setting");
    three_levels(&mut c);
    c.batch_execute("SET engage.conflict_window = '1h'").unwrap();
    let got = one_statement(&mut c, &[("wide", "view", "10:00"), ("wide", "cart", "10:45")]);
    assert_decisions(
        &got,
        &[("wide", "view", "10:00", suppressed("low", "conflict")), ("wide", "cart", "10:45", fired("high"))],
    );
    c.batch_execute("SET engage.conflict_window = '1min'").unwrap();
    let got = one_statement(&mut c, &[("narrow", "view", "10:00"), ("narrow", "cart", "10:05")]);
    assert_decisions(&got, &[("narrow", "view", "10:00", fired("low")), ("narrow", "cart", "10:05", fired("high"))]);
    c.batch_execute("RESET engage.conflict_window").unwrap();
    let got = one_statement(&mut c, &[("reset", "view", "10:00"), ("reset", "cart", "10:05")]);
    assert_decisions(
        &got,
        &[("reset", "view", "10:00", suppressed("low", "conflict")), ("reset", "cart", "10:05", fired("high"))],
    );
}
