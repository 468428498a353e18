//! The policy layer across sessions and with the deliverer running:
//!
//! * frequency caps across triggers and priority conflicts hold when several connections insert
//!   events of different triggers for one customer at the same moment;
//! * the send-time re-check: a customer put on the suppression list, or a frequency cap reached,
//!   after the message was queued, gets it suppressed (with its reason) instead of sent;
//! * end to end: a customer hit by four triggers in one minute, inside their local quiet hours,
//!   gets exactly the one the policy picks, due at the end of their quiet hours.

use pg_engage_it::delivery::*;
use pg_engage_it::*;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);
const THREADS: usize = 4;
const ROUNDS: usize = 20;

/// A database with one webhook trigger per thread: `t<n>` on event `e<n>`, priority n.
fn setup(db: &str) -> Client {
    let mut c = shared().create_db(db);
    for t in 0..THREADS {
        create_trigger(
            &mut c,
            &format!("t{t}"),
            json!({"event": format!("e{t}"), "priority": t, "action": {"channel": "webhook"}}),
        );
    }
    c
}

/// Each round, every thread inserts its own trigger's event for the round's customer, all at the
/// same moment (a rendezvous), with event times `spacing_minutes` apart per thread.
fn race(db: &str, spacing_minutes: i32) {
    in_lockstep(db, THREADS, ROUNDS, |tx, t, round| {
        tx.execute(
            "INSERT INTO engage.events (customer_id, name, occurred_at) \
             VALUES ($1, $2, '2025-03-01T10:00:00Z'::timestamptz + make_interval(mins => $3))",
            &[&format!("round-{round:02}"), &format!("e{t}"), &(t as i32 * spacing_minutes)],
        )
    });
}

/// Per customer: "trigger=outcome-or-reason" of every decision, by trigger name.
fn outcomes_by_customer(c: &mut Client) -> Vec<(String, String)> {
    c.query(
        "SELECT d.customer_id::text, string_agg(t.name || '=' || coalesce(d.reason, d.outcome), ',' ORDER BY t.name)
           FROM engage.decisions d JOIN engage.triggers t ON t.id = d.trigger_id GROUP BY 1 ORDER BY 1",
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

#[test]
fn a_frequency_cap_across_triggers_holds_when_connections_insert_at_the_same_moment() {
    let db = "policy_frequency_race";
    let mut c = setup(db);
    c.batch_execute("INSERT INTO engage.frequency_caps (max_messages, per) VALUES (2, '1 day')").unwrap();
    race(db, 20); // 20 minutes apart: beyond the conflict window, so only the frequency cap applies
    let all = outcomes_by_customer(&mut c);
    assert_eq!(all.len(), ROUNDS);
    for (customer, outcomes) in &all {
        let fired = outcomes.matches("=fired").count();
        let capped = outcomes.matches("=frequency").count();
        assert_eq!((fired, capped), (2, 2), "{customer}: two of four messages within the day: {outcomes}");
    }
    assert_eq!(count(&mut c, "SELECT count(*) FROM engage.outbox"), 2 * ROUNDS as i64);
}

#[test]
fn conflicts_across_connections_leave_exactly_the_highest_priority_message() {
    let db = "policy_conflict_race";
    let mut c = setup(db);
    race(db, 1); // within the ten-minute window: all four compete
    let all = outcomes_by_customer(&mut c);
    assert_eq!(all.len(), ROUNDS);
    for (customer, outcomes) in &all {
        // Whatever the commit order, the best one ends up fired: a later better trigger replaces
        // a pending message, a later worse one is the conflict.
        assert_eq!(outcomes, "t0=conflict,t1=conflict,t2=conflict,t3=fired", "{customer}");
    }
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM engage.outbox WHERE status = 'pending'"),
        ROUNDS as i64,
        "one message per customer"
    );
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM engage.outbox WHERE status NOT IN ('pending', 'suppressed')"),
        0,
        "replaced messages are suppressed, not lost"
    );
}

#[test]
fn the_deliverer_suppresses_what_no_longer_passes_the_policy_at_send_time() {
    let (cluster, mut c) = start_deliverer("policy_send_time", &[]);
    let receiver = HttpReceiver::new();
    c.execute(
        "INSERT INTO engage.channels (kind, config) VALUES ('webhook', jsonb_build_object('url', $1::text))",
        &[&receiver.url("/hook")],
    )
    .unwrap();
    // Delayed messages: queued while everything passes, due a few seconds later.
    create_trigger(&mut c, "later", json!({"event": "e", "wait": "3s", "action": {"channel": "webhook"}}));
    for customer in ["listed", "capped", "capped", "fine"] {
        insert_event(&mut c, customer, "e", json!({}));
    }
    assert_eq!(count(&mut c, "SELECT count(*) FROM engage.outbox WHERE status = 'pending'"), 4);
    // Meanwhile: a hard bounce, and a cap of one marketing message a day.
    c.batch_execute(
        "INSERT INTO engage.suppressions (customer_id, channel, reason) VALUES ('listed', 'webhook', 'hard_bounce');
         INSERT INTO engage.frequency_caps (max_messages, per) VALUES (1, '1 day');",
    )
    .unwrap();
    let rows = wait_settled(&cluster, &mut c, 4, WAIT);
    let summary: Vec<(String, String)> = rows.iter().map(|o| (o.customer_id.clone(), o.status.clone())).collect();
    assert_eq!(
        summary,
        vec![
            ("listed".to_string(), "suppressed".to_string()),
            ("capped".to_string(), "sent".to_string()),
            ("capped".to_string(), "suppressed".to_string()),
            ("fine".to_string(), "sent".to_string()),
        ]
    );
    let reasons: Vec<String> = c
        .query("SELECT customer_id || ':' || reason FROM engage.outbox WHERE status = 'suppressed' ORDER BY id", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(reasons, vec!["listed:suppression", "capped:frequency"]);
    std::thread::sleep(Duration::from_millis(500));
    let sent_to: Vec<String> =
        receiver.requests().iter().map(|r| r.json()["customer_id"].as_str().unwrap_or("").to_string()).collect();
    assert_eq!(sent_to.len(), 2, "{sent_to:?}");
    assert!(sent_to.contains(&"capped".to_string()) && sent_to.contains(&"fine".to_string()));
}

/// Four triggers in one minute for a New York customer while it is quiet there: the policy keeps
/// the highest priority one the customer can receive, and queues it for the end of quiet hours.
#[test]
fn four_triggers_in_one_minute_send_exactly_one_message_at_the_end_of_quiet_hours() {
    let (cluster, mut c) = start_deliverer("policy_end_to_end", &[]);
    let receiver = HttpReceiver::new();
    // Quiet on webhooks from an hour ago to two hours from now, New York wall clock (whole
    // minutes, so the expected end is exact).
    c.execute(
        "INSERT INTO engage.channels (kind, config, quiet_hours_start, quiet_hours_end) VALUES
           ('webhook', jsonb_build_object('url', $1::text),
            date_trunc('minute', now() AT TIME ZONE 'America/New_York')::time - interval '1 hour',
            date_trunc('minute', now() AT TIME ZONE 'America/New_York')::time + interval '2 hours')",
        &[&receiver.url("/hook")],
    )
    .unwrap();
    identify(&mut c, "ada", json!({"timezone": "America/New_York"}));
    c.batch_execute("UPDATE engage.profiles SET consent = '{\"sms\": false}' WHERE customer_id = 'ada'").unwrap();
    create_trigger(&mut c, "welcome", json!({"event": "signed_up", "priority": 1, "action": {"channel": "webhook"}}));
    create_trigger(&mut c, "browse", json!({"event": "viewed", "priority": 3, "action": {"channel": "webhook"}}));
    create_trigger(&mut c, "cart", json!({"event": "cart_updated", "priority": 5, "action": {"channel": "webhook"}}));
    create_trigger(
        &mut c,
        "vip_sms",
        json!({"event": "cart_updated", "priority": 9, "where": {"property": "value", "gt": 100},
               "action": {"channel": "sms", "template": "vip"}}),
    );
    // Four statements within a minute, as an app sends them.
    for (name, properties) in [
        ("signed_up", json!({})),
        ("viewed", json!({})),
        ("cart_updated", json!({"value": 250})),
        ("viewed", json!({})),
    ] {
        insert_event(&mut c, "ada", name, properties);
    }
    let outcomes = outcomes_by_customer(&mut c);
    assert_eq!(
        outcomes,
        vec![(
            "ada".to_string(),
            "browse=conflict,browse=conflict,cart=fired,vip_sms=consent,welcome=conflict".to_string()
        )]
    );
    let pending: Vec<(String, bool)> = c
        .query(
            "SELECT t.name, (o.due_at AT TIME ZONE 'America/New_York')::time = ch.quiet_hours_end
                            AND o.due_at BETWEEN now() + interval '1 hour 58 minutes' AND now() + interval '2 hours'
               FROM engage.outbox o JOIN engage.triggers t ON t.id = o.trigger_id
               JOIN engage.channels ch ON ch.kind = o.channel
              WHERE o.status = 'pending'",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(pending, vec![("cart".to_string(), true)], "one message, due when quiet hours end in New York");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(receiver.requests().is_empty(), "nothing goes out during quiet hours");

    // The morning comes (simulated: due now, quiet hours over): exactly the one message goes out.
    c.batch_execute(
        "UPDATE engage.channels SET quiet_hours_start = NULL, quiet_hours_end = NULL;
         UPDATE engage.outbox SET due_at = now() WHERE status = 'pending';",
    )
    .unwrap();
    let requests = receiver.wait_for_requests(1, WAIT, &cluster);
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(receiver.requests().len(), 1, "{requests:#?}");
    assert_eq!(requests[0].json()["type"], json!("cart"));
}
