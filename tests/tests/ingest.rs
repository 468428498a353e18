//! Segment-shaped ingestion (`engage.ingest`, sql/ingest.sql), called by an app role that holds
//! only engage_writer, with the example payloads of the Segment spec (track, identify, page,
//! screen, group, alias, and a batch of them).

use pg_engage_it::*;

/// The spec's track example.
fn track_example() -> Value {
    json!({
        "anonymousId": "23adfd82-aa0f-45a7-a756-24f2a7a4c895",
        "context": {"library": {"name": "analytics.js", "version": "2.11.1"}, "ip": "108.0.78.21"},
        "event": "Item Purchased",
        "messageId": "ajs-f8ca1e4de5024d9430b3928bd8ac6b96",
        "properties": {"revenue": 39.95, "shippingMethod": "2-day"},
        "receivedAt": "2015-12-12T19:11:01.266Z",
        "sentAt": "2015-12-12T19:11:01.169Z",
        "timestamp": "2015-12-12T19:11:01.249Z",
        "type": "track",
        "userId": "AiUGstSDIg",
        "originalTimestamp": "2015-12-12T19:11:01.152Z"
    })
}

/// The spec's identify example.
fn identify_example() -> Value {
    json!({
        "anonymousId": "507f191e810c19729de860ea",
        "channel": "browser",
        "context": {"ip": "8.8.8.8", "userAgent": "Mozilla/5.0", "timezone": "America/Los_Angeles"},
        "integrations": {"All": false, "Mixpanel": true, "Salesforce": true},
        "messageId": "022bb90c-bbac-11e4-8dfc-aa07a5b093db",
        "receivedAt": "2015-02-23T22:28:55.387Z",
        "sentAt": "2015-02-23T22:28:55.111Z",
        "timestamp": "2015-02-23T22:28:55.111Z",
        "traits": {
            "name": "Peter Gibbons",
            "email": "peter@example.com",
            "plan": "premium",
            "logins": 5,
            "address": {"street": "6th St", "city": "San Francisco", "state": "CA", "postalCode": "94103", "country": "USA"}
        },
        "type": "identify",
        "userId": "97980cfea0067",
        "version": "1.1"
    })
}

fn page_example() -> Value {
    json!({
        "anonymousId": "507f191e810c19729de860ea",
        "channel": "browser",
        "context": {"ip": "8.8.8.8", "userAgent": "Mozilla/5.0"},
        "integrations": {"All": true, "Mixpanel": false, "Salesforce": false},
        "messageId": "ajs-f8ca1e4de5024d9430b3928bd8ac6b96-page",
        "name": "Home",
        "properties": {"title": "Welcome | Initech", "url": "http://www.example.com"},
        "receivedAt": "2015-02-23T22:28:55.387Z",
        "sentAt": "2015-02-23T22:28:55.111Z",
        "timestamp": "2015-02-23T22:28:55.111Z",
        "type": "page",
        "userId": "97980cfea0067",
        "version": "1.1"
    })
}

fn screen_example() -> Value {
    json!({
        "type": "screen",
        "name": "Home",
        "properties": {"Feed Type": "private"},
        "userId": "97980cfea0067",
        "messageId": "screen-0001",
        "originalTimestamp": "2015-02-23T22:29:00.000Z"
    })
}

fn group_example() -> Value {
    json!({
        "anonymousId": "507f191e810c19729de860ea",
        "channel": "browser",
        "context": {"ip": "8.8.8.8", "userAgent": "Mozilla/5.0"},
        "groupId": "0e8c78ea9d97a7b8185e8632",
        "messageId": "022bb90c-bbac-11e4-8dfc-aa07a5b093db-group",
        "receivedAt": "2015-02-23T22:28:55.387Z",
        "sentAt": "2015-02-23T22:28:55.111Z",
        "timestamp": "2015-02-23T22:28:55.111Z",
        "traits": {"name": "Initech", "industry": "Technology", "employees": 329, "plan": "enterprise", "total billed": 830},
        "type": "group",
        "userId": "97980cfea0067",
        "version": "1.1"
    })
}

fn alias_example() -> Value {
    json!({
        "anonymousId": "507f191e810c19729de860ea",
        "channel": "browser",
        "context": {"ip": "8.8.8.8", "userAgent": "Mozilla/5.0"},
        "integrations": {"All": true, "Mixpanel": false, "Salesforce": false},
        "messageId": "022bb90c-bbac-11e4-8dfc-aa07a5b093db-alias",
        "previousId": "39239-239239-239239-23923",
        "receivedAt": "2015-02-23T22:28:55.387Z",
        "sentAt": "2015-02-23T22:28:55.111Z",
        "timestamp": "2015-02-23T22:28:55.111Z",
        "type": "alias",
        "userId": "507f191e81",
        "version": "1.1"
    })
}

/// (item, type, customer_id, outcome, error) of each call, by item.
type Outcome = (i32, Option<String>, Option<String>, String, Option<String>);

#[track_caller]
fn ingest(app: &mut Client, calls: &Value) -> Vec<Outcome> {
    app.query("SELECT item, type, customer_id, outcome, error FROM engage.ingest($1) ORDER BY item", &[calls])
        .unwrap_or_else(|e| panic!("engage.ingest: {}", error_text(&e)))
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect()
}

fn ok(item: i32, kind: &str, customer: &str) -> Outcome {
    (item, Some(kind.into()), Some(customer.into()), "ingested".into(), None)
}

#[test]
fn the_specs_calls_are_recorded_by_an_app_role() {
    let db = "ingest_spec";
    let mut admin = shared().create_db(db);
    create_trigger(&mut admin, "thanks", json!({"event": "Item Purchased", "action": {"channel": "webhook"}}));
    let mut app = connect_as_member(shared(), db, "app", &["engage_writer"]);

    // One batch with a call of each kind; the batch's context reaches every call.
    let batch = json!({
        "batch": [identify_example(), track_example(), page_example(), screen_example(), group_example(), alias_example()],
        "context": {"library": {"name": "analytics-node", "version": "6.0.0"}},
        "sentAt": "2015-12-12T19:11:02.000Z"
    });
    assert_eq!(
        ingest(&mut app, &batch),
        [
            ok(1, "identify", "97980cfea0067"),
            ok(2, "track", "AiUGstSDIg"),
            ok(3, "page", "97980cfea0067"),
            ok(4, "screen", "97980cfea0067"),
            ok(5, "group", "97980cfea0067"),
            ok(6, "alias", "507f191e81"),
        ]
    );

    // Events: name, properties and event time as the spec maps them; messageId is the key.
    let events: Vec<(String, String, Value, String, Option<String>)> = admin
        .query(
            "SELECT customer_id, name, properties, to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.MS'), \
                    idempotency_key FROM engage.events ORDER BY id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect();
    assert_eq!(
        events,
        [
            (
                "AiUGstSDIg".into(),
                "Item Purchased".into(),
                json!({"revenue": 39.95, "shippingMethod": "2-day"}),
                "2015-12-12 19:11:01.249".into(),
                Some("ajs-f8ca1e4de5024d9430b3928bd8ac6b96".into())
            ),
            (
                "97980cfea0067".into(),
                "page".into(),
                json!({"name": "Home", "title": "Welcome | Initech", "url": "http://www.example.com"}),
                "2015-02-23 22:28:55.111".into(),
                Some("ajs-f8ca1e4de5024d9430b3928bd8ac6b96-page".into())
            ),
            (
                "97980cfea0067".into(),
                "screen".into(),
                json!({"name": "Home", "Feed Type": "private"}),
                "2015-02-23 22:29:00.000".into(),
                Some("screen-0001".into())
            ),
            (
                "97980cfea0067".into(),
                "group".into(),
                json!({"groupId": "0e8c78ea9d97a7b8185e8632", "traits": group_example()["traits"]}),
                "2015-02-23 22:28:55.111".into(),
                Some("022bb90c-bbac-11e4-8dfc-aa07a5b093db-group".into())
            ),
        ]
    );
    // The track call was decided in the same transaction.
    assert_eq!(count(&mut admin, "SELECT count(*) FROM engage.outbox WHERE customer_id = 'AiUGstSDIg'"), 1);

    // identify: traits into attributes, addresses and the context's time zone into their columns.
    let (attributes, email, timezone): (Value, Option<String>, Option<String>) = {
        let r = admin
            .query_one(
                "SELECT attributes, email, timezone FROM engage.profiles WHERE customer_id = '97980cfea0067'",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    assert_eq!(attributes["plan"], json!("premium"));
    assert_eq!(attributes["address"]["city"], json!("San Francisco"));
    assert_eq!(email.as_deref(), Some("peter@example.com"));
    assert_eq!(timezone.as_deref(), Some("America/Los_Angeles"));

    // The same batch again (a client retry): events are duplicates, nothing is decided twice.
    let again = ingest(&mut app, &batch);
    let outcomes: Vec<&str> = again.iter().map(|o| o.3.as_str()).collect();
    assert_eq!(outcomes, ["ingested", "duplicate", "duplicate", "duplicate", "duplicate", "ingested"]);
    assert_eq!(count(&mut admin, "SELECT count(*) FROM engage.events"), 4);
    assert_eq!(count(&mut admin, "SELECT count(*) FROM engage.outbox"), 1);
}

#[test]
fn bad_calls_are_reported_each_and_the_rest_recorded() {
    let db = "ingest_bad";
    let _admin = shared().create_db(db);
    let mut app = connect_as_member(shared(), db, "app", &["engage_writer"]);
    let calls = json!([
        {"type": "track", "userId": "u1", "event": "ok 1", "timestamp": "2024-05-01T10:00:00Z"},
        {"type": "track", "userId": "u1", "event": "bad time", "timestamp": "yesterday-ish"},
        {"type": "track", "event": "nobody"},
        {"type": "launch", "userId": "u1"},
        {"type": "track", "userId": "u1"},
        {"type": "track", "userId": "u1", "event": "bad props", "properties": [1, 2]},
        {"type": "track", "userId": "u1", "event": "trigger:t1"},
        {"type": "alias", "userId": "u1"},
        "not an object",
        {"type": "track", "userId": "u1", "event": "no time"},
        {"type": "track", "anonymousId": "anon-1", "event": "ok 2", "originalTimestamp": "2024-05-01T09:00:00+02:00"},
        {"type": "track", "userId": "u1", "event": "far", "timestamp": "12000-01-01T00:00:00Z"}
    ]);
    let out = ingest(&mut app, &calls);
    assert_eq!(out.len(), 12, "one row per call: {out:#?}");
    let by_item = |i: i32| out.iter().find(|o| o.0 == i).unwrap_or_else(|| panic!("item {i}: {out:#?}")).clone();
    for (item, field) in [
        (2, "timestamp"),
        (3, "userId or anonymousId"),
        (4, "type"),
        (5, "event"),
        (6, "properties"),
        (7, "reserved"),
        (8, "previousId"),
        (9, "object"),
        (12, "timestamp"),
    ] {
        let (_, _, _, outcome, error) = by_item(item);
        assert_eq!(outcome, "error", "item {item}: {out:#?}");
        let error = error.unwrap_or_default();
        assert!(error.contains(field), "item {item}'s error names {field:?}: {error}");
    }
    for item in [1, 10, 11] {
        assert_eq!(by_item(item).3, "ingested", "item {item}: {out:#?}");
    }
    let mut admin = shared().connect(db);
    let names: Vec<(String, String)> = admin
        .query("SELECT customer_id, name FROM engage.events ORDER BY name", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        names,
        [("u1".into(), "no time".into()), ("u1".into(), "ok 1".into()), ("anon-1".into(), "ok 2".into())]
    );
    let at: String = admin
        .query_one("SELECT (occurred_at AT TIME ZONE 'UTC')::text FROM engage.events WHERE name = 'ok 2'", &[])
        .unwrap()
        .get(0);
    assert_eq!(at, "2024-05-01 07:00:00", "originalTimestamp when there is no timestamp");

    // Not a call at all: an ERROR naming what was expected.
    let e = app.query("SELECT * FROM engage.ingest('42')", &[]).unwrap_err();
    let db_error = e.as_db_error().expect("a database error");
    assert_eq!(db_error.code(), &SqlState::INVALID_PARAMETER_VALUE);
    assert!(db_error.message().contains("expected a call object"), "{}", db_error.message());
}

#[test]
fn an_alias_sends_the_anonymous_ids_later_calls_to_the_known_customer() {
    let db = "ingest_alias";
    let mut admin = shared().create_db(db);
    let mut app = connect_as_member(shared(), db, "app", &["engage_writer"]);
    // Before signing up: an anonymous visitor with a trait and an event.
    ingest(
        &mut app,
        &json!([
            {"type": "identify", "anonymousId": "anon-7", "traits": {"referrer": "ad", "plan": "free"}},
            {"type": "track", "anonymousId": "anon-7", "event": "viewed", "messageId": "m1"}
        ]),
    );
    // Signing up: the known customer, then the alias.
    let out = ingest(
        &mut app,
        &json!([
            {"type": "identify", "userId": "user-7", "traits": {"plan": "pro", "email": "u7@example.com"}},
            {"type": "alias", "previousId": "anon-7", "userId": "user-7"},
            {"type": "track", "anonymousId": "anon-7", "event": "clicked", "messageId": "m2"}
        ]),
    );
    assert_eq!(out[2], ok(3, "track", "user-7"), "a call with only the anonymous id now goes to the known customer");
    let by_customer: Vec<(String, String)> = admin
        .query("SELECT customer_id, name FROM engage.events ORDER BY id", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        by_customer,
        [("anon-7".into(), "viewed".into()), ("user-7".into(), "clicked".into())],
        "events recorded before the alias stay with the anonymous id"
    );
    let attributes: Value =
        admin.query_one("SELECT attributes FROM engage.profiles WHERE customer_id = 'user-7'", &[]).unwrap().get(0);
    assert_eq!(
        attributes,
        json!({"referrer": "ad", "plan": "pro", "email": "u7@example.com"}),
        "the anonymous traits merge in; the known customer's win"
    );
    // The anonymous id cannot be given to a second customer.
    let out = ingest(&mut app, &json!({"type": "alias", "previousId": "anon-7", "userId": "someone-else"}));
    assert_eq!(out[0].3, "error");
    assert!(out[0].4.as_deref().unwrap_or("").contains("already an alias of \"user-7\""), "{out:#?}");
}

#[test]
fn a_batch_of_identify_calls_writes_profiles_without_a_transaction_id_per_call() {
    // Each call is checked in its own subtransaction; one that wrote would take a transaction id,
    // and more than 64 of them in one transaction slow down every snapshot on the server. The
    // profile writes happen after the checks, so 300 identify calls take one id, not 300.
    let db = "ingest_many";
    let _admin = shared().create_db(db);
    let mut app = connect_as_member(shared(), db, "app", &["engage_writer"]);
    let calls: Vec<Value> = (0..300)
        .map(|i| json!({"type": "identify", "userId": format!("u{i}"), "traits": {"n": i}}))
        .chain([json!({"type": "identify", "userId": "bad", "traits": "not an object"})])
        .collect();
    let mut tx = app.transaction().unwrap();
    let before: i64 = tx.query_one("SELECT txid_current()", &[]).unwrap().get(0);
    let out: Vec<(String, Option<String>)> = tx
        .query("SELECT outcome, error FROM engage.ingest($1) ORDER BY item", &[&Value::Array(calls)])
        .unwrap_or_else(|e| panic!("ingest: {}", error_text(&e)))
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    tx.commit().unwrap();
    assert_eq!(out.iter().filter(|o| o.0 == "ingested").count(), 300);
    assert!(out[300].1.as_deref().unwrap_or("").contains("traits"), "{:?}", out[300]);
    let after: i64 = app.query_one("SELECT txid_current()", &[]).unwrap().get(0);
    // Other tests of this binary run at the same time and take a few ids of their own.
    assert!(after - before < 100, "{} transaction ids for one call of 300 identifies", after - before);
    let mut admin = shared().connect(db);
    assert_eq!(count(&mut admin, "SELECT count(*) FROM engage.profiles"), 300);
}
