//! What an app can put in an event never fails its INSERT with an internal error, and one odd
//! event changes nothing for the others:
//! - a number beyond double range (`1e400`, `-1e400`) is stored and reads as missing for every
//!   rule (a `where`, a `cancel_on`'s `same`, a pattern's condition), also once stored in history;
//! - properties nested deeper than 64 levels are stored; the deep part reads as missing;
//! - an event time that is infinite or outside years 1 to 9999 is refused with the constraint
//!   `events_occurred_at_in_range`, before anything is decided.
//!
//! The app's statements run as a member of engage_writer, which may insert events and read nothing.

use pg_engage_it::*;

/// A database with a `where` trigger, a waiting trigger cancelled by a matching `order_id`, and a
/// trigger with no condition, all on `cart_updated`.
/// Returns the owner's session (which also reads what was decided) and an app's: a login role
/// that is a member of engage_writer only.
fn setup(db: &str) -> (Client, Client) {
    let mut c = shared().create_db(db);
    create_trigger(
        &mut c,
        "big_cart",
        json!({"event": "cart_updated", "where": {"property": "amount", "gt": 100}, "category": "transactional",
               "action": {"channel": "webhook"}}),
    );
    create_trigger(
        &mut c,
        "reminder",
        json!({"event": "cart_updated", "wait": "1h", "category": "transactional",
               "cancel_on": [{"event": "order_completed", "same": ["amount"]}], "action": {"channel": "webhook"}}),
    );
    create_trigger(
        &mut c,
        "any_cart",
        json!({"event": "cart_updated", "category": "transactional", "action": {"channel": "webhook"}}),
    );
    let app = connect_as_member(shared(), db, "app", &["engage_writer"]);
    (c, app)
}

fn decided(c: &mut Client, customer: &str) -> Vec<(String, String)> {
    c.query(
        "SELECT t.name, d.outcome FROM engage.decisions d JOIN engage.triggers t ON t.id = d.trigger_id
          WHERE d.customer_id = $1 ORDER BY t.name, d.event_id",
        &[&customer],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

#[test]
fn numbers_beyond_double_range_read_as_missing_and_lose_nothing() {
    let (mut c, mut app) = setup("content_huge_numbers");
    // One statement, three rows, the middle one unreadable as a double: all three are stored.
    app.batch_execute(
        r#"INSERT INTO engage.events (customer_id, name, properties) VALUES
             ('a', 'cart_updated', '{"amount": 150}'),
             ('b', 'cart_updated', '{"amount": 1e400}'),
             ('n', 'cart_updated', '{"amount": -1e400, "nested": {"x": [1, 1e400]}}')"#,
    )
    .unwrap();
    assert_eq!(count(&mut c, "SELECT count(*) FROM engage.events"), 3);
    let fired = |name: &str| (name.to_string(), "fired".to_string());
    assert_eq!(decided(&mut c, "a"), vec![fired("any_cart"), fired("big_cart"), fired("reminder")]);
    // The amount reads as missing: `gt 100` does not hold; the other triggers fire.
    assert_eq!(decided(&mut c, "b"), vec![fired("any_cart"), fired("reminder")]);
    assert_eq!(decided(&mut c, "n"), vec![fired("any_cart"), fired("reminder")]);

    // A cancelling event with such a number: stored, and it cancels nothing by `same`.
    app.batch_execute(r#"INSERT INTO engage.events (customer_id, name, properties) VALUES ('b', 'order_completed', '{"amount": 1e400}')"#)
        .unwrap();
    assert_eq!(count(&mut c, "SELECT count(*) FROM engage.outbox WHERE status = 'cancelled'"), 0);

    // A pattern trigger created after such events are stored reads them from history.
    create_trigger(
        &mut c,
        "two_carts",
        json!({"pattern": {"count": {"event": "cart_updated", "at_least": 2}, "within": "1d", "same": ["amount"]},
               "category": "transactional", "action": {"channel": "webhook"}}),
    );
    app.batch_execute(r#"INSERT INTO engage.events (customer_id, name, properties) VALUES ('b', 'cart_updated', '{"amount": 1e400}')"#)
        .unwrap();
    app.batch_execute(
        r#"INSERT INTO engage.events (customer_id, name, properties) VALUES ('b', 'cart_updated', '{"amount": 5}')"#,
    )
    .unwrap();
    assert_eq!(count(&mut c, "SELECT count(*) FROM engage.events WHERE customer_id = 'b'"), 4);
}

#[test]
fn deeply_nested_properties_are_stored_and_decided() {
    let (mut c, mut app) = setup("content_deep");
    for depth in [127, 128, 500, 2000] {
        let text = format!("{}{}{}", r#"{"amount": 150, "deep": "#, "[".repeat(depth), "]".repeat(depth) + "}");
        app.execute(
            "INSERT INTO engage.events (customer_id, name, properties) VALUES ($1, 'cart_updated', $2::text::jsonb)",
            &[&format!("d{depth}"), &text],
        )
        .unwrap_or_else(|e| panic!("depth {depth}: {}", error_text(&e)));
        let fired = |name: &str| (name.to_string(), "fired".to_string());
        assert_eq!(
            decided(&mut c, &format!("d{depth}")),
            vec![fired("any_cart"), fired("big_cart"), fired("reminder")],
            "depth {depth}"
        );
    }
}

#[test]
fn event_times_out_of_range_are_refused_before_anything_is_decided() {
    let (mut c, mut app) = setup("content_times");
    for at in ["infinity", "-infinity", "10000-01-01 00:00:00+00", "0001-12-31 23:00:00+00 BC"] {
        let result = app.execute(
            "INSERT INTO engage.events (customer_id, name, occurred_at) VALUES ('t', 'cart_updated', $1::text::timestamptz)",
            &[&at],
        );
        let db = expect_db_error(result, "23514", "events_occurred_at_in_range");
        assert!(db.message().contains("engage") || db.table() == Some("events"), "{at}: {}", db.message());
    }
    assert_eq!(count(&mut c, "SELECT count(*) FROM engage.events"), 0);
    assert_eq!(count(&mut c, "SELECT count(*) FROM engage.decisions"), 0);
    // The edges of the range are events like any other; a wait of 3650 days past the last day
    // is still a valid timestamp.
    create_trigger(
        &mut c,
        "far",
        json!({"event": "edge", "wait": "3650d", "category": "transactional", "action": {"channel": "webhook"}}),
    );
    for at in ["0001-01-01 00:00:00+00", "9999-12-31 23:59:59+00"] {
        insert_event_at(&mut app, "t", "edge", json!({}), at);
    }
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM engage.outbox WHERE trigger_id = (SELECT id FROM engage.triggers WHERE name = 'far')"
        ),
        2
    );
    let last: String =
        c.query_one("SELECT max(due_at) AT TIME ZONE 'UTC' || '' FROM engage.outbox", &[]).unwrap().get(0);
    assert!(last.starts_with("10009-12-"), "{last}");
}
