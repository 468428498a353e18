//! Retention and bloat (README, "Retention and vacuum"):
//! - `engage.purge` deletes closed messages after `keep_closed_messages`, and events and
//!   decisions only when they are older than `keep_history` plus every window a trigger reads, so
//!   a later decision is the same as without it; an event a queued message refers to stays; only
//!   the admin role may run it;
//! - a transaction held open for minutes (vacuum can then reclaim nothing) while 20,000 messages
//!   are delivered and the scheduler purges: the deliverer keeps its rate, nothing is stuck.

use pg_engage_it::delivery::*;
use pg_engage_it::*;
use std::time::{Duration, Instant};

#[test]
fn purge_deletes_closed_messages_and_only_history_no_trigger_reads() {
    let db = "retention_purge";
    let mut c = shared().create_db(db);
    c.batch_execute(
        "INSERT INTO engage.channels (kind, config) VALUES ('webhook', '{\"url\": \"https://example.com/hook\"}')",
    )
    .unwrap();
    // `capped` reads 40 days of its own decisions; `waiting` reads 3 days of events after its own.
    create_trigger(
        &mut c,
        "capped",
        json!({"event": "a", "cap": {"max": 1, "per": "40d"}, "action": {"channel": "webhook"}}),
    );
    create_trigger(
        &mut c,
        "waiting",
        json!({"event": "b", "wait": "3d", "cancel_on": [{"event": "c"}], "action": {"channel": "webhook"}}),
    );
    let at = |c: &mut Client, days: i32| -> String {
        c.query_one(&format!("SELECT (now() - interval '{days} days')::text"), &[]).unwrap().get(0)
    };
    let old_a = {
        let t = at(&mut c, 100);
        insert_event_at(&mut c, "c1", "a", json!({}), &t)
    };
    let kept_a = {
        let t = at(&mut c, 45);
        insert_event_at(&mut c, "c1", "a", json!({}), &t)
    };
    let old_x = {
        let t = at(&mut c, 100);
        insert_event_at(&mut c, "c1", "x", json!({}), &t)
    };
    {
        let t = at(&mut c, 5);
        insert_event_at(&mut c, "c1", "x", json!({}), &t)
    };
    // Its message is still pending (due 57 days ago: say the deliverer was stopped).
    let pending_b = {
        let t = at(&mut c, 60);
        insert_event_at(&mut c, "c2", "b", json!({}), &t)
    };
    // The messages of `capped`: one sent 99 days ago, one dead but last tried 10 days ago.
    c.batch_execute(&format!(
        "UPDATE engage.outbox SET status = 'sent', created_at = now() - interval '100 days', \
                sent_at = now() - interval '99 days' WHERE event_id = {old_a};
         UPDATE engage.outbox SET status = 'dead', created_at = now() - interval '45 days', \
                claimed_at = now() - interval '10 days' WHERE event_id = {kept_a};"
    ))
    .unwrap();

    let needed: Vec<(String, f64)> = c
        .query("SELECT trigger_name, extract(epoch FROM needed)::float8 / 86400 FROM engage.history_needed() ORDER BY trigger_id", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(needed, [("capped".to_string(), 40.0), ("waiting".to_string(), 3.0)], "days");

    // Apps cannot purge; the admin role can.
    let mut app = connect_as_member(shared(), db, "app", &["engage_writer"]);
    assert_sql_error(&mut app, "SELECT engage.purge('30 days', '7 days')", &[], "42501", "permission denied");
    let mut admin = connect_as_member(shared(), db, "admin", &["engage_admin"]);
    assert_sql_error(&mut admin, "SELECT engage.purge('30 days', '7 days', 0)", &[], "22023", "batch_size");
    assert_sql_error(&mut admin, "SELECT engage.purge('-1 day', '7 days')", &[], "22023", "negative");

    let purged = |admin: &mut Client| -> (i64, i64, i64) {
        let row = admin.query_one("SELECT * FROM engage.purge('30 days', '7 days')", &[]).unwrap();
        (row.get(0), row.get(1), row.get(2))
    };
    // Messages: the one sent 99 days ago. History: kept for 7 + 40 days (capped's cap), so the
    // events and decisions of 100 days ago go, but not those of 45 days ago, and not the
    // 60-day-old event of a message still to send; `waiting`'s decision of 60 days ago is past
    // 7 + 3 days and goes.
    assert_eq!(purged(&mut admin), (1, 2, 2));
    assert_eq!(purged(&mut admin), (0, 0, 0), "a second purge finds nothing more");
    let events: Vec<i64> =
        c.query("SELECT id FROM engage.events ORDER BY id", &[]).unwrap().iter().map(|r| r.get(0)).collect();
    assert!(!events.contains(&old_a) && !events.contains(&old_x), "{events:?}");
    assert!(events.contains(&kept_a) && events.contains(&pending_b), "{events:?}");
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM engage.outbox"),
        2,
        "the dead message tried 10 days ago and the pending one stay"
    );
    assert_eq!(count(&mut c, "SELECT count(*) FROM engage.decisions WHERE trigger_id = (SELECT id FROM engage.triggers WHERE name = 'waiting')"), 0);

    // An event arriving 6 days late is decided on full history: the decision of 45 days ago is
    // within its cap's 40 days, as it would be without the purge.
    let late = {
        let t = at(&mut c, 6);
        insert_event_at(&mut c, "c1", "a", json!({}), &t)
    };
    assert_eq!(decisions_for(&mut c, late), vec![suppressed("capped", "cap")]);

    // keep_history 0 keeps history for ever; keep_closed_messages 0 keeps closed messages.
    c.batch_execute("UPDATE engage.outbox SET status = 'dead'").unwrap();
    let row = admin.query_one("SELECT * FROM engage.purge('0', '0')", &[]).unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1), row.get::<_, i64>(2)), (0, 0, 0));
}

const BURST: usize = 5_000;
const TRICKLE: usize = 10_000;
const PER_STATEMENT: usize = 100;
/// The trickle's pace: 100 events every 1.2 s, so the transaction stays open for two minutes.
const TRICKLE_PAUSE: Duration = Duration::from_millis(1_200);

/// Inserts `n` events for customers `<prefix>00000...` in one statement.
fn insert_burst(c: &mut Client, prefix: &str, n: usize) {
    c.execute(
        "INSERT INTO engage.events (customer_id, name) SELECT $1 || lpad(i::text, 5, '0'), 'e' FROM generate_series(1, $2) i",
        &[&prefix, &(n as i32)],
    )
    .unwrap();
}

/// Waits until the sent log holds `n` messages; returns how long that took from `since`.
fn until_sent(cluster: &Cluster, c: &mut Client, n: i64, since: Instant) -> Duration {
    wait_for(
        &format!("{n} messages sent"),
        Duration::from_secs(180),
        || {
            let sent = count(c, "SELECT count(*) FROM engage.messages");
            if sent >= n {
                Ok(())
            } else {
                Err(format!("{sent} sent"))
            }
        },
        || format!("server.log:\n{}", cluster.log_tail(30)),
    );
    since.elapsed()
}

#[test]
fn a_transaction_open_for_minutes_slows_nothing_and_leaves_nothing_stuck() {
    let db = "retention_open_transaction";
    let (cluster, mut c) = start_deliverer(
        db,
        &[("engage.tick_interval", "'1s'"), ("engage.keep_closed_messages", "'2s'"), ("synchronous_commit", "off")],
    );
    let receiver = HttpReceiver::new();
    c.execute(
        "INSERT INTO engage.channels (kind, config) VALUES ('webhook', jsonb_build_object('url', $1::text))",
        &[&receiver.url("/hook")],
    )
    .unwrap();
    create_trigger(
        &mut c,
        "hook",
        json!({"event": "e", "category": "transactional", "action": {"channel": "webhook"}}),
    );

    // A burst with nothing holding vacuum back.
    let started = Instant::now();
    insert_burst(&mut c, "before", BURST);
    let before = until_sent(&cluster, &mut c, BURST as i64, started);

    // A transaction that holds its snapshot (and so every dead row) for the rest of the run.
    let mut holder = cluster.connect(db);
    holder.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM engage.events").unwrap();
    let held_since = Instant::now();
    for chunk in 0..TRICKLE / PER_STATEMENT {
        insert_burst(&mut c, &format!("trickle{chunk:03}_"), PER_STATEMENT);
        std::thread::sleep(TRICKLE_PAUSE);
    }
    let started = Instant::now();
    insert_burst(&mut c, "after", BURST);
    let total = (2 * BURST + TRICKLE) as i64;
    let after = until_sent(&cluster, &mut c, total, started);
    let held = held_since.elapsed();
    let trickle_p99: f64 = c
        .query_one(
            "SELECT percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM sent_at - queued_at)) \
               FROM engage.messages WHERE customer_id LIKE 'trickle%'",
            &[],
        )
        .unwrap()
        .get(0);
    holder.batch_execute("COMMIT").unwrap();
    println!(
        "burst of {BURST} before: {before:.2?}; after {held:.0?} of an open transaction and {TRICKLE} more: {after:.2?}; \
         trickle queued -> sent p99 {trickle_p99:.3} s"
    );
    assert!(held >= Duration::from_secs(120), "the transaction was open {held:?}");
    assert!(
        after <= before * 3 + Duration::from_secs(2),
        "delivery slowed down behind the open transaction: {before:?} before, {after:?} after"
    );
    assert!(trickle_p99 < 2.0, "messages waited {trickle_p99} s (p99) while the transaction was open");

    // Nothing stuck, each message sent once; closed rows leave the outbox.
    assert_eq!(count(&mut c, "SELECT count(*) FROM engage.messages"), total);
    let requests = receiver.requests();
    let mut ids: Vec<&str> = requests.iter().filter_map(|r| r.header("webhook-id")).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), total as usize, "every message reached the receiver");
    wait_for(
        "the scheduler to purge the closed messages",
        Duration::from_secs(60),
        || match count(&mut c, "SELECT count(*) FROM engage.outbox") {
            0 => Ok(()),
            n => Err(format!(
                "{n} outbox rows left: {}",
                count(&mut c, "SELECT count(*) FROM engage.outbox WHERE status IN ('pending', 'claimed')")
            )),
        },
        || format!("server.log:\n{}", cluster.log_tail(30)),
    );
}
