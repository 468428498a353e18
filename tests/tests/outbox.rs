//! Outbox content: a fired decision queues one row carrying the trigger action's channel,
//! template and payload, with status `pending`, no attempts yet, and `due_at` equal to the
//! event's `occurred_at` (in the past, the future, or the default now()).

use pg_engage_it::*;

#[test]
fn fired_row_carries_channel_template_payload_and_is_due_at_occurred_at() {
    let mut c = shared().create_db("outbox_content");
    let payload = json!({"coupon": "SAVE10", "n": 1, "nested": {"list": [1, "two", null]}, "text": "Grüße ✓"});
    create_trigger(
        &mut c,
        "sms_offer",
        json!({"event": "cart", "action": {"channel": "sms", "template": "offer", "payload": payload}}),
    );
    let at = "2030-01-02T03:04:05.123456Z";
    insert_event_at(&mut c, "c1", "cart", json!({}), at);
    let rows = outbox_for_template(&mut c, Some("offer"));
    assert_eq!(rows.len(), 1, "{rows:?}");
    let row = &rows[0];
    assert_eq!(row.channel, "sms");
    assert_eq!(row.template.as_deref(), Some("offer"));
    assert_eq!(row.payload.as_ref(), Some(&payload));
    assert_eq!(row.status, "pending");
    assert_eq!(row.attempts, 0);
    assert_eq!(row.due_at_epoch, epoch(&mut c, at), "due_at must equal occurred_at (to the microsecond)");
    assert_eq!(count(&mut c, "SELECT count(*) FROM engage.outbox"), 1);
}

#[test]
fn due_at_is_the_event_time_even_in_the_past() {
    let mut c = shared().create_db("outbox_past");
    create_trigger(&mut c, "t", json!({"event": "e", "action": email("past")}));
    let at = "2020-02-29T23:59:59+05:30";
    insert_event_at(&mut c, "c1", "e", json!({}), at);
    let rows = outbox_for_template(&mut c, Some("past"));
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].due_at_epoch, epoch(&mut c, at), "due_at is occurred_at, not now()");
}

#[test]
fn default_occurred_at_makes_the_row_due_now() {
    let mut c = shared().create_db("outbox_now");
    create_trigger(&mut c, "t", json!({"event": "e", "action": email("now")}));
    let id = insert_event(&mut c, "c1", "e", json!({}));
    let same: bool = c
        .query_one(
            "SELECT o.due_at = e.occurred_at AND abs(extract(epoch FROM o.due_at - now())) < 60 \
             FROM engage.outbox o, engage.events e WHERE e.id = $1::int8",
            &[&id],
        )
        .unwrap()
        .get(0);
    assert!(same, "due_at must equal the default occurred_at (now)");
}

#[test]
fn every_channel_is_carried_and_webhook_needs_no_template() {
    let mut c = shared().create_db("outbox_channels");
    for channel in ["email", "sms", "whatsapp", "push"] {
        create_trigger(
            &mut c,
            channel,
            json!({"event": format!("e_{channel}"), "action": {"channel": channel, "template": format!("tpl_{channel}")}}),
        );
    }
    create_trigger(
        &mut c,
        "hook",
        json!({"event": "e_webhook", "action": {"channel": "webhook", "payload": {"team": "success"}}}),
    );
    // One customer per channel: five marketing messages for one customer at once would conflict.
    for channel in ["email", "sms", "whatsapp", "push", "webhook"] {
        insert_event(&mut c, &format!("c_{channel}"), &format!("e_{channel}"), json!({}));
    }
    for channel in ["email", "sms", "whatsapp", "push"] {
        let rows = outbox_for_template(&mut c, Some(&format!("tpl_{channel}")));
        assert_eq!(rows.len(), 1, "{channel}");
        assert_eq!(rows[0].channel, channel);
        assert_eq!(rows[0].status, "pending");
    }
    let hooks = outbox_for_template(&mut c, None);
    assert_eq!(hooks.len(), 1, "the webhook row has no template");
    assert_eq!(hooks[0].channel, "webhook");
    assert_eq!(hooks[0].payload, Some(json!({"team": "success"})));
    assert_eq!(count(&mut c, "SELECT count(*) FROM engage.outbox"), 5);
}

#[test]
fn only_fired_decisions_queue_messages() {
    let mut c = shared().create_db("outbox_only_fired");
    create_trigger(
        &mut c,
        "high",
        json!({"event": "e", "action": email("high"), "priority": 2, "cap": {"max": 1, "per": "1d"}}),
    );
    create_trigger(&mut c, "low", json!({"event": "e", "action": email("low"), "priority": 1}));
    for at in ["2025-03-01T10:00:00Z", "2025-03-01T11:00:00Z", "2025-03-01T12:00:00Z"] {
        insert_event_at(&mut c, "c1", "e", json!({}), at);
    }
    // decisions: high fired + low conflict; then high cap + low fired, twice
    assert_eq!(count(&mut c, "SELECT count(*) FROM engage.decisions"), 6);
    assert_eq!(count(&mut c, "SELECT count(*) FROM engage.decisions WHERE outcome::text = 'fired'"), 3);
    assert_eq!(count(&mut c, "SELECT count(*) FROM engage.outbox"), 3);
    let high = outbox_for_template(&mut c, Some("high"));
    let low = outbox_for_template(&mut c, Some("low"));
    assert_eq!(high.len(), 1);
    assert_eq!(low.len(), 2);
    assert_eq!(high[0].due_at_epoch, epoch(&mut c, "2025-03-01T10:00:00Z"));
    assert_eq!(low[0].due_at_epoch, epoch(&mut c, "2025-03-01T11:00:00Z"));
    assert_eq!(low[1].due_at_epoch, epoch(&mut c, "2025-03-01T12:00:00Z"));
}

#[test]
fn updated_action_is_used_for_later_events_only() {
    let mut c = shared().create_db("outbox_updated_action");
    create_trigger(
        &mut c,
        "t",
        json!({"event": "e", "action": {"channel": "email", "template": "v1", "payload": {"v": 1}}}),
    );
    insert_event_at(&mut c, "c1", "e", json!({}), "2025-03-01T10:00:00Z");
    update_trigger(
        &mut c,
        "t",
        json!({"event": "e", "action": {"channel": "push", "template": "v2", "payload": {"v": 2}}}),
    );
    insert_event_at(&mut c, "c1", "e", json!({}), "2025-03-01T11:00:00Z");
    let v1 = outbox_for_template(&mut c, Some("v1"));
    let v2 = outbox_for_template(&mut c, Some("v2"));
    assert_eq!((v1.len(), v2.len()), (1, 1));
    assert_eq!((v1[0].channel.as_str(), v1[0].payload.clone()), ("email", Some(json!({"v": 1}))));
    assert_eq!((v2[0].channel.as_str(), v2[0].payload.clone()), ("push", Some(json!({"v": 2}))));
}
