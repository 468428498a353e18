//! Delays and cancel_on across transactions: a waiting message is cancelled by the committing
//! transaction of the cancelling event, and not by one that rolls back.

use pg_engage_it::*;
use serde_json::json;

fn outbox_status(c: &mut postgres::Client) -> String {
    c.query_one("SELECT status FROM engage.outbox", &[]).unwrap().get(0)
}

#[test]
fn only_a_committed_purchase_cancels_the_waiting_cart_reminder() {
    let mut app = shared().create_db("cancel_commit");
    create_trigger(
        &mut app,
        "cart_abandoned",
        json!({"event": "cart_updated", "wait": "2h",
               "cancel_on": [{"event": "order_completed", "same": ["cart_id"]}],
               "action": {"channel": "email", "template": "cart"}}),
    );
    insert_event(&mut app, "c1", "cart_updated", json!({"cart_id": "k1"}));
    assert_eq!(outbox_status(&mut app), "pending");
    assert_eq!(count(&mut app, "SELECT count(*) FROM engage.outbox WHERE due_at > now() + interval '119 minutes'"), 1);

    // A purchase that rolls back cancels nothing (inside it, the cancellation is already visible).
    let mut tx = app.transaction().unwrap();
    tx.execute(
        "INSERT INTO engage.events (customer_id, name, properties) VALUES ('c1', 'order_completed', '{\"cart_id\": \"k1\"}')",
        &[],
    )
    .unwrap();
    let inside: String = tx.query_one("SELECT status FROM engage.outbox", &[]).unwrap().get(0);
    assert_eq!(inside, "cancelled");
    tx.rollback().unwrap();
    assert_eq!(outbox_status(&mut app), "pending");

    // A committed one, from another session, does; the reason names the event.
    let mut other = shared().connect("cancel_commit");
    let order = insert_event(&mut other, "c1", "order_completed", json!({"cart_id": "k1", "amount": 30}));
    assert_eq!(outbox_status(&mut app), "cancelled");
    let row = app.query_one("SELECT cancelled_by, last_error FROM engage.outbox", &[]).unwrap();
    let (by, reason): (i64, String) = (row.get(0), row.get(1));
    assert_eq!(by, order);
    assert!(reason.contains(&format!("cancelled by event {order}")), "{reason}");
}
