//! Scheduled triggers across sessions and with the workers running:
//!
//! * the scheduler worker ticks on its own: an inactivity trigger fires once, the deliverer sends
//!   its message, later ticks fire nothing more, and the metrics rollups are refreshed;
//! * connections ticking at the same moment fire each occasion exactly once;
//! * a tick rolled back fires nothing and loses nothing: the next tick fires it.

use pg_engage_it::delivery::*;
use pg_engage_it::*;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

#[test]
fn the_scheduler_worker_fires_an_inactivity_trigger_once_and_refreshes_the_rollups() {
    let (cluster, mut c) = start_deliverer("schedule_worker", &[("engage.tick_interval", "1")]);
    let receiver = HttpReceiver::new();
    c.execute(
        "INSERT INTO engage.channels (kind, config) VALUES ('webhook', jsonb_build_object('url', $1::text))",
        &[&receiver.url("/hook")],
    )
    .unwrap();
    create_trigger(
        &mut c,
        "winback",
        json!({"inactive": {"event": "purchase", "for": "1d"}, "backfill": true,
               "action": {"channel": "webhook", "payload": {"kind": "winback"}},
               "goal": {"event": "purchase", "within": "7d"}}),
    );
    c.batch_execute(
        "INSERT INTO engage.events (customer_id, name, occurred_at)
         VALUES ('lapsed', 'purchase', now() - interval '2 days'), ('active', 'purchase', now() - interval '1 hour')",
    )
    .unwrap();

    let requests = receiver.wait_for_requests(1, WAIT, &cluster);
    let body = requests[0].json();
    assert_eq!(body["customer_id"], "lapsed", "{body}");
    assert_eq!(body["event"]["name"], "trigger:winback", "{body}");
    assert_eq!(body["event"]["properties"]["kind"], "inactive", "{body}");
    // Several more ticks: the same episode never fires again.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(receiver.requests().len(), 1);
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM engage.decisions d JOIN engage.triggers t ON t.id = d.trigger_id WHERE t.name = 'winback'"),
        1
    );
    assert!(
        count(&mut c, "SELECT count(*) FROM engage.tick_progress WHERE ticked_until > now() - interval '5 seconds'")
            == 1
    );
    // The decision and the sent message marked the customer; the scheduler's refresh cleared it.
    wait_for(
        "the scheduler to refresh the metrics rollups",
        WAIT,
        || match count(&mut c, "SELECT count(*) FROM engage.metrics_dirty") {
            0 => Ok(()),
            n => Err(format!("{n} marks left")),
        },
        || cluster.log_tail(20),
    );
    assert_eq!(count(&mut c, "SELECT count(*) FROM engage.rollup_messages WHERE customer_id = 'lapsed'"), 1);
    assert_eq!(count(&mut c, "SELECT count(*) FROM engage.rollup_exposures WHERE customer_id = 'lapsed'"), 1);
}

#[test]
fn connections_ticking_at_the_same_moment_fire_each_occasion_once() {
    let db = "schedule_tick_race";
    let mut c = shared().create_db(db);
    create_trigger(
        &mut c,
        "anniversary",
        json!({"anniversary": {"date": "signed_up_on", "at": "12:00"}, "action": {"channel": "webhook"}}),
    );
    c.batch_execute(
        "UPDATE engage.triggers SET created_at = '2020-01-01';
         INSERT INTO engage.profiles (customer_id, attributes, timezone)
         SELECT 'c' || n, jsonb_build_object('signed_up_on', '2020-03-' || lpad((1 + n % 28)::text, 2, '0')), 'Europe/Paris'
           FROM generate_series(1, 280) n;",
    )
    .unwrap();
    // Four connections tick together, a day further each round: 28 days of March 2026.
    in_lockstep(db, 4, 28, |tx, _, round| {
        tx.execute(
            "SELECT * FROM engage.tick('2026-03-01 12:00 Europe/Paris'::timestamptz + make_interval(days => $1))",
            &[&(round as i32)],
        )
    });
    assert_eq!(count(&mut c, "SELECT count(*) FROM engage.decisions"), 280, "every customer, once");
    assert_eq!(count(&mut c, "SELECT count(DISTINCT customer_id) FROM engage.outbox"), 280);
}

#[test]
fn a_rolled_back_tick_fires_nothing_and_the_next_one_fires_it() {
    let mut c = shared().create_db("schedule_rollback");
    create_trigger(
        &mut c,
        "lapsed",
        json!({"inactive": {"event": "login", "for": "7d"}, "backfill": true, "action": {"channel": "webhook"}}),
    );
    insert_event_at(&mut c, "x", "login", json!({}), "2026-01-01T00:00:00Z");
    let mut tx = c.transaction().unwrap();
    let fired: i64 = tx.query_one("SELECT sum(fired)::int8 FROM engage.tick('2026-02-01')", &[]).unwrap().get(0);
    assert_eq!(fired, 1);
    tx.rollback().unwrap();
    assert_eq!(count(&mut c, "SELECT count(*) FROM engage.decisions"), 0);
    assert_eq!(count(&mut c, "SELECT count(*) FROM engage.tick_progress"), 0);
    assert_eq!(count(&mut c, "SELECT sum(fired)::int8 FROM engage.tick('2026-02-01')"), 1);
    assert_eq!(count(&mut c, "SELECT count(*) FROM engage.outbox"), 1);
}
