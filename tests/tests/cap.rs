//! Caps: `{"max": N, "per": "<duration>"}` allows at most N fired decisions per customer per
//! rolling window of event time (`occurred_at`); the rest are `suppressed` with reason `cap`.
//! Covers separate statements, one transaction, one multi-row INSERT (counted in occurred_at
//! order), per-customer and per-trigger counting, suppressed decisions not counting, and
//! concurrency: several connections inserting for one customer at the same moment never exceed
//! the cap, and multi-customer statements in opposite orders never deadlock.

use pg_engage_it::*;

const CAPPED: &str = "capped";

fn create_capped(c: &mut Client, max: i64, per: &str) -> i32 {
    create_trigger(c, CAPPED, json!({"event": "ping", "action": email(CAPPED), "cap": {"max": max, "per": per}}))
}

fn ping_at(c: &mut Client, customer: &str, at: &str) -> i64 {
    insert_event_at(c, customer, "ping", json!({}), at)
}

#[test]
fn cap_suppresses_beyond_max_in_window_and_fires_again_after_it() {
    let mut c = shared().create_db("cap_basic");
    create_capped(&mut c, 2, "1h");
    let e1 = ping_at(&mut c, "c1", "2025-03-01T10:00:00Z");
    let e2 = ping_at(&mut c, "c1", "2025-03-01T10:10:00Z");
    let e3 = ping_at(&mut c, "c1", "2025-03-01T10:20:00Z");
    assert_eq!(decisions_for(&mut c, e1), vec![fired(CAPPED)]);
    assert_eq!(decisions_for(&mut c, e2), vec![fired(CAPPED)]);
    assert_eq!(decisions_for(&mut c, e3), vec![suppressed(CAPPED, "cap")]);
    assert_eq!(outbox_for_template(&mut c, Some(CAPPED)).len(), 2, "only fired decisions are queued");

    // 11:30: the window (10:30, 11:30] holds no fired decision any more.
    let e4 = ping_at(&mut c, "c1", "2025-03-01T11:30:00Z");
    assert_eq!(decisions_for(&mut c, e4), vec![fired(CAPPED)]);
    assert_eq!(outbox_for_template(&mut c, Some(CAPPED)).len(), 3);
}

#[test]
fn cap_window_is_rolling_not_a_fixed_bucket() {
    let mut c = shared().create_db("cap_rolling");
    create_capped(&mut c, 2, "1h");
    let a = ping_at(&mut c, "c1", "2025-03-01T10:50:00Z");
    let b = ping_at(&mut c, "c1", "2025-03-01T10:55:00Z");
    // A new clock hour, but 10:50 and 10:55 are within the last hour.
    let d = ping_at(&mut c, "c1", "2025-03-01T11:05:00Z");
    // 10:50 has left the window, 10:55 has not: one slot free.
    let e = ping_at(&mut c, "c1", "2025-03-01T11:51:00Z");
    // 10:55 and 11:51 are in the window.
    let f = ping_at(&mut c, "c1", "2025-03-01T11:52:00Z");
    assert_eq!(decisions_for(&mut c, a), vec![fired(CAPPED)]);
    assert_eq!(decisions_for(&mut c, b), vec![fired(CAPPED)]);
    assert_eq!(decisions_for(&mut c, d), vec![suppressed(CAPPED, "cap")]);
    assert_eq!(decisions_for(&mut c, e), vec![fired(CAPPED)]);
    assert_eq!(decisions_for(&mut c, f), vec![suppressed(CAPPED, "cap")]);
}

#[test]
fn suppressed_decisions_do_not_use_up_the_cap() {
    let mut c = shared().create_db("cap_suppressed_not_counted");
    create_capped(&mut c, 2, "1h");
    ping_at(&mut c, "c1", "2025-03-01T10:00:00Z");
    ping_at(&mut c, "c1", "2025-03-01T10:10:00Z");
    let capped = ping_at(&mut c, "c1", "2025-03-01T10:20:00Z");
    assert_eq!(decisions_for(&mut c, capped), vec![suppressed(CAPPED, "cap")]);
    // Window (10:05, 11:05]: fired 10:10, suppressed 10:20 → one fired → fires.
    let e = ping_at(&mut c, "c1", "2025-03-01T11:05:00Z");
    assert_eq!(decisions_for(&mut c, e), vec![fired(CAPPED)]);
}

#[test]
fn cap_counts_per_customer() {
    let mut c = shared().create_db("cap_per_customer");
    create_capped(&mut c, 1, "1d");
    let a1 = ping_at(&mut c, "alice", "2025-03-01T10:00:00Z");
    let b1 = ping_at(&mut c, "bob", "2025-03-01T10:01:00Z");
    let a2 = ping_at(&mut c, "alice", "2025-03-01T10:02:00Z");
    let b2 = ping_at(&mut c, "bob", "2025-03-01T10:03:00Z");
    assert_eq!(decisions_for(&mut c, a1), vec![fired(CAPPED)]);
    assert_eq!(decisions_for(&mut c, b1), vec![fired(CAPPED)]);
    assert_eq!(decisions_for(&mut c, a2), vec![suppressed(CAPPED, "cap")]);
    assert_eq!(decisions_for(&mut c, b2), vec![suppressed(CAPPED, "cap")]);
}

#[test]
fn cap_counts_per_trigger() {
    let mut c = shared().create_db("cap_per_trigger");
    create_trigger(&mut c, "x", json!({"event": "a", "action": email("x"), "cap": {"max": 1, "per": "1h"}}));
    create_trigger(&mut c, "y", json!({"event": "b", "action": email("y"), "cap": {"max": 1, "per": "1h"}}));
    let x1 = insert_event_at(&mut c, "c1", "a", json!({}), "2025-03-01T10:00:00Z");
    // 30 minutes apart, beyond the conflict window, so only the caps are at play.
    let y1 = insert_event_at(&mut c, "c1", "b", json!({}), "2025-03-01T10:30:00Z");
    let x2 = insert_event_at(&mut c, "c1", "a", json!({}), "2025-03-01T10:45:00Z");
    assert_eq!(decisions_for(&mut c, x1), vec![fired("x")]);
    assert_eq!(decisions_for(&mut c, y1), vec![fired("y")], "x's fired decision must not count for y");
    assert_eq!(decisions_for(&mut c, x2), vec![suppressed("x", "cap")]);
}

#[test]
fn cap_durations_with_minutes_and_combined_units() {
    let mut c = shared().create_db("cap_durations");
    create_capped(&mut c, 1, "1h 30m");
    let a = ping_at(&mut c, "c1", "2025-03-01T10:00:00Z");
    let b = ping_at(&mut c, "c1", "2025-03-01T11:20:00Z"); // 80 minutes later: within 90m
    let d = ping_at(&mut c, "c1", "2025-03-01T11:40:00Z"); // 100 minutes later: outside
    assert_eq!(decisions_for(&mut c, a), vec![fired(CAPPED)]);
    assert_eq!(decisions_for(&mut c, b), vec![suppressed(CAPPED, "cap")]);
    assert_eq!(decisions_for(&mut c, d), vec![fired(CAPPED)]);
}

#[test]
fn one_multi_row_insert_is_counted_in_occurred_at_order() {
    let mut c = shared().create_db("cap_multi_row");
    create_capped(&mut c, 2, "1h");
    // Rows listed out of event-time order; two customers interleaved.
    let rows = c
        .query(
            "INSERT INTO engage.events (customer_id, name, properties, occurred_at) VALUES \
             ('c1', 'ping', '{\"at\": \"10:20\"}', '2025-03-01T10:20:00Z'), \
             ('c2', 'ping', '{\"at\": \"10:30\"}', '2025-03-01T10:30:00Z'), \
             ('c1', 'ping', '{\"at\": \"10:00\"}', '2025-03-01T10:00:00Z'), \
             ('c2', 'ping', '{\"at\": \"10:15\"}', '2025-03-01T10:15:00Z'), \
             ('c1', 'ping', '{\"at\": \"10:10\"}', '2025-03-01T10:10:00Z'), \
             ('c2', 'ping', '{\"at\": \"10:05\"}', '2025-03-01T10:05:00Z') \
             RETURNING id::int8, customer_id::text, properties->>'at'",
            &[],
        )
        .unwrap();
    assert_eq!(rows.len(), 6);
    for row in &rows {
        let (id, customer, at): (i64, String, String) = (row.get(0), row.get(1), row.get(2));
        let expected = match (customer.as_str(), at.as_str()) {
            ("c1", "10:00") | ("c1", "10:10") | ("c2", "10:05") | ("c2", "10:15") => fired(CAPPED),
            _ => suppressed(CAPPED, "cap"),
        };
        assert_eq!(decisions_for(&mut c, id), vec![expected], "{customer} at {at}");
    }
    assert_eq!(outbox_for_template(&mut c, Some(CAPPED)).len(), 4);
}

#[test]
fn cap_sees_earlier_statements_of_the_same_transaction() {
    let mut c = shared().create_db("cap_same_transaction");
    create_capped(&mut c, 2, "1h");
    let mut tx = c.transaction().unwrap();
    let mut ids = vec![];
    for at in ["10:00", "10:10", "10:20"] {
        let id: i64 = tx
            .query_one(
                "INSERT INTO engage.events (customer_id, name, occurred_at) \
                 VALUES ('c1', 'ping', $1::text::timestamptz) RETURNING id::int8",
                &[&format!("2025-03-01T{at}:00Z")],
            )
            .unwrap()
            .get(0);
        ids.push(id);
    }
    tx.commit().unwrap();
    assert_eq!(decisions_for(&mut c, ids[0]), vec![fired(CAPPED)]);
    assert_eq!(decisions_for(&mut c, ids[1]), vec![fired(CAPPED)]);
    assert_eq!(decisions_for(&mut c, ids[2]), vec![suppressed(CAPPED, "cap")]);
}

#[test]
fn cap_counts_fired_decisions_of_earlier_statements_in_a_later_multi_row_insert() {
    let mut c = shared().create_db("cap_mixed_statements");
    create_capped(&mut c, 2, "1h");
    let first = ping_at(&mut c, "c1", "2025-03-01T10:00:00Z");
    let rows: Vec<(i64, String)> = c
        .query(
            "INSERT INTO engage.events (customer_id, name, occurred_at) VALUES \
             ('c1', 'ping', '2025-03-01T10:30:00Z'), ('c1', 'ping', '2025-03-01T10:20:00Z') \
             RETURNING id::int8, to_char(occurred_at AT TIME ZONE 'UTC', 'HH24:MI')",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(decisions_for(&mut c, first), vec![fired(CAPPED)]);
    for (id, at) in rows {
        let expected = if at == "10:20" { fired(CAPPED) } else { suppressed(CAPPED, "cap") };
        assert_eq!(decisions_for(&mut c, id), vec![expected], "event at {at}");
    }
}

// ---------------------------------------------------------------------------------------------
// concurrency
// ---------------------------------------------------------------------------------------------

/// Per customer: (fired, suppressed for cap, all decisions).
fn tallies(c: &mut Client) -> Vec<(String, i64, i64, i64)> {
    c.query(
        "SELECT e.customer_id::text, \
                count(*) FILTER (WHERE d.outcome::text = 'fired'), \
                count(*) FILTER (WHERE d.outcome::text = 'suppressed' AND d.reason::text = 'cap'), \
                count(*) \
         FROM engage.decisions d JOIN engage.events e ON e.id = d.event_id \
         GROUP BY 1 ORDER BY 1",
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
    .collect()
}

#[test]
fn cap_holds_when_connections_insert_for_one_customer_at_the_same_moment() {
    const THREADS: usize = 4;
    const ROUNDS: usize = 25;
    const MAX: i64 = 2;
    let db = "cap_concurrent";
    let mut c = shared().create_db(db);
    create_capped(&mut c, MAX, "1h");
    in_lockstep(db, THREADS, ROUNDS, |tx, t, round| {
        tx.execute(
            "INSERT INTO engage.events (customer_id, name, properties, occurred_at) \
             VALUES ($1, 'ping', $2, '2025-03-01T10:00:00Z')",
            &[&format!("round-{round:02}"), &json!({"thread": t})],
        )
    });
    let tallies = tallies(&mut c);
    assert_eq!(tallies.len(), ROUNDS);
    for (customer, fired, capped, total) in &tallies {
        assert!(*fired <= MAX, "{customer}: {fired} fired decisions, cap is {MAX}");
        assert_eq!(*total, THREADS as i64, "{customer}: every event is decided");
        assert_eq!(*fired, MAX, "{customer}: the cap allows exactly {MAX} of {THREADS}");
        assert_eq!(*capped, THREADS as i64 - MAX, "{customer}: the rest are suppressed for cap");
    }
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM engage.outbox"),
        ROUNDS as i64 * MAX,
        "one outbox row per fired decision"
    );
}

/// Two connections insert multi-row statements touching the same customers in opposite orders
/// (the per-customer locks are taken sorted, so this cannot deadlock) and the caps still hold.
#[test]
fn multi_customer_statements_in_opposite_orders_neither_deadlock_nor_exceed_caps() {
    const ROUNDS: usize = 20;
    let db = "cap_no_deadlock";
    let mut c = shared().create_db(db);
    create_capped(&mut c, 1, "1d");
    let barrier = Rendezvous::new(2);
    std::thread::scope(|s| {
        for t in 0..2usize {
            let barrier = &barrier;
            s.spawn(move || {
                let _guard = barrier.join();
                let mut conn = shared().connect(db);
                for round in 0..ROUNDS {
                    let (a, b) = (format!("r{round:02}-a"), format!("r{round:02}-b"));
                    let (first, second) = if t == 0 { (&a, &b) } else { (&b, &a) };
                    let mut tx = conn.transaction().unwrap();
                    barrier.wait();
                    tx.execute(
                        "INSERT INTO engage.events (customer_id, name, occurred_at) VALUES \
                         ($1, 'ping', '2025-03-01T10:00:00Z'), ($2, 'ping', '2025-03-01T10:00:00Z')",
                        &[first, second],
                    )
                    .unwrap_or_else(|e| panic!("thread {t} round {round}: {}", error_text(&e)));
                    // Hold the locks a little so the other statement really waits.
                    std::thread::sleep(std::time::Duration::from_millis(5));
                    tx.commit().unwrap();
                }
            });
        }
    });
    for (customer, fired, capped, total) in tallies(&mut c) {
        assert_eq!((fired, capped, total), (1, 1, 2), "{customer}: fired, capped, decided");
    }
}

/// Under REPEATABLE READ (and SERIALIZABLE) a transaction's snapshot predates the other
/// transactions' commits, so counting earlier decisions with the transaction snapshot misses
/// them. The cap must still hold: a transaction may fail with a serialization failure (40001,
/// retryable), but the committed fired decisions must never exceed the cap.
fn cap_holds_under_isolation(db: &str, level: postgres::IsolationLevel) {
    const THREADS: usize = 3;
    const ROUNDS: usize = 15;
    let mut c = shared().create_db(db);
    create_capped(&mut c, 1, "1h");
    let barrier = Rendezvous::new(THREADS);
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let barrier = &barrier;
            s.spawn(move || {
                let _guard = barrier.join();
                let mut conn = shared().connect(db);
                for round in 0..ROUNDS {
                    let mut tx = conn.build_transaction().isolation_level(level).start().unwrap();
                    // Take the snapshot before the other transactions commit.
                    tx.query_one("SELECT count(*) FROM engage.events", &[]).unwrap();
                    barrier.wait();
                    let result = tx.execute(
                        "INSERT INTO engage.events (customer_id, name, occurred_at) \
                         VALUES ($1, 'ping', '2025-03-01T10:00:00Z')",
                        &[&format!("iso-{round:02}")],
                    );
                    let result = match result {
                        Ok(_) => tx.commit(),
                        Err(e) => Err(e),
                    };
                    if let Err(e) = result {
                        let code = e.as_db_error().map(|d| d.code().code().to_string());
                        assert_eq!(
                            code.as_deref(),
                            Some("40001"),
                            "thread {t} round {round}: only serialization failures are acceptable: {}",
                            error_text(&e)
                        );
                    }
                }
            });
        }
    });
    let tallies = tallies(&mut c);
    let over: Vec<_> = tallies.iter().filter(|(_, fired, _, _)| *fired > 1).collect();
    assert!(
        over.is_empty(),
        "{} of {} customers got more than 1 committed fired decision (cap is 1) under {level:?}: {over:?}",
        over.len(),
        tallies.len()
    );
}

#[test]
fn cap_holds_under_repeatable_read() {
    cap_holds_under_isolation("cap_repeatable_read", postgres::IsolationLevel::RepeatableRead);
}

#[test]
fn cap_holds_under_serializable() {
    cap_holds_under_isolation("cap_serializable", postgres::IsolationLevel::Serializable);
}

/// Event times in microseconds of the fired decisions of `trigger`, per customer, in event-time order.
fn fired_times(c: &mut Client, trigger: &str) -> Vec<(String, Vec<i64>)> {
    c.query(
        "SELECT d.customer_id::text, array_agg((extract(epoch FROM d.occurred_at) * 1000000)::int8 ORDER BY d.occurred_at)
           FROM engage.decisions d JOIN engage.triggers t ON t.id = d.trigger_id
          WHERE t.name = $1 AND d.outcome = 'fired'
          GROUP BY 1 ORDER BY 1",
        &[&trigger],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

/// Asserts that no rolling window `(s - per, s]` holds more than `max` of `times` (sorted).
#[track_caller]
fn assert_no_window_breaks(trigger: &str, customer: &str, times: &[i64], max: usize, per: i64) {
    for pair in times.windows(max + 1) {
        assert!(
            pair[max] - pair[0] >= per,
            "{trigger}, customer {customer}: {} fired decisions within {per} µs: {pair:?}",
            max + 1
        );
    }
}

/// Eight connections insert for a handful of customers for several seconds, with event times set
/// explicitly and out of order (up to an hour either side of a base), against caps of 1 and 2 per
/// hour and a higher-priority rival: no window of any cap ever holds more than its max, whichever
/// transaction locks a customer first.
#[test]
fn caps_hold_in_both_directions_of_event_time_under_concurrency() {
    const CONNECTIONS: usize = 8;
    const HOUR: i64 = 3_600_000_000;
    let db = "cap_stress";
    let mut c = shared().create_db(db);
    create_trigger(
        &mut c,
        "cap_one",
        json!({"event": "cart_updated", "priority": 5, "action": {"channel": "webhook"}, "cap": {"max": 1, "per": "1h"}}),
    );
    create_trigger(
        &mut c,
        "cap_two",
        json!({"event": "cart_updated", "category": "transactional", "action": {"channel": "webhook"},
               "cap": {"max": 2, "per": "1h"}}),
    );
    create_trigger(
        &mut c,
        "once_a_day",
        json!({"event": "cart_updated", "category": "transactional", "action": {"channel": "webhook"},
               "reentry": {"once_per": "1d"}}),
    );
    create_trigger(&mut c, "rival", json!({"event": "visit", "priority": 9, "action": {"channel": "webhook"}}));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(6);
    let inserted: usize = std::thread::scope(|s| {
        let workers: Vec<_> = (0..CONNECTIONS)
            .map(|t| {
                s.spawn(move || {
                    let mut c = shared().connect(db);
                    // The rival competes with cap_one within a minute of event time, so both
                    // outcomes occur.
                    c.batch_execute("SET engage.conflict_window = '1min'").unwrap();
                    // A small linear congruential generator per connection: repeatable streams.
                    let mut state = 0x9E37_79B9_7F4A_7C15u64.wrapping_mul(t as u64 + 1);
                    let mut next = move |n: u64| {
                        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                        (state >> 33) % n
                    };
                    let mut inserted = 0;
                    while std::time::Instant::now() < deadline {
                        let customer = format!("race{}", next(5));
                        let name = if next(10) == 0 { "visit" } else { "cart_updated" };
                        // Minutes from -120 to +119 around the base: late, early and equal times.
                        let minutes = next(240) as i64 - 120;
                        let rows = 1 + next(2) as i64;
                        let sql = "INSERT INTO engage.events (customer_id, name, occurred_at) \
                                   SELECT $1, $2, '2025-06-01T12:00:00Z'::timestamptz + ($3::int8 + k) * interval '1 minute' \
                                     FROM generate_series(0::int8, $4::int8 - 1) AS k";
                        c.execute(sql, &[&customer, &name, &minutes, &rows])
                            .unwrap_or_else(|e| panic!("insert: {}", error_text(&e)));
                        inserted += rows as usize;
                    }
                    inserted
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).sum()
    });
    let decided = count(&mut c, "SELECT count(*) FROM engage.decisions");
    println!("{CONNECTIONS} connections inserted {inserted} events; {decided} decisions");
    for row in c
        .query(
            "SELECT t.name || ' ' || d.outcome || coalesce(' ' || d.reason, '') || ': ' || count(*)
               FROM engage.decisions d JOIN engage.triggers t ON t.id = d.trigger_id GROUP BY t.name, d.outcome, d.reason ORDER BY 1",
            &[],
        )
        .unwrap()
    {
        println!("  {}", row.get::<_, String>(0));
    }
    assert_eq!(count(&mut c, "SELECT count(*) FROM engage.events"), inserted as i64);
    assert!(inserted > 200, "too few events for a stress test: {inserted}");
    for (trigger, max, per) in [("cap_one", 1, HOUR), ("cap_two", 2, HOUR), ("once_a_day", 1, 24 * HOUR)] {
        let per_customer = fired_times(&mut c, trigger);
        assert!(!per_customer.is_empty(), "{trigger} fired for nobody");
        for (customer, times) in &per_customer {
            assert_no_window_breaks(trigger, customer, times, max, per);
        }
        let fired: usize = per_customer.iter().map(|(_, t)| t.len()).sum();
        println!("{trigger}: {fired} fired over {} customers", per_customer.len());
    }
}
