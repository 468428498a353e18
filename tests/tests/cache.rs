//! Rule-cache invalidation: rules are compiled once per backend, so session A first inserts an
//! event (compiling and caching the rules in A's backend), then session B changes the triggers —
//! `engage.update_trigger`, `disable_trigger`, `enable_trigger`, `drop_trigger`,
//! `create_trigger`, or a direct `UPDATE engage.triggers SET enabled = …` — and A's next insert
//! must follow the new definitions. Uncommitted and rolled-back changes must not leak, and a
//! change inside A's own transaction applies to A's next insert.

use pg_engage_it::*;
use std::time::Duration;

struct Sessions {
    a: Client,
    b: Client,
}

/// Creates the database and the trigger `promo` (event `visit`, x = 1, template v1), and lets
/// session A fire it once so that A's backend has compiled and cached the rules.
fn setup(db: &str) -> Sessions {
    let mut b = shared().create_db(db);
    create_trigger(
        &mut b,
        "promo",
        json!({"event": "visit", "where": {"property": "x", "eq": 1}, "action": email("v1")}),
    );
    let mut a = shared().connect(db);
    let warm = insert_event(&mut a, "c1", "visit", json!({"x": 1}));
    assert_eq!(decisions_for(&mut a, warm), vec![fired("promo")], "warm-up in session A");
    Sessions { a, b }
}

fn visit(s: &mut Sessions, x: i64) -> Vec<Decision> {
    let id = insert_event(&mut s.a, "c1", "visit", json!({"x": x}));
    decisions_for(&mut s.a, id)
}

#[test]
fn update_from_another_session_applies_to_the_next_insert() {
    let mut s = setup("cache_update");
    let version = update_trigger(
        &mut s.b,
        "promo",
        json!({"event": "visit", "where": {"property": "x", "eq": 2}, "action": email("v2")}),
    );
    assert_eq!(version, 2);
    assert_eq!(visit(&mut s, 1), vec![], "old predicate must no longer match");
    assert_eq!(visit(&mut s, 2), vec![fired("promo")], "new predicate must match");
    assert_eq!(outbox_for_template(&mut s.a, Some("v2")).len(), 1, "new action is used");
    assert_eq!(outbox_for_template(&mut s.a, Some("v1")).len(), 1, "only the warm-up used v1");

    // A second update, to another event name and a cap, also reaches A.
    update_trigger(&mut s.b, "promo", json!({"event": "click", "action": email("v3"), "cap": {"max": 1, "per": "1d"}}));
    assert_eq!(visit(&mut s, 2), vec![], "the trigger no longer listens to visit");
    // (another customer: c1's earlier fired decisions of `promo` count toward the new cap)
    let c1 = insert_event(&mut s.a, "c9", "click", json!({}));
    let c2 = insert_event(&mut s.a, "c9", "click", json!({}));
    assert_eq!(decisions_for(&mut s.a, c1), vec![fired("promo")]);
    assert_eq!(decisions_for(&mut s.a, c2), vec![suppressed("promo", "cap")]);
}

#[test]
fn disable_and_enable_from_another_session_apply_to_the_next_insert() {
    let mut s = setup("cache_disable_enable");
    s.b.execute("SELECT engage.disable_trigger('promo')", &[]).unwrap();
    assert_eq!(visit(&mut s, 1), vec![], "disabled trigger must not decide");
    s.b.execute("SELECT engage.enable_trigger('promo')", &[]).unwrap();
    assert_eq!(visit(&mut s, 1), vec![fired("promo")], "re-enabled trigger must fire");
}

#[test]
fn drop_from_another_session_applies_to_the_next_insert() {
    let mut s = setup("cache_drop");
    s.b.execute("SELECT engage.drop_trigger('promo')", &[]).unwrap();
    assert_eq!(visit(&mut s, 1), vec![], "dropped trigger must not decide");
    assert_eq!(count(&mut s.a, "SELECT count(*) FROM engage.decisions"), 1, "the warm-up decision stays");
    // A new trigger with the same name is a new trigger.
    create_trigger(
        &mut s.b,
        "promo",
        json!({"event": "visit", "where": {"property": "x", "eq": 3}, "action": email("v4")}),
    );
    assert_eq!(visit(&mut s, 1), vec![]);
    assert_eq!(visit(&mut s, 3), vec![fired("promo")]);
}

#[test]
fn create_from_another_session_applies_to_the_next_insert() {
    let mut s = setup("cache_create");
    // A has no rule for `signed_up` yet, and a cached (empty) answer must not stick.
    let before = insert_event(&mut s.a, "c2", "signed_up", json!({}));
    assert_eq!(decisions_for(&mut s.a, before), vec![]);
    create_trigger(&mut s.b, "welcome", json!({"event": "signed_up", "action": email("welcome")}));
    let after = insert_event(&mut s.a, "c2", "signed_up", json!({}));
    assert_eq!(decisions_for(&mut s.a, after), vec![fired("welcome")]);
    // A new trigger on an event A already has rules for joins the competition.
    create_trigger(&mut s.b, "promo_high", json!({"event": "visit", "action": email("high"), "priority": 5}));
    assert_eq!(visit(&mut s, 1), vec![suppressed("promo", "conflict"), fired("promo_high")]);
}

#[test]
fn direct_update_of_enabled_column_applies_to_the_next_insert() {
    let mut s = setup("cache_direct_update");
    s.b.execute("UPDATE engage.triggers SET enabled = false WHERE name = 'promo'", &[]).unwrap();
    assert_eq!(visit(&mut s, 1), vec![], "UPDATE … SET enabled = false must take effect");
    s.b.execute("UPDATE engage.triggers SET enabled = true WHERE name = 'promo'", &[]).unwrap();
    assert_eq!(visit(&mut s, 1), vec![fired("promo")], "UPDATE … SET enabled = true must take effect");
}

#[test]
fn uncommitted_change_is_not_applied_until_commit() {
    let mut s = setup("cache_uncommitted");
    let mut tx = s.b.transaction().unwrap();
    tx.query_one(
        "SELECT engage.update_trigger('promo', $1)",
        &[&json!({"event": "visit", "where": {"property": "x", "eq": 2}, "action": email("v2")})],
    )
    .unwrap();
    // B has not committed: A still works with the committed definition.
    let id = insert_event(&mut s.a, "c1", "visit", json!({"x": 1}));
    assert_eq!(decisions_for(&mut s.a, id), vec![fired("promo")], "before B commits");
    tx.commit().unwrap();
    assert_eq!(visit(&mut s, 1), vec![], "after B commits");
    assert_eq!(visit(&mut s, 2), vec![fired("promo")], "after B commits");
}

#[test]
fn rolled_back_change_leaves_the_old_definition_in_force() {
    let mut s = setup("cache_rolled_back");
    let mut tx = s.b.transaction().unwrap();
    tx.execute("SELECT engage.drop_trigger('promo')", &[]).unwrap();
    tx.rollback().unwrap();
    assert_eq!(visit(&mut s, 1), vec![fired("promo")], "drop was rolled back");

    let mut tx = s.b.transaction().unwrap();
    tx.execute("SELECT engage.disable_trigger('promo')", &[]).unwrap();
    tx.rollback().unwrap();
    assert_eq!(visit(&mut s, 1), vec![fired("promo")], "disable was rolled back");
}

#[test]
fn change_inside_own_transaction_applies_to_the_next_insert_there() {
    let mut s = setup("cache_own_transaction");
    let mut tx = s.a.transaction().unwrap();
    let ev = |tx: &mut postgres::Transaction<'_>, x: i64| -> i64 {
        tx.query_one(
            "INSERT INTO engage.events (customer_id, name, properties) VALUES ('c1', 'visit', $1) RETURNING id::int8",
            &[&json!({"x": x})],
        )
        .unwrap()
        .get(0)
    };
    let first = ev(&mut tx, 1);
    tx.query_one(
        "SELECT engage.update_trigger('promo', $1)",
        &[&json!({"event": "visit", "where": {"property": "x", "eq": 2}, "action": email("v2")})],
    )
    .unwrap();
    let second = ev(&mut tx, 1);
    let third = ev(&mut tx, 2);
    tx.commit().unwrap();
    assert_eq!(decisions_for(&mut s.a, first), vec![fired("promo")]);
    assert_eq!(decisions_for(&mut s.a, second), vec![]);
    assert_eq!(decisions_for(&mut s.a, third), vec![fired("promo")]);
}

#[test]
fn each_backend_follows_many_alternating_changes() {
    let mut s = setup("cache_many_changes");
    for round in 0..10i64 {
        let want = round % 3 + 10;
        update_trigger(
            &mut s.b,
            "promo",
            json!({"event": "visit", "where": {"property": "x", "eq": want}, "action": email("loop")}),
        );
        assert_eq!(visit(&mut s, want), vec![fired("promo")], "round {round}: x = {want}");
        assert_eq!(visit(&mut s, want + 1), vec![], "round {round}: x = {}", want + 1);
    }
}

/// A new session (its cache not yet loaded) whose first rule load fails while session A holds
/// `engage.channels` locked. Returns the new session.
fn session_whose_first_load_fails(db: &str, fail: impl FnOnce(&mut Client, i32) -> DbError) -> (Client, Client) {
    let mut holder = shared().create_db(db);
    create_trigger(&mut holder, "always", json!({"event": "visit", "action": email("always")}));
    let mut app = shared().connect(db);
    let pid: i32 = app.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    holder.batch_execute("BEGIN; LOCK TABLE engage.channels IN ACCESS EXCLUSIVE MODE").unwrap();
    let err = fail(&mut app, pid);
    assert!(
        count(&mut app, "SELECT count(*) FROM engage.events") == 0,
        "the failed statement stored nothing ({err:?})"
    );
    holder.batch_execute("ROLLBACK").unwrap();
    (holder, app)
}

#[test]
fn a_rule_load_that_times_out_on_a_lock_is_retried_by_the_next_statement() {
    let (_holder, mut app) = session_whose_first_load_fails("cache_lock_timeout", |app, _| {
        app.batch_execute("SET lock_timeout = '200ms'").unwrap();
        expect_db_error(
            app.execute("INSERT INTO engage.events (customer_id, name) VALUES ('c1', 'visit')", &[]),
            "55P03",
            "lock timeout",
        )
    });
    let id = insert_event(&mut app, "c1", "visit", json!({}));
    assert_eq!(decisions_for(&mut app, id), vec![fired("always")], "the next statement loads the rules again");
}

#[test]
fn a_rule_load_that_is_cancelled_is_retried_by_the_next_statement() {
    let (_holder, mut app) = session_whose_first_load_fails("cache_cancel", |app, pid| {
        let mut canceller = shared().connect("cache_cancel");
        std::thread::scope(|s| {
            let insert =
                s.spawn(|| app.execute("INSERT INTO engage.events (customer_id, name) VALUES ('c1', 'visit')", &[]));
            // Cancel the insert once it waits for the lock on engage.channels.
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            loop {
                let waiting = count(
                    &mut canceller,
                    &format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {pid} AND wait_event_type = 'Lock'"),
                );
                if waiting == 1 {
                    break;
                }
                assert!(std::time::Instant::now() < deadline, "the insert never waited for the lock");
                std::thread::sleep(Duration::from_millis(20));
            }
            canceller.execute("SELECT pg_cancel_backend($1)", &[&pid]).unwrap();
            expect_db_error(insert.join().unwrap(), "57014", "canceling statement")
        })
    });
    let id = insert_event(&mut app, "c1", "visit", json!({}));
    assert_eq!(decisions_for(&mut app, id), vec![fired("always")], "the next statement loads the rules again");
}

/// The insert path keeps its tables' OIDs per backend: a session that dropped and re-created the
/// extension decides and queues into the new tables.
#[test]
fn a_session_that_recreates_the_extension_writes_into_the_new_tables() {
    let mut c = shared().create_db("cache_recreate");
    create_trigger(&mut c, "promo", json!({"event": "visit", "action": email("v1")}));
    let first = insert_event(&mut c, "c1", "visit", json!({}));
    assert_eq!(decisions_for(&mut c, first), vec![fired("promo")]);
    c.batch_execute("DROP EXTENSION pg_engage CASCADE; CREATE EXTENSION pg_engage").unwrap();
    create_trigger(&mut c, "promo", json!({"event": "visit", "action": email("v1")}));
    let second = insert_event(&mut c, "c1", "visit", json!({}));
    assert_eq!(decisions_for(&mut c, second), vec![fired("promo")]);
    let queued: i64 = c.query_one("SELECT count(*) FROM engage.outbox", &[]).unwrap().get(0);
    assert_eq!(queued, 1, "one message, in the re-created outbox");
}
