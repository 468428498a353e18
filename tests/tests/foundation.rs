//! Foundation: the harness starts a cluster, `CREATE EXTENSION pg_engage` gives the documented
//! tables and functions, the README's five-minute tour behaves as described, and the small
//! functions (`engage.track`, `engage.identify`, `engage.validate_trigger`, trigger management)
//! do what the README's function table says.

use pg_engage_it::*;

#[test]
fn cluster_runs_postgresql_15() {
    let mut c = shared().connect("postgres");
    let version: i32 = c.query_one("SELECT current_setting('server_version_num')::int", &[]).unwrap().get(0);
    assert!((150000..160000).contains(&version), "server_version_num = {version}");
}

#[test]
fn extension_creates_the_documented_tables_and_columns() {
    let mut c = shared().create_db("found_tables");
    let expected: &[(&str, &[&str])] = &[
        ("events", &["id", "customer_id", "name", "properties", "occurred_at", "received_at", "idempotency_key"]),
        ("profiles", &["attributes", "email", "phone", "timezone"]),
        ("triggers", &["id", "name", "definition", "enabled", "priority", "version"]),
        ("decisions", &["event_id", "trigger_id", "outcome", "reason"]),
        ("outbox", &["channel", "template", "payload", "due_at", "status", "attempts"]),
    ];
    for (table, columns) in expected {
        for column in *columns {
            let n = c
                .query_one(
                    "SELECT count(*) FROM information_schema.columns \
                     WHERE table_schema = 'engage' AND table_name = $1 AND column_name = $2",
                    &[table, column],
                )
                .unwrap()
                .get::<_, i64>(0);
            assert_eq!(n, 1, "engage.{table}.{column} is missing");
        }
    }
    // The definition column has the documented type.
    let ty: String = c
        .query_one(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute \
             WHERE attrelid = 'engage.triggers'::regclass AND attname = 'definition'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(ty, "engage.trigger_definition");
}

#[test]
fn extension_creates_the_documented_functions() {
    let mut c = shared().create_db("found_functions");
    for f in [
        "create_trigger",
        "update_trigger",
        "enable_trigger",
        "disable_trigger",
        "drop_trigger",
        "validate_trigger",
        "track",
        "identify",
    ] {
        let n: i64 = c
            .query_one(
                "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
                 WHERE n.nspname = 'engage' AND p.proname = $1",
                &[&f],
            )
            .unwrap()
            .get(0);
        assert!(n >= 1, "engage.{f} is missing");
    }
}

/// Nothing is decided twice: a second decision for the same (event, trigger) is rejected by the
/// primary key, whose columns other than event_id and trigger_id all follow from the event.
#[test]
fn a_second_decision_for_the_same_event_and_trigger_is_rejected() {
    let mut c = shared().create_db("found_pk");
    c.batch_execute(
        "SELECT engage.create_trigger('t', '{\"event\": \"e\", \"action\": {\"channel\": \"webhook\"}}');
         INSERT INTO engage.events (customer_id, name) VALUES ('c1', 'e');",
    )
    .unwrap();
    let err = c
        .batch_execute(
            "INSERT INTO engage.decisions (event_id, trigger_id, trigger_version, customer_id, occurred_at, outcome)
             SELECT event_id, trigger_id, trigger_version, customer_id, occurred_at, outcome FROM engage.decisions",
        )
        .unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("23505"), "{err}");
}

#[test]
fn readme_tour_queues_the_cart_reminder_then_caps_it() {
    let mut c = shared().create_db("found_tour");
    identify(&mut c, "c42", json!({"email": "ada@example.com", "country": "DE", "plan": "pro"}));
    let id = create_trigger(
        &mut c,
        "cart_high_value",
        json!({
          "event": "cart_updated",
          "where": {"property": "cart.value", "gt": 100},
          "action": {"channel": "email", "template": "cart_reminder", "payload": {"coupon": "SAVE10"}},
          "priority": 10,
          "cap": {"max": 1, "per": "24h"}
        }),
    );
    assert!(id > 0);

    let e1 = insert_event(&mut c, "c42", "cart_updated", json!({"cart": {"value": 180, "items": 3}}));
    assert_eq!(decisions_for(&mut c, e1), vec![fired("cart_high_value")]);
    let outbox = outbox_for_template(&mut c, Some("cart_reminder"));
    assert_eq!(outbox.len(), 1, "{outbox:?}");
    assert_eq!(outbox[0].channel, "email");
    assert_eq!(outbox[0].payload, Some(json!({"coupon": "SAVE10"})));
    assert_eq!(outbox[0].status, "pending");

    // A second cart within the day is capped (max 1 per 24h).
    let e2 = insert_event(&mut c, "c42", "cart_updated", json!({"cart": {"value": 250}}));
    assert_eq!(decisions_for(&mut c, e2), vec![suppressed("cart_high_value", "cap")]);
    // A small cart does not match at all: no decision.
    let e3 = insert_event(&mut c, "c42", "cart_updated", json!({"cart": {"value": 20}}));
    assert_eq!(decisions_for(&mut c, e3), vec![]);
    assert_eq!(count(&mut c, "SELECT count(*) FROM engage.outbox"), 1);
}

#[test]
fn track_inserts_an_event_and_returns_its_id() {
    let mut c = shared().create_db("found_track");
    create_trigger(&mut c, "t", json!({"event": "signed_up", "action": email("welcome")}));
    let id: Option<i64> = c
        .query_one(
            "SELECT engage.track('c1', 'signed_up', '{\"plan\": \"pro\"}'::jsonb, \
                                 '2025-05-01T12:00:00Z'::timestamptz)::int8",
            &[],
        )
        .unwrap()
        .get(0);
    let id = id.expect("track returned NULL for a new event");
    let row = c
        .query_one(
            "SELECT customer_id::text, name::text, properties::jsonb, \
                    occurred_at = '2025-05-01T12:00:00Z'::timestamptz \
             FROM engage.events WHERE id = $1::int8",
            &[&id],
        )
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "c1");
    assert_eq!(row.get::<_, String>(1), "signed_up");
    assert_eq!(row.get::<_, Value>(2), json!({"plan": "pro"}));
    assert!(row.get::<_, bool>(3), "occurred_at was not stored as given");
    // track goes through the same decision path as INSERT.
    assert_eq!(decisions_for(&mut c, id), vec![fired("t")]);

    // Defaults: properties '{}' and occurred_at now().
    let id2: i64 = c.query_one("SELECT engage.track('c1', 'other')::int8", &[]).unwrap().get(0);
    let row = c
        .query_one(
            "SELECT properties::jsonb, abs(extract(epoch FROM occurred_at - now())) < 60 \
             FROM engage.events WHERE id = $1::int8",
            &[&id2],
        )
        .unwrap();
    assert_eq!(row.get::<_, Value>(0), json!({}));
    assert!(row.get::<_, bool>(1), "default occurred_at is not now()");
}

#[test]
fn identify_merges_traits_and_fills_contact_columns() {
    let mut c = shared().create_db("found_identify");
    identify(&mut c, "c1", json!({"email": "ada@example.com", "country": "DE", "plan": "free"}));
    identify(&mut c, "c1", json!({"plan": "pro", "phone": "+4915112345678", "timezone": "Europe/Berlin"}));
    let row = c
        .query_one(
            "SELECT attributes::jsonb, email::text, phone::text, timezone::text \
             FROM engage.profiles WHERE customer_id = 'c1'",
            &[],
        )
        .unwrap();
    let attributes: Value = row.get(0);
    assert_eq!(attributes["country"], json!("DE"), "earlier trait lost: {attributes}");
    assert_eq!(attributes["plan"], json!("pro"), "trait not overwritten: {attributes}");
    assert_eq!(row.get::<_, Option<String>>(1).as_deref(), Some("ada@example.com"));
    assert_eq!(row.get::<_, Option<String>>(2).as_deref(), Some("+4915112345678"));
    assert_eq!(row.get::<_, Option<String>>(3).as_deref(), Some("Europe/Berlin"));
    assert_eq!(count(&mut c, "SELECT count(*) FROM engage.profiles"), 1);
}

#[test]
fn validate_trigger_accepts_the_readme_examples() {
    let mut c = shared().create_db("found_validate");
    let examples = [
        json!({"event": "signed_up", "action": {"channel": "email", "template": "welcome"}}),
        json!({"event": "cart_updated",
               "where": {"all": [{"property": "cart.value", "gt": 100},
                                 {"not": {"property": "coupon", "exists": true}},
                                 {"profile": "country", "in": ["DE", "AT", "CH"]}]},
               "action": {"channel": "email", "template": "cart_reminder"},
               "priority": 10, "cap": {"max": 1, "per": "24h"}}),
        json!({"event": ["order_completed", "order_shipped"],
               "where": {"any": [{"property": "items", "contains": "gift-card"},
                                 {"profile": "signed_up_at", "gt": {"ago": "30d"}}]},
               "action": {"channel": "webhook", "payload": {"team": "success"}}}),
        // Every channel, durations with every unit and combined units, a description.
        json!({"event": "e", "action": {"channel": "sms", "template": "t"}, "cap": {"max": 3, "per": "90s"}}),
        json!({"event": "e", "action": {"channel": "whatsapp", "template": "t"}, "cap": {"max": 3, "per": "30m"}}),
        json!({"event": "e", "action": {"channel": "push", "template": "t"}, "cap": {"max": 3, "per": "7d"}}),
        json!({"event": "e", "action": {"channel": "webhook"}, "cap": {"max": 3, "per": "1w"}}),
        json!({"event": "e", "action": {"channel": "email", "template": "t", "payload": {}},
               "cap": {"max": 1, "per": "1h 30m"}, "description": "free text", "priority": -5}),
        json!({"event": "e", "where": {"property": "$.address.city", "eq": "Berlin"},
               "action": {"channel": "email", "template": "t"}}),
        json!({"event": "e", "where": {"property": "items.0.sku", "eq": "A-1"},
               "action": {"channel": "email", "template": "t"}}),
    ];
    for (i, def) in examples.iter().enumerate() {
        let ok: bool = c
            .query_one("SELECT engage.validate_trigger($1)", &[def])
            .unwrap_or_else(|e| panic!("example {i} {def} rejected: {}", error_text(&e)))
            .get(0);
        assert!(ok, "validate_trigger returned false for {def}");
        create_trigger(&mut c, &format!("example_{i}"), def.clone());
    }
    assert_eq!(count(&mut c, "SELECT count(*) FROM engage.triggers"), examples.len() as i64);
}

#[test]
fn trigger_rows_reflect_management_calls() {
    let mut c = shared().create_db("found_manage");
    let def = json!({"event": "e", "action": email("t"), "priority": 7});
    let id = create_trigger(&mut c, "t", def.clone());
    let row = c
        .query_one(
            "SELECT id::int8, enabled, priority::int8, version::int8, definition::jsonb \
             FROM engage.triggers WHERE name = 't'",
            &[],
        )
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), id as i64);
    assert!(row.get::<_, bool>(1), "a new trigger is enabled");
    assert_eq!(row.get::<_, i64>(2), 7);
    assert_eq!(row.get::<_, i64>(3), 1, "a new trigger has version 1");
    assert_eq!(row.get::<_, Value>(4)["event"], json!("e"));

    let v2 = update_trigger(&mut c, "t", json!({"event": "e", "action": email("t2"), "priority": 3}));
    assert_eq!(v2, 2);
    let v3 = update_trigger(&mut c, "t", json!({"event": "e", "action": email("t3")}));
    assert_eq!(v3, 3);
    let row = c
        .query_one("SELECT priority::int8, version::int8, definition::jsonb FROM engage.triggers WHERE name = 't'", &[])
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 0, "priority defaults to 0");
    assert_eq!(row.get::<_, i64>(1), 3);
    assert_eq!(row.get::<_, Value>(2)["action"]["template"], json!("t3"));

    c.execute("SELECT engage.disable_trigger('t')", &[]).unwrap();
    assert_eq!(count(&mut c, "SELECT count(*) FROM engage.triggers WHERE name = 't' AND NOT enabled"), 1);
    c.execute("SELECT engage.enable_trigger('t')", &[]).unwrap();
    assert_eq!(count(&mut c, "SELECT count(*) FROM engage.triggers WHERE name = 't' AND enabled"), 1);

    // Dropping keeps the past decisions.
    let ev = insert_event(&mut c, "c1", "e", json!({}));
    assert_eq!(decisions_for(&mut c, ev), vec![fired("t")]);
    c.execute("SELECT engage.drop_trigger('t')", &[]).unwrap();
    assert_eq!(count(&mut c, "SELECT count(*) FROM engage.triggers"), 0);
    assert_eq!(
        count(&mut c, &format!("SELECT count(*) FROM engage.decisions WHERE trigger_id = {id}")),
        1,
        "past decisions must stay after drop_trigger"
    );
}
